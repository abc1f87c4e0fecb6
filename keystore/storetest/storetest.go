// Package storetest is the conformance suite for keystore.Store backends.
// Every backend's tests call Run, so that the embedded and the Redis stores
// keep one contract: the one documented on keystore.Store.
//
// It is test support, not a backend: import it only from _test.go files.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// Backend makes one fresh, empty backend for the test t and returns open,
// which opens a new Store on that backend each time it is called. Two Stores
// from one Backend must share their keys and their changes the way two
// processes sharing the backend do (two SQLite handles on one file, two Redis
// clients on one server and prefix), because the suite checks that a change
// made through one reaches Watch on the other.
//
// Run closes every Store it opens, exactly once. The Backend registers its
// own cleanup (a temporary directory, a server) with t.Cleanup; that runs
// after the Stores are closed.
type Backend func(t *testing.T) (open func() (keystore.Store, error))

// Run proves that the Stores made by newBackend keep the keystore.Store
// contract. Each subtest gets a fresh backend.
func Run(t *testing.T, newBackend Backend) {
	t.Run("Create then Lookup and Get return the same record", func(t *testing.T) { testRoundTrip(t, newBackend) })
	t.Run("records handed in and out are not shared with the store", func(t *testing.T) { testNoAliasing(t, newBackend) })
	t.Run("what does not exist is ErrNotFound", func(t *testing.T) { testNotFound(t, newBackend) })
	t.Run("Create refuses an id or hash that exists", func(t *testing.T) { testDuplicates(t, newBackend) })
	t.Run("Create refuses a key over maxPerOwner", func(t *testing.T) { testKeyLimit(t, newBackend) })
	t.Run("a key expiring in the microsecond after a count counts", func(t *testing.T) { testKeyLimitCountsToTheNanosecond(t, newBackend) })
	t.Run("concurrent creates for one owner stop at exactly maxPerOwner", func(t *testing.T) { testKeyLimitConcurrent(t, newBackend) })
	t.Run("revoked, expired and rotated-away keys do not count against maxPerOwner", func(t *testing.T) { testKeyLimitCountsLiveKeys(t, newBackend) })
	t.Run("CreateOnce makes one key per idempotency key and names it to a repeat", func(t *testing.T) { testOnce(t, newBackend) })
	t.Run("CreateOnce forgets an idempotency key after its time", func(t *testing.T) { testOnceExpires(t, newBackend) })
	t.Run("concurrent creates with one idempotency key make exactly one key", func(t *testing.T) { testOnceConcurrent(t, newBackend) })
	t.Run("Update stores what fn made of the record", func(t *testing.T) { testUpdate(t, newBackend) })
	t.Run("Update changes nothing when fn fails", func(t *testing.T) { testUpdateAborts(t, newBackend) })
	t.Run("Update of an unknown id is ErrNotFound", func(t *testing.T) { testUpdateUnknown(t, newBackend) })
	t.Run("concurrent updates are all kept", func(t *testing.T) { testUpdateConcurrent(t, newBackend) })
	t.Run("Update refuses to bring a key back past its owner's limit", func(t *testing.T) { testUpdateOwnerLimit(t, newBackend) })
	t.Run("concurrent revivals for one owner stop at exactly the limit", func(t *testing.T) { testUpdateOwnerLimitConcurrent(t, newBackend) })
	t.Run("reviving a successor keeps its line counting once", func(t *testing.T) { testRevivingASuccessorKeepsItsLineCountingOnce(t, newBackend) })
	t.Run("Rotate stores the new key and winds the old one down", func(t *testing.T) { testRotate(t, newBackend) })
	t.Run("Rotate refuses and stores nothing", func(t *testing.T) { testRotateRefuses(t, newBackend) })
	t.Run("a key's change is made only while the key is as it was checked", func(t *testing.T) { testWriter(t, newBackend) })
	t.Run("List returns keys in id order", func(t *testing.T) { testListOrder(t, newBackend) })
	t.Run("List shows live keys unless IncludeRevoked", func(t *testing.T) { testListLive(t, newBackend) })
	t.Run("List pages through every key exactly once", func(t *testing.T) { testListPages(t, newBackend) })
	t.Run("List without a Limit returns pages of 100", func(t *testing.T) { testListDefaultLimit(t, newBackend) })
	t.Run("Sweep purges the keys dead since before PurgeBefore and nothing else", func(t *testing.T) { testSweepPurges(t, newBackend) })
	t.Run("List shows exactly the live keys before and after Sweep and a revival", func(t *testing.T) { testSweepKeepsListing(t, newBackend) })
	t.Run("Sweep works in bounded batches and says when there is more", func(t *testing.T) { testSweepBatches(t, newBackend) })
	t.Run("concurrent sweeps purge each dead key exactly once", func(t *testing.T) { testSweepConcurrent(t, newBackend) })
	t.Run("Sweep does not reach Watch", func(t *testing.T) { testSweepIsNotAChange(t, newBackend) })
	t.Run("TouchLastUsed records when a key was last used", func(t *testing.T) { testTouch(t, newBackend) })
	t.Run("a key survives closing and reopening the store", func(t *testing.T) { testReopen(t, newBackend) })
	t.Run("Ping answers on an open store", func(t *testing.T) { testPing(t, newBackend) })
	t.Run("the pepper mark is written once, and a Manager with another pepper makes no key", func(t *testing.T) { testPepperMark(t, newBackend) })
	t.Run("Watch sees every change within a second", func(t *testing.T) { testWatch(t, newBackend) })
	t.Run("Watch does not report TouchLastUsed", func(t *testing.T) { testWatchIgnoresTouch(t, newBackend) })
	t.Run("Watch returns when its context is done", func(t *testing.T) { testWatchReturns(t, newBackend) })
	t.Run("a cache filled before its Watch began forgets a revocation made meanwhile", func(t *testing.T) { testWatchForgetsWhatCameBefore(t, newBackend) })
}

// fixture is one fresh backend, a clock reading shared by the test's keys,
// and helpers to make keys and open Stores.
type fixture struct {
	t    *testing.T
	open func() (keystore.Store, error)
	// base is "now" for the test: real time (a backend may expire records by
	// the wall clock), in UTC, with a millisecond part so that a backend
	// keeping whole seconds fails.
	base time.Time
}

func newFixture(t *testing.T, newBackend Backend) *fixture {
	t.Helper()
	return &fixture{
		t:    t,
		open: newBackend(t),
		base: time.Now().UTC().Truncate(time.Second).Add(123 * time.Millisecond),
	}
}

