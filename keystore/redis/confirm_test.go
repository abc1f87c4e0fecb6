package redis

import (
	"context"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// expire is a change to an existing key that Update confirms: it sets
// the key's expiry to at.
func expire(at time.Time) func(*keystore.Key) error {
	return func(k *keystore.Key) error {
		at := at.UTC().Truncate(time.Millisecond)
		k.ExpiresAt = &at
		return nil
	}
}

// replicated reads the record of h on srv, a replica, as it stands. A
// Cluster replica serves reads only after READONLY (one that is not in a
// Cluster refuses that, and needs nothing).
func replicated(t *testing.T, srv *redistest.Server, h keystore.Hash) *keystore.Key {
	t.Helper()
	c := dial(t, Options{URL: srv.URL(0)}).(*goredis.Client)
	conn := c.Conn()
	defer conn.Close()
	_ = conn.ReadOnly(t.Context()).Err()
	raw, err := conn.Get(t.Context(), testPrefix+"{keys}:h:"+h.String()).Result()
	require.NoError(t, err)
	k, err := decode(raw)
	require.NoError(t, err)
	return k
}

// Redis replicates asynchronously: a failover promotes a replica that may
// not have the primary's last writes, and a revocation lost that way makes
// the key work again. With confirmation on, a change to a key returns only
// once enough replicas hold it, or says that they do not.
func TestChangesWaitForTheReplicas(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	primary := redistest.Start(t)
	replica := redistest.StartReplica(t, primary, redistest.Options{})
	const wait = time.Second
	// A call budget shorter than the wait: WAIT's own timeout must be
	// what bounds it, not the budget of an ordinary call.
	client := dial(t, Options{URL: primary.URL(0), Timeout: 100 * time.Millisecond})
	confirming := New(client, testPrefix, ConfirmChanges(Confirm{Replicas: 1, Timeout: wait}))
	t.Cleanup(func() { _ = confirming.Close() })
	ctx := t.Context()

	k, h, _ := create(t, confirming, "alice")
	format, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	m := &keystore.Manager{Store: confirming, Hasher: testHasher, Format: format}
	var changes []string
	m.OnChange = func(_ context.Context, kind string, _ *keystore.Key, _ string) { changes = append(changes, kind) }

	t.Run("a change the replica acknowledged is done, and the replica holds it", func(t *testing.T) {
		at := time.Now().Add(time.Hour)
		got, err := confirming.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(at))
		require.NoError(t, err)
		require.NotNil(t, got.ExpiresAt)
		require.Equal(t, got.ExpiresAt, replicated(t, replica, h).ExpiresAt, "returned before the replica had the change")
	})

	t.Run("with the replica stopped, the change stands but is reported unconfirmed", func(t *testing.T) {
		replica.Pause()
		defer replica.Resume()
		at := time.Now().Add(2 * time.Hour)
		start := time.Now()
		got, err := confirming.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(at))
		took := time.Since(start)
		require.ErrorIs(t, err, keystore.ErrUnconfirmed)
		require.NotErrorIs(t, err, keystore.ErrUnavailable, "the change was made: it is not a store that did not answer")
		require.ErrorContains(t, err, "0 of the 1 replicas", "WAIT answered rather than the call budget cutting it short")
		require.GreaterOrEqual(t, took, wait, "gave up before the confirmation timeout")
		require.NotNil(t, got, "the changed key comes with the error")
		stored, err := confirming.Get(ctx, k.ID)
		require.NoError(t, err)
		require.Equal(t, got.ExpiresAt, stored.ExpiresAt, "the primary holds the change")
	})

	t.Run("repeating the change once the replica is back confirms it", func(t *testing.T) {
		stored, err := confirming.Get(ctx, k.ID)
		require.NoError(t, err)
		got, err := confirming.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(*stored.ExpiresAt))
		require.NoError(t, err)
		require.Equal(t, got.ExpiresAt, replicated(t, replica, h).ExpiresAt)
	})

	t.Run("an unconfirmed revocation is in effect and audited, and the caller hears why", func(t *testing.T) {
		replica.Pause()
		got, err := m.Revoke(ctx, k.ID, "test")
		replica.Resume()
		require.ErrorIs(t, err, keystore.ErrUnconfirmed)
		require.NotNil(t, got)
		require.NotNil(t, got.RevokedAt)
		require.Equal(t, []string{keystore.ChangeRevoked}, changes, "the revocation was made: its event must not be lost")
		found, err := confirming.Lookup(ctx, h)
		require.NoError(t, err)
		require.NotNil(t, found.RevokedAt, "the primary serves the key revoked")

		again, err := m.Revoke(ctx, k.ID, "test")
		require.NoError(t, err, "revoking again asks the replica again")
		require.NotNil(t, replicated(t, replica, h).RevokedAt)
		require.Equal(t, got.RevokedAt, again.RevokedAt, "the second revocation changes nothing")
	})

	t.Run("a rotation waits for the replica too; unconfirmed, it stands, is audited and hands out its secret", func(t *testing.T) {
		old, _, _ := create(t, confirming, "dave")
		secret, next, err := m.Rotate(ctx, old.ID, time.Hour, "test", nil)
		require.NoError(t, err)
		require.Equal(t, next.ID, replicated(t, replica, testHasher.Hash(secret)).ID, "returned before the replica had the new key")

		changes = nil
		replica.Pause()
		start := time.Now()
		secret, rotated, err := m.Rotate(ctx, next.ID, time.Hour, "test", nil)
		took := time.Since(start)
		replica.Resume()
		require.ErrorIs(t, err, keystore.ErrUnconfirmed)
		require.ErrorContains(t, err, "0 of the 1 replicas")
		require.ErrorContains(t, err, "revoke the old key", "a rotation cannot be repeated: the error says what confirms it")
		require.GreaterOrEqual(t, took, wait)
		require.NotEmpty(t, secret, "the secret is shown once: an unconfirmed rotation must still hand it out")
		require.NotNil(t, rotated)
		require.Equal(t, []string{keystore.ChangeRotated}, changes, "the rotation was made: its event must not be lost")
		found, err := confirming.Lookup(ctx, testHasher.Hash(secret))
		require.NoError(t, err, "the primary serves the new key")
		require.Equal(t, rotated.ID, found.ID)
		was, err := confirming.Get(ctx, next.ID)
		require.NoError(t, err)
		require.Equal(t, rotated.ID, was.RotatedTo, "and the old key rotated away, its grace period set")
		require.NotNil(t, was.ExpiresAt)

		// A confirmed change made after it confirms it: the replica takes
		// the primary's writes in order.
		_, err = m.Revoke(ctx, next.ID, "test")
		require.NoError(t, err)
		require.Equal(t, rotated.ID, replicated(t, replica, testHasher.Hash(secret)).ID)
	})

	t.Run("more replicas than acknowledge it is unconfirmed, with the count", func(t *testing.T) {
		two := New(client, testPrefix, ConfirmChanges(Confirm{Replicas: 2, Timeout: 50 * time.Millisecond}))
		t.Cleanup(func() { _ = two.Close() })
		k, _, _ := create(t, confirming, "bob")
		_, err := two.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(time.Now().Add(time.Hour)))
		require.ErrorIs(t, err, keystore.ErrUnconfirmed)
		require.ErrorContains(t, err, "1 of the 2 replicas")
	})

	t.Run("a create waits for the replica too; unconfirmed, it stands, is audited and hands out its secret", func(t *testing.T) {
		secret, k, err := m.Create(ctx, keystore.Spec{Name: "erin", Permissions: []string{"read"}}, "test")
		require.NoError(t, err)
		require.Equal(t, k.ID, replicated(t, replica, testHasher.Hash(secret)).ID, "returned before the replica had the key")

		changes = nil
		replica.Pause()
		start := time.Now()
		secret, k, err = m.Create(ctx, keystore.Spec{Name: "frank", Permissions: []string{"read"}}, "test")
		took := time.Since(start)
		replica.Resume()
		require.ErrorIs(t, err, keystore.ErrUnconfirmed)
		require.NotErrorIs(t, err, keystore.ErrUnavailable)
		require.ErrorContains(t, err, "0 of the 1 replicas")
		require.ErrorContains(t, err, "need not be made again", "repeating a create makes a second key: the error says so")
		require.GreaterOrEqual(t, took, wait)
		require.NotEmpty(t, secret, "the secret is shown once: an unconfirmed create must still hand it out")
		require.NotNil(t, k)
		require.Equal(t, []string{keystore.ChangeCreated}, changes, "the create was made: its event must not be lost")
		found, err := confirming.Lookup(ctx, testHasher.Hash(secret))
		require.NoError(t, err, "the primary serves the new key")
		require.Equal(t, k.ID, found.ID)

		// A confirmed change made after it confirms it.
		_, err = m.Revoke(ctx, found.ID, "test")
		require.NoError(t, err)
		require.Equal(t, k.ID, replicated(t, replica, testHasher.Hash(secret)).ID)
	})

	t.Run("a create refused for the owner's limit does not wait", func(t *testing.T) {
		limited := &keystore.Manager{Store: confirming, Hasher: testHasher, Format: format, MaxPerOwner: 1}
		_, _, err := limited.Create(ctx, keystore.Spec{Name: "g", Owner: "grace", Permissions: []string{"read"}}, "test")
		require.NoError(t, err)
		replica.Pause()
		defer replica.Resume()
		start := time.Now()
		_, _, err = limited.Create(ctx, keystore.Spec{Name: "g2", Owner: "grace", Permissions: []string{"read"}}, "test")
		require.ErrorIs(t, err, keystore.ErrKeyLimit)
		require.NotErrorIs(t, err, keystore.ErrUnconfirmed)
		require.Less(t, time.Since(start), wait, "nothing was stored, so there is nothing to confirm")
	})

	t.Run("without confirmation nothing waits", func(t *testing.T) {
		plain := New(client, testPrefix)
		t.Cleanup(func() { _ = plain.Close() })
		replica.Pause()
		defer replica.Resume()
		k, h, _ := newKey(t, "carol")
		require.NoError(t, plain.Create(ctx, k, h, 0))
		_, err := plain.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(time.Now().Add(time.Hour)))
		require.NoError(t, err)
	})
}

