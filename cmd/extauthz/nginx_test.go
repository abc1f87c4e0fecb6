package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// The proxy configs under deploy/proxies, relative to this package.
const proxiesDir = "../../deploy/proxies"

// nginxRoutes is the route table of the nginx test: a GET and a DELETE on
// one path with different permissions (so a spoofed method would show), a
// rate-limited route and a public one.
const nginxRoutes = `
http_mode: {original: x-original, xff_trusted_hops: 1}
rate_limit: {default: none}
routes:
  - {path: /healthz, public: true}
  - {path: /api/users, methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users]}
  - {path: /api/limited, methods: [GET], permissions: [read:users], rate_limit: 2/m}
`

// TestNginxAuthRequestWithTheShippedConfig runs deploy/proxies/nginx.conf in
// a real nginx between a client and an upstream, with extauthz answering
// auth_request in HTTP mode (original: x-original).
func TestNginxAuthRequestWithTheShippedConfig(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+nginxRoutes)
	reader, rk := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
	local, lk := ts.create(t, keystore.Spec{Name: "loopback", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "127.0.0.0/8")})
	remote, _ := ts.create(t, keystore.Spec{Name: "remote", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "10.9.9.9/32")})
	limited, _ := ts.create(t, keystore.Spec{Name: "limited", Permissions: []string{"read:users"}})
	secrets := []string{reader, local, remote, limited}

	up := startEchoUpstream(t)
	ngx := startNginx(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	t.Run("an allowed request reaches the upstream with the identity and without the key", func(t *testing.T) {
		r := ngx.do(t, "GET", "/api/users?page=2", map[string]string{"X-Api-Key": reader})
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.Equal(t, "/api/users?page=2", got.URI)
		assert.Equal(t, []string{rk.ID}, got.Headers["X-Authz-Key-Id"])
		assert.Equal(t, []string{"reader"}, got.Headers["X-Authz-Key-Name"])
		assert.Equal(t, []string{"acme"}, got.Headers["X-Authz-Owner"])
		assert.Equal(t, []string{"read:users"}, got.Headers["X-Authz-Permissions"])
		assert.NotContains(t, got.Headers, "X-Authz-Code", "a listed x-authz-* name is cleared")
		assert.NotContains(t, got.Headers, "X-Api-Key", "the credential header never reaches the upstream")
		assert.NotContains(t, got.Headers, "Authorization")
		assert.Equal(t, []string{"127.0.0.1"}, got.Headers["X-Forwarded-For"])
	})

	t.Run("a Bearer key is removed too", func(t *testing.T) {
		r := ngx.do(t, "GET", "/api/users/7", map[string]string{"Authorization": "Bearer " + reader})
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.NotContains(t, got.Headers, "Authorization")
		assert.Equal(t, []string{rk.ID}, got.Headers["X-Authz-Key-Id"])
	})

	t.Run("a public route passes without identity headers", func(t *testing.T) {
		r := ngx.do(t, "GET", "/healthz", map[string]string{"X-Api-Key": reader})
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.NotContains(t, got.Headers, "X-Authz-Key-Id")
		assert.NotContains(t, got.Headers, "X-Api-Key")
	})

	t.Run("the upstream reads the host nginx served, not one the client names", func(t *testing.T) {
		// With a policy per server block, the host picked the policy; an
		// upstream that routes by a forwarded host must see that host.
		r := ngx.do(t, "GET", "/api/users", map[string]string{
			"X-Api-Key":         reader,
			"X-Forwarded-Host":  "admin.example",
			"Forwarded":         "for=10.9.9.9;host=admin.example;proto=https",
			"X-Forwarded-Proto": "https",
			"X-Real-IP":         "10.9.9.9",
			"X-Original-URI":    "/admin/users",
			"X-Original-Method": "DELETE",
		})
		require.Equal(t, 200, r.status, r.body)
		got := up.last(t)
		assert.NotContains(t, got.Headers, "X-Original-Uri", "the upstream reads no target but the one extauthz decided")
		assert.NotContains(t, got.Headers, "X-Original-Method")
		assert.Equal(t, []string{"127.0.0.1"}, got.Headers["X-Forwarded-Host"])
		assert.Equal(t, []string{"http"}, got.Headers["X-Forwarded-Proto"])
		assert.NotContains(t, got.Headers, "Forwarded")
		assert.Equal(t, []string{"127.0.0.1"}, got.Headers["X-Real-Ip"], "an upstream reading X-Real-IP gets the address extauthz checked")
	})

	t.Run("the client IP is the peer nginx sees, not a client-written X-Forwarded-For", func(t *testing.T) {
		r := ngx.do(t, "GET", "/api/users", map[string]string{"X-Api-Key": local, "X-Forwarded-For": "10.9.9.9"})
		require.Equal(t, 200, r.status, r.body)
		assert.Equal(t, []string{lk.ID}, up.last(t).Headers["X-Authz-Key-Id"])
	})

	denials := []struct {
		name    string
		method  string
		path    string
		headers map[string]string
		status  int
		code    string
	}{
		{"no key", "GET", "/api/users", nil, 401, "missing_key"},
		{"a key that is not one", "GET", "/api/users", map[string]string{"X-Api-Key": "sk_nope"}, 401, "invalid_key"},
		{"a missing permission", "DELETE", "/api/users/7", map[string]string{"X-Api-Key": reader}, 403, "permission_denied"},
		{"no route", "GET", "/admin", map[string]string{"X-Api-Key": reader}, 403, "no_route"},
		{"an encoded slash", "GET", "/api%2Fusers", map[string]string{"X-Api-Key": reader}, 400, "bad_request"},
		{"a client-sent X-Original-URI does not choose the path", "GET", "/api/users",
			map[string]string{"X-Original-URI": "/healthz"}, 401, "missing_key"},
		{"a client-sent X-Original-Method does not choose the method", "DELETE", "/api/users/7",
			map[string]string{"X-Api-Key": reader, "X-Original-Method": "GET"}, 403, "permission_denied"},
		{"a client-sent X-Forwarded-For does not satisfy an IP allowlist", "GET", "/api/users",
			map[string]string{"X-Api-Key": remote, "X-Forwarded-For": "10.9.9.9"}, 403, "ip_not_allowed"},
		{"the other convention's headers are ignored", "GET", "/api/users",
			map[string]string{"X-Forwarded-Uri": "/healthz", "X-Forwarded-Method": "GET"}, 401, "missing_key"},
		// nginx removes a client's header only where the config names it:
		// one it does not (X-Authz-Admin, the x-authz-meta- header of a
		// forward_meta entry added later) would reach the upstream.
		{"a client's x-authz-* header the config does not name", "GET", "/api/users",
			map[string]string{"X-Api-Key": reader, "X-Authz-Admin": "true"}, 400, "bad_request"},
		{"a client's x-authz-meta-* header", "GET", "/api/users",
			map[string]string{"X-Api-Key": reader, "X-Authz-Meta-Tenant": "someone-else"}, 400, "bad_request"},
		{"a client's own identity header, which the config would overwrite", "GET", "/api/users",
			map[string]string{"X-Api-Key": reader, "X-Authz-Key-Id": "key_spoofed", "X-Authz-Owner": "someone-else"}, 400, "bad_request"},
		{"a client's x-authz-* header on a public route", "GET", "/healthz",
			map[string]string{"X-Authz-Key-Id": "key_spoofed"}, 400, "bad_request"},
		{"a client's x-authz-* header in capitals", "GET", "/healthz",
			map[string]string{"X-AUTHZ-ADMIN": "true"}, 400, "bad_request"},
	}
	for _, tt := range denials {
		t.Run("denied: "+tt.name, func(t *testing.T) {
			before := up.calls.Load()
			r := ngx.do(t, tt.method, tt.path, tt.headers)
			assertDenialJSON(t, r, tt.status, tt.code)
			assert.Equal(t, before, up.calls.Load(), "the upstream is never called for a denial")
			if tt.status == 401 {
				require.Len(t, r.header.Values("Www-Authenticate"), 1, "WWW-Authenticate passes once")
				assert.Contains(t, r.header.Get("Www-Authenticate"), `Bearer realm="extauthz"`)
				if tt.code == "missing_key" {
					assert.NotContains(t, r.header.Get("Www-Authenticate"), "error=")
				} else {
					assert.Contains(t, r.header.Get("Www-Authenticate"), `error="invalid_token"`)
				}
			}
		})
	}

	t.Run("a rate-limited request gets 429, Retry-After and the JSON body", func(t *testing.T) {
		before := up.calls.Load()
		for i := range 2 {
			r := ngx.do(t, "GET", "/api/limited", map[string]string{"X-Api-Key": limited})
			require.Equal(t, 200, r.status, "request %d: %s", i+1, r.body)
			assert.Contains(t, r.header.Get("RateLimit"), `"/api/limited";r=`, "an allow carries the rate-limit headers")
			assert.Equal(t, "2", r.header.Get("X-RateLimit-Limit"))
		}
		assertRateLimitedJSON(t, ngx.do(t, "GET", "/api/limited", map[string]string{"X-Api-Key": limited}))
		assert.Equal(t, before+2, up.calls.Load(), "only the two allowed requests reached the upstream")
	})

	t.Run("a key in the query or a cookie is refused: nginx cannot remove it", func(t *testing.T) {
		before := up.calls.Load()
		assertDenialJSON(t, ngx.do(t, "GET", "/api/users?api_key="+reader, nil), 400, "bad_request")
		assertDenialJSON(t, ngx.do(t, "GET", "/api/users", map[string]string{"Cookie": "theme=dark; api_key=" + reader}), 400, "bad_request")
		assert.Equal(t, before, up.calls.Load(), "the upstream saw neither")
	})

	t.Run("extauthz down is 503 unavailable with Retry-After", func(t *testing.T) {
		ts.stop()
		before := up.calls.Load()
		r := ngx.do(t, "GET", "/api/users", map[string]string{"X-Api-Key": reader})
		assertDenialJSON(t, r, 503, "unavailable")
		assert.Equal(t, "1", r.header.Get("Retry-After"))
		assert.Equal(t, before, up.calls.Load())
	})

	require.Eventually(t, func() bool { return strings.Contains(ngx.stdout.String(), `"GET /api/users" 503`) },
		5*time.Second, 10*time.Millisecond, "the access log is written (so the checks below can fail)")
	access := ngx.stdout.String()
	assert.Contains(t, access, "key="+rk.ID)
	assert.Contains(t, access, "code=rate_limited")
	// 400 and 429 reach auth_request as 403, so nginx does not log an error
	// (with the request line) for each denial; only the outage is logged.
	// The log reaches the buffer through a pipe, a moment after the response.
	require.Eventually(t, func() bool { return strings.Contains(ngx.stderr.String(), "Connection refused") },
		5*time.Second, 10*time.Millisecond, "the outage is in the error log")
	errors := ngx.stderr.String()
	assert.NotContains(t, errors, "auth request unexpected status")
	for _, s := range secrets {
		assert.NotContains(t, access, s, "no key in the access log")
		assert.NotContains(t, errors, s, "no key in the error log")
	}
}

