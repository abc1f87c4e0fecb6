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
//
// The files: limiter.go, a check from its limits to its Result (Allow), the
// fallback when Redis fails and the heartbeat; batch.go, the queue that
// gathers concurrent checks into script calls and reads their answers;
// nodes.go, a breaker and a queue per Redis (per Cluster master); lease.go,
// the leases; allow.lua, the script.
package redis

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

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
		r.leases.granted(key, refill, got, sent, sent.Add(lease-lease/leaseEarly), res)
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
