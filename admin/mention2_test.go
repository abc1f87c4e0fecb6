package admin

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// The admin API's echo of a client's unknown field or parameter escapes a
// variation selector: quoted raw, "name\ufe0f" read as unknown field
// "name", a known field, instead of naming what was sent.
func TestAdminMentionEscapesVariationSelectors(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	t.Run("body field", func(t *testing.T) {
		r := e.send("POST", "/v1/keys", e.root, `{"name":"n","permissions":["x"],"name`+"\ufe0f"+`":1}`)
		require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
		msg := r.str(t, "error")
		if strings.ContainsRune(msg, 0xFE0F) {
			t.Errorf("error message holds a raw U+FE0F: %+q", msg)
		}
	})
	t.Run("query parameter", func(t *testing.T) {
		r := e.send("GET", "/v1/keys?"+url.QueryEscape("owner\ufe0f")+"=1", e.root, nil)
		require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
		msg := r.str(t, "error")
		if strings.ContainsRune(msg, 0xFE0F) {
			t.Errorf("error message holds a raw U+FE0F: %+q", msg)
		}
	})
}

// A permission a key may hold is read as a label is (LabelHoldsKey, which
// leaves "sk-learn ..." alone), not as loose client text, so the 403 a
// keys:write caller gets for granting it without holding it names it.
func TestAMissingPermissionIsNamedWhenAKeyMayHoldIt(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	perm := "sk-learn-classifier-training:read"
	// A permission a key can hold.
	r := e.send("POST", "/v1/keys", e.root, map[string]any{"name": "holder", "permissions": []string{perm}})
	require.Equal(t, http.StatusCreated, r.status, "%s", r)

	writer, _ := e.create(keystore.Spec{Name: "writer", Permissions: []string{"keys:write"}})
	r = e.send("POST", "/v1/keys", writer, map[string]any{"name": "n", "permissions": []string{perm}})
	require.Equal(t, http.StatusForbidden, r.status, "%s", r)
	if msg := r.str(t, "error"); !strings.Contains(msg, perm) {
		t.Errorf("the 403 does not name the missing permission %q: %q", perm, msg)
	}
}
