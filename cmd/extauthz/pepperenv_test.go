package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A pepper (or Redis password) made the usual way for a secret of letters
// and digits, base32 (head -c 20 /dev/urandom | base32: 32 characters of
// A-Z and 2-7, no padding), is upper case, like a variable's name. Written
// where its variable's name goes (pepper_env: <the pepper>), it names no
// set variable, and no command's message quotes it back: not config check
// (text or JSON), serve or keys create.
func TestAnUpperCasePepperWrittenAsItsVariableIsNotEchoed(t *testing.T) {
	for _, pepper := range []string{
		"JBSWY3DPEHPK3PXPKRUGS4ZANFZSAYJA", // base32 of 20 random bytes
		"9F86D081884C7D659A2FEAA0C55AD015", // upper-case hex
	} {
		store := fmt.Sprintf("store: {path: %q}\nlisten: {grpc: off, http: off, admin: off}\n", filepath.Join(t.TempDir(), "k.db"))
		path := writeConfig(t, store+"hashing: {pepper_env: "+pepper+"}\n")
		for _, args := range [][]string{{"config", "check"}, {"config", "check", "--json"}, {"serve"}, {"keys", "create", "--name", "n", "--perm", "p"}} {
			out, errOut, code := cliRun(t, append(args, "--config", path)...)
			assert.Equal(t, 1, code, errOut)
			assert.NotContains(t, out+errOut, pepper[:12], "%s echoed the pepper: %s", strings.Join(args, " "), out+errOut)
		}
	}
}

// The same pepper, with development: true (which starts without a pepper
// variable set), against a store the fleet marked with its own: the server
// logs the mismatch, naming the field without quoting what it holds.
func TestThePepperMismatchLogDoesNotEchoAPepperWrittenAsItsVariable(t *testing.T) {
	const pepper = "JBSWY3DPEHPK3PXPKRUGS4ZANFZSAYJA" // base32 of 20 random bytes
	path := writeConfig(t, "development: true\nhashing: {pepper_env: "+pepper+"}\n"+
		"listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)

	// The fleet's processes marked the store with their pepper.
	cfg, err := config.Load(path)
	require.NoError(t, err)
	be, err := openBackend(cfg, nil)
	require.NoError(t, err)
	fleet := &keystore.Manager{Store: be.store, Hasher: keystore.NewHasher([]byte(testPepper)), Format: cfg.Keys.Format}
	_, _, err = fleet.Create(context.Background(), keystore.Spec{Name: "the fleet's", Permissions: []string{"read:users"}}, "test")
	require.NoError(t, err)
	require.NoError(t, be.Close())

	logs := &syncbuf.Buffer{}
	startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard})
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "the hashing pepper differs from the one the key store's keys were hashed with")
	}, 10*time.Second, 20*time.Millisecond)
	for line := range strings.SplitSeq(logs.String(), "\n") {
		assert.NotContains(t, line, pepper[:12], "a log line echoes the pepper")
	}
}
