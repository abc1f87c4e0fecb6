package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	auditpkg "github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// auditEvents decodes the JSON lines of a server's audit output.
// startAudited starts a server on the embedded store with testRoutes, with
// or without the admin API, and returns it with its audit output.
func startAudited(t *testing.T, admin bool) (*testServer, *syncbuf.Buffer) {
	t.Helper()
	listen := "off"
	if admin {
		listen = `"127.0.0.1:0"`
	}
	audit := &syncbuf.Buffer{}
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: %s}\nstore: {path: %q}\n%s",
		listen, filepath.Join(t.TempDir(), "k.db"), testRoutes))
	return startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}, audit: audit}), audit
}

// auditEventsOf returns the events of type typ in out.
func auditEventsOf(t *testing.T, out, typ string) []map[string]any {
	t.Helper()
	var events []map[string]any
	for _, e := range auditEvents(t, out) {
		if e["event"] == typ {
			events = append(events, e)
		}
	}
	return events
}

func auditEvents(t *testing.T, out string) []map[string]any {
	t.Helper()
	var events []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var e map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &e), line)
		events = append(events, e)
	}
	return events
}

// Every event says its schema version; a decision names the route that
// decided it and the permissions the route requires; a request the admin
// API refused for its credential, or as an escalation, is an event of its
// own, naming the key when it is known and never the secret.
func TestAuditEventsCarryTheSchemaTheRouteAndRefusedAdminCalls(t *testing.T) {
	ts, audit := startAudited(t, true)
	key, k := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	ts.check(t, "DELETE", "/api/users/7", map[string]string{"x-api-key": key})
	ts.check(t, "GET", "/nowhere", map[string]string{"x-api-key": key})

	adminCall := func(key string) int { return adminStatus(t, ts, "GET", "/v1/keys/"+k.ID, key, "") }
	assert.Equal(t, 403, adminCall(key), "a key without keys:read")
	assert.Equal(t, 401, adminCall(""))
	unknown, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	assert.Equal(t, 401, adminCall(unknown))
	// A writer granting what it lacks tries to escalate: audited too.
	writer, w := ts.create(t, keystore.Spec{Name: "writer", Permissions: []string{"keys:write", "read:users"}})
	req, err := http.NewRequest("POST", ts.adminURL+"/v1/keys", strings.NewReader(`{"name": "mine", "permissions": ["admin"]}`))
	require.NoError(t, err)
	req.Header.Set("x-api-key", writer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 403, resp.StatusCode, "a writer may not grant admin")

	var events []map[string]any
	require.Eventually(t, func() bool {
		events = auditEvents(t, audit.String())
		return len(events) >= 6
	}, 5*time.Second, 10*time.Millisecond, audit.String())
	for _, e := range events {
		assert.Equal(t, float64(1), e["schema"], "every event carries the schema version: %v", e)
	}
	byType := map[string][]map[string]any{}
	for _, e := range events {
		byType[e["event"].(string)] = append(byType[e["event"].(string)], e)
	}
	require.Len(t, byType["decision"], 2)
	denied := byType["decision"][0]
	assert.Equal(t, "/api/users/{id}", denied["route"])
	assert.Equal(t, []any{"delete:users"}, denied["permissions"])
	assert.Equal(t, "permission_denied", denied["code"])
	assert.Nil(t, byType["decision"][1]["route"], "no route matched")

	failed := byType["admin.auth_failed"]
	require.Len(t, failed, 4)
	assert.Equal(t, k.ID, failed[0]["key_id"], "a known key is named")
	assert.Equal(t, "permission_denied", failed[0]["code"])
	assert.Equal(t, float64(403), failed[0]["status"])
	assert.Equal(t, "/v1/keys/{id}", failed[0]["route"], "the route, not the path a key could be pasted into")
	assert.Equal(t, "127.0.0.1", failed[0]["client_ip"])
	assert.Equal(t, "GET", failed[0]["method"])
	assert.Equal(t, "missing_key", failed[1]["code"])
	assert.Nil(t, failed[1]["key_id"])
	assert.Equal(t, "invalid_key", failed[2]["code"])
	assert.Nil(t, failed[2]["key_id"], "an unknown key has no id")
	assert.Equal(t, w.ID, failed[3]["key_id"], "the writer that tried to grant admin")
	assert.Equal(t, "permission_denied", failed[3]["code"])
	assert.Equal(t, "/v1/keys", failed[3]["route"])
	assert.Equal(t, "POST", failed[3]["method"])
	assert.NotContains(t, audit.String(), writer)
	assert.NotContains(t, audit.String(), key)
	assert.NotContains(t, audit.String(), unknown)
}

