package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// The parts of the contract about a bounded store: an update may not bring
// back a key past its owner's limit, and Sweep keeps listing cheap and
// deletes what has been dead long enough.

// Bringing back the expired successor of a key still in its grace period
// adds no key to its owner's count: before, the line counts once (the key
// in grace, whose successor is no longer live), and after, once (the
// successor, which stands for it again). The key in grace was counted
// against the revival, which was refused at the limit.
func testRevivingASuccessorKeepsItsLineCountingOnce(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	ctx := t.Context()
	a, _ := f.create(s, "erin", f.base)
	b, bHash := f.nextOf(a, f.base)
	_, err := s.Rotate(ctx, a.ID, b, bHash, f.base.Add(30*24*time.Hour)) // a long grace period
	require.NoError(t, err)
	expireAt(f, s, b, f.base.Add(time.Minute))
	at := f.base.Add(time.Hour) // b has expired; a, in its grace period, counts
	_, err = s.Update(ctx, b.ID, keystore.OwnerLimit{Max: 1, At: at}, func(cur *keystore.Key) error {
		cur.ExpiresAt = nil
		return nil
	})
	require.NoError(t, err, "reviving b: the line counts once before and after")
	// Another key of the owner's is still refused: the line counts.
	c, ch := f.newKey("erin", at)
	require.ErrorIs(t, s.Create(ctx, c, ch, 1), keystore.ErrKeyLimit)
}

func testUpdateOwnerLimit(t *testing.T, newBackend Backend) {
	// The owner "capped" has two keys that count; the key under test is
	// prepared, then changed by the step, with a limit of max at f.base.
	tests := []struct {
		name    string
		max     int
		prepare func(k *keystore.Key) // the key under test, before it is stored
		step    func(k *keystore.Key) // the change
		wantErr error
	}{
		{"reviving an expired key at the limit is ErrKeyLimit", 2,
			func(k *keystore.Key) { k.ExpiresAt = ptr(k.CreatedAt.Add(-time.Minute)) },
			func(k *keystore.Key) { k.ExpiresAt = nil }, keystore.ErrKeyLimit},
		{"moving an expired key's expiry into the future at the limit is ErrKeyLimit", 2,
			func(k *keystore.Key) { k.ExpiresAt = ptr(k.CreatedAt.Add(-time.Minute)) },
			func(k *keystore.Key) { k.ExpiresAt = ptr(k.CreatedAt.Add(time.Hour)) }, keystore.ErrKeyLimit},
		{"reviving an expired key below the limit is allowed", 3,
			func(k *keystore.Key) { k.ExpiresAt = ptr(k.CreatedAt.Add(-time.Minute)) },
			func(k *keystore.Key) { k.ExpiresAt = nil }, nil},
		{"reviving with no limit is allowed", 0,
			func(k *keystore.Key) { k.ExpiresAt = ptr(k.CreatedAt.Add(-time.Minute)) },
			func(k *keystore.Key) { k.ExpiresAt = nil }, nil},
		{"renaming an expired key at the limit is allowed (it stays expired)", 2,
			func(k *keystore.Key) { k.ExpiresAt = ptr(k.CreatedAt.Add(-time.Minute)) },
			func(k *keystore.Key) { k.Name = "renamed" }, nil},
		{"changing a key that already counts is allowed over the limit", 1,
			nil,
			func(k *keystore.Key) { k.ExpiresAt = nil; k.Name = "renamed" }, nil},
		{"un-revoking a key at the limit is ErrKeyLimit", 2,
			func(k *keystore.Key) { k.RevokedAt = ptr(k.CreatedAt) },
			func(k *keystore.Key) { k.RevokedAt = nil }, keystore.ErrKeyLimit},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, newBackend)
			s := f.store()
			f.create(s, "capped", f.base)
			f.create(s, "capped", f.base)
			f.create(s, "other", f.base) // another owner's keys do not count
			k, h := f.create(s, "capped", f.base, func(k *keystore.Key) {
				if tt.prepare != nil {
					tt.prepare(k)
				}
			})
			got, err := s.Update(t.Context(), k.ID, keystore.OwnerLimit{Max: tt.max, At: f.base}, func(cur *keystore.Key) error {
				tt.step(cur)
				return nil
			})
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				requireStored(t, s, k, h)
				return
			}
			require.NoError(t, err)
			want := k.Clone()
			tt.step(want)
			requireSameKey(t, want, got)
			requireStored(t, s, want, h)
		})
	}
}

