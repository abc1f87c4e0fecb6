package redis

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// TailOptions choose what Tail prints.
type TailOptions struct {
	// KeyID keeps only the events about one key: its key_id, or its
	// rotated_from (so the rotation of a key shows in that key's history).
	// Empty keeps every event.
	KeyID string
	// Follow keeps printing new events, after the past ones, until ctx is done.
	Follow bool
	// Count is how many past (matching) events to print first: 0 means 10,
	// a negative Count none.
	Count int
}

// DefaultTailCount is how many past events Tail prints when Count is 0.
const DefaultTailCount = 10

const (
	tailPage  = 1000            // entries per XREVRANGE / XREAD
	tailBlock = 1 * time.Second // XREAD BLOCK; also how long a cancelled Follow may take to notice
)

// Tail prints the audit events of the stream StreamKey(prefix) to w, one
// JSON object per line: the last Count events that match opts.KeyID, oldest
// first, then, with Follow, each new matching event as it arrives. Entries
// that do not hold a JSON object are skipped. With Follow it returns nil
// when ctx is done.
func Tail(ctx context.Context, client goredis.UniversalClient, prefix string, opts TailOptions, w io.Writer) error {
	stream := StreamKey(prefix)
	count := opts.Count
	if count == 0 {
		count = DefaultTailCount
	}
	var out bytes.Buffer

	// Walk back from the newest entry until count events matched or the
	// stream ends; the stream is capped, so this ends.
	var (
		past   [][]byte
		newest string // id of the newest entry, where Follow starts
		end    = "+"
		page   = int64(tailPage)
	)
	if count < 0 {
		page = 1 // only the newest id is needed
	}
	for {
		msgs, err := client.XRevRangeN(ctx, stream, end, "-", page).Result()
		if err != nil {
			return fmt.Errorf("read audit stream %s: %w", stream, err)
		}
		if len(msgs) == 0 {
			break
		}
		if newest == "" {
			newest = msgs[0].ID
		}
		for _, m := range msgs {
			if len(past) >= count {
				break
			}
			if line, ok := matchEntry(m, opts.KeyID); ok {
				past = append(past, line)
			}
		}
		if len(past) >= count || int64(len(msgs)) < page {
			break
		}
		end = "(" + msgs[len(msgs)-1].ID
	}
	for _, line := range slices.Backward(past) {
		out.Write(line)
		out.WriteByte('\n')
	}
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("print audit events: %w", err)
	}
	if !opts.Follow {
		return nil
	}

	last := newest
	if last == "" {
		last = "0-0" // empty stream: everything that comes is new
	}
	for ctx.Err() == nil {
		streams, err := client.XRead(ctx, &goredis.XReadArgs{
			Streams: []string{stream, last},
			Count:   tailPage,
			Block:   tailBlock,
		}).Result()
		if errors.Is(err, goredis.Nil) {
			continue // BLOCK timed out with nothing new
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			return fmt.Errorf("follow audit stream %s: %w", stream, err)
		}
		out.Reset()
		for _, s := range streams {
			for _, m := range s.Messages {
				last = m.ID
				if line, ok := matchEntry(m, opts.KeyID); ok {
					out.Write(line)
					out.WriteByte('\n')
				}
			}
		}
		if _, err := w.Write(out.Bytes()); err != nil {
			return fmt.Errorf("print audit events: %w", err)
		}
	}
	return nil
}

// matchEntry returns the event JSON of a stream entry, compacted to one
// line, if the entry holds a JSON object about keyID (any key when keyID is
// empty).
func matchEntry(m goredis.XMessage, keyID string) ([]byte, bool) {
	s, ok := m.Values[field].(string)
	if !ok {
		return nil, false
	}
	var about struct {
		KeyID       string `json:"key_id"`
		RotatedFrom string `json:"rotated_from"`
	}
	if err := json.Unmarshal([]byte(s), &about); err != nil {
		return nil, false
	}
	if keyID != "" && about.KeyID != keyID && about.RotatedFrom != keyID {
		return nil, false
	}
	var line bytes.Buffer
	if err := json.Compact(&line, []byte(s)); err != nil || line.Bytes()[0] != '{' {
		return nil, false // not ours: a string, a number, null
	}
	return line.Bytes(), true
}
