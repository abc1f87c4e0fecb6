package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A key's secret is its 43 random characters (and the checksum that lets
// anyone confirm them offline); the prefix is public. A key pasted with its
// prefix lost or mistyped (Caps Lock, a neighbouring letter, the prefix of
// another environment) still carries all 256 bits, and its checksum still
// tells a reader of the audit trail that it is a real key of this server:
// CRC-32("sk_" + the 43 characters) is the 6 characters that follow. Such a
// near-miss, in a client field the audit writes (path, user agent, request
// id, host), must be redacted as the key itself is.
func TestAKeyWhosePrefixIsLostOrMistypedNeverReachesTheAudit(t *testing.T) {
	var events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\n"+
		"audit: {sink: stdout}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}, audit: &events})
	key, _ := ts.create(t, keystore.Spec{Name: "svc", Permissions: []string{"read:users"}})
	body := key[len("sk_"):]     // the 43 random characters and the checksum
	random := body[:len(body)-6] // the secret itself
	require.Len(t, random, 43)

	nearMisses := map[string]string{
		"no prefix":          body,
		"prefix in capitals": "SK_" + body,
		"prefix mistyped":    "sl_" + body,
		"prefix as a word":   "sk:" + body,
	}
	for _, v := range nearMisses {
		// The key standing where a path segment goes, and in the client's
		// own headers the audit records.
		ts.check(t, "GET", "/api/reports/"+v, map[string]string{"user-agent": "client/1.0 " + v, "x-request-id": v})
	}
	ts.stop() // flushes the audit queue

	out := events.String()
	require.Contains(t, out, `"event":"decision"`)
	for name, v := range nearMisses {
		assert.False(t, strings.Contains(out, v), "the audit holds a key with %s: %s", name, v)
	}
	assert.False(t, strings.Contains(out, random), "the audit holds a key's whole random part (%d occurrences)", strings.Count(out, random))
}

// TestAFailedHandshakeLogsNoKeyAndAShortLine holds for a key as it was
// issued. The same key offered with its prefix lost or mistyped still
// carries every random character and the checksum that confirms them, and
// reaches the server's log from anyone who can open a TLS connection.
func TestAFailedHandshakeLogsNoKeyWhosePrefixIsLostOrMistyped(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	tlsYAML := fmt.Sprintf("tls: {cert_file: %q, key_file: %q}\n", certs.ServerCert, certs.ServerKey)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%s%s",
		filepath.Join(t.TempDir(), "k.db"), testRoutes, tlsYAML))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	body := key[len("sk_"):]
	for _, offered := range []string{body, "SK_" + body} {
		c := clientTLS(certs, false)
		c.NextProtos = []string{offered}
		conn, err := tls.Dial("tcp", ts.srv.httpLn.Addr().String(), c)
		if err == nil {
			conn.Close()
		}
		require.Error(t, err, "the server accepts none of the protocols offered")
	}
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"level":"WARN"`) >= 2 }, 5*time.Second, 10*time.Millisecond)
	out := logs.String()
	random := body[:len(body)-6]
	assert.False(t, strings.Contains(out, random), "the server log holds a key's whole random part (%d times): %s", strings.Count(out, random), out)
}
