package authz

import (
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Request is what the decision needs to know about one HTTP request,
// whichever adapter (gRPC or HTTP) it came from.
type Request struct {
	Method  string
	Path    string // as received: may carry a query string
	Host    string
	Headers Headers
	// Peer is the address of whoever connected to the proxy (Envoy's
	// attributes.source.address; in HTTP mode with hops trusted, the
	// X-Forwarded-For entry the proxy appended, see forwardauth.NewRequest)
	// or, in HTTP mode with none trusted, to extauthz: the client IP when no
	// X-Forwarded-For hop is trusted, or the header has too few entries.
	Peer string
	// XFFTrustedHops overrides the configured client_ip.xff_trusted_hops
	// when ≥ 0 (HTTP mode has its own setting); -1 means "use the config".
	XFFTrustedHops int
	// Malformed is set by an adapter that found the request breaking one of
	// its limits (too many headers, say; see NoteHeader), with the reason:
	// step 2 answers 400 bad_request with it. It is safe to show a client.
	Malformed string

	// What selects the request's policy (step 1, PolicySet.selectPolicy).
	// ContextExtensions are Envoy's attributes.context_extensions, as
	// entries in wire order: Envoy's own configuration sets them per
	// virtual host or route, never the client. DestinationPrincipal is
	// attributes.destination.principal: the URI SAN of the certificate
	// Envoy presented on the client's connection (Istio: the workload's
	// SPIFFE id); empty without TLS.
	ContextExtensions    []Header
	DestinationPrincipal string
	// PolicyFromPath is set by an adapter whose proxy names the policy in
	// the path of the request it sends (HTTP mode's auth path,
	// <prefix>/_policy/<name>/...), PolicyName to the name found there (""
	// when the path names none). Such a request selects its policy by that
	// name alone.
	PolicyFromPath bool
	PolicyName     string
	// HeadersOnly is set by an adapter whose proxy can take only headers
	// off the request it forwards (HTTP mode, by default): a request with
	// a credential in a query or cookie source is answered 400, before the
	// key is looked up or its rate limit spent, since allowed it would
	// reach the upstream whole (see findKey).
	HeadersOnly bool

	// noted and budget are what the adapter noted of the headers
	// (NoteHeader).
	noted  Noted
	budget headerBudget
}

// NoteHeader is how an adapter reports each header entry it reads into the
// Request, name as received: it counts the entry against MaxHeaders and
// MaxHeaderBytes, and past either sets Malformed (the request is answered
// 400 whatever its headers say); and it summarises the names, so that the
// checks for rare spellings (a "_" for a "-", a name that reads as an
// x-authz- header) walk the headers only of a request that has one. It
// reports whether the request is still within the limits.
func (r *Request) NoteHeader(name, value string) bool {
	r.noted.names.note(name)
	if r.budget.add(name, value) {
		return true
	}
	if r.Malformed == "" {
		r.Malformed = errTooManyHeaders
	}
	return false
}

// Noted is the summary of a request's header names an adapter noted through
// NoteHeader: comparable, so that two adapters reading the same request can
// be held to the same. The zero value means nothing was noted (a Request
// built by hand): the checks then walk the headers themselves.
type Noted struct{ names headerNames }

// Noted returns the summary of r's header names.
func (r *Request) Noted() Noted { return r.noted }

// HeaderEntries is how many header entries the adapter noted.
func (r *Request) HeaderEntries() int { return r.budget.n }

// Underscored reports whether some noted name holds a "_" (it may spell a
// credential header another way).
func (n Noted) Underscored() bool { return n.names&namesUnderscore != 0 }

// Spoofing reports whether some noted name reads as an x-authz- header.
func (n Noted) Spoofing() bool { return n.names&namesIdentity != 0 }

// Source is one place a key may come from: a header (with an auth scheme,
// or none), a query parameter or a cookie. Make it with HeaderSource,
// QuerySource or CookieSource.
type Source struct {
	kind   SourceKind
	name   string // header name (lower-case), query parameter or cookie name
	scheme string // for headers: required auth scheme, e.g. "Bearer"
	fold   string // for query and cookie: the name as the loosest upstream reads it (foldName)
	// underscored lists a header source's "_" spellings (underscoreSpellings).
	underscored []string
}

// SourceKind is where a Source looks: a header, the query or a cookie.
type SourceKind uint8

// The kinds of Source.
const (
	SourceHeader SourceKind = iota
	SourceQuery
	SourceCookie
)

// String returns "header", "query" or "cookie".
func (k SourceKind) String() string {
	return [...]string{"header", "query", "cookie"}[k]
}

// Kind returns where s looks.
func (s Source) Kind() SourceKind { return s.kind }

// sameAs reports whether s and o read the same credential.
func (s Source) sameAs(o Source) bool {
	return s.kind == o.kind && s.name == o.name && s.scheme == o.scheme
}

// Name returns the header, query parameter or cookie name.
func (s Source) Name() string { return s.name }

// HeaderSource is the key in header name (any case); with a scheme
// ("Bearer"), only a value of that auth scheme, whose credential follows it.
func HeaderSource(name, scheme string) Source {
	name = strings.ToLower(name)
	return Source{kind: SourceHeader, name: name, scheme: scheme, underscored: underscoreSpellings(name)}
}

// QuerySource is the key in the query parameter name.
func QuerySource(name string) Source {
	return Source{kind: SourceQuery, name: name, fold: foldName(name)}
}

// CookieSource is the key in the cookie name.
func CookieSource(name string) Source {
	return Source{kind: SourceCookie, name: name, fold: foldName(name)}
}

// lookup returns the credential this source carries in req, if present: an
// empty value, or an Authorization header with another scheme in every
// line, is absent.
// ambiguous is set when the request also holds a query parameter or cookie
// that some upstream reads as this source's, under another raw name (see
// foldName), or behind a separator the proxy does not split on: the proxy
// strips a credential by its raw name only, so that one would reach the
// upstream.
func (s Source) lookup(req *Request) (v string, present, ambiguous bool) {
	switch s.kind {
	case SourceHeader:
		raw := req.Headers.Get(s.name)
		if v, present := s.headerCredential(raw); present {
			return v, true, false
		}
		// Envoy joins a header's lines with "," (so does HeaderLines):
		// "Basic <x>,Bearer <key>" and "Bearer,Bearer <key>" start with no
		// credential of the scheme, but a line of them is one, and the
		// upstream gets every line. Such a header is present, so that it
		// is stripped, and its value is the whole, an invalid key (no key
		// holds a ","): two lines are one value, not a choice of one.
		if s.scheme != "" && strings.IndexByte(raw, ',') >= 0 && s.someLine(raw, func(string) bool { return true }) {
			return strings.TrimSpace(raw), true, false
		}
		return "", false, false
	case SourceQuery:
		return queryCredential(req.Path, s.name, s.fold, nil)
	case SourceCookie:
		return cookieCredential(req.Headers.Get("cookie"), s.name, s.fold, nil)
	}
	return "", false, false
}

// headerCredential returns the credential a header source reads in the
// header's value v, if any: v itself, or with a scheme what follows it.
func (s Source) headerCredential(v string) (string, bool) {
	v = strings.TrimSpace(v)
	if s.scheme != "" {
		// Before the scheme as after it: str.split(None, 1) drops the
		// \x1c-\x1f, \x85 and \xa0 a value starts with (and "!" is
		// how Envoy shows extauthz such a byte), so "\xa0Bearer <key>"
		// is the scheme and the key to the upstream.
		for len(v) > 0 && latin1Space(v[0]) {
			v = strings.TrimSpace(v[1:])
		}
		// Any white space after the scheme separates as a space does:
		// upstreams that split the value at white space (Python's
		// split, so Django REST framework) read the credential that
		// follows, so it is found, checked and stripped.
		if len(v) <= len(s.scheme) || !strings.EqualFold(v[:len(s.scheme)], s.scheme) {
			return "", false
		}
		sep := schemeSeparator(v[len(s.scheme):])
		if sep == 0 {
			return "", false
		}
		v = strings.TrimSpace(v[len(s.scheme)+sep:])
	}
	return v, v != ""
}

// queryCredential returns the first non-empty value of parameter name in
// the query part of path, percent-decoded, and whether the query is
// ambiguous about it: it holds a parameter whose raw name differs from name
// but reads as it (fold), or a ";"-separated piece named like it (some
// upstreams split the query on ";" too). Envoy removes every parameter of
// the raw name, so such a parameter would reach the upstream. It does not
// allocate unless the value is encoded.
func queryCredential(path, name, fold string, each func(string)) (value string, present, ambiguous bool) {
	i := strings.IndexByte(path, '?')
	if i < 0 {
		return "", false, false
	}
	q := path[i+1:]
	if j := strings.IndexByte(q, '#'); j >= 0 {
		q = q[:j]
	}
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		k, v, _ := strings.Cut(pair, "=")
		switch {
		case k == name:
			if !present || each != nil {
				raw := v
				if strings.ContainsAny(v, "%+") {
					v = unescapeQuery(v)
				}
				if each != nil && v != "" {
					each(v)
					if v != raw {
						// As written too: a value Go does not
						// decode ("%ZZ") others read leniently.
						each(raw)
					}
				}
			}
			if !present {
				value, present = v, v != ""
			}
		case readsAs(k, fold):
			ambiguous = true
		}
		for j := strings.IndexByte(pair, ';'); j >= 0; j = strings.IndexByte(pair, ';') {
			pair = pair[j+1:]
			if k, _, _ := strings.Cut(pair, "="); k == name || readsAs(k, fold) {
				ambiguous = true
			}
		}
	}
	return value, present, ambiguous
}

