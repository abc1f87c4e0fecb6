package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A key's labels are refused when they hold a key, but only when a key is
// made or changed: a record made before that (or by an older version whose
// reading was narrower), or written into the store by hand, was served as
// stored, and every request the key made carried the secret in its labels
// to the upstream (x-authz-key-name, x-authz-owner, x-authz-permissions,
// x-authz-meta-*), over gRPC and in HTTP mode, and into Envoy's dynamic
// metadata. Each label, holding a key whole, wrapped or with its checksum
// cut, is now served redacted, the key still works, and a log line names
// the key by its id only.
func TestAStoredLabelHoldingAKeyNeverReachesTheUpstream(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			var logs syncbuf.Buffer
			path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nforward_meta: [note, plan]\n"+
				storeYAML(t, backend)+testRoutes)
			ts := startServerOut(t, path, serverOutput{logs: &logs})
			leaked, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
			random := leaked[3 : len(leaked)-6]
			forms := map[string]string{
				"whole":           leaked,
				"wrapped":         leaked[:13] + " " + leaked[13:],
				"checksum cut":    leaked[:len(leaked)-6],
				"in a sentence":   "rotate " + leaked + " soon",
				"prefix in caps":  "SK" + leaked[2:],
				"grouped by four": groupedBy4(leaked),
			}
			for form, label := range forms {
				for _, field := range []string{"name", "owner", "permission", "meta value", "meta name"} {
					t.Run(form+"/"+field, func(t *testing.T) {
						k := &keystore.Key{Name: "legacy", Owner: "team", Permissions: []string{"read:users"},
							Meta: map[string]string{"plan": "gold"}}
						switch field {
						case "name":
							k.Name = label
						case "owner":
							k.Owner = label
						case "permission":
							k.Permissions = append(k.Permissions, label)
						case "meta value":
							k.Meta["note"] = label
						case "meta name":
							k.Meta[label] = "x"
						}
						secret := storeByHand(t, ts, k)
						resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
						ok := resp.GetOkResponse()
						require.NotNil(t, ok, "the key still works: %v", resp.GetDeniedResponse())
						headers := headerMap(ok.GetHeaders())
						assert.Equal(t, "read:users", headers["x-authz-permissions"])
						assert.Equal(t, "gold", headers["x-authz-meta-plan"], "an entry without a key is forwarded as stored")
						for h, v := range headers {
							assert.False(t, holdsRandom(v, random), "upstream header %s: %q", h, v)
						}
						assert.False(t, holdsRandom(resp.GetDynamicMetadata().String(), random), "Envoy's dynamic metadata: %s", resp.GetDynamicMetadata())
						switch field {
						case "name":
							assert.Equal(t, keystore.RedactedLabel, headers["x-authz-key-name"])
						case "owner":
							assert.Equal(t, keystore.RedactedLabel, headers["x-authz-owner"])
						case "meta value":
							assert.Equal(t, keystore.RedactedLabel, headers["x-authz-meta-note"])
						}

						status, _, hh := get(t, ts.httpURL+"/authz/api/users", map[string]string{"X-Api-Key": secret})
						require.Equal(t, 200, status)
						for h, vs := range hh {
							for _, v := range vs {
								assert.False(t, holdsRandom(v, random), "HTTP mode: header %s: %q", h, v)
							}
						}
						assert.False(t, holdsRandom(logs.String(), random), "the log holds the key")
					})
				}
			}
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), "served with them redacted") }, 5*time.Second, 10*time.Millisecond)
		})
	}
}

// storeByHand writes k straight into the server's store, as a record made
// by hand or by an older version would be, and returns a key that finds it.
func storeByHand(t *testing.T, ts *testServer, k *keystore.Key) string {
	t.Helper()
	secret, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	now := time.Now().UTC()
	k.ID, err = keystore.NewID(now)
	require.NoError(t, err)
	k.CreatedAt = now
	require.NoError(t, ts.mgr.Store.Create(t.Context(), k, ts.mgr.Hasher.Hash(secret), 0))
	return secret
}

