package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/internal/visible"
	"github.com/extauthz/extauthz/keystore"
)

// cliRun runs the command as a separate process and returns what it printed
// and its exit code.
func cliRun(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return out.String(), errb.String(), exit.ExitCode()
	}
	require.NoError(t, err)
	return out.String(), errb.String(), 0
}

// commandPaths lists every command of the tree, "" being extauthz itself,
// so that a command added later is in the tables below without anyone
// remembering to add it.
func commandPaths() []string {
	var paths []string
	var walk func(c *cobra.Command, prefix string)
	walk = func(c *cobra.Command, prefix string) {
		paths = append(paths, prefix)
		for _, sub := range c.Commands() {
			if sub.IsAvailableCommand() {
				walk(sub, strings.TrimSpace(prefix+" "+sub.Name()))
			}
		}
	}
	walk(newRootCmd(io.Discard, io.Discard), "")
	return paths
}

// Every command and subcommand prints its usage and flags for -h and
// --help, on standard output, and exits 0; a group lists its subcommands.
func TestEveryCommandHasHelp(t *testing.T) {
	root := newRootCmd(io.Discard, io.Discard)
	for _, path := range commandPaths() {
		cmd, _, err := root.Find(strings.Fields(path))
		require.NoError(t, err, path)
		// What the help must name, read here: the subtests run in
		// parallel (a process each), and reading flags sorts them.
		var flags, subs []string
		cmd.Flags().VisitAll(func(f *pflag.Flag) { flags = append(flags, f.Name) })
		for _, sub := range cmd.Commands() {
			if sub.IsAvailableCommand() {
				subs = append(subs, sub.Name())
			}
		}
		for _, flag := range []string{"--help", "-h"} {
			t.Run(strings.TrimSpace("extauthz "+path+" "+flag), func(t *testing.T) {
				t.Parallel()
				out, errOut, code := cliRun(t, append(strings.Fields(path), flag)...)
				assert.Equal(t, 0, code, errOut)
				assert.Empty(t, errOut, "help goes to standard output")
				assert.Contains(t, out, "Usage:")
				for _, name := range flags {
					assert.Contains(t, out, "--"+name, "the help names every flag")
				}
				for _, name := range subs {
					assert.Contains(t, out, "\n  "+name+" ", "a group lists its subcommands")
				}
			})
		}
	}
	out, _, code := cliRun(t, "help", "keys", "create")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "--perm")
}

// Exit status 2 is a command line that could not be understood, always:
// an unknown command or flag, a missing required flag or argument, a flag
// value that does not parse. The message names the flag or argument and
// the usage follows. 1 is a failure of the work itself.
func TestExitStatusesAreTheSameForTheSameKindOfMistake(t *testing.T) {
	dir := t.TempDir()
	cfg := writeConfig(t, fmt.Sprintf("store: {path: %q}\nlisten: {http: \"127.0.0.1:%d\"}\n", filepath.Join(dir, "k.db"), redistest.FreePort(t)))
	badCfg := writeConfig(t, "routes: [{path: /a, permision: [x]}]\n")
	const pasted = "sk_0123456789012345678901234567890123456789012345678"
	tests := []struct {
		cmd  string // the command the case is about
		args []string
		code int
		want string
	}{
		{"", nil, 2, "missing command"},
		{"", []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"", []string{"sevre"}, 2, `did you mean "serve"?`},
		{"", []string{pasted}, 2, "unknown command"},
		{"help", []string{"help", "frob"}, 2, `unknown command "frob"`},
		{"help", []string{"help", "keys", "burn"}, 2, `unknown command "keys burn"`},
		{"serve", []string{"serve", "extra"}, 2, `unexpected argument "extra"`},
		{"serve", []string{"serve", "--config", badCfg}, 1, "permision: unknown field"},
		{"keys", []string{"keys"}, 2, "missing command"},
		{"keys", []string{"keys", "burn"}, 2, `unknown command "burn"`},
		{"keys create", []string{"keys", "create", "--perm", "x", "--config", cfg}, 2, "--name is required"},
		{"keys create", []string{"keys", "create", "--name", "n", "--config", cfg}, 2, "--perm is required"},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--rate", "lots", "--config", cfg}, 2, `"--rate" flag`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--ttl", "soon", "--config", cfg}, 2, `"--ttl" flag`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--ttl", "-1h", "--config", cfg}, 2, "--ttl must be positive"},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--ttl", "0s", "--config", cfg}, 2, "--ttl must be positive"},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "", "--config", cfg}, 2, `"--perm" flag: no names`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", " , ", "--config", cfg}, 2, `"--perm" flag: no names`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--policy", "", "--config", cfg}, 2, `"--policy" flag: no names`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--ip", "", "--config", cfg}, 2, `"--ip" flag: no addresses`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--owner", "", "--config", cfg}, 2, "--owner: 1 to 64 characters"},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--rate", "", "--config", cfg}, 2, `"--rate" flag: empty`},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--ip", "10.0.0.1/8", "--config", cfg}, 2, `"--ip" flag`},
		{"keys create", []string{"keys", "create", "--name", "pay\u202eroll", "--perm", "x", "--config", cfg}, 2, "--name: must not contain"},
		{"keys create", []string{"keys", "create", "--nmae", "n", "--config", cfg}, 2, "unknown flag: --nmae"},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x"}, 2, "no config: give --config FILE or set $EXTAUTHZ_CONFIG"},
		{"keys create", []string{"keys", "create", "--name", "n", "--perm", "x", "--config", badCfg}, 1, "permision: unknown field"},
		{"keys list", []string{"keys", "list", "team", "--config", cfg}, 2, `unexpected argument "team"`},
		{"keys list", []string{"keys", "list", "--owner", "", "--config", cfg}, 2, "--owner: 1 to 64 characters"},
		{"keys list", []string{"keys", "list", "--owner", "a b", "--config", cfg}, 2, "--owner: 1 to 64 characters"},
		{"keys list", []string{"keys", "list", "--config", filepath.Join(dir, "missing.yaml")}, 1, "missing.yaml"},
		{"keys show", []string{"keys", "show", "--config", cfg}, 2, "want exactly one key id"},
		{"keys show", []string{"keys", "show", pasted, "--config", cfg}, 2, "not a key id"},
		{"keys show", []string{"keys", "show", "key_0000000000000000000A", "--config", cfg}, 1, "no key with id key_0000000000000000000A"},
		{"keys update", []string{"keys", "update", "key_0000000000000000000A", "--config", cfg}, 2, "nothing to change"},
		{"keys update", []string{"keys", "update", "key_0000000000000000000A", "--expires-at", "tomorrow", "--config", cfg}, 2, `"--expires-at" flag: want an RFC 3339 time`},
		{"keys update", []string{"keys", "update", "key_0000000000000000000A", "--name", "x", "--config", cfg}, 1, "no key with id"},
		{"keys update", []string{"keys", "update", "key_0000000000000000000A", "--policy", "", "--config", cfg}, 2, `"--policy" flag: no names`},
		{"keys update", []string{"keys", "update", "key_0000000000000000000A", "--perm", "", "--config", cfg}, 2, `"--perm" flag: no names`},
		{"keys revoke", []string{"keys", "revoke", "--config", cfg}, 2, "want exactly one key id"},
		{"keys revoke", []string{"keys", "revoke", "key_0000000000000000000A", "--config", cfg}, 1, "no key with id key_0000000000000000000A"},
		{"keys rotate", []string{"keys", "rotate", "key_0000000000000000000A", "--grace", "1 day", "--config", cfg}, 2, `"--grace" flag`},
		{"keys rotate", []string{"keys", "rotate", "key_0000000000000000000A", "--grace", "-1h", "--config", cfg}, 2, "--grace must be from 0 to 100 years"},
		{"keys rotate", []string{"keys", "rotate", "key_0000000000000000000A", "--grace", "900000h", "--config", cfg}, 2, "--grace must be from 0 to 100 years"},
		{"keys rotate", []string{"keys", "rotate", "key_0000000000000000000A", "--config", cfg}, 1, "no key with id"},
		{"audit", []string{"audit", "head"}, 2, `unknown command "head"`},
		{"audit tail", []string{"audit", "tail", "-n", "many", "--config", cfg}, 2, `"-n, --count" flag`},
		{"audit tail", []string{"audit", "tail", "--config", cfg}, 1, "audit.sink is \"stdout\""},
		{"audit tail", []string{"audit", "tail", "--key", "", "--config", cfg}, 2, "--key: that is not a key id"},
		{"config", []string{"config", "chekc"}, 2, `did you mean "check"?`},
		{"config check", []string{"config", "check", "now", "--config", cfg}, 2, `unexpected argument "now"`},
		{"config check", []string{"config", "check", "--config", badCfg}, 1, "permision: unknown field"},
		{"config explain", []string{"config", "explain", "--path", "/", "--config", cfg}, 2, "--method is required"},
		{"config explain", []string{"config", "explain", "--method", "GET", "--config", cfg}, 2, "--path is required"},
		{"config explain", []string{"config", "explain", "--method", "GET", "--path", "/", "--context", "policy", "--config", cfg}, 2, "--context: want key=value"},
		{"config explain", []string{"config", "explain", "--method", "GET", "--path", "/", "--context", "", "--config", cfg}, 2, `"--context" flag: no entries (give one or more key=value`},
		{"config explain", []string{"config", "explain", "--method", "GET", "--path", "/", "--config", badCfg}, 1, "permision: unknown field"},
		{"healthcheck", []string{"healthcheck", "--client-cert", "c.pem", "--config", cfg}, 2, "--client-cert and --client-key together"},
		{"healthcheck", []string{"healthcheck", "--config", cfg}, 1, "healthcheck:"},
		{"version", []string{"version", "--jsn"}, 2, "unknown flag: --jsn"},
		{"version", []string{"version", "now"}, 2, `unexpected argument "now"`},
	}
	covered := map[string]bool{}
	for _, tt := range tests {
		covered[tt.cmd] = true
		t.Run(strings.Join(append([]string{"extauthz"}, tt.args...), " "), func(t *testing.T) {
			out, errOut, code := cliRun(t, tt.args...)
			assert.Equal(t, tt.code, code, errOut)
			assert.Contains(t, errOut, tt.want)
			if tt.code == 2 {
				assert.Contains(t, errOut, "Usage: extauthz", "a usage error shows the usage line")
			}
			assert.Empty(t, out, "nothing on standard output")
			assert.NotContains(t, errOut, pasted, "a pasted key is never echoed")
		})
	}
	for _, path := range commandPaths() {
		assert.True(t, covered[path], "no exit-status case for %q", "extauthz "+path)
	}
	out, _, code := cliRun(t, "keys", "list", "--all", "--json", "--config", cfg)
	require.Equal(t, 0, code)
	assert.JSONEq(t, "[]", out, "nothing was created by the refused commands")
}

