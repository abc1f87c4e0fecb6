package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/keystore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memorySink keeps what it is given. When release is set, its first Write
// reports the batch size on entered and waits until release is closed.
type memorySink struct {
	mu      sync.Mutex
	events  []Event
	calls   int
	entered chan int
	release chan struct{}
	fail    error
}

func (s *memorySink) Write(ctx context.Context, events []Event) error {
	s.mu.Lock()
	s.calls++
	first := s.calls == 1
	s.mu.Unlock()
	if first && s.release != nil {
		s.entered <- len(events)
		<-s.release
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.events = append(s.events, events...)
	return nil
}

func (s *memorySink) setFail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
}

func (s *memorySink) written() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// seq is a decision numbered n (in KeyName, so that order can be checked).
func seq(n int) Event {
	return Event{Time: when, Type: TypeDecision, KeyID: "key_x", KeyName: strconv.Itoa(n), Decision: Deny, Code: "invalid_key"}
}

// checkInOrder fails unless events are seq(0), seq(1), … in that order.
func checkInOrder(t *testing.T, events []Event, want int) {
	t.Helper()
	if len(events) != want {
		t.Fatalf("sink got %d events, want %d", len(events), want)
	}
	for i, e := range events {
		if e.KeyName != strconv.Itoa(i) {
			t.Fatalf("event %d is number %s: out of order", i, e.KeyName)
		}
	}
}

func closeLogger(t *testing.T, l *Logger) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func checkCount(t *testing.T, what string, got, want uint64) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %d, want %d", what, got, want)
	}
}

func TestRecordDropsWithoutBlockingWhenTheSinkIsStuck(t *testing.T) {
	const queueSize, burst = 1024, 100_000
	sink := &memorySink{entered: make(chan int, 1), release: make(chan struct{})}
	l := New(sink, Options{QueueSize: queueSize, BatchSize: 64})

	// The goroutine takes the first event and blocks in the sink with it:
	// from then on nothing leaves the queue, so the counts below are exact.
	l.Record(seq(0))
	if n := <-sink.entered; n != 1 {
		t.Fatalf("in-flight batch has %d events, want 1", n)
	}

	done := make(chan time.Duration)
	go func() {
		start := time.Now()
		for i := 1; i <= burst; i++ {
			l.Record(seq(i))
		}
		done <- time.Since(start)
	}()
	select {
	case took := <-done:
		t.Logf("%d Records with a stuck sink took %v (%v each)", burst, took, took/burst)
	case <-time.After(30 * time.Second):
		t.Fatal("Record blocked on a stuck sink") // leaves the goroutines; goleak will say so too
	}

	// Recorded, minus the in-flight batch, minus what fits in the queue.
	const wantDropped = 1 + burst - 1 - queueSize
	checkCount(t, "Dropped while stuck", l.Dropped(), wantDropped)
	checkCount(t, "Written while stuck", l.Written(), 0)

	close(sink.release)
	closeLogger(t, l)
	checkCount(t, "Written", l.Written(), 1+queueSize)
	checkCount(t, "Dropped", l.Dropped(), wantDropped)
	checkInOrder(t, sink.written(), 1+queueSize)
}

