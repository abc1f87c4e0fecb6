package keystore

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func hashOf(i byte) Hash { return Hash{i, 1} }

// keys returns the lru's hashes from the most to the least recently used.
func (l *lru[V]) keys() []Hash {
	l.mu.Lock()
	defer l.mu.Unlock()
	var hs []Hash
	for i := l.head; i != none; i = l.slot(i).next {
		hs = append(hs, l.slot(i).hash)
	}
	return hs
}

func TestTheLRUEvictsTheLeastRecentlyUsed(t *testing.T) {
	l := newLRU[int](3)
	for i := range byte(3) {
		l.add(hashOf(i), int(i))
	}
	_, ok := l.get(hashOf(0)) // 0 is now the most recent; 1 the least
	require.True(t, ok)
	l.add(hashOf(3), 3)
	assert.Equal(t, []Hash{hashOf(3), hashOf(0), hashOf(2)}, l.keys())
	assert.False(t, l.contains(hashOf(1)))
	assert.Equal(t, 3, l.len())
}

func TestPeekAndUpdateDoNotMarkAnEntryUsed(t *testing.T) {
	l := newLRU[int](2)
	l.add(hashOf(0), 0)
	l.add(hashOf(1), 1)
	v, ok := l.peek(hashOf(0))
	assert.True(t, ok)
	assert.Equal(t, 0, v)
	assert.True(t, l.update(hashOf(0), func(v *int) { *v = 10 }))
	assert.False(t, l.update(hashOf(7), func(v *int) { *v = 70 }))
	l.add(hashOf(2), 2) // evicts 0, still the least recently used
	assert.Equal(t, []Hash{hashOf(2), hashOf(1)}, l.keys())
	_, ok = l.peek(hashOf(0))
	assert.False(t, ok)
}

func TestAddingAKnownHashReplacesItsValue(t *testing.T) {
	l := newLRU[int](2)
	l.add(hashOf(0), 0)
	l.add(hashOf(1), 1)
	l.add(hashOf(0), 5)
	v, _ := l.get(hashOf(0))
	assert.Equal(t, 5, v)
	assert.Equal(t, []Hash{hashOf(0), hashOf(1)}, l.keys())
	assert.Equal(t, 2, l.len())
}

func TestRemovedSlotsAreReusedBeforeAnythingIsEvicted(t *testing.T) {
	l := newLRU[int](3)
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

func TestAPurgedLRUStartsAfresh(t *testing.T) {
	l := newLRU[*Key](2)
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

// Slots come in chunks as the lru fills, the last one no longer than the
// size needs; an lru that spans several evicts and reuses across them.
func TestTheLRUFillsChunkByChunk(t *testing.T) {
	size := 2*lruChunk + 5
	l := newLRU[int](size)
	hash := func(i int) Hash { return Hash{byte(i), byte(i >> 8), 7} }
	for i := range size + 10 {
		l.add(hash(i), i)
		assert.Len(t, l.chunks, i/lruChunk+1, "a chunk is added only when the last is full")
	}
	assert.Len(t, l.chunks, 3)
	assert.Len(t, l.chunks[2], 5, "the last chunk holds what the size leaves")
	assert.Equal(t, size, l.len())
	for i := range 10 {
		_, ok := l.get(hash(i))
		assert.False(t, ok, "the oldest were evicted")
	}
	l.remove(hash(lruChunk + 3))
	l.add(hash(100000), 1)
	assert.Equal(t, lruChunk+3, int(l.index[hash(100000)]), "the removed slot, in the second chunk, is reused")
	keys := l.keys()
	assert.Len(t, keys, size)
	assert.Equal(t, hash(100000), keys[0])
	assert.Equal(t, hash(10), keys[len(keys)-1], "the least recently used")
}
