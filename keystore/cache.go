package keystore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/extauthz/extauthz/internal/breaker"
)

// CacheOptions sizes a Cache. Zero fields take the defaults of the config file's cache section.
type CacheOptions struct {
	Size        int           // positive entries; default 100000
	TTL         time.Duration // how long a found key is trusted; default 30s
	NegativeTTL time.Duration // how long "no such key" is trusted; default 5s; <0 disables
	Now         func() time.Time
	// FetchTimeout bounds one store lookup on a miss; default 2s.
	FetchTimeout time.Duration
	// TouchEvery is the least time between two last_used_at writes for one
	// key from this process; default 1 minute.
	TouchEvery time.Duration
	// StoreRetry is how long after the store failed to answer the cache
	// stops waiting on it: expired entries are served at once and misses
	// fail at once (ErrUnavailable), while one lookup per StoreRetry probes
	// the store; default 1s.
	StoreRetry time.Duration
	// MaxStale bounds how old an entry may be (since the store last
	// confirmed it) and still be served when the store cannot be asked;
	// past it the lookup fails with ErrUnavailable. Default 5 minutes; never
	// less than TTL, within which every entry is served anyway.
	MaxStale time.Duration
	// LabelHoldsKey (Format.LabelHoldsKey) reads the labels of every key
	// the store answers: a key whose labels hold a key is served with them
	// redacted (RedactLabels), and a line logs its id. Nil serves every
	// record as stored.
	LabelHoldsKey func(string) bool
	Logger        *slog.Logger
}

// DefaultMaxStale is CacheOptions.MaxStale when none is given.
const DefaultMaxStale = 5 * time.Minute

// Cache is the in-process cache in front of a Store: the only thing on the
// request path that touches the store. It caches found keys for TTL and
// unknown hashes for NegativeTTL (in a separate, smaller map, so a flood of
// random keys cannot evict the real ones), both bounded and evicting by
// SIEVE (see sieve), collapses concurrent misses on one hash into one store
// call, serves an expired entry for up to MaxStale when the store is
// unreachable, and records last-use times to be written behind.
type Cache struct {
	store Store
	pos   *sieve[entry]
	neg   *sieve[int64] // hash → when (since born) the store said "not found"
	opts  CacheOptions
	// born is when the cache was made: entries hold their times as
	// durations since born (a time.Time is a pointer the collector would
	// follow), measured on the monotonic clock when Now has one.
	born time.Time
	// seq numbers the fills: an entry's seq tells it from any other fill
	// of its hash (0 is a tombstone).
	seq atomic.Uint64
	// front[i] holds the keys last decoded for two hashes of set i
	// (frontSet), the later one first: hits on them share one *Key instead
	// of decoding the record each time. Few enough for the collector to
	// mark at no cost; a key used now and then is decoded again.
	front [frontSets][2]atomic.Pointer[decoded]
	group singleflight.Group
	// shards[h[0]] orders the fills and invalidations of the hashes whose
	// first byte is h[0] (see fill). Sharded so that a change to one key
	// does not hold up fills of unrelated keys.
	shards [256]shard
	// gen is bumped by a purge (with every shard locked): entries of older
	// generations are known but never served.
	gen      atomic.Uint64
	hooks    cacheHooks
	used     chan usage
	hits     atomic.Uint64
	misses   atomic.Uint64
	stale    atomic.Uint64
	failures atomic.Uint64
	// refreshes counts the lookups refreshAhead started.
	refreshes atomic.Uint64
	// breaker stops lookups from waiting on a store that keeps failing:
	// misses fail at once and expired entries are served (up to MaxStale),
	// while one lookup per StoreRetry probes the store.
	breaker *breaker.Breaker
	// downSince (unix nanos; 0 = up) is when lookups stopped waiting on the
	// store: the outage the log reports when it begins and ends.
	downSince atomic.Int64
	// refreshed[i] is when (unix nanos) a refresh ahead of expiry last
	// started for a hash of slot i (refreshAhead): at most one per slot per
	// quarter TTL, so a failing store is not asked on every hit.
	refreshed [refreshSlots]atomic.Int64
	// labelsWarned is when (unix nanos) warnLabels last logged.
	labelsWarned atomic.Int64
}

