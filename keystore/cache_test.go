package keystore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingStore is an in-memory Store for the cache's own tests: it counts
// lookups, can be made to fail, and can hold a lookup until released. The
// real backends are tested by keystore/storetest.
type countingStore struct {
	Store   // unused methods panic: the cache must not call them
	mu      sync.Mutex
	keys    map[Hash]*Key
	lookups atomic.Int64
	down    atomic.Bool
	newer   atomic.Bool   // every record requires what this version does not know
	gate    chan struct{} // when non-nil, Lookup waits on it
	jitter  bool          // Lookup yields the processor a few times, to vary interleavings
	touched map[string]time.Time
	// touchErr, when set, answers TouchLastUsed after touches records
	// what it was sent.
	touchErr func(used map[string]time.Time) error
	touches  []map[string]time.Time
}

func newCountingStore() *countingStore {
	return &countingStore{keys: map[Hash]*Key{}, touched: map[string]time.Time{}}
}

func (s *countingStore) Lookup(ctx context.Context, h Hash) (*Key, error) {
	s.lookups.Add(1)
	s.mu.Lock()
	k, ok := s.keys[h] // read before the answer is held up, as a slow reply would be
	s.mu.Unlock()
	if s.gate != nil {
		<-s.gate
	}
	if s.jitter {
		for range rand.IntN(4) {
			runtime.Gosched()
		}
	}
	if s.down.Load() {
		return nil, fmt.Errorf("lookup: %w: connection refused", ErrUnavailable)
	}
	if ok && s.newer.Load() { // the key as far as this version reads it, as Store.Lookup says
		return k.Clone(), fmt.Errorf("lookup: %w", CheckRequires([]string{"bound_to"}))
	}
	if ok {
		return k.Clone(), nil
	}
	return nil, ErrNotFound
}

// set makes h's record k, as a change through the store would.
func (s *countingStore) set(h Hash, k *Key) {
	s.mu.Lock()
	s.keys[h] = k
	s.mu.Unlock()
}

