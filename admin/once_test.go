package admin

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// ownerIDs lists the ids of owner's live keys over the API.
func (e *env) ownerIDs(t *testing.T, owner string) []string {
	t.Helper()
	r := e.send("GET", "/v1/keys?owner="+owner, e.root, nil)
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	return listedIDs(t, r)
}

func TestACreateSentAgainMakesNoSecondKey(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		const body = `{"name": "deploy bot", "permissions": ["read:users"], "owner": "team-a", "meta": {"team": "a", "env": "prod"}}`
		r := e.send("POST", "/v1/keys", e.root, body, "Idempotency-Key", "9f2c3e1a-0b7d-4e55-9a51-7c0f4c1d2e3b")
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		first, secret := r.str(t, "id"), r.str(t, "key")

		// The same request again, its fields in another order and spacing,
		// the key quoted as the header's draft writes it: nothing made, the
		// first key named, no secret.
		again := `{"owner":"team-a","meta":{"env":"prod","team":"a"},"permissions":["read:users"],"name":"deploy bot"}`
		for _, idem := range []string{"9f2c3e1a-0b7d-4e55-9a51-7c0f4c1d2e3b", `"9f2c3e1a-0b7d-4e55-9a51-7c0f4c1d2e3b"`} {
			r = e.send("POST", "/v1/keys", e.root, again, "Idempotency-Key", idem)
			require.Equal(t, http.StatusConflict, r.status, "%s", r)
			assert.Equal(t, "already_created", r.code(t))
			assert.Equal(t, "/v1/keys/"+first, r.header.Get("Location"))
			assert.Contains(t, r.str(t, "error"), first)
			assert.NotContains(t, string(r.body), secret)
			assert.NotContains(t, r.obj(t), "key")
		}
		// The same key for another request: refused, nothing made.
		r = e.send("POST", "/v1/keys", e.root, strings.Replace(body, "read:users", "write:users", 1),
			"Idempotency-Key", "9f2c3e1a-0b7d-4e55-9a51-7c0f4c1d2e3b")
		require.Equal(t, http.StatusUnprocessableEntity, r.status, "%s", r)
		assert.Equal(t, "idempotency_key_reused", r.code(t))
		assert.Equal(t, []string{first}, e.ownerIDs(t, "team-a"))

		// One change audited, and no repeat taken for an attempt at more.
		var created []string
		for _, c := range e.rec.Changes() {
			if c.kind == keystore.ChangeCreated && c.owner == "team-a" {
				created = append(created, c.keyID)
			}
		}
		assert.Equal(t, []string{first}, created)
		assert.Empty(t, e.rec.AuthFailures())

		// Keys are the owner's: another owner's create with the same key
		// is its own.
		r = e.send("POST", "/v1/keys", e.root, strings.Replace(body, "team-a", "team-b", 1),
			"Idempotency-Key", "9f2c3e1a-0b7d-4e55-9a51-7c0f4c1d2e3b")
		require.Equal(t, http.StatusCreated, r.status, "%s", r)

		// A client that lost the first answer gets a secret it holds by
		// rotating the key it was told of, with no grace.
		r = e.send("POST", "/v1/keys/"+first+"/rotate", e.root, map[string]any{"grace": "0s"})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		next, nextSecret := r.str(t, "id"), r.str(t, "key")
		// (A key of read:users may not read keys: 403, where a secret that
		// authenticates no key is 401.)
		assert.Equal(t, http.StatusForbidden, e.send("GET", "/v1/keys/"+next, nextSecret, nil).status, "the new secret authenticates")
		assert.Equal(t, http.StatusUnauthorized, e.send("GET", "/v1/keys/"+next, secret, nil).status, "the lost secret does not")
		assert.Equal(t, []string{next}, e.ownerIDs(t, "team-a"), "the key whose secret was lost works no more")

		// Without the header a create is made each time it is sent.
		e.newKey(e.root, map[string]any{"name": "plain", "permissions": []string{"none"}, "owner": "team-c"})
		e.newKey(e.root, map[string]any{"name": "plain", "permissions": []string{"none"}, "owner": "team-c"})
		assert.Len(t, e.ownerIDs(t, "team-c"), 2)
	})
}

