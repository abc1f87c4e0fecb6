// Package sqlite is the embedded key store: a keystore.Store kept in one
// SQLite file in WAL mode, for a single node. Several processes (the CLI and
// the servers) may share the file: every write is one BEGIN IMMEDIATE
// transaction, and every change is appended to a change log in the same
// transaction, which Watch polls, so a change made by any process reaches
// every other within the poll interval.
//
// It is not for several nodes: SQLite's locking is not reliable over network
// file systems. Use the Redis store there.
package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/extauthz/extauthz/keystore"
)

const (
	// schemaVersion is the PRAGMA user_version this code writes and reads.
	schemaVersion = 2

	// busyTimeout is how long a writer waits for another process's write
	// transaction before giving up.
	busyTimeout = 5 * time.Second

	// pollInterval is how often Watch reads the change log; well inside the
	// one second in which changes must reach every server (SPEC §4).
	pollInterval = 200 * time.Millisecond

	// The change log keeps at most keepChanges rows and none older than
	// keepChangesFor: a watcher further behind than that has been asleep,
	// and is told to forget everything.
	keepChanges    = 10_000
	keepChangesFor = time.Hour
)

// migrations[v] takes the schema from version v to v+1.
var migrations = []string{
	0: `
CREATE TABLE keys (
	id           TEXT PRIMARY KEY,
	hash         BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
	name         TEXT NOT NULL,
	owner        TEXT NOT NULL,
	permissions  TEXT NOT NULL,    -- JSON array of strings
	rate_limit   TEXT NOT NULL,
	ip_allowlist TEXT NOT NULL,    -- JSON array of CIDR strings
	created_at   INTEGER NOT NULL, -- times: unix nanoseconds, UTC
	expires_at   INTEGER,
	last_used_at INTEGER,
	revoked_at   INTEGER,
	rotated_from TEXT NOT NULL,
	rotated_to   TEXT NOT NULL
) STRICT;
CREATE INDEX keys_by_owner ON keys (owner, id);

-- The change log Watch polls: one row per changed hash, written in the
-- transaction that makes the change.
CREATE TABLE changes (
	seq  INTEGER PRIMARY KEY AUTOINCREMENT,
	hash BLOB NOT NULL,
	at   INTEGER NOT NULL
) STRICT;

-- One row: every change with seq <= through has been trimmed away, so a
-- watcher whose position is below it may have missed some.
CREATE TABLE changes_trimmed (through INTEGER NOT NULL) STRICT;
INSERT INTO changes_trimmed (through) VALUES (0);
`,
	1: `
-- listed = 1: the key may be live, so List walks it for live keys. Every
-- write sets it to "not revoked"; Sweep clears it once the key has expired.
-- The partial indexes below hold listed keys only, so listing live keys
-- never walks the dead ones, however many there are.
ALTER TABLE keys ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;
UPDATE keys SET listed = 0 WHERE revoked_at IS NOT NULL;
CREATE INDEX keys_listed ON keys (id) WHERE listed = 1;
CREATE INDEX keys_listed_by_owner ON keys (owner, id) WHERE listed = 1;
CREATE INDEX keys_listed_by_expiry ON keys (expires_at) WHERE listed = 1 AND expires_at IS NOT NULL;

-- When the key stopped, or stops, being live: the earlier of revoked_at and
-- expires_at (NULL while it has neither). Sweep purges by it.
ALTER TABLE keys ADD COLUMN ends_at INTEGER GENERATED ALWAYS AS
	(min(coalesce(revoked_at, expires_at), coalesce(expires_at, revoked_at))) VIRTUAL;
CREATE INDEX keys_by_end ON keys (ends_at) WHERE ends_at IS NOT NULL;
`,
}

// keyColumns are the columns scanKey reads, in its order.
const keyColumns = `id, name, owner, permissions, rate_limit, ip_allowlist,
	created_at, expires_at, last_used_at, revoked_at, rotated_from, rotated_to`

