package forwardauth

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// httpFixture serves the fixture's decision over HTTP in one mode.
func httpFixture(t *testing.T, original string, hops int) (*authztest.Fixture, *httptest.Server) {
	t.Helper()
	f := authztest.New(t, nil)
	return f, serveHTTP(t, f, original, hops)
}

// serveHTTP serves f's decision over HTTP in one mode.
func serveHTTP(t *testing.T, f *authztest.Fixture, original string, hops int) *httptest.Server {
	t.Helper()
	s := NewServer(f.Authz, Mode{Prefix: "/authz", Original: original, XFFHops: hops}, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	srv := httptest.NewServer(s.Handler(mux))
	t.Cleanup(srv.Close)
	return srv
}

func do(t *testing.T, srv *httptest.Server, method, target string, headers map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+target, nil)
	require.NoError(t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestHTTPModePath(t *testing.T) {
	f, srv := httpFixture(t, "path", 1)
	// The fixture's good key is allowed from 10/8 only: XFF's last hop decides.
	xff := map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "6.6.6.6, 10.0.0.7"}

	resp, body := do(t, srv, "GET", "/authz/api/users?page=2", xff)
	require.Equal(t, 200, resp.StatusCode, body)
	assert.Empty(t, body)
	assert.Equal(t, "key_good", resp.Header.Get("X-Authz-Key-Id"))
	assert.Equal(t, "acme", resp.Header.Get("X-Authz-Owner"))
	assert.Equal(t, "read:users", resp.Header.Get("X-Authz-Permissions"))
	assert.Equal(t, "x-api-key", resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"))
	assert.Equal(t, `"key";q=100;w=60`, resp.Header.Get("RateLimit-Policy"))

	tests := []struct {
		name, method, target string
		headers              map[string]string
		status               int
		code                 string
	}{
		{"the method is the request's own", "DELETE", "/authz/api/users", xff, 403, "no_route"},
		{"nothing after the prefix is the root", "GET", "/authz", xff, 403, "no_route"},
		{"a query right after the prefix is the root's", "GET", "/authz?api_key=x", nil, 403, "no_route"},
		{"no key", "GET", "/authz/api/users", nil, 401, "missing_key"},
		{"an untrusted first XFF hop is ignored", "GET", "/authz/api/users", map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7, 6.6.6.6"}, 403, "ip_not_allowed"},
		{"dot-dot is answered, not redirected", "GET", "/authz/healthz/../api/reports/x", xff, 400, "bad_request"},
		{"an encoded slash is a bad request", "GET", "/authz/api%2Fusers", xff, 400, "bad_request"},
		{"X-Forwarded-Uri is ignored in path mode", "GET", "/authz/api/reports/x", map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7", "X-Forwarded-Uri": "/api/users"}, 403, "permission_denied"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, srv, tt.method, tt.target, tt.headers)
			assert.Equal(t, tt.status, resp.StatusCode)
			var got struct{ Error, Code string }
			require.NoError(t, json.Unmarshal([]byte(body), &got), body)
			assert.Equal(t, tt.code, got.Code)
			assert.Equal(t, tt.code, resp.Header.Get("X-Authz-Code"))
			assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
		})
	}

	t.Run("other paths are not decisions", func(t *testing.T) {
		for _, p := range []string{"/authzfoo", "/healthz", "/metrics", "/"} {
			resp, _ := do(t, srv, "GET", p, nil)
			assert.Equal(t, http.StatusTeapot, resp.StatusCode, p)
		}
	})
}

// Every decision answer is the request's own: an allow names one key's
// identity and spends its rate limit, a denial names one key's fault. A cache
// in front of extauthz (nginx proxy_cache on the auth location, keyed by the
// original URI) that stored one would hand it to the next request for that
// URI, whatever key it carries.
func TestHTTPModeAnswersAreNeverStored(t *testing.T) {
	f, srv := httpFixture(t, "x-original", 1)
	for _, tc := range []struct {
		name    string
		headers map[string]string
		status  int
	}{
		{"an allow", map[string]string{"X-Api-Key": f.Good, "X-Original-Uri": "/api/users"}, 200},
		{"a public route", map[string]string{"X-Original-Uri": "/healthz"}, 200},
		{"a denial", map[string]string{"X-Original-Uri": "/api/users"}, 401},
		{"a malformed request", map[string]string{"X-Api-Key": f.Good}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{"X-Forwarded-For": "10.0.0.7", "X-Original-Method": "GET"}
			for k, v := range tc.headers {
				h[k] = v
			}
			resp, body := do(t, srv, "GET", "/authz", h)
			require.Equal(t, tc.status, resp.StatusCode, body)
			assert.Equal(t, "no-store", resp.Header.Get("Cache-Control"))
		})
	}
}

func TestHTTPModeXOriginal(t *testing.T) {
	f, srv := httpFixture(t, "x-original", 1)
	base := func(extra map[string]string) map[string]string {
		h := map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7"}
		for k, v := range extra {
			h[k] = v
		}
		return h
	}
	resp, body := do(t, srv, "GET", "/authz", base(map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "/api/users?x=1"}))
	assert.Equal(t, 200, resp.StatusCode, body)

	resp, _ = do(t, srv, "GET", "/authz", base(map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "/api/reports/1", "X-Forwarded-Uri": "/api/users"}))
	assert.Equal(t, 403, resp.StatusCode, "X-Forwarded-Uri cannot override X-Original-URI")

	resp, _ = do(t, srv, "GET", "/authz", base(map[string]string{"X-Original-Method": "GET"}))
	assert.Equal(t, 400, resp.StatusCode, "a missing X-Original-URI")
	assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))

	// The query key is read from the original URI (and refused there, 400:
	// nginx cannot remove it), never from the auth request's own target.
	resp, body = do(t, srv, "GET", "/authz", base(map[string]string{"X-Original-Uri": "/api/users?api_key=" + f.Admin, "X-Original-Method": "GET", "X-Api-Key": ""}))
	assert.Equal(t, 400, resp.StatusCode, "the query key comes from the original URI")
	assert.Contains(t, body, "send it in a header")
	resp, _ = do(t, srv, "GET", "/authz?api_key="+f.Admin, base(map[string]string{"X-Original-Uri": "/api/users", "X-Original-Method": "GET", "X-Api-Key": ""}))
	assert.Equal(t, 401, resp.StatusCode, "not from the auth request's own target")
}