// A flood of decisions (anyone who can send requests can make one, with
// missing or made-up keys) while the sink is slow fills the queue; a key
// created or revoked meanwhile, or read by a key holder, still reaches the
// sink, and the log says that events were dropped and whether changes were
// among them.
func TestAFloodOfDecisionsDropsNoKeyChange(t *testing.T) {
	const queueSize, burst = 64, 10_000
	logs := &logRecorder{}
	sink := &memorySink{entered: make(chan int, 1), release: make(chan struct{})}
	l := New(sink, Options{QueueSize: queueSize, BatchSize: 16, Log: slog.New(logs)})
	l.Record(seq(0))
	<-sink.entered // the sink is stuck: the queue fills

	for i := 1; i <= burst; i++ {
		l.Record(seq(i))
	}
	created := Event{Type: TypeKeyCreated, KeyID: "key_new", Actor: "key_stolen"}
	read := Event{Type: TypeAdminRead, KeyID: "key_stolen", Status: 200, KeyHolder: true}
	revoked := Event{Type: TypeKeyRevoked, KeyID: "key_old", Actor: "key_stolen"}
	l.Record(created)
	for i := 1; i <= burst; i++ {
		l.Record(seq(burst + i))
	}
	l.Record(read)
	l.Record(revoked)
	checkCount(t, "DroppedChanges", l.DroppedChanges(), 0)
	checkCount(t, "Dropped", l.Dropped(), 2*burst-queueSize)

	close(sink.release)
	closeLogger(t, l)
	var changes []string
	for _, e := range sink.written() {
		if e.Type != TypeDecision {
			changes = append(changes, string(e.Type)+" "+e.KeyID)
		}
	}
	if want := []string{"key.created key_new", "admin.read key_stolen", "key.revoked key_old"}; strings.Join(changes, ",") != strings.Join(want, ",") {
		t.Errorf("changes written = %q, want %q", changes, want)
	}
	got := logs.logged()
	if len(got) == 0 || got[0]["level"] != "WARN" || got[0]["dropped_events"] != strconv.Itoa(2*burst-queueSize) ||
		got[0]["dropped_changes"] != "0" || !strings.Contains(got[0]["msg"], "dropped") {
		t.Errorf("logged %v; want a warning that %d events, no change, were dropped", got, 2*burst-queueSize)
	}
}

// When even the changes' own queue overflows, the log line is an error
// that counts them.
func TestDroppedKeyChangesAreLoggedAsAnError(t *testing.T) {
	logs := &logRecorder{}
	sink := &memorySink{entered: make(chan int, 1), release: make(chan struct{})}
	l := New(sink, Options{ChangeQueueSize: 2, Log: slog.New(logs)})
	l.Record(seq(0))
	<-sink.entered
	for range 5 {
		l.Record(Event{Type: TypeKeyUpdated, KeyID: "key_x", Actor: "cli"})
	}
	checkCount(t, "DroppedChanges", l.DroppedChanges(), 3)
	close(sink.release)
	closeLogger(t, l)
	got := logs.logged()
	if len(got) != 1 || got[0]["level"] != "ERROR" || got[0]["dropped_changes"] != "3" {
		t.Errorf("logged %v; want one error line with dropped_changes 3", got)
	}
}

// The key changes, and only they, wait in the changes' queue (and go to
// their own Redis stream). A type added later is one only if it is a key.*
// one: taken for a change, a type a client can cause would let anyone fill
// that queue and trim that stream.
func TestIsChangeNamesTheKeyChangesOnly(t *testing.T) {
	for typ, want := range map[Type]bool{
		TypeDecision: false, TypeAdminAuthFailed: false, TypeAdminRead: false,
		TypeKeyCreated: true, TypeKeyUpdated: true, TypeKeyRevoked: true, TypeKeyRotated: true, TypeKeyLeaked: true,
		"key.deleted":        true,  // a kind of change added later
		"admin.rate_limited": false, // an event a client can cause, added later
		"":                   false,
	} {
		e := Event{Type: typ}
		if got := e.IsChange(); got != want {
			t.Errorf("Event{Type: %q}.IsChange() = %v, want %v", typ, got, want)
		}
	}
}

