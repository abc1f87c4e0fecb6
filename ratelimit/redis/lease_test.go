package redis

import (
	"context"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/ratelimit"
	"github.com/extauthz/extauthz/ratelimit/limitertest"
)

// Two replicas share one large limit under saturating demand (1.3·N/W, a
// check every ~380µs of a shared fake clock, each sent by a random replica,
// with the key limit and sometimes a route limit as well). Leases must carry
// most of the allowed checks, and still no interval of W may hold more than
// N, while the replicas together get close to N per W.
func TestRedisLeasesKeepTheLimitAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	prefix := uniquePrefix()
	replicas := []*Limiter{
		newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
		newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
	}
	const (
		n = 20000
		w = 10 * time.Second
	)
	key := ratelimit.Limit{Name: "key", Bucket: "hot", Rate: ratelimit.Rate{N: n, Window: w}}
	route := ratelimit.Limit{Name: "/r", Bucket: "hot", Scope: "/r", Rate: ratelimit.Rate{N: 3 * n, Window: w}}
	rng := rand.New(rand.NewPCG(1, 2))
	step := w * 10 / (13 * n) // demand 1.3·N/W
	end := limitertest.T0.Add(2*w + w/2)
	var allowed []time.Time
	checks := 0
	for now := limitertest.T0; now.Before(end); now = now.Add(step) {
		clock.Set(now)
		limits := []ratelimit.Limit{key}
		if rng.IntN(4) == 0 {
			limits = append(limits, route)
		}
		res, err := replicas[rng.IntN(2)].Allow(context.Background(), limits)
		require.NoError(t, err)
		checks++
		if res.Allowed {
			allowed = append(allowed, now)
			require.GreaterOrEqual(t, res.Remaining, int64(0))
			require.Less(t, res.Remaining, int64(n))
		} else {
			require.Positive(t, res.RetryAfter)
		}
	}
	slices.SortFunc(allowed, func(a, b time.Time) int { return a.Compare(b) })
	limitertest.AssertNoIntervalOverN(t, allowed, n, w)

	leased := replicas[0].Stats().Leased + replicas[1].Stats().Leased
	t.Logf("%d checks, %d allowed, %d from leases", checks, len(allowed), leased)
	assert.Greater(t, float64(leased), 0.8*float64(len(allowed)), "leases should answer most allowed checks")
	// An exact limiter allows N in the first W and N per W after: 2.5 W
	// of saturating demand allows about 2.5·N. Leftover leases may lose a
	// little of it.
	assert.Greater(t, float64(len(allowed)), 0.97*2.5*n)
}

// A limit too small to lease (N < 2·leaseShare) is checked in Redis for
// every request, so replicas see each other's requests at once.
func TestRedisSmallLimitsAreNeverLeased(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: time.Second})
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 2*leaseShare - 1, Window: time.Hour}}}
	for range 200 {
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
	}
	assert.Zero(t, lim.Stats().Leased)
	assert.EqualValues(t, 1, maxLease(limits))
	assert.EqualValues(t, 2, maxLease([]ratelimit.Limit{{Rate: ratelimit.Rate{N: 2 * leaseShare, Window: time.Hour}}}))
	assert.EqualValues(t, 1, maxLease([]ratelimit.Limit{{Rate: ratelimit.Rate{N: 1e9, Window: time.Hour}}, {Rate: ratelimit.Rate{N: 10, Window: time.Hour}}}),
		"the smallest limit of a check decides")
}

// A lease ends with its sub-window: past it the next check goes to Redis,
// and what was left of the lease is lost, not handed out later.
func TestRedisLeaseEndsWithItsSubWindow(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Now: clock.Now, Timeout: time.Second})
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 1e6, Window: 20 * time.Second}}} // sub-windows of 1s
	// Within the first sub-window, demand grows the lease until one is left over.
	now := limitertest.T0
	for i := 0; i < 200; i++ {
		clock.Set(now)
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		now = now.Add(time.Millisecond)
	}
	leased := lim.Stats().Leased
	require.Positive(t, leased)
	left, until := lim.leases.peek(leaseKey(limits))
	require.Positive(t, left, "the test needs a lease with requests left")
	require.Equal(t, limitertest.T0.Add(time.Second), until, "the lease ends with the sub-window")

	clock.Set(until)
	res, err := lim.Allow(context.Background(), limits)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	assert.Equal(t, leased, lim.Stats().Leased, "at the end of the sub-window the lease is over")
}

