package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// TestRevocationReachesEveryReplicaWithinOneSecond runs two replicas on one
// store, warms both caches (so only the change feed can tell them), revokes
// keys one by one, and measures for each how long until both deny it.
func TestRevocationReachesEveryReplicaWithinOneSecond(t *testing.T) {
	for _, backend := range []string{"redis", "embedded"} {
		t.Run(backend, func(t *testing.T) { measureRevocation(t, backend) })
	}
}

func measureRevocation(t *testing.T, backend string) {
	var store string
	if backend == "redis" {
		store = fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\n", redistest.Start(t).URL(0))
	} else {
		store = storeYAML(t, "embedded") // both replicas share this one file
	}
	yaml := store + "cache: {ttl: 1h}\n" + testRoutes
	a := startServer(t, yaml)
	b := startServer(t, yaml)

	n := 40
	if backend == "embedded" {
		n = 15 // each takes up to a 200 ms poll
	}
	keys := make([]string, n)
	ids := make([]string, n)
	for i := range n {
		secret, k := a.create(t, keystore.Spec{Name: fmt.Sprint("k", i), Permissions: []string{"read:users"}})
		keys[i], ids[i] = secret, k.ID
	}
	// The creates are changes too: let the feed deliver them (the embedded
	// store polls every 200 ms) before warming, or they would empty the
	// caches mid-measurement and every revocation would look instant.
	time.Sleep(500 * time.Millisecond)
	for _, rep := range []*testServer{a, b} {
		for _, secret := range keys {
			require.NotNil(t, rep.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}).GetOkResponse())
		}
	}
	missesBefore := a.srv.cache.Stats().Misses + b.srv.cache.Stats().Misses

	var lat []time.Duration
	for i := range n {
		start := time.Now()
		_, err := a.mgr.Revoke(context.Background(), ids[i], "test")
		require.NoError(t, err)
		var wg sync.WaitGroup
		var mu sync.Mutex
		worst := time.Duration(0)
		for _, rep := range []*testServer{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					resp, err := rep.client.Check(context.Background(), checkReq("GET", "/api/users", "10.0.0.1", map[string]string{"x-api-key": keys[i]}))
					if err == nil && resp.GetDeniedResponse() != nil {
						if c := headerMap(resp.GetDeniedResponse().GetHeaders())["x-authz-code"]; c != "revoked_key" {
							t.Errorf("denied with %s, not revoked_key", c)
						}
						break
					}
					if time.Since(start) > 3*time.Second {
						break
					}
					time.Sleep(time.Millisecond)
				}
				mu.Lock()
				worst = max(worst, time.Since(start))
				mu.Unlock()
			}()
		}
		wg.Wait()
		lat = append(lat, worst)
	}
	// Each revoked key is fetched once per replica, after its invalidation;
	// any other miss would mean the caches were not doing their job.
	assert.LessOrEqual(t, a.srv.cache.Stats().Misses+b.srv.cache.Stats().Misses-missesBefore, uint64(2*n))
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	t.Logf("%s: revoke → denied on both replicas, %d keys: p50 %v, p99 %v, max %v", backend, n, p50, p99, lat[len(lat)-1])
	assert.LessOrEqual(t, lat[len(lat)-1], time.Second)
}

func TestLastUsedIsWrittenAtShutdown(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	key, k := ts.create(t, keystore.Spec{Name: "u", Permissions: []string{"read:users"}})
	before := time.Now().Add(-time.Second)
	require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
	got, err := ts.mgr.Store.Get(context.Background(), k.ID)
	require.NoError(t, err)
	assert.Nil(t, got.LastUsedAt, "written behind, not on the request path")

	ts.stop() // drains: queued last-use times are written
	be, err := openBackend(ts.cfg, nil)
	require.NoError(t, err)
	defer be.Close()
	got, err = be.store.Get(context.Background(), k.ID)
	require.NoError(t, err)
	require.NotNil(t, got.LastUsedAt)
	assert.True(t, got.LastUsedAt.After(before))
}

