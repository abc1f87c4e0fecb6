package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/storetest"
	"github.com/extauthz/extauthz/ratelimit"
)

// TestMain runs the package's tests. Most run one at a time, as several
// measure how long a call takes. Those that spend their seconds waiting on
// Redis processes of their own (a Cluster or a Sentinel to form or fail
// over, a replica to confirm) and measure no time but a lower bound call
// t.Parallel: Go starts them once every serial test has finished, and they
// wait together.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, redistest.LeakOptions()...)
}

const testPrefix = "extauthz:"

// dial returns a client for srv, closed when the test ends.
func dial(tb testing.TB, o Options) goredis.UniversalClient {
	tb.Helper()
	c, err := Dial(o)
	require.NoError(tb, err)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// newStore returns a Store on its own client for srv, as one replica would
// have; the Store is closed before its client when the test ends.
func newStore(tb testing.TB, srv *redistest.Server, prefix string) *Store {
	tb.Helper()
	s := New(dial(tb, Options{URL: srv.URL(0)}), prefix)
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

var testHasher = keystore.NewHasher([]byte("test pepper"))

// newKey returns a live key record of owner and the hash of a fresh key
// of the sk format, which is returned too.
func newKey(tb testing.TB, owner string) (*keystore.Key, keystore.Hash, string) {
	tb.Helper()
	f, err := keystore.NewFormat("sk")
	require.NoError(tb, err)
	secret, err := f.Generate()
	require.NoError(tb, err)
	now := time.Now().UTC()
	id, err := keystore.NewID(now)
	require.NoError(tb, err)
	return &keystore.Key{
		ID: id, Name: "test key", Owner: owner, Permissions: []string{"read:users"}, CreatedAt: now,
	}, testHasher.Hash(secret), secret
}

// successor is a new key for rotating id: a copy of id as s holds it now,
// as a rotation's new key must be (keystore.CopiesOld), and its secret.
func successor(tb testing.TB, s *Store, id string) (*keystore.Key, keystore.Hash, string) {
	tb.Helper()
	cur, err := s.Get(context.Background(), id)
	require.NoError(tb, err)
	next, h, secret := newKey(tb, cur.Owner)
	next.Name, next.Permissions, next.RateLimit, next.IPAllowlist = cur.Name, cur.Permissions, cur.RateLimit, cur.IPAllowlist
	next.ExpiresAt, next.Policies, next.Meta = cur.ExpiresAt, cur.Policies, cur.Meta
	next.RotatedFrom, next.Lineage = cur.ID, cur.RateBucket()
	return next, h, secret
}

func create(tb testing.TB, s *Store, owner string) (*keystore.Key, keystore.Hash, string) {
	tb.Helper()
	k, h, secret := newKey(tb, owner)
	require.NoError(tb, s.Create(context.Background(), k, h, 0))
	return k, h, secret
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func() (keystore.Store, error) {
		srv := redistest.Start(t)
		return func() (keystore.Store, error) {
			c, err := Dial(Options{URL: srv.URL(0)})
			if err != nil {
				return nil, err
			}
			t.Cleanup(func() { _ = c.Close() })
			return New(c, testPrefix), nil
		}
	})
}

func TestCluster(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	cluster := redistest.StartCluster(t, 3)
	dialCluster := func(t *testing.T) goredis.UniversalClient {
		c := dial(t, Options{Addrs: cluster.Addrs()})
		require.IsType(t, &goredis.ClusterClient{}, c, "more than one address dials a Cluster")
		return c
	}

	t.Run("create, lookup, rotate, list and watch work on a 3-master cluster", func(t *testing.T) {
		prefix := "scenario:"
		a, b := New(dialCluster(t), prefix), New(dialCluster(t), prefix)
		t.Cleanup(func() { _ = a.Close(); _ = b.Close() })
		ctx := t.Context()

		events := watch(t, a)
		canary, canaryHash, _ := create(t, b, "canary")
		awaitReady(t, b, events, canary, canaryHash)

		k, h, _ := newKey(t, "alice")
		require.NoError(t, b.Create(ctx, k, h, 2))
		awaitHash(t, events, h, time.Second)
		got, err := a.Lookup(ctx, h)
		require.NoError(t, err)
		require.Equal(t, k.ID, got.ID)

		next, nextHash, _ := successor(t, b, k.ID)
		old, err := b.Rotate(ctx, k.ID, next, nextHash, next.CreatedAt.Add(time.Hour))
		require.NoError(t, err)
		require.Equal(t, next.ID, old.RotatedTo)
		awaitHash(t, events, nextHash, time.Second)

		listed, cursor, err := a.List(ctx, keystore.ListOptions{Owner: "alice"})
		require.NoError(t, err)
		require.Empty(t, cursor)
		require.ElementsMatch(t, []string{k.ID, next.ID}, idsOf(listed)) // ids of one millisecond order at random

		// Every key of the store hashes to one slot, so one primary holds them all.
		var holders atomic.Int32
		require.NoError(t, a.client.(*goredis.ClusterClient).ForEachMaster(ctx, func(ctx context.Context, c *goredis.Client) error {
			names, err := c.Keys(ctx, prefix+"*").Result()
			if len(names) > 0 {
				holders.Add(1)
			}
			return err
		}))
		require.EqualValues(t, 1, holders.Load(), "primaries holding the store's keys")
	})

	t.Run("conformance", func(t *testing.T) {
		var n atomic.Int32
		storetest.Run(t, func(t *testing.T) func() (keystore.Store, error) {
			// One cluster for the whole suite (starting one takes seconds);
			// each backend is a prefix of its own.
			prefix := fmt.Sprintf("conformance-%d:", n.Add(1))
			return func() (keystore.Store, error) {
				return New(dialCluster(t), prefix), nil
			}
		})
	})
}

func idsOf(keys []*keystore.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

// allKeys returns every key name in srv and, for each, its value as text.
func allKeys(t *testing.T, c goredis.UniversalClient) map[string]string {
	t.Helper()
	ctx := t.Context()
	names, err := c.Keys(ctx, "*").Result()
	require.NoError(t, err)
	out := make(map[string]string, len(names))
	for _, name := range names {
		typ, err := c.Type(ctx, name).Result()
		require.NoError(t, err)
		var v any
		switch typ {
		case "string":
			v, err = c.Get(ctx, name).Result()
		case "zset":
			v, err = c.ZRangeWithScores(ctx, name, 0, -1).Result()
		case "stream":
			v, err = c.XRange(ctx, name, "-", "+").Result()
		default:
			t.Fatalf("key %s has unexpected type %s", name, typ)
		}
		require.NoError(t, err)
		out[name] = fmt.Sprint(v)
	}
	return out
}

func TestKeyNamesCarryThePrefixAndOneHashTag(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, "tenant-a:")
	ctx := t.Context()

	k, h, _ := create(t, s, "alice")
	_, err := s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Name = "renamed"; return nil })
	require.NoError(t, err)
	next, nextHash, _ := successor(t, s, k.ID)
	_, err = s.Rotate(ctx, k.ID, next, nextHash, time.Now().Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, s.TouchLastUsed(ctx, map[string]time.Time{next.ID: time.Now()}))
	bobs, bobsHash, _ := newKey(t, "bob")
	token := keystore.OnceToken("bob", "request 1")
	require.NoError(t, s.CreateOnce(ctx, bobs, bobsHash, 0, keystore.OnceRecord{Token: token, Until: bobs.CreatedAt.Add(time.Hour)}))

	names := allKeys(t, raw)
	want := []string{
		"tenant-a:{keys}:h:" + h.String(),
		"tenant-a:{keys}:h:" + nextHash.String(),
		"tenant-a:{keys}:h:" + bobsHash.String(),
		"tenant-a:{keys}:id:" + k.ID,
		"tenant-a:{keys}:id:" + next.ID,
		"tenant-a:{keys}:id:" + bobs.ID,
		"tenant-a:{keys}:once:" + token.String(),
		"tenant-a:{keys}:all",
		"tenant-a:{keys}:owner:alice",
		"tenant-a:{keys}:live:alice",
		"tenant-a:{keys}:owner:bob",
		"tenant-a:{keys}:live:bob",
		"tenant-a:{keys}:open:bob",
		"tenant-a:{keys}:changes",
		"tenant-a:{keys}:open",
		"tenant-a:{keys}:open:alice",
		"tenant-a:{keys}:expiring", // the rotated key's grace period
		"tenant-a:{keys}:ends",
		"tenant-a:{keys}:index",
		"tenant-a:{keys}:grace:alice",    // the rotated key, until its successor is gone
		"tenant-a:{keys}:graceids:alice", // the same key's id
	}
	for _, name := range want {
		require.Contains(t, names, name)
	}
	require.Len(t, names, len(want), "unexpected keys in %v", names)

	// Another prefix is another store on the same server.
	other := newStore(t, srv, "tenant-b:")
	_, err = other.Lookup(ctx, h)
	require.ErrorIs(t, err, keystore.ErrNotFound)
	create(t, other, "alice")
	for name := range allKeys(t, raw) {
		require.True(t, strings.HasPrefix(name, "tenant-a:{keys}:") || strings.HasPrefix(name, "tenant-b:{keys}:"),
			"key %q is outside both prefixes", name)
	}
}