// Reading every key's metadata is the first thing a stolen keys:read key
// does: each read of keys answered is an admin.read event naming the
// caller, its address and the route; the OpenAPI document is no key's and
// a refused read is admin.auth_failed, not admin.read.
func TestAnAdminReadOfKeysIsAudited(t *testing.T) {
	ts, audit := startAudited(t, true)
	reader, r := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"keys:read"}})
	_, other := ts.create(t, keystore.Spec{Name: "other", Permissions: []string{"read:users"}})
	get := func(path, key string) int {
		req, err := http.NewRequest("GET", ts.adminURL+path, nil)
		require.NoError(t, err)
		req.Header.Set("x-api-key", key)
		req.Header.Set("x-request-id", "req-"+strings.ReplaceAll(path, "/", "-"))
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, 200, get("/v1/keys", reader))
	require.Equal(t, 200, get("/v1/keys/"+other.ID, reader))
	require.Equal(t, 200, get("/v1/openapi.json", reader))
	require.Equal(t, 404, get("/v1/keys/key_0000000000000000000A", reader))

	require.Eventually(t, func() bool { return len(auditEventsOf(t, audit.String(), "admin.read")) >= 2 },
		5*time.Second, 10*time.Millisecond, audit.String())
	time.Sleep(100 * time.Millisecond) // any event that should not be there has had time to come
	reads := auditEventsOf(t, audit.String(), "admin.read")
	require.Len(t, reads, 2, audit.String())
	for i, route := range []string{"/v1/keys", "/v1/keys/{id}"} {
		assert.Equal(t, r.ID, reads[i]["key_id"], "the caller is named")
		assert.Equal(t, route, reads[i]["route"], "the route, never the raw path")
		assert.Equal(t, "GET", reads[i]["method"])
		assert.Equal(t, "127.0.0.1", reads[i]["client_ip"])
		assert.Equal(t, float64(200), reads[i]["status"])
		assert.Nil(t, reads[i]["path"])
	}
	assert.Equal(t, "req--v1-keys", reads[0]["request_id"])
	assert.NotContains(t, audit.String(), reader)
}

// A request refused as malformed (400, before routing) is what someone
// probing for another spelling of a protected path sends: its event still
// names the client address the decision read, so that the probe can be
// followed, though not the path, which may hold anything.
func TestAMalformedRequestIsAuditedWithItsClientAddress(t *testing.T) {
	ts, audit := startAudited(t, false)
	for _, p := range []string{"/api/../admin", "/api/users%2fx", "/api/users\x00"} {
		code, _ := denial(t, ts.check(t, "GET", p, nil))
		require.Equal(t, "bad_request", code, p)
	}
	// The proxy's X-Forwarded-For names the client in HTTP mode
	// (xff_trusted_hops: 1), a proxy never being the client.
	st, _, _ := get(t, ts.httpURL+"/authz/api/%2e%2e/admin", map[string]string{"X-Forwarded-For": "198.51.100.9"})
	require.Equal(t, 400, st)

	var events []map[string]any
	require.Eventually(t, func() bool {
		events = auditEvents(t, audit.String())
		return len(events) >= 4
	}, 5*time.Second, 10*time.Millisecond, audit.String())
	for i, e := range events {
		assert.Equal(t, "bad_request", e["code"], "%v", e)
		want := "10.1.2.3" // the gRPC test client's source address
		if i == 3 {
			want = "198.51.100.9" // the entry HTTP mode's proxy appended
		}
		assert.Equal(t, want, e["client_ip"], "a 400 names its client: %v", e)
		assert.Nil(t, e["path"], "a refused path is not written: %v", e)
	}
}

