package redis

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// normalize returns a copy of k as stored: owner defaulted, times in UTC
// without monotonic readings, so that records compare and sort the same in
// every process.
func normalize(k *keystore.Key) *keystore.Key {
	c := k.Clone()
	if c.Owner == "" {
		c.Owner = keystore.DefaultOwner
	}
	c.CreatedAt = c.CreatedAt.UTC()
	for _, t := range []**time.Time{&c.ExpiresAt, &c.LastUsedAt, &c.RevokedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
	return c
}

func encode(k *keystore.Key) (string, error) {
	b, err := json.Marshal(k)
	if err != nil {
		return "", fmt.Errorf("encode record: %w", err)
	}
	return string(b), nil
}

func decode(raw string) (*keystore.Key, error) {
	var k keystore.Key
	if err := json.Unmarshal([]byte(raw), &k); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	return &k, nil
}

// decodeForCheck decodes a record that a check will be decided by: one
// whose "requires" names something this version does not know comes with
// an error wrapping keystore.ErrNeedsNewer (keystore.CheckRequires), read
// in the same pass.
func decodeForCheck(raw string) (*keystore.Key, error) {
	var r struct {
		keystore.Key
		Requires []string `json:"requires"`
	}
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return nil, fmt.Errorf("decode record: %w", err)
	}
	// A check is decided by what the record names: one that is no key
	// record (null, {}, no id, owner or creation time) is refused, never
	// read as a live key with no restrictions.
	if r.ID == "" || r.Owner == "" || r.CreatedAt.IsZero() {
		return nil, errors.New("decode record: not a key record (no id, owner or created_at)")
	}
	return &r.Key, keystore.CheckRequires(r.Requires)
}

// micros is the instant t in Unix microseconds, the unit of the scores,
// rounded down: a "now" to compare scores with.
func micros(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

// untilMicros is the end t (an expiry, the end of a grace period or of a
// key's life) as a score: in Unix microseconds, rounded up, so that a key
// live at an instant by its record (t after it, to the nanosecond) is live
// by its score at that instant rounded down. Rounded down, a key expiring
// within the microsecond of a count would go uncounted though live, and its
// owner could have one key more than keys.max_per_owner for it; rounded up,
// it counts for up to a microsecond after it expired, and is swept as late.
func untilMicros(t time.Time) string {
	us := t.UnixMicro()
	if t.Sub(time.UnixMicro(us)) > 0 {
		us++
	}
	return strconv.FormatInt(us, 10)
}

// entries is where a key stands in the listing indexes, as the scripts'
// index function takes it.
type entries struct {
	member string // "<id> <owner>" in expiring and ends
	listed string // "1": in the open sets
	expiry string // score in expiring, "" = not in it
	end    string // score in ends, "" = not in it
}

// indexOf is k's place in the listing indexes: a key that is not revoked is
// open (Sweep unlists it once it expires, and a write lists it again, to be
// swept again if it is still expired); an open key with an expiry is in
// expiring; a key that has an end (EndsAt) is in ends.
func indexOf(k *keystore.Key) entries {
	e := entries{member: k.ID + " " + k.Owner}
	if k.RevokedAt == nil {
		e.listed = "1"
		if k.ExpiresAt != nil {
			e.expiry = untilMicros(*k.ExpiresAt)
		}
	}
	if end := k.EndsAt(); end != nil {
		e.end = untilMicros(*end)
	}
	return e
}

// graceOf is k's place in its owner's grace sets: the member "<id>
// <successor id>" of a key rotated away ("" for one that was not), and its
// score, the end of its grace period ("" once it is revoked: it is no
// longer live, and never will be again).
func graceOf(k *keystore.Key) (member, score string) {
	if k.RotatedTo == "" {
		return "", ""
	}
	member = k.ID + " " + k.RotatedTo
	if k.RevokedAt == nil && k.ExpiresAt != nil {
		score = untilMicros(*k.ExpiresAt)
	}
	return member, score
}

// liveScore is k's score in its owner's live set: its expiry, "+inf" when
// it never expires, or "" when it must not be in the set (revoked, or
// rotated away: such keys never count against the owner's limit).
func liveScore(k *keystore.Key) string {
	switch {
	case k.RevokedAt != nil || k.RotatedTo != "":
		return ""
	case k.ExpiresAt == nil:
		return "+inf"
	}
	return untilMicros(*k.ExpiresAt)
}
