package ratelimit

import (
	"hash/maphash"
	"strconv"
	"sync"
	"time"
)

// Leases.
//
// A check against the shared count costs a Redis round trip. For a bucket
// this replica checks often and whose limits are large, the Redis limiter
// instead has Redis count several requests at once (allow.lua's want) and
// hands out the extra ones itself, a lease, until they run out or the
// limits' current sub-window ends, whichever comes first.
//
// Safety: no interval of length W holds more than N allowed requests, as
// before. Every leased request is counted in Redis before it is handed out,
// in the group of the sub-window the lease ends with, and that group's bound
// (window.go's L_j) becomes the end of the sub-window, which is after every
// use: the proof in window.go holds as if each leased request had been made
// at the grant. The local deadline is the time the request was sent plus
// what Redis said was left of the sub-window; Redis read its clock after the
// send, so by its clock the lease ends no later than the sub-window.
//
// Cost: requests counted but never handed out (a lease that ends with some
// left, or is dropped) are capacity lost until they age out of the window.
// A lease is at most N/leaseShare of every limit of the check, so with 20
// sub-windows a replica can lose at most about 1% of N per window to
// leftovers, and it is sized by this replica's own demand: 1 (an exact
// check per request) to begin with, doubled whenever demand outran the last
// grant before its sub-window ended, cut to what was used when a lease ends
// with some left. So a quiet bucket, or one whose limit is under 2·leaseShare,
// is checked exactly, one request per Redis call; and denials, which only
// Redis gives, are exact: a replica without a lease asks for one request.
const (
	leaseShare = 2000
	leaseSlots = 4096
)

// maxLease is the largest lease for limits: N/leaseShare of the smallest
// limit (1 means no leasing).
func maxLease(limits []Limit) int64 {
	m := int64(-1)
	for i := range limits {
		if r := limits[i].Rate; enforced(r) && (m < 0 || r.N/leaseShare < m) {
			m = r.N / leaseShare
		}
	}
	return max(m, 1)
}

// leaseKey names one set of limits of one bucket: the counters and their
// rates (a lease from other rates, before a reload, does not apply).
func leaseKey(limits []Limit) string {
	var buf [160]byte
	b := buf[:0]
	for i := range limits {
		l := &limits[i]
		if !enforced(l.Rate) {
			continue
		}
		b = append(b, l.Bucket...)
		b = append(b, 0)
		b = append(b, l.Scope...)
		b = append(b, 0)
		b = strconv.AppendInt(b, l.Rate.N, 10)
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(l.Rate.Window), 10)
		b = append(b, 0)
	}
	return string(b)
}

// leases is a direct-mapped table of leases. A bucket whose slot holds
// another bucket's live lease is checked exactly until that lease ends; then
// it takes the slot over. So no lease is cut short, and the leftovers stay
// within the bound above.
type leases struct {
	seed  maphash.Seed
	slots [leaseSlots]lease
}

type lease struct {
	mu        sync.Mutex
	key       string
	tokens    int64     // requests left to hand out
	until     time.Time // the end of the last grant's sub-window (local clock)
	res       Result    // the last grant's Result (Remaining: after all of it), for the headers
	size      int64     // how many to ask for next (at most most)
	most      int64     // maxLease of the limits
	gen, grew uint64    // grants so far; the grant after which size last doubled
	refilling bool      // a check asking for size > 1 is on its way
}

func newLeases() *leases { return &leases{seed: maphash.MakeSeed()} }

func (ls *leases) slot(key string) *lease {
	return &ls.slots[maphash.String(ls.seed, key)%leaseSlots]
}

// take hands out one leased request for key at now, if a lease holds one.
func (ls *leases) take(key string, now time.Time) (Result, bool) {
	l := ls.slot(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.key != key {
		return Result{}, false
	}
	if !now.Before(l.until) {
		// The sub-window ended: what is left is lost, and next time ask for
		// what was used.
		if l.tokens > 0 {
			l.size = max(1, l.size-l.tokens)
			l.tokens = 0
		}
		return Result{}, false
	}
	if l.tokens == 0 {
		// Demand outran the grant within its sub-window: ask for twice as
		// many next time (once per grant, however many callers see it).
		if l.grew != l.gen {
			l.grew = l.gen
			l.size = min(2*l.size, l.most)
		}
		return Result{}, false
	}
	l.tokens--
	res := l.res
	res.Remaining += l.tokens
	return res, true
}

// want returns how many requests a check of key at now should ask Redis
// for, and whether the caller is the one refilling the lease (it must call
// granted).
func (ls *leases) want(key string, most int64, now time.Time) (int64, bool) {
	l := ls.slot(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.key != key {
		if l.refilling || l.tokens > 0 && now.Before(l.until) {
			// Another bucket's lease holds the slot: taking it over would
			// lose what it has left, so this check goes without one.
			return 1, false
		}
		l.key, l.tokens, l.until, l.res = key, 0, time.Time{}, Result{}
		l.size, l.gen, l.grew, l.refilling = 1, 0, 0, false
	}
	l.most = most
	if l.refilling || l.size <= 1 || most <= 1 {
		return 1, false
	}
	l.refilling = true
	return min(l.size, most), true
}

// granted records the answer to a check that asked for want: got requests
// counted (0 when denied or failed), the first for the caller, until the
// local deadline; res is the caller's Result, whose Remaining counts the
// whole grant.
func (ls *leases) granted(key string, refill bool, got int64, until time.Time, res Result) {
	l := ls.slot(key)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.key != key {
		return // taken over by another bucket meanwhile
	}
	if refill {
		l.refilling = false
	}
	switch {
	case got == 0:
		// Denied (the limit is exhausted) or failed: start again from exact
		// checks.
		l.size = 1
	case got > 1 && refill:
		l.tokens, l.until, l.res = got-1, until, res
		l.gen++
	case l.tokens == 0:
		// An exact check: it tells when this sub-window ends, which is what
		// take needs to see that demand outran it.
		l.until = until
		l.gen++
	}
}
