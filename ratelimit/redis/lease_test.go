package redis

import (
	"context"
	"fmt"
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

// twoReplicas are two Redis limiters of one fleet (one prefix, one Redis
// of their own) on clock.
func twoReplicas(t *testing.T, clock *limitertest.Clock) []*Limiter {
	client := newClient(t, redistest.Start(t).Addr)
	prefix := uniquePrefix()
	return []*Limiter{
		newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
		newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
	}
}

// Two replicas share one large limit under saturating demand (1.3·N/W, a
// check every ~380µs of a shared fake clock, each sent by a random replica,
// with the key limit and sometimes a route limit as well). Leases must carry
// most of the allowed checks, and still no interval of W may hold more than
// N, while the replicas together get close to N per W.
func TestRedisLeasesKeepTheLimitAcrossReplicas(t *testing.T) {
	clock := limitertest.NewClock()
	replicas := twoReplicas(t, clock)
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
	for range 2*leaseShare - 1 {
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

// leaseRun sends checks every gap from start until one is answered from a
// lease and the lease still holds requests, and returns the times of the
// checks (all allowed).
func leaseRun(t *testing.T, lim *Limiter, clock *limitertest.Clock, limits []ratelimit.Limit, start time.Time, gap time.Duration) []time.Time {
	t.Helper()
	var times []time.Time
	for now := start; len(times) < 1000; now = now.Add(gap) {
		clock.Set(now)
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		times = append(times, now)
		if left, _ := lim.leases.peek(leaseKey(limits)); left > 0 && lim.Stats().Leased > 0 {
			return times
		}
	}
	t.Fatal("no lease with requests left after 1000 checks")
	return nil
}

// A key far from its limit gets long leases: one lasts until the end of the
// sub-window 19 after the one it was granted in (about W), so a key checked a
// few times a second against a large limit is served mostly without Redis.
// Past the deadline, the next check goes to Redis and what was left is lost,
// not handed out later.
func TestRedisALongLeaseEndsAboutAWindowAfterItsGrant(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Now: clock.Now, Timeout: time.Second})
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 4000, Window: 20 * time.Second}}} // sub-windows of 1s
	// A check every 300ms: fewer than one per sub-window, which a lease
	// ending with its sub-window would never serve.
	times := leaseRun(t, lim, clock, limits, limitertest.T0.Add(100*time.Millisecond), 300*time.Millisecond)
	last, leased := times[len(times)-1], lim.Stats().Leased
	_, until := lim.leases.peek(leaseKey(limits))
	granted := last.Truncate(time.Second) // the last grant was at most a few checks ago
	end := until.Truncate(time.Second).Add(time.Second)
	assert.True(t, end.Sub(granted) >= 19*time.Second && end.Sub(granted) <= 20*time.Second,
		"a long lease ends with the 20th sub-window from its grant: until %v, last check %v", until.Sub(limitertest.T0), last.Sub(limitertest.T0))
	early := end.Sub(until)
	assert.True(t, early > 0 && early <= 20*time.Second/leaseEarly,
		"a lease ends 1/leaseEarly of its length before its sub-window does: %v before", early)

	clock.Set(until)
	res, err := lim.Allow(context.Background(), limits)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	assert.Equal(t, leased, lim.Stats().Leased, "past its deadline the lease is over")
}

// A key whose count is above N/32 gets short leases only: they end with
// their sub-window and hold at most N/2000.
func TestRedisABusyKeysLeaseEndsWithItsSubWindow(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	prefix := uniquePrefix()
	lim := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second})
	const n = 64000                                                                                               // N/32 = 2000, N/2000 = 32
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: n, Window: 20 * time.Second}}} // sub-windows of 1s
	// Another replica, checking exactly, brings the count above N/32.
	other := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
	clock.Set(limitertest.T0)
	require.Greater(t, limitertest.CountAllowed(t, 8, n/32/8+1, other, limits), n/32)

	times := leaseRun(t, lim, clock, limits, limitertest.T0.Add(10*time.Millisecond), time.Millisecond)
	last := times[len(times)-1]
	left, until := lim.leases.peek(leaseKey(limits))
	assert.LessOrEqual(t, left, int64(n/2000))
	early := last.Truncate(time.Second).Add(time.Second).Sub(until)
	assert.True(t, early > 0 && early <= time.Second/leaseEarly,
		"a short lease ends 1/leaseEarly of its length before its sub-window does: %v before", early)
}

