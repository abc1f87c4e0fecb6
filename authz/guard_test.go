package authz

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

// TestTheGuardKeepsItsPromise checks the bound the guard states: over any
// interval of length T, the lookups that found nothing number at most
// N + N·T/W, whatever the timing and however many found their key.
func TestTheGuardKeepsItsPromise(t *testing.T) {
	rate := ratelimit.Rate{N: 5, Window: 10 * time.Second}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		g := newLookupGuard()
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := start
		var kept []time.Time
		for range 400 {
			now = now.Add(time.Duration(rng.Int64N(int64(2 * time.Second))))
			if v, _ := g.admit(testAddr, rate, ratelimit.Rate{}, now); v != lookupAdmitted {
				continue
			}
			if rng.IntN(3) == 0 {
				g.refund(testAddr, rate, ratelimit.Rate{}) // found
				continue
			}
			kept = append(kept, now)
		}
		require.Greater(t, len(kept), 20, "seed %d: the test exercises the bucket", seed)
		for i := range kept {
			for j := i; j < len(kept); j++ {
				span := kept[j].Sub(kept[i])
				bound := float64(rate.N) + float64(rate.N)*float64(span)/float64(rate.Window)
				require.LessOrEqual(t, float64(j-i+1), bound+1e-9, "seed %d: %d failed lookups in %v", seed, j-i+1, span)
			}
		}
	}
}

var testAddr = parseAddr("10.1.2.3")
