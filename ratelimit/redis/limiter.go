// Package redis is the rate limiter whose counts live in Redis, shared by
// every replica: the ratelimit.Limiter for the Redis key store. It runs the
// algorithm of ratelimit's window.go as an atomic Lua script (allow.lua),
// one call per batch of concurrent checks (one call per check on a Cluster),
// leases part of a large limit to a busy replica (lease.go), and when Redis
// fails decides by the configured ratelimit.StoreErrorPolicy behind a circuit
// breaker.
//
// It is not the algorithm (package ratelimit) and does not dial Redis: it
// takes a client from keystore/redis.Dial (or any go-redis client).
package redis

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/internal/breaker"
	"github.com/extauthz/extauthz/ratelimit"
)

// ErrClosed is returned by Allow after Close.
var ErrClosed = errors.New("ratelimit: limiter closed")

// Options configure New. The zero value works.
type Options struct {
	// Prefix starts every key, e.g. "extauthz:". It may not contain '{' or
	// '}': the hash tag of a counter must be its bucket.
	Prefix string
	// InstanceID names this replica in the heartbeat set (default: random).
	InstanceID string
	// Timeout bounds every check: past it, OnStoreError decides (default 50ms).
	// Give the client ContextTimeoutEnabled (or a ReadTimeout near this) so
	// that its connections give up as soon, too. A check that timed out may
	// still reach Redis and be counted there: it errs toward limiting.
	Timeout time.Duration
	// OnStoreError is the policy when Redis cannot answer (default local).
	OnStoreError ratelimit.StoreErrorPolicy
	// Now, when set, is the clock of the counts (sent to the script); nil uses
	// the Redis server's clock, one clock for all replicas. The fallback
	// limiter uses Now, or time.Now.
	Now func() time.Time
	// Heartbeat is how often this replica announces itself (default 2s); a
	// replica missing three heartbeats no longer counts.
	Heartbeat time.Duration
	// BreakerFailures consecutive failed checks open the circuit breaker
	// (default 5); while open, checks go straight to OnStoreError.
	BreakerFailures int
	// BreakerProbe is how long the breaker stays open before one check probes
	// Redis again (default 1s).
	BreakerProbe time.Duration
	// MaxBatch is the most checks sent in one batch (default 256).
	MaxBatch int
	// Pipelines is how many batches may be on the wire at once to one
	// Redis: the one server, or each master of a Cluster (default 1).
	// A check that finds fewer on the wire is sent at once, from its own
	// goroutine; the others wait, and go together as the next batch when one
	// on the wire returns. One keeps batches as large as the load makes them
	// (Redis's cost is per call, not per check) while adding at most one
	// round trip of wait.
	Pipelines int
	// MaxLocalBuckets bounds the fallback limiter (default
	// ratelimit.DefaultMaxBuckets).
	MaxLocalBuckets int
	// NoLeases sends every check to Redis, one request at a time (lease.go
	// explains leases): the Results are then exactly the local limiter's.
	NoLeases bool
}

var (
	//go:embed allow.lua
	allowSrc    string
	allowScript = goredis.NewScript(allowSrc)
	//go:embed heartbeat.lua
	heartbeatSrc    string
	heartbeatScript = goredis.NewScript(heartbeatSrc)
)