// The script chooses the kind of a lease at exactly N/32: a grant that
// leaves every limit's count at most N/32 is a long lease, ending about W
// later; one past it is short, at most N/2000 and ending with its
// sub-window. Checked at the boundary on fresh buckets, for a check of one
// limit and of two (the script runs them by different paths).
func TestTheLeaseKindTurnsAtExactlyAThirtySecondOfN(t *testing.T) {
	srv := redistest.Start(t)
	clock := limitertest.NewClock()
	lim := newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Now: clock.Now, Timeout: time.Second})
	const n = 6400                                         // N/32 = 200, N/2000 = 3
	rate := ratelimit.Rate{N: n, Window: 20 * time.Second} // sub-windows of 1s
	clock.Set(limitertest.T0.Add(250 * time.Millisecond))
	for _, tc := range []struct {
		want, granted int64
		long          bool
	}{{n / 32, n / 32, true}, {n/32 + 1, n / 2000, false}} {
		for _, two := range []bool{false, true} {
			bucket := fmt.Sprintf("b%d-%v", tc.want, two)
			limits := []ratelimit.Limit{{Name: "key", Bucket: bucket, Rate: rate}}
			if two {
				limits = append(limits, ratelimit.Limit{Name: "/r", Bucket: bucket, Scope: "/r", Rate: rate})
			}
			c := lim.newCall(limits, len(limits), tc.want)
			lim.run(context.Background(), c.alone())
			rep := <-c.reply
			require.NoError(t, rep.err)
			granted, lease := rep.vals[0], time.Duration(rep.vals[1])*time.Microsecond
			assert.Equal(t, tc.granted, granted, "want %d, two limits: %v", tc.want, two)
			end := 1 * time.Second // the end of the current sub-window
			if tc.long {
				end = 20 * time.Second // the end of the 20th sub-window from this one
			}
			assert.Equal(t, end-250*time.Millisecond, lease, "want %d, two limits: %v: when the lease ends", tc.want, two)
			for i := range limits {
				assert.Equal(t, granted, rep.vals[2+2*i], "want %d, two limits: %v: limit %d's count", tc.want, two, i)
			}
		}
	}
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
	ls.granted(key, true, n, now, end, ratelimit.Result{Allowed: true, Remaining: 50})
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

// A long lease can last an hour. Once every way of a set holds one, the
// lease unused longest, if unused for leaseIdle, makes way for a new
// bucket; a lease in use is never taken over.
func TestAnIdleLeaseMakesWayForABusyBucket(t *testing.T) {
	ls := newLeases()
	set := func(k string) *leaseSet { s := ls.lock(k); s.mu.Unlock(); return s }
	keys := []string{"a"}
	for i := 0; len(keys) < leaseWays+1; i++ {
		if k := strconv.Itoa(i); set(k) == set("a") {
			keys = append(keys, k)
		}
	}
	end := limitertest.T0.Add(time.Hour)
	for i, k := range keys[:leaseWays] {
		at := limitertest.T0.Add(time.Duration(i) * 100 * time.Millisecond) // keys[0] granted first
		grant(t, ls, k, 8, at, end)
	}
	extra := keys[leaseWays]
	now := limitertest.T0.Add(leaseIdle + 50*time.Millisecond) // only keys[0] idle for leaseIdle
	_, ok := ls.take(keys[1], now.Add(-10*time.Millisecond))
	require.True(t, ok)
	ls.want(extra, 100, now)
	assert.NotNil(t, set(extra).find(extra), "the new bucket took a way over")
	assert.Nil(t, set(keys[0]).find(keys[0]), "the lease unused longest made way")
	for _, k := range keys[1:leaseWays] {
		assert.NotNil(t, set(k).find(k), "lease %s was in use within leaseIdle", k)
	}
	grant(t, ls, extra, 8, now, end) // every way holds a live lease again

	another := ""
	for i := 0; another == ""; i++ {
		if k := "another" + strconv.Itoa(i); set(k) == set("a") {
			another = k
		}
	}
	want, refill := ls.want(another, 100, now)
	assert.Equal(t, int64(1), want, "no way idle long enough: checked exactly")
	assert.False(t, refill)
	assert.Nil(t, set(another).find(another))
}

