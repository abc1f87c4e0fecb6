// Package limitertest is the conformance suite for ratelimit.Limiter
// implementations, as keystore/storetest is for key stores: every limiter's
// tests call Run, so that the local limiter, the Redis one and the Redis
// one's fallback keep one contract (the one documented on ratelimit.Limiter
// and proved in ratelimit's window.go), and Differential holds a second
// implementation of the algorithm to the same Result, check for check.
//
// It is test support, not a limiter: import it only from _test.go files.
package limitertest

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

// T0 is a start time on a whole second, so sub-windows of every test rate
// start on it.
var T0 = time.Unix(1_700_000_000, 0)

// Clock is a settable clock for the limiters under test. Its zero value
// reads the zero time; NewClock starts it at T0.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock at T0.
func NewClock() *Clock { return &Clock{t: T0} }

// Now is the clock's reading, the func() time.Time a limiter takes.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Set moves the clock to t (backwards too).
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// Factory makes a fresh limiter for the test t that reads the time from now
// (a limiter that keeps its own clock, such as Redis's, may ignore it for
// the tests that say so) and registers its own cleanup with t.Cleanup.
type Factory func(t *testing.T, now func() time.Time) ratelimit.Limiter

// Run proves that the limiters newLimiter makes keep the ratelimit.Limiter
// contract. Each subtest gets fresh limiters.
func Run(t *testing.T, newLimiter Factory) {
	t.Run("known states give exact Results", func(t *testing.T) { RunExactCases(t, newLimiter) })
	t.Run("RetryAfter and Reset are exact on random walks", func(t *testing.T) {
		for seed := range uint64(8) {
			RandomWalk(t, seed, 300, newLimiter)
		}
	})
	t.Run("odd rates, clocks and names neither panic nor fail", func(t *testing.T) {
		clock := NewClock()
		OddInputs(t, newLimiter(t, clock.Now), clock)
	})
	t.Run("limits a check cannot apply are errors", func(t *testing.T) { testRejects(t, newLimiter) })
	t.Run("the tightest of many limits decides", func(t *testing.T) { testManyLimits(t, newLimiter) })
	t.Run("concurrent checks of a fresh bucket allow exactly N", func(t *testing.T) { testBurst(t, newLimiter) })
}

// statser is the counters every limiter of this project keeps.
type statser interface{ Stats() ratelimit.Stats }

// assertStats checks a limiter's counters after allowed and limited checks:
// exactly those counts, no eviction, and either no check decided
// by a store-error fallback (then no store error either) or every one of
// them (the limiter's store is down: some store errors, at most one a check).
func assertStats(t *testing.T, lim ratelimit.Limiter, allowed, limited uint64) {
	t.Helper()
	s, ok := lim.(statser)
	if !ok {
		return
	}
	st := s.Stats()
	assert.LessOrEqual(t, st.Leased, st.Allowed, "a leased check is an allowed one")
	assert.LessOrEqual(t, st.Calls, allowed+limited, "at most one store call a check")
	st.Leased, st.Calls = 0, 0 // how many were leased, how many shared a call: the limiter's choice
	switch st.Fallback {
	case 0:
		assert.Equal(t, ratelimit.Stats{Allowed: allowed, Limited: limited}, st)
	case allowed + limited:
		assert.Equal(t, ratelimit.Stats{Allowed: allowed, Limited: limited, Fallback: st.Fallback, StoreErrors: st.StoreErrors}, st)
		assert.Positive(t, st.StoreErrors)
		assert.LessOrEqual(t, st.StoreErrors, st.Fallback)
	default:
		t.Errorf("%d of %d checks fell back: want none or all (%+v)", st.Fallback, allowed+limited, st)
	}
}

// BadLimits are checks no limiter can apply, and the error each must give.
func BadLimits() []struct {
	Name   string
	Limits []ratelimit.Limit
	Want   error
} {
	r := ratelimit.Rate{N: 1, Window: time.Second}
	return []struct {
		Name   string
		Limits []ratelimit.Limit
		Want   error
	}{
		{"limits of different buckets", []ratelimit.Limit{{Bucket: "a", Rate: r}, {Bucket: "b", Scope: "x", Rate: r}}, ratelimit.ErrMixedBuckets},
		{"two limits with one scope", []ratelimit.Limit{{Bucket: "a", Rate: r}, {Bucket: "a", Rate: r}}, ratelimit.ErrDuplicateScope},
		{"a limit without a bucket", []ratelimit.Limit{{Name: "key", Rate: r}}, ratelimit.ErrEmptyBucket},
	}
}