// TestNginxUpstreamGetsTheTargetExtauthzDecided: /_authz sends extauthz the
// client's target ($request_uri), and nginx, told only the upstream's
// address, sends the upstream the rewritten one once anything rewrote it. A
// versioning rewrite added to the shipped location then let a key allowed
// /api/v1/admin/x by a route for /api/** be served /api/admin/x, an admin
// route. The shipped config names $request_uri in proxy_pass too.
func TestNginxUpstreamGetsTheTargetExtauthzDecided(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+`
http_mode: {original: x-original, xff_trusted_hops: 1}
rate_limit: {default: none}
routes:
  - {path: "/api/admin/**", permissions: [admin]}
  - {path: "/api/**", permissions: [read:users]}
`)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	ngx := startNginx(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr, func(conf string) string {
		const at = "auth_request /_authz;"
		require.Equal(t, 1, strings.Count(conf, at))
		return strings.Replace(conf, at, at+"\n            rewrite ^/api/v1/(.*)$ /api/$1 break;", 1)
	})

	r := ngx.do(t, "GET", "/api/admin/x", map[string]string{"X-Api-Key": reader})
	assertDenialJSON(t, r, 403, "permission_denied")
	for _, target := range []string{"/api/v1/admin/x?a=1", "/api/users/%7Bx%7D", "/api/v1/users"} {
		r = ngx.do(t, "GET", target, map[string]string{"X-Api-Key": reader})
		require.Equal(t, 200, r.status, "%s: %s", target, r.body)
		assert.Equal(t, target, up.last(t).URI, "the upstream serves the target extauthz decided")
	}
}

