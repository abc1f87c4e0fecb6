package keystore

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"iter"
	"strings"
	"time"
	"unsafe"
)

// base62 is the key alphabet, in ASCII order so that fixed-width base62
// strings sort like the numbers they encode.
const base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

const (
	randomLen   = 43  // 43 base62 characters carry 256 bits (62^43 > 2^256)
	checksumLen = 6   // CRC-32 fits in 6 base62 digits (62^6 > 2^32)
	maxKeyLen   = 256 // presented keys longer than this are rejected unread
	minLegacy   = 16
)

// Format checks keys against their shape (docs/keys.md) without touching a
// store.
// Its zero value is not useful: build it with NewFormat.
type Format struct {
	prefix string // e.g. "sk"; keys look like sk_<43 random><6 checksum>
}

// NewFormat returns the format for keys with the given prefix. The prefix is
// 1–16 characters of [A-Za-z0-9] so that a key stays one token for scanners.
func NewFormat(prefix string) (Format, error) {
	if len(prefix) < 1 || len(prefix) > 16 {
		return Format{}, fmt.Errorf("key prefix %q: want 1 to 16 characters", prefix)
	}
	for i := 0; i < len(prefix); i++ {
		if !isBase62(prefix[i]) {
			return Format{}, fmt.Errorf("key prefix %q: only letters and digits are allowed", prefix)
		}
	}
	return Format{prefix: prefix}, nil
}

// Prefix returns the configured key prefix.
func (f Format) Prefix() string { return f.prefix }

// Regexp is the pattern of this format's keys, for registering with secret scanners.
func (f Format) Regexp() string {
	return fmt.Sprintf(`\b%s_[0-9A-Za-z]{%d}\b`, f.prefix, randomLen+checksumLen)
}

// Generate returns a new key: prefix, underscore, 43 base62 characters from
// crypto/rand, and the 6-character base62 CRC-32 of everything before it.
func (f Format) Generate() (string, error) {
	b := make([]byte, 0, len(f.prefix)+1+randomLen+checksumLen)
	b = append(b, f.prefix...)
	b = append(b, '_')
	var err error
	if b, err = appendRandomBase62(b, randomLen); err != nil {
		return "", err
	}
	b = appendChecksum(b, crc32.ChecksumIEEE(b))
	return string(b), nil
}

// ErrMalformed is what Check returns for a key that cannot be valid; the
// message never contains the key.
var ErrMalformed = errors.New("malformed API key")

// Check reports whether key can be a valid key, with no store lookup: keys
// that start with the configured prefix and an underscore must have the exact
// shape and a matching checksum; any other (imported or legacy) key must be
// 16–256 characters of [A-Za-z0-9_.-] and hold no key of this format with
// its prefix mistyped or lost (bareKey).
func (f Format) Check(key string) error {
	if len(key) > maxKeyLen {
		return ErrMalformed
	}
	p := len(f.prefix)
	if len(key) > p && key[:p] == f.prefix && key[p] == '_' {
		if len(key) != p+1+randomLen+checksumLen {
			return ErrMalformed
		}
		for i := p + 1; i < len(key); i++ {
			if !isBase62(key[i]) {
				return ErrMalformed
			}
		}
		body := key[:len(key)-checksumLen]
		var want [checksumLen]byte
		appendChecksum(want[:0], crcString(body))
		if string(want[:]) != key[len(body):] {
			return ErrMalformed
		}
		return nil
	}
	if len(key) < minLegacy {
		return ErrMalformed
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		if !isBase62(c) && c != '_' && c != '.' && c != '-' {
			return ErrMalformed
		}
	}
	// A key of this format with its prefix mistyped ("SK_", "sk-", "sl_")
	// or lost is no imported key but a mistyped one: its checksum says so
	// (one imported key in 2³² would read as one), and it is refused here
	// rather than looked up, spending its sender's failed-attempts budget.
	if f.bareKey(key) {
		return ErrMalformed
	}
	return nil
}

// ContainsKey reports whether s holds a key of this format anywhere, glued
// to other text or not ("old_sk_…", "sk_…_v2", "note:sk_…"): the prefix, an
// underscore and the base62 characters of a key with a matching checksum.
// What comes before or after does not matter, so no joining character
// hides one.
func (f Format) ContainsKey(s string) bool {
	n := len(f.prefix) + 1 + randomLen + checksumLen
	for i := range f.markers(s) {
		if len(s)-i < n {
			break // and so is every later one
		}
		if f.Check(s[i:i+n]) == nil {
			return true
		}
	}
	return false
}

