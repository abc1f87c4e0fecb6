package admin

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

func TestBadInputIsRefusedNamingTheField(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, id := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
		past := e.clock.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		farFuture := e.clock.Now().AddDate(150, 0, 0).UTC().Format(time.RFC3339)
		future := e.clock.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		ok := `"name": "n", "permissions": ["x"]`
		ips := make([]string, 101)
		for i := range ips {
			ips[i] = fmt.Sprintf(`"10.0.%d.0/24"`, i)
		}
		type tc struct {
			name, body, want string
		}
		for _, group := range []struct {
			method, path string
			cases        []tc
		}{
			{"POST", "/v1/keys", []tc{
				{"an empty body", ``, "body: want a JSON object"},
				{"malformed JSON", `{"name": `, "body: malformed JSON"},
				{"a syntax error", `{"name" "n"}`, "body: malformed JSON at byte"},
				{"an array", `[]`, "body: want a JSON object"},
				{"a string", `"hello"`, "body: want a JSON object"},
				{"null", `null`, "body: want a JSON object"},
				{"trailing data", `{` + ok + `} {}`, "body: unexpected data after the JSON object"},
				{"an unknown field", `{` + ok + `, "colour": "red"}`, `unknown field "colour"`},
				{"a field in the wrong case", `{"NAME": "n", "permissions": ["x"]}`, `unknown field "NAME"`},
				{"a field given twice", `{` + ok + `, "name": "m"}`, "name: given more than once"},
				{"a field given twice, once escaped", `{` + ok + `, "n\u0061me": "m"}`, "name: given more than once"},
				{"a metadata entry given twice", `{` + ok + `, "meta": {"plan": "free", "plan": "gold"}}`, "meta.plan: given more than once"},
				{"a metadata entry given twice, once escaped", `{` + ok + `, "meta": {"plan": "free", "\u0070lan": "gold"}}`, "meta.plan: given more than once"},
				{"malformed metadata", `{` + ok + `, "meta": {"plan" "free"}}`, "body: malformed JSON"},
				{"no name", `{"permissions": ["x"]}`, "name: required"},
				{"a null name", `{"name": null, "permissions": ["x"]}`, "name: required"},
				{"a number for the name", `{"name": 5, "permissions": ["x"]}`, "name: want a string, got a number"},
				{"an empty name", `{"name": "", "permissions": ["x"]}`, "name: required"},
				{"a name with a newline", `{"name": "a\nb", "permissions": ["x"]}`, "name: must not contain control, bidirectional, invisible or formatting characters (U+000A at byte 1)"},
				{"no permissions", `{"name": "n"}`, "permissions: required"},
				{"a string for permissions", `{"name": "n", "permissions": "x"}`, "permissions: want an array of strings, got a string"},
				{"an object for permissions", `{"name": "n", "permissions": {"x": true}}`, "permissions: want an array of strings, got an object"},
				{"a number among the permissions", `{"name": "n", "permissions": ["x", 1]}`, "permissions[1]: want a string, got a number"},
				{"no permission at all", `{"name": "n", "permissions": []}`, "permissions: at least one"},
				{"a permission with a space", `{"name": "n", "permissions": ["x", "a b"]}`, "permissions[1]: must not contain a comma or a space"},
				{"an empty permission", `{"name": "n", "permissions": [""]}`, "permissions[0]: non-empty"},
				{"a number for the owner", `{` + ok + `, "owner": 7}`, "owner: want a string, got a number"},
				{"a bad owner", `{` + ok + `, "owner": "a b"}`, "owner: 1 to 64 characters"},
				{"a number for the rate limit", `{` + ok + `, "rate_limit": 100}`, "rate_limit: want a string, got a number"},
				{"a bad rate limit", `{` + ok + `, "rate_limit": "fast"}`, `rate_limit: want a rate like "100/m"`},
				{"an empty rate limit", `{` + ok + `, "rate_limit": ""}`, "rate_limit: want a rate"},
				{"a zero rate limit", `{` + ok + `, "rate_limit": "0/m"}`, "rate_limit: want a rate"},
				{"a string for the allowlist", `{` + ok + `, "ip_allowlist": "10.0.0.0/8"}`, "ip_allowlist: want an array of strings"},
				{"a bad CIDR", `{` + ok + `, "ip_allowlist": ["10.0.0.0/8", "banana"]}`, "ip_allowlist[1]: want a CIDR"},
				{"a CIDR with host bits", `{` + ok + `, "ip_allowlist": ["10.1.2.3/8"]}`, "ip_allowlist[0]: ip \"10.1.2.3/8\": host bits set (did you mean 10.0.0.0/8?)"},
				{"too many CIDRs", `{` + ok + `, "ip_allowlist": [` + strings.Join(ips, ",") + `]}`, "ip_allowlist: at most 100"},
				{"a number for expires_at", `{` + ok + `, "expires_at": 1700000000}`, "expires_at: want a string, got a number"},
				{"a date that is not RFC 3339", `{` + ok + `, "expires_at": "tomorrow"}`, "expires_at: want an RFC 3339 time"},
				{"an expiry in the past", `{` + ok + `, "expires_at": "` + past + `"}`, "expires_at: must be in the future"},
				{"an expiry in 150 years", `{` + ok + `, "expires_at": "` + farFuture + `"}`, "expires_at: at most 100 years"},
				{"a number for ttl", `{` + ok + `, "ttl": 3600}`, "ttl: want a string, got a number"},
				{"a ttl that is not a Go duration", `{` + ok + `, "ttl": "1 day"}`, "ttl: want a Go duration"},
				{"a negative ttl", `{` + ok + `, "ttl": "-1h"}`, "ttl: must not be negative"},
				{"a zero ttl", `{` + ok + `, "ttl": "0s"}`, "ttl: must be positive"},
				{"a ttl of a thousand years", `{` + ok + `, "ttl": "2000000h"}`, "ttl: at most 100 years"},
				{"ttl and expires_at together", `{` + ok + `, "ttl": "1h", "expires_at": "` + future + `"}`, "ttl: give ttl or expires_at, not both"},
			}},
			{"PATCH", "/v1/keys/" + id, []tc{
				{"an empty object", `{}`, "body: nothing to change"},
				{"an empty body", ``, "body: want a JSON object"},
				{"an unknown field", `{"owner": "someone else"}`, `unknown field "owner"`},
				{"a null name", `{"name": null}`, "name: cannot be null"},
				{"a metadata entry set and deleted", `{"meta": {"plan": "gold", "plan": null}}`, "meta.plan: given more than once"},
				{"null permissions", `{"permissions": null}`, "permissions: cannot be null"},
				{"a boolean for the name", `{"name": true}`, "name: want a string, got a boolean"},
				{"an expiry in the past", `{"expires_at": "` + past + `"}`, "expires_at: must be in the future"},
				{"a bad rate limit", `{"rate_limit": "1/0s"}`, "rate_limit: want a rate"},
				{"an array of arrays for the allowlist", `{"ip_allowlist": [["10.0.0.0/8"]]}`, "ip_allowlist[0]: want a string, got an array"},
			}},
			{"POST", "/v1/keys/" + id + "/rotate", []tc{
				{"a number for grace", `{"grace": 60}`, "grace: want a string, got a number"},
				{"a grace that is not a Go duration", `{"grace": "soon"}`, "grace: want a Go duration"},
				{"a negative grace", `{"grace": "-1s"}`, "grace: must not be negative"},
				{"an unknown field", `{"grace": "1h", "ttl": "1h"}`, `unknown field "ttl"`},
				{"an array", `["1h"]`, "body: want a JSON object"},
			}},
		} {
			for _, c := range group.cases {
				t.Run(fmt.Sprintf("%s %s: %s is 400", group.method, group.path[:min(len(group.path), 12)], c.name), func(t *testing.T) {
					r := e.send(group.method, group.path, e.root, c.body)
					require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
					assert.Equal(t, "bad_request", r.code(t))
					assert.Contains(t, r.str(t, "error"), c.want)
				})
			}
		}
		k, err := e.store.Get(t.Context(), id)
		require.NoError(t, err)
		assert.Equal(t, "target", k.Name, "no refused request changed the key")
		assert.Empty(t, k.RotatedTo)
	})
}