// Limiter is a ratelimit.Limiter whose counts live in Redis, shared by every
// replica: one atomic Lua script call per batch of concurrent checks, or,
// for a busy bucket with large limits, a lease of several requests counted
// at once (lease.go). When Redis fails it decides by
// Options.OnStoreError, within the Timeout, and a circuit breaker keeps it
// from waiting on a Redis that is down.
type Limiter struct {
	client goredis.UniversalClient
	opts   Options
	// perCheck: one script call per check (a Cluster client, whose
	// checks' counters live in different slots), not one per batch.
	perCheck bool
	local    *ratelimit.Local
	leases   *leases
	// leaseNow, when set (by tests), is the clock of this replica's lease
	// deadlines in place of now: a replica's clock that runs apart from
	// Redis's.
	leaseNow func() time.Time
	// home is the breaker and the queue of the one Redis of a plain
	// client. A Cluster client has a node of its own for each master, in
	// nodes (address → *node), so that a failing master sends only its own
	// buckets to OnStoreError and holds up only the checks bound for it;
	// home then serves only until mapped: a check through it has
	// succeeded, so the client has a slot map (nodeFor).
	home    *node
	cluster *goredis.ClusterClient // nil unless the client is one
	nodes   sync.Map
	mapped  atomic.Bool
	// nodesMu orders the making of nodes (and the start of their senders)
	// with Close; stopped: Close has begun, and no node starts senders.
	nodesMu sync.Mutex
	stopped bool
	// round counts the heartbeat rounds; idleRounds of them without a check
	// retire a Cluster master's node; retired holds the retiring nodes
	// until their last check is done (under nodesMu, for Close).
	round      atomic.Int64
	idleRounds atomic.Int64
	retired    []*node
	done       chan struct{}
	wg         sync.WaitGroup
	closing    sync.Once

	replicas                                atomic.Int64
	allowed, limited, fallback, storeErrors atomic.Uint64
	leased, calls                           atomic.Uint64
}

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

// queue is the batcher of the checks bound for one Redis: checks wait in
// pending while Pipelines batches are on the wire. Whoever brings a batch
// back takes the pending checks as the next one (handing it to a sender
// goroutine through kick), so a wire slot is only given up with nothing
// pending: no check waits unseen.
//
// One per Redis, because a batch waits for every Redis it touches: with
// one queue for a whole Cluster, a master that stopped answering held every
// batch, and with them the checks of the healthy masters, for a whole
// Timeout, which then counted against their breakers and opened them too.
type queue struct {
	mu      sync.Mutex
	pending []*call
	sending int  // batches on the wire, ≤ Pipelines
	closed  bool // no more pending checks: Close has begun
	kick    chan struct{}
}

// call is one check waiting in the batcher. Calls are pooled (newCall,
// release): a Redis-bound check would otherwise allocate its call, its
// reply channel and its timer every time.
type call struct {
	keys  []string    // the counter of each enforced limit
	args  []byte      // allow.lua's argument for the check (appendArgs)
	reply chan reply  // buffered: the batcher never blocks on a caller gone
	timer *time.Timer // bounds a pending check's wait; nil until first needed
	// gone is set by a caller that gave up while its check was pending: a
	// sender that finds it so leaves the check out of its batch. Under
	// overload, when Redis answers late and callers give up, checks nobody
	// waits for would otherwise go on loading Redis, and be counted.
	gone atomic.Bool

	// Room for keys and args of a check of up to two limits (a key's and a
	// route's), so that they need no allocation of their own.
	keyRoom [2]string
	argRoom [8 * (2 + 3*2)]byte
	self    [1]*call // alone's batch
}

// alone is a batch of c only, for a check sent by its own caller.
func (c *call) alone() []*call {
	c.self[0] = c
	return c.self[:]
}

var calls = sync.Pool{New: func() any { return &call{reply: make(chan reply, 1)} }}

// release returns c to the pool. Only a caller that has received c's reply
// may release it: then the batch that carried it is done with it (run sends
// a call's reply after its last use of the call), and its channel is empty.
// A caller that gave up leaves its call to the garbage collector, as the
// batcher may still hold it.
func release(c *call) {
	clear(c.keyRoom[:])
	c.keys, c.args = nil, nil
	calls.Put(c)
}

// MarshalBinary gives go-redis the check's argument (appendArgs): passing
// the call rather than its args slice to the script keeps the argument
// list from boxing a slice header per check.
func (c *call) MarshalBinary() ([]byte, error) { return c.args, nil }

type reply struct {
	vals []int64
	err  error
}

var _ ratelimit.Limiter = (*Limiter)(nil)