// The load tool's 100 busy buckets all get leases. With one lease per slot
// of 4096, two of them shared a slot in 70% of runs and one went to Redis on
// every check; with four ways per set, five of 100 keys in one of 1,024
// sets had odds below 1 in 10,000, and there are 4,096 sets now.
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

// Two replicas share a key limit and a route limit through phases of
// random demand, from a check every few seconds to three times the limit,
// so that long leases (granted while the key is quiet), short ones and exact
// checks all meet, and a burst arrives while long leases are out. No
// interval of W may hold more than N allowed checks, for either limit; and
// when demand turns from quiet to saturating, what the long leases still
// hold costs at most N/32 (plus leftovers) of the next window.
func TestRedisLeasesKeepTheLimitThroughChangingDemand(t *testing.T) {
	clock := limitertest.NewClock()
	replicas := twoReplicas(t, clock)
	const (
		n  = 6400 // long leases up to 64 while the count is under 200, short ones up to 3
		w  = 20 * time.Second
		rn = 4800
		rw = 7 * time.Second // another sub-window length: the limits' groups end apart
	)
	key := ratelimit.Limit{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: n, Window: w}}
	route := ratelimit.Limit{Name: "/r", Bucket: "b", Scope: "/r", Rate: ratelimit.Rate{N: rn, Window: rw}}
	rng := rand.New(rand.NewPCG(7, 8))
	perSecond := []float64{0.3, 2, 5, 20, 3 * n / w.Seconds()}
	var keyAllowed, routeAllowed []time.Time
	now := limitertest.T0
	end := now.Add(8 * w)
	for now.Before(end) {
		rate := perSecond[rng.IntN(len(perSecond))]
		phaseEnd := now.Add(time.Duration((0.2 + 1.3*rng.Float64()) * float64(w)))
		for now.Before(phaseEnd) && now.Before(end) {
			now = now.Add(time.Duration(rng.ExpFloat64() / rate * float64(time.Second)))
			clock.Set(now)
			limits := []ratelimit.Limit{key}
			withRoute := rng.IntN(3) == 0
			if withRoute {
				limits = append(limits, route)
			}
			res, err := replicas[rng.IntN(2)].Allow(context.Background(), limits)
			require.NoError(t, err)
			if res.Allowed {
				keyAllowed = append(keyAllowed, now)
				if withRoute {
					routeAllowed = append(routeAllowed, now)
				}
			}
		}
	}
	limitertest.AssertNoIntervalOverN(t, keyAllowed, n, w)
	limitertest.AssertNoIntervalOverN(t, routeAllowed, rn, rw)
	leased := replicas[0].Stats().Leased + replicas[1].Stats().Leased
	t.Logf("%d allowed, %d through the route, %d from leases", len(keyAllowed), len(routeAllowed), leased)
	assert.Positive(t, leased)
}

