package authz

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func compile(t testing.TB, paths Paths, routes ...RouteSpec) *Routes {
	t.Helper()
	rt, err := CompileRoutes(routes, paths)
	require.NoError(t, err)
	return rt
}

func testRoutes(t testing.TB) *Routes {
	t.Helper()
	return compile(t, Paths{},
		RouteSpec{Path: "/healthz", Public: true},
		RouteSpec{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"DELETE"}, Permissions: []string{"delete:users"}},
		RouteSpec{Path: "/api/users/*/avatar", Permissions: []string{"read:users"}},
		RouteSpec{Path: "/api/reports/**", Permissions: []string{"read:reports"}},
		RouteSpec{Path: "/docs/", Public: true},
		RouteSpec{Path: "/", Public: true},
	)
}

// kindName makes a match result readable in failures.
func kindName(k matchKind) string {
	return [...]string{"none", "route", "wrong method", "slash varies", "case varies"}[k]
}

func TestRouteMatching(t *testing.T) {
	rt := testRoutes(t)
	tests := []struct {
		name, method, path, want string
		kind                     matchKind
	}{
		{"a literal route matches", "GET", "/healthz", "/healthz", matchRoute},
		{"the method must match", "GET", "/api/users", "/api/users", matchRoute},
		{"a route listing GET covers HEAD", "HEAD", "/api/users", "/api/users", matchRoute},
		{"a route with methods answers no other method", "POST", "/api/users", "", matchWrongMethod},
		{"OPTIONS included", "OPTIONS", "/api/users", "", matchWrongMethod},
		{"{id} matches one segment", "DELETE", "/api/users/42", "/api/users/{id}", matchRoute},
		{"a DELETE-only route does not cover HEAD", "HEAD", "/api/users/42", "", matchWrongMethod},
		{"{id} does not match two segments", "DELETE", "/api/users/42/x", "", matchNone},
		{"* matches one segment in the middle", "GET", "/api/users/7/avatar", "/api/users/*/avatar", matchRoute},
		{"** matches the rest", "GET", "/api/reports/2026/q1", "/api/reports/**", matchRoute},
		{"** matches nothing after it too", "GET", "/api/reports", "/api/reports/**", matchRoute},
		{"** matches a trailing slash", "GET", "/api/reports/", "/api/reports/**", matchRoute},
		{"** needs a segment boundary", "GET", "/api/reportsX", "", matchNone},
		{"the root route matches only the root", "GET", "/", "/", matchRoute},
		{"a pattern with a trailing slash matches without it", "GET", "/docs", "/docs/", matchRoute},
		{"and with it", "GET", "/docs/", "/docs/", matchRoute},
		{"a path whose letter case picks its route is ambiguous: Express folds case", "GET", "/API/Users", "", matchCaseVaries},
		{"upper case in what a wildcard matches is a name like any other", "DELETE", "/api/users/ABC", "/api/users/{id}", matchRoute},
		{"a trailing slash that changes the route is ambiguous", "GET", "/api/users/", "", matchSlashVaries},
		{"so is one that loses a route", "GET", "/healthz/", "", matchSlashVaries},
		{"a semicolon is part of the segment", "GET", "/api/users;jsessionid=1", "", matchNone},
		{"unknown paths match nothing", "GET", "/other", "", matchNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, k := rt.match(tt.method, tt.path)
			assert.Equal(t, kindName(tt.kind), kindName(k))
			if tt.want == "" {
				assert.Nil(t, r)
				return
			}
			require.NotNil(t, r)
			assert.Equal(t, tt.want, r.Pattern)
		})
	}
}

func TestAMethodNeverFallsThroughToABroaderRoute(t *testing.T) {
	rt := compile(t, Paths{},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
		RouteSpec{Path: "/api/**", Public: true},
		RouteSpec{Path: "/api/users/{uid}", Methods: []string{"DELETE"}, Permissions: []string{"delete:users"}},
	)
	for _, tt := range []struct{ method, want string }{
		{"GET", "read:users"},
		{"HEAD", "read:users"},
		{"DELETE", "delete:users"}, // a later route with the same pattern decides
		{"OPTIONS", ""},            // not the broader public route
		{"PUT", ""},
		{"FOO", ""},
	} {
		r, k := rt.match(tt.method, "/api/users/7")
		if tt.want == "" {
			assert.Equal(t, kindName(matchWrongMethod), kindName(k), tt.method)
			continue
		}
		require.NotNil(t, r, tt.method)
		assert.Equal(t, []string{tt.want}, r.Permissions, tt.method)
	}
	r, _ := rt.match("OPTIONS", "/api/other")
	require.NotNil(t, r)
	assert.True(t, r.Public, "paths no method-listing route claims still reach the broad route")
}

