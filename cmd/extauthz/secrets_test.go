package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// TestNoKeyEverReachesALogOrAuditEvent runs a whole life of keys — created
// by the CLI and the admin API, used through all four sources over gRPC and
// HTTP, denied, rotated, revoked, pasted into bad admin requests — while
// keeping every log line, audit event, CLI error stream and metrics page.
// Then no key created appears in any of them. It also checks the audit
// events' fields.
func TestNoKeyEverReachesALogOrAuditEvent(t *testing.T) {
	var logs, events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n"+
		"audit: {sink: stdout}\nlog: {level: debug}\nhttp_mode: {xff_trusted_hops: 0}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: &events})

	var secrets []string
	var cliStderr bytes.Buffer
	runCLI := func(args ...string) string {
		cmd := exec.Command(os.Args[0], append(args, "--config", path)...)
		cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
		var stdout bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &cliStderr
		_ = cmd.Run() // some calls fail on purpose
		return stdout.String()
	}
	keyOf := func(out string) (string, string) {
		var v struct{ ID, Key string }
		require.NoError(t, json.Unmarshal([]byte(out), &v), out)
		secrets = append(secrets, v.Key)
		return v.ID, v.Key
	}

	// The first admin key, from the CLI; then the admin API does the rest.
	adminID, adminKey := keyOf(runCLI("keys", "create", "--name", "ops", "--perm", "keys:admin", "--json"))
	call := func(method, p, body string, headers map[string]string) (int, string) {
		var r io.Reader
		if body != "" {
			r = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, ts.adminURL+p, r)
		require.NoError(t, err)
		req.Header.Set("X-Api-Key", adminKey)
		req.Header.Set("Content-Type", "application/json")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status, body := call("POST", "/v1/keys", `{"name":"svc","permissions":["read:users"],"owner":"team"}`, nil)
	require.Equal(t, 201, status, body)
	svcID, svcKey := keyOf(body)

	// Use it through every source, over gRPC and HTTP, with a request id.
	for _, h := range []map[string]string{
		{"x-api-key": svcKey},
		{"authorization": "Bearer " + svcKey},
		{"cookie": "theme=dark; api_key=" + svcKey},
	} {
		h["x-request-id"] = "req-1"
		h["user-agent"] = "secrets-test/1.0"
		require.NotNil(t, ts.check(t, "GET", "/api/users", h).GetOkResponse())
	}
	require.NotNil(t, ts.check(t, "GET", "/api/users?api_key="+url.QueryEscape(svcKey)+"&x=1", nil).GetOkResponse())
	st, _, _ := get(t, ts.httpURL+"/authz/api/users?api_key="+svcKey, nil)
	require.Equal(t, 400, st, "found, and refused: an HTTP-mode proxy cannot remove it")

	// Denials with the key, and with near-copies of it.
	ts.check(t, "GET", "/api/reports/x", map[string]string{"x-api-key": svcKey})
	last := map[bool]string{true: "1", false: "0"}[strings.HasSuffix(svcKey, "0")]
	ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": svcKey[:len(svcKey)-1] + last})
	ts.check(t, "GET", "/api/users", map[string]string{"authorization": "Basic " + svcKey})

	// Rotation through both doors, and revocation.
	status, body = call("POST", "/v1/keys/"+svcID+"/rotate", `{"grace":"1h"}`, nil)
	require.Equal(t, 201, status, body)
	rotatedID, rotatedKey := keyOf(body)
	cliID, _ := keyOf(runCLI("keys", "create", "--name", "cli-made", "--perm", "read:users", "--json"))
	keyOf(runCLI("keys", "rotate", cliID, "--grace", "0", "--json"))
	status, _ = call("DELETE", "/v1/keys/"+rotatedID, "", nil)
	require.Equal(t, 200, status)
	code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": rotatedKey}))
	require.Equal(t, "revoked_key", code)

	// Errors with keys pasted where they do not belong.
	for _, bad := range []struct{ method, path, body string }{
		{"POST", "/v1/keys", `{"name":"` + svcKey + `","permissions":["` + svcKey + `"]}`},
		{"POST", "/v1/keys", `{"name":"x","permissions":["a"],"rate_limit":"` + svcKey + `"}`},
		{"POST", "/v1/keys", `{"name":"x","permissions":["a"],"ip_allowlist":["` + svcKey + `"]}`},
		{"POST", "/v1/keys", `{"` + svcKey + `":1}`},
		{"POST", "/v1/keys", `{"name":` + svcKey},
		{"GET", "/v1/keys/" + svcKey, ""},
		{"PATCH", "/v1/keys/" + svcID, `{"owner":"` + svcKey + `"}`},
	} {
		status, body := call(bad.method, bad.path, bad.body, nil)
		assert.GreaterOrEqual(t, status, 400, bad.path)
		assert.NotContains(t, body, svcKey, "an error answer echoes no key")
	}
	status, body = call("GET", "/v1/keys", "", map[string]string{"X-Api-Key": svcKey})
	assert.Equal(t, 403, status, "a live key without keys:* permissions")
	assert.NotContains(t, body, svcKey)
	runCLI("keys", "show", svcKey) // a key pasted where an id goes
	runCLI("keys", "revoke", svcKey)

	_, metrics, _ := get(t, ts.httpURL+"/metrics", nil)
	ts.stop() // flushes the audit queue

	all := map[string]string{"server log": logs.String(), "audit events": events.String(), "cli stderr": cliStderr.String(), "metrics": metrics}
	require.GreaterOrEqual(t, len(secrets), 5)
	for name, text := range all {
		for _, s := range secrets {
			assert.NotContains(t, text, s, "%s contains a key", name)
			assert.NotContains(t, text, s[3:len(s)-6], "%s contains a key's random part", name)
		}
	}

	// The audit events say who did what, with the fields of docs/operations.md.
	var decisions, changes, refused []map[string]any
	sc := bufio.NewScanner(strings.NewReader(events.String()))
	for sc.Scan() {
		var ev map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &ev), sc.Text())
		_, err := time.Parse(time.RFC3339Nano, ev["time"].(string))
		require.NoError(t, err)
		switch ev["event"] {
		case "decision":
			decisions = append(decisions, ev)
		case "admin.auth_failed":
			refused = append(refused, ev)
		default:
			changes = append(changes, ev)
		}
	}
	require.NotEmpty(t, decisions)
	first := decisions[0]
	assert.Equal(t, svcID, first["key_id"])
	assert.Equal(t, "svc", first["key_name"])
	assert.Equal(t, "team", first["owner"])
	assert.Equal(t, "req-1", first["request_id"])
	assert.Equal(t, "GET", first["method"])
	assert.Equal(t, "/api/users", first["path"])
	assert.Equal(t, "api.example.com", first["host"])
	assert.Equal(t, "10.1.2.3", first["client_ip"])
	assert.Equal(t, "secrets-test/1.0", first["user_agent"])
	assert.Equal(t, "allow", first["decision"])
	assert.EqualValues(t, 200, first["status"])
	assert.Contains(t, first, "latency_us")
	var denied int
	for _, d := range decisions {
		assert.NotContains(t, d["path"], "?", "paths in the audit carry no query")
		if d["decision"] == "deny" {
			denied++
			assert.NotEmpty(t, d["code"])
		}
	}
	assert.GreaterOrEqual(t, denied, 4)

	// Changes made through the admin API name the admin key; the server
	// records them (the CLI's go to its own standard error).
	kinds := map[string]map[string]any{}
	for _, c := range changes {
		kinds[fmt.Sprint(c["event"])] = c
		assert.Equal(t, adminID, c["actor"])
	}
	// The admin call with a key lacking keys:* is audited, naming that key.
	require.Len(t, refused, 1)
	assert.Equal(t, svcID, refused[0]["key_id"])
	assert.Equal(t, "permission_denied", refused[0]["code"])
	require.Contains(t, kinds, "key.created")
	require.Contains(t, kinds, "key.rotated")
	require.Contains(t, kinds, "key.revoked")
	assert.Equal(t, rotatedID, kinds["key.rotated"]["key_id"])
	assert.Equal(t, svcID, kinds["key.rotated"]["rotated_from"])
	assert.Contains(t, cliStderr.String(), `"event":"key.created","key_id":"`+cliID+`"`)
	assert.Contains(t, cliStderr.String(), `"actor":"cli"`)
}

