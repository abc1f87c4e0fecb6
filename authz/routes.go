package authz

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/extauthz/extauthz/ratelimit"
)

// RouteSpec is one entry of the route table as an operator writes it, before
// CompileRoutes checks and compiles it.
type RouteSpec struct {
	// Path is the pattern: literal segments in canonical form, {name} or *
	// for one segment, ** for the rest (last segment only).
	Path string
	// Methods the route decides; empty = every method. GET covers HEAD.
	Methods []string
	// Permissions a key needs, all of them.
	Permissions []string
	// Public routes allow without a key lookup.
	Public bool
	// RateLimit is counted per key on this route; zero = none.
	RateLimit ratelimit.Rate
	// Mode overrides the policy's mode for this route; ModeInherit (the
	// zero value) keeps it.
	Mode Mode
}

// Route is one compiled entry of the route table.
type Route struct {
	Pattern     string
	Methods     []string // empty = every method; GET covers HEAD
	Permissions []string
	Public      bool
	RateLimit   ratelimit.Rate // zero = no per-route limit
	Mode        Mode           // ModeInherit: the policy's

	// scope names the route's rate-limit counters: its pattern and methods,
	// so that a counter belongs to one route (not to every route with the
	// same pattern) and survives a reload that leaves the route as it was.
	scope    string
	segs     []segment
	rest     bool // the pattern ends in "**"
	slash    bool // the pattern ends in "/": it matches with or without one
	head     bool // Methods lists GET, so HEAD is allowed too
	sameNext int  // index of the next route with the same pattern shape, or -1
}

type segKind uint8

const (
	segLiteral segKind = iota
	segOne             // {name} or *
)

type segment struct {
	kind segKind
	lit  string
}

// Routes is a compiled route table. See match for how a request finds its
// route.
type Routes struct {
	routes   []*Route
	foldCase bool // paths.case_insensitive (for Print)
	servlet  bool // paths.matrix_params: servlet (for Print)
	// upperLiteral: some pattern's literal holds an ASCII upper-case
	// letter, so a path without one may still match another route with
	// its case folded (foldMatters).
	upperLiteral bool
}

// matchKind is how a request met the route table.
type matchKind uint8

const (
	matchNone           matchKind = iota // no route's pattern matches the path
	matchRoute                           // a route decides the request
	matchWrongMethod                     // routes claim the path; none lists the method
	matchSlashVaries                     // with and without its trailing slash, the path gets different routes
	matchCaseVaries                      // with its letter case folded, the path gets another route
	matchFormatVaries                    // without its last segment's extension, the path gets another route
	matchScriptVaries                    // read as a PHP script's path info, the path gets another route
	matchEncodingVaries                  // with its encoded sub-delimiters kept, the path gets another route (route)
)

// CompileRoutes checks and compiles the route table; paths holds the opt-in
// path readings (case folding changes how a match is checked).
func CompileRoutes(specs []RouteSpec, paths Paths) (*Routes, error) {
	return compileRoutes(specs, paths, "")
}

// compileRoutes is CompileRoutes with the routes' rate-limit scopes
// prefixed by scope (a named policy's name), so that two policies' routes
// never share a count.
func compileRoutes(specs []RouteSpec, paths Paths, scope string) (*Routes, error) {
	rt := &Routes{foldCase: paths.CaseInsensitive, servlet: paths.Servlet}
	scopes := map[string]int{}
	for i, s := range specs {
		r, err := compileRoute(s, scope)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", i, s.Path, err)
		}
		if n := scopes[r.scope]; n > 0 {
			scopes[r.scope] = n + 1
			r.scope += fmt.Sprintf(" #%d", n+1)
		} else {
			scopes[r.scope] = 1
		}
		rt.routes = append(rt.routes, r)
		for _, seg := range r.segs {
			rt.upperLiteral = rt.upperLiteral || seg.kind == segLiteral && hasUpperASCII(seg.lit)
		}
	}
	for i, r := range rt.routes {
		r.sameNext = -1
		for j := i + 1; j < len(rt.routes); j++ {
			if r.sameShape(rt.routes[j]) {
				r.sameNext = j
				break
			}
		}
	}
	return rt, nil
}

