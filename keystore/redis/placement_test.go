package redis_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
	"github.com/extauthz/extauthz/ratelimit"
	rlredis "github.com/extauthz/extauthz/ratelimit/redis"
)

// BenchmarkKeyPlacement measures what keeping every key record in one hash
// slot costs on a 3-master Cluster holding EXTAUTHZ_PLACEMENT_KEYS keys
// (default 1,000,000): the memory and keys of each master, what a cache miss
// costs the master of the records (its CPU per lookup, from which the
// lookups per second that saturate it follow), how the rate-limit traffic
// spreads over the masters beside it, and what the change feed costs that
// master per change and per watching replica.
//
// It is a measurement, not a test, and no part of the default run: `make
// measure-placement` runs it (about two minutes and 2 GB of memory for 1M
// keys; -v prints the figures). Redis, the load and the benchmark share the machine, so the
// throughput is the machine's; the CPU per operation is Redis's own
// (INFO's main-thread CPU), which is what scales.
func BenchmarkKeyPlacement(b *testing.B) {
	n := 1_000_000
	if v := os.Getenv("EXTAUTHZ_PLACEMENT_KEYS"); v != "" {
		var err error
		n, err = strconv.Atoi(v)
		require.NoError(b, err, "EXTAUTHZ_PLACEMENT_KEYS")
	}
	ctx := context.Background()
	c := redistest.StartClusterOf(b, redistest.ClusterOptions{Masters: 3})
	masters := c.Masters()
	const prefix = "extauthz:"
	recordsMaster := c.Master(c.Slot(prefix + "{keys}:x"))
	name := func(m *redistest.Server) string {
		if m == recordsMaster {
			return m.Addr + " (records)"
		}
		return m.Addr
	}
	client, err := redisstore.Dial(redisstore.Options{Addrs: c.Addrs(), PoolSize: 128, Timeout: 10 * time.Second})
	require.NoError(b, err)
	b.Cleanup(func() { _ = client.Close() })
	store := redisstore.New(client, prefix)
	b.Cleanup(func() { _ = store.Close() })

	before := mastersNow(b, masters)
	start := time.Now()
	hashes := bulkCreate(b, store, n)
	loadTook := time.Since(start)
	after := mastersNow(b, masters)
	b.Logf("placement: %d keys created in %s (%.0f creates/s, one script each on the records' master: %.1f µs of its CPU per create)",
		n, loadTook.Round(time.Second), float64(n)/loadTook.Seconds(), (after[recordsMaster].cpu-before[recordsMaster].cpu).Seconds()*1e6/float64(n))
	for _, m := range masters {
		s := after[m]
		per := ""
		if m == recordsMaster {
			per = fmt.Sprintf(", %.0f bytes per key", float64(s.memory-before[m].memory)/float64(n))
		}
		b.Logf("placement: master %-28s %9d Redis keys, %7.1f MiB used (%+.1f MiB%s)", name(m), s.keys,
			float64(s.memory)/(1<<20), float64(s.memory-before[m].memory)/(1<<20), per)
	}

	b.Run("cache-miss lookups", func(b *testing.B) {
		s0 := mastersNow(b, masters)
		lat := newLatencies()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
			for pb.Next() {
				h := hashes[r.IntN(len(hashes))]
				t0 := time.Now()
				_, err := store.Lookup(ctx, h)
				lat.add(time.Since(t0))
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		s1 := mastersNow(b, masters)
		cpu := (s1[recordsMaster].cpu - s0[recordsMaster].cpu)
		perOp := cpu.Seconds() * 1e6 / float64(b.N)
		b.ReportMetric(perOp, "µs-master-cpu/lookup")
		b.ReportMetric(1e6/perOp, "lookups/s-to-saturate")
		p50, p99, p999 := lat.quantiles()
		b.Logf("placement: %d cache-miss lookups: p50 %v, p99 %v, p99.9 %v; the records' master spent %.1f µs of CPU each (saturates near %.0f lookups/s); other masters' commands: %s",
			b.N, p50, p99, p999, perOp, 1e6/perOp, commandsBesides(s0, s1, recordsMaster, masters, name))
	})

	b.Run("rate-limit checks beside lookups", func(b *testing.B) {
		// What a busy server sends: a script call per check that no lease
		// answers (a Cluster client sends no batches), one bucket per
		// key, and a lookup for one check in ten (a 90% cache hit ratio).
		lim, err := rlredis.New(client, rlredis.Options{Prefix: prefix, Timeout: 10 * time.Second, OnStoreError: ratelimit.PolicyDeny, NoLeases: true})
		require.NoError(b, err)
		defer lim.Close()
		s0 := mastersNow(b, masters)
		var i atomic.Int64
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
			for pb.Next() {
				j := r.IntN(len(hashes))
				limits := []ratelimit.Limit{{Name: "key", Bucket: "key_" + strconv.Itoa(j), Rate: ratelimit.Rate{N: 1000, Window: time.Minute}}}
				if _, err := lim.Allow(ctx, limits); err != nil {
					b.Error(err)
					return
				}
				if i.Add(1)%10 == 0 {
					if _, err := store.Lookup(ctx, hashes[j]); err != nil {
						b.Error(err)
						return
					}
				}
			}
		})
		b.StopTimer()
		s1 := mastersNow(b, masters)
		line := ""
		for _, m := range masters {
			cpu := (s1[m].cpu - s0[m].cpu)
			cmds := s1[m].commands - s0[m].commands
			line += fmt.Sprintf("%s: %d commands, %.2f s CPU (%.0f%%); ", name(m), cmds, cpu.Seconds(),
				100*cpu.Seconds()/totalCPU(s0, s1, masters).Seconds())
			if m == recordsMaster {
				b.ReportMetric(100*cpu.Seconds()/totalCPU(s0, s1, masters).Seconds(), "%-cpu-on-records-master")
			}
		}
		b.Logf("placement: %d checks (every one a rate-limit script, one in ten a lookup): %s", b.N, line)
	})

	for _, replicas := range []int{10, 100} {
		b.Run(fmt.Sprintf("change feed to %d replicas", replicas), func(b *testing.B) {
			// Each replica watches on a client of its own, as each extauthz
			// server does; a change is a revocation or an update.
			var seen atomic.Int64
			wctx, cancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			for range replicas {
				wc, err := redisstore.Dial(redisstore.Options{Addrs: c.Addrs(), PoolSize: 2, Timeout: 10 * time.Second})
				require.NoError(b, err)
				ws := redisstore.New(wc, prefix)
				wg.Go(func() {
					_ = ws.Watch(wctx, func(h keystore.Hash) {
						if !h.IsZero() {
							seen.Add(1)
						}
					})
					_ = ws.Close()
					_ = wc.Close()
				})
			}
			time.Sleep(time.Second) // every watcher is blocked on the stream
			ids := liveIDs(b, store, 1000)
			s0 := mastersNow(b, masters)
			seen.Store(0)
			b.ResetTimer()
			for i := range b.N {
				id := ids[i%len(ids)]
				_, err := store.Update(ctx, id, keystore.OwnerLimit{}, func(k *keystore.Key) error {
					k.Name = "renamed-" + strconv.Itoa(i)
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			want := int64(b.N * replicas)
			deadline := time.Now().Add(30 * time.Second)
			for seen.Load() < want && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			b.StopTimer()
			s1 := mastersNow(b, masters)
			cancel()
			wg.Wait()
			cpu := (s1[recordsMaster].cpu - s0[recordsMaster].cpu)
			perChange := cpu.Seconds() * 1e6 / float64(b.N)
			b.ReportMetric(perChange, "µs-master-cpu/change")
			b.ReportMetric(perChange/float64(replicas), "µs-master-cpu/change/replica")
			b.Logf("placement: %d changes to %d watching replicas (%d of %d deliveries seen): the records' master spent %.0f µs of CPU per change, %.1f µs per change per replica",
				b.N, replicas, seen.Load(), want, perChange, perChange/float64(replicas))
		})
	}
}

// masterStats is what INFO says of one master.
type masterStats struct {
	keys, memory, commands int64
	cpu                    time.Duration // main thread, user + system
}

// mastersNow reads what INFO says of each master now.
func mastersNow(tb testing.TB, masters []*redistest.Server) map[*redistest.Server]masterStats {
	tb.Helper()
	out := map[*redistest.Server]masterStats{}
	for _, m := range masters {
		var s masterStats
		info := map[string]string{}
		for _, section := range []string{"memory", "stats", "cpu", "keyspace"} {
			sec, err := m.Info(section)
			require.NoError(tb, err)
			for k, v := range sec {
				info[k] = v
			}
		}
		s.memory, _ = strconv.ParseInt(info["used_memory"], 10, 64)
		s.commands, _ = strconv.ParseInt(info["total_commands_processed"], 10, 64)
		user, _ := strconv.ParseFloat(info["used_cpu_user_main_thread"], 64)
		sys, _ := strconv.ParseFloat(info["used_cpu_sys_main_thread"], 64)
		s.cpu = time.Duration((user + sys) * float64(time.Second))
		if db, ok := info["db0"]; ok {
			_, _ = fmt.Sscanf(db, "keys=%d", &s.keys)
		}
		out[m] = s
	}
	return out
}

func totalCPU(s0, s1 map[*redistest.Server]masterStats, masters []*redistest.Server) time.Duration {
	var d time.Duration
	for _, m := range masters {
		d += s1[m].cpu - s0[m].cpu
	}
	return d
}

func commandsBesides(s0, s1 map[*redistest.Server]masterStats, except *redistest.Server, masters []*redistest.Server, name func(*redistest.Server) string) string {
	out := ""
	for _, m := range masters {
		if m != except {
			out += fmt.Sprintf("%s %d; ", name(m), s1[m].commands-s0[m].commands)
		}
	}
	return out
}

// bulkCreate creates n keys through the store's own Create, from many
// goroutines (the client pipelines them over its pool), spread over a
// thousand owners, and returns their hashes.
func bulkCreate(tb testing.TB, store *redisstore.Store, n int) []keystore.Hash {
	tb.Helper()
	hasher := keystore.NewHasher([]byte("placement pepper"))
	hashes := make([]keystore.Hash, n)
	perMinute, err := keystore.ParseRateLimit("1000/m")
	require.NoError(tb, err)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				now := time.Now().UTC()
				id, err := keystore.NewID(now)
				if err == nil {
					k := &keystore.Key{
						ID: id, Name: "placement-" + strconv.Itoa(i), Owner: "tenant-" + strconv.Itoa(i%1000),
						Permissions: []string{"read:users", "write:orders"}, RateLimit: perMinute, CreatedAt: now,
					}
					hashes[i] = hasher.Hash(id + "-secret")
					err = store.Create(context.Background(), k, hashes[i], 0)
				}
				if err != nil && !errors.Is(err, keystore.ErrExists) {
					once.Do(func() { firstErr = fmt.Errorf("create key %d: %w", i, err) })
					return
				}
			}
		})
	}
	wg.Wait()
	require.NoError(tb, firstErr)
	return hashes
}

// liveIDs returns up to n ids of live keys.
func liveIDs(tb testing.TB, store *redisstore.Store, n int) []string {
	tb.Helper()
	keys, _, err := store.List(context.Background(), keystore.ListOptions{Limit: n})
	require.NoError(tb, err)
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return ids
}

// latencies collects durations from many goroutines.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func newLatencies() *latencies { return &latencies{} }

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) quantiles() (p50, p99, p999 time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return
	}
	slices.Sort(l.d)
	at := func(q float64) time.Duration {
		return l.d[min(len(l.d)-1, int(q*float64(len(l.d))))].Round(10 * time.Microsecond)
	}
	return at(0.5), at(0.99), at(0.999)
}
