package limitertest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

// The exact Results of known states, for every Limiter (RunExactCases). The
// figures follow from window.go: with
// 10/10s the sub-window s is 0.5s, a request at a group's start gets mark 1,
// so its group's latest-time bound is ceil(0.5s/255) = 1961µs later and it
// stops counting 10s+1µs after that: at 10.001962s. With 3/1s, s is 50ms and
// the bound is 197µs later: it stops counting at 1.000198s.

type exactStep struct {
	at    time.Duration    // since t0
	calls int              // checks at that instant (0 means 1); all but the last must be allowed
	want  ratelimit.Result // of the last check
}

type exactCase struct {
	name   string
	limits []ratelimit.Limit
	steps  []exactStep
}

var (
	// Key10 is a key's limit of 10 per 10s on bucket k1.
	Key10 = ratelimit.Limit{Name: "key", Bucket: "k1", Rate: ratelimit.Rate{N: 10, Window: 10 * time.Second}}
	key3  = ratelimit.Limit{Name: "key", Bucket: "k1", Rate: ratelimit.Rate{N: 3, Window: 10 * time.Second}}
	// Route3 is a route's limit of 3 per second on bucket k1.
	Route3  = ratelimit.Limit{Name: "/api/x", Bucket: "k1", Scope: "/api/x", Rate: ratelimit.Rate{N: 3, Window: time.Second}}
	keyNone = ratelimit.Limit{Name: "key", Bucket: "k1"}
)

var exactCases = []exactCase{
	{
		name:   "a fresh key bursts to N, then waits for its group to expire",
		limits: []ratelimit.Limit{Key10},
		steps: []exactStep{
			{at: 0, want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 9, Reset: us(10_001_962)}},
			{at: 0, calls: 9, want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 0, Reset: us(10_001_962)}},
			{at: 0, want: ratelimit.Result{Limit: Key10, Reset: us(10_001_962), RetryAfter: us(10_001_962)}},
			// [t0, t0+10s] is a closed interval of length W: still denied.
			{at: 10 * time.Second, want: ratelimit.Result{Limit: Key10, Reset: us(1962), RetryAfter: us(1962)}},
			// 1962µs into group 20: mark 2, bound 3922µs into it.
			{at: us(10_001_962), want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 9, Reset: us(10_001_961)}},
		},
	},
	{
		name:   "groups stop counting one by one",
		limits: []ratelimit.Limit{Key10},
		steps: []exactStep{
			{at: 0, calls: 5, want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 5, Reset: us(10_001_962)}},
			// 0.2s into group 6: mark 103, bound 201961µs into it.
			{at: 3200 * time.Millisecond, calls: 5, want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 0, Reset: us(10_001_962)}},
			{at: 5 * time.Second, want: ratelimit.Result{Limit: Key10, Reset: us(5_001_962), RetryAfter: us(5_001_962)}},
			{at: us(10_001_962), want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 4, Reset: us(10_001_961)}},
			{at: us(10_001_962), calls: 4, want: ratelimit.Result{Allowed: true, Limit: Key10, Remaining: 0, Reset: us(10_001_961)}},
			// The next group to go is the one of 3.2s, at 13.201962s.
			{at: us(10_001_962), want: ratelimit.Result{Limit: Key10, Reset: 3200 * time.Millisecond, RetryAfter: 3200 * time.Millisecond}},
		},
	},
	{
		name:   "two limits: the least remaining is reported, a denied check consumes neither",
		limits: []ratelimit.Limit{Key10, Route3},
		steps: []exactStep{
			{at: 0, want: ratelimit.Result{Allowed: true, Limit: Route3, Remaining: 2, Reset: us(1_000_198)}},
			{at: 0, calls: 2, want: ratelimit.Result{Allowed: true, Limit: Route3, Remaining: 0, Reset: us(1_000_198)}},
			{at: 0, want: ratelimit.Result{Limit: Route3, Reset: us(1_000_198), RetryAfter: us(1_000_198)}},
			// The key holds 3, not 4: the denied check did not count. 198µs
			// into group 20 of the route: mark 2, bound 393µs into it.
			{at: us(1_000_198), want: ratelimit.Result{Allowed: true, Limit: Route3, Remaining: 2, Reset: us(1_000_196)}},
			{at: us(1_000_198), calls: 2, want: ratelimit.Result{Allowed: true, Limit: Route3, Remaining: 0, Reset: us(1_000_196)}},
			// The route's second group counts through 2.000393s (closed interval).
			{at: us(2_000_393), want: ratelimit.Result{Limit: Route3, Reset: us(1), RetryAfter: us(1)}},
			// 394µs into group 40: mark 3, bound 589µs into it. The key holds 9.
			{at: us(2_000_394), calls: 3, want: ratelimit.Result{Allowed: true, Limit: Route3, Remaining: 0, Reset: us(1_000_196)}},
			{at: us(2_000_394), want: ratelimit.Result{Limit: Route3, Reset: us(1_000_196), RetryAfter: us(1_000_196)}},
		},
	},
	{
		name:   "both exhausted: the longest wait is the Retry-After",
		limits: []ratelimit.Limit{Route3, key3},
		steps: []exactStep{
			// Both have 0 remaining: the tie goes to the longer reset.
			{at: 0, calls: 3, want: ratelimit.Result{Allowed: true, Limit: key3, Remaining: 0, Reset: us(10_001_962)}},
			{at: 0, want: ratelimit.Result{Limit: key3, Reset: us(10_001_962), RetryAfter: us(10_001_962)}},
			{at: 2 * time.Second, want: ratelimit.Result{Limit: key3, Reset: us(8_001_962), RetryAfter: us(8_001_962)}},
		},
	},
	{
		name:   "zero rates are no limit",
		limits: []ratelimit.Limit{keyNone, {Name: "/x", Bucket: "k1", Scope: "/x", Rate: ratelimit.Rate{N: 0, Window: time.Second}}},
		steps:  []exactStep{{at: 0, calls: 100, want: ratelimit.Result{Allowed: true}}},
	},
	{
		name:   "a zero rate next to a real one",
		limits: []ratelimit.Limit{keyNone, Route3},
		steps: []exactStep{
			{at: 0, calls: 3, want: ratelimit.Result{Allowed: true, Limit: Route3, Remaining: 0, Reset: us(1_000_198)}},
			{at: us(500_000), want: ratelimit.Result{Limit: Route3, Reset: us(500_198), RetryAfter: us(500_198)}},
		},
	},
	{
		name:  "no limits at all",
		steps: []exactStep{{at: 0, calls: 3, want: ratelimit.Result{Allowed: true}}},
	},
}

// RunExactCases runs the table of exact Results against the limiters
// newLimiter makes; each case gets a fresh limiter on a Clock.
func RunExactCases(t *testing.T, newLimiter Factory) {
	for _, tc := range exactCases {
		t.Run(tc.name, func(t *testing.T) {
			clock := NewClock()
			lim := newLimiter(t, clock.Now)
			for i, st := range tc.steps {
				clock.Set(T0.Add(st.at))
				calls := max(st.calls, 1)
				for c := 1; c <= calls; c++ {
					got, err := lim.Allow(context.Background(), tc.limits)
					require.NoError(t, err, "step %d call %d", i, c)
					if c < calls {
						require.True(t, got.Allowed, "step %d call %d of %d: %+v", i, c, calls, got)
						continue
					}
					require.Equal(t, st.want, got, "step %d (at %v)", i, st.at)
				}
			}
		})
	}
}
