package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	auditredis "github.com/extauthz/extauthz/audit/redis"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// What a key holder did through the admin API once it was authenticated
// and counted within its rate limit (every read of keys, every change
// refused as beyond its reach or as a conflict) goes with the key changes
// to <prefix>audit:keys: a flood of decisions, which anyone can send with
// no key at all, trims <prefix>audit within seconds, and would take a
// stolen keys:read key's reads, or a stolen writer's refused escalations,
// out of the trail with it. What anyone can cause at the admin API (no
// key, an unknown one, a data-plane key without keys: permissions) stays
// in <prefix>audit.
func TestAFloodOfDecisionsTrimsNoAdminCallOfAKeyHolder(t *testing.T) {
	r := redistest.Start(t)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n"+
		"store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\naudit: {sink: redis, stream_cap: 10}\n%s", r.URL(0), testRoutes))
	ts := startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}, audit: &syncbuf.Buffer{}})

	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"keys:read"}, Owner: "team"})
	writer, _ := ts.create(t, keystore.Spec{Name: "writer", Permissions: []string{"keys:write", "read:users"}, Owner: "team"})
	app, _ := ts.create(t, keystore.Spec{Name: "app", Permissions: []string{"read:users"}, Owner: "team"})
	_, mine := ts.create(t, keystore.Spec{Name: "mine", Permissions: []string{"read:users"}, Owner: "team"})
	_, theirs := ts.create(t, keystore.Spec{Name: "theirs", Permissions: []string{"read:users"}, Owner: "others"})
	oneAMinute, err := keystore.ParseRateLimit("1/m")
	require.NoError(t, err)
	hasty, _ := ts.create(t, keystore.Spec{Name: "hasty", Permissions: []string{"keys:read"}, Owner: "team", RateLimit: oneAMinute})
	revoked, gone := ts.create(t, keystore.Spec{Name: "gone", Permissions: []string{"keys:read"}, Owner: "team"})
	unknown, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	for _, id := range []string{mine.ID, gone.ID} {
		_, err := ts.mgr.Revoke(context.Background(), id, "test")
		require.NoError(t, err)
	}

	call := func(id, key, method, p, body string) int {
		t.Helper()
		req, err := http.NewRequest(method, ts.adminURL+p, strings.NewReader(body))
		require.NoError(t, err)
		if key != "" {
			req.Header.Set("x-api-key", key)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Request-Id", id)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	kept := []struct {
		id, key, method, path, body string
		status                      int
		event                       string
	}{
		{"list", reader, "GET", "/v1/keys", "", 200, "admin.read"},
		{"show", reader, "GET", "/v1/keys/" + mine.ID, "", 200, "admin.read"},
		{"reader-writes", reader, "DELETE", "/v1/keys/" + mine.ID, "", 403, "admin.auth_failed"},
		{"grant-admin", writer, "POST", "/v1/keys", `{"name":"x","permissions":["admin"]}`, 403, "admin.auth_failed"},
		{"another-owner", writer, "POST", "/v1/keys", `{"name":"x","permissions":["read:users"],"owner":"others"}`, 403, "admin.auth_failed"},
		{"list-another-owner", reader, "GET", "/v1/keys?owner=others", "", 403, "admin.auth_failed"},
		{"not-yours", writer, "DELETE", "/v1/keys/" + theirs.ID, "", 404, "admin.auth_failed"},
		{"retired", writer, "PATCH", "/v1/keys/" + mine.ID, `{"name":"again"}`, 409, "admin.auth_failed"},
	}
	for _, c := range kept {
		require.Equal(t, c.status, call(c.id, c.key, c.method, c.path, c.body), c.id)
	}
	// What anyone who reaches the admin API can cause, as often as they
	// like: kept apart, it would let them trim the key changes instead.
	anyones := []struct {
		id, key string
		status  int
	}{
		{"no-key", "", 401},
		{"unknown-key", unknown, 401},
		// A key without keys: permissions: every client of the data plane
		// may hold one, and its refusals, kept apart, trimmed a revocation
		// out of a stream capped at 10 in 300 calls.
		{"no-keys-permission", app, 403},
		{"revoked-key", revoked, 401},
		{"within-its-limit", hasty, 200}, // an admin.read, kept; the next call is over the limit
		{"over-its-limit", hasty, 429},
	}
	for _, c := range anyones {
		require.Equal(t, c.status, call(c.id, c.key, "GET", "/v1/keys", ""), c.id)
	}

	// The flood: checks with no key, far more than the stream's cap.
	const flood = 1000
	for i := range flood {
		ts.check(t, "GET", "/api/users", map[string]string{"x-request-id": fmt.Sprintf("flood-%d", i)})
	}

	opt, err := goredis.ParseURL(r.URL(0))
	require.NoError(t, err)
	rc := goredis.NewClient(opt)
	defer rc.Close()
	events := func(stream string) map[string]map[string]any {
		msgs, err := rc.XRange(context.Background(), stream, "-", "+").Result()
		require.NoError(t, err)
		byID := map[string]map[string]any{}
		for _, m := range msgs {
			var e map[string]any
			require.NoError(t, json.Unmarshal([]byte(m.Values["event"].(string)), &e))
			if id, ok := e["request_id"].(string); ok {
				byID[id] = e
			}
		}
		return byID
	}
	last := fmt.Sprintf("flood-%d", flood-1)
	require.Eventually(t, func() bool { return events(auditredis.StreamKey("t:"))[last] != nil }, 10*time.Second, 20*time.Millisecond,
		"the flood's last decision reaches the stream")
	require.Nil(t, events(auditredis.StreamKey("t:"))["flood-0"], "the flood trimmed the decisions' stream")

	trail := events(auditredis.ChangeStreamKey("t:"))
	for _, c := range anyones {
		if c.status != 200 {
			assert.Nil(t, trail[c.id], "%s: a refusal anyone can cause is not kept with the key changes", c.id)
		}
	}
	if assert.NotNil(t, trail["within-its-limit"]) {
		assert.Equal(t, "admin.read", trail["within-its-limit"]["event"])
	}
	for _, c := range kept {
		e := trail[c.id]
		if assert.NotNil(t, e, "%s: %s %s is not in the trail after a flood of decisions", c.id, c.method, c.path) {
			assert.Equal(t, c.event, e["event"], c.id)
			assert.EqualValues(t, c.status, e["status"], c.id)
			assert.NotEmpty(t, e["key_id"], c.id)
		}
	}
}
