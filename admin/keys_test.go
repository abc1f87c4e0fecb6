package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// timeField parses an RFC 3339 field of a JSON object answer (nil for null).
func timeField(t *testing.T, r response, field string) *time.Time {
	t.Helper()
	v := r.obj(t)[field]
	if v == nil {
		return nil
	}
	ts, err := time.Parse(time.RFC3339Nano, v.(string))
	require.NoError(t, err)
	return &ts
}

func near(t *testing.T, want time.Time, got *time.Time) {
	t.Helper()
	require.NotNil(t, got)
	assert.WithinDuration(t, want, *got, 5*time.Second)
}

func TestAKeyGoesThroughItsWholeLifeOverTheAPI(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		// Create.
		r := e.send("POST", "/v1/keys", e.root, map[string]any{
			"name": "billing", "permissions": []string{"read:users", "write:users"}, "owner": "team-a",
			"rate_limit": "100/m", "ip_allowlist": []string{"10.0.0.0/8", "2001:db8::1"}, "ttl": "24h",
		})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		created := r.obj(t)
		id, secret := created["id"].(string), created["key"].(string)
		assert.True(t, keystore.ValidID(id))
		assert.NoError(t, e.manager.Format.Check(secret))
		assert.True(t, strings.HasPrefix(secret, "sk_"))
		assert.Equal(t, "/v1/keys/"+id, r.header.Get("Location"))
		assert.Equal(t, "no-store", r.header.Get("Cache-Control"))
		assert.Equal(t, "billing", created["name"])
		assert.Equal(t, "team-a", created["owner"])
		assert.Equal(t, []any{"read:users", "write:users"}, created["permissions"])
		assert.Equal(t, "100/m", created["rate_limit"])
		assert.Equal(t, []any{"10.0.0.0/8", "2001:db8::1/128"}, created["ip_allowlist"])
		near(t, e.clock.Now().Add(24*time.Hour), timeField(t, r, "expires_at"))
		near(t, e.clock.Now(), timeField(t, r, "created_at"))
		assert.Nil(t, created["revoked_at"])

		// Show: the same record, without the secret.
		r = e.send("GET", "/v1/keys/"+id, e.root, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		shown := r.obj(t)
		assert.NotContains(t, shown, "key")
		delete(created, "key")
		assert.Equal(t, created, shown)

		// List.
		r = e.send("GET", "/v1/keys?owner=team-a", e.root, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Equal(t, []string{id}, listedIDs(t, r))

		// Change every field; null clears what can be cleared.
		r = e.send("PATCH", "/v1/keys/"+id, e.root, map[string]any{
			"name": "billing v2", "permissions": []string{"read:users"}, "rate_limit": "none",
			"ip_allowlist": nil, "expires_at": nil,
		})
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		changed := r.obj(t)
		assert.Equal(t, "billing v2", changed["name"])
		assert.Equal(t, []any{"read:users"}, changed["permissions"])
		assert.Equal(t, "none", changed["rate_limit"])
		assert.Equal(t, []any{}, changed["ip_allowlist"])
		assert.Nil(t, changed["expires_at"])

		// Rotate with a grace period.
		r = e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		rotated := r.obj(t)
		newID, newSecret := rotated["id"].(string), rotated["key"].(string)
		assert.NotEqual(t, id, newID)
		assert.NotEqual(t, secret, newSecret)
		assert.Equal(t, id, rotated["rotated_from"])
		assert.Equal(t, "billing v2", rotated["name"])
		assert.Equal(t, "/v1/keys/"+newID, r.header.Get("Location"))
		r = e.send("GET", "/v1/keys/"+id, e.root, nil)
		assert.Equal(t, newID, r.str(t, "rotated_to"))
		near(t, e.clock.Now().Add(time.Hour), timeField(t, r, "expires_at"))

		// Revoke, twice: the same answer, one audit event.
		r = e.send("DELETE", "/v1/keys/"+newID, e.root, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		revokedAt := timeField(t, r, "revoked_at")
		near(t, e.clock.Now(), revokedAt)
		r = e.send("DELETE", "/v1/keys/"+newID, e.root, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Equal(t, revokedAt, timeField(t, r, "revoked_at"))

		// Every change was audited with the caller's key id as actor.
		var mine []change
		for _, c := range e.rec.Changes() {
			if c.keyID == id || c.keyID == newID {
				mine = append(mine, c)
			}
		}
		assert.Equal(t, []change{
			{keystore.ChangeCreated, id, "team-a", e.rootID, ""},
			{keystore.ChangeUpdated, id, "team-a", e.rootID, ""},
			{keystore.ChangeRotated, newID, "team-a", e.rootID, id},
			{keystore.ChangeRevoked, newID, "team-a", e.rootID, id},
		}, mine)
	})
}

func listedIDs(t *testing.T, r response) []string {
	t.Helper()
	var page struct {
		Keys []struct {
			ID string `json:"id"`
		} `json:"keys"`
	}
	require.NoError(t, json.Unmarshal(r.body, &page))
	ids := []string{}
	for _, k := range page.Keys {
		ids = append(ids, k.ID)
	}
	return ids
}

func TestTheSecretIsShownOnlyByCreateAndRotate(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		secret, id := e.newKey(e.root, map[string]any{"name": "s", "permissions": []string{"keys:read"}, "owner": "o"})
		r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "0s"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		rotatedSecret, newID := r.str(t, "key"), r.str(t, "id")
		require.NotEmpty(t, rotatedSecret)

		hashes := []string{e.manager.Hasher.Hash(secret).String(), e.manager.Hasher.Hash(rotatedSecret).String()}
		for _, r := range []response{
			e.send("GET", "/v1/keys/"+id, e.root, nil),
			e.send("GET", "/v1/keys/"+newID, e.root, nil),
			e.send("GET", "/v1/keys?include_revoked=true", e.root, nil),
			e.send("GET", "/v1/keys?owner=o&include_revoked=true", e.root, nil),
			e.send("PATCH", "/v1/keys/"+newID, e.root, map[string]any{"name": "renamed"}),
			e.send("DELETE", "/v1/keys/"+newID, e.root, nil),
		} {
			require.Less(t, r.status, 300, "%s", r)
			for _, s := range append([]string{secret, rotatedSecret}, hashes...) {
				assert.NotContains(t, string(r.body), s)
			}
			assert.NotContains(t, string(r.body), `"key":`)
			assert.NotContains(t, string(r.body), `hash`)
		}
		for _, s := range []string{secret, rotatedSecret} {
			assert.NotContains(t, e.rec.Logs(), s)
		}
	})
}