// A server answers checks from the moment it listens, and its cache starts
// watching the store at that moment too, on its own goroutine. A check that
// fills the cache, then a revocation, both before the watch has found where
// the change log stands, left the key allowed for the cache's whole TTL:
// the revocation came before the watch's starting point, so it was never
// reported. Here the first check's fill is made before run (the order the
// scheduler may pick), the key revoked, and the server started: a check
// over gRPC must be refused within the second docs/keys.md promises.
func TestARevocationBeforeTheCacheWatchesStillReachesIt(t *testing.T) {
	for _, backend := range []string{"redis", "embedded"} {
		t.Run(backend, func(t *testing.T) {
			path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
				storeYAML(t, backend)+"cache: {ttl: 1h}\n"+testRoutes)
			var secret string
			ts := startServerTuned(t, path, serverOutput{logs: io.Discard, audit: io.Discard}, func(srv *server) {
				be, err := openBackend(srv.cfg, nil)
				require.NoError(t, err)
				defer be.Close()
				mgr := be.manager(srv.cfg)
				s, k, err := mgr.Create(context.Background(), keystore.Spec{Name: "early", Permissions: []string{"read:users"}}, "test")
				require.NoError(t, err)
				secret = s
				// The first check, before the watch has begun.
				got, err := srv.cache.Lookup(context.Background(), keystore.NewHasher(srv.cfg.Hashing.Pepper).Hash(secret))
				require.NoError(t, err)
				require.Nil(t, got.RevokedAt)
				_, err = mgr.Revoke(context.Background(), k.ID, "test")
				require.NoError(t, err)
			})
			deadline := time.Now().Add(time.Second)
			for {
				resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
				if resp.GetDeniedResponse() != nil {
					require.Equal(t, "revoked_key", headerMap(resp.GetDeniedResponse().GetHeaders())["x-authz-code"])
					return
				}
				if time.Now().After(deadline) {
					t.Fatal("a key revoked before the cache's watch began is still allowed 1s after the server started (and would be for the cache's TTL)")
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// cache.negative_ttl: 0 trusts "no such key" for no time: a key is found
// at its first check after the store holds it, even when no change
// announced it (here its record is written into Redis behind the store's
// back, as a change whose announcement was lost would leave it). The
// cache's own zero is its default of 5 s, which must not be what 0 in the
// file means.
func TestANegativeTTLOfZeroCachesNoUnknownKey(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\ncache: {negative_ttl: 0s}\n", r.URL(0))+testRoutes)
	opt, err := goredis.ParseURL(r.URL(0))
	require.NoError(t, err)
	rc := goredis.NewClient(opt)
	defer rc.Close()
	check := func(secret string) (string, int) {
		return denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}))
	}
	// unannounced is a new key for which the store holds a record that no
	// change announced.
	unannounced := func() string {
		secret, err := ts.mgr.Format.Generate()
		require.NoError(t, err)
		code, _ := check(secret)
		require.Equal(t, "invalid_key", code, "a key the store does not hold yet")
		now := time.Now().UTC()
		id, err := keystore.NewID(now)
		require.NoError(t, err)
		rec, err := json.Marshal(&keystore.Key{ID: id, Name: "unannounced", Owner: keystore.DefaultOwner, Permissions: []string{"read:users"}, CreatedAt: now})
		require.NoError(t, err)
		h := keystore.NewHasher([]byte(testPepper)).Hash(secret)
		require.NoError(t, rc.Set(t.Context(), "t:{keys}:h:"+h.String(), rec, 0).Err())
		return secret
	}
	// The cache forgets everything once its change feed has found where the
	// log ends, moments after the server starts: wait for that first.
	canary := unannounced()
	require.Eventually(t, func() bool { _, st := check(canary); return st == 200 }, 10*time.Second, 20*time.Millisecond)

	key := unannounced()
	code, httpStatus := check(key)
	assert.Equal(t, 200, httpStatus, "the key the store now holds, at once: denied %s", code)
}

// In a rolling upgrade a newer replica may restrict a key in a way this
// version cannot read, and names the restriction in the record's
// "requires". A key cached here before that change must not go on passing
// by its older record: the change reaches the cache, and the key's checks
// are refused with 503 (retry: a newer replica decides it) until a record
// this version can read is back. No upstream sees such a request allowed,
// and the refusal's audit event names the key, as a revoked key's does.
func TestAKeyWhoseRecordRequiresANewerVersionIsRefusedNotDecided(t *testing.T) {
	r := redistest.Start(t)
	var audit syncbuf.Buffer
	ts := startServerOut(t, writeConfig(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\n", r.URL(0))+testRoutes),
		serverOutput{logs: &syncbuf.Buffer{}, audit: &audit})
	ctx := t.Context()
	set := func(key, value string) {
		_, err := r.Query("SET", key, value)
		require.NoError(t, err)
	}

	secret, k := ts.create(t, keystore.Spec{Name: "batch", Permissions: []string{"read:users"}})
	check := func() (*authv3.CheckResponse, string, int) {
		resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
		code, status := denial(t, resp)
		return resp, code, status
	}
	_, code, status := check()
	require.Equal(t, 200, status, "denied %s", code)

	// What a newer replica's PATCH would leave: a restriction this version
	// cannot read, named in requires. The record is written behind the
	// store's back, then a change made through this version (which keeps
	// members it does not know) announces it, as the newer replica's own
	// change would have.
	recKey := "t:{keys}:h:" + keystore.NewHasher([]byte(testPepper)).Hash(secret).String()
	stored, err := r.QueryString("GET", recKey)
	require.NoError(t, err)
	set(recKey, strings.TrimSuffix(stored, "}")+`,"requires":["bound_to"],"bound_to":{"spiffe":"spiffe://cluster.local/ns/billing/sa/batch"}}`)
	rename := func(name string) {
		_, err := ts.mgr.Update(ctx, k.ID, keystore.Patch{Name: &name}, nil, "test")
		require.NoError(t, err)
	}
	rename("batch-2")

	var resp *authv3.CheckResponse
	require.Eventually(t, func() bool { resp, code, status = check(); return status != 200 }, 2*time.Second, 10*time.Millisecond,
		"the key still passes by its older record")
	assert.Equal(t, 503, status)
	assert.Equal(t, "unavailable", code)
	assert.Contains(t, resp.GetDeniedResponse().GetBody(), "needs a newer version of extauthz")
	for range 20 {
		_, code, status = check()
		require.Equal(t, 503, status, "a later check of the key is decided by the older record (%s)", code)
	}
	require.Eventually(t, func() bool {
		n := 0
		for _, e := range auditEventsOf(t, audit.String(), "decision") {
			if e["status"] == 503.0 && e["code"] == "unavailable" {
				assert.Equal(t, k.ID, e["key_id"], "the refusal names the key: %v", e)
				n++
			}
		}
		return n >= 21
	}, 2*time.Second, 10*time.Millisecond, "each refusal is audited")

	// Rolled back by a version that can read it: the key passes again.
	stored, err = r.QueryString("GET", recKey)
	require.NoError(t, err)
	var members map[string]json.RawMessage
	require.NoError(t, json.Unmarshal([]byte(stored), &members))
	assert.JSONEq(t, `"batch-2"`, string(members["name"]))
	delete(members, "requires")
	delete(members, "bound_to")
	plain, err := json.Marshal(members)
	require.NoError(t, err)
	set(recKey, string(plain))
	rename("batch-3")
	require.Eventually(t, func() bool { _, _, status = check(); return status == 200 }, 2*time.Second, 10*time.Millisecond)
}

// openStoreFile opens an embedded store's file as another process would,
// to change it behind a running server's back. The server writes too (its
// sweeps, last use), so a write here waits for the lock as its own do,
// rather than failing SQLITE_BUSY at once.
func openStoreFile(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path+"?_pragma=busy_timeout(10000)")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	return db
}

// After an upgrade, a keys command of the newer version run before the
// server was restarted migrates the embedded store past the schema the
// server knows, and may restrict a key in a column of its own. The running
// server must not decide that key by the columns it can read (it allowed
// it): over gRPC the key answers 503 unavailable, and /readyz says 503.
func TestAServerDecidesNoKeyOfAStoreANewerVersionMigrated(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	secret, k := ts.create(t, keystore.Spec{Name: "bound", Permissions: []string{"read:users"}})
	h := keystore.NewHasher(ts.cfg.Hashing.Pepper).Hash(secret)

	db := openStoreFile(t, ts.cfg.Store.Path)
	_, err := db.Exec(fmt.Sprintf(`BEGIN IMMEDIATE;
		ALTER TABLE keys ADD COLUMN bound_to TEXT NOT NULL DEFAULT '';
		UPDATE keys SET bound_to = 'spiffe://only/this' WHERE id = '%s';
		INSERT INTO changes (hash, at) VALUES (x'%s', %d);
		PRAGMA user_version = 1000;
		COMMIT`, k.ID, h.String(), time.Now().UnixNano()))
	require.NoError(t, err)

	deny := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}).GetDeniedResponse()
	require.NotNil(t, deny, "a key restricted by a newer version is not allowed by what this one can read")
	require.Equal(t, "unavailable", headerMap(deny.GetHeaders())["x-authz-code"])
	require.Eventually(t, func() bool {
		resp, err := http.Get(ts.httpURL + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	}, 3*time.Second, 50*time.Millisecond, "/readyz says 503")
}
