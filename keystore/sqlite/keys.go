package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// Lookup finds the key whose hash is h.
func (s *Store) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	if err := s.lostErr(); err != nil {
		return nil, fmt.Errorf("look up key hash %s: %w", shortHash(h), err)
	}
	var v int
	k, err := scanKey(s.lookup.QueryRowContext(ctx, h[:]), &v)
	if err == nil {
		err = s.checkSchema(v)
	}
	if err != nil {
		return nil, fmt.Errorf("look up key hash %s: %w", shortHash(h), err)
	}
	return k, nil
}

// Get finds the key with the given id.
func (s *Store) Get(ctx context.Context, id string) (*keystore.Key, error) {
	if err := s.lostErr(); err != nil {
		return nil, fmt.Errorf("get key %q: %w", id, err)
	}
	var v int
	k, err := scanKey(s.get.QueryRowContext(ctx, id), &v)
	if err == nil {
		err = s.checkSchema(v)
	}
	if err != nil {
		return nil, fmt.Errorf("get key %q: %w", id, err)
	}
	return k, nil
}

// Create stores k under hash h, unless its id or hash exists (ErrExists) or
// its owner already has maxPerOwner keys live at k.CreatedAt (ErrKeyLimit).
func (s *Store) Create(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int) error {
	return s.create(ctx, k, h, maxPerOwner, nil)
}

// CreateOnce is Create that keeps once in the table of the same name, in
// the same transaction (keystore.OnceCreator). Sweep forgets the rows past
// their time.
func (s *Store) CreateOnce(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int, once keystore.OnceRecord) error {
	return s.create(ctx, k, h, maxPerOwner, &once)
}

func (s *Store) create(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int, once *keystore.OnceRecord) error {
	if k == nil {
		return errors.New("create key: nil key")
	}
	r, err := encode(k)
	if err != nil {
		return fmt.Errorf("create key %q: %w", k.ID, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		if err := checkWriter(ctx, tx); err != nil {
			return err
		}
		if once != nil {
			if err := checkOnce(ctx, tx, k, *once); err != nil {
				return err
			}
		}
		if err := checkNew(ctx, tx, k.ID, h); err != nil {
			return err
		}
		if maxPerOwner > 0 {
			n, err := countLive(ctx, tx, k.Owner, r.createdAt, "")
			if err != nil {
				return err
			}
			if n >= maxPerOwner {
				return fmt.Errorf("owner %q has %d live keys: %w", k.Owner, n, keystore.ErrKeyLimit)
			}
		}
		if err := insert(ctx, tx, r, h); err != nil {
			return err
		}
		if once != nil {
			// A row of the token still there is past its time (checkOnce).
			_, err := tx.ExecContext(ctx, `INSERT INTO once (token, request, key_id, until) VALUES (?, ?, ?, ?)
				ON CONFLICT (token) DO UPDATE SET request = excluded.request, key_id = excluded.key_id, until = excluded.until`,
				once.Token[:], once.Request[:], k.ID, once.Until.UnixNano())
			if err != nil {
				return dbErr(err)
			}
		}
		return s.logChanges(ctx, tx, h)
	})
	var earlier *keystore.EarlierCreate
	if err != nil && !errors.As(err, &earlier) {
		return fmt.Errorf("create key %q: %w", k.ID, err)
	}
	return err
}

// checkOnce returns keystore.EarlierCreateOf the record of once's token, if
// there is one still in its time as of k's creation (the one clock of the
// create; Sweep deletes the rest).
func checkOnce(ctx context.Context, tx *sql.Tx, k *keystore.Key, once keystore.OnceRecord) error {
	var request []byte
	var id string
	err := tx.QueryRowContext(ctx, `SELECT request, key_id FROM once WHERE token = ? AND until > ?`,
		once.Token[:], k.CreatedAt.UnixNano()).Scan(&request, &id)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return dbErr(err)
	}
	var rh keystore.Hash
	if copy(rh[:], request) != len(rh) {
		return fmt.Errorf("create key %q: unreadable idempotency record", k.ID)
	}
	return keystore.EarlierCreateOf(k, once, id, rh)
}