func TestACreatedKeyAuthenticatesAtOnce(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		reader, _ := e.newKey(e.root, map[string]any{"name": "reader", "permissions": []string{"keys:read"}})
		r := e.send("GET", "/v1/keys", reader, nil)
		assert.Equal(t, http.StatusOK, r.status, "%s", r)
	})
}

func TestARevokedKeyIsRefusedByTheSameServerWithinASecond(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		reader, id := e.newKey(e.root, map[string]any{"name": "reader", "permissions": []string{"keys:read"}})
		require.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", reader, nil).status) // now cached

		require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, e.root, nil).status)
		var r response
		eventually(t, "the revoked key answers 401 revoked_key", func() bool {
			r = e.send("GET", "/v1/keys", reader, nil)
			return r.status == http.StatusUnauthorized
		})
		assert.Equal(t, "revoked_key", r.code(t))
		assert.Contains(t, r.header.Get("WWW-Authenticate"), `error="invalid_token"`)
	})
}

func TestAKeyMayRevokeItself(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, id := e.newKey(e.root, map[string]any{"name": "w", "permissions": []string{"keys:write"}, "owner": "a"})
		r := e.send("DELETE", "/v1/keys/"+id, writer, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Contains(t, e.rec.Changes(), change{keystore.ChangeRevoked, id, "a", id, ""})
	})
}

