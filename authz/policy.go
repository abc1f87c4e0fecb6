package authz

import (
	"encoding/base64"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// DefaultPolicy is the name of the policy the top-level settings make: the
// one every request gets when no other policy selects it (unless
// Options.DenyUnselected), and the only one of a config without policies.
const DefaultPolicy = "default"

// Mode says whether a policy or a route enforces its decisions or only
// records them.
type Mode uint8

// The modes. A route's zero Mode is its policy's; a policy's is enforce.
const (
	ModeInherit Mode = iota // a route: the policy's mode
	ModeEnforce             // a denial is answered
	ModeShadow              // the decision runs, is audited and counted, and the request is allowed
)

// String returns "enforce", "shadow", or "" for ModeInherit.
func (m Mode) String() string {
	switch m {
	case ModeEnforce:
		return "enforce"
	case ModeShadow:
		return "shadow"
	}
	return ""
}

// Match says which requests select a policy. Envoy sets the first two from
// its own configuration and certificates, never from what a client sends
// (but a proxy with a certificate per domain presents the one the
// client's SNI asks for); the host comes from the client (see
// PolicySet.selectPolicy).
type Match struct {
	// Context are entries of Envoy's context_extensions (set per virtual
	// host or route in Envoy's ext_authz per-route config), all of which a
	// request must carry.
	Context map[string]string
	// Principals are destination principals: the URI SAN of the
	// certificate Envoy presents to the client (in Istio, the destination
	// workload's SPIFFE id).
	Principals []string
	// Hosts are request hosts: exact ("billing.example.com") or a suffix
	// below a dot ("*.billing.example.com"), lower-case, without a port.
	Hosts []string
}

// PolicySpec is one named policy as the operator writes it, before Compile
// checks it.
type PolicySpec struct {
	Name  string
	Match Match
	// Routes, Authenticate, Sources and DefaultRate are the policy's own,
	// as Options' are the default policy's.
	Routes       []RouteSpec
	Authenticate bool
	Sources      []Source
	DefaultRate  ratelimit.Rate
	// OwnDefaultRate says the policy sets DefaultRate itself rather than
	// inheriting Options' (even when the two are equal): the keys it limits
	// by that default are counted apart from the top-level default's count.
	OwnDefaultRate bool
	// Mode is ModeEnforce (the zero value too) or ModeShadow.
	Mode Mode
	// ForwardMeta names key metadata entries sent upstream as
	// x-authz-meta-<name> on an allowed request.
	ForwardMeta []string
}

// Policy is one compiled named policy: what a request that selects it is
// decided by.
type Policy struct {
	Name         string
	Match        Match
	Routes       *Routes
	Authenticate bool // a request no route matches needs only a valid key
	Sources      []Source
	DefaultRate  ratelimit.Rate
	Shadow       bool // ModeShadow: decisions are recorded, never answered
	// enforcesRoute: Shadow, but a route of it says mode: enforce. A path
	// refused before a route decides it (not canonical, or one whose
	// route another spelling changes) may be served as that route, so such
	// a refusal is enforced, not shadowed (Decide, route).
	enforcesRoute bool
	ForwardMeta   []string

	// forward pairs each ForwardMeta name with its header.
	forward []forwardedMeta
	// strip is Sources, then every other policy's source that is none of
	// them: the credentials removed before a request goes upstream. A key
	// sent in another service's source is no credential here, but it is
	// still a secret, and this upstream must not get it.
	strip []Source
	// format is the key format, for telling a key of ours in another
	// policy's source (HoldsKey).
	format keystore.Format
	// keyScope names the counter of a key limited by this policy's
	// DefaultRate (a key without a rate of its own): "" when the policy
	// inherits the top-level default (the counter the admin API counts in
	// too, shared by every policy that inherits that default), else one
	// named by the policy. Named by the policy, not by its rate, so that a
	// reload that changes the rate keeps the count, which the limiter then
	// carries over to the new window (as if its requests were all made at
	// the latest), as it does for a route's; and a policy's own default in
	// the top-level counter would hold each one's requests to the other's
	// window.
	keyScope string
}

// forwardedMeta is one metadata entry a policy forwards, and the header
// that carries it.
type forwardedMeta struct{ name, header string }

// MetaHeaderPrefix starts the header that carries a forwarded metadata
// entry: x-authz-meta-<name>, with the name's "_" written "-".
const MetaHeaderPrefix = IdentityPrefix + "meta-"

// MetaHeader is the header that carries the metadata entry name upstream.
func MetaHeader(name string) string {
	return MetaHeaderPrefix + strings.ReplaceAll(name, "_", "-")
}

// PolicySet is everything the decision reads, swapped whole on reload: the
// named policies, how a request selects one, and the settings they share.
type PolicySet struct {
	// Default is the policy of the top-level settings.
	Default *Policy
	// DenyUnselected answers 403 no_policy to a request no policy selects
	// instead of deciding it by Default.
	DenyUnselected bool
	Format         keystore.Format
	// XFFHops is how many X-Forwarded-For hops are trusted for the client
	// address (0: the peer).
	XFFHops int
	// FailRate bounds the lookups of unknown keys that find nothing per
	// client address block, FailTotalRate per process (see lookupGuard);
	// zero = unlimited.
	FailRate, FailTotalRate ratelimit.Rate

	paths    pathRules
	policies []*Policy // Default first, then the named ones in order
	byName   map[string]*Policy
	// context maps a context_extensions key to its values, each to the
	// policies whose Match.Context holds that entry.
	context    map[string]map[string][]*Policy
	principals map[string]*Policy
	hosts      map[string]*Policy // exact
	suffixes   map[string]*Policy // "b.example.com" for "*.b.example.com"
}

// Options are the decision's settings, from which Compile makes a
// PolicySet. They are the decision's own types: cmd/extauthz fills them
// from the config file.
type Options struct {
	// Routes, Authenticate, Sources, DefaultRate, Mode and ForwardMeta are
	// the default policy's (see PolicySpec).
	Routes       []RouteSpec
	Authenticate bool
	// Sources are where the key may come from, tried in order (at most 64).
	Sources     []Source
	DefaultRate ratelimit.Rate
	Mode        Mode
	ForwardMeta []string

	// Policies are the named policies besides the default one.
	Policies []PolicySpec
	// DenyUnselected: see PolicySet.
	DenyUnselected bool

	// Paths are the opt-in path readings; the zero value is strict.
	Paths Paths
	// Format is the key format (NewFormat); the zero Format is refused.
	Format keystore.Format
	// XFFHops, FailRate and FailTotalRate: see PolicySet.
	XFFHops                 int
	FailRate, FailTotalRate ratelimit.Rate
}

// Compile checks o and compiles it into a PolicySet. The error names what
// is wrong, by the path of the setting (policies[1].match.hosts[0]).
func Compile(o Options) (*PolicySet, error) {
	if o.Format.Prefix() == "" {
		return nil, errors.New("key format: none given (make one with keystore.NewFormat)")
	}
	set := &PolicySet{
		DenyUnselected: o.DenyUnselected,
		Format:         o.Format,
		XFFHops:        o.XFFHops,
		FailRate:       o.FailRate,
		FailTotalRate:  o.FailTotalRate,
		paths:          newPathRules(o.Paths),
		byName:         map[string]*Policy{},
	}
	def, err := compilePolicy(PolicySpec{
		Name: DefaultPolicy, Routes: o.Routes, Authenticate: o.Authenticate, Sources: o.Sources,
		DefaultRate: o.DefaultRate, Mode: o.Mode, ForwardMeta: o.ForwardMeta,
	}, o.Paths, "")
	if err != nil {
		return nil, err
	}
	set.Default = def
	set.policies = append(set.policies, def)
	set.byName[DefaultPolicy] = def
	for i, spec := range o.Policies {
		at := fmt.Sprintf("policies[%d]", i)
		if spec.Name == DefaultPolicy {
			return nil, fmt.Errorf("%s.name: %q is the policy of the top-level settings; name this one otherwise", at, spec.Name)
		}
		if err := keystore.ValidatePolicyName(at+".name", spec.Name); err != nil {
			return nil, err
		}
		if _, dup := set.byName[spec.Name]; dup {
			return nil, fmt.Errorf("%s.name: %q names two policies", at, spec.Name)
		}
		// A named policy's rate-limit counters are its own: the same route
		// pattern in two policies is two routes (two services).
		p, err := compilePolicy(spec, o.Paths, spec.Name+" ")
		if err != nil {
			return nil, fmt.Errorf("%s.%w", at, err)
		}
		if spec.OwnDefaultRate || p.DefaultRate != def.DefaultRate {
			// Route scopes are "<name> /<pattern> <methods>", the admin
			// API's "admin": a policy name holds no ":", so this is none
			// of them.
			p.keyScope = "policy:" + p.Name
		}
		set.policies = append(set.policies, p)
		set.byName[p.Name] = p
	}
	if err := set.indexMatches(); err != nil {
		return nil, err
	}
	if err := set.unionSources(); err != nil {
		return nil, err
	}
	return set, nil
}

// unionSources gives each policy its strip list: its own sources, then
// the others' (each once). Decision.Present has a bit for each.
func (set *PolicySet) unionSources() error {
	for _, p := range set.policies {
		p.format = set.Format
		p.strip = slices.Clone(p.Sources)
		for _, other := range set.policies {
			for _, src := range other.Sources {
				if !slices.ContainsFunc(p.strip, src.sameAs) {
					p.strip = append(p.strip, src)
				}
			}
		}
		if len(p.strip) > 64 {
			return fmt.Errorf("sources: at most 64 different key sources in all the policies together (policy %q would strip %d)", p.Name, len(p.strip))
		}
	}
	return nil
}

// CountsDefaultApart reports whether the policy counts a key without a rate
// of its own apart from every other policy: it sets a default of its own.
// The policies that inherit the top-level default count such a key once
// between them, in the count the admin API counts it in too.
func (p *Policy) CountsDefaultApart() bool { return p.keyScope != "" }

// HoldsKey reports whether v, a value of another policy's query or cookie
// source (or a cookie piece the proxy adapters may cut), holds a key of this format (its prefix, "_" and a matching
// checksum) as some upstream may read it: anywhere in v ("<key>\n",
// "<key>,<key>"), with its percent-encodings decoded (PHP, Rack and Node's
// cookie decode cookie values: "sk%5F..."), or with its backslash escapes
// undone (Python's SimpleCookie and werkzeug read a quoted "\163k_..." as
// "sk_..."). Such a value is no credential of that service's own, and is
// stripped; imported keys of another shape cannot be told from the tokens
// an upstream takes under the same name, so those are left alone.
func (p *Policy) HoldsKey(v string) bool {
	return p.format.ContainsKey(v) ||
		strings.IndexByte(v, '%') >= 0 && p.format.ContainsKey(keystore.PercentDecoded(v)) ||
		strings.IndexByte(v, '\\') >= 0 && p.format.ContainsKey(unslashed(v))
}

// unslashed is s with Python's cookie escapes undone, as
// http.cookies._unquote does for a quoted value: a backslash and three
// octal digits (the first 0-3) is that byte, a backslash and any other
// byte is that byte.
func unslashed(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c == '\\' && i+1 < len(s) {
			if i+3 < len(s) && '0' <= s[i+1] && s[i+1] <= '3' && isOctal(s[i+2]) && isOctal(s[i+3]) {
				c = (s[i+1]-'0')<<6 | (s[i+2]-'0')<<3 | (s[i+3] - '0')
				i += 3
			} else {
				i++
				c = s[i]
			}
		}
		b = append(b, c)
	}
	return string(b)
}

