package audit

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// Sink is where a Logger writes events: standard output, a Redis stream,
// nowhere. A Sink is called from one goroutine at a time by a Logger, but
// the sinks of this module are also safe for concurrent use.
type Sink interface {
	// Write outputs events in order. It must not keep events after it
	// returns (the Logger reuses the slice) and should give up when ctx is
	// done. An error means the whole batch may be lost.
	Write(ctx context.Context, events []Event) error
}

// Options tune a Logger. The zero value is ready to use.
type Options struct {
	// QueueSize is how many decisions, and admin calls refused for their
	// credential or rate limit, can wait for the sink; beyond that Record
	// drops them. Default 8192. Key changes and the admin calls of key
	// holders have a queue of their own (ChangeQueueSize).
	QueueSize int
	// ChangeQueueSize is how many key changes, and admin calls of key
	// holders, can wait for the sink (Event.KeptApart), in a queue of
	// their own that the writer empties first: anyone who can send
	// requests can fill the other queue, and must not push a key's
	// creation or revocation, or a stolen key's reads of keys, out of the
	// trail with it. Default 1024.
	ChangeQueueSize int
	// BatchSize is the most events handed to one Sink.Write. Default 256.
	BatchSize int
	// WriteTimeout bounds each Sink.Write. Default 5s.
	WriteTimeout time.Duration
	// ErrorInterval is the least time between two log lines about sink
	// errors, and between two about dropped events, so that a sink that is
	// down or slow does not flood the log. Default 1m.
	ErrorInterval time.Duration
	// Log receives those lines. Default slog.Default().
	Log *slog.Logger
	// Now is the clock, for Event.Time and ErrorInterval. Default time.Now.
	Now func() time.Time
	// HoldsKey reports whether a string holds an API key, or enough of
	// one to matter (keystore.Format.MayHoldKey). Record replaces each field a client
	// wrote (request_id, path, host, user_agent) that does with
	// RedactedMark: someone who pastes a key into a path or a header the
	// decision does not read as a credential must not put it in the audit
	// trail. Default: nothing is replaced.
	HoldsKey func(string) bool
	// LabelHoldsKey is HoldsKey for a key's name and owner and a
	// change's actor (keystore.Format.LabelHoldsKey, the reading a label
	// is refused by when a key is made or changed): a key made before
	// labels were refused so, or written into the store by hand, must not
	// repeat a secret on every decision it makes, and a label that was
	// accepted is never replaced. Default: HoldsKey.
	LabelHoldsKey func(string) bool
}

// RedactedMark stands in the place of a request field that held a key;
// it is the text a key's label that held one is served with.
const RedactedMark = keystore.RedactedLabel

// Logger queues events in memory and writes them to a Sink from one
// background goroutine, so that recording an event never waits for I/O.
// When the queue is full, events are dropped and counted: the decision path
// must never block on audit. Key changes, and the admin calls of key
// holders, wait in a queue of their own (Event.KeptApart), written first,
// so that a flood of decisions does not drop them; and the log says when
// events were dropped, and how many of them were of that queue.
//
// Build it with New; a nil *Logger discards everything.
type Logger struct {
	sink          Sink
	queue         chan Event
	changes       chan Event // Event.KeptApart: written before queue
	batchSize     int
	writeTimeout  time.Duration
	errorInterval time.Duration
	log           *slog.Logger
	now           func() time.Time
	holdsKey      func(string) bool
	labelHoldsKey func(string) bool // never nil when holdsKey is not

	closed    atomic.Bool
	stop      chan struct{} // closed by Close: flush and exit
	done      chan struct{} // closed when the goroutine has exited
	abort     context.CancelFunc
	runCtx    context.Context // cancelled when Close gives up flushing
	closeOnce sync.Once

	dropped        atomic.Uint64
	droppedChanges atomic.Uint64 // of dropped, those kept apart (Event.KeptApart)
	written        atomic.Uint64
	failed         atomic.Uint64
	failedChanges  atomic.Uint64 // of failed, those kept apart

	// Owned by the goroutine.
	lastErrorLog    time.Time
	lastErr         error  // the sink's error behind unlogged
	unlogged        uint64 // events failed since the last error line
	unloggedChanges uint64 // of unlogged, those kept apart
	lastDropLog     time.Time
	loggedDrops     uint64 // Dropped when the last drop line was written
	loggedChange    uint64 // DroppedChanges then
}