func (s *countingStore) TouchLastUsed(_ context.Context, used map[string]time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.touches = append(s.touches, maps.Clone(used))
	if s.touchErr != nil {
		return s.touchErr(used)
	}
	for id, at := range used {
		s.touched[id] = at
	}
	return nil
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func setup(t *testing.T) (*Cache, *countingStore, *fakeClock, Hash) {
	t.Helper()
	st := newCountingStore()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h := NewHasher(nil).Hash("sk_known")
	st.keys[h] = &Key{ID: "key_known", Name: "known"}
	c := NewCache(st, CacheOptions{Size: 100, TTL: 30 * time.Second, NegativeTTL: 5 * time.Second, Now: clock.Now})
	return c, st, clock, h
}

func TestAHitCostsNoStoreCall(t *testing.T) {
	c, st, _, h := setup(t)
	for range 10 {
		k, err := c.Lookup(context.Background(), h)
		require.NoError(t, err)
		assert.Equal(t, "key_known", k.ID)
	}
	assert.EqualValues(t, 1, st.lookups.Load(), "one miss, then hits")
	assert.EqualValues(t, 9, c.Stats().Hits)
}

func TestAnEntryIsRefetchedAfterItsTTL(t *testing.T) {
	c, st, clock, h := setup(t)
	_, _ = c.Lookup(context.Background(), h)
	clock.Add(20 * time.Second) // used, but not in the last quarter of its TTL
	_, _ = c.Lookup(context.Background(), h)
	assert.EqualValues(t, 1, st.lookups.Load())
	clock.Add(11 * time.Second)
	_, _ = c.Lookup(context.Background(), h)
	assert.EqualValues(t, 2, st.lookups.Load())
	assert.EqualValues(t, 2, c.Stats().Misses)
	assert.Zero(t, c.Stats().Refreshes)
}

// A key the store no longer has is no longer one it confirmed: with or
// without a negative cache, its next lookup is of an unknown hash
// (CacheUnknown), which the decision counts as a guess, not a refresh
// (CacheExpired), which it does not.
func TestAKeyTheStoreNoLongerHasIsUnknown(t *testing.T) {
	for _, negative := range []time.Duration{5 * time.Second, -1} {
		t.Run(fmt.Sprint("negative ttl ", negative), func(t *testing.T) {
			c, st, clock, h := setup(t)
			c.opts.NegativeTTL = negative
			_, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			st.mu.Lock()
			delete(st.keys, h) // purged
			st.mu.Unlock()
			clock.Add(31 * time.Second)
			_, state, _ := c.Cached(h)
			require.Equal(t, CacheExpired, state, "the store confirmed it before")
			_, err = c.Lookup(context.Background(), h)
			require.ErrorIs(t, err, ErrNotFound)
			clock.Add(6 * time.Second)
			_, state, _ = c.Cached(h)
			assert.Equal(t, CacheUnknown, state)
		})
	}
}

// A key in use is looked up again in the background in the last quarter of
// its TTL, so no check of it waits for the store when the TTL would have
// ended; once per quarter TTL, not on every hit.
func TestAKeyInUseIsRefreshedBeforeItsTTLEnds(t *testing.T) {
	c, st, clock, h := setup(t)
	_, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	clock.Add(23 * time.Second)
	for range 5 {
		k, err := c.Lookup(context.Background(), h)
		require.NoError(t, err)
		assert.Equal(t, "key_known", k.ID, "answered from the cache meanwhile")
	}
	require.Eventually(t, func() bool { return st.lookups.Load() == 2 }, time.Second, time.Millisecond)
	require.Eventually(t, func() bool {
		e, ok := c.pos.peek(h)
		return ok && e.fetched == c.since(clock.Now())
	}, time.Second, time.Millisecond, "the refresh filled the entry")
	clock.Add(10 * time.Second) // 33s after the first fill: past its TTL
	_, err = c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.EqualValues(t, 2, st.lookups.Load(), "a hit: the entry was refreshed at 23s")
	assert.EqualValues(t, 1, c.Stats().Misses)
	assert.EqualValues(t, 1, c.Stats().Refreshes)
}

// A refresh that finds the key gone forgets it at once; one that fails
// changes nothing, and the entry expires as it would have.
func TestARefreshFillsAsALookupDoes(t *testing.T) {
	t.Run("revoked meanwhile", func(t *testing.T) {
		c, st, clock, h := setup(t)
		_, _ = c.Lookup(context.Background(), h)
		st.mu.Lock()
		delete(st.keys, h)
		st.mu.Unlock()
		clock.Add(25 * time.Second)
		_, _ = c.Lookup(context.Background(), h) // served, and refreshed
		require.Eventually(t, func() bool { _, ok := c.pos.peek(h); return !ok }, time.Second, time.Millisecond)
		_, err := c.Lookup(context.Background(), h)
		require.ErrorIs(t, err, ErrNotFound)
	})
	t.Run("the store fails", func(t *testing.T) {
		c, st, clock, h := setup(t)
		_, _ = c.Lookup(context.Background(), h)
		st.down.Store(true)
		clock.Add(25 * time.Second)
		_, err := c.Lookup(context.Background(), h)
		require.NoError(t, err)
		require.Eventually(t, func() bool { return st.lookups.Load() == 2 }, time.Second, time.Millisecond)
		for range 10 {
			_, err = c.Lookup(context.Background(), h)
			require.NoError(t, err, "still within its TTL")
		}
		assert.EqualValues(t, 2, st.lookups.Load(), "a failed refresh is not retried on every hit")
		e, ok := c.pos.peek(h)
		require.True(t, ok)
		assert.Less(t, e.fetched, c.since(clock.Now()), "the failed refresh changed nothing")
	})
}

func TestUnknownHashesAreCachedForTheNegativeTTL(t *testing.T) {
	c, st, clock, _ := setup(t)
	unknown := NewHasher(nil).Hash("sk_unknown")
	for range 5 {
		_, err := c.Lookup(context.Background(), unknown)
		assert.ErrorIs(t, err, ErrNotFound)
	}
	assert.EqualValues(t, 1, st.lookups.Load())
	clock.Add(6 * time.Second)
	_, _ = c.Lookup(context.Background(), unknown)
	assert.EqualValues(t, 2, st.lookups.Load())
}

func TestAFloodOfUnknownKeysCannotEvictKnownOnes(t *testing.T) {
	c, st, _, h := setup(t)
	_, _ = c.Lookup(context.Background(), h)
	for i := range 1000 {
		_, _ = c.Lookup(context.Background(), NewHasher(nil).Hash(fmt.Sprint("sk_random", i)))
	}
	before := st.lookups.Load()
	_, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, before, st.lookups.Load(), "the known key is still cached")
	assert.LessOrEqual(t, c.Stats().NegativeEntries, 25, "negatives live in their own, smaller map")
}

