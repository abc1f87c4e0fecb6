package admin

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/forwardauth"
	"github.com/extauthz/extauthz/keystore"
)

// keyRoutes are the routes that take an API key, with a request that would
// otherwise succeed for the root key; {id} is filled in by the test.
func keyRoutes() []struct {
	route
	body any
} {
	var out []struct {
		route
		body any
	}
	for _, rt := range routes {
		if rt.access == signed {
			continue
		}
		var body any
		switch rt.Pattern() {
		case "POST /v1/keys":
			body = map[string]any{"name": "n", "permissions": []string{"x"}}
		case "PATCH /v1/keys/{id}":
			body = map[string]any{"name": "renamed"}
		}
		out = append(out, struct {
			route
			body any
		}{rt, body})
	}
	return out
}

func TestEveryRouteRefusesCallersWithoutAUsableKey(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, target := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
		unknown, err := e.manager.Format.Generate()
		require.NoError(t, err)
		revoked, revokedID := e.create(keystore.Spec{Name: "revoked", Permissions: []string{"keys:admin"}})
		plain, plainID := e.create(keystore.Spec{Name: "plain", Permissions: []string{"admin"}})
		_, err = e.manager.Revoke(context.Background(), revokedID, "test")
		require.NoError(t, err)
		expiry := e.clock.Now().Add(time.Minute)
		expired, expiredID := e.create(keystore.Spec{Name: "expired", Permissions: []string{"keys:admin"}, ExpiresAt: &expiry})
		faraway, farawayID := e.create(keystore.Spec{Name: "faraway", Permissions: []string{"keys:admin"},
			IPAllowlist: mustCIDRs(t, "203.0.113.0/24")})
		e.clock.Advance(2 * time.Minute)

		for _, tc := range []struct {
			name   string
			hdr    []string
			status int
			code   string
			keyID  string // the key id the audit names, when the key is known
			// authenticated: refused past authentication and the rate
			// limit, which only the holder of a key the admin API serves
			// can cause; the others, anyone who reaches the admin API can
			// (a key without keys:* too: every client of the data plane
			// may hold one).
			authenticated bool
		}{
			{"no key is 401 missing_key", nil, 401, "missing_key", "", false},
			{"an empty key is 401 missing_key", []string{"x-api-key", " "}, 401, "missing_key", "", false},
			{"another Authorization scheme is 401 missing_key", []string{"Authorization", "Basic " + e.root}, 401, "missing_key", "", false},
			{"a malformed key is 401 invalid_key", []string{"x-api-key", "not a key!"}, 401, "invalid_key", "", false},
			{"a key with a bad checksum is 401 invalid_key", []string{"x-api-key", badChecksum(e.root)}, 401, "invalid_key", "", false},
			{"an unknown key is 401 invalid_key", []string{"x-api-key", unknown}, 401, "invalid_key", "", false},
			{"a revoked key is 401 revoked_key", []string{"x-api-key", revoked}, 401, "revoked_key", revokedID, false},
			{"an expired key is 401 expired_key", []string{"x-api-key", expired}, 401, "expired_key", expiredID, false},
			{"a key from outside its allowlist is 403 ip_not_allowed", []string{"x-api-key", faraway}, 403, "ip_not_allowed", farawayID, false},
			{"a key without keys:* is 403 permission_denied", []string{"x-api-key", plain}, 403, "permission_denied", plainID, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e.rec.AuthFailures()
				for _, rt := range keyRoutes() {
					path := strings.ReplaceAll(rt.Path, "{id}", target)
					r := e.send(rt.Method, path, "", rt.body, tc.hdr...)
					require.Equal(t, tc.status, r.status, "%s: %s", rt.Pattern(), r)
					assert.Equal(t, tc.code, r.code(t), rt.Pattern())
					if tc.status == 401 {
						assert.Contains(t, r.header.Get("WWW-Authenticate"), `Bearer realm="extauthz"`)
					}
				}
				// Each refusal is audited: the key when it is known, never a secret.
				failures := e.rec.AuthFailures()
				require.Len(t, failures, len(keyRoutes()))
				for i, rt := range keyRoutes() {
					f := failures[i]
					assert.Equal(t, AuthFailure{KeyID: tc.keyID, ClientIP: netip.MustParseAddr("127.0.0.1"), Method: rt.Method, Route: rt.Path,
						UserAgent: "Go-http-client/1.1", Status: tc.status, Code: authz.Code(tc.code), Authenticated: tc.authenticated}, f)
				}
			})
		}
		k, err := e.store.Get(context.Background(), target)
		require.NoError(t, err)
		assert.Equal(t, "target", k.Name, "no refused request changed anything")
		assert.Nil(t, k.RevokedAt)
	})
}

