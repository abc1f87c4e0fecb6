package admin

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// replica is a second admin API on e's store, whose cache has not yet heard
// of the changes made elsewhere (its change feed lags, as it may for up to a
// second): what a caller meets on another server right after an operator
// revoked or narrowed its key through the first, or the CLI.
func (e *env) replica(t *testing.T) *env {
	t.Helper()
	cache := keystore.NewCache(e.store, keystore.CacheOptions{Now: e.clock.Now})
	opts := e.opts
	opts.Authz = authz.NewAuthorizer(e.opts.Authz.Policies(), cache, e.manager.Hasher, nil, e.clock.Now)
	srv := httptest.NewServer(New(opts))
	t.Cleanup(srv.Close)
	r := *e
	r.url, r.cache = srv.URL, cache
	return &r
}

// The cache answers a decision for up to a second after a key changed, but
// a change to keys is made on the store, which knows better: a key revoked,
// expired or narrowed there makes no change through a server whose cache
// has not heard of it yet. Otherwise a writer revoked as stolen would mint
// keys, or rotate its owner's keys for their secrets, after its revocation
// was answered, and a writer whose expiry an operator brought forward would
// still make keys that outlive the new one.
func TestAChangeIsMadeOnlyByAKeyLiveInTheStore(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		b := e.replica(t)
		later := func(d time.Duration) string { return e.clock.Now().Add(d).UTC().Format(time.RFC3339) }
		newWriter := func() (string, string) {
			return e.create(keystore.Spec{Name: "writer", Owner: "team-a", Permissions: []string{"keys:write", "x"}})
		}
		warm := func(secret string) { // the replica caches the key as it was
			require.Equal(t, http.StatusOK, b.send("GET", "/v1/keys", secret, nil).status)
		}
		_, target := e.create(keystore.Spec{Name: "target", Owner: "team-a", Permissions: []string{"x"}})

		t.Run("revoked", func(t *testing.T) {
			w, wID := newWriter()
			warm(w)
			_, err := e.manager.Revoke(context.Background(), wID, "cli")
			require.NoError(t, err)
			e.rec.AuthFailures()
			for _, c := range []struct {
				method, path string
				body         any
			}{
				{"POST", "/v1/keys", map[string]any{"name": "after", "permissions": []string{"x"}}},
				{"POST", "/v1/keys/" + target + "/rotate", map[string]any{"grace": "1h"}},
				{"PATCH", "/v1/keys/" + target, map[string]any{"name": "after"}},
			} {
				r := b.send(c.method, c.path, w, c.body)
				require.Equal(t, http.StatusUnauthorized, r.status, "%s %s: %s", c.method, c.path, r)
				assert.Equal(t, "revoked_key", r.code(t))
			}
			failures := e.rec.AuthFailures()
			assert.Len(t, failures, 3, "each refused and audited")
			for _, f := range failures {
				assert.True(t, f.Authenticated, "refused after the key was authenticated (by the replica's cache) and counted: %+v", f)
			}
			k := e.stored(target)
			assert.Equal(t, "target", k.Name)
			assert.Empty(t, k.RotatedTo)
			// Revoking takes power away: a revoked key may still not.
			r := b.send("DELETE", "/v1/keys/"+target, w, nil)
			require.Equal(t, http.StatusUnauthorized, r.status, "%s", r)
			assert.Nil(t, e.stored(target).RevokedAt)
		})
		t.Run("narrowed", func(t *testing.T) {
			w, wID := newWriter()
			warm(w)
			soon := e.clock.Now().Add(time.Hour)
			exp := &soon
			_, err := e.manager.Update(context.Background(), wID, keystore.Patch{ExpiresAt: &exp}, nil, "cli")
			require.NoError(t, err)
			r := b.send("POST", "/v1/keys", w, map[string]any{"name": "outlives", "permissions": []string{"x"}, "expires_at": later(2 * time.Hour)})
			require.Equal(t, http.StatusForbidden, r.status, "the writer's bound is its stored expiry: %s", r)
			assert.Equal(t, "permission_denied", r.code(t))
			r = b.send("POST", "/v1/keys", w, map[string]any{"name": "within", "permissions": []string{"x"}, "expires_at": later(time.Minute)})
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
		})
		t.Run("moved off its address", func(t *testing.T) {
			w, wID := newWriter()
			warm(w)
			allow := mustCIDRs(t, "203.0.113.0/24")
			_, err := e.manager.Update(context.Background(), wID, keystore.Patch{IPAllowlist: &allow}, nil, "cli")
			require.NoError(t, err)
			e.rec.AuthFailures()
			r := b.send("POST", "/v1/keys", w, map[string]any{"name": "after", "permissions": []string{"x"}})
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.Equal(t, "ip_not_allowed", r.code(t))
			failures := e.rec.AuthFailures()
			if assert.Len(t, failures, 1) {
				assert.True(t, failures[0].Authenticated, "refused on its stored record, after it was authenticated and counted")
			}
		})
	})
}