// store opens a Store on the fixture's backend, closed when the test ends.
func (f *fixture) store() keystore.Store {
	f.t.Helper()
	s, _ := f.storeWithClose()
	return s
}

// storeWithClose opens a Store and returns a function that closes it early;
// the Store is closed exactly once either way.
func (f *fixture) storeWithClose() (keystore.Store, func() error) {
	f.t.Helper()
	s, err := f.open()
	require.NoError(f.t, err, "open a Store on the backend")
	require.NotNil(f.t, s, "open returned a nil Store")
	var once sync.Once
	var closeErr error
	closeStore := func() error {
		once.Do(func() { closeErr = s.Close() })
		return closeErr
	}
	f.t.Cleanup(func() {
		if err := closeStore(); err != nil {
			f.t.Errorf("Close: %v", err)
		}
	})
	return s, closeStore
}

var hasher = keystore.NewHasher(nil)

// newKey returns a live key record of owner created at `at`, and the hash of
// a secret no other key has.
func (f *fixture) newKey(owner string, at time.Time) (*keystore.Key, keystore.Hash) {
	f.t.Helper()
	id, err := keystore.NewID(at)
	require.NoError(f.t, err)
	return &keystore.Key{
		ID:          id,
		Name:        "key " + id,
		Owner:       owner,
		Permissions: []string{"read:users"},
		CreatedAt:   at,
	}, hasher.Hash("secret of " + id)
}

// newKeys returns n of newKey's keys of owner, created at the fixture's base.
func (f *fixture) newKeys(owner string, n int) ([]*keystore.Key, []keystore.Hash) {
	f.t.Helper()
	keys := make([]*keystore.Key, n)
	hashes := make([]keystore.Hash, n)
	for i := range n {
		keys[i], hashes[i] = f.newKey(owner, f.base)
	}
	return keys, hashes
}

// create stores a new key of owner created at `at`, with no owner limit.
func (f *fixture) create(s keystore.Store, owner string, at time.Time, edit ...func(*keystore.Key)) (*keystore.Key, keystore.Hash) {
	f.t.Helper()
	k, h := f.newKey(owner, at)
	for _, e := range edit {
		e(k)
	}
	require.NoError(f.t, s.Create(f.t.Context(), k, h, 0), "Create %s", k.ID)
	return k, h
}

// nextOf returns the record a rotation of old creates at `at`: a new id, the
// same metadata, rotated_from the old id.
func (f *fixture) nextOf(old *keystore.Key, at time.Time) (*keystore.Key, keystore.Hash) {
	f.t.Helper()
	next, h := f.newKey(old.Owner, at)
	next.Name = old.Name
	next.Permissions = slices.Clone(old.Permissions)
	next.RateLimit = old.RateLimit
	next.IPAllowlist = slices.Clone(old.IPAllowlist)
	next.Policies = slices.Clone(old.Policies)
	next.Meta = maps.Clone(old.Meta)
	if old.ExpiresAt != nil {
		e := *old.ExpiresAt
		next.ExpiresAt = &e
	}
	next.RotatedFrom, next.Lineage = old.ID, old.RateBucket()
	return next, h
}

// requireSameKey fails unless got is want as a store should hand it back:
// the same instants, in UTC; nil and empty lists are the same thing.
func requireSameKey(t testing.TB, want, got *keystore.Key, msgAndArgs ...any) {
	t.Helper()
	require.NotNil(t, got, msgAndArgs...)
	for name, tm := range map[string]*time.Time{
		"created_at": &got.CreatedAt, "expires_at": got.ExpiresAt,
		"last_used_at": got.LastUsedAt, "revoked_at": got.RevokedAt,
	} {
		if tm != nil {
			require.Same(t, time.UTC, tm.Location(), "%s of %s is not in UTC", name, got.ID)
		}
	}
	require.Equal(t, normalize(want), normalize(got), msgAndArgs...)
}

// normalize is k as a store hands it back (keystore.Key.Canonical).
func normalize(k *keystore.Key) *keystore.Key { return k.Canonical() }

// requireStored fails unless both Get and Lookup return want.
func requireStored(t *testing.T, s keystore.Store, want *keystore.Key, h keystore.Hash) {
	t.Helper()
	got, err := s.Get(t.Context(), want.ID)
	require.NoError(t, err, "Get %s", want.ID)
	requireSameKey(t, want, got, "Get %s", want.ID)
	got, err = s.Lookup(t.Context(), h)
	require.NoError(t, err, "Lookup the hash of %s", want.ID)
	requireSameKey(t, want, got, "Lookup the hash of %s", want.ID)
}

// requireAbsent fails unless neither the id nor the hash is stored.
func requireAbsent(t *testing.T, s keystore.Store, id string, h keystore.Hash) {
	t.Helper()
	_, err := s.Get(t.Context(), id)
	require.ErrorIs(t, err, keystore.ErrNotFound, "Get %s", id)
	_, err = s.Lookup(t.Context(), h)
	require.ErrorIs(t, err, keystore.ErrNotFound, "Lookup the hash of %s", id)
}

func ptr(t time.Time) *time.Time { return &t }

// atOnce runs call(0) to call(n-1) in goroutines released together, and
// returns when all are done.
func atOnce(n int, call func(i int)) {
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			call(i)
		})
	}
	close(start)
	wg.Wait()
}

