// Package breaker is the circuit breaker in front of a store that may stop
// answering: the key cache (keystore.Cache) and the Redis rate limiter
// (ratelimit/redis) each keep one, so that while their store is down,
// callers decide at once (from the cache, by the fallback policy) instead of
// each waiting out a timeout.
//
// What it promises: after Threshold failures in a row it opens, and Enter
// refuses every call; Retry after the failure that opened it, Enter lets
// exactly one call through as the probe; the probe's success closes it, its
// failure keeps it open for another Retry. Any success closes it and starts
// the count again. It holds no lock: every step is one atomic operation.
//
// It is not a timeout or a retry policy: callers bound their own calls, and
// say what counts as a failure (a store that answered "no such key" did
// answer).
package breaker

import (
	"sync/atomic"
	"time"
)

// Breaker is one circuit breaker. Make it with New; it is safe for
// concurrent use.
type Breaker struct {
	threshold int64
	retry     time.Duration
	now       func() time.Time

	failures  atomic.Int64 // in a row
	openUntil atomic.Int64 // unix ns until which calls are refused; 0 = closed
	probing   atomic.Bool
}

// New returns a closed Breaker that opens after threshold failures in a row
// (at least 1) and probes every retry while open, reading the time from now
// (time.Now when nil).
func New(threshold int, retry time.Duration, now func() time.Time) *Breaker {
	if now == nil {
		now = time.Now
	}
	return &Breaker{threshold: int64(max(threshold, 1)), retry: retry, now: now}
}

// Enter reports whether a call may go to the store now, and whether it is
// the one probe of an open breaker. A call that entered must end with
// Success, Failure or Abandon, passing probe on.
func (b *Breaker) Enter() (ok, probe bool) {
	until := b.openUntil.Load()
	if until == 0 {
		return true, false
	}
	if b.now().UnixNano() < until {
		return false, false
	}
	if b.probing.CompareAndSwap(false, true) {
		return true, true
	}
	return false, false
}

// Success records that the store answered: the breaker closes and the count
// of failures starts again.
func (b *Breaker) Success(probe bool) {
	b.failures.Store(0)
	if b.openUntil.Load() != 0 {
		b.openUntil.Store(0)
	}
	if probe {
		b.probing.Store(false)
	}
}

// Failure records that the store did not answer. The threshold-th failure
// in a row, and a failed probe, open the breaker for Retry from now; so does
// every further failure while it is open (a call that entered before it
// opened and failed after it).
func (b *Breaker) Failure(probe bool) {
	if b.failures.Add(1) >= b.threshold || probe {
		b.openUntil.Store(b.now().Add(b.retry).UnixNano())
	}
	if probe {
		b.probing.Store(false)
	}
}

// Abandon ends a call that proved nothing about the store (its caller gave
// up first): the count stands, and a probe's turn passes to the next call.
func (b *Breaker) Abandon(probe bool) {
	if probe {
		b.probing.Store(false)
	}
}

// Open reports whether calls are refused (or wait for a probe).
func (b *Breaker) Open() bool { return b.openUntil.Load() != 0 }

// Close closes the breaker at once, for a caller that learned by other
// means that the store answers again (the key cache's change feed spoke).
// The failures in a row so far still count: one more opens it again.
func (b *Breaker) Close() { b.openUntil.Store(0) }
