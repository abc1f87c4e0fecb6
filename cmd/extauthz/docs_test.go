package main

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// TestTheDocsStandAlone holds the repository's documentation to what a
// reader of the repository has: every relative link in the Markdown pages
// leads to a file (and a heading) that exists, and no file cites the
// working contract and the source guide the project was built from, or the
// numbered issues of the tracker its work was planned in, which all live
// outside the repository.
func TestTheDocsStandAlone(t *testing.T) {
	root := filepath.Join("..", "..")
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("docs/*.md: %v (%d pages)", err, len(pages))
	}
	for _, p := range []string{"README.md", "cmd/extauthz-load/README.md", "deploy/proxies/README.md", "deploy/proxies/envoy-http-service.md"} {
		pages = append(pages, filepath.Join(root, p))
	}

	t.Run("every relative link leads somewhere", func(t *testing.T) {
		link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
		for _, page := range pages {
			text, err := os.ReadFile(page)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range link.FindAllSubmatch(text, -1) {
				target := string(m[1])
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				path := page
				if file != "" {
					path = filepath.Join(filepath.Dir(page), file)
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s links to %s, which does not exist", rel(root, page), target)
					continue
				}
				if anchor != "" && !hasHeading(t, path, anchor) {
					t.Errorf("%s links to %s, which has no heading #%s", rel(root, page), rel(root, path), anchor)
				}
			}
		}
	})

	t.Run("no file cites a document the repository lacks", func(t *testing.T) {
		// Spelt in two halves, so that this file does not cite them either.
		cites := regexp.MustCompile(`\b` + "SP" + `EC\b|\bthe ` + "gui" + `de\b|\b[Ii]` + "ssue" + `s? #?[0-9]+\b`)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				switch d.Name() {
				case ".git", "bin", "data", "bench":
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				return nil // a link into the tree (the chart's files/redis): its target is walked itself
			}
			b, err := os.ReadFile(path)
			if err != nil || bytes.IndexByte(b, 0) >= 0 { // unreadable, or not text
				return err
			}
			if loc := cites.FindIndex(b); loc != nil {
				line := bytes.Count(b[:loc[0]], []byte("\n")) + 1
				t.Errorf("%s:%d cites %q, which a reader of the repository does not have", rel(root, path), line, b[loc[0]:loc[1]])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// hasHeading reports whether the Markdown file at path has a heading whose
// anchor, as GitHub makes it, is anchor.
func hasHeading(t *testing.T, path, anchor string) bool {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(text), "\n") {
		if title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " "); ok && strings.HasPrefix(line, "#") && slug(title) == anchor {
			return true
		}
	}
	return false
}

// slug is a heading's anchor as GitHub makes it: lower case, punctuation
// dropped, spaces as hyphens.
func slug(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(title)) {
		switch {
		case r == ' ' || r == '-':
			b.WriteRune('-')
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil {
		return r
	}
	return path
}

// The command tables of the README and docs/keys.md are the command line's
// reference: every command they show exists, every flag they give it is
// one it takes, and every flag it takes is in its row, so that a flag added,
// renamed or removed in the code without the tables fails here. The README's
// table has a row for every command.
func TestTheCommandTablesAreTheCommandLine(t *testing.T) {
	root := newRootCmd(io.Discard, io.Discard)
	row := regexp.MustCompile("(?m)^\\| `extauthz ([^`]+)` \\|")
	flag := regexp.MustCompile(`(?:^|[\s\[|])(--?[a-z][a-z-]*)`)
	for _, page := range []string{"README.md", "docs/keys.md"} {
		text, err := os.ReadFile(filepath.Join("..", "..", page))
		if err != nil {
			t.Fatal(err)
		}
		rows := row.FindAllStringSubmatch(string(text), -1)
		if len(rows) == 0 {
			t.Fatalf("%s has no command table", page)
		}
		shown := map[string]bool{}
		for _, m := range rows {
			usage := strings.ReplaceAll(m[1], `\|`, "|")
			var words []string
			for _, w := range strings.Fields(usage) {
				if !regexp.MustCompile(`^[a-z]+$`).MatchString(w) {
					break
				}
				words = append(words, w)
			}
			cmd, rest, err := root.Find(words)
			if err != nil || len(rest) > 0 || cmd == root {
				t.Errorf("%s shows `extauthz %s`, and there is no command %q", page, m[1], strings.Join(words, " "))
				continue
			}
			shown[cmd.CommandPath()] = true
			given := map[string]bool{}
			for _, f := range flag.FindAllStringSubmatch(usage, -1) {
				name := f[1]
				var ok bool
				if long, isLong := strings.CutPrefix(name, "--"); isLong {
					ok = cmd.Flags().Lookup(long) != nil || cmd.InheritedFlags().Lookup(long) != nil
					given[long] = true
				} else {
					ok = cmd.Flags().ShorthandLookup(name[1:]) != nil
					if f := cmd.Flags().ShorthandLookup(name[1:]); f != nil {
						given[f.Name] = true
					}
				}
				if !ok {
					t.Errorf("%s shows `%s` with %s, which it does not take", page, cmd.CommandPath(), name)
				}
			}
			cmd.LocalFlags().VisitAll(func(f *pflag.Flag) {
				if f.Name != "help" && f.Name != "config" && !f.Hidden && !given[f.Name] {
					t.Errorf("%s: the row of `%s` does not show its flag --%s", page, cmd.CommandPath(), f.Name)
				}
			})
		}
		if page != "README.md" {
			continue
		}
		var walk func(c *cobra.Command)
		walk = func(c *cobra.Command) {
			for _, sub := range c.Commands() {
				if sub.Name() == "help" || sub.Name() == "completion" || sub.Hidden {
					continue
				}
				if sub.Runnable() && !sub.HasSubCommands() && !shown[sub.CommandPath()] {
					t.Errorf("README.md's command table has no row for `%s`", sub.CommandPath())
				}
				walk(sub)
			}
		}
		walk(root)
	}
}

// Every extauthz command line the docs show, in a shell block or as code in
// running text ("`extauthz keys create --json`"), names a command there is
// and only flags it takes; every `make` target they name is the Makefile's.
// A reader copies them as written.
func TestTheCommandLinesOfTheDocsRun(t *testing.T) {
	root := newRootCmd(io.Discard, io.Discard)
	top := filepath.Join("..", "..")
	pages, err := filepath.Glob(filepath.Join(top, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"README.md", "cmd/extauthz-load/README.md", "deploy/proxies/README.md", "deploy/proxies/envoy-http-service.md"} {
		pages = append(pages, filepath.Join(top, p))
	}
	makefile, err := os.ReadFile(filepath.Join(top, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	shell := map[string]bool{"sh.": true, "shell.": true, "bash.": true, "console.": true}
	span := regexp.MustCompile("`((?:go run \\./cmd/)?extauthz [a-z][^`]*)`")
	// extauthz as a command: at the start of a line or a span, or after
	// "./cmd/", "bin/" or "$(" (not after a space: `helm install extauthz`
	// names a release), and followed by a word.
	invocation := regexp.MustCompile(`(?:^\s*|/|\$\()extauthz ([a-z][^|#)\n]*)`)
	makeTarget := regexp.MustCompile("`make ([a-z][a-z-]*)")
	lines := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		var shown []string
		fence := "" // the language of the block a line is in
		for _, line := range strings.Split(string(b), "\n") {
			if l, ok := strings.CutPrefix(strings.TrimSpace(line), "```"); ok {
				if fence == "" {
					fence = l + "."
				} else {
					fence = ""
				}
				continue
			}
			if shell[fence] {
				shown = append(shown, line)
			}
		}
		for _, m := range span.FindAllStringSubmatch(string(b), -1) {
			if !strings.HasPrefix(m[0], "`extauthz ") || !strings.Contains(m[1], "\\|") {
				shown = append(shown, m[1]) // not a table row: TestTheCommandTablesAreTheCommandLine reads those
			}
		}
		for _, line := range shown {
			for _, m := range invocation.FindAllStringSubmatch(line, -1) {
				lines++
				checkCommandLine(t, root, rel(top, page), m[1])
			}
		}
		for _, m := range makeTarget.FindAllStringSubmatch(string(b), -1) {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(m[1]) + `:`).Match(makefile) {
				t.Errorf("%s names `make %s`, and the Makefile has no target %s", rel(top, page), m[1], m[1])
			}
		}
	}
	if lines < 15 {
		t.Fatalf("found %d extauthz command lines in the docs; the patterns no longer find them", lines)
	}
}

// checkCommandLine reports a command line of a page ("keys create --name
// demo --json") whose command does not exist or which gives it a flag it
// does not take.
func checkCommandLine(t *testing.T, root *cobra.Command, page, line string) {
	t.Helper()
	var words []string
	fields := strings.Fields(line)
	for _, w := range fields {
		if !regexp.MustCompile(`^[a-z]+$`).MatchString(w) {
			break
		}
		words = append(words, w)
	}
	cmd, rest, err := root.Find(words)
	if err != nil || cmd == root || len(rest) > 0 && (cmd.HasSubCommands() || cmd.ValidateArgs(rest) != nil) {
		t.Errorf("%s shows `extauthz %s`, and there is no command %q", page, line, strings.Join(words, " "))
		return
	}
	for _, f := range regexp.MustCompile(`(?:^|[\s\[|])--([a-z][a-z-]*)`).FindAllStringSubmatch(line, -1) {
		if f[1] != "help" && cmd.Flags().Lookup(f[1]) == nil && cmd.InheritedFlags().Lookup(f[1]) == nil {
			t.Errorf("%s shows `extauthz %s`, and `%s` does not take --%s", page, line, cmd.CommandPath(), f[1])
		}
	}
}