// Store is a keystore.Store on one SQLite file. Build it with Open; it is
// safe for concurrent use, and other Stores, in this process or others, may
// share its file.
type Store struct {
	path string // as given to Open, for error messages
	db   *sql.DB

	// writeMu queues this process's writers, so that they do not spin in
	// SQLite's busy handler against each other; busy_timeout still covers
	// the writers of other processes.
	writeMu sync.Mutex

	lookup *sql.Stmt
	get    *sql.Stmt

	closeOnce sync.Once
	closed    chan struct{} // closed by Close, which ends every Watch

	// Change-log settings; fields so that tests can shrink them.
	pollInterval   time.Duration
	keepChanges    int64
	keepChangesFor time.Duration
	now            func() time.Time // stamps change-log rows
}

var _ keystore.Store = (*Store)(nil)

// Open opens the key store in the SQLite file at path, creating the file
// (mode 0600) and its directory (0700) if needed, and the schema if the file
// is new. Errors name path; those that mean the file cannot be used wrap
// keystore.ErrUnavailable.
func Open(path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open sqlite key store: no path given")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// The driver reads what follows a '?' as connection parameters. An
	// absolute path also keeps names like ":memory:" or "file:x" from
	// meaning anything but a file.
	if strings.ContainsRune(abs, '?') {
		return nil, fmt.Errorf("open %s: the path must not contain '?'", path)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", path, keystore.ErrUnavailable, err)
	}
	// Create the file ourselves so that it is private; SQLite gives the -wal
	// and -shm files the same mode.
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", path, keystore.ErrUnavailable, err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", path, keystore.ErrUnavailable, err)
	}
	for _, p := range []string{abs, abs + "-wal", abs + "-shm"} {
		if err := makePrivate(p); err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}

	// Every connection of the pool gets these. synchronous=FULL: a key is on
	// disk once Create returns. _txlock=immediate: every read-write
	// transaction takes the write lock at BEGIN, so that a check and the write
	// that depends on it (maxPerOwner) are atomic across processes.
	dsn := abs + "?_txlock=immediate" +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", busyTimeout.Milliseconds()) +
		"&_pragma=journal_mode(WAL)" +
		"&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(ON)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Each connection has its own page cache; a bounded pool keeps a burst
	// of lookups from opening hundreds.
	conns := max(4, runtime.GOMAXPROCS(0))
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)

	s := &Store{
		path:           path,
		db:             db,
		closed:         make(chan struct{}),
		pollInterval:   pollInterval,
		keepChanges:    keepChanges,
		keepChangesFor: keepChangesFor,
		now:            time.Now,
	}
	if err := s.migrateRetrying(context.Background()); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if s.lookup, err = db.Prepare(`SELECT ` + keyColumns + ` FROM keys WHERE hash = ?`); err == nil {
		s.get, err = db.Prepare(`SELECT ` + keyColumns + ` FROM keys WHERE id = ?`)
	}
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", path, dbErr(err))
	}
	return s, nil
}

// makePrivate takes the group's and others' permissions off the file at p,
// if it exists. A file made by an older version or copied in with a loose
// umask would otherwise go on exposing every key's hash and record to the
// other users of the machine. Tightening rather than refusing: the file is
// ours and the fix is safe, and refusing would stop a working server at an
// upgrade. Only a file whose mode cannot be changed (not ours) is refused.
func makePrivate(p string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	perm := fi.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(p, perm&0o700); err != nil {
		return fmt.Errorf("%s has mode %04o, open to other users, and cannot be made private (chmod 600 it, as its owner): %w", p, perm, err)
	}
	return nil
}

// migrateRetrying runs migrate, waiting out SQLITE_BUSY: when several
// processes open a brand-new file at once, the first connection's switch to
// WAL can fail with "database is locked" without the busy handler being
// consulted. Bounded by busyTimeout.
func (s *Store) migrateRetrying(ctx context.Context) error {
	deadline := time.Now().Add(busyTimeout)
	for {
		err := s.migrate(ctx)
		if err == nil || !isBusy(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(time.Duration(10+rand.IntN(40)) * time.Millisecond)
	}
}

func isBusy(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "SQLITE_BUSY") || strings.Contains(msg, "database is locked")
}