// nginx, the proxy of original: x-original, removes a client's header only
// where its config names it, so an x-authz- header it was not told about
// (X-Authz-Admin, or the x-authz-meta- header of a forward_meta entry added
// to a policy after the config was written) would reach the upstream as the
// client wrote it. Such a request is 400, whatever the name's case or its
// "_" spelling, on key and public routes alike. In the other modes the
// proxy removes them (Envoy by x-envoy-auth-headers-to-remove, Traefik and
// Caddy by their shipped configs), and they are not refused.
func TestHTTPModeXOriginalRefusesAClientsIdentityHeaders(t *testing.T) {
	f, srv := httpFixture(t, "x-original", 1)
	for _, uri := range []string{"/api/users", "/healthz"} {
		for _, name := range []string{"X-Authz-Admin", "X-Authz-Owner", "x-authz-meta-tenant", "X-AUTHZ-KEY-ID", "X-Authz-Code", "X_Authz_Owner", "x-authz_owner"} {
			t.Run(uri+" "+name, func(t *testing.T) {
				resp, body := do(t, srv, "GET", "/authz", map[string]string{
					"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7",
					"X-Original-Method": "GET", "X-Original-Uri": uri, name: "spoofed",
				})
				assert.Equal(t, 400, resp.StatusCode, body)
				assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))
				assert.Empty(t, resp.Header.Get("X-Authz-Key-Id"), "no identity for the proxy to pass on")
			})
		}
	}
	t.Run("a name that only begins alike is not one", func(t *testing.T) {
		resp, body := do(t, srv, "GET", "/authz", map[string]string{
			"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7",
			"X-Original-Method": "GET", "X-Original-Uri": "/api/users", "X-Authzed": "1",
		})
		assert.Equal(t, 200, resp.StatusCode, body)
	})
	t.Run("the other modes name them for removal instead", func(t *testing.T) {
		srv := serveHTTP(t, f, "x-forwarded", 1)
		resp, body := do(t, srv, "GET", "/authz", map[string]string{
			"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7",
			"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/users", "X-Authz-Admin": "spoofed",
		})
		require.Equal(t, 200, resp.StatusCode, body)
		assert.Contains(t, resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "x-authz-admin")
	})
}