func isOctal(c byte) bool { return '0' <= c && c <= '7' }

// aliasHoldsKey reports whether a header whose name differs from that of
// s, another policy's header source, only by "_" for "-" (x_api_key for
// x-api-key) holds a key of ours: no credential here, and not stripped,
// but an upstream that reads the two names alike (CGI, WSGI, PHP, Rack)
// would be handed the key.
func (p *Policy) aliasHoldsKey(s Source, req *Request) bool {
	if s.kind != SourceHeader || req.noted.names.lacks(namesUnderscore) {
		return false
	}
	found := false
	eachHeader(req.Headers, func(name, v string) {
		found = found || dashAlias(name) && readsAsHeader(name, s.name) && p.format.ContainsKey(v)
	})
	return found
}

// headerHoldsKey reports whether the header of s, another policy's header
// source without a scheme, holds a key of ours anywhere in its value
// ("Token <key>", "<key>,x"): not that service's credential, but its
// upstream would get it, and may log it, so the header is stripped. A
// value with no key of ours is that upstream's own, and stays.
func (p *Policy) headerHoldsKey(s Source, req *Request) bool {
	return s.kind == SourceHeader && s.scheme == "" && p.format.ContainsKey(req.Headers.Get(s.name))
}

// otherSchemeHoldsKey reports whether the header of s, a source with a
// scheme, holds a key of ours under another scheme: "Authorization: Token
// <key>", or Basic credentials whose user or password is one. That is no
// credential of s, and is not read as one, but some upstream may still
// read it (one that searches the value for "Bearer ", one that takes an
// API key as the Basic user, as Stripe's clients send it), and any may log
// it: none may be handed a key, so the header is stripped.
func (p *Policy) otherSchemeHoldsKey(s Source, req *Request) bool {
	if s.scheme == "" || s.kind != SourceHeader {
		return false
	}
	v := req.Headers.Get(s.name)
	if v == "" {
		return false
	}
	if p.format.ContainsKey(v) {
		return true
	}
	for line := range strings.SplitSeq(v, ",") {
		if readings, ok := basicCredentials(line); ok && slices.ContainsFunc(readings, p.format.ContainsKey) {
			return true
		}
	}
	return false
}

