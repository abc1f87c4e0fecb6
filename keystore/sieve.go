package keystore

import "sync"

// sieve is a map from Hash to V of at most size entries, safe for concurrent
// use, that evicts by SIEVE (Zhang et al., NSDI '24) rather than least
// recently used: entries are kept in the order they were added, a use only
// marks its entry visited, and when room is needed a hand walks from the
// oldest entry toward the newest, clearing marks, and evicts the first entry
// it finds unmarked; it stays there for the next eviction.
//
// What it changes against LRU in front of a key store:
//   - A hit changes no links: it sets one bit, where LRU moved the entry to
//     the front, writing its two neighbours' slots as well. Measured, a hit
//     costs the same either way (BenchmarkCacheHit, BenchmarkCacheHitFullCache
//     within their noise).
//   - Keys used once (a scan, a burst of new keys) leave before keys used
//     again, which LRU lets them push out. On 1M keys behind a 100k cache
//     with Zipf(1.1) traffic and no TTL, simulated, 88.6% of lookups hit
//     with LRU and 90.2% with SIEVE (Zipf(1.01): 79.2% and 82.5%). With the
//     30 s TTL of the load tool's scale run the two hit alike (85.2% and
//     85.1% measured): there the misses are keys used less than once per
//     TTL, which no eviction keeps; SIEVE counts where the cache's size is
//     what runs out.
//
// A walk is short: 0.2 slots on average and 30 at most in that simulation.
// It is cut off at sieveMaxWalk slots, though, and the entry under the hand
// evicted whatever its mark: when every entry is in use (a working set as
// large as the cache, new keys arriving now and then), the walk would
// otherwise go round the whole cache, a cache miss per slot, under the lock
// every check takes (2.5–3.9 ms for 100k entries, measured). When that many
// entries in a row were used since the hand last passed, any of them is as
// good a choice as the next.
//
// It is laid out for the garbage collector: the index is a map[Hash]int32,
// the order is a list of slot numbers and the marks are a bitmap, so none of
// them holds a pointer and the collector skips them without reading them.
// All entries are values in a few large chunks, each walked in one sweep
// when V holds pointers. With 100k cached keys, hashicorp/golang-lru (a map
// of pointers, a list element per entry) and an entry allocated per key
// were 300k of the 900k objects every collection marked.
//
// The slots are in chunks of sieveChunk, added as the map fills: one array
// grown by append was copied whole, under the lock, each time it doubled (a
// 30 MB copy, and every check waiting on it, while a large cache filled).
type sieve[V any] struct {
	mu    sync.Mutex
	size  int
	index map[Hash]int32
	// chunks hold the slots; used of them have held an entry (the rest
	// of the last chunk is unused), and then slots are reused.
	chunks [][]sieveSlot[V]
	used   int32
	// visited has bit i set when slot i was used since the hand last
	// passed it (or since it was added, for a known hash).
	visited []uint64
	// head and tail are the newest and oldest entries, linked by next
	// (toward the tail) and prev; hand is where the next eviction starts
	// looking (none: at the tail); free is the first of the slots that
	// remove emptied, linked by next. none is -1.
	head, tail, hand, free int32
}

type sieveSlot[V any] struct {
	hash       Hash
	val        V
	prev, next int32
}

const none int32 = -1

// sieveChunk is the number of slots in a chunk: 320 KB of cache entries.
const sieveChunk = 1024

// sieveMaxWalk bounds an eviction's walk (see sieve).
const sieveMaxWalk = 64

// slot returns slot i.
func (s *sieve[V]) slot(i int32) *sieveSlot[V] { return &s.chunks[i/sieveChunk][i%sieveChunk] }

func (s *sieve[V]) mark(i int32)        { s.visited[i/64] |= 1 << (i % 64) }
func (s *sieve[V]) unmark(i int32)      { s.visited[i/64] &^= 1 << (i % 64) }
func (s *sieve[V]) marked(i int32) bool { return s.visited[i/64]&(1<<(i%64)) != 0 }