// A key pasted where the decision does not read one (into the path, the
// user agent, the request id, the host) is still a secret: the event
// says that field held a key, and never shows it, not even the half of it
// that the field's length cap would leave.
func TestAKeyPastedIntoARequestFieldIsNotAudited(t *testing.T) {
	ts, audit := startAudited(t, true)
	key, k := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:reports"}})

	ts.check(t, "GET", "/api/reports/"+key, map[string]string{"x-api-key": key})
	ts.check(t, "GET", "/api/reports/x", map[string]string{"x-api-key": key,
		"user-agent": "tool/1.0 (key=" + key + ")", "x-request-id": key})
	ts.check(t, "GET", "/api/reports/x", map[string]string{"user-agent": strings.Repeat("u", auditpkg.MaxFieldLen-20) + key})
	// Most of a key is as bad as all of it: without its checksum, with a
	// character mistyped, or cut after 22 of its characters.
	mistyped := []byte(key)
	mistyped[len(key)-1] ^= 1
	ts.check(t, "GET", "/api/reports/r-"+key[:3+22]+"-x", map[string]string{"x-api-key": key, "user-agent": "ua " + key[:len(key)-6],
		"x-request-id": string(mistyped)})
	// The admin API's refusals carry the user agent and request id too.
	req, err := http.NewRequest("GET", ts.adminURL+"/v1/keys/"+k.ID, nil)
	require.NoError(t, err)
	req.Header.Set("x-api-key", key)
	req.Header.Set("User-Agent", "ua "+key)
	req.Header.Set("X-Request-Id", "id-"+key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 403, resp.StatusCode)

	var events []map[string]any
	require.Eventually(t, func() bool {
		events = auditEvents(t, audit.String())
		return len(events) >= 5
	}, 5*time.Second, 10*time.Millisecond, audit.String())
	out := audit.String()
	assert.NotContains(t, out, key[3:3+22], "the audit holds a key, or most of one")
	assert.NotContains(t, out, key[:20], "the audit holds the start of a key")
	const mark = "[redacted: held an API key]"
	// The admin refusal of a key holder is queued with the key changes, the
	// checks with the decisions: each queue keeps its order, not the two.
	var checks, refused []map[string]any
	for _, e := range events {
		if e["event"] == "admin.auth_failed" {
			refused = append(refused, e)
		} else {
			checks = append(checks, e)
		}
	}
	require.Len(t, checks, 4, out)
	require.Len(t, refused, 1, out)
	assert.Equal(t, mark, checks[0]["path"])
	assert.Equal(t, "/api/reports/**", checks[0]["route"], "the route still says what was asked")
	assert.Equal(t, mark, checks[1]["user_agent"])
	assert.Equal(t, mark, checks[1]["request_id"])
	assert.Equal(t, "/api/reports/x", checks[1]["path"], "a field without a key is kept")
	assert.Equal(t, mark, checks[2]["user_agent"])
	for _, field := range []string{"user_agent", "request_id", "path"} {
		assert.Equal(t, mark, checks[3][field], field)
	}
	assert.Equal(t, mark, refused[0]["user_agent"])
	assert.Equal(t, mark, refused[0]["request_id"])
}

