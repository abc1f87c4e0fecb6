package limitertest

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

// RandomWalk drives a limiter from newLimiter through random demand against
// random limits of one bucket on a clock that only moves forward, and checks
// after every denial that RetryAfter is exact: 1µs earlier the same check is
// still denied, at RetryAfter it is allowed. With a single limit it checks
// Reset the same way: at Reset the limit is whole again. Every limit keeps at
// most N in any W.
func RandomWalk(t *testing.T, seed uint64, steps int, newLimiter Factory) {
	rng := newRand(seed, seed)
	clock := NewClock()
	lim := newLimiter(t, clock.Now)
	limits := make([]ratelimit.Limit, 1+rng.IntN(3))
	for i := range limits {
		limits[i] = ratelimit.Limit{Name: "l" + string(rune('a'+i)), Bucket: "walk", Scope: string(rune('a' + i)),
			Rate: ratelimit.Rate{N: 1 + rng.Int64N(20), Window: time.Duration(1+rng.IntN(5000)) * time.Millisecond}}
	}
	allowed := make([][]time.Time, len(limits))
	now := T0
	check := func(at time.Time) ratelimit.Result {
		clock.Set(at)
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		if res.Allowed {
			for i := range limits {
				allowed[i] = append(allowed[i], at)
			}
		}
		return res
	}
	for step := 0; step < steps; step++ {
		now = now.Add(time.Duration(rng.ExpFloat64() * float64(50*time.Millisecond)))
		res := check(now)
		switch {
		case !res.Allowed:
			require.Positive(t, res.RetryAfter, "step %d: %+v", step, res)
			require.Equal(t, res.RetryAfter, res.Reset)
			if rng.IntN(2) == 0 {
				early := check(now.Add(res.RetryAfter - time.Microsecond))
				require.False(t, early.Allowed, "step %d: allowed 1µs before RetryAfter %v", step, res.RetryAfter)
				require.Equal(t, time.Microsecond, early.RetryAfter, "step %d", step)
				now = now.Add(res.RetryAfter)
				require.True(t, check(now).Allowed, "step %d: denied at RetryAfter %v", step, res.RetryAfter)
			}
		case len(limits) == 1 && rng.IntN(8) == 0:
			require.Positive(t, res.Reset)
			now = now.Add(res.Reset)
			after := check(now)
			require.Equal(t, limits[0].Rate.N-1, after.Remaining, "step %d: not whole again after Reset %v", step, res.Reset)
		}
	}
	for i, l := range limits {
		AssertNoIntervalOverN(t, allowed[i], int(l.Rate.N), l.Rate.Window)
	}
}

// newRand is the suite's seeded source of randomness.
func newRand(a, b uint64) *rand.Rand { return rand.New(rand.NewPCG(a, b)) }

// OddInputs checks that no input makes lim panic or fail: odd rates
// (negative, zero, huge, tiny windows), odd clock readings (set on clock,
// lim's clock: the zero time, far past and future) and odd bucket names. The
// only error it accepts is ratelimit.ErrEmptyBucket; every Result must be
// non-negative and render as headers.
func OddInputs(t *testing.T, lim ratelimit.Limiter, clock *Clock) {
	rates := []ratelimit.Rate{
		{}, {N: -5, Window: time.Second}, {N: 5, Window: -time.Second}, {N: 1, Window: 1},
		{N: math.MaxInt64, Window: math.MaxInt64}, {N: 1, Window: math.MaxInt64}, {N: math.MaxInt64, Window: time.Nanosecond},
		{N: 3, Window: 366 * 24 * time.Hour},
	}
	times := []time.Time{{}, T0, time.Unix(0, 0), time.Unix(1<<40, 0), time.Unix(-1<<40, 0), T0.Add(-time.Nanosecond)}
	for _, at := range times {
		clock.Set(at)
		for i, a := range rates {
			for j, b := range rates {
				for _, bucket := range []string{"k", "", "{}", "\x00\xff"} {
					limits := []ratelimit.Limit{{Bucket: bucket, Scope: "a", Rate: a}, {Bucket: bucket, Scope: "b", Rate: b}}
					res, err := lim.Allow(context.Background(), limits)
					if err != nil {
						require.ErrorIs(t, err, ratelimit.ErrEmptyBucket, "rates %d,%d at %v", i, j, at)
						continue
					}
					require.GreaterOrEqual(t, res.Remaining, int64(0))
					require.GreaterOrEqual(t, res.Reset, time.Duration(0))
					require.GreaterOrEqual(t, res.RetryAfter, time.Duration(0))
					_ = ratelimit.AppendHeaders(nil, res)
				}
			}
		}
	}
}