func TestNoPlaintextKeyIsStored(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()

	var secrets []string
	for i := range 5 {
		k, _, secret := create(t, s, fmt.Sprintf("owner-%d", i%2))
		secrets = append(secrets, secret)
		_, err := s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Permissions = append(k.Permissions, "admin"); return nil })
		require.NoError(t, err)
		require.NoError(t, s.TouchLastUsed(ctx, map[string]time.Time{k.ID: time.Now()}))
		if i%2 == 0 {
			next, nextHash, nextSecret := successor(t, s, k.ID)
			secrets = append(secrets, nextSecret)
			_, err := s.Rotate(ctx, k.ID, next, nextHash, time.Now().Add(time.Hour))
			require.NoError(t, err)
		}
	}

	dump := allKeys(t, raw)
	require.NotEmpty(t, dump)
	for name, value := range dump {
		for _, secret := range secrets {
			random := secret[len("sk_"):] // without the prefix the format announces
			require.NotContains(t, name, random, "a key name contains a plaintext key")
			require.NotContains(t, value, random, "the value of %s contains a plaintext key", name)
		}
	}
}

// Rate limits as the Redis records have always held them (the record's
// JSON: a string as written, or null for the default) load as typed values
// and are written back unchanged: a record an earlier version wrote reads as
// it did then.
func TestRateLimitsStoredByEarlierVersionsLoad(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	def := ratelimit.Rate{N: 7, Window: time.Hour}
	for _, tt := range []struct {
		stored string // the JSON value of rate_limit
		text   string
		rate   ratelimit.Rate
	}{
		{"null", "", def},
		{`"none"`, "none", ratelimit.Rate{}},
		{`"100/m"`, "100/m", ratelimit.Rate{N: 100, Window: time.Minute}},
		{`" 100/10m"`, " 100/10m", ratelimit.Rate{N: 100, Window: 10 * time.Minute}},
		{`"10/fortnight"`, "10/fortnight", def}, // no longer parses: the default, as the decision always read it
	} {
		k, h, _ := create(t, s, "alice")
		record := s.keys.record(h.String())
		before, err := raw.Get(ctx, record).Result()
		require.NoError(t, err)
		require.Contains(t, before, `"rate_limit":null`)
		require.NoError(t, raw.Set(ctx, record, strings.Replace(before, `"rate_limit":null`, `"rate_limit":`+tt.stored, 1), 0).Err())

		for _, read := range []func() (*keystore.Key, error){
			func() (*keystore.Key, error) { return s.Get(ctx, k.ID) },
			func() (*keystore.Key, error) { return s.Lookup(ctx, h) },
		} {
			got, err := read()
			require.NoError(t, err, tt.stored)
			assert.Equal(t, tt.text, got.RateLimit.String())
			assert.Equal(t, tt.rate, got.RateLimit.Or(def), tt.stored)
		}
		_, err = s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Name = "renamed"; return nil })
		require.NoError(t, err)
		after, err := raw.Get(ctx, record).Result()
		require.NoError(t, err)
		assert.Contains(t, after, `"rate_limit":`+tt.stored, "a write keeps the text as it was")
	}
}

