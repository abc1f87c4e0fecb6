package ratelimit_test

import (
	"context"
	"runtime"
	"strconv"
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
		{"one limit, time.Now", false, time.Now},
		{"two limits, time.Now", true, time.Now},
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
	limits := make([]ratelimit.Limit, 1)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		lim := ratelimit.NewLocal(time.Now, 2*n) // shards fill unevenly: room for all
		for _, name := range names {
			limits[0] = ratelimit.Limit{Name: "key", Bucket: name, Rate: ratelimit.Rate{N: 100, Window: time.Minute}}
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
