package ratelimit

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
)

// Two replicas share one large limit under saturating demand (1.3·N/W, a
// check every ~380µs of a shared fake clock, each sent by a random replica,
// with the key limit and sometimes a route limit as well). Leases must carry
// most of the allowed checks, and still no interval of W may hold more than
// N, while the replicas together get close to N per W.
func TestRedisLeasesKeepTheLimitAcrossReplicas(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := newFakeClock()
	prefix := uniquePrefix()
	replicas := []*Redis{
		newRedis(t, client, RedisOptions{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
		newRedis(t, client, RedisOptions{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
	}
	const (
		n = 20000
		w = 10 * time.Second
	)
	key := Limit{Name: "key", Bucket: "hot", Rate: Rate{N: n, Window: w}}
	route := Limit{Name: "/r", Bucket: "hot", Scope: "/r", Rate: Rate{N: 3 * n, Window: w}}
	rng := rand.New(rand.NewPCG(1, 2))
	step := w * 10 / (13 * n) // demand 1.3·N/W
	end := t0.Add(2*w + w/2)
	var allowed []time.Time
	checks := 0
	for now := t0; now.Before(end); now = now.Add(step) {
		clock.Set(now)
		limits := []Limit{key}
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
	assertNoIntervalOverN(t, allowed, n, w)

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
	lim := newRedis(t, client, RedisOptions{Prefix: uniquePrefix(), Timeout: time.Second})
	limits := []Limit{{Name: "key", Bucket: "b", Rate: Rate{N: 2*leaseShare - 1, Window: time.Hour}}}
	for range 200 {
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
	}
	assert.Zero(t, lim.Stats().Leased)
	assert.EqualValues(t, 1, maxLease(limits))
	assert.EqualValues(t, 2, maxLease([]Limit{{Rate: Rate{N: 2 * leaseShare, Window: time.Hour}}}))
	assert.EqualValues(t, 1, maxLease([]Limit{{Rate: Rate{N: 1e9, Window: time.Hour}}, {Rate: Rate{N: 10, Window: time.Hour}}}),
		"the smallest limit of a check decides")
}

// A lease ends with its sub-window: past it the next check goes to Redis,
// and what was left of the lease is lost, not handed out later.
func TestRedisLeaseEndsWithItsSubWindow(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := newFakeClock()
	lim := newRedis(t, client, RedisOptions{Prefix: uniquePrefix(), Now: clock.Now, Timeout: time.Second})
	limits := []Limit{{Name: "key", Bucket: "b", Rate: Rate{N: 1e6, Window: 20 * time.Second}}} // sub-windows of 1s
	// Within the first sub-window, demand grows the lease until one is left over.
	now := t0
	for i := 0; i < 200; i++ {
		clock.Set(now)
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		now = now.Add(time.Millisecond)
	}
	leased := lim.Stats().Leased
	require.Positive(t, leased)
	l := lim.leases.slot(leaseKey(limits))
	l.mu.Lock()
	left, until := l.tokens, l.until
	l.mu.Unlock()
	require.Positive(t, left, "the test needs a lease with requests left")
	require.Equal(t, t0.Add(time.Second), until, "the lease ends with the sub-window")

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
	replicas := []*Redis{
		newRedis(t, client, RedisOptions{Prefix: prefix, Timeout: time.Second}),
		newRedis(t, client, RedisOptions{Prefix: prefix, Timeout: time.Second}),
	}
	limits := []Limit{{Name: "key", Bucket: "hot", Rate: Rate{N: 1e8, Window: time.Hour}}}
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

// Two buckets on one slot: the second is checked exactly while the first's
// lease lives, and takes the slot over only once it has ended.
func TestALeaseIsNotCutShortByAnotherBucket(t *testing.T) {
	ls := newLeases()
	a := "a"
	var b string
	for i := 0; ; i++ { // a key that lands on a's slot
		if b = strconv.Itoa(i); b != a && ls.slot(b) == ls.slot(a) {
			break
		}
	}
	end := t0.Add(time.Second)
	want, refill := ls.want(a, 100, t0)
	require.Equal(t, int64(1), want) // a fresh lease starts exact
	require.False(t, refill)
	l := ls.slot(a)
	l.size = 8
	want, refill = ls.want(a, 100, t0)
	require.Equal(t, int64(8), want)
	require.True(t, refill)
	ls.granted(a, true, 8, end, Result{Allowed: true, Remaining: 50})

	want, refill = ls.want(b, 100, t0)
	assert.Equal(t, int64(1), want)
	assert.False(t, refill)
	res, ok := ls.take(a, t0)
	require.True(t, ok, "a's lease survives b")
	assert.Equal(t, int64(56), res.Remaining, "the grant's remaining plus what the lease still holds")

	ls.want(b, 100, end) // a's lease has ended
	_, ok = ls.take(a, end)
	assert.False(t, ok)
	assert.Equal(t, b, l.key)
}