func TestVersion(t *testing.T) {
	out, errOut, code := cliRun(t, "version")
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `^extauthz dev\ncommit: \S+\ngo: go1\.\d+`, out)
	out, _, code = cliRun(t, "version", "--json")
	require.Equal(t, 0, code)
	var v map[string]string
	require.NoError(t, json.Unmarshal([]byte(out), &v))
	assert.Equal(t, "dev", v["version"])
	assert.Equal(t, runtime.Version(), v["go_version"])
	assert.NotEmpty(t, v["commit"])
	out, _, code = cliRun(t, "--version")
	assert.Equal(t, 0, code)
	assert.Equal(t, "extauthz dev\n", out)
}

// A binary built as make build and the Dockerfile build it says the
// version and commit it was stamped with.
func TestVersionIsStampedAtBuild(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "extauthz")
	build := exec.Command("go", "build", "-o", bin, "-ldflags", "-X main.version=v9.8.7 -X main.commit=0123abcd", ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, string(out))
	got, err := exec.Command(bin, "version", "--json").Output()
	require.NoError(t, err)
	var v map[string]string
	require.NoError(t, json.Unmarshal(got, &v))
	assert.Equal(t, "v9.8.7", v["version"])
	assert.Equal(t, "0123abcd", v["commit"])
}

// With no config, the keys commands refuse rather than act on the built-in
// default store (./data/extauthz.db wherever they run); with one, a
// command that writes says which store it wrote to.
func TestKeysCommandsSayWhichStoreTheyUse(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "keys", "create", "--name", "n", "--perm", "x")
	cmd.Dir = dir
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, "EXTAUTHZ_CONFIG=") }), "EXTAUTHZ_TEST_AS_MAIN=1")
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, 2, exit.ExitCode())
	assert.Contains(t, errb.String(), "no config")
	assert.NoDirExists(t, filepath.Join(dir, "data"), "nothing was written to the default store")

	db := filepath.Join(dir, "k.db")
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", db))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "n", "--perm", "x", "--json")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, errOut, "wrote to embedded store "+db+", config "+path+"\n")
	var k struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	_, errOut, code = cliRun(t, "keys", "revoke", k.ID, "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, errOut, "wrote to embedded store "+db)
	_, errOut, code = cliRun(t, "keys", "list", "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.NotContains(t, errOut, "wrote to", "a read writes nothing")

	t.Setenv("EXTAUTHZ_CONFIG", path)
	_, errOut, code = cliRun(t, "keys", "create", "--name", "m", "--perm", "x")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, errOut, ", config "+path+"\n", "$EXTAUTHZ_CONFIG is a config too")

	// Redis: the url and prefix, never the password.
	srv := redistest.Start(t)
	_, err = srv.Do("CONFIG", "SET", "requirepass", "s3cret-redis-pw")
	require.NoError(t, err)
	t.Setenv("REDIS_PASSWORD", "s3cret-redis-pw")
	rpath := writeConfig(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\n", srv.URL(0)))
	_, errOut, code = cliRun(t, "keys", "create", "--config", rpath, "--name", "n", "--perm", "x")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, errOut, "wrote to redis "+srv.URL(0)+`, prefix "extauthz:"`)
	assert.NotContains(t, errOut, "s3cret-redis-pw")
}

func TestConfigCheck(t *testing.T) {
	good := writeConfig(t, testRoutes)
	out, _, code := cliRun(t, "config", "check", "--config", good)
	require.Equal(t, 0, code, out)
	assert.Contains(t, out, "ok")
	assert.Contains(t, out, "/api/users/{id}")
	assert.Contains(t, out, "2/m per key")

	bad := writeConfig(t, "routes:\n  - {path: /a, permision: [x]}\n")
	_, errOut, code := cliRun(t, "config", "check", "--config", bad)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `routes[0].permision: unknown field (did you mean "permissions"?)`)

	badRoute := writeConfig(t, "routes: [{path: \"/a/**/b\"}]\n")
	_, errOut, code = cliRun(t, "config", "check", "--config", badRoute)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "** may only be the last segment")

	out, _, code = cliRun(t, "config", "check")
	assert.Equal(t, 0, code, "built-in defaults are a valid config")
	assert.Contains(t, out, "(built-in defaults)")

	badPaths := writeConfig(t, "paths: {matrix_params: servelt}\n")
	_, errOut, code = cliRun(t, "config", "check", "--config", badPaths)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, `paths.matrix_params: "servelt": want reject or servlet (did you mean "servlet"?)`)
}

