package redis

import (
	"sync/atomic"
	"time"
)

// breaker stops the Redis limiter from calling a Redis that keeps failing, so
// that checks decide by the fallback at once instead of each waiting out the
// timeout. After threshold consecutive failures it opens; probeAfter later it
// lets exactly one check through as a probe; the probe's success closes it,
// its failure opens it for another probeAfter.
type breaker struct {
	threshold  int64
	probeAfter time.Duration

	failures  atomic.Int64 // consecutive
	openUntil atomic.Int64 // unix ns; 0 = closed
	probing   atomic.Bool
}

// enter reports whether this check may call Redis, and whether it is the probe.
func (b *breaker) enter() (ok, probe bool) {
	until := b.openUntil.Load()
	if until == 0 {
		return true, false
	}
	if time.Now().UnixNano() < until {
		return false, false
	}
	if b.probing.CompareAndSwap(false, true) {
		return true, true
	}
	return false, false
}

func (b *breaker) success(probe bool) {
	b.failures.Store(0)
	if b.openUntil.Load() != 0 {
		b.openUntil.Store(0)
	}
	if probe {
		b.probing.Store(false)
	}
}

func (b *breaker) failure(probe bool) {
	if probe {
		b.openUntil.Store(time.Now().Add(b.probeAfter).UnixNano())
		b.probing.Store(false)
		return
	}
	if b.failures.Add(1) >= b.threshold {
		b.openUntil.CompareAndSwap(0, time.Now().Add(b.probeAfter).UnixNano())
	}
}

// abandon ends a call that proved nothing about Redis (the caller gave up).
func (b *breaker) abandon(probe bool) {
	if probe {
		b.probing.Store(false)
	}
}

func (b *breaker) isOpen() bool { return b.openUntil.Load() != 0 }
