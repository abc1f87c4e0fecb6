package redis

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// TouchLastUsed moves last_used_at forward (never back) for the ids that
// exist, without announcing a change. Records are read in bulk and written
// by scripts that skip any record changed meanwhile; those are read again.
func (s *Store) TouchLastUsed(ctx context.Context, used map[string]time.Time) error {
	if err := s.check(); err != nil {
		return err
	}
	ids := make([]string, 0, len(used))
	for id := range used {
		if id != "" {
			ids = append(ids, id)
		}
	}
	var unreadable []string
	for attempt := 0; len(ids) > 0; attempt++ {
		if attempt == updateAttempts {
			return fmt.Errorf("redis touch: %d records kept changing; gave up after %d attempts", len(ids), updateAttempts)
		}
		var retry []string
		for start := 0; start < len(ids); start += touchBatch {
			chunk := ids[start:min(start+touchBatch, len(ids))]
			conflicts, skipped, err := s.touch(ctx, chunk, used)
			if err != nil {
				return err
			}
			retry = append(retry, conflicts...)
			unreadable = append(unreadable, skipped...)
		}
		ids = retry
		if len(ids) > 0 {
			if err := backoff(ctx, attempt); err != nil {
				return err
			}
		}
	}
	return unreadableRecords(unreadable)
}

// unreadableRecords is TouchLastUsed's answer when the records of ids
// were skipped: an error naming a few of them (ids are public), nil for
// none.
func unreadableRecords(ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	named := strings.Join(ids[:min(len(ids), 3)], ", ")
	if len(ids) > 3 {
		named += fmt.Sprintf(" and %d more", len(ids)-3)
	}
	return fmt.Errorf("redis touch: last use not written for %s: %w", named, keystore.ErrUnreadableRecord)
}

// backoff waits a random moment, growing with attempt, before an
// optimistic write is retried, so that writers that collided spread out.
func backoff(ctx context.Context, attempt int) error {
	d := time.Duration(rand.Int64N(int64(min(attempt+1, 10)) * int64(time.Millisecond)))
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return unavailable("retry", ctx.Err())
	case <-t.C:
		return nil
	}
}

// touch writes one batch and returns the ids whose records changed
// meanwhile, and those whose records it skipped as unreadable.
func (s *Store) touch(ctx context.Context, ids []string, used map[string]time.Time) (conflicts, unreadable []string, err error) {
	hashes, raws, err := s.readRaw(ctx, ids)
	if err != nil {
		return nil, nil, err
	}
	var keys, whose []string
	var args []any
	for i, raw := range raws {
		if raw == "" {
			continue // deleted, or never existed: nothing to touch
		}
		k, err := decode(raw)
		if err != nil {
			unreadable = append(unreadable, ids[i])
			continue
		}
		t := used[ids[i]].UTC()
		if k.LastUsedAt != nil && !t.After(*k.LastUsedAt) {
			continue
		}
		newRaw, err := withLastUsed(raw, t)
		if err != nil {
			unreadable = append(unreadable, ids[i])
			continue
		}
		keys = append(keys, s.keys.record(hashes[i]))
		whose = append(whose, ids[i])
		args = append(args, raw, newRaw)
	}
	if len(keys) == 0 {
		return nil, unreadable, nil
	}
	res, err := s.runScript(ctx, touchScript, keys, args...).Int64Slice()
	if err != nil {
		return nil, nil, unavailable("touch", err)
	}
	conflicts = make([]string, 0, len(res))
	for _, i := range res {
		if i >= 1 && int(i) <= len(whose) {
			conflicts = append(conflicts, whose[i-1])
		}
	}
	return conflicts, unreadable, nil
}

// withLastUsed returns rec, a stored record, with its last_used_at set to
// at, and every other member as it was stored and where it was: those this
// version does not know as well. The last-use write is made behind the
// checks of every key in use, by every replica, and announced to no cache;
// were it to decode the record and encode it again, a replica of an older
// version, in a rolling upgrade, would strip what a newer one wrote (a
// restriction, as policies once was) from every key in use within a minute.
func withLastUsed(rec string, at time.Time) (string, error) {
	value, err := json.Marshal(at)
	if err != nil {
		return "", fmt.Errorf("encode last_used_at: %w", err)
	}
	out := make([]byte, 0, len(rec)+len(value)+len(`,"last_used_at":`))
	out = append(out, '{')
	set := false
	err = eachMember(rec, func(name string, v json.RawMessage) {
		if name == "last_used_at" {
			v, set = value, true
		}
		out = appendMember(out, name, v)
	})
	if err != nil {
		return "", err
	}
	if !set {
		out = appendMember(out, "last_used_at", value)
	}
	return string(append(out, '}')), nil
}

// keepUnknown returns enc, this version's encoding of a changed record (which
// writes every member this version knows), with the members of rec, the
// record as stored, that it lacks: those a newer version wrote, as they
// were. An update made by an older replica in a rolling upgrade (a PATCH, a
// revocation) must not strip what a newer one wrote, a restriction
// perhaps, that the older one cannot read.
func keepUnknown(rec, enc string) (string, error) {
	unknown, err := unknownMembers(rec, enc)
	if err != nil || len(unknown) == 0 {
		return enc, err
	}
	out := []byte(enc[:len(enc)-1])
	for _, m := range unknown {
		out = appendMember(out, m.name, m.value)
	}
	return string(append(out, '}')), nil
}

// member is one member of a JSON object, its value as written.
type member struct {
	name  string
	value json.RawMessage
}

// unknownMembers returns the members of rec, a stored record, that enc, this
// version's encoding of a record, has no member of that name for.
func unknownMembers(rec, enc string) ([]member, error) {
	known := map[string]bool{}
	if err := eachMember(enc, func(name string, _ json.RawMessage) { known[name] = true }); err != nil {
		return nil, err
	}
	var unknown []member
	err := eachMember(rec, func(name string, v json.RawMessage) {
		if !known[name] {
			unknown = append(unknown, member{name, v})
		}
	})
	return unknown, err
}

// eachMember calls fn with each member of the JSON object rec, in order.
func eachMember(rec string, fn func(name string, v json.RawMessage)) error {
	bad := func(what string) error { return fmt.Errorf("decode record: %s", what) }
	dec := json.NewDecoder(strings.NewReader(rec))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return bad("not a JSON object")
	}
	for dec.More() {
		tok, err := dec.Token()
		name, ok := tok.(string)
		if err != nil || !ok {
			return bad("a member without a name")
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return bad("a member without a value")
		}
		fn(name, v)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return bad("an unterminated object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return bad("data after the object")
	}
	return nil
}

// appendMember appends `"name":v` to out, an object's members so far
// after its "{", with a comma if it has some.
func appendMember(out []byte, name string, v json.RawMessage) []byte {
	if len(out) > 1 {
		out = append(out, ',')
	}
	quoted, _ := json.Marshal(name) // a string always encodes
	return append(append(append(out, quoted...), ':'), v...)
}