// A table with routes that can never decide a request is valid (exit 0),
// but config check says which and why on stderr, and the clean table
// nothing.
func TestConfigCheckWarnsAboutDuplicateAndShadowedRoutes(t *testing.T) {
	path := writeConfig(t, `
routes:
  - {path: "/api/**", permissions: [read:api]}
  - {path: "/api/admin/**", permissions: [admin]}
  - {path: "/users/{id}", methods: [GET], permissions: [read:users]}
  - {path: "/users/{id}", methods: [DELETE], permissions: [delete:users]}
  - {path: "/users/{uid}", methods: [DELETE], permissions: [x]}
`)
	out, errOut, code := cliRun(t, "config", "check", "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "ok")
	assert.Contains(t, out, "GET (+HEAD)")
	assert.Contains(t, out, "A method never falls through to a\nbroader route")
	warnings := strings.Split(strings.TrimSpace(errOut), "\n")
	require.Len(t, warnings, 2, errOut)
	assert.Contains(t, warnings[0], `warning: routes[1] "/api/admin/**" is never reached: routes[0] "/api/**" comes first`)
	assert.Contains(t, warnings[1], `warning: routes[4] "/users/{uid}" is never reached: it repeats the pattern of routes[2], and earlier routes with that pattern take its methods (DELETE)`)

	_, errOut, code = cliRun(t, "config", "check", "--config", writeConfig(t, testRoutes))
	assert.Equal(t, 0, code)
	assert.Empty(t, errOut, "a clean table gives no warning")
}

// A named policy without a match selector is one only HTTP mode's auth path
// can select: with the gRPC listener on, config check says that no Envoy
// check will, for the requests meant for it go to the default policy.
func TestConfigCheckWarnsOfAPolicyNoCheckSelects(t *testing.T) {
	policies := `
policies:
  - name: billing
    match: {context: {policy: billing}}
    routes: [{path: "/**", permissions: [billing]}]
  - name: payroll
    routes: [{path: "/**", permissions: [payroll]}]
`
	_, errOut, code := cliRun(t, "config", "check", "--config", writeConfig(t, policies))
	require.Equal(t, 0, code, errOut)
	warnings := strings.Split(strings.TrimSpace(errOut), "\n")
	require.Len(t, warnings, 1, errOut)
	assert.Contains(t, warnings[0], "warning: policy payroll: no match: no gRPC check selects it")

	_, errOut, code = cliRun(t, "config", "check", "--config", writeConfig(t, "listen: {grpc: \"off\", http: \":0\"}\n"+policies))
	require.Equal(t, 0, code, errOut)
	assert.NotContains(t, errOut, "no match", "HTTP mode alone selects it by its auth path")
}

// The CLI reads an allowlist as the admin API does (keystore.ParseCIDRs): an
// IPv4-mapped network is stored as the IPv4 network it names, which the
// decision's IPv4 client addresses fall in.
func TestTheCLIStoresAnIPv4MappedNetworkAsIPv4(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "k.db")))
	var k struct {
		IPAllowlist []string `json:"ip_allowlist"`
	}
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "a", "--perm", "read", "--ip", "::ffff:10.0.0.0/104,::ffff:192.0.2.7/128", "--json")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	assert.Equal(t, []string{"10.0.0.0/8", "192.0.2.7/32"}, k.IPAllowlist)
}

func TestKeysLifecycleThroughTheCLI(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\nkeys: {max_per_owner: 2}\n", filepath.Join(t.TempDir(), "k.db")))
	var a struct{ ID, Key string }
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "a", "--perm", "read,write", "--owner", "team", "--rate", "5/s", "--ttl", "1h", "--ip", "10.0.0.0/8", "--json")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &a))
	assert.Contains(t, errOut, `"event":"key.created"`, "the change event goes to standard error")
	assert.NotContains(t, errOut, a.Key)

	out, _, _ = cliRun(t, "keys", "create", "--config", path, "--name", "human", "--perm", "read", "--owner", "team")
	assert.Contains(t, out, "This is the only time the key is shown")

	_, errOut, code = cliRun(t, "keys", "create", "--config", path, "--name", "third", "--perm", "read", "--owner", "team")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "already has 2 live keys")

	out, _, _ = cliRun(t, "keys", "show", a.ID, "--config", path)
	for _, want := range []string{"team", "read, write", "5/s", "10.0.0.0/8", "live"} {
		assert.Contains(t, out, want)
	}
	assert.NotContains(t, out, a.Key)

	_, _, code = cliRun(t, "keys", "revoke", a.ID, "--config", path)
	assert.Equal(t, 0, code)
	_, errOut, code = cliRun(t, "keys", "revoke", a.ID, "--config", path)
	assert.Equal(t, 0, code, "revoking twice is fine")
	assert.NotContains(t, errOut, "key.revoked", "and is one change, not two")

	out, _, _ = cliRun(t, "keys", "list", "--config", path)
	assert.NotContains(t, out, a.ID, "revoked keys are not listed by default")
	assert.Contains(t, out, "1 key(s)")
	out, _, _ = cliRun(t, "keys", "list", "--all", "--owner", "team", "--config", path)
	assert.Contains(t, out, a.ID)
	assert.Contains(t, out, "revoked")

	_, errOut, code = cliRun(t, "keys", "rotate", a.ID, "--config", path)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "revoked or expired")

	// A rotation run again (its output lost after the change was made) says
	// where the key went, not that it is revoked or expired.
	out, errOut, code = cliRun(t, "keys", "list", "--owner", "team", "--json", "--config", path)
	require.Equal(t, 0, code, errOut)
	var listed []struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &listed))
	require.Len(t, listed, 1)
	live := listed[0]
	out, errOut, code = cliRun(t, "keys", "rotate", live.ID, "--json", "--config", path)
	require.Equal(t, 0, code, errOut)
	var next struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &next))
	_, errOut, code = cliRun(t, "keys", "rotate", live.ID, "--config", path)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "already rotated, to "+next.ID)
	assert.NotContains(t, errOut, "revoked or expired")
}