// chunked hides a reader's length so the request goes without Content-Length.
type chunked struct{ io.Reader }

func TestBodiesOverTheLimitAre413(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, id := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
		huge := `{"name": "` + strings.Repeat("a", DefaultMaxBodyBytes) + `", "permissions": ["x"]}`
		for _, rt := range []struct{ method, path string }{
			{"POST", "/v1/keys"}, {"PATCH", "/v1/keys/" + id}, {"POST", "/v1/keys/" + id + "/rotate"},
		} {
			t.Run(rt.method+" "+rt.path[:min(12, len(rt.path))]+" with a Content-Length over the limit", func(t *testing.T) {
				r := e.send(rt.method, rt.path, e.root, huge)
				require.Equal(t, http.StatusRequestEntityTooLarge, r.status, "%s", r)
				assert.Equal(t, "payload_too_large", r.code(t))
			})
			t.Run(rt.method+" "+rt.path[:min(12, len(rt.path))]+" streamed over the limit", func(t *testing.T) {
				req, err := http.NewRequest(rt.method, e.url+rt.path, chunked{strings.NewReader(huge)})
				require.NoError(t, err)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("x-api-key", e.root)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				defer resp.Body.Close()
				assert.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
				assert.Equal(t, "payload_too_large", resp.Header.Get("x-authz-code"))
			})
		}
		t.Run("a body just under the limit is read", func(t *testing.T) {
			body := `{"name": "` + strings.Repeat("a", 100) + `", "permissions": ["x"]}` + strings.Repeat(" ", DefaultMaxBodyBytes-200)
			r := e.send("POST", "/v1/keys", e.root, body)
			require.Equal(t, http.StatusCreated, r.status, "%s", r)
		})
	})
}

