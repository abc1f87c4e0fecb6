package keystore

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestAFillNeverLandsAfterAnInvalidationOfItsKey stops a fill in the
// window a check-then-insert leaves open (its epoch checked, its entry not
// yet inserted), changes the key there and invalidates it. The invalidation
// must wait for the fill, so that it removes what the fill inserted: a
// lookup after it sees the new record.
func TestAFillNeverLandsAfterAnInvalidationOfItsKey(t *testing.T) {
	c, st, _, h := setup(t)
	invalidated := make(chan struct{})
	waits := make(chan struct{}, 1)
	c.hooks.contended = func() {
		select {
		case waits <- struct{}{}:
		default:
		}
	}
	var ranInside atomic.Bool
	c.hooks.filling = func(Hash) {
		c.hooks.filling = nil // only the first fill
		st.set(h, &Key{ID: "key_known", Name: "revoked"})
		go func() { c.Invalidate(h); close(invalidated) }()
		select {
		case <-waits: // the invalidation waits for this fill to finish
		case <-invalidated:
			ranInside.Store(true) // it ran inside the window: the insert below lands after it
		}
	}

	k, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, "known", k.Name, "the lookup that began before the change answers what it read")
	<-invalidated
	assert.False(t, ranInside.Load(), "an invalidation ran between a fill's check and its insert")

	k, err = c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, "revoked", k.Name, "the old record was cached after the invalidation")
	assert.EqualValues(t, 2, st.lookups.Load())
}

// TestALookupAfterAnInvalidationDoesNotShareAnOlderFetch: concurrent
// misses share one store call, but one that begins after an invalidation
// must not take the answer of a call that began before it.
func TestALookupAfterAnInvalidationDoesNotShareAnOlderFetch(t *testing.T) {
	c, st, _, h := setup(t)
	st.gate = make(chan struct{})
	first := make(chan *Key)
	go func() { k, _ := c.Lookup(context.Background(), h); first <- k }()
	require.Eventually(t, func() bool { return st.lookups.Load() == 1 }, time.Second, time.Millisecond)

	st.set(h, &Key{ID: "key_known", Name: "changed"})
	c.Invalidate(h)
	second := make(chan *Key)
	go func() { k, _ := c.Lookup(context.Background(), h); second <- k }()
	require.Eventually(t, func() bool { return st.lookups.Load() == 2 }, time.Second, time.Millisecond,
		"the lookup after the invalidation asks the store itself")
	close(st.gate)
	assert.Equal(t, "known", (<-first).Name)
	assert.Equal(t, "changed", (<-second).Name)

	st.gate = nil
	k, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, "changed", k.Name)
	assert.EqualValues(t, 2, st.lookups.Load(), "the newer fill is cached, the older one is not")
}

// TestFillsAndInvalidationsUnderLoad changes keys over and over while
// readers keep fills in flight; after each change and its invalidation, a
// lookup must return exactly the new record, whatever was in flight. Run
// under -race it also checks the locking.
func TestFillsAndInvalidationsUnderLoad(t *testing.T) {
	st := newCountingStore()
	st.jitter = true
	hashes := make([]Hash, 6)
	for i := range hashes {
		hashes[i] = NewHasher(nil).Hash("sk_stress_" + strconv.Itoa(i))
		st.keys[hashes[i]] = &Key{ID: "key_" + strconv.Itoa(i), Name: "0"}
	}
	hashes[1][0] = hashes[0][0] // two keys of one shard
	st.keys[hashes[1]] = &Key{ID: "key_1", Name: "0"}
	c := NewCache(st, CacheOptions{Size: 100, TTL: time.Hour})

	ctx, stop := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	for r := range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := r; ctx.Err() == nil; i++ {
				_, _ = c.Lookup(context.Background(), hashes[i%len(hashes)])
				if i%7 == 0 {
					c.Invalidate(hashes[(i+3)%len(hashes)]) // unrelated churn
				}
			}
		}()
	}
	for v := 1; v <= 3000; v++ {
		h := hashes[v%len(hashes)]
		want := strconv.Itoa(v)
		st.set(h, &Key{ID: "key_x", Name: want})
		if v%250 == 0 {
			c.Invalidate(Hash{})
		} else {
			c.Invalidate(h)
		}
		k, err := c.Lookup(context.Background(), h)
		require.NoError(t, err)
		require.Equal(t, want, k.Name, "change %d: a lookup after its invalidation returned an older record", v)
	}
	stop()
	readers.Wait()
}

