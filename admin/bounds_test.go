package admin

import (
	"context"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// changesOf returns the audit changes recorded for id.
func (e *env) changesOf(id string) []change {
	var out []change
	for _, c := range e.rec.Changes() {
		if c.keyID == id {
			out = append(out, c)
		}
	}
	return out
}

// stored returns the record of id as the store has it.
func (e *env) stored(id string) *keystore.Key {
	e.t.Helper()
	k, err := e.store.Get(context.Background(), id)
	require.NoError(e.t, err)
	return k
}

func TestAPatchNeverGivesARevokedOrRotatedKeyANewLife(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		future := e.clock.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
		states := []struct {
			name string
			make func() (secret, id string)
		}{
			{"a revoked key", func() (string, string) {
				secret, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}})
				require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, e.root, nil).status)
				return secret, id
			}},
			{"a key rotated with a grace of 0s", func() (string, string) {
				secret, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}})
				require.Equal(t, http.StatusCreated, e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "0s"}).status)
				return secret, id
			}},
			{"a rotated key still in its grace period", func() (string, string) {
				secret, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}})
				require.Equal(t, http.StatusCreated, e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"}).status)
				return secret, id
			}},
			{"a rotated key whose grace period ended", func() (string, string) {
				secret, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}})
				require.Equal(t, http.StatusCreated, e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1m"}).status)
				e.clock.Advance(2 * time.Minute)
				return secret, id
			}},
			{"a revoked key that had expired", func() (string, string) {
				secret, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}, "ttl": "1m"})
				e.clock.Advance(2 * time.Minute)
				require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, e.root, nil).status)
				return secret, id
			}},
		}
		patches := []struct{ name, body string }{
			{"clearing its expiry", `{"expires_at": null}`},
			{"moving its expiry later", `{"expires_at": "` + future + `"}`},
			{"renaming it", `{"name": "new life"}`},
			{"changing its permissions", `{"permissions": ["keys:read", "x"]}`},
			{"clearing its rate limit", `{"rate_limit": "none"}`},
			{"clearing its allowlist", `{"ip_allowlist": null}`},
			{"even narrowing its allowlist", `{"ip_allowlist": ["127.0.0.1"]}`},
		}
		for _, st := range states {
			for _, p := range patches {
				t.Run(st.name+": "+p.name+" is 409 not_live and changes nothing", func(t *testing.T) {
					secret, id := st.make()
					before := e.stored(id)
					events := len(e.changesOf(id))
					r := e.send("PATCH", "/v1/keys/"+id, e.root, p.body)
					require.Equal(t, http.StatusConflict, r.status, "%s", r)
					assert.Equal(t, "not_live", r.code(t))
					assert.Contains(t, r.str(t, "error"), "revoked or rotated away")
					assert.Equal(t, before, e.stored(id), "the record is unchanged")
					assert.Len(t, e.changesOf(id), events, "no audit event for a refused change")
					if before.StatusAt(e.clock.Now()) != keystore.Live {
						got := e.send("GET", "/v1/keys", secret, nil)
						assert.Equal(t, http.StatusUnauthorized, got.status, "the key still does not authenticate: %s", got)
					}
				})
			}
		}
		t.Run("a rotated key in its grace period can still be revoked", func(t *testing.T) {
			_, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"x"}})
			require.Equal(t, http.StatusCreated, e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"}).status)
			r := e.send("DELETE", "/v1/keys/"+id, e.root, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			assert.NotNil(t, e.stored(id).RevokedAt)
		})
	})
}

