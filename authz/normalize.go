package authz

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Errors from NormalizePath. Their text is safe to show a client.
var (
	errPathNotAbsolute    = errors.New("path must start with /")
	errPathFragment       = errors.New("request target contains '#': a request carries no fragment, and upstreams read a raw one as part of the path or query")
	errPathEncodedSep     = errors.New("path contains an encoded / or \\")
	errPathBackslash      = errors.New("path contains a backslash")
	errPathControl        = errors.New("path contains a control character")
	errPathBadEscape      = errors.New("path contains a malformed percent-encoding")
	errPathTooLong        = errors.New("path is too long")
	errPathSemicolon      = errors.New("path contains ';' (matrix parameters are not accepted)")
	errPathEncodedSemi    = errors.New("path contains an encoded ;")
	errPathDoubleEncoded  = errors.New("path contains a percent-encoded percent-encoding")
	errPathRawNonASCII    = errors.New("path contains a byte that is not ASCII; percent-encode it")
	errPathRawReserved    = errors.New("path contains a character that must be percent-encoded")
	errPathBadUTF8        = errors.New("path contains percent-encoded bytes that are not UTF-8")
	errPathEncodedUnicode = errors.New("path contains a percent-encoded non-ASCII character, which case-insensitive upstreams may fold")
	errPathEncodedDot     = errors.New("path has a percent-encoded dot segment (%2e), which some upstreams resolve and others take literally")
	errPathDotSegment     = errors.New("path has a . or .. segment, which some upstreams resolve and others take literally (Envoy's normalize_path resolves them)")
	errPathServletDot     = errors.New("path has a . or .. segment (with ;params or percent-encoded), which servlet containers resolve and Spring's path patterns take literally")
	errPathEmptySegment   = errors.New("path has an empty segment (//), which some upstreams merge and others keep (Envoy's merge_slashes merges them)")
	errPathEdgeSpace      = errors.New("path has a segment that begins or ends with white space (%20), which some upstreams trim and then serve as another path")
	errPathEncodedPlain   = errors.New("path percent-encodes a letter, digit or one of -._~, which routers that match the raw path (Express) read as another name than the decoded one; send it unencoded")
)

// maxPathLen bounds the path without its query; maxTargetLen the request
// target with it (Envoy's own default bound on all headers is 60 KiB).
const (
	maxPathLen   = 8192
	maxTargetLen = 64 << 10
)

// Paths are the opt-in readings of a request path, each for one kind of
// upstream that reads paths more loosely than Envoy's route matcher. The
// zero value is the strict reading: every spelling such upstreams could read
// differently is 400.
type Paths struct {
	// Servlet reads ";params" as servlet containers do: they are cut from
	// every segment ("/api/users;jsessionid=1" is "/api/users") and "//"
	// merges. A dot segment is 400 still, with params or encoded too
	// ("/a/..;x/b"): the container resolves it, Spring's path patterns
	// take it as a name. Otherwise a ";" in a path is 400.
	Servlet bool
	// CaseInsensitive says the upstreams fold letter case, Unicode's too:
	// a path that holds a percent-encoded non-ASCII byte is 400. (A path
	// whose ASCII letter case picks its route is 400 whatever this says:
	// Express and ASP.NET Core route case-insensitively by default.)
	// Matching stays case-sensitive.
	CaseInsensitive bool
}

// pathRules are the Paths as the normaliser reads them; the zero value is
// the strict default.
type pathRules struct {
	servlet  bool // Paths.Servlet
	foldCase bool // Paths.CaseInsensitive: the upstreams fold ASCII case
}

func newPathRules(p Paths) pathRules {
	return pathRules{servlet: p.Servlet, foldCase: p.CaseInsensitive}
}

// NormalizePath turns a request's raw path (query allowed, it is dropped) into
// the one form that route matching sees, with the default path rules (see
// normalize). Route patterns must be in this form.
func NormalizePath(raw string) (string, error) { return pathRules{}.normalize(raw) }