// What waits with the key changes is what only a key holder can cause:
// the changes, and the admin calls of a caller the admin API authenticated
// and counted (KeyHolder). An admin call any client can cause (no key, a
// made-up one, one over its rate limit) is not, nor is a decision, even
// marked: either would let anyone fill the changes' queue and trim their
// stream.
func TestKeptApartAreTheChangesAndTheAdminCallsOfKeyHolders(t *testing.T) {
	for _, tt := range []struct {
		e    Event
		want bool
	}{
		{Event{Type: TypeKeyCreated}, true},
		{Event{Type: TypeKeyRevoked, Outcome: OutcomeUnknown}, true},
		{Event{Type: TypeAdminRead, KeyID: "key_r", KeyHolder: true}, true},
		{Event{Type: TypeAdminAuthFailed, KeyID: "key_w", Status: 403, Code: "permission_denied", KeyHolder: true}, true},
		{Event{Type: TypeAdminAuthFailed, KeyID: "key_w", Status: 409, Code: "not_live", KeyHolder: true}, true},
		{Event{Type: TypeAdminAuthFailed, Status: 401, Code: "missing_key"}, false},
		{Event{Type: TypeAdminAuthFailed, KeyID: "key_r", Status: 401, Code: "revoked_key"}, false},
		{Event{Type: TypeAdminAuthFailed, KeyID: "key_w", Status: 429, Code: "rate_limited"}, false},
		{Event{Type: TypeAdminRead, KeyID: "key_r"}, false},
		{Event{Type: TypeDecision, KeyID: "key_r", KeyHolder: true}, false},
		{Event{Type: TypeDecision}, false},
	} {
		if got := tt.e.KeptApart(); got != tt.want {
			t.Errorf("%+v: KeptApart() = %v, want %v", tt.e, got, tt.want)
		}
	}
}

// gatedSink takes one token from pass for each Write, saying on entered
// that it was called.
type gatedSink struct {
	entered chan struct{}
	pass    chan struct{}
}

func (s *gatedSink) Write(context.Context, []Event) error {
	s.entered <- struct{}{}
	<-s.pass
	return nil
}

// Drops held back by ErrorInterval are logged when it ends, even when no
// event comes after them: a flood that stops leaves a gap that must not
// wait for the next event, hours later, to be told.
func TestDropsHeldBackAreLoggedWhenTheIntervalEnds(t *testing.T) {
	const interval = 300 * time.Millisecond
	logs := &logRecorder{}
	sink := &gatedSink{entered: make(chan struct{}, 16), pass: make(chan struct{})}
	l := New(sink, Options{QueueSize: 2, BatchSize: 2, ErrorInterval: interval, Log: slog.New(logs)})
	l.Record(seq(0))
	<-sink.entered
	for i := range 5 { // 2 queued, 3 dropped
		l.Record(seq(1 + i))
	}
	sink.pass <- struct{}{} // the first line: 3 dropped
	<-sink.entered          // the writer holds the 2 queued
	for i := range 6 {      // 2 queued, 4 dropped, within the interval
		l.Record(seq(6 + i))
	}
	close(sink.pass) // then nothing more comes
	checkCount(t, "Dropped", l.Dropped(), 7)
	waitFor(t, "a second drop line", func() bool { return len(logs.logged()) >= 2 })
	got := logs.logged()
	if got[0]["dropped_events"] != "3" || got[1]["dropped_events"] != "4" {
		t.Errorf("logged %v; want lines for 3, then 4 dropped events", got)
	}
	closeLogger(t, l)
}