// The policy an HTTP-mode auth path names is text the client writes when
// the proxy calls extauthz with the bare prefix (/authz/_policy/<name>/...
// is then the client's own path). The 403 no_policy answer names a name
// that could be a policy's, to help find a typo in a proxy's config, but
// never a key written there, alone or glued to other text, nor anything
// else no config could name; the audit event holds neither.
func TestNoAnswerEchoesAKeyWrittenWhereAPolicyIsNamed(t *testing.T) {
	var events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: stdout}\n"+
		"http_mode: {xff_trusted_hops: 0}\n"+storeYAML(t, "embedded")+meshConfig)
	ts := startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}, audit: &events})
	key, _ := ts.create(t, keystore.Spec{Name: "svc", Permissions: []string{"read:invoices"}})

	for _, tc := range []struct {
		name, want string // want: what the answer names, "" for nothing
	}{
		{key, ""},
		{"old-" + key, ""},
		{key + "-v2", ""},
		{url.PathEscape("Bearer " + key), ""},
		{"billng", `"billng"`},
		{"team-billing_2", `"team-billing_2"`},
		{"Billing", ""},
	} {
		st, body, h := get(t, ts.httpURL+"/authz/_policy/"+tc.name+"/invoices/1", map[string]string{"x-api-key": key})
		require.Equal(t, 403, st, "%s: %s", tc.name, body)
		assert.Equal(t, "no_policy", h.Get("x-authz-code"))
		assert.NotContains(t, body, key[3:len(key)-6], "the answer holds the key: %s", body)
		if tc.want != "" {
			assert.Contains(t, body, "no policy is named "+strings.ReplaceAll(tc.want, `"`, `\"`), body)
		} else {
			assert.NotContains(t, body, "no policy is named \\\"", body)
		}
	}
	ts.stop()
	assert.NotContains(t, events.String(), key[3:len(key)-6], "the audit holds the key")
	assert.Equal(t, 7, strings.Count(events.String(), `"code":"no_policy"`), "one event per request:\n%s", events.String())
}