// requireConfirmedUnlessPaused changes a key through a confirming store on
// client: done while replica runs, unconfirmed while it is paused.
func requireConfirmedUnlessPaused(t *testing.T, client goredis.UniversalClient, replica *redistest.Server) {
	t.Helper()
	s := New(client, testPrefix, ConfirmChanges(Confirm{Replicas: 1, Timeout: time.Second}))
	t.Cleanup(func() { _ = s.Close() })
	ctx := t.Context()
	k, h, _ := create(t, s, "alice")

	got, err := s.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(time.Now().Add(time.Hour)))
	require.NoError(t, err)
	require.Equal(t, got.ExpiresAt, replicated(t, replica, h).ExpiresAt)

	replica.Pause()
	_, err = s.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(time.Now().Add(2*time.Hour)))
	require.ErrorIs(t, err, keystore.ErrUnconfirmed)
	require.ErrorContains(t, err, "0 of the 1 replicas")
	next, nextHash, _ := successor(t, s, k.ID)
	old, err := s.Rotate(ctx, k.ID, next, nextHash, time.Now().Add(time.Hour))
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "a rotation waits for the replica too")
	require.Equal(t, next.ID, old.RotatedTo)
	fresh, freshHash, _ := newKey(t, k.Owner)
	err = s.Create(ctx, fresh, freshHash, 0)
	replica.Resume()
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "and so does a create")
	found, err := s.Lookup(ctx, freshHash)
	require.NoError(t, err)
	require.Equal(t, fresh.ID, found.ID)
}

