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
// maxBuckets counters (one per Bucket and Scope), and when a shard is full it
// evicts an idle one (which is exactly a fresh one, so nothing is lost) or,
// failing that among a few sampled, the one idle the longest.
//
// Allow takes one sharded lock per check and does not allocate once a bucket
// exists.
type Local struct {
	now      func() time.Time
	seed     maphash.Seed
	perShard int
	shards   [localShards]localShard

	allowed, limited, evicted atomic.Uint64
}

type localShard struct {
	mu sync.Mutex
	m  map[bucketScope]*window
	_  [40]byte // keep shards on separate cache lines
}

// bucketScope is the map key: the caller's strings, never a string built per call.
type bucketScope struct{ bucket, scope string }

// NewLocal returns a Local that reads the time from now (time.Now when nil)
// and keeps at most about maxBuckets counters (DefaultMaxBuckets when ≤ 0).
func NewLocal(now func() time.Time, maxBuckets int) *Local {
	if now == nil {
		now = time.Now
	}
	if maxBuckets <= 0 {
		maxBuckets = DefaultMaxBuckets
	}
	l := &Local{now: now, seed: maphash.MakeSeed(), perShard: (maxBuckets + localShards - 1) / localShards}
	for i := range l.shards {
		l.shards[i].m = make(map[bucketScope]*window)
	}
	return l
}

// Allow checks limits together at the current time. See Limiter.
func (l *Local) Allow(_ context.Context, limits []Limit) (Result, error) {
	n, err := checkLimits(limits)
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
	var bucket string
	for i := range limits {
		if enforced(limits[i].Rate) {
			bucket = limits[i].Bucket
			break
		}
	}
	sh := &l.shards[maphash.String(l.seed, bucket)&(localShards-1)]
	sh.mu.Lock()
	defer sh.mu.Unlock()

	// Pass 1: is every limit under N? Remember the windows and counts (for
	// the common case of ≤ 4 limits, without a second lookup or allocating).
	var ws [4]*window
	var helds [4]int64
	p := newPicker()
	k := 0
	for i := range limits {
		lim := &limits[i]
		if !enforced(lim.Rate) {
			continue
		}
		w := sh.get(l, lim, now)
		wUs := windowMicros(lim.Rate.Window)
		held := w.counted(now, wUs)
		if k < len(ws) {
			ws[k], helds[k] = w, held
		}
		k++
		if held >= lim.Rate.N {
			p.exhaustedLimit(lim, micros(w.wait(now, wUs, lim.Rate.N, held)))
		}
	}
	if !p.allowed {
		return p.result()
	}
	// Pass 2: count the request in every limit.
	k = 0
	for i := range limits {
		lim := &limits[i]
		if !enforced(lim.Rate) {
			continue
		}
		wUs := windowMicros(lim.Rate.Window)
		var w *window
		var held int64
		if k < len(ws) {
			w, held = ws[k], helds[k]
		} else {
			w = sh.get(l, lim, now)
			held = w.counted(now, wUs)
		}
		k++
		reset := w.add(now, wUs)
		p.allowedLimit(lim, lim.Rate.N-held-1, micros(reset))
	}
	return p.result()
}

// get returns the window of lim, advanced to now, creating (and making room
// for) it when missing. The caller holds sh.mu.
func (sh *localShard) get(l *Local, lim *Limit, now int64) *window {
	key := bucketScope{lim.Bucket, lim.Scope}
	sub := subMicros(windowMicros(lim.Rate.Window))
	w := sh.m[key]
	if w == nil {
		if len(sh.m) >= l.perShard {
			sh.evict(l, lim.Bucket, now)
		}
		w = &window{sub: sub, head: floorDiv(now, sub)}
		sh.m[key] = w
	} else if w.sub != sub {
		// The rate's window changed: its groups mean nothing under the new s.
		*w = window{sub: sub, head: floorDiv(now, sub)}
	}
	w.advance(now)
	return w
}

// evict makes room for one bucket: it samples a few entries (map iteration
// starts at a random place), drops every idle one among them, and if none was
// idle, drops the one idle soonest (the least recently used, roughly). It
// never drops a counter of bucket, whose check holds pointers to them.
func (sh *localShard) evict(l *Local, bucket string, now int64) {
	const sample = 8
	var oldest bucketScope
	oldestAt := int64(0)
	seen, dropped := 0, 0
	for key, w := range sh.m {
		if key.bucket == bucket {
			continue
		}
		at := w.idleAt()
		if at <= now {
			delete(sh.m, key)
			dropped++
		} else if seen == 0 || at < oldestAt {
			oldest, oldestAt = key, at
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

// Len is the number of counters held.
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
