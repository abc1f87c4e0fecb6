package keystore

import (
	"encoding/binary"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"time"
)

// A record is a key as the cache holds it: encoded into bytes, inline in
// its cache entry, so that the collector has nothing to walk for it. A
// decoded *Key is a dozen pointers into three objects; a hundred thousand of
// them were most of the marking of every collection, and on a busy server a
// collection came every second or so. Only a record longer than
// recordInline is kept in a slice of its own (one pointer, to bytes the
// collector does not read).
type record struct {
	n      uint16 // length of the encoding in inline; unused when big is set
	inline [recordInline]byte
	big    []byte
}

// recordInline bytes hold a key with a name, an owner and a few
// permissions, policies or allowlist entries; the cache entry is then 320
// bytes in all.
const recordInline = 216

// set stores the encoding of k in r, encoding it into buf first.
func (r *record) set(k *Key, buf []byte) {
	buf = appendRecord(buf[:0], k)
	if len(buf) <= recordInline {
		r.n, r.big = uint16(copy(r.inline[:], buf)), nil
		return
	}
	r.n, r.big = 0, append([]byte(nil), buf...)
}

// bytes returns the encoding r holds.
func (r *record) bytes() []byte {
	if r.big != nil {
		return r.big
	}
	return r.inline[:r.n]
}

// The encoding: a header of flags, times, the rate limit, list lengths and
// the allowlist, then the length of every string, then the strings' bytes,
// one after the other, so that decoding copies them in one allocation.
//
//	flags          1 byte: which of the times are set; whether the rate parsed
//	times          created_at, then each set one of expires_at,
//	               last_used_at and revoked_at: length, time.AppendBinary
//	rate           N and window (nanoseconds), when it parsed
//	list counts    permissions, policies, allowlist, metadata: n+1, 0 = nil
//	allowlist      each prefix: length, netip.Prefix.AppendBinary
//	string lengths id, name, owner, rotated_from, rotated_to, lineage, rate text,
//	               each permission, each policy, each metadata name and value
//	string bytes   in that order
//
// Numbers are uvarints. Metadata goes in the order of its names.
const (
	flagExpires = 1 << iota
	flagLastUsed
	flagRevoked
	flagRate
)

// appendRecord appends the encoding of k to dst.
func appendRecord(dst []byte, k *Key) []byte {
	var flags byte
	for i, t := range [...]*time.Time{k.ExpiresAt, k.LastUsedAt, k.RevokedAt} {
		if t != nil {
			flags |= 1 << i
		}
	}
	if k.RateLimit.ok {
		flags |= flagRate
	}
	dst = append(dst, flags)
	dst = appendTime(dst, k.CreatedAt)
	for _, t := range [...]*time.Time{k.ExpiresAt, k.LastUsedAt, k.RevokedAt} {
		if t != nil {
			dst = appendTime(dst, *t)
		}
	}
	if k.RateLimit.ok {
		dst = binary.AppendUvarint(dst, uint64(k.RateLimit.rate.N))
		dst = binary.AppendUvarint(dst, uint64(k.RateLimit.rate.Window))
	}
	dst = appendCount(dst, k.Permissions == nil, len(k.Permissions))
	dst = appendCount(dst, k.Policies == nil, len(k.Policies))
	dst = appendCount(dst, k.IPAllowlist == nil, len(k.IPAllowlist))
	dst = appendCount(dst, len(k.Meta) == 0, len(k.Meta)) // no metadata decodes as nil, which means the same everywhere
	for _, p := range k.IPAllowlist {
		n := len(dst)
		dst = append(dst, 0)
		dst, _ = p.AppendBinary(dst) // never fails
		dst[n] = byte(len(dst) - n - 1)
	}
	strs := [recordStrings]string{k.ID, k.Name, k.Owner, k.RotatedFrom, k.RotatedTo, k.Lineage, k.RateLimit.text}
	for _, s := range strs {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
	}
	for _, s := range k.Permissions {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
	}
	for _, s := range k.Policies {
		dst = binary.AppendUvarint(dst, uint64(len(s)))
	}
	names := slices.Sorted(maps.Keys(k.Meta)) // one order for both loops
	for _, name := range names {
		dst = binary.AppendUvarint(dst, uint64(len(name)))
		dst = binary.AppendUvarint(dst, uint64(len(k.Meta[name])))
	}
	for _, s := range strs {
		dst = append(dst, s...)
	}
	for _, s := range k.Permissions {
		dst = append(dst, s...)
	}
	for _, s := range k.Policies {
		dst = append(dst, s...)
	}
	for _, name := range names {
		dst = append(dst, name...)
		dst = append(dst, k.Meta[name]...)
	}
	return dst
}

