package redis

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/keystore"
)

// List pages through the ids in order, dropping keys that are not live
// unless opts.IncludeRevoked, and reading on until the page is full.
func (s *Store) List(ctx context.Context, opts keystore.ListOptions) ([]*keystore.Key, string, error) {
	if err := s.check(); err != nil {
		return nil, "", err
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = 100
	}
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	set := s.keys.all()
	if opts.Owner != "" {
		set = s.keys.owner(opts.Owner)
	}
	batch := int64(min(max(limit+1, 64), 1000))
	if !opts.IncludeRevoked {
		indexed, err := s.indexReady(ctx)
		if err != nil {
			return nil, "", err
		}
		if indexed {
			// Nearly every open id is live: read about as many as the page.
			set, batch = s.keys.open(), int64(min(limit+1, 1000))
			if opts.Owner != "" {
				set = s.keys.openOf(opts.Owner)
			}
		}
	}
	after := opts.After
	// One key more than the page is read, so that the last page says so.
	var out []*keystore.Key
	for len(out) <= limit {
		start := "-"
		if after != "" {
			start = "(" + after
		}
		ids, err := s.client.ZRangeArgs(ctx, goredis.ZRangeArgs{
			Key: set, Start: start, Stop: "+", ByLex: true, Count: batch,
		}).Result()
		if err != nil {
			return nil, "", unavailable("list", err)
		}
		if len(ids) == 0 {
			break
		}
		keys, err := s.readIDs(ctx, ids)
		if err != nil {
			return nil, "", err
		}
		for _, k := range keys {
			if k == nil || (!opts.IncludeRevoked && k.StatusAt(now) != keystore.Live) {
				continue
			}
			out = append(out, k)
			if len(out) > limit {
				break
			}
		}
		after = ids[len(ids)-1]
		if int64(len(ids)) < batch {
			break
		}
	}
	if len(out) > limit {
		return out[:limit], out[limit-1].ID, nil
	}
	return out, "", nil
}

// indexReady reports whether the open sets cover every key, asking Redis
// until they do and remembering it (until a Sweep finds otherwise).
func (s *Store) indexReady(ctx context.Context) (bool, error) {
	if s.indexed.Load() {
		return true, nil
	}
	v, err := s.client.Get(ctx, s.keys.index()).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		return false, unavailable("read index version", err)
	}
	if v == indexVersion {
		s.indexed.Store(true)
		return true, nil
	}
	return false, nil
}

// Sweep indexes keys written before the listing indexes existed, one batch
// per call, until they all are; then it unlists expired keys and purges dead
// ones, a batch of each per call. Once, a batch per call, it also puts keys
// rotated away before the owners' grace sets existed into them
// (buildGrace). Every step is a script that re-checks what it acts on, so
// sweeps from several replicas at once do each thing once, and a sweep with
// nothing to do costs two GETs and two ZRANGEs.
func (s *Store) Sweep(ctx context.Context, opts keystore.SweepOptions) (keystore.SweepResult, error) {
	var res keystore.SweepResult
	if err := s.check(); err != nil {
		return res, err
	}
	batch := opts.Batch
	if batch <= 0 {
		batch = keystore.DefaultSweepBatch
	}
	// Read the version afresh every time, not what this process remembers:
	// a Redis restored from a copy made before the index existed must be
	// indexed again (List falls back to walking every id meanwhile).
	version, err := s.client.Get(ctx, s.keys.index()).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		return res, unavailable("read index version", err)
	}
	s.indexed.Store(version == indexVersion)
	if version != indexVersion {
		done, err := s.buildIndex(ctx, batch)
		if err != nil || !done {
			res.More = err == nil
			return res, err
		}
	}
	graced, err := s.buildGrace(ctx, batch)
	if err != nil {
		return res, err
	}
	if res.Unlisted, err = s.unlistExpired(ctx, opts.Now, batch); err != nil {
		return res, err
	}
	if !opts.PurgeBefore.IsZero() {
		if res.Purged, err = s.purge(ctx, opts.PurgeBefore, batch); err != nil {
			return res, err
		}
	}
	res.More = !graced || res.Unlisted == batch || res.Purged == batch
	return res, nil
}

// endedBefore returns up to batch members of the time-scored set whose
// score is below cutoff, oldest first.
func (s *Store) endedBefore(ctx context.Context, set string, cutoff time.Time, batch int) ([]string, error) {
	members, err := s.client.ZRangeArgs(ctx, goredis.ZRangeArgs{
		Key: set, Start: "-inf", Stop: "(" + micros(cutoff), ByScore: true, Count: int64(batch),
	}).Result()
	if err != nil {
		return nil, unavailable("sweep: read "+set, err)
	}
	return members, nil
}

