package authz

import (
	"context"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// memKeys is a KeyLookup over a map that counts its calls; the real stores
// are exercised end to end in cmd/extauthz.
type memKeys struct {
	keys  map[keystore.Hash]*keystore.Key
	calls atomic.Int64
	down  bool
}

// Cached knows nothing: every lookup goes to the map, as a cache miss would.
func (m *memKeys) Cached(keystore.Hash) (*keystore.Key, keystore.CacheState, error) {
	return nil, keystore.CacheUnknown, nil
}

func (m *memKeys) Lookup(_ context.Context, h keystore.Hash) (*keystore.Key, error) {
	m.calls.Add(1)
	if m.down {
		return nil, keystore.ErrUnavailable
	}
	if k, ok := m.keys[h]; ok {
		return k, nil
	}
	return nil, keystore.ErrNotFound
}

type fixture struct {
	a     *Authorizer
	keys  *memKeys
	now   time.Time
	good  string // read:users, from 10.0.0.0/8 only
	admin string
	other string // legacy-format key, no permissions
	perms string // read:users, delete:users, rate 2/m
}

// testFormat is the fixture's key format: the default prefix, sk.
var testFormat = func() keystore.Format {
	f, err := keystore.NewFormat("sk")
	if err != nil {
		panic(err)
	}
	return f
}()

// testOptions are the fixture's settings: the default configuration's
// sources and failed-attempts budgets, 100/m per key, and four routes.
func testOptions() PolicyOptions {
	return PolicyOptions{
		Routes: []RouteSpec{
			{Path: "/healthz", Public: true},
			{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
			{Path: "/api/users/{id}", Methods: []string{"DELETE"}, Permissions: []string{"delete:users"}, RateLimit: ratelimit.Rate{N: 1, Window: time.Minute}},
			{Path: "/api/reports/**", Permissions: []string{"read:reports"}},
		},
		Sources:       []Source{HeaderSource("x-api-key", ""), HeaderSource("authorization", "Bearer"), QuerySource("api_key"), CookieSource("api_key")},
		Format:        testFormat,
		DefaultRate:   ratelimit.Rate{N: 100, Window: time.Minute},
		FailRate:      ratelimit.Rate{N: 100, Window: time.Minute},
		FailTotalRate: ratelimit.Rate{N: 1000, Window: time.Second},
	}
}

func newFixture(t testing.TB, mutate func(*PolicyOptions)) *fixture {
	t.Helper()
	o := testOptions()
	if mutate != nil {
		mutate(&o)
	}
	p, err := NewPolicy(o)
	require.NoError(t, err)
	f := &fixture{keys: &memKeys{keys: map[keystore.Hash]*keystore.Key{}}, now: time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC)}
	hasher := keystore.NewHasher([]byte("pepper"))
	add := func(k *keystore.Key) string {
		secret, err := p.Format.Generate()
		require.NoError(t, err)
		f.keys.keys[hasher.Hash(secret)] = k
		return secret
	}
	f.good = add(&keystore.Key{ID: "key_good", Name: "good", Owner: "acme", Permissions: []string{"read:users"},
		IPAllowlist: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}})
	f.admin = add(&keystore.Key{ID: "key_admin", Name: "admin", Owner: "default", Permissions: []string{"admin"}})
	f.perms = add(&keystore.Key{ID: "key_perms", Name: "perms", Permissions: []string{"read:users", "delete:users"}, RateLimit: "2/m"})
	f.other = "legacy-key-0123456789"
	f.keys.keys[hasher.Hash(f.other)] = &keystore.Key{ID: "key_legacy", Name: "legacy", Permissions: []string{}}
	limiter := ratelimit.NewLocal(func() time.Time { return f.now }, 1000)
	f.a = NewAuthorizer(p, f.keys, hasher, limiter, func() time.Time { return f.now })
	return f
}

func (f *fixture) decide(req Request) Decision {
	if req.Method == "" {
		req.Method = "GET"
	}
	if req.Headers == nil {
		req.Headers = HeaderMap{}
	}
	if req.Peer == "" {
		req.Peer = "10.1.2.3"
	}
	req.XFFTrustedHops = -1
	var d Decision
	f.a.Decide(context.Background(), &req, &d)
	return d
}