// TestNginxCacheStoresNoDecision: guides to auth_request often add
// proxy_cache to the auth location to spare the auth service, and a cache
// set for the whole server is inherited by it. The cache's default key is
// the subrequest's $request_uri, the client's target, so a stored allow for
// one key was served to the next request for that path with any key or
// none, the first key's identity included. extauthz marks every answer
// no-store, which nginx honours over proxy_cache_valid; and /_authz turns
// caching off, which holds where an inherited proxy_ignore_headers would
// make nginx ignore no-store.
func TestNginxCacheStoresNoDecision(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+nginxRoutes)
	reader, rk := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	for _, tc := range []struct {
		name     string
		old, new string
	}{
		{"caching turned on in /_authz", "proxy_cache off;",
			"proxy_cache authz;\n            proxy_cache_valid 200 401 403 10s;"},
		{"a server-wide cache that ignores Cache-Control", "ignore_invalid_headers on;",
			"ignore_invalid_headers on;\n        proxy_cache authz;\n        proxy_cache_valid 200 401 403 10s;\n        proxy_ignore_headers Cache-Control Expires;"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := filepath.Join(t.TempDir(), "cache")
			ngx := startNginx(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr, func(conf string) string {
				require.Equal(t, 1, strings.Count(conf, tc.old), "deploy/proxies/nginx.conf must contain %q exactly once", tc.old)
				conf = strings.Replace(conf, "upstream extauthz {", "proxy_cache_path "+cache+" keys_zone=authz:1m;\n    upstream extauthz {", 1)
				return strings.Replace(conf, tc.old, tc.new, 1)
			})

			r := ngx.do(t, "GET", "/api/users/7", map[string]string{"X-Api-Key": reader})
			require.Equal(t, 200, r.status, r.body)
			assert.Equal(t, []string{rk.ID}, up.last(t).Headers["X-Authz-Key-Id"])

			before := up.calls.Load()
			r = ngx.do(t, "GET", "/api/users/7", nil)
			assertDenialJSON(t, r, 401, "missing_key")
			r = ngx.do(t, "GET", "/api/users/7", map[string]string{"X-Api-Key": "sk_nope"})
			assertDenialJSON(t, r, 401, "invalid_key")
			assert.Equal(t, before, up.calls.Load(), "no stored allow let a request without the key through")

			r = ngx.do(t, "GET", "/api/users/7", map[string]string{"X-Api-Key": reader})
			require.Equal(t, 200, r.status, "no stored denial refuses the key: %s", r.body)
		})
	}
}

