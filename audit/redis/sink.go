// Package redis is the Redis side of audit: a Sink that appends events to a
// capped stream, and Tail, which reads that stream back for
// "extauthz audit tail".
//
// The stream is <prefix>audit; each entry has one field, "event", holding
// the event's JSON (audit.Event.AppendJSON).
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

// StreamKey returns the name of the audit stream under a key prefix.
func StreamKey(prefix string) string { return prefix + "audit" }

// Sink appends events to the capped stream <prefix>audit, one pipelined
// XADD MAXLEN ~ per event, one round trip per batch.
type Sink struct {
	client goredis.UniversalClient
	stream string
	maxLen int64

	mu  sync.Mutex
	buf []byte
}

// NewSink returns a Sink writing to StreamKey(prefix) on client, trimming
// the stream to about maxLen entries (DefaultMaxLen when maxLen ≤ 0). Redis
// trims whole stream nodes, so the stream can hold up to one node (100
// entries by default) more than maxLen.
func NewSink(client goredis.UniversalClient, prefix string, maxLen int64) *Sink {
	if maxLen <= 0 {
		maxLen = DefaultMaxLen
	}
	return &Sink{client: client, stream: StreamKey(prefix), maxLen: maxLen}
}

// Write appends events to the stream in order, in one pipeline.
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
	for _, end := range ends {
		pipe.XAdd(ctx, &goredis.XAddArgs{
			Stream: s.stream,
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
		return fmt.Errorf("append %d audit events to redis stream %s: %w", len(events), s.stream, err)
	}
	return nil
}