// keyInRequest says whether a request's query and its cookies hold a key
// of ours (percent-decoded too), each worked out once, on first asking:
// another policy's query and cookie names are read for a spelling the
// proxy does not strip only when they do (spellingHoldsKey), and a
// request is asked for each such name of every other policy.
type keyInRequest struct {
	query, cookie int8 // 0 not worked out yet, 1 holds a key, -1 does not
}

// holds reports whether the query (kind SourceQuery) or the cookies
// (SourceCookie) of req hold a key of p's format.
func (k *keyInRequest) holds(p *Policy, kind SourceKind, req *Request) bool {
	memo, text := &k.query, ""
	switch kind {
	case SourceQuery:
		if i := strings.IndexByte(req.Path, '?'); i >= 0 {
			text = req.Path[i+1:]
		}
	case SourceCookie:
		memo, text = &k.cookie, req.Headers.Get("cookie")
	default:
		return false
	}
	if *memo == 0 {
		*memo = -1
		if p.HoldsKey(text) {
			*memo = 1
		}
	}
	return *memo == 1
}

// spellingHoldsKey reports whether req names s, a query or cookie source of
// another policy, under a spelling some upstream reads as its name but the
// proxy does not strip (Source.lookup's ambiguous), while its query or
// cookies hold a key of ours (k). The key is looked for first, as most
// requests hold none: the names are read only then.
func (p *Policy) spellingHoldsKey(s Source, req *Request, k *keyInRequest) bool {
	if !k.holds(p, s.kind, req) {
		return false
	}
	_, _, ambiguous := s.lookup(req)
	return ambiguous
}

