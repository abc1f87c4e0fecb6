package redis

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// commandsRun returns how many commands Redis has run since its statistics
// were last reset, scripts' own commands included (INFO commandstats counts
// what a script calls), leaving out INFO and CONFIG themselves.
func commandsRun(t *testing.T, c goredis.UniversalClient) int64 {
	t.Helper()
	info, err := c.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	var n int64
	for line := range strings.SplitSeq(info, "\n") {
		name, stats, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") || name == "cmdstat_info" || strings.HasPrefix(name, "cmdstat_config") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(stats, "calls="), ",")
		v, err := strconv.ParseInt(calls, 10, 64)
		require.NoError(t, err, "commandstats line %q", line)
		n += v
	}
	return n
}

// costOf returns the Redis commands fn runs.
func costOf(t *testing.T, stats goredis.UniversalClient, fn func()) int64 {
	t.Helper()
	require.NoError(t, stats.ConfigResetStat(t.Context()).Err())
	fn()
	return commandsRun(t, stats)
}

// fill stores n keys of owner through s from 16 writers at once, each
// edited by edit(i, k) first.
func fill(t *testing.T, s *Store, owner string, n int, edit func(i int, k *keystore.Key)) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				k, h, _ := newKey(t, owner)
				edit(i, k)
				if err := s.Create(context.Background(), k, h, 0); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestListingCostDoesNotGrowWithDeadKeys(t *testing.T) {
	srv := redistest.Start(t)
	stats := dial(t, Options{URL: srv.URL(0)})
	now := time.Now().UTC()
	later := now.Add(time.Hour) // when the expired keys below have expired

	// The same live keys in two stores; one of them also holds 20,000 dead
	// keys of the same owner, created before the live ones so that they
	// come first in id order (the worst case for a walk over every id).
	clean, crowded := newStore(t, srv, "clean:"), newStore(t, srv, "crowded:")
	fill(t, crowded, "alice", 20000, func(i int, k *keystore.Key) {
		if i%2 == 0 {
			k.RevokedAt = &now
		} else {
			exp := now.Add(time.Minute)
			k.ExpiresAt = &exp
		}
	})
	for _, s := range []*Store{clean, crowded} {
		for range 12 {
			create(t, s, "alice")
			create(t, s, "bob")
		}
	}
	// The server's sweep has run since the keys expired.
	for {
		res, err := crowded.Sweep(t.Context(), keystore.SweepOptions{Now: later, Batch: 5000})
		require.NoError(t, err)
		if !res.More {
			break
		}
	}

	for _, tc := range []struct {
		name string
		opts keystore.ListOptions
	}{
		{"the first page of one key of one owner", keystore.ListOptions{Owner: "alice", Limit: 1}},
		{"the first page of one key of every owner", keystore.ListOptions{Limit: 1}},
		{"a page of ten of one owner", keystore.ListOptions{Owner: "alice", Limit: 10}},
		{"every live key of one owner", keystore.ListOptions{Owner: "alice", Limit: 100}},
	} {
		t.Run(tc.name+" costs the same with 20,000 dead keys as with none", func(t *testing.T) {
			tc.opts.Now = later
			var pages [2][]*keystore.Key
			var costs [2]int64
			for i, s := range []*Store{clean, crowded} {
				_, _, err := s.List(t.Context(), tc.opts) // the first call per process reads the index version
				require.NoError(t, err)
				costs[i] = costOf(t, stats, func() {
					pages[i], _, err = s.List(t.Context(), tc.opts)
				})
				require.NoError(t, err)
			}
			t.Logf("Redis commands: %d without dead keys, %d with 20,000", costs[0], costs[1])
			require.Len(t, pages[1], len(pages[0]), "both list their live keys")
			require.Equal(t, costs[0], costs[1], "Redis commands for the page: without dead keys, with 20,000")
			require.LessOrEqual(t, costs[1], int64(3), "a ZRANGE and two MGETs")
		})
	}
}

