package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// Watch polls the change log and calls onChange with the hash of every key
// that any process changes after Watch is called, or with the zero Hash when
// it may have missed some: first of all once it has found where the log
// ends, since what changed before that is unknown to it and its caller may
// have cached keys already. It returns nil when ctx is done, and an error
// when the Store is closed first, or its files were removed or replaced
// (checkFiles).
func (s *Store) Watch(ctx context.Context, onChange func(keystore.Hash)) error {
	pos, err := s.changeHead(ctx)
	started := err == nil
	if started {
		onChange(keystore.Hash{})
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
		if err := s.checkFiles(); err != nil && s.lostErr() != nil {
			return fmt.Errorf("watch %s: %w", s.path, err)
		}
		if !started {
			// Changes made since Watch was called cannot be known.
			if pos, err = s.changeHead(ctx); err != nil {
				continue
			}
			started = true
			onChange(keystore.Hash{})
			continue
		}
		// On an error, pos stays where it was and the next poll retries:
		// nothing is lost while the file cannot be read.
		pos, _ = s.readChanges(ctx, pos, onChange)
	}
}

// changeHead returns the position after the last change logged.
func (s *Store) changeHead(ctx context.Context) (int64, error) {
	var head int64
	err := s.db.QueryRowContext(ctx,
		`SELECT max(coalesce((SELECT max(seq) FROM changes), 0), (SELECT through FROM changes_trimmed))`).Scan(&head)
	if err != nil {
		return 0, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	return head, nil
}

// readChanges reports the changes after pos to onChange, preceded by the zero
// Hash if some of them were trimmed away, and returns the new position. A
// log that ends before pos was taken back (a backup restored into the file
// through SQLite): the changes made since are numbered again from its end,
// so the zero Hash, and the position moves back to that end.
func (s *Store) readChanges(ctx context.Context, pos int64, onChange func(keystore.Hash)) (int64, error) {
	// One statement, so the trim mark, the log's end and the rows are one
	// snapshot.
	rows, err := s.db.QueryContext(ctx, `SELECT t.through, coalesce((SELECT max(seq) FROM changes), 0), c.seq, c.hash
		FROM changes_trimmed AS t LEFT JOIN changes AS c ON c.seq > ?
		ORDER BY c.seq`, pos)
	if err != nil {
		return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	type change struct {
		seq  int64
		hash keystore.Hash
	}
	var through, last int64
	var changes []change
	for rows.Next() {
		var seq sql.NullInt64
		var b []byte
		if err := rows.Scan(&through, &last, &seq, &b); err != nil {
			rows.Close()
			return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
		}
		if seq.Valid {
			var c change
			c.seq = seq.Int64
			if len(b) == len(c.hash) { // anything else stays the zero Hash: forget everything
				copy(c.hash[:], b)
			}
			changes = append(changes, c)
		}
	}
	err = rows.Err()
	rows.Close()
	if err != nil {
		return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	// onChange runs with no connection held, so it may call the Store.
	if end := max(through, last); end < pos {
		onChange(keystore.Hash{})
		pos = end
	}
	if through > pos {
		onChange(keystore.Hash{})
		pos = through
	}
	for _, c := range changes {
		onChange(c.hash)
		pos = c.seq
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
