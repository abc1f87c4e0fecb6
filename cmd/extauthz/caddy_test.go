package main

import (
	"bufio"
	"debug/buildinfo"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// The Caddy the tests run, and how to get it. What they show holds for
// this version; CI installs it (.ci/run).
const (
	caddyModule  = "github.com/caddyserver/caddy/v2"
	caddyVersion = "v2.10.2"
	caddyInstall = "go install " + caddyModule + "/cmd/caddy@" + caddyVersion
)

// caddyRoutes is the route table of the Caddy tests: a GET and a DELETE on
// one path with different permissions (so a spoofed method would show), a
// rate-limited route, public ones, and an admin tree that a path trick
// would aim at.
const caddyRoutes = `
rate_limit: {default: none}
routes:
  - {path: /healthz, public: true}
  - {path: "/public/**", public: true}
  - {path: /api/users, methods: [GET, POST], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users]}
  - {path: /api/limited, methods: [GET], permissions: [read:users], rate_limit: 2/m}
  - {path: "/admin/**", permissions: [admin]}
`

// The four headers extauthz sets on every allow, as Caddy copies them.
var identityHeaders = []string{"X-Authz-Key-Id", "X-Authz-Key-Name", "X-Authz-Owner", "X-Authz-Permissions"}

// TestCaddyForwardAuthWithTheShippedConfig runs deploy/proxies/Caddyfile in
// a real Caddy between a client and an upstream, with extauthz answering
// forward_auth in HTTP mode, configured as the Caddyfile says.
func TestCaddyForwardAuthWithTheShippedConfig(t *testing.T) {
	ts, audit := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	reader, rk := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
	local, lk := ts.create(t, keystore.Spec{Name: "loopback", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "127.0.0.0/8")})
	remote, _ := ts.create(t, keystore.Spec{Name: "remote", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "10.9.9.9/32")})
	limited, _ := ts.create(t, keystore.Spec{Name: "limited", Permissions: []string{"read:users"}})
	secrets := []string{reader, local, remote, limited}
	identity := map[string][]string{
		"X-Authz-Key-Id": {rk.ID}, "X-Authz-Key-Name": {"reader"}, "X-Authz-Owner": {"acme"}, "X-Authz-Permissions": {"read:users"},
	}

	up := startEchoUpstream(t)
	caddy := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)
	send := func(t *testing.T, method, target string, headers ...string) proxyResponse {
		t.Helper()
		return caddy.raw(t, caddyRequest(method, target, headers...))
	}

	t.Run("an allowed request reaches the upstream with the identity and its body, without the key", func(t *testing.T) {
		r := caddy.raw(t, "POST /api/users?page=2 HTTP/1.1\r\nHost: api.example.com\r\nX-Api-Key: "+reader+
			"\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world")
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.Equal(t, "/api/users?page=2", got.URI)
		assert.Equal(t, "hello world", got.Body, "forward_auth leaves the body to the upstream")
		for name, want := range identity {
			assert.Equal(t, want, got.Headers[name], name)
		}
		assert.NotContains(t, got.Headers, "X-Api-Key", "the credential header never reaches the upstream")
		assert.NotContains(t, got.Headers, "X-Envoy-Auth-Headers-To-Remove", "extauthz's answer goes no further than copy_headers says")
		assert.NotContains(t, got.Headers, "Cache-Control")
		assert.Equal(t, []string{"127.0.0.1"}, got.Headers["X-Forwarded-For"])
		assert.Empty(t, r.header.Get("RateLimit"), "Caddy passes no header of extauthz's 200 to the client")
		assert.Empty(t, r.header.Get("X-RateLimit-Limit"))
	})

	t.Run("a Bearer key is removed too", func(t *testing.T) {
		r := send(t, "GET", "/api/users/7", "Authorization: Bearer "+reader)
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.NotContains(t, got.Headers, "Authorization")
		assert.Equal(t, []string{rk.ID}, got.Headers["X-Authz-Key-Id"])
	})

	t.Run("a public route passes without identity headers and without the key", func(t *testing.T) {
		// Caddy before 2.10 set a header missing from the auth response to the
		// placeholder's text; extauthz sends them empty here.
		r := send(t, "GET", "/healthz", "X-Api-Key: "+reader)
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		for _, name := range identityHeaders {
			assert.NotContains(t, got.Headers, name)
		}
		assert.NotContains(t, got.Headers, "X-Api-Key")
	})

	// Every spelling an upstream reads as an x-authz- header: any case, and
	// "_" for "-" (php_fastcgi, CGI, WSGI and Rack read X_Authz_Owner as
	// X-Authz-Owner).
	var spoofed []string
	for _, name := range []string{"x-authz-owner", "x-authz-key-id", "x-authz-key-name", "x-authz-permissions", "x-authz-meta-plan", "x-authz-admin"} {
		for _, s := range dashSpellings(name) {
			spoofed = append(spoofed, s+": spoofed", strings.ToUpper(s)+": spoofed")
		}
	}
	readsAsAuthz := func(name string) bool {
		return strings.HasPrefix(strings.ReplaceAll(strings.ToLower(name), "_", "-"), "x-authz-")
	}
	t.Run("no client x-authz-* header reaches the upstream, in any spelling", func(t *testing.T) {
		r := send(t, "GET", "/api/users", append([]string{"X-Api-Key: " + reader}, spoofed...)...)
		require.Equal(t, 200, r.status, r.body)
		for name, vals := range up.last(t).Headers {
			if readsAsAuthz(name) {
				assert.Equal(t, identity[name], vals, "%s reaches the upstream as the client wrote it", name)
			}
		}
		for name, want := range identity {
			assert.Equal(t, want, up.last(t).Headers[name], "extauthz's %s", name)
		}

		r = send(t, "GET", "/healthz", spoofed...)
		require.Equal(t, 200, r.status, r.body)
		for name, vals := range up.last(t).Headers {
			assert.False(t, readsAsAuthz(name), "%s: %v reaches the upstream on a public route", name, vals)
		}
	})

	t.Run("a Connection header cannot strip the identity", func(t *testing.T) {
		for _, conn := range [][]string{
			{"Connection: X-Authz-Owner"},
			{"Connection: keep-alive, x-authz-owner,X-AUTHZ-KEY-ID"},
			{"Connection: X-Authz-Permissions", "Connection: x-authz-key-name"},
		} {
			r := send(t, "GET", "/api/users", append([]string{"X-Api-Key: " + reader}, conn...)...)
			require.Equal(t, 200, r.status, r.body)
			got := up.last(t)
			for name, want := range identity {
				assert.Equal(t, want, got.Headers[name], "%v: %s", conn, name)
			}
		}
	})

	t.Run("the upstream reads the client address and host Caddy served, not the client's", func(t *testing.T) {
		r := send(t, "GET", "/api/users", "X-Api-Key: "+local, "User-Agent: forwarding",
			"X-Forwarded-For: 10.9.9.9", "X-Forwarded-Host: admin.example", "X-Forwarded-Proto: https",
			"Forwarded: for=10.9.9.9;host=admin.example;proto=https", "X-Real-IP: 10.9.9.9",
			"X_Real_IP: 10.9.9.9", "X_Forwarded_For: 10.9.9.9", "x-forwarded_host: admin.example",
			"X-Forwarded-Uri: /admin/users", "X-Forwarded-Method: DELETE")
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.NotContains(t, got.Headers, "X-Forwarded-Uri", "the upstream reads no target but the one extauthz decided")
		assert.NotContains(t, got.Headers, "X-Forwarded-Method")
		assert.Equal(t, []string{lk.ID}, got.Headers["X-Authz-Key-Id"], "the allowlist held the peer, not the client's X-Forwarded-For")
		assert.Equal(t, []string{"127.0.0.1"}, got.Headers["X-Forwarded-For"])
		assert.Equal(t, []string{"api.example.com"}, got.Headers["X-Forwarded-Host"])
		assert.Equal(t, []string{"http"}, got.Headers["X-Forwarded-Proto"])
		assert.NotContains(t, got.Headers, "Forwarded")
		assert.NotContains(t, got.Headers, "X-Real-Ip")
		for name := range got.Headers {
			assert.NotContains(t, name, "_", "a header an upstream may read as a dashed one")
		}
		decided := decisionFor(t, audit, "forwarding")
		assert.Equal(t, "127.0.0.1", decided["client_ip"], "extauthz decided for the address the upstream reads")
		assert.Equal(t, "api.example.com", decided["host"])
	})

	denials := []struct {
		name    string
		method  string
		target  string
		headers []string
		status  int
		code    string
	}{
		{"no key", "GET", "/api/users", nil, 401, "missing_key"},
		{"a key that is not one", "GET", "/api/users", []string{"X-Api-Key: sk_nope"}, 401, "invalid_key"},
		{"two X-Api-Key lines", "GET", "/api/users", []string{"X-Api-Key: " + reader, "X-Api-Key: " + reader}, 401, "invalid_key"},
		{"a key in a cookie (header sources only)", "GET", "/api/users", []string{"Cookie: api_key=" + reader}, 401, "missing_key"},
		{"a key in the query (header sources only)", "GET", "/api/users?api_key=" + reader, nil, 401, "missing_key"},
		{"a key in a header spelt with _, dropped before the decision", "GET", "/api/users", []string{"x_api_key: " + reader}, 401, "missing_key"},
		{"a missing permission", "DELETE", "/api/users/7", []string{"X-Api-Key: " + reader}, 403, "permission_denied"},
		{"no route", "GET", "/nowhere", []string{"X-Api-Key: " + reader}, 403, "no_route"},
		{"a method that is not upper case", "get", "/api/users", []string{"X-Api-Key: " + reader}, 400, "bad_request"},
		{"a client-sent X-Forwarded-Uri does not choose the path", "GET", "/api/users",
			[]string{"X-Forwarded-Uri: /healthz"}, 401, "missing_key"},
		{"a client-sent X-Forwarded-Method does not choose the method", "DELETE", "/api/users/7",
			[]string{"X-Api-Key: " + reader, "X-Forwarded-Method: GET"}, 403, "permission_denied"},
		{"the other convention's headers are ignored", "GET", "/api/users",
			[]string{"X-Original-URI: /healthz", "X-Original-Method: GET"}, 401, "missing_key"},
		{"a client's X-Forwarded-For, X-Real-IP or Forwarded does not satisfy an IP allowlist", "GET", "/api/users",
			[]string{"X-Api-Key: " + remote, "X-Forwarded-For: 10.9.9.9", "X-Real-IP: 10.9.9.9", "Forwarded: for=10.9.9.9"}, 403, "ip_not_allowed"},
		{"a method override", "GET", "/api/users/7", []string{"X-Api-Key: " + reader, "X-HTTP-Method-Override: DELETE"}, 400, "bad_request"},
		{"a target override", "GET", "/api/users", []string{"X-Api-Key: " + reader, "X-Original-URL: /admin/x"}, 400, "bad_request"},
	}
	for _, tt := range denials {
		t.Run("denied: "+tt.name, func(t *testing.T) {
			before := up.calls.Load()
			r := send(t, tt.method, tt.target, tt.headers...)
			assertDenialJSON(t, r, tt.status, tt.code)
			assert.Equal(t, "no-store", r.header.Get("Cache-Control"), "Caddy passes extauthz's answer on as it is")
			assert.Equal(t, before, up.calls.Load(), "the upstream is never called for a denial")
			if tt.status == 401 {
				require.Len(t, r.header.Values("Www-Authenticate"), 1, "WWW-Authenticate passes once")
				assert.Contains(t, r.header.Get("Www-Authenticate"), `Bearer realm="extauthz"`)
			}
		})
	}

	// Caddy passes the request target on as it arrived (it cleans no path),
	// and forward_auth names the same target in X-Forwarded-Uri; each trick
	// is refused, or decided as the path the upstream is asked for.
	t.Run("path tricks are refused, or decided as the path the upstream gets", func(t *testing.T) {
		for _, tc := range []struct {
			target string
			status int
		}{
			{"/public/../admin/x", 400},
			{"/public/%2e%2e/admin/x", 400},
			{"/public/.%2E/admin/x", 400},
			{"/public/x/../../admin/x", 400},
			{"//admin/x", 400},
			{"/public//../admin/x", 400},
			{"/public/..;/admin/x", 400},
			{"/public/x;a=b", 400},
			{"/public%2F..%2Fadmin/x", 400},
			{"/public/..%5Cadmin/x", 400},
			{"/public/%252e%252e/admin/x", 400},
			{"/public/x#/../../admin/x", 400},
			{"/public/%61dmin", 400}, // Express reads it as another name than /public/admin
			{"/admin/x", 401},
			{"http://admin.example/public/x", 200},
			{"http://admin.example/admin/x", 401},
		} {
			calls := up.calls.Load()
			r := send(t, "GET", tc.target, "User-Agent: "+tc.target)
			require.Equal(t, tc.status, r.status, "%s: %s", tc.target, r.body)
			decided := decisionFor(t, audit, tc.target)
			if tc.status != 200 {
				assert.Equal(t, calls, up.calls.Load(), "%s reached the upstream", tc.target)
				continue
			}
			served, err := authz.NormalizePath(up.last(t).URI)
			require.NoError(t, err, "the upstream got %s", up.last(t).URI)
			assert.Equal(t, served, decided["path"], "%s: extauthz decided another path than the upstream got (%s)", tc.target, up.last(t).URI)
		}
	})

	t.Run("a rate-limited request gets 429, Retry-After and the JSON body", func(t *testing.T) {
		before := up.calls.Load()
		for i := range 2 {
			r := send(t, "GET", "/api/limited", "X-Api-Key: "+limited)
			require.Equal(t, 200, r.status, "request %d: %s", i+1, r.body)
		}
		assertRateLimitedJSON(t, send(t, "GET", "/api/limited", "X-Api-Key: "+limited))
		assert.Equal(t, before+2, up.calls.Load(), "only the two allowed requests reached the upstream")
	})

	t.Run("extauthz down is 502 with no body, and Caddy logs no key", func(t *testing.T) {
		ts.stop()
		before := up.calls.Load()
		r := send(t, "GET", "/api/users?page=1&api_key="+limited, "X-Api-Key: "+reader, "Authorization: Bearer "+local,
			"Cookie: api_key="+remote, "x_api_key: "+reader)
		assert.Equal(t, 502, r.status)
		assert.Empty(t, r.body)
		assert.Empty(t, r.header.Get("Retry-After"))
		assert.Equal(t, before, up.calls.Load())
		// The log reaches the buffer through a pipe, a moment after the response.
		require.Eventually(t, func() bool { return strings.Contains(caddy.stderr.String(), `"status":502`) },
			5*time.Second, 10*time.Millisecond, "the outage is logged (so the checks below can fail)")
		log := caddy.stderr.String()
		assert.Contains(t, log, `"uri":"/api/users?page=1"`, "the request is logged, without its api_key parameter")
		for _, s := range secrets {
			assert.NotContains(t, log, s, "a key in Caddy's log")
		}
	})
}

