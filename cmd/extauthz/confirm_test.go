package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// startConfirming starts a server whose store is a Redis primary with one
// replica, confirming changes with it (store.redis.confirm_replicas: 1)
// within 1 s, and auditing to the buffer it returns with its config's
// path and the replica.
func startConfirming(t *testing.T) (*testServer, string, *redistest.Server, *syncbuf.Buffer) {
	t.Helper()
	primary := redistest.Start(t)
	replica := redistest.StartReplica(t, primary, redistest.Options{})
	audit := new(syncbuf.Buffer)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: stdout}\n"+
		"store: {backend: redis, redis: {url: %q, prefix: \"t:\", confirm_replicas: 1, confirm_timeout: 1s}}\n%s", primary.URL(0), testRoutes))
	return startServerOut(t, path, serverOutput{logs: io.Discard, audit: audit}), path, replica, audit
}

// With store.redis.confirm_replicas, a revocation returns 200 only once a
// replica holds it, so that a failover cannot bring the key back
// unnoticed. When the replica does not confirm in time, the revocation is
// still in effect (every server refuses the key) and audited, the admin API
// answers 503 unconfirmed saying so, and the same request again confirms it.
func TestARevocationNoReplicaConfirmedIsInEffectAndSaysSo(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ts, path, replica, audit := startConfirming(t)
	adminKey, admin := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	adminID := admin.ID
	key, k := ts.create(t, keystore.Spec{Name: "svc", Permissions: []string{"read:users"}})

	revoke := func() (int, http.Header, string) {
		req, err := http.NewRequest("DELETE", ts.adminURL+"/v1/keys/"+k.ID, nil)
		require.NoError(t, err)
		req.Header.Set("X-Api-Key", adminKey)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header, string(b)
	}
	checkCode := func() int32 {
		resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
		if resp.GetDeniedResponse() == nil {
			return 200
		}
		return int32(resp.GetDeniedResponse().GetStatus().GetCode())
	}
	require.EqualValues(t, 200, checkCode())

	replica.Pause()
	status, h, body := revoke()
	replica.Resume()
	require.Equal(t, http.StatusServiceUnavailable, status, body)
	require.Equal(t, "unconfirmed", h.Get("x-authz-code"))
	require.Equal(t, "1", h.Get("Retry-After"))
	require.Contains(t, body, "the change is made and in effect")
	require.Contains(t, body, "repeat the same request")
	require.Eventually(t, func() bool { return checkCode() == 401 }, 5*time.Second, 10*time.Millisecond,
		"an unconfirmed revocation must be in effect at once")
	require.Eventually(t, func() bool {
		return strings.Contains(audit.String(), `"event":"key.revoked"`) && strings.Contains(audit.String(), k.ID)
	}, 5*time.Second, 10*time.Millisecond, "the revocation was made, so it is audited")

	// The CLI says the same and fails, so that a script repeats it.
	replica.Pause()
	cmd := exec.Command(os.Args[0], "keys", "revoke", k.ID, "--config", path)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	out, err := cmd.CombinedOutput()
	replica.Resume()
	require.Error(t, err, "keys revoke must fail when no replica confirmed it: %s", out)
	require.Contains(t, string(out), "0 of the 1 replicas")
	require.Contains(t, string(out), "stored on the primary and in effect")

	status, _, body = revoke()
	require.Equal(t, http.StatusOK, status, "the same request again, with the replica back, confirms it: %s", body)
	require.Contains(t, body, `"revoked_at"`)
	require.EqualValues(t, 401, checkCode())

	// One revocation, one event, naming who made it: the repeats (the
	// CLI's, the admin API's) that confirm it change nothing, so they are
	// not audited again.
	time.Sleep(100 * time.Millisecond) // a second event would have come by now
	revoked := auditEventsOf(t, audit.String(), "key.revoked")
	require.Len(t, revoked, 1, audit.String())
	require.Equal(t, k.ID, revoked[0]["key_id"])
	require.Equal(t, adminID, revoked[0]["actor"])
}

// A rotation waits for the replicas as a revocation does: one they did not
// confirm would, lost in a failover, leave the old key working for good.
// But a rotation cannot be repeated, and its secret is shown only once, so
// an unconfirmed one still succeeds (201, the CLI exit status 0) with the
// secret, and says what confirms it; and it is in effect and audited.
func TestARotationNoReplicaConfirmedHandsOutItsSecretAndSaysSo(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ts, path, replica, audit := startConfirming(t)
	adminKey, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	_, k := ts.create(t, keystore.Spec{Name: "svc", Permissions: []string{"read:users"}})
	allowed := func(key string) bool {
		return ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetDeniedResponse() == nil
	}

	replica.Pause()
	created := adminNewKey(t, ts, adminKey, "/v1/keys/"+k.ID+"/rotate", `{"grace": "1h"}`)
	replica.Resume()
	require.Contains(t, created.Unconfirmed, "a failover could still undo it")
	require.Contains(t, created.Unconfirmed, "revoke the old key")
	require.Eventually(t, func() bool { return allowed(created.Key) }, 5*time.Second, 10*time.Millisecond, "the rotation is in effect")
	require.Eventually(t, func() bool {
		return strings.Contains(audit.String(), `"event":"key.rotated"`) && strings.Contains(audit.String(), created.ID)
	}, 5*time.Second, 10*time.Millisecond, "the rotation was made, so it is audited")

	// The CLI prints the key and its secret, warns, and succeeds.
	replica.Pause()
	printed, stderr := cliUnconfirmed(t, "keys", "rotate", created.ID, "--json", "--config", path)
	replica.Resume()
	require.Contains(t, stderr, "warning: rotate "+created.ID)
	require.Contains(t, stderr, "revoke the old key")
	require.Eventually(t, func() bool { return allowed(printed.Key) }, 5*time.Second, 10*time.Millisecond)
}

