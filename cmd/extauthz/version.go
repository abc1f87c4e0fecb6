package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version and commit are stamped at build time:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"
//
// (make build and the Dockerfile do). Without a stamped commit, the one the
// go command recorded from the repository it built in (vcs.revision) is
// used, with "-dirty" when the tree had changes.
var (
	version = "dev"
	commit  = ""
)

// buildInfo is what `extauthz version` prints and extauthz_build_info
// exports.
type buildInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	GoVersion string `json:"go_version"`
}

// currentBuild is this binary's build info.
func currentBuild() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if b.Commit == "" {
		b.Commit = vcsRevision()
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

// vcsRevision is the commit the go command recorded in the binary, or "".
func vcsRevision() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	var rev, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return ""
	}
	return rev + dirty
}

// newVersionCmd is "extauthz version".
func newVersionCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "version [--json]",
		Short: "Print the version, commit and Go version",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			b := currentBuild()
			if asJSON {
				return writeJSON(c.OutOrStdout(), b)
			}
			_, err := fmt.Fprintf(c.OutOrStdout(), "extauthz %s\ncommit: %s\ngo: %s\n", b.Version, b.Commit, b.GoVersion)
			return err
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, `print {"version", "commit", "go_version"}`)
	return c
}
