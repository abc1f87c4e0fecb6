package admin

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

func TestKeysCarryPoliciesAndMetadataThroughTheAPI(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		r := e.send("POST", "/v1/keys", e.root, map[string]any{"name": "billing", "permissions": []string{"read:invoices"},
			"policies": []string{"billing", "reports"}, "meta": map[string]string{"plan": "gold", "tenant_id": "t-42"}})
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		id := r.str(t, "id")
		assert.Equal(t, []any{"billing", "reports"}, r.obj(t)["policies"])
		assert.Equal(t, map[string]any{"plan": "gold", "tenant_id": "t-42"}, r.obj(t)["meta"])

		r = e.send("GET", "/v1/keys/"+id, e.root, nil)
		assert.Equal(t, []any{"billing", "reports"}, r.obj(t)["policies"])
		assert.Equal(t, map[string]any{"plan": "gold", "tenant_id": "t-42"}, r.obj(t)["meta"])

		// PATCH merges metadata entry by entry; null deletes one, or all.
		r = e.send("PATCH", "/v1/keys/"+id, e.root, `{"meta": {"plan": "platinum", "tenant_id": null, "region": "eu"}, "policies": ["billing"]}`)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Equal(t, map[string]any{"plan": "platinum", "region": "eu"}, r.obj(t)["meta"])
		assert.Equal(t, []any{"billing"}, r.obj(t)["policies"])
		r = e.send("PATCH", "/v1/keys/"+id, e.root, `{"meta": null, "policies": null}`)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Equal(t, map[string]any{}, r.obj(t)["meta"])
		assert.Equal(t, []any{}, r.obj(t)["policies"], "null: every policy")

		// The listing shows them too, and a key made without them has the
		// empty forms.
		_, plain := e.newKey(e.root, map[string]any{"name": "plain", "permissions": []string{"x"}})
		r = e.send("GET", "/v1/keys", e.root, nil)
		require.Equal(t, http.StatusOK, r.status)
		for _, k := range r.obj(t)["keys"].([]any) {
			m := k.(map[string]any)
			assert.Contains(t, m, "policies")
			assert.Contains(t, m, "meta")
			if m["id"] == plain {
				assert.Equal(t, []any{}, m["policies"])
				assert.Equal(t, map[string]any{}, m["meta"])
			}
		}

		// A rotated key keeps both.
		r = e.send("PATCH", "/v1/keys/"+id, e.root, `{"meta": {"plan": "gold"}, "policies": ["billing"]}`)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		r = e.send("POST", "/v1/keys/"+id+"/rotate", e.root, nil)
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		assert.Equal(t, []any{"billing"}, r.obj(t)["policies"])
		assert.Equal(t, map[string]any{"plan": "gold"}, r.obj(t)["meta"])
	})
}

func TestBadPoliciesAndMetadataAre400NamingTheField(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		secret, err := e.manager.Format.Generate()
		require.NoError(t, err)
		many := map[string]string{}
		for i := range keystore.MaxMetaEntries + 1 {
			many[string(rune('a'+i))] = "v"
		}
		for _, tt := range []struct {
			name  string
			body  map[string]any
			field string
		}{
			{"policies that are not a list", map[string]any{"policies": "billing"}, "policies"},
			{"a policy name with a capital", map[string]any{"policies": []string{"ok", "Billing"}}, "policies[1]"},
			{"a policy named twice", map[string]any{"policies": []string{"a", "a"}}, "policies[1]"},
			{"meta that is not an object", map[string]any{"meta": []string{"plan=gold"}}, "meta"},
			{"a metadata value that is not a string", map[string]any{"meta": map[string]any{"plan": 3}}, "meta.plan"},
			{"a null metadata value on create", map[string]any{"meta": map[string]any{"plan": nil}}, "meta.plan"},
			{"an empty metadata value", map[string]any{"meta": map[string]any{"plan": ""}}, "meta.plan"},
			{"a metadata name with a dash", map[string]any{"meta": map[string]any{"plan-tier": "x"}}, "meta"},
			{"a metadata value of 257 bytes", map[string]any{"meta": map[string]any{"plan": strings.Repeat("x", 257)}}, "meta.plan"},
			{"a metadata value with a newline", map[string]any{"meta": map[string]any{"plan": "a\nb"}}, "meta.plan"},
			{"seventeen metadata entries", map[string]any{"meta": many}, "meta"},
			{"a key pasted into metadata", map[string]any{"meta": map[string]any{"note": "old key " + secret}}, "meta"},
			{"a key glued into metadata with _", map[string]any{"meta": map[string]any{"note": "was_" + secret}}, "meta"},
			{"a key glued after a name", map[string]any{"name": "old_" + secret}, "name"},
			{"a key glued before a name", map[string]any{"name": secret + "_old"}, "name"},
			{"a key glued into a permission", map[string]any{"permissions": []string{"read_" + secret}}, "permissions"},
			{"a key pasted as the owner", map[string]any{"owner": secret}, "owner"},
			{"a key glued into the owner", map[string]any{"owner": "team_" + secret}, "owner"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				body := map[string]any{"name": "k", "permissions": []string{"x"}}
				for k, v := range tt.body {
					body[k] = v
				}
				r := e.send("POST", "/v1/keys", e.root, body)
				require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
				assert.True(t, strings.HasPrefix(r.str(t, "error"), tt.field+":"), "names %s: %s", tt.field, r)
				assert.NotContains(t, string(r.body), secret)
			})
		}
	})
}