// Keys in steady use (more than once between bursts) stay cached while
// twice the cache's size of keys, each used once, pass through it: a
// least-recently-used cache lost them all to every such burst and asked the
// store for each again.
func TestKeysInUseOutlastABurstOfKeysUsedOnce(t *testing.T) {
	st := newCountingStore()
	c := NewCache(st, CacheOptions{Size: 100, TTL: time.Hour, NegativeTTL: time.Minute})
	hash := func(kind string, i int) Hash {
		h := NewHasher(nil).Hash(fmt.Sprintf("sk_%s_%d", kind, i))
		st.set(h, &Key{ID: fmt.Sprintf("key_%s_%d", kind, i)})
		return h
	}
	hot := make([]Hash, 50)
	for i := range hot {
		hot[i] = hash("hot", i)
	}
	var hotMisses int64
	for round := range 5 {
		for range 2 {
			for _, h := range hot {
				before := st.lookups.Load()
				_, err := c.Lookup(context.Background(), h)
				require.NoError(t, err)
				hotMisses += st.lookups.Load() - before
			}
		}
		for i := range 200 {
			_, err := c.Lookup(context.Background(), hash("once", round*200+i))
			require.NoError(t, err)
		}
	}
	assert.EqualValues(t, len(hot), hotMisses, "each key in use was fetched once, when first used")
	assert.Equal(t, 100, c.Stats().Entries)
}

func TestConcurrentMissesOnOneKeyCostOneStoreCall(t *testing.T) {
	c, st, _, h := setup(t)
	st.gate = make(chan struct{})
	var wg sync.WaitGroup
	var started sync.WaitGroup
	for range 100 {
		wg.Add(1)
		started.Add(1)
		go func() {
			defer wg.Done()
			started.Done()
			k, err := c.Lookup(context.Background(), h)
			assert.NoError(t, err)
			assert.Equal(t, "key_known", k.ID)
		}()
	}
	started.Wait()
	// Let every goroutine reach singleflight before the one store call returns.
	require.Eventually(t, func() bool { return st.lookups.Load() >= 1 }, time.Second, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	close(st.gate)
	wg.Wait()
	assert.EqualValues(t, 1, st.lookups.Load())
}

func TestAnExpiredEntryIsServedWhileTheStoreIsDown(t *testing.T) {
	c, st, clock, h := setup(t)
	_, _ = c.Lookup(context.Background(), h)
	clock.Add(4 * time.Minute) // past the TTL, within the default max stale
	st.down.Store(true)
	k, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, "key_known", k.ID)
	assert.EqualValues(t, 1, c.Stats().Stale)

	_, err = c.Lookup(context.Background(), NewHasher(nil).Hash("sk_never_seen"))
	assert.ErrorIs(t, err, ErrUnavailable, "nothing cached: the caller answers 503")
}