// badChecksum is key with its last character changed (to "x", or to "y"
// when it is an "x" already: one key in 62 ends with one).
func badChecksum(key string) string {
	if strings.HasSuffix(key, "x") {
		return key[:len(key)-1] + "y"
	}
	return key[:len(key)-1] + "x"
}

func mustCIDRs(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, v := range s {
		p, err := netip.ParsePrefix(v)
		require.NoError(t, err)
		out = append(out, p)
	}
	return out
}

func TestEveryKeySourceAuthenticates(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name string
			path string
			hdr  []string
		}{
			{"the x-api-key header", "/v1/keys", []string{"x-api-key", e.root}},
			{"a bearer token", "/v1/keys", []string{"Authorization", "Bearer " + e.root}},
			{"the api_key query parameter", "/v1/keys?api_key=" + e.root, nil},
			{"the api_key cookie", "/v1/keys", []string{"Cookie", "theme=dark; api_key=" + e.root}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := e.send("GET", tc.path, "", nil, tc.hdr...)
				assert.Equal(t, http.StatusOK, r.status, "%s", r)
			})
		}
		t.Run("the first present source wins, even when it is bad", func(t *testing.T) {
			r := e.send("GET", "/v1/keys", "", nil, "x-api-key", "garbage-garbage-garbage!", "Authorization", "Bearer "+e.root)
			assert.Equal(t, http.StatusUnauthorized, r.status, "%s", r)
		})
	})
}

func TestEveryRouteNeedsItsKeysPermission(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, target := e.create(keystore.Spec{Name: "target", Owner: "team", Permissions: []string{"x"}})
		service, _ := e.create(keystore.Spec{Name: "service", Owner: "team", Permissions: []string{"read:users", "admin:users"}})
		reader, _ := e.create(keystore.Spec{Name: "reader", Owner: "team", Permissions: []string{"keys:read"}})
		for _, rt := range keyRoutes() {
			path := strings.ReplaceAll(rt.Path, "{id}", target)
			need := "keys:read"
			if rt.access == needWrite {
				need = "keys:write"
			}
			t.Run("a key without keys permissions may not "+rt.Pattern(), func(t *testing.T) {
				r := e.send(rt.Method, path, service, rt.body)
				require.Equal(t, http.StatusForbidden, r.status, "%s", r)
				assert.Equal(t, "permission_denied", r.code(t))
				assert.Contains(t, r.str(t, "error"), `"`+need+`"`)
			})
			if rt.access == needWrite {
				t.Run("a reader may not "+rt.Pattern(), func(t *testing.T) {
					r := e.send(rt.Method, path, reader, rt.body)
					require.Equal(t, http.StatusForbidden, r.status, "%s", r)
					assert.Equal(t, "permission_denied", r.code(t))
					assert.Contains(t, r.str(t, "error"), `"keys:write"`)
				})
			} else {
				t.Run("a reader may "+rt.Pattern(), func(t *testing.T) {
					r := e.send(rt.Method, path, reader, rt.body)
					assert.Equal(t, http.StatusOK, r.status, "%s", r)
				})
			}
		}
	})
}