// A key quiet enough for long leases that then wants far more than its
// limit gets, over the next two windows, all that an exact limiter would
// allow but what the long leases still hold: at most N/32, and those leases'
// leftovers (at most N/100).
func TestRedisLongLeasesCostAQuietKeyLittleOfItsNextBurst(t *testing.T) {
	const (
		n = 6400
		w = 20 * time.Second
	)
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: n, Window: w}}}
	srv := redistest.Start(t)
	run := func(noLeases bool) (quiet, burst int, leased uint64) {
		clock := limitertest.NewClock()
		lim := newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Now: clock.Now, Timeout: time.Second, NoLeases: noLeases})
		var allowed []time.Time
		now := limitertest.T0
		for ; now.Before(limitertest.T0.Add(w)); now = now.Add(200 * time.Millisecond) { // 5/s: 100 per W
			clock.Set(now)
			res, err := lim.Allow(context.Background(), limits)
			require.NoError(t, err)
			require.True(t, res.Allowed)
			allowed = append(allowed, now)
		}
		quiet = len(allowed)
		for end := now.Add(2 * w); now.Before(end); now = now.Add(w / (3 * n)) { // then 3·N/W
			clock.Set(now)
			res, err := lim.Allow(context.Background(), limits)
			require.NoError(t, err)
			if res.Allowed {
				allowed = append(allowed, now)
			}
		}
		limitertest.AssertNoIntervalOverN(t, allowed, n, w)
		return quiet, len(allowed) - quiet, lim.Stats().Leased
	}
	quiet, exact, _ := run(true)
	_, leasedBurst, leased := run(false)
	t.Logf("%d checks in the quiet W; then over 2W an exact limiter allowed %d, with leases %d (%d checks from leases)", quiet, exact, leasedBurst, leased)
	require.Positive(t, leased, "the quiet phase should be leased")
	assert.GreaterOrEqual(t, leasedBurst, exact-n/32-n/leaseShare)
}

// A long lease's requests count in Redis until W after its deadline, so
// requests handed out at the last moment still hold another replica back for
// a whole W after they were used.
func TestRedisALongLeaseCountsUntilWAfterItsDeadline(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	prefix := uniquePrefix()
	const (
		n = 6400
		w = 20 * time.Second
	)
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: n, Window: w}}}
	leasing := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second})
	exact := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
	allowed := leaseRun(t, leasing, clock, limits, limitertest.T0, time.Millisecond)
	left, until := leasing.leases.peek(leaseKey(limits))
	require.Greater(t, left, int64(1))
	// The lease's last requests, handed out just before its deadline.
	clock.Set(until.Add(-time.Millisecond))
	for range left {
		res, err := leasing.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		allowed = append(allowed, clock.Now())
	}
	// Then the other replica asks for more than N, spread over the next W.
	from := until
	for i := range n + n/10 {
		at := from.Add(time.Duration(i) * w / time.Duration(n+n/10))
		clock.Set(at)
		res, err := exact.Allow(context.Background(), limits)
		require.NoError(t, err)
		if res.Allowed {
			allowed = append(allowed, at)
		}
	}
	slices.SortFunc(allowed, func(a, b time.Time) int { return a.Compare(b) })
	limitertest.AssertNoIntervalOverN(t, allowed, n, w)
}

// A counter holding a long lease's group (a sub-window about W ahead) that
// a replica checks under a shorter window (a reload on its way) carries the
// lease over as a lease's: the leased requests still count until W after
// the lease's end, but later requests count from their own time, not from
// the lease's future sub-window, as if the clock had gone back.
func TestRedisACarriedLeaseStaysALease(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	prefix := uniquePrefix()
	old := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second})
	reloaded := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
	before := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 40000, Window: time.Hour}}}
	after := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 1000, Window: time.Second}}}
	for i := 0; old.Stats().Leased < 100; i++ {
		require.Less(t, i, 1000, "no long lease")
		res, err := old.Allow(context.Background(), before)
		require.NoError(t, err)
		require.True(t, res.Allowed)
	}
	burst := func() int {
		n := 0
		for ; n <= 1000; n++ {
			res, err := reloaded.Allow(context.Background(), after)
			require.NoError(t, err)
			if !res.Allowed {
				return n
			}
		}
		return n
	}
	first := burst()
	require.Positive(t, first)
	require.Less(t, first, 1000, "the leased requests count under the new window")
	clock.Set(clock.Now().Add(1100 * time.Millisecond))
	assert.Equal(t, first, burst(), "a second later the new window's own requests are free again")
}