func testRoundTrip(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	ist := time.FixedZone("IST", 5*3600+1800)
	other, _ := f.newKey("x", f.base)
	tests := []struct {
		name string
		edit func(k *keystore.Key)
	}{
		{"a minimal key", func(k *keystore.Key) { k.Permissions = nil }},
		{"a key with every field set", func(k *keystore.Key) {
			k.Permissions = []string{"read:users", "write:users", "admin"}
			k.RateLimit = rate("100/m")
			k.IPAllowlist = []netip.Prefix{
				netip.MustParsePrefix("10.0.0.0/8"),
				netip.MustParsePrefix("192.0.2.7/32"),
				netip.MustParsePrefix("2001:db8::/32"),
				netip.MustParsePrefix("::1/128"),
			}
			k.ExpiresAt = ptr(f.base.Add(24*time.Hour + 456*time.Millisecond))
			k.LastUsedAt = ptr(f.base.Add(-time.Hour + 7*time.Millisecond))
			k.RevokedAt = ptr(f.base.Add(time.Millisecond))
			k.RotatedFrom = other.ID
			k.RotatedTo = other.ID + "x"
			k.Policies = []string{"billing", "orders-v2"}
			k.Meta = map[string]string{"plan": "gold", "tenant_id": "t-42"}
		}},
		{"a key scoped to one policy, with metadata of every size", func(k *keystore.Key) {
			k.Policies = []string{"billing"}
			k.Meta = map[string]string{}
			for i := range keystore.MaxMetaEntries {
				k.Meta[fmt.Sprintf("m%02d", i)] = strings.Repeat(string(rune('a'+i)), 1+i*keystore.MaxMetaValueBytes/keystore.MaxMetaEntries)
			}
			k.Meta["note"] = `"quoted" ключ 鍵 🔑 \ {}`
			delete(k.Meta, "m00")
		}},
		{"a key with empty policy and metadata sets", func(k *keystore.Key) {
			k.Policies = []string{}
			k.Meta = map[string]string{}
		}},
		{"a key with empty permission and allowlist lists", func(k *keystore.Key) {
			k.Permissions = []string{}
			k.IPAllowlist = []netip.Prefix{}
		}},
		{"a key whose times are not in UTC", func(k *keystore.Key) {
			k.CreatedAt = k.CreatedAt.In(ist)
			k.ExpiresAt = ptr(f.base.Add(time.Hour).In(ist))
			k.LastUsedAt = ptr(f.base.Add(-time.Minute).In(time.Local))
		}},
		{"a key with a monotonic clock reading", func(k *keystore.Key) {
			now := time.Now() // Add keeps the monotonic reading; Truncate would drop it
			now = now.Add(-time.Duration(now.Nanosecond() % int(time.Millisecond)))
			k.CreatedAt = now
			k.ExpiresAt = ptr(now.Add(time.Hour))
		}},
		{"a key without a rate limit of its own", func(k *keystore.Key) { k.RateLimit = rate("none") }},
		{"a key with quotes and non-ASCII text", func(k *keystore.Key) {
			k.Name = `O'Brien's "test" key; DROP TABLE keys; -- ключ 鍵 🔑`
			k.Owner = `team "blue" 'ops'`
			k.Permissions = []string{`read:"quoted"`, "write:ключ"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, h := f.newKey("alice", f.base)
			tt.edit(k)
			want := k.Clone()
			require.NoError(t, s.Create(t.Context(), k, h, 0))
			requireStored(t, s, want, h)
		})
	}
}

func testNoAliasing(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	k, h := f.newKey("alice", f.base)
	k.IPAllowlist = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	k.Policies, k.Meta = []string{"billing"}, map[string]string{"plan": "gold"}
	want := k.Clone()
	require.NoError(t, s.Create(t.Context(), k, h, 0))

	// The caller keeps using its record after Create.
	k.Name = "changed by the caller"
	k.Permissions[0] = "admin"
	k.IPAllowlist[0] = netip.MustParsePrefix("0.0.0.0/0")
	k.Policies[0] = "admin"
	k.Meta["plan"] = "enterprise"
	requireStored(t, s, want, h)

	// And changes what Get and Lookup return.
	got, err := s.Get(t.Context(), k.ID)
	require.NoError(t, err)
	got.Permissions[0] = "admin"
	got.Name = "changed"
	got.Policies[0] = "admin"
	got.Meta["plan"] = "enterprise"
	got, err = s.Lookup(t.Context(), h)
	require.NoError(t, err)
	got.IPAllowlist[0] = netip.MustParsePrefix("0.0.0.0/0")
	got.Meta["plan"] = "enterprise"
	requireStored(t, s, want, h)
}

func testNotFound(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	stored, storedHash := f.create(s, "alice", f.base)
	unknown, unknownHash := f.newKey("alice", f.base)
	tests := []struct {
		name string
		call func() error
	}{
		{"Lookup of an unknown hash", func() error { _, err := s.Lookup(t.Context(), unknownHash); return err }},
		{"Lookup of the zero hash", func() error { _, err := s.Lookup(t.Context(), keystore.Hash{}); return err }},
		{"Get of an unknown id", func() error { _, err := s.Get(t.Context(), unknown.ID); return err }},
		{"Get of the empty id", func() error { _, err := s.Get(t.Context(), ""); return err }},
		{"Get of something that is not an id", func() error { _, err := s.Get(t.Context(), "'; DROP TABLE keys; --\x00\xff"); return err }},
		{"Get of a stored key's hash in hex", func() error { _, err := s.Get(t.Context(), storedHash.String()); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			require.ErrorIs(t, err, keystore.ErrNotFound)
			require.NotErrorIs(t, err, keystore.ErrUnavailable)
		})
	}
	requireStored(t, s, stored, storedHash)
}

func testDuplicates(t *testing.T, newBackend Backend) {
	tests := []struct {
		name string
		// clash makes the second key collide with the first.
		clash func(first, second *keystore.Key, firstHash, secondHash *keystore.Hash)
	}{
		{"a second key with the same id", func(first, second *keystore.Key, _, _ *keystore.Hash) { second.ID = first.ID }},
		{"a second key with the same hash", func(_, _ *keystore.Key, firstHash, secondHash *keystore.Hash) { *secondHash = *firstHash }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, newBackend)
			s := f.store()
			first, firstHash := f.create(s, "alice", f.base)
			second, secondHash := f.newKey("bob", f.base)
			second.Name = "the second key"
			tt.clash(first, second, &firstHash, &secondHash)

			err := s.Create(t.Context(), second, secondHash, 0)
			require.ErrorIs(t, err, keystore.ErrExists)
			requireStored(t, s, first, firstHash)
			if second.ID != first.ID {
				_, err = s.Get(t.Context(), second.ID)
				require.ErrorIs(t, err, keystore.ErrNotFound, "the refused key was stored")
			}
			if secondHash != firstHash {
				_, err = s.Lookup(t.Context(), secondHash)
				require.ErrorIs(t, err, keystore.ErrNotFound, "the refused key was stored")
			}
		})
	}
}

func testKeyLimit(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	ctx := t.Context()
	for range 3 {
		k, h := f.newKey("alice", f.base)
		require.NoError(t, s.Create(ctx, k, h, 3))
	}
	over, overHash := f.newKey("alice", f.base)
	require.ErrorIs(t, s.Create(ctx, over, overHash, 3), keystore.ErrKeyLimit)
	requireAbsent(t, s, over.ID, overHash)

	other, otherHash := f.newKey("bob", f.base)
	require.NoError(t, s.Create(ctx, other, otherHash, 3), "another owner's limit is its own")

	require.NoError(t, s.Create(ctx, over, overHash, 0), "maxPerOwner 0 means no limit")
	requireStored(t, s, over, overHash)
}

