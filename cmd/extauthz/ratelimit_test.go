package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// TestTwoReplicasShareOneCount sends one key's checks to two servers on one
// Redis, concurrently: together they allow exactly the key's N.
func TestTwoReplicasShareOneCount(t *testing.T) {
	r := redistest.Start(t)
	yaml := fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\n%s", r.URL(0), testRoutes)
	a, b := startServer(t, yaml), startServer(t, yaml)
	key, _ := a.create(t, keystore.Spec{Name: "shared", Permissions: []string{"read:users"}, RateLimit: rateLimit(t, "25/m")})

	var allowed, limited atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := []*testServer{a, b}[w%2]
			for range 10 {
				resp, err := rep.client.Check(context.Background(), checkReq("GET", "/api/users", "10.0.0.1", map[string]string{"x-api-key": key}))
				if !assert.NoError(t, err) {
					return
				}
				if resp.GetOkResponse() != nil {
					allowed.Add(1)
					continue
				}
				hs := headerMap(resp.GetDeniedResponse().GetHeaders())
				assert.Equal(t, "rate_limited", hs["x-authz-code"])
				n, err := strconv.Atoi(hs["retry-after"])
				assert.NoError(t, err)
				assert.GreaterOrEqual(t, n, 1)
				limited.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 25, allowed.Load(), "exactly N across both replicas")
	assert.EqualValues(t, 55, limited.Load())

	// The last allowed response said how many were left: none.
	resp := a.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
	require.NotNil(t, resp.GetDeniedResponse())
	hs := headerMap(resp.GetDeniedResponse().GetHeaders())
	assert.Equal(t, `"key";q=25;w=60`, hs["ratelimit-policy"])
	assert.Equal(t, "0", hs["x-ratelimit-remaining"])
}

// Two routes with one pattern, GET at 1000/m and DELETE at 2/h, are two
// limits: alternating them, as the probe did, allows exactly 2
// DELETEs (it allowed all 10 when both counted under the pattern and each
// check restarted the other's window), with the local limiter (embedded
// store) and with the shared Redis one. A reload that keeps the route
// keeps its count.
func TestRouteLimitsBelongToTheRouteNotThePattern(t *testing.T) {
	const routes = `
routes:
  - {path: "/api/users/{id}", methods: [GET], permissions: [read:users], rate_limit: 1000/m}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users], rate_limit: 2/h}
`
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			store := storeYAML(t, backend) + "rate_limit: {default: none}\n"
			ts := startServer(t, store+routes)
			key, _ := ts.create(t, keystore.Spec{Name: "both", Permissions: []string{"read:users", "delete:users"}})
			h := map[string]string{"x-api-key": key}

			deletes := 0
			for range 10 {
				require.NotNil(t, ts.check(t, "GET", "/api/users/7", h).GetOkResponse(), "GET is far under its 1000/m")
				resp := ts.check(t, "DELETE", "/api/users/7", h)
				if resp.GetOkResponse() != nil {
					deletes++
					continue
				}
				code, status := denial(t, resp)
				require.Equal(t, "rate_limited", code)
				require.Equal(t, 429, status)
				assert.Equal(t, `"/api/users/{id}";q=2;w=3600`, headerMap(resp.GetDeniedResponse().GetHeaders())["ratelimit-policy"])
			}
			assert.Equal(t, 2, deletes, "DELETE is limited to 2/h however many GETs come between")

			// A reload that adds a route in front keeps this one's counter.
			require.NoError(t, os.WriteFile(ts.cfgPath, []byte("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
				store+routes+"  - {path: /reloaded, public: true}\n"), 0o600))
			require.Eventually(t, func() bool {
				return ts.check(t, "GET", "/reloaded", nil).GetOkResponse() != nil
			}, 5*time.Second, 20*time.Millisecond, "the reload did not happen")
			code, _ := denial(t, ts.check(t, "DELETE", "/api/users/7", h))
			assert.Equal(t, "rate_limited", code, "the reloaded route still counts the DELETEs made")
		})
	}
}

// rateLimit is the key rate limit s, which must parse.
func rateLimit(t testing.TB, s string) keystore.RateLimit {
	t.Helper()
	r, err := keystore.ParseRateLimit(s)
	require.NoError(t, err)
	return r
}

