package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/admin"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/internal/visible"
	"github.com/extauthz/extauthz/keystore"
)

// leakServer is a server whose leak receiver trusts a GitHub signing key
// made for the test, and the key to sign reports with.
type leakServer struct {
	*testServer
	github  *ecdsa.PrivateKey
	keyID   string
	logs    *syncbuf.Buffer
	events  *syncbuf.Buffer
	reports string // the leak receiver's URL on the HTTP listener
}

func startLeakServer(t *testing.T) *leakServer {
	t.Helper()
	return startLeakServerLogging(t, "json")
}

// startLeakServerLogging is startLeakServer with its log in format (json
// or text).
func startLeakServerLogging(t *testing.T, format string) *leakServer {
	t.Helper()
	github, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	der, err := x509.MarshalPKIXPublicKey(&github.PublicKey)
	require.NoError(t, err)
	const keyID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"
	doc, err := json.Marshal(map[string]any{"public_keys": []map[string]any{{
		"key_identifier": keyID, "key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})), "is_current": true,
	}}})
	require.NoError(t, err)
	keysFile := filepath.Join(t.TempDir(), "github-keys.json")
	require.NoError(t, os.WriteFile(keysFile, doc, 0o600))

	var logs, events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\n"+
		"audit: {sink: stdout}\nlog: {level: debug, format: "+format+"}\n"+fmt.Sprintf("leaks: {github_keys_file: %q}\n", keysFile)+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: &events})
	return &leakServer{testServer: ts, github: github, keyID: keyID, logs: &logs, events: &events,
		reports: ts.httpURL + "/v1/leaks/github"}
}

// report posts body to the server's leak receiver, signed by GitHub's key.
func (ls *leakServer) report(t *testing.T, body []byte) (int, string) {
	t.Helper()
	digest := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, ls.github, digest[:])
	require.NoError(t, err)
	return ls.post(t, body, base64.StdEncoding.EncodeToString(sig))
}

func (ls *leakServer) post(t *testing.T, body []byte, sig string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("POST", ls.reports, bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Github-Public-Key-Identifier", ls.keyID)
	req.Header.Set("Github-Public-Key-Signature", sig)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func leakReport(token, url string) []byte {
	b, _ := json.Marshal([]map[string]string{{"token": token, "type": "extauthz_api_key", "url": url, "source": "content"}})
	return b
}

// A report GitHub signed, on the server's HTTP listener: the key is revoked
// everywhere, the audit says key.leaked (by its id), and neither the log
// nor the audit holds the secret, even where GitHub's URL names it.
func TestAGitHubReportRevokesTheKeyThroughTheServer(t *testing.T) {
	ls := startLeakServer(t)
	secret, k := ls.create(t, keystore.Spec{Name: "billing", Owner: "team-a", Permissions: []string{"read:users"}})
	require.NotNil(t, ls.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}).GetOkResponse())

	forged := leakReport(secret, "https://github.com/octo/repo/blob/abc/.env")
	status, body := ls.post(t, forged, base64.StdEncoding.EncodeToString([]byte("not a signature")))
	require.Equal(t, http.StatusUnauthorized, status, body)
	require.NotNil(t, ls.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}).GetOkResponse(), "a forged report revokes nothing")

	status, body = ls.report(t, leakReport(secret, "https://github.com/octo/repo/blob/abc/"+secret+".env"))
	require.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, `"label":"true_positive"`)
	assert.NotContains(t, body, secret)

	require.Eventually(t, func() bool {
		resp := ls.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
		return resp.GetDeniedResponse() != nil
	}, 2*time.Second, 10*time.Millisecond, "the leaked key is refused")
	code, _ := denial(t, ls.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}))
	assert.Equal(t, "revoked_key", code)

	var leaked map[string]any
	require.Eventually(t, func() bool {
		for line := range strings.Lines(ls.events.String()) {
			var ev map[string]any
			if json.Unmarshal([]byte(line), &ev) == nil && ev["event"] == "key.leaked" {
				leaked = ev
				return true
			}
		}
		return false
	}, 2*time.Second, 10*time.Millisecond, "a key.leaked event")
	assert.Equal(t, k.ID, leaked["key_id"])
	assert.Equal(t, "team-a", leaked["owner"])
	assert.Equal(t, admin.LeakActor, leaked["actor"])
	assert.Contains(t, ls.logs.String(), "GitHub reported a leaked API key")
	assert.NotContains(t, ls.events.String(), secret, "no secret in the audit")
	assert.NotContains(t, ls.logs.String(), secret, "no secret in the log")
}