// ResemblesKey reports whether s holds what may be a key of this format or
// enough of one to matter: the prefix and an underscore followed by at
// least resembleLen base62 characters, whatever the checksum. It is for
// what is written out (logs, audit events, error messages), which must
// hold no part of a secret that would shorten a search for the rest: a key
// pasted without its last characters, or with one mistyped, fails
// ContainsKey's checksum yet carries most of its secret. Decisions about a
// request (what to strip, what to refuse) use ContainsKey, which a
// lookalike never sets off.
func (f Format) ResemblesKey(s string) bool {
	for i := range f.markers(s) {
		n := 0
		for j := i + len(f.prefix) + 1; j < len(s) && isBase62(s[j]); j++ {
			if n++; n >= resembleLen {
				return true
			}
		}
	}
	return false
}

// MayHoldKey is ResemblesKey read more loosely, for what is written out
// (audit fields, log lines) only, where a false positive costs a field
// replaced by a mark: it also sets off on the prefix followed by '-', '.',
// a space or "%5F" (the underscore mistyped, or percent-encoded), and counts
// the base62 characters after the marker across up to maxKeyGaps runs of up
// to maxGapBytes bytes that no key has (a character mistyped as '-' or '.',
// white space or a line break where the key was wrapped, right after the
// marker too). A key written so carries all of its secret but a character
// or two, which ResemblesKey's one run of 22 does not see. Read so loosely,
// a marker counts only at the start of a word.
//
// It also reads s as its readers may decode it: with bytes that draw
// nothing or group the key taken out (squeezedKey: "sk_A jkzg 0h3W…", a
// zero-width space every few characters), the prefix in any case
// ("SK_…" with a checksum mistyped), percent-decoded ("%73%6B%5F…"),
// and each long base64 token decoded (Basic credentials of "<key>:"). A
// key's random part alone, or with its prefix lost and its checksum
// mistyped, is a token like any other and is not seen.
func (f Format) MayHoldKey(s string) bool {
	if f.mayHoldKey(s) {
		return true
	}
	if strings.IndexByte(s, '%') >= 0 {
		if d := PercentDecoded(s); d != s && (f.mayHoldKey(d) || f.base64HoldsKey(d)) {
			return true
		}
	}
	return f.base64HoldsKey(s)
}

// mayHoldKey is MayHoldKey without the decoding readings.
func (f Format) mayHoldKey(s string) bool {
	return f.ResemblesKey(s) || f.nearKey(s, maxKeyGaps, true, resembleLen) || f.bareKey(s) || f.squeezedKey(s)
}

