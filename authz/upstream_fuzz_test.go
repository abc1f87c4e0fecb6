package authz

import (
	"fmt"
	"net/url"
	"path"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// This file holds extauthz's reading of a raw path to four models of how
// an upstream reads it, and FuzzRouteAgainstUpstreams checks, for any raw
// path, that whenever extauthz lets a request through as route R (or as
// unmatched with "authenticate"), the route the upstream's reading of the
// same path falls under is no stricter than R. The models are written
// independently of the code they check: their own decoding, their own
// route matcher over the pattern text.

// modelRoutes is the table the fuzz target decides with. Its literals
// exercise case, trailing slashes, encoded characters and method rules.
var modelRoutes = []RouteSpec{
	{Path: "/public/**", Public: true},
	{Path: "/files/public", Public: true},
	{Path: "/files/{name}", Permissions: []string{"read:files"}},
	{Path: "/static/**", Public: true},
	{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
	{Path: "/api/users/{id}", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
	{Path: "/api/users/{id}", Methods: []string{"DELETE"}, Permissions: []string{"delete:users"}},
	{Path: "/api/reports/**", Permissions: []string{"read:reports"}},
	{Path: "/api/admin/**", Permissions: []string{"admin"}},
	{Path: "/keys/**", Permissions: []string{"admin"}},
	{Path: "/docs/", Public: true},
	{Path: "/v1/things:list", Permissions: []string{"list:things"}},
	{Path: "/caf%C3%A9/**", Permissions: []string{"admin"}},
	{Path: "/a%20b", Public: true},
}

// servedPath is a path as an upstream routes it: decoded segments (a
// segment may hold any byte, "/" included) and whether it ends in "/".
type servedPath struct {
	segs  []string
	slash bool
}

// upstreamModel reads a raw request target as one kind of upstream does.
type upstreamModel struct {
	name string
	// serve returns the path the upstream routes, or false when it refuses
	// the request or only redirects it (a redirect is a new request, which
	// extauthz decides again).
	serve func(raw string) (servedPath, bool)
	// equal compares a served segment with a pattern literal (decoded).
	equal func(seg, lit string) bool
	// slashBlind: the upstream serves /x/ as /x.
	slashBlind bool
}

var (
	// servletModel is Tomcat: ";params" cut from every raw segment, then
	// the path decoded (an encoded "/" or "\" refused), "//" merged, dot
	// segments resolved; case-sensitive.
	servletModel = upstreamModel{name: "servlet container", serve: servletServe, equal: func(a, b string) bool { return a == b }}
	// muxModel is Go 1.22's ServeMux: the escaped path must be clean
	// (path.Clean, trailing slash kept) or it redirects; segments are
	// unescaped one by one, so "%2e%2e" and "a%2Fb" are names; ";" is a
	// character; case-sensitive.
	muxModel = upstreamModel{name: "Go ServeMux", serve: muxServe, equal: func(a, b string) bool { return a == b }}
	// literalModel is Flask behind a proxy that passes the
	// request target on as it came: segments decoded one by one, but
	// neither "//" merged nor dot segments resolved; case-sensitive.
	literalModel = upstreamModel{name: "literal router (Flask)", serve: literalServe, equal: func(a, b string) bool { return a == b }}
	// expressModel is Express 4 and 5 (and koa-router) with their
	// defaults, behind such a proxy: a route's regular expression runs on
	// the raw path, case-insensitively ("case sensitive routing" off), with
	// a trailing slash optional ("strict routing" off); only what a
	// wildcard captures is decoded. So a literal matches a raw segment
	// only as written (a character that must be encoded, encoded), in any
	// ASCII case. (Rails' router matches the raw path too, case-sensitively.)
	expressModel = upstreamModel{name: "Express (raw, case-insensitive)", serve: rawServe, equal: rawEqualFold, slashBlind: true}
	// foldingModel is a case-insensitive upstream (IIS-like, and
	// pessimistic): everything decoded, "\" a separator, dots resolved,
	// Unicode case folded (strings.EqualFold: ſ is s, K is k), a trailing
	// slash ignored.
	foldingModel = upstreamModel{name: "case-insensitive upstream", serve: foldingServe, equal: strings.EqualFold, slashBlind: true}
	// railsModel is Rails: the literal router, with the end of the last
	// segment from its first dot taken as the format ("/api/admin.json"
	// is "/api/admin").
	railsModel = upstreamModel{name: "Rails (format suffix)", serve: formatCut(literalServe), equal: func(a, b string) bool { return a == b }}
	// springModel is Spring MVC before 5.3 on a servlet container: a
	// pattern also matches its path with any ".ext" (suffix pattern
	// matching), which for these patterns is the same as cutting the last
	// segment at its first dot.
	springModel = upstreamModel{name: "Spring MVC (suffix patterns)", serve: formatCut(servletServe), equal: func(a, b string) bool { return a == b }}
	// phpFirstModel and phpLastModel are a PHP front controller (Symfony,
	// Laravel) behind Caddy's php_fastcgi, which splits the path at its
	// first segment ending in ".php", and behind nginx's usual
	// fastcgi_split_path_info, which splits at the last: the application
	// routes what follows that segment, its path info, literally.
	phpFirstModel = upstreamModel{name: "PHP front controller (first .php)", serve: scriptCut(literalServe, false), equal: func(a, b string) bool { return a == b }}
	phpLastModel  = upstreamModel{name: "PHP front controller (last .php)", serve: scriptCut(literalServe, true), equal: func(a, b string) bool { return a == b }}
	// springPatternModel is Spring MVC 5.3+ with its path patterns
	// (PathPatternParser, the default of Spring Boot 2.6+ and Spring 6) on
	// a servlet container: it matches the request URI, not the
	// container's servlet path, split at "/", each segment's ";params"
	// cut and the rest decoded; empty segments are skipped and nothing
	// resolves "." or "..", which are names to it.
	springPatternModel = upstreamModel{name: "Spring MVC path patterns", serve: springPatternServe, equal: func(a, b string) bool { return a == b }}
	// trimmingModel is Spring MVC before 4.3 on a servlet container: its
	// AntPathMatcher trims every segment (Java's String.trim: every byte up
	// to the space) and drops one left empty.
	trimmingModel = upstreamModel{name: "Spring MVC before 4.3 (trimmed segments)", serve: trimCut(servletServe), equal: func(a, b string) bool { return a == b }}
)

// trimCut reads a path as serve does, then trims every segment of the
// bytes up to and including the space at either end, and drops the
// segments left empty.
func trimCut(serve func(string) (servedPath, bool)) func(string) (servedPath, bool) {
	return func(raw string) (servedPath, bool) {
		sp, ok := serve(raw)
		if !ok {
			return sp, ok
		}
		segs := make([]string, 0, len(sp.segs))
		for _, seg := range sp.segs {
			if seg = strings.TrimFunc(seg, func(r rune) bool { return r <= ' ' }); seg != "" {
				segs = append(segs, seg)
			}
		}
		sp.segs = segs
		return sp, true
	}
}

// scriptCut reads a path as serve does, then keeps only what follows its
// first (or last) segment ending in ".php" in any case that has a "/"
// after it: a script's path info.
func scriptCut(serve func(string) (servedPath, bool), last bool) func(string) (servedPath, bool) {
	return func(raw string) (servedPath, bool) {
		sp, ok := serve(raw)
		if !ok {
			return sp, ok
		}
		cut := -1
		for i, seg := range sp.segs {
			followed := i < len(sp.segs)-1 || sp.slash
			if followed && len(seg) >= 4 && strings.EqualFold(seg[len(seg)-4:], ".php") {
				cut = i
				if !last {
					break
				}
			}
		}
		if cut < 0 {
			return sp, true
		}
		sp.segs = slices.Clone(sp.segs[cut+1:])
		if len(sp.segs) == 0 {
			sp.slash = false // the root
		}
		return sp, true
	}
}

// formatCut reads a path as serve does, then cuts the last segment at its
// first dot that does not start it.
func formatCut(serve func(string) (servedPath, bool)) func(string) (servedPath, bool) {
	return func(raw string) (servedPath, bool) {
		sp, ok := serve(raw)
		if !ok || len(sp.segs) == 0 {
			return sp, ok
		}
		last := sp.segs[len(sp.segs)-1]
		if i := strings.IndexByte(last[min(1, len(last)):], '.'); i >= 0 {
			sp.segs = append(slices.Clone(sp.segs[:len(sp.segs)-1]), last[:i+min(1, len(last))])
		}
		return sp, true
	}
}

// decodeAll percent-decodes s fully, refusing a malformed escape.
func decodeAll(s string) (string, bool) {
	d, err := url.PathUnescape(s)
	return d, err == nil
}

// resolve merges empty segments and resolves dot segments of decoded
// segments; false when ".." climbs above the root.
func resolve(segs []string) ([]string, bool) {
	var out []string
	for _, s := range segs {
		switch s {
		case "", ".":
		case "..":
			if len(out) == 0 {
				return nil, false
			}
			out = out[:len(out)-1]
		default:
			out = append(out, s)
		}
	}
	return out, true
}

func cutQueryModel(raw string) string {
	if i := strings.IndexAny(raw, "?#"); i >= 0 {
		return raw[:i]
	}
	return raw
}

func servletServe(raw string) (servedPath, bool) {
	raw = cutQueryModel(raw)
	if !strings.HasPrefix(raw, "/") || strings.ContainsAny(raw, "\\") {
		return servedPath{}, false
	}
	rawSegs := strings.Split(raw[1:], "/")
	var segs []string
	for _, s := range rawSegs {
		if i := strings.IndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		d, ok := decodeAll(s)
		if !ok || strings.ContainsAny(d, "/\\") || !utf8.ValidString(d) || hasControl(d) {
			return servedPath{}, false
		}
		segs = append(segs, d)
	}
	last := rawSegs[len(rawSegs)-1]
	if i := strings.IndexByte(last, ';'); i >= 0 {
		last = last[:i]
	}
	d, _ := decodeAll(last)
	slash := d == "" || d == "." || d == ".."
	out, ok := resolve(segs)
	return servedPath{segs: out, slash: slash && len(out) > 0}, ok
}

func springPatternServe(raw string) (servedPath, bool) {
	raw = cutQueryModel(raw)
	if !strings.HasPrefix(raw, "/") || strings.ContainsAny(raw, "\\") || hasControl(raw) {
		return servedPath{}, false
	}
	var segs []string
	for s := range strings.SplitSeq(raw[1:], "/") {
		if i := strings.IndexByte(s, ';'); i >= 0 {
			s = s[:i]
		}
		d, ok := decodeAll(s)
		if !ok || !utf8.ValidString(d) || hasControl(d) {
			return servedPath{}, false
		}
		if d != "" {
			segs = append(segs, d)
		}
	}
	return servedPath{segs: segs, slash: strings.HasSuffix(raw, "/") && len(segs) > 0}, true
}

func muxServe(raw string) (servedPath, bool) {
	raw = cutQueryModel(raw)
	u, err := url.ParseRequestURI(raw)
	if err != nil || hasControl(raw) {
		return servedPath{}, false
	}
	escaped := u.EscapedPath()
	// ServeMux's cleanPath: path.Clean, keeping a trailing slash.
	clean := path.Clean(escaped)
	if strings.HasSuffix(escaped, "/") && clean != "/" {
		clean += "/"
	}
	if clean != escaped {
		return servedPath{}, false // a redirect to the clean path
	}
	if escaped == "/" {
		return servedPath{}, true
	}
	body := strings.TrimSuffix(escaped[1:], "/")
	var segs []string
	for _, s := range strings.Split(body, "/") {
		d, ok := decodeAll(s)
		if !ok {
			return servedPath{}, false
		}
		segs = append(segs, d)
	}
	return servedPath{segs: segs, slash: strings.HasSuffix(escaped, "/")}, true
}

func literalServe(raw string) (servedPath, bool) {
	sp, ok := rawServe(raw)
	for i := range sp.segs {
		if sp.segs[i], ok = decodeAll(sp.segs[i]); !ok {
			return servedPath{}, false
		}
	}
	return sp, ok
}

// rawServe splits the raw path into its segments, decoding nothing.
func rawServe(raw string) (servedPath, bool) {
	raw = cutQueryModel(raw)
	if !strings.HasPrefix(raw, "/") || hasControl(raw) {
		return servedPath{}, false
	}
	if raw == "/" {
		return servedPath{}, true
	}
	body := strings.TrimSuffix(raw[1:], "/")
	return servedPath{segs: strings.Split(body, "/"), slash: strings.HasSuffix(raw, "/")}, true
}

// rawEqualFold compares a raw segment with a pattern literal spelt as the
// application writes it, ASCII letter case folded.
func rawEqualFold(seg, lit string) bool {
	var b strings.Builder
	for i := 0; i < len(lit); i++ {
		if c := lit[i]; rawInPath(c) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return equalFoldASCII(seg, b.String())
}

func foldingServe(raw string) (servedPath, bool) {
	raw = cutQueryModel(raw)
	d, ok := decodeAll(raw)
	if !ok || !strings.HasPrefix(d, "/") || hasControl(d) {
		return servedPath{}, false
	}
	d = strings.ReplaceAll(d, "\\", "/")
	out, ok := resolve(strings.Split(d[1:], "/"))
	return servedPath{segs: out}, ok
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// requirement is what a request needs to pass a route: deny (no route
// takes it), public, or a valid key holding perms.
type requirement struct {
	deny   bool
	public bool
	perms  []string
}

func requirementOf(r *Route, authenticate bool) requirement {
	switch {
	case r == nil && !authenticate:
		return requirement{deny: true}
	case r == nil:
		return requirement{}
	case r.Public:
		return requirement{public: true}
	}
	return requirement{perms: r.Permissions}
}

// atLeastAsStrict reports whether passing got implies passing want.
func (got requirement) atLeastAsStrict(want requirement) bool {
	switch {
	case got.deny:
		return true
	case want.deny:
		return false
	case want.public:
		return true
	case got.public:
		return false
	}
	for _, p := range want.perms {
		if !slices.Contains(got.perms, p) {
			return false
		}
	}
	return true
}

// modelPattern is a route pattern as the models read its text.
type modelPattern struct {
	segs  []string // decoded literals; "*" for one segment
	rest  bool
	slash bool
	shape string
}

func parseModelPattern(p string) modelPattern {
	var m modelPattern
	body := strings.TrimPrefix(p, "/")
	if strings.HasSuffix(body, "/") {
		m.slash, body = true, strings.TrimSuffix(body, "/")
	}
	if body != "" {
		for _, s := range strings.Split(body, "/") {
			switch {
			case s == "**":
				m.rest = true
			case s == "*" || strings.HasPrefix(s, "{"):
				m.segs = append(m.segs, "*")
			default:
				d, _ := decodeAll(s)
				m.segs = append(m.segs, d)
			}
		}
	}
	if p == "/" {
		m.slash = true
	}
	m.shape = fmt.Sprint(m.segs, m.rest, m.slash)
	return m
}

func (m modelPattern) matches(sp servedPath, model upstreamModel) bool {
	if len(sp.segs) < len(m.segs) || !m.rest && len(sp.segs) != len(m.segs) {
		return false
	}
	for i, lit := range m.segs {
		if lit != "*" && !model.equal(sp.segs[i], lit) || sp.segs[i] == "" {
			return false
		}
	}
	return m.rest || !sp.slash || m.slash || model.slashBlind || len(sp.segs) == 0
}

// modelLookup is the route the upstream's reading of a path falls under:
// the first route whose pattern matches claims the path; it, or a later
// route with the same pattern, takes the method if it lists it (GET covers
// HEAD) or none; else nothing does.
func modelLookup(routes []RouteSpec, authenticate bool, method string, sp servedPath, model upstreamModel) requirement {
	pats := make([]modelPattern, len(routes))
	for i, r := range routes {
		pats[i] = parseModelPattern(r.Path)
	}
	for i, p := range pats {
		if !p.matches(sp, model) {
			continue
		}
		for j := i; j < len(routes); j++ {
			if pats[j].shape != p.shape {
				continue
			}
			ms := routes[j].Methods
			if len(ms) == 0 || slices.Contains(ms, method) || method == "HEAD" && slices.Contains(ms, "GET") {
				if routes[j].Public {
					return requirement{public: true}
				}
				return requirement{perms: routes[j].Permissions}
			}
		}
		return requirement{deny: true}
	}
	if authenticate {
		return requirement{}
	}
	return requirement{deny: true}
}

// modelConfigs are the configurations the target decides under, with the
// upstream models each one is meant for: the strict default for every
// case-sensitive upstream, the servlet reading for servlet containers, and
// case_insensitive for case-insensitive upstreams (and case-sensitive ones,
// since it only adds rejections).
var modelConfigs = []struct {
	paths  Paths
	models []upstreamModel
}{
	{Paths{}, []upstreamModel{servletModel, muxModel, literalModel, expressModel, railsModel, springModel, phpFirstModel, phpLastModel, trimmingModel}},
	{Paths{Servlet: true}, []upstreamModel{servletModel, springModel, springPatternModel, trimmingModel}},
	{Paths{CaseInsensitive: true}, []upstreamModel{servletModel, muxModel, literalModel, expressModel, foldingModel, railsModel, phpFirstModel, phpLastModel}},
}

var modelMethods = []string{"GET", "HEAD", "DELETE", "OPTIONS", "POST"}

// checkAgainstUpstreams decides raw under configuration c and unmatched,
// and fails when a model upstream would route it under a stricter route
// than the one extauthz let it through as.
func checkAgainstUpstreams(t *testing.T, raw string, sel uint8) {
	c := modelConfigs[int(sel)%len(modelConfigs)]
	authenticate := sel/3%2 == 1
	method := modelMethods[int(sel/6)%len(modelMethods)]
	set, err := Compile(Options{Routes: modelRoutes, Paths: c.paths, Authenticate: authenticate, Format: testFormat()})
	if err != nil {
		t.Fatal(err)
	}
	var d Decision
	req := Request{Method: method, Path: raw, Headers: HeaderMap{}, XFFTrustedHops: -1}
	if !set.selectPolicy(&req, &d) || !normalize(set, &req, &d) || !route(&d) {
		return // rejected (400) or denied (403): nothing passes
	}
	got := requirementOf(d.Route, authenticate)
	for _, m := range c.models {
		sp, ok := m.serve(raw)
		if !ok {
			continue
		}
		want := modelLookup(modelRoutes, authenticate, method, sp, m)
		if !got.atLeastAsStrict(want) {
			pattern := "(unmatched)"
			if d.Route != nil {
				pattern = d.Route.Pattern
			}
			t.Fatalf("%s %q (paths %+v, authenticate unmatched %v): extauthz lets it through as %s %+v (normalised %q), but a %s serves %q, which needs %+v",
				method, raw, c.paths, authenticate, pattern, got, d.Path, m.name, sp.segs, want)
		}
	}
}

// The PHP models are not vacuous either: each serves a path under another
// route than extauthz would take it as, were the path not refused at the
// route step (a script's path info decides, not a spelling).
func TestPHPModelsServeThePathInfo(t *testing.T) {
	set, err := Compile(Options{Routes: modelRoutes, Authenticate: true, Format: testFormat()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		raw   string
		model upstreamModel
		want  string
	}{
		{"/public/index.php/api/admin/x", phpFirstModel, "[api admin x]"},
		{"/index.PHP/keys/x", phpFirstModel, "[keys x]"},
		{"/a.php/public/b.php/api/admin/x", phpLastModel, "[api admin x]"},
		{"/a.php/public/b.php/api/admin/x", phpFirstModel, "[public b.php api admin x]"},
		{"/index.php", phpFirstModel, "[index.php]"},
	} {
		sp, ok := tt.model.serve(tt.raw)
		if got := fmt.Sprint(sp.segs); !ok || got != tt.want {
			t.Errorf("%s serves %q as %s (%v), want %s", tt.model.name, tt.raw, got, ok, tt.want)
		}
		if tt.raw == "/index.php" {
			continue
		}
		var d Decision
		req := Request{Method: "GET", Path: tt.raw, Headers: HeaderMap{}, XFFTrustedHops: -1}
		if set.selectPolicy(&req, &d) && normalize(set, &req, &d) && route(&d) {
			t.Errorf("extauthz takes %q as %v", tt.raw, d.Route)
		} else if d.Code != CodeBadRequest {
			t.Errorf("%q: %s, want bad_request", tt.raw, d.Code)
		}
	}
}

// FuzzRouteAgainstUpstreams: for any raw path, method and configuration,
// what extauthz lets through is never less protected than how a servlet
// container, Go's ServeMux, a router that takes the path literally
// (Express, Flask) or a case-insensitive upstream would route the same
// request (see checkAgainstUpstreams). The checked-in seeds are the
// path bypasses found in review and their variants; every plain test run
// replays them.
func FuzzRouteAgainstUpstreams(f *testing.F) {
	for _, s := range modelSeeds {
		for sel := range 30 {
			f.Add(s, uint8(sel))
		}
	}
	f.Fuzz(checkAgainstUpstreams)
}

// modelSeeds are raw paths that have passed some reader of paths before.
var modelSeeds = []string{
	"/public/..;/api/admin/x", "/public/%2e%2e;/api/admin/x", "/public/%2E%2E;x=1/api/admin/x", "/public/.%2e;/api/admin/x",
	"/public/..;a=b/api/admin/x", "/public/.;/x", "/api/reports/..;/admin/x", "/..;/api/admin", "/files/public;x",
	"/files/PUBLIC", "/FILES/public", "/%C5%BFtatic/x", "/\u017ftatic/x", "/%E2%84%AAeys/x", "/%EF%BD%93tatic/x",
	"/API/admin/x", "/Api/Admin/", "/api/users/", "/files/public/", "/docs", "/docs/", "/api/users;jsessionid=1",
	"/api/admin/x/.%2e/.%2e/.%2e/public/x", "/public/%2e%2e/api/admin/x", "/api/admin//../../public/x",
	"/public//../api/admin/x", "//api//admin//x", "/public/%252e%252e/api/admin/x", "/public/%c0%ae%c0%ae/api/admin/x",
	"/public/..%2f..%2fapi/admin/x", "/public\\..\\api/admin/x", "/v1/things%3Alist", "/v1/things%3alist",
	"/caf%c3%a9/x", "/CAF%C3%A9/x", "/a%20b", "/a b", "/api/users/7", "/api/users/7/", "/keys/x", "/public/x?api_key=1",
	"/api/reports", "/api/reports/", "/static/x;jsessionid=2/../../api/admin", "/api/users/%2e%2e", "/files/..%3B/api/admin",
	"/api/admin/../../public/x", "/api/admin/x/../../../public/x", "/public/./x", "/api/users", "/API/USERS", "/api/users/7/..",
	"//public/x", "/public/x/", "/api/reports/x/..;/..;/admin/y",
	"/api/admin.json", "/api/users.json", "/api/users.csv/", "/keys.json", "/api/users/7.json", "/api/admin.tar.gz",
	"/API/Admin.json", "/docs.html", "/docs.json/", "/.env", "/api/.json", "/public/x.json",
	"/index.php/api/admin/x", "/index.PHP/api/admin/x", "/public/x.php/api/admin/x", "/a.php/b.php/api/admin/x",
	"/index.php/", "/index.php", "/.php/api/admin/x", "/public/index.php/keys/x", "/index%2Ephp/api/admin/x",
	"/index.php/api/users/", "/api/reports/x.php/admin/y",
	"/api/admin%20/x", "/api/%20/admin/x", "/public/%20/x", "/keys%20/x", "/api/users%20", "/api/admin%20;x=1/y",
	"/api/admin/x/..;/..;/..;/public/x", "/keys/x/..;/..;/public/x", "/api/admin/x/%2e%2e;/%2e%2e;/%2e%2e;/public/x",
	"/keys/x/.;/..;y/..;/public/x",
}

// The property holds on the bypasses that once got through; and the
// models are not vacuous: each finds a reading that differs from
// extauthz's on a path extauthz rejects.
func TestModelsDisagreeWhereExtauthzRejects(t *testing.T) {
	folding := pathRules{foldCase: true}
	for _, tt := range []struct {
		raw   string
		model upstreamModel
		want  string // the model's served segments
		rules pathRules
	}{
		{"/public/..;/api/admin/x", servletModel, "[api admin x]", pathRules{}},
		{"/api/admin/x/.%2e/.%2e/.%2e/public/x", muxModel, "[api admin x .. .. .. public x]", pathRules{}},
		{"/api/admin/x/.%2e/.%2e/.%2e/public/x", servletModel, "[public x]", pathRules{}},
		{"/%C5%BFtatic/x", foldingModel, "[ſtatic x]", folding},
		{"/api/admin//../../public/x", muxModel, "", pathRules{}},
		{"/api/admin/../../public/x", literalModel, "[api admin .. .. public x]", pathRules{}},
		{"/api/admin%20/x", trimmingModel, "[api admin x]", pathRules{}},
		{"/api/%20/admin/x", trimmingModel, "[api admin x]", pathRules{servlet: true}},
		{"/api/admin/x/..;/..;/..;/public/x", springPatternModel, "[api admin x .. .. .. public x]", pathRules{servlet: true}},
		{"/api/admin/x/%2e%2e;/%2e%2e;/public/x", springPatternModel, "[api admin x .. .. public x]", pathRules{servlet: true}},
		{"/api/admin/x/..;/..;/..;/public/x", servletModel, "[public x]", pathRules{servlet: true}},
	} {
		sp, ok := tt.model.serve(tt.raw)
		if tt.want == "" {
			if ok {
				t.Errorf("%s serves %q as %q; want a refusal or redirect", tt.model.name, tt.raw, sp.segs)
			}
			continue
		}
		if got := fmt.Sprint(sp.segs); !ok || got != tt.want {
			t.Errorf("%s serves %q as %s (%v), want %s", tt.model.name, tt.raw, got, ok, tt.want)
		}
		if _, err := tt.rules.normalize(tt.raw); err == nil {
			t.Errorf("extauthz accepts %q", tt.raw)
		}
	}
	if !(requirement{public: true}).atLeastAsStrict(requirement{public: true}) || (requirement{public: true}).atLeastAsStrict(requirement{perms: []string{"admin"}}) {
		t.Error("the strictness order is wrong")
	}
	if !strings.EqualFold("\u017ftatic", "static") {
		t.Error("the folding model must fold Unicode as a pessimistic upstream does")
	}
}
