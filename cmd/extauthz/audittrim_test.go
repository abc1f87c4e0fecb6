package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	auditredis "github.com/extauthz/extauthz/audit/redis"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A data-plane key with no keys: permission at all (what every API
// consumer holds) could fill <prefix>audit:keys with its own refused admin
// calls (a 403 permission_denied was kept apart as a key holder's), and so
// trim a key's revocation out of the key changes' capped stream within the
// default admin rate limit, with no count or log of what was trimmed. Its
// refusals are audited with the decisions now.
func TestADataPlaneKeyCannotTrimARevocationOutOfTheKeysStream(t *testing.T) {
	r := redistest.Start(t)
	logs := &syncbuf.Buffer{}
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n"+
		"store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\naudit: {sink: redis, stream_cap: 10}\n%s", r.URL(0), testRoutes))
	ts := startServerOut(t, path, serverOutput{logs: logs, audit: &syncbuf.Buffer{}})

	writer, _ := ts.create(t, keystore.Spec{Name: "writer", Permissions: []string{"keys:write"}, Owner: "team"})
	_, victim := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}, Owner: "team"})
	app, _ := ts.create(t, keystore.Spec{Name: "app", Permissions: []string{"read:users"}, Owner: "customer"})

	call := func(method, p, key string) int {
		req, err := http.NewRequest(method, ts.adminURL+p, nil)
		require.NoError(t, err)
		req.Header.Set("x-api-key", key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, 200, call("DELETE", "/v1/keys/"+victim.ID, writer))

	opt, err := goredis.ParseURL(r.URL(0))
	require.NoError(t, err)
	rc := goredis.NewClient(opt)
	defer rc.Close()
	revoked := func() bool {
		msgs, err := rc.XRange(context.Background(), auditredis.ChangeStreamKey("t:"), "-", "+").Result()
		require.NoError(t, err)
		for _, m := range msgs {
			var e map[string]any
			require.NoError(t, json.Unmarshal([]byte(m.Values["event"].(string)), &e))
			if e["event"] == "key.revoked" && e["key_id"] == victim.ID {
				return true
			}
		}
		return false
	}
	require.Eventually(t, revoked, 5*time.Second, 20*time.Millisecond, "the revocation reaches audit:keys")

	for range 300 { // within the default admin.rate_limit of 600/m
		require.Equal(t, 403, call("GET", "/v1/keys", app))
	}
	time.Sleep(500 * time.Millisecond)
	n, err := rc.XLen(context.Background(), auditredis.ChangeStreamKey("t:")).Result()
	require.NoError(t, err)
	if !revoked() {
		t.Errorf("300 refused GET /v1/keys by a read:users key trimmed key.revoked of %s out of audit:keys (%d entries left); server log: %q",
			victim.ID, n, logs.String())
	}
}
