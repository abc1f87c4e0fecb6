package authz_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

func TestDecisionTable(t *testing.T) {
	f := authztest.New(t, nil)
	long := "sk_" + strings.Repeat("a", 300)
	// One character of the random key changed: to X, unless it is X
	// already (then the key would be unchanged, and valid: 1 run in 62).
	badSum := f.Good[:10] + map[bool]string{true: "Y", false: "X"}[f.Good[10] == 'X'] + f.Good[11:]
	tests := []struct {
		name    string
		req     authz.Request
		code    authz.Code
		keyID   string
		message string
	}{
		{name: "a valid key with the permission is allowed", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Good}}, keyID: "key_good"},
		{name: "Bearer works", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"authorization": "Bearer " + f.Good}}, keyID: "key_good"},
		{name: "the Bearer scheme is case-insensitive", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"authorization": "bearer " + f.Good}}, keyID: "key_good"},
		{name: "a query key works", req: authz.Request{Path: "/api/users?api_key=" + f.Good}, keyID: "key_good"},
		{name: "a cookie key works", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"cookie": "a=b; api_key=" + f.Good + "; c=d"}}, keyID: "key_good"},
		{name: "admin grants every permission", req: authz.Request{Path: "/api/reports/q1", Headers: authz.HeaderMap{"x-api-key": f.Admin}}, keyID: "key_admin"},
		{name: "a public route needs no key", req: authz.Request{Path: "/healthz"}},
		{name: "a public route ignores a bad key", req: authz.Request{Path: "/healthz", Headers: authz.HeaderMap{"x-api-key": "garbage"}}},

		{name: "step 2: a path escaping the root is a bad request", req: authz.Request{Path: "/../x"}, code: authz.CodeBadRequest},
		{name: "step 2: an encoded slash is a bad request", req: authz.Request{Path: "/api%2Fusers"}, code: authz.CodeBadRequest},
		{name: "step 2: a missing path is a bad request", req: authz.Request{}, code: authz.CodeBadRequest},
		{name: "step 2: a bad method is a bad request", req: authz.Request{Method: "G ET", Path: "/api/users"}, code: authz.CodeBadRequest},
		{name: "step 3: no route is denied", req: authz.Request{Path: "/admin", Headers: authz.HeaderMap{"x-api-key": f.Admin}}, code: authz.CodeNoRoute},
		{name: "step 3: a route with another method is no route", req: authz.Request{Method: "POST", Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Admin}}, code: authz.CodeNoRoute},
		{name: "step 4: no key", req: authz.Request{Path: "/api/users"}, code: authz.CodeMissingKey},
		{name: "step 4: an empty header is not present", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": ""}}, code: authz.CodeMissingKey},
		{name: "step 4: another Authorization scheme is not present", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"authorization": "Basic dXNlcjpwYXNz"}}, code: authz.CodeMissingKey},
		{name: "step 4: a Bearer line after another scheme's is present, and invalid", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"authorization": "Basic dXNlcjpwYXNz,Bearer " + f.Good}}, code: authz.CodeInvalidKey},
		{name: "step 4: an invalid first source does not fall through", req: authz.Request{Path: "/api/users?api_key=" + f.Good, Headers: authz.HeaderMap{"x-api-key": "sk_bad"}}, code: authz.CodeInvalidKey},
		{name: "step 5: a bad checksum is invalid", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": badSum}}, code: authz.CodeInvalidKey},
		{name: "step 5: an over-long key is invalid", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": long}}, code: authz.CodeInvalidKey},
		{name: "step 6: an unknown well-formed key is invalid", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": "legacy-key-unknown-99"}}, code: authz.CodeInvalidKey},
		{name: "step 8: an address outside the allowlist", req: authz.Request{Path: "/api/users", Peer: "192.168.1.1", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeIPNotAllowed},
		{name: "step 8: IPv6 inside the allowlist", req: authz.Request{Path: "/api/users", Peer: "2001:db8::1", Headers: authz.HeaderMap{"x-api-key": f.Good}}, keyID: "key_good"},
		{name: "step 8: an IPv4-mapped IPv6 peer matches the v4 CIDR", req: authz.Request{Path: "/api/users", Peer: "::ffff:10.9.9.9", Headers: authz.HeaderMap{"x-api-key": f.Good}}, keyID: "key_good"},
		{name: "step 8: X-Forwarded-For is not trusted by default", req: authz.Request{Path: "/api/users", Peer: "192.168.1.1", Headers: authz.HeaderMap{"x-api-key": f.Good, "x-forwarded-for": "10.0.0.1"}}, code: authz.CodeIPNotAllowed},
		{name: "step 10: a missing permission is named", req: authz.Request{Path: "/api/reports/x", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodePermissionDenied, message: `missing permission "read:reports"`},
		{name: "attack: dot-dot out of a public path is a bad request", req: authz.Request{Path: "/healthz/../api/users"}, code: authz.CodeBadRequest},
		{name: "attack: encoded dot-dot out of a public path is a bad request", req: authz.Request{Path: "/healthz/%2e%2e/api/reports/x", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeBadRequest},
		{name: "attack: upper case that Express would serve as a rule's path is a bad request", req: authz.Request{Path: "/API/REPORTS/x", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeBadRequest},
		{name: "attack: a trailing slash that changes the route is a bad request", req: authz.Request{Path: "/api/users/", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeBadRequest},
		{name: "attack: a lower-case method is a bad request", req: authz.Request{Method: "get", Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeBadRequest},
		{name: "attack: a semicolon is a bad request", req: authz.Request{Path: "/healthz;x/../api/users", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeBadRequest},
		{name: "attack: HEAD takes the GET route", req: authz.Request{Method: "HEAD", Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Perms}}, keyID: "key_perms"},
		{name: "attack: OPTIONS on a GET-only path is no route", req: authz.Request{Method: "OPTIONS", Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Admin}}, code: authz.CodeNoRoute, message: "no route allows OPTIONS on this path"},
		{name: "attack: an encoded letter, which Express reads as another name, is a bad request", req: authz.Request{Path: "/api/%72eports/x", Headers: authz.HeaderMap{"x-api-key": f.Good}}, code: authz.CodeBadRequest},
		{name: "attack: a key with a NUL is invalid", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": "legacy\x00key-0123456789"}}, code: authz.CodeInvalidKey},
		{name: "attack: a 64 KB header is invalid, not a crash", req: authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": strings.Repeat("k", 64<<10)}}, code: authz.CodeInvalidKey},
		{name: "a legacy-format key works", req: authz.Request{Path: "/api/users", Method: "GET", Headers: authz.HeaderMap{"x-api-key": f.Other}}, code: authz.CodePermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.Decide(tt.req)
			assert.Equal(t, tt.code, d.Code, d.Message)
			if tt.keyID != "" {
				require.NotNil(t, d.Key)
				assert.Equal(t, tt.keyID, d.Key.ID)
			}
			if tt.message != "" {
				assert.Equal(t, tt.message, d.Message)
			}
			assert.NotContains(t, d.Message, f.Good)
		})
	}
}

func TestAdminGrantsEveryRoutePermissionButTheKeysOnes(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) {
		o.Routes = append(o.Routes,
			authz.RouteSpec{Path: "/ops/keys", Permissions: []string{"keys:admin"}},
			authz.RouteSpec{Path: "/ops/keys/read", Permissions: []string{"keys:read"}},
			authz.RouteSpec{Path: "/ops/mixed", Permissions: []string{"read:reports", "keys:write"}},
			authz.RouteSpec{Path: "/ops/keysish", Permissions: []string{"keysmith:read"}},
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
			d := f.Decide(authz.Request{Path: tc.path, Headers: authz.HeaderMap{"x-api-key": f.Admin}})
			if tc.missing == "" {
				assert.Equal(t, authz.Code(""), d.Code)
				return
			}
			assert.Equal(t, authz.CodePermissionDenied, d.Code)
			assert.Contains(t, d.Body(), `missing permission \"`+tc.missing+`\"`)
		})
	}
}

func TestRevokedAndExpiredKeys(t *testing.T) {
	f := authztest.New(t, nil)
	k := f.Keys.Get(f.Hasher.Hash(f.Good))
	req := authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Good}}

	exp := f.Now.Add(time.Hour) // a rotation grace period ending in an hour
	k.ExpiresAt = &exp
	assert.Equal(t, authz.Code(""), f.Decide(req).Code, "inside the grace period")
	f.Now = exp
	assert.Equal(t, authz.CodeExpiredKey, f.Decide(req).Code, "at the end of the grace period")

	revoked := f.Now
	k.RevokedAt = &revoked
	assert.Equal(t, authz.CodeRevokedKey, f.Decide(req).Code, "revocation wins over expiry")
}

func TestMalformedKeysNeverReachTheStore(t *testing.T) {
	f := authztest.New(t, nil)
	wrongSum := f.Good[:len(f.Good)-1] + map[bool]string{true: "1", false: "0"}[strings.HasSuffix(f.Good, "0")]
	body := f.Good[len("sk_"):]
	// A generated key with its prefix mistyped or lost reads as a legacy
	// key by its shape, but its checksum says it is a mistyped one.
	mistyped := []string{"SK_" + body, "sk-" + body, "sk." + body, "sl_" + body, body}
	for _, key := range append([]string{"sk_short", wrongSum, "x", strings.Repeat("z", 5000), "sk_" + strings.Repeat("!", 49)}, mistyped...) {
		d := f.Decide(authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": key}})
		assert.Equal(t, authz.CodeInvalidKey, d.Code)
	}
	assert.Zero(t, f.Keys.Calls.Load())
}

func TestAnUnreachableStoreIsUnavailable(t *testing.T) {
	f := authztest.New(t, nil)
	f.Keys.Down.Store(true)
	d := f.Decide(authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Good}})
	assert.Equal(t, authz.CodeUnavailable, d.Code)
	assert.Equal(t, 503, d.Code.HTTPStatus())
}

func TestClientIPFromTrustedHops(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) { o.XFFHops = 2 })
	tests := []struct {
		name, xff, peer string
		code            authz.Code
	}{
		{"the second from the right is the client behind one balancer", "6.6.6.6, 10.0.0.5, 172.16.0.1", "172.16.0.9", ""},
		{"a spoofed leftmost entry is ignored", "10.0.0.5, 6.6.6.6, 172.16.0.1", "172.16.0.9", authz.CodeIPNotAllowed},
		{"too few entries fall back to the peer", "10.0.0.5", "192.168.0.1", authz.CodeIPNotAllowed},
		{"garbage is no address", "nonsense, 172.16.0.1", "10.0.0.1", authz.CodeIPNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.Decide(authz.Request{Path: "/api/users", Peer: tt.peer, Headers: authz.HeaderMap{"x-api-key": f.Good, "x-forwarded-for": tt.xff}})
			assert.Equal(t, tt.code, d.Code)
		})
	}
}