// basicCredentials returns the "user:password" a Basic credential encodes
// in line, one line of an Authorization header, as each upstream that
// accepts it may read it: the scheme in any case, base64 with or without
// its padding, in either alphabet; and a value that is not base64 as the
// lenient decoders read it (lenientBase64), which find credentials in
// more.
func basicCredentials(line string) ([]string, bool) {
	line = strings.TrimSpace(line)
	const scheme = "basic"
	if len(line) <= len(scheme) || !strings.EqualFold(line[:len(scheme)], scheme) {
		return nil, false
	}
	sep := schemeSeparator(line[len(scheme):])
	if sep == 0 {
		return nil, false
	}
	enc := strings.TrimSpace(line[len(scheme)+sep:])
	unpadded := strings.TrimRight(enc, "=")
	if b, err := base64.RawStdEncoding.DecodeString(unpadded); err == nil {
		return []string{string(b)}, true
	}
	if b, err := base64.RawURLEncoding.DecodeString(unpadded); err == nil {
		return []string{string(b)}, true
	}
	return []string{lenientBase64(enc, false), lenientBase64(enc, true)}, true
}

// lenientBase64 decodes enc as lenient base64 decoders do, which skip
// every byte outside their alphabet (junk, white space) where a strict
// one refuses the value: as Python's b64decode does (the standard
// alphabet; a padding is skipped unless it ends a group of four, where
// decoding stops), or, with node, as Node's Buffer.from does (either
// alphabet; decoding stops at the first padding).
func lenientBase64(enc string, node bool) string {
	out := make([]byte, 0, len(enc)*3/4)
	var acc uint32
	bits, quad, pads := 0, 0, 0
	for i := 0; i < len(enc); i++ {
		c := enc[i]
		var v byte
		switch {
		case 'A' <= c && c <= 'Z':
			v = c - 'A'
		case 'a' <= c && c <= 'z':
			v = c - 'a' + 26
		case '0' <= c && c <= '9':
			v = c - '0' + 52
		case c == '+' || node && c == '-':
			v = 62
		case c == '/' || node && c == '_':
			v = 63
		case c == '=':
			if pads++; node || quad >= 2 && quad+pads >= 4 {
				return string(out)
			}
			continue
		default:
			continue
		}
		pads, quad = 0, (quad+1)%4
		acc, bits = acc<<6|uint32(v), bits+6
		if bits >= 8 {
			bits -= 8
			out = append(out, byte(acc>>bits))
		}
	}
	return string(out)
}

// compilePolicy compiles one policy; scope prefixes its routes' rate-limit
// counters ("" for the default policy, whose counters keep the names they
// had before there were policies).
func compilePolicy(s PolicySpec, paths Paths, scope string) (*Policy, error) {
	routes, err := compileRoutes(s.Routes, paths, scope)
	if err != nil {
		return nil, err
	}
	if len(s.Sources) > 64 {
		return nil, errors.New("sources: at most 64")
	}
	p := &Policy{
		Name: s.Name, Routes: routes, Authenticate: s.Authenticate, Sources: slices.Clone(s.Sources),
		DefaultRate: s.DefaultRate, ForwardMeta: slices.Clone(s.ForwardMeta),
		Match: Match{Context: maps.Clone(s.Match.Context), Principals: slices.Clone(s.Match.Principals), Hosts: slices.Clone(s.Match.Hosts)},
	}
	switch s.Mode {
	case ModeInherit, ModeEnforce:
	case ModeShadow:
		p.Shadow = true
		p.enforcesRoute = slices.ContainsFunc(routes.routes, func(r *Route) bool { return r.Mode == ModeEnforce })
	default:
		return nil, fmt.Errorf("mode: %d is not a mode", s.Mode)
	}
	for i, name := range s.ForwardMeta {
		field := fmt.Sprintf("forward_meta[%d]", i)
		if err := keystore.ValidateMetaName(field, name); err != nil {
			return nil, err
		}
		if slices.Contains(s.ForwardMeta[:i], name) {
			return nil, fmt.Errorf("%s: %q is named twice", field, name)
		}
		p.forward = append(p.forward, forwardedMeta{name: name, header: MetaHeader(name)})
	}
	return p, nil
}

