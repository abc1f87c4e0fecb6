package redis

import (
	"context"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// beforeScripts runs the function armed last, once, just before the next
// script call (EVALSHA or EVAL) the client sends.
type beforeScripts struct {
	mu    sync.Mutex
	armed func()
}

func (b *beforeScripts) arm(f func()) { b.mu.Lock(); b.armed = f; b.mu.Unlock() }

func (b *beforeScripts) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (b *beforeScripts) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

func (b *beforeScripts) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			b.mu.Lock()
			f := b.armed
			b.armed = nil
			b.mu.Unlock()
			if f != nil {
				f()
			}
		}
		return next(ctx, cmd)
	}
}

var _ goredis.Hook = (*beforeScripts)(nil)

// The writer's record is checked in the script that writes, not only when
// the store reads it first: a revocation or narrowing stored between that
// read and the script (another server's, here another client's) refuses
// the change, which stores nothing, while a last-use write there only has
// the store read the writer again and make the change.
func TestAWriterChangedJustBeforeTheScriptChangesNothing(t *testing.T) {
	srv := redistest.Start(t)
	c := dial(t, Options{URL: srv.URL(0)})
	hook := &beforeScripts{}
	c.AddHook(hook)
	s := New(c, "extauthz:")
	t.Cleanup(func() { _ = s.Close() })
	other := newStore(t, srv, "extauthz:")
	base := time.Now().UTC()

	newKey := func(perms ...string) (*keystore.Key, keystore.Hash) {
		id, err := keystore.NewID(base)
		require.NoError(t, err)
		return &keystore.Key{ID: id, Name: "k", Owner: "acme", Permissions: perms, CreatedAt: base}, keystore.NewHasher(nil).Hash("secret of " + id)
	}
	writer := func() (context.Context, *keystore.Key) {
		w, h := newKey("keys:write")
		require.NoError(t, s.Create(t.Context(), w, h, 0))
		stored, err := s.GetForCheck(t.Context(), w.ID)
		require.NoError(t, err)
		return keystore.WithWriter(t.Context(), stored), stored
	}
	changeOf := func(id string, edit func(*keystore.Key)) func() {
		return func() {
			_, err := other.Update(context.Background(), id, keystore.OwnerLimit{}, func(k *keystore.Key) error { edit(k); return nil })
			require.NoError(t, err)
		}
	}
	for name, between := range map[string]func(w *keystore.Key) func(){
		"revoked":  func(w *keystore.Key) func() { return changeOf(w.ID, func(k *keystore.Key) { k.RevokedAt = &base }) },
		"narrowed": func(w *keystore.Key) func() { return changeOf(w.ID, func(k *keystore.Key) { k.Permissions = nil }) },
	} {
		t.Run(name, func(t *testing.T) {
			ctx, w := writer()
			k, h := newKey()
			hook.arm(between(w))
			require.ErrorIs(t, s.Create(ctx, k, h, 0), keystore.ErrWriterChanged)
			_, err := s.Get(t.Context(), k.ID)
			require.ErrorIs(t, err, keystore.ErrNotFound, "nothing was stored")

			victim, vh := newKey()
			require.NoError(t, s.Create(t.Context(), victim, vh, 0))
			ctx, w = writer()
			hook.arm(between(w))
			_, err = s.Update(ctx, victim.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.RevokedAt = &base; return nil })
			require.ErrorIs(t, err, keystore.ErrWriterChanged)
			got, err := s.Get(t.Context(), victim.ID)
			require.NoError(t, err)
			require.Nil(t, got.RevokedAt, "the key the writer revoked is not revoked")
		})
	}
	t.Run("last use written", func(t *testing.T) {
		ctx, w := writer()
		k, h := newKey()
		hook.arm(func() {
			require.NoError(t, other.TouchLastUsed(context.Background(), map[string]time.Time{w.ID: base.Add(time.Second)}))
		})
		require.NoError(t, s.Create(ctx, k, h, 0))
		_, err := s.Get(t.Context(), k.ID)
		require.NoError(t, err)
	})
}
