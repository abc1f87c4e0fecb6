package ratelimit

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The exact Results of known states, for every Limiter (local_test.go and
// redis_test.go run this table). The figures follow from window.go: with
// 10/10s the sub-window s is 0.5s, a request at a group's start gets mark 1,
// so its group's latest-time bound is ceil(0.5s/255) = 1961µs later and it
// stops counting 10s+1µs after that: at 10.001962s. With 3/1s, s is 50ms and
// the bound is 197µs later: it stops counting at 1.000198s.

type exactStep struct {
	at    time.Duration // since t0
	calls int           // checks at that instant (0 means 1); all but the last must be allowed
	want  Result        // of the last check
}

type exactCase struct {
	name   string
	limits []Limit
	steps  []exactStep
}

var (
	key10   = Limit{Name: "key", Bucket: "k1", Rate: Rate{N: 10, Window: 10 * time.Second}}
	key3    = Limit{Name: "key", Bucket: "k1", Rate: Rate{N: 3, Window: 10 * time.Second}}
	route3  = Limit{Name: "/api/x", Bucket: "k1", Scope: "/api/x", Rate: Rate{N: 3, Window: time.Second}}
	keyNone = Limit{Name: "key", Bucket: "k1"}
)

func us(n int64) time.Duration { return time.Duration(n) * time.Microsecond }

var exactCases = []exactCase{
	{
		name:   "a fresh key bursts to N, then waits for its group to expire",
		limits: []Limit{key10},
		steps: []exactStep{
			{at: 0, want: Result{Allowed: true, Limit: key10, Remaining: 9, Reset: us(10_001_962)}},
			{at: 0, calls: 9, want: Result{Allowed: true, Limit: key10, Remaining: 0, Reset: us(10_001_962)}},
			{at: 0, want: Result{Limit: key10, Reset: us(10_001_962), RetryAfter: us(10_001_962)}},
			// [t0, t0+10s] is a closed interval of length W: still denied.
			{at: 10 * time.Second, want: Result{Limit: key10, Reset: us(1962), RetryAfter: us(1962)}},
			// 1962µs into group 20: mark 2, bound 3922µs into it.
			{at: us(10_001_962), want: Result{Allowed: true, Limit: key10, Remaining: 9, Reset: us(10_001_961)}},
		},
	},
	{
		name:   "groups stop counting one by one",
		limits: []Limit{key10},
		steps: []exactStep{
			{at: 0, calls: 5, want: Result{Allowed: true, Limit: key10, Remaining: 5, Reset: us(10_001_962)}},
			// 0.2s into group 6: mark 103, bound 201961µs into it.
			{at: 3200 * time.Millisecond, calls: 5, want: Result{Allowed: true, Limit: key10, Remaining: 0, Reset: us(10_001_962)}},
			{at: 5 * time.Second, want: Result{Limit: key10, Reset: us(5_001_962), RetryAfter: us(5_001_962)}},
			{at: us(10_001_962), want: Result{Allowed: true, Limit: key10, Remaining: 4, Reset: us(10_001_961)}},
			{at: us(10_001_962), calls: 4, want: Result{Allowed: true, Limit: key10, Remaining: 0, Reset: us(10_001_961)}},
			// The next group to go is the one of 3.2s, at 13.201962s.
			{at: us(10_001_962), want: Result{Limit: key10, Reset: 3200 * time.Millisecond, RetryAfter: 3200 * time.Millisecond}},
		},
	},
	{
		name:   "two limits: the least remaining is reported, a denied check consumes neither",
		limits: []Limit{key10, route3},
		steps: []exactStep{
			{at: 0, want: Result{Allowed: true, Limit: route3, Remaining: 2, Reset: us(1_000_198)}},
			{at: 0, calls: 2, want: Result{Allowed: true, Limit: route3, Remaining: 0, Reset: us(1_000_198)}},
			{at: 0, want: Result{Limit: route3, Reset: us(1_000_198), RetryAfter: us(1_000_198)}},
			// The key holds 3, not 4: the denied check did not count. 198µs
			// into group 20 of the route: mark 2, bound 393µs into it.
			{at: us(1_000_198), want: Result{Allowed: true, Limit: route3, Remaining: 2, Reset: us(1_000_196)}},
			{at: us(1_000_198), calls: 2, want: Result{Allowed: true, Limit: route3, Remaining: 0, Reset: us(1_000_196)}},
			// The route's second group counts through 2.000393s (closed interval).
			{at: us(2_000_393), want: Result{Limit: route3, Reset: us(1), RetryAfter: us(1)}},
			// 394µs into group 40: mark 3, bound 589µs into it. The key holds 9.
			{at: us(2_000_394), calls: 3, want: Result{Allowed: true, Limit: route3, Remaining: 0, Reset: us(1_000_196)}},
			{at: us(2_000_394), want: Result{Limit: route3, Reset: us(1_000_196), RetryAfter: us(1_000_196)}},
		},
	},
	{
		name:   "both exhausted: the longest wait is the Retry-After",
		limits: []Limit{route3, key3},
		steps: []exactStep{
			// Both have 0 remaining: the tie goes to the longer reset.
			{at: 0, calls: 3, want: Result{Allowed: true, Limit: key3, Remaining: 0, Reset: us(10_001_962)}},
			{at: 0, want: Result{Limit: key3, Reset: us(10_001_962), RetryAfter: us(10_001_962)}},
			{at: 2 * time.Second, want: Result{Limit: key3, Reset: us(8_001_962), RetryAfter: us(8_001_962)}},
		},
	},
	{
		name:   "zero rates are no limit",
		limits: []Limit{keyNone, {Name: "/x", Bucket: "k1", Scope: "/x", Rate: Rate{N: 0, Window: time.Second}}},
		steps:  []exactStep{{at: 0, calls: 100, want: Result{Allowed: true}}},
	},
	{
		name:   "a zero rate next to a real one",
		limits: []Limit{keyNone, route3},
		steps: []exactStep{
			{at: 0, calls: 3, want: Result{Allowed: true, Limit: route3, Remaining: 0, Reset: us(1_000_198)}},
			{at: us(500_000), want: Result{Limit: route3, Reset: us(500_198), RetryAfter: us(500_198)}},
		},
	},
	{
		name:  "no limits at all",
		steps: []exactStep{{at: 0, calls: 3, want: Result{Allowed: true}}},
	},
}

// runExactCases runs exactCases against the limiters newLimiter makes; each
// case gets a fresh limiter (and a bucket of its own) on the fake clock.
func runExactCases(t *testing.T, newLimiter func(t *testing.T, now func() time.Time) Limiter) {
	for _, tc := range exactCases {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			lim := newLimiter(t, clock.Now)
			for i, st := range tc.steps {
				clock.Set(t0.Add(st.at))
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