func TestDecisionTable(t *testing.T) {
	f := newFixture(t, nil)
	long := "sk_" + strings.Repeat("a", 300)
	tests := []struct {
		name    string
		req     Request
		code    Code
		keyID   string
		message string
	}{
		{name: "a valid key with the permission is allowed", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": f.good}}, keyID: "key_good"},
		{name: "Bearer works", req: Request{Path: "/api/users", Headers: HeaderMap{"authorization": "Bearer " + f.good}}, keyID: "key_good"},
		{name: "the Bearer scheme is case-insensitive", req: Request{Path: "/api/users", Headers: HeaderMap{"authorization": "bearer " + f.good}}, keyID: "key_good"},
		{name: "a query key works", req: Request{Path: "/api/users?api_key=" + f.good}, keyID: "key_good"},
		{name: "a cookie key works", req: Request{Path: "/api/users", Headers: HeaderMap{"cookie": "a=b; api_key=" + f.good + "; c=d"}}, keyID: "key_good"},
		{name: "admin grants every permission", req: Request{Path: "/api/reports/q1", Headers: HeaderMap{"x-api-key": f.admin}}, keyID: "key_admin"},
		{name: "a public route needs no key", req: Request{Path: "/healthz"}},
		{name: "a public route ignores a bad key", req: Request{Path: "/healthz", Headers: HeaderMap{"x-api-key": "garbage"}}},

		{name: "step 1: a path escaping the root is a bad request", req: Request{Path: "/../x"}, code: CodeBadRequest},
		{name: "step 1: an encoded slash is a bad request", req: Request{Path: "/api%2Fusers"}, code: CodeBadRequest},
		{name: "step 1: a missing path is a bad request", req: Request{}, code: CodeBadRequest},
		{name: "step 1: a bad method is a bad request", req: Request{Method: "G ET", Path: "/api/users"}, code: CodeBadRequest},
		{name: "step 2: no route is denied", req: Request{Path: "/admin", Headers: HeaderMap{"x-api-key": f.admin}}, code: CodeNoRoute},
		{name: "step 2: a route with another method is no route", req: Request{Method: "POST", Path: "/api/users", Headers: HeaderMap{"x-api-key": f.admin}}, code: CodeNoRoute},
		{name: "step 3: no key", req: Request{Path: "/api/users"}, code: CodeMissingKey},
		{name: "step 3: an empty header is not present", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": ""}}, code: CodeMissingKey},
		{name: "step 3: another Authorization scheme is not present", req: Request{Path: "/api/users", Headers: HeaderMap{"authorization": "Basic dXNlcjpwYXNz"}}, code: CodeMissingKey},
		{name: "step 3: an invalid first source does not fall through", req: Request{Path: "/api/users?api_key=" + f.good, Headers: HeaderMap{"x-api-key": "sk_bad"}}, code: CodeInvalidKey},
		{name: "step 4: a bad checksum is invalid", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": f.good[:10] + "X" + f.good[11:]}}, code: CodeInvalidKey},
		{name: "step 4: an over-long key is invalid", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": long}}, code: CodeInvalidKey},
		{name: "step 5: an unknown well-formed key is invalid", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": "legacy-key-unknown-99"}}, code: CodeInvalidKey},
		{name: "step 7: an address outside the allowlist", req: Request{Path: "/api/users", Peer: "192.168.1.1", Headers: HeaderMap{"x-api-key": f.good}}, code: CodeIPNotAllowed},
		{name: "step 7: IPv6 inside the allowlist", req: Request{Path: "/api/users", Peer: "2001:db8::1", Headers: HeaderMap{"x-api-key": f.good}}, keyID: "key_good"},
		{name: "step 7: an IPv4-mapped IPv6 peer matches the v4 CIDR", req: Request{Path: "/api/users", Peer: "::ffff:10.9.9.9", Headers: HeaderMap{"x-api-key": f.good}}, keyID: "key_good"},
		{name: "step 7: X-Forwarded-For is not trusted by default", req: Request{Path: "/api/users", Peer: "192.168.1.1", Headers: HeaderMap{"x-api-key": f.good, "x-forwarded-for": "10.0.0.1"}}, code: CodeIPNotAllowed},
		{name: "step 8: a missing permission is named", req: Request{Path: "/api/reports/x", Headers: HeaderMap{"x-api-key": f.good}}, code: CodePermissionDenied, message: `missing permission "read:reports"`},
		{name: "attack: dot-dot out of a public path is a bad request", req: Request{Path: "/healthz/../api/users"}, code: CodeBadRequest},
		{name: "attack: encoded dot-dot out of a public path is a bad request", req: Request{Path: "/healthz/%2e%2e/api/reports/x", Headers: HeaderMap{"x-api-key": f.good}}, code: CodeBadRequest},
		{name: "attack: upper case reaches no rule (literals are case-sensitive)", req: Request{Path: "/API/REPORTS/x", Headers: HeaderMap{"x-api-key": f.good}}, code: CodeNoRoute},
		{name: "attack: a trailing slash that changes the route is a bad request", req: Request{Path: "/api/users/", Headers: HeaderMap{"x-api-key": f.good}}, code: CodeBadRequest},
		{name: "attack: a lower-case method is a bad request", req: Request{Method: "get", Path: "/api/users", Headers: HeaderMap{"x-api-key": f.good}}, code: CodeBadRequest},
		{name: "attack: a semicolon is a bad request", req: Request{Path: "/healthz;x/../api/users", Headers: HeaderMap{"x-api-key": f.good}}, code: CodeBadRequest},
		{name: "attack: HEAD takes the GET route", req: Request{Method: "HEAD", Path: "/api/users", Headers: HeaderMap{"x-api-key": f.perms}}, keyID: "key_perms"},
		{name: "attack: OPTIONS on a GET-only path is no route", req: Request{Method: "OPTIONS", Path: "/api/users", Headers: HeaderMap{"x-api-key": f.admin}}, code: CodeNoRoute, message: "no route allows OPTIONS on this path"},
		{name: "attack: an encoded letter does not dodge a rule", req: Request{Path: "/api/%72eports/x", Headers: HeaderMap{"x-api-key": f.good}}, code: CodePermissionDenied},
		{name: "attack: a key with a NUL is invalid", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": "legacy\x00key-0123456789"}}, code: CodeInvalidKey},
		{name: "attack: a 64 KB header is invalid, not a crash", req: Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": strings.Repeat("k", 64<<10)}}, code: CodeInvalidKey},
		{name: "a legacy-format key works", req: Request{Path: "/api/users", Method: "GET", Headers: HeaderMap{"x-api-key": f.other}}, code: CodePermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.decide(tt.req)
			assert.Equal(t, tt.code, d.Code, d.Message)
			if tt.keyID != "" {
				require.NotNil(t, d.Key)
				assert.Equal(t, tt.keyID, d.Key.ID)
			}
			if tt.message != "" {
				assert.Equal(t, tt.message, d.Message)
			}
			assert.NotContains(t, d.Message, f.good)
		})
	}
}

func TestAdminGrantsEveryRoutePermissionButTheKeysOnes(t *testing.T) {
	f := newFixture(t, func(o *PolicyOptions) {
		o.Routes = append(o.Routes,
			RouteSpec{Path: "/ops/keys", Permissions: []string{"keys:admin"}},
			RouteSpec{Path: "/ops/keys/read", Permissions: []string{"keys:read"}},
			RouteSpec{Path: "/ops/mixed", Permissions: []string{"read:reports", "keys:write"}},
			RouteSpec{Path: "/ops/keysish", Permissions: []string{"keysmith:read"}},
		)
	})
	for _, tc := range []struct {
		path, missing string
	}{
		{"/ops/keys", "keys:admin"},
		{"/ops/keys/read", "keys:read"},
		{"/ops/mixed", "keys:write"},
		{"/ops/keysish", ""},
		{"/api/reports/q1", ""},
	} {
		name := "admin passes " + tc.path
		if tc.missing != "" {
			name = "admin does not grant " + tc.missing + " on " + tc.path
		}
		t.Run(name, func(t *testing.T) {
			d := f.decide(Request{Path: tc.path, Headers: HeaderMap{"x-api-key": f.admin}})
			if tc.missing == "" {
				assert.Equal(t, Code(""), d.Code)
				return
			}
			assert.Equal(t, CodePermissionDenied, d.Code)
			assert.Contains(t, d.Body(), `missing permission \"`+tc.missing+`\"`)
		})
	}
}

func TestRevokedAndExpiredKeys(t *testing.T) {
	f := newFixture(t, nil)
	k := f.keys.keys[keystore.NewHasher([]byte("pepper")).Hash(f.good)]
	req := Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": f.good}}

	exp := f.now.Add(time.Hour) // a rotation grace period ending in an hour
	k.ExpiresAt = &exp
	assert.Equal(t, Code(""), f.decide(req).Code, "inside the grace period")
	f.now = exp
	assert.Equal(t, CodeExpiredKey, f.decide(req).Code, "at the end of the grace period")

	revoked := f.now
	k.RevokedAt = &revoked
	assert.Equal(t, CodeRevokedKey, f.decide(req).Code, "revocation wins over expiry")
}

func TestMalformedKeysNeverReachTheStore(t *testing.T) {
	f := newFixture(t, nil)
	wrongSum := f.good[:len(f.good)-1] + map[bool]string{true: "1", false: "0"}[strings.HasSuffix(f.good, "0")]
	for _, key := range []string{"sk_short", wrongSum, "x", strings.Repeat("z", 5000), "sk_" + strings.Repeat("!", 49)} {
		d := f.decide(Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": key}})
		assert.Equal(t, CodeInvalidKey, d.Code)
	}
	assert.Zero(t, f.keys.calls.Load())
}

func TestAnUnreachableStoreIsUnavailable(t *testing.T) {
	f := newFixture(t, nil)
	f.keys.down = true
	d := f.decide(Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": f.good}})
	assert.Equal(t, CodeUnavailable, d.Code)
	assert.Equal(t, 503, d.Code.HTTPStatus())
}

func TestClientIPFromTrustedHops(t *testing.T) {
	f := newFixture(t, func(o *PolicyOptions) { o.XFFHops = 2 })
	tests := []struct {
		name, xff, peer string
		code            Code
	}{
		{"the second from the right is the client behind one balancer", "6.6.6.6, 10.0.0.5, 172.16.0.1", "172.16.0.9", ""},
		{"a spoofed leftmost entry is ignored", "10.0.0.5, 6.6.6.6, 172.16.0.1", "172.16.0.9", CodeIPNotAllowed},
		{"too few entries fall back to the peer", "10.0.0.5", "192.168.0.1", CodeIPNotAllowed},
		{"garbage is no address", "nonsense, 172.16.0.1", "10.0.0.1", CodeIPNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.decide(Request{Path: "/api/users", Peer: tt.peer, Headers: HeaderMap{"x-api-key": f.good, "x-forwarded-for": tt.xff}})
			assert.Equal(t, tt.code, d.Code)
		})
	}
}

func TestUnmatchedAuthenticateNeedsOnlyAValidKey(t *testing.T) {
	f := newFixture(t, func(o *PolicyOptions) { o.Authenticate = true })
	assert.Equal(t, Code(""), f.decide(Request{Path: "/anything", Headers: HeaderMap{"x-api-key": f.other}}).Code)
	assert.Equal(t, CodeMissingKey, f.decide(Request{Path: "/anything"}).Code)
}

func TestEveryPresentCredentialIsNoted(t *testing.T) {
	f := newFixture(t, nil)
	d := f.decide(Request{Path: "/api/users?api_key=other", Headers: HeaderMap{"x-api-key": f.good, "cookie": "api_key=x"}})
	require.True(t, d.Allowed())
	assert.Equal(t, uint64(0b1101), d.Present, "header, query and cookie; not the absent Bearer")
}

func TestRateLimitsApplyPerKeyAndPerRoute(t *testing.T) {
	f := newFixture(t, nil)
	del := Request{Method: "DELETE", Path: "/api/users/1", Headers: HeaderMap{"x-api-key": f.perms}}
	d := f.decide(del)
	require.True(t, d.Allowed(), d.Message)
	require.True(t, d.HasRateLimit)
	assert.Equal(t, "/api/users/{id}", d.RateLimit.Limit.Name, "the route's 1/m has the least remaining")
	d = f.decide(del)
	assert.Equal(t, CodeRateLimited, d.Code)
	assert.Equal(t, 429, d.Code.HTTPStatus())

	// The key's own 2/m: one left for GETs (the denied DELETE consumed nothing).
	get := Request{Path: "/api/users", Headers: HeaderMap{"x-api-key": f.perms}}
	assert.True(t, f.decide(get).Allowed())
	assert.Equal(t, CodeRateLimited, f.decide(get).Code)
}

func TestResponses(t *testing.T) {
	d := Decision{}
	d.deny(CodeInvalidKey, "")
	assert.JSONEq(t, `{"error":"invalid API key","code":"invalid_key"}`, d.Body())
	hs := d.ResponseHeaders(nil)
	assert.Contains(t, hs, Header{Key: "x-authz-code", Value: "invalid_key"})
	assert.Contains(t, hs, Header{Key: "content-type", Value: "application/json"})
	assert.Contains(t, hs, Header{Key: "www-authenticate", Value: `Bearer realm="extauthz", error="invalid_token", error_description="invalid_key"`})

	d = Decision{}
	d.deny(CodeUnavailable, "")
	assert.Contains(t, d.ResponseHeaders(nil), Header{Key: "retry-after", Value: "1"})

	d = Decision{Key: &keystore.Key{ID: "key_1", Name: "evil\r\nx-injected: 1", Permissions: []string{"a", "b"}}}
	id := d.IdentityHeaders(nil)
	assert.Equal(t, []Header{
		{Key: HeaderKeyID, Value: "key_1"},
		{Key: HeaderKeyName, Value: "evilx-injected: 1"},
		{Key: HeaderOwner, Value: "default"},
		{Key: HeaderPermissions, Value: "a,b"},
	}, id)
}

func BenchmarkDecideCachedKey(b *testing.B) {
	f := newFixture(b, func(o *PolicyOptions) { o.DefaultRate = ratelimit.Rate{} })
	cache := keystore.NewCache(storeOver(f.keys), keystore.CacheOptions{})
	f.a.keys = cache
	req := Request{Method: "GET", Path: "/api/users?x=1", Headers: HeaderMap{"x-api-key": f.admin, "user-agent": "bench"}, Peer: "10.0.0.1", XFFTrustedHops: -1}
	var d Decision
	f.a.Decide(context.Background(), &req, &d)
	require.True(b, d.Allowed(), d.Message)
	b.ReportAllocs()
	for b.Loop() {
		d = Decision{}
		f.a.Decide(context.Background(), &req, &d)
	}
}

func BenchmarkDecideCachedKeyWithLocalRateLimit(b *testing.B) {
	f := newFixture(b, func(o *PolicyOptions) { o.DefaultRate = ratelimit.Rate{N: 1e9, Window: time.Hour} })
	f.a.keys = keystore.NewCache(storeOver(f.keys), keystore.CacheOptions{})
	req := Request{Method: "GET", Path: "/api/users", Headers: HeaderMap{"x-api-key": f.admin}, Peer: "10.0.0.1", XFFTrustedHops: -1}
	b.ReportAllocs()
	for b.Loop() {
		d := Decision{}
		f.a.Decide(context.Background(), &req, &d)
	}
}

// storeOver adapts memKeys to the keystore.Store the cache wants.
type lookupStore struct {
	keystore.Store
	m *memKeys
}

func storeOver(m *memKeys) keystore.Store { return lookupStore{m: m} }

func (s lookupStore) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	return s.m.Lookup(ctx, h)
}

// BenchmarkCheckHandler is the whole gRPC handler for a cached key: the
// CheckRequest read, the decision with the default rate limit (local), and
// the CheckResponse built (no network).
func BenchmarkCheckHandler(b *testing.B) {
	b.Run("no limit", func(b *testing.B) { benchmarkCheckHandler(b, ratelimit.Rate{}) })
	b.Run("local limit", func(b *testing.B) { benchmarkCheckHandler(b, ratelimit.Rate{N: 1e9, Window: time.Hour}) })
}

func benchmarkCheckHandler(b *testing.B, rate ratelimit.Rate) {
	f := newFixture(b, func(o *PolicyOptions) { o.DefaultRate = rate })
	f.a.keys = keystore.NewCache(storeOver(f.keys), keystore.CacheOptions{})
	s := &CheckServer{Authz: f.a}
	in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1"}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/api/users?page=2", Host: "api.example.com",
			Headers: map[string]string{"x-api-key": f.good, "user-agent": "bench", "x-request-id": "r1", "accept": "*/*"},
		}},
	}}
	f.now = time.Now()
	f.a.now = time.Now
	resp, _ := s.Check(context.Background(), in)
	require.NotNil(b, resp.GetOkResponse(), resp.String())
	b.ReportAllocs()
	for b.Loop() {
		if resp, _ := s.Check(context.Background(), in); resp.GetOkResponse() == nil {
			b.Fatal(resp.String())
		}
	}
}
