package authz

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/config"
)

func testRoutes(t testing.TB) *Routes {
	t.Helper()
	rt, err := CompileRoutes([]config.Route{
		{Path: "/healthz", Public: true},
		{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
		{Path: "/api/users/{id}", Methods: []string{"DELETE"}, Permissions: []string{"delete:users"}},
		{Path: "/api/users/*/avatar", Permissions: []string{"read:users"}},
		{Path: "/api/reports/**", Permissions: []string{"read:reports"}},
		{Path: "/", Public: true},
	})
	require.NoError(t, err)
	return rt
}

func TestRouteMatching(t *testing.T) {
	rt := testRoutes(t)
	tests := []struct {
		name, method, path, want string
	}{
		{"a literal route matches", "GET", "/healthz", "/healthz"},
		{"method restricts a route", "POST", "/api/users", ""},
		{"the method must match", "GET", "/api/users", "/api/users"},
		{"{id} matches one segment", "DELETE", "/api/users/42", "/api/users/{id}"},
		{"{id} does not match two segments", "DELETE", "/api/users/42/x", ""},
		{"{id} does not match none", "DELETE", "/api/users", ""},
		{"* matches one segment in the middle", "GET", "/api/users/7/avatar", "/api/users/*/avatar"},
		{"** matches the rest", "GET", "/api/reports/2026/q1", "/api/reports/**"},
		{"** matches nothing after it too", "GET", "/api/reports", "/api/reports/**"},
		{"** needs a segment boundary", "GET", "/api/reportsX", ""},
		{"the root route matches only the root", "GET", "/", "/"},
		{"case does not escape a rule", "GET", "/API/Users", "/api/users"},
		{"a trailing slash does not escape a rule", "GET", "/api/users/", "/api/users"},
		{"matrix parameters do not escape a rule", "GET", "/api/users;jsessionid=1", "/api/users"},
		{"unknown paths match nothing", "GET", "/other", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rt.Match(tt.method, tt.path)
			if tt.want == "" {
				assert.Nil(t, r)
				return
			}
			require.NotNil(t, r)
			assert.Equal(t, tt.want, r.Pattern)
		})
	}
}

func TestCompileRoutesRejectsBadPatterns(t *testing.T) {
	for _, p := range []string{"api", "/a/**/b", "/a/x*", "/a/{id", "/a//b", "/a/../b", "/a/%61"} {
		_, err := CompileRoutes([]config.Route{{Path: p}})
		assert.Error(t, err, p)
	}
}

func TestPrintRouteTable(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, testRoutes(t).Print(&b, "deny"))
	out := b.String()
	assert.Contains(t, out, "/api/users/{id}")
	assert.Contains(t, out, "delete:users")
	assert.Contains(t, out, "(anything else)")
	assert.Contains(t, out, "403 no_route")
}

func BenchmarkRouteMatch(b *testing.B) {
	rt := testRoutes(b)
	b.ReportAllocs()
	for b.Loop() {
		rt.Match("GET", "/api/reports/2026/q1")
	}
}