func TestUnmatchedAuthenticateNeedsOnlyAValidKey(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) { o.Authenticate = true })
	assert.Equal(t, authz.Code(""), f.Decide(authz.Request{Path: "/anything", Headers: authz.HeaderMap{"x-api-key": f.Other}}).Code)
	assert.Equal(t, authz.CodeMissingKey, f.Decide(authz.Request{Path: "/anything"}).Code)
}

func TestEveryPresentCredentialIsNoted(t *testing.T) {
	f := authztest.New(t, nil)
	d := f.Decide(authz.Request{Path: "/api/users?api_key=other", Headers: authz.HeaderMap{"x-api-key": f.Good, "cookie": "api_key=x"}})
	require.True(t, d.Allowed())
	assert.Equal(t, uint64(0b1101), d.Present, "header, query and cookie; not the absent Bearer")
}

func TestRateLimitsApplyPerKeyAndPerRoute(t *testing.T) {
	f := authztest.New(t, nil)
	del := authz.Request{Method: "DELETE", Path: "/api/users/1", Headers: authz.HeaderMap{"x-api-key": f.Perms}}
	d := f.Decide(del)
	require.True(t, d.Allowed(), d.Message)
	require.True(t, d.HasRateLimit)
	assert.Equal(t, "/api/users/{id}", d.RateLimit.Limit.Name, "the route's 1/m has the least remaining")
	d = f.Decide(del)
	assert.Equal(t, authz.CodeRateLimited, d.Code)
	assert.Equal(t, 429, d.Code.HTTPStatus())

	// The key's own 2/m: one left for GETs (the denied DELETE consumed nothing).
	get := authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Perms}}
	assert.True(t, f.Decide(get).Allowed())
	assert.Equal(t, authz.CodeRateLimited, f.Decide(get).Code)
}

