package authz

import (
	"net/textproto"
	"strings"
	"unicode/utf8"
)

// Limits on one request's headers, in every mode. Envoy's own defaults are
// far below them (100 headers, 60 KiB); a request past either is answered
// 400 bad_request, and no step of a check does more than linear work in
// what is left.
const (
	// MaxHeaders is the most header entries a request may carry (each
	// entry of Envoy's headers map or header_map; each line in HTTP mode).
	MaxHeaders = 512
	// MaxHeaderBytes is the most bytes of header names and values.
	MaxHeaderBytes = 256 << 10
)

// errTooManyHeaders is Request.Malformed past MaxHeaders or MaxHeaderBytes.
const errTooManyHeaders = "more than 512 headers or 256 KiB of headers"

// headerBudget counts a request's headers against MaxHeaders and
// MaxHeaderBytes.
type headerBudget struct{ n, bytes int }

// add counts one entry and reports whether the request is still within the
// limits.
func (b *headerBudget) add(name, value string) bool {
	b.n++
	b.bytes += len(name) + len(value)
	return b.n <= MaxHeaders && b.bytes <= MaxHeaderBytes
}

// Headers reads a request's headers by lower-case name. It has one
// implementation per way an adapter receives headers, all of them here:
// HeaderMap (Envoy's headers map), HeaderList (the same map's entries as they
// arrive on the wire) and HeaderLines (net/http's header lines). The set is
// closed so that every Headers can also be walked entry by entry, which the
// checks for credential and identity spellings do: a Headers that could not
// be walked would skip them.
type Headers interface {
	Get(name string) string
	headers() // seals the set
}

// HeaderMap is a Headers over a map with lower-case names, one value each
// (Envoy's form: it joins a repeated header's values with ",").
type HeaderMap map[string]string

// Get returns the value of the lower-case header name.
func (m HeaderMap) Get(name string) string { return m[name] }

func (HeaderMap) headers() {}

// HeaderList is a Headers over (name, value) entries in the order they
// arrived, as the entries of Envoy's headers map come on the wire. A repeated
// name replaces the earlier entry (protobuf's rule for a map), so Get
// answers the last.
type HeaderList []Header

// Get returns the value of the last entry named name.
func (l *HeaderList) Get(name string) string {
	hs := *l
	for i := len(hs) - 1; i >= 0; i-- {
		if hs[i].Key == name {
			return hs[i].Value
		}
	}
	return ""
}

func (*HeaderList) headers() {}

// HeaderLines is a Headers over header lines by canonical name, as net/http
// keeps them (convert an http.Header). The lines of a name sent more than
// once read as one value, joined as Envoy joins them (","; "; " for
// cookies), never cut to the first line: with X-Forwarded-For the first line
// may be the client's own and the trusted hops are at the end, and two
// credentials make one invalid key rather than a silent choice. Every HTTP
// entry point (HTTP mode, the admin API) reads its headers through it, so
// all read a repeated header alike.
type HeaderLines map[string][]string

// Get returns the lines of the header name, joined.
func (h HeaderLines) Get(name string) string {
	vals := h[textproto.CanonicalMIMEHeaderKey(name)]
	switch len(vals) {
	case 0:
		return ""
	case 1:
		return vals[0]
	}
	if name == "cookie" {
		return strings.Join(vals, "; ")
	}
	return strings.Join(vals, ",")
}

func (HeaderLines) headers() {}

// eachHeader calls f with every header entry of h, names as received. It
// switches on the implementations rather than calling a method so that f
// does not escape: the walk allocates nothing.
func eachHeader(h Headers, f func(name, value string)) {
	switch h := h.(type) {
	case HeaderMap:
		for k, v := range h {
			f(k, v)
		}
	case *HeaderList:
		for _, e := range *h {
			f(e.Key, e.Value)
		}
	case HeaderLines:
		for k, vs := range h {
			for _, v := range vs {
				f(k, v)
			}
		}
	}
}