func testUpdateOwnerLimitConcurrent(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	stores := []keystore.Store{f.store(), f.store()}
	const expired, limit = 12, 4
	var ids []string
	for range expired {
		k, _ := f.create(stores[0], "dora", f.base, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(-time.Second)) })
		ids = append(ids, k.ID)
	}
	errs := make([]error, expired)
	atOnce(expired, func(i int) {
		s := stores[i%len(stores)]
		_, errs[i] = s.Update(context.Background(), ids[i], keystore.OwnerLimit{Max: limit, At: f.base}, func(cur *keystore.Key) error {
			cur.ExpiresAt = nil
			return nil
		})
	})
	revived := 0
	for i, err := range errs {
		switch {
		case err == nil:
			revived++
		case !errors.Is(err, keystore.ErrKeyLimit):
			t.Errorf("Update %d: %v, want nil or ErrKeyLimit", i, err)
		}
	}
	require.Equal(t, limit, revived, "revivals that succeeded")
	listed, _, err := stores[1].List(t.Context(), keystore.ListOptions{Owner: "dora", Now: f.base})
	require.NoError(t, err)
	require.Len(t, listed, limit, "live keys of the owner")
}

// deadAndAlive stores one key of each kind the sweep must tell apart, all of
// owner "alice" but one, and returns them by name. "Long ago" is before
// f.base-24h (the purge cutoff the tests use); "recently" after it.
func deadAndAlive(f *fixture, s keystore.Store) map[string]*keystore.Key {
	f.t.Helper()
	longAgo, recently := f.base.Add(-48*time.Hour), f.base.Add(-time.Hour)
	out := map[string]*keystore.Key{}
	add := func(name, owner string, at time.Time, edit func(k *keystore.Key)) {
		if edit == nil {
			edit = func(*keystore.Key) {}
		}
		k, _ := f.create(s, owner, at, edit)
		out[name] = k
	}
	add("live", "alice", longAgo, nil)
	add("expires later", "alice", longAgo, func(k *keystore.Key) { k.ExpiresAt = ptr(f.base.Add(time.Hour)) })
	add("revoked long ago", "alice", longAgo.Add(-time.Hour), func(k *keystore.Key) { k.RevokedAt = ptr(longAgo) })
	add("revoked recently", "alice", longAgo, func(k *keystore.Key) { k.RevokedAt = ptr(recently) })
	add("expired long ago", "alice", longAgo.Add(-time.Hour), func(k *keystore.Key) { k.ExpiresAt = ptr(longAgo) })
	add("expired recently", "alice", longAgo, func(k *keystore.Key) { k.ExpiresAt = ptr(recently) })
	// Revoked after it had expired: dead since its expiry.
	add("expired long ago, revoked recently", "alice", longAgo.Add(-time.Hour), func(k *keystore.Key) {
		k.ExpiresAt, k.RevokedAt = ptr(longAgo), ptr(recently)
	})
	add("bob's expired long ago", "bob", longAgo.Add(-time.Hour), func(k *keystore.Key) { k.ExpiresAt = ptr(longAgo) })

	// Rotated long ago with a grace period that ended long ago, and rotated
	// recently with one that has not ended.
	old, _ := f.create(s, "alice", longAgo.Add(-2*time.Hour))
	next, nextHash := f.nextOf(old, longAgo.Add(-time.Hour))
	rotated, err := s.Rotate(f.t.Context(), old.ID, next, nextHash, longAgo)
	require.NoError(f.t, err)
	out["rotated, grace ended long ago"], out["its successor"] = rotated, next
	old, _ = f.create(s, "alice", longAgo)
	next, nextHash = f.nextOf(old, recently)
	rotated, err = s.Rotate(f.t.Context(), old.ID, next, nextHash, f.base.Add(time.Hour))
	require.NoError(f.t, err)
	out["rotated, in its grace period"], out["its new successor"] = rotated, next
	return out
}

