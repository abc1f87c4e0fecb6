package admin

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// A key rotated away keeps working through its grace period, and its
// successor is the same key under a new secret (one line, one rate limit).
// An operator who narrows the successor meanwhile must not see the old
// key, still live, loosen it back: that would be a key loosening itself,
// and the widened successor outlives the grace period.
func TestAKeyInItsGracePeriodNeverLoosensItsSuccessor(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		for _, role := range []struct {
			name  string
			perms []string
		}{
			{"a writer", []string{"keys:write", "x", "y"}},
			{"a keys:admin caller", []string{"keys:admin", "keys:write", "x", "y"}},
		} {
			t.Run(role.name, func(t *testing.T) {
				exp := e.clock.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
				old, oldID := e.create(keystore.Spec{Name: "self", Owner: "team", Permissions: role.perms,
					IPAllowlist: mustCIDRs(t, "127.0.0.0/8"), ExpiresAt: &exp, RateLimit: rateLimit(t, "100/m")})
				// A grace longer than its life: the old key keeps its own expiry.
				r := e.send("POST", "/v1/keys/"+oldID+"/rotate", old, `{"grace": "24h"}`)
				require.Equal(t, http.StatusCreated, r.status, "%s", r)
				nextID := r.str(t, "id")

				narrowed := role.perms[:len(role.perms)-1] // without "y"
				sooner := exp.Add(-30 * time.Minute)
				r = e.send("PATCH", "/v1/keys/"+nextID, e.root, map[string]any{
					"permissions": narrowed, "expires_at": sooner.Format(time.RFC3339),
					"ip_allowlist": []string{"127.0.0.1"}, "rate_limit": "10/m",
				})
				require.Equal(t, http.StatusOK, r.status, "%s", r)
				before := e.stored(nextID)

				for _, tc := range []struct{ field, body string }{
					{"permissions", `{"permissions": ["` + strings.Join(role.perms, `", "`) + `"]}`},
					{"expires_at", `{"expires_at": "` + exp.Format(time.RFC3339) + `"}`},
					{"expires_at", `{"expires_at": null}`},
					{"ip_allowlist", `{"ip_allowlist": ["127.0.0.0/8"]}`},
					{"rate_limit", `{"rate_limit": "100/m"}`},
				} {
					r := e.send("PATCH", "/v1/keys/"+nextID, old, tc.body)
					require.Equal(t, http.StatusForbidden, r.status, "%s: %s", tc.body, r)
					assert.Equal(t, "permission_denied", r.code(t))
					assert.True(t, strings.HasPrefix(r.str(t, "error"), tc.field+":"), "names the field: %s", r)
					assert.Equal(t, before, e.stored(nextID), "nothing changed")
				}

				// Narrowing it further, or revoking it, stays allowed.
				r = e.send("PATCH", "/v1/keys/"+nextID, old, `{"rate_limit": "5/m"}`)
				require.Equal(t, http.StatusOK, r.status, "%s", r)
				r = e.send("DELETE", "/v1/keys/"+nextID, old, nil)
				require.Equal(t, http.StatusOK, r.status, "%s", r)
			})
		}
	})
}
