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

	"github.com/extauthz/extauthz/internal/visible"
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

// Tail prints the audit events of the streams StreamKey(prefix) and
// ChangeStreamKey(prefix) to w, one JSON object per line, the two merged
// by the events' time: the last Count events that match opts.KeyID, oldest
// first, then, with Follow, each new matching event as it arrives. Entries
// that do not hold a JSON object are skipped. With Follow it returns nil
// when ctx is done.
//
// The streams are read one at a time, never by one command naming both: on
// a Redis Cluster they may be in different slots.
func Tail(ctx context.Context, client goredis.UniversalClient, prefix string, opts TailOptions, w io.Writer) error {
	streams := [2]string{StreamKey(prefix), ChangeStreamKey(prefix)}
	count := opts.Count
	if count == 0 {
		count = DefaultTailCount
	}
	var (
		past   [2][]tailEntry
		newest [2]string // where Follow starts in each stream
	)
	for i, stream := range streams {
		var err error
		if past[i], newest[i], err = lastMatching(ctx, client, stream, opts.KeyID, count); err != nil {
			return err
		}
	}
	lines := mergeByTime(past[0], past[1])
	if len(lines) > max(count, 0) {
		lines = lines[len(lines)-max(count, 0):]
	}
	if err := printEntries(w, lines); err != nil {
		return err
	}
	if !opts.Follow {
		return nil
	}

	last := newest
	for i := range last {
		if last[i] == "" {
			last[i] = "0-0" // an empty stream: everything that comes is new
		}
	}
	for ctx.Err() == nil {
		// The decisions' stream is waited on; the changes' is read without
		// waiting right after, so that a change shows within tailBlock even
		// when no decision comes.
		var got [2][]tailEntry
		for i, block := range [2]time.Duration{tailBlock, -1} {
			var err error
			if got[i], err = readAfter(ctx, client, streams[i], &last[i], block, opts.KeyID); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
		}
		if err := printEntries(w, mergeByTime(got[0], got[1])); err != nil {
			return err
		}
	}
	return nil
}

// tailEntry is one event Tail prints: its line and its time.
type tailEntry struct {
	time time.Time
	line []byte
}

// lastMatching walks stream back from its newest entry until count events
// matched keyID or the stream ends (it is capped, so this ends), and
// returns them oldest first with the id of the stream's newest entry ("" for
// an empty stream). A negative count reads only that id.
func lastMatching(ctx context.Context, client goredis.UniversalClient, stream, keyID string, count int) ([]tailEntry, string, error) {
	var (
		past   []tailEntry
		newest string
		end    = "+"
		page   = int64(tailPage)
	)
	if count < 0 {
		page = 1 // only the newest id is needed
	}
	for {
		msgs, err := client.XRevRangeN(ctx, stream, end, "-", page).Result()
		if err != nil {
			return nil, "", fmt.Errorf("read audit stream %s: %w", stream, err)
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
			if e, ok := matchEntry(m, keyID); ok {
				past = append(past, e)
			}
		}
		if len(past) >= count || int64(len(msgs)) < page {
			break
		}
		end = "(" + msgs[len(msgs)-1].ID
	}
	slices.Reverse(past)
	return past, newest, nil
}

// readAfter returns the matching entries of stream after *last, waiting up
// to block for one when there is none (not at all when block < 0), and
// moves *last to the newest entry read.
func readAfter(ctx context.Context, client goredis.UniversalClient, stream string, last *string, block time.Duration, keyID string) ([]tailEntry, error) {
	res, err := client.XRead(ctx, &goredis.XReadArgs{
		Streams: []string{stream, *last},
		Count:   tailPage,
		Block:   block,
	}).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, nil // nothing new
	}
	if err != nil {
		return nil, fmt.Errorf("follow audit stream %s: %w", stream, err)
	}
	var out []tailEntry
	for _, s := range res {
		for _, m := range s.Messages {
			*last = m.ID
			if e, ok := matchEntry(m, keyID); ok {
				out = append(out, e)
			}
		}
	}
	return out, nil
}

// mergeByTime merges a and b, each in its stream's order, into one list
// ordered by the events' time, keeping each stream's own order: the sink
// writes key changes ahead of decisions queued before them, so the two
// streams' ids do not order the events across them, and their times do.
func mergeByTime(a, b []tailEntry) []tailEntry {
	out := make([]tailEntry, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if b[0].time.Before(a[0].time) {
			out, b = append(out, b[0]), b[1:]
		} else {
			out, a = append(out, a[0]), a[1:]
		}
	}
	return append(append(out, a...), b...)
}

func printEntries(w io.Writer, entries []tailEntry) error {
	if len(entries) == 0 {
		return nil
	}
	var out bytes.Buffer
	for _, e := range entries {
		out.Write(e.line)
		out.WriteByte('\n')
	}
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("print audit events: %w", err)
	}
	return nil
}

// matchEntry returns the event of a stream entry, its JSON compacted to one
// line with every character that does not draw itself escaped
// (visible.EscapeJSON), if the entry holds a JSON object about keyID (any key when keyID is
// empty).
func matchEntry(m goredis.XMessage, keyID string) (tailEntry, bool) {
	s, ok := m.Values[field].(string)
	if !ok {
		return tailEntry{}, false
	}
	var about struct {
		Time        time.Time `json:"time"`
		KeyID       string    `json:"key_id"`
		RotatedFrom string    `json:"rotated_from"`
	}
	if err := json.Unmarshal([]byte(s), &about); err != nil {
		return tailEntry{}, false
	}
	if keyID != "" && about.KeyID != keyID && about.RotatedFrom != keyID {
		return tailEntry{}, false
	}
	var line bytes.Buffer
	if err := json.Compact(&line, []byte(s)); err != nil || line.Bytes()[0] != '{' {
		return tailEntry{}, false // not ours: a string, a number, null
	}
	// The line goes to a terminal. This version's events have every
	// character that does not draw itself escaped already; an entry an
	// older version wrote (before it escaped zero-width characters, say),
	// or anything else that can write to the stream, may hold them raw.
	return tailEntry{about.Time, visible.EscapeJSON(nil, line.Bytes())}, true
}