// normalize turns a raw path into its canonical form: every byte has one
// spelling (the characters a path may hold raw are decoded from their
// percent-encodings, and every other byte keeps or takes an upper-case
// percent-encoding). It rejects what upstreams disagree about, so that no
// spelling of a path can reach a route other than the one extauthz
// authorised: a path that is not in normal form ("//", a "." or ".."
// segment, raw or encoded: servlet containers resolve them, Go's ServeMux
// redirects, Express, Flask and Rails take them literally), an encoded "/"
// or "\", a raw "\" (some servers treat it as a separator), a ";" (servlet
// containers cut ";params" off a segment before they resolve dot segments,
// so "..;" climbs for them and not for anyone else), an encoded ";", a NUL
// or control character raw or encoded, a malformed or double
// percent-encoding, raw bytes that must be encoded (non-ASCII, space,
// quotes, brackets...), and encoded bytes that are not UTF-8.
//
// With the servlet reading (every upstream is a servlet container), it
// reads the path as they do instead: ";params" cut from every segment,
// then the path decoded and "//" merged. A dot segment is still rejected,
// with params or encoded too: the container resolves it for its servlet
// path, and Spring MVC's path patterns, which match the request URI,
// take it as a name.
//
// It allocates only when the path changes.
func (pr pathRules) normalize(raw string) (string, error) {
	if len(raw) > maxTargetLen {
		return "", errPathTooLong
	}
	// A request target has no fragment (RFC 9112). nginx passes a raw "#"
	// on as written, and Go's net/http (Caddy, Traefik, Go upstreams) reads
	// it as part of the path or query: cutting there would decide another
	// path than the one served.
	if strings.IndexByte(raw, '#') >= 0 {
		return "", errPathFragment
	}
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	if len(raw) > maxPathLen {
		return "", errPathTooLong
	}
	if raw == "" || raw[0] != '/' {
		return "", errPathNotAbsolute
	}
	clean := true
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if plainInPath[c] {
			continue // most bytes: one table load
		}
		switch {
		case c < 0x20 || c == 0x7f:
			return "", errPathControl
		case c >= 0x80:
			return "", errPathRawNonASCII
		case c == '\\':
			return "", errPathBackslash
		case mustEncode(c):
			return "", errPathRawReserved
		case c == ';':
			if !pr.servlet {
				return "", errPathSemicolon
			}
			clean = false
		case c == '%':
			d, ok := escapeAt(raw, i)
			if !ok {
				return "", errPathBadEscape
			}
			switch {
			case d == '/' || d == '\\':
				return "", errPathEncodedSep
			case d < 0x20 || d == 0x7f:
				return "", errPathControl
			case d == ';':
				return "", errPathEncodedSemi
			case d == '%' && doubleEncoded(raw, i):
				return "", errPathDoubleEncoded
			case d >= 0x80:
				if pr.foldCase {
					return "", errPathEncodedUnicode
				}
				clean = false // its UTF-8 is checked on the slow path
			case isUnreserved(d) && d != '.' && !pr.servlet:
				// Express and koa-router match a literal segment against
				// the raw path and decode only what a wildcard captures:
				// "/files/%70ublic" is not their "/files/public" but
				// "/files/:name". Most other upstreams decode first. No
				// client need encode these (RFC 3986 says not to), and
				// Envoy's normalize_path decodes them before extauthz
				// sees them; nginx, Caddy and Traefik pass them on as sent.
				// ("%2e" is left to the dot-segment rules: normalizeSlow.)
				return "", errPathEncodedPlain
			case rawInPath(d) || isLowerHex(raw[i+1]) || isLowerHex(raw[i+2]):
				clean = false
			}
			i += 2
		case c == '/' && i > 0 && raw[i-1] == '/':
			if !pr.servlet {
				return "", errPathEmptySegment
			}
			clean = false
		case c == '.' && raw[i-1] == '/' && isDotSegmentAt(raw, i):
			return "", errPathDotSegment
		}
	}
	if !clean {
		return pr.normalizeSlow(raw)
	}
	if edgeSpace(raw) {
		return "", errPathEdgeSpace
	}
	return raw, nil
}

