package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// Watch polls the change log and calls onChange with the hash of every key
// that any process changes after Watch is called, or with the zero Hash when
// it may have missed some: first of all once it has found where the log
// ends, since what changed before that is unknown to it and its caller may
// have cached keys already. It returns nil when ctx is done, and an error
// when the Store is closed first, its files were removed or replaced
// (checkFiles), or a newer version migrated the file (checkSchema).
func (s *Store) Watch(ctx context.Context, onChange func(keystore.Hash)) error {
	var r readReport
	pos, err := s.changeHead(ctx)
	started := err == nil
	if started {
		onChange(keystore.Hash{})
	} else {
		r.failed(ctx, s.log, err)
	}
	t := time.NewTicker(s.pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.closed:
			return fmt.Errorf("watch %s: store closed", s.path)
		case <-t.C:
		}
		if err := s.checkFiles(); err != nil && s.lost.Load() != nil {
			return fmt.Errorf("watch %s: %w", s.path, err)
		}
		if !started {
			// Changes made since Watch was called cannot be known.
			if pos, err = s.changeHead(ctx); err != nil {
				r.failed(ctx, s.log, err)
			} else {
				started = true
				r.read(s.log)
				onChange(keystore.Hash{})
			}
		} else if pos, err = s.readChanges(ctx, pos, onChange); err != nil {
			// pos stays where it was and the next poll retries: nothing
			// is lost while the file cannot be read, only late.
			r.failed(ctx, s.log, err)
		} else {
			r.read(s.log)
		}
		if s.afterRead != nil {
			s.afterRead()
		}
		// After the read, so that the changes made up to a newer version's
		// migration (the revocation of the command that migrated it) reach
		// the caller before it stops. (A version that cannot be read
		// stays 0: the read of the log says why.)
		var v int
		_ = s.db.QueryRowContext(ctx, `SELECT `+userVersion).Scan(&v)
		if err := s.checkSchema(v); err != nil {
			// The migration may have committed between the read above and
			// this one, with the changes of its own transaction: read once
			// more, so that those reach the caller too (a revocation left
			// unread would be served from the cache while the store is
			// refused).
			if started {
				_, _ = s.readChanges(ctx, pos, onChange)
			}
			return fmt.Errorf("watch %s: %w", s.path, err)
		}
	}
}

// readReport is what a Watch has told the log of its failures to read the
// change log: the first of a run of them, then at most once a minute while
// they go on, and when it reads again. Until then a change to a key (a
// revocation) reaches the caches of this process late, so an operator must
// hear of it; but a poll fails every 200 ms, which must not flood the log.
type readReport struct {
	warned   bool
	warnedAt time.Time
	failures int
}

func (r *readReport) failed(ctx context.Context, log *slog.Logger, err error) {
	if ctx.Err() != nil || log == nil {
		return
	}
	r.failures++
	if r.warned && time.Since(r.warnedAt) < time.Minute {
		return
	}
	r.warned, r.warnedAt = true, time.Now()
	log.Warn("key change feed: the change log cannot be read; until it is, a change to a key (a revocation) reaches this server only when the key's cache entry expires (cache.ttl)",
		"err", err, "failures", r.failures)
}

func (r *readReport) read(log *slog.Logger) {
	if !r.warned {
		return
	}
	log.Info("key change feed: reading the change log again; the changes missed meanwhile are read now", "failures", r.failures)
	*r = readReport{}
}

// mark is a watcher's position in the change log: the last change it has
// seen, with that change's time and hash, which tell the change from
// another given the same number after the log was taken back (a backup
// restored into the file through SQLite numbers the changes made since
// from the end of the backup's log). at and hash are zero where no change
// is there to compare: an empty log, or a position at the trim mark.
type mark struct {
	seq  int64
	at   int64
	hash []byte
}

// logEnd is the SQL of the log's end as a mark: its last change, or the
// trim mark if that is later (the log is empty). t is changes_trimmed, l the
// last change or NULLs.
const logEnd = `FROM changes_trimmed AS t LEFT JOIN changes AS l ON l.seq = (SELECT max(seq) FROM changes)`