// New returns a Redis limiter on client and starts its batchers and its
// heartbeat; Close stops them. It does not close client.
func New(client goredis.UniversalClient, opts Options) (*Limiter, error) {
	if client == nil {
		return nil, errors.New("ratelimit: redis.New: nil client")
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("ratelimit: prefix %q: may not contain '{' or '}'", opts.Prefix)
	}
	policy, err := ratelimit.ParseStoreErrorPolicy(string(opts.OnStoreError))
	if err != nil {
		return nil, fmt.Errorf("ratelimit: on_store_error %w", err)
	}
	opts.OnStoreError = policy
	if opts.InstanceID == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		opts.InstanceID = hex.EncodeToString(b[:])
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 50 * time.Millisecond
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 2 * time.Second
	}
	if opts.BreakerFailures <= 0 {
		opts.BreakerFailures = 5
	}
	if opts.BreakerProbe <= 0 {
		opts.BreakerProbe = time.Second
	}
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 256
	}
	_, cluster := client.(*goredis.ClusterClient)
	if opts.Pipelines <= 0 {
		opts.Pipelines = 1
	}
	r := &Limiter{
		client:   client,
		opts:     opts,
		perCheck: cluster,
		local:    ratelimit.NewLocal(opts.Now, opts.MaxLocalBuckets),
		leases:   newLeases(),
		done:     make(chan struct{}),
	}
	r.cluster, _ = client.(*goredis.ClusterClient)
	r.idleRounds.Store(max(2, int64(nodeIdle/opts.Heartbeat)))
	r.home = r.newNode()
	r.replicas.Store(1)
	r.wg.Go(r.heartbeats)
	return r, nil
}

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

// Close stops the batchers and the heartbeat, and takes this replica out of
// the heartbeat set (so the others' local share grows at once). Checks after
// Close return ErrClosed.
func (r *Limiter) Close() error {
	r.closing.Do(func() {
		r.nodesMu.Lock()
		r.stopped = true
		retired := slices.Clone(r.retired)
		r.nodesMu.Unlock()
		r.drain(r.home.queue)
		r.nodes.Range(func(_, n any) bool {
			r.drain(n.(*node).queue)
			return true
		})
		for _, n := range retired {
			r.drain(n.queue)
		}
		close(r.done)
		r.wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
		defer cancel()
		_ = r.client.ZRem(ctx, r.heartbeatKey(), r.opts.InstanceID).Err()
	})
	return nil
}

// Replicas is the number of replicas alive at the last successful heartbeat
// (kept while Redis is down; 1 before the first). PolicyLocal divides N by it.
func (r *Limiter) Replicas() int { return int(r.replicas.Load()) }

