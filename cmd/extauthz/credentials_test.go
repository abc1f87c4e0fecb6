package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// TestEveryEntryPointAnswersAnAmbiguousCredentialAlike sends the same
// credentials to the three entry points of one server: a check over gRPC
// (with the headers as Envoy hands them over: repeated lines joined with
// ",", cookies with "; "), HTTP mode and the admin API, both over raw
// HTTP/1.1 lines. All three read headers through one adapter, so each
// request gets one answer everywhere: two keys in one header are one
// invalid key (401 invalid_key, as Envoy's joined value is), and a header
// name an upstream reads as the credential's but spelt otherwise is 400.
func TestEveryEntryPointAnswersAnAmbiguousCredentialAlike(t *testing.T) {
	ts := startServerFile(t, writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes))
	one, _ := ts.create(t, keystore.Spec{Name: "one", Permissions: []string{"read:users", "keys:read"}})
	two, _ := ts.create(t, keystore.Spec{Name: "two", Permissions: []string{"read:users", "keys:read"}})

	for _, tc := range []struct {
		name  string
		lines [][2]string // as the client sends them
		code  string      // "" = allowed
	}{
		{"one key is allowed", hdr("X-Api-Key", one), ""},
		{"two x-api-key lines are one invalid key", hdr("X-Api-Key", one, "X-Api-Key", two), "invalid_key"},
		{"the same key twice is still two lines: invalid", hdr("X-Api-Key", one, "X-Api-Key", one), "invalid_key"},
		{"two Authorization lines are one invalid key", hdr("Authorization", "Bearer "+one, "Authorization", "Bearer "+two), "invalid_key"},
		{"x_api_key is refused: CGI and Rack read it as x-api-key", hdr("X_Api_Key", one), "bad_request"},
		{"x_api_key beside x-api-key is refused", hdr("X-Api-Key", one, "x_api_key", two), "bad_request"},
		{"a cookie line of its own still counts", hdr("Cookie", "theme=dark", "Cookie", "api_key="+one), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status := map[string]int{"": 200, "invalid_key": 401, "bad_request": 400}[tc.code]

			// gRPC: Envoy's headers map, names lower-cased, lines joined.
			joined := map[string]string{}
			for _, l := range tc.lines {
				name, sep := strings.ToLower(l[0]), ","
				if name == "cookie" {
					sep = "; "
				}
				if v, ok := joined[name]; ok {
					joined[name] = v + sep + l[1]
				} else {
					joined[name] = l[1]
				}
			}
			code, got := denial(t, ts.check(t, "GET", "/api/users", joined))
			assert.Equal(t, tc.code, code, "gRPC")
			assert.Equal(t, status, got, "gRPC")

			for _, ep := range []struct{ name, url, target string }{
				{"HTTP mode", ts.httpURL, "/authz/api/users"},
				{"admin API", ts.adminURL, "/v1/keys"},
			} {
				resp := rawHTTP(t, strings.TrimPrefix(ep.url, "http://"), "GET", ep.target, tc.lines)
				status, code := status, tc.code
				if ep.name == "HTTP mode" && code == "" && slices.ContainsFunc(tc.lines, func(l [2]string) bool { return strings.EqualFold(l[0], "cookie") }) {
					// Found all the same, and refused: the proxy cannot
					// remove a cookie (http_mode.query_and_cookie_keys).
					status, code = 400, "bad_request"
				}
				require.Equal(t, status, resp.StatusCode, ep.name)
				if code != "" {
					assert.Equal(t, code, resp.Header.Get("X-Authz-Code"), ep.name)
					assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), ep.name)
				}
			}
		})
	}
}
