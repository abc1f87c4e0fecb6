// Package redis is the Redis backend of the key store: a keystore.Store
// shared by every extauthz replica, on a standalone server, Sentinel or
// Redis Cluster, plus Dial, which builds the go-redis client that the key
// store, the Redis rate limiter and the audit sink share.
//
// It is not a cache (keystore.Cache sits in front of it) and not a rate
// limiter (ratelimit has its own Redis keys, spread across the cluster).
//
// The files: store.go, the layout, a lookup and the changes (create,
// update, rotate); scripts.go, the Lua that makes each change atomic;
// list.go, listing and Sweep with the indexes they walk; lastused.go, the
// write-behind of last use; record.go, a record's encoding and index
// entries; watch.go, the change stream; moving.go, calls that meet a
// Cluster slot on the move; dial.go, the client.
package redis

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/keystore"
)

// Key layout, all under the caller's prefix (e.g. "extauthz:"):
//
//	<prefix>{keys}:h:<hash hex>      string: the key record as JSON (id included)
//	<prefix>{keys}:id:<id>           string: the hash hex of that id's record
//	<prefix>{keys}:all               sorted set of every id, score 0 (ordered by id)
//	<prefix>{keys}:owner:<owner>     sorted set of the owner's ids, score 0
//	<prefix>{keys}:live:<owner>      sorted set of the owner's ids that are neither
//	                                 revoked nor rotated away, scored by expiry (µs)
//	<prefix>{keys}:grace:<owner>     sorted set of "<id> <successor id>" for the owner's keys
//	                                 rotated away and not revoked, scored by the end of
//	                                 their grace period (µs): one counts against the
//	                                 owner's limit once its successor is no longer live
//	<prefix>{keys}:graceids:<owner>  the same keys' ids alone, with the same scores
//	<prefix>{keys}:gracebuilt        how far Sweep has put the keys rotated away before
//	                                 the grace sets existed into them: "build <last id>",
//	                                 then "done"
//	<prefix>{keys}:open              sorted set (score 0, by id) of the ids List walks for
//	                                 live keys: not revoked, not unlisted by Sweep
//	<prefix>{keys}:open:<owner>      the same for one owner
//	<prefix>{keys}:expiring          sorted set of "<id> <owner>" for the open keys that
//	                                 have an expiry, scored by it (µs): what Sweep unlists
//	<prefix>{keys}:ends              sorted set of "<id> <owner>" for every key that has
//	                                 stopped or will stop being live, scored by when (µs;
//	                                 the earlier of revoked_at and expires_at): what
//	                                 Sweep purges
//	<prefix>{keys}:index             string: "2" once open, expiring and ends cover every
//	                                 key (a store written before they existed is indexed
//	                                 by Sweep; until then List walks every id)
//	<prefix>{keys}:changes           stream of changes, one field h = hash hex
//	<prefix>{keys}:pepper            string: the pepper mark (see keystore.PepperMarker), hex
//	<prefix>{keys}:once:<token hex>  string: "<request hex> <id>", the key a create with an
//	                                 idempotency key made (keystore.Once); expires after
//	                                 keystore.OnceWindow
//
// Every name carries the same hash tag, {keys}, so on Redis Cluster all key
// metadata lives in one slot, on one primary. That is deliberate. Metadata
// is small (a few hundred bytes a key) and read-mostly: replicas read it
// through their in-process cache and hear about changes from the stream.
// What matters for it is that create-with-limit-check, rotate and update are
// single atomic Lua scripts, and a script can only touch keys of one slot.
// Spreading the records over slots would buy nothing but the loss of that
// atomicity. The hot writes, the rate-limit counters, live elsewhere and are
// spread over the cluster by key (ratelimit/redis).
//
// Lookup, the only call on the request path, is one GET. Ids sort by
// creation time (keystore.NewID), so List pages through the id sets with
// ZRANGE BYLEX, which needs every score to be equal. Listing live keys walks
// the open sets, which a revoked key leaves when it is revoked and an
// expired one at the next Sweep, so dead keys cost a listing nothing. The
// members of expiring and ends carry the owner so that Sweep can name the
// owner's sets without reading records. Ids and owners hold no spaces.
//
// Records are JSON with the field names of keystore.Key. Only hashes are
// stored, never a key.
type layout struct{ base string } // "<prefix>{keys}:"