// A change made through the admin API names the call that made it, as a
// refused call does: after a keys:write key is stolen, its key.created
// and key.revoked events say from where it was used.
func TestAnAdminChangeNamesTheCallThatMadeIt(t *testing.T) {
	ts, audit := startAudited(t, true)
	writer, w := ts.create(t, keystore.Spec{Name: "writer", Permissions: []string{"keys:write", "read:users"}})

	call := func(method, p, body string) string {
		req, err := http.NewRequest(method, ts.adminURL+p, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("x-api-key", writer)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("User-Agent", "attacker-tool/2")
		req.Header.Set("X-Request-Id", "req-"+method)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Less(t, resp.StatusCode, 300)
		var v struct{ ID string }
		_ = json.NewDecoder(resp.Body).Decode(&v)
		return v.ID
	}
	id := call("POST", "/v1/keys", `{"name": "backdoor", "permissions": ["read:users"]}`)
	call("DELETE", "/v1/keys/"+id, "")

	var events []map[string]any
	require.Eventually(t, func() bool {
		events = auditEvents(t, audit.String())
		return len(events) >= 2
	}, 5*time.Second, 10*time.Millisecond, audit.String())
	for i, want := range []struct{ event, method, route string }{
		{"key.created", "POST", "/v1/keys"},
		{"key.revoked", "DELETE", "/v1/keys/{id}"},
	} {
		e := events[i]
		assert.Equal(t, want.event, e["event"])
		assert.Equal(t, id, e["key_id"])
		assert.Equal(t, w.ID, e["actor"])
		assert.Equal(t, "127.0.0.1", e["client_ip"], "%v", e)
		assert.Equal(t, want.method, e["method"], "%v", e)
		assert.Equal(t, want.route, e["route"], "the route, not the path: %v", e)
		assert.Equal(t, "attacker-tool/2", e["user_agent"], "%v", e)
		assert.Equal(t, "req-"+want.method, e["request_id"], "%v", e)
		assert.Nil(t, e["path"])
	}
}

// Standard output is the audit sink, and often a pipe into a log shipper.
// When the shipper goes away, the next event's write fails; that is an
// audit sink error, counted and logged, not a reason for the authorization
// service to die (Go's default on a broken pipe at standard output), which
// would take every request behind it down with the log reader.
func TestABrokenAuditPipeDoesNotKillTheServer(t *testing.T) {
	port := redistest.FreePort(t)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: off, http: \"127.0.0.1:%d\", admin: off}\nstore: {path: %q}\naudit: {sink: stdout}\n%s",
		port, filepath.Join(t.TempDir(), "k.db"), testRoutes))
	r, w, err := os.Pipe()
	require.NoError(t, err)
	cmd := exec.Command(os.Args[0], "serve", "--config", path)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var stderr syncbuf.Buffer
	cmd.Stdout, cmd.Stderr = w, &stderr
	require.NoError(t, cmd.Start())
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "extauthz serving") }, 10*time.Second, 20*time.Millisecond)
	r.Close() // the log shipper is gone

	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	for range 3 {
		st, _, _ := get(t, base+"/authz/api/users", nil)
		require.Equal(t, 401, st)
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case err := <-exited:
		t.Fatalf("the server exited when its audit pipe broke: %v\n%s", err, stderr.String())
	case <-time.After(300 * time.Millisecond):
	}
	st, _, _ := get(t, base+"/authz/api/users", nil)
	assert.Equal(t, 401, st, "still deciding")
	assert.Contains(t, stderr.String(), "audit: sink write failed", "the lost events are logged")
}

// Refused before step 2 too: a request that selects no policy (an unknown
// context_extensions value: 403 no_policy), and an HTTP-mode auth request
// without the original request's headers (400), name their client: for
// the latter, the trusted X-Forwarded-For hop, as a decision would read it.
func TestARequestRefusedBeforeItIsReadNamesItsClient(t *testing.T) {
	var audit syncbuf.Buffer
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\nstore: {path: %q}\n"+
		"http_mode: {original: x-forwarded, xff_trusted_hops: 1}\n%s", filepath.Join(t.TempDir(), "k.db"), meshConfig))
	ts := startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}, audit: &audit})
	resp, err := ts.client.Check(t.Context(), meshCheck("/invoices/1", "api.example.com", "", map[string]string{"policy": "nosuch"}, ""))
	require.NoError(t, err)
	code, _ := denial(t, resp)
	require.Equal(t, "no_policy", code)
	st, _, _ := get(t, ts.httpURL+"/authz", map[string]string{"X-Forwarded-For": "198.51.100.7"})
	require.Equal(t, 400, st, "no X-Forwarded-Uri")

	var events []map[string]any
	require.Eventually(t, func() bool {
		events = auditEvents(t, audit.String())
		return len(events) >= 2
	}, 5*time.Second, 10*time.Millisecond, audit.String())
	assert.Equal(t, "no_policy", events[0]["code"])
	assert.Equal(t, "10.1.2.3", events[0]["client_ip"], "%v", events[0])
	assert.Equal(t, "bad_request", events[1]["code"])
	assert.Equal(t, "198.51.100.7", events[1]["client_ip"], "%v", events[1])
}

