package authz

import (
	"errors"
	"strings"
)

// Errors from NormalizePath. Their text is safe to show a client.
var (
	errPathNotAbsolute = errors.New("path must start with /")
	errPathEscapes     = errors.New("path climbs above the root")
	errPathEncodedSep  = errors.New("path contains an encoded / or \\")
	errPathBackslash   = errors.New("path contains a backslash")
	errPathControl     = errors.New("path contains a control character")
	errPathBadEscape   = errors.New("path contains a malformed percent-encoding")
	errPathTooLong     = errors.New("path is too long")
)

const maxPathLen = 8192

// NormalizePath turns a request's raw path (query allowed, it is dropped) into
// the one form that route matching sees (SPEC §3 step 1): percent-encoded
// unreserved characters decoded, "//" merged, "." and ".." resolved. It
// rejects what upstreams disagree about, so that no spelling of a path can
// reach a route other than the one extauthz authorised: an encoded "/" or
// "\", a raw "\" (some servers treat it as a separator), a NUL or control
// character raw or encoded, a malformed escape, and ".." above the root.
//
// It allocates only when the path changes.
func NormalizePath(raw string) (string, error) {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
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
		switch {
		case c < 0x20 || c == 0x7f:
			return "", errPathControl
		case c == '\\':
			return "", errPathBackslash
		case c == '%':
			if i+2 >= len(raw) || unhex(raw[i+1]) < 0 || unhex(raw[i+2]) < 0 {
				return "", errPathBadEscape
			}
			d := byte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
			switch {
			case d == '/' || d == '\\':
				return "", errPathEncodedSep
			case d < 0x20 || d == 0x7f:
				return "", errPathControl
			case isUnreserved(d):
				clean = false
			}
			i += 2
		case c == '/' && i > 0 && raw[i-1] == '/':
			clean = false
		case c == '.' && (i == 0 || raw[i-1] == '/'):
			clean = false // maybe a dot segment: take the slow path
		}
	}
	if clean {
		return raw, nil
	}
	return normalizeSlow(raw)
}

// normalizeSlow decodes unreserved escapes, then resolves segments. The
// input has already been checked for bad escapes and forbidden characters.
func normalizeSlow(raw string) (string, error) {
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c == '%' {
			d := byte(unhex(raw[i+1])<<4 | unhex(raw[i+2]))
			if isUnreserved(d) {
				b.WriteByte(d)
			} else {
				// Keep other escapes, with upper-case hex so one byte has one spelling.
				b.WriteByte('%')
				b.WriteByte(upperHex(raw[i+1]))
				b.WriteByte(upperHex(raw[i+2]))
			}
			i += 2
			continue
		}
		b.WriteByte(c)
	}
	decoded := b.String()

	segs := make([]string, 0, strings.Count(decoded, "/"))
	for seg := range strings.SplitSeq(decoded[1:], "/") {
		switch seg {
		case "", ".":
		case "..":
			if len(segs) == 0 {
				return "", errPathEscapes
			}
			segs = segs[:len(segs)-1]
		default:
			segs = append(segs, seg)
		}
	}
	out := "/" + strings.Join(segs, "/")
	// A trailing slash is part of the path the upstream sees; keep it, route
	// matching ignores it.
	if len(segs) > 0 && (strings.HasSuffix(decoded, "/") || strings.HasSuffix(decoded, "/.") || strings.HasSuffix(decoded, "/..")) {
		out += "/"
	}
	return out, nil
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

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

// normalizeMethod upper-cases an HTTP method and checks that it is a token.
func normalizeMethod(m string) (string, bool) {
	if m == "" || len(m) > 32 {
		return "", false
	}
	upper := true
	for i := 0; i < len(m); i++ {
		c := m[i]
		if 'a' <= c && c <= 'z' {
			upper = false
			continue
		}
		if !('A' <= c && c <= 'Z') && c != '-' && c != '_' {
			return "", false
		}
	}
	if upper {
		return m, true
	}
	return strings.ToUpper(m), true
}