// TestCaddyRefusesWhenExtauthzDoesNotAnswer: an extauthz that accepts the
// connection and never answers gets the request refused within a second
// (504), as the Caddyfile's transport block says, instead of holding the
// client for as long as it hangs.
func TestCaddyRefusesWhenExtauthzDoesNotAnswer(t *testing.T) {
	hung := startHungServer(t)
	up := startEchoUpstream(t)
	caddy := startCaddy(t, hung, up.addr)

	start := time.Now()
	r := caddy.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: sk_not_logged"))
	took := time.Since(start)
	assert.Equal(t, 504, r.status)
	assert.Empty(t, r.body)
	assert.GreaterOrEqual(t, took, 900*time.Millisecond, "response_header_timeout is 1s")
	assert.Less(t, took, 3*time.Second)
	assert.Zero(t, up.calls.Load())
	require.Eventually(t, func() bool { return strings.Contains(caddy.stderr.String(), `"status":504`) },
		5*time.Second, 10*time.Millisecond)
	assert.NotContains(t, caddy.stderr.String(), "sk_not_logged")
}

// TestCaddyfileLinesEachCloseAHole takes one line (or block) out of the
// shipped Caddyfile at a time and shows, in the same Caddy, the hole its
// comment says it closes. A Caddy that no longer behaves so fails here,
// and the comment (and deploy/proxies/README.md) must then say what it
// does instead.
func TestCaddyfileLinesEachCloseAHole(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	extauthz := strings.TrimPrefix(ts.httpURL, "http://")

	for _, tc := range []struct {
		name     string
		cut      [][2]string // text taken out (each exactly once), and what stands in its place
		extauthz string      // "dead", "hung", or "" for the running extauthz
		hole     func(t *testing.T, c *proxyProc)
	}{
		{
			name: "route { }: request_header runs after forward_auth and deletes the identity",
			cut:  [][2]string{{"\troute {\n", ""}, {"upstream:8000\n\t}\n", "upstream:8000\n"}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader))
				require.Equal(t, 200, r.status, r.body)
				for _, name := range identityHeaders {
					assert.NotContains(t, up.last(t).Headers, name)
				}
			},
		},
		{
			name: "-X-Authz-*: a client's copy_headers header survives on a public route (GHSA-7r4p-vjf4-gxv4), any other on every route",
			cut:  [][2]string{{"\t\trequest_header -X-Authz-*\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/healthz", "X-Authz-Owner: spoofed"))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"spoofed"}, up.last(t).Headers["X-Authz-Owner"])
				r = c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader, "X-Authz-Meta-Plan: gold"))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"gold"}, up.last(t).Headers["X-Authz-Meta-Plan"])
			},
		},
		{
			name: "-*_*: a client's x_authz_owner and X_Real_IP reach the upstream",
			cut:  [][2]string{{"\t\trequest_header -*_*\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader, "x_authz_owner: spoofed", "X_Real_IP: 10.9.9.9"))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"spoofed"}, up.last(t).Headers["X_authz_owner"])
				assert.Equal(t, []string{"10.9.9.9"}, up.last(t).Headers["X_real_ip"])
			},
		},
		{
			name: "Connection: the proxy drops a header the client names there after forward_auth set it",
			cut:  [][2]string{{"\t\trequest_header Connection \"(?i)x[-_.]authz[-_.][^,]*\" \"\"\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader, "Connection: X-Authz-Owner"))
				require.Equal(t, 200, r.status, r.body)
				assert.NotContains(t, up.last(t).Headers, "X-Authz-Owner")
				assert.Contains(t, up.last(t).Headers, "X-Authz-Key-Id")
			},
		},
		{
			name: "-Forwarded: a client's Forwarded reaches the upstream",
			cut:  [][2]string{{"\t\trequest_header -Forwarded\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader, "Forwarded: host=admin.example"))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"host=admin.example"}, up.last(t).Headers["Forwarded"])
			},
		},
		{
			name: "-X-Forwarded-Uri, -X-Forwarded-Method: a client's name another target to the upstream",
			cut:  [][2]string{{"\t\trequest_header -X-Forwarded-Uri\n", ""}, {"\t\trequest_header -X-Forwarded-Method\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader, "X-Forwarded-Uri: /admin/users", "X-Forwarded-Method: DELETE"))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"/admin/users"}, up.last(t).Headers["X-Forwarded-Uri"])
				assert.Equal(t, []string{"DELETE"}, up.last(t).Headers["X-Forwarded-Method"])
			},
		},
		{
			name: "-X-Real-IP: a client's X-Real-IP reaches the upstream",
			cut:  [][2]string{{"\t\trequest_header -X-Real-IP\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader, "X-Real-IP: 10.9.9.9"))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"10.9.9.9"}, up.last(t).Headers["X-Real-Ip"])
			},
		},
		{
			name: "-X-Api-Key: Caddy ignores x-envoy-auth-headers-to-remove, so the key reaches the upstream",
			cut:  [][2]string{{"\t\trequest_header -X-Api-Key\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{reader}, up.last(t).Headers["X-Api-Key"])
			},
		},
		{
			name: "-Authorization: a Bearer key reaches the upstream",
			cut:  [][2]string{{"\t\trequest_header -Authorization\n", ""}},
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "Authorization: Bearer "+reader))
				require.Equal(t, 200, r.status, r.body)
				assert.Equal(t, []string{"Bearer " + reader}, up.last(t).Headers["Authorization"])
			},
		},
		{
			name:     "the log filter: Caddy logs the key of a request it could not proxy",
			cut:      [][2]string{{"\tlog {\n\t\tformat filter {\n\t\t\trequest>headers delete\n\t\t\trequest>uri query {\n\t\t\t\tdelete api_key\n\t\t\t}\n\t\t}\n\t}\n", ""}},
			extauthz: "dead",
			hole: func(t *testing.T, c *proxyProc) {
				r := c.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader))
				require.Equal(t, 502, r.status)
				require.Eventually(t, func() bool { return strings.Contains(c.stderr.String(), reader) },
					5*time.Second, 10*time.Millisecond, "no key in Caddy's log:\n%s", c.stderr.String())
			},
		},
		{
			name:     "the transport timeouts: a hung extauthz holds the client",
			cut:      [][2]string{{"\t\t\ttransport http {\n\t\t\t\tdial_timeout 1s\n\t\t\t\tresponse_header_timeout 1s\n\t\t\t}\n", ""}},
			extauthz: "hung",
			hole: func(t *testing.T, c *proxyProc) {
				conn, err := net.Dial("tcp", strings.TrimPrefix(c.url, "http://"))
				require.NoError(t, err)
				defer conn.Close()
				require.NoError(t, conn.SetDeadline(time.Now().Add(2500*time.Millisecond)))
				_, err = io.WriteString(conn, caddyRequest("GET", "/api/users", "X-Api-Key: sk_x"))
				require.NoError(t, err)
				_, err = http.ReadResponse(bufio.NewReader(conn), nil)
				var ne net.Error
				require.True(t, errors.As(err, &ne) && ne.Timeout(), "answered within 2.5s: %v", err)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := extauthz
			switch tc.extauthz {
			case "hung":
				addr = startHungServer(t)
			case "dead":
				addr = fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t)) // nothing listens there
			}
			c := startCaddy(t, addr, up.addr, func(conf string) string {
				for _, cut := range tc.cut {
					require.Equal(t, 1, strings.Count(conf, cut[0]), "deploy/proxies/Caddyfile must contain %q exactly once", cut[0])
					conf = strings.Replace(conf, cut[0], cut[1], 1)
				}
				return conf
			})
			tc.hole(t, c)
		})
	}
}

