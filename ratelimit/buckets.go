package ratelimit

import (
	"hash/maphash"
	"math"
	"math/rand/v2"
)

// bucketTable holds the buckets of one shard of a Local without a pointer per
// bucket, so that the collector has nothing to walk however many there are:
//
//   - records: one fixed-size record per bucket, its name inline (key ids
//     fit) and the window of its scope "" in the record's 24 bytes;
//   - index: an open-addressed hash table of record numbers, each cell
//     tagged with 8 bits of the name's hash so that a probe rarely reads a
//     record it does not want; a name is found by comparing the name itself,
//     so two names whose hashes collide never share a count;
//   - windows: the rings of windows that do not fit the compact form (see
//     window.go) or are busy, by number;
//   - scoped: all the windows of a bucket that has a scope other than "",
//     as a list per bucket, each naming its scope by number (scopes).
//
// Records, rings and list entries live in chunks that never move, so a
// pointer to one stays good through a check. Names longer than a record holds
// (never a key id) and the scopes' strings are the only pointers, in maps.
//
// An idle bucket (a key id, one limit, compact) costs its 48-byte record and
// its index cell: 4 bytes at a load between 3/8 and 3/4.
type bucketTable struct {
	seed    maphash.Seed // the Local's, to find a record's index cell again
	index   []uint32     // tag<<slotBits | record+1; 0 is empty
	n       int          // buckets held
	records pool[record]
	windows pool[window]
	scoped  pool[scopedWindow]
	long    map[uint32]string // names longer than recordName, by record
	scopes  scopeNames
	// rings are where a check unpacks compact windows, here rather than
	// on its stack, and their groups are empty between checks: a check
	// sets and clears only the few groups a compact window has.
	rings [4]window
}

const (
	slotBits = 24
	slotMask = 1<<slotBits - 1
	// maxSlots bounds the buckets of a shard: a cell holds record+1 in
	// slotBits bits.
	maxSlots   = slotMask - 1
	recordName = 24 // a key id: "key_" and 20 base62 digits
	longName   = 31 // the name length of a record whose name is in long
)

// record is one bucket: its name and its first window.
type record struct {
	name [recordName]byte
	// win is the window of scope "", or (formList) the number of the first
	// of the bucket's scoped windows. Its meta also holds the name's length.
	win slotWindow
}

// scopedWindow is one window of a bucket that has a scope other than "".
type scopedWindow struct {
	win   slotWindow
	scope uint32 // in scopes
	next  uint32 // the bucket's next scoped window + 1: 0 (next−1 is endOfList) ends the list
}

// endOfList is the first of an empty list, and what next−1 reads at the end.
const endOfList = math.MaxUint32

// slotWindow is where a window is kept: compact (its head, its groups and its
// sub-window length), or its number in windows, or nowhere yet.
type slotWindow struct {
	head int64
	data uint64 // formCompact: the groups; formFull: the ring; formList: the list
	// meta: the sub-window length of a compact window in the low subBits,
	// the form above it, and (in a record) the name's length above that.
	meta uint64
}

const (
	formNone    = 0 // a window not counted yet
	formCompact = 1
	formFull    = 2
	formList    = 3 // a record's windows are in scoped

	// subBits holds any sub-window length: ceil(366 days / SubWindows) in
	// µs is under 2^41.
	subBits   = 41
	formShift = subBits
	nameShift = subBits + 2
	keepMask  = 1<<64 - 1<<nameShift // the meta bits a window leaves alone
)

func (sw *slotWindow) form() uint64  { return sw.meta >> formShift & 3 }
func (sw *slotWindow) sub() int64    { return int64(sw.meta & (1<<subBits - 1)) }
func (sw *slotWindow) nameLen() int  { return int(sw.meta >> nameShift & 31) }
func (sw *slotWindow) ring() uint32  { return uint32(sw.data) }
func (sw *slotWindow) first() uint32 { return uint32(sw.data) }

// set keeps form, sub, head and data, and leaves the name's length alone.
func (sw *slotWindow) set(form uint64, sub, head int64, data uint64) {
	sw.meta = sw.meta&keepMask | form<<formShift | uint64(sub)
	sw.head, sw.data = head, data
}

