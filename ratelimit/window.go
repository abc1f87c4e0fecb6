package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// The algorithm: grouped sliding log.
//
// A limit N/W keeps its allowed requests in groups: the window W is cut into
// k = subWindows sub-windows of length s = ceil(W/k) (in microseconds), and all
// requests allowed during sub-window j (the times [j·s, (j+1)·s)) form group j.
// A group remembers only its count c_j and an upper bound L_j of the time of
// its latest request: the latest request's offset into the sub-window, rounded
// UP to 1/255 of s and stored in one byte (the mark m_j, 1..255):
//
//	L_j = j·s + ceil(m_j·s/255)  ≥  the time of every request in group j.
//
// A group is counted at time t while L_j + W ≥ t. A request at t is allowed
// iff, for every limit of the check, the counted groups hold fewer than N
// requests; then it is added to group floor(t/s) of every limit.
//
// Claim: no closed interval [a, a+W] holds more than N allowed requests.
// Proof: let t* be the last allowed request in [a, a+W]. Every other allowed
// request r in the interval has a ≤ r ≤ t*, and its group has L ≥ r ≥ a ≥ t*−W,
// so its group was still counted when t* was checked. The check saw fewer than
// N requests (counting those, and possibly more), so together with t* itself
// the interval holds at most N. A denied request is added nowhere, so "a
// denied request consumes none" needs no extra argument. □
//
// The proof takes one bucket's clock readings to be monotonic. The local
// limiter's are (steadyClock); the Redis server's clock (TIME, one for all
// replicas) is its wall clock: a step back is safe, as here a reading that
// goes back is recorded in the newest group, whose bound is later than the
// reading, so nothing is ever counted for less than W after its reading; a
// step forward frees counts early by the step (docs/operations.md, Clocks).
//
// Memory: at time t in sub-window i, a group j ≤ i−k−2 is dead: L_j ≤
// (j+1)·s ≤ (i−k−1)·s, and k·s ≥ W, so L_j + W ≤ (i−1)·s < t. So only the
// k+2 groups i−k−1..i can be counted, and a ring of k+2 slots holds all the
// state (window below). (i−k−1 is needed: with m = 255 and k·s = W exactly,
// that group still counts at the first instant of sub-window i.)
//
// Accuracy: a request stops counting at most s + 1µs later than an exact
// sliding log would free it (L_j − r ≤ s), and under saturating demand much
// less: capacity frees W after a group's latest request and is taken at once,
// so requests bunch at those instants and L_j is within s/255 of all of them.
// Measured (local_test.go, TestLocalAccuracy): saturating demand gets 99.5-100%
// of N/W; random demand 95.8-99.2% of what an exact sliding log allows of the
// same arrivals. The classic design that counts the last k+1 sub-windows (no
// marks) is just as safe but, under saturation, holds every request for
// W + s, i.e. allows k/(k+1) ≈ 95.5% of N/W (and 95.5-97.8% under the same
// random demand): the one byte per group buys that back.
//
// The same arithmetic is written twice: in Go below (Local) and in Lua in
// ratelimit/redis's allow.lua. Both pass ratelimit/limitertest, and the
// Redis limiter's tests hold the two to the same Result check for check.
const (
	// SubWindows is k, the number of sub-windows a window is counted in.
	SubWindows = 20
	// Span is how many groups before the newest can still count (k+1:
	// groups head−Span..head); the Lua implementation takes it as an
	// argument.
	Span      = SubWindows + 1
	slots     = Span + 1 // groups that can be alive at once
	markSteps = 255      // resolution of a group's latest-request time
)

// Errors returned for limits a check cannot apply. They are programming
// errors in the caller, not outages.
var (
	// ErrMixedBuckets: the limits of one check must share one Bucket (that is
	// what makes the check atomic on one shard and one Redis Cluster slot).
	ErrMixedBuckets = errors.New("ratelimit: the limits of one check name different buckets")
	// ErrDuplicateScope: two limits of one check share Bucket and Scope, so
	// they would share one counter.
	ErrDuplicateScope = errors.New("ratelimit: two limits of one check share a bucket and scope")
	// ErrEmptyBucket: an enforced limit without a Bucket.
	ErrEmptyBucket = errors.New("ratelimit: limit without a bucket")
)

