package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A key pasted into a new key's name, owner, permissions or metadata is
// refused (LabelHoldsKey), also wrapped or grouped: one space (or any run
// of up to a few bytes no key has) anywhere in it, or every few
// characters. Accepted, the label would be written whole into every
// decision's audit event, the upstream's x-authz-key-name / x-authz-owner
// headers and Envoy's dynamic metadata, and whoever reads it would only
// have to remove the space.
func TestAWrappedKeyIsRefusedAsALabel(t *testing.T) {
	var logs, events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: stdout}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: &events})
	adminKey, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	pasted, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
	random := pasted[3 : len(pasted)-6]

	for _, tc := range []struct{ name, label string }{
		{"wrapped after 10 characters, name", pasted[:13] + " " + pasted[13:]},
		{"a dot after 10 characters, owner", pasted[:13] + "." + pasted[13:]},
		{"a colon after 10 characters, permission", pasted[:13] + ":" + pasted[13:]},
		{"wrapped after 10 characters, meta", pasted[:13] + " " + pasted[13:]},
		{"grouped by 4, name", func() string {
			var p []string
			s := pasted
			for len(s) > 4 {
				p, s = append(p, s[:4]), s[4:]
			}
			return strings.Join(append(p, s), " ")
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			field := "name"
			body := map[string]any{"name": tc.label, "permissions": []string{"read:users"}}
			switch {
			case strings.HasSuffix(tc.name, "owner"):
				field = "owner"
				body = map[string]any{"name": "svc", "owner": tc.label, "permissions": []string{"read:users"}}
			case strings.HasSuffix(tc.name, "permission"):
				field = "permissions"
				body = map[string]any{"name": "svc", "permissions": []string{"read:users", tc.label}}
			case strings.HasSuffix(tc.name, "meta"):
				field = "meta"
				body = map[string]any{"name": "svc", "permissions": []string{"read:users"}, "meta": map[string]string{"note": tc.label}}
			}
			b, _ := json.Marshal(body)
			req, err := http.NewRequest("POST", ts.adminURL+"/v1/keys", strings.NewReader(string(b)))
			require.NoError(t, err)
			req.Header.Set("X-Api-Key", adminKey)
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !assert.Equal(t, 400, resp.StatusCode, "a key wrapped once is accepted as the %s: %s", field, out) {
				var made struct{ Key string }
				require.NoError(t, json.Unmarshal(out, &made))
				resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": made.Key})
				ok := resp.GetOkResponse()
				require.NotNil(t, ok)
				if md := resp.GetDynamicMetadata().String(); strings.Contains(strings.NewReplacer(" ", "", ".", "", ":", "").Replace(md), random) {
					t.Errorf("Envoy dynamic metadata: %s", md)
				}
				for h, v := range headerMap(ok.GetHeaders()) {
					if strings.Contains(strings.NewReplacer(" ", "", ".", "", ":", "").Replace(v), random) {
						t.Errorf("upstream header %s: %q", h, v)
					}
				}
			}
		})
	}
	ts.stop()
	for _, line := range strings.Split(events.String(), "\n") {
		if strings.Contains(line, `"event":"decision"`) && strings.Contains(strings.NewReplacer(" ", "", ".", "", ":", "").Replace(line), random) {
			t.Errorf("audit decision event holds the wrapped key: %s", line)
		}
	}
}