// find returns the record of name, whose hash is h.
func (t *bucketTable) find(name string, h uint64) (uint32, bool) {
	if t.n == 0 {
		return 0, false
	}
	mask := uint64(len(t.index) - 1)
	tag := tagOf(h)
	for i := homeOf(h, mask); ; i = (i + 1) & mask {
		c := t.index[i]
		if c == 0 {
			return 0, false
		}
		if c&^slotMask == tag && t.nameIs(c&slotMask-1, name) {
			return c&slotMask - 1, true
		}
	}
}

// The low bits of a hash pick the shard; the index uses the bits above them,
// and tags cells with the top 8.
func homeOf(h, mask uint64) uint64 { return h >> 6 & mask }
func tagOf(h uint64) uint32        { return uint32(h>>56) << slotBits }

func (t *bucketTable) nameIs(rec uint32, name string) bool {
	r := t.records.at(rec)
	n := r.win.nameLen()
	if n == longName {
		return t.long[rec] == name
	}
	return n == len(name) && string(r.name[:n]) == name
}

// hashOf is the hash of rec's name, as find was given it.
func (t *bucketTable) hashOf(rec uint32) uint64 {
	r := t.records.at(rec)
	n := r.win.nameLen()
	if n == longName {
		return maphash.String(t.seed, t.long[rec])
	}
	return maphash.Bytes(t.seed, r.name[:n])
}

// insert adds a bucket for name (not held), whose hash is h, and returns it.
func (t *bucketTable) insert(name string, h uint64) uint32 {
	if (t.n+1)*4 > len(t.index)*3 {
		t.grow()
	}
	rec := t.records.alloc()
	r := t.records.at(rec)
	*r = record{}
	if len(name) <= recordName {
		copy(r.name[:], name)
		r.win.meta = uint64(len(name)) << nameShift
	} else {
		if t.long == nil {
			t.long = make(map[uint32]string)
		}
		t.long[rec] = name
		r.win.meta = longName << nameShift
	}
	t.place(tagOf(h)|(rec+1), h)
	t.n++
	return rec
}

// place puts cell c, of hash h, in the first empty cell from its home.
func (t *bucketTable) place(c uint32, h uint64) {
	mask := uint64(len(t.index) - 1)
	i := homeOf(h, mask)
	for t.index[i] != 0 {
		i = (i + 1) & mask
	}
	t.index[i] = c
}

// grow doubles the index (keeping its load under 3/4, so every probe meets
// an empty cell soon).
func (t *bucketTable) grow() {
	old := t.index
	t.index = make([]uint32, max(2*len(old), 16))
	for _, c := range old {
		if c != 0 {
			t.place(c, t.hashOf(c&slotMask-1))
		}
	}
}

// remove drops the bucket rec and everything it holds.
func (t *bucketTable) remove(rec uint32) {
	h := t.hashOf(rec)
	mask := uint64(len(t.index) - 1)
	i := homeOf(h, mask)
	for t.index[i]&slotMask != rec+1 {
		i = (i + 1) & mask
	}
	t.unplace(i)

	r := t.records.at(rec)
	if r.win.form() == formList {
		for e := r.win.first(); e != endOfList; {
			sw := t.scoped.at(e)
			t.drop(&sw.win)
			t.scopes.unref(sw.scope)
			t.scoped.release(e)
			e = sw.next - 1
		}
	} else {
		t.drop(&r.win)
	}
	if r.win.nameLen() == longName {
		delete(t.long, rec)
	}
	t.records.release(rec)
	t.n--
}

// unplace empties cell i and moves back the cells after it that an empty
// cell at i would hide from their home (deletion without tombstones).
func (t *bucketTable) unplace(i uint64) {
	mask := uint64(len(t.index) - 1)
	for {
		t.index[i] = 0
		j := i
		for {
			j = (j + 1) & mask
			c := t.index[j]
			if c == 0 {
				return
			}
			// c may fill i unless its home lies cyclically in (i, j].
			home := homeOf(t.hashOf(c&slotMask-1), mask)
			if i < j && (home <= i || home > j) || i > j && home <= i && home > j {
				t.index[i] = c
				i = j
				break
			}
		}
	}
}