// anyValue reports whether f holds for any value of s in req, not only the
// first that lookup returns: the proxy strips every parameter, and the
// cookie rewrite every cookie, of the name, and a key in a later one would
// otherwise reach the upstream. Values are read as lookup reads them.
func (s Source) anyValue(req *Request, f func(string) bool) (hit bool) {
	each := func(v string) { hit = hit || f(v) }
	switch s.kind {
	case SourceQuery:
		queryCredential(req.Path, s.name, s.fold, each)
	case SourceCookie:
		cookieCredential(req.Headers.Get("cookie"), s.name, s.fold, each)
	default:
		raw := req.Headers.Get(s.name)
		if v, present := s.headerCredential(raw); present && f(v) {
			return true
		}
		// Envoy joins a header's lines with ",", and so does HeaderLines:
		// a key sent twice, or after another value, is no key whole, but
		// each line is one as the upstream may read it.
		return strings.IndexByte(raw, ',') >= 0 && s.someLine(raw, f)
	}
	return hit
}

// someLine reports whether f holds for the credential of some line of the
// header value raw, its lines split at ",".
func (s Source) someLine(raw string, f func(string) bool) bool {
	for line := range strings.SplitSeq(raw, ",") {
		if v, present := s.headerCredential(line); present && f(v) {
			return true
		}
	}
	return false
}

