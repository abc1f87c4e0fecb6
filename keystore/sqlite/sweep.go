package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/extauthz/extauthz/keystore"
)

// Sweep unlists up to opts.Batch expired keys and purges up to opts.Batch
// keys dead since before opts.PurgeBefore, in one transaction.
func (s *Store) Sweep(ctx context.Context, opts keystore.SweepOptions) (keystore.SweepResult, error) {
	var res keystore.SweepResult
	batch := opts.Batch
	if batch <= 0 {
		batch = keystore.DefaultSweepBatch
	}
	now, err := nanos(opts.Now)
	if err != nil {
		return res, fmt.Errorf("sweep %s: now: %w", s.path, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		r, err := tx.ExecContext(ctx, `UPDATE keys SET listed = 0 WHERE id IN (SELECT id FROM keys
			WHERE listed = 1 AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?)`, now, batch)
		if err != nil {
			return dbErr(err)
		}
		n, err := r.RowsAffected()
		if err != nil {
			return dbErr(err)
		}
		res.Unlisted = int(n)
		// Creates' idempotency keys past their time go too, as many.
		if _, err := tx.ExecContext(ctx, `DELETE FROM once WHERE token IN (SELECT token FROM once
			WHERE until <= ? ORDER BY until LIMIT ?)`, now, batch); err != nil {
			return dbErr(err)
		}
		if opts.PurgeBefore.IsZero() {
			return nil
		}
		before, err := nanos(opts.PurgeBefore)
		if err != nil {
			return fmt.Errorf("purge before: %w", err)
		}
		// Dead keys have no cache entries worth telling about and no
		// change to announce: nothing is logged in the change table.
		if r, err = tx.ExecContext(ctx, `DELETE FROM keys WHERE id IN (SELECT id FROM keys
			WHERE ends_at IS NOT NULL AND ends_at < ? ORDER BY ends_at LIMIT ?)`, before, batch); err != nil {
			return dbErr(err)
		}
		if n, err = r.RowsAffected(); err != nil {
			return dbErr(err)
		}
		res.Purged = int(n)
		return nil
	})
	if err != nil {
		return keystore.SweepResult{}, fmt.Errorf("sweep %s: %w", s.path, err)
	}
	res.More = res.Unlisted == batch || res.Purged == batch
	return res, nil
}