func TestRotation(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		t.Run("the old key works through the grace period and expires after it", func(t *testing.T) {
			old, id := e.newKey(e.root, map[string]any{"name": "r", "permissions": []string{"keys:read"}})
			r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			fresh := r.str(t, "key")
			time.Sleep(300 * time.Millisecond) // let the change reach the cache
			assert.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", old, nil).status)
			assert.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", fresh, nil).status)

			e.clock.Advance(time.Hour + time.Second)
			r = e.send("GET", "/v1/keys", old, nil)
			require.Equal(t, http.StatusUnauthorized, r.status, "%s", r)
			assert.Equal(t, "expired_key", r.code(t))
			assert.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", fresh, nil).status)
		})
		t.Run("a grace of 0s stops the old key at once", func(t *testing.T) {
			old, id := e.newKey(e.root, map[string]any{"name": "r", "permissions": []string{"keys:read"}})
			require.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", old, nil).status)
			r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "0s"})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			eventually(t, "the old key answers expired_key", func() bool {
				r = e.send("GET", "/v1/keys", old, nil)
				return r.status == http.StatusUnauthorized && r.code(t) == "expired_key"
			})
		})
		t.Run("an empty body rotates with the default grace of 24h", func(t *testing.T) {
			_, id := e.newKey(e.root, map[string]any{"name": "r", "permissions": []string{"x"}})
			for _, body := range []any{nil, "", "{}", `{"grace": null}`} {
				r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, body)
				require.Equal(t, http.StatusCreated, r.status, "%s", r)
				r = e.send("GET", "/v1/keys/"+id, e.root, nil)
				near(t, e.clock.Now().Add(DefaultGrace), timeField(t, r, "expires_at"))
				id = r.str(t, "rotated_to")
			}
		})
		t.Run("a revoked key cannot be rotated", func(t *testing.T) {
			_, id := e.newKey(e.root, map[string]any{"name": "r", "permissions": []string{"x"}})
			require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, e.root, nil).status)
			r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, nil)
			require.Equal(t, http.StatusConflict, r.status, "%s", r)
			assert.Equal(t, "not_live", r.code(t))
		})
		t.Run("a rotation sent again names the key the first one made", func(t *testing.T) {
			// A client whose rotation timed out sends it again: the new
			// key's secret was in the answer it lost, so the refusal must
			// name that key, the one it can rotate for a secret it holds.
			writer, _ := e.newKey(e.root, map[string]any{"name": "w", "owner": "team-r", "permissions": []string{"keys:write", "x"}})
			_, id := e.newKey(writer, map[string]any{"name": "r", "permissions": []string{"x"}})
			r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, map[string]any{"grace": "1h"})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			next := r.str(t, "id")
			for _, caller := range []string{writer, e.root} {
				r = e.send("POST", "/v1/keys/"+id+"/rotate", caller, map[string]any{"grace": "1h"})
				require.Equal(t, http.StatusConflict, r.status, "%s", r)
				assert.Equal(t, "not_live", r.code(t))
				assert.Contains(t, r.str(t, "error"), "rotated already, to "+next)
			}
			// Another owner's key is still 404, rotated or not.
			other, _ := e.newKey(e.root, map[string]any{"name": "o", "owner": "team-o", "permissions": []string{"keys:write", "x"}})
			r = e.send("POST", "/v1/keys/"+id+"/rotate", other, nil)
			require.Equal(t, http.StatusNotFound, r.status, "%s", r)
			assert.NotContains(t, string(r.body), next)

			// What the answer says to do works for the writer, and a
			// revoked key names no successor.
			require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+id, writer, nil).status)
			r = e.send("POST", "/v1/keys/"+next+"/rotate", writer, map[string]any{"grace": "0s"})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			r = e.send("POST", "/v1/keys/"+id+"/rotate", e.root, nil)
			require.Equal(t, http.StatusConflict, r.status, "%s", r)
			assert.NotContains(t, r.str(t, "error"), "rotated already")
		})
		t.Run("an expired key cannot be rotated", func(t *testing.T) {
			_, id := e.newKey(e.root, map[string]any{"name": "r", "permissions": []string{"x"}, "ttl": "1m"})
			e.clock.Advance(2 * time.Minute)
			r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, nil)
			require.Equal(t, http.StatusConflict, r.status, "%s", r)
			assert.Equal(t, "not_live", r.code(t))
		})
		t.Run("a rotated key keeps its expiry when that is earlier than the grace", func(t *testing.T) {
			_, id := e.newKey(e.root, map[string]any{"name": "r", "permissions": []string{"x"}, "ttl": "10m"})
			r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, map[string]any{"grace": "1h"})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			r = e.send("GET", "/v1/keys/"+id, e.root, nil)
			near(t, e.clock.Now().Add(10*time.Minute), timeField(t, r, "expires_at"))
		})
	})
}