// A record that a newer version has restricted in a way this one cannot
// read (ErrNeedsNewer) is an answer of the store: what was cached of the key
// is an older record without the restriction, and is served neither fresh,
// nor refreshed, nor stale once the store is down; nor is the key taken for
// unknown (a negative entry would turn its holder away as a guesser).
func TestARecordThatNeedsANewerVersionIsNeverServedFromTheCache(t *testing.T) {
	for _, how := range []string{"expired", "refreshed ahead"} {
		t.Run(how, func(t *testing.T) {
			c, st, clock, h := setup(t)
			_, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			st.newer.Store(true)
			if how == "expired" {
				clock.Add(31 * time.Second)
				k, err := c.Lookup(context.Background(), h)
				require.ErrorIs(t, err, ErrNeedsNewer)
				require.NotNil(t, k, "the key comes with the refusal, to be named by it")
				assert.Equal(t, "key_known", k.ID)
			} else {
				clock.Add(25 * time.Second) // the last quarter of the TTL
				k, err := c.Lookup(context.Background(), h)
				require.NoError(t, err, "served while fresh; a refresh starts")
				assert.Equal(t, "key_known", k.ID)
				require.Eventually(t, func() bool { return st.lookups.Load() == 2 }, 5*time.Second, time.Millisecond)
				require.Eventually(t, func() bool {
					_, state, _ := c.Cached(h)
					return state != CacheAnswered
				}, 5*time.Second, time.Millisecond, "the refresh forgot the entry")
			}
			assert.NotErrorIs(t, err, ErrUnavailable)
			assert.Zero(t, c.Stats().Stale)
			assert.Zero(t, c.Stats().StoreFailures, "an answer, not a failure of the store")

			_, state, _ := c.Cached(h)
			assert.NotEqual(t, CacheAnswered, state, "neither the old record nor a negative entry answers")
			st.down.Store(true)
			_, err = c.Lookup(context.Background(), h)
			require.ErrorIs(t, err, ErrUnavailable, "with the store down, the old record is not served stale")
			assert.Zero(t, c.Stats().Stale)

			st.down.Store(false)
			st.newer.Store(false) // this version can read it again (rolled back)
			k, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			assert.Equal(t, "key_known", k.ID)
		})
	}
}

// slowFailingStore fails every lookup after it has taken wait on clock, as
// a store that does not answer within the lookup timeout does.
type slowFailingStore struct {
	*countingStore
	clock *fakeClock
	wait  time.Duration
}

func (s slowFailingStore) Lookup(context.Context, Hash) (*Key, error) {
	s.clock.Add(s.wait)
	return nil, fmt.Errorf("lookup: %w: no answer", ErrUnavailable)
}

// max_stale bounds the age of an entry when it is served, not when the
// lookup that then fails began: a lookup that waited for the store as the
// entry's max_stale ran out must not serve it past that.
func TestAStaleEntryIsNotServedPastMaxStaleAfterWaitingForTheStore(t *testing.T) {
	for _, tc := range []struct {
		name   string
		age    time.Duration // when the lookup begins, since the store confirmed the key
		wait   time.Duration // what the failing store takes
		served bool
	}{
		{"an entry still within max_stale once the store has failed is served", 4 * time.Minute, 2 * time.Second, true},
		{"an entry that passes max_stale while the store is asked is not", 5*time.Minute - time.Second, 2 * time.Second, false},
		{"nor one that passes it by a hair", 5*time.Minute - time.Millisecond, 2 * time.Millisecond, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newCountingStore()
			clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
			h := NewHasher(nil).Hash("sk_known")
			st.keys[h] = &Key{ID: "key_known", Name: "known"}
			failing := slowFailingStore{countingStore: st, clock: clock, wait: tc.wait}
			c := NewCache(&switchingStore{Store: st}, CacheOptions{TTL: 30 * time.Second, MaxStale: 5 * time.Minute, Now: clock.Now})
			_, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			c.store.(*switchingStore).Store = failing
			clock.Add(tc.age)
			k, err := c.Lookup(context.Background(), h)
			if tc.served {
				require.NoError(t, err)
				assert.Equal(t, "key_known", k.ID)
				return
			}
			assert.ErrorIs(t, err, ErrUnavailable, "served %v after the store last confirmed it, past max_stale", tc.age+tc.wait)
			assert.Nil(t, k)
		})
	}
}

// switchingStore is the Store a test may replace under a running cache.
type switchingStore struct{ Store }

func TestInvalidateForgetsOneOrAll(t *testing.T) {
	c, st, _, h := setup(t)
	_, _ = c.Lookup(context.Background(), h)
	c.Invalidate(h)
	_, _ = c.Lookup(context.Background(), h)
	assert.EqualValues(t, 2, st.lookups.Load())
	c.Invalidate(Hash{})
	_, _ = c.Lookup(context.Background(), h)
	assert.EqualValues(t, 3, st.lookups.Load())
}

func TestAFillThatRacedAnInvalidationIsNotCached(t *testing.T) {
	c, st, _, h := setup(t)
	st.gate = make(chan struct{})
	done := make(chan struct{})
	go func() { _, _ = c.Lookup(context.Background(), h); close(done) }()
	require.Eventually(t, func() bool { return st.lookups.Load() == 1 }, time.Second, time.Millisecond)
	c.Invalidate(h) // the key changed while the old record was in flight
	close(st.gate)
	<-done
	st.gate = nil
	_, _ = c.Lookup(context.Background(), h)
	assert.EqualValues(t, 2, st.lookups.Load(), "the raced result was not cached")
}