func TestWhatACallerMayGrant(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, writerID := e.create(keystore.Spec{Name: "writer", Owner: "team-a", Permissions: []string{"keys:write", "read:users"}})
		superuser, superuserID := e.create(keystore.Spec{Name: "superuser", Owner: "ops", Permissions: []string{"admin"}})
		superWriter, superWriterID := e.create(keystore.Spec{Name: "super writer", Owner: "ops", Permissions: []string{"admin", "keys:write", "keys:admin:not"}})
		idOf := map[string]string{writer: writerID, superuser: superuserID, superWriter: superWriterID}
		for _, tc := range []struct {
			name      string
			caller    string
			body      map[string]any
			status    int
			owner     string // of the new key, when created
			mentioned string // in the 403 message
		}{
			{"a writer may grant what it holds", writer,
				map[string]any{"name": "k", "permissions": []string{"read:users", "keys:write"}}, 201, "team-a", ""},
			{"a writer's key belongs to the writer's owner", writer,
				map[string]any{"name": "k", "permissions": []string{"read:users"}}, 201, "team-a", ""},
			{"a writer may name its own owner", writer,
				map[string]any{"name": "k", "permissions": []string{"read:users"}, "owner": "team-a"}, 201, "team-a", ""},
			{"a writer may not grant what it lacks", writer,
				map[string]any{"name": "k", "permissions": []string{"read:users", "delete:users"}}, 403, "", `"delete:users"`},
			{"a writer may not grant admin", writer,
				map[string]any{"name": "k", "permissions": []string{"admin"}}, 403, "", `"admin"`},
			{"a writer may not grant keys:admin", writer,
				map[string]any{"name": "k", "permissions": []string{"keys:admin"}}, 403, "", `"keys:admin"`},
			{"a writer may not create keys for another owner", writer,
				map[string]any{"name": "k", "permissions": []string{"read:users"}, "owner": "team-b"}, 403, "", "keys:admin"},
			{"an admin may grant anything", e.root,
				map[string]any{"name": "k", "permissions": []string{"admin", "keys:admin", "anything"}}, 201, "default", ""},
			{"an admin's keys belong to owner default", e.root,
				map[string]any{"name": "k", "permissions": []string{"x"}}, 201, "default", ""},
			{"an admin may create keys for any owner", e.root,
				map[string]any{"name": "k", "permissions": []string{"x"}, "owner": "team-b"}, 201, "team-b", ""},
			{"the admin permission does not make a key a keys:admin caller", superuser,
				map[string]any{"name": "k", "permissions": []string{"x"}, "owner": "team-c"}, 403, "", `missing permission "keys:write"`},
			{"admin with keys:write is a writer, not a keys:admin caller", superWriter,
				map[string]any{"name": "k", "permissions": []string{"x"}, "owner": "team-c"}, 403, "", "creating keys for another owner needs keys:admin"},
			{"admin with keys:write may not grant keys:admin", superWriter,
				map[string]any{"name": "k", "permissions": []string{"keys:admin"}}, 403, "", `"keys:admin"`},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e.rec.AuthFailures()
				r := e.send("POST", "/v1/keys", tc.caller, tc.body)
				require.Equal(t, tc.status, r.status, "%s", r)
				if tc.status == 201 {
					assert.Equal(t, tc.owner, r.str(t, "owner"))
					assert.Empty(t, e.rec.AuthFailures())
					return
				}
				assert.Equal(t, "permission_denied", r.code(t))
				assert.Contains(t, r.str(t, "error"), tc.mentioned)
				requireRefusalAudited(t, e, idOf[tc.caller], "POST", "/v1/keys", tc.caller != superuser)
			})
		}
		t.Run("a writer may not raise its own key to keys:admin", func(t *testing.T) {
			w, id := e.create(keystore.Spec{Name: "w", Owner: "team-a", Permissions: []string{"keys:write"}})
			e.rec.AuthFailures()
			r := e.send("PATCH", "/v1/keys/"+id, w, map[string]any{"permissions": []string{"keys:write", "keys:admin"}})
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Contains(t, r.str(t, "error"), `"keys:admin"`)
			requireEscalationAudited(t, e, id, "PATCH", "/v1/keys/{id}")
		})
		t.Run("the admin permission alone may not even read keys", func(t *testing.T) {
			for _, path := range []string{"/v1/keys", "/v1/keys?owner=team-a", "/v1/keys/" + e.rootID, "/v1/openapi.json"} {
				r := e.send("GET", path, superuser, nil)
				require.Equal(t, http.StatusForbidden, r.status, "%s: %s", path, r)
				assert.Contains(t, r.str(t, "error"), `missing permission "keys:read"`)
			}
		})
	})
}