// TestCaddyAccessLogKeepsNoKeyOnlyThroughTheFilter: Caddy's access log
// holds the request's headers and URI as its error log does. A site's bare
// log directive writes through the default logger, which the Caddyfile's
// filter covers; one given an output of its own is a logger of its own,
// and writes the key, as the Caddyfile's comment warns.
func TestCaddyAccessLogKeepsNoKeyOnlyThroughTheFilter(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	for _, tc := range []struct {
		log    string
		leaked bool
	}{
		{"\tlog\n", false},
		{"\tlog {\n\t\toutput stderr\n\t}\n", true},
	} {
		c := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr, func(conf string) string {
			require.Equal(t, 1, strings.Count(conf, "\troute {\n"))
			return strings.Replace(conf, "\troute {\n", tc.log+"\troute {\n", 1)
		})
		r := c.raw(t, caddyRequest("GET", "/api/users?api_key="+reader, "X-Api-Key: "+reader))
		require.Equal(t, 200, r.status, r.body)
		require.Eventually(t, func() bool { return strings.Contains(c.stderr.String(), `"msg":"handled request"`) },
			5*time.Second, 10*time.Millisecond, "%q writes an access log", tc.log)
		assert.Equal(t, tc.leaked, strings.Contains(c.stderr.String(), reader), "%q: the key in the access log", tc.log)
	}
}

