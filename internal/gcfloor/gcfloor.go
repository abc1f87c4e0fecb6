// Package gcfloor keeps the garbage collector from running more often than
// a heap of a given size would make it, while the live heap is small.
//
// With the default GOGC=100 the collector runs whenever the heap has grown
// by as much as is live (at least 4 MiB). A decision server with a small key
// cache keeps only a few MiB live but allocates a few KiB per check (most of
// it gRPC's), so under load it collected about 45 times a second, and each
// cycle also shrank the gRPC workers' stacks, which the next checks grew
// again: on the development VM that was a third of a check's CPU. Start
// raises GOGC so that the heap may grow by at least floor before a
// collection: the cost of a cycle is then spread over many thousands of
// checks. Once the live heap exceeds floor (a large cache), GOGC is 100
// again. GOMEMLIMIT, when set, still caps the heap.
//
// It is not a memory limit: it only ever lets the heap grow more between
// collections, and GOGC set in the environment turns it off.
package gcfloor

import (
	"os"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"time"
)

// The collector's growth allowance is GOGC percent of the live heap plus
// the goroutine stacks and globals it scans (the GC guide's "GOGC" section),
// so all three count as "live" here.
var liveMetrics = []string{"/gc/heap/live:bytes", "/gc/scan/stack:bytes", "/gc/scan/globals:bytes"}

// heapMinimum is the runtime's smallest heap goal at GOGC=100 (4 MiB); it
// scales with GOGC, so GOGC=p never collects below heapMinimum·p/100.
const heapMinimum = 4 << 20

// Percent is the GOGC that lets a heap with live bytes live grow by about
// floor bytes before the next collection: 100, or more while live < floor.
// It is at most floor/heapMinimum·100: past that the runtime's own minimum
// goal, which scales with GOGC, would exceed floor (GOGC=6400 would let even
// an idle heap reach 256 MiB, and on the development VM the page faults of
// such a heap cost more than the collections saved). It is 100 when live is
// not known yet (0).
func Percent(live, floor uint64) int {
	if live == 0 || live >= floor {
		return 100
	}
	return int(max(min(floor*100/live, floor*100/heapMinimum), 100))
}

var (
	mu      sync.Mutex
	running int    // Starts not yet stopped
	halt    func() // stops the goroutine of the first Start
)

// Start adjusts GOGC every interval to Percent(live heap, floor) until the
// returned stop is called, which restores the GOGC it found. GOGC is one
// setting for the process: while one Start runs, later ones (servers of one
// test process) only count, and the last stop restores it. It does nothing
// (and stop does nothing) when the GOGC environment variable is set: the
// operator's setting wins.
func Start(floor uint64, interval time.Duration) (stop func()) {
	if _, set := os.LookupEnv("GOGC"); set || floor == 0 {
		return func() {}
	}
	mu.Lock()
	defer mu.Unlock()
	running++
	if running == 1 {
		halt = run(floor, interval)
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			defer mu.Unlock()
			if running--; running == 0 {
				halt()
			}
		})
	}
}

func run(floor uint64, interval time.Duration) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	samples := make([]metrics.Sample, len(liveMetrics))
	for i, name := range liveMetrics {
		samples[i].Name = name
	}
	orig := debug.SetGCPercent(100)
	current := 100
	adjust := func() {
		metrics.Read(samples)
		var live uint64
		for _, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				live += s.Value.Uint64()
			}
		}
		// Change it only when it moves by more than a tenth: the live heap
		// wobbles between cycles, and each change retunes the pacer.
		if p := Percent(live, floor); p*10 < current*9 || p*10 > current*11 {
			debug.SetGCPercent(p)
			current = p
		}
	}
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			adjust()
			select {
			case <-t.C:
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-finished
		debug.SetGCPercent(orig)
	}
}