// migrate brings the schema to schemaVersion, in one transaction so that
// processes opening a new file at once do not both create it.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err)
	}
	defer tx.Rollback()
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return dbErr(err)
	}
	if v == schemaVersion {
		return nil
	}
	if v > schemaVersion || v < 0 {
		return fmt.Errorf("schema version %d: this extauthz knows versions up to %d; upgrade it", v, schemaVersion)
	}
	for ; v < schemaVersion; v++ {
		if _, err := tx.ExecContext(ctx, migrations[v]); err != nil {
			return fmt.Errorf("migrate schema from version %d: %w", v, dbErr(err))
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion)); err != nil {
		return dbErr(err)
	}
	if err := tx.Commit(); err != nil {
		return dbErr(err)
	}
	return nil
}

// Close releases the database. Watch calls on this Store return. Calling
// Close again does nothing.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closed)
		for _, st := range []*sql.Stmt{s.lookup, s.get} {
			if st != nil {
				st.Close()
			}
		}
		if cerr := s.db.Close(); cerr != nil {
			err = fmt.Errorf("close %s: %w", s.path, cerr)
		}
	})
	return err
}

// Ping reports whether the file answers a query.
func (s *Store) Ping(ctx context.Context) error {
	var through int64
	if err := s.db.QueryRowContext(ctx, `SELECT through FROM changes_trimmed`).Scan(&through); err != nil {
		return fmt.Errorf("ping %s: %w", s.path, dbErr(err))
	}
	return nil
}

// Lookup finds the key whose hash is h.
func (s *Store) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	k, err := scanKey(s.lookup.QueryRowContext(ctx, h[:]))
	if err != nil {
		return nil, fmt.Errorf("look up key hash %s: %w", shortHash(h), err)
	}
	return k, nil
}

// Get finds the key with the given id.
func (s *Store) Get(ctx context.Context, id string) (*keystore.Key, error) {
	k, err := scanKey(s.get.QueryRowContext(ctx, id))
	if err != nil {
		return nil, fmt.Errorf("get key %q: %w", id, err)
	}
	return k, nil
}

