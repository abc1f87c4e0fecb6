package main

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// TestFaultStaleKeysDoNotWaitOnADeadStore shows the latency of a Redis
// outage longer than the cache TTL: every check of a known key whose entry
// expired asks the store again and waits for its timeout, for as long as
// the outage lasts. With a short TTL the whole fault is "after the TTL".
func TestFaultStaleKeysDoNotWaitOnADeadStore(t *testing.T) {
	rig := startFaultRig(t, testRoutes+"cache: {ttl: 200ms}\nrate_limit: {default: 100000/m, on_store_error: local}\n")
	t.Cleanup(rig.proxy.Heal)
	ts := rig.ts
	key, _ := ts.create(t, keystore.Spec{Name: "cached", Permissions: []string{"read:users"}})
	uncached, _ := ts.create(t, keystore.Spec{Name: "uncached", Permissions: []string{"read:users"}})
	time.Sleep(100 * time.Millisecond) // let the creates' change events pass before warming the cache
	require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
	require.Eventually(t, func() bool {
		before := ts.srv.cache.Stats().Hits
		ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
		return ts.srv.cache.Stats().Hits > before
	}, 2*time.Second, 10*time.Millisecond, "the key is cached before the fault")

	load := newFaultLoad(ts)
	defer load.Stop()
	rig.proxy.Blackhole()
	tFault := time.Now()
	load.run("cached-1", "GET", "/api/users", key, nil)
	load.run("cached-2", "GET", "/api/users", key, nil)
	load.run("uncached", "GET", "/api/users", uncached, nil)
	time.Sleep(3 * time.Second)
	samples := load.Stop()
	rig.proxy.Heal()

	// Past the first second, the store has failed dozens of times.
	settled := func(s faultSample) bool { return s.start.After(tFault.Add(time.Second)) }
	stale := latencies(samples, func(s faultSample) bool { return settled(s) && s.worker != "uncached" && s.err == nil && s.code == "" })
	miss := latencies(samples, func(s faultSample) bool { return settled(s) && s.worker == "uncached" && s.code == "unavailable" })
	t.Logf("fault: stale-demo blackholed 3s, cache ttl 200ms: stale cached key %v; uncached 503 %v", stale, miss)
	require.NotZero(t, stale.n)
	assert.Less(t, stale.p50, faultTimeout/4, "a known key waits on a store that has failed for seconds")
	assert.Less(t, miss.p50, faultTimeout/4, "an unknown key waits on a store that has failed for seconds")
}