// The old key of a rotation keeps its own expiry when that comes before
// the grace period's end, and the note says when it really stops.
func TestARotationSaysWhenTheOldKeyReallyStops(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "k.db")))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "short", "--perm", "read", "--ttl", "1h", "--json")
	require.Equal(t, 0, code, errOut)
	var made struct {
		ID        string    `json:"id"`
		ExpiresAt time.Time `json:"expires_at"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &made))
	out, errOut, code = cliRun(t, "keys", "rotate", made.ID, "--grace", "24h", "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out+errOut, "stops working at "+made.ExpiresAt.UTC().Format(time.RFC3339), "the old key's own expiry, not the grace period's end")
}

func TestHealthcheck(t *testing.T) {
	port := redistest.FreePort(t)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: off, http: \"127.0.0.1:%d\", admin: off}\nstore: {path: %q}\n", port, filepath.Join(t.TempDir(), "k.db")))
	_, _, code := cliRun(t, "healthcheck", "--config", path)
	assert.Equal(t, 1, code, "nothing listens yet")

	cmd := exec.Command(os.Args[0], "serve", "--config", path)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "extauthz serving") }, 10*time.Second, 20*time.Millisecond)
	_, errOut, code := cliRun(t, "healthcheck", "--config", path)
	assert.Equal(t, 0, code, errOut)
}

func TestManyProcessesCanOpenANewEmbeddedStoreAtOnce(t *testing.T) {
	for round := range 5 {
		path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "new", "k.db")))
		errs := make(chan string, 8)
		for i := range 8 {
			go func() {
				_, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", fmt.Sprint("p", i), "--perm", "x", "--json")
				if code != 0 {
					errs <- errOut
					return
				}
				errs <- ""
			}()
		}
		for range 8 {
			assert.Empty(t, <-errs, "round %d", round)
		}
		out, _, _ := cliRun(t, "keys", "list", "--json", "--config", path)
		var keys []map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &keys))
		assert.Len(t, keys, 8, "round %d", round)
	}
}

func TestKeysUpdateThroughTheCLI(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\nkeys: {max_per_owner: 2}\n", filepath.Join(t.TempDir(), "k.db")))
	create := func(args ...string) string {
		t.Helper()
		out, errOut, code := cliRun(t, append([]string{"keys", "create", "--config", path, "--json", "--owner", "team"}, args...)...)
		require.Equal(t, 0, code, errOut)
		var k struct{ ID string }
		require.NoError(t, json.Unmarshal([]byte(out), &k))
		return k.ID
	}
	update := func(id string, args ...string) (map[string]any, string, int) {
		t.Helper()
		out, errOut, code := cliRun(t, append([]string{"keys", "update", id, "--config", path, "--json"}, args...)...)
		var k map[string]any
		if code == 0 {
			require.NoError(t, json.Unmarshal([]byte(out), &k), out)
		}
		return k, errOut, code
	}

	a := create("--name", "a", "--perm", "read", "--ttl", "1s")
	time.Sleep(1100 * time.Millisecond) // a has expired
	b := create("--name", "b", "--perm", "read")
	c := create("--name", "c", "--perm", "read")

	t.Run("only the flags given change", func(t *testing.T) {
		k, errOut, code := update(b, "--name", "b2", "--rate", "5/s", "--ip", "10.0.0.0/8", "--ttl", "1h")
		require.Equal(t, 0, code, errOut)
		assert.Equal(t, "b2", k["name"])
		assert.Equal(t, []any{"read"}, k["permissions"])
		assert.Equal(t, "5/s", k["rate_limit"])
		assert.Equal(t, []any{"10.0.0.0/8"}, k["ip_allowlist"])
		assert.NotNil(t, k["expires_at"])
		assert.Contains(t, errOut, `"event":"key.updated"`)
		assert.Contains(t, errOut, `"actor":"cli"`)
		// An empty value (an unset variable) is a usage error, never
		// --any-ip or --rate default, which would loosen the key.
		for _, args := range [][]string{{"--ip", ""}, {"--ip", " , "}, {"--rate", ""}, {"--rate", " "}} {
			_, errOut, code := update(b, args...)
			assert.Equal(t, 2, code, "%q: %s", args, errOut)
		}
		out, errOut, code := cliRun(t, "keys", "show", b, "--config", path, "--json")
		require.Equal(t, 0, code, errOut)
		require.NoError(t, json.Unmarshal([]byte(out), &k))
		assert.Equal(t, "5/s", k["rate_limit"], "still its own rate")
		assert.Equal(t, []any{"10.0.0.0/8"}, k["ip_allowlist"], "still its allowlist")
		k, _, code = update(b, "--rate", "default", "--any-ip", "--no-expiry", "--perm", "read,write")
		require.Equal(t, 0, code)
		assert.Nil(t, k["rate_limit"])
		assert.Equal(t, []any{}, k["ip_allowlist"])
		assert.Nil(t, k["expires_at"])
		assert.Equal(t, []any{"read", "write"}, k["permissions"])
	})
	t.Run("bringing an expired key back at the owner limit is refused", func(t *testing.T) {
		_, errOut, code := update(a, "--no-expiry")
		assert.Equal(t, 1, code)
		assert.Contains(t, errOut, "already has 2 live keys")
		_, errOut, code = update(a, "--ttl", "1h")
		assert.Equal(t, 1, code)
		assert.Contains(t, errOut, "already has 2 live keys")
	})
	t.Run("with room, the operator may bring an expired key back", func(t *testing.T) {
		_, _, code := cliRun(t, "keys", "revoke", c, "--config", path)
		require.Equal(t, 0, code)
		k, errOut, code := update(a, "--no-expiry")
		require.Equal(t, 0, code, errOut)
		assert.Nil(t, k["expires_at"])
	})
	t.Run("a revoked key never changes again", func(t *testing.T) {
		for _, args := range [][]string{{"--no-expiry"}, {"--name", "back"}, {"--ttl", "1h"}} {
			_, errOut, code := update(c, args...)
			assert.Equal(t, 1, code, "%v", args)
			assert.Contains(t, errOut, "never changes again")
		}
	})
	t.Run("a rotated key never changes again", func(t *testing.T) {
		_, errOut, code := cliRun(t, "keys", "rotate", b, "--grace", "0s", "--config", path)
		require.Equal(t, 0, code, errOut)
		_, errOut, code = update(b, "--no-expiry")
		assert.Equal(t, 1, code)
		assert.Contains(t, errOut, "rotated to key_")
		assert.Contains(t, errOut, "never changes again")
	})
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"nothing to change is a usage error", nil, 2, "nothing to change"},
		{"--ip and --any-ip together", []string{"--ip", "10.0.0.1", "--any-ip"}, 2, "not both"},
		{"two expiries", []string{"--ttl", "1h", "--no-expiry"}, 2, "one of --ttl"},
		{"a bad expiry", []string{"--expires-at", "tomorrow"}, 2, `"--expires-at" flag: want an RFC 3339 time`},
		{"an expiry in the past", []string{"--expires-at", "2001-01-01T00:00:00Z"}, 2, "--ttl/--expires-at: must be in the future"},
		{"a bidi override in the name", []string{"--name", "pay\u202Eroll"}, 2, "--name: must not contain control, bidirectional, invisible or formatting characters (U+202E at byte 3)"},
		{"a zero-width space in a permission", []string{"--perm", "read\u200B"}, 2, "--perm: must not contain control, bidirectional, invisible or formatting characters (U+200B at byte 4)"},
		{"an unknown id", nil, 1, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := a
			if tc.name == "an unknown id" {
				id, tc.args, tc.want = "key_0000000000000000000A", []string{"--name", "x"}, "no key with id key_0000000000000000000A"
			}
			_, errOut, code := update(id, tc.args...)
			assert.Equal(t, tc.code, code, errOut)
			assert.Contains(t, errOut, tc.want)
		})
	}
	t.Run("create refuses the same characters", func(t *testing.T) {
		_, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "a\u2066b", "--perm", "x")
		assert.Equal(t, 2, code)
		assert.Contains(t, errOut, "--name: must not contain control, bidirectional, invisible or formatting characters (U+2066 at byte 1)")
		assert.NotContains(t, errOut, "\u2066")
	})
}

func TestKeysCarryPoliciesAndMetadataThroughTheCLI(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "k.db")))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--json", "--name", "billing", "--perm", "read",
		"--policy", "billing", "--policy", "reports", "--meta", "plan=gold", "--meta", "note=a=b, c")
	require.Equal(t, 0, code, errOut)
	var k map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	id := k["id"].(string)
	assert.Equal(t, []any{"billing", "reports"}, k["policies"])
	assert.Equal(t, map[string]any{"plan": "gold", "note": "a=b, c"}, k["meta"], "a value keeps its '=' and ','")

	out, errOut, code = cliRun(t, "keys", "show", id, "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "policies:      billing, reports")
	assert.Contains(t, out, "meta:          note=a=b, c, plan=gold")

	update := func(args ...string) map[string]any {
		t.Helper()
		out, errOut, code := cliRun(t, append([]string{"keys", "update", id, "--config", path, "--json"}, args...)...)
		require.Equal(t, 0, code, errOut)
		var k map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &k))
		return k
	}
	k = update("--meta", "plan=platinum", "--meta", "note=", "--meta", "region=eu")
	assert.Equal(t, map[string]any{"plan": "platinum", "region": "eu"}, k["meta"], "set, delete, add; the rest stays")
	assert.Equal(t, []any{"billing", "reports"}, k["policies"], "untouched")
	k = update("--policy", "billing")
	assert.Equal(t, []any{"billing"}, k["policies"])
	// An empty --policy (an unset variable) is a mistake, not --any-policy:
	// it would widen the key to every policy.
	_, errOut, code = cliRun(t, "keys", "update", id, "--config", path, "--policy", "")
	assert.Equal(t, 2, code, errOut)
	out, errOut, code = cliRun(t, "keys", "show", id, "--config", path, "--json")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	assert.Equal(t, []any{"billing"}, k["policies"], "still scoped")
	k = update("--any-policy", "--no-meta", "--meta", "plan=free")
	assert.Equal(t, []any{}, k["policies"])
	assert.Equal(t, map[string]any{"plan": "free"}, k["meta"], "--no-meta, then the entries given")

	out, errOut, code = cliRun(t, "keys", "rotate", id, "--config", path, "--json", "--grace", "0s")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	assert.Equal(t, map[string]any{"plan": "free"}, k["meta"], "a rotated key keeps its metadata")

	secret := strings.TrimSpace(strings.Split(out, `"key": "`)[1][:52])
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"a policy name with a capital", []string{"--policy", "Billing"}, 2, "--policy: 1 to 63 characters"},
		{"a metadata entry without =", []string{"--meta", "plan"}, 2, "--meta wants name=value"},
		{"an empty metadata value", []string{"--meta", "plan="}, 1, "meta.plan: values are 1 to 256 bytes"},
		{"a metadata name with a dash", []string{"--meta", "plan-tier=x"}, 2, "--meta: names are 1 to 64 characters"},
		{"a key pasted as metadata", []string{"--meta", "note=" + secret}, 2, "--meta: an entry contains an API key"},
		{"a key pasted without =", []string{"--meta", secret}, 2, "--meta wants name=value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errOut, code := cliRun(t, append([]string{"keys", "create", "--config", path, "--name", "x", "--perm", "read"}, tc.args...)...)
			assert.Equal(t, tc.code, code, errOut)
			assert.Contains(t, errOut, tc.want)
			assert.NotContains(t, errOut, secret, "never echoes a key")
		})
	}
	_, errOut, code = cliRun(t, "keys", "update", id, "--config", path, "--policy", "a", "--any-policy")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, "--policy or --any-policy, not both")
}