// Create stores k under hash h, unless its id or hash exists (ErrExists) or
// its owner already has maxPerOwner keys live at k.CreatedAt (ErrKeyLimit).
func (s *Store) Create(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int) error {
	if k == nil {
		return errors.New("create key: nil key")
	}
	r, err := encode(k)
	if err != nil {
		return fmt.Errorf("create key %q: %w", k.ID, err)
	}
	err = s.write(ctx, func(tx *sql.Tx) error {
		if err := checkNew(ctx, tx, k.ID, h); err != nil {
			return err
		}
		if maxPerOwner > 0 {
			n, err := countLive(ctx, tx, k.Owner, r.createdAt)
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
		return s.logChanges(ctx, tx, h)
	})
	if err != nil {
		return fmt.Errorf("create key %q: %w", k.ID, err)
	}
	return nil
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
			n, err := countLive(ctx, tx, next.Owner, at)
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

// TouchLastUsed sets last_used_at of each id to its time, unless the
// stored one is later, in one transaction. Unknown ids are ignored. It is
// not a change: it does not reach Watch.
func (s *Store) TouchLastUsed(ctx context.Context, used map[string]time.Time) error {
	if len(used) == 0 {
		return nil
	}
	err := s.write(ctx, func(tx *sql.Tx) error {
		st, err := tx.PrepareContext(ctx,
			`UPDATE keys SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)`)
		if err != nil {
			return dbErr(err)
		}
		defer st.Close()
		for id, at := range used {
			n, err := nanos(at)
			if err != nil {
				return fmt.Errorf("key %q: %w", id, err)
			}
			if _, err := st.ExecContext(ctx, n, id); err != nil {
				return dbErr(err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("touch last use of %d keys: %w", len(used), err)
	}
	return nil
}

// Watch polls the change log and calls onChange with the hash of every key
// that any process changes after Watch is called, or with the zero Hash when
// it may have missed some. It returns nil when ctx is done, and an error
// when the Store is closed first.
func (s *Store) Watch(ctx context.Context, onChange func(keystore.Hash)) error {
	pos, err := s.changeHead(ctx)
	started := err == nil
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
// Hash if some of them were trimmed away, and returns the new position.
func (s *Store) readChanges(ctx context.Context, pos int64, onChange func(keystore.Hash)) (int64, error) {
	// One statement, so the trim mark and the rows are one snapshot.
	rows, err := s.db.QueryContext(ctx, `SELECT t.through, c.seq, c.hash
		FROM changes_trimmed AS t LEFT JOIN changes AS c ON c.seq > ?
		ORDER BY c.seq`, pos)
	if err != nil {
		return pos, fmt.Errorf("read change log of %s: %w", s.path, dbErr(err))
	}
	type change struct {
		seq  int64
		hash keystore.Hash
	}
	var through int64
	var changes []change
	for rows.Next() {
		var seq sql.NullInt64
		var b []byte
		if err := rows.Scan(&through, &seq, &b); err != nil {
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

// write runs fn in one BEGIN IMMEDIATE transaction and commits it unless fn
// fails.
func (s *Store) write(ctx context.Context, fn func(*sql.Tx) error) error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err)
	}
	defer tx.Rollback()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return dbErr(err)
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
// instant at: neither revoked, expired, nor rotated away.
func countLive(ctx context.Context, tx *sql.Tx, owner string, at int64) (int, error) {
	var n int
	// Listed rows only: the count does not grow with dead keys.
	err := tx.QueryRowContext(ctx, `SELECT count(*) FROM keys
		WHERE listed = 1 AND owner = ? AND revoked_at IS NULL AND rotated_to = '' AND (expires_at IS NULL OR expires_at > ?)`,
		owner, at).Scan(&n)
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

// row is a Key as the keys table stores it.
type row struct {
	id, name, owner, permissions, rateLimit, ipAllowlist string
	createdAt                                            int64
	expiresAt, lastUsedAt, revokedAt                     sql.NullInt64
	rotatedFrom, rotatedTo                               string
}

func encode(k *keystore.Key) (row, error) {
	r := row{id: k.ID, name: k.Name, owner: k.Owner, rateLimit: k.RateLimit.String(),
		rotatedFrom: k.RotatedFrom, rotatedTo: k.RotatedTo}
	if k.ID == "" {
		return r, errors.New("no id")
	}
	if k.CreatedAt.IsZero() {
		return r, errors.New("no created_at")
	}
	var err error
	if r.createdAt, err = nanos(k.CreatedAt); err != nil {
		return r, fmt.Errorf("created_at: %w", err)
	}
	for _, f := range []struct {
		name string
		t    *time.Time
		dst  *sql.NullInt64
	}{
		{"expires_at", k.ExpiresAt, &r.expiresAt},
		{"last_used_at", k.LastUsedAt, &r.lastUsedAt},
		{"revoked_at", k.RevokedAt, &r.revokedAt},
	} {
		if f.t == nil {
			continue
		}
		n, err := nanos(*f.t)
		if err != nil {
			return r, fmt.Errorf("%s: %w", f.name, err)
		}
		*f.dst = sql.NullInt64{Int64: n, Valid: true}
	}
	// JSON keeps nil and empty lists apart, so both round-trip.
	p, err := json.Marshal(k.Permissions)
	if err != nil {
		return r, fmt.Errorf("permissions: %w", err)
	}
	ips, err := json.Marshal(k.IPAllowlist)
	if err != nil {
		return r, fmt.Errorf("ip_allowlist: %w", err)
	}
	r.permissions, r.ipAllowlist = string(p), string(ips)
	return r, nil
}

// Every write sets listed to "not revoked"; Sweep unlists expired keys.

func insert(ctx context.Context, tx *sql.Tx, r row, h keystore.Hash) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO keys (`+keyColumns+`, hash, listed)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.id, r.name, r.owner, r.permissions, r.rateLimit, r.ipAllowlist,
		r.createdAt, r.expiresAt, r.lastUsedAt, r.revokedAt, r.rotatedFrom, r.rotatedTo, h[:], !r.revokedAt.Valid)
	return dbErr(err)
}

func update(ctx context.Context, tx *sql.Tx, r row) error {
	_, err := tx.ExecContext(ctx, `UPDATE keys SET name = ?, permissions = ?, rate_limit = ?,
		ip_allowlist = ?, expires_at = ?, last_used_at = ?, revoked_at = ?, rotated_from = ?, rotated_to = ?,
		listed = ? WHERE id = ?`,
		r.name, r.permissions, r.rateLimit, r.ipAllowlist, r.expiresAt, r.lastUsedAt, r.revokedAt,
		r.rotatedFrom, r.rotatedTo, !r.revokedAt.Valid, r.id)
	return dbErr(err)
}

// scanKey reads a row of keyColumns, then extra, into a Key. No row is
// keystore.ErrNotFound.
func scanKey(sc interface{ Scan(...any) error }, extra ...any) (*keystore.Key, error) {
	var r row
	dst := append([]any{&r.id, &r.name, &r.owner, &r.permissions, &r.rateLimit, &r.ipAllowlist,
		&r.createdAt, &r.expiresAt, &r.lastUsedAt, &r.revokedAt, &r.rotatedFrom, &r.rotatedTo}, extra...)
	if err := sc.Scan(dst...); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, keystore.ErrNotFound
		}
		return nil, dbErr(err)
	}
	k := &keystore.Key{
		ID:          r.id,
		Name:        r.name,
		Owner:       r.owner,
		CreatedAt:   time.Unix(0, r.createdAt).UTC(),
		ExpiresAt:   timePtr(r.expiresAt),
		LastUsedAt:  timePtr(r.lastUsedAt),
		RevokedAt:   timePtr(r.revokedAt),
		RotatedFrom: r.rotatedFrom,
		RotatedTo:   r.rotatedTo,
	}
	_ = k.RateLimit.UnmarshalText([]byte(r.rateLimit)) // never fails: a text that no longer parses is kept
	if err := json.Unmarshal([]byte(r.permissions), &k.Permissions); err != nil {
		return nil, fmt.Errorf("key %q: stored permissions: %w", r.id, err)
	}
	if err := json.Unmarshal([]byte(r.ipAllowlist), &k.IPAllowlist); err != nil {
		return nil, fmt.Errorf("key %q: stored ip_allowlist: %w", r.id, err)
	}
	return k, nil
}

func timePtr(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := time.Unix(0, n.Int64).UTC()
	return &t
}

// The instants that unix nanoseconds in an int64 can hold: 1677 to 2262.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// nanos returns t in unix nanoseconds, or an error if it does not fit.
func nanos(t time.Time) (int64, error) {
	if t.Before(minTime) || t.After(maxTime) {
		return 0, fmt.Errorf("time %s is outside the years 1678 to 2261", t.UTC().Format(time.RFC3339))
	}
	return t.UnixNano(), nil
}

// shortHash names a hash in error messages without spelling all of it.
func shortHash(h keystore.Hash) string { return h.String()[:12] }

// dbErr classifies a database error: a uniqueness violation means the key
// exists; anything else means the store could not answer.
func dbErr(err error) error {
	if err == nil {
		return nil
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() {
		case sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
			return fmt.Errorf("%w: %w", keystore.ErrExists, err)
		}
	}
	return fmt.Errorf("%w: %w", keystore.ErrUnavailable, err)
}
