package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// writerOf stores a key with keys:write for owner and returns a context
// naming it the writer of the changes made with it, as its record is
// stored (the admin API reads the caller again before a change).
func (f *fixture) writerOf(s keystore.Store, owner string) (context.Context, *keystore.Key) {
	f.t.Helper()
	w, _ := f.create(s, owner, f.base, func(k *keystore.Key) { k.Permissions = []string{"keys:write", "read:users"} })
	stored, err := s.Get(f.t.Context(), w.ID)
	require.NoError(f.t, err)
	return keystore.WithWriter(f.t.Context(), stored), stored
}

// writerChanges are the three changes a writer makes, each of a key of
// owner made for it (not through ctx). Each returns the store's error and
// fails the test unless it changed nothing on an error.
func (f *fixture) writerChanges(s keystore.Store, owner string) map[string]func(ctx context.Context) error {
	f.t.Helper()
	at := f.base.Add(time.Millisecond)
	return map[string]func(ctx context.Context) error{
		"create": func(ctx context.Context) error {
			k, h := f.newKey(owner, at)
			err := s.Create(ctx, k, h, 0)
			if err != nil {
				requireAbsent(f.t, s, k.ID, h)
			}
			return err
		},
		"update": func(ctx context.Context) error {
			k, h := f.create(s, owner, f.base)
			_, err := s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
				cur.RevokedAt = ptr(at)
				return nil
			})
			if err != nil {
				requireStored(f.t, s, k, h)
			}
			return err
		},
		"rotate": func(ctx context.Context) error {
			k, h := f.create(s, owner, f.base)
			next, nh := f.nextOf(k, at)
			_, err := s.Rotate(ctx, k.ID, next, nh, at.Add(time.Hour))
			if err != nil {
				requireStored(f.t, s, k, h)
				requireAbsent(f.t, s, next.ID, nh)
			}
			return err
		},
	}
}

// A change made by a key (keystore.WithWriter) is made while that key's
// record is the one its authority was checked against, its last use
// written behind or not, and refused with ErrWriterChanged, changing
// nothing, once the key was revoked, narrowed or purged meanwhile: a
// writer revoked as stolen makes no change once its revocation is stored.
func testWriter(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()

	ctx, w := f.writerOf(s, "acme")
	for kind, change := range f.writerChanges(s, "acme") {
		require.NoError(t, change(ctx), "%s by an unchanged writer", kind)
	}
	require.NoError(t, s.TouchLastUsed(t.Context(), map[string]time.Time{w.ID: f.base.Add(time.Second)}))
	for kind, change := range f.writerChanges(s, "acme") {
		require.NoError(t, change(ctx), "%s by a writer whose last use was written since", kind)
	}

	for name, alter := range map[string]func(*keystore.Key){
		"revoked":  func(k *keystore.Key) { k.RevokedAt = ptr(f.base) },
		"narrowed": func(k *keystore.Key) { k.Permissions = []string{"read:users"} },
		"expiry moved earlier": func(k *keystore.Key) {
			k.ExpiresAt = ptr(time.Now().Add(time.Minute))
		},
	} {
		ctx, w := f.writerOf(s, "acme")
		_, err := s.Update(t.Context(), w.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { alter(k); return nil })
		require.NoError(t, err)
		for kind, change := range f.writerChanges(s, "acme") {
			require.ErrorIs(t, change(ctx), keystore.ErrWriterChanged, "%s by a writer %s since its check", kind, name)
		}
	}

	gone, _ := f.newKey("acme", f.base) // never stored: as a purged writer
	ctx = keystore.WithWriter(t.Context(), gone)
	for kind, change := range f.writerChanges(s, "acme") {
		require.ErrorIs(t, change(ctx), keystore.ErrWriterChanged, "%s by a writer no longer stored", kind)
	}
}
