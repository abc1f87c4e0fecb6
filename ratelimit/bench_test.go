package ratelimit_test

import (
	"context"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/extauthz/extauthz/ratelimit"
	"github.com/extauthz/extauthz/ratelimit/limitertest"
)

// tickClock is a clock that costs next to nothing: it moves 1µs per reading.
// On this project's CI VMs time.Now alone takes 50-150 ns, more than the rest
// of a check, so the benchmarks run with both clocks.
type tickClock struct{ us atomic.Int64 }

func (c *tickClock) Now() time.Time { return time.UnixMicro(c.us.Add(1)) }

// go test -run '^$' -bench 'BenchmarkLocalAllow' -benchmem ./ratelimit/
func BenchmarkLocalAllow(b *testing.B) {
	tick := &tickClock{}
	tick.us.Store(limitertest.T0.UnixMicro())
	for _, tc := range []struct {
		name string
		two  bool
		now  func() time.Time
	}{
		{"one limit, its own clock", false, nil},
		{"two limits, its own clock", true, nil},
		{"one limit, cheap clock", false, tick.Now},
		{"two limits, cheap clock", true, tick.Now},
	} {
		checks := limitertest.Checks(1024, tc.two)
		name := tc.name
		b.Run(name, func(b *testing.B) {
			lim := ratelimit.NewLocal(tc.now, 0)
			ctx := context.Background()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := lim.Allow(ctx, checks[i&1023]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+", parallel", func(b *testing.B) {
			lim := ratelimit.NewLocal(tc.now, 0)
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

// The memory of 1M idle buckets, one limit and one request each, named like
// key ids ("key_" and 20 base62 digits). It counts what the limiter keeps
// alive: the heap after the buckets are made and the caller has dropped its
// names, less the heap before the names were made (a limiter that keeps the
// caller's strings pays for them, one that copies them pays for its copies).
// The resident set is measured the same way after the heap has been handed
// back to the system (Linux only), and so also counts what the runtime keeps;
// ms/GC is how long one collection takes with nothing else live.
//
// go test -run '^$' -bench 'BenchmarkLocalIdleBuckets' -benchtime 1x ./ratelimit/
func BenchmarkLocalIdleBuckets(b *testing.B) {
	const n = 1 << 20
	limits := make([]ratelimit.Limit, 1)
	for b.Loop() {
		var before, after runtime.MemStats
		debug.FreeOSMemory()
		runtime.ReadMemStats(&before)
		rssBefore, rssOK := residentBytes()
		names := keyIDs(n)
		lim := ratelimit.NewLocal(time.Now, 2*n) // shards fill unevenly: room for all
		for _, name := range names {
			limits[0] = ratelimit.Limit{Name: "key", Bucket: name, Rate: ratelimit.Rate{N: 100, Window: time.Minute}}
			if _, err := lim.Allow(context.Background(), limits); err != nil {
				b.Fatal(err)
			}
		}
		names, limits[0] = nil, ratelimit.Limit{}
		runtime.GC()
		start := time.Now()
		runtime.GC() // what the collector spends on the buckets: marking them
		gc := time.Since(start)
		debug.FreeOSMemory()
		runtime.ReadMemStats(&after)
		rssAfter, _ := residentBytes()
		if got := lim.Len(); got != n {
			b.Fatalf("%d buckets held, want %d", got, n)
		}
		heap := float64(after.HeapAlloc) - float64(before.HeapAlloc)
		b.ReportMetric(heap/n, "bytes/bucket")
		b.ReportMetric(heap/(1<<20), "MiB/1M-buckets")
		b.ReportMetric(float64(gc.Microseconds())/1000, "ms/GC")
		if rssOK {
			b.ReportMetric((float64(rssAfter)-float64(rssBefore))/(1<<20), "RSS-MiB/1M-buckets")
		}
		runtime.KeepAlive(lim)
		runtime.KeepAlive(names)
	}
}

// keyIDs returns n distinct names shaped like key ids, from a fixed seed.
func keyIDs(n int) []string {
	const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	rng := rand.New(rand.NewPCG(1, 2))
	names := make([]string, n)
	seen := make(map[string]bool, n)
	buf := []byte("key_00000000000000000000")
	for i := range names {
		for {
			for j := 4; j < len(buf); j++ {
				buf[j] = base62[rng.IntN(len(base62))]
			}
			if !seen[string(buf)] {
				break
			}
		}
		names[i] = string(buf)
		seen[names[i]] = true
	}
	return names
}

// residentBytes is the process's resident set, from /proc/self/statm.
func residentBytes() (uint64, bool) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, false
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, false
	}
	return pages * uint64(os.Getpagesize()), true
}
