package redis

import (
	"hash/maphash"
	"strconv"
	"sync"
	"time"

	"github.com/extauthz/extauthz/ratelimit"
)

// Leases.
//
// A check against the shared count costs a Redis round trip. For a bucket
// this replica checks more than once in a while and whose limits are not
// small, the Redis limiter instead has Redis count several requests at once
// (allow.lua's want) and hands out the extra ones itself, a lease, until they
// run out or the lease's deadline passes, whichever comes first.
//
// Safety: no interval of length W holds more than N allowed requests, as
// before. Every leased request is counted in Redis before it is handed out,
// in a group whose bound (ratelimit/window.go's L_j) is the end of a
// sub-window no earlier than the lease's deadline, so the bound is after
// every use. The proof in ratelimit/window.go then holds as if each leased
// request had been made at the grant and used at once: a group counts from
// its grant until its bound plus W, which covers every use plus W. The local
// deadline is the time the request was sent plus what Redis said was left
// until that sub-window ends, less 1/leaseEarly of it; Redis read its clock
// after the send, so by its clock the lease ends no later than the group's
// bound, even on a replica whose clock runs up to that much slower.
//
// Two kinds, which allow.lua chooses per grant:
//   - Long, while every limit of the check, with the grant, counts at most
//     N/32: the lease lasts until the end of the sub-window 19 after the
//     current one (about W) and is counted in that future group. This is
//     what serves a key that is busy but far from its limit: a few checks a
//     second against a limit of thousands see a lease of about a second's
//     demand, so one Redis call answers many checks, where a lease ending
//     with its sub-window (W/20) would hold a request or none.
//   - Short, otherwise: until the end of the current sub-window, counted in
//     the current group, at most N/2000 of every limit (near its limit a
//     key's requests must not count longer than they are used).
//
// Cost, always capacity, never the promise. Requests counted but never
// handed out (a lease that ends with some left, or is dropped) are lost
// until they age out of the window. A lease is at most N/leaseShare (long)
// or N/2000 (short) of every limit, and a replica holds one lease of a set
// of limits at a time (leaseKey: a key's limit alone, or with one route's),
// ending at most once per W (long) or W/20 (short), so a replica loses at
// most about 1% of N per window and set to leftovers of either kind, 2% in
// a window that sees both. A key checked under several route limits holds a
// lease of each, and may lose that much of its own limit to each. And a long lease's requests count
// until about 2W after the grant however early they are used: as long
// grants are only made while the count stays at most N/32, they can hold at
// most N/32 of a key's limit beyond their time, which a key that goes from
// quiet to its whole limit at once may find missing for up to 2W. Leases are sized by this replica's own demand: 1 (an exact check per
// request) to begin with, doubled whenever demand outran the last grant
// before its deadline, cut to what was used when a lease ends with some
// left. So a quiet bucket, or one whose limit is under 2·leaseShare, is
// checked exactly, one request per Redis call; and denials, which only Redis
// gives, are exact: a replica without a lease asks for one request.
const (
	leaseShare = 100
	leaseSets  = 4096
	leaseWays  = 4 // leases per set: a bucket can use any free way of its set
	// leaseIdle is how long a lease must go unused before another bucket may
	// take its way while it still holds requests (see leases).
	leaseIdle = time.Second
	// leaseEarly: a lease ends by this replica's clock 1/leaseEarly of its
	// length before Redis's clock reaches the end of its group's
	// sub-window. The deadline is measured on this replica's clock, the
	// bound on Redis's: a replica whose clock ran slower than Redis's would
	// hand out requests after their group's bound, which then count for
	// less than W after their use. NTP slews a clock's rate by at most 500
	// ppm, so two of them differ by at most 1/1000: a long lease (about W)
	// of an hourly limit ends 7s early, a short one (W/20) 0.4s; what it
	// still holds then is lost like any leftover.
	leaseEarly = 500
)

// maxLease is the largest lease for limits: N/leaseShare of the smallest
// limit (1 means no leasing).
func maxLease(limits []ratelimit.Limit) int64 {
	m := int64(-1)
	for i := range limits {
		if r := limits[i].Rate; r.Enforced() && (m < 0 || r.N/leaseShare < m) {
			m = r.N / leaseShare
		}
	}
	return max(m, 1)
}