// assertRateLimitedJSON checks the 429 a proxy passed on for a key past its
// 2/m route limit: the JSON denial, Retry-After within the window, and the
// rate-limit headers saying nothing is left.
func assertRateLimitedJSON(t *testing.T, r proxyResponse) {
	t.Helper()
	assertDenialJSON(t, r, 429, "rate_limited")
	retry, err := strconv.Atoi(r.header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", r.header.Get("Retry-After"))
	assert.GreaterOrEqual(t, retry, 1)
	assert.LessOrEqual(t, retry, 63, "the 2/m window, within the limiter's few percent")
	assert.Equal(t, "0", r.header.Get("X-RateLimit-Remaining"))
	assert.Contains(t, r.header.Get("RateLimit"), ";r=0;")
	assert.NotEmpty(t, r.header.Get("RateLimit-Policy"))
}

func assertDenialJSON(t *testing.T, r proxyResponse, status int, code string) {
	t.Helper()
	require.Equal(t, status, r.status, "body %s", r.body)
	assert.Equal(t, code, r.header.Get("X-Authz-Code"))
	assert.Equal(t, "application/json", r.header.Get("Content-Type"))
	var body map[string]string
	require.NoError(t, json.Unmarshal([]byte(r.body), &body), "body %q", r.body)
	assert.Equal(t, code, body["code"])
	assert.NotEmpty(t, body["error"])
	assert.Len(t, body, 2, "the body is exactly {error, code}")
}

// echoUpstream is the application behind the proxy (nginx, Caddy): it
// answers every request with the URI, headers and body it received, and
// counts the calls.
type echoUpstream struct {
	addr  string
	calls atomic.Int64
	seen  atomic.Pointer[echoed]
}

type echoed struct {
	URI     string      `json:"uri"`
	Headers http.Header `json:"headers"`
	Body    string      `json:"body,omitempty"`
}

func startEchoUpstream(t *testing.T) *echoUpstream {
	t.Helper()
	u := &echoUpstream{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		e := &echoed{URI: r.RequestURI, Headers: r.Header.Clone(), Body: string(body)}
		u.seen.Store(e)
		u.calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(e)
	}))
	t.Cleanup(srv.Close)
	u.addr = srv.Listener.Addr().String()
	return u
}

