package admin

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// A query parameter a route does not take is refused, never passed over:
// `POST /v1/keys/{id}/rotate?grace=0s`, sent to cut a leaked key off at
// once, would otherwise rotate it with the default grace and leave the
// leaked key working for a day; `POST /v1/keys?owner=team-b` would make the
// key for the caller's own owner, or `default`. Only GET /v1/keys takes
// parameters, and a configured api_key parameter is a credential.
func TestEveryRouteRefusesQueryParametersItDoesNotTake(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, target := e.create(keystore.Spec{Name: "target", Owner: "team-a", Permissions: []string{"x"}})
		for _, rt := range keyRoutes() {
			path := strings.ReplaceAll(rt.Path, "{id}", target)
			for _, q := range []string{"grace=0s", "owner=team-b", "dry_run=true", "limit=%zz"} {
				if rt.Pattern() == "GET /v1/keys" && !strings.HasPrefix(q, "grace") && !strings.HasPrefix(q, "dry_run") {
					continue // its own parameters, TestListingRefusesBadParameters
				}
				t.Run(rt.Pattern()+"?"+q, func(t *testing.T) {
					r := e.send(rt.Method, path+"?"+q, e.root, rt.body)
					require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
					assert.Equal(t, "bad_request", r.code(t))
					name, _, _ := strings.Cut(q, "=")
					if strings.Contains(q, "%zz") {
						assert.Contains(t, r.str(t, "error"), "query: malformed query string")
					} else {
						assert.Contains(t, r.str(t, "error"), `query: unknown parameter "`+name+`"`)
					}
				})
			}
		}
		k, err := e.store.Get(context.Background(), target)
		require.NoError(t, err)
		assert.Equal(t, "target", k.Name, "no refused request changed the key")
		assert.Empty(t, k.RotatedTo, "nor rotated it")
		assert.Nil(t, k.RevokedAt, "nor revoked it")
		list := e.send("GET", "/v1/keys?owner=default", e.root, nil)
		require.Equal(t, http.StatusOK, list.status, "%s", list)
		assert.Equal(t, []string{e.rootID}, listedIDs(t, list), "and no refused create made a key")

		t.Run("the api_key parameter is still a credential on every route", func(t *testing.T) {
			for _, rt := range keyRoutes() {
				if rt.access != needRead {
					continue
				}
				r := e.send(rt.Method, strings.ReplaceAll(rt.Path, "{id}", target)+"?api_key="+e.root, "", nil)
				assert.Equal(t, http.StatusOK, r.status, "%s: %s", rt.Pattern(), r)
			}
			r := e.send("POST", "/v1/keys/"+target+"/rotate?api_key="+e.root, "", `{"grace": "0s"}`)
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
		})
	})
}

// A body sent to a route that reads none is refused, as an unknown query
// parameter is: {"owner": "team-a"} passed over would list every owner's
// keys to a caller who asked for one owner's.
func TestARouteThatReadsNoBodyRefusesOne(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, target := e.create(keystore.Spec{Name: "target", Owner: "team-b", Permissions: []string{"x"}})
		for _, rt := range keyRoutes() {
			if rt.Method != "GET" && rt.Method != "DELETE" {
				continue
			}
			path := strings.ReplaceAll(rt.Path, "{id}", target)
			for _, method := range []string{rt.Method, map[string]string{"GET": "HEAD"}[rt.Method]} {
				if method == "" {
					continue
				}
				for _, tc := range []struct {
					name string
					body func() io.Reader
				}{
					{"with a length", func() io.Reader { return strings.NewReader(`{"owner": "team-a"}`) }},
					{"chunked", func() io.Reader { return io.MultiReader(strings.NewReader(`{"owner": "team-a"}`)) }},
				} {
					t.Run(method+" "+rt.Path+" "+tc.name, func(t *testing.T) {
						req, err := http.NewRequest(method, e.url+path, tc.body())
						require.NoError(t, err)
						req.Header.Set("x-api-key", e.root)
						req.Header.Set("Content-Type", "application/json")
						resp, err := http.DefaultClient.Do(req)
						require.NoError(t, err)
						defer resp.Body.Close()
						require.Equal(t, http.StatusBadRequest, resp.StatusCode)
						assert.Equal(t, "bad_request", resp.Header.Get("x-authz-code"))
					})
				}
			}
		}
		k, err := e.store.Get(context.Background(), target)
		require.NoError(t, err)
		assert.Nil(t, k.RevokedAt, "a DELETE with a body revoked nothing")

		t.Run("an empty body, Content-Length: 0, is no body", func(t *testing.T) {
			r := e.send("DELETE", "/v1/keys/"+target, e.root, "")
			assert.Equal(t, http.StatusOK, r.status, "%s", r)
		})
	})
}
