package ratelimit

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestLocalExactResults(t *testing.T) {
	runExactCases(t, func(t *testing.T, now func() time.Time) Limiter { return NewLocal(now, 0) })
}

func TestLocalRejectsLimitsItCannotApply(t *testing.T) {
	r := Rate{N: 1, Window: time.Second}
	for _, tc := range []struct {
		name   string
		limits []Limit
		want   error
	}{
		{"limits of different buckets", []Limit{{Bucket: "a", Rate: r}, {Bucket: "b", Scope: "x", Rate: r}}, ErrMixedBuckets},
		{"two limits with one scope", []Limit{{Bucket: "a", Rate: r}, {Bucket: "a", Rate: r}}, ErrDuplicateScope},
		{"a limit without a bucket", []Limit{{Name: "key", Rate: r}}, ErrEmptyBucket},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLocal(nil, 0)
			_, err := l.Allow(context.Background(), tc.limits)
			require.ErrorIs(t, err, tc.want)
			assert.Equal(t, 0, l.Len())
		})
	}
	t.Run("zero limits are ignored by the checks too", func(t *testing.T) {
		l := NewLocal(nil, 0)
		res, err := l.Allow(context.Background(), []Limit{{Bucket: "a", Rate: r}, {Bucket: "b"}, {Bucket: "a", Rate: Rate{N: -1, Window: time.Second}}, {Rate: Rate{N: 5}}})
		require.NoError(t, err)
		assert.True(t, res.Allowed)
		res, err = l.Allow(context.Background(), nil)
		require.NoError(t, err)
		assert.Equal(t, Result{Allowed: true}, res)
	})
}

// drive sends a check at each of the times (sorted) and returns the times of
// the allowed ones.
func drive(t *testing.T, lim Limiter, clock *fakeClock, limits []Limit, times []time.Time) []time.Time {
	t.Helper()
	var allowed []time.Time
	for _, at := range times {
		clock.Set(at)
		res, err := lim.Allow(context.Background(), limits)
		require.NoError(t, err)
		if res.Allowed {
			allowed = append(allowed, at)
		}
	}
	return allowed
}

// steady returns a check every gap for d.
func steady(gap, d time.Duration) []time.Time {
	var ts []time.Time
	for at := time.Duration(0); at < d; at += gap {
		ts = append(ts, t0.Add(at))
	}
	return ts
}

// poisson returns random arrivals at rate per second for d.
func poisson(rng *rand.Rand, rate float64, d time.Duration) []time.Time {
	var ts []time.Time
	for at := time.Duration(0); at < d; at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second)) {
		ts = append(ts, t0.Add(at))
	}
	return ts
}

// throughput is the allowed rate after the first window (the opening burst
// is not the long run), as a fraction of N/W.
func throughput(allowed []time.Time, n int64, w, d time.Duration) float64 {
	var after int
	for _, a := range allowed {
		if a.Sub(t0) >= w {
			after++
		}
	}
	return float64(after) / (float64(n) * float64(d-w) / float64(w))
}

// idealAllowed is what an exact sliding log (every allowed time remembered)
// allows of the same demand: the best any limiter meeting the spec can do.
func idealAllowed(times []time.Time, n int64, w time.Duration) []time.Time {
	var allowed []time.Time
	for _, at := range times {
		if k := len(allowed); int64(k) < n || at.Sub(allowed[k-int(n)]) > w {
			allowed = append(allowed, at)
		}
	}
	return allowed
}

// accuracyCases are shared with the Redis test: demand patterns against one
// limit, with how close the long run must come to N/W.
type accuracyCase struct {
	name   string
	rate   Rate
	times  func() []time.Time
	d      time.Duration
	minRun float64 // the least long-run throughput, as a fraction of the ideal's
}

func accuracyCases(windows int) []accuracyCase {
	rng := rand.New(rand.NewPCG(1, 2))
	mk := func(n int64, w time.Duration) Rate { return Rate{N: n, Window: w} }
	d := func(w time.Duration) time.Duration { return time.Duration(windows) * w }
	return []accuracyCase{
		{"saturating demand, 100/10s", mk(100, 10*time.Second), func() []time.Time { return steady(time.Millisecond, d(10*time.Second)) }, d(10 * time.Second), 0.99},
		{"saturating demand, 2/1s", mk(2, time.Second), func() []time.Time { return steady(time.Millisecond, d(time.Second)) }, d(time.Second), 0.99},
		{"random demand at 1.5x, 50/m", mk(50, time.Minute), func() []time.Time { return poisson(rng, 1.5*50/60, d(time.Minute)) }, d(time.Minute), 0.95},
		{"random demand at 3x, 1000/h", mk(1000, time.Hour), func() []time.Time { return poisson(rng, 3*1000.0/3600, d(time.Hour)) }, d(time.Hour), 0.95},
		{"random demand at 1.1x, 20/2s", mk(20, 2*time.Second), func() []time.Time { return poisson(rng, 1.1*20/2, d(2*time.Second)) }, d(2 * time.Second), 0.95},
	}
}

