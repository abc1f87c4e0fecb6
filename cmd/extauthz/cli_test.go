package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/sqlite"
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

func TestCLIUsageAndVersion(t *testing.T) {
	out, _, code := cliRun(t, "version")
	assert.Equal(t, 0, code)
	assert.Equal(t, "extauthz dev\n", out)

	_, errOut, code := cliRun(t, "frobnicate")
	assert.Equal(t, 2, code)
	assert.Contains(t, errOut, `unknown command "frobnicate"`)
	assert.Contains(t, errOut, "usage: extauthz")

	_, _, code = cliRun(t)
	assert.Equal(t, 2, code)
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

func TestKeysCommandsRefuseBadInputAndChangeNothing(t *testing.T) {
	dir := t.TempDir()
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\nkeys: {max_per_owner: 2}\n", filepath.Join(dir, "k.db")))
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"create needs a name", []string{"keys", "create", "--perm", "x"}, 1, "name: required"},
		{"create needs a permission", []string{"keys", "create", "--name", "n"}, 2, "--perm is required"},
		{"a bad rate names the field", []string{"keys", "create", "--name", "n", "--perm", "x", "--rate", "lots"}, 1, "rate_limit:"},
		{"a bad CIDR names the field", []string{"keys", "create", "--name", "n", "--perm", "x", "--ip", "10.0.0.1/8"}, 1, "ip: "},
		{"an unknown flag is a usage error", []string{"keys", "create", "--nmae", "n"}, 2, "flag provided but not defined"},
		{"show wants an id", []string{"keys", "show"}, 2, "exactly one key id"},
		{"a pasted key is not echoed", []string{"keys", "show", "sk_0123456789012345678901234567890123456789012345678"}, 1, "not a key id"},
		{"an unknown id", []string{"keys", "revoke", "key_0000000000000000000A"}, 1, "no key with id key_0000000000000000000A"},
		{"an unknown subcommand", []string{"keys", "burn"}, 2, `unknown keys subcommand "burn"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, errOut, code := cliRun(t, append(tt.args, "--config", path)...)
			assert.Equal(t, tt.code, code, errOut)
			assert.Contains(t, errOut, tt.want)
			assert.NotContains(t, errOut, "sk_0123456789012345678901234567890123456789012345678")
		})
	}
	out, _, code := cliRun(t, "keys", "list", "--all", "--json", "--config", path)
	require.Equal(t, 0, code)
	assert.JSONEq(t, "[]", out, "nothing was created by the refused commands")
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
}

func TestHealthcheck(t *testing.T) {
	port := redistest.FreePort(t)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: off, http: \"127.0.0.1:%d\", admin: off}\nstore: {path: %q}\n", port, filepath.Join(t.TempDir(), "k.db")))
	_, _, code := cliRun(t, "healthcheck", "--config", path)
	assert.Equal(t, 1, code, "nothing listens yet")

	cmd := exec.Command(os.Args[0], "serve", "--config", path)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var stderr syncBuffer
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
		{"a bad expiry", []string{"--expires-at", "tomorrow"}, 1, "expires-at: want an RFC 3339 time"},
		{"an expiry in the past", []string{"--expires-at", "2001-01-01T00:00:00Z"}, 1, "expires_at: must be in the future"},
		{"a bidi override in the name", []string{"--name", "pay\u202Eroll"}, 1, "name: must not contain control, bidirectional, invisible or formatting characters (U+202E at byte 3)"},
		{"a zero-width space in a permission", []string{"--perm", "read\u200B"}, 1, "permissions[0]: must not contain control, bidirectional, invisible or formatting characters (U+200B at byte 4)"},
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
		assert.Equal(t, 1, code)
		assert.Contains(t, errOut, "name: must not contain control, bidirectional, invisible or formatting characters (U+2066 at byte 1)")
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
		{"a policy name with a capital", []string{"--policy", "Billing"}, 1, "policies[0]: 1 to 63 characters"},
		{"a metadata entry without =", []string{"--meta", "plan"}, 2, "--meta wants name=value"},
		{"an empty metadata value", []string{"--meta", "plan="}, 1, "meta.plan: values are 1 to 256 bytes"},
		{"a metadata name with a dash", []string{"--meta", "plan-tier=x"}, 1, "meta: names are 1 to 64 characters"},
		{"a key pasted as metadata", []string{"--meta", "note=" + secret}, 1, "meta: an entry contains an API key"},
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
	dir := t.TempDir()
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(dir, "k.db")))
	// A record written before names were checked, straight into the store.
	st, err := sqlite.Open(filepath.Join(dir, "k.db"))
	require.NoError(t, err)
	now := time.Now().UTC()
	id, err := keystore.NewID(now)
	require.NoError(t, err)
	require.NoError(t, st.Create(t.Context(), &keystore.Key{ID: id, Name: "pay\u202Eroll\x1b[2J", Owner: "team",
		Permissions: []string{"read\u200B"}, CreatedAt: now}, keystore.NewHasher(nil).Hash("old"), 0))
	require.NoError(t, st.Close())

	for _, args := range [][]string{{"keys", "list"}, {"keys", "show", id}} {
		out, errOut, code := cliRun(t, append(args, "--config", path)...)
		require.Equal(t, 0, code, errOut)
		assert.Contains(t, out, `"pay\u202eroll\x1b[2J"`, "%v", args)
		assert.Contains(t, out, `"read\u200b"`, "%v", args)
		assert.NotContains(t, out, "\u202E")
		assert.NotContains(t, out, "\x1b")
	}
}