// frontSets is half the number of decoded keys the cache keeps (front).
// With a thousand keys used at random, 0.4% of hits decode again with two
// ways; with one way of 4,096 it was 10% (measured on random hashes).
const frontSets = 4096

// decoded is a key decoded from the record of one fill of hash.
type decoded struct {
	hash Hash
	seq  uint64
	key  *Key
}

func frontSet(h Hash) uint32 { return binary.LittleEndian.Uint32(h[4:8]) % frontSets }

// refreshSlots bounds the memory of refreshAhead's throttle; hashes sharing
// a slot only share its throttle (a refresh skipped is a miss later).
const refreshSlots = 4096

// storeFailuresToOpen unavailable answers in a row stop lookups from waiting
// on the store: one slow reply alone does not fail uncached keys for a while.
const storeFailuresToOpen = 3

// shard is one lock and invalidation counter of the cache.
type shard struct {
	mu    sync.Mutex
	epoch uint64 // bumped by every invalidation of a hash of the shard
}

// cacheHooks let tests stop the cache at the points where interleavings
// matter; nil in production.
type cacheHooks struct {
	// filling runs inside fill's critical section, after the epoch check and
	// before the insert: the window a racing invalidation must not enter.
	filling func(h Hash)
	// contended runs when a shard's lock is held by another goroutine.
	contended func()
}

// entry is what the cache holds of a key the store found. An invalidated
// entry stays as a tombstone (or, after a purge, an entry of an older
// generation): never served, but it remembers that the store knew the
// hash, so that looking it up again is a refresh, not a guess (Cached).
//
// Entries are values in the sieve, not pointers to them, and hold no
// pointer but a long record's: the collector has nothing to walk for them
// (see sieve and record).
type entry struct {
	seq     uint64 // the fill that made it (Cache.seq); 0: a tombstone
	fetched int64  // when the store answered, in nanoseconds since the cache was born
	gen     uint64 // the cache's generation when filled; a purge moves it on
	touched int64  // unix nanos of the last usage report for this key
	rec     record // the key
}

// servable reports whether e may answer a lookup: not invalidated since
// it was filled.
func (e *entry) servable(gen uint64) bool { return e.seq != 0 && e.gen == gen }

type usage struct {
	id string
	at time.Time
}