func TestResponses(t *testing.T) {
	d := authz.Decision{}
	d.Deny(authz.CodeInvalidKey, "")
	assert.JSONEq(t, `{"error":"invalid API key","code":"invalid_key"}`, d.Body())
	hs := d.ResponseHeaders(nil)
	assert.Contains(t, hs, authz.Header{Key: "x-authz-code", Value: "invalid_key"})
	assert.Contains(t, hs, authz.Header{Key: "content-type", Value: "application/json"})
	assert.Contains(t, hs, authz.Header{Key: "www-authenticate", Value: `Bearer realm="extauthz", error="invalid_token", error_description="invalid_key"`})

	d = authz.Decision{}
	d.Deny(authz.CodeUnavailable, "")
	assert.Contains(t, d.ResponseHeaders(nil), authz.Header{Key: "retry-after", Value: "1"})

	d = authz.Decision{Key: &keystore.Key{ID: "key_1", Name: "evil\r\nx-injected: 1", Permissions: []string{"a", "b"}}}
	id := d.IdentityHeaders(nil)
	assert.Equal(t, []authz.Header{
		{Key: authz.HeaderKeyID, Value: "key_1"},
		{Key: authz.HeaderKeyName, Value: "evilx-injected: 1"},
		{Key: authz.HeaderOwner, Value: "default"},
		{Key: authz.HeaderPermissions, Value: "a,b"},
	}, id)
}