// New starts a Logger writing to sink. Stop it with Close.
func New(sink Sink, opts Options) *Logger {
	if opts.QueueSize <= 0 {
		opts.QueueSize = 8192
	}
	if opts.ChangeQueueSize <= 0 {
		opts.ChangeQueueSize = 1024
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 256
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 5 * time.Second
	}
	if opts.ErrorInterval <= 0 {
		opts.ErrorInterval = time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, abort := context.WithCancel(context.Background())
	l := &Logger{
		sink:          sink,
		queue:         make(chan Event, opts.QueueSize),
		changes:       make(chan Event, opts.ChangeQueueSize),
		batchSize:     opts.BatchSize,
		writeTimeout:  opts.WriteTimeout,
		errorInterval: opts.ErrorInterval,
		log:           opts.Log,
		now:           opts.Now,
		holdsKey:      opts.HoldsKey,
		labelHoldsKey: opts.LabelHoldsKey,
		stop:          make(chan struct{}),
		done:          make(chan struct{}),
		runCtx:        ctx,
		abort:         abort,
	}
	if l.labelHoldsKey == nil {
		l.labelHoldsKey = l.holdsKey
	}
	go l.run()
	return l
}

// Record queues e for writing and returns at once; it is safe for
// concurrent use and does not allocate, except to copy a field longer than
// MaxFieldLen into its capped form. It sets e.Time when it is zero, cuts
// the query off e.Path and replaces a request field holding a key (see
// Options.HoldsKey). If its queue is full (the one of the events kept
// apart, or the one of the others), or the Logger is closed, e is dropped
// and counted in Dropped (and one kept apart in DroppedChanges).
func (l *Logger) Record(e Event) {
	if l == nil {
		return
	}
	apart := e.KeptApart()
	if l.closed.Load() {
		l.drop(apart)
		return
	}
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	if l.holdsKey != nil {
		// Before scrub: a key that its cap would cut in two would no
		// longer be recognised, and half of it would stay. (The path's
		// query is cut off anyway.)
		if e.Path != "" && l.holdsKey(heldKeyScope(cutQuery(e.Path))) {
			e.Path = RedactedMark
		}
		for _, f := range [...]*string{&e.RequestID, &e.Host, &e.UserAgent} {
			if *f != "" && l.holdsKey(heldKeyScope(*f)) {
				*f = RedactedMark
			}
		}
		for _, f := range [...]*string{&e.KeyName, &e.Owner, &e.Actor} {
			if *f != "" && l.labelHoldsKey(heldKeyScope(*f)) {
				*f = RedactedMark
			}
		}
	}
	e.scrub()
	q := l.queue
	if apart {
		q = l.changes
	}
	select {
	case q <- e:
	default:
		l.drop(apart)
	}
}

// heldKeyScan is how much of a field Record shows HoldsKey: what can be
// written of it (MaxFieldLen), and as much again, where a key that the cap
// cuts in two ends (a key is far shorter: at most 256 bytes). A key further
// on is cut off with the rest and never written; and a client can send a
// header of tens of kilobytes, whose every byte scanned on every decision
// would cost the decision path that much more time.
const heldKeyScan = 2 * MaxFieldLen

// heldKeyScope is the part of a field HoldsKey must see.
func heldKeyScope(s string) string {
	if len(s) > heldKeyScan {
		return s[:heldKeyScan]
	}
	return s
}

func (l *Logger) drop(apart bool) {
	l.dropped.Add(1)
	if apart {
		l.droppedChanges.Add(1)
	}
}

// IsChange reports whether e records a change to a key: the key.* events,
// that only a key manager, the CLI or a signed leak report makes, as
// opposed to those any client can cause (decisions, refused admin calls)
// and reads. It names the changes rather than the others: a type added
// later that a client can cause, were it taken for a change, would let
// anyone fill the changes' queue and trim their stream, which is what they
// are kept apart for (KeptApart); a kind of key change added later is a "key." one
// (keystore's Change kinds are its events' types).
func (e *Event) IsChange() bool {
	return strings.HasPrefix(string(e.Type), "key.")
}

// KeptApart reports whether e waits in the key changes' queue and goes to
// their stream: a key change, or an admin.* event of a key holder
// (KeyHolder), such as the reads of keys a stolen keys:read key makes
// first. Anyone who can send a request can cause the other events at no
// cost, decisions with no key at all, and a flood of them must drop or
// trim none of these.
func (e *Event) KeptApart() bool {
	return e.IsChange() || e.KeyHolder && strings.HasPrefix(string(e.Type), "admin.")
}

// Dropped is the number of events recorded but never handed to the sink:
// the queue was full, or the Logger was closing.
func (l *Logger) Dropped() uint64 {
	if l == nil {
		return 0
	}
	return l.dropped.Load()
}

// DroppedChanges is the number of events kept apart (Event.KeptApart: key
// changes, admin calls of key holders) among Dropped.
func (l *Logger) DroppedChanges() uint64 {
	if l == nil {
		return 0
	}
	return l.droppedChanges.Load()
}

// Written is the number of events the sink accepted.
func (l *Logger) Written() uint64 {
	if l == nil {
		return 0
	}
	return l.written.Load()
}

// Failed is the number of events in batches the sink returned an error for.
func (l *Logger) Failed() uint64 {
	if l == nil {
		return 0
	}
	return l.failed.Load()
}

// FailedChanges is the number of events kept apart (Event.KeptApart: key
// changes, admin calls of key holders) among Failed.
func (l *Logger) FailedChanges() uint64 {
	if l == nil {
		return 0
	}
	return l.failedChanges.Load()
}

// Close writes the events still queued and stops the Logger. If ctx ends
// first, it abandons the rest (counted in Dropped), logs how many were
// queued (besides the batch in the sink), and returns ctx's error;
// the goroutine then exits as soon as the sink's current Write returns.
// Events recorded after Close are dropped; events recorded while Close runs
// may be lost without being counted.
func (l *Logger) Close(ctx context.Context) error {
	if l == nil {
		return nil
	}
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.stop)
	})
	select {
	case <-l.done:
		return nil
	case <-ctx.Done():
		l.abort()
		// The goroutine may be stuck in a sink that cannot be interrupted
		// (standard output into a pipe nobody reads) and never get to say
		// so itself; the process is about to exit.
		l.log.Warn("audit: gave up writing the queued events at close; they are lost",
			"err", ctx.Err(), "unwritten_events", len(l.queue)+len(l.changes),
			"unwritten_changes", len(l.changes))
		return ctx.Err()
	}
}