// dashFold is a header-name byte as CGI, WSGI, PHP and Rack read it: "_"
// and "-" are the same (and "." too, to PHP: dashAlias), and case does not
// matter.
func dashFold(c byte) byte {
	switch {
	case c == '_' || c == '.':
		return '-'
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	}
	return c
}

// readsAsHeader reports whether the raw header name reads as the lower-case
// name canonical for some upstream (dashFold).
func readsAsHeader(raw, canonical string) bool {
	if len(raw) != len(canonical) {
		return false
	}
	for i := 0; i < len(raw); i++ {
		if dashFold(raw[i]) != canonical[i] {
			return false
		}
	}
	return true
}

// readsAsIdentity reports whether a client header name reads as one of the
// x-authz- headers extauthz sets (any case, "_" for "-"): a client must
// never set one.
func readsAsIdentity(name string) bool {
	if len(name) <= len(IdentityPrefix) {
		return false
	}
	for i := 0; i < len(IdentityPrefix); i++ {
		if dashFold(name[i]) != IdentityPrefix[i] {
			return false
		}
	}
	return true
}

// The headers through which frameworks let a client override what a proxy
// saw. A method: Symfony and Laravel read X-HTTP-Method-Override on a POST
// by default; Express's method-override, ASP.NET Core's
// UseHttpMethodOverride and gorilla's handler read one of the three once
// enabled. A target: IIS's URL Rewrite sets X-Original-URL, and Symfony and
// Zend Framework served the path in it or in X-Rewrite-URL until 2018
// (CVE-2018-14773), as other stacks built for IIS still may.
var (
	methodOverrideHeaders = [...]string{"x-http-method-override", "x-http-method", "x-method-override"}
	targetOverrideHeaders = [...]string{"x-original-url", "x-rewrite-url"}
)

// override is what an override header names: nothing (not one), a method or
// a target.
type override uint8

const (
	overridesNothing override = iota
	overridesMethod
	overridesTarget
)

// readsAsOverride tells what a header name overrides for some upstream that
// reads it in any case and with "_" for "-", as PHP does.
func readsAsOverride(name string) override {
	if len(name) < len("x-http-method") || name[0]|0x20 != 'x' {
		return overridesNothing // most names, at the cost of a length and a byte
	}
	for _, h := range methodOverrideHeaders {
		if readsAsHeader(name, h) {
			return overridesMethod
		}
	}
	for _, h := range targetOverrideHeaders {
		if readsAsHeader(name, h) {
			return overridesTarget
		}
	}
	return overridesNothing
}

// isIdentityHeader reports whether name is, up to case, one of the four
// identity headers: setting it (Envoy's setCopy, HTTP proxies' overwrite)
// replaces a client's header of that name.
func isIdentityHeader(name string) bool {
	for _, h := range [...]string{HeaderKeyID, HeaderKeyName, HeaderOwner, HeaderPermissions} {
		if equalFoldASCII(name, h) {
			return true
		}
	}
	return false
}

// headerNames summarises a request's header names, as an adapter saw them
// while it read the headers, so that a check looks for the rare spellings
// below only in a request that has them. The zero value means "not
// summarised" (a Request built by hand): the checks then look themselves.
type headerNames uint8

const (
	namesSeen       headerNames = 1 << iota // the adapter summarised the names
	namesUnderscore                         // some name holds a "_" or a "." (dashAlias)
	namesIdentity                           // some name reads as an x-authz- header
	namesOverride                           // some name reads as an override header (readsAsOverride)
)

// note adds one header name to the summary.
func (n *headerNames) note(name string) {
	*n |= namesSeen
	if dashAlias(name) {
		*n |= namesUnderscore
	}
	if readsAsIdentity(name) {
		*n |= namesIdentity
	}
	if readsAsOverride(name) != overridesNothing {
		*n |= namesOverride
	}
}