func BenchmarkDecideCachedKey(b *testing.B) {
	f := authztest.New(b, func(o *authz.Options) { o.DefaultRate = ratelimit.Rate{} })
	f.Rebuild(keystore.NewCache(f.Keys.Store(), keystore.CacheOptions{}), nil)
	req := authz.Request{Method: "GET", Path: "/api/users?x=1", Headers: authz.HeaderMap{"x-api-key": f.Admin, "user-agent": "bench"}, Peer: "10.0.0.1", XFFTrustedHops: -1}
	var d authz.Decision
	f.Authz.Decide(context.Background(), &req, &d)
	require.True(b, d.Allowed(), d.Message)
	b.ReportAllocs()
	for b.Loop() {
		d = authz.Decision{}
		f.Authz.Decide(context.Background(), &req, &d)
	}
}

func BenchmarkDecideCachedKeyWithLocalRateLimit(b *testing.B) {
	f := authztest.New(b, func(o *authz.Options) { o.DefaultRate = ratelimit.Rate{N: 1e9, Window: time.Hour} })
	f.Rebuild(keystore.NewCache(f.Keys.Store(), keystore.CacheOptions{}), nil)
	req := authz.Request{Method: "GET", Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Admin}, Peer: "10.0.0.1", XFFTrustedHops: -1}
	b.ReportAllocs()
	for b.Loop() {
		d := authz.Decision{}
		f.Authz.Decide(context.Background(), &req, &d)
	}
}