// A key record whose text is not UTF-8 (a row of the embedded store written
// by something else than extauthz's checks) cannot be answered over gRPC:
// the check is an RPC error, which Envoy answers as the service failing
// (status_on_error, 503 in the shipped configs), whatever the decision and
// whatever the mode. Its audit event says so, naming the key, and never
// that the request was allowed, or denied otherwise.
func TestAnAnswerThatCannotBeSentIsAuditedAsTheFailureEnvoySaw(t *testing.T) {
	for _, mode := range []string{"enforce", "shadow"} {
		t.Run(mode, func(t *testing.T) {
			audit := &syncbuf.Buffer{}
			store := filepath.Join(t.TempDir(), "k.db")
			path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\nstore: {path: %q}\nmode: %s\n%s",
				store, mode, testRoutes))
			ts := startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}, audit: audit})
			key, k := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
			_, err := openStoreFile(t, store).Exec("UPDATE keys SET name = CAST(X'6e61ff6d65' AS TEXT) WHERE id = ?", k.ID)
			require.NoError(t, err)

			// Allowed, and denied (a permission the key lacks).
			for _, p := range []string{"/api/users", "/api/reports/x"} {
				_, err := ts.client.Check(t.Context(), checkReq("GET", p, "10.1.2.3", map[string]string{"x-api-key": key}))
				require.Equal(t, codes.Internal, status.Code(err), "%s: %v", p, err)
			}
			var events []map[string]any
			require.Eventually(t, func() bool {
				events = auditEventsOf(t, audit.String(), "decision")
				return len(events) >= 2
			}, 5*time.Second, 10*time.Millisecond, audit.String())
			time.Sleep(100 * time.Millisecond) // a second event for one check would have come by now
			events = auditEventsOf(t, audit.String(), "decision")
			require.Len(t, events, 2, "one event per check")
			for _, e := range events {
				assert.Equal(t, "deny", e["decision"], "%v", e)
				assert.Equal(t, "unavailable", e["code"], "%v", e)
				assert.EqualValues(t, 503, e["status"], "%v", e)
				assert.Equal(t, "enforce", e["mode"], "Envoy fails closed in shadow mode too: %v", e)
				assert.Equal(t, k.ID, e["key_id"], "%v", e)
			}
		})
	}
}

// A key mistyped where it was pasted into a request field (a character of
// its first 22 mistyped as one no key has, its "_" as "-", or wrapped at a
// space) still carries nearly all of its secret: the audit replaces the
// field as it does one that holds the key.
func TestAMistypedKeyInARequestFieldIsNotAudited(t *testing.T) {
	ts, audit := startAudited(t, false)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:reports"}})
	random := key[3 : 3+43]
	typo := []byte(key)
	typo[3+10] = '-'
	ts.check(t, "GET", "/api/reports/x", map[string]string{
		"x-api-key":    key,
		"user-agent":   "tool/1.0 (key=" + string(typo) + ")",
		"x-request-id": "sk-" + key[3:],
	})
	ts.check(t, "GET", "/api/reports/x", map[string]string{"x-api-key": key, "user-agent": "ua " + key[:3+20] + " " + key[3+20:]})
	require.Eventually(t, func() bool { return len(auditEvents(t, audit.String())) >= 2 }, 5*time.Second, 10*time.Millisecond)
	out := audit.String()
	for _, part := range []string{random[11:], random, random[20:]} {
		assert.NotContains(t, out, part, "the audit holds %d of a key's 43 random characters", len(part))
	}
}