// A key expiring within the same microsecond as a count, but after it,
// is live at that count and counts: a store keeping times in microseconds
// must round an expiry up, not down.
func testKeyLimitCountsToTheNanosecond(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	at := f.base.Add(100 * time.Nanosecond) // f.base is on a whole millisecond
	f.create(s, "erin", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(600 * time.Nanosecond)) })
	k, h := f.newKey("erin", at)
	require.ErrorIs(t, s.Create(t.Context(), k, h, 1), keystore.ErrKeyLimit, "the first key is live 500 ns past the count")
	requireAbsent(t, s, k.ID, h)

	revived, _ := f.create(s, "erin", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(50 * time.Nanosecond)) })
	_, err := s.Update(t.Context(), revived.ID, keystore.OwnerLimit{Max: 1, At: at}, func(k *keystore.Key) error {
		k.ExpiresAt = ptr(at.Add(time.Hour))
		return nil
	})
	require.ErrorIs(t, err, keystore.ErrKeyLimit, "bringing a key back counts the first key too")
}

func testKeyLimitConcurrent(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	stores := []keystore.Store{f.store(), f.store()}
	const attempts, limit = 20, 5
	keys, hashes := f.newKeys("carol", attempts)
	errs := make([]error, attempts)
	atOnce(attempts, func(i int) {
		s := stores[i%len(stores)] // half through each Store, as two processes would
		errs[i] = s.Create(context.Background(), keys[i], hashes[i], limit)
	})

	var created []string
	for i, err := range errs {
		switch {
		case err == nil:
			created = append(created, keys[i].ID)
		case errors.Is(err, keystore.ErrKeyLimit):
			requireAbsent(t, stores[0], keys[i].ID, hashes[i])
		default:
			t.Errorf("Create %d: %v, want nil or ErrKeyLimit", i, err)
		}
	}
	require.Len(t, created, limit, "successful creates")
	listed, _, err := stores[0].List(t.Context(), keystore.ListOptions{Owner: "carol", Now: f.base, Limit: attempts})
	require.NoError(t, err)
	require.ElementsMatch(t, created, ids(listed))
}

func testKeyLimitCountsLiveKeys(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	ctx := t.Context()
	attempt := func(at time.Time, max int) error {
		k, h := f.newKey("bob", at)
		return s.Create(ctx, k, h, max)
	}

	a, _ := f.create(s, "bob", f.base)
	f.create(s, "bob", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(time.Hour)) }) // b
	require.ErrorIs(t, attempt(f.base, 2), keystore.ErrKeyLimit, "a and b are live")

	revoke(f, s, a)
	c, cHash := f.newKey("bob", f.base)
	require.NoError(t, s.Create(ctx, c, cHash, 2), "revoked a does not count")
	require.ErrorIs(t, attempt(f.base, 2), keystore.ErrKeyLimit, "b and c are live")

	later := f.base.Add(2 * time.Hour) // b expired an hour before
	require.NoError(t, attempt(later, 2), "b, expired at the new key's created_at, does not count")
	require.ErrorIs(t, attempt(later, 2), keystore.ErrKeyLimit, "c and the key just made are live")

	next, nextHash := f.nextOf(c, later)
	_, err := s.Rotate(ctx, c.ID, next, nextHash, later.Add(time.Hour))
	require.NoError(t, err, "rotation never fails with ErrKeyLimit")
	require.ErrorIs(t, attempt(later, 2), keystore.ErrKeyLimit, "the key c was rotated to counts")
	require.NoError(t, attempt(later, 3), "c, rotated away but in its grace period, does not count")
	require.ErrorIs(t, attempt(later, 3), keystore.ErrKeyLimit)

	// The line counts once while a key of it is live: once the key c was
	// rotated to is revoked, c, still in its grace period, counts again.
	// Otherwise rotating with a long grace and revoking the new key, again
	// and again, would leave any number of live keys that count nowhere.
	revoke(f, s, next)
	require.ErrorIs(t, attempt(later, 3), keystore.ErrKeyLimit, "c counts once its successor is revoked")
	revoke(f, s, c)
	require.NoError(t, attempt(later, 3), "revoked, c counts no more")

	// So it does once its successor expires before it.
	d, _ := f.create(s, "carol", later)
	dNext, dNextHash := f.nextOf(d, later)
	_, err = s.Rotate(ctx, d.ID, dNext, dNextHash, later.Add(24*time.Hour))
	require.NoError(t, err)
	expireAt(f, s, dNext, later.Add(time.Hour))
	carol := func(at time.Time) error {
		k, h := f.newKey("carol", at)
		return s.Create(ctx, k, h, 1)
	}
	require.ErrorIs(t, carol(later.Add(time.Minute)), keystore.ErrKeyLimit, "the successor is live: the line counts once")
	require.ErrorIs(t, carol(later.Add(2*time.Hour)), keystore.ErrKeyLimit, "the successor expired: d, in its grace period, counts")
	require.NoError(t, carol(later.Add(25*time.Hour)), "d's grace period is over")
}

func testUpdate(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	k, h := f.create(s, "alice", f.base, func(k *keystore.Key) {
		k.ExpiresAt = ptr(f.base.Add(time.Hour))
		k.Policies, k.Meta = []string{"orders"}, map[string]string{"plan": "free", "old": "x"}
	})

	want := k.Clone()
	want.Name = "renamed"
	want.Policies = []string{"billing", "reports"}
	want.Meta = map[string]string{"plan": "gold"}
	want.Permissions = []string{"read:users", "read:reports"}
	want.RateLimit = rate("10/s")
	want.IPAllowlist = []netip.Prefix{netip.MustParsePrefix("2001:db8:1::/48")}
	want.ExpiresAt = nil
	want.RevokedAt = ptr(f.base.Add(5 * time.Millisecond))

	calls := 0
	got, err := s.Update(t.Context(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
		calls++
		requireSameKey(t, k, cur, "fn sees the stored record")
		cur.Name, cur.Permissions, cur.RateLimit = want.Name, slices.Clone(want.Permissions), want.RateLimit
		cur.IPAllowlist, cur.ExpiresAt, cur.RevokedAt = slices.Clone(want.IPAllowlist), nil, ptr(*want.RevokedAt)
		cur.Policies, cur.Meta = slices.Clone(want.Policies), maps.Clone(want.Meta)
		return nil
	})
	require.NoError(t, err)
	require.GreaterOrEqual(t, calls, 1)
	requireSameKey(t, want, got, "Update returns the stored result")
	requireStored(t, s, want, h)
}

func testUpdateAborts(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	k, h := f.create(s, "alice", f.base)
	errRefused := errors.New("refused by fn")
	_, err := s.Update(t.Context(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
		cur.Name = "should not be stored"
		cur.RevokedAt = ptr(f.base)
		return errRefused
	})
	require.ErrorIs(t, err, errRefused)
	requireStored(t, s, k, h)
}