// A record written before keys had policies and metadata (its JSON has
// neither field) loads as a key valid under every policy with no metadata,
// and a change writes both fields.
func TestRecordsFromBeforePoliciesLoad(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	k, h, _ := create(t, s, "alice")
	record := s.keys.record(h.String())
	current, err := raw.Get(ctx, record).Result()
	require.NoError(t, err)
	require.Contains(t, current, `"policies":[],"meta":{},`)
	old := strings.Replace(current, `"policies":[],"meta":{},`, "", 1)
	require.NoError(t, raw.Set(ctx, record, old, 0).Err())

	for _, read := range []func() (*keystore.Key, error){
		func() (*keystore.Key, error) { return s.Get(ctx, k.ID) },
		func() (*keystore.Key, error) { return s.Lookup(ctx, h) },
	} {
		got, err := read()
		require.NoError(t, err)
		assert.Empty(t, got.Policies)
		assert.Empty(t, got.Meta)
		assert.True(t, got.ValidUnder("billing"))
	}
	_, err = s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
		k.Policies, k.Meta = []string{"billing"}, map[string]string{"plan": "gold"}
		return nil
	})
	require.NoError(t, err)
	after, err := raw.Get(ctx, record).Result()
	require.NoError(t, err)
	assert.Contains(t, after, `"policies":["billing"],"meta":{"plan":"gold"}`)
}