func (l *Logger) run() {
	defer close(l.done)
	defer l.abort()
	batch := make([]Event, 0, l.batchSize)
	// A drop line held back by ErrorInterval is written when it ends, not
	// at the next write after it: a flood may be followed by no event for
	// a long time, and the gap it left must not wait for one to be told.
	wake := time.NewTimer(time.Hour)
	wake.Stop()
	defer wake.Stop()
	waking := false
	var wakeAt time.Time // when wake fires, while waking
	for {
		select {
		case <-wake.C:
			waking = false
		case e := <-l.changes:
			batch = l.fill(append(batch[:0], e))
			l.write(batch)
		case e := <-l.queue:
			// select picks either ready case at random: changes go first
			// all the same.
			batch = l.fill(append(l.takeChanges(batch[:0]), e))
			l.write(batch)
		case <-l.stop:
			l.flush(batch)
			l.logDrops(true)
			l.logFailures(true)
			return
		}
		wait := l.logDrops(false)
		if w := l.logFailures(false); w > 0 && (wait == 0 || w < wait) {
			wait = w
		}
		// The earliest held-back line sets the wake-up: one due sooner
		// than the one already waited for moves it forward. (Reset on a
		// running timer delivers no stale value since Go 1.23.)
		if at := time.Now().Add(wait); wait > 0 && (!waking || at.Before(wakeAt)) {
			wake.Reset(wait)
			waking, wakeAt = true, at
		}
	}
}

