// Command extauthz is an Envoy external-authorization service for API keys:
// it serves the ext_authz gRPC API (and an HTTP forward-auth API), and
// manages keys from the command line. See README.md.
//
// This package is the wiring: one file per subcommand (serve.go, keys.go and
// keys_*.go, config.go, explain.go, audit.go, healthcheck.go, version.go),
// the command line's conventions (main.go, flags.go), and the files that turn
// the config into the other packages' own types and start them (policy.go,
// store.go, auditlog.go, listeners.go, tls.go, observe.go, tracing.go,
// reload.go, sweep.go).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"

	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/internal/visible"
	"github.com/extauthz/extauthz/keystore"
)

// The command line follows the conventions of kubectl, gh and the go
// command: every command and subcommand has -h/--help, printing its usage and
// flags to standard output (exit 0); exit status 0 is success, 1 a failure
// of the work itself, 2 a command line that could not be understood (an
// unknown command or flag, a missing required flag, a flag value that does
// not parse), always. It is built on cobra, as kubectl and gh are: one
// definition per command gives its help, its flag parsing (GNU style, flags
// before or after the arguments) and the list of subcommands a group prints.

func main() {
	ctx := stopOnSignal(context.Background())
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// stopOnSignal returns a context that ends at the first SIGINT or SIGTERM:
// a command stops its work, serve drains (up to about 25 s). A second one
// exits at once with status 1, having said so through onSecondSignal, as
// Caddy and Docker do: an operator who sends it again has chosen not to
// wait for the drain, and must not find the signal swallowed.
func stopOnSignal(parent context.Context) context.Context {
	ctx, cancel := context.WithCancel(parent)
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		cancel()
		sig := <-sigs
		(*onSecondSignal.Load())(sig)
		os.Exit(1)
	}()
	return ctx
}

// onSecondSignal says, before the process exits, that a second signal cut
// its stop short; serve sets it to say so in the server's log.
var onSecondSignal atomic.Pointer[func(os.Signal)]

func init() {
	say := func(sig os.Signal) {
		fmt.Fprintf(os.Stderr, "extauthz: second %s: exiting at once\n", sig)
	}
	onSecondSignal.Store(&say)
}

// run executes one command line and returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// go-redis logs on its own (a failed dial); in the CLI its lines go to
	// standard error as the CLI's own warnings do. serve routes them into
	// the server's structured log instead.
	goredis.SetLogger(redisLog{slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	root := newRootCmd(stdout, stderr)
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	if errors.Is(err, errReported) {
		return 1
	}
	if errors.Is(err, errUnaudited) {
		fmt.Fprintf(stderr, "%s: %s\n", cmd.CommandPath(), err)
		return 3
	}
	// An error may carry text a record holds (an id it names, written
	// straight into the store): written so that it cannot steer the
	// terminal or pass for other text.
	msg := visible.Escape(redactArgs(err.Error(), args))
	if ue := (*usageError)(nil); errors.As(err, &ue) {
		path := ue.cmd.CommandPath()
		fmt.Fprintf(stderr, "%s: %s\nUsage: %s\nRun '%s --help' for more.\n", path, msg, ue.cmd.UseLine(), path)
		return 2
	}
	fmt.Fprintf(stderr, "%s: %s\n", cmd.CommandPath(), msg)
	return 1
}

// newRootCmd is the command tree; stdout and stderr are where commands
// write (tests pass buffers).
func newRootCmd(stdout, stderr io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:   "extauthz <command>",
		Short: "API-key authorization for Envoy (ext_authz) and forward-auth proxies",
		Long: `extauthz answers Envoy's ext_authz checks (gRPC) and forward-auth requests (HTTP)
for API keys, and manages the keys.

The config file is --config, else $EXTAUTHZ_CONFIG; serve, config and healthcheck
fall back to the built-in defaults without either, the keys commands do not.`,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE:          groupRun,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.CompletionOptions.DisableDefaultCmd = true
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{c, err} })
	root.SetHelpCommand(&cobra.Command{
		Use:   "help [command]",
		Short: "Help about any command",
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := c.Root().Find(args)
			if err != nil || len(rest) > 0 {
				return usageErrorf(c, "unknown command %q: see extauthz --help", strings.Join(args, " "))
			}
			return cmd.Help()
		},
	})
	root.AddCommand(
		newServeCmd(),
		newKeysCmd(),
		newAuditCmd(),
		newConfigCmd(),
		newHealthcheckCmd(),
		newVersionCmd(),
	)
	return root
}

