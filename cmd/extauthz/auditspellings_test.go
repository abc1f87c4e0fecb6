package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// TestTheAuditKeepsNoKeyInAnySpelling sends, through the real gRPC
// check path, requests whose user agent and request id carry a key of the
// server's format in spellings a client may paste it in, then reads every
// audit event (decoded from its JSON, as any reader of the trail does) and
// the log, and searches them for the key's secret (its 43-character random
// part: the checksum and the prefix are public/derivable).
func TestTheAuditKeepsNoKeyInAnySpelling(t *testing.T) {
	var logs, events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\"}\n"+
		"audit: {sink: stdout}\nlog: {level: debug}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: &events})

	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	key, err := f.Generate()
	require.NoError(t, err)
	random := key[3 : len(key)-6]

	pct := func(s string) string {
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			fmt.Fprintf(&b, "%%%02X", s[i])
		}
		return b.String()
	}
	group := func(s, sep string, n int) string {
		var parts []string
		for len(s) > n {
			parts = append(parts, s[:n])
			s = s[n:]
		}
		return strings.Join(append(parts, s), sep)
	}
	typo := func(s string) string { // the last checksum character mistyped
		c := byte('A')
		if s[len(s)-1] == 'A' {
			c = 'B'
		}
		return s[:len(s)-1] + string(c)
	}
	spellings := map[string]string{
		"percent-encoded":                   "client/1.0 token=" + pct(key),
		"base64 Basic credentials":          "Basic " + base64.StdEncoding.EncodeToString([]byte(key+":")),
		"grouped by 4 with spaces":          "client/1.0 " + group(key, " ", 4),
		"grouped by 4 with dashes":          "client/1.0 " + group(key, "-", 4),
		"grouped by 8 with spaces":          "client/1.0 " + group(key, " ", 8),
		"zero-width space every 6":          "client/1.0 " + group(key, "\u200b", 6),
		"prefix in capitals, checksum typo": "client/1.0 SK_" + typo(key[3:]),
		// Not here: a key's random part alone, or with its prefix lost and
		// its checksum mistyped, is a token like any other, and is written
		// out as one (keystore.Format.MayHoldKey).
	}
	for name, v := range spellings {
		for _, h := range []string{"user-agent", "x-request-id"} {
			ts.check(t, "GET", "/api/users", map[string]string{h: v, "x-request-id-tag": name})
		}
	}
	ts.stop()

	// What a reader of the trail gets: the fields' decoded text.
	var decoded strings.Builder
	for _, line := range strings.Split(strings.TrimSpace(events.String()), "\n") {
		var ev map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &ev), line)
		for _, f := range []string{"user_agent", "request_id"} {
			if s, ok := ev[f].(string); ok {
				decoded.WriteString(s + "\n")
			}
		}
	}
	text := decoded.String()
	recovers := func(s string) bool {
		// Undo each spelling the way its reader would.
		cands := []string{s, strings.ReplaceAll(s, " ", ""), strings.ReplaceAll(s, "-", ""), strings.ReplaceAll(s, "\u200b", "")}
		for _, w := range strings.Fields(s) {
			if b, err := base64.StdEncoding.DecodeString(w); err == nil {
				cands = append(cands, string(b))
			}
			if strings.Contains(w, "%") {
				var out []byte
				for i := 0; i < len(w); i++ {
					if w[i] == '%' && i+2 < len(w) {
						var c byte
						fmt.Sscanf(w[i+1:i+3], "%02X", &c)
						out = append(out, c)
						i += 2
						continue
					}
					out = append(out, w[i])
				}
				cands = append(cands, string(out))
			}
		}
		for _, c := range cands {
			if strings.Contains(c, random) {
				return true
			}
		}
		return false
	}
	for name, v := range spellings {
		for _, line := range strings.Split(text, "\n") {
			if line == v {
				assert.False(t, recovers(line), "audit event written with the key's whole secret recoverable (%s): %q", name, line)
			}
		}
	}
	assert.False(t, recovers(logs.String()), "the log holds the key")
}