func TestBodiesMustBeJSON(t *testing.T) {
	forEachBackend(t, envOptions{maxBodyBytes: 1024}, func(t *testing.T, e *env) {
		_, id := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
		body := `{"name": "n", "permissions": ["x"]}`
		for _, rt := range []struct{ method, path, body string }{
			{"POST", "/v1/keys", body}, {"PATCH", "/v1/keys/" + id, `{"name": "m"}`}, {"POST", "/v1/keys/" + id + "/rotate", ``},
		} {
			for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/jsonx", ";;"} {
				t.Run(rt.method+" "+rt.path[:min(12, len(rt.path))]+" as "+ct+" is 415", func(t *testing.T) {
					r := e.send(rt.method, rt.path, e.root, rt.body, "Content-Type", ct)
					require.Equal(t, http.StatusUnsupportedMediaType, r.status, "%s", r)
					assert.Equal(t, "unsupported_media_type", r.code(t))
				})
			}
			t.Run(rt.method+" "+rt.path[:min(12, len(rt.path))]+" without a Content-Type is 415", func(t *testing.T) {
				req, err := http.NewRequest(rt.method, e.url+rt.path, strings.NewReader(rt.body))
				require.NoError(t, err)
				req.Header.Set("x-api-key", e.root)
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				assert.Equal(t, http.StatusUnsupportedMediaType, resp.StatusCode)
			})
		}
		t.Run("a charset parameter is fine", func(t *testing.T) {
			r := e.send("POST", "/v1/keys", e.root, body, "Content-Type", "application/json; charset=utf-8")
			assert.Equal(t, http.StatusCreated, r.status, "%s", r)
		})
		t.Run("MaxBodyBytes sets the limit", func(t *testing.T) {
			r := e.send("POST", "/v1/keys", e.root, `{"name": "`+strings.Repeat("a", 1100)+`"}`)
			assert.Equal(t, http.StatusRequestEntityTooLarge, r.status, "%s", r)
		})
	})
}