func testUpdateUnknown(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	unknown, _ := f.newKey("alice", f.base)
	called := false
	_, err := s.Update(t.Context(), unknown.ID, keystore.OwnerLimit{}, func(*keystore.Key) error { called = true; return nil })
	require.ErrorIs(t, err, keystore.ErrNotFound)
	require.False(t, called, "fn was called without a record")
	_, err = s.Get(t.Context(), unknown.ID)
	require.ErrorIs(t, err, keystore.ErrNotFound, "Update created a record")
}

func testUpdateConcurrent(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	stores := []keystore.Store{f.store(), f.store()}
	k, _ := f.create(stores[0], "alice", f.base, func(k *keystore.Key) { k.Permissions = nil })
	const n = 10
	var want []string
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		perm := fmt.Sprintf("perm:%d", i)
		want = append(want, perm)
		s := stores[i%len(stores)]
		wg.Go(func() {
			_, errs[i] = s.Update(context.Background(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
				cur.Permissions = append(cur.Permissions, perm)
				return nil
			})
		})
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "Update %d", i)
	}
	got, err := stores[1].Get(t.Context(), k.ID)
	require.NoError(t, err)
	require.ElementsMatch(t, want, got.Permissions, "an update was lost")
}

func testRotate(t *testing.T, newBackend Backend) {
	tests := []struct {
		name           string
		oldExpiry      time.Duration // after creation; 0: the old key never expires
		grace          time.Duration
		keepsOwnExpiry bool // else it expires at the end of the grace period
	}{
		{"an old key that never expires expires at the end of the grace period", 0, 24 * time.Hour, false},
		{"an old key that expires after the grace period expires at its end", 48 * time.Hour, time.Hour, false},
		{"an old key that expires within the grace period keeps its expiry", 30 * time.Minute, 24 * time.Hour, true},
		{"a grace period of zero expires the old key at once", 0, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, newBackend)
			s := f.store()
			old, oldHash := f.create(s, "alice", f.base, func(k *keystore.Key) {
				k.RateLimit = rate("5/s")
				k.IPAllowlist = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
				k.Policies, k.Meta = []string{"billing"}, map[string]string{"plan": "gold"}
				if tt.oldExpiry != 0 {
					k.ExpiresAt = ptr(f.base.Add(tt.oldExpiry))
				}
			})
			now := f.base.Add(10 * time.Millisecond)
			next, nextHash := f.nextOf(old, now)

			gotOld, err := s.Rotate(t.Context(), old.ID, next, nextHash, now.Add(tt.grace))
			require.NoError(t, err)

			wantOld := old.Clone()
			wantOld.RotatedTo = next.ID
			wantOld.ExpiresAt = ptr(now.Add(tt.grace))
			if tt.keepsOwnExpiry {
				wantOld.ExpiresAt = ptr(f.base.Add(tt.oldExpiry))
			}
			requireSameKey(t, wantOld, gotOld, "Rotate returns the old key as stored")
			requireStored(t, s, wantOld, oldHash)
			requireStored(t, s, next, nextHash)
			if tt.grace == 0 {
				require.Equal(t, keystore.Expired, gotOld.StatusAt(now))
			}
		})
	}
}

func testRotateRefuses(t *testing.T, newBackend Backend) {
	tests := []struct {
		name string
		// prepare turns the freshly created old key into the case under test
		// and returns the id to rotate.
		prepare func(f *fixture, s keystore.Store, old *keystore.Key) string
		// nextEdit changes the new key before Rotate.
		nextEdit func(next *keystore.Key, nextHash *keystore.Hash, old *keystore.Key, oldHash keystore.Hash)
		wantErr  error // nil: any error
	}{
		{
			name: "a revoked key is ErrNotLive",
			prepare: func(f *fixture, s keystore.Store, old *keystore.Key) string {
				revoke(f, s, old)
				return old.ID
			},
			wantErr: keystore.ErrNotLive,
		},
		{
			name: "an expired key is ErrNotLive",
			prepare: func(f *fixture, s keystore.Store, old *keystore.Key) string {
				expireAt(f, s, old, f.base.Add(5*time.Millisecond)) // before the next key's created_at
				return old.ID
			},
			wantErr: keystore.ErrNotLive,
		},
		{
			// Else the old key, no longer counted against maxPerOwner, could
			// mint any number of live successors.
			name: "a key already rotated away is ErrNotLive",
			prepare: func(f *fixture, s keystore.Store, old *keystore.Key) string {
				first, firstHash := f.nextOf(old, f.base.Add(time.Millisecond))
				rotated, err := s.Rotate(f.t.Context(), old.ID, first, firstHash, f.base.Add(time.Hour))
				require.NoError(f.t, err)
				*old = *rotated
				return old.ID
			},
			wantErr: keystore.ErrNotLive,
		},
		{
			name: "an unknown id is ErrNotFound",
			prepare: func(f *fixture, _ keystore.Store, _ *keystore.Key) string {
				k, _ := f.newKey("alice", f.base)
				return k.ID
			},
			wantErr: keystore.ErrNotFound,
		},
		{
			name:    "a new key whose hash exists is ErrExists",
			prepare: func(_ *fixture, _ keystore.Store, old *keystore.Key) string { return old.ID },
			nextEdit: func(_ *keystore.Key, nextHash *keystore.Hash, _ *keystore.Key, oldHash keystore.Hash) {
				*nextHash = oldHash
			},
			wantErr: keystore.ErrExists,
		},
		{
			name:    "a new key whose id exists is ErrExists",
			prepare: func(_ *fixture, _ keystore.Store, old *keystore.Key) string { return old.ID },
			nextEdit: func(next *keystore.Key, _ *keystore.Hash, old *keystore.Key, _ keystore.Hash) {
				next.ID = old.ID
			},
			wantErr: keystore.ErrExists,
		},
		{
			// As when an admin narrowed the key after the read the new key
			// was copied from: the rotation must not undo the change.
			name:    "a new key with a permission the old one no longer has is ErrChanged",
			prepare: func(_ *fixture, _ keystore.Store, old *keystore.Key) string { return old.ID },
			nextEdit: func(next *keystore.Key, _ *keystore.Hash, _ *keystore.Key, _ keystore.Hash) {
				next.Permissions = append(next.Permissions, "admin")
			},
			wantErr: keystore.ErrChanged,
		},
		{
			name:    "a new key whose expiry is not the old one's is ErrChanged",
			prepare: func(_ *fixture, _ keystore.Store, old *keystore.Key) string { return old.ID },
			nextEdit: func(next *keystore.Key, _ *keystore.Hash, _ *keystore.Key, _ keystore.Hash) {
				end := next.CreatedAt.Add(time.Hour)
				next.ExpiresAt = &end
			},
			wantErr: keystore.ErrChanged,
		},
		{
			name:    "a new key outside the old one's line of rotations is ErrChanged",
			prepare: func(_ *fixture, _ keystore.Store, old *keystore.Key) string { return old.ID },
			nextEdit: func(next *keystore.Key, _ *keystore.Hash, _ *keystore.Key, _ keystore.Hash) {
				next.Lineage = "key_someoneelse"
			},
			wantErr: keystore.ErrChanged,
		},
		{
			name:    "a new key that does not name the old one in rotated_from is an error",
			prepare: func(_ *fixture, _ keystore.Store, old *keystore.Key) string { return old.ID },
			nextEdit: func(next *keystore.Key, _ *keystore.Hash, _ *keystore.Key, _ keystore.Hash) {
				next.RotatedFrom = "key_someoneelse"
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, newBackend)
			s := f.store()
			old, oldHash := f.create(s, "alice", f.base)
			id := tt.prepare(f, s, old)
			next, nextHash := f.nextOf(old, f.base.Add(10*time.Millisecond))
			next.RotatedFrom = id
			if tt.nextEdit != nil {
				tt.nextEdit(next, &nextHash, old, oldHash)
			}

			_, err := s.Rotate(t.Context(), id, next, nextHash, f.base.Add(time.Hour))
			require.Error(t, err)
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
			}
			if id == old.ID {
				requireStored(t, s, old, oldHash)
			}
			if next.ID != old.ID {
				_, err = s.Get(t.Context(), next.ID)
				require.ErrorIs(t, err, keystore.ErrNotFound, "the new key was stored")
			}
			if nextHash != oldHash {
				_, err = s.Lookup(t.Context(), nextHash)
				require.ErrorIs(t, err, keystore.ErrNotFound, "the new key was stored")
			}
		})
	}
}