func TestTheKeyLimitPerOwner(t *testing.T) {
	forEachBackend(t, envOptions{maxPerOwner: 3}, func(t *testing.T, e *env) {
		var ids []string
		for i := range 3 {
			_, id := e.newKey(e.root, map[string]any{"name": fmt.Sprint("k", i), "permissions": []string{"x"}, "owner": "capped"})
			ids = append(ids, id)
		}
		body := map[string]any{"name": "one too many", "permissions": []string{"x"}, "owner": "capped"}
		r := e.send("POST", "/v1/keys", e.root, body)
		require.Equal(t, http.StatusConflict, r.status, "%s", r)
		assert.Equal(t, "key_limit_reached", r.code(t))

		// Another owner is not affected.
		e.newKey(e.root, map[string]any{"name": "elsewhere", "permissions": []string{"x"}, "owner": "other"})

		// Rotation at the limit works: the key rotated away stops counting...
		r = e.send("POST", "/v1/keys/"+ids[0]+"/rotate", e.root, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		r = e.send("POST", "/v1/keys", e.root, body)
		require.Equal(t, http.StatusConflict, r.status, "the new key counts instead: %s", r)

		// ...so after one revocation there is room, although the rotated-away
		// key still works through its grace period.
		require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+ids[1], e.root, nil).status)
		r = e.send("POST", "/v1/keys", e.root, body)
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		old, err := e.store.Get(context.Background(), ids[0])
		require.NoError(t, err)
		assert.Equal(t, keystore.Live, old.StatusAt(e.clock.Now()))
	})
}

func TestListingPagesThroughEveryKeyExactlyOnce(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		var want []string
		for i := range 25 {
			_, id := e.newKey(e.root, map[string]any{"name": fmt.Sprint("k", i), "permissions": []string{"x"}, "owner": "paged"})
			want = append(want, id)
		}
		var got []string
		var sizes []int
		cursor := ""
		for page := 0; ; page++ {
			require.Less(t, page, 10, "pagination does not end")
			r := e.send("GET", "/v1/keys?owner=paged&limit=10&cursor="+cursor, e.root, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			ids := listedIDs(t, r)
			got = append(got, ids...)
			sizes = append(sizes, len(ids))
			next, has := r.obj(t)["next_cursor"]
			if !has {
				break
			}
			cursor = next.(string)
			require.NotEmpty(t, cursor)
		}
		assert.Equal(t, []int{10, 10, 5}, sizes)
		slices.Sort(want) // ids order by creation to the millisecond, then at random
		assert.Equal(t, want, got, "every key once, in id order")

		r := e.send("GET", "/v1/keys?owner=paged", e.root, nil)
		assert.Len(t, listedIDs(t, r), 25, "the default limit (100) takes them all")
		assert.NotContains(t, r.obj(t), "next_cursor")
		r = e.send("GET", "/v1/keys?owner=nobody", e.root, nil)
		require.Equal(t, http.StatusOK, r.status)
		assert.JSONEq(t, `{"keys": []}`, string(r.body))
		r = e.send("GET", "/v1/keys?owner=paged&limit=1000", e.root, nil)
		assert.Equal(t, http.StatusOK, r.status, "1000 is allowed")
	})
}

func TestListingHidesRevokedAndExpiredKeysUnlessAsked(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, live := e.newKey(e.root, map[string]any{"name": "live", "permissions": []string{"x"}, "owner": "o"})
		_, revoked := e.newKey(e.root, map[string]any{"name": "revoked", "permissions": []string{"x"}, "owner": "o"})
		_, expiring := e.newKey(e.root, map[string]any{"name": "expiring", "permissions": []string{"x"}, "owner": "o", "ttl": "1m"})
		require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+revoked, e.root, nil).status)
		e.clock.Advance(2 * time.Minute)

		for query, want := range map[string][]string{
			"owner=o":                       {live},
			"owner=o&include_revoked=false": {live},
			"owner=o&include_revoked=true":  {live, revoked, expiring},
		} {
			r := e.send("GET", "/v1/keys?"+query, e.root, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			slices.Sort(want)
			assert.Equal(t, want, listedIDs(t, r), query)
		}
	})
}

func TestListingRefusesBadParameters(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name, query, field string
		}{
			{"a limit over 1000 is refused", "limit=1001", "limit"},
			{"a limit of 0 is refused", "limit=0", "limit"},
			{"a negative limit is refused", "limit=-5", "limit"},
			{"a limit that is not a number is refused", "limit=ten", "limit"},
			{"include_revoked must be a boolean", "include_revoked=maybe", "include_revoked"},
			{"include_revoked is true or false, spelt so", "include_revoked=1", "include_revoked"},
			{"include_revoked is true or false, in lower case", "include_revoked=TRUE", "include_revoked"},
			{"an empty include_revoked is refused", "include_revoked=", "include_revoked"},
			{"a limit with a sign is refused", "limit=%2B5", "limit"},
			{"a limit with a leading zero is refused", "limit=05", "limit"},
			{"an empty limit is refused", "limit=", "limit"},
			{"an empty owner is refused, not taken for every owner", "owner=", "owner"},
			{"a cursor must come from next_cursor", "cursor=page2", "cursor"},
			{"a bad owner is refused", "owner=a%20b", "owner"},
			{"a parameter given twice is refused", "limit=1&limit=2", "limit"},
			{"an unknown parameter is refused", "colour=red", `"colour"`},
			{"a malformed query is refused", "limit=%zz", "query"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := e.send("GET", "/v1/keys?"+tc.query, e.root, nil)
				require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
				assert.Equal(t, "bad_request", r.code(t))
				assert.Contains(t, r.str(t, "error"), tc.field)
			})
		}
		t.Run("the api_key parameter is a credential, not an unknown parameter", func(t *testing.T) {
			r := e.send("GET", "/v1/keys?limit=5&api_key="+e.root, "", nil)
			assert.Equal(t, http.StatusOK, r.status, "%s", r)
		})
	})
}

