package forwardauth

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
)

// Behind nginx, Caddy and Traefik the upstream gets the request target as
// the client sent it. Express and koa-router then match a route's literal
// segments against that raw path, case-insensitively by default, and
// decode only what a wildcard captures: "/files/%70ublic" is their
// "/files/:name" with name "public", and "/API/admin/keys" their
// "/api/admin/**". A spelling that picks another route for them than for
// extauthz is 400, over the real HTTP adapter in the nginx convention.
func TestASpellingARawOrCaseBlindRouterReadsApartIsRefused(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) {
		o.Routes = []authz.RouteSpec{
			{Path: "/files/public", Public: true},
			{Path: "/files/{name}", Permissions: []string{"read:files"}},
			{Path: "/api/admin/**", Permissions: []string{"admin"}},
			{Path: "/Reports/**", Permissions: []string{"read:reports"}},
			{Path: "/v1/a:b", Public: true},
			{Path: "/v1/{name}", Permissions: []string{"read:v1"}},
			{Path: "/**", Public: true},
		}
	})
	srv := serveHTTP(t, f, "x-original", 1)
	status := func(uri string) int {
		t.Helper()
		resp, _ := do(t, srv, "GET", "/authz", map[string]string{"X-Original-Method": "GET", "X-Original-Uri": uri, "X-Forwarded-For": "10.0.0.7"})
		return resp.StatusCode
	}
	tests := []struct {
		name, uri string
		want      int
	}{
		{"the protected wildcard needs a key", "/files/secret", 401},
		{"the public literal needs none", "/files/public", 200},
		{"an encoded letter is 400, not the public literal", "/files/%70ublic", 400},
		{"an encoded last letter", "/files/publi%63", 400},
		{"every letter encoded", "/files/%70%75%62%6C%69%63", 400},
		{"an encoded upper-case letter", "/files/%50ublic", 400},
		{"an encoded digit", "/files/v%31", 400},
		{"an encoded -, _ or ~", "/files/a%2Db", 400},
		{"an encoded dot within a name", "/files/public%2Ejson", 400},
		{"the admin tree needs a key", "/api/admin/keys", 401},
		{"upper case that would reach it is 400, not the public rest", "/API/admin/keys", 400},
		{"mixed case", "/Api/Admin/keys", 400},
		{"one segment", "/api/ADMIN/keys", 400},
		{"a lower-case path that a folded pattern claims is 400 too", "/reports/q1", 400},
		{"the pattern as written needs its permission", "/Reports/q1", 401},
		{"upper case inside a wildcard's segment picks no other route", "/files/SECRET", 401},
		{"nor upper case the public rest has either way", "/Docs/Index", 200},
		{"a literal with a sub-delimiter, as written", "/v1/a:b", 200},
		{"encoded, it is 400: Express serves it as /v1/{name}", "/v1/a%3Ab", 400},
		{"lower-case hex too", "/v1/a%3ab", 400},
		{"an encoded sub-delimiter a wildcard takes either way is a name", "/v1/x%3Ay", 401},
		{"as is one in what no literal names", "/files/a%40b", 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, status(tt.uri), tt.uri)
		})
	}
}

// With unmatched: authenticate, a key without read:reports must not reach
// /api/reports/** spelt in another case as "any valid key".
func TestLetterCaseDoesNotTurnAPermissionIntoAnyKey(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) { o.Authenticate = true })
	srv := serveHTTP(t, f, "x-original", 1)
	for uri, want := range map[string]int{"/api/reports/q1": 403, "/API/reports/q1": 400, "/api/REPORTS/q1": 400} {
		resp, body := do(t, srv, "GET", "/authz", map[string]string{"X-Original-Method": "GET", "X-Original-Uri": uri, "X-Forwarded-For": "10.0.0.7", "X-Api-Key": f.Good})
		assert.Equal(t, want, resp.StatusCode, "%s: %s", uri, body)
	}
}
