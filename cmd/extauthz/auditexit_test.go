package main

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
)

// Every change is audited, and the CLI's changes are audited only by the
// CLI itself (actor "cli"). When the audit sink refused the event (here the
// key-change stream <prefix>audit:keys cannot take an XADD), the change was
// in effect but nowhere in the trail, and the command exited 0. It exits 3
// now, saying the change stands and its event was lost.
func TestACLIChangeWhoseAuditEventIsLostExitsThree(t *testing.T) {
	srv := redistest.Start(t)
	path := writeConfig(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\naudit: {sink: redis}\n", srv.URL(0)))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "a", "--perm", "read", "--json")
	require.Equal(t, 0, code, errOut)
	var made struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &made))
	n, err := srv.Do("XLEN", "extauthz:audit:keys")
	require.NoError(t, err)
	require.Equal(t, ":1", n, "the create was audited to the stream")

	// The audit stream can no longer be written (any sink failure would do).
	_, err = srv.Do("DEL", "extauthz:audit:keys")
	require.NoError(t, err)
	_, err = srv.Do("SET", "extauthz:audit:keys", "not a stream")
	require.NoError(t, err)

	_, errOut, code = cliRun(t, "keys", "revoke", made.ID, "--config", path)
	shown, _, _ := cliRun(t, "keys", "show", made.ID, "--config", path)
	require.Contains(t, shown, "revoked", "the revocation itself was made")
	assert.Equal(t, 3, code, "a change made but left out of the audit trail reported as %d: %s", code, errOut)
	assert.Contains(t, errOut, "the change was made and is in effect, but its audit event could not be written")

	out, errOut, code = cliRun(t, "keys", "create", "--config", path, "--name", "b", "--perm", "read", "--json")
	assert.Equal(t, 3, code, errOut)
	assert.Contains(t, out, `"key"`, "the new key's secret is still shown: the key exists")

	_, errOut, code = cliRun(t, "keys", "list", "--config", path)
	assert.Equal(t, 0, code, "a read makes no audit event: %s", errOut)
}
