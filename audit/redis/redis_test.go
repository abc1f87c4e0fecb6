package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, redistest.LeakOptions()...) }

const prefix = "test:"

var when = time.Date(2026, 3, 4, 5, 6, 7, 891234000, time.UTC)

// newClient starts a throwaway redis-server and returns a client for it.
func newClient(t *testing.T) (*redistest.Server, *goredis.Client) {
	t.Helper()
	srv := redistest.Start(t)
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { c.Close() })
	return srv, c
}

// event is a change event about keyID, numbered n in key_name.
func event(keyID string, n int) audit.Event {
	return audit.Event{Time: when.Add(time.Duration(n) * time.Millisecond), Type: audit.TypeKeyUpdated,
		KeyID: keyID, KeyName: strconv.Itoa(n), Owner: "default", Actor: "cli"}
}

func line(e audit.Event) string { return string(e.AppendJSON(nil)) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestSinkAppendsOneEntryPerEventToThePrefixedStream(t *testing.T) {
	_, c := newClient(t)
	events := []audit.Event{
		event("key_a", 1),
		{Time: when, Type: audit.TypeDecision, KeyID: "key_a", Method: "GET", Path: "/x?api_key=secret",
			Decision: audit.Deny, Status: 403, Code: "permission_denied", UserAgent: "quote\" and \n newline"},
		{Time: when, Type: audit.TypeKeyRotated, KeyID: "key_b", RotatedFrom: "key_a", Actor: "cli"},
	}
	if err := NewSink(c, prefix, 0).Write(ctx(t), events); err != nil {
		t.Fatal(err)
	}

	// Decisions (and refused admin calls) in one stream, key changes in
	// the other, each in the order written.
	var all []goredis.XMessage
	for stream, want := range map[string][]audit.Event{"test:audit": events[1:2], "test:audit:keys": {events[0], events[2]}} {
		msgs, err := c.XRange(ctx(t), stream, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != len(want) {
			t.Fatalf("stream %s has %d entries, want %d", stream, len(msgs), len(want))
		}
		for i, m := range msgs {
			if len(m.Values) != 1 || m.Values["event"] != line(want[i]) {
				t.Errorf("%s entry %d = %v, want one field event=%s", stream, i, m.Values, line(want[i]))
			}
		}
		all = append(all, msgs...)
	}
	if strings.Contains(fmt.Sprint(all), "secret") {
		t.Error("the query string reached the stream")
	}
	if n, _ := c.Exists(ctx(t), "audit").Result(); n != 0 {
		t.Error("wrote to the unprefixed key audit")
	}
}

func TestSinkCapsTheStream(t *testing.T) {
	_, c := newClient(t)
	const maxLen, total, nodeSize = 1000, 5000, 100 // nodeSize: redis' stream-node-max-entries default
	sink := NewSink(c, prefix, maxLen)
	batch := make([]audit.Event, 0, 256)
	for i := range total {
		batch = append(batch, event("key_a", i))
		if len(batch) == cap(batch) || i == total-1 {
			if err := sink.Write(ctx(t), batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}

	n, err := c.XLen(ctx(t), "test:audit:keys").Result()
	if err != nil {
		t.Fatal(err)
	}
	if n < maxLen || n > maxLen+nodeSize {
		t.Errorf("XLEN after %d events with MAXLEN ~ %d = %d, want %d..%d", total, maxLen, n, maxLen, maxLen+nodeSize)
	}
	newest, err := c.XRevRangeN(ctx(t), "test:audit:keys", "+", "-", 1).Result()
	if err != nil || len(newest) != 1 || newest[0].Values["event"] != line(event("key_a", total-1)) {
		t.Errorf("newest entry = %v (%v), want the last event written", newest, err)
	}
}

func TestLoggerWritesThroughTheSinkAndCountsRedisFailures(t *testing.T) {
	srv, c := newClient(t)
	l := audit.New(NewSink(c, prefix, 0), audit.Options{WriteTimeout: 2 * time.Second, Log: quietLog()})
	for i := range 300 {
		l.Record(event("key_a", i))
	}
	// Wait until the 300 are in Redis, then take Redis away.
	for deadline := time.Now().Add(10 * time.Second); l.Written() < 300; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("written %d of 300", l.Written())
		}
	}
	srv.Stop()
	for i := 300; i < 310; i++ {
		l.Record(event("key_a", i))
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := l.Close(closeCtx); err != nil {
		t.Fatal(err)
	}
	if l.Written() != 300 || l.Failed() != 10 || l.Dropped() != 0 {
		t.Errorf("written %d failed %d dropped %d, want 300, 10, 0", l.Written(), l.Failed(), l.Dropped())
	}
}

func TestSinkErrorNamesTheStream(t *testing.T) {
	srv, c := newClient(t)
	srv.Stop()
	err := NewSink(c, prefix, 0).Write(ctx(t), []audit.Event{event("key_a", 1)})
	if err == nil || !strings.Contains(err.Error(), "test:audit") {
		t.Errorf("Write with redis down = %v, want an error naming the stream", err)
	}
}

// fill writes events about keys, in order, as the sink does.
func fill(t *testing.T, c *goredis.Client, events ...audit.Event) {
	t.Helper()
	if err := NewSink(c, prefix, 0).Write(ctx(t), events); err != nil {
		t.Fatal(err)
	}
}

func lines(events ...audit.Event) string {
	var b strings.Builder
	for _, e := range events {
		b.WriteString(line(e))
		b.WriteByte('\n')
	}
	return b.String()
}

func TestTailPrintsTheLastEventsOldestFirst(t *testing.T) {
	_, c := newClient(t)
	var all []audit.Event
	for i := range 25 {
		key := []string{"key_a", "key_b"}[i%2]
		all = append(all, event(key, i))
	}
	rotation := audit.Event{Time: when, Type: audit.TypeKeyRotated, KeyID: "key_c", RotatedFrom: "key_a", Actor: "cli"}
	all = append(all, rotation, event("key_b", 26))
	fill(t, c, all...)
	// Entries that are not ours are skipped.
	for _, stream := range []string{"test:audit", "test:audit:keys"} {
		for _, v := range []string{"not json", `"a string"`, "null", "42"} {
			if err := c.XAdd(ctx(t), &goredis.XAddArgs{Stream: stream, Values: []any{"event", v}}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.XAdd(ctx(t), &goredis.XAddArgs{Stream: stream, Values: []any{"other", "x"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}

	tests := []struct {
		name string
		opts TailOptions
		want string
	}{
		{"the last three about a key, with its rotation", TailOptions{KeyID: "key_a", Count: 3}, lines(all[22], all[24], rotation)},
		{"every event when there are fewer than asked", TailOptions{KeyID: "key_c", Count: 5}, lines(rotation)},
		{"the last ten of every key by default", TailOptions{}, lines(all[len(all)-10:]...)},
		{"nothing about an unknown key", TailOptions{KeyID: "key_zz", Count: 5}, ""},
		{"nothing when no past events are asked for", TailOptions{Count: -1}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			if err := Tail(ctx(t), c, prefix, tt.opts, &out); err != nil {
				t.Fatal(err)
			}
			if out.String() != tt.want {
				t.Errorf("got\n%s\nwant\n%s", out.String(), tt.want)
			}
		})
	}
}

// Tail writes to a terminal, and escapes there whatever in an entry does
// not draw itself, whoever wrote it: an older version's event with a raw
// zero-width space or right-to-left override in its user agent, or a C1
// CSI, shows as \u escapes, and the line still reads back as the event.
func TestTailEscapesWhatAnEntryHoldsRaw(t *testing.T) {
	_, c := newClient(t)
	ua := "curl\u200b/8\u202e\u009b2J\x7f\U000E0041"
	raw := `{"schema":1,"time":"2026-03-04T05:06:07.891234Z","event":"decision","user_agent":"` + ua + `","status":401}`
	if err := c.XAdd(ctx(t), &goredis.XAddArgs{Stream: "test:audit", Values: []any{"event", raw}}).Err(); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Tail(ctx(t), c, prefix, TailOptions{}, &out); err != nil {
		t.Fatal(err)
	}
	if want := `"user_agent":"curl\u200b/8\u202e\u009b2J\u007f\udb40\udc41"`; !strings.Contains(out.String(), want) {
		t.Fatalf("got %q; want %s in it", out.String(), want)
	}
	for _, r := range out.String() {
		if r == 0x7f || r >= 0x80 {
			t.Fatalf("tail wrote U+%04X raw: %q", r, out.String())
		}
	}
	var back audit.Event
	if err := json.Unmarshal(bytes.TrimSpace(out.Bytes()), &back); err != nil || back.UserAgent != ua {
		t.Errorf("read back as %q (err %v), want %q", back.UserAgent, err, ua)
	}
}

// decision is a decision about keyID at when + n ms.
func decision(keyID string, n int) audit.Event {
	return audit.Event{Time: when.Add(time.Duration(n) * time.Millisecond), Type: audit.TypeDecision,
		KeyID: keyID, Method: "GET", Path: "/x", Decision: audit.Deny, Status: 401, Code: "invalid_key"}
}

// Anyone who can send a request adds decisions to the audit; a flood of
// them, trimming their stream, must not trim a key's creation or
// revocation out of the trail, nor what a key holder did at the admin API.
func TestAFloodOfDecisionsTrimsNoKeyChange(t *testing.T) {
	_, c := newClient(t)
	sink := NewSink(c, prefix, 1000)
	created := audit.Event{Time: when, Type: audit.TypeKeyCreated, KeyID: "key_stolen", Owner: "default", Actor: "key_writer"}
	// A stolen key's first moves: reading every key, trying for more.
	read := audit.Event{Time: when, Type: audit.TypeAdminRead, KeyID: "key_stolen", Method: "GET", Route: "/v1/keys", Status: 200, KeyHolder: true}
	tried := audit.Event{Time: when, Type: audit.TypeAdminAuthFailed, KeyID: "key_stolen", Method: "POST", Route: "/v1/keys",
		Status: 403, Code: "permission_denied", KeyHolder: true}
	if err := sink.Write(ctx(t), []audit.Event{created, read, tried}); err != nil {
		t.Fatal(err)
	}
	flood := make([]audit.Event, 256)
	for i := range 40 {
		for j := range flood {
			flood[j] = decision("", 1+i*len(flood)+j)
		}
		if err := sink.Write(ctx(t), flood); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := c.XLen(ctx(t), "test:audit").Result(); err != nil || n > 1100 {
		t.Fatalf("XLEN test:audit = %d, %v: want the decisions' stream trimmed to about 1000", n, err)
	}
	var out bytes.Buffer
	if err := Tail(ctx(t), c, prefix, TailOptions{KeyID: "key_stolen"}, &out); err != nil {
		t.Fatal(err)
	}
	if want := lines(created, read, tried); out.String() != want {
		t.Errorf("audit tail --key key_stolen printed\n%s\nwant\n%s", out.String(), want)
	}
}

// Tail merges the two streams by the events' time, in its past and as it
// follows: the sink writes a key change ahead of decisions queued before it.
func TestTailMergesTheStreamsByTime(t *testing.T) {
	_, c := newClient(t)
	past := []audit.Event{decision("key_a", 0), event("key_a", 1), decision("key_a", 2), decision("key_a", 4), event("key_a", 3)}
	// As the sink gets them: the changes first.
	fill(t, c, past[1], past[4], past[0], past[2], past[3])
	var out bytes.Buffer
	if err := Tail(ctx(t), c, prefix, TailOptions{KeyID: "key_a", Count: 4}, &out); err != nil {
		t.Fatal(err)
	}
	if want := lines(past[1], past[2], past[4], past[3]); out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}

	following := &onCommand{name: "xread", seen: make(chan struct{})}
	c.AddHook(following)
	live := &syncbuf.Buffer{}
	tailCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Tail(tailCtx, c, prefix, TailOptions{Count: -1, Follow: true}, live) }()
	<-following.seen
	next := []audit.Event{decision("key_b", 10), event("key_b", 11), decision("key_b", 12)}
	fill(t, c, next[1], next[0], next[2])
	waitForOutput(t, live, lines(next...))
	// A change alone, with no decision to wake the wait on that stream.
	alone := event("key_b", 13)
	fill(t, c, alone)
	waitForOutput(t, live, lines(append(next, alone)...))
	stop()
	if err := <-done; err != nil {
		t.Errorf("Tail after cancel = %v, want nil", err)
	}
}

func TestTailFindsRareEventsAcrossPages(t *testing.T) {
	_, c := newClient(t)
	var all []audit.Event
	for i := range 2500 {
		key := "key_busy"
		if i%1200 == 0 {
			key = "key_rare"
		}
		all = append(all, event(key, i))
	}
	fill(t, c, all...)

	var out bytes.Buffer
	if err := Tail(ctx(t), c, prefix, TailOptions{KeyID: "key_rare", Count: 10}, &out); err != nil {
		t.Fatal(err)
	}
	if want := lines(all[0], all[1200], all[2400]); out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}

func TestTailOnAnEmptyStreamPrintsNothing(t *testing.T) {
	_, c := newClient(t)
	var out bytes.Buffer
	if err := Tail(ctx(t), c, prefix, TailOptions{Count: 5}, &out); err != nil || out.Len() != 0 {
		t.Errorf("Tail = %v, printed %q; want nil and nothing", err, out.String())
	}
}

func TestTailFollowsNewEventsUntilCancelled(t *testing.T) {
	for _, tt := range []struct {
		name  string
		empty bool
	}{{"on a stream with history", false}, {"on an empty stream", true}} {
		t.Run(tt.name, func(t *testing.T) {
			_, c := newClient(t)
			var past []audit.Event
			if !tt.empty {
				past = []audit.Event{event("key_a", 0), event("key_b", 1), event("key_a", 2)}
				fill(t, c, past...)
			}

			following := &onCommand{name: "xread", seen: make(chan struct{})}
			c.AddHook(following)
			out := &syncbuf.Buffer{}
			tailCtx, stop := context.WithCancel(context.Background())
			defer stop()
			done := make(chan error, 1)
			go func() { done <- Tail(tailCtx, c, prefix, TailOptions{KeyID: "key_a", Count: 1, Follow: true}, out) }()

			var want string
			if !tt.empty {
				want = lines(past[2])
			}
			<-following.seen // the past is printed; what is written now is new
			if out.String() != want {
				t.Fatalf("printed\n%s\nwant\n%s", out.String(), want)
			}
			next := []audit.Event{event("key_b", 3), event("key_a", 4), event("key_a", 5)}
			fill(t, c, next...)
			want += lines(next[1], next[2])
			waitForOutput(t, out, want)

			stop()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Tail after cancel = %v, want nil", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("Tail did not return after its context was cancelled")
			}
			if out.String() != want {
				t.Errorf("printed\n%s\nwant\n%s", out.String(), want)
			}
		})
	}
}

// onCommand is a go-redis hook that closes seen when the client first sends
// the command name.
type onCommand struct {
	name string
	once sync.Once
	seen chan struct{}
}

func (h *onCommand) DialHook(next goredis.DialHook) goredis.DialHook { return next }
func (h *onCommand) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}
func (h *onCommand) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if cmd.Name() == h.name {
			h.once.Do(func() { close(h.seen) })
		}
		return next(ctx, cmd)
	}
}

func waitForOutput(t *testing.T, out *syncbuf.Buffer, want string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); out.String() != want; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("printed\n%s\nwant\n%s", out.String(), want)
		}
	}
}

func TestTailReportsAnUnreachableRedis(t *testing.T) {
	srv, c := newClient(t)
	srv.Stop()
	err := Tail(ctx(t), c, prefix, TailOptions{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "test:audit") {
		t.Errorf("Tail with redis down = %v, want an error naming the stream", err)
	}
}

// Check that an event read back from the stream is still the JSON of an audit event (docs/operations.md).
func TestStreamEntriesDecodeAsEvents(t *testing.T) {
	_, c := newClient(t)
	want := event("key_a", 7)
	fill(t, c, want)
	msgs, err := c.XRange(ctx(t), "test:audit:keys", "-", "+").Result()
	if err != nil || len(msgs) != 1 {
		t.Fatalf("XRANGE = %v, %v", msgs, err)
	}
	var got audit.Event
	if err := json.Unmarshal([]byte(msgs[0].Values["event"].(string)), &got); err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(want.Time) || got.KeyID != want.KeyID || got.KeyName != want.KeyName || got.Type != want.Type {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
}

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }
