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
// Allow takes one sharded lock and does one map lookup per check, and does
// not allocate once a bucket exists.
type Local struct {
	now      func() time.Time
	seed     maphash.Seed
	perShard int
	shards   [localShards]localShard

	allowed, limited, evicted atomic.Uint64
}

type localShard struct {
	mu sync.Mutex
	m  map[string]*bucket // by Bucket: the caller's string, never one built per call
	_  [48]byte           // keep shards on separate cache lines
}

// bucket holds the windows of one Bucket's limits, one per Scope: the first
// scope inline (most buckets have one limit, the key's own), others beside.
type bucket struct {
	first scoped
	more  *[]*scoped
}

type scoped struct {
	scope string
	w     window
}

// NewLocal returns a Local that reads the time from now (time.Now when nil)
// and keeps at most about maxBuckets buckets (DefaultMaxBuckets when ≤ 0).
func NewLocal(now func() time.Time, maxBuckets int) *Local {
	if now == nil {
		now = time.Now
	}
	if maxBuckets <= 0 {
		maxBuckets = DefaultMaxBuckets
	}
	l := &Local{now: now, seed: maphash.MakeSeed(), perShard: (maxBuckets + localShards - 1) / localShards}
	for i := range l.shards {
		l.shards[i].m = make(map[string]*bucket)
	}
	return l
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
	res := l.check(l.now().UnixMicro(), limits)
	if res.Allowed {
		l.allowed.Add(1)
	} else {
		l.limited.Add(1)
	}
	return res, nil
}

// check runs one validated check with enforced limits at now (µs).
func (l *Local) check(now int64, limits []Limit) Result {
	var name string
	for i := range limits {
		if limits[i].Rate.Enforced() {
			name = limits[i].Bucket
			break
		}
	}
	sh := &l.shards[maphash.String(l.seed, name)&(localShards-1)]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[name]
	if b == nil {
		if len(sh.m) >= l.perShard {
			l.evict(sh, now)
		}
		b = &bucket{}
		sh.m[name] = b
	}

	// Pass 1: is every limit under N? Remember the windows and counts (for
	// the common case of ≤ 4 limits, without a second lookup or allocating).
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
		w := b.window(lim.Scope, subMicros(wUs), now)
		held := w.counted(now, wUs)
		if k < len(ws) {
			ws[k], helds[k] = w, held
		}
		k++
		if held >= lim.Rate.N {
			p.Exhausted(lim, FromMicros(w.wait(now, wUs, lim.Rate.N, held)))
		}
	}
	if p.Denied() {
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
			w = b.window(lim.Scope, subMicros(wUs), now)
			held = w.counted(now, wUs)
		}
		k++
		reset := w.add(now, wUs)
		p.Allowed(lim, lim.Rate.N-held-1, FromMicros(reset))
	}
	return p.Result()
}

// window returns the window of scope, advanced to now, creating it when
// missing. A window counted with another sub-window length (the rate's
// window changed) starts over: its groups mean nothing under the new one.
func (b *bucket) window(scope string, sub, now int64) *window {
	var s *scoped
	switch {
	case b.first.w.sub == 0: // a new bucket
		s = &b.first
		s.scope = scope
	case b.first.scope == scope:
		s = &b.first
	default:
		if b.more != nil {
			for _, m := range *b.more {
				if m.scope == scope {
					s = m
					break
				}
			}
		} else {
			b.more = new([]*scoped)
		}
		if s == nil {
			s = &scoped{scope: scope}
			*b.more = append(*b.more, s)
		}
	}
	if s.w.sub != sub {
		s.w = window{sub: sub, head: floorDiv(now, sub)}
	}
	s.w.advance(now)
	return &s.w
}

// idleAt is when every window of b counts nothing any more.
func (b *bucket) idleAt() int64 {
	at := b.first.w.idleAt()
	if b.more != nil {
		for _, m := range *b.more {
			at = max(at, m.w.idleAt())
		}
	}
	return at
}

// evict makes room for one bucket in sh (locked): it samples a few buckets
// (map iteration starts at a random place), drops every idle one among them,
// and if none was idle, drops the one that turns idle soonest (roughly the
// least recently used).
func (l *Local) evict(sh *localShard, now int64) {
	const sample = 8
	var oldest string
	oldestAt := int64(0)
	seen, dropped := 0, 0
	for name, b := range sh.m {
		at := b.idleAt()
		if at <= now {
			delete(sh.m, name)
			dropped++
		} else if seen == 0 || at < oldestAt {
			oldest, oldestAt = name, at
		}
		if seen++; seen >= sample {
			break
		}
	}
	if dropped == 0 && seen > 0 {
		delete(sh.m, oldest)
		dropped++
	}
	l.evicted.Add(uint64(dropped))
}

// Len is the number of buckets held.
func (l *Local) Len() int {
	n := 0
	for i := range l.shards {
		sh := &l.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// Stats returns the decision counters (Fallback and StoreErrors are always 0).
func (l *Local) Stats() Stats {
	return Stats{Allowed: l.allowed.Load(), Limited: l.limited.Load(), Evicted: l.evicted.Load()}
}
