package admin

import (
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// A key in its grace period does not count against keys.max_per_owner
// while its successor does: the line counts once. Once the successor stops
// counting (revoked, or expired after its expiry was moved earlier), the
// old key, still live, must count again; otherwise create, rotate with a
// long grace, revoke the new key, and again, would give an owner any number
// of live keys.
func TestAKeyInItsGracePeriodCountsOnceItsSuccessorIsGone(t *testing.T) {
	forEachBackend(t, envOptions{maxPerOwner: 2}, func(t *testing.T, e *env) {
		writer, _ := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "x"}})
		body := map[string]any{"name": "k", "permissions": []string{"x"}}
		refused := func(what string) {
			t.Helper()
			r := e.send("POST", "/v1/keys", writer, body)
			require.Equal(t, http.StatusConflict, r.status, "%s: %s", what, r)
			assert.Equal(t, "key_limit_reached", r.code(t))
		}
		_, first := e.newKey(writer, body) // the writer and this one: the limit
		refused("at the limit")

		// Rotating at the limit works: the line still counts once.
		r := e.send("POST", "/v1/keys/"+first+"/rotate", writer, `{"grace": "8760h"}`)
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		second := r.str(t, "id")
		refused("the new key counts for the line")

		t.Run("revoking the new key leaves the old one counting", func(t *testing.T) {
			r := e.send("DELETE", "/v1/keys/"+second, writer, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			refused("the old key is live in its grace period")
			r = e.send("DELETE", "/v1/keys/"+first, writer, nil)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			_, first = e.newKey(writer, body) // the slot is free again
		})

		t.Run("a new key that expires first leaves the old one counting", func(t *testing.T) {
			r := e.send("POST", "/v1/keys/"+first+"/rotate", writer, `{"grace": "8760h"}`)
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			second := r.str(t, "id")
			soon := e.clock.Now().Add(2 * time.Second).UTC().Format(time.RFC3339Nano)
			r = e.send("PATCH", "/v1/keys/"+second, writer, `{"expires_at": "`+soon+`"}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			e.clock.Advance(3 * time.Second)
			refused("the old key is live in its grace period")
		})
	})
}