// TestCaddyUpstreamGetsTheTargetExtauthzDecided: forward_auth sends extauthz
// the URI as it stands when forward_auth runs, and reverse_proxy sends the
// upstream the URI as it stands then. A versioning rewrite above
// forward_auth, where the Caddyfile says it goes, is decided as rewritten;
// put between the two, it let a key allowed /api/v1/admin/x by a route for
// /api/** reach /api/admin/x, an admin route.
func TestCaddyUpstreamGetsTheTargetExtauthzDecided(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+`
rate_limit: {default: none}
routes:
  - {path: "/api/admin/**", permissions: [admin]}
  - {path: "/api/**", permissions: [read:users]}
`)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	rewrite := func(before string) func(string) string {
		return func(conf string) string {
			require.Equal(t, 1, strings.Count(conf, before), "deploy/proxies/Caddyfile must contain %q exactly once", before)
			return strings.Replace(conf, before, "\t\turi replace /api/v1/ /api/\n"+before, 1)
		}
	}

	above := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr, rewrite("\t\tforward_auth extauthz:9002 {\n"))
	r := above.raw(t, caddyRequest("GET", "/api/v1/admin/x", "X-Api-Key: "+reader))
	assertDenialJSON(t, r, 403, "permission_denied")
	for _, target := range []string{"/api/v1/users?a=1", "/api/users/%7Bx%7D"} {
		r = above.raw(t, caddyRequest("GET", target, "X-Api-Key: "+reader))
		require.Equal(t, 200, r.status, "%s: %s", target, r.body)
		assert.Equal(t, strings.Replace(target, "/v1/", "/", 1), up.last(t).URI)
	}

	between := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr, rewrite("\t\treverse_proxy upstream:8000\n"))
	r = between.raw(t, caddyRequest("GET", "/api/v1/admin/x", "X-Api-Key: "+reader))
	require.Equal(t, 200, r.status, "the README's warning: decided as /api/v1/admin/x: %s", r.body)
	assert.Equal(t, "/api/admin/x", up.last(t).URI, "and served as the admin path")
}