func TestHTTPModeXForwarded(t *testing.T) {
	f, srv := httpFixture(t, "x-forwarded", 1)
	h := map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7", "X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/users"}
	resp, body := do(t, srv, "POST", "/authz", h)
	assert.Equal(t, 200, resp.StatusCode, body)

	h["X-Original-Uri"] = "/api/reports/x"
	h["X-Forwarded-Uri"] = "/api/reports/x"
	delete(h, "X-Original-Uri")
	resp, _ = do(t, srv, "GET", "/authz", h)
	assert.Equal(t, 403, resp.StatusCode)

	delete(h, "X-Forwarded-Method")
	resp, _ = do(t, srv, "GET", "/authz", h)
	assert.Equal(t, 400, resp.StatusCode)
}

func TestHTTPModeJoinsRepeatedHeaders(t *testing.T) {
	f, srv := httpFixture(t, "path", 1)
	req, _ := http.NewRequest("GET", srv.URL+"/authz/api/users", nil)
	req.Header.Set("X-Api-Key", f.Good)
	// The client's own line first, the proxy's appended line last.
	req.Header.Add("X-Forwarded-For", "10.0.0.7")
	req.Header.Add("X-Forwarded-For", "6.6.6.6")
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 403, resp.StatusCode, "the last line is the trusted hop")

	req, _ = http.NewRequest("GET", srv.URL+"/authz/api/users", nil)
	req.Header.Add("X-Api-Key", f.Good)
	req.Header.Add("X-Api-Key", f.Admin)
	req.Header.Set("X-Forwarded-For", "10.0.0.7")
	resp, err = srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 401, resp.StatusCode, "two keys in one header are one invalid key")
	assert.False(t, strings.Contains(resp.Header.Get("X-Authz-Key-Id"), "key_"))
}

// In HTTP mode extauthz's own peer is the proxy, never the client: a key
// allowlisted to the proxy's network (here the loopback the test's proxy
// calls from) must not pass for every client of a proxy that sent no
// X-Forwarded-For, or too few entries. With too few, the client is the last
// entry, the peer the proxy saw and appended, as over gRPC it is the peer
// Envoy reports; with none, the client is unknown and matches no allowlist.
func TestHTTPModeNeverTakesTheProxyForTheClient(t *testing.T) {
	f := authztest.New(t, nil)
	local := f.AddKey(t, &keystore.Key{ID: "key_local", Name: "local", Permissions: []string{"read:users"},
		IPAllowlist: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}})
	for _, tc := range []struct {
		name string
		hops int
		key  string
		xff  []string // lines; nil: no header
		code int
	}{
		{"no X-Forwarded-For is no address, not the proxy's", 1, local, nil, 403},
		{"an empty X-Forwarded-For is no address", 1, local, []string{""}, 403},
		{"an empty last entry is no address", 1, local, []string{"127.0.0.1, "}, 403},
		{"too few entries behind a balancer are not the proxy's address", 2, local, nil, 403},
		{"too few entries are the entry the proxy appended", 2, f.Good, []string{"10.0.0.7"}, 200},
		{"too few entries on several lines are the last line's", 3, f.Good, []string{"6.6.6.6", "10.0.0.7"}, 200},
		{"too few entries never reach past the appended one", 3, f.Good, []string{"10.0.0.7, 6.6.6.6"}, 403},
		{"the trusted entry still decides", 1, local, []string{"6.6.6.6, 127.0.0.1"}, 200},
		{"a key without an allowlist needs no address", 1, f.Admin, nil, 200},
		{"with no hop trusted, the peer is the address", 0, local, []string{"6.6.6.6"}, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := serveHTTP(t, f, "path", tc.hops)
			req, err := http.NewRequest("GET", srv.URL+"/authz/api/users", nil)
			require.NoError(t, err)
			req.Header.Set("X-Api-Key", tc.key)
			for _, line := range tc.xff {
				req.Header.Add("X-Forwarded-For", line)
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, tc.code, resp.StatusCode)
			if tc.code == 403 {
				assert.Equal(t, "ip_not_allowed", resp.Header.Get("X-Authz-Code"))
			}
		})
	}
}