// A keys:write caller scoped to policies gives only keys scoped within
// them, its keys carry exactly its own metadata, and no key widens its own
// scope or changes its own metadata.
func TestAWritersKeysStayWithinItsPoliciesAndCarryItsMetadata(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		writer, writerID := e.create(keystore.Spec{Name: "writer", Owner: "team", Permissions: []string{"keys:write", "read:invoices"},
			Policies: []string{"billing", "reports"}, Meta: map[string]string{"tenant_id": "t-42", "plan": "gold"}})
		base := func(extra map[string]any) map[string]any {
			body := map[string]any{"name": "child", "permissions": []string{"read:invoices"}, "policies": []string{"billing"}}
			for k, v := range extra {
				if v == nil {
					delete(body, k)
				} else {
					body[k] = v
				}
			}
			return body
		}
		for _, tt := range []struct {
			name  string
			body  map[string]any
			field string // "" = created
		}{
			{"a key scoped within the writer's policies", base(nil), ""},
			{"a key scoped to both of them", base(map[string]any{"policies": []string{"reports", "billing"}}), ""},
			{"a key valid under every policy", base(map[string]any{"policies": nil}), "policies"},
			{"a key with an empty policy list", base(map[string]any{"policies": []string{}}), "policies"},
			{"a key scoped elsewhere", base(map[string]any{"policies": []string{"payroll"}}), "policies"},
			{"a key scoped within and elsewhere", base(map[string]any{"policies": []string{"billing", "payroll"}}), "policies"},
			{"a key with the writer's own metadata", base(map[string]any{"meta": map[string]string{"tenant_id": "t-42", "plan": "gold"}}), ""},
			{"a key with other metadata", base(map[string]any{"meta": map[string]string{"tenant_id": "t-43", "plan": "gold"}}), "meta"},
			{"a key with less metadata", base(map[string]any{"meta": map[string]string{"tenant_id": "t-42"}}), "meta"},
			{"a key with more metadata", base(map[string]any{"meta": map[string]string{"tenant_id": "t-42", "plan": "gold", "admin": "yes"}}), "meta"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				r := e.send("POST", "/v1/keys", writer, tt.body)
				if tt.field == "" {
					require.Equal(t, http.StatusCreated, r.status, "%s", r)
					assert.Equal(t, map[string]any{"tenant_id": "t-42", "plan": "gold"}, r.obj(t)["meta"], "the writer's metadata, given or not")
					return
				}
				require.Equal(t, http.StatusForbidden, r.status, "%s", r)
				assert.Equal(t, "permission_denied", r.code(t))
				assert.True(t, strings.HasPrefix(r.str(t, "error"), tt.field+":"), "names %s: %s", tt.field, r)
			})
		}

		_, child := e.newKey(writer, base(nil))
		t.Run("a writer may narrow a child's scope but not widen it", func(t *testing.T) {
			r := e.send("PATCH", "/v1/keys/"+child, writer, `{"policies": ["reports"]}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			for _, body := range []string{`{"policies": null}`, `{"policies": []}`, `{"policies": ["reports", "payroll"]}`} {
				r := e.send("PATCH", "/v1/keys/"+child, writer, body)
				require.Equal(t, http.StatusForbidden, r.status, "%s: %s", body, r)
			}
			r = e.send("PATCH", "/v1/keys/"+child, writer, `{"meta": {"plan": "platinum"}}`)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.True(t, strings.HasPrefix(r.str(t, "error"), "meta:"), "%s", r)
		})
		t.Run("a writer may not rotate a key of its owner with other metadata", func(t *testing.T) {
			_, other := e.create(keystore.Spec{Name: "other", Owner: "team", Permissions: []string{"read:invoices"},
				Policies: []string{"billing"}, Meta: map[string]string{"tenant_id": "t-99"}})
			r := e.send("POST", "/v1/keys/"+other+"/rotate", writer, nil)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
			assert.True(t, strings.HasPrefix(r.str(t, "error"), "meta:"), "%s", r)
		})
		t.Run("a key may narrow its own scope, never widen it or change its metadata", func(t *testing.T) {
			for _, tt := range []struct {
				body   string
				status int
			}{
				{`{"policies": []}`, http.StatusForbidden},
				{`{"policies": null}`, http.StatusForbidden},
				{`{"policies": ["billing", "reports", "payroll"]}`, http.StatusForbidden},
				{`{"meta": {"plan": "platinum"}}`, http.StatusForbidden},
				{`{"meta": {"plan": null}}`, http.StatusForbidden},
				{`{"meta": null}`, http.StatusForbidden},
				{`{"policies": ["billing"]}`, http.StatusOK},
			} {
				r := e.send("PATCH", "/v1/keys/"+writerID, writer, tt.body)
				require.Equal(t, tt.status, r.status, "%s: %s", tt.body, r)
			}
			assert.Equal(t, []string{"billing"}, e.stored(writerID).Policies)
			assert.Equal(t, map[string]string{"tenant_id": "t-42", "plan": "gold"}, e.stored(writerID).Meta)
		})
		t.Run("keys:admin changes another key's scope and metadata freely, and never its own metadata", func(t *testing.T) {
			r := e.send("PATCH", "/v1/keys/"+child, e.root, `{"policies": null, "meta": {"plan": "free"}}`)
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			r = e.send("PATCH", "/v1/keys/"+e.rootID, e.root, `{"meta": {"plan": "free"}}`)
			require.Equal(t, http.StatusForbidden, r.status, "%s", r)
		})
	})
}