func unescapeQuery(s string) string {
	u, err := url.QueryUnescape(s)
	if err != nil {
		return "\x00" // a value no key can have: the format check rejects it
	}
	return u
}

// cookieCredential returns the first non-empty value of cookie name, and
// whether the header is ambiguous about it (a cookie whose raw name differs
// but reads as name, see foldName). Pairs are separated by ";" and by ","
// too: Envoy joins two Cookie lines with a comma, and the second line's
// cookies are cookies all the same.
func cookieCredential(header, name, fold string, each func(string)) (value string, present, ambiguous bool) {
	for header != "" {
		var part string
		comma := false
		if i := strings.IndexAny(header, ";,"); i >= 0 {
			part, header, comma = header[:i], header[i+1:], header[i] == ','
		} else {
			part, header = header, ""
		}
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		k = trimCookieName(k) // "api_key =": Go, Node and Python read the name trimmed
		switch {
		case k == name:
			if v = strings.Trim(strings.TrimSpace(v), `"`); v != "" && each != nil {
				each(v)
			}
			if v != "" && !present {
				value, present = v, true
			} else if v == "" && comma {
				// "api_key=,x": empty here, but ",x" to a reader that
				// splits on ";" alone (Go's net/http, Node's cookie).
				ambiguous = true
			}
		case readsAs(k, fold):
			ambiguous = true
		}
		if !ambiguous && hiddenCookie(trimCookieName(part), name, fold) {
			ambiguous = true
		}
	}
	return value, present, ambiguous
}