// indexMatches builds the selection indexes and refuses selectors that are
// ambiguous (two policies one request could select alike) or can never
// match a request.
func (ps *PolicySet) indexMatches() error {
	ps.principals = map[string]*Policy{}
	ps.hosts = map[string]*Policy{}
	ps.suffixes = map[string]*Policy{}
	var withContext []*Policy
	for i, p := range ps.policies[1:] {
		at := fmt.Sprintf("policies[%d].match", i)
		if len(p.Match.Context) > 0 {
			for k, v := range p.Match.Context {
				if k == "" || v == "" {
					return fmt.Errorf("%s.context: keys and values must not be empty", at)
				}
			}
			// Two context selectors one request could both satisfy would
			// make the choice depend on their order: they must differ in
			// the value of some key both name.
			for _, q := range withContext {
				if !contextsExclusive(p.Match.Context, q.Match.Context) {
					return fmt.Errorf("%s.context: a request with %s would select both %q and %q; give them a key with different values",
						at, describeContext(p.Match.Context, q.Match.Context), q.Name, p.Name)
				}
			}
			withContext = append(withContext, p)
			if ps.context == nil {
				ps.context = map[string]map[string][]*Policy{}
			}
			for k, v := range p.Match.Context {
				if ps.context[k] == nil {
					ps.context[k] = map[string][]*Policy{}
				}
				ps.context[k][v] = append(ps.context[k][v], p)
			}
		}
		for j, principal := range p.Match.Principals {
			field := fmt.Sprintf("%s.principals[%d]", at, j)
			if principal == "" || strings.ContainsAny(principal, " \t\r\n") {
				return fmt.Errorf("%s: %q: a principal is a certificate's URI SAN, e.g. spiffe://cluster.local/ns/billing/sa/billing", field, principal)
			}
			if istioForm(principal) {
				return fmt.Errorf("%s: %q is how Istio's AuthorizationPolicy writes a principal, but Envoy reports the destination's as its certificate's URI SAN: write %q",
					field, principal, "spiffe://"+principal)
			}
			if err := checkSPIFFEID(principal); err != nil {
				return fmt.Errorf("%s: %q is no SPIFFE ID (%v), so no certificate carries it and it would never select %q", field, principal, err, p.Name)
			}
			if q := ps.principals[principal]; q != nil {
				return fmt.Errorf("%s: %q already selects policy %q", field, principal, q.Name)
			}
			ps.principals[principal] = p
		}
		for j, host := range p.Match.Hosts {
			field := fmt.Sprintf("%s.hosts[%d]", at, j)
			index, key, err := ps.hostIndex(host)
			if err != nil {
				return fmt.Errorf("%s: %q: %v", field, host, err)
			}
			if q := index[key]; q != nil {
				return fmt.Errorf("%s: %q already selects policy %q", field, host, q.Name)
			}
			index[key] = p
		}
	}
	return nil
}

// istioForm reports whether a configured principal is written as Istio's
// AuthorizationPolicy writes one ("cluster.local/ns/billing/sa/billing",
// the SPIFFE id without its scheme), which no destination principal ever
// is: Envoy reports the certificate's first URI SAN (with its scheme),
// else its first DNS SAN (no "/"), else its subject (with "="). Such a
// selector never matches, and the workload's requests go to the default
// policy (with unselected: default) as if it named none.
func istioForm(principal string) bool {
	return strings.Contains(principal, "/") && !strings.ContainsAny(principal, ":=")
}

// checkSPIFFEID checks a principal that names the spiffe scheme (in any
// case) against the SPIFFE ID's syntax: "spiffe://", a trust domain of
// lower-case letters, digits, '.', '-' and '_', then path segments of
// letters, digits, '.', '-' and '_', none empty, "." or "..". A SPIFFE
// certificate carries nothing else, so a selector written otherwise never
// matches, and the workload's requests go to the default policy: a
// template's placeholder left in ("spiffe://${TRUST_DOMAIN}/ns/..."), a
// trust domain in capitals, a trailing slash, a port. Other principals
// (a DNS SAN, a subject) are taken as written.
func checkSPIFFEID(principal string) error {
	const scheme = "spiffe://"
	if len(principal) < len(scheme) || !strings.EqualFold(principal[:len(scheme)], scheme) {
		return nil
	}
	if principal[:len(scheme)] != scheme {
		return errors.New(`the scheme is "spiffe://", in lower case`)
	}
	if len(principal) > 2048 {
		return errors.New("longer than 2048 bytes")
	}
	domain, path, hasPath := strings.Cut(principal[len(scheme):], "/")
	if domain == "" {
		return errors.New("no trust domain")
	}
	if strings.Trim(domain, "abcdefghijklmnopqrstuvwxyz0123456789.-_") != "" {
		return errors.New("a trust domain is lower-case letters, digits, '.', '-' and '_', with no port, and nothing is expanded in it")
	}
	if !hasPath {
		return nil
	}
	for seg := range strings.SplitSeq(path, "/") {
		switch {
		case seg == "":
			return errors.New("an empty path segment (a trailing or doubled slash)")
		case seg == "." || seg == "..":
			return errors.New(`a "." or ".." path segment`)
		case strings.Trim(seg, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != "":
			return errors.New("a path segment is letters, digits, '.', '-' and '_', and nothing is expanded in it")
		}
	}
	return nil
}

// hostIndex returns the index a configured host goes into and its key
// there, or why no request's host could ever match it.
func (ps *PolicySet) hostIndex(host string) (map[string]*Policy, string, error) {
	index, name := ps.hosts, host
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		index, name = ps.suffixes, rest
	}
	switch {
	case name == "" || strings.Contains(name, "*"):
		return nil, "", errors.New(`want a host name ("billing.example.com") or "*." and one ("*.billing.example.com"); no other wildcard`)
	case strings.ToLower(name) != name:
		return nil, "", errors.New("hosts are compared in lower case; write it so")
	case strings.Contains(name, ":"):
		return nil, "", errors.New("a request's port is not part of its host here; leave the port out")
	}
	if n, ok := canonicalHost(name); !ok || n != len(name) || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != "" {
		return nil, "", errors.New("not a host name: letters, digits, '-', '_' and dots, no empty label, no trailing dot")
	}
	return index, name, nil
}

// contextsExclusive reports whether no request could satisfy both context
// selectors: some key they both name wants different values.
func contextsExclusive(a, b map[string]string) bool {
	for k, v := range a {
		if w, ok := b[k]; ok && w != v {
			return true
		}
	}
	return false
}