func testSweepPurges(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	keys := deadAndAlive(f, s)
	purged := []string{"revoked long ago", "expired long ago", "expired long ago, revoked recently",
		"bob's expired long ago", "rotated, grace ended long ago"}

	total := keystore.SweepResult{}
	for range 10 {
		res, err := s.Sweep(t.Context(), keystore.SweepOptions{Now: f.base, PurgeBefore: f.base.Add(-24 * time.Hour)})
		require.NoError(t, err)
		total.Unlisted += res.Unlisted
		total.Purged += res.Purged
		if !res.More {
			break
		}
	}
	require.Equal(t, len(purged), total.Purged, "records purged")

	for name, k := range keys {
		got, err := s.Get(t.Context(), k.ID)
		if slices.Contains(purged, name) {
			require.ErrorIs(t, err, keystore.ErrNotFound, "%s was not purged", name)
			_, err = s.Lookup(t.Context(), hasher.Hash("secret of "+k.ID))
			require.ErrorIs(t, err, keystore.ErrNotFound, "%s: its hash still finds it", name)
			continue
		}
		require.NoError(t, err, "%s was purged", name)
		requireSameKey(t, k, got, name)
	}
	all, _, err := s.List(t.Context(), keystore.ListOptions{Now: f.base, IncludeRevoked: true, Limit: 100})
	require.NoError(t, err)
	for _, name := range purged {
		require.NotContains(t, ids(all), keys[name].ID, "%s is still listed with IncludeRevoked", name)
	}
	require.Len(t, all, len(keys)-len(purged))

	res, err := s.Sweep(t.Context(), keystore.SweepOptions{Now: f.base, PurgeBefore: f.base.Add(-24 * time.Hour)})
	require.NoError(t, err)
	require.Equal(t, keystore.SweepResult{}, res, "a second sweep finds nothing to do")

	// What counts against alice's limit is unchanged: live, expires later
	// and the two successors (a key in its grace period does not count).
	k, h := f.newKey("alice", f.base)
	require.ErrorIs(t, s.Create(t.Context(), k, h, 4), keystore.ErrKeyLimit)
	require.NoError(t, s.Create(t.Context(), k, h, 5))
}

func testSweepKeepsListing(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	keys := deadAndAlive(f, s)
	live := func(now time.Time, owner string) []string {
		var out []string
		for _, k := range keys {
			if k.StatusAt(now) == keystore.Live && (owner == "" || k.Owner == owner) {
				out = append(out, k.ID)
			}
		}
		slices.Sort(out)
		return out
	}
	list := func(now time.Time, owner string, limit int) []string {
		var got []string
		opts := keystore.ListOptions{Now: now, Owner: owner, Limit: limit}
		for range 20 {
			page, next, err := s.List(t.Context(), opts)
			require.NoError(t, err)
			got = append(got, ids(page)...)
			if next == "" {
				return got
			}
			opts.After = next
		}
		t.Fatal("List does not end")
		return nil
	}
	check := func(when string) {
		t.Helper()
		for _, owner := range []string{"", "alice", "bob"} {
			for _, limit := range []int{1, 2, 100} {
				require.Equal(t, nilIfEmpty(live(f.base, owner)), nilIfEmpty(list(f.base, owner, limit)),
					"%s: owner %q, limit %d", when, owner, limit)
			}
		}
	}
	check("before any sweep")
	res, err := s.Sweep(t.Context(), keystore.SweepOptions{Now: f.base, Batch: 1000})
	require.NoError(t, err)
	require.False(t, res.More)
	require.Zero(t, res.Purged, "no PurgeBefore, no purge")
	require.Positive(t, res.Unlisted, "expired keys were unlisted")
	check("after a sweep")

	// A key that expired and was unlisted comes back when its expiry moves
	// into the future, and the next sweep leaves it be.
	revived, err := s.Update(t.Context(), keys["expired recently"].ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
		k.ExpiresAt = ptr(f.base.Add(time.Hour))
		return nil
	})
	require.NoError(t, err)
	keys["expired recently"] = revived
	check("after a revival")
	_, err = s.Sweep(t.Context(), keystore.SweepOptions{Now: f.base, PurgeBefore: f.base})
	require.NoError(t, err)
	_, err = s.Get(t.Context(), revived.ID)
	require.NoError(t, err, "a revived key is not purged")
	check("after sweeping again")
}