func revoke(f *fixture, s keystore.Store, k *keystore.Key) {
	f.t.Helper()
	got, err := s.Update(f.t.Context(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
		cur.RevokedAt = ptr(f.base)
		return nil
	})
	require.NoError(f.t, err)
	*k = *got
}

func expireAt(f *fixture, s keystore.Store, k *keystore.Key, at time.Time) {
	f.t.Helper()
	got, err := s.Update(f.t.Context(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
		cur.ExpiresAt = ptr(at)
		return nil
	})
	require.NoError(f.t, err)
	*k = *got
}

func ids(keys []*keystore.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

func testListOrder(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	var all, alices []string
	// Created out of id order, so that the store has to sort.
	for i, offset := range []int{7, 2, 9, 0, 5, 3, 8, 1} {
		owner := "alice"
		if i%3 == 2 {
			owner = "bob"
		}
		k, _ := f.create(s, owner, f.base.Add(time.Duration(offset)*time.Millisecond))
		all = append(all, k.ID)
		if owner == "alice" {
			alices = append(alices, k.ID)
		}
	}
	slices.Sort(all)
	slices.Sort(alices)

	tests := []struct {
		name  string
		owner string
		want  []string
	}{
		{"every owner", "", all},
		{"one owner", "alice", alices},
		{"an owner without keys", "nobody", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, next, err := s.List(t.Context(), keystore.ListOptions{Owner: tt.owner, Now: f.base})
			require.NoError(t, err)
			require.Equal(t, tt.want, nilIfEmpty(ids(got)))
			require.Empty(t, next)
		})
	}
}

func nilIfEmpty(s []string) []string {
	if len(s) == 0 {
		return nil
	}
	return s
}

func testListLive(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	now := f.base.Add(time.Hour)
	live, _ := f.create(s, "alice", f.base)
	expiresLater, _ := f.create(s, "alice", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(now.Add(time.Millisecond)) })
	expiresNow, _ := f.create(s, "alice", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(now) })
	expired, _ := f.create(s, "alice", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(time.Minute)) })
	revoked, _ := f.create(s, "alice", f.base)
	revoke(f, s, revoked)
	revokedLater, _ := f.create(s, "alice", f.base, func(k *keystore.Key) { k.RevokedAt = ptr(now.Add(time.Hour)) })
	inGrace, _ := f.create(s, "alice", f.base)
	next, nextHash := f.nextOf(inGrace, f.base.Add(time.Millisecond))
	_, err := s.Rotate(t.Context(), inGrace.ID, next, nextHash, now.Add(time.Hour))
	require.NoError(t, err)
	bobs, _ := f.create(s, "bob", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(time.Minute)) })

	tests := []struct {
		name string
		opts keystore.ListOptions
		want []*keystore.Key
	}{
		{
			"live keys as of Now",
			keystore.ListOptions{Now: now},
			// A revoked_at, even a future one, means revoked: StatusAt says so.
			[]*keystore.Key{live, expiresLater, inGrace, next},
		},
		{
			"every key with IncludeRevoked",
			keystore.ListOptions{Now: now, IncludeRevoked: true},
			[]*keystore.Key{live, expiresLater, expiresNow, expired, revoked, revokedLater, inGrace, next, bobs},
		},
		{
			"one owner's keys with IncludeRevoked",
			keystore.ListOptions{Owner: "bob", Now: now, IncludeRevoked: true},
			[]*keystore.Key{bobs},
		},
		{
			"live keys as of an earlier Now",
			keystore.ListOptions{Now: f.base.Add(time.Second)},
			[]*keystore.Key{live, expiresLater, expiresNow, expired, inGrace, next, bobs},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cursor, err := s.List(t.Context(), tt.opts)
			require.NoError(t, err)
			require.Empty(t, cursor)
			want := ids(tt.want)
			slices.Sort(want)
			require.Equal(t, want, ids(got))
		})
	}
}

