package authz

import (
	"context"
	"net/netip"
	"sync/atomic"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"

	"github.com/extauthz/extauthz/ratelimit"
)

// failureGuard limits invalid keys per client IP. Random well-formed keys
// cost a store lookup each (the negative cache only helps with repeats), so
// an IP that sends more than its budget of invalid keys is answered 429
// before any hashing or lookup until its window frees. Counted per process.
//
// The price: clients behind one NAT share a budget, so one of them guessing
// keys slows the others' uncached lookups too. Set
// rate_limit.failed_attempts to none to turn it off.
type failureGuard struct {
	counts  *ratelimit.Local
	blocked *lru.Cache[netip.Addr, time.Time] // IP → blocked until
	n       atomic.Int64                      // entries in blocked: 0 makes the check one load
}

func newFailureGuard(now func() time.Time) *failureGuard {
	g := &failureGuard{counts: ratelimit.NewLocal(now, 65536)}
	g.blocked, _ = lru.NewWithEvict(65536, func(netip.Addr, time.Time) { g.n.Add(-1) })
	return g
}

// blockedUntil reports until when ip is blocked, if it is.
func (g *failureGuard) blockedUntil(ip netip.Addr, now time.Time) (time.Time, bool) {
	if g.n.Load() == 0 {
		return time.Time{}, false
	}
	until, ok := g.blocked.Get(ip)
	if !ok {
		return time.Time{}, false
	}
	if !now.Before(until) {
		g.blocked.Remove(ip)
		return time.Time{}, false
	}
	return until, true
}

// fail counts one invalid key from ip; the failure that exhausts the budget
// blocks ip until the limiter would allow another.
func (g *failureGuard) fail(ip netip.Addr, rate ratelimit.Rate, now time.Time) {
	res, err := g.counts.Allow(context.Background(), []ratelimit.Limit{{Name: failedAttempts, Bucket: ip.String(), Rate: rate}})
	if err == nil && !res.Allowed {
		if !g.blocked.Contains(ip) {
			g.n.Add(1)
		}
		g.blocked.Add(ip, now.Add(res.RetryAfter))
	}
}

// failedAttempts names the limit in the rate-limit headers of a blocked IP.
const failedAttempts = "failed_attempts"