func TestUnknownRoutesAre404AndWrongMethods405(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	for _, tc := range []struct {
		name, method, path string
		status             int
		allow              string
	}{
		{"an unknown path is 404", "GET", "/v1/nothing", 404, ""},
		{"the root is 404", "GET", "/", 404, ""},
		{"a trailing slash is 404", "GET", "/v1/keys/", 404, ""},
		{"a doubled slash is 404, not a redirect", "GET", "/v1//keys", 404, ""},
		{"a dot segment is 404, not a redirect", "GET", "/v1/./keys", 404, ""},
		{"a dot-dot segment is 404, not a redirect", "GET", "/v1/x/../keys", 404, ""},
		{"an encoded slash in an id is 400, as in the decision", "GET", "/v1/keys/key_%2F0000000000000000000", 400, ""},
		{"a NUL in an id is 400, as in the decision", "DELETE", "/v1/keys/key_%000000000000000000000", 400, ""},
		{"a path under a key is 404", "GET", "/v1/keys/" + e.rootID + "/secret", 404, ""},
		{"PUT on the collection is 405", "PUT", "/v1/keys", 405, "POST, GET, HEAD"},
		{"DELETE on the collection is 405", "DELETE", "/v1/keys", 405, "POST, GET, HEAD"},
		{"POST on a key is 405", "POST", "/v1/keys/" + e.rootID, 405, "GET, HEAD, PATCH, DELETE"},
		{"GET on rotate is 405", "GET", "/v1/keys/" + e.rootID + "/rotate", 405, "POST"},
		{"DELETE on the document is 405", "DELETE", "/v1/openapi.json", 405, "GET, HEAD"},
		{"GET on the leak endpoint is 405", "GET", leakPath, 405, "POST"},
		{"an odd method is 405", "BREW", "/v1/keys", 405, "POST, GET, HEAD"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.send(tc.method, tc.path, e.root, nil)
			require.Equal(t, tc.status, r.status, "%s", r)
			switch tc.status {
			case 400:
				assert.Equal(t, "bad_request", r.code(t))
			case 404:
				assert.Equal(t, "not_found", r.code(t))
			default:
				assert.Equal(t, "method_not_allowed", r.code(t))
				assert.Equal(t, tc.allow, r.header.Get("Allow"))
			}
		})
	}
	t.Run("HEAD on a GET route authenticates like GET", func(t *testing.T) {
		assert.Equal(t, http.StatusOK, e.send("HEAD", "/v1/keys", e.root, nil).status)
		assert.Equal(t, http.StatusUnauthorized, e.send("HEAD", "/v1/keys", "", nil).status)
	})
}

// TestNoKeyIsEverEchoed puts a live key wherever a careless client might:
// no answer and no log line may repeat it.
func TestNoKeyIsEverEchoed(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		secret, _ := e.create(keystore.Spec{Name: "pasted", Owner: "team", Permissions: []string{"x"}})
		legacy := "legacy_0123456789-abcdef.XYZ"
		writer, _ := e.create(keystore.Spec{Name: "w", Owner: "team", Permissions: []string{"keys:write"}})
		unknown, err := e.manager.Format.Generate()
		require.NoError(t, err)
		ok := `"name": "n", "permissions": ["x"]`
		var answers []response
		for _, s := range []string{secret, legacy} {
			answers = append(answers,
				e.send("POST", "/v1/keys", e.root, `{`+ok+`, "`+s+`": 1}`),
				e.send("POST", "/v1/keys", e.root, `{`+ok+`, "rate_limit": "`+s+`"}`),
				e.send("POST", "/v1/keys", e.root, `{`+ok+`, "ip_allowlist": ["`+s+`"]}`),
				e.send("POST", "/v1/keys", e.root, `{`+ok+`, "owner": "`+s+` "}`),
				e.send("POST", "/v1/keys", e.root, `{`+ok+`, "ttl": "`+s+`"}`),
				e.send("POST", "/v1/keys", e.root, `{`+ok+`, "expires_at": "`+s+`"}`),
				e.send("POST", "/v1/keys", e.root, `{"name": "n", "permissions": ["Bearer `+s+`"]}`),
				e.send("POST", "/v1/keys", writer, `{"name": "n", "permissions": ["`+s+`"]}`),
				e.send("POST", "/v1/keys", e.root, `{"name": "`+s+`\n", "permissions": ["x"]}`),
				e.send("GET", "/v1/keys/"+s, e.root, nil),
				e.send("GET", "/v1/keys?cursor="+s, e.root, nil),
				e.send("GET", "/v1/keys?owner="+s+"!", e.root, nil),
				e.send("GET", "/v1/keys?"+s+"=1", e.root, nil),
				e.send("POST", "/v1/keys/"+s+"/rotate", e.root, nil),
				e.send("GET", "/v1/keys", "", nil, "Authorization", "Basic "+s),
				e.send("GET", "/v1/keys", "", nil, "Authorization", "Bearer "+s+"x"),
				e.send("PATCH", "/v1/keys/"+e.rootID, e.root, `{"`+s+`": null}`),
				e.send("POST", "/v1/keys/"+e.rootID+"/rotate", e.root, `{"grace": "`+s+`"}`),
			)
		}
		answers = append(answers, e.send("GET", "/v1/keys", unknown, nil), e.send("GET", "/v1/keys?api_key="+unknown, "", nil),
			// A key of the configured format is found inside a value too (a
			// legacy key has no shape to find it by inside other text).
			e.send("POST", "/v1/keys", writer, `{"name": "n", "permissions": ["x:`+secret+`"]}`),
			e.send("POST", "/v1/keys", writer, `{"name": "n", "permissions": ["read_`+secret+`"]}`))
		for _, r := range answers {
			require.GreaterOrEqual(t, r.status, 400, "%s", r)
			for _, s := range []string{secret, legacy, unknown} {
				assert.NotContains(t, string(r.body), s)
			}
		}
		for _, s := range []string{secret, legacy, unknown} {
			assert.NotContains(t, e.rec.Logs(), s)
		}
	})
}