// BreakerOpen reports whether checks currently skip Redis.
func (r *Limiter) BreakerOpen() bool {
	open := r.home.breaker.Open()
	r.nodes.Range(func(_, n any) bool {
		open = open || n.(*node).breaker.Open()
		return !open
	})
	return open
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

// Stats returns the decision counters.
func (r *Limiter) Stats() ratelimit.Stats {
	return ratelimit.Stats{
		Allowed:     r.allowed.Load(),
		Limited:     r.limited.Load(),
		Fallback:    r.fallback.Load(),
		StoreErrors: r.storeErrors.Load(),
		Evicted:     r.local.Stats().Evicted,
		Leased:      r.leased.Load(),
		Calls:       r.calls.Load(),
	}
}

// Allow checks limits together against the shared count. See
// ratelimit.Limiter. Its errors: the validation errors of
// ratelimit.CheckLimits; ratelimit.ErrUnavailable (PolicyDeny); ErrClosed;
// ctx's error when the caller gave up first. Past the deadline of a
// ratelimit.WithStoreDeadline context it decides by OnStoreError, as when
// Redis fails, without counting a Redis failure.
func (r *Limiter) Allow(ctx context.Context, limits []ratelimit.Limit) (ratelimit.Result, error) {
	n, err := ratelimit.CheckLimits(limits)
	if err != nil {
		return ratelimit.Result{}, err
	}
	select {
	case <-r.done:
		return ratelimit.Result{}, ErrClosed
	default:
	}
	if n == 0 {
		r.allowed.Add(1)
		return ratelimit.Result{Allowed: true}, nil
	}
	// A lease answers without Redis (lease.go); limits of 200 or more only.
	most := maxLease(limits)
	var key string
	if most > 1 && !r.opts.NoLeases {
		key = leaseKey(limits)
		if res, ok := r.leases.take(key, r.leaseClock()); ok {
			r.allowed.Add(1)
			r.leased.Add(1)
			return res, nil
		}
	}
	if ratelimit.StoreTimeSpent(ctx) {
		return r.onStoreError(ctx, limits, n, ratelimit.ErrStoreTimeSpent)
	}
	nd := r.nodeFor(ctx, limits)
	if nd != r.home {
		defer r.letGo(nd)
	}
	b := nd.breaker
	ok, probe := b.Enter()
	if !ok {
		return r.onStoreError(ctx, limits, n, errBreakerOpen)
	}
	want, refill := int64(1), false
	sent := r.leaseClock()
	if key != "" {
		want, refill = r.leases.want(key, most, sent)
	}
	fair := r.fairChance(ctx)
	res, got, lease, err := r.shared(ctx, nd.queue, limits, n, want)
	if key != "" {
		r.leases.granted(key, refill, got, sent.Add(lease-lease/leaseEarly), res)
	}
	if got > 1 {
		res.Remaining += got - 1 // the rest of the grant is this replica's, still unused
	}
	spent := err != nil && !errors.Is(err, ErrClosed) && callerGaveUp(ctx) && ratelimit.StoreTimeSpent(ctx)
	var cause error
	switch {
	case err == nil:
		b.Success(probe)
		if nd == r.home && r.cluster != nil {
			r.mapped.Store(true) // a Cluster call succeeds only on a slot map
		}
		r.count(res)
		return res, nil
	case spent && !fair:
		// The check's time for Redis ran out before Redis had a fair
		// part of its own timeout: decide without it, blaming it for
		// nothing.
		b.Abandon(probe)
		cause = ratelimit.ErrStoreTimeSpent
	case !spent && (errors.Is(err, ErrClosed) || callerGaveUp(ctx)):
		// Not Redis's fault: the limiter closed or the caller gave up.
		b.Abandon(probe)
		return ratelimit.Result{}, err
	default:
		// Redis failed, or had a fair chance and did not answer.
		b.Failure(probe)
		r.storeErrors.Add(1)
		cause = err
	}
	return r.onStoreError(ctx, limits, n, cause)
}

var errBreakerOpen = errors.New("circuit breaker open")

// fairChance reports whether ctx leaves a Redis call at least half of
// Timeout: a call that gets no answer within that much has seen Redis
// fail, and counts toward the breaker, even when what ended it was the
// check's store deadline rather than Timeout (a key lookup that took no time
// leaves a deadline a hair before Timeout; without this, the breaker
// would never open for checks of stale cached keys).
func (r *Limiter) fairChance(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) >= r.opts.Timeout/2
}

func (r *Limiter) count(res ratelimit.Result) {
	if res.Allowed {
		r.allowed.Add(1)
	} else {
		r.limited.Add(1)
	}
}

// onStoreError decides a check without Redis. With PolicyLocal the Result
// names the share of N this replica enforces (N/replicas, at least 1), so the
// headers tell the client the limit that applies during the outage.
func (r *Limiter) onStoreError(ctx context.Context, limits []ratelimit.Limit, n int, cause error) (ratelimit.Result, error) {
	r.fallback.Add(1)
	switch r.opts.OnStoreError {
	case ratelimit.PolicyAllow:
		r.allowed.Add(1)
		return ratelimit.Result{Allowed: true}, nil
	case ratelimit.PolicyDeny:
		return ratelimit.Result{}, fmt.Errorf("%w: %v", ratelimit.ErrUnavailable, cause)
	}
	replicas := r.replicas.Load()
	if replicas < 1 {
		replicas = 1
	}
	var buf [4]ratelimit.Limit
	share := buf[:0]
	if n > len(buf) {
		share = make([]ratelimit.Limit, 0, n)
	}
	for _, l := range limits {
		if !l.Rate.Enforced() {
			continue
		}
		l.Rate.N = max(1, l.Rate.N/replicas)
		share = append(share, l)
	}
	res, err := r.local.Allow(ctx, share)
	if err == nil {
		r.count(res)
	}
	return res, err
}