func TestRedisDownIsUnavailableFast(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, testPrefix)
	k, h, _ := create(t, s, "alice")
	srv.Stop()

	next, nextHash, _ := newKey(t, "alice")
	next.RotatedFrom = k.ID
	calls := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"Lookup", func(ctx context.Context) error { _, err := s.Lookup(ctx, h); return err }},
		{"Get", func(ctx context.Context) error { _, err := s.Get(ctx, k.ID); return err }},
		{"Create", func(ctx context.Context) error { n, nh, _ := newKey(t, "alice"); return s.Create(ctx, n, nh, 10) }},
		{"Update", func(ctx context.Context) error {
			_, err := s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(*keystore.Key) error { return nil })
			return err
		}},
		{"Rotate", func(ctx context.Context) error {
			_, err := s.Rotate(ctx, k.ID, next, nextHash, time.Now())
			return err
		}},
		{"List", func(ctx context.Context) error { _, _, err := s.List(ctx, keystore.ListOptions{}); return err }},
		{"TouchLastUsed", func(ctx context.Context) error {
			return s.TouchLastUsed(ctx, map[string]time.Time{k.ID: time.Now()})
		}},
		{"Ping", func(ctx context.Context) error { return s.Ping(ctx) }},
	}
	for _, c := range calls {
		t.Run(c.name+" wraps ErrUnavailable within a second", func(t *testing.T) {
			start := time.Now()
			err := c.call(t.Context())
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			require.NotErrorIs(t, err, keystore.ErrNotFound)
			require.Less(t, time.Since(start), time.Second)
		})
	}

	srv.Restart()
	_, err := s.Lookup(t.Context(), h)
	require.ErrorIs(t, err, keystore.ErrNotFound, "after a restart without persistence the key is gone, and Redis answers again")
}

func TestRedisHangingIsUnavailableFast(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, testPrefix)
	_, h, _ := create(t, s, "alice")

	srv.Pause()
	start := time.Now()
	_, err := s.Lookup(t.Context(), h)
	elapsed := time.Since(start)
	srv.Resume()
	require.ErrorIs(t, err, keystore.ErrUnavailable)
	// Two attempts (DefaultMaxRetries) of DefaultReadTimeout each, plus slack.
	require.Less(t, elapsed, 1500*time.Millisecond)

	got, err := s.Lookup(t.Context(), h)
	require.NoError(t, err, "Lookup after Redis resumed")
	require.NotNil(t, got)
}

func TestCallerDeadlineWins(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, testPrefix)
	_, h, _ := create(t, s, "alice")
	srv.Pause()
	defer srv.Resume()

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Lookup(ctx, h)
	require.ErrorIs(t, err, keystore.ErrUnavailable)
	require.Less(t, time.Since(start), 200*time.Millisecond, "the 50ms context deadline was not honoured")
}

// watch runs s.Watch until the test ends and returns what it reports.
func watch(t *testing.T, s *Store) <-chan keystore.Hash {
	t.Helper()
	events := make(chan keystore.Hash, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.Watch(ctx, func(h keystore.Hash) {
			select {
			case events <- h:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(2 * time.Second):
			t.Error("Watch did not return within 2s of its context being cancelled")
		}
	})
	return events
}

// awaitReady renames canary through via until events reports it: Watch
// starts from the end of the change log some moment after it is called.
func awaitReady(t *testing.T, via *Store, events <-chan keystore.Hash, canary *keystore.Key, canaryHash keystore.Hash) {
	t.Helper()
	for i := range 100 {
		_, err := via.Update(t.Context(), canary.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Name = fmt.Sprint("canary ", i); return nil })
		require.NoError(t, err)
		timeout := time.After(100 * time.Millisecond)
	wait:
		for {
			select {
			case h := <-events:
				if h == canaryHash {
					drain(events)
					return
				}
			case <-timeout:
				break wait
			}
		}
	}
	t.Fatal("Watch reported nothing for 10s while the canary changed")
}

func drain(events <-chan keystore.Hash) {
	for {
		select {
		case <-events:
		default:
			return
		}
	}
}

// awaitHash waits up to d for h and fails the test otherwise.
func awaitHash(t *testing.T, events <-chan keystore.Hash, h keystore.Hash, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	timeout := time.After(d)
	for {
		select {
		case got := <-events:
			if got == h {
				return time.Since(start)
			}
		case <-timeout:
			if h.IsZero() {
				t.Fatalf("Watch did not say \"forget everything\" within %v", d)
			}
			t.Fatalf("Watch did not report %s… within %v", h.String()[:8], d)
			return 0
		}
	}
}

func TestWatchReachesAnotherReplicaWithinASecond(t *testing.T) {
	srv := redistest.Start(t)
	a, b := newStore(t, srv, testPrefix), newStore(t, srv, testPrefix)
	events := watch(t, a)
	canary, canaryHash, _ := create(t, b, "canary")
	awaitReady(t, b, events, canary, canaryHash)

	k, h, _ := create(t, b, "alice")
	took := awaitHash(t, events, h, time.Second)
	t.Logf("a create reached the other replica's Watch in %v", took)

	_, err := b.Update(t.Context(), k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
		now := time.Now()
		k.RevokedAt = &now
		return nil
	})
	require.NoError(t, err)
	awaitHash(t, events, h, time.Second)
}