// TestNoInputMakesTheServerFail throws hostile input at every route: the
// answer is always a well-formed JSON error or success, never a 5xx.
func TestNoInputMakesTheServerFail(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	// Routes with {id} act on a target, so that the root key survives.
	_, target := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
	nested := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	bodies := []string{
		"", "null", "0", "-", "\x00\x01\x02", "\xff\xfe\xfd", "{", "}", "[[[[", nested[:60000],
		`{"name": "\ud800", "permissions": ["\udfff"]}`,
		`{"name": "` + strings.Repeat("é", 200) + `", "permissions": ["x"]}`,
		`{"name": "n", "permissions": ["x"], "ttl": "9223372036854775807ns"}`,
		`{"name": "n", "permissions": ["x"], "ttl": "99999999999999999999h"}`,
		`{"name": "n", "permissions": ["x"], "expires_at": "9999-12-31T23:59:59Z"}`,
		`{"name": "n", "permissions": ["x"], "expires_at": "0001-01-01T00:00:00Z"}`,
		`{"name": "n", "permissions": ["x"], "rate_limit": "999999999999999999999/s"}`,
		`{"name": "n", "permissions": ["x"], "ip_allowlist": ["::ffff:10.0.0.1", "fe80::1%eth0", "0.0.0.0/0"]}`,
		`{"name": 1e999, "permissions": ["x"]}`,
		`{"grace": "` + strings.Repeat("9", 5000) + `h"}`,
		`{"": ""}`, `{"name": {"name": {"name": {}}}}`,
		`[{"token": null}]`,
	}
	for _, rt := range routes {
		path := strings.ReplaceAll(rt.Path, "{id}", target)
		for _, body := range bodies {
			r := e.send(rt.Method, path, e.root, body)
			assert.Less(t, r.status, 500, "%s with %.40q: %s", rt.Pattern(), body, r)
		}
	}
	for _, path := range []string{"/v1/keys/%00", "/v1/keys/%ff", "/v1/keys?limit=%00", "/v1/keys/" + strings.Repeat("a", 5000)} {
		r := e.send("GET", path, e.root, nil)
		assert.Less(t, r.status, 500, "%s: %s", path, r)
	}
}

// FuzzCreateAndPatchBodies checks that no body makes the create, patch or
// rotate handlers answer 5xx or anything but JSON. `go test` runs the seeds;
// `go test -fuzz FuzzCreateAndPatchBodies ./admin/` explores.
func FuzzCreateAndPatchBodies(f *testing.F) {
	for _, seed := range []string{
		`{"name": "n", "permissions": ["x"]}`,
		`{"name": "n", "permissions": ["x"], "ttl": "1h", "rate_limit": "10/s", "ip_allowlist": ["10.0.0.0/8"]}`,
		`{"name": "n", "permissions": ["x"], "expires_at": "2030-01-01T00:00:00Z", "owner": "o"}`,
		`{"expires_at": null, "rate_limit": null, "ip_allowlist": null}`,
		`{"name": "n", "permissions": ["x"], "policies": ["billing"], "meta": {"plan": "gold", "tenant_id": "t-42"}}`,
		`{"meta": {"plan": null, "x": "y"}, "policies": null}`,
		`{"grace": "0s"}`, `{`, `[]`, `null`, "",
	} {
		f.Add(seed)
	}
	e := newEnv(f, backends[0], envOptions{})
	_, target := e.create(keystore.Spec{Name: "target", Permissions: []string{"x"}})
	f.Fuzz(func(t *testing.T, body string) {
		for _, rt := range []struct{ method, path string }{
			{"POST", "/v1/keys"}, {"PATCH", "/v1/keys/" + target}, {"POST", "/v1/keys/" + target + "/rotate"},
		} {
			req, err := http.NewRequest(rt.method, e.url+rt.path, bytes.NewReader([]byte(body)))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("x-api-key", e.root)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode >= 500 || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%s %s with %q: %d %s", rt.method, rt.path, body, resp.StatusCode, b)
			}
		}
	})
}

