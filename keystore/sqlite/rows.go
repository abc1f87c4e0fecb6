package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/extauthz/extauthz/keystore"
)

// row is a Key as the keys table stores it.
type row struct {
	id, name, owner, permissions, rateLimit, ipAllowlist string
	createdAt                                            int64
	expiresAt, lastUsedAt, revokedAt                     sql.NullInt64
	rotatedFrom, rotatedTo, lineage                      string
	policies, meta                                       string // JSON
}

func encode(k *keystore.Key) (row, error) {
	r := row{id: k.ID, name: k.Name, owner: k.Owner, rateLimit: k.RateLimit.String(),
		rotatedFrom: k.RotatedFrom, rotatedTo: k.RotatedTo, lineage: k.Lineage}
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
	// Unlike the lists above, no policies and no metadata have one form
	// each ([] and {}): a key has no other way to say "every policy".
	pol, err := json.Marshal(k.Policies)
	if err != nil || k.Policies == nil {
		pol = []byte("[]")
	}
	meta, err := json.Marshal(k.Meta)
	if err != nil || k.Meta == nil {
		meta = []byte("{}")
	}
	r.policies, r.meta = string(pol), string(meta)
	return r, nil
}

// Every write sets listed to "not revoked"; Sweep unlists expired keys.

func insert(ctx context.Context, tx *sql.Tx, r row, h keystore.Hash) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO keys (`+keyColumns+`, hash, listed)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.id, r.name, r.owner, r.permissions, r.rateLimit, r.ipAllowlist,
		r.createdAt, r.expiresAt, r.lastUsedAt, r.revokedAt, r.rotatedFrom, r.rotatedTo, r.policies, r.meta, r.lineage, h[:], !r.revokedAt.Valid)
	return dbErr(err)
}

func update(ctx context.Context, tx *sql.Tx, r row) error {
	_, err := tx.ExecContext(ctx, `UPDATE keys SET name = ?, permissions = ?, rate_limit = ?,
		ip_allowlist = ?, expires_at = ?, last_used_at = ?, revoked_at = ?, rotated_from = ?, rotated_to = ?,
		policies = ?, meta = ?, listed = ? WHERE id = ?`,
		r.name, r.permissions, r.rateLimit, r.ipAllowlist, r.expiresAt, r.lastUsedAt, r.revokedAt,
		r.rotatedFrom, r.rotatedTo, r.policies, r.meta, !r.revokedAt.Valid, r.id)
	return dbErr(err)
}

// scanKey reads a row of keyColumns, then extra, into a Key. No row is
// keystore.ErrNotFound.
func scanKey(sc interface{ Scan(...any) error }, extra ...any) (*keystore.Key, error) {
	var r row
	dst := append([]any{&r.id, &r.name, &r.owner, &r.permissions, &r.rateLimit, &r.ipAllowlist,
		&r.createdAt, &r.expiresAt, &r.lastUsedAt, &r.revokedAt, &r.rotatedFrom, &r.rotatedTo, &r.policies, &r.meta, &r.lineage}, extra...)
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
		Lineage:     r.lineage,
	}
	_ = k.RateLimit.UnmarshalText([]byte(r.rateLimit)) // never fails: a text that no longer parses is kept
	if err := json.Unmarshal([]byte(r.permissions), &k.Permissions); err != nil {
		return nil, fmt.Errorf("key %q: stored permissions: %w", r.id, err)
	}
	if err := json.Unmarshal([]byte(r.ipAllowlist), &k.IPAllowlist); err != nil {
		return nil, fmt.Errorf("key %q: stored ip_allowlist: %w", r.id, err)
	}
	if err := json.Unmarshal([]byte(r.policies), &k.Policies); err != nil {
		return nil, fmt.Errorf("key %q: stored policies: %w", r.id, err)
	}
	if err := json.Unmarshal([]byte(r.meta), &k.Meta); err != nil {
		return nil, fmt.Errorf("key %q: stored meta: %w", r.id, err)
	}
	if len(k.Policies) == 0 {
		k.Policies = nil
	}
	if len(k.Meta) == 0 {
		k.Meta = nil
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
		case sqlite3.SQLITE_IOERR_SHMSIZE:
			// "disk I/O error" says nothing of the cause, which is nearly
			// always a full disk: SQLite needs room for the -shm (32 KiB,
			// and more as the -wal grows) before it reads anything.
			return fmt.Errorf("%w: %w (the -shm file beside the database could not be grown: is the file system full?)",
				keystore.ErrUnavailable, err)
		}
	}
	return fmt.Errorf("%w: %w", keystore.ErrUnavailable, err)
}