// A Cluster's replicas confirm too: the change and WAIT go to the master of
// the records' slot, on one connection.
func TestChangesWaitForTheReplicasOnACluster(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	cluster := redistest.StartClusterOf(t, redistest.ClusterOptions{Masters: 3, Replicas: 1})
	client := dial(t, Options{Addrs: cluster.Addrs()})
	require.IsType(t, &goredis.ClusterClient{}, client)
	replicas := cluster.Replicas(cluster.Slot(testPrefix + "{keys}:all"))
	require.Len(t, replicas, 1)
	requireConfirmedUnlessPaused(t, client, replicas[0])
}

// Behind a Sentinel the client's connections are to the primary it names:
// the change and WAIT go there, on one connection, as on one server.
func TestChangesWaitForTheReplicasBehindASentinel(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	primary := redistest.Start(t)
	replica := redistest.StartReplica(t, primary, redistest.Options{})
	sentinel := redistest.StartSentinel(t, primary, redistest.SentinelOptions{MasterName: "m"})
	requireConfirmedUnlessPaused(t, dial(t, Options{Addrs: []string{sentinel.Addr}, MasterName: "m"}), replica)
}

func TestConfirmingNeedsATimeout(t *testing.T) {
	srv := redistest.Start(t)
	for _, c := range []Confirm{{Replicas: 1}, {Replicas: -1, Timeout: time.Second}} {
		s := New(dial(t, Options{URL: srv.URL(0)}), testPrefix, ConfirmChanges(c))
		_, err := s.Get(context.Background(), "key_x")
		require.ErrorContains(t, err, "confirming changes needs", "%+v", c)
		require.NoError(t, s.Close())
	}
}