func TestAStaleEntryIsServedForAtMostMaxStale(t *testing.T) {
	st := newCountingStore()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := NewHasher(nil).Hash("sk_known")
	st.keys[h] = &Key{ID: "key_known"}
	c := NewCache(st, CacheOptions{TTL: 30 * time.Second, MaxStale: 2 * time.Minute, Now: clock.Now})
	_, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)

	st.down.Store(true)
	clock.Add(2*time.Minute - time.Second)
	k, err := c.Lookup(context.Background(), h)
	require.NoError(t, err, "younger than max stale: served")
	assert.Equal(t, "key_known", k.ID)

	clock.Add(2 * time.Second)
	_, err = c.Lookup(context.Background(), h)
	assert.ErrorIs(t, err, ErrUnavailable, "older than max stale: the check answers 503")

	st.down.Store(false)
	clock.Add(2 * time.Second) // past the breaker's retry
	k, err = c.Lookup(context.Background(), h)
	require.NoError(t, err, "the store is back: the entry is fresh again")
	assert.Equal(t, "key_known", k.ID)
}

func TestMaxStaleDefaultsToFiveMinutesAndIsNeverBelowTheTTL(t *testing.T) {
	tests := []struct {
		name          string
		ttl, maxStale time.Duration
		want          time.Duration
	}{
		{"unset", 0, 0, DefaultMaxStale},
		{"set", 30 * time.Second, time.Minute, time.Minute},
		{"shorter than the TTL", 10 * time.Minute, time.Minute, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCache(newCountingStore(), CacheOptions{TTL: tt.ttl, MaxStale: tt.maxStale})
			assert.Equal(t, tt.want, c.opts.MaxStale)
		})
	}
}

func TestCachedAnswersFromMemoryAndSaysWhatItKnows(t *testing.T) {
	c, st, clock, h := setup(t)
	unknown := NewHasher(nil).Hash("sk_unknown")
	state := func(h Hash) CacheState { _, s, _ := c.Cached(h); return s }

	assert.Equal(t, CacheUnknown, state(h), "never looked up")
	_, _ = c.Lookup(context.Background(), h)
	_, _ = c.Lookup(context.Background(), unknown)
	k, s, err := c.Cached(h)
	require.NoError(t, err)
	assert.Equal(t, CacheAnswered, s)
	assert.Equal(t, "key_known", k.ID)
	_, s, err = c.Cached(unknown)
	assert.Equal(t, CacheAnswered, s)
	assert.ErrorIs(t, err, ErrNotFound, "a fresh negative entry answers too")

	clock.Add(time.Minute)
	assert.Equal(t, CacheExpired, state(h), "a key the store confirmed before")
	assert.Equal(t, CacheUnknown, state(unknown), "an unknown hash stays unknown")
	assert.EqualValues(t, 2, st.lookups.Load(), "Cached never asks the store")

	_, _ = c.Lookup(context.Background(), h)
	c.Invalidate(h)
	assert.Equal(t, CacheExpired, state(h), "a changed key is not served, but still known")
	_, _ = c.Lookup(context.Background(), h)
	c.Invalidate(Hash{})
	assert.Equal(t, CacheExpired, state(h), "so is every key after a purge")
	assert.Equal(t, CacheUnknown, state(unknown))
}

// TestAnInvalidatedKeyIsNeverServedStale: a key changed (revoked) and then
// the store failing must not bring back the record from before the change.
func TestAnInvalidatedKeyIsNeverServedStale(t *testing.T) {
	for _, purge := range []bool{false, true} {
		t.Run(map[bool]string{false: "one key", true: "a purge"}[purge], func(t *testing.T) {
			c, st, clock, h := setup(t)
			_, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			if purge {
				c.Invalidate(Hash{})
			} else {
				c.Invalidate(h)
			}
			st.down.Store(true)
			_, err = c.Lookup(context.Background(), h)
			assert.ErrorIs(t, err, ErrUnavailable, "within the TTL")
			clock.Add(time.Minute)
			_, err = c.Lookup(context.Background(), h)
			assert.ErrorIs(t, err, ErrUnavailable, "past the TTL, within max stale")
			assert.Zero(t, c.Stats().Stale)
		})
	}
}