// holdsRandom reports whether s holds random (a key's random part) once
// the separators a label may wrap it with are taken out, in any case.
func holdsRandom(s, random string) bool {
	s = strings.NewReplacer(" ", "", ".", "", ":", "", "-", "").Replace(s)
	return strings.Contains(strings.ToLower(s), strings.ToLower(random[:20]))
}

func groupedBy4(s string) string {
	var parts []string
	for len(s) > 4 {
		parts, s = append(parts, s[:4]), s[4:]
	}
	return strings.Join(append(parts, s), " ")
}

// What shows a key's record shows such a label redacted too: the admin
// API, to a caller that may read the key but never saw the secret its label
// holds, and the CLI, whose output reaches terminals and CI logs.
func TestAStoredLabelHoldingAKeyIsShownRedacted(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	reader, _ := ts.create(t, keystore.Spec{Name: "auditor", Permissions: []string{"keys:read"}})
	leaked, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
	random := leaked[3 : len(leaked)-6]
	k := &keystore.Key{Name: "old " + leaked, Owner: keystore.DefaultOwner, Permissions: []string{"read:users", leaked},
		Meta: map[string]string{"note": groupedBy4(leaked)}}
	storeByHand(t, ts, k)

	for _, url := range []string{ts.adminURL + "/v1/keys/" + k.ID, ts.adminURL + "/v1/keys"} {
		status, body, _ := get(t, url, map[string]string{"X-Api-Key": reader})
		require.Equal(t, 200, status, body)
		assert.Contains(t, body, k.ID)
		assert.Contains(t, body, keystore.RedactedLabel)
		assert.False(t, holdsRandom(body, random), "GET %s: %s", url, body)
	}
	for _, args := range [][]string{{"keys", "show", k.ID}, {"keys", "show", k.ID, "--json"}, {"keys", "list"}, {"keys", "list", "--json"}} {
		out, errOut, code := cliRun(t, append(args, "--config", path)...)
		require.Equal(t, 0, code, errOut)
		assert.Contains(t, out, keystore.RedactedLabel, "%v", args)
		assert.False(t, holdsRandom(out+errOut, random), "%v: %s", args, out)
	}
	out, errOut, code := cliRun(t, "keys", "revoke", k.ID, "--json", "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.False(t, holdsRandom(out+errOut, random), "keys revoke: %s", out)
}

// The cache read each label as it is stored, but the upstream is sent each
// label as it is written out, in two ways that differ: a name, owner or
// forwarded metadata value has the bytes a header cannot carry dropped (a
// run of control bytes longer than a wrap's gap inside a key left it
// unread, and x-authz-key-name carried the exact key), and the permissions
// are joined with "," (a key cut in two permissions, neither of them most
// of a key, reached x-authz-permissions whole but for the comma). Stored
// labels are now read with every byte no key has taken out, and a
// permission that completes a key when joined is left out.
func TestAStoredLabelIsReadAsItIsWrittenOut(t *testing.T) {
	var logs syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nforward_meta: [note, plan]\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs})
	leaked, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
	f := ts.mgr.Format
	cut := len("sk_") + 21 // 21 of the 43 random characters: short of "most of a key" (22)

	t.Run("control bytes inside the name", func(t *testing.T) {
		name := leaked[:cut] + strings.Repeat("\x01", 5) + leaked[cut:]
		k := &keystore.Key{Name: name, Owner: "team", Permissions: []string{"read:users"}}
		secret := storeByHand(t, ts, k)

		resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
		ok := resp.GetOkResponse()
		require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
		got := headerMap(ok.GetHeaders())["x-authz-key-name"]
		assert.NotContains(t, got, leaked, "x-authz-key-name carries the exact key to the upstream on every request")

		status, _, hh := get(t, ts.httpURL+"/authz/api/users", map[string]string{"X-Api-Key": secret})
		require.Equal(t, 200, status)
		assert.NotContains(t, hh.Get("X-Authz-Key-Name"), leaked, "HTTP mode: x-authz-key-name carries the exact key")
	})

	t.Run("a key cut in two permissions", func(t *testing.T) {
		perms := []string{"read:users", leaked[:cut], leaked[cut:]}
		for _, p := range perms {
			require.False(t, f.LabelHoldsKey(p), "precondition: no permission alone is read as holding a key: %q", p)
		}
		k := &keystore.Key{Name: "legacy", Owner: "team", Permissions: perms}
		secret := storeByHand(t, ts, k)

		resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
		ok := resp.GetOkResponse()
		require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
		got := headerMap(ok.GetHeaders())["x-authz-permissions"]
		assert.False(t, f.LabelHoldsKey(got), "x-authz-permissions %q holds a key by the very reading labels are redacted by", got)
		assert.NotContains(t, strings.ReplaceAll(got, ",", ""), leaked, "x-authz-permissions holds the whole key but for a comma")
	})
}