func TestLastUseIsWrittenBehindAtMostOncePerInterval(t *testing.T) {
	c, st, clock, h := setup(t)
	for range 100 {
		_, _ = c.Lookup(context.Background(), h)
	}
	first := clock.Now()
	assert.Len(t, c.used, 1, "one report for 100 uses")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.RunTouches(ctx, time.Hour); close(done) }()
	clock.Add(2 * time.Minute)
	_, _ = c.Lookup(context.Background(), h) // refetch (TTL) + a second report
	cancel()
	<-done // shutdown flushes what is queued
	st.mu.Lock()
	defer st.mu.Unlock()
	assert.True(t, st.touched["key_known"].After(first), "the later use wins")
}

// A last use the store could not write is sent again with the next
// round's, unless the store skipped it for a record that does not read as
// a key (and wrote the rest): sending it again would only read that record
// again, every round, for as long as the process runs.
func TestLastUseIsKeptForTheNextRoundOnlyWhenTryingAgainCanHelp(t *testing.T) {
	for _, tc := range []struct {
		err      error
		sentLast bool
	}{
		{fmt.Errorf("touch: %w: connection refused", ErrUnavailable), true},
		{fmt.Errorf("touch: last use not written for key_known: %w", ErrUnreadableRecord), false},
	} {
		t.Run(tc.err.Error(), func(t *testing.T) {
			c, st, _, h := setup(t)
			st.touchErr = func(map[string]time.Time) error { return tc.err }
			_, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { c.RunTouches(ctx, 5*time.Millisecond); close(done) }()
			require.Eventually(t, func() bool {
				st.mu.Lock()
				defer st.mu.Unlock()
				return len(st.touches) >= 1
			}, 5*time.Second, time.Millisecond)
			cancel()
			<-done // shutdown sends whatever is still kept
			st.mu.Lock()
			defer st.mu.Unlock()
			assert.Contains(t, st.touches[0], "key_known")
			if tc.sentLast {
				require.GreaterOrEqual(t, len(st.touches), 2)
				assert.Contains(t, st.touches[len(st.touches)-1], "key_known", "kept for the next round")
			} else {
				assert.Len(t, st.touches, 1, "sent again")
			}
		})
	}
}

func BenchmarkCacheHit(b *testing.B) {
	st := newCountingStore()
	h := NewHasher(nil).Hash("sk_known")
	st.keys[h] = &Key{ID: "key_known"}
	c := NewCache(st, CacheOptions{})
	_, _ = c.Lookup(context.Background(), h)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Lookup(context.Background(), h); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCacheHitFullCache is a hit in a full cache of 100k keys, the
// keys taken in a random order: what a hit costs when its entry (and
// whatever else it writes) is not in the processor's cache.
func BenchmarkCacheHitFullCache(b *testing.B) {
	const size = 100000
	k := &Key{ID: "key_known", Name: "known", Owner: "default", Permissions: []string{"read:users"}, CreatedAt: time.Now()}
	c := NewCache(oneKeyStore{key: k}, CacheOptions{Size: size})
	hashes := make([]Hash, size)
	for i := range hashes {
		binary.LittleEndian.PutUint64(hashes[i][:], uint64(i)*0x9e3779b97f4a7c15)
		if _, err := c.Lookup(context.Background(), hashes[i]); err != nil {
			b.Fatal(err)
		}
	}
	rand.New(rand.NewPCG(1, 2)).Shuffle(size, func(i, j int) { hashes[i], hashes[j] = hashes[j], hashes[i] })
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, state, _ := c.Cached(hashes[i%size]); state != CacheAnswered {
			b.Fatal("not cached")
		}
	}
}

// oneKeyStore answers every hash with the same key, at once.
type oneKeyStore struct {
	Store
	key *Key
}

func (s oneKeyStore) Lookup(context.Context, Hash) (*Key, error) { return s.key, nil }