// edgeSpace reports whether a segment of the canonical path p begins or
// ends with white space: an encoded space, or an encoded Unicode white
// space (p holds no raw one, nor an encoded control character). Spring MVC
// before 4.3 trims every segment (and drops one left empty), so that
// "/api/admin%20" and "/api/%20/admin" are "/api/admin" to it; other code
// trims Unicode white space too. A space inside a segment ("/a%20b") is a
// name like any other.
func edgeSpace(p string) bool {
	if strings.IndexByte(p, '%') < 0 {
		return false // the usual path
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		if len(seg) < 3 || seg[0] != '%' && seg[len(seg)-3] != '%' {
			continue
		}
		var buf [utf8.UTFMax]byte
		// The first character: up to utf8.UTFMax escapes from the start.
		n := 0
		for i := 0; n < len(buf) && i+2 < len(seg) && seg[i] == '%'; i += 3 {
			buf[n], _ = escapeAt(seg, i)
			n++
		}
		if r, _ := utf8.DecodeRune(buf[:n]); n > 0 && trimmedSpace(r) {
			return true
		}
		// The last: up to utf8.UTFMax escapes back from the end.
		n = 0
		for i := len(seg) - 3; n < len(buf) && i >= 0 && seg[i] == '%'; i -= 3 {
			n++
			buf[len(buf)-n], _ = escapeAt(seg, i)
		}
		if r, _ := utf8.DecodeLastRune(buf[len(buf)-n:]); n > 0 && trimmedSpace(r) {
			return true
		}
	}
	return false
}

// trimmedSpace reports whether some upstream's trim removes r: Unicode's
// white space, the byte-order mark (JavaScript's String.prototype.trim)
// and the Mongolian vowel separator (white space before Unicode 6.3, and
// still to older .NET and Java).
func trimmedSpace(r rune) bool {
	return unicode.IsSpace(r) || r == '\uFEFF' || r == '\u180E'
}