// TestAFloodNamingAnAddressNeverTurnsAwayItsValidKeyOverHTTP: in HTTP mode
// the client address is read from X-Forwarded-For, so a flood can name the
// victim's address; the victim's key still passes.
func TestAFloodNamingAnAddressNeverTurnsAwayItsValidKeyOverHTTP(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) {
		o.Routes = []authz.RouteSpec{{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}}}
		o.DefaultRate = ratelimit.Rate{}
	})
	f.UseCache(keystore.CacheOptions{TTL: 30 * time.Second})
	srv := serveHTTP(t, f, "path", 1)
	victim := map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "10.1.2.3"}
	resp, _ := do(t, srv, "GET", "/authz/api/users", victim)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	calls := f.Keys.Calls.Load()
	statuses := map[int]int{}
	for _, flood := range authztest.Floods(t, f.Policies.Format) {
		for i := range 300 {
			resp, _ := do(t, srv, "GET", "/authz/api/users", map[string]string{"X-Api-Key": flood.Next(i), "X-Forwarded-For": "6.6.6.6, 10.1.2.3"})
			statuses[resp.StatusCode]++
			if i%5 == 0 {
				resp, body := do(t, srv, "GET", "/authz/api/users", victim)
				require.Equal(t, http.StatusOK, resp.StatusCode, "%s, step %d: %s", flood.Name, i, body)
			}
		}
	}
	assert.Positive(t, statuses[http.StatusTooManyRequests], "the named address's budget ran out: %v", statuses)
	assert.LessOrEqual(t, f.Keys.Calls.Load()-calls, int64(100), "at most the default budget of lookups (100/m)")
}

// servePolicies serves a decision with two named policies besides the
// fixture's default one: billing (forwarding plan) and orders (shadow).
func servePolicies(t *testing.T, original string) (*authztest.Fixture, *httptest.Server) {
	t.Helper()
	f := authztest.New(t, func(o *authz.Options) {
		o.Policies = []authz.PolicySpec{
			{Name: "billing", Match: authz.Match{Hosts: []string{"billing.example.com"}, Context: map[string]string{"policy": "billing"}},
				Routes: []authz.RouteSpec{{Path: "/invoices/**", Permissions: []string{"read:invoices"}}}, Sources: authztest.Sources(), ForwardMeta: []string{"plan"}},
			{Name: "orders", Routes: []authz.RouteSpec{{Path: "/orders/**", Permissions: []string{"read:orders"}}}, Sources: authztest.Sources(), Mode: authz.ModeShadow},
		}
	})
	return f, serveHTTP(t, f, original, 1)
}