// A resharding that adds a master moves slots to one the client's slot map
// does not list (it serves no slot yet). A confirmed change whose records
// have all moved there is redirected to it (ASK) before the hand-over; it
// waits for the hand-over rather than failing, and is confirmed there.
func TestAConfirmedChangeWaitsForItsRecordsToMoveToANewMaster(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	cluster := redistest.StartCluster(t, 3)
	client := dial(t, Options{Addrs: cluster.Addrs()})
	plain := New(client, testPrefix)
	confirming := New(client, testPrefix, ConfirmChanges(Confirm{Replicas: 1, Timeout: 50 * time.Millisecond}))
	t.Cleanup(func() { _ = plain.Close(); _ = confirming.Close() })
	ctx := t.Context()
	// An expiry puts every index an update writes in place, so that all of
	// the update's keys are there to move.
	k, h, _ := newKey(t, "alice")
	require.NoError(t, expire(time.Now().Add(time.Hour))(k))
	require.NoError(t, plain.Create(ctx, k, h, 0))

	fresh := cluster.AddMaster(t)
	mig, err := cluster.StartMigration(cluster.Slot(testPrefix+"{keys}:all"), fresh)
	require.NoError(t, err)
	left, err := mig.Move(1 << 20)
	require.NoError(t, err)
	require.Zero(t, left)

	later := time.Now().Add(2 * time.Hour)
	done := make(chan error, 1)
	go func() {
		_, err := confirming.Update(ctx, k.ID, keystore.OwnerLimit{}, expire(later))
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	_, err = mig.Finish()
	require.NoError(t, err)
	err = <-done
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "an update whose records moved to a new master")
	require.ErrorContains(t, err, "0 of the 1 replicas", "WAIT was not asked on the new master")
	got, err := plain.Lookup(ctx, h)
	require.NoError(t, err)
	require.Equal(t, later.UTC().Truncate(time.Millisecond), got.ExpiresAt.UTC())
}