// normalizeSlow cuts ";params" (servlet reading), decodes and re-encodes
// escapes, then resolves segments. The input has already been checked for
// bad escapes and forbidden characters.
func (pr pathRules) normalizeSlow(raw string) (string, error) {
	if pr.servlet {
		raw = cutMatrixParams(raw)
	} else if encodedDotSegment(raw) {
		// Servlet containers and Envoy's normalize_path decode "%2e%2e" and
		// climb; Go's ServeMux and other routers that match escaped
		// segments take it as a segment named "..", so the same request
		// reaches different handlers. (With the servlet reading, every
		// upstream is a servlet container, and it climbs.)
		return "", errPathEncodedDot
	} else if strings.Contains(raw, "%2e") || strings.Contains(raw, "%2E") {
		return "", errPathEncodedPlain // an encoded "." within a name ("index%2Ephp")
	}
	var b strings.Builder
	b.Grow(len(raw))
	checkedTo := 0 // raw[:checkedTo] holds no unchecked run of encoded non-ASCII bytes
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		d, _ := escapeAt(raw, i)
		if d >= 0x80 && i >= checkedTo {
			// A run of encoded non-ASCII bytes must be UTF-8 (no overlong
			// forms, which some old servers decoded into "." and "/").
			j := i
			for j+2 < len(raw) && raw[j] == '%' {
				if e, _ := escapeAt(raw, j); e < 0x80 {
					break
				}
				j += 3
			}
			if !validEncodedUTF8(raw[i:j]) {
				return "", errPathBadUTF8
			}
			checkedTo = j
		}
		if rawInPath(d) {
			b.WriteByte(d)
		} else {
			// Keep other escapes, with upper-case hex so one byte has one spelling.
			b.WriteByte('%')
			b.WriteByte(upperHex(raw[i+1]))
			b.WriteByte(upperHex(raw[i+2]))
		}
		i += 2
	}
	decoded := b.String()
	for i := 0; i+2 < len(decoded); i++ {
		if decoded[i] == '%' && decoded[i+1] == '2' && decoded[i+2] == '5' && doubleEncoded(decoded, i) {
			return "", errPathDoubleEncoded // "%25" + "%34%31" decodes to "%2541"
		}
	}

	segs := make([]string, 0, strings.Count(decoded, "/"))
	for seg := range strings.SplitSeq(decoded[1:], "/") {
		switch seg {
		case "": // "//", merged (servlet reading)
		case ".", "..":
			// Only the servlet reading gets here (the strict one refused
			// every dot segment, raw or encoded), from "..;x" or "%2e%2e".
			// The container resolves it for its servlet path, but Spring
			// MVC's path patterns (its default since Spring Boot 2.6) match
			// the raw request URI with ";params" cut and each segment
			// decoded, resolving nothing: "/api/admin/x/..;/..;/..;/public"
			// would be "/public" here and "/api/admin/**" there.
			return "", errPathServletDot
		default:
			segs = append(segs, seg)
		}
	}
	out := "/" + strings.Join(segs, "/")
	// A trailing slash is part of the path the upstream sees: keep it (route
	// matching decides what it means).
	if len(segs) > 0 && strings.HasSuffix(decoded, "/") {
		out += "/"
	}
	if edgeSpace(out) {
		return "", errPathEdgeSpace
	}
	return out, nil
}

// keptSubDelims returns the canonical form of raw, a path the strict reading
// accepted, but with the percent-encodings of the sub-delimiters
// !$&'()*+,=:@ kept (in upper-case hex) instead of decoded, or "" when raw
// encodes none. That is how a router that matches the raw path (Express)
// sees its literals: "/v1/things%3Alist" is not "/v1/things:list" to it.
func keptSubDelims(raw string) string {
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	kept := false
	for i := strings.IndexByte(raw, '%'); i >= 0 && i+2 < len(raw); {
		if d, _ := escapeAt(raw, i); rawInPath(d) && !isUnreserved(d) {
			kept = true
			break
		}
		next := strings.IndexByte(raw[i+3:], '%')
		if next < 0 {
			break
		}
		i += 3 + next
	}
	if !kept {
		return "" // the usual path
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		d, ok := escapeAt(raw, i)
		if raw[i] != '%' || !ok {
			b.WriteByte(raw[i])
			continue
		}
		if rawInPath(d) && isUnreserved(d) {
			b.WriteByte(d) // refused by the strict reading; here for completeness
		} else {
			b.WriteByte('%')
			b.WriteByte(upperHex(raw[i+1]))
			b.WriteByte(upperHex(raw[i+2]))
		}
		i += 2
	}
	return b.String()
}

// isDotSegmentAt reports whether the segment starting at raw[i] is "." or
// "..".
func isDotSegmentAt(raw string, i int) bool {
	seg := raw[i:]
	if j := strings.IndexByte(seg, '/'); j >= 0 {
		seg = seg[:j]
	}
	return seg == "." || seg == ".."
}

// encodedDotSegment reports whether a segment of raw decodes to "." or ".."
// but is not written so.
func encodedDotSegment(raw string) bool {
	for seg := range strings.SplitSeq(raw, "/") {
		if len(seg) < 3 || len(seg) > 6 || strings.IndexByte(seg, '%') < 0 {
			continue
		}
		dots := 0
		for i := 0; i < len(seg); i++ {
			switch {
			case seg[i] == '.':
				dots++
			case seg[i] == '%' && i+2 < len(seg) && seg[i+1] == '2' && (seg[i+2] == 'e' || seg[i+2] == 'E'):
				dots++
				i += 2
			default:
				dots = 3 // not a dot segment
			}
		}
		if dots <= 2 {
			return true
		}
	}
	return false
}