// Enforced reports whether r limits at all: a zero (or negative) N or
// window means "no limit".
func (r Rate) Enforced() bool { return r.N > 0 && r.Window > 0 }

// CheckLimits validates the enforced limits of one check (one Bucket, each
// Scope once, no Bucket missing) and returns how many there are. Every
// Limiter calls it before it counts anything; it does not allocate.
func CheckLimits(limits []Limit) (int, error) {
	n := 0
	var bucket string
	for i := range limits {
		l := &limits[i]
		if !l.Rate.Enforced() {
			continue
		}
		if l.Bucket == "" {
			return 0, fmt.Errorf("%w (limit %q)", ErrEmptyBucket, l.Name)
		}
		if n == 0 {
			bucket = l.Bucket
		} else if l.Bucket != bucket {
			return 0, fmt.Errorf("%w: %q and %q", ErrMixedBuckets, bucket, l.Bucket)
		}
		for j := 0; j < i; j++ {
			if limits[j].Rate.Enforced() && limits[j].Scope == l.Scope {
				return 0, fmt.Errorf("%w: bucket %q scope %q", ErrDuplicateScope, l.Bucket, l.Scope)
			}
		}
		n++
	}
	return n, nil
}

// Micros returns r's window W and its sub-window length s in microseconds,
// as the algorithm counts them (windowMicros, subMicros): what another
// implementation of it needs to count alike.
func (r Rate) Micros() (window, sub int64) {
	w := windowMicros(r.Window)
	return w, subMicros(w)
}

// windowMicros is W in microseconds, rounded up (rounding down would count
// requests for less than W). Windows longer than ParseRate accepts (366
// days) count as 366 days: it keeps every sum far from overflow, in Go and
// in the doubles of the Lua script.
func windowMicros(w time.Duration) int64 {
	w = min(w, maxWindow)
	us := w / time.Microsecond
	if w%time.Microsecond != 0 {
		us++
	}
	return int64(us)
}

// subMicros is the sub-window length s = ceil(W/k) in microseconds, at least 1.
func subMicros(wUs int64) int64 {
	s := wUs / SubWindows
	if wUs%SubWindows != 0 {
		s++
	}
	if s < 1 {
		s = 1
	}
	return s
}

// floorDiv is a/b rounded toward minus infinity (b > 0).
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// markOf is the mark of time t in group j: the offset into the sub-window,
// in 1/255ths of s, rounded up to at least 1. A t before the group's start
// (the clock went back) gets 1.
func markOf(t, j, sub int64) uint8 {
	off := t - j*sub
	if off < 0 {
		return 1
	}
	m := off*markSteps/sub + 1
	if m > markSteps {
		m = markSteps
	}
	return uint8(m)
}

// latest is L_j, the upper bound of the time of group j's latest request.
func latest(j int64, m uint8, sub int64) int64 {
	return j*sub + (int64(m)*sub+markSteps-1)/markSteps
}

// window is the state of one limit: the ring of the k+2 groups that can be
// alive, the newest being head.
type window struct {
	sub   int64 // s in µs; a different s (the rate changed) is carried over (carry)
	head  int64 // index of the newest group
	count [slots]uint32
	mark  [slots]uint8
}

// The compact form of a window. Most windows hold few groups: a key checked a
// few times and then left idle has one or two, and its ring of k+2 groups
// (128 bytes) is mostly zeros. A window with at most compactGroups non-empty
// groups, each counting under 2^countBits, is kept as its head and one word:
// per group 32 bits, its count, its mark and its slot in the ring (which,
// with the head, says which group it is: the ring holds groups head−Span..head).
// A check unpacks it into a ring, counts with the ring, and packs it again
// (Local). Only empty groups are dropped, and an empty group's mark is 0 too
// (add sets both, advance clears both), so unpack(pack(w)) is w: the compact
// form changes what a window costs, never what it decides.
const (
	compactGroups = 2
	countBits     = 19
	markShift     = countBits
	slotShift     = countBits + 8 // 5 bits: slots 0..slots−1
)

// packed is one group of the compact form.
func packed(c uint32, m uint8, r int) uint32 {
	return c | uint32(m)<<markShift | uint32(r)<<slotShift
}