// MarkPepper keeps the pepper mark in the marks table, written once. A
// store that has one is only read, so a process that starts does not wait
// for the write lock.
func (s *Store) MarkPepper(ctx context.Context, mark keystore.Hash) (keystore.Hash, error) {
	if err := s.lostErr(); err != nil {
		return keystore.Hash{}, fmt.Errorf("mark pepper: %w", err)
	}
	const read = `SELECT value FROM marks WHERE name = 'pepper'`
	var held []byte
	err := s.db.QueryRowContext(ctx, read).Scan(&held)
	if errors.Is(err, sql.ErrNoRows) {
		err = s.write(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, `INSERT INTO marks (name, value) VALUES ('pepper', ?) ON CONFLICT (name) DO NOTHING`, mark[:]); err != nil {
				return dbErr(err)
			}
			return dbErr(tx.QueryRowContext(ctx, read).Scan(&held))
		})
	}
	if err != nil {
		return keystore.Hash{}, fmt.Errorf("mark pepper: %w", dbErr(err))
	}
	var h keystore.Hash
	if len(held) != len(h) {
		return keystore.Hash{}, fmt.Errorf("mark pepper: %s's marks table holds a pepper mark of %d bytes, not %d; delete its row, and the next process to start writes its own", s.path, len(held), len(h))
	}
	copy(h[:], held)
	return h, nil
}

// Update applies fn to the stored record of id and stores the result, in one
// transaction; fn runs exactly once per successful call. fn must not change
// the id, owner or created_at. An error from fn is returned as it is. A
// result that counts against the owner's limit when the record did not is
// checked against limit in the same transaction (ErrKeyLimit).
func (s *Store) Update(ctx context.Context, id string, limit keystore.OwnerLimit, fn func(*keystore.Key) error) (*keystore.Key, error) {
	var updated *keystore.Key
	var fnErr error
	err := s.write(ctx, func(tx *sql.Tx) error {
		if err := checkWriter(ctx, tx); err != nil {
			return err
		}
		cur, h, err := getForWrite(ctx, tx, id)
		if err != nil {
			return err
		}
		next := cur.Clone()
		if fnErr = fn(next); fnErr != nil {
			return fnErr
		}
		if next.ID != cur.ID || next.Owner != cur.Owner || !next.CreatedAt.Equal(cur.CreatedAt) {
			return errors.New("the id, owner and created_at of a key cannot change")
		}
		r, err := encode(next)
		if err != nil {
			return err
		}
		if limit.CheckNeeded(cur, next) {
			at, err := nanos(limit.At)
			if err != nil {
				return fmt.Errorf("limit instant: %w", err)
			}
			// The key itself does not count at limit.At (it did not before).
			n, err := countLive(ctx, tx, next.Owner, at, next.ID)
			if err != nil {
				return err
			}
			if n >= limit.Max {
				return fmt.Errorf("owner %q has %d live keys: %w", next.Owner, n, keystore.ErrKeyLimit)
			}
		}
		if err := update(ctx, tx, r); err != nil {
			return err
		}
		if err := s.logChanges(ctx, tx, h); err != nil {
			return err
		}
		updated, _, err = getForWrite(ctx, tx, id)
		return err
	})
	if fnErr != nil {
		return nil, fnErr
	}
	if err != nil {
		return nil, fmt.Errorf("update key %q: %w", id, err)
	}
	return updated, nil
}