func TestWatchForgetsEverythingAfterARestart(t *testing.T) {
	srv := redistest.Start(t)
	var log syncbuf.Buffer
	a := New(dial(t, Options{URL: srv.URL(0)}), testPrefix, LogTo(slog.New(slog.NewTextHandler(&log, nil))))
	t.Cleanup(func() { _ = a.Close() })
	b := newStore(t, srv, testPrefix)
	events := watch(t, a)
	canary, canaryHash, _ := create(t, b, "canary")
	awaitReady(t, b, events, canary, canaryHash)

	srv.Stop()
	// A canary change read just before the stop may still arrive; anything
	// else, and above all "forget everything", must wait until Redis is back.
	for quiet := time.After(time.Second); ; {
		select {
		case h := <-events:
			if h != canaryHash {
				t.Fatalf("Watch reported %v while Redis was down; the cache must keep serving then", h)
			}
			continue
		case <-quiet:
		}
		break
	}

	srv.Restart() // without persistence: the change log is gone
	awaitHash(t, events, keystore.Hash{}, 3*time.Second)

	// And it reads on from the new server.
	_, h, _ := create(t, b, "alice")
	awaitHash(t, events, h, time.Second)

	// The operator heard of the outage once, and of its end.
	require.Eventually(t, func() bool { return strings.Contains(log.String(), "reading changes from Redis again") }, time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, strings.Count(log.String(), "key change feed: Redis failed"), "%s", log.String())

	// A second outage is a run of failures of its own: its warning counts
	// from one again.
	srv.Stop()
	require.Eventually(t, func() bool { return strings.Count(log.String(), "key change feed: Redis failed") == 2 }, 3*time.Second, 10*time.Millisecond)
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	assert.Contains(t, lines[len(lines)-1], "failures=1", "%s", log.String())
}

func TestWatchForgetsEverythingAfterAGapInTheLog(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	a, b := newStore(t, srv, testPrefix), newStore(t, srv, testPrefix)
	events := watch(t, a)
	canary, canaryHash, _ := create(t, b, "canary")
	awaitReady(t, b, events, canary, canaryHash)

	// What MAXLEN does to a watcher that fell behind: the entries it has
	// not read, and the last one it has, are trimmed away.
	require.NoError(t, raw.XTrimMaxLen(t.Context(), testPrefix+"{keys}:changes", 0).Err())
	create(t, b, "alice")
	awaitHash(t, events, keystore.Hash{}, time.Second)

	_, h, _ := create(t, b, "bob")
	awaitHash(t, events, h, time.Second)
}

// TestWatchForgetsEverythingAtAnEntryItCannotRead: an entry of the change
// stream that names no key this version reads (another version's form, a
// damaged one) is a change to a key unknown, so the cache is told to forget
// everything, and Watch reads on.
func TestWatchForgetsEverythingAtAnEntryItCannotRead(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	a, b := newStore(t, srv, testPrefix), newStore(t, srv, testPrefix)
	events := watch(t, a)
	canary, canaryHash, _ := create(t, b, "canary")
	awaitReady(t, b, events, canary, canaryHash)

	for _, entry := range [][]string{
		{"h", ""}, {"h", "not hex"}, {"h", strings.Repeat("0", 64)}, {"h", strings.Repeat("ab", 40)},
		{"hash", canaryHash.String()},
	} {
		require.NoError(t, raw.XAdd(t.Context(), &goredis.XAddArgs{
			Stream: testPrefix + "{keys}:changes", Values: entry,
		}).Err())
		awaitHash(t, events, keystore.Hash{}, time.Second)
	}
	_, h, _ := create(t, b, "alice")
	timeout := time.After(time.Second)
	for {
		select {
		case got := <-events:
			if got == canaryHash || got.IsZero() {
				continue // a late report of awaitReady's renames, or of an entry above
			}
			require.Equal(t, h, got, "the first key reported after the unreadable entries")
			return
		case <-timeout:
			t.Fatal("Watch stopped reporting after unreadable entries")
		}
	}
}

func TestCloseEndsWatch(t *testing.T) {
	srv := redistest.Start(t)
	s := New(dial(t, Options{URL: srv.URL(0)}), testPrefix)
	done := make(chan error, 1)
	go func() { done <- s.Watch(context.Background(), func(keystore.Hash) {}) }()
	time.Sleep(100 * time.Millisecond)
	require.NoError(t, s.Close())
	select {
	case err := <-done:
		require.Error(t, err, "Watch ended by Close rather than its context")
	case <-time.After(time.Second):
		t.Fatal("Watch still running after Close returned")
	}
	require.Error(t, s.Watch(t.Context(), func(keystore.Hash) {}), "Watch on a closed Store")
	_, err := s.Lookup(t.Context(), keystore.Hash{1})
	require.Error(t, err, "Lookup on a closed Store")
	require.NoError(t, s.Close(), "a second Close")
}

