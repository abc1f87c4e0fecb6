package audit

import (
	"errors"
	"log/slog"
	"strconv"
	"testing"
	"time"
)

// Sink failures inside ErrorInterval are held back and told when it ends,
// or at Close: they were told only by the next failure after the interval,
// so when the sink recovered first they were never logged, and the log's
// account of the gap fell short of Failed().
func TestSinkFailuresHeldBackByTheIntervalAreLoggedWhenItEnds(t *testing.T) {
	clock := &fakeClock{now: when}
	logs := &logRecorder{}
	sink := &memorySink{fail: errors.New("connection refused")}
	l := New(sink, Options{Now: clock.Now, ErrorInterval: time.Minute, Log: slog.New(logs)})

	recordOne := func(e Event) {
		t.Helper()
		want := l.Failed() + l.Written() + 1
		l.Record(e)
		waitFor(t, "the sink to be called", func() bool { return l.Failed()+l.Written() == want })
	}
	recordOne(seq(0)) // logged: lost_events 1
	clock.Advance(time.Second)
	// A key's revocation and a decision are lost within the interval.
	recordOne(Event{Time: when, Type: TypeKeyRevoked, KeyID: "key_revoked", Actor: "cli"})
	recordOne(seq(2))
	sink.setFail(nil) // the sink recovers
	clock.Advance(10 * time.Minute)
	recordOne(seq(3))
	clock.Advance(10 * time.Minute)
	closeLogger(t, l)

	var told uint64
	for _, line := range logs.logged() {
		if n, err := strconv.ParseUint(line["lost_events"], 10, 64); err == nil {
			told += n
		}
	}
	if told != l.Failed() {
		t.Errorf("events lost to sink errors: Failed() = %d, but the log tells of %d (lines: %v)", l.Failed(), told, logs.logged())
	}
}

// A key change lost to a sink error (a revocation whose XADD failed) is a
// key change missing from the trail, as a dropped one is: logged as an
// error and counted in FailedChanges (it was a warning, counted with the
// decisions only).
func TestAKeyChangeLostToASinkErrorIsToldLikeADroppedOne(t *testing.T) {
	logs := &logRecorder{}
	sink := &memorySink{fail: errors.New("WRONGTYPE Operation against a key holding the wrong kind of value")}
	l := New(sink, Options{Log: slog.New(logs)})
	l.Record(Event{Time: when, Type: TypeKeyRevoked, KeyID: "key_revoked", Actor: "cli"})
	waitFor(t, "the sink to be called", func() bool { return l.Failed() == 1 })
	closeLogger(t, l)
	got := logs.logged()
	if len(got) == 0 {
		t.Fatal("nothing logged")
	}
	if got[0]["level"] != "ERROR" || got[0]["lost_changes"] != "1" {
		t.Errorf("a key.revoked event lost to a sink error is logged at %s (dropped changes are ERROR): %v", got[0]["level"], got[0])
	}
	if l.FailedChanges() != 1 {
		t.Errorf("FailedChanges() = %d, want 1", l.FailedChanges())
	}
}
