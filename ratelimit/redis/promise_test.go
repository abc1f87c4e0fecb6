package redis

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/ratelimit"
	"github.com/extauthz/extauthz/ratelimit/limitertest"
)

// Random traffic, leasing replicas and an exact one, a key's limit
// checked alone and with one of two route limits; every counter must hold at
// most N in any W, and a denial's RetryAfter must be the moment the same
// check is allowed again (nothing else coming in between).
func TestRandomLeasedTrafficKeepsThePromiseAndItsRetryAfter(t *testing.T) {
	randomLeased(t, false)
}

// The same with the second replica on windows twice as long (a reload on
// its way): every counter still holds at most N in the shorter window.
func TestRandomLeasedTrafficOnTwoWindowsKeepsThePromise(t *testing.T) {
	randomLeased(t, true)
}

func randomLeased(t *testing.T, carry bool) {
	srv := redistest.Start(t)
	for seed := range uint64(2) { // each seed about 1.5 s; more were run when this was written
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			clock := limitertest.NewClock()
			client := newClient(t, srv.Addr)
			prefix := uniquePrefix()
			reps := []*Limiter{
				newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
				newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second}),
			}
			exact := newRedis(t, client, Options{Prefix: prefix, Now: clock.Now, Timeout: time.Second, NoLeases: true})
			rate := func() ratelimit.Rate {
				return ratelimit.Rate{N: 200 + rng.Int64N(3000), Window: time.Duration(1+rng.IntN(10)) * time.Second}
			}
			key := ratelimit.Limit{Name: "key", Bucket: "b", Rate: rate()}
			routes := []ratelimit.Limit{
				{Name: "/a", Bucket: "b", Scope: "/a", Rate: rate()},
				{Name: "/b", Bucket: "b", Scope: "/b", Rate: rate()},
			}
			allowed := map[string][]time.Time{}
			record := func(l []ratelimit.Limit, at time.Time) {
				for _, x := range l {
					allowed[x.Scope] = append(allowed[x.Scope], at)
				}
			}
			now := limitertest.T0
			meanGap := key.Rate.Window / time.Duration(key.Rate.N) // about N/W demand
			for step := range 20000 {
				switch rng.IntN(3000) {
				case 0:
					now = now.Add(time.Duration(rng.Int64N(int64(key.Rate.Window))))
				default:
					now = now.Add(time.Duration(rng.ExpFloat64() * float64(meanGap) * 0.6))
				}
				clock.Set(now)
				limits := []ratelimit.Limit{key}
				if r := rng.IntN(3); r < 2 {
					limits = append(limits, routes[r])
				}
				ri := rng.IntN(2)
				lim := reps[ri]
				if carry && ri == 1 {
					for i := range limits {
						limits[i].Rate.Window *= 2
					}
				}
				res, err := lim.Allow(context.Background(), limits)
				require.NoError(t, err)
				if res.Allowed {
					record(limits, now)
					continue
				}
				require.Positive(t, res.RetryAfter, "step %d", step)
				if rng.IntN(10) != 0 {
					continue
				}
				// Probe the RetryAfter with the exact replica: just before
				// it still denied, at it allowed.
				at := now.Add(res.RetryAfter)
				clock.Set(at.Add(-time.Microsecond))
				before, err := exact.Allow(context.Background(), limits)
				require.NoError(t, err)
				if before.Allowed {
					record(limits, at.Add(-time.Microsecond))
				}
				clock.Set(at)
				after, err := exact.Allow(context.Background(), limits)
				require.NoError(t, err)
				require.True(t, after.Allowed || before.Allowed, "step %d: denied with RetryAfter %v, still denied then (%+v)", step, res.RetryAfter, after)
				if after.Allowed {
					record(limits, at)
				}
				now = at
			}
			for _, l := range append([]ratelimit.Limit{key}, routes...) {
				times := allowed[l.Scope]
				slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
				t.Logf("%q %v: %d allowed", l.Scope, l.Rate, len(times))
				limitertest.AssertNoIntervalOverN(t, times, int(l.Rate.N), l.Rate.Window)
			}
		})
	}
}