func TestCaseInsensitiveMatchingOnlyEverRejects(t *testing.T) {
	rt := compile(t, Paths{CaseInsensitive: true},
		RouteSpec{Path: "/files/public", Public: true},
		RouteSpec{Path: "/files/{name}", Permissions: []string{"read:files"}},
		RouteSpec{Path: "/api/admin/**", Permissions: []string{"admin"}},
	)
	tests := []struct {
		name, path, want string
		kind             matchKind
	}{
		{"the exact spelling matches", "/files/public", "/files/public", matchRoute},
		{"a case that picks another route is rejected", "/files/PUBLIC", "", matchCaseVaries},
		{"a case that changes nothing passes", "/files/Report", "/files/{name}", matchRoute},
		{"a case that reaches a route from none is rejected", "/API/admin/x", "", matchCaseVaries},
		{"a case that reaches no route from none passes as none", "/Other", "", matchNone},
		{"Unicode is never folded: long s", "/files/%C5%BFecret", "/files/{name}", matchRoute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, k := rt.match("GET", tt.path)
			assert.Equal(t, kindName(tt.kind), kindName(k))
			if tt.want != "" {
				require.NotNil(t, r)
				assert.Equal(t, tt.want, r.Pattern)
			}
		})
	}
}

func TestEqualFoldASCIIFoldsNoUnicode(t *testing.T) {
	assert.True(t, equalFoldASCII("Static", "sTATIC"))
	assert.False(t, equalFoldASCII("\u017ftatic", "static"), "ſ is not s")
	assert.False(t, equalFoldASCII("\u212a", "k"), "the Kelvin sign is not k")
	assert.False(t, equalFoldASCII("\u0130d", "id"), "İ is not i")
	assert.False(t, equalFoldASCII("\uff41", "a"), "a fullwidth a is not a")
}

func TestCompileRoutesRejectsBadPatterns(t *testing.T) {
	for _, p := range []string{"api", "/a/**/b", "/a/x*", "/a/{id", "/a//b", "//", "/a/../b", "/a/./b", "/a/%61", "/a;b", "/a/%3Bb", "/a/é", "/a/%c3%a9", "/a b", "/a/**/", "/a|b", "/a/%20b", "/a/b%20", "/a/%C2%A0b"} {
		_, err := CompileRoutes([]RouteSpec{{Path: p}}, Paths{})
		assert.Error(t, err, p)
	}
	for _, p := range []string{"/", "/a/", "/a/{id}/", "/v1/things:list", "/caf%C3%A9", "/a/b%20c"} {
		_, err := CompileRoutes([]RouteSpec{{Path: p}}, Paths{})
		assert.NoError(t, err, p)
	}
}

func TestRouteLimitsAreCountedPerRoute(t *testing.T) {
	rt := compile(t, Paths{},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"GET"}},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"DELETE"}},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"DELETE"}},
	)
	get, _ := rt.match("GET", "/api/users/1")
	del, _ := rt.match("DELETE", "/api/users/1")
	assert.NotEqual(t, get.scope, del.scope)
	assert.Equal(t, "/api/users/{id} DELETE", del.scope, "stable across reloads: pattern and methods, not a position")
	assert.Equal(t, "/api/users/{id} DELETE #2", rt.routes[2].scope, "a duplicate still has its own counter")
}

func TestWarningsNameDuplicateAndShadowedRoutes(t *testing.T) {
	rt := compile(t, Paths{},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"GET"}},
		RouteSpec{Path: "/api/users/{id}", Methods: []string{"DELETE"}},                   // fine: another method
		RouteSpec{Path: "/api/users/{uid}", Methods: []string{"GET", "PUT"}},              // GET is taken
		RouteSpec{Path: "/api/users/{x}", Methods: []string{"HEAD"}},                      // HEAD is GET's
		RouteSpec{Path: "/api/**"},                                                        // fine: broader, later
		RouteSpec{Path: "/api/reports/2026", Public: true},                                // shadowed by /api/**
		RouteSpec{Path: "/other", Methods: []string{"GET"}},                               // fine
		RouteSpec{Path: "/other"},                                                         // fine: the other methods
		RouteSpec{Path: "/other", Methods: []string{"POST"}},                              // never reached
		RouteSpec{Path: "/docs/", Public: true},                                           // fine
		RouteSpec{Path: "/docs", Permissions: []string{"x"}},                              // shadowed: /docs/ matches /docs
		RouteSpec{Path: "/z/{id}", Methods: []string{"GET"}},                              // fine
		RouteSpec{Path: "/z/me", Methods: []string{"DELETE"}, Permissions: []string{"x"}}, // shadowed: no fall-through
	)
	w := rt.Warnings()
	require.Len(t, w, 6, "%q", w)
	assert.Contains(t, w[0], `routes[2] "/api/users/{uid}" repeats the pattern of routes[0]: its methods GET go to an earlier route`)
	assert.Contains(t, w[1], `routes[3] "/api/users/{x}" is never reached`)
	assert.Contains(t, w[2], `routes[5] "/api/reports/2026" is never reached: routes[4] "/api/**" comes first`)
	assert.Contains(t, w[3], `routes[8] "/other" is never reached: it repeats the pattern of routes[7] "/other", which takes every method`)
	assert.Contains(t, w[4], `routes[10] "/docs" is never reached: routes[9] "/docs/"`)
	assert.Contains(t, w[5], `routes[12] "/z/me" is never reached: routes[11] "/z/{id}"`)
}