func TestPrefixWithBracesIsRefused(t *testing.T) {
	for _, prefix := range []string{"a{b}:", "{x}", "}", "x{}:"} {
		require.Error(t, CheckPrefix(prefix), "prefix %q", prefix)
	}
	for _, prefix := range []string{"", "extauthz:", "tenant-a/x:"} {
		require.NoError(t, CheckPrefix(prefix), "prefix %q", prefix)
	}

	srv := redistest.Start(t)
	s := newStore(t, srv, "a{}:")
	_, err := s.Lookup(t.Context(), keystore.Hash{1})
	require.ErrorContains(t, err, "must not contain { or }")
	require.ErrorContains(t, s.Watch(t.Context(), func(keystore.Hash) {}), "must not contain { or }")
}

func TestConcurrentTouchAndUpdateLoseNothing(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, testPrefix)
	k, _, _ := create(t, s, "alice")
	base := time.Now().UTC().Truncate(time.Millisecond)
	var wg sync.WaitGroup
	const n = 10
	for i := range n {
		wg.Go(func() {
			_, err := s.Update(context.Background(), k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
				k.Permissions = append(k.Permissions, fmt.Sprint("p", i))
				return nil
			})
			assert.NoError(t, err)
		})
		wg.Go(func() {
			assert.NoError(t, s.TouchLastUsed(context.Background(), map[string]time.Time{k.ID: base.Add(time.Duration(i) * time.Second)}))
		})
	}
	wg.Wait()
	got, err := s.Get(t.Context(), k.ID)
	require.NoError(t, err)
	require.Len(t, got.Permissions, n+1, "an update was lost")
	require.NotNil(t, got.LastUsedAt)
	require.True(t, got.LastUsedAt.Equal(base.Add((n-1)*time.Second)), "last_used_at %v, want the latest touch", got.LastUsedAt)
}

// A record that does not read as a key (damaged, or written by hand) is
// left as it is, and every other key's last use is still written: an error
// for the whole batch made each round of the write-behind fail, for every
// key of every replica, for as long as that record stayed.
func TestAnUnreadableRecordStopsNoOtherKeysLastUse(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	at := time.Now().UTC().Truncate(time.Millisecond)
	used := map[string]time.Time{}
	var good []string
	for range 4 {
		k, _, _ := create(t, s, "alice")
		used[k.ID] = at
		good = append(good, k.ID)
	}
	damaged := map[string]string{}
	for _, tc := range []func(string) string{
		func(string) string { return "not json" },
		func(rec string) string {
			return strings.Replace(rec, `"permissions":["read:users"]`, `"permissions":"read:users"`, 1)
		},
	} {
		k, h, _ := create(t, s, "alice")
		record := s.keys.record(h.String())
		before, err := raw.Get(ctx, record).Result()
		require.NoError(t, err)
		after := tc(before)
		require.NotEqual(t, before, after)
		require.NoError(t, raw.Set(ctx, record, after, 0).Err())
		damaged[record] = after
		used[k.ID] = at
	}

	err := s.TouchLastUsed(ctx, used)
	require.ErrorIs(t, err, keystore.ErrUnreadableRecord)
	for _, id := range good {
		got, err := s.Get(ctx, id)
		require.NoError(t, err)
		require.NotNil(t, got.LastUsedAt, "key %s", id)
		assert.True(t, got.LastUsedAt.Equal(at))
	}
	for record, want := range damaged {
		got, err := raw.Get(ctx, record).Result()
		require.NoError(t, err)
		assert.Equal(t, want, got, "a record that does not read was rewritten")
	}
}