func (l layout) record(hexHash string) string { return l.base + "h:" + hexHash }
func (l layout) id(id string) string          { return l.base + "id:" + id }
func (l layout) all() string                  { return l.base + "all" }
func (l layout) owner(owner string) string    { return l.base + "owner:" + owner }
func (l layout) live(owner string) string     { return l.base + "live:" + owner }
func (l layout) grace(owner string) string    { return l.base + "grace:" + owner }
func (l layout) graceIDs(owner string) string { return l.base + "graceids:" + owner }
func (l layout) changes() string              { return l.base + "changes" }
func (l layout) open() string                 { return l.base + "open" }
func (l layout) openOf(owner string) string   { return l.base + "open:" + owner }
func (l layout) expiring() string             { return l.base + "expiring" }
func (l layout) ends() string                 { return l.base + "ends" }
func (l layout) index() string                { return l.base + "index" }
func (l layout) graceBuilt() string           { return l.base + "gracebuilt" }
func (l layout) pepper() string               { return l.base + "pepper" }
func (l layout) once(token string) string     { return l.base + "once:" + token }

// indexVersion is the value of the index key once the listing indexes
// cover every key.
const indexVersion = "2"

const (
	// changesMaxLen caps the change stream (approximately, MAXLEN ~). A
	// watcher more than this many changes behind sees a gap and forgets
	// everything, which is correct, only slower.
	changesMaxLen = 10000
	// updateAttempts bounds the optimistic retries of Update, Rotate and
	// TouchLastUsed. Each round of conflicts lets at least one writer through,
	// so this many concurrent writers of one record all succeed.
	updateAttempts = 50
	// touchBatch is the number of records one TouchLastUsed script writes.
	touchBatch = 256
)

// Store is a keystore.Store on Redis. Build it with New; it is safe for
// concurrent use.
type Store struct {
	client goredis.UniversalClient
	keys   layout
	err    error // a bad prefix: every call returns it

	// indexed: the index key said indexVersion when last read (List reads
	// it until it does; Sweep reads it afresh every time).
	indexed atomic.Bool

	confirm Confirm
	log     *slog.Logger // the change feed's failures; nil logs nothing

	mu       sync.Mutex
	closed   bool
	done     chan struct{} // closed by Close: running Watch calls return
	watchers sync.WaitGroup
}

var _ keystore.Store = (*Store)(nil)

// New returns a Store that keeps its keys in client under prefix (for
// example "extauthz:"). It does not take ownership of client: other users
// (the rate limiter) share it, and whoever dialed it closes it after
// closing the Store.
//
// The prefix must not contain '{' or '}', which would change the Cluster
// hash tag (see CheckPrefix); with such a prefix every method returns an
// error.
func New(client goredis.UniversalClient, prefix string, opts ...Option) *Store {
	s := &Store{client: client, keys: layout{base: prefix + "{keys}:"}, done: make(chan struct{})}
	for _, o := range opts {
		o(s)
	}
	switch {
	case client == nil:
		s.err = errors.New("redis store: no client")
	case s.confirm.Replicas < 0 || s.confirm.Replicas > 0 && s.confirm.Timeout <= 0:
		s.err = fmt.Errorf("redis store: confirming changes needs a replica count ≥ 0 and, with replicas, a positive timeout (have %d, %s)", s.confirm.Replicas, s.confirm.Timeout)
	default:
		s.err = CheckPrefix(prefix)
	}
	return s
}

// An Option changes how New's Store works.
type Option func(*Store)

// Confirm says how many replicas must acknowledge a change to an existing
// key (Update: revoking, expiring, changing it) before the change is
// reported done, and how long to wait for them. Redis replicates
// asynchronously: a failover promotes a replica that may not have received
// the primary's last writes, and a revocation lost that way makes the key
// work again. Replicas 0 (the default) does not wait.
//
// Rotations and creates are confirmed too. A rotation lost in a failover
// would leave the old key without the end of its grace period, working for
// good; a create lost in one leaves its client a secret that every check
// refuses (it fails closed, but the key's holder was told it worked). As
// both hand out a secret once, an unconfirmed one still stands and reports
// success with its error: the caller must show the secret.
type Confirm struct {
	Replicas int
	Timeout  time.Duration
}

// ConfirmChanges makes Create, Update and Rotate wait for c.Replicas
// replicas, for up to c.Timeout, after storing a change (Redis's WAIT). If
// fewer acknowledge it in time, they return an error wrapping
// keystore.ErrUnconfirmed (Update with the changed key, Rotate with the old
// one): the change stands on the primary (every server already applies it,
// through the change feed). Repeating an update asks the replicas again; a
// create or a rotation cannot be repeated, but any later change to a key
// that is confirmed confirms it too, as a replica takes the primary's
// writes in order and all key records live on one primary.
func ConfirmChanges(c Confirm) Option { return func(s *Store) { s.confirm = c } }