// A key's line of rotations shares one rate limit, whichever of its keys is
// used: rotating a key (here twice, each with an hour's grace) gives no
// fresh counts, on either store, over gRPC.
func TestALineOfRotationsSharesOneRateLimit(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+testRoutes)
			secret, k := ts.create(t, keystore.Spec{Name: "svc", Permissions: []string{"read:users"}, RateLimit: rateLimit(t, "4/m")})
			secrets, id := []string{secret}, k.ID
			for range 2 {
				s, next, err := ts.mgr.Rotate(t.Context(), id, time.Hour, "test", nil)
				require.NoError(t, err)
				assert.Equal(t, k.ID, next.Lineage)
				secrets, id = append(secrets, s), next.ID
			}
			assert.Equal(t, 4, allowedInTurns(t, ts, 3, secrets...), "three keys of one line, nine checks, a limit of 4/m")
		})
	}
}

// A key without a rate limit of its own is limited by the default of the
// policy it is used under. Two policies with defaults of different windows
// must not share one counter: each check under the other policy restarted
// it (a counter counted with another sub-window is void), so alternating
// one request under the lax policy with requests under the strict one
// allowed the strict policy's N again and again. Policies that share one
// default must share its count, or a key would have that rate per policy.
func TestAPolicysDefaultLimitIsNotResetByAnotherPolicys(t *testing.T) {
	const cfg = `
rate_limit: {default: 3/m}
routes:
  - {path: /api/users, methods: [GET], permissions: [read:users]}
policies:
  - name: bulk
    match: {context: {policy: bulk}}
    rate_limit: {default: 1000/h}
    routes: [{path: /api/users, methods: [GET], permissions: [read:users]}]
  - name: mirror
    match: {context: {policy: mirror}}
    routes: [{path: /api/users, methods: [GET], permissions: [read:users]}]
`
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+cfg)
			check := func(key string, ext map[string]string) bool {
				t.Helper()
				resp, err := ts.client.Check(context.Background(), meshCheck("/api/users", "api.example.com", key, ext, ""))
				require.NoError(t, err)
				return resp.GetOkResponse() != nil
			}
			t.Run("another default does not reset the count", func(t *testing.T) {
				key, _ := ts.create(t, keystore.Spec{Name: "no own limit", Permissions: []string{"read:users"}})
				strict := 0
				for range 10 {
					if check(key, nil) {
						strict++
					}
					require.True(t, check(key, map[string]string{"policy": "bulk"}), "bulk is far under its 1000/h")
				}
				assert.Equal(t, 3, strict, "the default policy allows 3/m however many checks under bulk come between")
			})
			t.Run("an inherited default is one count", func(t *testing.T) {
				key, _ := ts.create(t, keystore.Spec{Name: "no own limit either", Permissions: []string{"read:users"}})
				allowed := 0
				for range 5 {
					for _, ext := range []map[string]string{nil, {"policy": "mirror"}} {
						if check(key, ext) {
							allowed++
						}
					}
				}
				assert.Equal(t, 3, allowed, "3/m under the default policy and the one inheriting its default, together")
			})
		})
	}
}

// A policy's own default keeps its count through reloads that change it or
// the top-level default: the count is the policy's, whatever its rate, so a
// reload reaching the replicas one by one does not hand a key the new rate
// afresh on top of what it used under the old.
func TestAPolicysOwnDefaultIsNotResetByAReload(t *testing.T) {
	ts, path, yaml, logs := startReloadable(t)
	withRates := func(top, bulk string) string {
		return strings.Replace(yaml, testRoutes, testRoutes+fmt.Sprintf(`rate_limit: {default: %s}
policies:
  - name: bulk
    match: {context: {policy: bulk}}
    rate_limit: {default: %s}
    routes: [{path: /api/users, methods: [GET], permissions: [read:users]}]
`, top, bulk), 1)
	}
	reload := func(cfg string) {
		t.Helper()
		require.NoError(t, os.WriteFile(path, []byte(cfg), 0o600))
		before := strings.Count(logs.String(), "config reloaded")
		ts.srv.reload("test", nil)
		require.Equal(t, before+1, strings.Count(logs.String(), "config reloaded"), logs.String())
	}
	reload(withRates("100/m", "2/h"))
	key, _ := ts.create(t, keystore.Spec{Name: "no own limit", Permissions: []string{"read:users"}})
	allowed := func() (n int) {
		for range 3 {
			resp, err := ts.client.Check(t.Context(), meshCheck("/api/users", "api.example.com", key, map[string]string{"policy": "bulk"}, ""))
			require.NoError(t, err)
			if resp.GetOkResponse() != nil {
				n++
			}
		}
		return n
	}
	require.Equal(t, 2, allowed(), "2/h under bulk")
	for _, step := range []struct{ top, bulk string }{
		{"2/h", "2/h"},   // the top-level default made equal to bulk's
		{"2/h", "2/30m"}, // bulk's window shortened
		{"100/m", "2/m"}, // and shortened again, the top-level default moved away
	} {
		reload(withRates(step.top, step.bulk))
		assert.Zero(t, allowed(), "top-level %s, bulk %s: the 2 made moments ago still count", step.top, step.bulk)
	}
}