// takeChanges adds queued events kept apart to batch, without waiting, leaving
// room for one more event.
func (l *Logger) takeChanges(batch []Event) []Event {
	for len(batch) < l.batchSize-1 {
		select {
		case e := <-l.changes:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// fill adds queued events to batch, without waiting, up to the batch size:
// those kept apart first, then the others.
func (l *Logger) fill(batch []Event) []Event {
	for len(batch) < l.batchSize {
		select {
		case e := <-l.changes:
			batch = append(batch, e)
			continue
		default:
		}
		select {
		case e := <-l.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// logDrops says in the log, at most once per ErrorInterval unless final,
// how many events were dropped since it last did: the audit trail has a
// gap, and its reader should hear of it somewhere else than in a metric.
// When ErrorInterval holds a line back, it returns how long until it may
// be written (else 0).
func (l *Logger) logDrops(final bool) time.Duration {
	dropped, changes := l.dropped.Load(), l.droppedChanges.Load()
	if dropped == l.loggedDrops {
		return 0
	}
	now := l.now()
	if since := now.Sub(l.lastDropLog); !final && !l.lastDropLog.IsZero() && since < l.errorInterval {
		return l.errorInterval - since
	}
	level := slog.LevelWarn
	if changes != l.loggedChange {
		level = slog.LevelError // a key change, or a key holder's admin call, is missing from the trail
	}
	l.log.Log(context.Background(), level, "audit: events dropped, the audit trail has a gap (queue full, or shutdown)",
		"dropped_events", dropped-l.loggedDrops, "dropped_changes", changes-l.loggedChange,
		"dropped_total", dropped)
	l.lastDropLog, l.loggedDrops, l.loggedChange = now, dropped, changes
	return 0
}

// flush empties the queue when Close is called: into the sink, or, once
// Close has given up, into the Dropped count.
func (l *Logger) flush(batch []Event) {
	for {
		batch = l.fill(batch[:0])
		if len(batch) == 0 {
			return
		}
		l.write(batch)
	}
}

func (l *Logger) write(batch []Event) {
	if l.runCtx.Err() != nil { // Close gave up: nothing more reaches the sink
		for i := range batch {
			l.drop(batch[i].KeptApart())
		}
		clear(batch)
		return
	}
	changes := 0
	for i := range batch {
		if batch[i].KeptApart() {
			changes++
		}
	}
	ctx, cancel := context.WithTimeout(l.runCtx, l.writeTimeout)
	err := l.sink.Write(ctx, batch)
	cancel()
	clear(batch) // let the strings go while the slice waits for the next batch
	if err == nil {
		l.written.Add(uint64(len(batch)))
		return
	}
	l.failed.Add(uint64(len(batch)))
	l.unlogged += uint64(len(batch))
	l.unloggedChanges += uint64(changes)
	l.failedChanges.Add(uint64(changes))
	l.lastErr = err
	l.logFailures(false)
}

// logFailures says in the log, at most once per ErrorInterval unless
// final, how many events the sink failed since it last did, with the
// sink's latest error: at ERROR when a key change (or a key holder's
// admin call) is among them, as for a drop. A line held back by the
// interval is written when it ends (run wakes for it) or at close, never
// lost because the sink recovered; it returns how long until it may be
// written (else 0).
func (l *Logger) logFailures(final bool) time.Duration {
	if l.unlogged == 0 {
		return 0
	}
	now := l.now()
	if since := now.Sub(l.lastErrorLog); !final && !l.lastErrorLog.IsZero() && since < l.errorInterval {
		return l.errorInterval - since
	}
	level := slog.LevelWarn
	if l.unloggedChanges > 0 {
		level = slog.LevelError
	}
	// err comes from the sink's I/O and never quotes an event; events
	// hold no credentials anyway.
	l.log.Log(context.Background(), level, "audit: sink write failed; events lost",
		"err", l.lastErr, "lost_events", l.unlogged, "lost_changes", l.unloggedChanges, "lost_total", l.failed.Load())
	l.lastErrorLog = now
	l.unlogged, l.unloggedChanges, l.lastErr = 0, 0, nil
	return 0
}