func testListPages(t *testing.T, newBackend Backend) {
	tests := []struct {
		name   string
		keys   int    // live keys of alice, the ones listed
		others int    // keys not listed (bob's, alice's revoked ones), interleaved
		owner  string // the filter
		limit  int
	}{
		{"25 keys in pages of 10", 25, 0, "", 10},
		{"20 keys in pages of 10 (no empty last page)", 20, 0, "", 10},
		{"5 keys in one page of 10", 5, 0, "", 10},
		{"no keys", 0, 0, "", 10},
		{"3 keys in pages of 1", 3, 0, "", 1},
		{"one owner's 12 live keys among 9 others in pages of 5", 12, 9, "alice", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, newBackend)
			s := f.store()
			var want []string
			for i := range tt.keys {
				k, _ := f.create(s, "alice", f.base.Add(time.Duration(2*i)*time.Millisecond))
				want = append(want, k.ID)
			}
			for i := range tt.others {
				at := f.base.Add(time.Duration(2*i+1) * time.Millisecond)
				if i%2 == 0 {
					f.create(s, "bob", at)
				} else {
					k, _ := f.create(s, "alice", at)
					revoke(f, s, k)
				}
			}
			slices.Sort(want)

			var got []string
			cursor := ""
			wantPages := max(1, (tt.keys+tt.limit-1)/tt.limit)
			for page := 1; ; page++ {
				require.LessOrEqual(t, page, wantPages, "more pages than expected")
				keys, next, err := s.List(t.Context(), keystore.ListOptions{Owner: tt.owner, Now: f.base, Limit: tt.limit, After: cursor})
				require.NoError(t, err)
				require.LessOrEqual(t, len(keys), tt.limit)
				got = append(got, ids(keys)...)
				if next == "" {
					require.Equal(t, wantPages, page, "the cursor ran out early")
					break
				}
				require.Len(t, keys, tt.limit, "a page before the last is full")
				cursor = next
			}
			require.Equal(t, nilIfEmpty(want), nilIfEmpty(got), "every key once, in id order")
		})
	}
}

func testListDefaultLimit(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	for i := range 101 {
		f.create(s, "alice", f.base.Add(time.Duration(i)*time.Millisecond))
	}
	for _, limit := range []int{0, -1} {
		keys, next, err := s.List(t.Context(), keystore.ListOptions{Now: f.base, Limit: limit})
		require.NoError(t, err)
		require.Len(t, keys, 100, "Limit %d", limit)
		require.Equal(t, keys[99].ID, next, "Limit %d: the cursor is the last id of the page", limit)
		rest, next, err := s.List(t.Context(), keystore.ListOptions{Now: f.base, Limit: limit, After: next})
		require.NoError(t, err)
		require.Len(t, rest, 1)
		require.Empty(t, next)
	}
}

func testTouch(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	ctx := t.Context()
	a, aHash := f.create(s, "alice", f.base)
	b, _ := f.create(s, "alice", f.base)
	unknown, _ := f.newKey("alice", f.base)
	t1 := f.base.Add(time.Minute + 5*time.Millisecond)
	t2 := t1.Add(time.Minute)

	lastUsed := func(id string) *time.Time {
		t.Helper()
		k, err := s.Get(ctx, id)
		require.NoError(t, err)
		return k.LastUsedAt
	}

	t.Run("an empty batch is fine", func(t *testing.T) {
		require.NoError(t, s.TouchLastUsed(ctx, nil))
		require.NoError(t, s.TouchLastUsed(ctx, map[string]time.Time{}))
		require.Nil(t, lastUsed(a.ID))
	})
	t.Run("a batch sets last_used_at and ignores unknown ids", func(t *testing.T) {
		require.NoError(t, s.TouchLastUsed(ctx, map[string]time.Time{a.ID: t1, b.ID: t2, unknown.ID: t2, "": t2}))
		require.Equal(t, ptr(t1), lastUsed(a.ID))
		require.Equal(t, ptr(t2), lastUsed(b.ID))
		_, err := s.Get(ctx, unknown.ID)
		require.ErrorIs(t, err, keystore.ErrNotFound, "TouchLastUsed created a record")
	})
	t.Run("last_used_at never moves backwards", func(t *testing.T) {
		require.NoError(t, s.TouchLastUsed(ctx, map[string]time.Time{a.ID: t2}))
		require.NoError(t, s.TouchLastUsed(ctx, map[string]time.Time{a.ID: t1}))
		require.Equal(t, ptr(t2), lastUsed(a.ID))
	})
	t.Run("the rest of the record is untouched", func(t *testing.T) {
		want := a.Clone()
		want.LastUsedAt = ptr(t2)
		requireStored(t, s, want, aHash)
	})
}

func testReopen(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s, closeStore := f.storeWithClose()
	k, h := f.create(s, "alice", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(time.Hour)) })
	require.NoError(t, closeStore())

	requireStored(t, f.store(), k, h)
}

func testPepperMark(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	ctx := t.Context()
	s, closeStore := f.storeWithClose()
	_, ok := s.(keystore.PepperMarker)
	require.True(t, ok, "the store keeps no pepper mark")

	one := keystore.NewHasher([]byte("pepper one"))
	first := &keystore.Manager{Store: s, Hasher: one}
	_, k, err := first.Create(ctx, keystore.Spec{Name: "made under pepper one", Permissions: []string{"read"}}, "test")
	require.NoError(t, err, "the first pepper to ask marks the store")
	require.NoError(t, closeStore())

	// Another process, on the reopened store: another pepper, no pepper at
	// all (plain SHA-256), or the first one cut short.
	s = f.store()
	for name, h := range map[string]*keystore.Hasher{
		"another pepper": keystore.NewHasher([]byte("pepper two")),
		"no pepper":      keystore.NewHasher(nil),
		"a cut pepper":   keystore.NewHasher([]byte("pepper on")),
	} {
		other := &keystore.Manager{Store: s, Hasher: h}
		_, _, err := other.Create(ctx, keystore.Spec{Name: "made under " + name, Permissions: []string{"read"}}, "test")
		require.ErrorIs(t, err, keystore.ErrPepperMismatch, name)
		_, _, err = other.Rotate(ctx, k.ID, time.Hour, "test", nil)
		require.ErrorIs(t, err, keystore.ErrPepperMismatch, name)
		require.ErrorIs(t, other.CheckPepper(ctx), keystore.ErrPepperMismatch, "%s: asked again, it still differs", name)
	}
	keys, _, err := s.List(ctx, keystore.ListOptions{IncludeRevoked: true})
	require.NoError(t, err)
	require.Len(t, keys, 1, "a Manager with another pepper made or rotated a key")
	require.Empty(t, keys[0].RotatedTo, "a Manager with another pepper rotated the key")

	// The mark holds the first pepper's, whatever is offered after.
	mark, err := s.(keystore.PepperMarker).MarkPepper(ctx, keystore.NewHasher([]byte("pepper three")).Hash("x"))
	require.NoError(t, err)
	same := &keystore.Manager{Store: s, Hasher: one}
	require.NoError(t, same.CheckPepper(ctx), "the first pepper, in another process, matches its mark")
	require.NotEqual(t, keystore.NewHasher([]byte("pepper three")).Hash("x"), mark)
	_, _, err = same.Rotate(ctx, k.ID, time.Hour, "test", nil)
	require.NoError(t, err, "the first pepper still makes keys")
}