// hiddenCookie reports whether one cookie piece v (the text between two
// ";" or ",") holds, after its own name, a "name=" that some reader takes
// for a cookie of its own: Python's SimpleCookie (Bottle, aiohttp)
// separates cookies at white space as at ";", and WebOb (Pyramid) finds
// every name=value pair with a findall, so any byte a cookie name cannot
// hold separates for it ("a=b api_key=x", `a="b"api_key=x`). The proxy
// cannot strip such a cookie: the request is refused. Each "=" is looked
// at once, back to the byte before its name: linear in v.
func hiddenCookie(v, name, fold string) bool {
	for i := 0; i < len(v); i++ {
		if v[i] != '=' {
			continue
		}
		end := i
		for end > 0 && (v[end-1] == ' ' || v[end-1] == '\t') {
			end--
		}
		start := end
		for start > 0 && cookieNameByte(v[start-1]) {
			start--
		}
		if start == 0 || start == end {
			continue // the piece's own name, or text of its value
		}
		if k := v[start:end]; k == name || readsAs(k, fold) {
			return true
		}
	}
	return false
}

// cookieNameByte reports whether c may be part of a cookie name for the
// loosest of those readers (SimpleCookie's and WebOb's legal characters,
// but for "=", which ends a name for both).
func cookieNameByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("!#$%&'()*+-./:<>?@^_`{|}~", c) >= 0
}

// CookieWithout returns the cookie header without every cookie whose name
// is in names, and without every piece for which holds (if set) is true,
// keeping the others in order and as they were written; "" when none is
// left. Like the lookup, it treats ";" and "," as separators: "a=1,api_key=x;
// b=2" keeps "a=1; b=2". A reader that splits at ";" alone (Go's net/http,
// Node's cookie) reads "api_key=<key>,<key>" as one value, and Python's
// SimpleCookie reads a quoted `api_key="<key>; <key>"` whole: the pieces
// after the first are part of the credential to them, so a piece that
// holds a key of ours (Policy.HoldsKey) goes too, whatever it is named.
func CookieWithout(header string, holds func(string) bool, names ...string) string {
	var b strings.Builder
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		kept := 0
		start := b.Len()
		for piece := range strings.SplitSeq(part, ",") {
			piece = strings.TrimSpace(piece)
			if k, _, _ := strings.Cut(piece, "="); piece == "" || slices.Contains(names, trimCookieName(k)) || holds != nil && holds(piece) {
				continue
			}
			if kept == 0 && start > 0 {
				b.WriteString("; ")
			} else if kept > 0 {
				b.WriteString(",")
			}
			b.WriteString(piece)
			kept++
		}
	}
	return b.String()
}

// foldName is a query parameter or cookie name as the loosest common
// upstream reads it: percent-decoded with "+" as a space (PHP decoded
// cookie names too, before 8.1.11), without the spaces it starts with (PHP
// drops them), then " ", "." and "[" made "_" (PHP's variable names), then
// ASCII lower-cased (ASP.NET's collections ignore case). A raw name other
// than the configured one that folds to the same string names the
// credential for some upstream. (The configured names start with no
// space; readsAs drops a raw name's leading ones.)
func foldName(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c, n := foldByte(s, i)
		b.WriteByte(c)
		i += n
	}
	return b.String()
}