// Many callers on two replicas share leases of one bucket; under -race this
// checks the lease table's locking, and every check must be answered.
func TestRedisLeasesUnderConcurrentCallers(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	prefix := uniquePrefix()
	replicas := []*Limiter{
		newRedis(t, client, Options{Prefix: prefix, Timeout: time.Second}),
		newRedis(t, client, Options{Prefix: prefix, Timeout: time.Second}),
	}
	limits := []ratelimit.Limit{{Name: "key", Bucket: "hot", Rate: ratelimit.Rate{N: 1e8, Window: time.Hour}}}
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for range 300 {
				res, err := replicas[g%2].Allow(context.Background(), limits)
				if !assert.NoError(t, err) || !assert.True(t, res.Allowed) {
					return
				}
			}
		})
	}
	wg.Wait()
	leased := replicas[0].Stats().Leased + replicas[1].Stats().Leased
	t.Logf("%d of %d checks from leases", leased, 32*300)
	assert.Greater(t, leased, uint64(32*300/2))
}

// peek returns the requests left in key's lease and its end.
func (ls *leases) peek(key string) (int64, time.Time) {
	set := ls.lock(key)
	defer set.mu.Unlock()
	if l := set.find(key); l != nil {
		return l.tokens, l.until
	}
	return 0, time.Time{}
}

// grant gives key a lease of n requests until end, as a refill would.
func grant(t *testing.T, ls *leases, key string, n int64, now, end time.Time) {
	t.Helper()
	ls.want(key, 100, now) // a fresh lease starts exact
	set := ls.lock(key)
	set.find(key).size = n
	set.mu.Unlock()
	want, refill := ls.want(key, 100, now)
	require.Equal(t, n, want)
	require.True(t, refill)
	ls.granted(key, true, n, end, ratelimit.Result{Allowed: true, Remaining: 50})
}

// Buckets whose keys share a set use its ways. One more bucket than ways is
// checked exactly while the others' leases live, and takes a way over only
// once a lease there has ended: no lease is cut short.
func TestALeaseIsNotCutShortByAnotherBucket(t *testing.T) {
	ls := newLeases()
	set := func(k string) *leaseSet { s := ls.lock(k); s.mu.Unlock(); return s }
	keys := []string{"a"}
	for i := 0; len(keys) < leaseWays+1; i++ { // leaseWays more keys of a's set
		if k := strconv.Itoa(i); set(k) == set("a") {
			keys = append(keys, k)
		}
	}
	end := limitertest.T0.Add(time.Second)
	for _, k := range keys[:leaseWays] {
		grant(t, ls, k, 8, limitertest.T0, end)
	}
	for _, k := range keys[:leaseWays] {
		res, ok := ls.take(k, limitertest.T0)
		require.True(t, ok, "bucket %s has a lease of its own", k)
		assert.Equal(t, int64(56), res.Remaining, "the grant's remaining plus what the lease still holds")
	}

	extra := keys[leaseWays]
	want, refill := ls.want(extra, 100, limitertest.T0)
	assert.Equal(t, int64(1), want, "every way holds a live lease: checked exactly")
	assert.False(t, refill)
	_, ok := ls.take("a", limitertest.T0)
	require.True(t, ok, "a's lease survives")

	ls.want(extra, 100, end) // every lease has ended
	_, ok = ls.take(extra, end)
	assert.False(t, ok, "a lease starts exact")
	assert.NotNil(t, set(extra).find(extra), "the extra bucket took a way over")
	found := 0
	for _, k := range keys[:leaseWays] {
		if set(k).find(k) != nil {
			found++
		}
	}
	assert.Equal(t, leaseWays-1, found, "exactly one ended lease made way")
}

// The load tool's 100 busy buckets all get leases. With one lease per slot
// of 4096, two of them shared a slot in 70% of runs and one went to Redis on
// every check; with four ways per set, five of 100 keys in one set of 1024
// has odds below 1 in 10,000.
func TestAHundredBusyBucketsAllGetLeases(t *testing.T) {
	ls := newLeases()
	end := limitertest.T0.Add(time.Minute)
	for i := range 100 {
		grant(t, ls, "key_"+strconv.Itoa(i), 8, limitertest.T0, end)
	}
	for i := range 100 {
		_, ok := ls.take("key_"+strconv.Itoa(i), limitertest.T0)
		assert.True(t, ok, "bucket %d has no lease", i)
	}
}