// LogTo makes Watch log to l when the change feed fails, and when it reads
// changes again. While it fails, a change reaches the caller's cache only
// when the cache forgets everything or its entry expires, so an operator
// must hear of it: a feed that never works (an ACL without XREAD) would
// otherwise pass unnoticed, every revocation taking up to the cache's TTL.
func LogTo(l *slog.Logger) Option { return func(s *Store) { s.log = l } }

// CheckPrefix reports whether prefix can start the store's key names. It
// may be empty; it must not contain the hash-tag braces.
func CheckPrefix(prefix string) error {
	if strings.ContainsAny(prefix, "{}") {
		return fmt.Errorf("store.redis: prefix %q must not contain { or } (they would break the Cluster hash tag)", prefix)
	}
	return nil
}

// unavailable wraps a go-redis failure so that callers see
// keystore.ErrUnavailable (and can serve from a stale cache) while the
// cause stays in the message and in the chain.
func unavailable(op string, err error) error {
	return fmt.Errorf("redis %s: %w: %w", op, keystore.ErrUnavailable, err)
}

// readFailed is a failed read of one record: unavailable, unless Redis
// answered that the record is held as another type than a string (written
// by hand, or by something else that shares the prefix). That is an answer
// about this record, as a record that does not decode is, and no outage:
// taken for one, the cache would serve what it held of the key stale, and a
// few such lookups would open its breaker for every key.
func readFailed(op string, err error) error {
	if isWrongType(err) {
		return fmt.Errorf("redis %s: the record is not a string: %w", op, err)
	}
	return unavailable(op, err)
}

// isWrongType reports whether err is Redis's WRONGTYPE reply.
func isWrongType(err error) bool {
	var reply goredis.Error
	return errors.As(err, &reply) && strings.HasPrefix(reply.Error(), "WRONGTYPE ")
}

func (s *Store) check() error {
	if s.err != nil {
		return s.err
	}
	select {
	case <-s.done:
		return errors.New("redis store: closed")
	default:
		return nil
	}
}

// Lookup finds the key whose hash is h with a single GET. A record that
// requires what this version cannot enforce is keystore.ErrNeedsNewer
// (with the key, as the Store interface says).
func (s *Store) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	raw, err := s.client.Get(ctx, s.keys.record(h.String())).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, keystore.ErrNotFound
	}
	if err != nil {
		return nil, readFailed("lookup", err)
	}
	k, err := decodeForCheck(raw)
	if err != nil {
		// With ErrNeedsNewer, k is the key as far as this version reads it.
		return k, fmt.Errorf("redis lookup: %w", err)
	}
	return k, nil
}

// Get finds a key by id.
func (s *Store) Get(ctx context.Context, id string) (*keystore.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	k, _, _, err := s.read(ctx, id)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// read returns the record of id, its hash hex and the raw JSON that
// Update-style scripts compare against.
func (s *Store) read(ctx context.Context, id string) (*keystore.Key, string, string, error) {
	if id == "" {
		return nil, "", "", keystore.ErrNotFound
	}
	hexHash, err := s.client.Get(ctx, s.keys.id(id)).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, "", "", keystore.ErrNotFound
	}
	if err != nil {
		return nil, "", "", readFailed(fmt.Sprintf("get %q", id), err)
	}
	raw, err := s.client.Get(ctx, s.keys.record(hexHash)).Result()
	if errors.Is(err, goredis.Nil) {
		return nil, "", "", keystore.ErrNotFound
	}
	if err != nil {
		return nil, "", "", readFailed(fmt.Sprintf("get %q", id), err)
	}
	k, err := decode(raw)
	if err != nil {
		return nil, "", "", fmt.Errorf("redis get %q: %w", id, err)
	}
	return k, hexHash, raw, nil
}

// GetForCheck is Get for a key about to act: a record that requires what
// this version cannot enforce is keystore.ErrNeedsNewer, with the key, as
// from Lookup.
func (s *Store) GetForCheck(ctx context.Context, id string) (*keystore.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	_, _, raw, err := s.read(ctx, id)
	if err != nil {
		return nil, err
	}
	k, err := decodeForCheck(raw)
	if err != nil {
		return k, fmt.Errorf("redis get %q: %w", id, err)
	}
	return k, nil
}