// window returns where the bucket r keeps the window of scope, making one
// when it has none. Scope "" lives in the record until the bucket has
// another; then all of them are in its list.
func (t *bucketTable) window(r *record, scope string) *slotWindow {
	if r.win.form() != formList {
		if scope == "" {
			return &r.win
		}
		t.list(r)
	}
	var last *scopedWindow
	for e := r.win.first(); e != endOfList; e = last.next - 1 {
		last = t.scoped.at(e)
		if t.scopes.is(last.scope, scope) {
			return &last.win
		}
	}
	// A new scope goes last: "" stays first, found in one step.
	e := t.scoped.alloc()
	*t.scoped.at(e) = scopedWindow{scope: t.scopes.ref(scope)}
	if last == nil {
		r.win.set(formList, 0, 0, uint64(e))
	} else {
		last.next = e + 1
	}
	return &t.scoped.at(e).win
}

// list moves the bucket r's window of "" (if any) into a list, which a
// window of another scope can join.
func (t *bucketTable) list(r *record) {
	switch r.win.form() {
	case formList:
	case formNone:
		r.win.set(formList, 0, 0, endOfList)
	default:
		e := t.scoped.alloc()
		*t.scoped.at(e) = scopedWindow{win: slotWindow{head: r.win.head, data: r.win.data, meta: r.win.meta &^ keepMask}}
		r.win.set(formList, 0, 0, uint64(e))
	}
}

// open returns the ring of the window kept at sw, advanced to now, for a
// check with sub-window length sub: the ring in windows, or a compact window
// unpacked into scratch, one of t.rings (closeAll packs it again and leaves
// scratch empty). With no scratch, the
// window moves to windows for good. A window counted with another sub-window
// length (the rate's window changed) is carried over to sub (window.carry):
// the check is of a window of wUs µs.
func (t *bucketTable) open(sw *slotWindow, scratch *window, sub, wUs, now int64) *window {
	var w *window
	switch {
	case sw.form() == formFull:
		w = t.windows.at(sw.ring())
	case scratch != nil:
		w = scratch
		w.unpack(sw.sub(), sw.head, sw.data)
	default:
		i := t.windows.alloc()
		w = t.windows.at(i)
		*w = window{}
		w.unpack(sw.sub(), sw.head, sw.data)
		sw.set(formFull, 0, 0, uint64(i))
	}
	if w.sub != sub {
		w.carry(sub, wUs, now)
		if w == scratch {
			// closeAll repacks scratch reading only the groups sw
			// holds and the head's: sw must hold the carried group.
			if groups, ok := w.pack(); ok {
				sw.set(formCompact, sub, w.head, groups)
			} else {
				t.ring(sw, w)
				w = t.windows.at(sw.ring())
			}
		}
	}
	w.advance(now)
	return w
}

// closeAll keeps each window ws[i] that open returned for at[i] in the
// smaller form it fits: compact when it can be, else a ring in windows. A
// busy window (busyGroup requests in its newest group) stays a ring, so that
// the checks of a busy bucket neither unpack nor pack it; a later check that
// finds it quieter packs it.
func (t *bucketTable) closeAll(at []*slotWindow, ws []*window) {
	for i, sw := range at {
		w := ws[i]
		ringed := sw.form() == formFull // else w is scratch
		switch {
		case w.count[ring(w.head)] >= busyGroup:
			if !ringed {
				t.ring(sw, w)
			}
		case ringed:
			if groups, ok := w.pack(); ok {
				sub, head := w.sub, w.head
				t.windows.release(sw.ring())
				sw.set(formCompact, sub, head, groups)
			}
		default:
			if groups, ok := w.repack(sw.data); ok {
				sw.set(formCompact, w.sub, w.head, groups)
				w.clear(groups)
			} else {
				t.ring(sw, w)
			}
		}
	}
}

// busyGroup is how many requests in one group make a window busy.
const busyGroup = 16

// ring keeps the window at sw, unpacked in scratch w, as a ring in windows,
// and leaves scratch empty.
func (t *bucketTable) ring(sw *slotWindow, w *window) {
	r := t.windows.alloc()
	*t.windows.at(r) = *w
	sw.set(formFull, 0, 0, uint64(r))
	*w = window{}
}

// drop frees what the window at sw holds outside it.
func (t *bucketTable) drop(sw *slotWindow) {
	if sw.form() == formFull {
		t.windows.release(sw.ring())
	}
}

// idleAt is when every window of the bucket rec counts nothing any more.
func (t *bucketTable) idleAt(rec uint32) int64 {
	r := t.records.at(rec)
	if r.win.form() != formList {
		return t.windowIdleAt(&r.win)
	}
	at := int64(math.MinInt64)
	for e := r.win.first(); e != endOfList; e = t.scoped.at(e).next - 1 {
		at = max(at, t.windowIdleAt(&t.scoped.at(e).win))
	}
	return at
}

func (t *bucketTable) windowIdleAt(sw *slotWindow) int64 {
	switch sw.form() {
	case formFull:
		return t.windows.at(sw.ring()).idleAt()
	case formCompact:
		w := window{sub: sw.sub(), head: sw.head}
		return w.idleAt()
	}
	return math.MinInt64
}

// evict makes room for one bucket and returns how many it dropped: it
// samples a few buckets (from a random cell of the index), drops every idle
// one among them, and if none was idle, drops the one that turns idle soonest
// (roughly the least recently used).
func (t *bucketTable) evict(now int64) uint64 {
	const sample = 8
	var drop [sample]uint32
	dropped, seen := 0, 0
	var oldest uint32
	var oldestAt int64
	haveOldest := false
	mask := uint64(len(t.index) - 1)
	start := rand.Uint64()
	for i := uint64(0); i <= mask && seen < sample; i++ {
		c := t.index[(start+i)&mask]
		if c == 0 {
			continue
		}
		seen++
		rec := c&slotMask - 1
		if at := t.idleAt(rec); at <= now {
			drop[dropped] = rec
			dropped++
		} else if !haveOldest || at < oldestAt {
			oldest, oldestAt, haveOldest = rec, at, true
		}
	}
	if dropped == 0 && haveOldest {
		drop[0] = oldest
		dropped = 1
	}
	// Removing moves cells of the index: only once the sampling is done.
	for _, rec := range drop[:dropped] {
		t.remove(rec)
	}
	return uint64(dropped)
}

// pool hands out numbered T's in chunks that never move, and takes them back
// for reuse. What alloc returns holds what it last held: callers set it.
type pool[T any] struct {
	chunks []*[poolChunk]T
	n      uint32 // numbers handed out so far
	free   []uint32
}

const poolChunk = 64

func (p *pool[T]) at(i uint32) *T { return &p.chunks[i/poolChunk][i%poolChunk] }

func (p *pool[T]) alloc() uint32 {
	if n := len(p.free); n > 0 {
		i := p.free[n-1]
		p.free = p.free[:n-1]
		return i
	}
	if p.n%poolChunk == 0 {
		p.chunks = append(p.chunks, new([poolChunk]T))
	}
	p.n++
	return p.n - 1
}

func (p *pool[T]) release(i uint32) { p.free = append(p.free, i) }

// scopeNames numbers the scopes a shard's buckets use, so that a scoped
// window names its scope without a pointer. Number 0 is ""; a number is
// reused once no window names it.
type scopeNames struct {
	ids   map[string]uint32
	names []string // by number, from 1 ("" is 0)
	refs  []uint32
	free  []uint32
}

func (s *scopeNames) is(id uint32, scope string) bool {
	if id == 0 {
		return scope == ""
	}
	return s.names[id-1] == scope
}

// ref returns scope's number, for one more window that names it.
func (s *scopeNames) ref(scope string) uint32 {
	if scope == "" {
		return 0
	}
	id, ok := s.ids[scope]
	if !ok {
		if s.ids == nil {
			s.ids = make(map[string]uint32)
		}
		if n := len(s.free); n > 0 {
			id = s.free[n-1]
			s.free = s.free[:n-1]
			s.names[id-1] = scope
		} else {
			s.names = append(s.names, scope)
			s.refs = append(s.refs, 0)
			id = uint32(len(s.names))
		}
		s.ids[scope] = id
	}
	s.refs[id-1]++
	return id
}

// unref forgets one window that named scope number id.
func (s *scopeNames) unref(id uint32) {
	if id == 0 {
		return
	}
	if s.refs[id-1]--; s.refs[id-1] == 0 {
		delete(s.ids, s.names[id-1])
		s.names[id-1] = ""
		s.free = append(s.free, id)
	}
}