// BenchmarkCacheMiss is what the cache adds to the store's own lookup when
// a key is not cached: the flight, the timeout, the record's encoding, the fill
// and an eviction.
func BenchmarkCacheMiss(b *testing.B) {
	k := &Key{ID: "key_known", Name: "known", Owner: "default", Permissions: []string{"read:users"}, CreatedAt: time.Now()}
	c := NewCache(oneKeyStore{key: k}, CacheOptions{Size: 1000})
	var h Hash
	b.ReportAllocs()
	for i := uint64(0); b.Loop(); i++ {
		binary.LittleEndian.PutUint64(h[:], i)
		if _, err := c.Lookup(context.Background(), h); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAStoreThatKeepsFailingIsNotAskedOnEveryLookup(t *testing.T) {
	c, st, clock, h := setup(t)
	_, _ = c.Lookup(context.Background(), h)
	clock.Add(time.Minute) // the entry is stale
	st.down.Store(true)
	unknown := NewHasher(nil).Hash("sk_unknown")
	for range 3 {
		_, _ = c.Lookup(context.Background(), unknown)
	}
	asked := st.lookups.Load()
	for range 50 {
		k, err := c.Lookup(context.Background(), h)
		require.NoError(t, err, "the stale entry is served")
		assert.Equal(t, "key_known", k.ID)
		_, err = c.Lookup(context.Background(), unknown)
		assert.ErrorIs(t, err, ErrUnavailable)
	}
	assert.Equal(t, asked, st.lookups.Load(), "no lookup waits on a store that just failed three times")

	clock.Add(2 * time.Second) // past StoreRetry: one probe
	st.down.Store(false)
	_, err := c.Lookup(context.Background(), unknown)
	assert.ErrorIs(t, err, ErrNotFound, "the probe finds the store back")
	assert.Equal(t, asked+1, st.lookups.Load())
}

func TestAnOutageIsLoggedOnceWhenItBeginsAndOnceWhenItEnds(t *testing.T) {
	st := newCountingStore()
	clock := &fakeClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	var log bytes.Buffer
	c := NewCache(st, CacheOptions{Now: clock.Now, Logger: slog.New(slog.NewTextHandler(&log, nil))})
	unknown := NewHasher(nil).Hash("sk_unknown")
	st.down.Store(true)
	for range 20 {
		_, _ = c.Lookup(context.Background(), unknown)
		clock.Add(300 * time.Millisecond) // probes included
	}
	assert.Equal(t, 1, strings.Count(log.String(), "key store unreachable"), log.String())
	assert.NotContains(t, log.String(), "answers again")
	st.down.Store(false)
	clock.Add(time.Second)
	for range 5 {
		_, _ = c.Lookup(context.Background(), unknown)
	}
	assert.Equal(t, 1, strings.Count(log.String(), "key store answers again"), log.String())
	assert.Contains(t, log.String(), "unreachable_for=6.")
}

func TestOneSlowAnswerDoesNotOpenTheBreaker(t *testing.T) {
	c, st, _, _ := setup(t)
	st.down.Store(true)
	unknown := NewHasher(nil).Hash("sk_unknown")
	_, _ = c.Lookup(context.Background(), unknown)
	st.down.Store(false)
	_, err := c.Lookup(context.Background(), unknown)
	assert.ErrorIs(t, err, ErrNotFound, "asked again at once")
}

func TestAChangeToAnotherKeyDoesNotStopAFill(t *testing.T) {
	c, st, _, h := setup(t)
	other := NewHasher(nil).Hash("sk_other")
	for other[0] == h[0] { // another shard
		other[0]++
	}
	st.gate = make(chan struct{})
	done := make(chan struct{})
	go func() { _, _ = c.Lookup(context.Background(), h); close(done) }()
	require.Eventually(t, func() bool { return st.lookups.Load() == 1 }, time.Second, time.Millisecond)
	c.Invalidate(other)
	close(st.gate)
	<-done
	st.gate = nil
	_, _ = c.Lookup(context.Background(), h)
	assert.EqualValues(t, 1, st.lookups.Load(), "the fill was cached")
}

// A caller that leaves before the store answers (a client resetting its
// request, or a call whose deadline, the caller's to set, is shorter than
// the store takes) proves nothing about the store: three in a row must not
// stop the next lookup from asking it.
func TestCallersThatLeaveDoNotOpenTheBreaker(t *testing.T) {
	for _, way := range leavingWays {
		t.Run(way.name, func(t *testing.T) {
			c, st, _, _ := setup(t)
			st.gate = make(chan struct{})
			for i := range 5 {
				require.ErrorIs(t, leaveLookup(t, c, st, i, way.leave), way.err)
			}
			close(st.gate)
			_, err := c.Lookup(context.Background(), NewHasher(nil).Hash("sk_unknown"))
			assert.ErrorIs(t, err, ErrNotFound, "the store is asked: callers leaving did not open the breaker")
			assert.Zero(t, c.Stats().StoreFailures, "a caller leaving is not a store failure")
		})
	}
}

// Callers that leave early prove nothing, but the lookups they started do
// go on: when those find no store, the breaker must open all the same.
// Otherwise an outage in which every check is cancelled, or reaches its
// deadline, before half the timeout (an Envoy timeout shorter than that)
// never opens it, and every check keeps asking the store.
func TestLookupsWhoseCallersLeftStillOpenTheBreakerInAnOutage(t *testing.T) {
	for _, way := range leavingWays {
		t.Run(way.name, func(t *testing.T) {
			st := newCountingStore()
			st.gate = make(chan struct{}) // a store that never answers
			defer close(st.gate)
			c := NewCache(st, CacheOptions{Size: 100, TTL: 30 * time.Second, NegativeTTL: 5 * time.Second, FetchTimeout: 200 * time.Millisecond})
			for i := range 3 {
				require.ErrorIs(t, leaveLookup(t, c, st, i, way.leave), ErrCallerLeft)
			}
			require.Eventually(t, c.breaker.Open, 2*time.Second, 5*time.Millisecond, "three lookups the store never answered open the breaker")
			_, err := c.Lookup(context.Background(), NewHasher(nil).Hash("sk_next"))
			require.ErrorIs(t, err, ErrUnavailable)
			assert.EqualValues(t, 3, st.lookups.Load(), "the store is not asked while the breaker is open")
		})
	}
}

// A caller whose deadline left the store half its timeout or more, and
// passed, did see the store fail to answer: that counts at once.
func TestADeadlineThatLeftTheStoreItsTimeCountsAsAFailure(t *testing.T) {
	st := newCountingStore()
	st.gate = make(chan struct{})
	defer close(st.gate)
	// The deadline leaves the store 150 ms of its 200: a caller descheduled
	// for a while between making its context and the lookup's start (a
	// loaded machine) still leaves it more than half.
	c := NewCache(st, CacheOptions{Size: 100, TTL: 30 * time.Second, FetchTimeout: 200 * time.Millisecond})
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
		_, err := c.Lookup(ctx, NewHasher(nil).Hash(fmt.Sprintf("sk_slow_%d", i)))
		cancel()
		require.ErrorIs(t, err, ErrUnavailable)
		require.NotErrorIs(t, err, ErrCallerLeft)
	}
	assert.True(t, c.breaker.Open(), "three lookups that had a fair chance and no answer open the breaker")
}

// leavingWays are the ways a caller leaves a lookup, and what a lookup left
// that way ends with while the store is healthy.
var leavingWays = []struct {
	name  string
	leave func(context.Context) (context.Context, context.CancelFunc, func())
	err   error
}{
	{"cancelled", func(ctx context.Context) (context.Context, context.CancelFunc, func()) {
		ctx, cancel := context.WithCancel(ctx)
		return ctx, cancel, cancel
	}, context.Canceled},
	{"deadline passed", func(ctx context.Context) (context.Context, context.CancelFunc, func()) {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		return ctx, cancel, func() {} // the deadline ends it
	}, context.DeadlineExceeded},
}

// leaveLookup looks up the i-th unknown key of a store held at its gate,
// under a context that leave makes, lets the caller leave once the store
// has the lookup, and returns what it ended with.
func leaveLookup(t *testing.T, c *Cache, st *countingStore, i int, leave func(context.Context) (context.Context, context.CancelFunc, func())) error {
	t.Helper()
	ctx, cancel, leaveNow := leave(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := c.Lookup(ctx, NewHasher(nil).Hash(fmt.Sprintf("sk_gone_%d", i)))
		done <- err
	}()
	require.Eventually(t, func() bool { return st.lookups.Load() == int64(i+1) }, time.Second, time.Millisecond)
	leaveNow()
	return <-done
}
