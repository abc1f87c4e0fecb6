package redis

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// slowWrites is a confirming Store whose next write, once armed, reaches
// Redis but whose reply comes back later than the client waits: the
// write is made, the replicas are never asked, and the store reports it
// unavailable.
type slowWrites struct {
	*Store
	proxy *faultproxy.Proxy
	armed atomic.Bool
}

func (s *slowWrites) slow() func() {
	if !s.armed.Swap(false) {
		return func() {}
	}
	s.proxy.SetDelay(600 * time.Millisecond)
	return s.proxy.Heal
}

func (s *slowWrites) Create(ctx context.Context, k *keystore.Key, h keystore.Hash, max int) error {
	defer s.slow()()
	return s.Store.Create(ctx, k, h, max)
}

func (s *slowWrites) Update(ctx context.Context, id string, limit keystore.OwnerLimit, fn func(*keystore.Key) error) (*keystore.Key, error) {
	heal := func() {}
	defer func() { heal() }()
	return s.Store.Update(ctx, id, limit, func(k *keystore.Key) error {
		err := fn(k)
		if err == nil {
			heal = s.slow() // after the read, before the write
		}
		return err
	})
}

// A change whose answer was lost is read back and answered as made, but
// with confirmation on the answer lost was the write's, and the replicas
// were never asked: a failover could still undo it. It must say so
// (ErrUnconfirmed), as a change WAIT did not confirm does, not answer as
// done and safe.
func TestAChangeReadBackIsNotConfirmed(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	primary := redistest.Start(t)
	redistest.StartReplica(t, primary, redistest.Options{})
	p := faultproxy.Start(t, primary.Addr)
	c := dial(t, Options{URL: "redis://" + p.Addr() + "/0", ReadTimeout: 900 * time.Millisecond})
	st := New(c, testPrefix, ConfirmChanges(Confirm{Replicas: 1, Timeout: time.Second}))
	t.Cleanup(func() { _ = st.Close() })
	slow := &slowWrites{Store: st, proxy: p}
	format, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	var changes []string
	m := &keystore.Manager{Store: slow, Hasher: testHasher, Format: format,
		OnChange: func(_ context.Context, kind string, _ *keystore.Key, _ string) { changes = append(changes, kind) }}
	ctx := t.Context()
	// Each script once without delay, so that the armed call is the
	// script alone (no NOSCRIPT round, no new connection).
	_, warm, err := m.Create(ctx, keystore.Spec{Name: "warm", Permissions: []string{"x"}}, "test")
	require.NoError(t, err)
	_, err = m.Revoke(ctx, warm.ID, "test")
	require.NoError(t, err)
	changes = nil

	slow.armed.Store(true)
	secret, k, err := m.Create(ctx, keystore.Spec{Name: "made", Permissions: []string{"x"}}, "test")
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "a create read back was never confirmed")
	require.NotEmpty(t, secret, "and its secret is still shown")
	require.NotNil(t, k)

	name := "renamed"
	slow.armed.Store(true)
	_, err = m.Update(ctx, k.ID, keystore.Patch{Name: &name}, nil, "test")
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "an update read back was never confirmed")

	slow.armed.Store(true)
	_, err = m.Revoke(ctx, k.ID, "test")
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "a revocation read back was never confirmed")
	require.Equal(t, []string{keystore.ChangeCreated, keystore.ChangeUpdated, keystore.ChangeRevoked}, changes, "each audited once")
}
