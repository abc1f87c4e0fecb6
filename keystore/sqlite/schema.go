package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"
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
	2: `
-- The policies a key is valid under (a JSON array of names; [] = every
-- policy) and its metadata (a JSON object of strings). Keys made before
-- them are valid under every policy and carry no metadata.
ALTER TABLE keys ADD COLUMN policies TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keys ADD COLUMN meta TEXT NOT NULL DEFAULT '{}';
`,
	3: `
-- The first key of a rotated key's line of rotations, whose rate-limit
-- counts the whole line shares ('' = the key's own: created, or rotated
-- before the column, whose line then counts from it).
ALTER TABLE keys ADD COLUMN lineage TEXT NOT NULL DEFAULT '';
`,
	4: `
-- Facts about the store as a whole, by name. 'pepper': the mark of the
-- pepper its keys are hashed with (see keystore.PepperMarker), 32 bytes.
CREATE TABLE marks (
	name  TEXT PRIMARY KEY,
	value BLOB NOT NULL
) STRICT;
`,
	5: `
-- The keys that creates with an idempotency key made (keystore.Once), so
-- that such a create repeated is answered with the key it made, not a
-- second one. token is keystore.OnceToken (the idempotency key itself is
-- not kept); a row is forgotten once past until (unix nanoseconds).
CREATE TABLE once (
	token   BLOB PRIMARY KEY CHECK (length(token) = 32),
	request BLOB NOT NULL CHECK (length(request) = 32),
	key_id  TEXT NOT NULL,
	until   INTEGER NOT NULL
) STRICT, WITHOUT ROWID;
CREATE INDEX once_by_until ON once (until);
`,
}

// keyColumns are the columns scanKey reads, in its order.
const keyColumns = `id, name, owner, permissions, rate_limit, ip_allowlist,
	created_at, expires_at, last_used_at, revoked_at, rotated_from, rotated_to, policies, meta, lineage`

// errNotAStore marks a file that is a database but not a key store.
var errNotAStore = errors.New("not an extauthz key store")

// errNotAFile marks a store path that names something other than a file
// (a symbolic link, a directory, a device).
var errNotAFile = errors.New("the key store must be a regular file")

// retryBusy runs fn, waiting out SQLITE_BUSY: when several processes open a
// brand-new file at once, the first connection's switch to WAL can fail with
// "database is locked" without the busy handler being consulted. Bounded by
// busyTimeout.
func retryBusy(fn func() error) error {
	deadline := time.Now().Add(busyTimeout)
	for {
		err := fn()
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

// querier is a connection pool or a transaction.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// schemaOf returns the schema version of the file q reads, after checking
// that the file is a key store this code can use or an empty database: a
// file with tables but no schema version, or one whose version's tables are
// missing, is another application's (errNotAStore).
func schemaOf(ctx context.Context, q querier) (int, error) {
	var v, objects, tables int
	// One statement, so that the version and the tables are of one
	// snapshot: read apart, on a new file that another process makes a key
	// store of in between, they would say version 0 with tables.
	if err := q.QueryRowContext(ctx, `SELECT (SELECT user_version FROM pragma_user_version),
		count(*), count(*) FILTER (WHERE type = 'table' AND name IN ('keys', 'changes', 'changes_trimmed'))
		FROM sqlite_schema`).Scan(&v, &objects, &tables); err != nil {
		return 0, dbErr(err)
	}
	switch {
	case v > schemaVersion || v < 0:
		return 0, fmt.Errorf("schema version %d: this extauthz knows versions up to %d; upgrade it", v, schemaVersion)
	case v == 0 && objects > 0:
		return 0, fmt.Errorf("%w: the database has tables of its own and no extauthz schema version (PRAGMA user_version is 0)", errNotAStore)
	case v > 0 && tables < 3:
		return 0, fmt.Errorf("%w: the database says schema version %d but lacks the tables keys, changes and changes_trimmed", errNotAStore, v)
	}
	return v, nil
}

// migrate brings the schema to schemaVersion, in one transaction so that
// processes opening a new file at once do not both create it. A file at
// schemaVersion is only read: a command that reads keys does not wait for
// the write lock.
func migrate(ctx context.Context, db *sql.DB) error {
	v, err := schemaOf(ctx, db)
	if err != nil || v == schemaVersion {
		return err
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return dbErr(err)
	}
	defer tx.Rollback()
	if v, err = schemaOf(ctx, tx); err != nil || v == schemaVersion { // another process may have migrated it meanwhile
		return err
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