// describeContext is the smallest context_extensions satisfying a and b,
// for an error message.
func describeContext(a, b map[string]string) string {
	all := maps.Clone(a)
	maps.Copy(all, b)
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(all)) {
		parts = append(parts, k+"="+all[k])
	}
	return "context_extensions {" + strings.Join(parts, ", ") + "}"
}

// Named reports whether the set has policies besides the default one.
func (ps *PolicySet) Named() bool { return len(ps.policies) > 1 }

// Policies lists every policy, the default one first, then the named ones
// in the order they were given.
func (ps *PolicySet) Policies() []*Policy { return slices.Clone(ps.policies) }

// Lookup returns the policy called name, or nil.
func (ps *PolicySet) Lookup(name string) *Policy { return ps.byName[name] }

// Selector is what chose a request's policy.
type Selector uint8

// The selectors, in the order a request is tried against them.
const (
	SelectedByNone        Selector = iota // no policy was selected
	SelectedByPath                        // HTTP mode: the auth path named it
	SelectedByContext                     // Envoy's context_extensions
	SelectedByDestination                 // the destination principal
	SelectedByHost                        // the request's host
	SelectedByDefault                     // nothing else did: the default policy
)

// String names the selector as the docs do.
func (s Selector) String() string {
	return [...]string{"none", "auth path", "context_extensions", "destination principal", "host", "default"}[s]
}

// selectPolicy is step 1: the policy req is decided by, and what chose it,
// or the denial. In order:
//
//  1. HTTP mode (Request.PolicyFromPath): the policy its auth path names,
//     and nothing else: a header there is the client's.
//  2. Envoy's context_extensions, which Envoy's own configuration sets per
//     virtual host or route. When the request carries a key some policy's
//     context selector names but no policy matches, it is no_policy:
//     Envoy meant a policy this config lacks, and any other choice would
//     decide by rules nobody intended.
//  3. The destination principal: the URI SAN of the certificate the proxy
//     presented on the client's connection (Istio: the workload's SPIFFE
//     id), which a sidecar's client cannot choose. An edge proxy with a
//     certificate per domain presents the one the client's SNI names, and
//     routes by a Host that need not agree: there the client chooses.
//  4. The host, exact before "*.suffix", the longest suffix first. The host
//     is the client's to write, so a host-selected policy is only as good as
//     the proxy's virtual-host routing, which must send exactly those hosts
//     to that policy's service; a host that proxies read differently (a
//     trailing dot, an empty label) is 400 rather than guessed at.
//  5. The default policy, or no_policy with DenyUnselected.
//
// A config without named policies returns Default at once.
func (ps *PolicySet) selectPolicy(req *Request, d *Decision) bool {
	if len(ps.policies) == 1 {
		return d.choose(ps.Default, SelectedByDefault)
	}
	if req.PolicyFromPath {
		if p := ps.byName[req.PolicyName]; p != nil {
			return d.choose(p, SelectedByPath)
		}
		if req.PolicyName == "" {
			d.Deny(CodeNoPolicy, "no policy named: the auth path must be <prefix>/_policy/<name>/... when the config has policies")
		} else {
			d.Deny(CodeNoPolicy, ps.noPolicyNamed(req.PolicyName))
		}
		return false
	}
	if ps.context != nil {
		p, keyed := ps.byContext(req.ContextExtensions)
		if p != nil {
			return d.choose(p, SelectedByContext)
		}
		if keyed {
			d.Deny(CodeNoPolicy, "no policy matches the context_extensions Envoy sent")
			return false
		}
	}
	if req.DestinationPrincipal != "" {
		if p := ps.principals[req.DestinationPrincipal]; p != nil {
			return d.choose(p, SelectedByDestination)
		}
	}
	if len(ps.hosts)+len(ps.suffixes) > 0 {
		// An empty host selects no policy, as a host of none does; the
		// forwarded hosts must agree with it all the same, or an upstream
		// that trusts them would serve as another policy's a request the
		// default policy decided.
		var p *Policy
		if req.Host != "" {
			var ok bool
			if p, ok = ps.byHost(req.Host); !ok {
				d.Deny(CodeBadRequest, "malformed request: the host is not in one canonical form (a trailing dot, an empty label, a bad port, over 260 bytes)")
				return false
			}
		}
		if !ps.forwardedHostsAgree(req.Headers, p) {
			d.Deny(CodeBadRequest, "malformed request: X-Forwarded-Host or Forwarded names a host of another policy than the request's host, which an upstream that trusts it would serve the request as")
			return false
		}
		if p != nil {
			return d.choose(p, SelectedByHost)
		}
	}
	if ps.DenyUnselected {
		d.Deny(CodeNoPolicy, "")
		return false
	}
	return d.choose(ps.Default, SelectedByDefault)
}

