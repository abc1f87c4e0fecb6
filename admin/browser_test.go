package admin

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// A web page the operator opens can send the admin listener requests: an
// <img> or a form needs no preflight, and a page whose name was rebound to
// 127.0.0.1 is the admin API's own origin. With the api_key cookie the
// browser holds for localhost, each would be authenticated.
func TestNoWebPageCallsTheAdminAPI(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, target := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
		// A key whose own rate limit a page must not spend: its
		// decisions share it.
		limited, limitedID := e.create(keystore.Spec{Name: "limited", Permissions: []string{"keys:admin"},
			RateLimit: rateLimit(t, "2/h")})
		rebound := strings.Replace(e.url, "127.0.0.1", "rebound.example", 1)
		for _, marks := range [][]string{
			{"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site"},
			{"Origin", "http://localhost:8080", "Sec-Fetch-Site", "same-site"},
			{"Origin", rebound}, // a rebound page's own origin, over plain HTTP: no Sec-Fetch-*
			{"Origin", "null"},  // a sandboxed frame, a file:// page
			{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "no-cors"},
			{"Sec-Fetch-Site", "same-site", "Sec-Fetch-Mode", "navigate"},
			{"Sec-Fetch-Site", "same-origin"},
		} {
			for _, cred := range []struct {
				name, query string
				hdr         []string
			}{
				{"the api_key cookie", "", []string{"Cookie", "api_key=" + limited}},
				{"the api_key query parameter", "api_key=" + limited, nil},
				{"the x-api-key header", "", []string{"x-api-key", limited}},
			} {
				t.Run(strings.Join(marks, " ")+" with "+cred.name, func(t *testing.T) {
					e.rec.AuthFailures()
					for _, rt := range keyRoutes() {
						path := strings.ReplaceAll(rt.Path, "{id}", target)
						if cred.query != "" {
							path += "?" + cred.query
						}
						r := e.send(rt.Method, path, "", rt.body, append(append([]string{}, cred.hdr...), marks...)...)
						require.Equal(t, http.StatusForbidden, r.status, "%s: %s", rt.Pattern(), r)
						assert.Equal(t, "browser_request", r.code(t), rt.Pattern())
						assert.Empty(t, r.header.Get("X-RateLimit-Remaining"), "%s: the request was counted", rt.Pattern())
					}
					// Audited, as a refused credential is, naming no key:
					// the request's credential was never read.
					failures := e.rec.AuthFailures()
					require.Len(t, failures, len(keyRoutes()))
					for i, rt := range keyRoutes() {
						assert.Equal(t, AuthFailure{ClientIP: netip.MustParseAddr("127.0.0.1"), Method: rt.Method, Route: rt.Path,
							UserAgent: "Go-http-client/1.1", Status: http.StatusForbidden, Code: "browser_request"}, failures[i])
					}
				})
			}
		}
		k, err := e.store.Get(context.Background(), target)
		require.NoError(t, err)
		assert.Equal(t, "target", k.Name, "no page changed anything")
		assert.Nil(t, k.RevokedAt)
		assert.Empty(t, k.RotatedTo)

		t.Run("the key's rate limit is whole: no page spent it", func(t *testing.T) {
			for range 2 {
				r := e.send("GET", "/v1/keys/"+limitedID, limited, nil)
				require.Equal(t, http.StatusOK, r.status, "%s", r)
			}
			r := e.send("GET", "/v1/keys/"+limitedID, limited, nil)
			assert.Equal(t, http.StatusTooManyRequests, r.status, "%s", r)
		})
		t.Run("a preflight is answered without leave to send the request", func(t *testing.T) {
			for _, rt := range keyRoutes() {
				path := strings.ReplaceAll(rt.Path, "{id}", target)
				r := e.send("OPTIONS", path, "", nil, "Origin", "https://evil.example",
					"Access-Control-Request-Method", rt.Method, "Access-Control-Request-Headers", "x-api-key, content-type")
				assert.Equal(t, http.StatusMethodNotAllowed, r.status, "%s: %s", rt.Pattern(), r)
				for name := range r.header {
					assert.NotContains(t, strings.ToLower(name), "access-control-", "%s: %s", rt.Pattern(), name)
				}
			}
		})
		t.Run("a URL the operator typed is answered", func(t *testing.T) {
			r := e.send("GET", "/v1/keys", "", nil, "Cookie", "api_key="+e.root, "Sec-Fetch-Site", "none", "Sec-Fetch-Mode", "navigate")
			assert.Equal(t, http.StatusOK, r.status, "%s", r)
		})
	})
}