func TestAWritersCreateSentAgainIsKeptToItsOwner(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, _ := e.newKey(e.root, map[string]any{"name": "w", "permissions": []string{"keys:write", "read:users"}, "owner": "team-a"})
		body := map[string]any{"name": "job", "permissions": []string{"read:users"}}
		r := e.send("POST", "/v1/keys", writer, body, "Idempotency-Key", "job-1")
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		first := r.str(t, "id")
		r = e.send("POST", "/v1/keys", writer, body, "Idempotency-Key", "job-1")
		require.Equal(t, http.StatusConflict, r.status, "%s", r)
		assert.Equal(t, "/v1/keys/"+first, r.header.Get("Location"))
		// The admin's create for another owner with the writer's key is
		// another create.
		r = e.send("POST", "/v1/keys", e.root, body, "Idempotency-Key", "job-1")
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		assert.Equal(t, "default", r.str(t, "owner"))
	})
}

// A create that names no owner makes a key of the default owner, whoever
// sends it: an admin and a writer of that owner share its idempotency keys,
// in either order, as they do for any other owner.
func TestAnAdminAndAWriterOfTheDefaultOwnerShareIdempotencyKeys(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, _ := e.newKey(e.root, map[string]any{"name": "w", "permissions": []string{"keys:write", "read:users"}})
		const body = `{"name": "bot", "permissions": ["read:users"]}`
		for i, callers := range [][2]string{{e.root, writer}, {writer, e.root}} {
			idem := fmt.Sprintf("bot-%d", i)
			r := e.send("POST", "/v1/keys", callers[0], body, "Idempotency-Key", idem)
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
			require.Equal(t, keystore.DefaultOwner, r.str(t, "owner"))
			first := r.str(t, "id")
			r = e.send("POST", "/v1/keys", callers[1], body, "Idempotency-Key", idem)
			require.Equal(t, http.StatusConflict, r.status, "the same request of the same owner, sent again by another of its callers: %s", r)
			assert.Equal(t, "already_created", r.code(t))
			assert.Equal(t, "/v1/keys/"+first, r.header.Get("Location"))
		}
	})
}

func TestABadIdempotencyKeyMakesNothing(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		tests := []struct {
			name   string
			values []string
		}{
			{"given twice", []string{"a", "b"}},
			{"given twice, the same", []string{"a", "a"}},
			{"empty", []string{""}},
			{"empty, quoted", []string{`""`}},
			{"256 characters", []string{strings.Repeat("k", 256)}},
			{"a tab", []string{"a\tb"}},
			{"not ASCII", []string{"ключ"}},
			{"no closing quote", []string{`"abc`}},
			{"text after the closing quote", []string{`"abc"def`}},
			{"an escape other than \\\" and \\\\", []string{`"a\nb"`}},
			{"a space at its end, quoted", []string{`"abc "`}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				req, err := http.NewRequest("POST", e.url+"/v1/keys",
					strings.NewReader(`{"name": "x", "permissions": ["read:users"], "owner": "team-z"}`))
				require.NoError(t, err)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("x-api-key", e.root)
				req.Header["Idempotency-Key"] = tt.values
				r := e.do(req)
				require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
				assert.Contains(t, r.str(t, "error"), "Idempotency-Key")
				assert.Empty(t, e.ownerIDs(t, "team-z"))
			})
		}
		// The longest key, and every printable character, are taken.
		for _, ok := range []string{strings.Repeat("k", 255), `!"#$%&'()*+,-./:;<=>?@[\]^_{|}~ 09AZaz`, `"a\"b\\c"`} {
			r := e.send("POST", "/v1/keys", e.root, map[string]any{"name": "x", "permissions": []string{"none"}, "owner": "team-y"},
				"Idempotency-Key", ok)
			require.Equal(t, http.StatusCreated, r.status, "%s: %s", ok, r)
		}
	})
}

// TestAQuotedIdempotencyKeyIsTheBareOne: every key a client may send has
// two spellings, bare and as a structured-field string, and both read as
// the one key; nothing else reads as a key.
func TestAQuotedIdempotencyKeyIsTheBareOne(t *testing.T) {
	var every strings.Builder
	for c := byte(0x21); c <= 0x7e; c++ {
		every.WriteByte(c)
	}
	quote := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	for _, key := range []string{every.String(), "a", "a b", `\`, `"`, `""`, `\"`, strings.Repeat("z", 255)} {
		require.NoError(t, keystore.ValidateIdempotencyKey(key), "%q", key)
		got, err := unquote(`"` + quote.Replace(key) + `"`)
		require.NoError(t, err, "%q quoted", key)
		assert.Equal(t, key, got, "%q quoted", key)
		if !strings.HasPrefix(key, `"`) {
			got, err = unquote(key)
			require.NoError(t, err)
			assert.Equal(t, key, got, "%q bare", key)
		}
	}
	for _, bad := range []string{`"`, `"a`, `"a"b`, `"a\"`, `"a\b"`, `"\`} {
		_, err := unquote(bad)
		assert.Error(t, err, "%q", bad)
	}
}