func testRejects(t *testing.T, newLimiter Factory) {
	for _, tc := range BadLimits() {
		t.Run(tc.Name, func(t *testing.T) {
			lim := newLimiter(t, NewClock().Now)
			_, err := lim.Allow(context.Background(), tc.Limits)
			require.ErrorIs(t, err, tc.Want)
			assertStats(t, lim, 0, 0)
		})
	}
	r := ratelimit.Rate{N: 1, Window: time.Second}
	t.Run("zero limits are ignored by the checks too", func(t *testing.T) {
		lim := newLimiter(t, NewClock().Now)
		res, err := lim.Allow(context.Background(), []ratelimit.Limit{{Bucket: "a", Rate: r}, {Bucket: "b"}, {Bucket: "a", Rate: ratelimit.Rate{N: -1, Window: time.Second}}, {Rate: ratelimit.Rate{N: 5}}})
		require.NoError(t, err)
		assert.True(t, res.Allowed)
		res, err = lim.Allow(context.Background(), nil)
		require.NoError(t, err)
		assert.Equal(t, ratelimit.Result{Allowed: true}, res)
	})
}

func testManyLimits(t *testing.T, newLimiter Factory) {
	limits := make([]ratelimit.Limit, 7)
	for i := range limits {
		limits[i] = ratelimit.Limit{Name: fmt.Sprint("l", i), Bucket: "k", Scope: fmt.Sprint("s", i), Rate: ratelimit.Rate{N: int64(10 + i), Window: time.Duration(i+1) * time.Second}}
	}
	limits[5].Rate.N = 4 // the tightest, past the first four
	clock := NewClock()
	lim := newLimiter(t, clock.Now)
	for i := range 4 {
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		require.True(t, res.Allowed)
		assert.Equal(t, limits[5], res.Limit)
		assert.Equal(t, int64(3-i), res.Remaining)
	}
	res, err := lim.Allow(context.Background(), limits)
	require.NoError(t, err)
	assert.False(t, res.Allowed)
	assert.Equal(t, limits[5], res.Limit)
	// 6s window: s = 0.3s, mark 1 bound ceil(0.3s/255) = 1177µs, free 1µs after W.
	assert.Equal(t, us(6_001_178), res.RetryAfter)
	clock.Set(T0.Add(us(6_001_178)))
	res, err = lim.Allow(context.Background(), limits)
	require.NoError(t, err)
	assert.True(t, res.Allowed)
	assert.Equal(t, limits[5], res.Limit)
	assert.Equal(t, int64(3), res.Remaining)
	assertStats(t, lim, 5, 1)
}

// testBurst sends 8 goroutines' 400 checks each at once, on the real
// clock, against a key limit and a looser route limit of a fresh bucket.
func testBurst(t *testing.T, newLimiter Factory) {
	lim := newLimiter(t, time.Now)
	limits := []ratelimit.Limit{
		{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 1000, Window: time.Hour}},
		{Name: "/r", Bucket: "k", Scope: "/r", Rate: ratelimit.Rate{N: 5000, Window: time.Hour}},
	}
	assert.Equal(t, 1000, CountAllowed(t, 8, 400, lim, limits))
	assertStats(t, lim, 1000, 2200)
}