// last returns what the upstream saw in its latest request.
func (u *echoUpstream) last(t *testing.T) *echoed {
	t.Helper()
	e := u.seen.Load()
	require.NotNil(t, e, "the upstream was never called")
	return e
}

// proxyProc is one proxy (nginx, Caddy) started by a test.
type proxyProc struct {
	url    string
	client *http.Client
	stdout *syncbuf.Buffer // nginx's access log
	stderr *syncbuf.Buffer // nginx's error log; all of Caddy's log
}

type proxyResponse struct {
	status int
	body   string
	header http.Header
}

// nginxConf returns deploy/proxies/nginx.conf with the demo's hosts and port
// replaced by the test's, and nginx's temporary files kept under dir. Each
// replaced line must occur exactly once, so the test fails rather than
// silently running a different config when the file changes.
func nginxConf(t *testing.T, dir string, port int, extauthzAddr, upstreamAddr string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(proxiesDir, "nginx.conf"))
	require.NoError(t, err)
	conf := string(b)
	var temps strings.Builder
	temps.WriteString("http {\n")
	for _, name := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&temps, "    %s_temp_path %s;\n", name, filepath.Join(dir, name))
	}
	for _, r := range []struct{ old, new string }{
		{"listen 8080;", fmt.Sprintf("listen 127.0.0.1:%d;", port)},
		{"server extauthz:9002;", "server " + extauthzAddr + ";"},
		{"server upstream:8000;", "server " + upstreamAddr + ";"},
		{"http {\n", temps.String()},
	} {
		require.Equal(t, 1, strings.Count(conf, r.old), "deploy/proxies/nginx.conf must contain %q exactly once", r.old)
		conf = strings.Replace(conf, r.old, r.new, 1)
	}
	return conf
}

// startNginx runs nginx in the foreground on a free port with the shipped
// config and stops it when the test ends. It fails the test when nginx is
// not installed: CI installs it (.ci/run), so a missing binary is a broken
// machine, not a reason to skip.
func startNginx(t *testing.T, extauthzAddr, upstreamAddr string, edits ...func(conf string) string) *proxyProc {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		t.Fatalf("nginx not found on PATH (install nginx-light, as .ci/run does): %v", err)
	}
	dir := t.TempDir()
	port := redistest.FreePort(t)
	confPath := filepath.Join(dir, "nginx.conf")
	conf := nginxConf(t, dir, port, extauthzAddr, upstreamAddr)
	for _, edit := range edits {
		conf = edit(conf)
	}
	require.NoError(t, os.WriteFile(confPath, []byte(conf), 0o600))

	// One process (master_process off): the parent-death signal then takes
	// all of nginx with it if the test binary dies, leaving no orphaned
	// workers on the port.
	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", "stderr",
		"-g", fmt.Sprintf("daemon off; master_process off; pid %s;", filepath.Join(dir, "nginx.pid")))
	return runProxy(t, "nginx", cmd, port)
}

