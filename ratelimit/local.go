package ratelimit

import (
	"context"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxBuckets is the bucket bound of NewLocal when given 0.
const DefaultMaxBuckets = 1 << 20

const localShards = 64 // a power of two

// Local is an in-process Limiter: the embedded store's limiter, and the Redis
// limiter's fallback. Its memory is bounded: it holds at most about
// maxBuckets buckets, and when a shard is full it evicts an idle bucket
// (which is exactly a fresh one, so nothing is lost) or, failing that among a
// few sampled, the one that turns idle soonest.
//
// A bucket is kept without a pointer (see bucketTable), so a million of them
// cost the collector nothing to walk and an idle one costs about 56 bytes.
// Allow takes one sharded lock and does one hash lookup per check, and does
// not allocate once a bucket exists (but for the occasional chunk when the
// number of busy windows grows).
type Local struct {
	now      func() time.Time
	seed     maphash.Seed
	perShard int
	shards   [localShards]localShard

	allowed, limited, evicted atomic.Uint64
}

type localShard struct {
	mu sync.Mutex
	t  bucketTable
	_  [64]byte // keep shards' locks on separate cache lines
}

// NewLocal returns a Local that reads the time from now (steadyClock when
// nil) and keeps at most about maxBuckets buckets (DefaultMaxBuckets when ≤ 0).
func NewLocal(now func() time.Time, maxBuckets int) *Local {
	if now == nil {
		now = steadyClock()
	}
	if maxBuckets <= 0 {
		maxBuckets = DefaultMaxBuckets
	}
	perShard := min((maxBuckets+localShards-1)/localShards, maxSlots)
	l := &Local{now: now, seed: maphash.MakeSeed(), perShard: perShard}
	for i := range l.shards {
		l.shards[i].t.seed = l.seed
	}
	return l
}

// steadyClock returns a clock that reads the wall time of its making plus
// the monotonic time since. Counts are kept in the wall clock's µs (Unix),
// but time.Now().UnixMicro() reads the wall clock alone, and a wall clock
// stepped forward (an NTP correction, an operator's date) would free every
// count early by the step. This clock never steps; it drifts from the wall
// clock only as the machine's monotonic clock does.
func steadyClock() func() time.Time {
	start := time.Now()
	return func() time.Time { return start.Add(time.Since(start)) }
}

// Allow checks limits together at the current time. See Limiter.
func (l *Local) Allow(_ context.Context, limits []Limit) (Result, error) {
	n, err := CheckLimits(limits)
	if err != nil {
		return Result{}, err
	}
	if n == 0 {
		l.allowed.Add(1)
		return Result{Allowed: true}, nil
	}
	res := l.check(l.now().UnixMicro(), limits, n)
	if res.Allowed {
		l.allowed.Add(1)
	} else {
		l.limited.Add(1)
	}
	return res, nil
}

// check runs one validated check with n enforced limits at now (µs).
func (l *Local) check(now int64, limits []Limit, n int) Result {
	var name string
	for i := range limits {
		if limits[i].Rate.Enforced() {
			name = limits[i].Bucket
			break
		}
	}
	h := maphash.String(l.seed, name)
	sh := &l.shards[h&(localShards-1)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	t := &sh.t
	rec, ok := t.find(name, h)
	if !ok {
		if t.n >= l.perShard {
			l.evicted.Add(t.evict(now))
		}
		rec = t.insert(name, h)
	}
	b := t.records.at(rec)
	if n > 1 {
		// Before any window is opened: a bucket's second scope would move
		// its first window into a list.
		t.list(b)
	}

	// Pass 1: is every limit under N? Remember the windows and counts (for
	// the common case of ≤ 4 limits, without a second lookup or allocating;
	// compact windows are unpacked into the shard's rings, and packed again
	// at the end).
	var at [4]*slotWindow
	var ws [4]*window
	var helds [4]int64
	p := NewPicker()
	k := 0
	for i := range limits {
		lim := &limits[i]
		if !lim.Rate.Enforced() {
			continue
		}
		wUs := windowMicros(lim.Rate.Window)
		sw := t.window(b, lim.Scope)
		var w *window
		if k < len(ws) {
			w = t.open(sw, &t.rings[k], subMicros(wUs), wUs, now)
			at[k], ws[k] = sw, w
		} else {
			w = t.open(sw, nil, subMicros(wUs), wUs, now)
		}
		held := w.counted(now, wUs)
		if k < len(ws) {
			helds[k] = held
		}
		k++
		if held >= lim.Rate.N {
			p.Exhausted(lim, FromMicros(w.wait(now, wUs, lim.Rate.N, held)))
		}
	}
	if p.Denied() {
		t.closeAll(at[:min(k, len(at))], ws[:])
		return p.Result()
	}
	// Pass 2: count the request in every limit.
	k = 0
	for i := range limits {
		lim := &limits[i]
		if !lim.Rate.Enforced() {
			continue
		}
		wUs := windowMicros(lim.Rate.Window)
		var w *window
		var held int64
		if k < len(ws) {
			w, held = ws[k], helds[k]
		} else {
			w = t.open(t.window(b, lim.Scope), nil, subMicros(wUs), wUs, now)
			held = w.counted(now, wUs)
		}
		k++
		reset := w.add(now, wUs)
		p.Allowed(lim, lim.Rate.N-held-1, FromMicros(reset))
	}
	t.closeAll(at[:min(k, len(at))], ws[:])
	return p.Result()
}

// Len is the number of buckets held.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += sh.t.n
		sh.mu.Unlock()
	}
	return n
}

// Stats returns the decision counters (Fallback and StoreErrors are always 0).
func (l *Local) Stats() Stats {
	return Stats{Allowed: l.allowed.Load(), Limited: l.limited.Load(), Evicted: l.evicted.Load()}
}