func TestBringingAnExpiredKeyBackCountsAgainstTheOwnerLimit(t *testing.T) {
	forEachBackend(t, envOptions{maxPerOwner: 2}, func(t *testing.T, e *env) {
		writer, _ := e.create(keystore.Spec{Name: "writer", Owner: "capped", Permissions: []string{"keys:write", "x"}})
		_, expired := e.newKey(writer, map[string]any{"name": "expiring", "permissions": []string{"x"}, "ttl": "1m"})
		e.clock.Advance(2 * time.Minute)
		_, second := e.newKey(writer, map[string]any{"name": "second", "permissions": []string{"x"}})
		// The writer and "second" count: the owner is at its limit of 2.
		future := e.clock.Now().Add(time.Hour).UTC().Format(time.RFC3339)

		for _, tc := range []struct {
			name, caller, body string
		}{
			{"by a writer clearing its expiry", writer, `{"expires_at": null}`},
			{"by a writer moving its expiry into the future", writer, `{"expires_at": "` + future + `"}`},
			{"by keys:admin clearing its expiry", e.root, `{"expires_at": null}`},
			{"by keys:admin together with a rename", e.root, `{"name": "back", "expires_at": null}`},
		} {
			t.Run("reviving it at the limit "+tc.name+" is 409 key_limit_reached", func(t *testing.T) {
				before := e.stored(expired)
				r := e.send("PATCH", "/v1/keys/"+expired, tc.caller, tc.body)
				require.Equal(t, http.StatusConflict, r.status, "%s", r)
				assert.Equal(t, "key_limit_reached", r.code(t))
				assert.Equal(t, before, e.stored(expired))
			})
		}
		t.Run("renaming it without reviving it is fine at the limit", func(t *testing.T) {
			r := e.send("PATCH", "/v1/keys/"+expired, writer, `{"name": "still expired"}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			assert.Equal(t, keystore.Expired, e.stored(expired).StatusAt(e.clock.Now()))
		})
		t.Run("with room again, reviving it works, and the owner is at the limit again", func(t *testing.T) {
			require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+second, writer, nil).status)
			r := e.send("PATCH", "/v1/keys/"+expired, writer, `{"expires_at": null}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			assert.Equal(t, keystore.Live, e.stored(expired).StatusAt(e.clock.Now()))
			r = e.send("POST", "/v1/keys", writer, map[string]any{"name": "third", "permissions": []string{"x"}})
			require.Equal(t, http.StatusConflict, r.status, "%s", r)
		})
	})
}

// selfCases are changes a key makes to itself. The key starts with
// permissions [keys:write x] (plus keys:admin for an admin caller), the
// allowlist 127.0.0.0/8 (the tests' own address), an expiry in an hour and
// a rate limit of 100/m; the configured default is 1000/h.
var selfCases = []struct {
	name  string
	patch func(expiry time.Time) string
	field string // "" = allowed
}{
	{"dropping its allowlist", func(time.Time) string { return `{"ip_allowlist": null}` }, "ip_allowlist"},
	{"emptying its allowlist", func(time.Time) string { return `{"ip_allowlist": []}` }, "ip_allowlist"},
	{"widening its allowlist to every address", func(time.Time) string { return `{"ip_allowlist": ["0.0.0.0/0"]}` }, "ip_allowlist"},
	{"widening its allowlist by one bit", func(time.Time) string { return `{"ip_allowlist": ["126.0.0.0/7"]}` }, "ip_allowlist"},
	{"adding a network to its allowlist", func(time.Time) string { return `{"ip_allowlist": ["127.0.0.0/8", "10.0.0.0/8"]}` }, "ip_allowlist"},
	{"adding an IPv6 network to its allowlist", func(time.Time) string { return `{"ip_allowlist": ["127.0.0.0/8", "::/0"]}` }, "ip_allowlist"},
	{"narrowing its allowlist", func(time.Time) string { return `{"ip_allowlist": ["127.0.0.1"]}` }, ""},
	{"removing its expiry", func(time.Time) string { return `{"expires_at": null}` }, "expires_at"},
	{"moving its expiry later", func(exp time.Time) string { return `{"expires_at": "` + exp.Add(time.Hour).Format(time.RFC3339) + `"}` }, "expires_at"},
	{"moving its expiry a second later", func(exp time.Time) string {
		return `{"expires_at": "` + exp.Add(time.Second).Format(time.RFC3339) + `"}`
	}, "expires_at"},
	{"moving its expiry earlier", func(exp time.Time) string {
		return `{"expires_at": "` + exp.Add(-30*time.Minute).Format(time.RFC3339) + `"}`
	}, ""},
	{"removing its rate limit", func(time.Time) string { return `{"rate_limit": "none"}` }, "rate_limit"},
	{"returning to the higher default rate", func(time.Time) string { return `{"rate_limit": null}` }, "rate_limit"},
	{"raising its rate", func(time.Time) string { return `{"rate_limit": "200/m"}` }, "rate_limit"},
	{"a slower rate with a bigger burst", func(time.Time) string { return `{"rate_limit": "1000/h"}` }, "rate_limit"},
	{"the same rate over a shorter window", func(time.Time) string { return `{"rate_limit": "50/30s"}` }, ""},
	{"a lower rate", func(time.Time) string { return `{"rate_limit": "50/m"}` }, ""},
	{"giving itself a permission", func(time.Time) string { return `{"permissions": ["keys:write", "x", "y"]}` }, "permissions"},
	{"dropping a permission", func(time.Time) string { return `{"permissions": ["keys:write"]}` }, ""},
	{"renaming itself", func(time.Time) string { return `{"name": "still me"}` }, ""},
}

func TestNoKeyLoosensItsOwnRestrictions(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		for _, role := range []struct {
			name  string
			perms []string
		}{
			{"a writer", []string{"keys:write", "x"}},
			{"a keys:admin caller", []string{"keys:admin", "keys:write", "x"}},
		} {
			for _, tc := range selfCases {
				want := "is allowed"
				if tc.field != "" {
					want = "is 403 naming " + tc.field
				}
				t.Run(role.name+" "+tc.name+" "+want, func(t *testing.T) {
					exp := e.clock.Now().Add(time.Hour).UTC().Truncate(time.Second)
					secret, id := e.create(keystore.Spec{Name: "self", Owner: "team", Permissions: role.perms,
						IPAllowlist: mustCIDRs(t, "127.0.0.0/8"), ExpiresAt: &exp, RateLimit: rateLimit(t, "100/m")})
					body := tc.patch(exp)
					if strings.Contains(body, `"permissions"`) && role.perms[0] == "keys:admin" {
						body = strings.Replace(body, `["keys:write"`, `["keys:admin", "keys:write"`, 1)
					}
					before := e.stored(id)
					r := e.send("PATCH", "/v1/keys/"+id, secret, body)
					if tc.field == "" {
						require.Equal(t, http.StatusOK, r.status, "%s", r)
						assert.Contains(t, e.changesOf(id), change{keystore.ChangeUpdated, id, "team", id, ""})
						return
					}
					require.Equal(t, http.StatusForbidden, r.status, "%s", r)
					assert.Equal(t, "permission_denied", r.code(t))
					assert.True(t, strings.HasPrefix(r.str(t, "error"), tc.field+":"), "names the field: %s", r)
					assert.Equal(t, before, e.stored(id), "nothing changed")
					assert.Len(t, e.changesOf(id), 1, "only the creation was audited")
				})
			}
		}
		t.Run("another keys:admin key may lift a key's restrictions", func(t *testing.T) {
			exp := e.clock.Now().Add(time.Hour)
			_, id := e.create(keystore.Spec{Name: "limited", Permissions: []string{"x"}, IPAllowlist: mustCIDRs(t, "127.0.0.0/8"), ExpiresAt: &exp, RateLimit: rateLimit(t, "1/m")})
			r := e.send("PATCH", "/v1/keys/"+id, e.root, `{"ip_allowlist": null, "expires_at": null, "rate_limit": "none", "permissions": ["x", "y"]}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
		})
	})
}

func TestAWritersKeysStayWithinTheWritersOwnRestrictions(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		exp := e.clock.Now().Add(time.Hour).UTC().Truncate(time.Second)
		writer, _ := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "read:users"},
			IPAllowlist: mustCIDRs(t, "127.0.0.0/8", "2001:db8::/32"), ExpiresAt: &exp, RateLimit: rateLimit(t, "100/m")})
		fits := map[string]any{"ttl": "30m", "ip_allowlist": []string{"127.0.0.1"}, "rate_limit": "50/m"}
		with := func(changes map[string]any) map[string]any {
			body := map[string]any{"name": "child", "permissions": []string{"read:users"}}
			for k, v := range fits {
				body[k] = v
			}
			for k, v := range changes {
				if v == nil {
					delete(body, k)
				} else {
					body[k] = v
				}
			}
			return body
		}
		creates := []struct {
			name   string
			change map[string]any
			field  string // "" = created
		}{
			{"a key within every restriction", nil, ""},
			{"a key that never expires", map[string]any{"ttl": nil}, "expires_at"},
			{"a key that outlives the writer", map[string]any{"ttl": "2h"}, "expires_at"},
			{"a key that expires with the writer", map[string]any{"ttl": nil, "expires_at": exp.Format(time.RFC3339)}, ""},
			{"a key that expires a second after the writer", map[string]any{"ttl": nil, "expires_at": exp.Add(time.Second).Format(time.RFC3339)}, "expires_at"},
			{"a key for any address", map[string]any{"ip_allowlist": nil}, "ip_allowlist"},
			{"a key for an empty allowlist", map[string]any{"ip_allowlist": []string{}}, "ip_allowlist"},
			{"a key for another network", map[string]any{"ip_allowlist": []string{"10.0.0.0/8"}}, "ip_allowlist"},
			{"a key for a wider network", map[string]any{"ip_allowlist": []string{"126.0.0.0/7"}}, "ip_allowlist"},
			{"a key for a narrower network", map[string]any{"ip_allowlist": []string{"127.1.0.0/16"}}, ""},
			{"a key for a network inside the IPv6 entry", map[string]any{"ip_allowlist": []string{"2001:db8:1::/48", "127.0.0.1"}}, ""},
			{"a key for the IPv4-mapped form of an allowed address (read as the address)", map[string]any{"ip_allowlist": []string{"::ffff:127.0.0.1"}}, ""},
			{"a key for the IPv4-mapped form of an allowed network (read as the network)", map[string]any{"ip_allowlist": []string{"::ffff:127.0.0.0/104"}}, ""},
			{"a key for the IPv4-mapped form of another network", map[string]any{"ip_allowlist": []string{"::ffff:10.0.0.0/104"}}, "ip_allowlist"},
			{"a key for the IPv4-mapped form of a wider network", map[string]any{"ip_allowlist": []string{"::ffff:126.0.0.0/103"}}, "ip_allowlist"},
			{"a key for one allowed and one other network", map[string]any{"ip_allowlist": []string{"127.0.0.1", "192.168.0.0/16"}}, "ip_allowlist"},
			{"a key with no rate limit", map[string]any{"rate_limit": "none"}, "rate_limit"},
			{"a key on the default rate, whose burst is higher", map[string]any{"rate_limit": nil}, "rate_limit"},
			{"a key with a higher rate", map[string]any{"rate_limit": "101/m"}, "rate_limit"},
			{"a key with a slower rate and a bigger burst", map[string]any{"rate_limit": "1000/h"}, "rate_limit"},
			{"a key with a faster rate and a smaller burst", map[string]any{"rate_limit": "10/s"}, "rate_limit"},
			{"a key with the same rate", map[string]any{"rate_limit": "100/m"}, ""},
			{"a key with a smaller burst and a slower rate", map[string]any{"rate_limit": "1/s"}, ""},
			// 60/40s is slower on average, but two of its windows fit in a
			// minute: 120 requests in one.
			{"a key whose shorter windows, each full, make more in the caller's", map[string]any{"rate_limit": "60/40s"}, "rate_limit"},
			{"a key whose shorter windows, each full, make no more in the caller's", map[string]any{"rate_limit": "30/20s"}, ""},
			{"a key with a permission the writer lacks", map[string]any{"permissions": []string{"delete:users"}}, "missing permission"},
		}
		for _, tc := range creates {
			want := "is created"
			if tc.field != "" {
				want = "is 403 naming " + tc.field
			}
			t.Run("creating "+tc.name+" "+want, func(t *testing.T) {
				r := e.send("POST", "/v1/keys", writer, with(tc.change))
				if tc.field == "" {
					require.Equal(t, http.StatusCreated, r.status, "%s", r)
					return
				}
				require.Equal(t, http.StatusForbidden, r.status, "%s", r)
				assert.Equal(t, "permission_denied", r.code(t))
				assert.Contains(t, r.str(t, "error"), tc.field)
			})
		}

		// Keys of the writer's owner made by keys:admin, which may exceed it.
		wide := func() string {
			_, id := e.create(keystore.Spec{Name: "wide", Owner: "team", Permissions: []string{"read:users"}})
			return id
		}
		narrow := func() string {
			soon := e.clock.Now().Add(10 * time.Minute)
			_, id := e.create(keystore.Spec{Name: "narrow", Owner: "team", Permissions: []string{"read:users"},
				IPAllowlist: mustCIDRs(t, "127.0.0.1/32"), ExpiresAt: &soon, RateLimit: rateLimit(t, "10/m")})
			return id
		}
		t.Run("rotating a key that exceeds the writer is 403: the new secret would outlive it", func(t *testing.T) {
			id := wide()
			r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, nil)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Contains(t, r.str(t, "error"), "ip_allowlist")
			assert.Empty(t, e.stored(id).RotatedTo)
		})
		t.Run("rotating a key within the writer makes a key within the writer", func(t *testing.T) {
			id := narrow()
			r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, nil)
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			assert.Equal(t, []any{"127.0.0.1/32"}, r.obj(t)["ip_allowlist"])
			assert.Equal(t, "10/m", r.str(t, "rate_limit"))
		})
		t.Run("changing a key so that it exceeds the writer is 403", func(t *testing.T) {
			for _, body := range []string{`{"expires_at": null}`, `{"ip_allowlist": null}`, `{"rate_limit": "none"}`, `{"rate_limit": "500/m"}`} {
				id := narrow()
				r := e.send("PATCH", "/v1/keys/"+id, writer, body)
				require.Equal(t, http.StatusForbidden, r.status, "%s: %s", body, r)
			}
		})
		t.Run("renaming a key that exceeds the writer is 403", func(t *testing.T) {
			r := e.send("PATCH", "/v1/keys/"+wide(), writer, `{"name": "renamed"}`)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
		})
		t.Run("narrowing a key that exceeds the writer into its bounds is allowed", func(t *testing.T) {
			r := e.send("PATCH", "/v1/keys/"+wide(), writer, map[string]any{
				"ip_allowlist": []string{"127.0.0.1"}, "rate_limit": "100/m",
				"expires_at": exp.Format(time.RFC3339),
			})
			require.Equal(t, http.StatusOK, r.status, "%s", r)
		})
		t.Run("revoking a key that exceeds the writer is allowed", func(t *testing.T) {
			assert.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+wide(), writer, nil).status)
		})
		t.Run("a writer on the default rate may give the default, or less, never none", func(t *testing.T) {
			defaultWriter, _ := e.create(keystore.Spec{Name: "default writer", Owner: "team", Permissions: []string{"keys:write", "x"}})
			for rate, status := range map[string]int{"": 201, "1000/h": 201, "500/h": 201, "1001/h": 403, "none": 403, "20/s": 403} {
				body := map[string]any{"name": "child", "permissions": []string{"x"}}
				if rate != "" {
					body["rate_limit"] = rate
				}
				r := e.send("POST", "/v1/keys", defaultWriter, body)
				require.Equal(t, status, r.status, "rate %q: %s", rate, r)
			}
		})
		t.Run("the 403 says what the writer's own bound is", func(t *testing.T) {
			r := e.send("POST", "/v1/keys", writer, with(map[string]any{"ttl": "5h"}))
			assert.Contains(t, r.str(t, "error"), exp.Format(time.RFC3339))
			r = e.send("POST", "/v1/keys", writer, with(map[string]any{"rate_limit": "none"}))
			assert.Contains(t, r.str(t, "error"), "(100/m)")
		})
	})
}

func TestTheAdminAPIRateLimitsEachCallingKey(t *testing.T) {
	forEachBackend(t, envOptions{adminRate: "3/m"}, func(t *testing.T, e *env) {
		t.Run("the fourth request in a minute is 429 with Retry-After and the rate-limit headers", func(t *testing.T) {
			caller, callerID := e.create(keystore.Spec{Name: "busy", Permissions: []string{"keys:read"}})
			for i := range 3 {
				r := e.send("GET", "/v1/keys", caller, nil)
				require.Equal(t, http.StatusOK, r.status, "request %d: %s", i+1, r)
				assert.Equal(t, strconv.Itoa(2-i), r.header.Get("X-RateLimit-Remaining"))
			}
			e.rec.AuthFailures()
			r := e.send("GET", "/v1/keys", caller, nil)
			require.Equal(t, http.StatusTooManyRequests, r.status, "%s", r)
			assert.Equal(t, "rate_limited", r.code(t))
			assert.Equal(t, []AuthFailure{{KeyID: callerID, ClientIP: netip.MustParseAddr("127.0.0.1"), Method: "GET", Route: "/v1/keys",
				UserAgent: "Go-http-client/1.1", Status: http.StatusTooManyRequests, Code: authz.CodeRateLimited}}, e.rec.AuthFailures(),
				"a 429 is audited, naming the key, as one anyone with the key can make at any rate (not Authenticated)")
			retry, err := strconv.Atoi(r.header.Get("Retry-After"))
			require.NoError(t, err)
			assert.GreaterOrEqual(t, retry, 1)
			assert.LessOrEqual(t, retry, 66, "at most a window and a sub-window")
			assert.Equal(t, `"admin";q=3;w=60`, r.header.Get("RateLimit-Policy"))
			assert.Equal(t, "3", r.header.Get("X-RateLimit-Limit"))
			assert.Equal(t, "0", r.header.Get("X-RateLimit-Remaining"))

			other, _ := e.create(keystore.Spec{Name: "other", Permissions: []string{"keys:read"}})
			assert.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", other, nil).status, "each key has its own count")

			e.clock.Advance(time.Duration(retry) * time.Second)
			assert.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", caller, nil).status, "after Retry-After")
		})
		t.Run("a create and revoke loop is stopped", func(t *testing.T) {
			writer, _ := e.create(keystore.Spec{Name: "looper", Owner: "loop", Permissions: []string{"keys:write", "x"}})
			created := 0
			for range 10 {
				r := e.send("POST", "/v1/keys", writer, map[string]any{"name": "k", "permissions": []string{"x"}})
				if r.status == http.StatusTooManyRequests {
					break
				}
				require.Equal(t, http.StatusCreated, r.status, "%s", r)
				created++
				if r = e.send("DELETE", "/v1/keys/"+r.str(t, "id"), writer, nil); r.status == http.StatusTooManyRequests {
					break
				}
			}
			assert.Equal(t, 2, created, "3 requests a minute: create, revoke, create")
		})
		t.Run("the key's own rate limit applies too", func(t *testing.T) {
			slow, _ := e.create(keystore.Spec{Name: "slow", Permissions: []string{"keys:read"}, RateLimit: rateLimit(t, "1/m")})
			require.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", slow, nil).status)
			r := e.send("GET", "/v1/keys", slow, nil)
			require.Equal(t, http.StatusTooManyRequests, r.status, "%s", r)
			assert.Equal(t, `"key";q=1;w=60`, r.header.Get("RateLimit-Policy"))
		})
		t.Run("refused requests count too", func(t *testing.T) {
			nobody, _ := e.create(keystore.Spec{Name: "no keys permission", Permissions: []string{"x"}})
			for range 3 {
				require.Equal(t, http.StatusForbidden, e.send("GET", "/v1/keys", nobody, nil).status)
			}
			assert.Equal(t, http.StatusTooManyRequests, e.send("GET", "/v1/keys", nobody, nil).status)
		})
		t.Run("every key route answers 429 past the limit", func(t *testing.T) {
			_, target := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
			for _, rt := range keyRoutes() {
				caller, _ := e.create(keystore.Spec{Name: "caller", Permissions: []string{"keys:admin"}})
				for range 3 {
					e.send("GET", "/v1/keys", caller, nil)
				}
				path := strings.ReplaceAll(rt.Path, "{id}", target)
				r := e.send(rt.Method, path, caller, rt.body)
				require.Equal(t, http.StatusTooManyRequests, r.status, "%s: %s", rt.Pattern(), r)
				assert.Equal(t, "rate_limited", r.code(t))
				assert.NotEmpty(t, r.header.Get("Retry-After"))
			}
			assert.Equal(t, "target", e.stored(target).Name, "nothing was changed by a limited request")
			assert.Nil(t, e.stored(target).RevokedAt)
		})
	})
}

// rateLimit is the key rate limit s, which must parse.
func rateLimit(t testing.TB, s string) keystore.RateLimit {
	t.Helper()
	r, err := keystore.ParseRateLimit(s)
	require.NoError(t, err)
	return r
}

// A key that rotates itself, again and again with a grace period, does not
// multiply its rate limit: every key of its line of rotations counts in the
// first one's buckets, the old keys in their grace period included. (Each
// rotation is a request of the key that makes it.)
func TestRotatingItselfDoesNotMultiplyAKeysRateLimit(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		secret, id := e.newKey(e.root, map[string]any{"name": "w", "permissions": []string{"keys:write"}, "rate_limit": "5/m"})
		first := id
		secrets := []string{secret}
		used := 0
		// The key rotates itself once, with an hour's grace…
		r := e.send("POST", "/v1/keys/"+id+"/rotate", secret, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		used++
		secret, id = r.str(t, "key"), r.str(t, "id")
		secrets = append(secrets, secret)
		// …and not again while the first is live: one rotation at a time.
		r = e.send("POST", "/v1/keys/"+id+"/rotate", secret, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusConflict, r.status, "%s", r)
		assert.Equal(t, "rotation_pending", r.code(t))
		assert.Contains(t, r.str(t, "error"), first)
		used++
		// An admin may chain rotations; the line still shares one limit.
		for range 3 {
			r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			secret, id = r.str(t, "key"), r.str(t, "id")
			assert.Equal(t, first, r.str(t, "lineage"))
			secrets = append(secrets, secret)
		}
		for _, s := range secrets {
			for {
				r := e.send("GET", "/v1/keys/"+id, s, nil)
				if r.status == http.StatusTooManyRequests {
					break
				}
				require.Equal(t, http.StatusOK, r.status, "%s", r)
				used++
			}
		}
		assert.Equal(t, 5, used, "requests allowed in a minute to a key limited to 5/m and its rotations")
	})
}

// Keys in their grace period do not count against keys.max_per_owner, so a
// keys:write caller that could rotate a line again and again, each time
// with a long grace, would hold as many live keys as it liked.
func TestAWriterRotatesALineOnceAtATime(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, _ := e.newKey(e.root, map[string]any{"name": "w", "owner": "team-a", "permissions": []string{"keys:write", "x"}})
		_, id := e.newKey(writer, map[string]any{"name": "svc", "permissions": []string{"x"}})
		r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, map[string]any{"grace": "8760h"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		next := r.str(t, "id")
		r = e.send("POST", "/v1/keys/"+next+"/rotate", writer, map[string]any{"grace": "8760h"})
		require.Equal(t, http.StatusConflict, r.status, "%s", r)
		assert.Equal(t, "rotation_pending", r.code(t))
		live := func() int {
			r := e.send("GET", "/v1/keys?owner=team-a", writer, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			return len(listedIDs(t, r))
		}
		assert.Equal(t, 3, live(), "the writer, the new key and the old one in its grace: nothing more")

		require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, writer, nil).status)
		r = e.send("POST", "/v1/keys/"+next+"/rotate", writer, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusCreated, r.status, "once the earlier key is revoked the line rotates again: %s", r)
		r = e.send("POST", "/v1/keys/"+r.str(t, "id")+"/rotate", e.root, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusCreated, r.status, "keys:admin may chain rotations: %s", r)
	})
}

// A line's middle key can be purged (keys.retention after its grace ended)
// while a key before it is still live: keys:admin chained the rotations,
// the first with a long grace and the second with none. The live first key
// still counts in the line's bucket, so a keys:write caller must not rotate
// the line again, nor move its rate to another window, until it is dead.
func TestALiveKeyBeforeAPurgedOneStillHoldsTheLine(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, _ := e.newKey(e.root, map[string]any{"name": "w", "owner": "team-a", "permissions": []string{"keys:write", "x"}})
		_, first := e.newKey(writer, map[string]any{"name": "svc", "permissions": []string{"x"}, "rate_limit": "4/m"})
		r := e.send("POST", "/v1/keys/"+first+"/rotate", e.root, map[string]any{"grace": "8760h"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		middle := r.str(t, "id")
		r = e.send("POST", "/v1/keys/"+middle+"/rotate", e.root, map[string]any{"grace": "0s"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		last := r.str(t, "id")

		e.clock.Advance(time.Hour)
		_, err := e.store.Sweep(context.Background(), keystore.SweepOptions{Now: e.clock.Now(), PurgeBefore: e.clock.Now()})
		require.NoError(t, err)
		_, err = e.store.Get(context.Background(), middle)
		require.ErrorIs(t, err, keystore.ErrNotFound, "the middle key is purged")
		require.Equal(t, keystore.Live, e.stored(first).StatusAt(e.clock.Now()), "the first key is in its grace")

		r = e.send("PATCH", "/v1/keys/"+last, writer, map[string]any{"rate_limit": "1/15s"})
		assert.Equal(t, http.StatusBadRequest, r.status, "a rate over another window: %s", r)
		r = e.send("POST", "/v1/keys/"+last+"/rotate", writer, map[string]any{"grace": "8760h"})
		assert.Equal(t, http.StatusConflict, r.status, "%s", r)
	})
}

// A key without a rate of its own is limited, under each policy, by that
// policy's rate_limit.default, not only the top-level one: a named policy
// may have a looser default. Dropping a key's own rate (a writer's new key
// without one, or a key's own PATCH to null) must not be a way to that
// looser default, under which the key would outrun its maker, or itself.
func TestTheDefaultRateIsEveryPoliciesDefault(t *testing.T) {
	bulk := authz.PolicySpec{Name: "bulk", Match: authz.Match{Hosts: []string{"bulk.example.com"}}, Sources: authztest.Sources(),
		DefaultRate: ratelimit.Rate{N: 1000000, Window: time.Hour}}
	forEachBackend(t, envOptions{policies: []authz.PolicySpec{bulk}}, func(t *testing.T, e *env) {
		// 1000/h is the top-level default, 1000000/h bulk's.
		writer, writerID := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "x"}, RateLimit: rateLimit(t, "1000/h")})

		t.Run("a writer's key on the default, which under bulk outruns the writer, is 403", func(t *testing.T) {
			r := e.send("POST", "/v1/keys", writer, map[string]any{"name": "child", "permissions": []string{"x"}})
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Contains(t, r.str(t, "error"), "rate_limit")
			assert.Contains(t, r.str(t, "error"), "bulk")
		})
		t.Run("a writer's key on the default, valid only under the default policy, is created", func(t *testing.T) {
			r := e.send("POST", "/v1/keys", writer, map[string]any{"name": "child", "permissions": []string{"x"}, "policies": []string{"default"}})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
		})
		t.Run("a key dropping its own rate for the defaults is 403", func(t *testing.T) {
			before := e.stored(writerID)
			r := e.send("PATCH", "/v1/keys/"+writerID, writer, `{"rate_limit": null}`)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.True(t, strings.HasPrefix(r.str(t, "error"), "rate_limit:"), "%s", r)
			assert.Equal(t, before, e.stored(writerID))
		})
		t.Run("a writer on the defaults makes keys on the defaults", func(t *testing.T) {
			w, _ := e.create(keystore.Spec{Name: "writer2", Owner: "team", Permissions: []string{"keys:write", "x"}})
			r := e.send("POST", "/v1/keys", w, map[string]any{"name": "child", "permissions": []string{"x"}})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
		})
	})
}

// A key without a rate of its own is counted by the top-level default
// (under every policy that inherits it, and by the admin API) and, apart
// from it, by the default of each policy that sets its own. Compared with
// a writer's own rate one policy at a time, each default fitted while
// together they let the key through twice the writer's rate or more: a
// writer's keys, and a key dropping its own rate, are held to the sum.
func TestAKeyOnTheDefaultsIsHeldToItsWriterByAllItsCountsTogether(t *testing.T) {
	hour := ratelimit.Rate{N: 1000, Window: time.Hour} // the env's top-level default
	p1 := authz.PolicySpec{Name: "p1", Match: authz.Match{Hosts: []string{"p1.example.com"}}, Sources: authztest.Sources(),
		DefaultRate: hour, OwnDefaultRate: true, Authenticate: true}
	// 10/m: up to 600 in an hour, 10 at the start of each minute.
	p2 := authz.PolicySpec{Name: "p2", Match: authz.Match{Hosts: []string{"p2.example.com"}}, Sources: authztest.Sources(),
		DefaultRate: ratelimit.Rate{N: 10, Window: time.Minute}, Authenticate: true}
	e := newEnv(t, backends[0], envOptions{policies: []authz.PolicySpec{p1, p2}})

	// Together: 1000 + 1000 + 10·60 = 2600 an hour.
	short, _ := e.create(keystore.Spec{Name: "short", Owner: "team", Permissions: []string{"keys:write", "x"}, RateLimit: rateLimit(t, "2599/h")})
	r := e.send("POST", "/v1/keys", short, map[string]any{"name": "child", "permissions": []string{"x"}})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	assert.True(t, strings.HasPrefix(r.str(t, "error"), "rate_limit:"), "%s", r)
	assert.Contains(t, r.str(t, "error"), "(p1, p2)")
	for _, scope := range [][]string{{"p1"}, {"p2"}} {
		// The top-level default's count is the admin API's too: 1000 and
		// the one policy's default fit.
		r := e.send("POST", "/v1/keys", short, map[string]any{"name": "child", "permissions": []string{"x"}, "policies": scope})
		assert.Equal(t, http.StatusCreated, r.status, "scoped to %v: %s", scope, r)
	}
	r = e.send("POST", "/v1/keys", short, map[string]any{"name": "child", "permissions": []string{"x"}, "rate_limit": "2599/h"})
	assert.Equal(t, http.StatusCreated, r.status, "%s", r)

	// A key of its own rate may not drop it for the defaults unless they fit
	// together.
	self, selfID := e.create(keystore.Spec{Name: "self", Owner: "team", Permissions: []string{"keys:write", "x"}, RateLimit: rateLimit(t, "2599/h")})
	before := e.stored(selfID)
	r = e.send("PATCH", "/v1/keys/"+selfID, self, `{"rate_limit": null}`)
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	assert.Equal(t, before, e.stored(selfID))

	writer, writerID := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "x"}, RateLimit: rateLimit(t, "2600/h")})
	r = e.send("POST", "/v1/keys", writer, map[string]any{"name": "child", "permissions": []string{"x"}})
	require.Equal(t, http.StatusCreated, r.status, "%s", r)
	child := r.str(t, "key")

	// What the sum promises, by decisions: within an hour, sent under every
	// policy as fast as each allows (p2's 10 at the start of each of 60
	// windows, 61 s apart, the last 3,599 s after the first), the child
	// makes no more requests than the writer.
	set, err := authz.Compile(authz.Options{
		Sources: authztest.Sources(), Format: authztest.Format, Authenticate: true,
		DefaultRate: hour, FailRate: ratelimit.Rate{N: 100, Window: time.Minute}, FailTotalRate: ratelimit.Rate{N: 1000, Window: time.Second},
		Policies: []authz.PolicySpec{p1, p2},
	})
	require.NoError(t, err)
	az := authz.NewAuthorizer(set, e.cache, e.manager.Hasher, ratelimit.NewLocal(e.clock.Now, 0), e.clock.Now)
	anHour := func(key string) int {
		n := 0
		for minute := range 60 {
			for _, host := range []string{"app.example.com", "p1.example.com", "p2.example.com"} {
				tries := 11
				if minute == 0 && host != "p2.example.com" {
					tries = 1100
				}
				for range tries {
					req := authz.Request{Method: "GET", Path: "/anything", Host: host, Peer: "10.1.2.3", XFFTrustedHops: -1,
						Headers: authz.HeaderMap{"x-api-key": key}}
					var d authz.Decision
					az.Decide(context.Background(), &req, &d)
					if d.Allowed() {
						n++
					}
				}
			}
			e.clock.Advance(61 * time.Second)
		}
		return n
	}
	w := anHour(writer)
	c := anHour(child)
	assert.Equal(t, 2600, w, "the writer's own rate")
	assert.Equal(t, 2600, c, "the child's defaults together")

	// A key whose own rate they fit may still not drop it, as its count
	// under p1 would start afresh (the next test).
	r = e.send("PATCH", "/v1/keys/"+writerID, writer, `{"rate_limit": null}`)
	assert.Equal(t, http.StatusForbidden, r.status, "%s", r)
	assert.Contains(t, r.str(t, "error"), "afresh")
}

// A key with a rate of its own is counted in one count under every policy;
// a key on the defaults, under a policy with a default of its own, in that
// policy's count. Moved between the two, at the same rate (its policy's
// default written as its own), a key started its count afresh under that
// policy, and moved back and forth by itself or by a keys:write caller made
// its limit twice in every window. Only keys:admin may move another key so.
func TestAKeyMovedBetweenItsOwnRateAndTheDefaultsIsNotCountedAfresh(t *testing.T) {
	twoAnHour := ratelimit.Rate{N: 2, Window: time.Hour}
	b := authz.PolicySpec{Name: "b", Match: authz.Match{Hosts: []string{"b.example.com"}}, Sources: authztest.Sources(),
		Authenticate: true, DefaultRate: twoAnHour, OwnDefaultRate: true}
	e := newEnv(t, backends[0], envOptions{policies: []authz.PolicySpec{b}})
	writer, writerID := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "x"}})

	dec := authz.NewAuthorizer(e.opts.Authz.Policies(), e.cache, e.manager.Hasher, ratelimit.NewLocal(e.clock.Now, 0), e.clock.Now)
	allowed := func(key string) (n int) {
		for range 4 {
			req := authz.Request{Method: "GET", Host: "b.example.com", Path: "/data", Peer: "10.1.2.3", XFFTrustedHops: -1,
				Headers: authz.HeaderMap{"x-api-key": key}}
			var d authz.Decision
			dec.Decide(context.Background(), &req, &d)
			if d.Allowed() {
				n++
			}
		}
		return n
	}
	require.Equal(t, 2, allowed(writer), "2/h, policy b's default")

	before := e.stored(writerID)
	r := e.send("PATCH", "/v1/keys/"+writerID, writer, map[string]any{"rate_limit": "2/h"})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	assert.Contains(t, r.str(t, "error"), `policy "b"`)
	assert.Equal(t, before, e.stored(writerID))
	assert.Zero(t, allowed(writer), "the 2 it made within the hour still count")

	// The writer moving another key of its owner, either way.
	_, ownID := e.newKey(writer, map[string]any{"name": "own", "permissions": []string{"x"}, "rate_limit": "1/h"})
	r = e.send("PATCH", "/v1/keys/"+ownID, writer, `{"rate_limit": null}`)
	assert.Equal(t, http.StatusForbidden, r.status, "%s", r)
	_, defID := e.newKey(writer, map[string]any{"name": "def", "permissions": []string{"x"}})
	r = e.send("PATCH", "/v1/keys/"+defID, writer, map[string]any{"rate_limit": "1/h"})
	assert.Equal(t, http.StatusForbidden, r.status, "%s", r)

	// A key that b does not count is moved freely: it has one count.
	_, scopedID := e.newKey(writer, map[string]any{"name": "scoped", "permissions": []string{"x"}, "policies": []string{"default"}})
	r = e.send("PATCH", "/v1/keys/"+scopedID, writer, map[string]any{"rate_limit": "1/h"})
	assert.Equal(t, http.StatusOK, r.status, "%s", r)
	r = e.send("PATCH", "/v1/keys/"+scopedID, writer, `{"rate_limit": null}`)
	assert.Equal(t, http.StatusOK, r.status, "%s", r)

	// keys:admin grants any rate to another key.
	r = e.send("PATCH", "/v1/keys/"+defID, e.root, map[string]any{"rate_limit": "1/h"})
	assert.Equal(t, http.StatusOK, r.status, "%s", r)

	// The same move around a scope: scoped away from b, moved, then scoped
	// back (each step harmless alone). The last step is refused.
	child, childID := e.newKey(writer, map[string]any{"name": "child", "permissions": []string{"x"}, "policies": []string{"b"}})
	require.Equal(t, 2, allowed(child))
	r = e.send("PATCH", "/v1/keys/"+childID, writer, map[string]any{"policies": []string{"default"}})
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	r = e.send("PATCH", "/v1/keys/"+childID, writer, map[string]any{"rate_limit": "2/h"})
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	before = e.stored(childID)
	r = e.send("PATCH", "/v1/keys/"+childID, writer, map[string]any{"policies": []string{"b"}})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	assert.True(t, strings.HasPrefix(r.str(t, "error"), "policies:"), "%s", r)
	assert.Equal(t, before, e.stored(childID))
	r = e.send("PATCH", "/v1/keys/"+childID, writer, `{"policies": null}`)
	assert.Equal(t, http.StatusForbidden, r.status, "every policy is b too: %s", r)
	// A keys:admin caller may.
	r = e.send("PATCH", "/v1/keys/"+childID, e.root, map[string]any{"policies": []string{"b"}})
	assert.Equal(t, http.StatusOK, r.status, "%s", r)
}

// The refusal of an existing key on the defaults whose counts together
// outrun its keys:write caller advises what that caller can do: scope it
// away (a rate of its own would start its count afresh, which only
// keys:admin may do), and a new key a rate of its own.
func TestTheSumRefusalAdvisesWhatTheCallerCanDo(t *testing.T) {
	hour := ratelimit.Rate{N: 1000, Window: time.Hour} // the env's top-level default
	b := authz.PolicySpec{Name: "b", Match: authz.Match{Hosts: []string{"b.example.com"}}, Sources: authztest.Sources(),
		Authenticate: true, DefaultRate: hour, OwnDefaultRate: true}
	e := newEnv(t, backends[0], envOptions{policies: []authz.PolicySpec{b}})
	writer, _ := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "x"}, RateLimit: rateLimit(t, "1000/h")})
	_, id := e.create(keystore.Spec{Name: "old", Owner: "team", Permissions: []string{"x"}}) // made by an admin, on the defaults

	r := e.send("PATCH", "/v1/keys/"+id, writer, map[string]any{"name": "renamed"})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	require.Contains(t, r.str(t, "error"), "scope the key away from those policies")
	r = e.send("PATCH", "/v1/keys/"+id, writer, map[string]any{"name": "renamed", "policies": []string{"default"}})
	assert.Equal(t, http.StatusOK, r.status, "following the advice: %s", r)

	r = e.send("POST", "/v1/keys", writer, map[string]any{"name": "new", "permissions": []string{"x"}})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	require.Contains(t, r.str(t, "error"), "give the key a rate_limit of its own")
	r = e.send("POST", "/v1/keys", writer, map[string]any{"name": "new", "permissions": []string{"x"}, "rate_limit": "1000/h"})
	assert.Equal(t, http.StatusCreated, r.status, "following the advice: %s", r)
}

// readCounter counts the reads of keys a store answers.
type readCounter struct {
	keystore.Store
	gets, lists atomic.Int64
}

func (c *readCounter) Get(ctx context.Context, id string) (*keystore.Key, error) {
	c.gets.Add(1)
	return c.Store.Get(ctx, id)
}

func (c *readCounter) List(ctx context.Context, o keystore.ListOptions) ([]*keystore.Key, string, error) {
	c.lists.Add(1)
	return c.Store.List(ctx, o)
}

// A writer's rotation of a key, and a change of its rate, must know
// whether an earlier key of its line of rotations is still in its grace
// period. Rotations with no grace cost a writer nothing, so a line may be a
// thousand keys long; read one by one, two reads each, at every such
// request, that line would let one writer keep the store busy (a refused
// rotation of a 1,000-key line took 120 ms of Redis round trips against
// 0.26 ms for a read). Past a few steps the owner's live keys are looked
// through instead: a handful of reads whatever the line's length, and a
// live key far back in the line is still found.
func TestALongLineOfRotationsCostsAFewReads(t *testing.T) {
	counter := &readCounter{}
	e := newEnv(t, backend{"sqlite", func(t testing.TB) (keystore.Store, func()) {
		s, stop := backends[0].open(t)
		counter.Store = s
		return counter, stop
	}}, envOptions{})
	writer, _ := e.newKey(e.root, map[string]any{"name": "w", "owner": "team-a", "permissions": []string{"keys:write", "x"}})
	ctx := context.Background()
	line := func(id string, n int) string {
		for range n { // rotated by the store's owner, with no grace: every earlier key is dead
			_, k, err := e.manager.Rotate(ctx, id, 0, "cli", nil)
			require.NoError(t, err)
			id = k.ID
		}
		return id
	}
	reads := func(do func()) (gets, lists int64) {
		g, l := counter.gets.Load(), counter.lists.Load()
		do()
		return counter.gets.Load() - g, counter.lists.Load() - l
	}

	_, id := e.newKey(writer, map[string]any{"name": "svc", "permissions": []string{"x"}})
	id = line(id, 1001)
	gets, lists := reads(func() {
		r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, map[string]any{"grace": "0s"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		id = r.str(t, "id")
	})
	assert.LessOrEqual(t, gets, int64(30), "a rotation read the line key by key")
	assert.LessOrEqual(t, lists, int64(2))
	gets, lists = reads(func() {
		r := e.send("PATCH", "/v1/keys/"+id, writer, map[string]any{"rate_limit": "10/m"})
		require.Equal(t, http.StatusOK, r.status, "%s", r)
	})
	assert.LessOrEqual(t, gets, int64(30), "a rate change read the line key by key")
	assert.LessOrEqual(t, lists, int64(2))

	// A key still in its grace period 40 rotations back (an admin chains
	// rotations; a writer may not) holds the writer's rotation, and is the
	// one the answer names, as when it is the newest of several.
	_, id = e.newKey(writer, map[string]any{"name": "svc2", "permissions": []string{"x"}})
	_, k, err := e.manager.Rotate(ctx, id, time.Hour, "cli", nil)
	require.NoError(t, err)
	older := id
	_, k, err = e.manager.Rotate(ctx, k.ID, 2*time.Hour, "cli", nil)
	require.NoError(t, err)
	newer := k.RotatedFrom
	id = line(k.ID, 40)
	r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, map[string]any{"grace": "1h"})
	require.Equal(t, http.StatusConflict, r.status, "%s", r)
	assert.Equal(t, "rotation_pending", r.code(t))
	assert.Contains(t, r.str(t, "error"), newer, "the newest live earlier key is named")
	assert.NotContains(t, r.str(t, "error"), older)

	r = e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"})
	require.Equal(t, http.StatusCreated, r.status, "%s", r)
}

// most is the largest number of requests N/W lets through in some span of
// t seconds (N at the start of each window the span meets).
func most(r ratelimit.Rate, t int64) int64 {
	w := int64(r.Window / time.Second)
	return r.N * ((t + w - 1) / w)
}

// A rate fits under another exactly when it never lets through more in any
// span of time: every pair of small rates, against the spans that decide
// it (the pattern of both windows repeats every W·W′).
func TestARateFitsUnderAnotherWhenItNeverAllowsMoreInAnySpan(t *testing.T) {
	for n := int64(1); n <= 7; n++ {
		for w := int64(1); w <= 13; w++ {
			for bn := int64(1); bn <= 7; bn++ {
				for bw := int64(1); bw <= 13; bw++ {
					r := ratelimit.Rate{N: n, Window: time.Duration(w) * time.Second}
					b := ratelimit.Rate{N: bn, Window: time.Duration(bw) * time.Second}
					want := true
					for span := int64(1); span <= 2*w*bw && want; span++ {
						want = most(r, span) <= most(b, span)
					}
					own, bound := rateLimit(t, r.String()), rateLimit(t, b.String())
					require.Equal(t, want, rateWithin(own, bound, ratelimit.Rate{N: 5, Window: time.Second}), "%v under %v", r, b)
				}
			}
		}
	}
}

// A writer limited to 60/m could give a key 59/59s (a smaller burst and a
// slower long-run rate), which the limiter lets make 118 requests in a
// minute: measured here on the limiter itself, and refused by the API.
func TestAWritersKeyMakesNoMoreRequestsInAnySpanThanTheWriter(t *testing.T) {
	inAMinute := func(rate ratelimit.Rate) int {
		start := time.Unix(1_700_000_000, 0)
		now := start
		l := ratelimit.NewLocal(func() time.Time { return now }, 0)
		n := 0
		for ; now.Sub(start) < time.Minute; now = now.Add(10 * time.Millisecond) {
			for {
				res, err := l.Allow(context.Background(), []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: rate}})
				require.NoError(t, err)
				if !res.Allowed {
					break
				}
				n++
			}
		}
		return n
	}
	writerRate, looser := ratelimit.Rate{N: 60, Window: time.Minute}, ratelimit.Rate{N: 59, Window: 59 * time.Second}
	require.Equal(t, 60, inAMinute(writerRate))
	require.Equal(t, 118, inAMinute(looser), "what the limiter lets 59/59s make in a minute")

	e := newEnv(t, backends[0], envOptions{})
	writer, id := e.newKey(e.root, map[string]any{"name": "w", "permissions": []string{"keys:write", "read:users"}, "rate_limit": "60/m"})
	r := e.send("POST", "/v1/keys", writer, map[string]any{"name": "child", "permissions": []string{"read:users"}, "rate_limit": "59/59s"})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	assert.Contains(t, string(r.body), "rate_limit")
	r = e.send("PATCH", "/v1/keys/"+id, writer, map[string]any{"rate_limit": "59/59s"})
	require.Equal(t, http.StatusForbidden, r.status, "a key loosening itself: %s", r)
}