// The URL of a report is text of someone else's: a file in a public
// repository can be named with a right-to-left override, a zero-width
// space, a C1 CSI or a Hangul filler, which Go counts as printable but
// draws as nothing. In either log format they are escapes, which act on no
// terminal and read back as GitHub sent them.
func TestALeakReportsURLReachesTheLogEscaped(t *testing.T) {
	for _, tc := range []struct{ name, url, json, text string }{
		{"controls, bidi and zero-width",
			"https://github.com/octo/repo/blob/abc/pay\u202eroll\u200b\u009b2J\U000E0041.env",
			`pay\u202eroll\u200b\u009b2J\udb40\udc41.env`, `pay\u202eroll\u200b\u009b2J\U000e0041.env`},
		{"a filler alone, which leaves a text value bare",
			"https://github.com/octo/repo/blob/abc/pay\u3164roll.env",
			`pay\u3164roll.env`, `"https://github.com/octo/repo/blob/abc/pay\u3164roll.env"`},
		{"a filler among characters the text format quotes",
			"https://github.com/octo/repo/blob/abc/pay roll\u202e\u3164.env",
			`pay roll\u202e\u3164.env`, `pay roll\u202e\u3164.env"`},
	} {
		for _, format := range []string{"json", "text"} {
			t.Run(tc.name+", "+format, func(t *testing.T) {
				ls := startLeakServerLogging(t, format)
				secret, _ := ls.create(t, keystore.Spec{Name: "billing", Owner: "team-a", Permissions: []string{"read:users"}})
				status, body := ls.report(t, leakReport(secret, tc.url))
				require.Equal(t, http.StatusOK, status, body)

				var line string
				require.Eventually(t, func() bool {
					for l := range strings.Lines(ls.logs.String()) {
						if strings.Contains(l, "GitHub reported a leaked API key") {
							line = l
							return true
						}
					}
					return false
				}, 2*time.Second, 10*time.Millisecond, "the report is logged")
				for _, r := range line {
					if r != '\n' && !visible.Rune(r) {
						t.Fatalf("the log line holds U+%04X raw: %q", r, line)
					}
				}
				if format == "json" {
					assert.Contains(t, line, tc.json)
					var rec map[string]any
					require.NoError(t, json.Unmarshal([]byte(line), &rec), line)
					assert.Equal(t, tc.url, rec["found_at"])
					return
				}
				assert.Contains(t, line, tc.text)
				_, v, ok := strings.Cut(line, " found_at=")
				require.True(t, ok, line)
				q, err := strconv.QuotedPrefix(v)
				require.NoError(t, err, "the value is quoted: %s", line)
				got, err := strconv.Unquote(q)
				require.NoError(t, err)
				assert.Equal(t, tc.url, got, "the value reads back as sent")
			})
		}
	}
}

// Clients that open reports on the public listener and stall, having sent
// little or as much as the server will hold, do not keep GitHub's report
// out, however many they are.
func TestStalledReportsOnTheHTTPListenerDoNotKeepGitHubOut(t *testing.T) {
	ls := startLeakServer(t)
	secret, _ := ls.create(t, keystore.Spec{Name: "billing", Permissions: []string{"read:users"}})
	addr := strings.TrimPrefix(ls.httpURL, "http://")
	stall := func(sent []byte) {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		_, err = fmt.Fprintf(conn, "POST /v1/leaks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
			"Github-Public-Key-Identifier: %s\r\nGithub-Public-Key-Signature: AAAA\r\n\r\n", admin.DefaultLeakBodyBytes, ls.keyID)
		require.NoError(t, err)
		_, err = conn.Write(sent)
		require.NoError(t, err)
	}
	full := bytes.Repeat([]byte(" "), admin.DefaultLeakBodyBytes-1)
	for range admin.DefaultLeakBufferedBytes / admin.DefaultLeakBodyBytes {
		stall([]byte("["))
		stall(full)
	}
	time.Sleep(200 * time.Millisecond) // the stalled reports are being read

	start := time.Now()
	status, body := ls.report(t, leakReport(secret, "https://github.com/octo/repo/blob/abc/config.yaml"))
	require.Equal(t, http.StatusOK, status, body)
	assert.Contains(t, body, `"label":"true_positive"`)
	assert.Less(t, time.Since(start), 2*time.Second)
}