// newSieve returns an empty sieve of at most size (≥ 1) entries.
func newSieve[V any](size int) *sieve[V] {
	return &sieve[V]{size: size, index: map[Hash]int32{}, head: none, tail: none, hand: none, free: none}
}

// get returns the value of h and marks it used.
func (s *sieve[V]) get(h Hash) (V, bool) { return s.find(h, true) }

// peek returns the value of h without marking it used.
func (s *sieve[V]) peek(h Hash) (V, bool) { return s.find(h, false) }

func (s *sieve[V]) find(h Hash, use bool) (V, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[h]
	if !ok {
		var zero V
		return zero, false
	}
	if use {
		s.mark(i)
	}
	return s.slot(i).val, true
}

// contains reports whether h has a value, without marking it used.
func (s *sieve[V]) contains(h Hash) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.index[h]
	return ok
}

// add sets the value of h. A known hash keeps its place and is marked used;
// a new one is the newest entry, unmarked, and evicts one when the sieve is
// full.
func (s *sieve[V]) add(h Hash, v V) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i, ok := s.index[h]; ok {
		s.slot(i).val = v
		s.mark(i)
		return
	}
	var i int32
	switch {
	case s.free != none:
		i = s.free
		s.free = s.slot(i).next
	case int(s.used) < s.size:
		if int(s.used) == len(s.chunks)*sieveChunk {
			n := min(sieveChunk, s.size-int(s.used))
			s.chunks = append(s.chunks, make([]sieveSlot[V], n))
			s.visited = append(s.visited, make([]uint64, (n+63)/64)...)
		}
		i = s.used
		s.used++
	default:
		i = s.evict()
	}
	s.slot(i).hash, s.slot(i).val = h, v
	s.unmark(i)
	s.index[h] = i
	s.pushFront(i)
}

// evict empties the first unmarked slot from the hand toward the head,
// unmarking those it passes, going round from the tail when it reaches the
// head, and returns it; or, after sieveMaxWalk marked slots, the next one.
// The sieve is full, so there is one.
func (s *sieve[V]) evict() int32 {
	i := s.hand
	if i == none {
		i = s.tail
	}
	for walked := 0; s.marked(i) && walked < sieveMaxWalk; walked++ {
		s.unmark(i)
		if i = s.slot(i).prev; i == none {
			i = s.tail
		}
	}
	s.hand = s.slot(i).prev
	s.unlink(i)
	delete(s.index, s.slot(i).hash)
	return i
}

// update calls f with the value of h, under the sieve's lock, without
// marking it used; it reports whether h had a value.
func (s *sieve[V]) update(h Hash, f func(*V)) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[h]
	if ok {
		f(&s.slot(i).val)
	}
	return ok
}

// remove forgets h.
func (s *sieve[V]) remove(h Hash) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i, ok := s.index[h]
	if !ok {
		return
	}
	if s.hand == i {
		s.hand = s.slot(i).prev
	}
	s.unlink(i)
	s.unmark(i)
	delete(s.index, h)
	*s.slot(i) = sieveSlot[V]{next: s.free} // drops what val pointed to
	s.free = i
}

// purge forgets everything.
func (s *sieve[V]) purge() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.index)
	for _, c := range s.chunks {
		clear(c)
	}
	clear(s.visited)
	s.used = 0
	s.head, s.tail, s.hand, s.free = none, none, none, none
}

// len returns the number of entries.
func (s *sieve[V]) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.index)
}

func (s *sieve[V]) unlink(i int32) {
	sl := s.slot(i)
	if sl.prev != none {
		s.slot(sl.prev).next = sl.next
	} else {
		s.head = sl.next
	}
	if sl.next != none {
		s.slot(sl.next).prev = sl.prev
	} else {
		s.tail = sl.prev
	}
}

func (s *sieve[V]) pushFront(i int32) {
	sl := s.slot(i)
	sl.prev, sl.next = none, s.head
	if s.head != none {
		s.slot(s.head).prev = i
	}
	s.head = i
	if s.tail == none {
		s.tail = i
	}
}