func TestCloseWritesEverythingQueued(t *testing.T) {
	const n = 20_000
	sink := &memorySink{}
	l := New(sink, Options{QueueSize: n, BatchSize: 100})
	for i := range n {
		l.Record(seq(i))
	}
	closeLogger(t, l)

	checkCount(t, "Written", l.Written(), n)
	checkCount(t, "Dropped", l.Dropped(), 0)
	checkInOrder(t, sink.written(), n)
	if err := l.Close(context.Background()); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// ctxSink blocks every Write until its context ends.
type ctxSink struct{ entered chan struct{} }

func (s ctxSink) Write(ctx context.Context, _ []Event) error {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return ctx.Err()
}

func TestCloseGivesUpWhenItsContextEnds(t *testing.T) {
	sink := ctxSink{entered: make(chan struct{}, 1)}
	l := New(sink, Options{QueueSize: 100, BatchSize: 10, WriteTimeout: time.Hour, Log: discardLog()})
	l.Record(seq(0))
	<-sink.entered
	for i := 1; i <= 50; i++ {
		l.Record(seq(i))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := l.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want context.DeadlineExceeded", err)
	}
	<-l.done // the goroutine exits once the sink returns

	checkCount(t, "Written", l.Written(), 0)
	checkCount(t, "Failed (the batch in the sink when Close gave up)", l.Failed(), 1)
	checkCount(t, "Dropped (the events still queued)", l.Dropped(), 50)
}

// A sink that cannot be interrupted (standard output into a pipe nobody
// reads) keeps the goroutine from ever reporting what it lost; Close,
// giving up, says so in the log before the process exits.
func TestCloseThatGivesUpLogsWhatIsLost(t *testing.T) {
	logs := &logRecorder{}
	sink := &memorySink{entered: make(chan int, 1), release: make(chan struct{})}
	l := New(sink, Options{Log: slog.New(logs)})
	l.Record(seq(0))
	<-sink.entered
	for i := 1; i <= 5; i++ {
		l.Record(seq(i))
	}
	l.Record(Event{Type: TypeKeyRevoked, KeyID: "key_x", Actor: "cli"})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Close(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v, want context.DeadlineExceeded", err)
	}
	got := logs.logged()
	if len(got) != 1 || got[0]["unwritten_events"] != "6" || got[0]["unwritten_changes"] != "1" {
		t.Errorf("logged %v; want one line: 6 events unwritten, 1 change", got)
	}
	close(sink.release)
	<-l.done
}

func TestRecordAfterCloseIsDroppedAndCounted(t *testing.T) {
	sink := &memorySink{}
	l := New(sink, Options{})
	closeLogger(t, l)
	l.Record(seq(1))
	checkCount(t, "Dropped", l.Dropped(), 1)
	checkInOrder(t, sink.written(), 0)
}

func TestRecordStampsTheTimeAndBoundsFields(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC)
	sink := &memorySink{}
	l := New(sink, Options{Now: func() time.Time { return now }})
	l.Record(Event{Type: TypeDecision, Path: "/p?api_key=secret", UserAgent: strings.Repeat("u", 10_000)})
	l.Record(Event{Type: TypeKeyCreated, Time: when})
	closeLogger(t, l)

	got := sink.written()
	if len(got) != 2 {
		t.Fatalf("sink got %d events, want 2", len(got))
	}
	if got[0].Type != TypeDecision { // the change may have been written first
		got[0], got[1] = got[1], got[0]
	}
	if !got[0].Time.Equal(now) {
		t.Errorf("zero time became %v, want the clock's %v", got[0].Time, now)
	}
	if got[0].Path != "/p" {
		t.Errorf("path = %q, want /p", got[0].Path)
	}
	if ua := got[0].UserAgent; len(ua) != MaxFieldLen || !strings.HasSuffix(ua, truncationMark) {
		t.Errorf("user agent of 10000 bytes became %d bytes ending %q", len(ua), ua[max(0, len(ua)-20):])
	}
	if !got[1].Time.Equal(when) {
		t.Errorf("a time set by the caller became %v, want %v", got[1].Time, when)
	}
}

// HoldsKey is shown the part of a client's field that can be written, and
// where a key the cap cuts in two ends, not a header of tens of kilobytes:
// a key further on is cut off anyway, and the scan is on the decision path.
func TestHoldsKeySeesNoMoreThanCanBeWritten(t *testing.T) {
	const key = "sk_THISISAPASTEDKEYTHISISAPASTEDKEYTHISISAPASTEDKEY12"
	var longest atomic.Int64
	holds := func(s string) bool {
		if n := int64(len(s)); n > longest.Load() {
			longest.Store(n)
		}
		return strings.Contains(s, key)
	}
	sink := &memorySink{}
	l := New(sink, Options{HoldsKey: holds})
	straddling := strings.Repeat("u", MaxFieldLen-20) + key + strings.Repeat("u", 60_000)
	l.Record(Event{Type: TypeDecision, UserAgent: straddling, Host: strings.Repeat("h", 60_000),
		RequestID: strings.Repeat("r", 60_000), Path: "/" + strings.Repeat("p", 60_000)})
	closeLogger(t, l)

	if n := longest.Load(); n > 2*MaxFieldLen {
		t.Errorf("HoldsKey was shown %d bytes of a field, want at most %d", n, 2*MaxFieldLen)
	}
	got := sink.written()
	if len(got) != 1 || got[0].UserAgent != RedactedMark {
		t.Errorf("a key cut in two by the cap: wrote %+v, want the user agent redacted", got)
	}
}