// Rotate stores next under hash h and winds down the key id: rotated_to
// names next, and it expires at graceEnd unless it expires earlier. The old
// key must be live at next.CreatedAt and not already rotated (ErrNotLive),
// and next must have its owner and name it in rotated_from. It returns the
// old key as stored.
func (s *Store) Rotate(ctx context.Context, id string, next *keystore.Key, h keystore.Hash, graceEnd time.Time) (*keystore.Key, error) {
	if next == nil {
		return nil, fmt.Errorf("rotate key %q: nil new key", id)
	}
	if next.RotatedFrom != id {
		return nil, fmt.Errorf("rotate key %q: the new key's rotated_from is %q", id, next.RotatedFrom)
	}
	r, err := encode(next)
	if err != nil {
		return nil, fmt.Errorf("rotate key %q: new key: %w", id, err)
	}
	graceNanos, err := nanos(graceEnd)
	if err != nil {
		return nil, fmt.Errorf("rotate key %q: end of grace period: %w", id, err)
	}
	var rotated *keystore.Key
	err = s.write(ctx, func(tx *sql.Tx) error {
		if err := checkWriter(ctx, tx); err != nil {
			return err
		}
		old, oldHash, err := getForWrite(ctx, tx, id)
		if err != nil {
			return err
		}
		if old.RotatedTo != "" {
			// A rotated key no longer counts against maxPerOwner; rotating
			// it again would mint live keys past the limit.
			return fmt.Errorf("already rotated to %s: %w", old.RotatedTo, keystore.ErrNotLive)
		}
		if st := old.StatusAt(next.CreatedAt); st != keystore.Live {
			return fmt.Errorf("the key is %s: %w", st, keystore.ErrNotLive)
		}
		if next.Owner != old.Owner {
			return fmt.Errorf("the new key's owner %q is not the old key's %q", next.Owner, old.Owner)
		}
		if !keystore.CopiesOld(next, old) {
			return keystore.ErrChanged
		}
		if err := checkNew(ctx, tx, next.ID, h); err != nil {
			return err
		}
		if err := insert(ctx, tx, r, h); err != nil {
			return err
		}
		expires := graceNanos
		if old.ExpiresAt != nil && old.ExpiresAt.Before(graceEnd) {
			expires = old.ExpiresAt.UnixNano()
		}
		if _, err := tx.ExecContext(ctx, `UPDATE keys SET rotated_to = ?, expires_at = ? WHERE id = ?`,
			next.ID, expires, id); err != nil {
			return dbErr(err)
		}
		if err := s.logChanges(ctx, tx, oldHash, h); err != nil {
			return err
		}
		rotated, _, err = getForWrite(ctx, tx, id)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("rotate key %q: %w", id, err)
	}
	return rotated, nil
}

// List returns keys in id order, a page at a time.
func (s *Store) List(ctx context.Context, opts keystore.ListOptions) ([]*keystore.Key, string, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = 100
	}
	// One row more than the page tells whether another page follows, so the
	// last page says so instead of the caller finding an empty one.
	fetch := int64(limit)
	if fetch < math.MaxInt64 {
		fetch++
	}
	if err := s.lostErr(); err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	query, args, err := listQuery(opts, fetch)
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", dbErr(err))
	}
	defer rows.Close()
	var keys []*keystore.Key
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, "", fmt.Errorf("list keys: %w", err)
		}
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, "", fmt.Errorf("list keys: %w", dbErr(err))
	}
	if int64(len(keys)) > int64(limit) {
		keys = keys[:limit]
		return keys, keys[limit-1].ID, nil
	}
	return keys, "", nil
}

// listQuery is the statement List runs for opts, fetching at most fetch
// rows. For live keys it reads only listed rows (the literal "listed = 1"
// lets SQLite use the partial indexes), so dead keys cost nothing.
func listQuery(opts keystore.ListOptions, fetch int64) (string, []any, error) {
	var where []string
	var args []any
	if !opts.IncludeRevoked {
		now := opts.Now
		if now.IsZero() {
			now = time.Now()
		}
		n, err := nanos(now)
		if err != nil {
			return "", nil, fmt.Errorf("now: %w", err)
		}
		where = append(where, `listed = 1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)`)
		args = append(args, n)
	}
	if opts.Owner != "" {
		where = append(where, `owner = ?`)
		args = append(args, opts.Owner)
	}
	where = append(where, `id > ?`)
	args = append(args, opts.After, fetch)
	return `SELECT ` + keyColumns + ` FROM keys WHERE ` + strings.Join(where, ` AND `) + ` ORDER BY id LIMIT ?`, args, nil
}

// touchBatch is how many keys' last_used_at one transaction of TouchLastUsed
// writes. A write holds the file's one write lock until it commits, and a
// server whose cache saw 100k keys in one period would otherwise hold it
// for the whole update (1.7 s measured): every create and revocation, in
// this process and in the CLI's, waited behind it. A batch's commit costs a
// sync of the log; a few hundred of them for 100k keys are spread over the
// update, with other writers let in between.
var touchBatch = 512

// touchedBatch, when set (tests), runs after each batch of TouchLastUsed
// has committed, outside the write lock.
var touchedBatch func()

// TouchLastUsed sets last_used_at of each id to its time, unless the
// stored one is later, a batch of ids per transaction. Unknown ids are
// ignored. It is not a change: it does not reach Watch.
func (s *Store) TouchLastUsed(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	// In id order, which is the order keys were made in, so that a batch
	// changes neighbouring rows and few pages: in the map's order each
	// batch of 512 rewrote pages all over the table, and 100k keys took
	// five times as long as in one transaction.
	ids := slices.Sorted(maps.Keys(used))
	for start := 0; start < len(ids); start += touchBatch {
		batch := ids[start:min(start+touchBatch, len(ids))]
		if err := s.touch(ctx, batch, used); err != nil {
			return fmt.Errorf("touch last use of %d keys (%d written): %w", len(used), start, err)
		}
		if touchedBatch != nil {
			touchedBatch()
		}
	}
	return nil
}