func TestKeysListShowsAnOldRecordsInvisibleCharactersEscaped(t *testing.T) {
	// A record written before names were checked, straight into the store.
	k := &keystore.Key{Name: "pay\u202Eroll\x1b[2J", Owner: "team",
		Permissions: []string{"read\u200B", "fill\u3164"}, Policies: []string{"gold\u009b2J"},
		Meta: map[string]string{"plan": "a\u2060b"}}
	path := storedRecords(t, k)
	id := k.ID

	for _, args := range [][]string{{"keys", "list"}, {"keys", "show", id}} {
		out, errOut, code := cliRun(t, append(args, "--config", path)...)
		require.Equal(t, 0, code, errOut)
		assert.Contains(t, out, `"pay\u202eroll\x1b[2J"`, "%v", args)
		assert.Contains(t, out, `"read\u200b,`, "%v", args)
		assert.Contains(t, out, `fill\u3164`, "%v: a filler draws nothing, though strconv leaves it raw", args)
		if args[1] == "show" {
			assert.Contains(t, out, `"gold\u009b2J"`, "the policies are a stored label too")
			assert.Contains(t, out, `plan="a\u2060b"`)
		}
		assertDrawsEverything(t, out, args)
	}
	// The JSON form goes to a terminal as often as to a program: the same
	// characters are \u escapes there, and it reads back as the record.
	for _, args := range [][]string{{"keys", "list", "--json"}, {"keys", "show", id, "--json"}} {
		out, errOut, code := cliRun(t, append(args, "--config", path)...)
		require.Equal(t, 0, code, errOut)
		assert.Contains(t, out, `"pay\u202eroll\u001b[2J"`, "%v", args)
		assert.Contains(t, out, `"read\u200b"`, "%v", args)
		assert.Contains(t, out, `"gold\u009b2J"`, "%v", args)
		assertDrawsEverything(t, out, args)
		var k keystore.Key
		if args[1] == "list" {
			var ks []keystore.Key
			require.NoError(t, json.Unmarshal([]byte(out), &ks), out)
			require.Len(t, ks, 1)
			k = ks[0]
		} else {
			require.NoError(t, json.Unmarshal([]byte(out), &k), out)
		}
		assert.Equal(t, "pay\u202Eroll\x1b[2J", k.Name)
		assert.Equal(t, []string{"gold\u009b2J"}, k.Policies)
		assert.Equal(t, "a\u2060b", k.Meta["plan"])
	}
}

// assertDrawsEverything fails when out holds a character that does not
// draw itself, other than the newline and the tab.
func assertDrawsEverything(t *testing.T, out string, args []string) {
	t.Helper()
	for _, r := range out {
		if r != '\n' && r != '\t' && !visible.Rune(r) {
			t.Errorf("%v wrote U+%04X raw:\n%s", args, r, out)
			return
		}
	}
}

// config check --json reports everything the text form does, on standard
// output, with the same exit status.
func TestConfigCheckJSON(t *testing.T) {
	type report struct {
		OK       bool
		Config   string
		Store    string
		Warnings []string
		Errors   []string
		Routes   []struct {
			Index       int
			Path        string
			Methods     []string
			Permissions []string
			Public      bool
			RateLimit   string `json:"rate_limit"`
		}
	}
	read := func(t *testing.T, args ...string) (report, int) {
		t.Helper()
		out, errOut, code := cliRun(t, append([]string{"config", "check", "--json"}, args...)...)
		assert.Empty(t, errOut)
		var r report
		require.NoError(t, json.Unmarshal([]byte(out), &r), out)
		return r, code
	}
	path := writeConfig(t, testRoutes)
	r, code := read(t, "--config", path)
	assert.Equal(t, 0, code)
	assert.True(t, r.OK)
	assert.Equal(t, path, r.Config)
	assert.Equal(t, "embedded store ./data/extauthz.db", r.Store)
	assert.Empty(t, r.Errors)
	assert.Empty(t, r.Warnings)
	require.Len(t, r.Routes, 4)
	assert.Equal(t, "/api/users/{id}", r.Routes[2].Path)
	assert.Equal(t, []string{"DELETE"}, r.Routes[2].Methods)
	assert.Equal(t, []string{"delete:users"}, r.Routes[2].Permissions)
	assert.Equal(t, "2/m", r.Routes[2].RateLimit)
	assert.True(t, r.Routes[0].Public)

	t.Setenv(testPepperEnv, "")
	r, code = read(t, "--config", writeConfig(t, `
listen: {admin: "0.0.0.0:9003"}
routes:
  - {path: "/api/**", permissions: [read]}
  - {path: "/api/x", permissions: [write]}
`))
	assert.Equal(t, 1, code, "no pepper outside a development setup fails the check")
	assert.False(t, r.OK)
	require.Len(t, r.Errors, 1)
	assert.Contains(t, r.Errors[0], "hashing.pepper_env")
	require.Len(t, r.Warnings, 2)
	assert.Contains(t, r.Warnings[0], `routes[1] "/api/x" is never reached`)
	assert.Contains(t, r.Warnings[1], `listen.admin "0.0.0.0:9003" is reachable off this host and tls is off`)

	r, code = read(t, "--config", writeConfig(t, "routes: [{path: /a, permision: [x]}]\n"))
	assert.Equal(t, 1, code)
	assert.False(t, r.OK)
	assert.Contains(t, r.Errors[0], "permision: unknown field")
}

// An admin listener off loopback is worth a warning without TLS, and none
// with it (or on loopback).
func TestConfigCheckWarnsAboutAnAdminListenerOffLoopbackWithoutTLS(t *testing.T) {
	tls := "tls: {cert_file: /etc/tls/tls.crt, key_file: /etc/tls/tls.key}\n"
	for _, tc := range []struct {
		config string
		warn   bool
	}{
		{`listen: {admin: "0.0.0.0:9003"}`, true},
		{`listen: {admin: ":9003"}`, true},
		{`listen: {admin: "10.1.2.3:9003"}`, true},
		{`listen: {admin: "[::]:9003"}`, true},
		{`listen: {admin: "127.0.0.1:9003"}`, false},
		{`listen: {admin: "[::1]:9003"}`, false},
		{`listen: {admin: "localhost:9003"}`, false},
		{`listen: {admin: off}`, false},
		{`listen: {admin: "0.0.0.0:9003"}` + "\n" + tls, false},
	} {
		t.Run(tc.config, func(t *testing.T) {
			t.Parallel() // a process each
			_, errOut, code := cliRun(t, "config", "check", "--config", writeConfig(t, tc.config+"\n"))
			require.Equal(t, 0, code, errOut)
			if tc.warn {
				assert.Contains(t, errOut, "warning: listen.admin")
			} else {
				assert.NotContains(t, errOut, "listen.admin")
			}
		})
	}
}

// No proxy that calls an HTTP auth service can remove a query parameter or
// a cookie. By default HTTP mode refuses a credential sent there (400), so
// nothing warns; a config that lets them pass (query_and_cookie_keys: pass)
// with such a source is worth a warning, whatever the convention.
func TestConfigCheckWarnsAboutSourcesAnHTTPModeProxyCannotStrip(t *testing.T) {
	headers := "sources: [{header: x-api-key}, {header: authorization, scheme: Bearer}]\n"
	pass := "http_mode: {original: x-original, query_and_cookie_keys: pass}\n"
	for _, tc := range []struct {
		config string
		warn   []string
	}{
		{pass, []string{"sources[2] {query: api_key} with http_mode.query_and_cookie_keys: pass", "sources[3] {cookie: api_key}"}},
		{"http_mode: {query_and_cookie_keys: pass}\n", []string{"sources[2] {query: api_key} with http_mode.query_and_cookie_keys: pass"}},
		{"http_mode: {original: x-forwarded, query_and_cookie_keys: pass}\n" + headers +
			"policies: [{name: billing, match: {context: {policy: billing}}, sources: [{cookie: session_key}], routes: [{path: /x, public: true}]}]\n",
			[]string{"policy billing: sources[0] {cookie: session_key}"}},
		{pass + headers, nil},
		{pass + "listen: {http: off}\n", nil},
		{"http_mode: {original: x-original}\n", nil},
		{"http_mode: {original: x-forwarded, query_and_cookie_keys: refuse}\n", nil},
	} {
		t.Run(tc.config, func(t *testing.T) {
			t.Parallel() // a process each
			_, errOut, code := cliRun(t, "config", "check", "--config", writeConfig(t, tc.config))
			require.Equal(t, 0, code, errOut)
			for _, w := range tc.warn {
				assert.Contains(t, errOut, "warning: "+w)
			}
			if tc.warn == nil {
				assert.NotContains(t, errOut, "cannot remove")
			}
		})
	}
}