// TestCaddyNamedPolicyPath: with named policies, each site's forward_auth
// names its policy in uri (/authz/_policy/<name>); the shipped bare /authz
// is then refused, 403 no_policy, so a site left without one shows at once.
func TestCaddyNamedPolicyPath(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes+`
policies:
  - name: billing
    routes:
      - {path: "/invoices/**", permissions: [read:invoices]}
`)
	billing, bk := ts.create(t, keystore.Spec{Name: "billing", Permissions: []string{"read:invoices"}})
	up := startEchoUpstream(t)
	extauthz := strings.TrimPrefix(ts.httpURL, "http://")

	bare := startCaddy(t, extauthz, up.addr)
	for _, target := range []string{"/invoices/7", "/healthz", "/invoices/7?/_policy/billing"} {
		assertDenialJSON(t, bare.raw(t, caddyRequest("GET", target, "X-Api-Key: "+billing)), 403, "no_policy")
	}

	named := startCaddy(t, extauthz, up.addr, func(conf string) string {
		const uri = "\t\t\turi /authz\n"
		require.Equal(t, 1, strings.Count(conf, uri))
		return strings.Replace(conf, uri, "\t\t\turi /authz/_policy/billing\n", 1)
	})
	r := named.raw(t, caddyRequest("GET", "/invoices/7?page=2", "X-Api-Key: "+billing))
	require.Equal(t, 200, r.status, r.body)
	assert.Equal(t, []string{bk.ID}, up.last(t).Headers["X-Authz-Key-Id"])
	assertDenialJSON(t, named.raw(t, caddyRequest("GET", "/healthz")), 403, "no_route")
}