// Two keys of one line whose rates have different windows count in the
// line's one bucket, and the limiter restarts a counter checked with another
// window: with the successor narrowed from 4/m to 1/15s during the old key's
// grace period (as its holder may do to itself with keys:write, or an admin
// changing it), alternating the two keys allowed every request, 20 of 20.
// Such a change is refused while an earlier key of the line is live; one
// over the same window is made, and the line still makes 4 a minute; once
// the old key is revoked the window may change.
func TestALineWhoseKeysHaveDifferentWindowsIsStillLimited(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+testRoutes)
			oldSecret, k := ts.create(t, keystore.Spec{Name: "svc", Permissions: []string{"read:users"}, RateLimit: rateLimit(t, "4/m")})
			newSecret, next, err := ts.mgr.Rotate(t.Context(), k.ID, time.Hour, "test", nil)
			require.NoError(t, err)
			other := rateLimit(t, "1/15s")
			_, err = ts.mgr.Update(t.Context(), next.ID, keystore.Patch{RateLimit: &other}, nil, "test")
			var fe *keystore.FieldError
			require.ErrorAs(t, err, &fe, "a rate over another window while the old key is live")
			assert.Equal(t, "rate_limit", fe.Field)
			assert.Contains(t, fe.Message, k.ID)
			for _, rate := range []string{"", "none"} { // the default; no limit at all is no count to restart
				r := rateLimit(t, rate)
				_, err = ts.mgr.Update(t.Context(), next.ID, keystore.Patch{RateLimit: &r}, nil, "test")
				if rate == "" {
					require.ErrorAs(t, err, &fe, "the default in place of a rate of its own")
				} else {
					require.NoError(t, err)
				}
			}
			same := rateLimit(t, "3/m")
			_, err = ts.mgr.Update(t.Context(), next.ID, keystore.Patch{RateLimit: &same}, nil, "test")
			require.NoError(t, err, "a rate over the same window counts in the same counter")

			assert.Equal(t, 4, allowedInTurns(t, ts, 10, oldSecret, newSecret), "twenty checks of a line whose keys allow 4/m and 3/m, in one count")

			_, err = ts.mgr.Revoke(t.Context(), k.ID, "test")
			require.NoError(t, err)
			_, err = ts.mgr.Update(t.Context(), next.ID, keystore.Patch{RateLimit: &other}, nil, "test")
			require.NoError(t, err, "no earlier key is live")
		})
	}
}

// allowedInTurns checks GET /api/users rounds times with each secret in
// turn and returns how many were allowed; every denial must be a rate limit.
func allowedInTurns(t *testing.T, ts *testServer, rounds int, secrets ...string) int {
	t.Helper()
	allowed := 0
	for range rounds {
		for _, s := range secrets {
			resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": s})
			if resp.GetOkResponse() != nil {
				allowed++
				continue
			}
			code, _ := denial(t, resp)
			require.Equal(t, "rate_limited", code)
		}
	}
	return allowed
}

// A key the store no longer has (revoked, then purged) is a guess like any
// other once the store has said so: with no negative cache (negative_ttl: 0)
// the cache kept its entry as one the store had confirmed, so every check
// of the purged key went to the store as a refresh and never met
// rate_limit.failed_attempts, however fast its former holder sent it.
func TestAPurgedKeyMeetsTheFailedAttemptsBudget(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+testRoutes+
				"cache: {ttl: 1s, negative_ttl: 0s, max_stale: 1s}\nrate_limit: {failed_attempts: 2/h}\n")
			secret, k := ts.create(t, keystore.Spec{Name: "gone", Permissions: []string{"read:users"}})
			h := map[string]string{"x-api-key": secret}
			require.NotNil(t, ts.check(t, "GET", "/api/users", h).GetOkResponse())
			_, err := ts.mgr.Revoke(t.Context(), k.ID, "test")
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				code, _ := denial(t, ts.check(t, "GET", "/api/users", h))
				return code == "revoked_key"
			}, 5*time.Second, 10*time.Millisecond, "the revocation did not reach the server")
			now := time.Now()
			res, err := ts.mgr.Store.Sweep(t.Context(), keystore.SweepOptions{Now: now, PurgeBefore: now.Add(time.Hour)})
			require.NoError(t, err)
			require.Equal(t, 1, res.Purged)
			require.Eventually(t, func() bool {
				code, _ := denial(t, ts.check(t, "GET", "/api/users", h))
				return code != "revoked_key"
			}, 5*time.Second, 10*time.Millisecond, "the purge did not reach the server")

			codes := map[string]int{}
			for range 10 {
				code, _ := denial(t, ts.check(t, "GET", "/api/users", h))
				codes[code]++
			}
			// The check that saw the purge may have been a refresh (not
			// counted) or, had the entry left the cache, a counted lookup.
			assert.LessOrEqual(t, codes["invalid_key"], 2, "after the store said the key is gone, each lookup of it counts against 2/h")
			assert.Equal(t, 10, codes["invalid_key"]+codes["rate_limited"], "%v", codes)
		})
	}
}