func compileRoute(s RouteSpec, scope string) (*Route, error) {
	if !strings.HasPrefix(s.Path, "/") {
		return nil, fmt.Errorf("path must start with /")
	}
	if s.Mode > ModeShadow {
		return nil, fmt.Errorf("mode: %d is not a mode", s.Mode)
	}
	r := &Route{
		Pattern: s.Path, Methods: s.Methods, Permissions: s.Permissions, Public: s.Public,
		RateLimit: s.RateLimit, Mode: s.Mode, head: slices.Contains(s.Methods, "GET"),
	}
	methods := "*"
	if len(s.Methods) > 0 {
		sorted := slices.Clone(s.Methods)
		slices.Sort(sorted)
		methods = strings.Join(slices.Compact(sorted), ",")
	}
	r.scope = scope + s.Path + " " + methods

	body := s.Path[1:]
	if body != "" && strings.HasSuffix(body, "/") {
		r.slash = true
		body = body[:len(body)-1]
	}
	if body == "" {
		if s.Path != "/" {
			return nil, fmt.Errorf("empty segment: write // as /")
		}
		r.slash = true // "/" is the root and only the root
		return r, nil
	}
	parts := strings.Split(body, "/")
	for i, p := range parts {
		switch {
		case p == "":
			return nil, fmt.Errorf("empty segment: write // as /")
		case p == "**":
			if i != len(parts)-1 {
				return nil, fmt.Errorf("** may only be the last segment")
			}
			if r.slash {
				return nil, fmt.Errorf("** takes no trailing slash (it matches either)")
			}
			r.rest = true
		case p == "*" || len(p) > 2 && p[0] == '{' && p[len(p)-1] == '}' && !strings.ContainsAny(p[1:len(p)-1], "{}/"):
			r.segs = append(r.segs, segment{kind: segOne})
		case strings.ContainsAny(p, "{}*"):
			return nil, fmt.Errorf("segment %q: use {name} or * for a whole segment, ** for the rest", p)
		default:
			if norm, err := NormalizePath("/" + p); err != nil {
				return nil, fmt.Errorf("segment %q: %v", p, err)
			} else if norm != "/"+p {
				return nil, fmt.Errorf("segment %q is not in normal form: write %q (no . or .., escapes only where a character must be encoded, upper-case hex)", p, strings.TrimPrefix(norm, "/"))
			}
			r.segs = append(r.segs, segment{kind: segLiteral, lit: p})
		}
	}
	return r, nil
}