// CountAllowed runs callers goroutines of each checks each, and counts the
// allowed checks; an error fails the test.
func CountAllowed(t testing.TB, callers, each int, lim ratelimit.Limiter, limits []ratelimit.Limit) int {
	t.Helper()
	var allowed atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range each {
				res, err := lim.Allow(context.Background(), limits)
				if err != nil {
					t.Error(err)
					return
				}
				if res.Allowed {
					allowed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return int(allowed.Load())
}

// AssertNoIntervalOverN fails unless every closed interval of length w holds
// at most n of the sorted times: the (n+1)th allowed after any allowed one
// must come more than w later.
func AssertNoIntervalOverN(t testing.TB, times []time.Time, n int, w time.Duration) {
	t.Helper()
	for i := 0; i+n < len(times); i++ {
		if d := times[i+n].Sub(times[i]); d <= w {
			t.Fatalf("%d allowed within %v (from %v to %v); the limit is %d per %v",
				n+1, d, times[i].Sub(T0), times[i+n].Sub(T0), n, w)
		}
	}
}

// Differential holds candidate to reference check for check: on the same
// demand (the accuracy cases, then random traffic against random limits,
// idle past whole windows now and then, the clock stepping back now and
// then), both must give the same Result at
// every step. It is how a second implementation of the algorithm (Lua in
// Redis) is held to the first.
func Differential(t *testing.T, reference, candidate Factory) {
	t.Run("the accuracy cases", func(t *testing.T) {
		// Their time runs stretch times slower than the local limiter's
		// own accuracy test runs it (windows and arrivals alike, which
		// neither algorithm can tell apart but for rounding both do the
		// same way). A candidate that lets its store expire counts by the
		// store's own clock (Redis's PX) would otherwise lose a count the
		// fake clock still holds whenever a check takes longer than the
		// 1 ms between two of the saturating case's arrivals: the race
		// detector on a busy machine.
		const stretch = 100
		for _, tc := range AccuracyCases(10) {
			times := tc.Times()
			if len(times) > 20000 {
				continue // the dense cases are the local limiter's own accuracy test
			}
			for i, at := range times {
				times[i] = T0.Add(at.Sub(T0) * stretch)
			}
			tc.Rate.Window *= stretch
			t.Run(tc.Name, func(t *testing.T) {
				clock := NewClock()
				ref, cand := reference(t, clock.Now), candidate(t, clock.Now)
				limits := []ratelimit.Limit{
					{Name: "key", Bucket: "k", Rate: tc.Rate},
					{Name: "/r", Bucket: "k", Scope: "/r", Rate: ratelimit.Rate{N: tc.Rate.N * 3 / 2, Window: 2 * tc.Rate.Window}},
				}
				var allowed []time.Time
				for i, at := range times {
					clock.Set(at)
					want, err := ref.Allow(context.Background(), limits)
					require.NoError(t, err)
					got, err := cand.Allow(context.Background(), limits)
					require.NoError(t, err)
					require.Equal(t, want, got, "check %d at %v", i, at.Sub(T0))
					if got.Allowed {
						allowed = append(allowed, at)
					}
				}
				AssertNoIntervalOverN(t, allowed, int(tc.Rate.N), tc.Rate.Window)
				assertStats(t, cand, uint64(len(allowed)), uint64(len(times)-len(allowed)))
			})
		}
	})
	t.Run("random traffic against random limits", func(t *testing.T) {
		for seed := range uint64(8) {
			rng := newRand(seed, 7)
			clock := NewClock()
			ref, cand := reference(t, clock.Now), candidate(t, clock.Now)
			limits := make([]ratelimit.Limit, 1+rng.IntN(3))
			for i := range limits {
				limits[i] = ratelimit.Limit{Name: "l" + strconv.Itoa(i), Bucket: "b", Scope: strconv.Itoa(i),
					Rate: ratelimit.Rate{N: 1 + rng.Int64N(30), Window: time.Duration(1+rng.IntN(3000)) * time.Millisecond}}
			}
			now := T0
			for step := range 400 {
				gap := time.Duration(rng.ExpFloat64() * float64(40*time.Millisecond))
				switch rng.IntN(50) {
				case 0:
					gap = time.Duration(rng.IntN(8000)) * time.Millisecond // idle past whole windows
				case 1:
					// The clock steps back (Redis failed over to a host whose
					// clock is behind): both count as of their newest group.
					gap = -time.Duration(rng.IntN(3000)) * time.Millisecond
				}
				now = now.Add(gap)
				clock.Set(now)
				want, err := ref.Allow(context.Background(), limits)
				require.NoError(t, err)
				got, err := cand.Allow(context.Background(), limits)
				require.NoError(t, err)
				require.Equal(t, want, got, "seed %d step %d at %v, limits %+v", seed, step, now.Sub(T0), limits)
			}
		}
	})
	t.Run("limits whose window changes", func(t *testing.T) {
		// Replicas that disagree on a limit's window (a reload on its way,
		// a key's new rate on its way to their caches) check one counter
		// with two windows in turn: the count carries over, alike in both,
		// and no interval of the shorter window holds more than N.
		for seed := range uint64(8) {
			rng := newRand(seed, 11)
			clock := NewClock()
			ref, cand := reference(t, clock.Now), candidate(t, clock.Now)
			type scope struct {
				n       int64
				windows [2]time.Duration
				allowed []time.Time
			}
			scopes := make([]scope, 1+rng.IntN(2))
			for i := range scopes {
				scopes[i].n = 1 + rng.Int64N(10)
				for k := range scopes[i].windows {
					scopes[i].windows[k] = time.Duration(1+rng.IntN(3000)) * time.Millisecond
				}
			}
			now := T0
			for step := range 600 {
				now = now.Add(time.Duration(rng.ExpFloat64() * float64(30*time.Millisecond)))
				if seed%2 == 1 && rng.IntN(50) == 0 {
					now = now.Add(-time.Duration(rng.IntN(1000)) * time.Millisecond) // the clock steps back
				}
				clock.Set(now)
				limits := make([]ratelimit.Limit, len(scopes))
				for i, sc := range scopes {
					limits[i] = ratelimit.Limit{Name: "l" + strconv.Itoa(i), Bucket: "b", Scope: strconv.Itoa(i),
						Rate: ratelimit.Rate{N: sc.n, Window: sc.windows[rng.IntN(2)]}}
				}
				want, err := ref.Allow(context.Background(), limits)
				require.NoError(t, err)
				got, err := cand.Allow(context.Background(), limits)
				require.NoError(t, err)
				require.Equal(t, want, got, "seed %d step %d at %v, limits %+v", seed, step, now.Sub(T0), limits)
				if got.Allowed {
					for i := range scopes {
						scopes[i].allowed = append(scopes[i].allowed, now)
					}
				}
			}
			for _, sc := range scopes {
				if seed%2 == 1 {
					break // the clock went back: the interval check needs one that does not
				}
				AssertNoIntervalOverN(t, sc.allowed, int(sc.n), min(sc.windows[0], sc.windows[1]))
			}
		}
	})
	t.Run("a carry that keeps nothing, in a denied check", func(t *testing.T) {
		// A limit checked with a shorter window finds none of its requests
		// still counting under it, while another limit of the check denies
		// it: the count is void all the same, and when the old window
		// comes back (the other replica's check) it counts nothing of them.
		clock := NewClock()
		ref, cand := reference(t, clock.Now), candidate(t, clock.Now)
		limits := func(w time.Duration) []ratelimit.Limit {
			return []ratelimit.Limit{
				{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 1, Window: w}},
				{Name: "/r", Bucket: "b", Scope: "/r", Rate: ratelimit.Rate{N: 1, Window: 2 * time.Second}},
			}
		}
		for i, step := range []struct {
			at time.Duration
			w  time.Duration
		}{{0, 3 * time.Second}, {1500 * time.Millisecond, time.Second}, {1600 * time.Millisecond, 3 * time.Second}} {
			clock.Set(T0.Add(step.at))
			want, err := ref.Allow(context.Background(), limits(step.w))
			require.NoError(t, err)
			got, err := cand.Allow(context.Background(), limits(step.w))
			require.NoError(t, err)
			require.Equal(t, want, got, "check %d at %v", i, step.at)
		}
	})
}

// Checks returns, for benchmarks, one check for each of buckets distinct
// keys: the key's limit and, with route, a route's too. The rates are high
// enough that every check is allowed (the allowed path is the one that
// writes).
func Checks(buckets int, route bool) [][]ratelimit.Limit {
	out := make([][]ratelimit.Limit, buckets)
	for i := range out {
		b := "key_" + strconv.Itoa(i)
		out[i] = []ratelimit.Limit{{Name: "key", Bucket: b, Rate: ratelimit.Rate{N: 1e9, Window: time.Hour}}}
		if route {
			out[i] = append(out[i], ratelimit.Limit{Name: "/api/users/{id}", Bucket: b, Scope: "/api/users/{id}", Rate: ratelimit.Rate{N: 1e9, Window: time.Minute}})
		}
	}
	return out
}