// More spellings of a key in a request field that still carry all of its
// secret: the "_" percent-encoded (as a client library encodes a value) or
// typed as a space, a wrap at four bytes no key has.
func TestAKeySpelledOtherwiseInARequestFieldIsNotAudited(t *testing.T) {
	ts, audit := startAudited(t, false)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:reports"}})
	random := key[3 : 3+43]
	cases := []map[string]string{
		{"x-request-id": "sk%5F" + key[3:]},
		{"user-agent": "tool/1 key=sk " + key[3:]},
		{"user-agent": "ua " + key[:3+21] + "\t   " + key[3+21:]},
	}
	for _, h := range cases {
		h["x-api-key"] = key
		ts.check(t, "GET", "/api/reports/x", h)
	}
	require.Eventually(t, func() bool { return len(auditEvents(t, audit.String())) >= len(cases) }, 5*time.Second, 10*time.Millisecond)
	for i, e := range auditEvents(t, audit.String()) {
		line := fmt.Sprint(e["user_agent"], " ", e["request_id"])
		assert.False(t, strings.Contains(line, random[:21]) && strings.Contains(line, random[21:]), "event %d holds all of a key's 43 random characters: %s", i, line)
	}
}

// A key pasted with its checksum mistyped or cut into a key's name or owner
// is no key, but carries all of its secret, and a key's labels are written
// into the audit on every decision it makes: such labels are refused, by
// the admin API and the Manager (the CLI), and a record that holds one all
// the same (made before, or written straight into the store) has them
// replaced in the audit.
func TestAMistypedKeyInAKeysLabelsIsRefusedAndNeverAudited(t *testing.T) {
	ts, audit := startAudited(t, true)
	victim, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:reports"}})
	writer, _ := ts.create(t, keystore.Spec{Name: "writer", Permissions: []string{"keys:write", "read:reports"}})
	mistyped := []byte(victim)
	mistyped[len(mistyped)-1] ^= 1 // the checksum's last character: all 43 random characters intact
	cut := victim[:len(victim)-1]

	req, err := http.NewRequest("POST", ts.adminURL+"/v1/keys", strings.NewReader(`{"name": "`+string(mistyped)+`", "permissions": ["read:reports"]}`))
	require.NoError(t, err)
	req.Header.Set("x-api-key", writer)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusBadRequest, resp.StatusCode, "%s", body)
	assert.Contains(t, string(body), "name")
	assert.NotContains(t, string(body), victim[3:20])
	for _, spec := range []keystore.Spec{{Name: cut, Permissions: []string{"x"}}, {Name: "o", Owner: cut, Permissions: []string{"x"}}} {
		_, _, err := ts.mgr.Create(context.Background(), spec, "cli")
		var fe *keystore.FieldError
		require.ErrorAs(t, err, &fe)
	}

	// Records that hold them all the same, as a store may from before.
	for _, edit := range []func(k *keystore.Key){func(k *keystore.Key) { k.Name = cut }, func(k *keystore.Key) { k.Owner = cut }} {
		secret, err := ts.mgr.Format.Generate()
		require.NoError(t, err)
		id, err := keystore.NewID(time.Now())
		require.NoError(t, err)
		k := &keystore.Key{ID: id, Name: "n", Owner: "o", Permissions: []string{"read:reports"}, CreatedAt: time.Now().UTC()}
		edit(k)
		require.NoError(t, ts.mgr.Store.Create(context.Background(), k, ts.mgr.Hasher.Hash(secret), 0))
		resp := ts.check(t, "GET", "/api/reports/x", map[string]string{"x-api-key": secret})
		require.NotNil(t, resp.GetOkResponse(), "%v", resp.GetStatus())
	}
	require.Eventually(t, func() bool { return len(auditEventsOf(t, audit.String(), "decision")) >= 2 }, 5*time.Second, 10*time.Millisecond)
	assert.NotContains(t, audit.String(), victim[3:3+43], "the audit holds all 43 random characters of a key")
	assert.Contains(t, audit.String(), `"key_name":"[redacted: held an API key]"`)
	assert.Contains(t, audit.String(), `"owner":"[redacted: held an API key]"`)
}