func TestLocalAccuracy(t *testing.T) {
	for _, tc := range accuracyCases(60) {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			lim := NewLocal(clock.Now, 0)
			limits := []Limit{{Name: "key", Bucket: "k", Rate: tc.rate}}
			times := tc.times()
			allowed := drive(t, lim, clock, limits, times)
			require.GreaterOrEqual(t, len(allowed), int(tc.rate.N), "the opening burst")
			assertNoIntervalOverN(t, allowed, int(tc.rate.N), tc.rate.Window)
			run := throughput(allowed, tc.rate.N, tc.rate.Window, tc.d)
			ideal := throughput(idealAllowed(times, tc.rate.N, tc.rate.Window), tc.rate.N, tc.rate.Window, tc.d)
			t.Logf("long-run throughput %.4f of N/W, %.4f of an exact sliding log's (%d allowed)", run, run/ideal, len(allowed))
			assert.GreaterOrEqual(t, run/ideal, tc.minRun)
			assert.LessOrEqual(t, run, 1.0)
		})
	}
}

func TestLocalBurstAllowsExactlyN(t *testing.T) {
	lim := NewLocal(nil, 0)
	limits := []Limit{
		{Name: "key", Bucket: "k", Rate: Rate{N: 1000, Window: time.Hour}},
		{Name: "/r", Bucket: "k", Scope: "/r", Rate: Rate{N: 5000, Window: time.Hour}},
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for range 8 {
		wg.Go(func() {
			for range 400 {
				res, err := lim.Allow(context.Background(), limits)
				if err != nil {
					t.Error(err)
					return
				}
				if res.Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 1000, allowed)
	assert.Equal(t, Stats{Allowed: 1000, Limited: 2200}, lim.Stats())
}

func TestLocalRateChanges(t *testing.T) {
	clock := newFakeClock()
	lim := NewLocal(clock.Now, 0)
	allow := func(r Rate) bool {
		res, err := lim.Allow(context.Background(), []Limit{{Name: "key", Bucket: "k", Rate: r}})
		require.NoError(t, err)
		return res.Allowed
	}
	for range 2 {
		require.True(t, allow(Rate{N: 2, Window: time.Second}))
	}
	require.False(t, allow(Rate{N: 2, Window: time.Second}))
	assert.True(t, allow(Rate{N: 3, Window: time.Second}), "a larger N over the same window keeps the count: one more")
	assert.False(t, allow(Rate{N: 3, Window: time.Second}))
	assert.True(t, allow(Rate{N: 3, Window: 2 * time.Second}), "another window restarts the count")
}

func TestLocalEvictsIdleBucketsFirst(t *testing.T) {
	clock := newFakeClock()
	const max = 8 * localShards
	lim := NewLocal(clock.Now, max)
	perSecond := Rate{N: 1, Window: time.Second}
	for i := range 4 * max {
		_, err := lim.Allow(context.Background(), []Limit{{Bucket: fmt.Sprint("idle", i), Rate: perSecond}})
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, lim.Len(), max)

	clock.Set(t0.Add(2 * time.Second)) // every bucket so far is idle
	busy := []Limit{{Name: "key", Bucket: "busy", Rate: Rate{N: 1, Window: time.Hour}}}
	res, err := lim.Allow(context.Background(), busy)
	require.NoError(t, err)
	require.True(t, res.Allowed)
	for i := range 4 * max {
		_, err := lim.Allow(context.Background(), []Limit{{Bucket: fmt.Sprint("new", i), Rate: perSecond}})
		require.NoError(t, err)
	}
	assert.LessOrEqual(t, lim.Len(), max)
	assert.Greater(t, lim.Stats().Evicted, uint64(4*max))
	res, err = lim.Allow(context.Background(), busy)
	require.NoError(t, err)
	assert.False(t, res.Allowed, "the busy bucket outlived thousands of idle ones")
}

func TestLocalSurvivesOddClocks(t *testing.T) {
	clock := newFakeClock()
	lim := NewLocal(clock.Now, 0)
	limits := []Limit{{Name: "key", Bucket: "k", Rate: Rate{N: 3, Window: time.Second}}}
	var allowed []time.Time
	for i, at := range []time.Time{t0, t0.Add(-time.Hour), {}, t0.Add(time.Millisecond), t0.Add(-time.Millisecond), t0} {
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
	lim := NewLocal(nil, 0)
	one := []Limit{{Name: "key", Bucket: "k", Rate: Rate{N: 1e9, Window: time.Hour}}}
	two := append(one, Limit{Name: "/r", Bucket: "k", Scope: "/r", Rate: Rate{N: 1e9, Window: time.Minute}})
	for _, limits := range [][]Limit{one, two} {
		_, _ = lim.Allow(context.Background(), limits) // create the buckets
		allocs := testing.AllocsPerRun(1000, func() { _, _ = lim.Allow(context.Background(), limits) })
		assert.Zero(t, allocs, "%d limits", len(limits))
	}
}
