package redis

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/ratelimit"
	goredis "github.com/redis/go-redis/v9"
)

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
		return r.result(limits, n, want, rep)
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
	return r.result(limits, n, want, rep)
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

// result reads the script's reply for limits, asking for want requests:
// the Result, how many requests were granted and how long until the
// sub-window ends. A reply the script does not give (a grant of fewer than
// none or more than want, a denial that names no exhausted limit) is an
// error, decided as Redis failing: go-redis reads a nil as 0, so a reply of
// nils (or zeros) would otherwise be a check that no limit refused.
func (r *Limiter) result(limits []ratelimit.Limit, n int, want int64, rep reply) (ratelimit.Result, int64, time.Duration, error) {
	if rep.err != nil {
		return ratelimit.Result{}, 0, 0, fmt.Errorf("rate-limit check: %w", rep.err)
	}
	if len(rep.vals) != 2+2*n {
		return ratelimit.Result{}, 0, 0, fmt.Errorf("rate-limit check: script returned %d values for %d limits", len(rep.vals), n)
	}
	p := ratelimit.NewPicker()
	granted := rep.vals[0]
	if granted < 0 || granted > want {
		return ratelimit.Result{}, 0, 0, fmt.Errorf("rate-limit check: script granted %d requests of %d asked", granted, want)
	}
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
	if granted == 0 && !p.Denied() {
		return ratelimit.Result{}, 0, 0, errors.New("rate-limit check: script denied the check with no limit exhausted")
	}
	return p.Result(), granted, ratelimit.FromMicros(rep.vals[1]), nil
}

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
		// The checks' values follow one another: a reply of another
		// length than theirs together is not the script's, and any
		// check's values read from it could be another's.
		need := 0
		for _, c := range batch {
			need += 2 + 2*len(c.keys)
		}
		if err == nil && len(vals) != need {
			err = fmt.Errorf("script returned %d values for a batch of %d checks, not %d", len(vals), len(batch), need)
		}
		for _, c := range batch {
			if err != nil {
				c.reply <- reply{err: err}
				continue
			}
			k := 2 + 2*len(c.keys)
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