// dashAlias reports whether a header name holds a byte some upstream reads
// as "-": "_" (CGI, WSGI, PHP and Rack turn "-" into "_" and so read the
// two alike) or "." (PHP turns "." into "_" in the variables it makes, so
// X.Api.Key is HTTP_X_API_KEY to it; Go's HTTP servers, Caddy's among them,
// accept and pass on names with a ".").
func dashAlias(name string) bool {
	return strings.IndexByte(name, '_') >= 0 || strings.IndexByte(name, '.') >= 0
}

// lacks reports whether the summary says that no name has the flag.
func (n headerNames) lacks(flag headerNames) bool { return n&namesSeen != 0 && n&flag == 0 }

// maxAliasDashes bounds the "-" in a header source's name for which every
// "_" spelling is listed up front (2^n of them); a longer name is looked
// for by walking the headers.
const maxAliasDashes = 4

// underscoreSpellings lists the spellings of a lower-case header name with
// one or more of its "-" written "_" or "." (dashAlias), or nil past
// maxAliasDashes.
func underscoreSpellings(name string) []string {
	n := strings.Count(name, "-")
	if n == 0 || n > maxAliasDashes {
		return nil
	}
	total := 1
	for range n {
		total *= 3
	}
	var out []string
	for combo := 1; combo < total; combo++ { // 0 is the name itself
		b := []byte(name)
		c := combo
		for i := range b {
			if b[i] == '-' {
				b[i] = "-_."[c%3]
				c /= 3
			}
		}
		out = append(out, string(b))
	}
	return out
}

// headerAliasesSource reports whether the request carries a header whose
// name differs from a header source's only by "_" for "-" (x_api_key for
// x-api-key): an upstream that reads the two alike (CGI, WSGI, PHP, Rack)
// would be handed a credential that extauthz neither checked nor stripped.
func headerAliasesSource(req *Request, sources []Source) bool {
	if req.noted.names.lacks(namesUnderscore) {
		return false
	}
	if m, ok := req.Headers.(HeaderMap); ok && req.noted.names == 0 {
		// Envoy's lower-case names: a few lookups beat walking the map.
		walk := false
		for i := range sources {
			s := &sources[i]
			if s.kind != SourceHeader {
				continue
			}
			walk = walk || s.underscored == nil && strings.IndexByte(s.name, '-') >= 0
			for _, alias := range s.underscored {
				if _, ok := m[alias]; ok {
					return true
				}
			}
		}
		if !walk {
			return false
		}
	}
	found := false
	eachHeader(req.Headers, func(name, _ string) {
		if found || !dashAlias(name) {
			return
		}
		for i := range sources {
			if s := &sources[i]; s.kind == SourceHeader && readsAsHeader(name, s.name) {
				found = true
			}
		}
	})
	return found
}

// AppendSpoofed appends to remove the names of every client-sent header of
// r that reads as an x-authz- header (any case, "_" for "-"), once each,
// except the names an allowed response to d sets itself (an identity
// header, a forwarded metadata entry): setting overwrites the client's, and
// Envoy removes headers after it sets them, so removing those would remove
// extauthz's own values. lower writes the names lower-cased. It is linear
// in the number of headers.
func (r *Request) AppendSpoofed(remove []string, d *Decision, lower bool) []string {
	if r.noted.names.lacks(namesIdentity) {
		return remove
	}
	start := len(remove)
	eachHeader(r.Headers, func(name, _ string) {
		if !readsAsIdentity(name) || !utf8.ValidString(name) {
			return // a name that is not UTF-8 cannot be named back to Envoy; its codec rejects such requests
		}
		if d.setsHeader(name) {
			return
		}
		if lower {
			name = strings.ToLower(name)
		}
		remove = append(remove, name)
	})
	return dedupe(remove, start)
}

// dedupe removes repeated strings from s[start:], keeping the first of
// each, in linear time.
func dedupe(s []string, start int) []string {
	added := s[start:]
	if len(added) < 2 {
		return s
	}
	seen := make(map[string]struct{}, len(added))
	out := added[:0]
	for _, v := range added {
		if _, ok := seen[v]; !ok {
			seen[v] = struct{}{}
			out = append(out, v)
		}
	}
	clear(added[len(out):])
	return s[:start+len(out)]
}