func TestUpdatingAKey(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		future := e.clock.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
		for _, tc := range []struct {
			name  string
			patch string
			check func(t *testing.T, k map[string]any)
		}{
			{"the name changes alone", `{"name": "new name"}`, func(t *testing.T, k map[string]any) {
				assert.Equal(t, "new name", k["name"])
				assert.Equal(t, "100/m", k["rate_limit"], "the rest stays")
				assert.Equal(t, []any{"10.0.0.0/8"}, k["ip_allowlist"])
			}},
			{"permissions are replaced", `{"permissions": ["a", "b"]}`, func(t *testing.T, k map[string]any) {
				assert.Equal(t, []any{"a", "b"}, k["permissions"])
			}},
			{"a rate limit is set", `{"rate_limit": "5/s"}`, func(t *testing.T, k map[string]any) {
				assert.Equal(t, "5/s", k["rate_limit"])
			}},
			{"a null rate limit returns to the default", `{"rate_limit": null}`, func(t *testing.T, k map[string]any) {
				assert.Nil(t, k["rate_limit"])
			}},
			{"the allowlist is replaced", `{"ip_allowlist": ["192.168.0.0/16", "::1"]}`, func(t *testing.T, k map[string]any) {
				assert.Equal(t, []any{"192.168.0.0/16", "::1/128"}, k["ip_allowlist"])
			}},
			{"an empty allowlist allows any address", `{"ip_allowlist": []}`, func(t *testing.T, k map[string]any) {
				assert.Equal(t, []any{}, k["ip_allowlist"])
			}},
			{"an expiry is set", `{"expires_at": "` + future.Format(time.RFC3339) + `"}`, func(t *testing.T, k map[string]any) {
				assert.Equal(t, future.Format(time.RFC3339), k["expires_at"])
			}},
			{"a null expiry means never", `{"expires_at": null}`, func(t *testing.T, k map[string]any) {
				assert.Nil(t, k["expires_at"])
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, id := e.newKey(e.root, map[string]any{
					"name": "k", "permissions": []string{"x"}, "rate_limit": "100/m", "ip_allowlist": []string{"10.0.0.0/8"}, "ttl": "1h",
				})
				r := e.send("PATCH", "/v1/keys/"+id, e.root, tc.patch)
				require.Equal(t, http.StatusOK, r.status, "%s", r)
				tc.check(t, r.obj(t))
				shown := e.send("GET", "/v1/keys/"+id, e.root, nil)
				assert.JSONEq(t, string(r.body), string(shown.body), "the change is stored")
			})
		}
		t.Run("an expired key comes back when its expiry moves into the future", func(t *testing.T) {
			reader, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}, "ttl": "1m"})
			e.clock.Advance(2 * time.Minute)
			r := e.send("GET", "/v1/keys", reader, nil)
			require.Equal(t, "expired_key", r.code(t))
			require.Equal(t, http.StatusOK, e.send("PATCH", "/v1/keys/"+id, e.root, `{"expires_at": null}`).status)
			eventually(t, "the key works again", func() bool {
				return e.send("GET", "/v1/keys", reader, nil).status == http.StatusOK
			})
		})
		t.Run("a narrowed allowlist locks the key out", func(t *testing.T) {
			reader, id := e.newKey(e.root, map[string]any{"name": "k", "permissions": []string{"keys:read"}})
			require.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", reader, nil).status)
			require.Equal(t, http.StatusOK, e.send("PATCH", "/v1/keys/"+id, e.root, `{"ip_allowlist": ["203.0.113.0/24"]}`).status)
			var r response
			eventually(t, "the key answers ip_not_allowed from 127.0.0.1", func() bool {
				r = e.send("GET", "/v1/keys", reader, nil)
				return r.status == http.StatusForbidden
			})
			assert.Equal(t, "ip_not_allowed", r.code(t))
		})
	})
}

