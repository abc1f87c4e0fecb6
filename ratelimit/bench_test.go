package ratelimit

import (
	"context"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/extauthz/extauthz/internal/redistest"
)

// benchLimits returns count checks of buckets distinct keys, each with the
// key's limit and, with two, a route's; the rates are high enough that every
// check is allowed (the allowed path is the one that writes).
func benchLimits(buckets int, two bool) [][]Limit {
	out := make([][]Limit, buckets)
	for i := range out {
		b := "key_" + strconv.Itoa(i)
		out[i] = []Limit{{Name: "key", Bucket: b, Rate: Rate{N: 1e9, Window: time.Hour}}}
		if two {
			out[i] = append(out[i], Limit{Name: "/api/users/{id}", Bucket: b, Scope: "/api/users/{id}", Rate: Rate{N: 1e9, Window: time.Minute}})
		}
	}
	return out
}

// tickClock is a clock that costs next to nothing: it moves 1µs per reading.
// On this project's CI VMs time.Now alone takes 50-150 ns, more than the rest
// of a check, so the benchmarks run with both clocks.
type tickClock struct{ us atomic.Int64 }

func (c *tickClock) Now() time.Time { return time.UnixMicro(c.us.Add(1)) }

// go test -run '^$' -bench 'BenchmarkLocalAllow' -benchmem ./ratelimit/
func BenchmarkLocalAllow(b *testing.B) {
	tick := &tickClock{}
	tick.us.Store(t0.UnixMicro())
	for _, tc := range []struct {
		name string
		two  bool
		now  func() time.Time
	}{
		{"one limit, time.Now", false, time.Now},
		{"two limits, time.Now", true, time.Now},
		{"one limit, cheap clock", false, tick.Now},
		{"two limits, cheap clock", true, tick.Now},
	} {
		checks := benchLimits(1024, tc.two)
		name := tc.name
		b.Run(name, func(b *testing.B) {
			lim := NewLocal(tc.now, 0)
			ctx := context.Background()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := lim.Allow(ctx, checks[i&1023]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+", parallel", func(b *testing.B) {
			lim := NewLocal(tc.now, 0)
			ctx := context.Background()
			var seq atomic.Int64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seq.Add(1) * 7919)
				for pb.Next() {
					i++
					if _, err := lim.Allow(ctx, checks[i&1023]); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}

// The memory of 1M idle buckets (one limit each): the heap after creating
// them, less the heap before, per bucket. The bucket names are made before
// and are not counted (they are the caller's strings, which the map keeps).
//
// go test -run '^$' -bench 'BenchmarkLocalIdleBuckets' -benchtime 1x ./ratelimit/
func BenchmarkLocalIdleBuckets(b *testing.B) {
	const n = 1 << 20
	names := make([]string, n)
	for i := range names {
		names[i] = "key_" + strconv.Itoa(i)
	}
	limits := make([]Limit, 1)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		lim := NewLocal(time.Now, 2*n) // shards fill unevenly: room for all
		for _, name := range names {
			limits[0] = Limit{Name: "key", Bucket: name, Rate: Rate{N: 100, Window: time.Minute}}
			if _, err := lim.Allow(context.Background(), limits); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if got := lim.Len(); got != n {
			b.Fatalf("%d buckets held, want %d", got, n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/bucket")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "MiB/1M-buckets")
		runtime.KeepAlive(lim)
	}
}

// BenchmarkRedisAllow measures the Redis limiter's throughput with 64
// concurrent callers against a redistest server, and beside it what
// `redis-benchmark -t incr -c 64 -n 200000 -P 1 -q -p <port>` reaches on the
// same server just before and just after (the metric incr/s, their mean, and
// checks/s as a fraction of it: the machine's load moves both):
//
//	go test -run '^$' -bench 'BenchmarkRedisAllow' -benchtime 200000x ./ratelimit/
func BenchmarkRedisAllow(b *testing.B) {
	srv := redistest.Start(b)
	client := newClient(b, srv.Addr)
	for _, tc := range []struct {
		name string
		two  bool
		opts RedisOptions
	}{
		{"one limit", false, RedisOptions{}},
		{"two limits", true, RedisOptions{}},
		{"one limit, 1 pipeline", false, RedisOptions{Pipelines: 1}},
		{"one limit, 100µs batch wait", false, RedisOptions{BatchWait: 100 * time.Microsecond}},
	} {
		checks := benchLimits(10000, tc.two)
		b.Run(tc.name, func(b *testing.B) {
			tc.opts.Prefix = uniquePrefix()
			tc.opts.Timeout = time.Second
			lim := newRedis(b, client, tc.opts)
			ctx := context.Background()
			var seq atomic.Int64
			b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			var incr float64
			if b.N > 1 {
				incr = redisBenchmarkINCR(b, srv)
			}
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seq.Add(1) * 7919)
				for pb.Next() {
					i++
					if _, err := lim.Allow(ctx, checks[i%len(checks)]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			rate := float64(b.N) / time.Since(start).Seconds()
			b.StopTimer()
			b.ReportMetric(rate, "checks/s")
			if b.N > 1 {
				incr = (incr + redisBenchmarkINCR(b, srv)) / 2
				b.ReportMetric(incr, "redis-benchmark-incr/s")
				b.ReportMetric(rate/incr, "of-incr")
			}
			if st := lim.Stats(); st.Fallback != 0 {
				b.Errorf("%d checks fell back: the figure is not Redis's", st.Fallback)
			}
		})
	}
}

// redisBenchmarkINCR runs redis-benchmark's INCR test (64 clients, no
// pipelining) against srv and returns its requests/s.
func redisBenchmarkINCR(b *testing.B, srv *redistest.Server) float64 {
	port := srv.Addr[strings.LastIndexByte(srv.Addr, ':')+1:]
	out, err := exec.Command("redis-benchmark", "-t", "incr", "-c", "64", "-n", "200000", "-P", "1", "-q", "-p", port).CombinedOutput()
	if err != nil {
		b.Fatalf("redis-benchmark: %v\n%s", err, out)
	}
	// "INCR: 98765.43 requests per second, p50=0.335 msec" (after progress
	// lines ending in \r)
	text := string(out)
	i := strings.LastIndex(text, "INCR:")
	if i < 0 {
		b.Fatalf("redis-benchmark: unexpected output %q", out)
	}
	f := strings.Fields(text[i+len("INCR:"):])
	if len(f) == 0 {
		b.Fatalf("redis-benchmark: unexpected output %q", out)
	}
	rate, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		b.Fatalf("redis-benchmark: unexpected output %q", out)
	}
	return rate
}
