package redis

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// boundTimeout is Options.Timeout in these tests, and boundMargin what a
// call may take past it: the scheduling of two shared cores under the race
// detector, not a retry (a retry after a timed-out attempt would take a
// whole timeout more).
const (
	boundTimeout = 100 * time.Millisecond
	boundMargin  = 40 * time.Millisecond
)

// boundRig is one topology under test: a store on a client from Dial, and
// the node that holds the key records, with the proxy in front of it.
type boundRig struct {
	store  *Store
	setup  *Store // the same Redis, Timeout boundSetup: writes the test's key
	victim *redistest.Server
	proxy  *faultproxy.Proxy
}

// newBoundRig dials the store under test with o, Timeout boundTimeout, and
// the setup store with Timeout boundSetup.
func newBoundRig(t *testing.T, o Options, victim *redistest.Server, proxy *faultproxy.Proxy) *boundRig {
	under, setup := o, o
	under.Timeout, setup.Timeout = boundTimeout, boundSetup
	return &boundRig{store: boundStore(t, under), setup: boundStore(t, setup), victim: victim, proxy: proxy}
}

// boundSetup is the timeout of the store that writes a test's key before
// any fault: the first calls of a new client (a Cluster's slot map, the
// script loaded with EVAL, the connections through the proxy) under the
// race detector on two busy cores can take longer than boundTimeout, which
// is a fact of the setup, not a call that outlasted its bound.
const boundSetup = 10 * time.Second

// boundFault is one way for the node holding the key records to fail.
type boundFault struct {
	name         string
	inject, heal func(*boundRig)
}

var boundFaults = []boundFault{
	{"stopped (SIGSTOP)", func(r *boundRig) { r.victim.Pause() }, func(r *boundRig) { r.victim.Resume() }},
	{"killed", func(r *boundRig) { r.victim.Stop() }, func(r *boundRig) { r.victim.Restart() }},
	{"slowed past the timeout", func(r *boundRig) { r.proxy.SetDelay(2 * boundTimeout) }, func(r *boundRig) { r.proxy.Heal() }},
	{"cut off (a blackhole)", func(r *boundRig) { r.proxy.Blackhole() }, func(r *boundRig) { r.proxy.Heal() }},
	{"resetting connections", func(r *boundRig) { r.proxy.Drop() }, func(r *boundRig) { r.proxy.Heal() }},
}

// TestEveryCallEndsWithinTheTimeout: whatever happens to the node that holds
// the key records (stopped, killed, slowed, cut off, resetting every
// connection), every call of the store ends within Options.Timeout plus a
// small margin, on a standalone server, a Cluster (whose client would
// otherwise retry and redirect up to four times, each try up to a read
// timeout) and behind a Sentinel; and once the fault ends, calls work again.
// The calls carry no deadline of their own: the client alone bounds them.
func TestEveryCallEndsWithinTheTimeout(t *testing.T) {
	topologies := []struct {
		name  string
		start func(t *testing.T) *boundRig
	}{
		{"standalone", func(t *testing.T) *boundRig {
			srv := redistest.Start(t, "--appendonly", "yes")
			p := faultproxy.Start(t, srv.Addr)
			return newBoundRig(t, Options{URL: "redis://" + p.Addr() + "/0"}, srv, p)
		}},
		{"Cluster", func(t *testing.T) *boundRig {
			// Node timeout well past each fault: no failover here, only a
			// master that does not answer.
			c := redistest.StartClusterOf(t, redistest.ClusterOptions{Masters: 3, Proxied: true, NodeTimeout: 20 * time.Second,
				Node: redistest.Options{Args: []string{"--appendonly", "yes", "--cluster-require-full-coverage", "no"}}})
			victim := c.Master(c.Slot(testPrefix + "{keys}:x"))
			return newBoundRig(t, Options{Addrs: c.Addrs()}, victim, c.Proxy(victim))
		}},
		{"Sentinel", func(t *testing.T) *boundRig {
			primary := redistest.Start(t, "--appendonly", "yes")
			p := faultproxy.Start(t, primary.Addr)
			sentinel := redistest.StartSentinel(t, primary, redistest.SentinelOptions{MasterName: "m", PrimaryAddr: p.Addr()})
			return newBoundRig(t, Options{Addrs: []string{sentinel.Addr}, MasterName: "m"}, primary, p)
		}},
	}
	for _, topo := range topologies {
		t.Run(topo.name, func(t *testing.T) {
			rig := topo.start(t)
			s := rig.store
			k, h, _ := create(t, rig.setup, "alice")
			// The store under test answers before any fault: its client has
			// its connections (and a Cluster client its slot map).
			require.Eventually(t, func() bool {
				got, err := s.Lookup(t.Context(), h)
				return err == nil && got.ID == k.ID
			}, boundSetup, 10*time.Millisecond, "the store under test does not answer before any fault")
			for _, f := range boundFaults {
				t.Run(f.name, func(t *testing.T) {
					healed := false
					t.Cleanup(func() {
						if !healed {
							f.heal(rig)
						}
					})
					f.inject(rig)
					took := boundCalls(t, s, k, h)
					slices.Sort(took)
					worst := took[len(took)-1]
					t.Logf("bound: %-10s %-24s %d calls, median %v, slowest %v", topo.name, f.name, len(took),
						took[len(took)/2].Round(time.Millisecond), worst.Round(time.Millisecond))
					assert.LessOrEqual(t, worst, boundTimeout+boundMargin, "a call outlasted the timeout")

					f.heal(rig)
					healed = true
					start := time.Now()
					require.Eventually(t, func() bool {
						got, err := s.Lookup(t.Context(), h)
						return err == nil && got.ID == k.ID
					}, 10*time.Second, 10*time.Millisecond, "the store does not answer again after the fault")
					t.Logf("bound: %-10s %-24s answered again %v after the fault ended", topo.name, f.name, time.Since(start).Round(time.Millisecond))
				})
			}
		})
	}
}

// boundStore is a Store on a client dialled with o, both closed when the
// test ends.
func boundStore(t *testing.T, o Options) *Store {
	t.Helper()
	s := New(dial(t, o), testPrefix)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// boundCalls runs the store's calls during a fault, a few at once as
// concurrent checks would, twice over (the second round finds the pool's
// connections in whatever state the first left them), and returns how long
// each took. Every call must fail as unavailable, not hang and not succeed.
func boundCalls(t *testing.T, s *Store, k *keystore.Key, h keystore.Hash) []time.Duration {
	t.Helper()
	calls := []func(ctx context.Context) error{
		func(ctx context.Context) error { _, err := s.Lookup(ctx, h); return err },
		func(ctx context.Context) error { _, err := s.Lookup(ctx, h); return err },
		func(ctx context.Context) error { _, err := s.Get(ctx, k.ID); return err },
		func(ctx context.Context) error { return s.Ping(ctx) },
		func(ctx context.Context) error {
			n, nh, _ := newKey(t, "alice")
			return s.Create(ctx, n, nh, 0)
		},
	}
	var mu sync.Mutex
	var took []time.Duration
	for round := range 2 {
		var wg sync.WaitGroup
		for i, call := range calls {
			wg.Go(func() {
				start := time.Now()
				err := call(context.Background())
				d := time.Since(start)
				mu.Lock()
				took = append(took, d)
				mu.Unlock()
				assert.ErrorIs(t, err, keystore.ErrUnavailable, fmt.Sprintf("round %d, call %d", round, i))
			})
		}
		wg.Wait()
	}
	return took
}
