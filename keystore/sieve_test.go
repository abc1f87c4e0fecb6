package keystore

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func hashOf(i byte) Hash { return Hash{i, 1} }

// keys returns the sieve's hashes from the newest to the oldest.
func (l *sieve[V]) keys() []Hash {
	l.mu.Lock()
	defer l.mu.Unlock()
	var hs []Hash
	for i := l.head; i != none; i = l.slot(i).next {
		hs = append(hs, l.slot(i).hash)
	}
	return hs
}

func TestTheSieveEvictsTheOldestUnusedEntry(t *testing.T) {
	l := newSieve[int](3)
	for i := range byte(3) {
		l.add(hashOf(i), int(i))
	}
	_, ok := l.get(hashOf(0)) // 0 is the oldest, but used: 1 goes
	require.True(t, ok)
	l.add(hashOf(3), 3)
	assert.Equal(t, []Hash{hashOf(3), hashOf(2), hashOf(0)}, l.keys(), "a use moves nothing")
	assert.False(t, l.contains(hashOf(1)))
	assert.Equal(t, 3, l.len())
	// The hand stayed where 1 was: 2 is next, unused, and goes, though 0
	// (its mark cleared as the hand passed) is older.
	l.add(hashOf(4), 4)
	assert.Equal(t, []Hash{hashOf(4), hashOf(3), hashOf(0)}, l.keys())
	// Then 3, the next newer: the hand comes back to 0 only after going
	// past the newest.
	l.add(hashOf(5), 5)
	assert.Equal(t, []Hash{hashOf(5), hashOf(4), hashOf(0)}, l.keys())
	l.add(hashOf(6), 6)
	l.add(hashOf(7), 7)
	assert.Equal(t, []Hash{hashOf(7), hashOf(6), hashOf(0)}, l.keys(), "4, then 5: 0 waits for the hand to come round")
	// Once the entries newer than the hand are used, it passes them and
	// comes round to the oldest.
	_, _ = l.get(hashOf(6))
	_, _ = l.get(hashOf(7))
	l.add(hashOf(8), 8)
	assert.Equal(t, []Hash{hashOf(8), hashOf(7), hashOf(6)}, l.keys())
}

// When every entry was used since the hand last passed, the hand goes
// round once, clearing them all, and evicts where it started.
func TestAWholeSieveUsedEvictsAfterOneRound(t *testing.T) {
	l := newSieve[int](4)
	for i := range byte(4) {
		l.add(hashOf(i), int(i))
	}
	for i := range byte(4) {
		_, ok := l.get(hashOf(i))
		require.True(t, ok)
	}
	l.add(hashOf(9), 9)
	assert.Equal(t, []Hash{hashOf(9), hashOf(3), hashOf(2), hashOf(1)}, l.keys())
	for i := range byte(4) {
		if i != 0 {
			assert.False(t, l.marked(l.index[hashOf(i)]), "the round cleared %d's mark", i)
		}
	}
}

// The walk stops after sieveMaxWalk marked entries and evicts the next,
// marked or not: going round a whole cache in use, a cache miss a slot,
// would hold the lock every check takes for milliseconds.
func TestAnEvictionWalksABoundedWay(t *testing.T) {
	const size = 10 * sieveMaxWalk
	l := newSieve[int](size)
	hash := func(i int) Hash { return Hash{byte(i), byte(i >> 8), 3} }
	for i := range size {
		l.add(hash(i), i)
	}
	for i := range size {
		_, ok := l.get(hash(i))
		require.True(t, ok)
	}
	l.add(hash(size), size)
	assert.False(t, l.contains(hash(sieveMaxWalk)), "the entry after sieveMaxWalk marked ones goes")
	for i := range size {
		if i == sieveMaxWalk {
			continue
		}
		require.True(t, l.contains(hash(i)), "%d", i)
		assert.Equal(t, i > sieveMaxWalk, l.marked(l.index[hash(i)]), "%d: only the entries walked past lose their mark", i)
	}
}

// Entries used again outlast a burst of entries used once, which a
// least-recently-used order would let push them out.
func TestEntriesUsedAgainOutlastABurstOfNewOnes(t *testing.T) {
	l := newSieve[int](10)
	hot := func(i int) Hash { return Hash{byte(i), 1} }
	cold := func(i int) Hash { return Hash{byte(i), 2} }
	for i := range 5 {
		l.add(hot(i), i)
	}
	for round := range 20 {
		for i := range 5 {
			_, ok := l.get(hot(i))
			require.True(t, ok, "round %d: hot %d evicted", round, i)
		}
		for i := range 10 { // twice the room the hot ones leave
			l.add(cold(round*10+i), i)
		}
	}
	assert.Equal(t, 10, l.len())
}