func testPing(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	require.NoError(t, f.store().Ping(t.Context()))
}

// watcher records what Watch reports on one Store.
type watcher struct {
	t      *testing.T
	events chan keystore.Hash
}

// watch starts Watch on s until the test ends.
func (f *fixture) watch(s keystore.Store) *watcher {
	w := &watcher{t: f.t, events: make(chan keystore.Hash, 4096)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Watch(ctx, func(h keystore.Hash) {
			select {
			case w.events <- h:
			default: // the test stopped reading; never block the store
			}
		})
	}()
	f.t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			f.t.Error("Watch did not return after its context was done")
		}
	})
	return w
}

// await waits up to d for an event with hash h and returns the other
// non-zero hashes reported before it.
func (w *watcher) await(h keystore.Hash, d time.Duration, what string) (before []keystore.Hash) {
	w.t.Helper()
	timeout := time.After(d)
	for {
		select {
		case got := <-w.events:
			if got == h {
				return before
			}
			if !got.IsZero() {
				before = append(before, got)
			}
		case <-timeout:
			w.t.Fatalf("Watch did not report %s within %v", what, d)
			return nil
		}
	}
}

// ready waits until w reports changes, by renaming canary through via until
// an event for it arrives: a Watch may subscribe some time after it is called.
func (w *watcher) ready(via keystore.Store, canary *keystore.Key, canaryHash keystore.Hash) {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		_, err := via.Update(w.t.Context(), canary.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
			k.Name = fmt.Sprintf("canary %d", i)
			return nil
		})
		require.NoError(w.t, err)
		wait := time.After(100 * time.Millisecond)
	drain:
		for {
			select {
			case h := <-w.events:
				if h == canaryHash {
					return
				}
			case <-wait:
				break drain
			}
		}
	}
	w.t.Fatal("Watch reported nothing for 10s while the canary key changed")
}

// drain discards whatever w reported so far.
func (w *watcher) drain() {
	for {
		select {
		case <-w.events:
		default:
			return
		}
	}
}

func testWatch(t *testing.T, newBackend Backend) {
	tests := []struct {
		name    string
		viaSame bool // change through the watching Store itself
		// change makes a change and returns the hashes Watch must report.
		change func(f *fixture, s keystore.Store, existing *keystore.Key, existingHash keystore.Hash) []keystore.Hash
	}{
		{"a key created through another Store", false, func(f *fixture, s keystore.Store, _ *keystore.Key, _ keystore.Hash) []keystore.Hash {
			_, h := f.create(s, "alice", f.base)
			return []keystore.Hash{h}
		}},
		{"a key revoked through another Store", false, func(f *fixture, s keystore.Store, k *keystore.Key, h keystore.Hash) []keystore.Hash {
			revoke(f, s, k)
			return []keystore.Hash{h}
		}},
		{"a key rotated through another Store (both hashes)", false, func(f *fixture, s keystore.Store, k *keystore.Key, h keystore.Hash) []keystore.Hash {
			next, nextHash := f.nextOf(k, f.base.Add(time.Millisecond))
			_, err := s.Rotate(f.t.Context(), k.ID, next, nextHash, f.base.Add(time.Hour))
			require.NoError(f.t, err)
			return []keystore.Hash{h, nextHash}
		}},
		{"a key updated through the watching Store", true, func(f *fixture, s keystore.Store, k *keystore.Key, h keystore.Hash) []keystore.Hash {
			_, err := s.Update(f.t.Context(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error { cur.Permissions = []string{"admin"}; return nil })
			require.NoError(f.t, err)
			return []keystore.Hash{h}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, newBackend)
			watching, other := f.store(), f.store()
			via := other
			if tt.viaSame {
				via = watching
			}
			canary, canaryHash := f.create(via, "canary", f.base)
			existing, existingHash := f.create(via, "alice", f.base)
			w := f.watch(watching)
			w.ready(via, canary, canaryHash)

			want := tt.change(f, via, existing, existingHash)
			for _, h := range want {
				// Within a second of the change returning (docs/keys.md).
				w.await(h, time.Second, "the change of hash "+h.String()[:8])
			}
		})
	}
}

func testWatchIgnoresTouch(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	watching, other := f.store(), f.store()
	canary, canaryHash := f.create(other, "canary", f.base)
	touched, touchedHash := f.create(other, "alice", f.base)
	changed, changedHash := f.create(other, "alice", f.base)
	w := f.watch(watching)
	w.ready(other, canary, canaryHash)
	w.drain()

	require.NoError(t, other.TouchLastUsed(t.Context(), map[string]time.Time{touched.ID: f.base.Add(time.Minute)}))
	revoke(f, other, changed) // a change after the touch, so that Watch has reported the touch if it ever will
	before := w.await(changedHash, time.Second, "the revocation")
	require.NotContains(t, before, touchedHash, "TouchLastUsed reached Watch")
}

func testWatchReturns(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Watch(ctx, func(keystore.Hash) {})
	}()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Watch did not return within 2s of its context being cancelled")
	}
}

// rate is the rate limit s, which must parse.
func rate(s string) keystore.RateLimit {
	r, err := keystore.ParseRateLimit(s)
	if err != nil {
		panic(err)
	}
	return r
}

// A server serves checks from the moment it listens, and starts watching
// the store at the same moment: a check may fill the cache, and the key be
// revoked, before the watch has found where the change log stands. That
// revocation is older than the watch's starting point, so the watch never
// reports it; the cache would go on serving the key as live for its whole
// TTL. Watch must therefore say "forget everything" once it has found its
// starting point, as it does after any other moment it could not see.
func testWatchForgetsWhatCameBefore(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	watching, other := f.store(), f.store()
	k, h := f.create(other, "alice", f.base)
	c := keystore.NewCache(watching, keystore.CacheOptions{TTL: time.Hour, MaxStale: time.Hour})
	got, err := c.Lookup(t.Context(), h)
	require.NoError(t, err)
	require.Nil(t, got.RevokedAt, "the key is live when the first check fills the cache")

	revoke(f, other, k) // before the server's watch has begun

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	// Within a second of the watch starting (docs/keys.md), with room.
	deadline := time.Now().Add(2 * time.Second)
	for {
		got, err := c.Lookup(t.Context(), h)
		require.NoError(t, err)
		if got.RevokedAt != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("a key revoked between the cache's first fill and the start of its Watch is still served as live 2s later (it would be for the cache's whole TTL)")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