// invisibleCharacters are characters that make a label read as something
// else in a terminal, a log line or a header: every one is refused in a
// name and in a permission, by create and by change, naming the field and
// the code point.
var invisibleCharacters = []struct {
	name string
	r    rune
}{
	{"a C0 control (SOH)", 0x01},
	{"an escape, which starts terminal sequences", 0x1b},
	{"a tab", '\t'},
	{"DEL", 0x7f},
	{"a C1 control (NEL)", 0x85},
	{"a C1 control sequence introducer", 0x9b},
	{"a right-to-left override", 0x202e},
	{"a left-to-right embedding", 0x202a},
	{"a left-to-right override", 0x202d},
	{"a pop directional formatting", 0x202c},
	{"a left-to-right isolate", 0x2066},
	{"a right-to-left isolate", 0x2067},
	{"a first strong isolate", 0x2068},
	{"a pop directional isolate", 0x2069},
	{"a left-to-right mark", 0x200e},
	{"a right-to-left mark", 0x200f},
	{"an Arabic letter mark", 0x061c},
	{"a zero-width space", 0x200b},
	{"a zero-width non-joiner", 0x200c},
	{"a zero-width joiner", 0x200d},
	{"a word joiner", 0x2060},
	{"a byte order mark", 0xfeff},
	{"a soft hyphen", 0x00ad},
	{"a line separator", 0x2028},
	{"a paragraph separator", 0x2029},
	{"a no-break space", 0x00a0},
	{"an ideographic space", 0x3000},
	{"a Hangul filler", 0x3164},
	{"a Hangul choseong filler", 0x115f},
	{"a braille blank", 0x2800},
	{"a combining grapheme joiner", 0x034f},
	{"a private-use character", 0xe000},
	{"a tag character", 0xe0041},
	{"an interlinear annotation anchor", 0xfff9},
	{"a non-character", 0xfffe},
}

func TestNamesAndPermissionsRefuseControlBidiAndInvisibleCharacters(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, id := e.newKey(e.root, map[string]any{"name": "target", "permissions": []string{"x"}})
		for _, c := range invisibleCharacters {
			label := "ab" + string(c.r) + "cd"
			wantAt := fmt.Sprintf("(U+%04X at byte 2)", c.r)
			for _, tc := range []struct {
				what, method, path, field string
				body                      map[string]any
			}{
				{"a new key's name", "POST", "/v1/keys", "name:", map[string]any{"name": label, "permissions": []string{"x"}}},
				{"a new key's permission", "POST", "/v1/keys", "permissions[1]:", map[string]any{"name": "n", "permissions": []string{"x", label}}},
				{"a changed name", "PATCH", "/v1/keys/" + id, "name:", map[string]any{"name": label}},
				{"a changed permission", "PATCH", "/v1/keys/" + id, "permissions[0]:", map[string]any{"permissions": []string{label}}},
			} {
				t.Run(c.name+" in "+tc.what+" is 400", func(t *testing.T) {
					r := e.send(tc.method, tc.path, e.root, tc.body)
					require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
					assert.Equal(t, "bad_request", r.code(t))
					msg := r.str(t, "error")
					assert.True(t, strings.HasPrefix(msg, tc.field), "names the field: %s", msg)
					if c.r != '\t' || tc.field == "name:" { // a tab in a permission is refused as a space
						assert.Contains(t, msg, wantAt)
					}
					assert.NotContains(t, msg, string(c.r), "the character itself is not echoed")
				})
			}
		}
		k, err := e.store.Get(t.Context(), id)
		require.NoError(t, err)
		assert.Equal(t, "target", k.Name)
		assert.Equal(t, []string{"x"}, k.Permissions)

		t.Run("names in any script, with accents and emoji, are fine", func(t *testing.T) {
			for _, name := range []string{"Zürich billing", "東京の鍵", "ключ для отчётов", "مفتاح", "deploy 🚀", "love ❤️ (with a variation selector)", "a-b_c.d/e:f"} {
				r := e.send("POST", "/v1/keys", e.root, map[string]any{"name": name, "permissions": []string{"x", "read:" + strings.Fields(name)[0]}})
				require.Equal(t, http.StatusCreated, r.status, "%q: %s", name, r)
				assert.Equal(t, name, r.str(t, "name"))
			}
		})
	})
}