// A key's name and owner and a change's actor are redacted by the label
// reading (LabelHoldsKey: what refuses a label when a key is made), so a
// record that holds a key all the same does not repeat it on every
// decision, while a label of words that reading accepts is written as it
// is, though the looser reading of client fields would take it for a key.
func TestAKeysLabelsAreReadAsLabels(t *testing.T) {
	f, err := keystore.NewFormat("sk")
	if err != nil {
		t.Fatal(err)
	}
	key, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	sink := &memorySink{}
	l := New(sink, Options{HoldsKey: f.MayHoldKey, LabelHoldsKey: f.LabelHoldsKey})
	words := "sk-learn classifier for fraud detection"
	l.Record(Event{Type: TypeDecision, KeyName: "sk_live_payments_reconciliation", Owner: words, UserAgent: words})
	l.Record(Event{Type: TypeKeyCreated, KeyName: key[:len(key)-1], Owner: "sk-" + key[3:], Actor: key})
	closeLogger(t, l)
	got := sink.written()
	if len(got) != 2 {
		t.Fatalf("wrote %d events", len(got))
	}
	if got[0].Type != TypeDecision { // changes are written first
		got[0], got[1] = got[1], got[0]
	}
	if got[0].KeyName != "sk_live_payments_reconciliation" || got[0].Owner != words {
		t.Errorf("labels of words written as %q and %q", got[0].KeyName, got[0].Owner)
	}
	if got[0].UserAgent != RedactedMark {
		t.Errorf("a client field is read more loosely: user agent written as %q", got[0].UserAgent)
	}
	if got[1].KeyName != RedactedMark || got[1].Owner != RedactedMark || got[1].Actor != RedactedMark {
		t.Errorf("labels holding a key written as %q, %q, %q", got[1].KeyName, got[1].Owner, got[1].Actor)
	}
}

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logRecorder is a slog.Handler that keeps what it is asked to log.
type logRecorder struct {
	mu    sync.Mutex
	lines []map[string]string
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecorder) WithGroup(string) slog.Handler            { return h }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	m := map[string]string{"msg": r.Message, "level": r.Level.String()}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value.String(); return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines = append(h.lines, m)
	return nil
}

func (h *logRecorder) logged() []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]map[string]string(nil), h.lines...)
}

func discardLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// waitFor polls cond for up to 10s: the goroutine updates counters after
// the sink returns, so the test cannot learn of it any other way.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func TestSinkErrorsAreCountedAndLoggedAtMostOncePerInterval(t *testing.T) {
	clock := &fakeClock{now: when}
	logs := &logRecorder{}
	sink := &memorySink{fail: errors.New("dial tcp 127.0.0.1:6379: connection refused")}
	l := New(sink, Options{Now: clock.Now, ErrorInterval: time.Minute, Log: slog.New(logs)})

	recordOne := func(n int) {
		t.Helper()
		want := l.Failed() + l.Written() + 1
		l.Record(seq(n))
		waitFor(t, "the sink to be called", func() bool { return l.Failed()+l.Written() == want })
	}
	for i := range 5 {
		recordOne(i)
		clock.Advance(10 * time.Second)
	}
	checkCount(t, "Failed", l.Failed(), 5)
	if n := len(logs.logged()); n != 1 {
		t.Fatalf("five failures within a minute logged %d lines, want 1", n)
	}

	clock.Advance(20 * time.Second) // a minute after the first line
	recordOne(5)
	got := logs.logged()
	if len(got) != 2 {
		t.Fatalf("logged %d lines, want 2: %v", len(got), got)
	}
	line := got[1]
	if line["level"] != "WARN" || line["lost_events"] != "5" || line["lost_total"] != "6" ||
		!strings.Contains(line["err"], "connection refused") {
		t.Errorf("second line = %v; want WARN, lost_events 5 (since the first line), lost_total 6, the error", line)
	}

	sink.setFail(nil)
	recordOne(6)
	closeLogger(t, l)
	checkCount(t, "Failed", l.Failed(), 6)
	checkCount(t, "Written after the sink recovered", l.Written(), 1)
	if n := len(logs.logged()); n != 2 {
		t.Errorf("logged %d lines, want still 2", n)
	}
}

