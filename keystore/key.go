// Package keystore is the API-key model of extauthz: the key record, the key
// format and its checksum, hashing, the Store interface that backends
// implement, and the in-process cache that sits in front of a Store.
//
// It is not a backend: SQLite and Redis live in the subpackages keystore/sqlite
// and keystore/redis. It never holds a key's plaintext beyond the call that
// creates or checks it.
package keystore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultOwner is the owner of a key created without one.
const DefaultOwner = "default"

// Key is the stored record of an API key. It never contains the secret, and
// its JSON form (the names below, flat) is what every output shows.
type Key struct {
	ID          string         `json:"id"`
	Name        string         `json:"name"`
	Owner       string         `json:"owner"`
	Permissions []string       `json:"permissions"`
	RateLimit   RateLimit      `json:"rate_limit"` // unset = the configured default
	IPAllowlist []netip.Prefix `json:"ip_allowlist"`
	// Policies names the policies the key is valid under; empty means all
	// of them (see ValidatePolicies).
	Policies []string `json:"policies"`
	// Meta is the key's metadata: a few named strings that travel with its
	// decisions (Envoy's dynamic metadata, x-authz-meta-* headers where a
	// policy forwards them). See ValidateMeta for the bounds.
	Meta        map[string]string `json:"meta"`
	CreatedAt   time.Time         `json:"created_at"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	LastUsedAt  *time.Time        `json:"last_used_at"`
	RevokedAt   *time.Time        `json:"revoked_at"`
	RotatedFrom string            `json:"rotated_from,omitempty"`
	RotatedTo   string            `json:"rotated_to,omitempty"`
	// Lineage is the id of the first key of the key's line of rotations,
	// for a key rotated into ("" for one created). Every rotation passes
	// it on, and the rate limits of the whole line count together, in the
	// first key's buckets (RateBucket): a key that rotated itself would
	// otherwise start every successor on fresh counts, and keep the old
	// one spending its own through the grace period.
	Lineage string `json:"lineage,omitempty"`
}

// RateBucket is the bucket the key's rate limits count in: the first key of
// its line of rotations (Lineage), else the key itself.
func (k *Key) RateBucket() string {
	if k.Lineage != "" {
		return k.Lineage
	}
	return k.ID
}

// Status is where a key stands at one instant.
type Status int

const (
	// Live keys authenticate.
	Live Status = iota
	// Revoked keys were revoked by an operator.
	Revoked
	// Expired keys passed their expires_at (for a rotated key: the end of the grace period).
	Expired
)

// MarshalJSON writes every field of the record, always: empty lists as [],
// no metadata as {} and unset strings as null, so the output has the same shape whichever
// backend stored it and whatever the key has been through.
func (k Key) MarshalJSON() ([]byte, error) {
	type plain Key // without this method
	// The fields after plain keep their place at the end of the object,
	// where every output and the Redis store have always had them.
	out := struct {
		plain
		RateLimit   RateLimit `json:"rate_limit"`
		RotatedFrom *string   `json:"rotated_from"`
		RotatedTo   *string   `json:"rotated_to"`
		Lineage     *string   `json:"lineage"`
	}{plain: plain(k), RateLimit: k.RateLimit, RotatedFrom: nonEmpty(k.RotatedFrom), RotatedTo: nonEmpty(k.RotatedTo), Lineage: nonEmpty(k.Lineage)}
	if out.Permissions == nil {
		out.Permissions = []string{}
	}
	if out.IPAllowlist == nil {
		out.IPAllowlist = []netip.Prefix{}
	}
	if out.Policies == nil {
		out.Policies = []string{}
	}
	if out.Meta == nil {
		out.Meta = map[string]string{}
	}
	return json.Marshal(out)
}

func nonEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// String is how outputs name the status: "live", "revoked" or "expired".
func (s Status) String() string {
	switch s {
	case Revoked:
		return "revoked"
	case Expired:
		return "expired"
	}
	return "live"
}

// StatusAt reports whether k is live, revoked or expired at now. Revocation
// wins over expiry: a revoked key says so even after it would have expired.
func (k *Key) StatusAt(now time.Time) Status {
	if k.RevokedAt != nil {
		return Revoked
	}
	if k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) {
		return Expired
	}
	return Live
}

// CountsAt reports whether k counts against its owner's key limit at now:
// it is live and has not been rotated away (a key in its grace period
// still works, but its successor is the one that counts).
func (k *Key) CountsAt(now time.Time) bool {
	return k.RotatedTo == "" && k.StatusAt(now) == Live
}

// EndsAt is when k stopped, or will stop, being live: the earlier of its
// revocation and its expiry; nil while it has neither.
func (k *Key) EndsAt() *time.Time {
	switch {
	case k.RevokedAt == nil:
		return k.ExpiresAt
	case k.ExpiresAt != nil && k.ExpiresAt.Before(*k.RevokedAt):
		return k.ExpiresAt
	}
	return k.RevokedAt
}

// Clone returns a deep copy of k, so that a cached record can be handed out
// without callers sharing its slices.
func (k *Key) Clone() *Key {
	if k == nil {
		return nil
	}
	c := *k
	c.Permissions = slices.Clone(k.Permissions)
	c.IPAllowlist = slices.Clone(k.IPAllowlist)
	c.Policies = slices.Clone(k.Policies)
	c.Meta = maps.Clone(k.Meta)
	c.ExpiresAt = cloneTime(k.ExpiresAt)
	c.LastUsedAt = cloneTime(k.LastUsedAt)
	c.RevokedAt = cloneTime(k.RevokedAt)
	return &c
}

func cloneTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}

// CopiesOld reports whether next, a rotation's new key, carries what old
// grants and restricts as old is now: its name, owner, permissions, rate
// limit, allowlist, expiry, policies, metadata and line of rotations. Empty
// and nil lists are the same.
func CopiesOld(next, old *Key) bool {
	sameTime := func(a, b *time.Time) bool { return a == nil && b == nil || a != nil && b != nil && a.Equal(*b) }
	return next.Name == old.Name && next.Owner == old.Owner &&
		slices.Equal(next.Permissions, old.Permissions) &&
		next.RateLimit.String() == old.RateLimit.String() &&
		slices.Equal(next.IPAllowlist, old.IPAllowlist) &&
		sameTime(next.ExpiresAt, old.ExpiresAt) &&
		slices.Equal(next.Policies, old.Policies) &&
		maps.Equal(next.Meta, old.Meta) &&
		next.Lineage == old.RateBucket()
}

// Errors a Store returns. Callers compare with errors.Is.
var (
	// ErrNotFound: no key has that id or hash.
	ErrNotFound = errors.New("key not found")
	// ErrKeyLimit: the owner already has the maximum number of live keys.
	ErrKeyLimit = errors.New("key limit reached for owner")
	// ErrExists: a key with that id or hash already exists.
	ErrExists = errors.New("key already exists")
	// ErrNotLive: the operation needs a live key (rotating a revoked or expired key).
	ErrNotLive = errors.New("key is revoked or expired")
	// ErrRetired: the key was revoked or rotated away, and such a record
	// never changes again (a change could give it a new life).
	ErrRetired = errors.New("a revoked or rotated-away key never changes again")
	// ErrChanged: the key changed between the read a rotation copied it
	// from and the rotation itself (CopiesOld); nothing was stored.
	ErrChanged = errors.New("the key changed while it was being rotated")
	// ErrNewerRecord: the key's record has members a newer version of
	// extauthz wrote, which this version cannot copy faithfully into a
	// rotation's new key; nothing was stored. A server of that version can.
	ErrNewerRecord = errors.New("the key's record holds fields a newer version of extauthz wrote")
	// ErrNeedsNewer: the key's record names, in its "requires" member,
	// something a check must enforce that this version of extauthz does
	// not know (see CheckRequires). The key is not decided here: its checks
	// are refused until a server of the version that wrote it answers.
	ErrNeedsNewer = errors.New("the key's record requires a newer version of extauthz")
	// ErrPepperMismatch: the store's keys were hashed with another pepper
	// than this process's (see PepperMarker). No key made under one
	// pepper matches under another, so such a process answers every key
	// of the store as unknown, and a key it made would be unknown to the
	// others; it makes none.
	ErrPepperMismatch = errors.New("this process hashes keys with another pepper than the one the key store's keys were hashed with")
	// ErrUnavailable wraps a backend failure (connection refused, timeout):
	// the store could not answer, which is not the same as "no such key".
	ErrUnavailable = errors.New("key store unavailable")
	// ErrUnconfirmed: a change was stored and is in effect, but fewer of
	// the store's replicas than configured acknowledged it in time, so a
	// failover of the store could still undo it. Update returns it with the
	// changed key, and repeating the same change is safe and asks again;
	// Rotate returns it with the old key, and Manager.Rotate and
	// Manager.Create with the new key and its secret, which the caller must
	// still show.
	ErrUnconfirmed = errors.New("change stored, but not confirmed by enough replicas")
	// ErrLineTooLong: a key's line of rotations is too long to look
	// through for its earlier keys still in their grace period (which a
	// rate change and a keys:write caller's rotation need to know).
	ErrLineTooLong = errors.New("the key's line of rotations is too long to look through")
	// ErrUnreadableRecord: TouchLastUsed found records that do not read as
	// key records (written by hand, or damaged) and left them as they are;
	// it wrote the other ids' last use. Trying those ids again changes
	// nothing until their records are rewritten.
	ErrUnreadableRecord = errors.New("a stored record does not read as a key record")
)

// ListOptions selects and pages keys for Store.List.
type ListOptions struct {
	Owner          string // "" = every owner
	IncludeRevoked bool   // also revoked and expired keys (as of Now)
	Now            time.Time
	Limit          int    // ≤ 0 means 100
	After          string // cursor: return ids strictly greater than this one
}

// OwnerLimit asks Store.Update to keep an owner within its key limit: a
// change that makes a key count against the limit at At (CountsAt: it did
// not before the change, it does after) is refused with ErrKeyLimit when
// the owner already has Max keys that count at At. The check and the write
// are atomic. The zero OwnerLimit checks nothing.
type OwnerLimit struct {
	Max int
	At  time.Time
}

// CheckNeeded reports whether the change from before to after needs the
// owner's count checked: after counts at l.At and before did not.
func (l OwnerLimit) CheckNeeded(before, after *Key) bool {
	return l.Max > 0 && after.CountsAt(l.At) && !before.CountsAt(l.At)
}

// SweepOptions says what one Store.Sweep tidies.
type SweepOptions struct {
	// Now is the current time: keys expired by then leave the index that
	// List walks for live keys.
	Now time.Time
	// PurgeBefore deletes the keys that stopped being live (EndsAt) before
	// it: revoked keys, expired keys, and rotated-away keys whose grace
	// period ended. The zero time purges nothing.
	PurgeBefore time.Time
	// Batch bounds how many keys one call unlists, and how many it purges;
	// ≤ 0 means 500.
	Batch int
}

// DefaultSweepBatch is the Batch of a SweepOptions that gives none.
const DefaultSweepBatch = 500

// SweepResult is what one Store.Sweep did.
type SweepResult struct {
	Unlisted int  // expired keys taken out of the live listing
	Purged   int  // records deleted
	More     bool // a batch was full: there may be more to do now
}

// Store is where keys live. Implementations store only the hash of a key,
// never the plaintext, and are safe for concurrent use. Every change (Create,
// Update, Rotate) must be seen by Watch in every process sharing the store,
// and a change whose context names its writer (WithWriter) is made only
// while the writer's record is the one its authority was checked against,
// checked in the same atomic step as the write.
//
// Ids are ordered by creation (see NewID), so List pages in creation order
// with the last id of a page as the cursor.
type Store interface {
	// Lookup finds the key whose hash is h: ErrNotFound if none; an error
	// wrapping ErrUnavailable if the backend did not answer. A record that
	// requires what this version cannot enforce (CheckRequires) comes with
	// an error wrapping ErrNeedsNewer and the key as far as this version
	// reads it: not to decide a check by, but to find the key by (a leak
	// report revokes it all the same).
	Lookup(ctx context.Context, h Hash) (*Key, error)
	// Get finds a key by id.
	Get(ctx context.Context, id string) (*Key, error)
	// Create stores k under hash h. If maxPerOwner > 0 and k.Owner already has
	// that many keys live at k.CreatedAt (a line of rotations counting once
	// while a key of it is live: see Rotate), it stores nothing and returns
	// ErrKeyLimit. The check and the insert are atomic. A store that waits
	// for its replicas may return an error wrapping ErrUnconfirmed: stored,
	// but not yet safe from a failover.
	Create(ctx context.Context, k *Key, h Hash, maxPerOwner int) error
	// Update applies fn to the current record of id and stores the result
	// atomically (fn may be called more than once under contention; it must not
	// change ID, Owner or CreatedAt). fn returning an error aborts the update.
	// When the result would make the key count against its owner's limit
	// again (see OwnerLimit), the owner's count is checked in the same atomic
	// step: ErrKeyLimit, and nothing stored, if the owner is at limit.Max.
	// A store that waits for its replicas may return the changed key with
	// an error wrapping ErrUnconfirmed: stored, but not yet safe from a
	// failover.
	Update(ctx context.Context, id string, limit OwnerLimit, fn func(*Key) error) (*Key, error)
	// Rotate atomically stores next under hash h and updates the old key id:
	// rotated_to = next.ID, and expires_at = graceEnd unless it already expires
	// earlier. next.RotatedFrom must be id and next.Owner the old key's owner.
	// The old key must be live at next.CreatedAt and not rotated already
	// (ErrNotLive otherwise: rotating one key again and again would otherwise
	// mint live keys past maxPerOwner). A rotated-away key does not count
	// against maxPerOwner while its successor is live, so rotation never
	// fails with ErrKeyLimit; once the successor is revoked or has expired,
	// the old key counts again until its grace period ends (a line of
	// rotations counts once while a key of it is live). A
	// store that waits for its replicas may return the old key with an
	// error wrapping ErrUnconfirmed: stored, but not yet safe from a
	// failover.
	// next must copy the old key as it is when stored (CopiesOld): a copy
	// of an earlier read is ErrChanged, and nothing is stored, so that a
	// change made meanwhile (an admin narrowing the key) is never undone
	// by its successor.
	Rotate(ctx context.Context, id string, next *Key, h Hash, graceEnd time.Time) (old *Key, err error)
	// List returns keys ordered by id and the cursor of the next page ("" on
	// the last page). Listing live keys walks an index that revoked keys
	// leave when they are revoked and expired keys leave at the next Sweep,
	// so its cost is O(Limit) plus the keys that expired since then, however
	// many dead keys the store holds.
	List(ctx context.Context, opts ListOptions) (keys []*Key, next string, err error)
	// Sweep is the store's housekeeping, a bounded batch per call (see
	// SweepOptions): expired keys leave the live listing index, and keys dead
	// since before opts.PurgeBefore are deleted, record and indexes, after
	// which Get and Lookup answer ErrNotFound for them. Several processes may
	// sweep one store at once: each key is unlisted or purged once, and a key
	// changed meanwhile (revived before its purge) is left alone. It is not a
	// change: it does not reach Watch (a purged key was dead already).
	Sweep(ctx context.Context, opts SweepOptions) (SweepResult, error)
	// TouchLastUsed records last-use times in bulk (write-behind; ids that no
	// longer exist are ignored). It is not a change: it does not reach Watch.
	// An error wrapping ErrUnreadableRecord means the records it names were
	// skipped and every other id written: one damaged record does not stop
	// last use being recorded for all the others.
	TouchLastUsed(ctx context.Context, used map[string]time.Time) error
	// Watch calls onChange with the hash of every key that changes after Watch
	// is called, in every process sharing the store, until ctx is done. When
	// it may have missed changes (a gap in the change log, a reconnect) it
	// calls onChange with the zero Hash, meaning "forget everything"; so it
	// does once it has found where the change log stands, since what its
	// caller cached before then may have changed unseen. It returns when
	// ctx is done.
	Watch(ctx context.Context, onChange func(Hash)) error
	// Ping reports whether the backend answers.
	Ping(ctx context.Context) error
	// Close releases the backend's resources.
	Close() error
}

// Created is a key record with its plaintext, as the one response that
// creates or rotates a key shows it: the flat record plus "key", and
// "unconfirmed" when the store's replicas did not confirm a rotation.
type Created struct {
	*Key
	Secret string
	// Unconfirmed, when set, says that the change is in effect but not
	// yet safe from a failover of the store, and what to do (the message
	// of an ErrUnconfirmed error).
	Unconfirmed string
}

// MarshalJSON writes the record's fields, "key" and, when set,
// "unconfirmed". (Embedding *Key alone would promote Key.MarshalJSON and
// silently drop the secret.)
func (c Created) MarshalJSON() ([]byte, error) {
	rec, err := json.Marshal(c.Key)
	if err != nil {
		return nil, err
	}
	secret, err := json.Marshal(c.Secret)
	if err != nil {
		return nil, err
	}
	out := append(rec[:len(rec)-1:len(rec)-1], `,"key":`...)
	out = append(out, secret...)
	if c.Unconfirmed != "" {
		note, err := json.Marshal(c.Unconfirmed)
		if err != nil {
			return nil, err
		}
		out = append(append(out, `,"unconfirmed":`...), note...)
	}
	return append(out, '}'), nil
}

// requirementsKnown names what a record's "requires" member may list for
// this version to decide by the record: none yet.
//
// A record lists there each member a check must enforce that was added to
// the format after this version: a restriction a reader cannot see would
// otherwise be passed over by every replica that cannot read it, during a
// rolling upgrade (replicas of two versions share a store) or after a
// rollback. A version that adds such a member names it in "requires" and
// here, and a version that does not know the name refuses the key rather
// than decide by less than the record says. A member that restricts
// nothing (a description) is not listed, and older replicas pass it by.
var requirementsKnown = map[string]bool{}

// CheckRequires returns an error wrapping ErrNeedsNewer when names holds
// a requirement this version does not know.
func CheckRequires(names []string) error {
	var unknown []string
	for _, n := range names {
		if !requirementsKnown[n] {
			if len(unknown) == 4 {
				unknown = append(unknown, "...")
				break
			}
			unknown = append(unknown, strconv.Quote(n))
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	return fmt.Errorf("%w (%s)", ErrNeedsNewer, strings.Join(unknown, ", "))
}