func BenchmarkLookup(b *testing.B) {
	srv := redistest.Start(b)
	s := newStore(b, srv, testPrefix)
	_, h, _ := create(b, s, "alice")
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Lookup(ctx, h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Lookup(ctx, h); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// A stored record may hold members this version does not know: a newer
// version wrote them (replicas of two versions run side by side through a
// rolling upgrade), and one of them may restrict the key, as policies did
// when it came. The last-use write, which every replica makes behind the
// checks of every key in use and announces to no cache, must leave them
// as they are: were it to decode the record and encode it again, an older
// replica would strip the newer one's restrictions from every key in use
// within a minute.
func TestTouchLeavesWhatItDoesNotKnowOfARecordAsItIs(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	for _, tt := range []struct {
		name string
		edit func(rec string) string // the record as a newer writer leaves it
	}{
		{"a member at the end", func(rec string) string {
			return strings.TrimSuffix(rec, "}") + `,"scopes_v9":["billing:read"]}`
		}},
		{"a member first, with an object", func(rec string) string {
			return `{"bound_to":{"spiffe":"spiffe://cluster.local/ns/a/sa/b","n":1.50},` + strings.TrimPrefix(rec, "{")
		}},
		{"a member between others, and no last_used_at", func(rec string) string {
			var m map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(rec), &m))
			delete(m, "last_used_at")
			m["max_body"] = json.RawMessage(`"1MiB \u003c 2"`)
			out, err := json.Marshal(m)
			require.NoError(t, err)
			return string(out)
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, h, _ := create(t, s, "alice")
			recKey := testPrefix + "{keys}:h:" + h.String()
			stored, err := raw.Get(t.Context(), recKey).Result()
			require.NoError(t, err)
			newer := tt.edit(stored)
			require.NoError(t, raw.Set(t.Context(), recKey, newer, 0).Err())

			at := time.Now().UTC().Truncate(time.Microsecond)
			require.NoError(t, s.TouchLastUsed(t.Context(), map[string]time.Time{k.ID: at}))

			after, err := raw.Get(t.Context(), recKey).Result()
			require.NoError(t, err)
			var before, got map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(newer), &before))
			require.NoError(t, json.Unmarshal([]byte(after), &got))
			var used time.Time
			require.NoError(t, json.Unmarshal(got["last_used_at"], &used))
			assert.True(t, used.Equal(at), "last_used_at %s, want %s", got["last_used_at"], at)
			delete(before, "last_used_at")
			delete(got, "last_used_at")
			assert.Equal(t, before, got, "the touch changed more than last_used_at")

			back, err := s.Get(t.Context(), k.ID)
			require.NoError(t, err)
			require.NotNil(t, back.LastUsedAt)
			assert.True(t, back.LastUsedAt.Equal(at))
		})
	}
}

// In a rolling upgrade, replicas of two versions share the store, and an
// older one must not strip from a record what a newer one wrote into it (a
// restriction, perhaps, that the older one cannot read). A change made
// through it (a PATCH, a revocation) keeps every member it does not know,
// as it was; a rotation, whose new key copies the old key's restrictions,
// refuses rather than make a new key without them, and stores nothing.
func TestAnOlderReplicaKeepsWhatANewerOneWroteIntoARecord(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	format, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	m := &keystore.Manager{Store: s, Hasher: testHasher, Format: format}
	ctx := t.Context()
	const newer = `"scopes_v9":["billing:read"],"bound_to":{"spiffe":"spiffe://a/b"}`
	withNewer := func(t *testing.T, h keystore.Hash) string {
		recKey := testPrefix + "{keys}:h:" + h.String()
		stored, err := raw.Get(ctx, recKey).Result()
		require.NoError(t, err)
		rec := strings.TrimSuffix(stored, "}") + "," + newer + "}"
		require.NoError(t, raw.Set(ctx, recKey, rec, 0).Err())
		return recKey
	}
	members := func(t *testing.T, recKey string) map[string]json.RawMessage {
		rec, err := raw.Get(ctx, recKey).Result()
		require.NoError(t, err)
		var got map[string]json.RawMessage
		require.NoError(t, json.Unmarshal([]byte(rec), &got))
		return got
	}

	k, h, _ := create(t, s, "alice")
	recKey := withNewer(t, h)
	name := "renamed"
	_, err = m.Update(ctx, k.ID, keystore.Patch{Name: &name}, nil, "test")
	require.NoError(t, err)
	got := members(t, recKey)
	assert.JSONEq(t, `["billing:read"]`, string(got["scopes_v9"]), "a PATCH kept what it does not know")
	assert.JSONEq(t, `{"spiffe":"spiffe://a/b"}`, string(got["bound_to"]))
	assert.JSONEq(t, `"renamed"`, string(got["name"]), "and made its change")

	_, err = m.Revoke(ctx, k.ID, "test")
	require.NoError(t, err)
	got = members(t, recKey)
	assert.JSONEq(t, `["billing:read"]`, string(got["scopes_v9"]), "a revocation kept what it does not know")
	assert.NotEqual(t, "null", string(got["revoked_at"]))

	k2, h2, _ := create(t, s, "alice")
	recKey2 := withNewer(t, h2)
	before, err := raw.Get(ctx, recKey2).Result()
	require.NoError(t, err)
	secret, next, err := m.Rotate(ctx, k2.ID, time.Hour, "test", nil)
	require.ErrorIs(t, err, keystore.ErrNewerRecord)
	assert.ErrorContains(t, err, "scopes_v9, bound_to")
	assert.Empty(t, secret)
	assert.Nil(t, next)
	after, err := raw.Get(ctx, recKey2).Result()
	require.NoError(t, err)
	assert.Equal(t, before, after, "the refused rotation changed the old key's record")
	list, _, err := s.List(ctx, keystore.ListOptions{Owner: "alice", Now: time.Now(), Limit: 10})
	require.NoError(t, err)
	require.Len(t, list, 1, "the refused rotation made a new key")
	assert.Equal(t, k2.ID, list[0].ID)
}