// match finds the route that decides method on the normalised path, in
// three rules:
//
//  1. Routes are tried in order, and the first whose pattern matches the
//     path claims it. The claiming route decides if it lists the method
//     (GET covers HEAD) or lists none; otherwise only the later routes with
//     the same pattern (the same literals and wildcards) may, in order, and
//     when none lists the method the answer is matchWrongMethod (403). A
//     method a route does not list never falls through to a later, broader
//     route, nor to "unmatched: authenticate": most frameworks answer HEAD
//     with the GET handler, and a route with methods says what its path
//     accepts.
//  2. A trailing slash is significant: "/x" matches only "/x", "/x/" both
//     "/x" and "/x/", and "/x/**" either. But upstreams disagree about
//     "/x/" (most frameworks serve it as "/x", Go's ServeMux and others as
//     the root of "/x/..."), so a path with a trailing slash must get the
//     same answer without it; if not, it is matchSlashVaries (400).
//  3. Literal segments compare case-sensitively, as Envoy's route matcher
//     does. But Express, koa-router and ASP.NET Core route
//     case-insensitively by default, so the path must also get the same
//     answer with ASCII letter case folded; if not, it is matchCaseVaries
//     (400). Folding thus only ever rejects; it never picks a route.
//     Nothing folds Unicode.
//  4. Rails and Spring MVC (before 5.3) read the end of a last segment
//     from a dot as a format: "/api/admin.json" is "/api/admin". So a path
//     whose last segment holds a dot (after its first byte) must get the
//     same answer without what follows its first dot, and without what
//     follows its last; if not, it is matchFormatVaries (400). A route
//     whose pattern ends in a literal with a dot ("/openapi.json") names
//     the path as it is written and is taken as it stands.
//  5. A PHP front controller (Symfony, Laravel) behind Caddy's php_fastcgi
//     or nginx's fastcgi_split_path_info serves "/index.php/api/admin" as
//     "/api/admin": a path with a segment ending in ".php" followed by
//     more must get the same answer as what follows that segment (split at
//     the first such segment, and at the last; scriptRests); if not, it is
//     matchScriptVaries (400). A route whose pattern names a ".php"
//     segment is taken as written.
//
// It does not allocate.
func (rt *Routes) match(method, path string) (*Route, matchKind) {
	r, k := rt.lookup(method, path, false)
	trimmed, slashed := strings.CutSuffix(path, "/")
	slashed = slashed && trimmed != ""
	if slashed {
		if r2, k2 := rt.lookup(method, trimmed, false); r2 != r || k2 != k {
			return nil, matchSlashVaries
		}
	}
	fold := rt.foldMatters(path)
	if fold {
		if r2, k2 := rt.lookup(method, path, true); r2 != r || k2 != k {
			return nil, matchCaseVaries
		}
		if slashed {
			if r2, k2 := rt.lookup(method, trimmed, true); r2 != r || k2 != k {
				return nil, matchCaseVaries
			}
		}
	}
	if !r.namesDottedFile() {
		stems, n := formatStems(trimmed)
		for _, stem := range stems[:n] {
			if r2, k2 := rt.lookup(method, stem, false); r2 != r || k2 != k {
				return nil, matchFormatVaries
			}
			if fold {
				if r2, k2 := rt.lookup(method, stem, true); r2 != r || k2 != k {
					return nil, matchFormatVaries
				}
			}
		}
	}
	if rests, n := scriptRests(path); n > 0 && !r.namesScript() {
		for _, rest := range rests[:n] {
			if rt.differs(method, rest, r, k) {
				return nil, matchScriptVaries
			}
			if t, ok := strings.CutSuffix(rest, "/"); ok && t != "" && rt.differs(method, t, r, k) {
				return nil, matchScriptVaries
			}
		}
	}
	return r, k
}

// differs reports whether path gets another answer than r, k: another
// route, or with folded case another.
func (rt *Routes) differs(method, path string, r *Route, k matchKind) bool {
	if r2, k2 := rt.lookup(method, path, false); r2 != r || k2 != k {
		return true
	}
	if rt.foldMatters(path) {
		if r2, k2 := rt.lookup(method, path, true); r2 != r || k2 != k {
			return true
		}
	}
	return false
}

// scriptRests returns the paths a PHP front controller serves path as: a
// segment ending in ".php" (any case) and followed by more path is a
// script, and what follows it ("/" at least) its path info, which
// Symfony, Laravel and their kin route on. nginx's usual
// fastcgi_split_path_info splits at the last such segment, Caddy's
// php_fastcgi at the first, so both are returned when they differ. So
// /index.php/api/admin is served as /api/admin, and must get the answer
// /api/admin gets. A last segment ending in ".php" is left alone: it names
// a script to run (or, behind try_files, a path the application routes as
// it is).
func scriptRests(path string) (rests [2]string, n int) {
	if strings.IndexByte(path, '.') < 0 {
		return rests, 0 // the usual path: no dot, no script
	}
	for end := 0; end < len(path); {
		next := strings.IndexByte(path[end+1:], '/')
		if next < 0 {
			next = len(path)
		} else {
			next += end + 1
		}
		seg := path[end+1 : next]
		if next < len(path) && len(seg) >= len(".php") && strings.EqualFold(seg[len(seg)-len(".php"):], ".php") {
			rest := path[next:]
			if n < 2 {
				n++
			}
			rests[n-1] = rest // the first, then the last
		}
		end = next
	}
	return rests, n
}