// runProxy starts cmd, a proxy (nginx, Caddy) that listens on port of
// 127.0.0.1, and waits until it does. The proxy dies with the test binary
// (parent-death signal) and is stopped when the test ends; its output is
// kept, and shown when the test failed.
func runProxy(t *testing.T, name string, cmd *exec.Cmd, port int) *proxyProc {
	t.Helper()
	p := &proxyProc{
		url:    fmt.Sprintf("http://127.0.0.1:%d", port),
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}},
		stdout: &syncbuf.Buffer{},
		stderr: &syncbuf.Buffer{},
	}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s's error log:\n%s", name, p.stderr.String())
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 100*time.Millisecond)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-exited:
			t.Fatalf("%s exited at start:\n%s", name, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %d: %v\n%s", name, port, err, p.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do sends one request through the proxy. path is sent as written,
// escapes included.
func (n *proxyProc) do(t *testing.T, method, path string, headers map[string]string) proxyResponse {
	t.Helper()
	req, err := http.NewRequest(method, n.url+path, nil)
	require.NoError(t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := n.client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return proxyResponse{status: resp.StatusCode, body: string(body), header: resp.Header}
}

// dashSpellings lists name with each subset of its "-" written "_".
func dashSpellings(name string) []string {
	out := []string{name}
	for i := range len(name) {
		if name[i] != '-' {
			continue
		}
		for _, s := range out {
			out = append(out, s[:i]+"_"+s[i+1:])
		}
	}
	return out
}

// TestProxyConfigsSayWhatTheyNeed checks the proxy config that no test here
// can run (Traefik) for the settings the README explains, and Caddy's for
// the one setting caddy_test.go cannot exercise, and that every extauthz
// snippet in the README is a valid config.
func TestProxyConfigsSayWhatTheyNeed(t *testing.T) {
	identity := identityHeaders

	t.Run("Traefik: ForwardAuth to HTTP mode, identity copied, credentials stripped after it", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(proxiesDir, "traefik.yml"))
		require.NoError(t, err)
		var f struct {
			HTTP struct {
				Routers map[string]struct {
					EntryPoints []string `json:"entryPoints"`
					Rule        string   `json:"rule"`
					Service     string   `json:"service"`
					Middlewares []string `json:"middlewares"`
				} `json:"routers"`
				Middlewares map[string]struct {
					ForwardAuth *struct {
						Address                  string   `json:"address"`
						TrustForwardHeader       *bool    `json:"trustForwardHeader"`
						AuthRequestHeaders       []string `json:"authRequestHeaders"`
						AuthResponseHeaders      []string `json:"authResponseHeaders"`
						AuthResponseHeadersRegex string   `json:"authResponseHeadersRegex"`
					} `json:"forwardAuth"`
					Headers *struct {
						CustomRequestHeaders map[string]string `json:"customRequestHeaders"`
					} `json:"headers"`
				} `json:"middlewares"`
				Services map[string]struct {
					LoadBalancer struct {
						Servers []struct {
							URL string `json:"url"`
						} `json:"servers"`
					} `json:"loadBalancer"`
				} `json:"services"`
			} `json:"http"`
		}
		require.NoError(t, yaml.UnmarshalStrict(b, &f))

		fa := f.HTTP.Middlewares["extauthz"].ForwardAuth
		require.NotNil(t, fa, "middleware extauthz is a forwardAuth")
		assert.Equal(t, "http://extauthz:9002/authz", fa.Address)
		require.NotNil(t, fa.TrustForwardHeader, "trustForwardHeader is spelled out")
		assert.False(t, *fa.TrustForwardHeader, "Traefik must set X-Forwarded-Method/Uri itself")
		assert.Equal(t, identity, fa.AuthResponseHeaders)
		assert.Subset(t, fa.AuthRequestHeaders, []string{"X-Api-Key", "Authorization"}, "extauthz sees the key sources")
		// extauthz answers 400 to these; Traefik passes them upstream, so
		// extauthz must see them, in every "_" spelling and any case.
		sent := map[string]bool{}
		for _, h := range fa.AuthRequestHeaders {
			sent[textproto.CanonicalMIMEHeaderKey(h)] = true
		}
		for _, h := range []string{"x-api-key", "x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"} {
			n := 0
			for name := range sent {
				if strings.EqualFold(strings.ReplaceAll(name, "_", "-"), h) {
					n++
				}
			}
			assert.Equal(t, 1<<strings.Count(h, "-"), n, "authRequestHeaders lacks some \"_\" spelling of %s: extauthz would not see it", h)
		}
		re, err := regexp.Compile(fa.AuthResponseHeadersRegex)
		require.NoError(t, err)
		// Go's canonical forms of x_authz_owner and x-authz_owner, as Traefik holds them.
		for _, h := range append([]string{"X-Authz-Admin", "X-Authz-Code", "X_authz_owner", "X-Authz_owner", "X-AUTHZ-OWNER"}, identity...) {
			assert.True(t, re.MatchString(h), "%s is stripped from the client's request", h)
		}
		assert.False(t, re.MatchString("X-Api-Key"))
		// Every header with a "_" goes too: CGI, PHP, WSGI and Rack read
		// X_Real_Ip as the X-Real-Ip Traefik sets, X_Forwarded_Host as the
		// host it routed.
		for _, h := range []string{"X_real_ip", "X-Real_ip", "X_forwarded_host", "X_forwarded-For", "Foo_bar"} {
			assert.True(t, re.MatchString(h), "%s is stripped from the client's request", h)
		}
		for _, h := range []string{"X-Real-Ip", "X-Request-Id", "Content-Type", "User-Agent", "Xauthz-Owner"} {
			assert.False(t, re.MatchString(h), "%s reaches the upstream", h)
		}

		strip := f.HTTP.Middlewares["strip-credentials"].Headers
		require.NotNil(t, strip, "middleware strip-credentials is a headers middleware")
		assert.Equal(t, map[string]string{"X-Api-Key": "", "Authorization": "", "Forwarded": "",
			"X-Client-Ip": "", "True-Client-Ip": "", "Cf-Connecting-Ip": "", "Fastly-Client-Ip": "", "X-Cluster-Client-Ip": "",
			"X-Original-Uri": "", "X-Original-Method": ""}, strip.CustomRequestHeaders,
			"an empty value removes the header: the credentials, and a client's Forwarded, address and nginx-convention target headers, which Traefik passes on")

		require.NotEmpty(t, f.HTTP.Routers)
		for name, r := range f.HTTP.Routers {
			assert.Equal(t, []string{"extauthz", "strip-credentials"}, r.Middlewares,
				"router %s: authorise first (extauthz needs the key), then strip", name)
			assert.Contains(t, f.HTTP.Services, r.Service, "router %s", name)
		}
	})

	t.Run("Caddy: forward_auth gives up dialling extauthz after a second", func(t *testing.T) {
		// caddy_test.go runs the Caddyfile in a real Caddy and shows what each
		// of its lines does; a dial that hangs (rather than being refused)
		// cannot be made on loopback, so this one is read: the dial timeout
		// is forward_auth's, not the upstream's.
		b, err := os.ReadFile(filepath.Join(proxiesDir, "Caddyfile"))
		require.NoError(t, err)
		var lines []string
		for l := range strings.SplitSeq(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				lines = append(lines, strings.Join(strings.Fields(l), " "))
			}
		}
		at := func(line string) int {
			t.Helper()
			i := slices.Index(lines, line)
			require.GreaterOrEqual(t, i, 0, "the Caddyfile lacks the line %q", line)
			return i
		}
		auth, transport, dial := at("forward_auth extauthz:9002 {"), at("transport http {"), at("dial_timeout 1s")
		assert.True(t, auth < transport && transport < dial && dial < at("reverse_proxy upstream:8000"),
			"dial_timeout 1s is in forward_auth's transport block")
		assert.Equal(t, 1, strings.Count(string(b), "dial_timeout"))
	})

	t.Run("Envoy http_service: the doc points at a file that exists", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(proxiesDir, "envoy-http-service.md"))
		require.NoError(t, err)
		assert.Contains(t, string(b), "envoy/envoy-http.yaml")
		_, err = os.Stat("../../envoy/envoy-http.yaml")
		require.NoError(t, err)
	})

	t.Run("every extauthz snippet in the README is a valid config", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(proxiesDir, "README.md"))
		require.NoError(t, err)
		blocks := regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(string(b), -1)
		require.GreaterOrEqual(t, len(blocks), 4, "one extauthz snippet per proxy")
		originals := map[string]bool{}
		for i, m := range blocks {
			path := filepath.Join(t.TempDir(), fmt.Sprintf("snippet%d.yaml", i))
			require.NoError(t, os.WriteFile(path, []byte(m[1]), 0o600))
			cfg, err := config.Load(path)
			require.NoError(t, err, "README snippet %d:\n%s", i+1, m[1])
			originals[cfg.HTTPMode.Original] = true
		}
		assert.Equal(t, map[string]bool{"path": true, "x-original": true, "x-forwarded": true}, originals)
	})
}