// leaseClock is the clock this replica's leases end by.
func (r *Limiter) leaseClock() time.Time {
	if r.leaseNow != nil {
		return r.leaseNow()
	}
	return r.now()
}

func (r *Limiter) now() time.Time {
	if r.opts.Now != nil {
		return r.opts.Now()
	}
	return time.Now()
}

// shared runs the check in Redis through q, the batcher of the Redis that
// holds its counters, waiting at most Timeout, asking for want requests
// (see allow.lua). It returns how many were granted (0 when denied, or on
// an error) and how long until the limits' current sub-window ends.
func (r *Limiter) shared(ctx context.Context, q *queue, limits []ratelimit.Limit, n int, want int64) (ratelimit.Result, int64, time.Duration, error) {
	c := r.newCall(limits, n, want)

	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		release(c)
		return ratelimit.Result{}, 0, 0, ErrClosed
	}
	if q.sending < r.opts.Pipelines {
		// A wire slot is free, so nothing is pending: send this check from
		// this goroutine, without a hand-off, then pass the slot on.
		q.sending++
		q.mu.Unlock()
		r.run(ctx, c.alone())
		r.passOn(q)
		rep := <-c.reply
		release(c)
		if rep.err != nil && callerGaveUp(ctx) {
			return ratelimit.Result{}, 0, 0, context.DeadlineExceeded
		}
		return r.result(limits, n, rep)
	}
	q.pending = append(q.pending, c)
	q.mu.Unlock()
	if c.timer == nil {
		c.timer = time.NewTimer(r.opts.Timeout)
	} else {
		c.timer.Reset(r.opts.Timeout) // a pooled call's timer is stopped
	}
	var rep reply
	select {
	case rep = <-c.reply:
		c.timer.Stop()
		release(c)
	case <-c.timer.C:
		c.gone.Store(true)
		return ratelimit.Result{}, 0, 0, fmt.Errorf("rate-limit check: no answer from Redis within %v", r.opts.Timeout)
	case <-ctx.Done():
		c.gone.Store(true)
		c.timer.Stop()
		return ratelimit.Result{}, 0, 0, ctx.Err()
	}
	return r.result(limits, n, rep)
}

// newCall is the script's part of a check of limits, n of them enforced,
// asking for want requests.
func (r *Limiter) newCall(limits []ratelimit.Limit, n int, want int64) *call {
	c := calls.Get().(*call)
	c.keys, c.args = c.keyRoom[:0], c.argRoom[:0]
	if n > len(c.keyRoom) {
		c.keys, c.args = make([]string, 0, n), make([]byte, 0, 8*(2+3*n))
	}
	c.args = appendArgs(c.args, want, int64(n))
	for i := range limits {
		l := &limits[i]
		if !l.Rate.Enforced() {
			continue
		}
		wUs, sUs := l.Rate.Micros()
		c.keys = append(c.keys, r.counterKey(l))
		c.args = appendArgs(c.args, l.Rate.N, wUs, sUs)
	}
	return c
}

// appendArgs appends vs to a check's argument of allow.lua (want, the number
// of limits, then N, W and s in µs of each) as little-endian doubles. A
// double holds every W and s exactly, and every N below 2^53; a larger N
// rounds to the nearest double, which is what the script counts against.
func appendArgs(b []byte, vs ...int64) []byte {
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(float64(v)))
	}
	return b
}