// foldByte returns the folded byte at s[i] and how many more bytes of s it
// consumed (2 for a percent-encoding).
func foldByte(s string, i int) (byte, int) {
	c, n := s[i], 0
	switch c {
	case '%':
		if d, ok := escapeAt(s, i); ok {
			c, n = d, 2
		}
	case '+':
		c = ' '
	}
	switch {
	case c == ' ' || c == '.' || c == '[':
		c = '_'
	case 'A' <= c && c <= 'Z':
		c += 'a' - 'A'
	}
	return c, n
}

// readsAs reports whether the raw name k folds to fold (foldName), or
// does up to where PHP ends the name (endsName), without allocating.
func readsAs(k, fold string) bool {
	if fold == "" || len(k) < len(fold) {
		return false
	}
	j := 0
	for i := leadingSpaces(k); i < len(k); i++ {
		if j == len(fold) {
			return endsName(k, i)
		}
		c, n := foldByte(k, i)
		if c != fold[j] {
			return false
		}
		i += n
		j++
	}
	return j == len(fold)
}

// endsName reports whether the raw name k ends at k[i] for PHP, which
// reads the rest as no part of the name: a NUL (its names are C strings,
// cut at the first once decoded: "api_key%00x" is $_GET['api_key']), or a
// "[" with a "]" after it (an array under the name: "api_key[]" and
// "api_key[x]" are $_GET['api_key'], as Rack and Express's qs read them
// too). Either may be percent-encoded.
func endsName(k string, i int) bool {
	c, n := decodedByte(k, i)
	if c == 0 {
		return true
	}
	if c != '[' {
		return false
	}
	for i += n + 1; i < len(k); i++ {
		switch c, n := decodedByte(k, i); c {
		case ']':
			return true
		case 0:
			return false // PHP's name, and its search for the "]", stop here
		default:
			i += n
		}
	}
	return false
}

// decodedByte returns the byte at k[i], percent-decoded, and how many more
// bytes of k it consumed (2 for a percent-encoding).
func decodedByte(k string, i int) (byte, int) {
	if k[i] == '%' {
		if d, ok := escapeAt(k, i); ok {
			return d, 2
		}
	}
	return k[i], 0
}

// leadingSpaces returns how many bytes of the raw name k are spaces before
// its first other character, once decoded: " ", "+" or "%20", which PHP
// drops from the start of a variable's name ("+api_key" is $_GET['api_key']).
func leadingSpaces(k string) int {
	i := 0
	for i < len(k) {
		switch c, n := foldByte(k, i); {
		case c == '_' && (k[i] == ' ' || k[i] == '+' || n == 2 && k[i+1] == '2' && k[i+2] == '0'):
			i += n + 1
		default:
			return i
		}
	}
	return i
}