// A removed entry under the hand moves the hand on, to the next newer.
func TestRemovingTheEntryUnderTheHand(t *testing.T) {
	l := newSieve[int](3)
	for i := range byte(3) {
		l.add(hashOf(i), int(i))
	}
	_, _ = l.get(hashOf(0))
	l.add(hashOf(3), 3) // evicts 1; the hand is on 2
	require.Equal(t, l.index[hashOf(2)], l.hand)
	l.remove(hashOf(2))
	assert.Equal(t, l.index[hashOf(3)], l.hand)
	l.add(hashOf(4), 4) // room: the removed slot
	_, _ = l.get(hashOf(3))
	l.add(hashOf(5), 5) // the hand passes 3, marked, to 4, newer and not
	assert.Equal(t, []Hash{hashOf(5), hashOf(3), hashOf(0)}, l.keys())
}

func TestPeekAndUpdateDoNotMarkAnEntryUsed(t *testing.T) {
	l := newSieve[int](2)
	l.add(hashOf(0), 0)
	l.add(hashOf(1), 1)
	v, ok := l.peek(hashOf(0))
	assert.True(t, ok)
	assert.Equal(t, 0, v)
	assert.True(t, l.update(hashOf(0), func(v *int) { *v = 10 }))
	assert.False(t, l.update(hashOf(7), func(v *int) { *v = 70 }))
	l.add(hashOf(2), 2) // evicts 0, still unmarked
	assert.Equal(t, []Hash{hashOf(2), hashOf(1)}, l.keys())
	_, ok = l.peek(hashOf(0))
	assert.False(t, ok)
}

func TestAddingAKnownHashReplacesItsValue(t *testing.T) {
	l := newSieve[int](2)
	l.add(hashOf(0), 0)
	l.add(hashOf(1), 1)
	l.add(hashOf(0), 5)
	v, _ := l.peek(hashOf(0))
	assert.Equal(t, 5, v)
	assert.Equal(t, []Hash{hashOf(1), hashOf(0)}, l.keys(), "in its place")
	assert.Equal(t, 2, l.len())
	l.add(hashOf(2), 2) // 0 was marked by the add: 1 goes
	assert.Equal(t, []Hash{hashOf(2), hashOf(0)}, l.keys())
}

func TestRemovedSlotsAreReusedBeforeAnythingIsEvicted(t *testing.T) {
	l := newSieve[int](3)
	for i := range byte(3) {
		l.add(hashOf(i), int(i))
	}
	l.remove(hashOf(1))
	l.remove(hashOf(1)) // twice: nothing more to forget
	l.remove(hashOf(0))
	l.add(hashOf(3), 3)
	l.add(hashOf(4), 4)
	assert.Equal(t, []Hash{hashOf(4), hashOf(3), hashOf(2)}, l.keys())
	assert.EqualValues(t, 3, l.used, "the removed slots, not new ones")
	l.add(hashOf(5), 5)
	assert.Equal(t, []Hash{hashOf(5), hashOf(4), hashOf(3)}, l.keys())
}

func TestAPurgedSieveStartsAfresh(t *testing.T) {
	l := newSieve[*Key](2)
	l.add(hashOf(0), &Key{ID: "a"})
	l.add(hashOf(1), &Key{ID: "b"})
	l.purge()
	assert.Equal(t, 0, l.len())
	assert.Empty(t, l.keys())
	assert.Nil(t, l.chunks[0][0].val, "purge drops the pointers it held")
	l.add(hashOf(2), &Key{ID: "c"})
	v, ok := l.get(hashOf(2))
	assert.True(t, ok)
	assert.Equal(t, "c", v.ID)
}

// Slots come in chunks as the sieve fills, the last one no longer than the
// size needs; a sieve that spans several evicts and reuses across them.
func TestTheSieveFillsChunkByChunk(t *testing.T) {
	size := 2*sieveChunk + 5
	l := newSieve[int](size)
	hash := func(i int) Hash { return Hash{byte(i), byte(i >> 8), 7} }
	for i := range size + 10 {
		l.add(hash(i), i)
		assert.Len(t, l.chunks, i/sieveChunk+1, "a chunk is added only when the last is full")
	}
	assert.Len(t, l.chunks, 3)
	assert.Len(t, l.chunks[2], 5, "the last chunk holds what the size leaves")
	assert.Equal(t, size, l.len())
	for i := range 10 {
		_, ok := l.get(hash(i))
		assert.False(t, ok, "the oldest were evicted")
	}
	l.remove(hash(sieveChunk + 3))
	l.add(hash(100000), 1)
	assert.Equal(t, sieveChunk+3, int(l.index[hash(100000)]), "the removed slot, in the second chunk, is reused")
	keys := l.keys()
	assert.Len(t, keys, size)
	assert.Equal(t, hash(100000), keys[0])
	assert.Equal(t, hash(10), keys[len(keys)-1], "the oldest")
}