// A busy key's current group, marked to the end of its sub-window by short
// leases, carried over to a much shorter window lies sub-windows ahead of
// now. The carried requests count until that end plus the new window, but
// later requests must count from their own time, not be lumped into that
// group as if the clock had gone back: a client well under both limits
// would be locked out for most of the old sub-window.
func TestRedisACarriedShortLeaseDoesNotHoldLaterRequests(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	prefix := uniquePrefix()
	before := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 40000, Window: time.Hour}}}
	after := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 1000, Window: time.Minute}}}
	exact := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
	leasing := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second})
	reloaded := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
	allow := func(lim *Limiter, l []ratelimit.Limit) bool {
		res, err := lim.Allow(context.Background(), l)
		require.NoError(t, err)
		return res.Allowed
	}
	// Busy: more than N/32 of 40000/h counted, so leases are short.
	for range 1300 {
		require.True(t, allow(exact, before))
	}
	// The next sub-window of 3 minutes, its first second: short leases
	// mark its group to its end.
	_, sub := before[0].Rate.Micros()
	start := time.UnixMicro((limitertest.T0.UnixMicro()/sub + 1) * sub)
	clock.Set(start.Add(time.Second))
	var allowed []time.Time
	for range 400 {
		require.True(t, allow(leasing, before))
		allowed = append(allowed, clock.Now())
	}
	require.Positive(t, leasing.Stats().Leased, "no short lease")
	// The limit becomes 1000/m; the client sends 5 a second, 300 a minute.
	denied := 0
	for i := range 5 * 240 {
		clock.Set(start.Add(time.Second + time.Duration(i)*200*time.Millisecond))
		if allow(reloaded, after) {
			allowed = append(allowed, clock.Now())
		} else {
			denied++
		}
	}
	assert.Zero(t, denied, "of 1200 requests at 300/m under 1000/m, 400 carried")
	limitertest.AssertNoIntervalOverN(t, allowed, 1000, time.Minute)
}

// A replica's clock that runs a little slower than Redis's (two NTP-slewed
// clocks may differ in rate by up to 1,000 ppm) must not hand out a lease's
// requests after the end of the sub-window Redis counted them in: they would
// count for less than W after their use. Here the replica's clock lags
// Redis's by 11ms at the end of a long lease of about 20s (550 ppm): by its
// own clock the lease still had a millisecond to run when Redis's was 10ms
// past the lease group's bound, and its last requests, handed out then,
// stopped counting 10ms before W after their use, which the other replica's
// steady demand took at once: N+1 and more in a window.
func TestRedisALeaseEndsBeforeRedisCountsItOverOnAReplicaWhoseClockIsSlow(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	redisClock, replicaClock := limitertest.NewClock(), limitertest.NewClock()
	prefix := uniquePrefix()
	const (
		n = 6400
		w = 20 * time.Second // sub-windows of 1s
	)
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: n, Window: w}}}
	leasing := newRedis(t, client, Options{Prefix: prefix, Now: redisClock.Now, Timeout: time.Second})
	leasing.leaseNow = replicaClock.Now
	exact := newRedis(t, client, Options{Prefix: prefix, Now: redisClock.Now, Timeout: time.Second, NoLeases: true})
	var allowed []time.Time
	for now := limitertest.T0; ; now = now.Add(time.Millisecond) {
		require.Less(t, len(allowed), 1000, "no lease")
		redisClock.Set(now)
		replicaClock.Set(now)
		res, err := leasing.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		allowed = append(allowed, now)
		if left, _ := leasing.leases.peek(leaseKey(limits)); left > 1 && leasing.Stats().Leased > 0 {
			break
		}
	}
	left, until := leasing.leases.peek(leaseKey(limits))
	// The lease group's bound: the end of the sub-window the lease ends in.
	_, sub := limits[0].Rate.Micros()
	bound := time.UnixMicro((until.UnixMicro() + sub - 1) / sub * sub)
	redisClock.Set(bound.Add(10 * time.Millisecond))
	replicaClock.Set(bound.Add(-time.Millisecond))
	for range left {
		res, err := leasing.Allow(context.Background(), limits)
		require.NoError(t, err)
		if res.Allowed {
			allowed = append(allowed, redisClock.Now())
		}
	}
	// The other replica asks every millisecond for a window and a second.
	from := redisClock.Now()
	for i := range int((w + time.Second) / time.Millisecond) {
		at := from.Add(time.Duration(i) * time.Millisecond)
		redisClock.Set(at)
		res, err := exact.Allow(context.Background(), limits)
		require.NoError(t, err)
		if res.Allowed {
			allowed = append(allowed, at)
		}
	}
	slices.SortFunc(allowed, func(a, b time.Time) int { return a.Compare(b) })
	limitertest.AssertNoIntervalOverN(t, allowed, n, w)
}