// callerGaveUp reports whether ctx is done or past its deadline. The socket
// deadline go-redis derives from ctx can fire a moment before ctx itself
// reports it; either way the caller gave up and Redis did not fail.
func callerGaveUp(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// result reads the script's reply for limits: the Result, how many
// requests were granted and how long until the sub-window ends.
func (r *Limiter) result(limits []ratelimit.Limit, n int, rep reply) (ratelimit.Result, int64, time.Duration, error) {
	if rep.err != nil {
		return ratelimit.Result{}, 0, 0, fmt.Errorf("rate-limit check: %w", rep.err)
	}
	if len(rep.vals) != 2+2*n {
		return ratelimit.Result{}, 0, 0, fmt.Errorf("rate-limit check: script returned %d values for %d limits", len(rep.vals), n)
	}
	p := ratelimit.NewPicker()
	granted := rep.vals[0]
	k := 0
	for i := range limits {
		l := &limits[i]
		if !l.Rate.Enforced() {
			continue
		}
		held, t := rep.vals[2+2*k], rep.vals[3+2*k]
		k++
		if granted > 0 {
			p.Allowed(l, l.Rate.N-held, ratelimit.FromMicros(t))
		} else if held >= l.Rate.N {
			p.Exhausted(l, ratelimit.FromMicros(t))
		}
	}
	return p.Result(), granted, ratelimit.FromMicros(rep.vals[1]), nil
}

// counterKey is <prefix>count:{<bucket>}:<scope>: the hash tag puts every
// limit of a bucket in one Cluster slot, so one script can take them all as
// KEYS. The name changes whenever a replica of the previous build could
// misread the counters: they were hashes named rl:…, then packed strings
// named rate:… that a replica took a long lease's future group in for a
// clock gone back (cutting groups that still counted). Replicas of different
// names count apart: at most 2N while both run, never an undercount.
func (r *Limiter) counterKey(l *ratelimit.Limit) string {
	return r.opts.Prefix + "count:{" + l.Bucket + "}:" + l.Scope
}

func (r *Limiter) heartbeatKey() string { return r.opts.Prefix + "{hb}:replicas" }

// passOn is called by whoever brought a batch back from the wire: with
// checks pending, the wire slot goes to a sender, which sends them; without,
// it is free again.
func (r *Limiter) passOn(q *queue) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 || q.closed {
		q.sending--
		return
	}
	q.kick <- struct{}{} // never blocks: one kick per slot, Pipelines slots
}

// sender sends the pending checks of q, MaxBatch at a time, for as long as
// there are any once a batch returns: the checks that arrive while one
// batch is on the wire go together as the next.
func (r *Limiter) sender(q *queue, stop <-chan struct{}) {
	batch := make([]*call, 0, r.opts.MaxBatch)
	for {
		select {
		case <-q.kick:
		case <-stop:
			return
		case <-r.done:
			return
		}
		for {
			q.mu.Lock()
			if len(q.pending) == 0 || q.closed {
				q.sending--
				q.mu.Unlock()
				break
			}
			k := min(len(q.pending), r.opts.MaxBatch)
			batch = batch[:0]
			for _, c := range q.pending[:k] {
				if !c.gone.Load() { // else nobody waits for it: not sent, not counted
					batch = append(batch, c)
				}
			}
			rest := copy(q.pending, q.pending[k:])
			clear(q.pending[rest:])
			q.pending = q.pending[:rest]
			q.mu.Unlock()
			if len(batch) > 0 {
				r.run(context.Background(), batch) // a batch outlives any one caller
			}
			clear(batch)
		}
	}
}

// drain answers the checks pending in q at Close with ErrClosed, and lets
// no more wait: at once, before Close waits for its goroutines (a heartbeat
// on a hung Redis can take Timeout). A waiting check has no case of its own
// for Close, which would cost every one of them a lock of a channel they
// all share; checks already on the wire are answered by their batches.
func (r *Limiter) drain(q *queue) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for _, c := range q.pending {
		c.reply <- reply{err: ErrClosed}
	}
	q.pending = nil
}