func TestNilLoggerDiscards(t *testing.T) {
	var l *Logger
	l.Record(seq(1))
	if err := l.Close(context.Background()); err != nil {
		t.Errorf("Close = %v", err)
	}
	checkCount(t, "counters", l.Dropped()+l.Written()+l.Failed(), 0)
}

func TestWriterSinkWritesOneJSONLinePerEvent(t *testing.T) {
	var out bytes.Buffer
	l := New(NewWriterSink(&out), Options{})
	events := []Event{ // key changes first: a batch holds them before decisions
		{Time: when, Type: TypeKeyCreated, KeyID: "key_1", KeyName: "line\nbreak", Owner: "default", Actor: "cli"},
		{Time: when, Type: TypeKeyRotated, KeyID: "key_2", RotatedFrom: "key_1", Actor: "cli"},
		smallEvent(),
	}
	for _, e := range events {
		l.Record(e)
	}
	closeLogger(t, l)

	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != len(events) {
		t.Fatalf("got %d lines for %d events:\n%s", len(lines), len(events), out.String())
	}
	for i, line := range lines {
		if want := string(events[i].AppendJSON(nil)); line != want {
			t.Errorf("line %d = %s, want %s", i, line, want)
		}
		var got Event
		if err := json.Unmarshal([]byte(line), &got); err != nil || got.KeyName != events[i].KeyName {
			t.Errorf("line %d reads back as key_name %q (err %v), want %q", i, got.KeyName, err, events[i].KeyName)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) {
	return 0, errors.New("write /dev/stdout: broken pipe")
}

func TestWriterSinkReturnsTheWritersError(t *testing.T) {
	err := NewWriterSink(failingWriter{}).Write(context.Background(), []Event{seq(1)})
	if err == nil || !strings.Contains(err.Error(), "broken pipe") {
		t.Errorf("Write = %v, want the writer's error", err)
	}
}

func TestDiscardAcceptsEverything(t *testing.T) {
	l := New(Discard, Options{})
	for i := range 10 {
		l.Record(seq(i))
	}
	closeLogger(t, l)
	checkCount(t, "Written", l.Written(), 10)
}

func BenchmarkRecord(b *testing.B) {
	l := New(Discard, Options{})
	defer l.Close(context.Background())
	e := smallEvent()
	b.ReportAllocs()
	for b.Loop() {
		l.Record(e)
	}
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}

// BenchmarkRecordAccepted measures Record when the queue has room, as it
// has at any sustainable rate: bursts of half the queue, with the queue
// drained between bursts (off the clock).
func BenchmarkRecordAccepted(b *testing.B) {
	const queueSize = 8192
	l := New(Discard, Options{QueueSize: queueSize})
	defer l.Close(context.Background())
	e := smallEvent()
	b.ReportAllocs()
	for i := range b.N {
		if i%(queueSize/2) == 0 {
			b.StopTimer()
			for l.Written() != uint64(i) {
				time.Sleep(10 * time.Microsecond)
			}
			b.StartTimer()
		}
		l.Record(e)
	}
	b.StopTimer()
	if l.Dropped() != 0 {
		b.Fatalf("dropped %d events", l.Dropped())
	}
}

func BenchmarkRecordParallel(b *testing.B) {
	l := New(Discard, Options{})
	defer l.Close(context.Background())
	e := smallEvent()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l.Record(e)
		}
	})
	b.ReportMetric(float64(l.Dropped())/float64(b.N), "dropped/op")
}

func BenchmarkWriterSink(b *testing.B) {
	s := NewWriterSink(discardWriter{})
	batch := make([]Event, 256)
	for i := range batch {
		batch[i] = smallEvent()
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = s.Write(context.Background(), batch)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(batch)), "ns/event")
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
