package envoy

import (
	"fmt"
	"hash/maphash"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/extauthz/extauthz/keystore"
)

// Two keys whose IDs share a set of the identity memo both keep their
// entry, whichever is used; a third takes the place of the one made first,
// and a record refetched from the store takes its predecessor's place
// without pushing the other key out.
func TestTheIdentityMemoKeepsTwoKeysToASet(t *testing.T) {
	m := newIdentityMemo()
	setOf := func(id string) uint64 { return maphash.String(m.seed, id) % identitySets }
	var keys []*keystore.Key
	for i := 0; len(keys) < 3; i++ {
		id := fmt.Sprintf("key_%d", i)
		if len(keys) == 0 || setOf(id) == setOf(keys[0].ID) {
			keys = append(keys, &keystore.Key{ID: id, Name: "n", Owner: "o"})
		}
	}
	a, b := m.entry(keys[0]), m.entry(keys[1])
	for range 3 {
		assert.Same(t, a, m.entry(keys[0]))
		assert.Same(t, b, m.entry(keys[1]))
	}

	refetched := &keystore.Key{ID: keys[0].ID, Name: "renamed", Owner: "o"}
	a2 := m.entry(refetched)
	assert.NotSame(t, a, a2)
	assert.Same(t, a2, m.entry(refetched))
	assert.Same(t, b, m.entry(keys[1]), "the refetched record took its predecessor's place, not the other key's")
	set := &m.sets[setOf(keys[0].ID)]
	for i := range set {
		assert.NotSame(t, keys[0], set[i].Load().key, "the predecessor is no longer kept")
	}

	c := m.entry(keys[2]) // the third: b was made before a2
	assert.Same(t, c, m.entry(keys[2]))
	assert.Same(t, a2, m.entry(refetched))
	assert.NotSame(t, b, m.entry(keys[1]), "made again")
}
