package audit

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// passingSink lets each Write through one token at a time once gated,
// failing it when fail is set.
type passingSink struct {
	entered chan struct{}
	pass    chan struct{}
	mu      sync.Mutex
	gated   bool
	fail    error
}

func (s *passingSink) Write(context.Context, []Event) error {
	s.mu.Lock()
	gated := s.gated
	s.mu.Unlock()
	if gated {
		s.entered <- struct{}{}
		<-s.pass
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fail
}

func (s *passingSink) set(gated bool, fail error) {
	s.mu.Lock()
	s.gated, s.fail = gated, fail
	s.mu.Unlock()
}

// A sink-failure line held back by ErrorInterval is written when it ends.
// run has one timer for the drop line and the failure line, and armed it
// only when none was armed: a drop line held back first (its wait nearly a
// whole interval) kept the failure line, due much sooner, from being
// written until the drop line's timer fired, up to an interval late (a
// minute by default), or at Close. The earliest line due sets the timer.
func TestAFailureLineDueIsNotHeldByAPendingDropLine(t *testing.T) {
	clock := &fakeClock{now: when}
	logs := &logRecorder{}
	sink := &passingSink{entered: make(chan struct{}, 16), pass: make(chan struct{})}
	l := New(sink, Options{QueueSize: 1, BatchSize: 1, Now: clock.Now, ErrorInterval: time.Hour, Log: slog.New(logs)})
	lines := func(msg string) int {
		n := 0
		for _, m := range logs.logged() {
			if m["msg"] == msg {
				n++
			}
		}
		return n
	}
	const failMsg = "audit: sink write failed; events lost"
	const dropMsg = "audit: events dropped, the audit trail has a gap (queue full, or shutdown)"

	// A first failure: logged at once, the interval starts.
	sink.set(false, errors.New("connection refused"))
	l.Record(seq(0))
	waitFor(t, "the first failure line", func() bool { return lines(failMsg) == 1 })
	clock.Advance(time.Hour - 200*time.Millisecond) // the next failure line is due in 200ms

	// A first drop line (at once), then a second drop held back a whole hour.
	sink.set(true, nil)
	l.Record(seq(1))
	<-sink.entered
	l.Record(seq(2)) // queued
	l.Record(seq(3)) // dropped
	sink.pass <- struct{}{}
	<-sink.entered // seq(2) in the sink
	waitFor(t, "the first drop line", func() bool { return lines(dropMsg) == 1 })
	l.Record(seq(4)) // queued
	l.Record(seq(5)) // dropped: its line is held back an hour, the timer armed for it
	sink.pass <- struct{}{}
	<-sink.entered // seq(4) in the sink, which fails it
	sink.set(true, errors.New("connection refused"))
	sink.pass <- struct{}{}
	waitFor(t, "the second failure", func() bool { return l.Failed() == 2 })
	sink.set(false, nil)
	clock.Advance(time.Second) // the failure line is due now

	deadline := time.Now().Add(3 * time.Second)
	for lines(failMsg) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	got := lines(failMsg)
	close(sink.pass)
	closeLogger(t, l)
	if got < 2 {
		t.Errorf("the failure line due 1s ago (ErrorInterval ended) is still unwritten 3s later: run's one timer waits for the held-back drop line (an hour); logged %v", logs.logged())
	}
}
