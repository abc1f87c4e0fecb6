package admin

import (
	"context"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// A change refused for a conflict (409) is, but for key_changed, an attempt
// at more than the caller may have: one more live key than
// keys.max_per_owner, a revoked or rotated-away key given a new life, a
// writer's second rotation of a line while its first is in grace. Like a
// 403, it is audited, naming the key that tried and the code it got, and
// it changes nothing.
func TestAChangeRefusedAsAConflictIsAudited(t *testing.T) {
	forEachBackend(t, envOptions{maxPerOwner: 3}, func(t *testing.T, e *env) {
		writer, writerID := e.create(keystore.Spec{Name: "writer", Owner: "team-a", Permissions: []string{"keys:write", "x"}})
		_, rotated := e.newKey(writer, map[string]any{"name": "rotated", "permissions": []string{"x"}})
		r := e.send("POST", "/v1/keys/"+rotated+"/rotate", writer, map[string]any{"grace": "1h"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		successor := r.str(t, "id")
		_, revoked := e.newKey(writer, map[string]any{"name": "revoked", "permissions": []string{"x"}})
		require.Equal(t, http.StatusOK, e.send("DELETE", "/v1/keys/"+revoked, writer, nil).status)
		_, expiring := e.newKey(writer, map[string]any{"name": "expiring", "permissions": []string{"x"}, "ttl": "1m"})
		e.clock.Advance(2 * time.Minute)
		// team-a: the writer, the successor and one more live key.
		e.newKey(writer, map[string]any{"name": "third", "permissions": []string{"x"}})
		e.rec.AuthFailures()

		later := e.clock.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		for _, tc := range []struct {
			name, method, path, route string
			body                      any
			code                      authz.Code
		}{
			{"a create past keys.max_per_owner", "POST", "/v1/keys", "/v1/keys",
				map[string]any{"name": "one too many", "permissions": []string{"x"}}, codeKeyLimit},
			{"reviving an expired key past keys.max_per_owner", "PATCH", "/v1/keys/" + expiring, "/v1/keys/{id}",
				map[string]any{"expires_at": later}, codeKeyLimit},
			{"changing a revoked key", "PATCH", "/v1/keys/" + revoked, "/v1/keys/{id}",
				map[string]any{"name": "back"}, codeNotLive},
			{"changing a rotated-away key", "PATCH", "/v1/keys/" + rotated, "/v1/keys/{id}",
				map[string]any{"name": "back"}, codeNotLive},
			{"rotating a revoked key", "POST", "/v1/keys/" + revoked + "/rotate", "/v1/keys/{id}/rotate",
				map[string]any{"grace": "0s"}, codeNotLive},
			{"a writer's second rotation of a line in grace", "POST", "/v1/keys/" + successor + "/rotate", "/v1/keys/{id}/rotate",
				map[string]any{"grace": "1h"}, codeRotationPending},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := e.send(tc.method, tc.path, writer, tc.body)
				require.Equal(t, http.StatusConflict, r.status, "%s", r)
				assert.Equal(t, string(tc.code), r.code(t))
				assert.Equal(t, []AuthFailure{{KeyID: writerID, ClientIP: netip.MustParseAddr("127.0.0.1"), Method: tc.method, Route: tc.route,
					UserAgent: "Go-http-client/1.1", Status: http.StatusConflict, Code: tc.code, Authenticated: true}}, e.rec.AuthFailures(),
					"the refused change is audited, naming the key that tried")
			})
		}
		for _, id := range []string{revoked, rotated, expiring} {
			k, err := e.store.Get(context.Background(), id)
			require.NoError(t, err)
			assert.NotEqual(t, "back", k.Name)
			if id != rotated { // in its grace period, which nothing moved
				assert.NotEqual(t, keystore.Live, k.StatusAt(e.clock.Now()), "%s stays dead", k.Name)
			}
		}
		k, err := e.store.Get(context.Background(), successor)
		require.NoError(t, err)
		assert.Empty(t, k.RotatedTo)
	})
}
