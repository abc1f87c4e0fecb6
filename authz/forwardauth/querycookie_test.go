package forwardauth

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
)

// No proxy that calls an HTTP auth service can take a query parameter or
// one cookie off the request it forwards, so a request with a credential
// there is 400 in every convention, whatever the key: on a key route, on a
// public route, in shadow mode, and with a good key in a header beside it.
// A request refused earlier (its path) keeps that answer. With
// query_and_cookie_keys: pass it is decided as over gRPC.
func TestHTTPModeRefusesACredentialInTheQueryOrACookie(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) {
		o.Routes = append(o.Routes, authz.RouteSpec{Path: "/shadow/**", Permissions: []string{"nobody:has"}, Mode: authz.ModeShadow})
	})
	serve := func(original string, pass bool) *httptest.Server {
		s := NewServer(f.Authz, Mode{Prefix: "/authz", Original: original, XFFHops: 1, PassQueryAndCookieKeys: pass}, nil)
		srv := httptest.NewServer(s.Handler(http.NotFoundHandler()))
		t.Cleanup(srv.Close)
		return srv
	}
	// ask sends the original request uri with headers h in the convention.
	ask := func(srv *httptest.Server, original, uri string, h map[string]string) *http.Response {
		target := "/authz"
		hh := map[string]string{"X-Forwarded-For": "10.0.0.7"}
		for k, v := range h {
			hh[k] = v
		}
		switch original {
		case "path":
			target += uri
		case "x-original":
			hh["X-Original-Method"], hh["X-Original-Uri"] = "GET", uri
		case "x-forwarded":
			hh["X-Forwarded-Method"], hh["X-Forwarded-Uri"] = "GET", uri
		}
		resp, _ := do(t, srv, "GET", target, hh)
		return resp
	}
	good, admin := url.QueryEscape(f.Good), url.QueryEscape(f.Admin)
	cases := []struct {
		name    string
		uri     string
		headers map[string]string
		status  int // with the default, refuse
		passed  int // with pass
	}{
		{"a good key in the query", "/api/users?api_key=" + good, nil, 400, 200},
		{"a good key in a cookie", "/api/users", map[string]string{"Cookie": "theme=dark; api_key=" + f.Good}, 400, 200},
		{"a key in the query beside a good key in a header", "/api/users?api_key=" + admin, map[string]string{"X-Api-Key": f.Good}, 400, 200},
		{"a key in a cookie beside a good key in a header", "/api/users", map[string]string{"X-Api-Key": f.Good, "Cookie": "api_key=" + f.Admin}, 400, 200},
		{"a key in the query of a public route", "/healthz?api_key=" + good, nil, 400, 200},
		{"any value in the key's parameter on a public route", "/healthz?api_key=not-a-key", nil, 400, 200},
		{"a key in a cookie in shadow mode", "/shadow/x", map[string]string{"Cookie": "api_key=" + f.Good}, 400, 200},
		{"an unknown key in the query", "/api/users?api_key=sk_nope", nil, 400, 401},
		{"a key in the query without the permission", "/api/reports/1?api_key=" + good, nil, 400, 403},
		{"a path refused before the key is read keeps its answer", "/api/../healthz?api_key=" + good, nil, 400, 400},
		{"a path no route takes keeps its answer", "/nowhere?api_key=" + good, nil, 403, 403},
		{"a header key alone is allowed", "/api/users?page=2", map[string]string{"X-Api-Key": f.Good, "Cookie": "theme=dark"}, 200, 200},
	}
	for _, original := range []string{"path", "x-original", "x-forwarded"} {
		refuse, pass := serve(original, false), serve(original, true)
		for _, tc := range cases {
			t.Run(original+"/"+tc.name, func(t *testing.T) {
				resp := ask(refuse, original, tc.uri, tc.headers)
				require.Equal(t, tc.status, resp.StatusCode)
				if tc.status == 400 {
					assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))
					assert.Empty(t, resp.Header.Get("X-Authz-Key-Id"), "no identity on a refusal")
				}
				assert.Equal(t, tc.passed, ask(pass, original, tc.uri, tc.headers).StatusCode, "query_and_cookie_keys: pass")
			})
		}
	}
}

// A request refused for a credential in the query goes nowhere, so it is
// refused before the key is looked up or its rate limit spent: the client
// that then sends the key in a header, as the 400 says, gets its request
// through. The route DELETE /api/users/{id} allows 1/m per key.
func TestHTTPModeRefusesAQueryKeyBeforeItsRateLimit(t *testing.T) {
	f := authztest.New(t, nil)
	s := NewServer(f.Authz, Mode{Prefix: "/authz", Original: "path", XFFHops: 1}, nil)
	srv := httptest.NewServer(s.Handler(http.NotFoundHandler()))
	t.Cleanup(srv.Close)

	resp, _ := do(t, srv, "DELETE", "/authz/api/users/1?api_key="+url.QueryEscape(f.Perms), map[string]string{"X-Forwarded-For": "10.0.0.7"})
	require.Equal(t, 400, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("X-Ratelimit-Remaining"), "a refusal that went nowhere reports no spent rate limit")

	resp, _ = do(t, srv, "DELETE", "/authz/api/users/1", map[string]string{"X-Forwarded-For": "10.0.0.7", "X-Api-Key": f.Perms})
	assert.Equal(t, 200, resp.StatusCode, "the same request with the key in a header, as the 400 told: code %q", resp.Header.Get("X-Authz-Code"))
}