// NewCache returns a Cache in front of store.
func NewCache(store Store, opts CacheOptions) *Cache {
	if opts.Size <= 0 {
		opts.Size = 100000
	}
	if opts.TTL <= 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.NegativeTTL == 0 {
		opts.NegativeTTL = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.FetchTimeout <= 0 {
		opts.FetchTimeout = 2 * time.Second
	}
	if opts.TouchEvery <= 0 {
		opts.TouchEvery = time.Minute
	}
	if opts.StoreRetry <= 0 {
		opts.StoreRetry = time.Second
	}
	if opts.MaxStale <= 0 {
		opts.MaxStale = DefaultMaxStale
	}
	opts.MaxStale = max(opts.MaxStale, opts.TTL)
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	pos := newSieve[entry](opts.Size)
	neg := newSieve[int64](max(opts.Size/4, 16)) // unknown hashes get a quarter
	return &Cache{store: store, pos: pos, neg: neg, opts: opts, born: opts.Now(), used: make(chan usage, 4096),
		breaker: breaker.New(storeFailuresToOpen, opts.StoreRetry, opts.Now)}
}

// CacheState is what the cache alone knows of a hash (Cache.Cached).
type CacheState uint8

const (
	// CacheUnknown: nothing fresh is cached and the store has not confirmed
	// the hash here (or its entry was evicted): only the store can answer.
	CacheUnknown CacheState = iota
	// CacheExpired: the store confirmed this key before (and has not
	// answered "not found" for it since), but its entry is past the TTL or
	// was invalidated by a change. Asking the store again is a refresh, not
	// a guess.
	CacheExpired
	// CacheAnswered: the cache answers, with a key or with ErrNotFound.
	CacheAnswered
)

// Cached answers h from memory alone, never asking the store. With
// CacheAnswered, the key and error are the answer (the key is shared:
// callers must not modify it); otherwise Lookup asks the store. It is how
// the decision tells a lookup that costs nothing from one that costs a
// store round trip, before paying for it.
func (c *Cache) Cached(h Hash) (*Key, CacheState, error) {
	now := c.opts.Now()
	since := c.since(now)
	e, ok := c.pos.get(h)
	if age := time.Duration(since - e.fetched); ok && age < c.opts.TTL && e.servable(c.gen.Load()) {
		if k := c.key(h, &e); k != nil {
			c.hits.Add(1)
			c.noteUse(h, k, &e, now)
			if age >= c.opts.TTL-c.opts.TTL/4 {
				c.refreshAhead(h, now)
			}
			return k, CacheAnswered, nil
		}
	}
	if at, hit := c.neg.get(h); hit && c.opts.NegativeTTL > 0 && time.Duration(since-at) < c.opts.NegativeTTL {
		c.hits.Add(1)
		return nil, CacheAnswered, ErrNotFound
	}
	if ok {
		return nil, CacheExpired, nil
	}
	return nil, CacheUnknown, nil
}

// since is now as the cache's entries hold times.
func (c *Cache) since(now time.Time) int64 { return int64(now.Sub(c.born)) }

// key returns the key e (the entry of h) holds: the one decoded for it
// before, else its record decoded, which the front then keeps. It is nil
// only if the record does not decode, which is a bug: the lookup then asks
// the store.
func (c *Cache) key(h Hash, e *entry) *Key {
	set := &c.front[frontSet(h)]
	for i := range set {
		if d := set[i].Load(); d != nil && d.seq == e.seq && d.hash == h {
			return d.key
		}
	}
	k, err := decodeRecord(e.rec.bytes())
	if err != nil { // logged without err, which would make e escape: it says only this
		c.opts.Logger.Error("a cached key record does not decode; asking the store")
		return nil
	}
	c.remember(h, e.seq, k)
	return k
}

// remember keeps k, the key of fill seq of h, in the front, as the first of
// its set; the first before it becomes the second, unless it was h's. Two
// callers at once may lose one of theirs: a key not found is decoded again.
func (c *Cache) remember(h Hash, seq uint64, k *Key) {
	set := &c.front[frontSet(h)]
	if old := set[0].Swap(&decoded{hash: h, seq: seq, key: k}); old != nil && old.hash != h {
		set[1].Store(old)
	}
}

// Lookup returns the key whose hash is h, from the cache when fresh, else
// from the store. The returned Key is shared: callers must not modify it.
// Errors: ErrNotFound, or one wrapping ErrUnavailable when the store did not
// answer and no entry younger than MaxStale is cached, or one wrapping
// ErrNeedsNewer with the key as far as this version reads it (as the
// store's Lookup gives it: to name the key by, not to decide by).
func (c *Cache) Lookup(ctx context.Context, h Hash) (*Key, error) {
	if k, state, err := c.Cached(h); state == CacheAnswered {
		return k, err
	}
	now := c.opts.Now()
	c.misses.Add(1)
	var k *Key
	var err error
	if ask, probe := c.breaker.Enter(); ask {
		k, err = c.fetch(ctx, h)
		if errors.Is(err, ErrCallerLeft) {
			// Nothing learned of the store yet (judgeLater tells the
			// breaker once the lookup ends); the caller is gone, so no
			// stale answer either.
			c.breaker.Abandon(probe)
			return nil, err
		}
		c.judge(probe, err)
	} else {
		err = errStoreDown
	}
	switch {
	case err == nil:
		if fresh, ok := c.pos.peek(h); ok && fresh.servable(c.gen.Load()) {
			c.noteUse(h, k, &fresh, now)
		}
		return k, nil
	case errors.Is(err, ErrNotFound):
		// An answer: what was cached of h is not served (fill forgot it).
		return nil, err
	case errors.Is(err, ErrNeedsNewer):
		// An answer too, and nothing cached of h is served; the key as far
		// as this version reads it comes with it, to name the key in the
		// refusal's audit event, never to decide by.
		return k, err
	case !errors.Is(err, ErrUnavailable):
		// The store answered with what cannot be decided by (a record
		// that does not decode): an answer, not an outage. Nothing cached
		// of h is served (fill forgot it).
		return nil, err
	}
	c.failures.Add(1)
	// The best we know while the store is down: the entry as it is now (an
	// invalidation since this lookup began has made it a tombstone), if the
	// store confirmed it recently enough, now: the lookup may have waited
	// out its timeout, and an entry that passed MaxStale meanwhile is not
	// served.
	now = c.opts.Now()
	if e, ok := c.pos.peek(h); ok && e.servable(c.gen.Load()) && time.Duration(c.since(now)-e.fetched) < c.opts.MaxStale {
		if k := c.key(h, &e); k != nil {
			c.stale.Add(1)
			c.noteUse(h, k, &e, now)
			return k, nil
		}
	}
	return nil, err
}

var errStoreDown = fmt.Errorf("%w: the store failed moments ago; not asking it again yet", ErrUnavailable)

// storeDown logs the start of an outage, once: the breaker has opened.
func (c *Cache) storeDown(err error) {
	if !c.breaker.Open() {
		return
	}
	if c.downSince.CompareAndSwap(0, c.opts.Now().UnixNano()) {
		c.opts.Logger.Warn("key store unreachable: cached keys are served for up to cache.max_stale, other keys answer 503 until it is back",
			"probe_every", c.opts.StoreRetry.String(), "err", err)
	}
}

// storeBack logs the end of an outage, once.
func (c *Cache) storeBack() {
	if c.downSince.Load() == 0 {
		return
	}
	if since := c.downSince.Swap(0); since != 0 {
		c.opts.Logger.Info("key store answers again", "unreachable_for", time.Duration(c.opts.Now().UnixNano()-since).Round(time.Millisecond).String())
	}
}

// refreshAhead asks the store for h, which is cached and in use but in the
// last quarter of its TTL, in the background: a key in use is then found
// fresh when its TTL would have ended, instead of making one of its checks
// wait for the store. What the store answers is filled as a lookup's answer
// is (a key revoked meanwhile is forgotten at once); a failure changes
// nothing, and the entry expires as it would have. Not while the store is
// known to be down.
func (c *Cache) refreshAhead(h Hash, now time.Time) {
	if c.breaker.Open() {
		return
	}
	slot := &c.refreshed[binary.LittleEndian.Uint16(h[1:3])%refreshSlots]
	last, n := slot.Load(), now.UnixNano()
	if n-last < int64(c.opts.TTL/4) || !slot.CompareAndSwap(last, n) {
		return
	}
	c.refreshes.Add(1)
	c.flight(context.Background(), h) // the flight fills the cache; its buffered channel is dropped
}

// fetch loads h from the store once for all concurrent callers and caches
// the answer unless an invalidation of h's shard raced with it.
func (c *Cache) fetch(ctx context.Context, h Hash) (*Key, error) {
	start := time.Now()
	flight := c.flight(ctx, h)
	// The caller waits FetchTimeout at most, whatever the store's client
	// does with its deadline (a client busy with a failover may overrun
	// it): the flight goes on and fills the cache when it ends.
	timer := time.NewTimer(c.opts.FetchTimeout)
	defer timer.Stop()
	select {
	case res := <-flight:
		if res.Err != nil {
			if errors.Is(res.Err, ErrNeedsNewer) {
				k, _ := res.Val.(*Key) // to name the key, not to decide by (Store.Lookup)
				return k, res.Err
			}
			return nil, res.Err
		}
		return res.Val.(*Key), nil
	case <-timer.C:
		return nil, errFetchTimeout
	case <-ctx.Done():
		if time.Since(start) < c.opts.FetchTimeout/2 {
			// The caller left before the store had a fair part of the
			// timeout: a client reset its request (and Envoy its check),
			// or the call's deadline passed. That says nothing of the
			// store. Were it taken as the store's failure, a client
			// resetting three requests in a row would open the breaker
			// and turn every uncached key away for a while; so would one
			// sending checks with a deadline of a millisecond, which is
			// the caller's to set (grpc-timeout: Envoy's ext_authz
			// timeout, or whatever a client that reaches the port sends).
			// A deadline that leaves the store half its time or more, and
			// passes, is the store's slowness.
			go c.judgeLater(flight, start)
			return nil, fmt.Errorf("%w: %w: %w", ErrUnavailable, ErrCallerLeft, ctx.Err())
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
}

// judgeLater waits for the flight its caller left (started at start) and
// tells the breaker what it shows of the store, as the caller would have:
// an answer is a success, an error or no answer within FetchTimeout a
// failure. Without it, an outage in which every check is cancelled, or
// reaches its deadline, before half the timeout (Envoy's ext_authz timeout
// is shorter than that: a deadline over gRPC, a cancellation in HTTP mode)
// would never open the breaker: every check would go on asking a store
// that does not answer.
func (c *Cache) judgeLater(flight <-chan singleflight.Result, start time.Time) {
	timer := time.NewTimer(max(c.opts.FetchTimeout-time.Since(start), 0))
	defer timer.Stop()
	var err error
	select {
	case res := <-flight:
		err = res.Err
	case <-timer.C:
		err = errFetchTimeout
	}
	c.judge(false, err)
}

// judge tells the breaker what a lookup that ended with err shows of the
// store (probe: it was the open breaker's probe): an error wrapping
// ErrUnavailable is a failure, anything else ("not found" too) an answer.
func (c *Cache) judge(probe bool, err error) {
	if errors.Is(err, ErrUnavailable) {
		c.breaker.Failure(probe)
		c.storeDown(err)
		return
	}
	c.breaker.Success(probe)
	c.storeBack()
}

// ErrCallerLeft is a lookup whose caller left (cancelled, or its deadline
// passed) before the store had a fair chance to answer: not a failure of
// the store's. The lookup goes on (its answer fills the cache), so it still
// cost the store a round trip. It wraps ErrUnavailable.
var ErrCallerLeft = errors.New("the caller left before the store had half the lookup timeout")

// flight starts (or joins) the store lookup of h, which fills the cache when
// it ends, and returns the channel its result arrives on.
func (c *Cache) flight(ctx context.Context, h Hash) <-chan singleflight.Result {
	sh := &c.shards[h[0]]
	sh.mu.Lock()
	epoch := sh.epoch
	sh.mu.Unlock()
	// A flight is named by the hash and the epoch it started in, so that a
	// lookup that begins after an invalidation never takes the answer of a
	// fetch that began before it.
	var name [len(Hash{}) + 8]byte
	copy(name[:], h[:])
	binary.LittleEndian.PutUint64(name[len(h):], epoch)
	return c.group.DoChan(string(name[:]), func() (any, error) {
		// Detached from the first caller's cancellation: its result is shared.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.FetchTimeout)
		defer cancel()
		k, err := c.store.Lookup(fctx, h)
		if r := RedactLabels(k, c.opts.LabelHoldsKey); r != k {
			c.warnLabels(r)
			k = r
		}
		c.fill(h, epoch, k, err)
		return k, err
	})
}

// warnLabels logs that k, as the store holds it, has a key in its labels,
// at most once a minute: the line names its id, never a label.
func (c *Cache) warnLabels(k *Key) {
	now := time.Now().UnixNano()
	last := c.labelsWarned.Load()
	if now-last < int64(time.Minute) || !c.labelsWarned.CompareAndSwap(last, now) {
		return
	}
	c.opts.Logger.Warn("a key's name, owner, permissions or metadata hold an API key: served with them redacted; change them (keys update) or revoke the key, and treat the key they hold as leaked (further keys like it are logged at most once a minute)",
		"key_id", k.ID)
}

var errFetchTimeout = fmt.Errorf("%w: no answer from the store within the lookup timeout", ErrUnavailable)

// fill caches what the store answered for h when h's shard has not been
// invalidated since epoch. The check and the insert are one step under the
// shard's lock, which Invalidate holds while it bumps the epoch and turns
// the entry into a tombstone: an invalidation either comes before the check
// (and the fill is dropped) or after the insert (and buries it). A fill can therefore never
// land after an invalidation of its key, which a plain check-then-insert
// allows: the invalidation could run between the two.
//
// A "not found" forgets the hash's entry even without a negative cache: the
// entry is what makes a lookup of the hash a refresh (CacheExpired), which
// the decision lets past its bound on lookups of unknown keys, and a key the
// store no longer has (purged) must be a guess like any other from then on.
//
// A record this version cannot decide by (ErrNeedsNewer) forgets the entry
// too, and is not remembered as absent: what was cached of it is an older
// record that lacks what the key now requires, and must not be served,
// fresh or stale.
func (c *Cache) fill(h Hash, epoch uint64, k *Key, err error) {
	if errors.Is(err, ErrUnavailable) {
		return
	}
	notFound := errors.Is(err, ErrNotFound)
	sh := &c.shards[h[0]]
	c.lock(sh)
	defer sh.mu.Unlock()
	if sh.epoch != epoch {
		return
	}
	if c.hooks.filling != nil {
		c.hooks.filling(h)
	}
	since := c.since(c.opts.Now())
	if err == nil {
		c.neg.remove(h)
		e := entry{seq: c.seq.Add(1), fetched: since, gen: c.gen.Load()}
		var buf [recordInline]byte
		e.rec.set(k, buf[:0])
		c.pos.add(h, e)
		// The fetched key is the fill's: its first hits need not decode it.
		c.remember(h, e.seq, k)
		return
	}
	c.pos.remove(h)
	if c.opts.NegativeTTL > 0 && notFound {
		c.neg.add(h, since)
	}
}

// lock takes sh's lock.
func (c *Cache) lock(sh *shard) {
	if sh.mu.TryLock() {
		return
	}
	if c.hooks.contended != nil {
		c.hooks.contended()
	}
	sh.mu.Lock()
}

// Invalidate forgets h, or everything when h is the zero Hash. It is the
// callback for Store.Watch. A fill of h that started before Invalidate
// returned is not cached (see fill). What was known of h is never served
// again, but the hash stays known (a tombstone) until the store is asked.
func (c *Cache) Invalidate(h Hash) {
	// The store just spoke (a Watch delivered this). After an outage the
	// watcher forgets everything; lookups must then ask the store again at
	// once, not fail for the rest of StoreRetry with nothing left to serve.
	c.breaker.Close()
	c.storeBack()
	if !h.IsZero() {
		sh := &c.shards[h[0]]
		c.lock(sh)
		sh.epoch++
		if c.pos.contains(h) {
			c.pos.add(h, entry{})
		}
		c.neg.remove(h)
		sh.mu.Unlock()
		return
	}
	for i := range c.shards { // in order, so that two purges cannot deadlock
		c.lock(&c.shards[i])
		c.shards[i].epoch++
	}
	c.gen.Add(1)
	c.neg.purge()
	for i := range c.shards {
		c.shards[i].mu.Unlock()
	}
}

// noteUse queues a last-use report at most once per TouchEvery per key,
// without blocking: when the queue is full the report waits for the next use.
// e is the entry of h as served and k its key; the sieve's lock is taken only
// when a report is due, to claim it.
func (c *Cache) noteUse(h Hash, k *Key, e *entry, now time.Time) {
	last, at := e.touched, now.UnixNano()
	if at-last < int64(c.opts.TouchEvery) || !c.swapTouched(h, e.seq, last, at) {
		return
	}
	select {
	case c.used <- usage{k.ID, now}:
	default:
		c.swapTouched(h, e.seq, at, last)
	}
}

// swapTouched sets the last report time of h's entry to new if the entry
// is still the fill seq and its last report time is old, and reports
// whether it did.
func (c *Cache) swapTouched(h Hash, seq uint64, old, new int64) bool {
	swapped := false
	c.pos.update(h, func(e *entry) {
		if e.seq == seq && e.touched == old {
			e.touched, swapped = new, true
		}
	})
	return swapped
}

// RunTouches writes queued last-use reports to the store every interval
// (coalesced per key) until ctx is done, then writes what is left. Run it in
// its own goroutine; it is never on the request path.
func (c *Cache) RunTouches(ctx context.Context, interval time.Duration) {
	pending := map[string]time.Time{}
	add := func(u usage) {
		if u.at.After(pending[u.id]) {
			pending[u.id] = u.at
		}
	}
	flush := func(ctx context.Context) {
		if len(pending) == 0 {
			return
		}
		if err := c.store.TouchLastUsed(ctx, pending); err != nil {
			c.opts.Logger.Warn("write last_used_at", "keys", len(pending), "err", err)
			if !errors.Is(err, ErrUnreadableRecord) {
				return // keep them for the next round
			}
			// The rest were written, and the skipped records read no
			// better next round: keeping them would only read them again.
		}
		pending = map[string]time.Time{}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case u := <-c.used:
			add(u)
		case <-t.C:
			flush(ctx)
		case <-ctx.Done():
			for drained := false; !drained; {
				select {
				case u := <-c.used:
					add(u)
				default:
					drained = true
				}
			}
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			flush(fctx)
			cancel()
			return
		}
	}
}

// CacheStats are counters since the cache was made.
type CacheStats struct {
	Hits, Misses, Stale, StoreFailures uint64
	// Refreshes are lookups started ahead of a used entry's expiry.
	Refreshes                uint64
	Entries, NegativeEntries int
}

// Stats returns the cache's counters.
func (c *Cache) Stats() CacheStats {
	return CacheStats{
		Hits: c.hits.Load(), Misses: c.misses.Load(), Stale: c.stale.Load(), StoreFailures: c.failures.Load(),
		Refreshes: c.refreshes.Load(),
		Entries:   c.pos.len(), NegativeEntries: c.neg.len(),
	}
}

// Watch keeps the cache in step with the store's changes until ctx is done.
// If the store's Watch fails, changes may be missed until it is back: the
// cache then forgets everything, but only once the store answers again, so
// that the entries it holds keep serving while the store is down.
func (c *Cache) Watch(ctx context.Context) {
	var once sync.Once
	for ctx.Err() == nil {
		err := c.store.Watch(ctx, c.Invalidate)
		if ctx.Err() != nil {
			return
		}
		once.Do(func() { c.opts.Logger.Warn("watch key changes", "err", err) })
		for ctx.Err() == nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			err := c.store.Ping(pctx)
			cancel()
			if err == nil {
				c.Invalidate(Hash{})
				break
			}
		}
	}
}