// overridden tells whether some upstream could serve req as another request
// than the one decided: a method-override header's value, or a query
// parameter that reads as _method (Symfony and Laravel read it there, case
// folded; foldName), that names another method than method, in any case
// (overridesMethod); or a target-override header whose value is another
// target than req.Path (overridesTarget). Such a request is one upstream's
// POST /public/x and another's DELETE /api/admin, decided under rules that
// are not the ones it is served by, so step 2 refuses it; an override that
// names the request's own method or target changes nothing. An override in
// the body (a form's _method field) is out of sight: see docs/decision.md.
func overridden(req *Request, method string) override {
	if !req.noted.names.lacks(namesOverride) {
		found := overridesNothing
		eachHeader(req.Headers, func(name, value string) {
			if found != overridesNothing {
				return
			}
			switch kind := readsAsOverride(name); {
			case kind == overridesMethod && overrides(value, method):
				found = kind
			case kind == overridesTarget && strings.TrimSpace(value) != "" && strings.TrimSpace(value) != req.Path:
				found = kind
			}
		})
		if found != overridesNothing {
			return found
		}
	}
	i := strings.IndexByte(req.Path, '?')
	if i < 0 {
		return overridesNothing
	}
	q := req.Path[i+1:]
	if j := strings.IndexByte(q, '#'); j >= 0 {
		q = q[:j]
	}
	// Pieces after a ";" count too, as for credentials (queryCredential).
	for q != "" {
		piece := q
		if j := strings.IndexAny(q, "&;"); j >= 0 {
			piece, q = q[:j], q[j+1:]
		} else {
			q = ""
		}
		// Most names are out at their first byte: one that reads as
		// "_method" starts with a byte that folds to "_" or a space.
		if len(piece) < len("_method") || strings.IndexByte("_.[ +%", piece[0]) < 0 {
			continue
		}
		k, v, _ := strings.Cut(piece, "=")
		if !readsAs(k, "_method") {
			continue
		}
		if strings.ContainsAny(v, "%+") {
			v = unescapeQuery(v)
		}
		if overrides(v, method) {
			return overridesMethod
		}
	}
	return overridesNothing
}

// overrides reports whether an override's value names a method other than
// method: empty names none (Symfony ignores it).
func overrides(value, method string) bool {
	v := strings.TrimSpace(value)
	return v != "" && !strings.EqualFold(v, method)
}

// clientIP finds the client address (client_ip in the README's
// Configuration): with hops = 0 the
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

// schemeSeparator returns the length of the white space that starts rest,
// the text after an auth scheme, as some upstream splits on it (0: none).
// Python's str.split, on a header WSGI and ASGI servers decode as Latin-1,
// splits at the ASCII white space, at \x1c-\x1f and at the single bytes
// \x85 and \xa0 (NEL and NBSP there); Go's strings.Fields at any Unicode
// space in UTF-8 ("\u00a0", "\u2003"). A "!" separates too: Envoy sends
// extauthz a byte that is not UTF-8 as "!" (and the upstream the byte), so
// "Bearer!" may be "Bearer\xa0" upstream.
func schemeSeparator(rest string) int {
	switch c := rest[0]; {
	case strings.IndexByte(" \t\v\f\r\n\x1c\x1d\x1e\x1f!", c) >= 0:
		return 1
	case c < utf8.RuneSelf:
		return 0
	}
	if r, n := utf8.DecodeRuneInString(rest); r != utf8.RuneError && unicode.IsSpace(r) {
		return n
	}
	if rest[0] == 0x85 || rest[0] == 0xa0 {
		return 1
	}
	return 0
}

// trimCookieName is a cookie name without the white space around it, as
// the readers that trim most read it: Go's and Node's trim ASCII white
// space; Python's frameworks (Django, werkzeug, Starlette) call str.strip
// on a header decoded as Latin-1, which also takes \x1c-\x1f and the single
// bytes \x85 and \xa0, and any Unicode space.
func trimCookieName(k string) string {
	k = strings.TrimSpace(k)
	for {
		n := len(k)
		for len(k) > 0 && latin1Space(k[0]) {
			k = strings.TrimSpace(k[1:])
		}
		for len(k) > 0 && latin1Space(k[len(k)-1]) {
			k = strings.TrimSpace(k[:len(k)-1])
		}
		if len(k) == n {
			return k
		}
	}
}

// latin1Space reports whether c is white space to Python's str.strip on a
// Latin-1 string beyond what strings.TrimSpace takes (a \xa0 or \x85 byte
// that is not part of a UTF-8 character, which TrimSpace leaves), or a "!",
// which is how Envoy shows extauthz a byte that is not UTF-8.
func latin1Space(c byte) bool {
	return c >= 0x1c && c <= 0x1f || c == 0x85 || c == 0xa0 || c == '!'
}