// TestCaddyQueryAndCookieCredentials: Caddy can remove a header but not a
// query parameter or one cookie, so with the default sources a key sent
// there is refused (http_mode.query_and_cookie_keys: refuse) and the
// upstream never sees it. With pass it is allowed, and Caddy hands it to
// the upstream: why the Caddyfile's extauthz config takes keys from headers
// only, and why pass is not the default.
func TestCaddyQueryAndCookieCredentials(t *testing.T) {
	for _, mode := range []string{"refuse", "pass"} {
		t.Run(mode, func(t *testing.T) {
			ts, _ := startCaddyExtauthz(t, "http_mode: {original: x-forwarded, xff_trusted_hops: 1, query_and_cookie_keys: "+mode+"}\n"+caddyRoutes)
			reader, rk := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
			up := startEchoUpstream(t)
			caddy := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

			inQuery := caddy.raw(t, caddyRequest("GET", "/api/users?api_key="+reader))
			if mode == "refuse" {
				assertDenialJSON(t, inQuery, 400, "bad_request")
				assertDenialJSON(t, caddy.raw(t, caddyRequest("GET", "/api/users", "Cookie: theme=dark; api_key="+reader)), 400, "bad_request")
				assert.Zero(t, up.calls.Load(), "the upstream saw neither")
				return
			}
			require.Equal(t, 200, inQuery.status, inQuery.body)
			assert.Equal(t, []string{rk.ID}, up.last(t).Headers["X-Authz-Key-Id"])
			assert.Equal(t, "/api/users?api_key="+reader, up.last(t).URI)
			inCookie := caddy.raw(t, caddyRequest("GET", "/api/users", "Cookie: theme=dark; api_key="+reader))
			require.Equal(t, 200, inCookie.status, inCookie.body)
			assert.Equal(t, []string{"theme=dark; api_key=" + reader}, up.last(t).Headers["Cookie"])
		})
	}
}

