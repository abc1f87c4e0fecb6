// Command extauthz is an Envoy external-authorization service for API keys:
// it serves the ext_authz gRPC API (and an HTTP forward-auth API), and
// manages keys from the command line. See README.md.
//
// This package is the wiring: one file per subcommand (serve.go, keys.go and
// keys_*.go, config.go, audit.go, healthcheck.go, version.go), and the files
// that turn the config into the other packages' own types and start them
// (policy.go, store.go, auditlog.go, listeners.go, observe.go, reload.go,
// sweep.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/extauthz/extauthz/config"
)

const usage = `usage: extauthz <command> [flags]

commands:
  serve [--config FILE]               run the gRPC, HTTP and admin listeners
  keys create --name N --perm P ...   create a key (printed once)
  keys list [--owner O] [--all]       list keys (never secrets)
  keys show ID                        one key's metadata
  keys update ID [--name N] [--perm P] [--rate R] [--ip CIDR | --any-ip]
              [--ttl D | --expires-at T | --no-expiry]
              [--policy NAME... | --any-policy] [--no-meta] [--meta K=V...]
                                      change a key (not a revoked or rotated one)
  keys revoke ID                      revoke a key (idempotent)
  keys rotate ID [--grace 24h]        new key, old one expires after the grace
  audit tail [--key ID] [-f]          read the audit stream (redis sink)
  config check [--config FILE]        validate the config, print the routes
  healthcheck [--config FILE]         exit 0 if the local server is healthy
  version                             print the version

The config file is --config, else $EXTAUTHZ_CONFIG, else built-in defaults.
`

// errUsage is returned for bad command lines; main prints the usage for it.
var errUsage = errors.New("bad usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch cmd, rest := args[0], args[1:]; cmd {
	case "serve":
		err = serveCmd(ctx, rest, stderr)
	case "keys":
		err = keysCmd(ctx, rest, stdout, stderr)
	case "audit":
		err = auditCmd(ctx, rest, stdout, stderr)
	case "config":
		err = configCmd(rest, stdout, stderr)
	case "healthcheck":
		err = healthcheckCmd(ctx, rest)
	case "version", "--version", "-v":
		versionCmd(stdout)
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
	default:
		err = fmt.Errorf("%w: unknown command %q", errUsage, cmd)
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "extauthz: %v\n\n%s", err, usage)
		return 2
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(stderr, "extauthz: %v\n", err)
	return 1
}

// parseFlags parses args with fs, allowing flags after positional arguments
// ("keys show ID --json"), and returns the positional ones.
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// loadConfig parses a subcommand's flags (plus --config), refuses
// positional arguments, and loads the config; it returns the path too.
func loadConfig(fs *flag.FlagSet, args []string) (*config.Config, string, error) {
	path := configFlag(fs)
	pos, err := parseFlags(fs, args)
	if err != nil {
		return nil, "", err
	}
	if len(pos) > 0 {
		return nil, "", fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	cfg, err := config.Load(*path)
	return cfg, *path, err
}

// configFlag registers --config with its environment default.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", os.Getenv("EXTAUTHZ_CONFIG"), "config file (default $EXTAUTHZ_CONFIG, else built-in defaults)")
}

// listFlag is a repeatable flag (--perm a --perm b), also taking commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}