// forwardedHostsAgree reports whether every host the request names in
// X-Forwarded-Host (a list) or in Forwarded's host= parameters selects p,
// the policy its host selected (nil: none by host), and is in canonical
// form. Express with "trust proxy", Django's USE_X_FORWARDED_HOST, Rails
// and Spring's ForwardedHeaderFilter take the host from them, so an
// upstream that serves several hosts would otherwise answer, as another
// service's, a request decided by this one's rules. Both are read under
// every spelling an upstream reads them by (any case, "_" for "-", as CGI,
// WSGI and Rack name headers), and a Forwarded value that parsers read
// differently (forwardedHostsOf) agrees with nothing.
func (ps *PolicySet) forwardedHostsAgree(h Headers, p *Policy) bool {
	agrees := func(host string) bool {
		host = strings.TrimSpace(host)
		if host == "" {
			return true // names nothing: the request's host stands
		}
		if !plainHost(host) {
			return false
		}
		q, ok := ps.byHost(host)
		return ok && q == p
	}
	ok := true
	eachHeader(h, func(name, value string) {
		switch {
		case !ok:
		case readsAsHeader(name, "x-forwarded-host"):
			for host := range strings.SplitSeq(value, ",") {
				ok = ok && agrees(host)
			}
		case readsAsHeader(name, "forwarded"):
			ok = forwardedHostsOf(value, agrees)
		}
	})
	return ok
}

// plainHost reports whether a forwarded host is spelled with the bytes of
// a host name (letters, digits, ".", "-", "_"), or as an IPv6 address in
// brackets, with at most a port after either: what every reader of the
// header reads alike. Any other byte is one some reader cuts at or decodes,
// so that it finds another host inside: Spring's ForwardedHeaderUtils
// before 7.1 and Reactor Netty read host="?([^;,"]+) out of
// host="billing.example.com,x", Rack splits a Forwarded value at "," and
// ";" before it reads quotes, and a "%" may be decoded. A request's own
// Host is not held to this (Envoy compares its bytes as they are, and so
// does selection): only the hosts an upstream may take instead of it.
func plainHost(host string) bool {
	if host[0] == '[' {
		// An IPv6 address without a zone, as written: "[beef.cafe]" or
		// "[10.0.0.5]" are no literal, and Go's net.SplitHostPort reads
		// the name inside.
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return false
		}
		ip, err := netip.ParseAddr(host[1:end])
		if err != nil || !ip.Is6() || ip.Zone() != "" {
			return false
		}
		return end+1 == len(host) || isPort(host[end+1:])
	}
	for i := 0; i < len(host); i++ {
		switch c := host[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == '_', c == ':': // a ":" is the port's, or canonicalHost refuses it
		default:
			return false
		}
	}
	return true
}

// forwardedHostsOf calls agrees with each host= parameter of a Forwarded
// value (RFC 7239: elements split at ",", pairs at ";", each a token, "="
// and a token or quoted string) and reports whether all agree. A value
// that readers of Forwarded read differently agrees with nothing: one that
// does not parse (an unclosed quote, a pair without "=", a name that is
// not a token), one with a backslash (RFC 7239's quoted-pair, which Spring
// 7.1, Jetty and Symfony unescape and others keep), and one where "host="
// (any case) stands anywhere but as the name of a pair: Spring's
// ForwardedHeaderUtils before 7.1 and Reactor Netty search the whole value
// for host="?([^;,"]+), so they read "xhost=a" and for="host=a" as host a.
// No proxy writes any of these.
func forwardedHostsOf(value string, agrees func(string) bool) bool {
	if strings.IndexByte(value, '\\') >= 0 {
		return false
	}
	named := 0 // pairs named host
	for i := 0; i < len(value); {
		// One pair: OWS token "=" (token | quoted-string) OWS, then ";",
		// "," or the end.
		for i < len(value) && (value[i] == ' ' || value[i] == '\t') {
			i++
		}
		if i < len(value) && (value[i] == ',' || value[i] == ';') {
			i++ // an empty pair or element, which RFC 7239's lists allow
			continue
		}
		start := i
		for i < len(value) && isTokenByte(value[i]) {
			i++
		}
		name := value[start:i]
		if name == "" || i == len(value) || value[i] != '=' {
			return false
		}
		i++
		var v string
		if i < len(value) && value[i] == '"' {
			end := strings.IndexByte(value[i+1:], '"')
			if end < 0 {
				return false
			}
			v, i = value[i+1:i+1+end], i+2+end
		} else {
			start := i
			for i < len(value) && isTokenByte(value[i]) {
				i++
			}
			v = value[start:i]
		}
		for i < len(value) && (value[i] == ' ' || value[i] == '\t') {
			i++
		}
		if i < len(value) && value[i] != ',' && value[i] != ';' {
			return false
		}
		if strings.EqualFold(name, "host") {
			named++
			if !agrees(v) {
				return false
			}
		}
	}
	return countFold(value, "host=") == named
}

// countFold counts the occurrences of the lower-case ASCII text sub in s,
// in any letter case.
func countFold(s, sub string) int {
	n := 0
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			n++
		}
	}
	return n
}

// choose records the selected policy and its mode.
func (d *Decision) choose(p *Policy, by Selector) bool {
	d.Policy, d.selector, d.Shadow = p, by, p.Shadow
	return true
}

// byContext returns the policy whose context selector the request's
// context_extensions satisfy, and whether they hold any key a selector
// names. Selectors are mutually exclusive (indexMatches), so at most one
// matches. It does not allocate.
func (ps *PolicySet) byContext(ext []Header) (*Policy, bool) {
	keyed := false
	for _, e := range ext {
		values := ps.context[e.Key]
		if values == nil {
			continue
		}
		keyed = true
	candidates:
		for _, p := range values[e.Value] {
			for k, v := range p.Match.Context {
				if value, ok := lastExtension(ext, k); !ok || value != v {
					continue candidates
				}
			}
			return p, true
		}
	}
	return nil, keyed
}

