package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A config file changed while the server starts (after it was read, before
// the watch began: the store opening, the listeners binding) is loaded like
// any other change. The watch took the file as it was when the watch began
// for the one in force, so such a change was never applied, and the server
// went on deciding by the routes the operator had replaced until the file
// changed again.
func TestAConfigFileChangedDuringStartIsLoaded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	head := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n", filepath.Join(dir, "k.db"))
	require.NoError(t, os.WriteFile(path, []byte(head+"routes: [{path: /api/users, permissions: [read:users]}]\n"), 0o600))

	var logs syncbuf.Buffer
	// pre runs after the config was read and the server built, before it
	// listens and runs: the operator's edit (a ConfigMap update, a deploy
	// tool's write) lands while the server starts.
	ts := startServerTuned(t, path, serverOutput{logs: &logs, audit: io.Discard}, func(*server) {
		time.Sleep(10 * time.Millisecond) // a different mtime even on coarse clocks
		require.NoError(t, os.WriteFile(path, []byte(head+"routes: [{path: /api/users, permissions: [admin:users]}]\n"), 0o600))
	})
	reader, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})
	code := func() string {
		c, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": reader}))
		return c
	}
	// The watch polls every 20 ms here: give it far more than enough.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) && code() != "permission_denied" {
		time.Sleep(20 * time.Millisecond)
	}
	require.Equal(t, "permission_denied", code(),
		"the file on disk takes read:users off /api/users, but the server still lets the reader in:\n%s", logs.String())
}
