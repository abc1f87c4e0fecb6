package main

import (
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