// splitMember reads an "<id> <owner>" member of expiring or ends.
func splitMember(m string) (id, owner string) {
	id, owner, _ = strings.Cut(m, " ")
	return id, owner
}

// unlistExpired takes up to batch keys that expired before now out of the
// open sets.
func (s *Store) unlistExpired(ctx context.Context, now time.Time, batch int) (int, error) {
	members, err := s.endedBefore(ctx, s.keys.expiring(), now, batch)
	if err != nil || len(members) == 0 {
		return 0, err
	}
	keys := []string{s.keys.expiring(), s.keys.open()}
	args := []any{micros(now)}
	for _, m := range members {
		_, owner := splitMember(m)
		keys = append(keys, s.keys.openOf(owner))
		args = append(args, m)
	}
	n, err := s.runScript(ctx, unlistScript, keys, args...).Int()
	if err != nil {
		return 0, unavailable("sweep: unlist", err)
	}
	return n, nil
}

// purge deletes up to batch keys dead since before cutoff.
func (s *Store) purge(ctx context.Context, cutoff time.Time, batch int) (int, error) {
	members, err := s.endedBefore(ctx, s.keys.ends(), cutoff, batch)
	if err != nil || len(members) == 0 {
		return 0, err
	}
	idKeys := make([]string, len(members))
	for i, m := range members {
		id, _ := splitMember(m)
		idKeys[i] = s.keys.id(id)
	}
	hashes, err := s.mget(ctx, idKeys...)
	if err != nil {
		return 0, unavailable("sweep: read ids", err)
	}
	keys := []string{s.keys.ends(), s.keys.all(), s.keys.open(), s.keys.expiring()}
	args := []any{micros(cutoff)}
	for i, m := range members {
		id, owner := splitMember(m)
		h, _ := hashes[i].(string)
		record := s.keys.record(h)
		keys = append(keys, idKeys[i], record, s.keys.owner(owner), s.keys.live(owner), s.keys.openOf(owner),
			s.keys.grace(owner), s.keys.graceIDs(owner))
		args = append(args, m, id, h)
	}
	n, err := s.runScript(ctx, purgeScript, keys, args...).Int()
	if err != nil {
		return 0, unavailable("sweep: purge", err)
	}
	return n, nil
}

// buildIndex indexes the next batch of ids (in id order, from where the
// build stands, kept in the index key as "build <last id>") and reports
// whether the build is complete.
func (s *Store) buildIndex(ctx context.Context, batch int) (bool, error) {
	b, err := s.nextBuildBatch(ctx, s.keys.index(), indexVersion, batch, "index")
	if err != nil || b.done {
		if b.done {
			s.indexed.Store(true)
		}
		return b.done, err
	}
	state, next, ids, hashes, raws := b.state, b.next, b.ids, b.hashes, b.raws
	keys := []string{s.keys.index(), s.keys.open(), s.keys.expiring(), s.keys.ends()}
	args := []any{state, next}
	for i, raw := range raws {
		if hashes[i] == "" || raw == "" {
			continue
		}
		k, err := decode(raw)
		if err != nil {
			return false, fmt.Errorf("redis index: key %s: %w", ids[i], err)
		}
		ix := indexOf(k)
		keys = append(keys, s.keys.record(hashes[i]), s.keys.openOf(k.Owner))
		args = append(args, raw, k.ID, ix.member, ix.listed, ix.expiry, ix.end)
	}
	res, err := s.runScript(ctx, buildIndexScript, keys, args...).Text()
	if err != nil {
		return false, unavailable("index", err)
	}
	// CONFLICT: another process built this batch; either way the next
	// call goes on from where the build now stands.
	if res == "OK" && next == indexVersion {
		s.indexed.Store(true)
		return true, nil
	}
	return false, nil
}

// buildBatch is one step of a build that walks every id in batches (the
// listing index, the grace sets): where the build stood (state) and will
// stand once this batch is written (next: "build <last id>", or the done
// value after a batch that was not full), and the batch's ids with their
// hashes and raw records. done: the build was complete already.
type buildBatch struct {
	done              bool
	state, next       string
	ids, hashes, raws []string
}