// cutMatrixParams removes ";params" from every segment of raw, as servlet
// containers do before they decode the path and resolve its dot segments.
func cutMatrixParams(raw string) string {
	var b strings.Builder
	b.Grow(len(raw))
	for raw != "" {
		semi := strings.IndexByte(raw, ';')
		if semi < 0 {
			b.WriteString(raw)
			break
		}
		b.WriteString(raw[:semi])
		raw = raw[semi:]
		if slash := strings.IndexByte(raw, '/'); slash >= 0 {
			raw = raw[slash:]
		} else {
			raw = ""
		}
	}
	return b.String()
}

// escapeAt decodes the percent-encoding at s[i] ("%41" is 'A').
func escapeAt(s string, i int) (byte, bool) {
	if i+2 >= len(s) {
		return 0, false
	}
	hi, lo := unhex(s[i+1]), unhex(s[i+2])
	if hi < 0 || lo < 0 {
		return 0, false
	}
	return byte(hi<<4 | lo), true
}

// doubleEncoded reports whether the "%25" at s[i] starts "%25XX" with hex
// XX: an upstream that decodes twice reads it as another escape, such as
// "%252e" for ".".
func doubleEncoded(s string, i int) bool {
	return i+4 < len(s) && unhex(s[i+3]) >= 0 && unhex(s[i+4]) >= 0
}

// validEncodedUTF8 reports whether a run of escapes ("%C3%A9") decodes to
// valid UTF-8.
func validEncodedUTF8(run string) bool {
	var buf [64]byte
	dec := buf[:0]
	for i := 0; i+2 < len(run); i += 3 {
		d, _ := escapeAt(run, i)
		dec = append(dec, d)
	}
	return utf8.Valid(dec)
}

// rawInPath reports whether c is written raw in a canonical path: RFC
// 3986's unreserved characters, its sub-delimiters but ";", and ":" and "@".
// Upstreams decode the others' escapes alike before they route, so a raw
// and an encoded spelling would be two names for one resource.
func rawInPath(c byte) bool {
	if isUnreserved(c) {
		return true
	}
	switch c {
	case '!', '$', '&', '\'', '(', ')', '*', '+', ',', '=', ':', '@':
		return true
	}
	return false
}

// plainInPath marks the bytes the fast scan passes without a second look:
// those a canonical path holds raw, but for "/", "." and ";" (which may
// start an empty segment, a dot segment or parameters).
var plainInPath = func() (t [256]bool) {
	for c := range 256 {
		t[c] = rawInPath(byte(c)) && c != '.'
	}
	return t
}()

// mustEncode reports whether c may not appear raw in a path (RFC 3986): it
// is accepted only percent-encoded, so that it has one spelling.
func mustEncode(c byte) bool {
	switch c {
	case ' ', '"', '<', '>', '[', ']', '^', '`', '{', '|', '}':
		return true
	}
	return false
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

func isLowerHex(c byte) bool { return 'a' <= c && c <= 'f' }

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func upperHex(c byte) byte {
	if 'a' <= c && c <= 'f' {
		return c - 'a' + 'A'
	}
	return c
}

// normalizeMethod checks that an HTTP method is an upper-case token. A
// method is case-sensitive (RFC 9110): "get" is not GET to every upstream,
// and one that routes it to another handler than GET's would be served
// under rules extauthz did not apply, so it is rejected rather than
// upper-cased.
func normalizeMethod(m string) (string, bool) {
	if m == "" || len(m) > 32 {
		return "", false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !('A' <= c && c <= 'Z') && c != '-' && c != '_' {
			return "", false
		}
	}
	return m, true
}