// lastExtension returns the value of key in ext; a key repeated on the wire
// has its last value, as in protobuf's map.
func lastExtension(ext []Header, key string) (string, bool) {
	for i := len(ext) - 1; i >= 0; i-- {
		if ext[i].Key == key {
			return ext[i].Value, true
		}
	}
	return "", false
}

// maxHostBytes is the longest host selection reads: a DNS name is at
// most 253 bytes, and a port adds six. A longer one is refused, not passed
// over: it still ends in some configured "*.suffix", which a proxy matches
// whatever the length.
const maxHostBytes = 260

// byHost returns the policy the host selects (nil: none), or false when the
// host is not in canonical form or longer than any host name. Letter case is folded and a port dropped,
// as Envoy matches virtual hosts (with strip_any_host_port); it does not
// allocate.
func (ps *PolicySet) byHost(raw string) (*Policy, bool) {
	if len(raw) > maxHostBytes {
		return nil, false
	}
	var buf [maxHostBytes]byte
	host := buf[:0]
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		host = append(host, c)
	}
	n, ok := canonicalHost(host)
	if !ok {
		return nil, false
	}
	host = host[:n]
	if p := ps.hosts[string(host)]; p != nil {
		return p, true
	}
	for i, c := range host {
		if c == '.' {
			if p := ps.suffixes[string(host[i+1:])]; p != nil {
				return p, true
			}
		}
	}
	return nil, true
}

// canonicalHost returns the length of host without its port, and false
// when two reasonable proxies could route it differently: a trailing dot
// (some strip it, some do not), an empty label, an empty or non-numeric
// port, or a byte no host name holds (a space, a control character, "/" or
// "@"). An IP literal is canonical (it never matches a configured name),
// but only as "[...]" with at most a port after it: Envoy matches
// "*.billing.example.com" as a suffix of the whole host, so it routes
// "[::1]x.billing.example.com" to billing, which the literal alone would
// not select. Other bytes are kept, not guessed at: Envoy compares them as
// they are, and so does a "*.suffix" here.
func canonicalHost[T string | []byte](host T) (int, bool) {
	if len(host) > 0 && host[0] == '[' { // [v6] or [v6]:port
		for i := 1; i < len(host); i++ {
			if host[i] == ']' {
				if i+1 < len(host) && !isPort(host[i+1:]) {
					return 0, false
				}
				return i + 1, true
			}
		}
		return 0, false
	}
	n := len(host)
	for i := len(host) - 1; i >= 0; i-- {
		if host[i] == ':' {
			if !isPort(host[i:]) {
				return 0, false
			}
			n = i
			break
		}
	}
	if n == 0 || host[0] == '.' || host[n-1] == '.' {
		return 0, false
	}
	for i := 0; i < n; i++ {
		switch c := host[i]; {
		case c == '.' && host[i+1] == '.':
			return 0, false
		case c < 0x21, c == 0x7f, c == '/', c == '@', c == ':':
			return 0, false
		}
	}
	return n, true
}

// isPort reports whether s is ":" and one or more digits.
func isPort[T string | []byte](s T) bool {
	if len(s) < 2 || s[0] != ':' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// noPolicyNamed is the message of the no_policy answer to an auth path
// naming a policy the config lacks. It names the name when it could be a
// policy's (keystore.ValidatePolicyName), to help find a typo in a
// proxy's config, unless it holds a key. The name is text the client
// writes when a proxy calls extauthz with the bare prefix, and an answer
// never echoes a key pasted there, nor text no config could name.
func (ps *PolicySet) noPolicyNamed(name string) string {
	if keystore.ValidatePolicyName("", name) != nil || ps.Format.ResemblesKey(name) {
		return "the auth path names no policy of this config"
	}
	return "no policy is named \"" + name + "\""
}

// Explanation is what applies to a request before any key is looked at:
// the policy it selects and how, the route that decides it, and whether
// the decision is enforced. `extauthz config explain` shows it.
type Explanation struct {
	Policy     *Policy  // nil when no policy was selected (Code says why)
	SelectedBy Selector // what chose Policy
	Method     string   // normalised ("" when step 2 failed)
	Path       string   // normalised, without query
	Route      *Route   // nil when none matched (Code says why, or the policy authenticates unmatched paths)
	Shadow     bool     // the decision is recorded, not enforced
	// Code and Message are the denial the request gets before its key is
	// looked at ("" = it goes on to the key steps, or Route is public).
	Code    Code
	Message string
}

// Explain runs the steps of the decision that need no key (select the
// policy, normalise, route) on req, as Decide would.
func (ps *PolicySet) Explain(req *Request) Explanation {
	var d Decision
	_ = ps.selectPolicy(req, &d) && normalize(ps, req, &d) && route(&d)
	return Explanation{Policy: d.Policy, SelectedBy: d.selector, Method: d.Method, Path: d.Path, Route: d.Route,
		Shadow: d.Shadow, Code: d.Code, Message: d.Message}
}

// isTokenByte reports whether c may stand in an HTTP token (RFC 9110's
// tchar), as a Forwarded parameter's name and unquoted value must.
func isTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
