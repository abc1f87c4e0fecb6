package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// docOp is one operation of the OpenAPI document.
type docOp struct {
	method, path string
	statuses     []int
	security     bool // false when the operation sets security: []
}

func (op docOp) pattern() string { return op.method + " " + op.path }

// parseOpenAPI reads the operations of doc and checks the document's
// internal consistency: every $ref resolves.
func parseOpenAPI(doc []byte) ([]docOp, error) {
	var d struct {
		OpenAPI  string                                `json:"openapi"`
		Security []map[string][]string                 `json:"security"`
		Paths    map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		return nil, fmt.Errorf("openapi.json: %w", err)
	}
	if !strings.HasPrefix(d.OpenAPI, "3.") {
		return nil, fmt.Errorf("openapi.json: version %q, want 3.x", d.OpenAPI)
	}
	var any map[string]any
	if err := json.Unmarshal(doc, &any); err != nil {
		return nil, err
	}
	if err := checkRefs(any, any); err != nil {
		return nil, err
	}
	var ops []docOp
	for path, item := range d.Paths {
		for method, raw := range item {
			if method == "parameters" {
				continue
			}
			var op struct {
				Responses map[string]json.RawMessage `json:"responses"`
				Security  *[]map[string][]string     `json:"security"`
			}
			if err := json.Unmarshal(raw, &op); err != nil {
				return nil, fmt.Errorf("%s %s: %w", method, path, err)
			}
			o := docOp{method: strings.ToUpper(method), path: path, security: op.Security == nil || len(*op.Security) > 0}
			for code := range op.Responses {
				if code == "default" {
					continue
				}
				n, err := strconv.Atoi(code)
				if err != nil {
					return nil, fmt.Errorf("%s %s: response %q is not a status", method, path, code)
				}
				o.statuses = append(o.statuses, n)
			}
			slices.Sort(o.statuses)
			ops = append(ops, o)
		}
	}
	return ops, nil
}

// checkRefs fails on a "$ref" that does not point into the document.
func checkRefs(root, v any) error {
	switch v := v.(type) {
	case map[string]any:
		if ref, ok := v["$ref"].(string); ok {
			var at any = root
			for _, part := range strings.Split(strings.TrimPrefix(ref, "#/"), "/") {
				m, _ := at.(map[string]any)
				if at = m[part]; at == nil {
					return fmt.Errorf("openapi.json: $ref %s resolves to nothing", ref)
				}
			}
		}
		for _, x := range v {
			if err := checkRefs(root, x); err != nil {
				return err
			}
		}
	case []any:
		for _, x := range v {
			if err := checkRefs(root, x); err != nil {
				return err
			}
		}
	}
	return nil
}

func TestTheOpenAPIDocumentDescribesExactlyTheRouteTable(t *testing.T) {
	ops, err := parseOpenAPI(openAPIDocument)
	require.NoError(t, err)
	var documented, registered []string
	for _, op := range ops {
		documented = append(documented, op.pattern())
	}
	for _, rt := range routes {
		registered = append(registered, rt.Pattern())
	}
	slices.Sort(documented)
	slices.Sort(registered)
	assert.Equal(t, registered, documented)
}

func TestEveryDocumentedRouteDocumentsItsAuthenticationFailures(t *testing.T) {
	ops, err := parseOpenAPI(openAPIDocument)
	require.NoError(t, err)
	for _, op := range ops {
		t.Run(op.pattern(), func(t *testing.T) {
			assert.Contains(t, op.statuses, http.StatusUnauthorized, "every route can answer 401")
			i := slices.IndexFunc(routes, func(rt route) bool { return rt.Pattern() == op.pattern() })
			require.GreaterOrEqual(t, i, 0)
			if routes[i].access == signed {
				// Signed by GitHub, not an API key: no permission to lack.
				assert.False(t, op.security, "the leak endpoint takes no API key")
				assert.NotContains(t, op.statuses, http.StatusForbidden)
				return
			}
			assert.True(t, op.security, "key routes use the API-key security schemes")
			assert.Contains(t, op.statuses, http.StatusForbidden, "every key route can answer 403")
			assert.Contains(t, op.statuses, http.StatusServiceUnavailable, "every key route can answer 503")
		})
	}
}