// touch writes the last use of ids in one transaction.
func (s *Store) touch(ctx context.Context, ids []string, used map[string]time.Time) error {
	return s.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx,
			`UPDATE keys SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)`)
		if err != nil {
			return dbErr(err)
		}
		defer st.Close()
		for _, id := range ids {
			n, err := nanos(used[id])
			if err != nil {
				return fmt.Errorf("key %q: %w", id, err)
			}
			if _, err := st.ExecContext(ctx, n, id); err != nil {
				return dbErr(err)
			}
		}
		return nil
	})
}

// write runs fn in one BEGIN IMMEDIATE transaction and commits it unless fn
// fails, on the files the store opened only. Waiting for this process's
// other writers ends at ctx's deadline: a revocation queued behind a long
// last-use write or sweep answers then, unavailable, instead of after it.
func (s *Store) write(ctx context.Context, fn func(*sql.Tx) error) error {
	select {
	case s.writeSlot <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("%w: write %s: waiting for this process's other writers: %w", keystore.ErrUnavailable, s.path, ctx.Err())
	}
	defer func() { <-s.writeSlot }()
	if err := s.checkFiles(); err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, `SELECT `+userVersion).Scan(&v); err != nil {
		return dbErr(err)
	}
	if err := s.checkSchema(v); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return dbErr(err)
	}
	return nil
}

// checkWriter returns an error wrapping ErrWriterChanged if ctx names the
// key a change is made by (keystore.WithWriter) and its record is no
// longer the one that key's authority was checked against. Read in the
// write's transaction, which holds the write lock, so a revocation is
// either before it (and refuses the change) or after the change.
func checkWriter(ctx context.Context, tx *sql.Tx) error {
	w := keystore.WriterOf(ctx)
	if w == nil {
		return nil
	}
	stored, _, err := getForWrite(ctx, tx, w.ID)
	switch {
	case errors.Is(err, keystore.ErrNotFound):
		stored = nil
	case err != nil:
		return err
	}
	if !keystore.StillWriter(w, stored) {
		return fmt.Errorf("writer %q: %w", w.ID, keystore.ErrWriterChanged)
	}
	return nil
}

// checkNew returns ErrExists if a key has the id or the hash.
func checkNew(ctx context.Context, tx *sql.Tx, id string, h keystore.Hash) error {
	var existing string
	err := tx.QueryRowContext(ctx, `SELECT id FROM keys WHERE id = ? OR hash = ? LIMIT 1`, id, h[:]).Scan(&existing)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil
	case err != nil:
		return dbErr(err)
	case existing == id:
		return fmt.Errorf("id %q is taken: %w", id, keystore.ErrExists)
	default:
		return fmt.Errorf("key %q has the same hash: %w", existing, keystore.ErrExists)
	}
}

// countLive counts the keys of owner that count against maxPerOwner at the
// instant at: live ones (neither revoked nor expired) that were not
// rotated away, and live ones that were but whose successor is no longer
// live (revoked, or expired after its expiry was moved earlier). A line of
// rotations counts once while a key of it is live: the successor stands
// for a key in its grace period only while the successor itself is live,
// or rotating with a long grace and revoking the new key, again and again,
// would leave any number of live keys that count nowhere.
func countLive(ctx context.Context, tx *sql.Tx, owner string, at int64, revived string) (int, error) {
	var n int
	// Listed rows only: the count does not grow with dead keys. The
	// successor is read by id, one row per key in a grace period. A key
	// being brought back (revived, "" for none) stands for its predecessor
	// already: the line counts once with it, as the key itself.
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM keys k
		WHERE listed = 1 AND owner = ?1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?2)
		AND (rotated_to = '' OR NOT EXISTS (SELECT 1 FROM keys s WHERE s.id = k.rotated_to
			AND s.revoked_at IS NULL AND (s.expires_at IS NULL OR s.expires_at > ?2)))
		AND (?3 = '' OR rotated_to <> ?3)`,
		owner, at, revived).Scan(&n)
	if err != nil {
		return 0, dbErr(err)
	}
	return n, nil
}

func getForWrite(ctx context.Context, tx *sql.Tx, id string) (*keystore.Key, keystore.Hash, error) {
	var h keystore.Hash
	var b []byte
	k, err := scanKey(tx.QueryRowContext(ctx, `SELECT `+keyColumns+`, hash FROM keys WHERE id = ?`, id), &b)
	if err != nil {
		return nil, h, err
	}
	if len(b) != len(h) {
		return nil, h, fmt.Errorf("key %q: stored hash has %d bytes, want %d", id, len(b), len(h))
	}
	copy(h[:], b)
	return k, h, nil
}
