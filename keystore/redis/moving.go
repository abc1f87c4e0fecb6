package redis

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
)

// While a Cluster slot moves to another master (a resharding), Redis moves
// its keys a few at a time, and until the last has moved:
//
//   - a call whose keys have all moved is sent on with ASK; the Cluster
//     client follows it (ASKING, then the call, on the new master);
//   - a call of several keys is refused with TRYAGAIN where some of them
//     are missing: on the old master once the move has split them, on the
//     new one until all of them are there. So a call that would create a
//     key is refused on both until the move ends.
//
// Every key record is in one slot ({keys}), so a move of that slot makes
// every create and rotation (each makes a record) a TRYAGAIN until it ends,
// and every update and revocation one while the move has split the records
// it writes. The Cluster client retries a TRYAGAIN only three times within
// a few tens of milliseconds, which no move of more than a handful of keys
// ends in; a change waits for up to slotMoveWait instead (within its
// caller's context), then fails as the store being unavailable.
const slotMoveWait = 5 * time.Second

// slotMoving reports whether err is Redis saying that the call's slot is
// moving (TRYAGAIN, or ASK to a master change cannot follow it to), or has
// moved since the client last read the slot map (MOVED, from a call made on
// one node's connection). Redis ran none of these calls.
func slotMoving(err error) bool {
	return goredis.HasErrorPrefix(err, "TRYAGAIN") || goredis.HasErrorPrefix(err, "MOVED") ||
		goredis.HasErrorPrefix(err, "ASK")
}

// whileSlotMoves calls call until it returns anything but slotMoving, for
// up to slotMoveWait, pausing between calls (2 ms, doubling up to 50 ms).
// A call that returns nil or another error is not repeated.
func whileSlotMoves(ctx context.Context, call func() error) error {
	deadline := time.Now().Add(slotMoveWait)
	pause := 2 * time.Millisecond
	for {
		err := call()
		if !slotMoving(err) || time.Now().Add(pause).After(deadline) {
			return err
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		pause = min(2*pause, 50*time.Millisecond)
	}
}

// runScript runs script on the store's client, waiting out a slot move
// (whileSlotMoves).
func (s *Store) runScript(ctx context.Context, script *goredis.Script, keys []string, args ...any) *goredis.Cmd {
	var cmd *goredis.Cmd
	_ = whileSlotMoves(ctx, func() error {
		cmd = script.Run(ctx, s.client, keys, args...)
		return cmd.Err()
	})
	return cmd
}

// mget reads keys with MGET. While their slot moves, MGET is refused
// (TRYAGAIN) once the move has split them between two masters; then each
// is read on its own, where it is (the Cluster client follows an ASK for
// each), so that a read never waits for a move. A record read apart from
// the others is what a read racing a change sees anyway: every reader
// takes a record that is gone as deleted.
func (s *Store) mget(ctx context.Context, keys ...string) ([]any, error) {
	vals, err := s.client.MGet(ctx, keys...).Result()
	if !goredis.HasErrorPrefix(err, "TRYAGAIN") {
		return vals, err
	}
	cmds := make([]*goredis.StringCmd, len(keys))
	_, _ = s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Get(ctx, k)
		}
		return nil
	})
	vals = make([]any, len(keys))
	for i, cmd := range cmds {
		v, err := cmd.Result()
		switch {
		case err == nil:
			vals[i] = v
		case !errors.Is(err, goredis.Nil):
			return nil, err
		}
	}
	return vals, nil
}

// askedTo returns the address an ASK error sends the call on to.
func askedTo(err error) (string, bool) {
	if !goredis.HasErrorPrefix(err, "ASK") {
		return "", false
	}
	f := strings.Fields(strings.TrimPrefix(err.Error(), "ASK"))
	if len(f) != 2 {
		return "", false
	}
	return f[1], true
}

// masterAt returns the client of the Cluster master at addr, or nil when
// the slot map lists no master there: a master new to the Cluster serves no
// slot until the first one moved to it is handed over, so no slot map lists
// it while that slot moves.
func masterAt(ctx context.Context, c *goredis.ClusterClient, addr string) (*goredis.Client, error) {
	var mu sync.Mutex
	var found *goredis.Client
	err := c.ForEachMaster(ctx, func(_ context.Context, m *goredis.Client) error {
		if m.Options().Addr == addr {
			mu.Lock()
			found = m
			mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// runAsking runs script on conn, a connection to the master a slot is
// moving to, as an ASK redirect asks: each call preceded by ASKING, which
// lets that one call reach the slot there before the move ends.
func runAsking(ctx context.Context, conn *goredis.Conn, script *goredis.Script, keys []string, args []any) *goredis.Cmd {
	run := func(eval func(p goredis.Pipeliner) *goredis.Cmd) *goredis.Cmd {
		var cmd *goredis.Cmd
		_, _ = conn.Pipelined(ctx, func(p goredis.Pipeliner) error {
			p.Do(ctx, "asking")
			cmd = eval(p)
			return nil
		})
		return cmd
	}
	cmd := run(func(p goredis.Pipeliner) *goredis.Cmd { return script.EvalSha(ctx, p, keys, args...) })
	if goredis.HasErrorPrefix(cmd.Err(), "NOSCRIPT") {
		cmd = run(func(p goredis.Pipeliner) *goredis.Cmd { return script.Eval(ctx, p, keys, args...) })
	}
	return cmd
}