// pack returns the compact form of w's groups, or false when w has more
// groups, or larger ones, than the compact form holds. It looks from the head
// back, so a busy window is turned down after its first few groups.
func (w *window) pack() (groups uint64, ok bool) {
	n := 0
	r := ring(w.head)
	for range slots {
		if c := w.count[r]; c != 0 {
			if n == compactGroups || c >= 1<<countBits {
				return 0, false
			}
			groups |= uint64(packed(c, w.mark[r], r)) << (32 * n)
			n++
		}
		if r--; r < 0 {
			r = slots - 1
		}
	}
	return groups, true
}

// repack is pack for a window unpacked from the compact form groups and
// since then only advanced and added to: its groups can only be those and
// its head's, so only they are read.
func (w *window) repack(groups uint64) (uint64, bool) {
	var rs [compactGroups + 1]int
	rs[0] = ring(w.head)
	n := 1
	for ; groups != 0; groups >>= 32 {
		if r := int(uint32(groups) >> slotShift); r != rs[0] {
			rs[n] = r
			n++
		}
	}
	var out uint64
	k := 0
	for _, r := range rs[:n] {
		c := w.count[r]
		if c == 0 {
			continue
		}
		if k == compactGroups || c >= 1<<countBits {
			return 0, false
		}
		out |= uint64(packed(c, w.mark[r], r)) << (32 * k)
		k++
	}
	return out, true
}

// unpack sets w, whose groups are all empty, to the window of sub-window
// length sub and head whose groups pack returned.
func (w *window) unpack(sub, head int64, groups uint64) {
	w.sub, w.head = sub, head
	for ; groups != 0; groups >>= 32 {
		g := uint32(groups)
		r := g >> slotShift
		w.count[r], w.mark[r] = g&(1<<countBits-1), uint8(g>>markShift)
	}
}

// clear empties the groups that pack or repack returned as groups, which
// were all of w's: every group of w is then empty, as unpack wants it.
func (w *window) clear(groups uint64) {
	for ; groups != 0; groups >>= 32 {
		r := uint32(groups) >> slotShift
		w.count[r], w.mark[r] = 0, 0
	}
}

func ring(j int64) int {
	r := j % slots
	if r < 0 {
		r += slots
	}
	return int(r)
}

// advance moves head to the group of now (never backwards) and returns it.
// The groups it drops are dead at now (see "Memory" above).
func (w *window) advance(now int64) int64 {
	idx := floorDiv(now, w.sub)
	if idx <= w.head {
		return w.head
	}
	if idx-w.head >= slots {
		w.count = [slots]uint32{}
		w.mark = [slots]uint8{}
	} else {
		for j := w.head + 1; j <= idx; j++ {
			r := ring(j)
			w.count[r], w.mark[r] = 0, 0
		}
	}
	w.head = idx
	return idx
}

// carry moves w, counted in sub-windows of another length (its limit's
// window changed), to sub-windows of sub for a window of wUs µs at now. The
// count must not start over: replicas that disagree on a limit's window for
// a while (a reload on its way through the fleet, a key's new rate on its
// way to their caches) would then each restart it at every check, and a
// client whose checks alternate between them would never be limited. So
// every request w still holds that can count under the new window (its
// group's bound L plus wUs is not before now) stays counted, all of them in
// one group whose bound is the latest of their bounds, rounded up: each
// request's bound only moves later, so the proof above holds across the
// change (a request counts under each check's window at least as long as it
// did), and what is dropped could not have counted again. Only capacity is
// lost: the carried requests count until the latest of them ages out. The
// Lua script does the same, at the same point of a check.
func (w *window) carry(sub, wUs, now int64) {
	held, last := int64(0), int64(math.MinInt64)
	if w.sub > 0 {
		w.advance(now)
		for j := w.head - Span; j <= w.head; j++ {
			r := ring(j)
			c := w.count[r]
			if c == 0 {
				continue
			}
			if l := latest(j, w.mark[r], w.sub); l+wUs >= now {
				held += int64(c)
				last = max(last, l)
			}
		}
	}
	*w = window{sub: sub, head: floorDiv(now, sub)}
	if held == 0 {
		return
	}
	// Group g, the first whose end is not before last, with the least mark
	// whose bound is not before last either. last + wUs ≥ now and wUs ≤
	// k·s put g within Span of the head, where the ring holds it; a g after
	// the head (the clock went back) becomes the head, as a later group
	// does in advance.
	g := floorDiv(last-1, sub)
	m := (last - g*sub) * markSteps
	m = (m + sub - 1) / sub
	w.head = max(w.head, g)
	r := ring(g)
	w.count[r], w.mark[r] = uint32(min(held, math.MaxUint32)), uint8(m)
}