// TestEveryRegisteredRouteIsServed asks the real handler for every route of
// the table: none may fall through to 404 or 405. The status coverage check
// (TestMain) proves the other direction, that each documented status is
// answered by a test through its route.
func TestEveryRegisteredRouteIsServed(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		for _, rt := range routes {
			path := strings.ReplaceAll(rt.Path, "{id}", e.rootID)
			r := e.send(rt.Method, path, "", nil)
			assert.Equal(t, http.StatusUnauthorized, r.status, "%s without credentials: %s", rt.Pattern(), r)
		}
	})
}

func TestTheDocumentIsServedToAReader(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		reader, _ := e.newKey(e.root, map[string]any{"name": "reader", "permissions": []string{"keys:read"}})
		r := e.send("GET", "/v1/openapi.json", reader, nil)
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Equal(t, "application/json", r.header.Get("Content-Type"))
		assert.JSONEq(t, string(openAPIDocument), string(r.body))
		assert.Equal(t, openAPIDocument, OpenAPI())
	})
}

// The request schemas name exactly the fields the handlers read, and the
// Key schema exactly the fields of a key record's JSON.
func TestTheSchemasNameExactlyTheFields(t *testing.T) {
	var d struct {
		Components struct {
			Schemas map[string]struct {
				Properties map[string]json.RawMessage `json:"properties"`
				Required   []string                   `json:"required"`
			} `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(openAPIDocument, &d))
	props := func(schema string) []string {
		var out []string
		for name := range d.Components.Schemas[schema].Properties {
			out = append(out, name)
		}
		slices.Sort(out)
		return out
	}
	sorted := func(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
	assert.Equal(t, sorted(createFields), props("CreateKeyRequest"))
	assert.Equal(t, sorted(patchFields), props("UpdateKeyRequest"))

	b, err := json.Marshal(&keystore.Key{})
	require.NoError(t, err)
	var record map[string]any
	require.NoError(t, json.Unmarshal(b, &record))
	var fields []string
	for name := range record {
		fields = append(fields, name)
	}
	assert.Equal(t, sorted(fields), props("Key"))
	for _, name := range []string{"policies", "meta"} {
		assert.Contains(t, d.Components.Schemas["Key"].Required, name, "every record has %s", name)
	}
}

// The admin tables of the README and docs/keys.md list exactly the key
// routes of the route table (the leak receiver, signed by GitHub, has its
// own section), the bodies they show name exactly the fields the handlers
// read, and docs/keys.md names every error code the API adds to the
// decision's.
func TestTheAdminTablesOfTheDocsAreTheRouteTable(t *testing.T) {
	var keyRoutes []string
	for _, rt := range routes {
		if rt.access != signed {
			keyRoutes = append(keyRoutes, rt.Pattern())
		}
	}
	slices.Sort(keyRoutes)
	row := regexp.MustCompile("(?m)^\\| `(GET|POST|PATCH|DELETE|PUT) ([^`?]+)[^`]*` \\| ([^\\n]*)\\|$")
	for _, page := range []string{"README.md", "docs/keys.md"} {
		b, err := os.ReadFile(filepath.Join("..", page))
		require.NoError(t, err)
		var shown []string
		for _, m := range row.FindAllStringSubmatch(string(b), -1) {
			pattern, what := m[1]+" "+m[2], m[3]
			shown = append(shown, pattern)
			var want []string
			switch pattern {
			case "POST /v1/keys":
				want = createFields
			case "PATCH /v1/keys/{id}":
				want = patchFields
			case "POST /v1/keys/{id}/rotate":
				want = []string{"grace"}
			}
			for _, f := range want {
				assert.Regexp(t, `\b`+f+`\b`, what, "%s: the row of %s does not name the field %s", page, pattern, f)
			}
		}
		slices.Sort(shown)
		assert.Equal(t, keyRoutes, shown, "%s: the admin API's table", page)
	}

	b, err := os.ReadFile(filepath.Join("..", "docs", "keys.md"))
	require.NoError(t, err)
	sentence := regexp.MustCompile(`beside the\s+decision's codes the API answers([^.]*)\.`).FindSubmatch(b)
	require.NotNil(t, sentence, "docs/keys.md names the API's own error codes")
	var named []string
	for _, m := range regexp.MustCompile("`([a-z_]+)`").FindAllSubmatch(sentence[1], -1) {
		named = append(named, string(m[1]))
	}
	var own []string
	for _, code := range documentedErrorCodes(t) {
		if !slices.Contains(authz.Codes(), authz.Code(code)) {
			own = append(own, code)
		}
	}
	slices.Sort(named)
	slices.Sort(own)
	assert.Equal(t, own, named, "docs/keys.md: the error codes the API answers beside the decision's")
}
