package authz

import (
	"net/netip"
	"net/url"
	"strings"

	"github.com/extauthz/extauthz/config"
)

// Headers reads request headers by lower-case name. Envoy's CheckRequest
// gives a map with lower-case names already; the HTTP adapter wraps
// http.Header.
type Headers interface {
	Get(name string) string
}

// HeaderMap is a Headers over a map with lower-case names (Envoy's form).
type HeaderMap map[string]string

// Get returns the value of the lower-case header name.
func (m HeaderMap) Get(name string) string { return m[name] }

// Request is what the decision needs to know about one HTTP request,
// whichever adapter (gRPC or HTTP) it came from.
type Request struct {
	Method  string
	Path    string // as received: may carry a query string
	Host    string
	Headers Headers
	// Peer is the address of whoever connected to the proxy (Envoy's
	// attributes.source.address) or to extauthz (HTTP mode): the client IP
	// when no X-Forwarded-For hop is trusted.
	Peer string
	// XFFTrustedHops overrides the configured client_ip.xff_trusted_hops
	// when ≥ 0 (HTTP mode has its own setting); -1 means "use the config".
	XFFTrustedHops int
}

// Source is a compiled key source.
type Source struct {
	kind   sourceKind
	name   string // header name (lower-case), query parameter or cookie name
	scheme string // for headers: required auth scheme, e.g. "Bearer"
}

type sourceKind uint8

const (
	sourceHeader sourceKind = iota
	sourceQuery
	sourceCookie
)

// Kind returns "header", "query" or "cookie".
func (s Source) Kind() string {
	return [...]string{"header", "query", "cookie"}[s.kind]
}

// Name returns the header, query parameter or cookie name.
func (s Source) Name() string { return s.name }

func compileSources(specs []config.Source) []Source {
	out := make([]Source, 0, len(specs))
	for _, s := range specs {
		switch {
		case s.Header != "":
			out = append(out, Source{kind: sourceHeader, name: strings.ToLower(s.Header), scheme: s.Scheme})
		case s.Query != "":
			out = append(out, Source{kind: sourceQuery, name: s.Query})
		case s.Cookie != "":
			out = append(out, Source{kind: sourceCookie, name: s.Cookie})
		}
	}
	return out
}

// lookup returns the credential this source carries in req, if present: an
// empty value, or an Authorization header with another scheme, is absent.
func (s Source) lookup(req *Request) (string, bool) {
	switch s.kind {
	case sourceHeader:
		v := strings.TrimSpace(req.Headers.Get(s.name))
		if s.scheme != "" {
			if len(v) <= len(s.scheme) || !strings.EqualFold(v[:len(s.scheme)], s.scheme) || v[len(s.scheme)] != ' ' {
				return "", false
			}
			v = strings.TrimSpace(v[len(s.scheme)+1:])
		}
		return v, v != ""
	case sourceQuery:
		return queryValue(req.Path, s.name)
	case sourceCookie:
		return cookieValue(req.Headers.Get("cookie"), s.name)
	}
	return "", false
}

// queryValue returns the first non-empty value of parameter name in the
// query part of path, percent-decoded. It does not allocate unless the
// value is encoded.
func queryValue(path, name string) (string, bool) {
	i := strings.IndexByte(path, '?')
	if i < 0 {
		return "", false
	}
	q := path[i+1:]
	if j := strings.IndexByte(q, '#'); j >= 0 {
		q = q[:j]
	}
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(pair, "=")
		if k != name && !(strings.ContainsAny(k, "%+") && unescapeQuery(k) == name) {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			v = unescapeQuery(v)
		}
		if v != "" {
			return v, true
		}
	}
	return "", false
}

func unescapeQuery(s string) string {
	u, err := url.QueryUnescape(s)
	if err != nil {
		return "\x00" // a value no key can have: the format check rejects it
	}
	return u
}

// cookieValue returns the first non-empty value of cookie name.
func cookieValue(header, name string) (string, bool) {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k != name {
			continue
		}
		v = strings.Trim(strings.TrimSpace(v), `"`)
		if v != "" {
			return v, true
		}
	}
	return "", false
}

// CookieWithout returns the cookie header without every cookie called name,
// keeping the others in order; "" when none is left.
func CookieWithout(header, name string) string {
	var b strings.Builder
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		part = strings.TrimSpace(part)
		if k, _, _ := strings.Cut(part, "="); k == name || part == "" {
			continue
		}
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(part)
	}
	return b.String()
}

// clientIP finds the client address (SPEC §2 "Client IP"): with hops = 0 the
// peer; with N ≥ 1 the Nth address from the right of X-Forwarded-For, or the
// peer when the header has fewer than N entries — never an entry the client
// chose. The zero Addr means unknown (it matches no allowlist).
func clientIP(req *Request, hops int) netip.Addr {
	if hops > 0 {
		xff := req.Headers.Get("x-forwarded-for")
		for n := 1; xff != ""; n++ {
			var entry string
			if i := strings.LastIndexByte(xff, ','); i >= 0 {
				entry, xff = xff[i+1:], xff[:i]
			} else {
				entry, xff = xff, ""
			}
			if n == hops {
				return parseAddr(strings.TrimSpace(entry))
			}
		}
	}
	return parseAddr(req.Peer)
}

// parseAddr reads "1.2.3.4", "::1", "[::1]:80" or "1.2.3.4:80"; IPv4-mapped
// IPv6 addresses become IPv4 so that v4 allowlists match them.
func parseAddr(s string) netip.Addr {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().WithZone("")
	}
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	return netip.Addr{}
}