// config explain runs the decision's own first steps: the canonical path
// or the 400, the route, its permissions and limits, or the answer any
// key gets.
func TestConfigExplain(t *testing.T) {
	path := writeConfig(t, testRoutes+"rate_limit: {default: 100/m}\n")
	authenticate := writeConfig(t, testRoutes+"unmatched: authenticate\n")
	tests := []struct {
		name   string
		config string
		args   []string
		want   []string
		json   map[string]any
	}{
		{"a route with permissions and a limit", path, []string{"--method", "DELETE", "--path", "/api/users/7?x=1"},
			[]string{"policy:  default", "request: DELETE /api/users/7", "route:   #3 /api/users/{id} (DELETE), routes[2] of the file", "delete:users", "key: 100/m", "/api/users/{id}: 2/m (per key, on this route only)"},
			map[string]any{"policy": "default", "method": "DELETE", "path": "/api/users/7", "outcome": "key", "permissions": []any{"delete:users"}}},
		{"a dot segment is refused, as the decision refuses it", path, []string{"--method", "GET", "--path", "/api/../admin"},
			[]string{"outcome: 400 bad_request: malformed request:"},
			map[string]any{"outcome": "deny", "status": float64(400), "code": "bad_request", "path": ""}},
		{"a lower-case method is refused, as the decision refuses it", path, []string{"--method", "delete", "--path", "/api/users/7"},
			[]string{"400 bad_request: malformed request: the method must be an upper-case token"}, map[string]any{"code": "bad_request"}},
		{"an encoded slash is refused", path, []string{"--method", "GET", "--path", "/api%2Fusers"},
			[]string{"400 bad_request"}, map[string]any{"code": "bad_request"}},
		{"a public route needs no key", path, []string{"--method", "GET", "--path", "/healthz", "--host", "api.example.com"},
			[]string{"request: GET /healthz (host api.example.com)", "outcome: 200: public route"},
			map[string]any{"outcome": "allow", "status": float64(200), "host": "api.example.com"}},
		{"unmatched: deny", path, []string{"--method", "GET", "--path", "/nowhere"},
			[]string{"route:   (none)", "outcome: 403 no_route: no route allows this request (unmatched: deny)"},
			map[string]any{"outcome": "deny", "code": "no_route", "route": nil}},
		{"a method the path's routes do not list", path, []string{"--method", "POST", "--path", "/api/users"},
			[]string{"outcome: 403 no_route: no route allows POST on this path"}, map[string]any{"code": "no_route"}},
		{"HEAD goes with GET", path, []string{"--method", "HEAD", "--path", "/api/users"},
			[]string{"#2 /api/users (GET)", "read:users"}, map[string]any{"outcome": "key"}},
		{"unmatched: authenticate", authenticate, []string{"--method", "GET", "--path", "/nowhere"},
			[]string{"no route matches; unmatched: authenticate", "key: 1000/h"}, map[string]any{"outcome": "key", "permissions": []any{}}},
		{"context extensions are shown", path, []string{"--method", "GET", "--path", "/api/users", "--context", "policy=billing"},
			[]string{"policy:  default"}, map[string]any{"context": map[string]any{"policy": "billing"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel() // two processes each; the configs are only read
			args := append([]string{"config", "explain", "--config", tt.config}, tt.args...)
			out, errOut, code := cliRun(t, args...)
			require.Equal(t, 0, code, errOut)
			for _, w := range tt.want {
				assert.Contains(t, out, w)
			}
			out, errOut, code = cliRun(t, append(args, "--json")...)
			require.Equal(t, 0, code, errOut)
			var got map[string]any
			require.NoError(t, json.Unmarshal([]byte(out), &got), out)
			for k, v := range tt.json {
				assert.Equal(t, v, got[k], k)
			}
		})
	}
}

// A key pasted into a flag's value is neither stored nor echoed, wherever in
// the value it sits: as the owner (which travels into every audit event,
// Envoy's metadata and the x-authz-owner header upstream, as a name does),
// or glued into a list or a rate whose error quotes the value it refused.
func TestAKeyPastedIntoAnyFlagIsNeitherStoredNorEchoed(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "k.db")))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--json", "--name", "a", "--perm", "read")
	require.Equal(t, 0, code, errOut)
	var made struct{ Key string }
	require.NoError(t, json.Unmarshal([]byte(out), &made))
	secret := made.Key
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"a key pasted as the owner", []string{"--owner", secret}, "owner"},
		{"a key glued into the owner", []string{"--owner", "team_" + secret}, "owner"},
		{"a key in a list of addresses", []string{"--ip", "10.0.0.1," + secret}, `"--ip" flag`},
		{"a key in a rate", []string{"--rate", secret + "/m"}, `"--rate" flag`},
		{"a key in a duration", []string{"--ttl", secret + "h"}, `"--ttl" flag`},
		{"a key in a list of policies", []string{"--policy", "billing," + secret}, "--policy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errOut, code := cliRun(t, append([]string{"keys", "create", "--config", path, "--name", "x", "--perm", "read"}, tc.args...)...)
			assert.NotEqual(t, 0, code, "refused: %s", out)
			assert.Contains(t, errOut, tc.want)
			assert.NotContains(t, errOut, secret[3:len(secret)-6], "never echoes a key")
			assert.NotContains(t, out, secret[3:len(secret)-6])
		})
	}
	out, _, code = cliRun(t, "keys", "list", "--all", "--json", "--config", path)
	require.Equal(t, 0, code)
	assert.NotContains(t, out, secret[3:len(secret)-6], "no key was stored with a secret in it")
}

// config check refuses a file that gives a field twice, naming the line,
// rather than calling ok a route whose second permissions line opened it.
func TestConfigCheckRefusesAFieldGivenTwice(t *testing.T) {
	path := writeConfig(t, "routes:\n  - path: /admin/**\n    permissions: [admin:all]\n    permissions: []\n")
	out, errOut, code := cliRun(t, "config", "check", "--config", path)
	assert.Equal(t, 1, code, out)
	assert.Contains(t, errOut, `line 4: key "permissions" already set`)
}

// The pepper written where the name of its variable goes never reaches
// standard error, from config check or serve, nor a development setup's
// warning.
func TestAPepperWrittenAsItsVariableIsNeverEchoed(t *testing.T) {
	const pepper = "Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a"
	store := fmt.Sprintf("store: {path: %q}\nlisten: {grpc: off, http: off, admin: off}\n", filepath.Join(t.TempDir(), "k.db"))
	path := writeConfig(t, store+"hashing: {pepper_env: "+pepper+"}\n")
	for _, args := range [][]string{{"config", "check"}, {"serve"}, {"keys", "create", "--name", "n", "--perm", "p"}} {
		_, errOut, code := cliRun(t, append(args, "--config", path)...)
		assert.Equal(t, 1, code, errOut)
		assert.Contains(t, errOut, "hashing.pepper_env")
		assert.NotContains(t, errOut, pepper[:12], strings.Join(args, " "))
	}
	dev := writeConfig(t, store+"development: true\nhashing: {pepper_env: "+pepper+"}\n")
	_, errOut, code := cliRun(t, "config", "check", "--config", dev)
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, errOut, "DEVELOPMENT SETUP")
	assert.NotContains(t, errOut, pepper[:12])
}

// A password written where a Redis url's user name goes reads as a user
// name; config check names the store without it, and no error quotes it.
func TestARedisURLIsNamedWithoutItsUser(t *testing.T) {
	const secret = "Zq8kR2pLx9vW4mT7nB3c"
	path := writeConfig(t, "store: {backend: redis, redis: {url: \"redis://"+secret+"@127.0.0.1:1/0\"}}\n")
	out, errOut, _ := cliRun(t, "config", "check", "--config", path)
	assert.Contains(t, out+errOut, "redis://127.0.0.1:1/0")
	assert.NotContains(t, out+errOut, secret[:8])
	_, errOut, code := cliRun(t, "serve", "--config", path)
	assert.NotEqual(t, 0, code)
	assert.Contains(t, errOut, "the username has no password")
	assert.NotContains(t, errOut, secret[:8])
}