// groupRun is the run of a command that only groups others (extauthz,
// extauthz keys, ...): with no subcommand, or an unknown one, it is a usage
// error naming the subcommands there are.
func groupRun(c *cobra.Command, args []string) error {
	var names []string
	for _, sub := range c.Commands() {
		if sub.IsAvailableCommand() {
			names = append(names, sub.Name())
		}
	}
	if len(args) == 0 {
		return usageErrorf(c, "missing command: %s takes %s", c.CommandPath(), strings.Join(names, ", "))
	}
	if c.SuggestionsMinimumDistance <= 0 {
		c.SuggestionsMinimumDistance = 2
	}
	hint := ""
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		hint = fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageErrorf(c, "unknown command %q for %q%s; it takes %s", args[0], c.CommandPath(), hint, strings.Join(names, ", "))
}

// usageError is a command line that could not be understood: exit status 2,
// with the command's usage line.
type usageError struct {
	cmd *cobra.Command
	err error
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// usageErrorf is a usageError of c with a formatted message.
func usageErrorf(c *cobra.Command, format string, args ...any) error {
	return &usageError{c, fmt.Errorf(format, args...)}
}

// noArgs refuses positional arguments.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf(c, "unexpected argument %q (this command takes flags only)", args[0])
	}
	return nil
}

// redactArgs replaces in msg every command-line word that may be an API key:
// an error may quote what it was given (an unknown command, a flag value
// that did not parse), and someone may have pasted a secret where an id or
// a name goes. A word may be a key when it could pass the decision's format
// check for some key (16 to 256 characters of [A-Za-z0-9_.-]) and is not a
// key id, which is public. A value is searched word by word too, since a
// key pasted into a list or a rate ("--ip 10.0.0.1,sk_...", "--rate
// sk_.../m") is quoted whole by the error that refuses it; file paths (the
// values of --config, --client-cert, --client-key) only as a whole, and not
// when they name a file there is, so that an error about a file still names
// it ("extauthz-staging.yaml: ...": a key is no file's name).
func redactArgs(msg string, args []string) string {
	redact := func(w string) {
		if mayBeKey(w) {
			msg = strings.ReplaceAll(msg, w, "[redacted: may be a key]")
		}
	}
	isPath := false
	for _, a := range args {
		path := isPath
		isPath = false
		if i := strings.IndexByte(a, '='); i >= 0 && strings.HasPrefix(a, "-") {
			path = pathFlags[strings.TrimLeft(a[:i], "-")]
			a = a[i+1:]
		} else if strings.HasPrefix(a, "-") {
			isPath = pathFlags[strings.TrimLeft(a, "-")]
		}
		a = strings.TrimLeft(a, "-")
		if path {
			if _, err := os.Stat(a); err != nil || keyLikeRun.MatchString(a) {
				redact(a)
			}
			continue
		}
		redact(a)
		for _, w := range strings.FieldsFunc(a, func(r rune) bool { return !isKeyChar(r) }) {
			redact(w)
		}
	}
	return msg
}

// keyLikeRun matches what looks like a generated key of any prefix: a
// prefix, an underscore and 22 or more base62 characters (more than half
// of a key's secret). A file may be named after the key it holds; its
// name is redacted even though it names a file.
var keyLikeRun = regexp.MustCompile(`[A-Za-z0-9]{1,16}_[A-Za-z0-9]{22,}`)

// pathFlags are the flags whose values are file paths.
var pathFlags = map[string]bool{"config": true, "client-cert": true, "client-key": true}

func isKeyChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-'
}

// mayBeKey reports whether s has the shape of some API key.
func mayBeKey(s string) bool {
	if len(s) < 16 || len(s) > 256 || keystore.ValidID(s) {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isKeyChar(rune(s[i])) {
			return false
		}
	}
	return true
}