var _ keystore.CheckedGetter = (*Store)(nil)

// Create stores k under h, atomically with the owner's limit check.
func (s *Store) Create(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int) error {
	return s.create(ctx, k, h, maxPerOwner, nil)
}

// CreateOnce is Create that keeps once under its token until once.Until,
// written by the same script (keystore.OnceCreator).
func (s *Store) CreateOnce(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int, once keystore.OnceRecord) error {
	return s.create(ctx, k, h, maxPerOwner, &once)
}

func (s *Store) create(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int, once *keystore.OnceRecord) error {
	if err := s.check(); err != nil {
		return err
	}
	if k == nil || k.ID == "" {
		return errors.New("redis create: key has no id")
	}
	if h.IsZero() {
		return fmt.Errorf("redis create %s: zero hash", k.ID)
	}
	rec := normalize(k)
	raw, err := encode(rec)
	if err != nil {
		return fmt.Errorf("redis create %s: %w", k.ID, err)
	}
	hexHash := h.String()
	keys := []string{
		s.keys.record(hexHash), s.keys.id(rec.ID), s.keys.all(),
		s.keys.owner(rec.Owner), s.keys.live(rec.Owner), s.keys.changes(),
		s.keys.open(), s.keys.openOf(rec.Owner), s.keys.expiring(), s.keys.ends(), s.keys.index(),
		s.keys.grace(rec.Owner), s.keys.graceIDs(rec.Owner),
	}
	ix := indexOf(rec)
	args := []any{raw, hexHash, rec.ID, max(maxPerOwner, 0), micros(rec.CreatedAt), liveScore(rec), changesMaxLen,
		ix.listed, ix.expiry, ix.end, ix.member, indexVersion}
	if once != nil {
		ms := once.Until.Sub(rec.CreatedAt).Milliseconds() // Redis's clock from here on
		if ms <= 0 {
			return fmt.Errorf("redis create %s: the idempotency key's record ends in the past", rec.ID)
		}
		keys = append(keys, s.keys.once(once.Token.String()))
		args = append(args, once.Request.String()+" "+rec.ID, ms)
	}
	res, confirmed, err := s.change(ctx, createScript, createByWriter, confirmCreate, "", "", keys, args...)
	if err != nil {
		return changeFailed("create "+rec.ID, err)
	}
	if was, ok := strings.CutPrefix(res, "ONCE "); ok && once != nil {
		request, id, ok := strings.Cut(was, " ")
		var rh keystore.Hash
		if !ok || hex.DecodedLen(len(request)) != len(rh) {
			return fmt.Errorf("redis create %s: unreadable idempotency record %q", rec.ID, was)
		}
		if _, err := hex.Decode(rh[:], []byte(request)); err != nil {
			return fmt.Errorf("redis create %s: unreadable idempotency record %q", rec.ID, was)
		}
		return keystore.EarlierCreateOf(rec, *once, id, rh)
	}
	switch res {
	case "OK":
		return confirmed
	case "EXISTS":
		return fmt.Errorf("redis create %s: %w", rec.ID, keystore.ErrExists)
	case "LIMIT":
		return fmt.Errorf("redis create %s: owner %q: %w", rec.ID, rec.Owner, keystore.ErrKeyLimit)
	}
	return fmt.Errorf("redis create %s: unexpected script reply %q", rec.ID, res)
}

