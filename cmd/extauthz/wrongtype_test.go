package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// A store that answers with a record it cannot read (damaged, or written by
// hand) is no outage: that key answers 503 unavailable at once, and what the
// cache held of it is dropped. A record rewritten as another Redis type (a
// hash where a string belongs) makes Redis answer the lookup's GET with
// WRONGTYPE, which is such an answer: taken for an outage, the cache served
// the old entry stale for cache.max_stale (the key allowed).
func TestARecordOfAnotherTypeIsAnAnswerNotAnOutage(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"wt:\"}}\n", r.URL(0))+
		"cache: {ttl: 1s, max_stale: 1h}\n"+testRoutes)
	key, k := ts.create(t, keystore.Spec{Name: "wrongtype", Permissions: []string{"read:users"}})
	time.Sleep(300 * time.Millisecond) // the create's change reaches the cache first
	require.Empty(t, checkCode(t, ts, key), "allowed while the record is sound")

	recordAsHash(t, r, "wt:", k.ID)

	time.Sleep(1200 * time.Millisecond) // past cache.ttl: the next check asks Redis
	assert.Equal(t, "unavailable", checkCode(t, ts, key), "a record Redis holds as another type is no outage: 503 at once, not the stale entry")
}

// The same record, asked for three times in a row (its holder retrying),
// opened the key cache's breaker when its answer was taken for an outage:
// every other key not cached was turned away (503) without Redis being
// asked, though Redis answered every call.
func TestARecordOfAnotherTypeOpensNoBreakerForOtherKeys(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"wb:\"}}\n", r.URL(0))+
		"cache: {ttl: 1s, max_stale: 1h}\n"+testRoutes)
	bad, k := ts.create(t, keystore.Spec{Name: "wrongtype", Permissions: []string{"read:users"}})
	good, _ := ts.create(t, keystore.Spec{Name: "good", Permissions: []string{"read:users"}})
	recordAsHash(t, r, "wb:", k.ID)
	time.Sleep(300 * time.Millisecond)

	for range 3 {
		checkCode(t, ts, bad)
	}
	assert.Empty(t, checkCode(t, ts, good), "a sound key that Redis would find is allowed: Redis answers every call")
}

// A rate-limit counter Redis holds as another type is no counter, as a
// string that is not one is not, and starts afresh. Its WRONGTYPE error
// failed the whole script call, counted as Redis failing: five such checks
// in a row opened the limiter's breaker, and every other key's check was
// then decided by on_store_error (deny: 503) without Redis being asked.
func TestACounterOfAnotherTypeFailsNoOtherKeysRateLimit(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"wc:\"}}\n", r.URL(0))+
		testRoutes+"rate_limit: {default: 100/m, on_store_error: deny}\n")
	bad, _ := ts.create(t, keystore.Spec{Name: "bad", Permissions: []string{"read:users"}})
	good, _ := ts.create(t, keystore.Spec{Name: "good", Permissions: []string{"read:users"}})
	require.Empty(t, checkCode(t, ts, bad))
	v, err := r.Query("KEYS", "wc:count:*")
	require.NoError(t, err)
	counters, _ := v.([]any)
	require.Len(t, counters, 1, "the one key's counter")
	require.Empty(t, checkCode(t, ts, good), "the other key, now cached, is allowed")
	counter := counters[0].(string)
	_, err = r.Query("DEL", counter)
	require.NoError(t, err)
	_, err = r.Query("HSET", counter, "x", "1")
	require.NoError(t, err)

	for i := range 6 {
		code := checkCode(t, ts, bad)
		if i == 0 {
			assert.Empty(t, code, "the key whose counter is of another type is counted afresh")
		}
	}
	assert.Empty(t, checkCode(t, ts, good), "another key, whose counter Redis reads, is counted by Redis, not refused as if Redis were down")
}

// recordAsHash rewrites the record of key id (under prefix) as a Redis
// hash, as a hand-written one would be, with no change-stream entry.
func recordAsHash(t *testing.T, r *redistest.Server, prefix, id string) {
	t.Helper()
	hexHash, err := r.QueryString("GET", prefix+"{keys}:id:"+id)
	require.NoError(t, err)
	record := prefix + "{keys}:h:" + hexHash
	_, err = r.Query("DEL", record)
	require.NoError(t, err)
	_, err = r.Query("HSET", record, "id", id)
	require.NoError(t, err)
}