// In HTTP mode the auth path names the policy, in every convention; the
// host and every header the client can write are ignored, and a path that
// names none is refused rather than defaulted: a client behind a proxy
// with the bare prefix could otherwise write the name into its own path.
func TestHTTPModeSelectsThePolicyByTheAuthPathOnly(t *testing.T) {
	f, srv := servePolicies(t, "path")
	inv := f.AddKey(t, &keystore.Key{ID: "key_inv", Name: "inv", Permissions: []string{"read:invoices"}, Meta: map[string]string{"plan": "gold"}})
	key := map[string]string{"X-Api-Key": inv, "X-Forwarded-For": "10.0.0.7"}
	withHost := func(host string) map[string]string {
		h := map[string]string{"Host": host, "X-Forwarded-Host": host}
		for k, v := range key {
			h[k] = v
		}
		return h
	}
	tests := []struct {
		name, target string
		headers      map[string]string
		status       int
		code         string
	}{
		{"the auth path names billing", "/authz/_policy/billing/invoices/1", key, 200, ""},
		{"a query after the name", "/authz/_policy/billing?x=1", key, 403, "no_route"},
		{"the default policy by name", "/authz/_policy/default/api/users", key, 403, "permission_denied"},
		{"no name: no policy, even on billing's host", "/authz/invoices/1", withHost("billing.example.com"), 403, "no_policy"},
		{"a client path that writes the marker after the proxy's is a path", "/authz/_policy/default/_policy/billing/invoices/1", key, 403, "no_route"},
		{"an empty name", "/authz/_policy//invoices/1", key, 403, "no_policy"},
		{"an unknown name", "/authz/_policy/payroll/invoices/1", key, 403, "no_policy"},
		{"an encoded name is not decoded", "/authz/_policy/bill%69ng/invoices/1", key, 403, "no_policy"},
		{"a shadow policy allows what it would deny", "/authz/_policy/orders/orders/1", key, 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest("GET", srv.URL+tt.target, nil)
			require.NoError(t, err)
			for k, v := range tt.headers {
				req.Header.Set(k, v)
			}
			if h := tt.headers["Host"]; h != "" {
				req.Host = h
			}
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, tt.status, resp.StatusCode)
			assert.Equal(t, tt.code, resp.Header.Get("X-Authz-Code"))
		})
	}

	resp, _ := do(t, srv, "GET", "/authz/_policy/billing/invoices/1", map[string]string{"X-Api-Key": inv, "X-Forwarded-For": "10.0.0.7", "X-Authz-Meta-Plan": "enterprise"})
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "gold", resp.Header.Get("X-Authz-Meta-Plan"), "the forwarded metadata, overwriting the client's")
	assert.Equal(t, "key_inv", resp.Header.Get("X-Authz-Key-Id"))
	assert.Equal(t, "x-api-key", resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "the client's own x-authz-meta-plan is overwritten, not removed")

	// Shadow: allowed, no identity (the decision itself denied), the blank
	// identity and metadata headers overwrite what a client sent, and the
	// spoofed ones are named for removal.
	resp, _ = do(t, srv, "GET", "/authz/_policy/orders/orders/1", map[string]string{"X-Api-Key": inv, "X-Forwarded-For": "10.0.0.7", "X-Authz-Key-Id": "spoofed"})
	require.Equal(t, 200, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("X-Authz-Key-Id"))
	assert.Empty(t, resp.Header.Get("X-Authz-Code"), "no trace of the would-be denial for the client")
	assert.Empty(t, resp.Header.Get("RateLimit"))
	assert.Equal(t, "x-api-key, x-authz-key-id", resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"))
}

// With x-original (nginx) and x-forwarded (Traefik, Caddy) the auth path
// is the proxy's alone and names the policy; the original URI comes from
// the convention's header.
func TestHTTPModeConventionsNameThePolicyInTheAuthPath(t *testing.T) {
	for _, tt := range []struct {
		original string
		headers  map[string]string
	}{
		{"x-original", map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "/invoices/1"}},
		{"x-forwarded", map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/invoices/1"}},
	} {
		t.Run(tt.original, func(t *testing.T) {
			f, srv := servePolicies(t, tt.original)
			inv := f.AddKey(t, &keystore.Key{ID: "key_inv", Name: "inv", Permissions: []string{"read:invoices"}})
			h := map[string]string{"X-Api-Key": inv, "X-Forwarded-For": "10.0.0.7"}
			for k, v := range tt.headers {
				h[k] = v
			}
			resp, _ := do(t, srv, "GET", "/authz/_policy/billing", h)
			assert.Equal(t, 200, resp.StatusCode)
			resp, _ = do(t, srv, "GET", "/authz", h)
			assert.Equal(t, 403, resp.StatusCode)
			assert.Equal(t, "no_policy", resp.Header.Get("X-Authz-Code"))
		})
	}
}