// TestNginxMapsEveryDenialCode: nginx's auth_request keeps only 401 and 403
// of extauthz's answer, and the shipped config turns the x-authz-code header
// back into the status and body of the denial. A code missing from its maps
// becomes "unavailable, retry shortly" (503 with Retry-After), which tells a
// client refused for good to try again: every code must be there, with the
// status extauthz itself answers it with.
func TestNginxMapsEveryDenialCode(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(proxiesDir, "nginx.conf"))
	require.NoError(t, err)
	maps := map[string]map[string]string{}
	var cur map[string]string
	for line := range strings.SplitSeq(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) == 4 && f[0] == "map" && f[3] == "{":
			cur = map[string]string{}
			maps[f[2]] = cur
		case len(f) == 1 && f[0] == "}":
			cur = nil
		case cur != nil && len(f) >= 2:
			cur[f[0]] = strings.TrimSuffix(strings.Join(f[1:], " "), ";")
		}
	}
	for _, name := range []string{"$authz_deny_code", "$authz_deny_status", "$authz_deny_message"} {
		require.Contains(t, maps, name, "nginx.conf has no map to %s", name)
	}
	for _, c := range authz.Codes() {
		if c == authz.CodeUnavailable {
			continue // the maps' default
		}
		code := string(c)
		assert.Equal(t, code, maps["$authz_deny_code"][code], "%s is not echoed", code)
		assert.Equal(t, strconv.Itoa(c.HTTPStatus()), maps["$authz_deny_status"][code], "the status of %s", code)
		// The code's standard message; bad_request's adds the one 400 a
		// client can fix alone, a key sent in the query or a cookie.
		var d authz.Decision
		d.Deny(c, "")
		want := strconv.Quote(d.Message)
		if c == authz.CodeBadRequest {
			want = strconv.Quote(d.Message + ", or an API key in the query or a cookie (send it in a header)")
		}
		assert.Equal(t, want, maps["$authz_deny_message"][code], "the message of %s", code)
	}
	assert.Equal(t, "503", maps["$authz_deny_status"]["default"])
}