// A caller whose stored record a newer version restricted in a way this one
// cannot read (its "requires") makes no change here, as no check of it is
// decided here: the cache that authenticated it may not have heard of the
// change yet, and a change made by the rest of the record would be made by
// a key with a restriction nobody enforced (a writer bound to a network
// this version does not know of would mint keys free of it). The decision
// answers such a key 503 unavailable, and so does the change.
func TestAChangeIsNotMadeByACallerThatNeedsANewerVersion(t *testing.T) {
	srv := redistest.Start(t)
	e := newEnv(t, backend{"redis", func(t testing.TB) (keystore.Store, func()) { return openRedis(t, srv) }}, envOptions{})
	b := e.replica(t)
	w, wID := e.create(keystore.Spec{Name: "writer", Owner: "team-a", Permissions: []string{"keys:write", "x"}})
	_, target := e.create(keystore.Spec{Name: "target", Owner: "team-a", Permissions: []string{"x"}})
	require.Equal(t, http.StatusOK, b.send("GET", "/v1/keys", w, nil).status) // the replica caches the writer as it was

	recKey := "admintest:{keys}:h:" + e.manager.Hasher.Hash(w).String()
	stored, err := srv.QueryString("GET", recKey)
	require.NoError(t, err)
	_, err = srv.Query("SET", recKey, strings.TrimSuffix(stored, "}")+`,"requires":["bound_to"],"bound_to":{"cidr":"10.0.0.0/8"}}`)
	require.NoError(t, err)
	e.rec.AuthFailures()

	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/v1/keys", map[string]any{"name": "free of it", "permissions": []string{"x"}}},
		{"POST", "/v1/keys/" + target + "/rotate", map[string]any{"grace": "1h"}},
		{"PATCH", "/v1/keys/" + target, map[string]any{"name": "after"}},
		{"DELETE", "/v1/keys/" + target, nil},
	} {
		r := b.send(c.method, c.path, w, c.body)
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s %s: %s", c.method, c.path, r)
		assert.Equal(t, "unavailable", r.code(t))
		assert.Contains(t, r.str(t, "error"), "needs a newer version of extauthz")
	}
	assert.Empty(t, e.rec.AuthFailures(), "not the caller's fault: nothing to audit, as for the decision")
	k := e.stored(target)
	assert.Equal(t, "target", k.Name)
	assert.Empty(t, k.RotatedTo)
	assert.Nil(t, k.RevokedAt)
	list, _, err := e.store.List(context.Background(), keystore.ListOptions{Owner: "team-a", Now: e.clock.Now()})
	require.NoError(t, err)
	assert.Len(t, list, 2, "no key made")

	// The admin API still changes such a key for a caller that may.
	r := e.send("PATCH", "/v1/keys/"+wID, e.root, map[string]any{"name": "renamed"})
	require.Equal(t, http.StatusOK, r.status, "%s", r)
}
