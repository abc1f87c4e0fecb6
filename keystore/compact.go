package keystore

import (
	"strings"
	"time"
)

// compact returns a copy of k in as few allocations as its contents allow,
// for the cache to keep. A record decoded from JSON is an object per string,
// per list, per time and one for an empty metadata map (seven for the load
// tool's keys), and every collection marks each of them for every cached
// key. The copy is the record and its times (if it has any) in one
// allocation, all its strings in a second and its two string lists in a
// third. Its metadata map is k's, or nil when k has none: the two mean the
// same everywhere, as in the SQLite store. k itself is left as it was.
func compact(k *Key) *Key {
	if k == nil {
		return nil
	}
	n := len(k.ID) + len(k.Name) + len(k.Owner) + len(k.RotatedFrom) + len(k.RotatedTo)
	for _, s := range k.Permissions {
		n += len(s)
	}
	for _, s := range k.Policies {
		n += len(s)
	}
	var b strings.Builder
	b.Grow(n)
	// Written in one order, read back below in the same order.
	for _, s := range [...]string{k.ID, k.Name, k.Owner, k.RotatedFrom, k.RotatedTo} {
		b.WriteString(s)
	}
	for _, s := range k.Permissions {
		b.WriteString(s)
	}
	for _, s := range k.Policies {
		b.WriteString(s)
	}
	rest := b.String()
	next := func(s string) string {
		if s == "" {
			return ""
		}
		out := rest[:len(s)]
		rest = rest[len(s):]
		return out
	}

	c, times := new(Key), (*[3]time.Time)(nil)
	if k.ExpiresAt != nil || k.LastUsedAt != nil || k.RevokedAt != nil {
		block := new(struct {
			key   Key
			times [3]time.Time
		})
		c, times = &block.key, &block.times
	}
	*c = *k
	c.ID, c.Name, c.Owner, c.RotatedFrom, c.RotatedTo = next(k.ID), next(k.Name), next(k.Owner), next(k.RotatedFrom), next(k.RotatedTo)
	np := len(k.Permissions)
	lists := make([]string, np+len(k.Policies))
	for i, s := range k.Permissions {
		lists[i] = next(s)
	}
	for i, s := range k.Policies {
		lists[np+i] = next(s)
	}
	if k.Permissions != nil {
		c.Permissions = lists[:np:np]
	}
	if k.Policies != nil {
		c.Policies = lists[np:]
	}
	if len(k.Meta) == 0 {
		c.Meta = nil
	}
	for i, t := range [...]**time.Time{&c.ExpiresAt, &c.LastUsedAt, &c.RevokedAt} {
		if *t != nil {
			times[i] = **t
			*t = &times[i]
		}
	}
	return c
}