// namesScript reports whether r's pattern holds a literal segment ending
// in ".php": the operator named the script, and the path is taken as
// written.
func (r *Route) namesScript() bool {
	if r == nil {
		return false
	}
	for _, s := range r.segs {
		if s.kind == segLiteral && len(s.lit) >= len(".php") && strings.EqualFold(s.lit[len(s.lit)-len(".php"):], ".php") {
			return true
		}
	}
	return false
}

// formatStems returns path without the end of its last segment from the
// segment's first dot, and from its last (when that is another), skipping
// a dot that starts the segment: the path a format-reading upstream routes.
func formatStems(path string) (stems [2]string, n int) {
	start := strings.LastIndexByte(path, '/') + 1
	seg := path[start:]
	first := strings.IndexByte(seg, '.')
	if first <= 0 {
		if first < 0 || len(seg) == 1 {
			return stems, 0
		}
		// A leading dot ("/.env", "/.well-known.x"): the next one.
		if first = strings.IndexByte(seg[1:], '.'); first < 0 {
			return stems, 0
		}
		first++
	}
	stems[0], n = path[:start+first], 1
	if last := strings.LastIndexByte(seg, '.'); last > first {
		stems[1], n = path[:start+last], 2
	}
	return stems, n
}

// namesDottedFile reports whether r's pattern ends in a literal holding a
// dot: the operator named that path as it is written.
func (r *Route) namesDottedFile() bool {
	if r == nil || r.rest || len(r.segs) == 0 {
		return false
	}
	last := r.segs[len(r.segs)-1]
	return last.kind == segLiteral && strings.IndexByte(last.lit, '.') > 0
}

// foldMatters reports whether path could match otherwise with ASCII letter
// case folded: only when it, or some pattern's literal, holds an upper-case
// letter. (The usual path and table hold none, and skip the second lookup.)
func (rt *Routes) foldMatters(path string) bool {
	return rt.upperLiteral || hasUpperASCII(path)
}

func hasUpperASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// lookup applies rule 1 of match, comparing literals with ASCII case
// folded when fold is set.
func (rt *Routes) lookup(method, path string, fold bool) (*Route, matchKind) {
	for i, r := range rt.routes {
		if !r.matchPath(path, fold) {
			continue
		}
		for j := i; j >= 0; j = rt.routes[j].sameNext {
			if rt.routes[j].allows(method) {
				return rt.routes[j], matchRoute
			}
		}
		return nil, matchWrongMethod
	}
	return nil, matchNone
}

// allows reports whether the route accepts method.
func (r *Route) allows(method string) bool {
	return len(r.Methods) == 0 || slices.Contains(r.Methods, method) || method == "HEAD" && r.head
}

// matchPath matches segment by segment without splitting the path, so it
// does not allocate.
func (r *Route) matchPath(path string, fold bool) bool {
	rest := path
	for _, s := range r.segs {
		if len(rest) < 2 || rest[0] != '/' || rest[1] == '/' {
			return false
		}
		rest = rest[1:]
		end := strings.IndexByte(rest, '/')
		if end < 0 {
			end = len(rest)
		}
		seg := rest[:end]
		rest = rest[end:]
		if s.kind == segLiteral && seg != s.lit && !(fold && equalFoldASCII(seg, s.lit)) {
			return false
		}
	}
	switch {
	case r.rest, rest == "":
		return true
	case rest == "/":
		return r.slash
	}
	return false
}