// Update applies fn to the record of id and writes the result if nobody
// changed the record meanwhile, retrying otherwise. The owner's count, when
// limit asks for it, is checked in the script that writes.
func (s *Store) Update(ctx context.Context, id string, limit keystore.OwnerLimit, fn func(*keystore.Key) error) (*keystore.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	for attempt := range updateAttempts {
		cur, hexHash, oldRaw, err := s.read(ctx, id)
		if err != nil {
			return nil, err
		}
		next := cur.Clone()
		if err := fn(next); err != nil {
			return nil, err
		}
		if next.ID != cur.ID || next.Owner != cur.Owner || !next.CreatedAt.Equal(cur.CreatedAt) {
			return nil, fmt.Errorf("redis update %s: id, owner and created_at cannot change", id)
		}
		next = normalize(next)
		newRaw, err := encode(next)
		if err == nil {
			newRaw, err = keepUnknown(oldRaw, newRaw)
		}
		if err != nil {
			return nil, fmt.Errorf("redis update %s: %w", id, err)
		}
		keys := []string{s.keys.record(hexHash), s.keys.live(next.Owner), s.keys.changes(),
			s.keys.open(), s.keys.openOf(next.Owner), s.keys.expiring(), s.keys.ends()}
		check := 0
		if limit.CheckNeeded(cur, next) {
			check = limit.Max
		}
		ix := indexOf(next)
		gm, gs := graceOf(next)
		// The owner's grace sets only when the script reads or writes them
		// (a count, a key rotated away): most owners have none, and a
		// Cluster refuses (TRYAGAIN) a script naming a key that exists on
		// neither side of a slot being moved, so a revocation naming them
		// would wait for the move to end instead of following the ASK.
		if check > 0 || gm != "" {
			keys = append(keys, s.keys.grace(next.Owner), s.keys.graceIDs(next.Owner))
		}
		res, confirmed, err := s.change(ctx, updateScript, updateByWriter, repeatUpdate, id, newRaw, keys,
			oldRaw, newRaw, id, liveScore(next), hexHash, changesMaxLen,
			ix.listed, ix.expiry, ix.end, ix.member, check, micros(limit.At), gm, gs)
		if err != nil {
			return nil, changeFailed("update "+id, err)
		}
		switch res {
		case "OK":
			k, err := decode(newRaw)
			if err == nil && confirmed != nil {
				err = fmt.Errorf("redis update %s: %w", id, confirmed)
			}
			return k, err
		case "LIMIT":
			return nil, fmt.Errorf("redis update %s: owner %q: %w", id, next.Owner, keystore.ErrKeyLimit)
		case "CONFLICT":
			if err := backoff(ctx, attempt); err != nil {
				return nil, err
			}
			continue
		}
		return nil, fmt.Errorf("redis update %s: unexpected script reply %q", id, res)
	}
	return nil, fmt.Errorf("redis update %s: the record kept changing; gave up after %d attempts", id, updateAttempts)
}

// What an unconfirmed change's error tells the caller to do. A rotation
// cannot be repeated (the old key is rotated away), but a confirmed
// revocation of the old key, due once its clients use the new one,
// confirms it with everything the primary wrote before. Repeating a create
// would make a second key; any confirmed change after it confirms it.
const (
	repeatUpdate    = "repeat it once replication is healthy"
	confirmRotation = "once the old key's clients use the new key, revoke the old key: a confirmed revocation confirms the rotation with it"
	confirmCreate   = "the key works now and need not be made again: any confirmed change to a key after it confirms it too (a replica takes its primary's writes in order), and should a failover undo it first, every check refuses its secret as an unknown key"
)

// UnconfirmedReadBack is the error of a change of kind that the Manager
// read back as made after its answer was lost: the answer lost was the
// script's, and the replicas are asked only after it, so with
// confirmation on the change is unconfirmed; nil with confirmation off.
func (s *Store) UnconfirmedReadBack(kind string) error {
	if s.confirm.Replicas == 0 {
		return nil
	}
	remedy := repeatUpdate
	switch kind {
	case keystore.ChangeCreated:
		remedy = confirmCreate
	case keystore.ChangeRotated:
		remedy = confirmRotation
	}
	return fmt.Errorf("%w: the change is stored on the primary and in effect, but its answer was lost before the replicas were asked, so a failover could still undo it; %s", keystore.ErrUnconfirmed, remedy)
}

var _ keystore.ReadBackConfirmer = (*Store)(nil)