func TestSweepIndexesAStoreWrittenBeforeTheListingIndex(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	now := time.Now().UTC()

	var want []string // live keys, in id order
	for i := range 25 {
		k, h, _ := newKey(t, fmt.Sprint("owner-", i%3))
		switch i % 5 {
		case 0:
			k.RevokedAt = &now
		case 1:
			exp := now.Add(-time.Minute)
			k.ExpiresAt = &exp
		default:
			want = append(want, k.ID)
		}
		require.NoError(t, s.Create(ctx, k, h, 0))
	}
	// Take the store back to the layout before the listing index.
	names, err := raw.Keys(ctx, testPrefix+"{keys}:*").Result()
	require.NoError(t, err)
	for _, name := range names {
		rest := strings.TrimPrefix(name, testPrefix+"{keys}:")
		if rest == "open" || strings.HasPrefix(rest, "open:") || rest == "expiring" || rest == "ends" || rest == "index" {
			require.NoError(t, raw.Del(ctx, name).Err())
		}
	}
	old := New(dial(t, Options{URL: srv.URL(0)}), testPrefix) // a process that has not seen the index
	t.Cleanup(func() { _ = old.Close() })

	listAll := func(s *Store) []string {
		t.Helper()
		var got []string
		opts := keystore.ListOptions{Now: now, Limit: 4}
		for {
			page, next, err := s.List(ctx, opts)
			require.NoError(t, err)
			got = append(got, idsOf(page)...)
			if next == "" {
				return got
			}
			opts.After = next
		}
	}
	slices.Sort(want) // ids made in one millisecond order at random
	require.Equal(t, want, listAll(old), "without the index, List walks every id")

	rounds := 0
	for {
		rounds++
		require.Less(t, rounds, 20, "the build does not end")
		res, err := old.Sweep(ctx, keystore.SweepOptions{Now: now, Batch: 10})
		require.NoError(t, err)
		if rounds == 1 {
			// A key written during the build is indexed by its own write.
			k, _, _ := create(t, s, "owner-0")
			want = append(want, k.ID)
		}
		if !res.More {
			break
		}
	}
	require.GreaterOrEqual(t, rounds, 3, "25 keys in batches of 10")
	version, err := raw.Get(ctx, testPrefix+"{keys}:index").Result()
	require.NoError(t, err)
	require.Equal(t, indexVersion, version)

	slices.Sort(want)
	require.Equal(t, want, listAll(old), "with the index")
	open, err := raw.ZRange(ctx, testPrefix+"{keys}:open", 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, want, open, "the index holds the live keys once the expired one is swept")
	expiring, err := raw.ZCard(ctx, testPrefix+"{keys}:expiring").Result()
	require.NoError(t, err)
	require.Zero(t, expiring, "swept")
	ends, err := raw.ZCard(ctx, testPrefix+"{keys}:ends").Result()
	require.NoError(t, err)
	require.EqualValues(t, 10, ends, "every revoked and expired key, for the purge")
}

func TestSweepIndexesAgainAStoreRestoredWithoutTheIndex(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	k, _, _ := create(t, s, "alice")
	page, _, err := s.List(ctx, keystore.ListOptions{Owner: "alice"})
	require.NoError(t, err)
	require.Equal(t, []string{k.ID}, idsOf(page), "indexed from the first create")

	// As if Redis came back from a copy made before the index existed.
	for _, name := range []string{"open", "open:alice", "index"} {
		require.NoError(t, raw.Del(ctx, testPrefix+"{keys}:"+name).Err())
	}
	res, err := s.Sweep(ctx, keystore.SweepOptions{Now: time.Now()})
	require.NoError(t, err)
	require.False(t, res.More)
	page, _, err = s.List(ctx, keystore.ListOptions{Owner: "alice"})
	require.NoError(t, err)
	require.Equal(t, []string{k.ID}, idsOf(page), "indexed again by the sweep")
}

// A build whose last batch was full ends on a read of no ids at all (as
// does one of a store with no keys): that is the end of the build, not an
// error that stops it there for good.
func TestSweepIndexesAStoreWhoseKeysFillTheLastBatch(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()
	for range 4 {
		create(t, s, "alice")
	}
	require.NoError(t, raw.Del(ctx, testPrefix+"{keys}:index").Err())
	for rounds := 0; ; rounds++ {
		require.Less(t, rounds, 10, "the build does not end")
		res, err := s.Sweep(ctx, keystore.SweepOptions{Now: time.Now(), Batch: 2})
		require.NoError(t, err)
		if !res.More {
			break
		}
	}
	version, err := raw.Get(ctx, testPrefix+"{keys}:index").Result()
	require.NoError(t, err)
	require.Equal(t, indexVersion, version)
}

// A key rotated away before the owner's grace sets existed is in neither:
// it would count nowhere even once its successor is revoked, where the
// SQLite store, which counts from the records, counts it. Sweep fills the
// sets for such keys, once.
func TestSweepFillsTheGraceSetsOfKeysRotatedBefore(t *testing.T) {
	srv := redistest.Start(t)
	raw := dial(t, Options{URL: srv.URL(0)})
	s := newStore(t, srv, testPrefix)
	ctx := t.Context()

	var rotated []*keystore.Key
	for range 5 {
		k, _, _ := create(t, s, "alice")
		next, h, _ := successor(t, s, k.ID)
		_, err := s.Rotate(ctx, k.ID, next, h, time.Now().Add(time.Hour))
		require.NoError(t, err)
		rotated = append(rotated, next)
	}
	// Take the store back to before the grace sets.
	require.NoError(t, raw.Del(ctx, testPrefix+"{keys}:grace:alice", testPrefix+"{keys}:graceids:alice").Err())
	for _, next := range rotated {
		_, err := s.Update(ctx, next.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
			now := time.Now()
			k.RevokedAt = &now
			return nil
		})
		require.NoError(t, err)
	}
	attempt := func() error {
		k, h, _ := newKey(t, "alice")
		return s.Create(ctx, k, h, 5)
	}

	for rounds := 0; ; rounds++ {
		require.Less(t, rounds, 20, "the sweep does not end")
		res, err := s.Sweep(ctx, keystore.SweepOptions{Now: time.Now(), Batch: 2})
		require.NoError(t, err)
		if !res.More {
			break
		}
	}
	require.ErrorIs(t, attempt(), keystore.ErrKeyLimit, "the five old keys count once their successors are revoked")
	graced, err := raw.ZCard(ctx, testPrefix+"{keys}:graceids:alice").Result()
	require.NoError(t, err)
	require.EqualValues(t, 5, graced)
}