func TestPrintRouteTable(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, testRoutes(t).Print(&b, "deny"))
	out := b.String()
	assert.Contains(t, out, "/api/users/{id}")
	assert.Contains(t, out, "GET (+HEAD)")
	assert.Contains(t, out, "delete:users")
	assert.Contains(t, out, "(anything else)")
	assert.Contains(t, out, "403 no_route")
	assert.Contains(t, out, "A method never falls through to a\nbroader route")
	assert.Contains(t, out, "a ';', '//', a dot segment or an encoded letter, digit or -._~ is 400")
}

func TestPrintSaysHowPathsAreRead(t *testing.T) {
	for _, tt := range []struct {
		paths Paths
		want  string
	}{
		{Paths{Servlet: true}, "Paths (servlet): ;params are cut and '//' merged before matching; a dot segment is 400"},
		{Paths{}, "a path whose ASCII letter case picks\nits route is 400."},
		{Paths{CaseInsensitive: true}, "a path whose ASCII letter case picks\nits route, or with encoded non-ASCII, is 400"},
	} {
		var b bytes.Buffer
		require.NoError(t, compile(t, tt.paths, RouteSpec{Path: "/a"}).Print(&b, "deny"))
		assert.Contains(t, b.String(), tt.want)
	}
}

func BenchmarkRouteMatch(b *testing.B) {
	rt := testRoutes(b)
	b.ReportAllocs()
	for b.Loop() {
		rt.match("GET", "/api/reports/2026/q1")
	}
}

// A path whose last segment has an extension must get the answer of its
// path without it (Rails and Spring MVC before 5.3 serve both with one
// handler), unless a route names the file itself.
func TestAnExtensionMustNotChangeTheRoute(t *testing.T) {
	rt := compile(t, Paths{},
		RouteSpec{Path: "/openapi.json", Public: true},
		RouteSpec{Path: "/openapi", Permissions: []string{"docs"}},
		RouteSpec{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
		RouteSpec{Path: "/api/users/{id}", Permissions: []string{"read:users"}},
		RouteSpec{Path: "/api/**", Permissions: []string{"api"}},
		RouteSpec{Path: "/static/**", Public: true},
	)
	for _, tt := range []struct {
		path string
		want matchKind
		perm string // of the route, when one decides
	}{
		{"/api/users.json", matchFormatVaries, ""},      // /api/** here, /api/users for Rails
		{"/api/users.tar.gz", matchFormatVaries, ""},    // cut at the first dot
		{"/api/users.json/", matchFormatVaries, ""},     // after the trailing slash's rule
		{"/api/users/7.json", matchRoute, "read:users"}, // {id} takes both
		{"/api/users/v1.2.3", matchRoute, "read:users"}, // a version is the same
		{"/api/reports.v2/x.csv", matchRoute, "api"},    // a dot before the last segment is no format
		{"/static/app.min.js", matchRoute, ""},          // both stems are under /static/**
		{"/openapi.json", matchRoute, ""},               // named as a file: taken as written
		{"/openapi.yaml", matchFormatVaries, ""},        // not named: /openapi decides for Rails
		{"/.env", matchNone, ""},                        // a leading dot is no extension
		{"/api/.hidden.json", matchRoute, "api"},        // cut at the next dot: /api/.hidden is /api/**
	} {
		r, k := rt.match("GET", tt.path)
		require.Equal(t, tt.want, k, tt.path)
		if k == matchRoute && tt.perm != "" {
			assert.Equal(t, []string{tt.perm}, r.Permissions, tt.path)
		}
	}
	w := rt.Warnings()
	require.Len(t, w, 1, "%q", w)
	assert.Contains(t, w[0], `routes[0] "/openapi.json" names a file, but Rails and Spring MVC (before 5.3) serve its path as "/openapi", which gets the route "/openapi"`)
	assert.Empty(t, compile(t, Paths{}, RouteSpec{Path: "/openapi.json", Public: true}, RouteSpec{Path: "/openapi", Public: true}).Warnings(),
		"a file route whose stem has the same access is fine")
}

// Two patterns that differ only in letter case decide nothing apart: the
// later one's paths get the earlier one with their case folded, so every
// request for them is 400. config check says so.
func TestWarningsNameARouteThatDiffersOnlyInCase(t *testing.T) {
	rt := compile(t, Paths{},
		RouteSpec{Path: "/admin/{id}", Permissions: []string{"admin"}},
		RouteSpec{Path: "/Admin/{id}", Public: true},
		RouteSpec{Path: "/Reports/**", Permissions: []string{"read:reports"}},
	)
	_, k := rt.match("GET", "/Admin/1")
	require.Equal(t, matchCaseVaries, k)
	w := rt.Warnings()
	require.Len(t, w, 1, "%q", w)
	assert.Contains(t, w[0], `routes[1] "/Admin/{id}" differs only in letter case from the route "/admin/{id}"`)
}
