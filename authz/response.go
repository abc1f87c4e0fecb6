package authz

import (
	"encoding/json"
	"strings"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// Header is one response or upstream header.
type Header = ratelimit.Header

// Identity header names set on allowed requests for the upstream.
const (
	HeaderKeyID       = "x-authz-key-id"
	HeaderKeyName     = "x-authz-key-name"
	HeaderOwner       = "x-authz-owner"
	HeaderPermissions = "x-authz-permissions"
	HeaderCode        = "x-authz-code"
	// IdentityPrefix starts every header extauthz sets upstream; any header
	// with it that a client sent is removed so identity cannot be spoofed.
	IdentityPrefix = "x-authz-"
)

// IdentityHeaders appends the upstream identity headers of an allowed,
// authenticated request: none for a public route, and none for a request
// allowed only because its decision was made in shadow mode (Identified).
func (d *Decision) IdentityHeaders(dst []Header) []Header {
	if !d.Identified() {
		return dst
	}
	return AppendIdentityHeaders(dst, d.Key)
}

// MetaHeaders appends, for an identified request (Identified), the
// x-authz-meta-<name> header of each metadata entry the policy forwards and
// the key carries. With blanks, every header the policy forwards is there,
// empty when it carries nothing: a proxy that copies the headers it was
// told to then overwrites whatever a client sent under those names.
func (d *Decision) MetaHeaders(dst []Header, blanks bool) []Header {
	if d.Policy == nil {
		return dst
	}
	for _, f := range d.Policy.forward {
		v := ""
		if d.Identified() {
			v = headerValue(d.Key.Meta[f.name])
		}
		if v != "" || blanks {
			dst = append(dst, Header{Key: f.header, Value: v})
		}
	}
	return dst
}

// setsHeader reports whether an allowed response to d sets the upstream
// header name (any case) to a value: an identity header or a forwarded
// metadata entry the key carries. Setting overwrites a client's header of
// that name, which must then not be removed as spoofed (a proxy removes
// after it sets, and would remove extauthz's own value).
func (d *Decision) setsHeader(name string) bool {
	if !d.Identified() {
		return false
	}
	if isIdentityHeader(name) {
		// Every one is set but x-authz-permissions of a key without
		// permissions (AppendIdentityHeaders).
		return !equalFoldASCII(name, HeaderPermissions) || permissionsValue(d.Key) != ""
	}
	for _, f := range d.Policy.forward {
		// As MetaHeaders writes it: a value of nothing but bytes a
		// header cannot carry or blanks (a record written by hand, a
		// value of one space) sets nothing, and a client's header of
		// that name must still go.
		if equalFoldASCII(name, f.header) && headerValue(d.Key.Meta[f.name]) != "" {
			return true
		}
	}
	return false
}

// AppendIdentityHeaders appends the upstream identity headers of key k: its
// id, name, owner (DefaultOwner when it has none) and comma-joined
// permissions, with the bytes a header value cannot hold dropped.
//
// A name or owner of nothing but such bytes (a record written by hand) is
// written as unprintableLabel: the headers are always set, so a client's
// own of those names is not removed, and an empty value that a proxy
// drops would let the client's through.
//
// x-authz-permissions is left out for a key without permissions (an empty
// value, which a proxy may drop, would be no header to the upstream but a
// client's), and the client's is removed instead (setsHeader).
func AppendIdentityHeaders(dst []Header, k *keystore.Key) []Header {
	owner := k.Owner
	if owner == "" {
		owner = keystore.DefaultOwner
	}
	dst = append(dst,
		Header{Key: HeaderKeyID, Value: k.ID},
		Header{Key: HeaderKeyName, Value: printable(k.Name)},
		Header{Key: HeaderOwner, Value: printable(owner)},
	)
	if perms := permissionsValue(k); perms != "" {
		dst = append(dst, Header{Key: HeaderPermissions, Value: perms})
	}
	return dst
}

// permissionsValue is x-authz-permissions for k: its permissions as header
// values (headerValue), the empty ones left out, comma-joined.
func permissionsValue(k *keystore.Key) string {
	clean := true
	for _, p := range k.Permissions {
		if headerValue(p) != p {
			clean = false
			break
		}
	}
	if clean {
		return strings.Join(k.Permissions, ",")
	}
	var kept []string
	for _, p := range k.Permissions {
		if v := headerValue(p); v != "" {
			kept = append(kept, v)
		}
	}
	return strings.Join(kept, ",")
}

// headerValue is s as a header value: the bytes a header cannot carry
// dropped (sanitizeHeaderValue), and "" when what is left is blank, which
// readers trim to nothing (RFC 9110 §5.5).
func headerValue(s string) string {
	s = sanitizeHeaderValue(s)
	if strings.Trim(s, " \t") == "" {
		return ""
	}
	return s
}

// unprintableLabel stands for a name or owner that is empty once the bytes
// a header cannot carry are dropped.
const unprintableLabel = "(unprintable)"

// printable is s as a header value (headerValue), never empty.
func printable(s string) string {
	if s = headerValue(s); s == "" {
		return unprintableLabel
	}
	return s
}

// sanitizeHeaderValue drops bytes that cannot appear in a header value, so
// an operator-chosen key name can never split or break the upstream request.
func sanitizeHeaderValue(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return strings.Map(func(r rune) rune {
				if r < 0x20 && r != '\t' || r == 0x7f {
					return -1
				}
				return r
			}, s)
		}
	}
	return s
}

// ResponseHeaders appends the headers for the client: for a denial the JSON
// content type, x-authz-code, WWW-Authenticate (401), Retry-After (429, 503)
// and the rate-limit headers; for an allow, the rate-limit headers; for a
// decision made in shadow mode, none: the client sees no trace of it.
func (d *Decision) ResponseHeaders(dst []Header) []Header {
	if d.Shadow {
		return dst
	}
	if d.Code != "" {
		dst = append(dst,
			Header{Key: "content-type", Value: "application/json"},
			Header{Key: HeaderCode, Value: string(d.Code)},
		)
		switch d.Code.HTTPStatus() {
		case 401:
			dst = append(dst, Header{Key: "www-authenticate", Value: wwwAuthenticate(d.Code)})
		case 503:
			dst = append(dst, Header{Key: "retry-after", Value: "1"})
		}
	}
	if d.HasRateLimit {
		dst = ratelimit.AppendHeaders(dst, d.RateLimit)
	}
	return dst
}

// wwwAuthenticate follows RFC 6750 §3: no error attribute when no
// credential was sent, invalid_token otherwise.
func wwwAuthenticate(c Code) string {
	if c == CodeMissingKey {
		return `Bearer realm="extauthz"`
	}
	return `Bearer realm="extauthz", error="invalid_token", error_description="` + string(c) + `"`
}

// Body is the JSON body of a denial: ErrorBody of its code and message.
func (d *Decision) Body() string { return ErrorBody(d.Code, d.Message) }

// ErrorBody is the JSON body of every error answer extauthz gives, over
// gRPC (a denial's body) and HTTP (a denial, an admin API error, a recovered
// panic): {"error": "<message>", "code": "<code>"}. message must never hold
// a key.
func ErrorBody(code Code, message string) string {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
		Code  Code   `json:"code"`
	}{message, code}) // cannot fail: two strings
	return string(b)
}
