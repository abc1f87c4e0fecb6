package admin

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz/authztest"
)

// A key whose prefix is mistyped ("sk:", "SK-") or whose underscore is a
// space is read as a key in everything written out, and a key never appears
// in an error message: the admin API's echo of a client's unknown field or
// query parameter (server.mention) read only keys with their prefix, and
// gave the whole secret and its checksum back.
func TestAdminErrorsDoNotEchoAKeyWithItsPrefixMistyped(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	key, err := authztest.Format.Generate()
	require.NoError(t, err)
	body := key[len("sk_"):] // the secret and its checksum
	for _, pasted := range []string{"sk:" + body, "SK-" + body, "sk " + body} {
		t.Run("body field "+pasted[:3], func(t *testing.T) {
			r := e.send("POST", "/v1/keys", e.root, `{"name":"n","permissions":["x"],"`+pasted+`":1}`)
			require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
			assert.NotContains(t, string(r.body), body, "the error message echoes the key")
		})
		t.Run("query parameter "+pasted[:3], func(t *testing.T) {
			r := e.send("GET", "/v1/keys?"+url.QueryEscape(pasted)+"=1", e.root, nil)
			require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
			assert.NotContains(t, string(r.body), body, "the error message echoes the key")
		})
	}
}
