package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// onceStore is the fixture's Store as a keystore.OnceCreator: every backend
// must be one.
func (f *fixture) onceStore() keystore.OnceCreator {
	f.t.Helper()
	oc, ok := f.store().(keystore.OnceCreator)
	require.True(f.t, ok, "the Store is not a keystore.OnceCreator")
	return oc
}

// storeOf is oc as the keystore.Store it is.
func storeOf(oc keystore.OnceCreator) keystore.Store { return oc.(keystore.Store) }

// requireEarlier fails unless err is the answer to a create whose
// idempotency key made key id, for the same request or not.
func requireEarlier(t *testing.T, err error, id string, same bool) {
	t.Helper()
	var earlier *keystore.EarlierCreate
	require.ErrorAs(t, err, &earlier)
	require.ErrorIs(t, err, keystore.ErrIdempotencyKeyUsed)
	require.Equal(t, keystore.EarlierCreate{ID: id, SameRequest: same}, *earlier)
}

func testOnce(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	oc := f.onceStore()
	s := storeOf(oc)
	other := f.onceStore() // a second process on the same backend
	ctx := t.Context()
	request := hasher.Hash("request 1")
	once := keystore.OnceRecord{Token: keystore.OnceToken("alice", "retry-1"), Request: request, Until: f.base.Add(time.Hour)}

	first, firstHash := f.newKey("alice", f.base)
	require.NoError(t, oc.CreateOnce(ctx, first, firstHash, 0, once))
	requireStored(t, s, first, firstHash)

	// A repeat, through either Store, makes nothing and names the first key.
	for _, via := range []keystore.OnceCreator{oc, other} {
		again, againHash := f.newKey("alice", f.base)
		requireEarlier(t, via.CreateOnce(ctx, again, againHash, 0, once), first.ID, true)
		requireAbsent(t, s, again.ID, againHash)
	}
	// The idempotency key used for another request: refused all the same.
	changed, changedHash := f.newKey("alice", f.base)
	other2 := once
	other2.Request = hasher.Hash("request 2")
	requireEarlier(t, oc.CreateOnce(ctx, changed, changedHash, 0, other2), first.ID, false)
	requireAbsent(t, s, changed.ID, changedHash)
	// The same write again (its answer lost): the key exists.
	require.ErrorIs(t, oc.CreateOnce(ctx, first, firstHash, 0, once), keystore.ErrExists)
	requireStored(t, s, first, firstHash)

	// Another token (another idempotency key, or the same of another
	// owner) is another create.
	bobs, bobsHash := f.newKey("bob", f.base)
	bobOnce := once
	bobOnce.Token = keystore.OnceToken("bob", "retry-1")
	require.NotEqual(t, once.Token, bobOnce.Token)
	require.NoError(t, oc.CreateOnce(ctx, bobs, bobsHash, 0, bobOnce))
	requireStored(t, s, bobs, bobsHash)

	// A create refused for its owner's limit keeps no record of its
	// idempotency key: sent again once allowed, it makes its key.
	limited := keystore.OnceRecord{Token: keystore.OnceToken("alice", "retry-2"), Request: request, Until: f.base.Add(time.Hour)}
	over, overHash := f.newKey("alice", f.base)
	require.ErrorIs(t, oc.CreateOnce(ctx, over, overHash, 1, limited), keystore.ErrKeyLimit)
	requireAbsent(t, s, over.ID, overHash)
	require.NoError(t, oc.CreateOnce(ctx, over, overHash, 0, limited))
	requireStored(t, s, over, overHash)
}

func testOnceExpires(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	oc := f.onceStore()
	ctx := t.Context()
	const life = 300 * time.Millisecond
	once := keystore.OnceRecord{Token: keystore.OnceToken("alice", "short"), Request: hasher.Hash("r"), Until: f.base.Add(life)}
	first, firstHash := f.newKey("alice", f.base)
	require.NoError(t, oc.CreateOnce(ctx, first, firstHash, 0, once))

	// Within its life a repeat is answered; after it (by the create's own
	// clock, and by the wall clock, which Redis expires by), it is not.
	early, earlyHash := f.newKey("alice", f.base.Add(life/3))
	requireEarlier(t, oc.CreateOnce(ctx, early, earlyHash, 0, once), first.ID, true)
	time.Sleep(2 * life)
	late, lateHash := f.newKey("alice", f.base.Add(3*life))
	lateOnce := once
	lateOnce.Until = late.CreatedAt.Add(time.Hour)
	require.NoError(t, oc.CreateOnce(ctx, late, lateHash, 0, lateOnce))
	requireStored(t, storeOf(oc), late, lateHash)
	again, againHash := f.newKey("alice", f.base.Add(3*life))
	requireEarlier(t, oc.CreateOnce(ctx, again, againHash, 0, lateOnce), late.ID, true)
}

func testOnceConcurrent(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	stores := []keystore.OnceCreator{f.onceStore(), f.onceStore()}
	const attempts = 16
	once := keystore.OnceRecord{Token: keystore.OnceToken("carol", "at once"), Request: hasher.Hash("r"), Until: f.base.Add(time.Hour)}
	keys, hashes := f.newKeys("carol", attempts)
	errs := make([]error, attempts)
	atOnce(attempts, func(i int) {
		errs[i] = stores[i%len(stores)].CreateOnce(context.Background(), keys[i], hashes[i], 0, once)
	})

	winner := -1
	for i, err := range errs {
		if err == nil {
			require.Equal(t, -1, winner, "two creates with one idempotency key both made a key")
			winner = i
		}
	}
	require.NotEqual(t, -1, winner, "no create made a key: %v", errors.Join(errs...))
	s := storeOf(stores[0])
	for i, err := range errs {
		if i == winner {
			requireStored(t, s, keys[i], hashes[i])
			continue
		}
		requireEarlier(t, err, keys[winner].ID, true)
		requireAbsent(t, s, keys[i].ID, hashes[i])
	}
	listed, _, err := s.List(t.Context(), keystore.ListOptions{Owner: "carol", Now: f.base, Limit: attempts})
	require.NoError(t, err)
	require.Len(t, listed, 1)
}
