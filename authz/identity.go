package authz

import (
	"hash/maphash"
	"sync/atomic"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/extauthz/extauthz/keystore"
)

// identitySlots bounds the identity memo: at most this many key records are
// remembered (and kept alive by it), about 700 bytes each.
const identitySlots = 4096

// identityMemo remembers, for recently allowed key records, their identity
// headers already in Envoy's form, so that allowing a cached key builds no
// header messages: they were most of what a response allocated.
//
// Sharing is safe because both sides are read-only: a key record is never
// modified once the cache hands it out (keystore.Cache.Lookup), and proto
// messages are only read when marshalled (the size cache they keep is
// written atomically). A record is recognised by its pointer, which its
// entry keeps alive, so a new record at a recycled address cannot be
// mistaken for it. Slots are chosen by key ID, so a record refetched from
// the store takes over its predecessor's slot.
type identityMemo struct {
	seed  maphash.Seed
	slots [identitySlots]atomic.Pointer[identityEntry]
}

type identityEntry struct {
	key  *keystore.Key
	opts []*corev3.HeaderValueOption // len == cap: appending copies
}

func newIdentityMemo() *identityMemo { return &identityMemo{seed: maphash.MakeSeed()} }

// options returns k's identity headers in Envoy's form. The slice is shared:
// callers may append to it (that copies) but not modify it.
func (m *identityMemo) options(k *keystore.Key) []*corev3.HeaderValueOption {
	slot := &m.slots[maphash.String(m.seed, k.ID)%identitySlots]
	if e := slot.Load(); e != nil && e.key == k {
		return e.opts
	}
	var buf [4]Header
	opts := headerOptions(identityHeaders(k, buf[:0]))
	opts = opts[:len(opts):len(opts)]
	slot.Store(&identityEntry{key: k, opts: opts})
	return opts
}
