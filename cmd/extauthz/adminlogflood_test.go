package main

import (
	"database/sql"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// Anyone who reaches the admin listener, with no key of any worth (a
// random key of the configured format), made the admin API write one
// warning line per request whenever its authentication answered 503: while
// the store is unreachable, and whenever the process's budget of
// unknown-key lookups (rate_limit.failed_attempts_total) is spent, which a
// flood of unknown keys on any listener does (the budget is shared). Every
// other line a client can make the server write is capped; these now are
// too (10 a minute, the next one saying how many were left out), and say
// which of the two it was.
func TestAnAdminAPIOutageIsNotALogLinePerRequest(t *testing.T) {
	const requests = 200
	format, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	flood := func(t *testing.T, adminURL string) map[int]int {
		statuses := map[int]int{}
		for range requests {
			key, err := format.Generate() // well-formed, unknown
			require.NoError(t, err)
			req, err := http.NewRequest("GET", adminURL+"/v1/keys", nil)
			require.NoError(t, err)
			req.Header.Set("X-Api-Key", key)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			statuses[resp.StatusCode]++
		}
		return statuses
	}
	const line = "\"msg\":\"admin API: " // any of its lines

	t.Run("the process's budget of unknown keys spent", func(t *testing.T) {
		logs := &syncbuf.Buffer{}
		path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%s"+
			"rate_limit: {failed_attempts_total: 20/h}\n", filepath.Join(t.TempDir(), "k.db"), testRoutes))
		ts := startServerOut(t, path, serverOutput{logs: logs, audit: &syncbuf.Buffer{}})
		statuses := flood(t, ts.adminURL)
		n := strings.Count(logs.String(), line)
		t.Logf("%d requests with made-up keys: statuses %v; %d warning lines %q", requests, statuses, n, line)
		require.Positive(t, statuses[http.StatusServiceUnavailable], "the budget ran out")
		assert.LessOrEqual(t, n, listenerLogBurst, "a warning line per refused request: the client chooses how many the log gets")
		assert.Contains(t, logs.String(), "too many unknown API keys are being checked", "the line says why")
	})

	t.Run("redis unreachable", func(t *testing.T) {
		r := redistest.Start(t)
		logs := &syncbuf.Buffer{}
		path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\n"+
			"store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\n%s", r.URL(0), testRoutes))
		ts := startServerOut(t, path, serverOutput{logs: logs, audit: &syncbuf.Buffer{}})
		r.Stop()
		statuses := flood(t, ts.adminURL)
		n := strings.Count(logs.String(), line)
		t.Logf("%d requests with made-up keys while Redis is down: statuses %v; %d warning lines %q", requests, statuses, n, line)
		require.Positive(t, statuses[http.StatusServiceUnavailable])
		assert.LessOrEqual(t, n, listenerLogBurst, "a warning line per refused request: the client chooses how many the log gets")
	})
}

// The lines of authentication's 503, which anyone who reaches the admin
// port causes with made-up keys once the process's unknown-key budget is
// spent, shared one cap with the error line of an authenticated caller's
// request that failed inside the server: ten requests a minute with no key
// hid every internal error of the operators' own calls. They have a cap
// each now.
func TestAnonymousNoiseDoesNotHideAnInternalErrorOfAnAdminCall(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "k.db")
	logs := &syncbuf.Buffer{}
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%s"+
		"rate_limit: {failed_attempts_total: 20/h}\n", dbPath, testRoutes))
	ts := startServerOut(t, path, serverOutput{logs: logs, audit: &syncbuf.Buffer{}})
	admin, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	_, broken := ts.create(t, keystore.Spec{Name: "broken", Permissions: []string{"read:users"}})

	// The operator's key is known to the cache before the flood.
	status, body, _ := get(t, ts.adminURL+"/v1/keys", map[string]string{"X-Api-Key": admin})
	require.Equal(t, http.StatusOK, status, body)

	// A record the server cannot read: its next read is an internal error.
	db, err := sql.Open("sqlite", dbPath)
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(`UPDATE keys SET permissions = 'not json' WHERE id = ?`, broken.ID)
	require.NoError(t, err)

	// Anyone, with made-up keys: the budget of unknown keys is spent, and
	// each further request is a 503 and an "admin API:" line, up to the cap.
	format := ts.mgr.Format
	refused := 0
	for range 40 {
		key, err := format.Generate()
		require.NoError(t, err)
		status, _, _ := get(t, ts.adminURL+"/v1/keys", map[string]string{"X-Api-Key": key})
		if status == http.StatusServiceUnavailable {
			refused++
		}
	}
	require.Greater(t, refused, 10, "the budget ran out")

	// The operator's own call fails inside the server.
	status, body, _ = get(t, ts.adminURL+"/v1/keys/"+broken.ID, map[string]string{"X-Api-Key": admin})
	require.Equal(t, http.StatusInternalServerError, status, body)
	assert.True(t, strings.Contains(logs.String(), "admin API request failed"),
		"an internal error of an authenticated admin call is not logged at all: ten requests with made-up keys spent the cap it shares")
}