// change runs script, a write of key records, and returns its reply. With
// confirmation on and the reply "OK", it then waits for the replicas, and
// confirmed is an error wrapping keystore.ErrUnconfirmed when too few of
// them acknowledged the write (err is for the write itself). remedy ends
// the error's message: what the caller can do about it. A write the
// records' slot move refuses is tried again until the move ends
// (whileSlotMoves).
//
// A change made by a key (keystore.WithWriter) runs byWriter, script's
// twin that first checks that the writer's record is still the one its
// authority was checked against (writerLua); err wraps
// keystore.ErrWriterChanged when it is not. target is the id of the record
// the change rewrites ("" for a create) and after that record as the change
// leaves it: a change of the writer's own record may find it changed by
// itself, when Redis ran a try whose reply was lost and go-redis sent the
// script again, and that is a lost answer (ErrUnavailable, for the
// Manager's read-back), not a refusal.
func (s *Store) change(ctx context.Context, script, byWriter *goredis.Script, remedy, target, after string, keys []string, args ...any) (reply string, confirmed, err error) {
	writer := keystore.WriterOf(ctx)
	if writer != nil {
		script = byWriter
	}
	for attempt := range updateAttempts {
		k, a := keys, args
		if writer != nil {
			key, raw, err := s.writerRecord(ctx, writer)
			if errors.Is(err, keystore.ErrWriterChanged) && attempt > 0 && writer.ID == target && sameJSONRecord(raw, after) {
				return "", nil, fmt.Errorf("%w: the writer's own record is as this change leaves it, after a try whose reply was lost", keystore.ErrUnavailable)
			}
			if err != nil {
				return "", nil, err
			}
			k, a = append(slices.Clip(keys), key), append(slices.Clip(args), raw)
		}
		err = whileSlotMoves(ctx, func() error {
			var err error
			reply, confirmed, err = s.changeOnce(ctx, script, remedy, k, a)
			return err
		})
		if err != nil || reply != "WRITER" {
			return reply, confirmed, err
		}
		// The writer's record was written meanwhile, by a last-use write
		// behind or a change of the writer: read it again.
		if err := backoff(ctx, attempt); err != nil {
			return "", nil, err
		}
	}
	return "", nil, fmt.Errorf("the writer's record kept changing; gave up after %d attempts", updateAttempts)
}

// writerRecord reads the record of writer, the key a change is made by,
// and returns its Redis key and its JSON, or an error wrapping
// keystore.ErrWriterChanged (with the JSON it read, "" for none) if it is
// not the record writer's authority was checked against.
func (s *Store) writerRecord(ctx context.Context, writer *keystore.Key) (key, raw string, err error) {
	_, hexHash, raw, err := s.read(ctx, writer.ID)
	var stored *keystore.Key
	switch {
	case errors.Is(err, keystore.ErrUnavailable):
		return "", "", err
	case err != nil: // gone, or no longer a record this version reads
	default:
		// A record that now requires what this version cannot enforce
		// is not the one the writer was checked against.
		if stored, err = decodeForCheck(raw); err != nil {
			stored = nil
		}
	}
	if !keystore.StillWriter(writer, stored) {
		return "", raw, fmt.Errorf("writer %q: %w", writer.ID, keystore.ErrWriterChanged)
	}
	return s.keys.record(hexHash), raw, nil
}

// sameJSONRecord reports whether two records' JSON are the same record but
// for last_used_at.
func sameJSONRecord(a, b string) bool {
	ka, err := decode(a)
	if err != nil {
		return false
	}
	kb, err := decode(b)
	return err == nil && keystore.StillWriter(ka, kb)
}

// changeFailed is the error of a change whose script did not answer: the
// writer's refusal as it is, anything else Redis's.
func changeFailed(op string, err error) error {
	if errors.Is(err, keystore.ErrWriterChanged) {
		return fmt.Errorf("redis %s: %w", op, err)
	}
	return unavailable(op, err)
}

// changeOnce is one try of change. WAIT counts the acknowledgements of its
// own connection's writes, so the script and WAIT go over one connection to
// the primary of the records' slot, or, while that slot moves and the
// records have moved, to the master it moves to (an ASK redirect) when the
// slot map lists that master; when it does not (a master new to the
// Cluster), the ASK is returned, and change waits for the hand-over.
func (s *Store) changeOnce(ctx context.Context, script *goredis.Script, remedy string, keys []string, args []any) (reply string, confirmed, err error) {
	if s.confirm.Replicas == 0 {
		reply, err = script.Run(ctx, s.client, keys, args...).Text()
		return reply, nil, err
	}
	primary, err := s.primary(ctx, keys[0])
	if err != nil {
		return "", nil, err
	}
	conn := primary.Conn()
	defer conn.Close()
	cmd := script.Run(ctx, conn, keys, args...)
	cluster, _ := s.client.(*goredis.ClusterClient)
	if addr, ok := askedTo(cmd.Err()); ok && cluster != nil {
		target, err := masterAt(ctx, cluster, addr)
		if err != nil {
			return "", nil, err
		}
		if target == nil {
			// A master new to the Cluster: the change waits for the
			// hand-over (the ASK error is slotMoving), then goes there.
			return "", nil, cmd.Err()
		}
		conn = target.Conn()
		defer conn.Close()
		cmd = runAsking(ctx, conn, script, keys, args)
	}
	if reply, err = cmd.Text(); err != nil || reply != "OK" {
		if cluster != nil && err != nil && !goredis.HasErrorPrefix(err, "TRYAGAIN") {
			// The node came from the slot map, which a failover or a slot
			// move leaves stale; the Cluster client's own calls reload it
			// on such failures (reloadOnFailure), this one must ask.
			cluster.ReloadState(ctx)
		}
		return reply, nil, err
	}
	n, werr := conn.Wait(ctx, s.confirm.Replicas, s.confirm.Timeout).Result()
	switch {
	case werr != nil:
		confirmed = fmt.Errorf("%w: the change is stored on the primary and in effect, but asking its replicas failed (%w), so a failover could still undo it; %s", keystore.ErrUnconfirmed, werr, remedy)
	case n < int64(s.confirm.Replicas):
		confirmed = fmt.Errorf("%w: the change is stored on the primary and in effect, but %d of the %d replicas store.redis.confirm_replicas asks for acknowledged it within %s, so a failover could still undo it; %s",
			keystore.ErrUnconfirmed, n, s.confirm.Replicas, s.confirm.Timeout, remedy)
	}
	return reply, confirmed, nil
}