// Without named policies, /_policy/... is a path like any other.
func TestWithoutPoliciesTheMarkerIsAPath(t *testing.T) {
	f, srv := httpFixture(t, "path", 1)
	resp, _ := do(t, srv, "GET", "/authz/_policy/default/api/users", map[string]string{"X-Api-Key": f.Admin})
	assert.Equal(t, 403, resp.StatusCode)
	assert.Equal(t, "no_route", resp.Header.Get("X-Authz-Code"))
}

// panickyKeys panics on a lookup, as a bug in the store might.
type panickyKeys struct{}

func (panickyKeys) Cached(keystore.Hash) (*keystore.Key, keystore.CacheState, error) {
	return nil, keystore.CacheUnknown, nil
}

func (panickyKeys) Lookup(context.Context, keystore.Hash) (*keystore.Key, error) {
	panic("boom")
}

// observed records the decisions it is told of.
type observed struct {
	mu        sync.Mutex
	decisions []authz.Decision
}

func (o *observed) Observe(_ *authz.Request, d *authz.Decision, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.decisions = append(o.decisions, *d)
}

// A check that panics is still a decision the Observer (the audit) hears
// of, over a real HTTP connection: a 503 naming the client address and
// the path the decision had read; the panic still reaches the server's
// recovery.
func TestAPanicInAnHTTPCheckIsObserved(t *testing.T) {
	var obs observed
	checkThatPanics(t, func(s *Server) { s.Observer = &obs })
	obs.mu.Lock()
	defer obs.mu.Unlock()
	require.Len(t, obs.decisions, 1, "the panicked check is observed")
	d := obs.decisions[0]
	assert.Equal(t, authz.CodeUnavailable, d.Code)
	assert.Equal(t, "10.0.0.7", d.ClientIP.String())
	assert.Equal(t, "/api/users", d.Path)
}

// checkThatPanics sends, over a real HTTP connection, a check whose key
// lookup panics to a server set up by tune, and asserts it is answered
// 503 and that the panic reaches the server's recovery.
func checkThatPanics(t *testing.T, tune func(*Server)) {
	t.Helper()
	f := authztest.New(t, nil)
	f.Rebuild(panickyKeys{}, nil)
	s := NewServer(f.Authz, Mode{Prefix: "/authz", Original: "x-forwarded", XFFHops: 1}, nil)
	tune(s)
	var recovered any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if recovered = recover(); recovered != nil {
				WriteError(w, http.StatusServiceUnavailable, authz.CodeUnavailable, "internal error")
			}
		}()
		s.Handler(nil).ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	resp, _ := do(t, srv, "GET", "/authz", map[string]string{"X-Api-Key": f.Good, "X-Forwarded-For": "10.0.0.7",
		"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/users"})
	assert.Equal(t, 503, resp.StatusCode)
	assert.Equal(t, "boom", recovered, "the panic goes on to the server's recovery")
}

// spans records the decisions the spans it starts end with.
type spans struct {
	mu    sync.Mutex
	ended []authz.Decision
}

func (s *spans) Start(ctx context.Context, _ *authz.Request) (context.Context, func(*authz.Decision)) {
	return ctx, func(d *authz.Decision) { s.mu.Lock(); s.ended = append(s.ended, *d); s.mu.Unlock() }
}

// The span of an HTTP check that panics ends, as the 503 it is answered
// with, with no Observer set too.
func TestAPanickedHTTPChecksSpanEnds(t *testing.T) {
	var sp spans
	checkThatPanics(t, func(s *Server) { s.Tracer = &sp })
	sp.mu.Lock()
	defer sp.mu.Unlock()
	require.Len(t, sp.ended, 1, "the span ends")
	assert.Equal(t, authz.CodeUnavailable, sp.ended[0].Code)
	assert.Equal(t, "/api/users", sp.ended[0].Path)
}