// run sends one batch (within ctx and Timeout) and answers its calls. On
// one Redis, the whole batch is one script call: the fixed cost of a call
// (and of reading the clock) is paid once per batch, not per check. A
// Cluster client gets one call per check, in one pipeline, as the checks'
// counters are in different slots (runEach). A call Redis does not know the
// script for (after a restart, or on a new Cluster node) is sent again as
// EVAL, which loads it.
func (r *Limiter) run(ctx context.Context, batch []*call) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.Timeout)
	now := ""
	if r.opts.Now != nil {
		now = strconv.FormatInt(r.opts.Now().UnixMicro(), 10)
	}
	if !r.perCheck {
		defer cancel()
		r.calls.Add(1)
		vals, err := allow(ctx, r.client, batchArgs(batch, now)).Result()
		for _, c := range batch {
			if err != nil {
				c.reply <- reply{err: err}
				continue
			}
			k := 2 + 2*len(c.keys)
			if len(vals) < k {
				c.reply <- reply{err: fmt.Errorf("script returned %d values for a batch of %d checks", len(vals), len(batch))}
				continue
			}
			c.reply <- reply{vals: vals[:k:k]}
			vals = vals[k:]
		}
		return
	}
	r.runEach(ctx, cancel, batch, now)
}

// runEach sends a Cluster batch, one call per check, and answers every
// check Redis decided. While a slot moves to another master, a check of two
// limits whose counters the move has split, or one of them not yet counted
// on the new master, is refused with TRYAGAIN until the move ends (a few
// milliseconds for a counter's slot); those wait for it, within the batch's
// Timeout, rather than being decided without Redis, in a goroutine of their
// own (waitOutMove): the batch's wire slot goes on to the checks pending, and
// a move that stalls holds up no check but those it refuses. That goroutine,
// like a check sent from its caller's goroutine, may outlive Close by up to
// Timeout. runEach calls cancel, ctx's, or leaves it to waitOutMove.
func (r *Limiter) runEach(ctx context.Context, cancel context.CancelFunc, batch []*call, now string) {
	r.calls.Add(uint64(len(batch)))
	cmds := make([]*goredis.IntSliceCmd, len(batch))
	args := make([][]any, len(batch))
	_, _ = r.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i := range batch {
			args[i] = batchArgs(batch[i:i+1], now)
			cmds[i] = allowCmd(ctx, args[i], "evalsha", allowScript.Hash())
			_ = p.Process(ctx, cmds[i])
		}
		return nil
	})
	if again := failedWith(cmds, nil, "NOSCRIPT"); len(again) > 0 {
		resend(ctx, r.client, cmds, args, again, "eval", allowSrc)
	}
	var moving []int
	for i, c := range batch {
		if hasErrorPrefix(cmds[i].Err(), "TRYAGAIN") {
			moving = append(moving, i)
			continue
		}
		vals, err := cmds[i].Result()
		c.reply <- reply{vals: vals, err: err}
	}
	if len(moving) == 0 {
		cancel()
		return
	}
	// batch is the sender's, filled afresh once run returns.
	go r.waitOutMove(ctx, cancel, slices.Clone(batch), cmds, args, moving)
}

// waitOutMove sends the checks at the indexes moving of calls (their calls
// cmds and arguments args) again every few milliseconds while Redis refuses
// them with TRYAGAIN, until ctx ends, and answers each once Redis decides
// it, or with its last refusal. It answers only those: the others may have
// been released and taken by new checks. It calls cancel, ctx's.
func (r *Limiter) waitOutMove(ctx context.Context, cancel context.CancelFunc, calls []*call, cmds []*goredis.IntSliceCmd, args [][]any, moving []int) {
	defer cancel()
	for pause := time.Millisecond; len(moving) > 0 && sleep(ctx, pause); pause = min(2*pause, 20*time.Millisecond) {
		resend(ctx, r.client, cmds, args, moving, "evalsha", allowScript.Hash())
		if again := failedWith(cmds, moving, "NOSCRIPT"); len(again) > 0 {
			resend(ctx, r.client, cmds, args, again, "eval", allowSrc)
		}
		refused := moving[:0]
		for _, i := range moving {
			if hasErrorPrefix(cmds[i].Err(), "TRYAGAIN") {
				refused = append(refused, i)
				continue
			}
			vals, err := cmds[i].Result()
			calls[i].reply <- reply{vals: vals, err: err}
		}
		moving = refused
	}
	for _, i := range moving {
		calls[i].reply <- reply{err: cmds[i].Err()}
	}
}