func testSweepBatches(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	s := f.store()
	longAgo := f.base.Add(-48 * time.Hour)
	for i := range 7 {
		f.create(s, "alice", longAgo.Add(time.Duration(i)*time.Millisecond), func(k *keystore.Key) { k.ExpiresAt = ptr(longAgo.Add(time.Hour)) })
	}
	opts := keystore.SweepOptions{Now: f.base, PurgeBefore: f.base, Batch: 3}
	var unlisted, purged []int
	for range 5 {
		res, err := s.Sweep(t.Context(), opts)
		require.NoError(t, err)
		unlisted, purged = append(unlisted, res.Unlisted), append(purged, res.Purged)
		if !res.More {
			break
		}
	}
	// Each call unlists a batch, then purges a batch (those it unlisted
	// first, as they ended first); what a purge deletes needs no unlisting.
	require.Equal(t, 7, sum(purged), "purged in all (per call: %v)", purged)
	for i := range purged {
		require.LessOrEqual(t, unlisted[i], 3)
		require.LessOrEqual(t, purged[i], 3)
	}
	all, _, err := s.List(t.Context(), keystore.ListOptions{Now: f.base, IncludeRevoked: true})
	require.NoError(t, err)
	require.Empty(t, all)
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}

func testSweepConcurrent(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	stores := []keystore.Store{f.store(), f.store()}
	longAgo := f.base.Add(-48 * time.Hour)
	const dead = 40
	for i := range dead {
		f.create(stores[0], fmt.Sprint("owner-", i%3), longAgo, func(k *keystore.Key) {
			if i%2 == 0 {
				k.RevokedAt = ptr(longAgo)
			} else {
				k.ExpiresAt = ptr(longAgo)
			}
		})
	}
	live, _ := f.create(stores[0], "owner-0", longAgo)

	var mu sync.Mutex
	total := 0
	var wg sync.WaitGroup
	for i := range 4 {
		s := stores[i%len(stores)]
		wg.Go(func() {
			for {
				res, err := s.Sweep(context.Background(), keystore.SweepOptions{Now: f.base, PurgeBefore: f.base, Batch: 7})
				if err != nil {
					t.Errorf("Sweep: %v", err)
					return
				}
				mu.Lock()
				total += res.Purged
				mu.Unlock()
				if !res.More {
					return
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, dead, total, "every dead key purged exactly once")
	all, _, err := stores[1].List(t.Context(), keystore.ListOptions{Now: f.base, IncludeRevoked: true})
	require.NoError(t, err)
	require.Equal(t, []string{live.ID}, ids(all))
}

func testSweepIsNotAChange(t *testing.T, newBackend Backend) {
	f := newFixture(t, newBackend)
	watching, other := f.store(), f.store()
	canary, canaryHash := f.create(other, "canary", f.base)
	_, deadHash := f.create(other, "alice", f.base.Add(-48*time.Hour), func(k *keystore.Key) { k.RevokedAt = ptr(f.base.Add(-48 * time.Hour)) })
	changed, changedHash := f.create(other, "alice", f.base)
	w := f.watch(watching)
	w.ready(other, canary, canaryHash)
	w.drain()

	res, err := other.Sweep(t.Context(), keystore.SweepOptions{Now: f.base, PurgeBefore: f.base})
	require.NoError(t, err)
	require.Equal(t, 1, res.Purged)
	revoke(f, other, changed)
	before := w.await(changedHash, time.Second, "the revocation")
	require.NotContains(t, before, deadHash, "a purge reached Watch")
}