// A proxy that appends its original-request header to one the client sent
// (HAProxy's add-header, Apache's RequestHeader add) puts the client's line
// first, where a reader of the first line takes the client's path, method
// or host as the proxy's. Which line is the proxy's cannot be told from the
// request, so a header of the mode's convention sent more than once is 400,
// never a choice.
func TestHTTPModeRefusesARepeatedOriginalHeader(t *testing.T) {
	tests := []struct {
		original string
		name     string
		lines    [2]string // the client's line, then the proxy's
		set      map[string]string
	}{
		{"x-original", "X-Original-Uri", [2]string{"/api/users", "/api/reports/1"}, map[string]string{"X-Original-Method": "GET"}},
		{"x-original", "X-Original-Method", [2]string{"GET", "DELETE"}, map[string]string{"X-Original-Uri": "/api/users"}},
		{"x-original", "X-Forwarded-Host", [2]string{"trusted.example", "api.example"}, map[string]string{"X-Original-Method": "GET", "X-Original-Uri": "/api/users"}},
		{"x-forwarded", "X-Forwarded-Uri", [2]string{"/api/users", "/api/reports/1"}, map[string]string{"X-Forwarded-Method": "GET"}},
		{"x-forwarded", "X-Forwarded-Method", [2]string{"GET", "DELETE"}, map[string]string{"X-Forwarded-Uri": "/api/users"}},
		{"x-forwarded", "X-Forwarded-Host", [2]string{"trusted.example", "api.example"}, map[string]string{"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/api/users"}},
	}
	for _, tt := range tests {
		t.Run(tt.original+": two "+tt.name+" lines", func(t *testing.T) {
			f, srv := httpFixture(t, tt.original, 1)
			send := func(lines ...string) *http.Response {
				req, err := http.NewRequest("GET", srv.URL+"/authz", nil)
				require.NoError(t, err)
				req.Header.Set("X-Api-Key", f.Good)
				req.Header.Set("X-Forwarded-For", "10.0.0.7")
				for k, v := range tt.set {
					req.Header.Set(k, v)
				}
				for _, l := range lines {
					req.Header.Add(tt.name, l)
				}
				resp, err := srv.Client().Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				return resp
			}
			require.Equal(t, 200, send(tt.lines[0]).StatusCode, "the client's line alone is allowed, so a 200 below would be its decision")
			resp := send(tt.lines[0], tt.lines[1])
			assert.Equal(t, 400, resp.StatusCode)
			assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))
		})
	}
}

// Two Authorization lines, the first of another scheme and the second a
// Bearer key, are one header for HTTP mode as for Envoy: present, so the
// 200 names it in x-envoy-auth-headers-to-remove (Envoy's http_service
// then strips both lines), and an invalid key when it is the one read.
func TestHTTPModeStripsABearerKeyOnALaterAuthorizationLine(t *testing.T) {
	f, srv := httpFixture(t, "path", 1)
	send := func(target string, lines ...[2]string) *http.Response {
		req, _ := http.NewRequest("GET", srv.URL+target, nil)
		req.Header.Set("X-Forwarded-For", "10.0.0.7")
		for _, l := range lines {
			req.Header.Add(l[0], l[1])
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}
	basic := [2]string{"Authorization", "Basic Zm9vOmJhcg=="}
	bearer := [2]string{"Authorization", "Bearer " + f.Good}

	resp := send("/authz/healthz", basic, bearer)
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "authorization", resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "a public route")

	resp = send("/authz/healthz", [2]string{"Authorization", "Bearer"}, bearer)
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "authorization", resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "after an empty Bearer")

	resp = send("/authz/api/users", [2]string{"X-Api-Key", f.Good}, basic, [2]string{"Authorization", "Bearer " + f.Admin})
	require.Equal(t, 200, resp.StatusCode)
	assert.Equal(t, "key_good", resp.Header.Get("X-Authz-Key-Id"))
	assert.Equal(t, "x-api-key, authorization", resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "beside another source's key")

	resp = send("/authz/api/users", basic, bearer)
	assert.Equal(t, 401, resp.StatusCode)
	assert.Equal(t, "invalid_key", resp.Header.Get("X-Authz-Code"))

	resp = send("/authz/healthz", basic, [2]string{"Authorization", "Basic YmFyOmJheg=="})
	require.Equal(t, 200, resp.StatusCode)
	assert.Empty(t, resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), "another scheme on every line is the upstream's")
}