// unknownKeyFrom checks a key of the right format that no one holds, sent
// from peer, and returns the denial's code: invalid_key while peer's
// failed-attempts budget lasts, rate_limited after.
func unknownKeyFrom(t *testing.T, ts *testServer, peer string) string {
	t.Helper()
	k, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	resp, err := ts.client.Check(context.Background(), checkReq("GET", "/api/users", peer, map[string]string{"x-api-key": k}))
	require.NoError(t, err)
	code, _ := denial(t, resp)
	return code
}

// IPv4 clients that reach an IPv6-only cluster through a translator on the
// local-use NAT64 prefix (64:ff9b:1::/48) arrive from one /64: counted by
// it, one guesser spent every IPv4 client's rate_limit.failed_attempts (and
// held listen.max_connections_per_client for all of them). Each counts
// alone, as under the well-known prefix.
func TestClientsOfALocalUseNAT64PrefixHaveABudgetEach(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes+"rate_limit: {failed_attempts: 2/h}\n")
	unknown := func(peer string) string { return unknownKeyFrom(t, ts, peer) }
	for _, prefix := range []string{"64:ff9b::", "64:ff9b:1::"} {
		guesser, other := prefix+"198.51.100.7", prefix+"203.0.113.9"
		for range 2 {
			require.Equal(t, "invalid_key", unknown(guesser))
		}
		assert.Equal(t, "rate_limited", unknown(guesser), "%s: the guesser's budget is spent", prefix)
		assert.Equal(t, "invalid_key", unknown(other), "%s: another IPv4 client keeps its own", prefix)
	}
}

// An IPv6 address that stands for one IPv4 client (NAT64's well-known
// prefix; a 6to4 site's 2002:<IPv4>::/48; a Teredo client, whose NAT's
// address sits inverted in the last 32 bits behind its server's) is that
// client, in every spelling, with the one budget of its IPv4 address.
// Counted by /64, every Teredo client of one server shared a block, so one
// guesser spent rate_limit.failed_attempts for all of them; and a 6to4 site
// had a budget per /64 of its /48, 65,536, beside its IPv4 address's.
func TestAnIPv4ClientHasOneBudgetInEverySpellingOfItsAddress(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes+"rate_limit: {failed_attempts: 2/h}\n")
	unknown := func(peer string) string { return unknownKeyFrom(t, ts, peer) }
	// 198.51.100.7 is c633:6407 (inverted: 39cc:9bf8); 203.0.113.9 is
	// cb00:7109 (inverted: 34ff:8ef6); 192.0.2.1 is a Teredo server.
	spellings := map[string][]string{
		"198.51.100.7": {
			"::ffff:198.51.100.7", "64:ff9b::198.51.100.7", "64:ff9b::c633:6407",
			"2002:c633:6407::1", "2002:c633:6407:1::1", "2002:c633:6407:ffff:1:2:3:4",
			"2001:0:c000:201:0:f227:39cc:9bf8", "2001:0:c000:201:8000:1:39cc:9bf8", "2001:0:cb00:7101::39cc:9bf8",
		},
		"203.0.113.9": {
			"64:ff9b::203.0.113.9", "2002:cb00:7109::1", "2002:cb00:7109:2::1", "2001:0:c000:201:0:f227:34ff:8ef6",
		},
	}
	for client, others := range spellings {
		for _, first := range []string{client, others[0]} {
			require.Equal(t, "invalid_key", unknown(first), "%s: within its budget", client)
		}
		for _, other := range others {
			assert.Equal(t, "rate_limited", unknown(other), "%s: its budget is spent, sent from %s", client, other)
		}
	}
	// Another client of the same Teredo server, or in the next 6to4 site,
	// keeps its own.
	assert.Equal(t, "invalid_key", unknown("2001:0:c000:201:0:f227:39cc:9bf9"), "another Teredo client of that server")
	assert.Equal(t, "invalid_key", unknown("2002:c633:6408::1"), "another 6to4 site")
}