// ConfirmingReplicas asks the primary of the key records how many of its
// replicas acknowledge its writes within the confirmation timeout, up to
// the number confirmation needs (Redis's WAIT, which returns as soon as that
// many have). Fewer than that means every confirmed change will be
// reported unconfirmed. It returns 0 without asking when confirmation is
// off.
func (s *Store) ConfirmingReplicas(ctx context.Context) (int, error) {
	if err := s.check(); err != nil || s.confirm.Replicas == 0 {
		return 0, err
	}
	primary, err := s.primary(ctx, s.keys.all())
	if err != nil {
		return 0, unavailable("count replicas", err)
	}
	n, err := primary.Wait(ctx, s.confirm.Replicas, s.confirm.Timeout).Result()
	if err != nil {
		return 0, unavailable("count replicas", err)
	}
	return int(n), nil
}

// MarkPepper keeps the pepper mark in <prefix>{keys}:pepper, written once
// (SET NX) and read back in the same round trip. The mark is not
// confirmed by the replicas: a failover that loses it only has the next
// process that asks write its own again.
func (s *Store) MarkPepper(ctx context.Context, mark keystore.Hash) (keystore.Hash, error) {
	if err := s.check(); err != nil {
		return keystore.Hash{}, err
	}
	key := s.keys.pepper()
	var set *goredis.StatusCmd
	var get *goredis.StringCmd
	_, _ = s.client.Pipelined(ctx, func(p goredis.Pipeliner) error {
		set = p.SetArgs(ctx, key, mark.String(), goredis.SetArgs{Mode: "NX"}) // SET … NX, which the ACL grants (SETNX it does not)
		get = p.Get(ctx, key)
		return nil
	})
	err := set.Err()
	if errors.Is(err, goredis.Nil) { // not set: the store has a mark
		err = nil
	}
	if err == nil {
		err = get.Err()
	}
	if err != nil {
		return keystore.Hash{}, unavailable("mark pepper", err)
	}
	held, err := keystore.ParseHash(get.Val())
	if err != nil {
		return keystore.Hash{}, fmt.Errorf("redis store: %s does not hold a pepper mark (64 hex digits); delete it, and the next process to start writes its own", key)
	}
	return held, nil
}

// primary returns the client of the primary that holds key: on a Cluster
// the master of its slot, otherwise the one client there is (a standalone
// server, or the primary a Sentinel names).
func (s *Store) primary(ctx context.Context, key string) (*goredis.Client, error) {
	switch c := s.client.(type) {
	case *goredis.ClusterClient:
		return c.MasterForKey(ctx, key)
	case *goredis.Client:
		return c, nil
	}
	return nil, fmt.Errorf("confirming changes needs a go-redis Client or ClusterClient, not %T", s.client)
}