// appendTime appends t, in its zone when the binary form can say it. It
// cannot say an offset of exactly one minute west of UTC (the form's marker
// for UTC) or beyond ±22 days, which a stored RFC 3339 time could still
// carry: such a time goes as the same instant in UTC, so that the key is
// still cached rather than asked of the store on every check.
func appendTime(dst []byte, t time.Time) []byte {
	n := len(dst)
	dst = append(dst, 0)
	out, err := t.AppendBinary(dst)
	if err != nil {
		out, _ = t.UTC().AppendBinary(dst) // UTC never fails
	}
	out[n] = byte(len(out) - n - 1)
	return out
}

func appendCount(dst []byte, isNil bool, n int) []byte {
	if isNil {
		return append(dst, 0)
	}
	return binary.AppendUvarint(dst, uint64(n)+1)
}

var errBadRecord = errors.New("keystore: malformed cache record")

// recordReader reads an encoding; the first malformed part sets err, after
// which every read returns zero.
type recordReader struct {
	b   []byte
	err error
}

func (r *recordReader) fail() { r.err, r.b = errBadRecord, nil }

func (r *recordReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

// next returns the next n bytes.
func (r *recordReader) next(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

// count reads a list count: -1 for nil.
func (r *recordReader) count() int {
	v := r.uvarint()
	if v > uint64(len(r.b))+1 { // every element takes at least a byte
		r.fail()
		return -1
	}
	return int(v) - 1
}

func (r *recordReader) time(t *time.Time) {
	n := r.next(1)
	if r.err != nil {
		return
	}
	if err := t.UnmarshalBinary(r.next(uint64(n[0]))); err != nil {
		r.fail()
	}
}

// recordStrings is the number of single strings a record holds (strs in
// appendRecord), before its lists.
const recordStrings = 7

// decodeRecord returns the key b encodes, in at most five allocations: the
// record with its times, the strings' bytes, the two string lists, the
// allowlist and the metadata (the last three only when the key has them).
func decodeRecord(b []byte) (*Key, error) {
	r := recordReader{b: b}
	flags := r.next(1)
	if r.err != nil {
		return nil, r.err
	}
	k, times := new(Key), (*[3]time.Time)(nil)
	if flags[0]&(flagExpires|flagLastUsed|flagRevoked) != 0 {
		block := new(struct {
			key   Key
			times [3]time.Time
		})
		k, times = &block.key, &block.times
	}
	r.time(&k.CreatedAt)
	for i, t := range [...]**time.Time{&k.ExpiresAt, &k.LastUsedAt, &k.RevokedAt} {
		if flags[0]&(1<<i) != 0 {
			r.time(&times[i])
			*t = &times[i]
		}
	}
	if flags[0]&flagRate != 0 {
		k.RateLimit.ok = true
		k.RateLimit.rate.N = int64(r.uvarint())
		k.RateLimit.rate.Window = time.Duration(r.uvarint())
	}
	np, npol, nallow, nmeta := r.count(), r.count(), r.count(), r.count()
	if r.err != nil {
		return nil, r.err
	}
	if nallow >= 0 {
		k.IPAllowlist = make([]netip.Prefix, nallow)
		for i := range k.IPAllowlist {
			n := r.next(1)
			if r.err != nil {
				return nil, r.err
			}
			if err := k.IPAllowlist[i].UnmarshalBinary(r.next(uint64(n[0]))); err != nil {
				return nil, errBadRecord
			}
		}
	}
	nstr := recordStrings + max(np, 0) + max(npol, 0) + 2*max(nmeta, 0)
	if nstr > len(r.b) {
		return nil, errBadRecord
	}
	var lens [32]uint64
	lengths := lens[:0]
	total := uint64(0)
	for range nstr {
		n := r.uvarint()
		lengths = append(lengths, n)
		total += n
	}
	if r.err != nil || total != uint64(len(r.b)) {
		return nil, errBadRecord
	}
	all := string(r.b)
	next := func() string {
		s := all[:lengths[0]]
		all, lengths = all[lengths[0]:], lengths[1:]
		return s
	}
	k.ID, k.Name, k.Owner, k.RotatedFrom, k.RotatedTo, k.Lineage, k.RateLimit.text = next(), next(), next(), next(), next(), next(), next()
	if np >= 0 || npol >= 0 {
		lists := make([]string, max(np, 0)+max(npol, 0))
		for i := range lists {
			lists[i] = next()
		}
		if np >= 0 {
			k.Permissions = lists[:np:np]
		}
		if npol >= 0 {
			k.Policies = lists[max(np, 0):]
		}
	}
	if nmeta > 0 {
		k.Meta = make(map[string]string, nmeta)
		for range nmeta {
			name := next()
			k.Meta[name] = next()
		}
	}
	return k, nil
}