func TestTheAuditActorIsTheCallersKey(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, writerID := e.newKey(e.root, map[string]any{"name": "w", "permissions": []string{"keys:write", "x"}, "owner": "team"})
		_, id := e.newKey(writer, map[string]any{"name": "k", "permissions": []string{"x"}})
		require.Equal(t, http.StatusOK, e.send("PATCH", "/v1/keys/"+id, writer, `{"name": "k2"}`).status)
		r := e.send("POST", "/v1/keys/"+id+"/rotate", writer, nil)
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		newID := r.str(t, "id")
		require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+newID, writer, nil).status)

		var kinds []string
		for _, c := range e.rec.Changes() {
			if c.keyID == id || c.keyID == newID {
				assert.Equal(t, writerID, c.actor, "%+v", c)
				assert.Equal(t, "team", c.owner)
				kinds = append(kinds, c.kind)
			}
		}
		assert.Equal(t, []string{keystore.ChangeCreated, keystore.ChangeUpdated, keystore.ChangeRotated, keystore.ChangeRevoked}, kinds)
		assert.True(t, slices.ContainsFunc(e.rec.Changes(), func(c change) bool {
			return c.keyID == writerID && c.actor == e.rootID
		}))
	})
}

func TestAServerWithAnotherPepperMakesNoKey(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		// A second server on the same store, whose pepper for new keys is
		// not the one the store's keys were made with (the root key, made
		// under the right one, still authenticates through the decision).
		opts := e.opts
		opts.Manager = &keystore.Manager{Store: e.store, Hasher: keystore.NewHasher([]byte("test peppe")), Format: e.manager.Format, Now: e.clock.Now}
		opts.Leaks = nil
		srv := httptest.NewServer(New(opts))
		t.Cleanup(srv.Close)
		wrong := *e
		wrong.url = srv.URL

		before, _, err := e.store.List(t.Context(), keystore.ListOptions{IncludeRevoked: true, Limit: 1000})
		require.NoError(t, err)
		r := wrong.send("POST", "/v1/keys", e.root, map[string]any{"name": "unfindable", "permissions": []string{"read:users"}})
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
		assert.Contains(t, r.String(), "another pepper")
		assert.NotContains(t, r.String(), `"key"`, "no secret in the refusal")
		r = wrong.send("POST", "/v1/keys/"+e.rootID+"/rotate", e.root, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
		after, _, err := e.store.List(t.Context(), keystore.ListOptions{IncludeRevoked: true, Limit: 1000})
		require.NoError(t, err)
		assert.Equal(t, len(before), len(after), "nothing made")
		root, err := e.store.Get(t.Context(), e.rootID)
		require.NoError(t, err)
		assert.Empty(t, root.RotatedTo, "the root key was not rotated")
		assert.Contains(t, e.rec.Logs(), "hashing pepper differs")

		// The server with the store's pepper still makes keys.
		r = e.send("POST", "/v1/keys", e.root, map[string]any{"name": "findable", "permissions": []string{"read:users"}})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
	})
}

// An operator reads the admin API with curl in a terminal: a record
// written before labels were checked, or straight into the store, comes
// back with its controls, bidirectional overrides and invisible characters
// as \u escapes, and reads back as stored.
func TestAStoredRecordsInvisibleCharactersAreEscapedInTheAnswer(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	now := time.Now().UTC()
	id, err := keystore.NewID(now)
	require.NoError(t, err)
	name := "pay\u202eroll\u009b2J\u200b\U000E0041"
	require.NoError(t, e.store.Create(context.Background(), &keystore.Key{ID: id, Name: name, Owner: "team",
		Permissions: []string{"read"}, CreatedAt: now}, keystore.NewHasher([]byte("test pepper")).Hash("old"), 0))

	for _, path := range []string{"/v1/keys/" + id, "/v1/keys?owner=team"} {
		r := e.send("GET", path, e.root, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Contains(t, string(r.body), `pay\u202eroll\u009b2J\u200b\udb40\udc41`, path)
		for _, c := range r.body {
			require.Less(t, c, byte(0x7f), "%s: a byte past ASCII in %s", path, r.body)
		}
	}
	assert.Equal(t, name, e.send("GET", "/v1/keys/"+id, e.root, nil).str(t, "name"), "reads back as stored")
}