// Rotate stores next under h and marks id rotated to it, in one script.
func (s *Store) Rotate(ctx context.Context, id string, next *keystore.Key, h keystore.Hash, graceEnd time.Time) (*keystore.Key, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	if next == nil || next.ID == "" {
		return nil, fmt.Errorf("redis rotate %s: new key has no id", id)
	}
	if next.RotatedFrom != id {
		return nil, fmt.Errorf("redis rotate %s: new key %s has rotated_from %q", id, next.ID, next.RotatedFrom)
	}
	if h.IsZero() {
		return nil, fmt.Errorf("redis rotate %s: zero hash", id)
	}
	nrec := normalize(next)
	newRaw, err := encode(nrec)
	if err != nil {
		return nil, fmt.Errorf("redis rotate %s: %w", id, err)
	}
	newHex := h.String()
	for attempt := range updateAttempts {
		cur, oldHex, oldRaw, err := s.read(ctx, id)
		if err != nil {
			return nil, err
		}
		// A key already rotated away no longer counts against its owner's
		// limit; rotating it again would mint live keys past that limit.
		if cur.StatusAt(nrec.CreatedAt) != keystore.Live || cur.RotatedTo != "" {
			return nil, fmt.Errorf("redis rotate %s: %w", id, keystore.ErrNotLive)
		}
		if !keystore.CopiesOld(nrec, cur) {
			return nil, fmt.Errorf("redis rotate %s: %w", id, keystore.ErrChanged)
		}
		old := cur.Clone()
		old.RotatedTo = nrec.ID
		if old.ExpiresAt == nil || graceEnd.Before(*old.ExpiresAt) {
			g := graceEnd.UTC()
			old.ExpiresAt = &g
		}
		rotatedRaw, err := encode(old)
		if err != nil {
			return nil, fmt.Errorf("redis rotate %s: %w", id, err)
		}
		// What a newer version wrote into the record (in a rolling
		// upgrade) this one cannot read, so it cannot tell whether the new
		// key must copy it, as it copies the old key's restrictions: it
		// makes no new key rather than one that may be looser.
		unknown, err := unknownMembers(oldRaw, rotatedRaw)
		if err != nil {
			return nil, fmt.Errorf("redis rotate %s: %w", id, err)
		}
		if len(unknown) > 0 {
			names := make([]string, len(unknown))
			for i, m := range unknown {
				names[i] = m.name
			}
			return nil, fmt.Errorf("redis rotate %s: %w (%s); rotate it through a server of that version", id, keystore.ErrNewerRecord, strings.Join(names, ", "))
		}
		if nrec.Owner != old.Owner {
			return nil, fmt.Errorf("redis rotate %s: the new key's owner %q is not the old key's %q", id, nrec.Owner, old.Owner)
		}
		keys := []string{
			s.keys.record(oldHex), s.keys.live(old.Owner),
			s.keys.record(newHex), s.keys.id(nrec.ID), s.keys.all(),
			s.keys.owner(nrec.Owner), s.keys.live(nrec.Owner), s.keys.changes(),
			s.keys.open(), s.keys.openOf(old.Owner), s.keys.expiring(), s.keys.ends(),
			s.keys.grace(old.Owner), s.keys.graceIDs(old.Owner),
		}
		oix, nix := indexOf(old), indexOf(nrec)
		gm, _ := graceOf(old)
		res, confirmed, err := s.change(ctx, rotateScript, rotateByWriter, confirmRotation, id, rotatedRaw, keys,
			oldRaw, rotatedRaw, id, oldHex, newRaw, nrec.ID, newHex, liveScore(nrec), changesMaxLen,
			oix.expiry, oix.end, oix.member, nix.listed, nix.expiry, nix.end, nix.member, gm)
		if err != nil {
			return nil, changeFailed("rotate "+id, err)
		}
		switch res {
		case "OK":
			return old, confirmed
		case "CONFLICT":
			if err := backoff(ctx, attempt); err != nil {
				return nil, err
			}
			continue
		case "EXISTS":
			return nil, fmt.Errorf("redis rotate %s: new key %s: %w", id, nrec.ID, keystore.ErrExists)
		}
		return nil, fmt.Errorf("redis rotate %s: unexpected script reply %q", id, res)
	}
	return nil, fmt.Errorf("redis rotate %s: the record kept changing; gave up after %d attempts", id, updateAttempts)
}

// Ping reports whether Redis answers a lookup now. It reads a key of the
// slot that holds every key record rather than send PING, which a Cluster
// client sends to any node: readiness must follow the one master lookups
// need, and fail as they do while the Cluster is down (CLUSTERDOWN) or a
// restarted server is still loading its data.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.check(); err != nil {
		return err
	}
	if err := s.client.Get(ctx, s.keys.index()).Err(); err != nil && !errors.Is(err, goredis.Nil) {
		return unavailable("ping", err)
	}
	return nil
}

// Close stops running Watch calls and waits for them to return. It does not
// close the client, which the Store does not own (see New). Calling it
// twice is harmless.
func (s *Store) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	s.mu.Unlock()
	s.watchers.Wait()
	return nil
}