func TestAWriterReachesOnlyItsOwnersKeys(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writerA, writerAID := e.create(keystore.Spec{Name: "writer a", Owner: "team-a", Permissions: []string{"keys:write", "x"}})
		_, ownA := e.create(keystore.Spec{Name: "a's", Owner: "team-a", Permissions: []string{"x"}})
		_, theirs := e.create(keystore.Spec{Name: "b's", Owner: "team-b", Permissions: []string{"x"}})

		for _, tc := range []struct {
			name, method, path string
			body               any
		}{
			{"show", "GET", "/v1/keys/" + theirs, nil},
			{"change", "PATCH", "/v1/keys/" + theirs, map[string]any{"name": "mine now"}},
			{"revoke", "DELETE", "/v1/keys/" + theirs, nil},
			{"rotate", "POST", "/v1/keys/" + theirs + "/rotate", map[string]any{"grace": "0s"}},
		} {
			t.Run("a writer cannot "+tc.name+" another owner's key: 404", func(t *testing.T) {
				r := e.send(tc.method, tc.path, writerA, tc.body)
				require.Equal(t, http.StatusNotFound, r.status, "%s", r)
				assert.Equal(t, "not_found", r.code(t))
				unknownPath := strings.Replace(tc.path, theirs, "key_00000000000000000000", 1)
				assert.JSONEq(t, string(r.body), string(e.send(tc.method, unknownPath, writerA, tc.body).body),
					"another owner's key looks exactly like no key")
			})
		}
		k, err := e.store.Get(context.Background(), theirs)
		require.NoError(t, err)
		assert.Equal(t, "b's", k.Name)
		assert.Nil(t, k.RevokedAt)
		assert.Empty(t, k.RotatedTo)
		assert.Nil(t, k.ExpiresAt)

		t.Run("a writer lists only its owner's keys", func(t *testing.T) {
			r := e.send("GET", "/v1/keys", writerA, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			assert.ElementsMatch(t, []string{writerAID, ownA}, listedIDs(t, r))
			r = e.send("GET", "/v1/keys?owner=team-a", writerA, nil)
			assert.ElementsMatch(t, []string{writerAID, ownA}, listedIDs(t, r))
		})
		t.Run("a writer asking for another owner's list is refused", func(t *testing.T) {
			e.rec.AuthFailures()
			r := e.send("GET", "/v1/keys?owner=team-b", writerA, nil)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Equal(t, "permission_denied", r.code(t))
			assert.Contains(t, r.str(t, "error"), "keys:admin")
			requireEscalationAudited(t, e, writerAID, "GET", "/v1/keys")
		})
		t.Run("a writer can do all of it to its own owner's key", func(t *testing.T) {
			assert.Equal(t, http.StatusOK, e.send("GET", "/v1/keys/"+ownA, writerA, nil).status)
			assert.Equal(t, http.StatusOK, e.send("PATCH", "/v1/keys/"+ownA, writerA, `{"name": "renamed"}`).status)
			r := e.send("POST", "/v1/keys/"+ownA+"/rotate", writerA, nil)
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			assert.Equal(t, "team-a", r.str(t, "owner"))
			assert.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+r.str(t, "id"), writerA, nil).status)
		})
		t.Run("malformed and unknown ids are 404 too", func(t *testing.T) {
			for _, id := range []string{"nope", "key_", "key_0000000000000000000!", "KEY_00000000000000000000", "key_00000000000000000000"} {
				r := e.send("GET", "/v1/keys/"+id, e.root, nil)
				require.Equal(t, http.StatusNotFound, r.status, "%s: %s", id, r)
				assert.Equal(t, "not_found", r.code(t))
			}
		})
	})
}

