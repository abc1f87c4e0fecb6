package ratelimit_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
	"github.com/extauthz/extauthz/ratelimit/limitertest"
)

// local is the factory of the conformance suite: a Local on the suite's clock.
func local(_ *testing.T, now func() time.Time) ratelimit.Limiter { return ratelimit.NewLocal(now, 0) }

func TestLocalConformsToTheLimiterContract(t *testing.T) { limitertest.Run(t, local) }

func TestLocalRetryAfterAndResetAreExact(t *testing.T) {
	for seed := range uint64(40) {
		limitertest.RandomWalk(t, seed, 2000, local)
	}
}

// No input panics or fails, with the buckets bounded to a few (so that odd
// inputs meet eviction too).
func TestLocalOddInputs(t *testing.T) {
	clock := limitertest.NewClock()
	limitertest.OddInputs(t, ratelimit.NewLocal(clock.Now, 16), clock)
}

func TestLocalAccuracy(t *testing.T) { limitertest.Accuracy(t, local, 60) }

// A check no limiter can apply is an error, and creates no bucket.
func TestLocalRejectsLimitsItCannotApply(t *testing.T) {
	for _, tc := range limitertest.BadLimits() {
		t.Run(tc.Name, func(t *testing.T) {
			l := ratelimit.NewLocal(nil, 0)
			_, err := l.Allow(context.Background(), tc.Limits)
			require.ErrorIs(t, err, tc.Want)
			assert.Equal(t, 0, l.Len())
		})
	}
}

func TestLocalRateChanges(t *testing.T) {
	clock := limitertest.NewClock()
	lim := ratelimit.NewLocal(clock.Now, 0)
	allow := func(r ratelimit.Rate) bool {
		res, err := lim.Allow(context.Background(), []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: r}})
		require.NoError(t, err)
		return res.Allowed
	}
	for range 2 {
		require.True(t, allow(ratelimit.Rate{N: 2, Window: time.Second}))
	}
	require.False(t, allow(ratelimit.Rate{N: 2, Window: time.Second}))
	assert.True(t, allow(ratelimit.Rate{N: 3, Window: time.Second}), "a larger N over the same window keeps the count: one more")
	assert.False(t, allow(ratelimit.Rate{N: 3, Window: time.Second}))
	assert.False(t, allow(ratelimit.Rate{N: 3, Window: 2 * time.Second}), "another window carries the count over")
	assert.False(t, allow(ratelimit.Rate{N: 3, Window: time.Second}), "and back")
	assert.True(t, allow(ratelimit.Rate{N: 4, Window: 2 * time.Second}), "one more under a larger N")

	// Carried before 1970 too (a clock far off): the count's bound is its
	// latest request's, not the epoch.
	clock.Set(time.Unix(-1000, 0))
	res, err := lim.Allow(context.Background(), []ratelimit.Limit{{Name: "key", Bucket: "early", Rate: ratelimit.Rate{N: 2, Window: time.Second}}})
	require.NoError(t, err)
	require.True(t, res.Allowed)
	res, err = lim.Allow(context.Background(), []ratelimit.Limit{{Name: "key", Bucket: "early", Rate: ratelimit.Rate{N: 2, Window: 2 * time.Second}}})
	require.NoError(t, err)
	assert.True(t, res.Allowed)
	assert.LessOrEqual(t, res.Reset, 2*time.Second+100*time.Millisecond, "reset once both requests age out")
}

func TestLocalEvictsIdleBucketsFirst(t *testing.T) {
	clock := limitertest.NewClock()
	const max = 8 * ratelimit.LocalShards
	lim := ratelimit.NewLocal(clock.Now, max)
	perSecond := ratelimit.Rate{N: 1, Window: time.Second}
	for i := range 4 * max {
		_, err := lim.Allow(context.Background(), []ratelimit.Limit{{Bucket: fmt.Sprint("idle", i), Rate: perSecond}})
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, lim.Len(), max)

	clock.Set(limitertest.T0.Add(2 * time.Second)) // every bucket so far is idle
	busy := []ratelimit.Limit{{Name: "key", Bucket: "busy", Rate: ratelimit.Rate{N: 1, Window: time.Hour}}}
	res, err := lim.Allow(context.Background(), busy)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	for i := range 4 * max {
		_, err := lim.Allow(context.Background(), []ratelimit.Limit{{Bucket: fmt.Sprint("new", i), Rate: perSecond}})
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, lim.Len(), max)
	assert.Greater(t, lim.Stats().Evicted, uint64(4*max))
	res, err = lim.Allow(context.Background(), busy)
	require.NoError(t, err)
	assert.False(t, res.Allowed, "the busy bucket outlived thousands of idle ones")
}

func TestLocalSurvivesOddClocks(t *testing.T) {
	clock := limitertest.NewClock()
	lim := ratelimit.NewLocal(clock.Now, 0)
	limits := []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 3, Window: time.Second}}}
	var allowed []time.Time
	for i, at := range []time.Time{limitertest.T0, limitertest.T0.Add(-time.Hour), {}, limitertest.T0.Add(time.Millisecond), limitertest.T0.Add(-time.Millisecond), limitertest.T0} {
		clock.Set(at)
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err, "check %d", i)
		if res.Allowed {
			allowed = append(allowed, at)
		}
		assert.GreaterOrEqual(t, res.Remaining, int64(0))
		assert.GreaterOrEqual(t, res.Reset, time.Duration(0))
	}
	assert.Len(t, allowed, 3, "a clock going back does not free capacity")
}

func TestLocalAllowDoesNotAllocate(t *testing.T) {
	lim := ratelimit.NewLocal(nil, 0)
	one := []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 1e9, Window: time.Hour}}}
	two := append(one, ratelimit.Limit{Name: "/r", Bucket: "k", Scope: "/r", Rate: ratelimit.Rate{N: 1e9, Window: time.Minute}})
	for _, limits := range [][]ratelimit.Limit{one, two} {
		_, _ = lim.Allow(context.Background(), limits) // create the buckets
		allocs := testing.AllocsPerRun(1000, func() { _, _ = lim.Allow(context.Background(), limits) })
		assert.Zero(t, allocs, "%d limits", len(limits))
	}
}

// A Local given no clock reads the wall time of its making plus the
// monotonic time since: Unix µs like the wall clock's, but never stepped
// (a wall clock stepped forward would free every count early by the step).
func TestLocalClockIsTheWallClockMovedMonotonically(t *testing.T) {
	now := ratelimit.SteadyClock()
	prev := now()
	assert.WithinDuration(t, time.Now(), prev, time.Second, "anchored at the wall clock")
	for range 10_000 {
		at := now()
		require.False(t, at.Before(prev), "the clock went back: %v after %v", at, prev)
		prev = at
	}
	assert.WithinDuration(t, time.Now(), prev, time.Second)
}