// endOf returns the mark of the log's end given the trim mark and the last
// change read with logEnd.
func endOf(through int64, last sql.NullInt64, at sql.NullInt64, hash []byte) mark {
	if !last.Valid || last.Int64 < through {
		return mark{seq: through}
	}
	return mark{seq: last.Int64, at: at.Int64, hash: hash}
}

// changeHead returns the position after the last change logged.
func (s *Store) changeHead(ctx context.Context) (mark, error) {
	var through int64
	var last, at sql.NullInt64
	var hash []byte
	err := s.db.QueryRowContext(ctx, `SELECT t.through, l.seq, l.at, l.hash `+logEnd).Scan(&through, &last, &at, &hash)
	if err != nil {
		return mark{}, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	return endOf(through, last, at, hash), nil
}

// readChanges reports the changes after pos to onChange, preceded by the zero
// Hash if some of them were trimmed away, and returns the new position. A
// log that ends before pos, or whose change at pos is another or gone, was
// taken back (a backup restored into the file through SQLite), and the
// changes made since are numbered again from its end: the zero Hash, and the
// position moves to the log's end.
func (s *Store) readChanges(ctx context.Context, pos mark, onChange func(keystore.Hash)) (mark, error) {
	// One statement, so the trim mark, the log's end, the change at pos and
	// the rows are one snapshot.
	rows, err := s.db.QueryContext(ctx, `SELECT t.through, l.seq, l.at, l.hash, p.at, p.hash, c.seq, c.at, c.hash `+logEnd+`
		LEFT JOIN changes AS p ON p.seq = ?1
		LEFT JOIN changes AS c ON c.seq > ?1
		ORDER BY c.seq`, pos.seq)
	if err != nil {
		return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	var (
		through      int64
		last, lastAt sql.NullInt64
		lastHash     []byte
		posAt        sql.NullInt64
		posHash      []byte
		changes      []mark
	)
	for rows.Next() {
		var seq, at sql.NullInt64
		var b []byte
		if err := rows.Scan(&through, &last, &lastAt, &lastHash, &posAt, &posHash, &seq, &at, &b); err != nil {
			rows.Close()
			return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
		}
		if seq.Valid {
			changes = append(changes, mark{seq: seq.Int64, at: at.Int64, hash: b})
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	// onChange runs with no connection held, so it may call the Store.
	end := endOf(through, last, lastAt, lastHash)
	// A change at pos trimmed away is no sign: the trim mark says so.
	if end.seq < pos.seq || pos.hash != nil && pos.seq > through && (!posAt.Valid || posAt.Int64 != pos.at || !bytes.Equal(posHash, pos.hash)) {
		// The caches forget, but what the backup brings back is the
		// store's now: an operator must hear that keys revoked since
		// are live again.
		if s.log != nil {
			s.log.Warn("key change feed: the key store's change log went back, as when a backup is restored into it: every key is now as the backup has it, "+
				"and a key revoked after the backup was made is live again until it is revoked again", "path", s.path)
		}
		onChange(keystore.Hash{})
		return end, nil
	}
	if through > pos.seq {
		onChange(keystore.Hash{})
		pos = mark{seq: through}
	}
	for _, c := range changes {
		var h keystore.Hash
		if len(c.hash) == len(h) { // anything else stays the zero Hash: forget everything
			copy(h[:], c.hash)
		}
		onChange(h)
		pos = c
	}
	return pos, nil
}

// logChanges appends hashes to the change log and trims it.
func (s *Store) logChanges(ctx context.Context, tx *sql.Tx, hashes ...keystore.Hash) error {
	now := s.now().UnixNano()
	var last int64
	for _, h := range hashes {
		res, err := tx.ExecContext(ctx, `INSERT INTO changes (hash, at) VALUES (?, ?)`, h[:], now)
		if err != nil {
			return dbErr(err)
		}
		if last, err = res.LastInsertId(); err != nil {
			return dbErr(err)
		}
	}
	var old sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT max(seq) FROM changes WHERE at < ?`,
		now-s.keepChangesFor.Nanoseconds()).Scan(&old); err != nil {
		return dbErr(err)
	}
	cut := max(last-s.keepChanges, old.Int64)
	if cut <= 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM changes WHERE seq <= ?`, cut); err != nil {
		return dbErr(err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE changes_trimmed SET through = ?1 WHERE through < ?1`, cut); err != nil {
		return dbErr(err)
	}
	return nil
}
