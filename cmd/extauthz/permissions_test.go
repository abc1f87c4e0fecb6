package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A route's permissions written as an empty list (a template's list
// that rendered to nothing: Helm's toJson of an empty list, a jq filter
// that matched nothing) was read as "no permissions needed", so every valid
// key passed the route; it is refused now, at start and on reload. The same list written as null is refused
// (TestANullListIsRefusedLikeAnEmptyOne), and so is methods: []
// (TestARouteWithAnEmptyListOfMethodsIsRefused), both for exactly this
// reason; permissions: [] is the way around it. Here a named policy's
// admin route loses its permission on a reload, and a key without admin
// gets in.
func TestARouteWithAnEmptyListOfPermissionsIsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	file := func(perms string) string {
		return fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n"+
			"routes: [{path: /healthz, public: true}]\n"+
			"unselected: deny\n"+
			"policies:\n"+
			"  - name: billing\n"+
			"    match: {context: {policy: billing}}\n"+
			"    routes:\n"+
			"      - {path: \"/admin/**\", permissions: %s}\n"+
			"      - {path: \"/invoices/**\", permissions: [read:invoices]}\n", filepath.Join(dir, "k.db"), perms)
	}
	require.NoError(t, os.WriteFile(path, []byte(file("[billing:admin]")), 0o600))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard}, func(s *server) { s.reloadEvery = time.Hour })
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:invoices"}, Policies: []string{"billing"}})
	adminCode := func() string {
		t.Helper()
		resp, err := ts.client.Check(context.Background(), meshCheck("/admin/refunds", "api.example.com", reader, map[string]string{"policy": "billing"}, ""))
		require.NoError(t, err)
		code, _ := denial(t, resp)
		return code
	}
	require.Equal(t, "permission_denied", adminCode())

	require.NoError(t, os.WriteFile(path, []byte(file("[]")), 0o600))
	ts.srv.reload("test", nil)
	assert.Contains(t, logs.String(), "config reload failed; keeping the running config",
		"permissions: [] was applied: the route now needs no permission at all")
	assert.Equal(t, "permission_denied", adminCode(), "a key without billing:admin passes /admin/** after the reload")
}