// A password written into a Redis url after "user:" that starts with '/',
// '?' or '#' (one base64 secret in 64 starts with '/'), or with digits and
// then one of them, does not read as a password: the url splits elsewhere,
// and the rest was printed as the store's path by config check and in
// go-redis's parse errors by serve and keys. Every command refuses it now,
// and none quotes it.
func TestARedisPasswordThatBreaksTheURLUpIsNeverEchoed(t *testing.T) {
	const secret = "Zq8kR2pLx9vW4mT7nB3c"
	for _, url := range []string{
		"redis://default:/" + secret + "@127.0.0.1:1/0",
		"redis://default:4711/" + secret + "@127.0.0.1:1/0",
		"redis://default:4711?" + secret + "@127.0.0.1:1/0",
	} {
		path := writeConfig(t, "store: {backend: redis, redis: {url: \""+url+"\"}}\ndevelopment: true\n")
		for _, args := range [][]string{{"config", "check"}, {"config", "check", "--json"}, {"serve"}, {"keys", "list"}} {
			out, errOut, code := cliRun(t, append(args, "--config", path)...)
			assert.NotEqual(t, 0, code, "%s %s", url[:20], strings.Join(args, " "))
			assert.Contains(t, out+errOut, "store.redis.url")
			assert.NotContains(t, out+errOut, secret[:8], "%s %s", url[:20], strings.Join(args, " "))
		}
	}
}

// A new key's secret exists only in what create and rotate print. When that
// cannot be written (standard output a pipe whose reader is gone, a full
// disk), the command must not die silently of SIGPIPE with the key made and
// its secret lost: a created key nobody holds is revoked, a rotated one is
// named with the way out, and the exit status is 1 either way.
func TestANewKeyWhoseSecretCannotBePrintedIsNotLeftLiveInSilence(t *testing.T) {
	db := filepath.Join(t.TempDir(), "k.db")
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\naudit: {sink: none}\n", db))
	runClosedStdout := func(args ...string) (string, int) {
		t.Helper()
		r, w, err := os.Pipe()
		require.NoError(t, err)
		require.NoError(t, r.Close()) // nobody will read what it prints
		defer w.Close()
		cmd := exec.Command(os.Args[0], append(args, "--config", path)...)
		cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = w, &errb
		err = cmd.Run()
		var exit *exec.ExitError
		require.ErrorAs(t, err, &exit, errb.String())
		return errb.String(), exit.ExitCode()
	}
	listAll := func() []keystore.Key {
		t.Helper()
		out, errOut, code := cliRun(t, "keys", "list", "--config", path, "--all", "--json")
		require.Equal(t, 0, code, errOut)
		var keys []keystore.Key
		require.NoError(t, json.Unmarshal([]byte(out), &keys))
		return keys
	}

	for _, asJSON := range []bool{false, true} {
		args := []string{"keys", "create", "--name", "lost", "--perm", "x"}
		if asJSON {
			args = append(args, "--json")
		}
		before := len(listAll())
		errOut, code := runClosedStdout(args...)
		assert.Equal(t, 1, code, "exit status, not death by SIGPIPE: %s", errOut)
		keys := listAll()
		require.Len(t, keys, before+1)
		k := keys[len(keys)-1]
		for _, c := range keys {
			if c.CreatedAt.After(k.CreatedAt) {
				k = c
			}
		}
		assert.NotNil(t, k.RevokedAt, "the key whose secret nobody got is revoked")
		assert.Contains(t, errOut, k.ID)
		assert.Contains(t, errOut, "revoked")
	}

	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "kept", "--perm", "x", "--json")
	require.Equal(t, 0, code, errOut)
	var old struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &old))
	errOut, code = runClosedStdout("keys", "rotate", old.ID, "--grace", "1h")
	assert.Equal(t, 1, code, "exit status, not death by SIGPIPE: %s", errOut)
	for _, k := range listAll() {
		if k.RotatedFrom == old.ID {
			assert.Contains(t, errOut, k.ID, "the new key is named")
			assert.Contains(t, errOut, "keys rotate "+k.ID, "with the way out")
		}
	}
}

// A setting out of range is an error naming it, from config check and from
// every command that would use it, never a panic where it is used.
func TestAnAuditQueueTooLargeToMakeIsAnErrorNotAPanic(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\naudit: {queue_size: 9223372036854775807}\n", filepath.Join(t.TempDir(), "k.db")))
	for _, args := range [][]string{{"config", "check"}, {"keys", "list"}} {
		_, errOut, code := cliRun(t, append(args, "--config", path)...)
		assert.Equal(t, 1, code, "%v: %s", args, errOut)
		assert.Contains(t, errOut, "audit.queue_size", args)
		assert.NotContains(t, errOut, "panic", args)
	}
}