// A stored label holding a key's body (random part and checksum) without
// its prefix, or with the prefix mistyped, and a run of control bytes
// inside it: the bytes are dropped on the way to x-authz-key-name (and
// x-authz-owner, x-authz-meta-*), and the upstream gets the body whole,
// which the project's own reading (LabelHoldsKey's bareKey: "the prefix is
// public; the random part is the secret") takes for a key. The reading
// across any gap looked only for the prefix, so the record was served
// unredacted; it now looks for the random part and its checksum.
func TestAPrefixlessKeyWithControlBytesInAStoredLabelIsRedacted(t *testing.T) {
	var logs syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nforward_meta: [note, plan]\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs})
	leaked, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
	f := ts.mgr.Format
	body := leaked[len("sk_"):]
	require.True(t, f.LabelHoldsKey(body), "precondition: the body alone is a key to the project's own reading")

	for form, label := range map[string]string{
		"no prefix":        body[:20] + strings.Repeat("\x01", 5) + body[20:],
		"prefix mistyped":  "sl_" + body[:20] + strings.Repeat("\x01", 5) + body[20:],
		"one control byte": body[:20] + "\x1f" + body[20:],
	} {
		t.Run(form, func(t *testing.T) {
			k := &keystore.Key{Name: label, Owner: "team", Permissions: []string{"read:users"},
				Meta: map[string]string{"note": label, "plan": "gold"}}
			secret := storeByHand(t, ts, k)

			resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
			ok := resp.GetOkResponse()
			require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
			headers := headerMap(ok.GetHeaders())
			for _, h := range []string{"x-authz-key-name", "x-authz-meta-note"} {
				assert.NotContains(t, headers[h], body, "%s carries the key's secret part whole to the upstream", h)
				assert.False(t, f.LabelHoldsKey(headers[h]), "%s = %q holds a key by the reading labels are refused by", h, headers[h])
			}
		})
	}
}

// The same key body, prefixless, cut in two stored permissions: neither
// is most of a key, and x-authz-permissions carried it whole but for a
// comma, as it did for a key with its prefix.
func TestAPrefixlessKeyCutInTwoStoredPermissionsIsLeftOut(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &syncbuf.Buffer{}})
	leaked, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
	f := ts.mgr.Format
	body := leaked[len("sk_"):]
	perms := []string{"read:users", body[:21], body[21:]}
	for _, p := range perms {
		require.False(t, f.LabelHoldsKey(p), "precondition: no permission alone holds a key: %q", p)
	}
	secret := storeByHand(t, ts, &keystore.Key{Name: "legacy", Owner: "team", Permissions: perms})
	resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
	got := headerMap(ok.GetHeaders())["x-authz-permissions"]
	assert.NotContains(t, strings.ReplaceAll(got, ",", ""), body, "x-authz-permissions %q holds the key's secret part whole but for a comma", got)
}