// Text that is not valid UTF-8 is refused naming its field, as the CLI
// refuses it (keystore.CheckText), never stored changed: encoding/json
// would read a byte that is no UTF-8 and an escaped half of a UTF-16
// surrogate pair ("\ud800") as U+FFFD, and the key would carry a name,
// permission or metadata value other than the one sent. A whole pair, and
// U+FFFD sent as itself, are text like any other.
func TestTextThatIsNotUTF8IsRefusedNotReplaced(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		_, id := e.newKey(e.root, map[string]any{"name": "target", "permissions": []string{"x"}})
		for _, bad := range []struct{ what, text string }{
			{"a byte that is no UTF-8", "ab\xffcd"},
			{"a cut UTF-8 sequence", "ab\xe2\x82cd"},
			{"an encoded surrogate", "ab\xed\xa0\x80cd"},
			{"an escaped high surrogate alone", `ab\ud800cd`},
			{"an escaped low surrogate alone", `ab\uDC00cd`},
			{"an escaped high surrogate before another high one", `ab\ud800\ud800\udc00cd`},
			{"an escaped high surrogate at the end", `abcd\ud83d`},
		} {
			for _, tc := range []struct {
				method, path, field, body string
			}{
				{"POST", "/v1/keys", "name", `{"name": "%s", "permissions": ["x"]}`},
				{"POST", "/v1/keys", "permissions[1]", `{"name": "n", "permissions": ["x", "%s"]}`},
				{"POST", "/v1/keys", "meta.plan", `{"name": "n", "permissions": ["x"], "meta": {"plan": "%s"}}`},
				{"PATCH", "/v1/keys/" + id, "name", `{"name": "%s"}`},
				{"PATCH", "/v1/keys/" + id, "meta.plan", `{"meta": {"plan": "%s"}}`},
			} {
				t.Run(bad.what+" in "+tc.method+" "+tc.field, func(t *testing.T) {
					r := e.send(tc.method, tc.path, e.root, fmt.Sprintf(tc.body, bad.text))
					require.Equal(t, http.StatusBadRequest, r.status, "%s", r)
					assert.Equal(t, "bad_request", r.code(t))
					assert.Equal(t, tc.field+": must be valid UTF-8", r.str(t, "error"))
				})
			}
		}
		k, err := e.store.Get(t.Context(), id)
		require.NoError(t, err)
		assert.Equal(t, "target", k.Name)
		assert.Empty(t, k.Meta)

		t.Run("a whole surrogate pair and U+FFFD itself are text", func(t *testing.T) {
			for body, want := range map[string]string{
				`{"name": "deploy \ud83d\ude80", "permissions": ["x"]}`:      "deploy 🚀",
				`{"name": "deploy \uD83D\uDE80", "permissions": ["x"]}`:      "deploy 🚀",
				`{"name": "unknown \ufffd", "permissions": ["x"]}`:           "unknown \uFFFD",
				`{"name": "unknown ` + "\uFFFD" + `", "permissions": ["x"]}`: "unknown \uFFFD",
				`{"name": "a \\ud800 b", "permissions": ["x"]}`:              `a \ud800 b`,
			} {
				r := e.send("POST", "/v1/keys", e.root, body)
				require.Equal(t, http.StatusCreated, r.status, "%s: %s", body, r)
				assert.Equal(t, want, r.str(t, "name"), body)
			}
		})
	})
}