// caddyExtauthzConfig returns the extauthz settings the Caddyfile's header
// names ("extauthz config for this file"), after checking that the Caddy
// section of deploy/proxies/README.md gives the same ones.
func caddyExtauthzConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(proxiesDir, "Caddyfile"))
	require.NoError(t, err)
	_, rest, ok := strings.Cut(string(b), "# extauthz config for this file:\n#\n")
	require.True(t, ok, "the Caddyfile names the extauthz config it needs")
	var yaml strings.Builder
	for line := range strings.SplitSeq(rest, "\n") {
		l, ok := strings.CutPrefix(line, "#   ")
		if !ok {
			break
		}
		yaml.WriteString(l + "\n")
	}
	require.Contains(t, yaml.String(), "http_mode:")
	require.Contains(t, yaml.String(), "sources:")

	readme, err := os.ReadFile(filepath.Join(proxiesDir, "README.md"))
	require.NoError(t, err)
	m := regexp.MustCompile("(?s)\n## Caddy\n.*?```yaml\n(.*?)```").FindSubmatch(readme)
	require.NotNil(t, m, "README.md's Caddy section gives the extauthz config")
	load := func(yaml string) *config.Config {
		path := filepath.Join(t.TempDir(), "extauthz.yaml")
		require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
		cfg, err := config.Load(path)
		require.NoError(t, err, yaml)
		return cfg
	}
	inFile, inReadme := load(yaml.String()), load(string(m[1]))
	require.Equal(t, inReadme.HTTPMode, inFile.HTTPMode, "the Caddyfile and README.md give one http_mode")
	require.Equal(t, inReadme.Sources, inFile.Sources, "the Caddyfile and README.md give the same sources")
	return yaml.String()
}

// startCaddyExtauthz starts extauthz with yaml on the embedded store, its
// audit events kept.
func startCaddyExtauthz(t *testing.T, yaml string) (*testServer, *syncbuf.Buffer) {
	t.Helper()
	audit := &syncbuf.Buffer{}
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: stdout}\n"+
		storeYAML(t, "embedded")+yaml)
	return startServerOut(t, path, serverOutput{logs: io.Discard, audit: audit}), audit
}

// decisionFor waits for the audit event of the one decision on a request
// sent with User-Agent ua (the server writes it a moment after it answers),
// and returns it.
func decisionFor(t *testing.T, audit *syncbuf.Buffer, ua string) map[string]any {
	t.Helper()
	var found []map[string]any
	require.Eventually(t, func() bool {
		found = found[:0]
		for _, e := range auditEventsOf(t, audit.String(), "decision") {
			if e["user_agent"] == ua {
				found = append(found, e)
			}
		}
		return len(found) > 0
	}, 5*time.Second, 5*time.Millisecond, "the decision on %q is audited", ua)
	require.Len(t, found, 1, "one decision on %q", ua)
	return found[0]
}

// caddyRequest is one HTTP/1.1 request, written out in full: the target and
// headers exactly as given, Host api.example.com.
func caddyRequest(method, target string, headers ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: api.example.com\r\n", method, target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Connection: close\r\n\r\n")
	return b.String()
}

// raw sends request exactly as written and reads the answer.
func (p *proxyProc) raw(t *testing.T, request string) proxyResponse {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(p.url, "http://"), 2*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, request)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return proxyResponse{status: resp.StatusCode, body: string(body), header: resp.Header}
}

