// Package redis is the Redis side of audit: a Sink that appends events to
// two capped streams, and Tail, which reads them back, merged, for
// "extauthz audit tail".
//
// Decisions, and admin calls refused for their credential or rate limit,
// go to <prefix>audit; key changes and the admin calls of key holders
// (audit.Event.KeptApart: reads of keys, escalations refused) to
// <prefix>audit:keys. Anyone who can send a request can add to the first,
// and a flood of them, trimming it, must not trim a key's creation or
// revocation, or a stolen key's reads, out of the trail with it. Each
// entry has one field, "event", holding the event's JSON
// (audit.Event.AppendJSON).
//
// It is not the queue in front of a sink (audit.Logger) and does not dial
// Redis: it takes the key store's client.
package redis

import (
	"context"
	"fmt"
	"sync"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/audit"
)

// DefaultMaxLen is the stream cap used when NewSink is given none, the
// same as the config's default. An event takes about 550 bytes in Redis,
// up to 4.3 KB when its client-controlled fields are at their cap.
const DefaultMaxLen = 20_000

// field is the one field of each stream entry.
const field = "event"

// StreamKey returns the name of the audit stream of decisions and of
// admin calls refused for their credential or rate limit (every event not
// kept apart) under a key prefix.
func StreamKey(prefix string) string { return prefix + "audit" }

// ChangeStreamKey returns the name of the audit stream of key changes and
// of the admin calls of key holders (audit.Event.KeptApart) under a key
// prefix.
func ChangeStreamKey(prefix string) string { return prefix + "audit:keys" }

// Sink appends events to the capped streams <prefix>audit and
// <prefix>audit:keys (audit.Event.KeptApart), one pipelined XADD MAXLEN ~ per event,
// one round trip per batch.
type Sink struct {
	client  goredis.UniversalClient
	stream  string
	changes string
	maxLen  int64

	mu  sync.Mutex
	buf []byte
}

// NewSink returns a Sink writing to StreamKey(prefix) and
// ChangeStreamKey(prefix) on client, trimming each stream to about maxLen
// entries (DefaultMaxLen when maxLen ≤ 0). Redis trims whole stream nodes,
// so a stream can hold up to one node (100 entries by default) more than
// maxLen.
func NewSink(client goredis.UniversalClient, prefix string, maxLen int64) *Sink {
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	return &Sink{client: client, stream: StreamKey(prefix), changes: ChangeStreamKey(prefix), maxLen: maxLen}
}

// Write appends events to their streams in order, in one pipeline.
func (s *Sink) Write(ctx context.Context, events []audit.Event) error {
	if len(events) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// All the JSON goes into one buffer, sliced per event; the slices stay
	// valid until Exec has sent them because the buffer is encoded in full
	// before the first command is queued.
	b := s.buf[:0]
	ends := make([]int, len(events))
	for i := range events {
		b = events[i].AppendJSON(b)
		ends[i] = len(b)
	}
	pipe := s.client.Pipeline()
	start := 0
	for i, end := range ends {
		stream := s.stream
		if events[i].KeptApart() {
			stream = s.changes
		}
		pipe.XAdd(ctx, &goredis.XAddArgs{
			Stream: stream,
			MaxLen: s.maxLen,
			Approx: true,
			Values: []any{field, b[start:end]},
		})
		start = end
	}
	_, err := pipe.Exec(ctx)
	if cap(b) <= 1<<20 {
		s.buf = b
	}
	if err != nil {
		return fmt.Errorf("append %d audit events to redis streams %s and %s: %w", len(events), s.stream, s.changes, err)
	}
	return nil
}
