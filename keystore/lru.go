package keystore

import "sync"

// lru is a least-recently-used map from Hash to V of at most size entries,
// safe for concurrent use, laid out for the garbage collector: the index is
// a map[Hash]int32 and the recency list is made of slot numbers, so neither
// holds a pointer and the collector skips both without reading them. All
// entries are values in a few large chunks, each walked in one sweep when V
// holds pointers. With 100k cached keys, hashicorp/golang-lru (a map of pointers,
// a list element per entry) and an entry allocated per key were 300k of the
// 900k objects every collection marked.
//
// The slots are in chunks of lruChunk, added as the lru fills: one array
// grown by append was copied whole, under the lock, each time it doubled (a
// 30 MB copy, and every check waiting on it, while a large cache filled).
type lru[V any] struct {
	mu    sync.Mutex
	size  int
	index map[Hash]int32
	// chunks hold the slots; used of them have held an entry (the rest
	// of the last chunk is unused), and then slots are reused.
	chunks [][]lruSlot[V]
	used   int32
	// head and tail are the most and least recently used slots, free the
	// first of the slots that remove emptied, linked by next; none is -1.
	head, tail, free int32
}

type lruSlot[V any] struct {
	hash       Hash
	val        V
	prev, next int32
}

const none int32 = -1

// lruChunk is the number of slots in a chunk: 320 KB of cache entries.
const lruChunk = 1024

// slot returns slot i.
func (l *lru[V]) slot(i int32) *lruSlot[V] { return &l.chunks[i/lruChunk][i%lruChunk] }

// newLRU returns an empty lru of at most size (≥ 1) entries.
func newLRU[V any](size int) *lru[V] {
	return &lru[V]{size: size, index: map[Hash]int32{}, head: none, tail: none, free: none}
}

// get returns the value of h and marks it the most recently used.
func (l *lru[V]) get(h Hash) (V, bool) { return l.find(h, true) }

// peek returns the value of h without marking it used.
func (l *lru[V]) peek(h Hash) (V, bool) { return l.find(h, false) }

func (l *lru[V]) find(h Hash, use bool) (V, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.index[h]
	if !ok {
		var zero V
		return zero, false
	}
	if use {
		l.unlink(i)
		l.pushFront(i)
	}
	return l.slot(i).val, true
}

// contains reports whether h has a value, without marking it used.
func (l *lru[V]) contains(h Hash) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.index[h]
	return ok
}

// add sets the value of h and marks it the most recently used, evicting the
// least recently used entry when the lru is full.
func (l *lru[V]) add(h Hash, v V) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if i, ok := l.index[h]; ok {
		l.slot(i).val = v
		l.unlink(i)
		l.pushFront(i)
		return
	}
	var i int32
	switch {
	case l.free != none:
		i = l.free
		l.free = l.slot(i).next
	case int(l.used) < l.size:
		if int(l.used) == len(l.chunks)*lruChunk {
			l.chunks = append(l.chunks, make([]lruSlot[V], min(lruChunk, l.size-int(l.used))))
		}
		i = l.used
		l.used++
	default:
		i = l.tail
		l.unlink(i)
		delete(l.index, l.slot(i).hash)
	}
	l.slot(i).hash, l.slot(i).val = h, v
	l.index[h] = i
	l.pushFront(i)
}

// update calls f with the value of h, under the lru's lock, without marking
// it used; it reports whether h had a value.
func (l *lru[V]) update(h Hash, f func(*V)) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.index[h]
	if ok {
		f(&l.slot(i).val)
	}
	return ok
}

// remove forgets h.
func (l *lru[V]) remove(h Hash) {
	l.mu.Lock()
	defer l.mu.Unlock()
	i, ok := l.index[h]
	if !ok {
		return
	}
	l.unlink(i)
	delete(l.index, h)
	*l.slot(i) = lruSlot[V]{next: l.free} // drops what val pointed to
	l.free = i
}

// purge forgets everything.
func (l *lru[V]) purge() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.index)
	for _, c := range l.chunks {
		clear(c)
	}
	l.used = 0
	l.head, l.tail, l.free = none, none, none
}

// len returns the number of entries.
func (l *lru[V]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.index)
}

func (l *lru[V]) unlink(i int32) {
	s := l.slot(i)
	if s.prev != none {
		l.slot(s.prev).next = s.next
	} else {
		l.head = s.next
	}
	if s.next != none {
		l.slot(s.next).prev = s.prev
	} else {
		l.tail = s.prev
	}
}

func (l *lru[V]) pushFront(i int32) {
	s := l.slot(i)
	s.prev, s.next = none, l.head
	if l.head != none {
		l.slot(l.head).prev = i
	}
	l.head = i
	if l.tail == none {
		l.tail = i
	}
}