// A create waits for the replicas too: one lost in a failover leaves its
// holder a secret every check refuses, after being told it worked. Like a
// rotation it hands out its secret once and cannot be repeated (that would
// make a second key), so an unconfirmed create still succeeds (201, the
// CLI exit status 0) with the secret and a warning, is in effect and is
// audited.
func TestACreateNoReplicaConfirmedHandsOutItsSecretAndSaysSo(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ts, path, replica, audit := startConfirming(t)
	adminKey, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	allowed := func(key string) bool {
		return ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetDeniedResponse() == nil
	}
	const body = `{"name": "svc", "permissions": ["read:users"]}`
	c := adminNewKey(t, ts, adminKey, "/v1/keys", body)
	require.Empty(t, c.Unconfirmed, "with the replica running the create is confirmed")

	replica.Pause()
	c = adminNewKey(t, ts, adminKey, "/v1/keys", body)
	replica.Resume()
	require.Contains(t, c.Unconfirmed, "a failover could still undo it")
	require.Contains(t, c.Unconfirmed, "do not create it again")
	require.True(t, allowed(c.Key), "the create is in effect")
	require.Eventually(t, func() bool {
		return strings.Contains(audit.String(), `"event":"key.created"`) && strings.Contains(audit.String(), c.ID)
	}, 5*time.Second, 10*time.Millisecond, "the create was made, so it is audited")

	// The CLI prints the key and its secret, warns, and succeeds.
	replica.Pause()
	printed, stderr := cliUnconfirmed(t, "keys", "create", "--name", "cli", "--perm", "read:users", "--json", "--config", path)
	replica.Resume()
	require.Contains(t, stderr, "warning: create "+printed.ID)
	require.Contains(t, stderr, "need not be made again")
	require.Eventually(t, func() bool { return allowed(printed.Key) }, 5*time.Second, 10*time.Millisecond)
}

// unconfirmedKey is what a CLI command that hands out a secret prints with
// --json.
type unconfirmedKey struct {
	ID          string `json:"id"`
	Key         string `json:"key"`
	Unconfirmed string `json:"unconfirmed"`
}

// adminNewKey POSTs body to the admin API's path, a create or a rotation,
// and returns the new key it answers: 201, with the key's secret and a
// Location naming it, confirmed or not.
func adminNewKey(t *testing.T, ts *testServer, adminKey, path, body string) unconfirmedKey {
	t.Helper()
	req, err := http.NewRequest("POST", ts.adminURL+path, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-Api-Key", adminKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusCreated, resp.StatusCode)
	var c unconfirmedKey
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&c))
	require.NotEmpty(t, c.Key, "the secret exists nowhere else: it must reach the caller")
	require.Equal(t, "/v1/keys/"+c.ID, resp.Header.Get("Location"))
	return c
}

// cliUnconfirmed runs a CLI command that makes a key (create, rotate) while
// no replica confirms it: it must succeed and print the key, its secret and
// the unconfirmed note on stdout, and a warning (returned) on stderr
// without the secret.
func cliUnconfirmed(t *testing.T, args ...string) (unconfirmedKey, string) {
	t.Helper()
	stdout, stderr, code := cliRun(t, args...)
	require.Zero(t, code, "stdout: %s\nstderr: %s", stdout, stderr)
	var printed unconfirmedKey
	require.NoError(t, json.Unmarshal([]byte(stdout), &printed), stdout)
	require.NotEmpty(t, printed.Key)
	require.Contains(t, printed.Unconfirmed, "0 of the 1 replicas")
	require.NotContains(t, stderr, printed.Key, "the secret goes to stdout only")
	return printed, stderr
}

// A server told to confirm changes with more replicas than the primary has
// says so at start, once Redis answers, and says it is fine when it is.
func TestTooFewReplicasToConfirmChangesAreWarnedAtStart(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	start := func(t *testing.T, srv *redistest.Server) *syncbuf.Buffer {
		var logs syncbuf.Buffer
		path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
			"store: {backend: redis, redis: {url: %q, prefix: \"t:\", confirm_replicas: 1, confirm_timeout: 200ms}}\n", srv.URL(0)))
		startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
		return &logs
	}
	t.Run("without a replica: a warning naming both counts", func(t *testing.T) {
		logs := start(t, redistest.Start(t))
		require.Eventually(t, func() bool {
			return strings.Contains(logs.String(), `"confirm_replicas":1,"acknowledging":0`)
		}, 10*time.Second, 20*time.Millisecond, logs.String())
		require.Contains(t, logs.String(), "will wait confirm_timeout and answer 503 unconfirmed")
	})
	t.Run("with one: confirmed", func(t *testing.T) {
		primary := redistest.Start(t)
		redistest.StartReplica(t, primary, redistest.Options{})
		logs := start(t, primary)
		require.Eventually(t, func() bool {
			return strings.Contains(logs.String(), "changes to keys are confirmed by the primary's replicas")
		}, 10*time.Second, 20*time.Millisecond, logs.String())
		require.NotContains(t, logs.String(), "acknowledging")
	})
}