// counted is the number of requests the limit holds at now (after advance).
func (w *window) counted(now, wUs int64) int64 {
	var sum int64
	j := w.head - Span
	r := ring(j)
	i := 0
	// The oldest groups may have stopped counting. L_j ≥ j·s+1, so once a
	// group counts by that bound, so do all newer ones.
	for ; i < slots && j*w.sub+1+wUs < now; i++ {
		if c := w.count[r]; c != 0 && latest(j, w.mark[r], w.sub)+wUs >= now {
			sum += int64(c)
		}
		j++
		if r++; r == slots {
			r = 0
		}
	}
	for ; i < slots; i++ {
		sum += int64(w.count[r])
		if r++; r == slots {
			r = 0
		}
	}
	return sum
}

// wait is how long until the limit holds fewer than n requests, when it
// holds held ≥ n now: the oldest counted groups stop counting one by one, at
// L_j + W + 1µs.
func (w *window) wait(now, wUs, n, held int64) int64 {
	need := held - n + 1
	var freed int64
	for j := w.head - Span; j <= w.head; j++ {
		r := ring(j)
		c := w.count[r]
		if c == 0 {
			continue
		}
		end := latest(j, w.mark[r], w.sub) + wUs + 1
		if end <= now {
			continue // not counted
		}
		freed += int64(c)
		if freed >= need {
			return end - now
		}
	}
	return 0 // unreachable while held ≥ n > 0 came from counted
}

// add records one request at now and returns the time until the limit is
// back to zero (all groups dead), i.e. the Reset of an allowed check.
func (w *window) add(now, wUs int64) int64 {
	r := ring(w.head)
	if w.count[r] < math.MaxUint32 {
		w.count[r]++
	}
	if m := markOf(now, w.head, w.sub); m > w.mark[r] {
		w.mark[r] = m
	}
	return latest(w.head, w.mark[r], w.sub) + wUs + 1 - now
}

// idleAt is the time from which the window counts nothing, bounded from above
// without knowing W (k·s ≥ W): used to evict idle buckets.
func (w *window) idleAt() int64 {
	return latest(w.head, markSteps, w.sub) + SubWindows*w.sub + 1
}

// Picker builds a Result from the per-limit outcomes of one check, the same
// way for every Limiter: when allowed, the limit with the least remaining;
// when denied, the exhausted one with the longest wait. Make it with
// NewPicker.
type Picker struct {
	res    Result
	any    bool
	denied bool
}

// NewPicker returns a Picker for one check, allowed until a limit is
// exhausted.
func NewPicker() Picker { return Picker{} }

// Allowed records a limit of an allowed check: its remaining count after
// the request, and the time until it is fully reset. The headers describe the
// one with the least remaining (ties: the longer reset).
func (p *Picker) Allowed(l *Limit, remaining int64, reset time.Duration) {
	if remaining < 0 {
		remaining = 0
	}
	if !p.any || remaining < p.res.Remaining || (remaining == p.res.Remaining && reset > p.res.Reset) {
		p.res.Limit, p.res.Remaining, p.res.Reset = *l, remaining, reset
		p.any = true
	}
}

// Exhausted records an exhausted limit of a denied check and how long
// until it would allow this request. The longest wait is the Retry-After.
func (p *Picker) Exhausted(l *Limit, wait time.Duration) {
	if !p.denied || wait > p.res.RetryAfter {
		p.res.Limit, p.res.Remaining, p.res.Reset, p.res.RetryAfter = *l, 0, wait, wait
	}
	p.denied = true
}

// Denied reports whether a limit was exhausted.
func (p *Picker) Denied() bool { return p.denied }

// Result is the outcome of the check.
func (p *Picker) Result() Result {
	p.res.Allowed = !p.denied
	return p.res
}

// FromMicros converts µs to a Duration, saturating (a clock that jumped
// back centuries can make a wait that long).
func FromMicros(us int64) time.Duration {
	if us > math.MaxInt64/int64(time.Microsecond) {
		return math.MaxInt64
	}
	return time.Duration(max(us, 0)) * time.Microsecond
}