// A key printed into a file that other users of the host may read (a
// shell's "> key.json" under umask 022) would be theirs too, and making the
// file private first would not do: whoever opened it while it was readable
// keeps reading it. Such a file is refused, left as it was, and no key is
// made. Whatever else stdout is stays as it is.
func TestANewKeyIsNeverWrittenToAFileOtherUsersCanRead(t *testing.T) {
	db := filepath.Join(t.TempDir(), "k.db")
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\naudit: {sink: none}\n", db))
	dir := t.TempDir()
	runInto := func(mode os.FileMode, args ...string) (file, stderr string, code int) {
		t.Helper()
		name := filepath.Join(dir, fmt.Sprintf("out-%d", time.Now().UnixNano()))
		f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY, 0o600)
		require.NoError(t, err)
		defer f.Close()
		require.NoError(t, f.Chmod(mode)) // whatever the umask
		cmd := exec.Command(os.Args[0], append(args, "--config", path)...)
		cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = f, &errb
		err = cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else {
			require.NoError(t, err)
		}
		fi, err := os.Stat(name)
		require.NoError(t, err)
		assert.Equal(t, mode, fi.Mode().Perm(), "%s: the file's mode is left as it was", strings.Join(args, " "))
		out, err := os.ReadFile(name)
		require.NoError(t, err)
		return string(out), errb.String(), code
	}
	listed := func() string {
		out, errOut, code := cliRun(t, "keys", "list", "--all", "--json", "--config", path)
		require.Equal(t, 0, code, errOut)
		return out
	}

	out, errOut, code := runInto(0o600, "keys", "create", "--name", "mine", "--perm", "x", "--json")
	require.Equal(t, 0, code, errOut)
	require.Contains(t, out, `"key": "sk_`, "the key is printed to a file only its owner may read")
	assert.NotContains(t, errOut, "other users", "a private file is left as it is")
	var mine struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &mine))

	for _, c := range []struct {
		mode os.FileMode
		args []string
	}{
		{0o644, []string{"keys", "create", "--name", "a", "--perm", "x", "--json"}},
		{0o640, []string{"keys", "create", "--name", "b", "--perm", "x"}},
		{0o604, []string{"keys", "create", "--name", "c", "--perm", "x"}},
		{0o660, []string{"keys", "rotate", mine.ID, "--grace", "1h", "--json"}},
		{0o606, []string{"keys", "rotate", mine.ID}},
	} {
		before := listed()
		out, errOut, code := runInto(c.mode, c.args...)
		assert.Equal(t, 1, code, "%v: %s", c.args, errOut)
		assert.Empty(t, out, "%v: written to a file other users may read", c.args)
		assert.Contains(t, errOut, fmt.Sprintf("a file other users may read (mode %04o)", c.mode), c.args)
		assert.Contains(t, errOut, "no key was made", c.args)
		assert.Contains(t, errOut, "(umask 077; extauthz keys "+c.args[1]+" ... > key.json)", c.args)
		assert.Equal(t, before, listed(), "%v: a key was made or rotated", c.args)
	}

	t.Run("another user's private file", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("writing into another user's file takes root (CI runs as root)")
		}
		name := filepath.Join(dir, "theirs.json")
		f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY, 0o600)
		require.NoError(t, err)
		defer f.Close()
		require.NoError(t, os.Chown(name, 12345, 12345))
		before := listed()
		cmd := exec.Command(os.Args[0], "keys", "create", "--name", "theirs", "--perm", "x", "--config", path)
		cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = f, &errb
		var exit *exec.ExitError
		require.ErrorAs(t, cmd.Run(), &exit)
		assert.Equal(t, 1, exit.ExitCode(), errb.String())
		assert.Contains(t, errb.String(), "a file another user owns")
		assert.Contains(t, errb.String(), "no key was made")
		out, err := os.ReadFile(name)
		require.NoError(t, err)
		assert.Empty(t, out)
		assert.Equal(t, before, listed(), "a key was made")
	})

	t.Run("another user's file", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("running as another user than the file's takes root (CI runs as root)")
		}
		// The commands run as user 12345, from a copy of this binary that
		// user may run, on a store and config of its own and a file of root's.
		home := t.TempDir()
		for d := home; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			require.NoError(t, os.Chmod(d, 0o755))
		}
		bin := filepath.Join(home, "extauthz.test")
		self, err := os.ReadFile(os.Args[0])
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(bin, self, 0o755))
		cfg := filepath.Join(home, "extauthz.yaml")
		require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf("store: {path: %q}\naudit: {sink: none}\n", filepath.Join(home, "data", "k.db"))), 0o644))
		require.NoError(t, os.Mkdir(filepath.Join(home, "data"), 0o700))
		require.NoError(t, os.Chown(filepath.Join(home, "data"), 12345, 12345))
		asOther := func(stdout io.Writer, args ...string) (string, int) {
			cmd := exec.Command(bin, append(args, "--config", cfg)...)
			cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 12345, Gid: 12345}}
			var errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = stdout, &errb
			err := cmd.Run()
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return errb.String(), exit.ExitCode()
			}
			require.NoError(t, err)
			return errb.String(), 0
		}
		var made bytes.Buffer
		errOut, code := asOther(&made, "keys", "create", "--name", "mine", "--perm", "x", "--json")
		require.Equal(t, 0, code, errOut)
		var mine struct{ ID string }
		require.NoError(t, json.Unmarshal(made.Bytes(), &mine))

		name := filepath.Join(dir, "root-owned")
		f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY, 0o600)
		require.NoError(t, err)
		defer f.Close()
		require.NoError(t, f.Chmod(0o644))
		for _, args := range [][]string{{"keys", "create", "--name", "d", "--perm", "x"}, {"keys", "rotate", mine.ID}} {
			errOut, code := asOther(f, args...)
			assert.Equal(t, 1, code, errOut)
			assert.Contains(t, errOut, "other users may read")
			assert.Contains(t, errOut, "no key was made")
		}
		fi, err := os.Stat(name)
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "left as it was")
		out, err := os.ReadFile(name)
		require.NoError(t, err)
		assert.Empty(t, out)
		var listed bytes.Buffer
		errOut, code = asOther(&listed, "keys", "list", "--all", "--json")
		require.Equal(t, 0, code, errOut)
		assert.NotContains(t, listed.String(), `"name": "d"`, "no key was made")
		assert.NotContains(t, listed.String(), `"rotated_to": "key_`, "no key was rotated")
	})
}

// Revoking one key of a line of rotations leaves the others working: the
// keys it was rotated to, which whoever held a stolen key that could rotate
// itself may hold too, and an earlier key in its grace period. keys revoke
// names each one still live, so that "revoked" is not taken for the line.
func TestRevokingOneKeyOfALineNamesTheKeysOfItThatStillWork(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\naudit: {sink: none}\n", filepath.Join(t.TempDir(), "k.db")))
	made := func(args ...string) string {
		t.Helper()
		out, errOut, code := cliRun(t, append(args, "--json", "--config", path)...)
		require.Equal(t, 0, code, errOut)
		var k struct{ ID string }
		require.NoError(t, json.Unmarshal([]byte(out), &k), out)
		return k.ID
	}
	shown := func(id string) *time.Time {
		t.Helper()
		out, errOut, code := cliRun(t, "keys", "show", id, "--json", "--config", path)
		require.Equal(t, 0, code, errOut)
		var k struct {
			ExpiresAt *time.Time `json:"expires_at"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &k), out)
		return k.ExpiresAt
	}
	revoke := func(id string) string {
		t.Helper()
		out, errOut, code := cliRun(t, "keys", "revoke", id, "--config", path)
		require.Equal(t, 0, code, errOut)
		require.Contains(t, out, "revoked "+id)
		return errOut
	}

	// a → b → c, each rotation with a day's grace.
	a := made("keys", "create", "--name", "line", "--perm", "x")
	b := made("keys", "rotate", a, "--grace", "24h")
	c := made("keys", "rotate", b, "--grace", "24h")
	aEnds := shown(a).UTC().Format(time.RFC3339)

	// The list tells the keys in their grace period from the line's newest.
	out, errOut, code := cliRun(t, "keys", "list", "--config", path)
	require.Equal(t, 0, code, errOut)
	for id, status := range map[string]string{a: "grace", b: "grace", c: "live"} {
		assert.Regexp(t, regexp.MustCompile(`(?m)^`+id+`\s.*\s`+status+`\s`), out)
	}

	errOut = revoke(b)
	assert.Contains(t, errOut, c+", a later key of the same line of rotations, still works (it does not expire)")
	assert.Contains(t, errOut, a+", an earlier key of the same line of rotations, still works in its grace period (until "+aEnds+")")
	assert.NotContains(t, errOut, b+",")
	for _, id := range []string{a, c} {
		out, errOut, code := cliRun(t, "keys", "show", id, "--config", path)
		require.Equal(t, 0, code, errOut)
		assert.Regexp(t, `status:\s+live`, out, "%s is named because it still works", id)
	}

	errOut = revoke(a)
	assert.NotContains(t, errOut, b+",", "revoked: no longer live")
	assert.Contains(t, errOut, c+", a later key")
	assert.NotContains(t, errOut, "earlier key", "a has none")

	errOut = revoke(c)
	assert.NotContains(t, errOut, "note:", "nothing of the line works any more")

	// A key that was never rotated, revoked, says nothing more.
	lone := made("keys", "create", "--name", "lone", "--perm", "x")
	assert.NotContains(t, revoke(lone), "note:")
}

// An error about the config file names it, whatever its name: a file name
// of 16 or more of a key's characters ("extauthz-staging.yaml") was taken
// for a pasted key and the error read "[redacted: may be a key]: ...". A
// key given where a path goes, which names no file, is still never echoed.
func TestAnErrorAboutTheConfigFileNamesIt(t *testing.T) {
	dir := t.TempDir()
	const name = "extauthz-staging.yaml"
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("routes: [{path: /a, permision: [x]}]\n"), 0o600))
	t.Chdir(dir)
	for _, args := range [][]string{
		{"config", "check", "--config", name},
		{"config", "check", "--config=" + name},
		{"serve", "--config", name},
		{"keys", "list", "--config", name},
	} {
		_, errOut, code := cliRun(t, args...)
		assert.Equal(t, 1, code, errOut)
		assert.Contains(t, errOut, name+": routes[0].permision: unknown field", "extauthz %s", strings.Join(args, " "))
	}

	const pasted = "sk_0123456789012345678901234567890123456789012345678"
	for _, args := range [][]string{
		{"config", "check", "--config", pasted},
		{"keys", "list", "--config=" + pasted},
	} {
		_, errOut, code := cliRun(t, args...)
		assert.NotZero(t, code, errOut)
		assert.NotContains(t, errOut, pasted, "a key given as a path is never echoed")
		assert.Contains(t, errOut, "[redacted: may be a key]")
	}

	// A file named after the key it holds names a file, and is still never
	// echoed.
	require.NoError(t, os.WriteFile(filepath.Join(dir, pasted+".yaml"), []byte("routes: [{path: /a, permision: [x]}]\n"), 0o600))
	_, errOut, code := cliRun(t, "config", "check", "--config", pasted+".yaml")
	assert.Equal(t, 1, code, errOut)
	assert.NotContains(t, errOut, pasted)
	assert.Contains(t, errOut, "[redacted: may be a key]")
}