func TestAWriterCannotActWithAMorePowerfulKeysPower(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, _ := e.create(keystore.Spec{Name: "writer", Owner: "team-a", Permissions: []string{"keys:write", "x"}})
		newAdmin := func() string {
			_, id := e.create(keystore.Spec{Name: "team admin", Owner: "team-a", Permissions: []string{"keys:admin"}})
			return id
		}
		t.Run("rotating it would mint the writer an admin key", func(t *testing.T) {
			id := newAdmin()
			r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, nil)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Contains(t, r.str(t, "error"), `"keys:admin"`)
			k, err := e.store.Get(context.Background(), id)
			require.NoError(t, err)
			assert.Empty(t, k.RotatedTo)
		})
		t.Run("extending it is refused", func(t *testing.T) {
			id := newAdmin()
			r := e.send("PATCH", "/v1/keys/"+id, writer, `{"expires_at": null, "ip_allowlist": null}`)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Equal(t, "permission_denied", r.code(t))
		})
		t.Run("reducing it to what the writer could grant is allowed", func(t *testing.T) {
			id := newAdmin()
			r := e.send("PATCH", "/v1/keys/"+id, writer, `{"permissions": ["x"]}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
		})
		t.Run("revoking it is allowed", func(t *testing.T) {
			id := newAdmin()
			assert.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, writer, nil).status)
		})
	})
}

func TestEveryRouteAnswers503WhenTheStoreIsDownAndTheKeyIsNotCached(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		fresh, _ := e.create(keystore.Spec{Name: "never used", Permissions: []string{"keys:admin"}})
		leaked, _ := e.create(keystore.Spec{Name: "leaked", Permissions: []string{"x"}})
		// The root key is cached: with it, the failure comes from the handler.
		require.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", e.root, nil).status)
		_, target := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
		e.breakStore()

		for _, rt := range keyRoutes() {
			path := strings.ReplaceAll(rt.Path, "{id}", target)
			r := e.send(rt.Method, path, fresh, rt.body)
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s: %s", rt.Pattern(), r)
			assert.Equal(t, "unavailable", r.code(t))
			assert.Equal(t, "1", r.header.Get("Retry-After"))
		}
		t.Run("an authenticated caller gets 503 from the store calls", func(t *testing.T) {
			for _, rt := range keyRoutes() {
				if rt.Path == "/v1/openapi.json" {
					continue // no store call
				}
				path := strings.ReplaceAll(rt.Path, "{id}", target)
				r := e.send(rt.Method, path, e.root, rt.body)
				require.Equal(t, http.StatusServiceUnavailable, r.status, "%s: %s", rt.Pattern(), r)
				assert.Equal(t, "unavailable", r.code(t))
			}
		})
		t.Run("a leak report gets 503 so that GitHub sends it again", func(t *testing.T) {
			r := e.report(leakBody(leaked))
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
			assert.Equal(t, "unavailable", r.code(t))
		})
		t.Run("a secret pasted into the path reaches no log", func(t *testing.T) {
			// Authenticating the uncached caller fails on the store. The
			// root is let in while its cache entry is fresh (a secret is no
			// key id: 404), and fails like the other once it is not.
			r := e.send("DELETE", "/v1/keys/"+leaked, fresh, nil)
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
			r = e.send("DELETE", "/v1/keys/"+leaked, e.root, nil)
			require.Contains(t, []int{http.StatusNotFound, http.StatusServiceUnavailable}, r.status, "%s", r)
		})
		assert.Contains(t, e.rec.Logs(), "key store unavailable")
		assert.NotContains(t, e.rec.Logs(), fresh)
		assert.NotContains(t, e.rec.Logs(), leaked)
	})
}

// requireEscalationAudited requires that the one request since the last
// look was audited as a refused escalation by the key callerID.
func requireEscalationAudited(t *testing.T, e *env, callerID, method, route string) {
	t.Helper()
	requireRefusalAudited(t, e, callerID, method, route, true)
}

// requireRefusalAudited is requireEscalationAudited for a caller that holds
// a key the admin API serves (holder) or one without any keys: permission,
// whose refusal is audited with the decisions (not Authenticated).
func requireRefusalAudited(t *testing.T, e *env, callerID, method, route string, holder bool) {
	t.Helper()
	assert.Equal(t, []AuthFailure{{KeyID: callerID, ClientIP: netip.MustParseAddr("127.0.0.1"), Method: method, Route: route,
		UserAgent: "Go-http-client/1.1", Status: http.StatusForbidden, Code: authz.CodePermissionDenied, Authenticated: holder}}, e.rec.AuthFailures(),
		"a refused escalation is audited, naming the key that tried")
}

// An allowlist entry in IPv4-mapped IPv6 form names the IPv4 addresses it
// maps: the caller's address, which the decision reads as IPv4, is in it.
// (Kept as written, a mapped network would hold no address the decision
// ever sees, and the key would be refused from the network it names.)
func TestAnIPv4MappedAllowlistEntryIsItsIPv4Network(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			entry, stored string
			status        int
		}{
			{"::ffff:127.0.0.0/104", "127.0.0.0/8", http.StatusOK},
			{"::ffff:127.0.0.1/128", "127.0.0.1/32", http.StatusOK},
			{"::ffff:127.0.0.1", "127.0.0.1/32", http.StatusOK},
			{"::ffff:203.0.113.0/120", "203.0.113.0/24", http.StatusForbidden},
		} {
			t.Run(tc.entry, func(t *testing.T) {
				r := e.send("POST", "/v1/keys", e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}, "ip_allowlist": []string{tc.entry}})
				require.Equal(t, http.StatusCreated, r.status, "%s", r)
				assert.Equal(t, []any{tc.stored}, r.obj(t)["ip_allowlist"])
				got := e.send("GET", "/v1/keys", r.str(t, "key"), nil)
				require.Equal(t, tc.status, got.status, "%s", got)
				if tc.status == http.StatusForbidden {
					assert.Equal(t, "ip_not_allowed", got.code(t))
				}

				r = e.send("PATCH", "/v1/keys/"+r.str(t, "id"), e.root, map[string]any{"ip_allowlist": []string{tc.entry, "::ffff:192.0.2.0/120"}})
				require.Equal(t, http.StatusOK, r.status, "%s", r)
				assert.Equal(t, []any{tc.stored, "192.0.2.0/24"}, r.obj(t)["ip_allowlist"], "a change reads the entries alike")
			})
		}
		t.Run("a mapped network with host bits set is 400 naming the IPv4 network", func(t *testing.T) {
			r := e.send("POST", "/v1/keys", e.root, map[string]any{"name": "k", "permissions": []string{"x"}, "ip_allowlist": []string{"::ffff:127.0.0.1/104"}})
			require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
			assert.Contains(t, r.str(t, "error"), "did you mean 127.0.0.0/8?")
		})
	})
}

// The address an admin API event names is the one the decision that
// authenticated the call read (authz.Authorizer.ClientIP): one client is one
// address in every audit event, whatever the listener's socket reported.
func TestAnAdminCallNamesThePeerAsTheDecisionReadsIt(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	for _, remote := range []string{"127.0.0.1:4000", "[::ffff:127.0.0.1]:4000", "[fe80::1%eth0]:4000", "[2001:db8::1]:4000", "unix"} {
		t.Run(remote, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/v1/keys", nil)
			r.RemoteAddr = remote
			req := forwardauth.NewRequest(r, 0)
			assert.Equal(t, e.opts.Authz.ClientIP(&req), callOf(r, route{}).ClientIP)
		})
	}
}
