package redis

import (
	"context"
	"errors"
	"fmt"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/keystore"
)

// Change propagation uses a Redis stream, <prefix>{keys}:changes, appended
// to by the same script that makes each change, rather than PUBLISH:
//
//   - Pub/sub is fire-and-forget. A message published while a replica's
//     subscription is reconnecting (a network blip, a Redis failover) is
//     gone, and nothing tells the replica: it keeps serving a revoked key
//     from its cache until the TTL runs out. A stream keeps the entries, so
//     a read that a reconnection retries (go-redis retries a call on a new
//     connection once) reads on from the last entry seen; a watcher whose
//     call failed does not know what happened meanwhile, and tells its
//     cache to forget everything once Redis answers again.
//   - The gaps a stream can still have are detectable: the watcher checks
//     that its last-seen entry is still there before reading on. If it was
//     trimmed away (the watcher fell more than ~10000 changes behind) or lost
//     (a restart or failover without persistence), the watcher tells its
//     cache to forget everything instead of silently missing changes.
//   - The append is part of the change's script, so a change is never
//     stored without being announced, nor announced without being stored.
//
// The cost is a little memory (10000 short entries) and one blocked
// connection per watching process.

const (
	// watchBlock is how long one XREAD waits for a change. It bounds how
	// long Watch takes to notice ctx is done; it is not a latency: XREAD
	// returns as soon as a change is appended.
	watchBlock = 500 * time.Millisecond
	// watchBatch is the number of changes read per poll.
	watchBatch = 512
	// Backoff between attempts while Redis does not answer.
	watchMinBackoff = 50 * time.Millisecond
	watchMaxBackoff = time.Second
)

// Watch calls onChange with the hash of every key changed after Watch is
// called, by any process sharing the store, until ctx is done or the Store
// is closed. It returns nil when ctx is done, and an error only for a
// closed or misconfigured Store: it rides out Redis failures itself.
//
// When it may have missed changes it calls onChange with the zero Hash
// ("forget everything"): once it has found where the change log ends (what
// came before is unknown to it), after the change log had a gap, and when
// it reads again after a failure. It does not do so while Redis is down: the cache
// it feeds is then the only source of answers, and emptying it would turn a
// Redis outage into a denial of every request.
func (s *Store) Watch(ctx context.Context, onChange func(keystore.Hash)) error {
	if err := s.check(); err != nil {
		return err
	}
	if onChange == nil {
		return errors.New("redis watch: nil onChange")
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("redis store: closed")
	}
	s.watchers.Add(1)
	s.mu.Unlock()
	defer s.watchers.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-s.done:
			cancel()
		case <-ctx.Done():
		}
	}()

	// failed from the start: the first poll only finds where the stream
	// ends, and what changed before that is unknown to the caller, whose
	// cache may already hold keys (a server answers checks from the moment
	// it listens). Its END therefore says "forget everything" too.
	w := watcher{s: s, onChange: onChange, failed: true}
	w.run(ctx)
	select {
	case <-s.done:
		return errors.New("redis store: closed")
	default:
		return nil
	}
}

type watcher struct {
	s        *Store
	onChange func(keystore.Hash)

	last    string // id of the last entry seen; "" = not known yet
	failed  bool   // Redis failed since the last good read
	backoff time.Duration

	// What the log was told: a failure, when (for repeating it at most
	// once a minute while failures go on), and how many failures this
	// run of them has had.
	warned   bool
	warnedAt time.Time
	failures int
}

func (w *watcher) run(ctx context.Context) {
	for ctx.Err() == nil {
		n, err := w.poll(ctx)
		if err == nil && n < watchBatch {
			err = w.wait(ctx)
		}
		if err != nil {
			w.report(ctx, err)
			w.fail(ctx)
		} else if w.warned {
			// A poll and a wait (or a full batch) in a row: reading again.
			w.warned = false
			if w.s.log != nil {
				w.s.log.Info("key change feed: reading changes from Redis again", "failures", w.failures)
			}
			w.failures = 0
		}
	}
}

// poll reads the changes after w.last and reports how many it read.
func (w *watcher) poll(ctx context.Context) (int, error) {
	res, err := pollScript.Run(ctx, w.s.client, []string{w.s.keys.changes()}, w.last, watchBatch).Slice()
	if err != nil {
		return 0, err
	}
	if len(res) < 2 {
		return 0, fmt.Errorf("redis watch: unexpected poll reply of %d elements", len(res))
	}
	status, _ := res[0].(string)
	id, _ := res[1].(string)
	if id == "" {
		return 0, fmt.Errorf("redis watch: unexpected poll reply %q", status)
	}
	w.last = id
	w.backoff = 0
	switch status {
	case "END":
		// The start of Watch, or a recovery: anything changed before this
		// point and after the last read is unknown.
		if w.failed {
			w.failed = false
			w.onChange(keystore.Hash{})
		}
		return 0, nil
	case "GAP":
		w.failed = false
		w.onChange(keystore.Hash{})
		return 0, nil
	case "OK":
	default:
		return 0, fmt.Errorf("redis watch: unexpected poll status %q", status)
	}
	// An entry that names no key this version can read (another
	// version's form, a corrupted one) is a change all the same, to a key
	// unknown: skipped, it would leave a revoked key live in the cache
	// until its entry expires. Forget everything instead.
	unnamed := false
	for _, v := range res[2:] {
		hexHash, _ := v.(string)
		h, err := keystore.ParseHash(hexHash)
		if err != nil || h.IsZero() {
			unnamed = true
			continue
		}
		w.onChange(h)
	}
	if unnamed {
		w.onChange(keystore.Hash{})
	}
	return len(res) - 2, nil
}

// wait blocks until the stream has an entry after w.last or watchBlock
// passes. The entry itself is read by the next poll, which first checks
// that the log has no gap: XREAD alone would silently skip one.
func (w *watcher) wait(ctx context.Context) error {
	err := w.s.client.XRead(ctx, &goredis.XReadArgs{
		Streams: []string{w.s.keys.changes(), w.last},
		Count:   1,
		Block:   watchBlock,
	}).Err()
	if errors.Is(err, goredis.Nil) {
		return nil
	}
	return err
}

// report logs err, a failure of the feed: the first of a run of failures,
// then at most once a minute while they go on. Redis's errors carry no
// secret (a key's hash at most, in a script's keys).
func (w *watcher) report(ctx context.Context, err error) {
	if ctx.Err() != nil || w.s.log == nil {
		return
	}
	w.failures++
	if w.warned && time.Since(w.warnedAt) < time.Minute {
		return
	}
	w.warned, w.warnedAt = true, time.Now()
	w.s.log.Warn("key change feed: Redis failed; until it reads changes again, a change to a key (a revocation) reaches this server only when its cache forgets every key, after each recovery, or when the key's entry expires (cache.ttl)",
		"err", err, "failures", w.failures)
}

// fail backs off after a Redis error. The next successful poll starts from
// the end of the stream and signals "forget everything".
func (w *watcher) fail(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	w.failed = true
	w.last = ""
	w.backoff = min(max(2*w.backoff, watchMinBackoff), watchMaxBackoff)
	t := time.NewTimer(w.backoff)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