// startHungServer listens on a free loopback port, accepts every
// connection and never answers, until the test ends. It returns the
// address.
func startHungServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// findCaddy returns the caddy binary of caddyVersion: the one on PATH, else
// the one go install put in $GOBIN or $(go env GOPATH)/bin, which need not
// be on PATH (make test and go test run with the caller's). Another version
// is passed over: what these tests show holds for the version they ran.
// None at all fails the test, naming the install command; CI installs it,
// so a missing binary is a broken machine, not a reason to skip.
func findCaddy(t *testing.T) string {
	t.Helper()
	var candidates []string
	if p, err := exec.LookPath("caddy"); err == nil {
		candidates = append(candidates, p)
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n") // GOBIN's line may be empty
		if len(lines) == 2 {
			if gobin := strings.TrimSpace(lines[0]); gobin != "" {
				candidates = append(candidates, filepath.Join(gobin, "caddy"))
			}
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				candidates = append(candidates, filepath.Join(p, "bin", "caddy"))
			}
		}
	}
	var found []string
	seen := map[string]bool{}
	for _, p := range candidates {
		if seen[p] {
			continue
		}
		seen[p] = true
		info, err := buildinfo.ReadFile(p)
		if err != nil {
			continue
		}
		v := "unknown"
		if info.Main.Path == caddyModule {
			v = info.Main.Version
		}
		for _, d := range info.Deps {
			if d.Path == caddyModule {
				v = d.Version // a custom build (xcaddy)
			}
		}
		if v == caddyVersion {
			return p
		}
		found = append(found, p+" is "+v)
	}
	t.Fatalf("no caddy %s on PATH or in $(go env GOPATH)/bin (found: %v); install it with `%s`, as .ci/run does",
		caddyVersion, found, caddyInstall)
	return ""
}

// caddyConf returns deploy/proxies/Caddyfile with edits applied, then the
// demo's addresses replaced by the test's, Caddy listening on port of
// 127.0.0.1 only, and its admin endpoint off (so that runs side by side
// cannot collide on its port, 2019). Each replaced line must occur exactly
// once, so the test fails rather than silently running a different config
// when the file changes.
func caddyConf(t *testing.T, port int, extauthzAddr, upstreamAddr string, edits ...func(conf string) string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(proxiesDir, "Caddyfile"))
	require.NoError(t, err)
	conf := string(b)
	for _, edit := range edits {
		conf = edit(conf)
	}
	for _, r := range []struct{ old, new string }{
		{"\n{\n", "\n{\n\tadmin off\n\tdefault_bind 127.0.0.1\n"}, // the global options
		{"\n:8080 {\n", fmt.Sprintf("\n:%d {\n", port)},
		{"forward_auth extauthz:9002 {", "forward_auth " + extauthzAddr + " {"},
		{"reverse_proxy upstream:8000\n", "reverse_proxy " + upstreamAddr + "\n"},
	} {
		require.Equal(t, 1, strings.Count(conf, r.old), "deploy/proxies/Caddyfile must contain %q exactly once", r.old)
		conf = strings.Replace(conf, r.old, r.new, 1)
	}
	return conf
}

// startCaddy runs `caddy run` with the shipped Caddyfile (edits applied)
// on a free port, and stops it when the test ends. Caddy keeps its state
// (the autosaved config, certificates) under the test's directory, not the
// user's home.
func startCaddy(t *testing.T, extauthzAddr, upstreamAddr string, edits ...func(conf string) string) *proxyProc {
	t.Helper()
	bin := findCaddy(t)
	dir := t.TempDir()
	port := redistest.FreePort(t)
	confPath := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(confPath, []byte(caddyConf(t, port, extauthzAddr, upstreamAddr, edits...)), 0o600))
	cmd := exec.Command(bin, "run", "--config", confPath, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	return runProxy(t, "caddy", cmd, port)
}

// The same through the shipped Caddyfile, which removed a client's
// X-Real-IP and Forwarded only.
func TestCaddyHandsTheUpstreamNoClientWrittenAddress(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	local, lk := ts.create(t, keystore.Spec{Name: "loopback", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "127.0.0.0/8")})
	up := startEchoUpstream(t)
	caddy := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	headers := []string{"X-Api-Key: " + local}
	for _, h := range clientAddressHeaders {
		headers = append(headers, h+": 10.9.9.9")
	}
	r := caddy.raw(t, caddyRequest("GET", "/api/users", headers...))
	require.Equal(t, 200, r.status, r.body)
	got := up.last(t)
	require.Equal(t, []string{lk.ID}, got.Headers["X-Authz-Key-Id"])
	for _, h := range clientAddressHeaders {
		assert.NotContains(t, got.Headers, h, "the upstream would read the client-written 10.9.9.9 as the client address")
	}
}

// The mirror image through the shipped Caddyfile: it deletes a client's
// X-Forwarded-Uri and X-Forwarded-Method, and X-Original-URI and
// X-Original-Method too (the nginx convention, which extauthz does not
// read in x-forwarded mode).
func TestCaddyClearsTheOtherConventionsTargetHeaders(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	caddy := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	r := caddy.raw(t, caddyRequest("GET", "/api/users", "X-Api-Key: "+reader,
		"X-Original-URI: /admin/users", "X-Original-Method: DELETE"))
	require.Equal(t, 200, r.status, r.body)
	got := up.last(t)
	assert.NotContains(t, got.Headers, "X-Original-Uri", "the upstream reads no target but the one extauthz decided (GET /api/users)")
	assert.NotContains(t, got.Headers, "X-Original-Method", "the upstream reads no method but the one extauthz decided")
}
