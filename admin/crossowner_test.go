package admin

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// A writer that reaches for another owner's key is answered as if there
// were no such key, so that ids do not leak; but the attempt (a writer
// trying to revoke, change, rotate or read another tenant's key, whose id
// it saw in a log or a header) is an escalation refused, and is audited
// like one. An id that names no key at all says nothing about the caller,
// and is not.
func TestAWriterReachingForAnotherOwnersKeyIsAudited(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writerA, writerAID := e.create(keystore.Spec{Name: "writer a", Owner: "team-a", Permissions: []string{"keys:write", "x"}})
		_, theirs := e.create(keystore.Spec{Name: "b's", Owner: "team-b", Permissions: []string{"x"}})
		e.rec.AuthFailures()

		for _, tc := range []struct {
			method, path, route string
			body                any
		}{
			{"GET", "/v1/keys/" + theirs, "/v1/keys/{id}", nil},
			{"PATCH", "/v1/keys/" + theirs, "/v1/keys/{id}", map[string]any{"name": "mine now"}},
			{"DELETE", "/v1/keys/" + theirs, "/v1/keys/{id}", nil},
			{"POST", "/v1/keys/" + theirs + "/rotate", "/v1/keys/{id}/rotate", map[string]any{"grace": "0s"}},
		} {
			t.Run(tc.method+" "+tc.route, func(t *testing.T) {
				r := e.send(tc.method, tc.path, writerA, tc.body)
				require.Equal(t, http.StatusNotFound, r.status, "%s", r)
				assert.Equal(t, "not_found", r.code(t))
				assert.Equal(t, []AuthFailure{{KeyID: writerAID, ClientIP: netip.MustParseAddr("127.0.0.1"), Method: tc.method, Route: tc.route,
					UserAgent: "Go-http-client/1.1", Status: http.StatusNotFound, Code: authz.CodePermissionDenied, Authenticated: true}}, e.rec.AuthFailures(),
					"reaching for another owner's key is audited, naming the key that tried")

				unknown := strings.Replace(tc.path, theirs, "key_00000000000000000000", 1)
				r = e.send(tc.method, unknown, writerA, tc.body)
				require.Equal(t, http.StatusNotFound, r.status, "%s", r)
				assert.Empty(t, e.rec.AuthFailures(), "an id that names no key is no escalation")
			})
		}
		k, err := e.store.Get(context.Background(), theirs)
		require.NoError(t, err)
		assert.Equal(t, "b's", k.Name)
		assert.Nil(t, k.RevokedAt)
		assert.Empty(t, k.RotatedTo)
	})
}
