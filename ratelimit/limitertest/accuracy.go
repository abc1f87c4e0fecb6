package limitertest

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

// AccuracyCase is a demand pattern against one limit, with how close the
// long run must come to what an exact sliding log allows of it.
type AccuracyCase struct {
	Name  string
	Rate  ratelimit.Rate
	Times func() []time.Time // the arrivals, sorted, from T0
	D     time.Duration      // how long the demand lasts
	// MinRun is the least long-run throughput, as a fraction of an exact
	// sliding log's on the same arrivals.
	MinRun float64
}

// AccuracyCases are the demand patterns, each lasting windows windows of
// its rate.
func AccuracyCases(windows int) []AccuracyCase {
	rng := rand.New(rand.NewPCG(1, 2))
	mk := func(n int64, w time.Duration) ratelimit.Rate { return ratelimit.Rate{N: n, Window: w} }
	d := func(w time.Duration) time.Duration { return time.Duration(windows) * w }
	return []AccuracyCase{
		{"saturating demand, 100/10s", mk(100, 10*time.Second), func() []time.Time { return steady(time.Millisecond, d(10*time.Second)) }, d(10 * time.Second), 0.99},
		{"saturating demand, 2/1s", mk(2, time.Second), func() []time.Time { return steady(time.Millisecond, d(time.Second)) }, d(time.Second), 0.99},
		{"random demand at 1.5x, 50/m", mk(50, time.Minute), func() []time.Time { return poisson(rng, 1.5*50/60, d(time.Minute)) }, d(time.Minute), 0.95},
		{"random demand at 3x, 1000/h", mk(1000, time.Hour), func() []time.Time { return poisson(rng, 3*1000.0/3600, d(time.Hour)) }, d(time.Hour), 0.95},
		{"random demand at 1.1x, 20/2s", mk(20, 2*time.Second), func() []time.Time { return poisson(rng, 1.1*20/2, d(2*time.Second)) }, d(2 * time.Second), 0.95},
	}
}

// Accuracy drives a limiter from newLimiter through each of
// AccuracyCases(windows): the opening burst is N, no interval of W holds
// more than N, and the long run comes within the case's MinRun of an exact
// sliding log's, never above N/W.
func Accuracy(t *testing.T, newLimiter Factory, windows int) {
	for _, tc := range AccuracyCases(windows) {
		t.Run(tc.Name, func(t *testing.T) {
			clock := NewClock()
			lim := newLimiter(t, clock.Now)
			limits := []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: tc.Rate}}
			times := tc.Times()
			allowed := drive(t, lim, clock, limits, times)
			require.GreaterOrEqual(t, len(allowed), int(tc.Rate.N), "the opening burst")
			AssertNoIntervalOverN(t, allowed, int(tc.Rate.N), tc.Rate.Window)
			run := throughput(allowed, tc.Rate.N, tc.Rate.Window, tc.D)
			ideal := throughput(idealAllowed(times, tc.Rate.N, tc.Rate.Window), tc.Rate.N, tc.Rate.Window, tc.D)
			t.Logf("long-run throughput %.4f of N/W, %.4f of an exact sliding log's (%d allowed)", run, run/ideal, len(allowed))
			assert.GreaterOrEqual(t, run/ideal, tc.MinRun)
			assert.LessOrEqual(t, run, 1.0)
		})
	}
}

// drive sends a check at each of the times (sorted) and returns the times of
// the allowed ones.
func drive(t *testing.T, lim ratelimit.Limiter, clock *Clock, limits []ratelimit.Limit, times []time.Time) []time.Time {
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
		ts = append(ts, T0.Add(at))
	}
	return ts
}

// poisson returns random arrivals at rate per second for d.
func poisson(rng *rand.Rand, rate float64, d time.Duration) []time.Time {
	var ts []time.Time
	for at := time.Duration(0); at < d; at += time.Duration(rng.ExpFloat64() / rate * float64(time.Second)) {
		ts = append(ts, T0.Add(at))
	}
	return ts
}

// throughput is the allowed rate after the first window (the opening burst
// is not the long run), as a fraction of N/W.
func throughput(allowed []time.Time, n int64, w, d time.Duration) float64 {
	var after int
	for _, a := range allowed {
		if a.Sub(T0) >= w {
			after++
		}
	}
	return float64(after) / (float64(n) * float64(d-w) / float64(w))
}

// idealAllowed is what an exact sliding log (every allowed time remembered)
// allows of the same demand: the best any limiter meeting the promise can do.
func idealAllowed(times []time.Time, n int64, w time.Duration) []time.Time {
	var allowed []time.Time
	for _, at := range times {
		if k := len(allowed); int64(k) < n || at.Sub(allowed[k-int(n)]) > w {
			allowed = append(allowed, at)
		}
	}
	return allowed
}

// us is n microseconds.
func us(n int64) time.Duration { return time.Duration(n) * time.Microsecond }
