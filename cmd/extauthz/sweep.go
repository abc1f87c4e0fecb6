package main

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

const (
	// defaultSweepEvery is how often a server sweeps the key store.
	defaultSweepEvery = time.Minute
	// sweepBatches bounds the batches of one round (of
	// keystore.DefaultSweepBatch keys each); a bigger backlog, such as the
	// first sweep of a large store, is worked off over several rounds.
	sweepBatches = 20
)

// sweepStore runs the key store's housekeeping (keystore.Store.Sweep) every
// s.sweepEvery, give or take a tenth, until ctx is done.
//
// What it promises:
//   - a key that expired (a rotated one at the end of its grace period)
//     leaves the index that listing live keys walks within about one
//     interval, so a page of keys costs the page plus the keys that expired
//     in the last minute, never every dead key the store holds (a revoked
//     key leaves it when it is revoked);
//   - a key that has been dead (revoked, expired) for longer than
//     keys.retention is deleted within about one interval after that, so
//     the store holds the live keys plus at most keys.retention worth of
//     dead ones; with keys.retention 0 nothing is deleted. Audit events are
//     not in the store and stay where the audit sink put them.
//
// Why it is safe with several servers on one store, and cheap: every batch
// is one atomic step (a Lua script, a transaction) that re-checks what it
// unlists or deletes, so servers sweeping at once act on each key once, and
// a key brought back to life meanwhile is left alone. A round with nothing
// to do costs two index reads. A round is at most sweepBatches batches, so
// it never holds the store for long, and rounds are jittered so that
// replicas started together do not sweep in step.
func (s *server) sweepStore(ctx context.Context) {
	retention := time.Duration(s.cfg.Keys.Retention)
	wait := time.Duration(rand.Int64N(int64(s.sweepEvery)/10 + 1)) // the first round soon after start
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		s.sweepRound(ctx, retention)
		wait = s.sweepEvery - s.sweepEvery/10 + time.Duration(rand.Int64N(int64(s.sweepEvery)/5+1))
	}
}

// sweepRound sweeps until the store says it is done, for at most
// sweepBatches batches, and logs what it did.
func (s *server) sweepRound(ctx context.Context, retention time.Duration) {
	var total keystore.SweepResult
	for range sweepBatches {
		now := time.Now()
		opts := keystore.SweepOptions{Now: now}
		if retention > 0 {
			opts.PurgeBefore = now.Add(-retention)
		}
		callCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := s.be.store.Sweep(callCtx, opts)
		cancel()
		total.Unlisted += res.Unlisted
		total.Purged += res.Purged
		if err != nil {
			if ctx.Err() == nil {
				s.logger.Warn("key store sweep failed; the next round retries", "err", err)
			}
			break
		}
		if !res.More {
			break
		}
	}
	if total.Unlisted > 0 || total.Purged > 0 {
		s.logger.Info("swept the key store", "expired_unlisted", total.Unlisted, "dead_purged", total.Purged,
			"retention", retention.String())
	}
}