// An answer from a lease says when the limit is fully reset as an exact
// check at the same instant does, however long after its grant it is
// handed out: the lease's own Reset, read by Redis at the grant, was handed
// out unchanged until the lease's deadline, so a leased answer an hour
// into an hourly limit's long lease named a reset an hour later than the
// truth, and the X-RateLimit-Reset of two replicas disagreed by that much.
// Checked for each kind of lease (long; short, above N/32) and for a check
// of two limits.
func TestALeasedAnswerNamesTheResetAnExactCheckWould(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	prefix := uniquePrefix()
	leasing := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second})
	exact := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
	rate := ratelimit.Rate{N: 64000, Window: 20 * time.Second} // sub-windows of 1s; N/32 = 2000, N/2000 = 32
	for _, tc := range []struct {
		name  string
		busy  bool // a count above N/32 first: short leases only
		route bool
	}{{"long", false, false}, {"short", true, false}, {"long, two limits", false, true}, {"short, two limits", true, true}} {
		t.Run(tc.name, func(t *testing.T) {
			limits := []ratelimit.Limit{{Name: "key", Bucket: tc.name, Rate: rate}}
			if tc.route {
				limits = append(limits, ratelimit.Limit{Name: "/r", Bucket: tc.name, Scope: "/r", Rate: ratelimit.Rate{N: 2 * rate.N, Window: rate.Window}})
			}
			start := limitertest.T0.Add(time.Hour + 10*time.Millisecond)
			clock.Set(start)
			if tc.busy {
				require.Greater(t, limitertest.CountAllowed(t, 8, int(rate.N/32/8+1), exact, limits), int(rate.N/32))
			}
			// Checks every millisecond until a grant leaves two requests.
			var granted time.Time
			for now := start; ; now = now.Add(time.Millisecond) {
				require.Less(t, now.Sub(start), time.Second, "no lease of three")
				clock.Set(now)
				res, err := leasing.Allow(context.Background(), limits)
				require.NoError(t, err)
				require.True(t, res.Allowed)
				if left, _ := leasing.leases.peek(leaseKey(limits)); left >= 2 {
					granted = now
					break
				}
			}
			_, until := leasing.leases.peek(leaseKey(limits))
			// Hand out the lease's last two requests, one halfway to its
			// deadline and one just before it.
			for _, at := range []time.Time{granted.Add(until.Sub(granted) / 2), until.Add(-time.Millisecond)} {
				clock.Set(at)
				before := leasing.Stats().Leased
				got, err := leasing.Allow(context.Background(), limits)
				require.NoError(t, err)
				require.Equal(t, before+1, leasing.Stats().Leased, "answered from the lease")
				want, err := exact.Allow(context.Background(), limits)
				require.NoError(t, err)
				assert.Equal(t, want.Limit.Name, got.Limit.Name)
				assert.Equal(t, want.Reset, got.Reset, "%v after the grant", at.Sub(granted))
			}
		})
	}
}