// nextBuildBatch reads the state of the build kept in stateKey (doneValue
// once complete) and the next batch of ids after it, in id order.
func (s *Store) nextBuildBatch(ctx context.Context, stateKey, doneValue string, batch int, what string) (buildBatch, error) {
	var b buildBatch
	state, err := s.client.Get(ctx, stateKey).Result()
	if err != nil && !errors.Is(err, goredis.Nil) {
		return b, unavailable(what+": read its state", err)
	}
	if state == doneValue {
		b.done = true
		return b, nil
	}
	start := "-"
	if after, ok := strings.CutPrefix(state, "build "); ok {
		start = "(" + after
	}
	ids, err := s.client.ZRangeArgs(ctx, goredis.ZRangeArgs{
		Key: s.keys.all(), Start: start, Stop: "+", ByLex: true, Count: int64(batch),
	}).Result()
	if err != nil {
		return b, unavailable(what+": read ids", err)
	}
	hashes, raws, err := s.readRaw(ctx, ids)
	if err != nil {
		return b, err
	}
	next := doneValue
	if len(ids) == batch {
		next = "build " + ids[len(ids)-1]
	}
	return buildBatch{state: state, next: next, ids: ids, hashes: hashes, raws: raws}, nil
}

// graceBuiltDone is the value of the graceBuilt key once every key
// rotated away before the grace sets existed is in them.
const graceBuiltDone = "done"

// buildGrace puts the next batch of ids (in id order, from where the
// build stands) that are rotated away and in their grace period into
// their owner's grace sets, and reports whether every key has been seen.
// A key rotated by an extauthz from before those sets is in neither, and
// would never count against its owner's limit, even once its successor
// is gone. Rotations and revocations since write the sets themselves; a
// record that changed since the batch was read was written by such a
// change, and is skipped.
func (s *Store) buildGrace(ctx context.Context, batch int) (bool, error) {
	b, err := s.nextBuildBatch(ctx, s.keys.graceBuilt(), graceBuiltDone, batch, "grace build")
	if err != nil || b.done {
		return b.done, err
	}
	state, next, ids, hashes, raws := b.state, b.next, b.ids, b.hashes, b.raws
	keys := []string{s.keys.graceBuilt()}
	args := []any{state, next}
	for i, raw := range raws {
		if hashes[i] == "" || raw == "" {
			continue
		}
		k, err := decode(raw)
		if err != nil {
			return false, fmt.Errorf("redis grace build: key %s: %w", ids[i], err)
		}
		member, score := graceOf(k)
		if member == "" || score == "" {
			continue
		}
		keys = append(keys, s.keys.record(hashes[i]), s.keys.grace(k.Owner), s.keys.graceIDs(k.Owner))
		args = append(args, raw, member, score, k.ID)
	}
	res, err := s.runScript(ctx, buildGraceScript, keys, args...).Text()
	if err != nil {
		return false, unavailable("grace build", err)
	}
	// CONFLICT: another process built this batch; either way the next
	// call goes on from where the build now stands.
	return res == "OK" && next == graceBuiltDone, nil
}

// readIDs returns the records of ids in order, nil where one is missing.
func (s *Store) readIDs(ctx context.Context, ids []string) ([]*keystore.Key, error) {
	hashes, raws, err := s.readRaw(ctx, ids)
	if err != nil {
		return nil, err
	}
	keys := make([]*keystore.Key, len(ids))
	for i, raw := range raws {
		if hashes[i] == "" || raw == "" {
			continue
		}
		if keys[i], err = decode(raw); err != nil {
			return nil, fmt.Errorf("redis list: key %s: %w", ids[i], err)
		}
	}
	return keys, nil
}

// readRaw returns the hash hex and the raw record of each id ("" where
// missing), in two MGETs. All names share one slot, so MGET works on
// Cluster.
func (s *Store) readRaw(ctx context.Context, ids []string) (hashes, raws []string, err error) {
	if len(ids) == 0 {
		// MGET of nothing is an error, and an index build's last batch
		// (after a full one) reads no ids.
		return nil, nil, nil
	}
	names := make([]string, len(ids))
	for i, id := range ids {
		names[i] = s.keys.id(id)
	}
	hv, err := s.mget(ctx, names...)
	if err != nil {
		return nil, nil, unavailable("read ids", err)
	}
	hashes = make([]string, len(ids))
	raws = make([]string, len(ids))
	names = names[:0]
	var at []int
	for i, v := range hv {
		if h, ok := v.(string); ok && h != "" {
			hashes[i] = h
			names = append(names, s.keys.record(h))
			at = append(at, i)
		}
	}
	if len(names) == 0 {
		return hashes, raws, nil
	}
	rv, err := s.mget(ctx, names...)
	if err != nil {
		return nil, nil, unavailable("read records", err)
	}
	for j, v := range rv {
		if r, ok := v.(string); ok {
			raws[at[j]] = r
		}
	}
	return hashes, raws, nil
}