// equalFoldASCII reports whether a and b are equal with ASCII letters
// folded; every other byte (all of UTF-8's multi-byte sequences) must be
// equal, so no Unicode folding (ſ and s, K and K) can happen.
func equalFoldASCII(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// sameShape reports whether r and o match exactly the same paths.
func (r *Route) sameShape(o *Route) bool {
	return r.rest == o.rest && r.slash == o.slash && slices.Equal(r.segs, o.segs)
}

// covers reports whether r's pattern matches every path o's does (with
// exact case), so that o can never claim a path before r.
func (r *Route) covers(o *Route) bool {
	if len(o.segs) < len(r.segs) {
		return false
	}
	for i, s := range r.segs {
		if s.kind == segLiteral && o.segs[i] != s {
			return false
		}
	}
	if r.rest {
		return true
	}
	return len(o.segs) == len(r.segs) && !o.rest && (r.slash || !o.slash)
}

// Len is the number of routes.
func (rt *Routes) Len() int { return len(rt.routes) }

// Warnings describes the routes that can never decide a request (or some
// of their methods), because an earlier route takes every path they match:
// a duplicate pattern whose methods an earlier route with that pattern
// already lists, and a route whose paths a broader earlier route claims.
// Neither is an error (the table still works), but both are almost
// certainly a mistake in the order of the table.
func (rt *Routes) Warnings() []string {
	var out []string
	for j, b := range rt.routes {
		for i, a := range rt.routes[:j] {
			if !a.covers(b) {
				continue
			}
			if !b.covers(a) {
				out = append(out, fmt.Sprintf("routes[%d] %q is never reached: routes[%d] %q comes first and matches every path it matches (and a path's first route passes a method it does not list only to later routes with its own pattern)",
					j, b.Pattern, i, a.Pattern))
				break
			}
			// The same paths: earlier routes with this pattern take the
			// methods they list.
			if w := duplicateWarning(rt.routes[:j], j, b); w != "" {
				out = append(out, w)
			}
			break
		}
		if w := rt.formatWarning(j, b); w != "" {
			out = append(out, w)
		}
		if w := rt.caseWarning(j, b); w != "" {
			out = append(out, w)
		}
	}
	return out
}

// caseWarning describes a route whose own path gets another route with
// its letter case folded (a pattern "/Admin" after "/admin"): such a path
// is 400 (match, rule 3), so the route decides nothing that a
// case-insensitive upstream (Express, ASP.NET Core) could not serve as
// the other.
func (rt *Routes) caseWarning(j int, r *Route) string {
	path, method := r.samplePath()
	got, k := rt.lookup(method, path, false)
	if k != matchRoute || got != r {
		return "" // never reached anyway: Warnings says so
	}
	if r2, k2 := rt.lookup(method, path, true); r2 != r {
		other := "no route"
		if k2 == matchRoute {
			other = fmt.Sprintf("the route %q", r2.Pattern)
		}
		return fmt.Sprintf("routes[%d] %q differs only in letter case from %s, which its paths get with their case folded: "+
			"every request for them is 400 (Express and ASP.NET Core route case-insensitively); give the two one spelling", j, r.Pattern, other)
	}
	return ""
}

// samplePath is a path r's pattern matches (each wildcard a segment "x"),
// and a method r takes.
func (r *Route) samplePath() (path, method string) {
	var b strings.Builder
	for _, s := range r.segs {
		b.WriteByte('/')
		if s.kind == segLiteral {
			b.WriteString(s.lit)
		} else {
			b.WriteString("x")
		}
	}
	if b.Len() == 0 {
		b.WriteByte('/')
	}
	method = "GET"
	if len(r.Methods) > 0 {
		method = r.Methods[0]
	}
	return b.String(), method
}

// sameAccess reports whether a and b let the same requests through: both
// none, or both public, or both needing the same permissions.
func sameAccess(a, b *Route) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Public == b.Public && (a.Public ||
		slices.Equal(slices.Sorted(slices.Values(a.Permissions)), slices.Sorted(slices.Values(b.Permissions))))
}