// A newer version that adds a restriction names it in the record's
// "requires"; this version, which cannot enforce it, must not decide the
// key by the rest of the record. The lookup a check makes refuses it, and
// so does the read of an admin API change's caller (GetForCheck); the
// admin reads (Get, List) still show the key, and a PATCH through this
// version keeps the member as it is.
func TestALookupRefusesARecordThatRequiresWhatItDoesNotKnow(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	format, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	m := &keystore.Manager{Store: s, Hasher: testHasher, Format: format}
	for _, tt := range []struct {
		name     string
		members  string // added to the record, as a newer writer would
		refused  bool
		mentions string
	}{
		{"one unknown requirement", `"requires":["bound_to"],"bound_to":{"spiffe":"spiffe://a/b"}`, true, `"bound_to"`},
		{"requirements first in the record", ``, true, `"scopes_v9"`},
		{"many unknown requirements, named up to four", `"requires":["a","b","c","d","e","f"]`, true, `"a", "b", "c", "d", ...`},
		{"an empty list", `"requires":[]`, false, ""},
		{"null", `"requires":null`, false, ""},
		{"a member that restricts nothing, not required", `"description_v9":"billing batch"`, false, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			k, h, _ := create(t, s, "alice")
			recKey := testPrefix + "{keys}:h:" + h.String()
			stored, err := raw.Get(ctx, recKey).Result()
			require.NoError(t, err)
			rec := strings.TrimSuffix(stored, "}") + "," + tt.members + "}"
			if tt.members == "" {
				rec = `{"requires":["scopes_v9"],"scopes_v9":["x"],` + strings.TrimPrefix(stored, "{")
			}
			require.NoError(t, raw.Set(ctx, recKey, rec, 0).Err())

			got, err := s.Lookup(ctx, h)
			acting, actErr := s.GetForCheck(ctx, k.ID)
			if !tt.refused {
				require.NoError(t, err)
				assert.Equal(t, k.ID, got.ID)
				require.NoError(t, actErr)
				assert.Equal(t, k.ID, acting.ID)
				return
			}
			// The read of a key about to act (an admin API change's
			// caller) refuses it as the lookup does.
			require.ErrorIs(t, actErr, keystore.ErrNeedsNewer)
			assert.ErrorContains(t, actErr, tt.mentions)
			require.NotNil(t, acting)
			assert.Equal(t, k.ID, acting.ID)
			require.ErrorIs(t, err, keystore.ErrNeedsNewer)
			assert.NotErrorIs(t, err, keystore.ErrUnavailable, "an answer of the store, not its failure")
			assert.ErrorContains(t, err, tt.mentions)
			require.NotNil(t, got, "the key comes with the error, for a revocation to find it")
			assert.Equal(t, k.ID, got.ID)

			read, err := s.Get(ctx, k.ID)
			require.NoError(t, err, "the admin API still reads the key")
			assert.Equal(t, k.ID, read.ID)
			name := "renamed"
			_, err = m.Update(ctx, k.ID, keystore.Patch{Name: &name}, nil, "test")
			require.NoError(t, err)
			after, err := raw.Get(ctx, recKey).Result()
			require.NoError(t, err)
			var members map[string]json.RawMessage
			require.NoError(t, json.Unmarshal([]byte(after), &members))
			assert.NotEmpty(t, members["requires"], "a PATCH through this version kept requires")
			_, err = s.Lookup(ctx, h)
			require.ErrorIs(t, err, keystore.ErrNeedsNewer, "and the key is still refused after it")
		})
	}
}

// A record that decodes but is no key record (JSON null, an empty object,
// one without an id, an owner or a creation time: damaged, or written by
// hand) must not be answered as a live key with no id, no restrictions,
// every policy and any address: a check on a route that needs only a key
// would be allowed, with a rate-limit bucket named "".
func TestALookupRefusesARecordWithoutAnIdentity(t *testing.T) {
	srv := redistest.Start(t)
	s := newStore(t, srv, testPrefix)
	raw := dial(t, Options{URL: srv.URL(0)})
	_, h, _ := create(t, s, "alice")
	for _, rec := range []string{`null`, `{}`, `{"permissions":["admin"]}`, `{"id":"","owner":"alice"}`, `{"id":"key_x","owner":"alice"}`} {
		require.NoError(t, raw.Set(t.Context(), testPrefix+"{keys}:h:"+h.String(), rec, 0).Err())
		got, err := s.Lookup(t.Context(), h)
		require.Error(t, err, "record %s was answered as the key %+v", rec, got)
		require.NotErrorIs(t, err, keystore.ErrNotFound, "the record is there")
	}
}