// clientAddressHeaders are the headers, other than X-Forwarded-For,
// X-Real-IP and Forwarded (which the shipped configs already set or clear),
// that common client-address readers take the client from: Node's
// request-ip reads X-Client-IP before anything else, then X-Forwarded-For,
// CF-Connecting-IP, Fastly-Client-IP, True-Client-IP, X-Real-IP,
// X-Cluster-Client-IP; Spring/Tomcat RemoteIpValve and many WAF rules read
// True-Client-IP / X-Client-IP too.
var clientAddressHeaders = []string{"X-Client-Ip", "True-Client-Ip", "Cf-Connecting-Ip", "Fastly-Client-Ip", "X-Cluster-Client-Ip"}

// The shipped nginx.conf sets X-Forwarded-For and X-Real-IP to
// $remote_addr, so that an upstream reads the address extauthz checked; it
// clears every other header upstreams read the client address from, which
// it passed on as the client wrote them.
func TestNginxHandsTheUpstreamNoClientWrittenAddress(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+nginxRoutes)
	local, lk := ts.create(t, keystore.Spec{Name: "loopback", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "127.0.0.0/8")})
	up := startEchoUpstream(t)
	ngx := startNginx(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	hdrs := map[string]string{"X-Api-Key": local}
	for _, h := range clientAddressHeaders {
		hdrs[h] = "10.9.9.9"
	}
	r := ngx.do(t, "GET", "/api/users", hdrs)
	require.Equal(t, 200, r.status, r.body)
	got := up.last(t)
	require.Equal(t, []string{lk.ID}, got.Headers["X-Authz-Key-Id"], "extauthz checked the allowlist against 127.0.0.1")
	for _, h := range clientAddressHeaders {
		assert.NotContains(t, got.Headers, h, "the upstream would read the client-written 10.9.9.9 as the client address")
	}
}

// nginx.conf clears a client's X-Original-URI and X-Original-Method before
// the upstream, and the other convention's pair too: X-Forwarded-Uri and
// X-Forwarded-Method (Caddy's and Traefik's forward auth, which extauthz
// does not read in x-original mode) would hand an upstream written for
// those proxies a target extauthz never decided.
func TestNginxClearsTheOtherConventionsTargetHeaders(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+nginxRoutes)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	ngx := startNginx(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	r := ngx.do(t, "GET", "/api/users", map[string]string{
		"X-Api-Key":          reader,
		"X-Forwarded-Uri":    "/api/users/7",
		"X-Forwarded-Method": "DELETE",
	})
	require.Equal(t, 200, r.status, r.body)
	got := up.last(t)
	assert.NotContains(t, got.Headers, "X-Forwarded-Uri", "the upstream reads no target but the one extauthz decided (GET /api/users)")
	assert.NotContains(t, got.Headers, "X-Forwarded-Method", "the upstream reads no method but the one extauthz decided")
}