// formatWarning describes a route named by a file name ("/openapi.json")
// whose path, read with its extension as a format, gets another answer: a
// Rails or Spring MVC upstream serves both paths with one handler, and
// the table says two things about it. The route is taken as written (see
// match), so this is the operator's to settle.
func (rt *Routes) formatWarning(j int, r *Route) string {
	if !r.namesDottedFile() {
		return ""
	}
	path, method := r.samplePath()
	got, k := rt.lookup(method, path, false)
	stems, n := formatStems(path)
	for _, stem := range stems[:n] {
		if r2, k2 := rt.lookup(method, stem, false); k2 != k || !sameAccess(r2, got) {
			other := "no route"
			if r2 != nil {
				other = fmt.Sprintf("the route %q", r2.Pattern)
			}
			return fmt.Sprintf("routes[%d] %q names a file, but Rails and Spring MVC (before 5.3) serve its path as %q, which gets %s: "+
				"behind such an upstream, give both the same access", j, r.Pattern, stem, other)
		}
	}
	return ""
}

// duplicateWarning describes what earlier routes with b's pattern take
// from b (routes[j]), or "".
func duplicateWarning(earlier []*Route, j int, b *Route) string {
	var first = -1
	var taken []string
	for i, a := range earlier {
		if !a.sameShape(b) {
			continue
		}
		if first < 0 {
			first = i
		}
		if len(a.Methods) == 0 {
			return fmt.Sprintf("routes[%d] %q is never reached: it repeats the pattern of routes[%d] %q, which takes every method", j, b.Pattern, i, a.Pattern)
		}
		for _, m := range b.Methods {
			if a.allows(m) && !slices.Contains(taken, m) {
				taken = append(taken, m)
			}
		}
	}
	switch {
	case len(taken) == 0:
		return ""
	case len(taken) == len(slices.Compact(slices.Sorted(slices.Values(b.Methods)))):
		return fmt.Sprintf("routes[%d] %q is never reached: it repeats the pattern of routes[%d], and earlier routes with that pattern take its methods (%s)", j, b.Pattern, first, strings.Join(taken, ","))
	}
	return fmt.Sprintf("routes[%d] %q repeats the pattern of routes[%d]: its methods %s go to an earlier route with that pattern", j, b.Pattern, first, strings.Join(taken, ","))
}

// Print writes the compiled table, one route a line, in match order, and
// the rules that read it.
func (rt *Routes) Print(w io.Writer, unmatched string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tPATH\tMETHODS\tACCESS\tRATE LIMIT")
	for i, r := range rt.routes {
		methods := "*"
		if len(r.Methods) > 0 {
			methods = strings.Join(r.Methods, ",")
			if r.head && !slices.Contains(r.Methods, "HEAD") {
				methods += " (+HEAD)"
			}
		}
		access := "public"
		if !r.Public {
			access = "any valid key"
			if len(r.Permissions) > 0 {
				access = strings.Join(r.Permissions, " + ")
			}
		}
		limit := "-"
		if !r.RateLimit.IsZero() {
			limit = r.RateLimit.String() + " per key"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i+1, r.Pattern, methods, access, limit)
	}
	other := "403 no_route"
	if unmatched == "authenticate" {
		other = "any valid key"
	}
	fmt.Fprintf(tw, "-\t(anything else)\t*\t%s\t-\n", other)
	if err := tw.Flush(); err != nil {
		return err
	}
	reading := "Paths: a ';', '//', a dot segment or an encoded letter, digit or -._~ is 400"
	if rt.servlet {
		reading = "Paths (servlet): ;params are cut and '//' merged before matching; a dot segment is 400"
	}
	cases := "literal segments match case-sensitively, and a path whose ASCII letter case picks\nits route is 400."
	if rt.foldCase {
		cases = "literal segments match case-sensitively, and a path whose ASCII letter case picks\nits route, or with encoded non-ASCII, is 400."
	}
	_, err := fmt.Fprintf(w, `
Methods: the first route whose pattern matches the path claims it, and decides if it
lists the method (GET covers HEAD) or none; otherwise later routes with the same
pattern may; if none lists it, 403 no_route. A method never falls through to a
broader route or to "anything else".
Slashes: /x matches only /x; /x/ matches /x and /x/; /x/** matches /x, /x/ and below;
a path ending in / that gets another route without the slash is 400.
%s;
%s
`, reading, cases)
	return err
}
