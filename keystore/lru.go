package keystore

import "sync"

// lru is a least-recently-used map from Hash to V of at most size entries,
// safe for concurrent use, laid out for the garbage collector: the index is
// a map[Hash]int32 and the recency list is made of slot numbers, so neither
// holds a pointer and the collector skips both without reading them. All
// entries are values in one array, walked in one sweep when V holds
// pointers. With 100k cached keys, hashicorp/golang-lru (a map of pointers,
// a list element per entry) and an entry allocated per key were 300k of the
// 900k objects every collection marked.
type lru[V any] struct {
	mu    sync.Mutex
	size  int
	index map[Hash]int32
	slots []lruSlot[V] // grows up to size, then slots are reused
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
	return l.slots[i].val, true
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
		l.slots[i].val = v
		l.unlink(i)
		l.pushFront(i)
		return
	}
	var i int32
	switch {
	case l.free != none:
		i = l.free
		l.free = l.slots[i].next
	case len(l.slots) < l.size:
		l.slots = append(l.slots, lruSlot[V]{})
		i = int32(len(l.slots) - 1)
	default:
		i = l.tail
		l.unlink(i)
		delete(l.index, l.slots[i].hash)
	}
	l.slots[i].hash, l.slots[i].val = h, v
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
		f(&l.slots[i].val)
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
	l.slots[i] = lruSlot[V]{next: l.free} // drops what val pointed to
	l.free = i
}

// purge forgets everything.
func (l *lru[V]) purge() {
	l.mu.Lock()
	defer l.mu.Unlock()
	clear(l.index)
	clear(l.slots)
	l.slots = l.slots[:0]
	l.head, l.tail, l.free = none, none, none
}

// len returns the number of entries.
func (l *lru[V]) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.index)
}

func (l *lru[V]) unlink(i int32) {
	s := &l.slots[i]
	if s.prev != none {
		l.slots[s.prev].next = s.next
	} else {
		l.head = s.next
	}
	if s.next != none {
		l.slots[s.next].prev = s.prev
	} else {
		l.tail = s.prev
	}
}

func (l *lru[V]) pushFront(i int32) {
	s := &l.slots[i]
	s.prev, s.next = none, l.head
	if l.head != none {
		l.slots[l.head].prev = i
	}
	l.head = i
	if l.tail == none {
		l.tail = i
	}
}