// base64HoldsKey reports whether a token of s in base64 (either alphabet,
// or both mixed, its padding ending it) of at least minBase64 characters
// decodes to text that holds a key (mayHoldKey): the Basic credentials of
// a key sent as a user name, or a key pasted encoded. '/', '+', '-' and
// '_' are base64 characters, so in a path or a list the token may start
// anywhere in its run ("/v1/x/<base64>"): each of the four alignments is
// decoded, one of which reads the token right.
func (f Format) base64HoldsKey(s string) bool {
	for i := 0; i < len(s); {
		if !isBase64(s[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(s) && isBase64(s[j]) {
			j++
		}
		if j-i >= minBase64 && f.base64RunHoldsKey(s[i:j]) {
			return true
		}
		i = j
	}
	return false
}

// base64RunHoldsKey decodes run, base64 characters of either alphabet, at
// each of its four alignments, and reports whether one holds a key.
func (f Format) base64RunHoldsKey(run string) bool {
	// On the stack for a field of up to 1 KiB (every label, every audit
	// field): decoding a long name must not allocate on every decision
	// that audits it.
	var stdBuf [1024]byte
	var decBuf [768]byte
	std := stdBuf[:0]
	if len(run) > len(stdBuf) {
		std = make([]byte, 0, len(run))
	}
	std = std[:len(run)]
	for k := 0; k < len(run); k++ {
		switch c := run[k]; c {
		case '-':
			std[k] = '+'
		case '_':
			std[k] = '/'
		default:
			std[k] = c
		}
	}
	dec := decBuf[:]
	if n := base64.RawStdEncoding.DecodedLen(len(std)); n > len(dec) {
		dec = make([]byte, n)
	}
	for off := range 4 {
		if len(std)-off < minBase64 {
			break
		}
		src := std[off:]
		if len(src)%4 == 1 {
			src = src[:len(src)-1] // a lone character decodes to nothing
		}
		// The string is read only during the call, before dec is written
		// again: a view of it, not a copy.
		if n, err := base64.RawStdEncoding.Decode(dec, src); err == nil && n > 0 && f.mayHoldKey(unsafe.String(&dec[0], n)) {
			return true
		}
	}
	return false
}

// minBase64 is the shortest base64 token base64HoldsKey decodes: the
// encoding of a key's random part and checksum, the least of a key that
// any reading here finds across gaps. (Shorter tokens, ids and digests,
// are common in what is written out, and are not decoded.)
const minBase64 = 4 * (randomLen + checksumLen) / 3

// isBase64 reports whether c is a base64 character of either alphabet
// (padding aside).
func isBase64(c byte) bool {
	return isBase62(c) || c == '+' || c == '/' || c == '-' || c == '_'
}

// PercentDecoded is s with every valid percent-encoding decoded and the
// rest as it is: a malformed one elsewhere must not hide a key.
func PercentDecoded(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			b = append(b, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		b = append(b, s[i])
	}
	return string(b)
}

// lower is c in lower case, if an ASCII letter.
func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// squeezedKey reports whether s holds a key of this format written with
// short runs of bytes no key has inside it (a wrap, a grouping by spaces
// or dashes, zero-width characters, the underscore mistyped or lost), its
// prefix in any case: read with every run of at most maxGapBytes such
// bytes between two base62 characters taken out, s holds the prefix
// followed by a key's random part and a checksum that matches it. The
// checksum keeps text that merely reads on after the prefix from counting
// ("desktop Safari…" reads as "desktopSafari…"): one in 2³² would.
func (f Format) squeezedKey(s string) bool {
	var buf [1024]byte // a field written out is at most this long
	sq := buf[:0]
	for i := 0; i < len(s); {
		if isBase62(s[i]) {
			sq = append(sq, s[i])
			i++
			continue
		}
		j := i + 1
		for j < len(s) && !isBase62(s[j]) {
			j++
		}
		if j-i > maxGapBytes || len(sq) == 0 || j == len(s) {
			sq = append(sq, ' ') // a break no key reads across
		}
		i = j
	}
	n, p := randomLen+checksumLen, len(f.prefix)
	for i := 0; i+p+n <= len(sq); i++ {
		if (p == 0 || lower(sq[i]) == lower(f.prefix[0])) && strings.EqualFold(string(sq[i:i+p]), f.prefix) && f.squeezedBody(sq[i+p:i+p+n]) {
			return true
		}
	}
	return false
}

// squeezedBody reports whether b is a key's random part and its checksum.
func (f Format) squeezedBody(b []byte) bool {
	for _, c := range b {
		if !isBase62(c) {
			return false
		}
	}
	return checksumOf(f, b)
}

// LabelHoldsKey is the reading for a key's labels (its name, owner,
// permissions and metadata), which are refused when they hold a key or
// most of one and are written into every decision the key makes:
// ContainsKey, and the prefix (in any case) at the start of a word,
// followed by '_', '-', '.', a space or "%5F", then (past at most
// maxGapBytes bytes no key has, a wrap) 22 base62 characters in a row, or
// a key's whole random part across one more such run. That is a key with its checksum
// mistyped or cut, or its underscore mistyped, but not words after the
// prefix ("sk-learn GradientBoostingClassifier",
// "sk_live_payments_reconciliation"), which MayHoldKey's reading across
// gaps would take for one.
//
// Also a key grouped or wrapped anywhere, or with its prefix in capitals,
// whose checksum matches (squeezedKey): "sk_A jkzg 0h3W…" as a name would
// reach the upstream, in x-authz-key-name, with every request the key
// makes. And a key's random part and checksum, with or without a prefix,
// once every byte no key has is taken out, however many in a row
// (strippedBody): a header drops the bytes it cannot carry (a run of control
// bytes in a record written by hand), and a reader who drops the rest has
// the key; a label is short, and the checksum keeps text from reading as
// one.
//
// And as its readers may decode it, as MayHoldKey reads it: percent-decoded,
// and each long base64 token decoded (a pasted Authorization header, "Basic
// " and the base64 of "<key>:").
func (f Format) LabelHoldsKey(s string) bool {
	if f.labelHoldsKey(s) || f.base64HoldsKey(s) {
		return true
	}
	if strings.IndexByte(s, '%') >= 0 {
		if d := PercentDecoded(s); d != s && (f.labelHoldsKey(d) || f.base64HoldsKey(d)) {
			return true
		}
	}
	return false
}

// labelHoldsKey is LabelHoldsKey without the decoding readings.
func (f Format) labelHoldsKey(s string) bool {
	return f.ContainsKey(s) || f.nearKey(s, 0, true, resembleLen) || f.nearKey(s, 1, true, randomLen) ||
		f.bareKey(s) || f.squeezedKey(s) || f.strippedBody(s)
}

// strippedBody reports whether s, with every byte that is not base62 taken
// out, holds a key's random part followed by its checksum anywhere.
func (f Format) strippedBody(s string) bool {
	const n = randomLen + checksumLen
	count := 0
	for i := 0; i < len(s); i++ {
		if isBase62(s[i]) {
			count++
		}
	}
	if count < n {
		return false // most labels: no copy made
	}
	var buf [1024]byte
	b := buf[:0]
	for i := 0; i < len(s); i++ {
		if isBase62(s[i]) {
			b = append(b, s[i])
		}
	}
	for i := 0; i+n <= len(b); i++ {
		if checksumOf(f, b[i:i+n]) {
			return true
		}
	}
	return false
}

// bareKey reports whether s holds a key without its prefix: a run of
// base62 characters that starts or ends with a key's random part and the
// checksum of the prefix, an underscore and that part. The prefix is
// public; the random part is the secret, and its checksum tells whoever
// reads it that it is a key of this server. So a key whose prefix was lost,
// typed in capitals or mistyped ("SK_", "sl_", "sk:") is one to every
// reader of what is written out, though no reading that looks for the
// prefix sees it. The checksum keeps other long tokens (hashes, ids) from
// reading as keys: one in 2³² would. A key glued to base62 characters on
// both sides is not seen.
func (f Format) bareKey(s string) bool {
	const n = randomLen + checksumLen
	for i := 0; i < len(s); {
		if !isBase62(s[i]) {
			i++
			continue
		}
		j := i + 1
		for j < len(s) && isBase62(s[j]) {
			j++
		}
		if j-i >= n && (checksumOf(f, s[i:i+n]) || checksumOf(f, s[j-n:j])) {
			return true
		}
		i = j
	}
	return false
}

// checksumOf reports whether body (a string or a byte slice, read without
// a copy), a key's random part and checksum in base62, is a key of this
// format's once the prefix and "_" go before it. A checksum's first digit is 0–4 (2³² is "4gfFC4" in base62), so
// most bodies that are no key are turned away before the CRC is worked out.
func checksumOf[T string | []byte](f Format, body T) bool {
	if c := body[randomLen]; c < '0' || c > '4' {
		return false
	}
	crc := ^uint32(0)
	for i := 0; i < len(f.prefix); i++ {
		crc = ieeeTable[byte(crc)^f.prefix[i]] ^ crc>>8
	}
	crc = ieeeTable[byte(crc)^'_'] ^ crc>>8
	for i := 0; i < randomLen; i++ {
		crc = ieeeTable[byte(crc)^body[i]] ^ crc>>8
	}
	var want [checksumLen]byte
	appendChecksum(want[:0], ^crc)
	for i := range checksumLen {
		if want[i] != body[randomLen+i] {
			return false
		}
	}
	return true
}

// nearKey reports whether s holds, where a word starts, the prefix (in any
// case, with fold) and one of the separators a key's underscore may be
// mistyped or encoded as, followed by need base62 characters read across
// up to gaps runs of bytes no key has (and one such run right after the
// separator).
func (f Format) nearKey(s string, gaps int, fold bool, need int) bool {
	p := len(f.prefix)
	for i := 0; i+p < len(s); i++ {
		if fold && (p > 0 && lower(s[i]) != lower(f.prefix[0]) || !strings.EqualFold(s[i:i+p], f.prefix)) || !fold && s[i:i+p] != f.prefix {
			continue
		}
		if i > 0 && isBase62(s[i-1]) {
			// Inside a word ("task-", "desk_"): read loosely there,
			// hyphenated names would be taken for keys. A key glued
			// to letters is ResemblesKey's and ContainsKey's.
			continue
		}
		for _, sep := range [...]string{"_", "-", ".", " ", "%5F", "%5f"} {
			if strings.HasPrefix(s[i+p:], sep) && base62RunAcrossGaps(s[i+p+len(sep):], gaps, need) >= need {
				return true
			}
		}
	}
	return false
}

// base62RunAcrossGaps counts the base62 characters at the start of s, up
// to need, read past a first run of at most maxGapBytes other bytes and
// across at most gaps more such runs.
func base62RunAcrossGaps(s string, gaps, need int) int {
	k := 0
	for k < len(s) && k < maxGapBytes && !isBase62(s[k]) {
		k++
	}
	n, runs, gap := 0, 0, 0
	for ; k < len(s) && n < need; k++ {
		if isBase62(s[k]) {
			n, gap = n+1, 0
			continue
		}
		if n == 0 {
			break
		}
		if gap == 0 {
			runs++
		}
		if gap++; runs > gaps || gap > maxGapBytes {
			break
		}
	}
	return n
}

// maxKeyGaps is how many runs of bytes no key has MayHoldKey reads across,
// and maxGapBytes how long each may be: a tab and three spaces, "\r\n"
// and two spaces, or two no-break spaces (two bytes each in UTF-8) where a
// key was wrapped.
const (
	maxKeyGaps  = 3
	maxGapBytes = 4
)

// markers yields the index of each place in s where the prefix and its
// underscore start, overlapping ones included, in order.
func (f Format) markers(s string) iter.Seq[int] {
	marker := f.prefix + "_"
	return func(yield func(int) bool) {
		for i := strings.Index(s, marker); i >= 0; {
			if !yield(i) {
				return
			}
			j := strings.Index(s[i+1:], marker)
			if j < 0 {
				return
			}
			i += 1 + j
		}
	}
}

// resembleLen is how many base62 characters after the prefix make a
// string resemble a key: half of a key's random part and one more, 131 of
// its 256 bits, so that what is left unknown of one written out in part
// is at most 125 bits.
const resembleLen = randomLen/2 + 1

var ieeeTable = crc32.MakeTable(crc32.IEEE)

// crcString is crc32.ChecksumIEEE of s without converting s to a []byte,
// which would allocate on every check.
func crcString(s string) uint32 {
	crc := ^uint32(0)
	for i := 0; i < len(s); i++ {
		crc = ieeeTable[byte(crc)^s[i]] ^ crc>>8
	}
	return ^crc
}

func isBase62(c byte) bool {
	return '0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z'
}

// appendChecksum appends sum in base62, most significant digit first,
// left-padded with '0' to checksumLen digits.
func appendChecksum(b []byte, sum uint32) []byte {
	var d [checksumLen]byte
	v := uint64(sum)
	for i := checksumLen - 1; i >= 0; i-- {
		d[i] = base62[v%62]
		v /= 62
	}
	return append(b, d[:]...)
}

// appendRandomBase62 appends n uniformly random base62 characters, using
// rejection sampling so that no character is likelier than another.
func appendRandomBase62(b []byte, n int) ([]byte, error) {
	var buf [64]byte
	for n > 0 {
		if _, err := rand.Read(buf[:]); err != nil {
			return nil, fmt.Errorf("read random bytes: %w", err)
		}
		for _, r := range buf {
			if r >= 248 { // 248 = 4*62: keep r%62 uniform
				continue
			}
			b = append(b, base62[r%62])
			if n--; n == 0 {
				break
			}
		}
	}
	return b, nil
}

// IDPrefix starts every key id, so ids are never mistaken for keys.
const IDPrefix = "key_"

// idTimeChars is how many base62 digits of an id hold its time.
const idTimeChars = 8

// NewID returns a public key id: "key_", the creation time in milliseconds
// as 8 base62 digits, then 12 random base62 digits. Ids therefore sort in
// creation order to the millisecond (within one, by their random part),
// which is what makes cursor pagination stable.
func NewID(now time.Time) (string, error) {
	b := make([]byte, 0, len(IDPrefix)+20)
	b = append(b, IDPrefix...)
	var d [idTimeChars]byte
	ms := uint64(now.UnixMilli())
	for i := len(d) - 1; i >= 0; i-- {
		d[i] = base62[ms%62]
		ms /= 62
	}
	b = append(b, d[:]...)
	b, err := appendRandomBase62(b, 12)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// ValidID reports whether s has the shape of an id from NewID, so that
// admin paths and CLI arguments can be rejected before any store call.
func ValidID(s string) bool {
	if len(s) != len(IDPrefix)+20 || s[:len(IDPrefix)] != IDPrefix {
		return false
	}
	for i := len(IDPrefix); i < len(s); i++ {
		if !isBase62(s[i]) {
			return false
		}
	}
	return true
}
