package redis

import (
	"context"
	"slices"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/internal/breaker"
	"github.com/extauthz/extauthz/ratelimit"
)

// node is what the limiter keeps for one Redis its checks go to (the one
// server, or a Cluster master): its circuit breaker and its queue.
type node struct {
	// breaker keeps checks from waiting on a Redis that is down; on the
	// real clock (Now is the counts' clock, not the outage's).
	breaker *breaker.Breaker
	queue   *queue
	// A Cluster master's node is retired once no check has gone to it for
	// nodeIdle (retireIdle): its address may be gone for good, after a
	// failover or a Pod's restart, and a node kept per address ever seen
	// would grow with every such change for the life of the process.
	// seen is the heartbeat round in which a check last went to it; users
	// the checks that hold it now; retiring, that it has left nodes, so a
	// check that finds it must look again; stop ends its senders.
	seen     atomic.Int64
	users    atomic.Int64
	retiring atomic.Bool
	stop     chan struct{}
}

// nodeIdle is how long a Cluster master's node may go without a check
// before it is retired: long enough that a master whose slots see a check
// now and then keeps its node, with its breaker's state.
const nodeIdle = 10 * time.Minute

// newNode makes the breaker and the queue of one Redis and starts the
// queue's senders, unless Close has begun: its queue is then closed.
// The caller holds nodesMu, or is New.
func (r *Limiter) newNode() *node {
	n := &node{
		breaker: breaker.New(r.opts.BreakerFailures, r.opts.BreakerProbe, nil),
		queue:   &queue{kick: make(chan struct{}, r.opts.Pipelines)},
		stop:    make(chan struct{}),
	}
	n.seen.Store(r.round.Load())
	if r.stopped {
		n.queue.closed = true
		return n
	}
	for range r.opts.Pipelines {
		r.wg.Go(func() { r.sender(n.queue, n.stop) })
	}
	return n
}

// nodeFor returns the node of the Redis holding the counters of limits
// (whose keys share one slot): on a Cluster, that of the master serving
// their slot now, so that one master failing opens only its own breaker
// and stalls only its own queue, and the buckets of the others keep their
// shared counts; otherwise the one node.
//
// Until a check through home has succeeded, the client may have no slot
// map, and MasterForKey would ask a seed node for one for every check,
// outside the breaker and the Timeout, each waiting out the client's read
// timeout on a Cluster that does not answer. Such checks go to home, whose
// calls load the map within both.
//
// A node other than home is returned held (node.users): the caller lets it
// go (letGo) when its check is done.
func (r *Limiter) nodeFor(ctx context.Context, limits []ratelimit.Limit) *node {
	if r.cluster == nil || !r.mapped.Load() {
		return r.home
	}
	i := slices.IndexFunc(limits, func(l ratelimit.Limit) bool { return l.Rate.Enforced() })
	master, err := r.cluster.MasterForKey(ctx, r.counterKey(&limits[i]))
	if err != nil {
		return r.home // once mapped it cannot fail; home is as good as any
	}
	addr := master.Options().Addr
	round := r.round.Load()
	for {
		v, ok := r.nodes.Load(addr)
		if !ok {
			r.nodesMu.Lock()
			if v, ok = r.nodes.Load(addr); !ok {
				v = r.newNode()
				if !r.stopped {
					r.nodes.Store(addr, v)
				}
			}
			r.nodesMu.Unlock()
		}
		n := v.(*node)
		// Held before retiring is read: retireIdle sets retiring before it
		// reads users, so either it sees this check, or this check sees
		// retiring and looks again (the node has left nodes by then).
		n.users.Add(1)
		if n.retiring.Load() {
			n.users.Add(-1)
			continue
		}
		if n.seen.Load() != round {
			n.seen.Store(round)
		}
		return n
	}
}

// letGo lets go of n, held by nodeFor.
func (r *Limiter) letGo(n *node) {
	if n != r.home {
		n.users.Add(-1)
	}
}

// retireIdle retires the Cluster masters' nodes no check has gone to for
// idleRounds, and stops the senders of those no check holds any more.
// Called by heartbeats after each round.
func (r *Limiter) retireIdle() {
	round, idle := r.round.Load(), r.idleRounds.Load()
	r.nodes.Range(func(addr, v any) bool {
		if n := v.(*node); round-n.seen.Load() >= idle {
			r.nodesMu.Lock()
			if !r.stopped && r.nodes.CompareAndDelete(addr, n) {
				n.retiring.Store(true)
				r.retired = append(r.retired, n)
			}
			r.nodesMu.Unlock()
		}
		return true
	})
	r.nodesMu.Lock()
	defer r.nodesMu.Unlock()
	r.retired = slices.DeleteFunc(r.retired, func(n *node) bool {
		if n.users.Load() != 0 {
			return false
		}
		// No check holds it and none can find it: its queue holds at most
		// checks whose callers gave up, which nobody waits for.
		close(n.stop)
		return true
	})
}
