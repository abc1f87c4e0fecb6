// Package loglimit bounds the log lines a client can make a server write:
// a few a window at most, the first line after some were left out saying
// how many.
package loglimit

import (
	"sync"
	"time"
)

// Limiter admits at most Burst lines per Every. The zero value admits
// none; make one with New.
type Limiter struct {
	burst int
	every time.Duration
	now   func() time.Time

	mu      sync.Mutex
	since   time.Time // when the current window began
	written int       // lines admitted since then
	leftOut int       // lines left out since the last one admitted
}

// New returns a Limiter of burst lines per every, on the clock now
// (time.Now when nil).
func New(burst int, every time.Duration, now func() time.Time) *Limiter {
	if now == nil {
		now = time.Now
	}
	return &Limiter{burst: burst, every: every, now: now}
}

// Admit reports whether a line may be written now and, if so, how many
// were left out before it (to log as messages_left_out).
func (l *Limiter) Admit() (leftOut int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now := l.now(); now.Sub(l.since) >= l.every {
		l.since, l.written = now, 0
	}
	if l.written >= l.burst {
		l.leftOut++
		return 0, false
	}
	l.written++
	leftOut, l.leftOut = l.leftOut, 0
	return leftOut, true
}