// resend sends the checks at the indexes which again, in one pipeline, as
// command ("evalsha" or "eval") with script (its hash or its source),
// replacing their cmds.
func resend(ctx context.Context, client goredis.UniversalClient, cmds []*goredis.IntSliceCmd, args [][]any, which []int, command, script string) {
	_, _ = client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for _, i := range which {
			cmds[i] = allowCmd(ctx, args[i], command, script)
			_ = p.Process(ctx, cmds[i])
		}
		return nil
	})
}

// failedWith returns the indexes of the cmds whose error starts with
// prefix, among those at the indexes among (all of them when nil).
func failedWith(cmds []*goredis.IntSliceCmd, among []int, prefix string) []int {
	var out []int
	for i, cmd := range cmds {
		if among != nil && !slices.Contains(among, i) {
			continue
		}
		if hasErrorPrefix(cmd.Err(), prefix) {
			out = append(out, i)
		}
	}
	return out
}

// hasErrorPrefix is goredis.HasErrorPrefix without its allocation (of the
// target of errors.As) when err is nil, as a check's mostly is.
func hasErrorPrefix(err error, prefix string) bool {
	return err != nil && goredis.HasErrorPrefix(err, prefix)
}

// sleep waits d, and reports false if ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// allow runs one call of allow.lua with args (from batchArgs) on client: by
// its hash, and again with its source if Redis does not know it.
func allow(ctx context.Context, client goredis.UniversalClient, args []any) *goredis.IntSliceCmd {
	cmd := allowCmd(ctx, args, "evalsha", allowScript.Hash())
	_ = client.Process(ctx, cmd)
	if goredis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		cmd = allowCmd(ctx, args, "eval", allowSrc)
		_ = client.Process(ctx, cmd)
	}
	return cmd
}

// allowCmd is a call of allow.lua with args (from batchArgs, whose first two
// slots it fills): "evalsha" and the script's hash, or "eval" and its
// source, which loads it. The reply, a flat array of integers, is read into
// one []int64, where go-redis's script call would box every value and copy
// them again. args is reused by a call that follows one that has returned.
func allowCmd(ctx context.Context, args []any, command, script string) *goredis.IntSliceCmd {
	args[0], args[1] = command, script
	cmd := goredis.NewIntSliceCmd(ctx, args...)
	cmd.SetFirstKeyPos(3)
	return cmd
}

// batchArgs lays a batch out as the arguments of one call of allow.lua,
// after two left for allowCmd to fill (the command and the script):
// the number of keys, every check's keys in order, then the clock and span
// followed by every check's argument.
func batchArgs(batch []*call, now string) []any {
	nk := 0
	for _, c := range batch {
		nk += len(c.keys)
	}
	args := make([]any, 3, 3+nk+2+len(batch))
	args[2] = nk
	for _, c := range batch {
		for i := range c.keys {
			args = append(args, &c.keys[i]) // a pointer boxes without allocating
		}
	}
	args = append(args, now, ratelimit.Span)
	for _, c := range batch {
		args = append(args, c) // its args, through MarshalBinary
	}
	return args
}

// heartbeats announces this replica every Heartbeat and keeps the count of
// replicas alive, until Close.
func (r *Limiter) heartbeats() {
	t := time.NewTicker(r.opts.Heartbeat)
	defer t.Stop()
	for {
		r.heartbeat()
		if r.cluster != nil {
			r.retireIdle()
		}
		select {
		case <-t.C:
			r.round.Add(1)
		case <-r.done:
			return
		}
	}
}

func (r *Limiter) heartbeat() {
	ctx, cancel := context.WithTimeout(context.Background(), max(r.opts.Timeout, r.opts.Heartbeat/2))
	defer cancel()
	ttl := 3 * r.opts.Heartbeat.Milliseconds()
	n, err := heartbeatScript.Run(ctx, r.client, []string{r.heartbeatKey()}, r.opts.InstanceID, ttl).Int64()
	if err == nil && n > 0 {
		r.replicas.Store(n)
	}
}