// leaseKey names one set of limits of one bucket: the counters and their
// rates (a lease from other rates, before a reload, does not apply).
func leaseKey(limits []ratelimit.Limit) string {
	var buf [160]byte
	b := buf[:0]
	for i := range limits {
		l := &limits[i]
		if !l.Rate.Enforced() {
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

// leases is a set-associative table of leases: a bucket's lease lives in
// one of the leaseWays ways of the set its key hashes to, 16,384 leases in
// all (about 3 MiB). A bucket that finds every way of its set holding
// another bucket's live lease takes over the one unused longest if that
// one has gone unused for leaseIdle, and is otherwise checked exactly until
// a way frees. A busy bucket's lease is never cut short; a long lease lasts
// up to W (an hour for an hourly limit), and without the takeover the
// leases of keys that went quiet would keep busier ones from leasing for
// that long. What a lease taken over still held is lost like a leftover, and
// stays within the bounds above: a bucket's lease starts again at one
// request after it is taken over, so each loss is at most about what that
// bucket's own demand used of its lease before, and a long lease's requests
// count toward the N/32 that long leases may take at all. (With one way per
// set, two of the load tool's 100 busy buckets shared a slot in 70% of runs,
// by the birthday odds over 4096 slots, and one of them then went to Redis
// for every check until the other's sub-window ended: 2.4% of all checks
// went to Redis instead of 0.1%.)
type leases struct {
	seed maphash.Seed
	sets [leaseSets]leaseSet
}

type leaseSet struct {
	mu   sync.Mutex
	ways [leaseWays]lease
}

type lease struct {
	key       string
	tokens    int64            // requests left to hand out
	until     time.Time        // the last grant's deadline (local clock)
	res       ratelimit.Result // the last grant's Result (Remaining: after all of it), for the headers
	sent      time.Time        // when the last grant's check was sent (local clock): res.Reset counts from then
	used      time.Time        // when this bucket was last checked (local clock)
	size      int64            // how many to ask for next (at most most)
	most      int64            // maxLease of the limits
	gen, grew uint64           // grants so far; the grant after which size last doubled
	refilling bool             // a check asking for size > 1 is on its way
}

func newLeases() *leases { return &leases{seed: maphash.MakeSeed()} }

// lock locks and returns the set of key.
func (ls *leases) lock(key string) *leaseSet {
	set := &ls.sets[maphash.String(ls.seed, key)%leaseSets]
	set.mu.Lock()
	return set
}

// find returns key's lease in set, or nil.
func (set *leaseSet) find(key string) *lease {
	for i := range set.ways {
		if set.ways[i].key == key {
			return &set.ways[i]
		}
	}
	return nil
}

// live reports whether l holds requests that may still be handed out, or is
// being refilled: taking its way over would lose them.
func (l *lease) live(now time.Time) bool {
	return l.refilling || l.tokens > 0 && now.Before(l.until)
}

// take hands out one leased request for key at now, if a lease holds one.
func (ls *leases) take(key string, now time.Time) (ratelimit.Result, bool) {
	set := ls.lock(key)
	defer set.mu.Unlock()
	l := set.find(key)
	if l == nil {
		return ratelimit.Result{}, false
	}
	if !now.Before(l.until) {
		// The deadline passed: what is left is lost, and next time ask for
		// what was used.
		if l.tokens > 0 {
			l.size = max(1, l.size-l.tokens)
			l.tokens = 0
		}
		return ratelimit.Result{}, false
	}
	if l.tokens == 0 {
		// Demand outran the grant before its deadline: ask for twice as
		// many next time (once per grant, however many callers see it).
		if l.grew != l.gen {
			l.grew = l.gen
			l.size = min(2*l.size, l.most)
		}
		return ratelimit.Result{}, false
	}
	l.tokens--
	l.used = now
	res := l.res
	res.Remaining += l.tokens
	// The grant's Reset was read at the grant: what has passed since is
	// gone from it. Counted from when the grant was sent, before Redis read
	// its clock, it is never later than the reset an exact check would name.
	res.Reset = max(0, res.Reset-now.Sub(l.sent))
	return res, true
}

// want returns how many requests a check of key at now should ask Redis
// for, and whether the caller is the one refilling the lease (it must call
// granted).
func (ls *leases) want(key string, most int64, now time.Time) (int64, bool) {
	set := ls.lock(key)
	defer set.mu.Unlock()
	l := set.find(key)
	if l == nil {
		for i := range set.ways {
			if w := &set.ways[i]; !w.live(now) && (l == nil || w.key == "") {
				l = w // a free way, else the first whose lease is over
			}
		}
		if l == nil {
			// Other buckets' leases hold every way: take over the one
			// unused longest if it has gone unused for leaseIdle (what it
			// holds is lost), else go without one.
			for i := range set.ways {
				if w := &set.ways[i]; !w.refilling && now.Sub(w.used) >= leaseIdle && (l == nil || w.used.Before(l.used)) {
					l = w
				}
			}
			if l == nil {
				return 1, false
			}
		}
		*l = lease{key: key, size: 1}
	}
	l.most, l.used = most, now
	if l.refilling || l.size <= 1 || most <= 1 {
		return 1, false
	}
	l.refilling = true
	return min(l.size, most), true
}

// granted records the answer to a check sent at sent that asked for want:
// got requests counted (0 when denied or failed), the first for the caller,
// until the local deadline; res is the caller's Result, whose Remaining
// counts the whole grant.
func (ls *leases) granted(key string, refill bool, got int64, sent, until time.Time, res ratelimit.Result) {
	set := ls.lock(key)
	defer set.mu.Unlock()
	l := set.find(key)
	if l == nil {
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
		l.tokens, l.until, l.res, l.sent = got-1, until, res, sent
		l.gen++
	case l.tokens == 0:
		// An exact check: it tells when a lease granted now would end,
		// which is what take needs to see that demand outran it.
		l.until = until
		l.gen++
	}
}
