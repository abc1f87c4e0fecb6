package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/sqlite"
)

// A record that holds characters no label may (written before they were
// refused, or straight into the store) never reaches a terminal raw: that
// held for names, owners, permissions and metadata, but a rate limit kept
// as written (a stored text that no longer parses is shown as it is), the
// ids a record names (rotated from, rotated to, lineage) and the id itself
// were printed raw by keys show, keys list, revoke's notes and rotate's
// messages: an OSC 52 clipboard write or an OSC 8 link reached the
// operator's terminal.
func TestKeysShowAndListQuoteEveryTextARecordHolds(t *testing.T) {
	var rate keystore.RateLimit
	// OSC 52: write the operator's clipboard; OSC 8: a hyperlink.
	require.NoError(t, rate.UnmarshalText([]byte("\x1b]52;c;Y3VybCBldmlsLnNoIHwgc2g=\x07100/m\x1b]8;;https://evil.example/\x1b\\")))
	k := &keystore.Key{Name: "ok", Owner: "team", Permissions: []string{"read"},
		RateLimit: rate, Lineage: "key_\x1b[2Jx", RotatedFrom: "key_\u202eevil"}
	// An id is printed as it is too (keys list, revoke's notes, rotate's
	// "already rotated, to %s").
	path := storedRecords(t, k, &keystore.Key{ID: "key_\x1b]8;;https://evil.example/\x1b\\key_0Vd7NFXyfOIkpygzfyqF\x1b]8;;\x1b\\",
		Name: "ok2", Owner: "team", Permissions: []string{"read"}})
	id := k.ID

	out, errOut, code := cliRun(t, "keys", "show", id, "--config", path)
	require.Equal(t, 0, code, errOut)
	assertDrawsEverything(t, out, []string{"keys", "show"})
	assert.NotContains(t, out, "\x1b]52;", "an OSC 52 clipboard write from the store reaches the terminal")

	out, errOut, code = cliRun(t, "keys", "list", "--config", path)
	require.Equal(t, 0, code, errOut)
	assertDrawsEverything(t, out, []string{"keys", "list"})
	assert.NotContains(t, out, "\x1b]8;;", "an OSC 8 hyperlink from the store reaches the terminal")
}

// keys update --meta NAME= deletes an entry; a name no entry can have
// (Tier, in capitals) removed nothing and still exited 0 with the key
// "updated" and audited. It is a usage error, as the admin API's 400 is.
func TestDeletingAMetaEntryByANameNoEntryCanHaveIsAUsageError(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "k.db")))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--json", "--name", "n", "--perm", "read", "--meta", "tier=admin")
	require.Equal(t, 0, code, errOut)
	var k struct {
		ID   string
		Meta map[string]string
	}
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	for _, bad := range []string{"Tier=", "Tier=gold", "2tier=", "ti-er="} {
		_, errOut, code = cliRun(t, "keys", "update", k.ID, "--config", path, "--json", "--meta", bad)
		assert.Equal(t, 2, code, "%s: %s", bad, errOut)
		assert.Contains(t, errOut, "--meta")
	}
	out, errOut, code = cliRun(t, "keys", "show", k.ID, "--config", path, "--json")
	require.Equal(t, 0, code, errOut)
	require.NoError(t, json.Unmarshal([]byte(out), &k))
	assert.Equal(t, map[string]string{"tier": "admin"}, k.Meta)
	_, errOut, code = cliRun(t, "keys", "update", k.ID, "--config", path, "--meta", "tier=")
	assert.Equal(t, 0, code, "a deletion by the entry's own name: %s", errOut)
}

// A name that draws as another key's (a variation selector after a letter
// draws nothing) is refused: keys list would show three keys of one owner
// all named billing-readonly, one of them an admin key.
func TestANameWithAVariationSelectorAfterALetterIsRefused(t *testing.T) {
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", filepath.Join(t.TempDir(), "k.db")))
	for _, name := range []string{"billing-readonly\uFE0E", "billing\U000E0100-readonly"} {
		_, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", name, "--perm", "admin", "--owner", "team", "--json")
		assert.Equal(t, 2, code, "%+q: %s", name, errOut)
		assert.Contains(t, errOut, "--name")
	}
	for _, name := range []string{"love \u2764\uFE0F", "billing \u2605\uFE0E"} {
		_, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", name, "--perm", "read", "--json")
		assert.Equal(t, 0, code, "a presentation selector after a symbol: %s", errOut)
	}
	// Kept in a name, a selector is still printed escaped in the table: after
	// a symbol with no second form (★) it draws nothing, and "billing ★\ufe0e"
	// would pass for "billing ★".
	out, errOut, code := cliRun(t, "keys", "list", "--config", path)
	require.Equal(t, 0, code, errOut)
	assert.NotContains(t, out, "\uFE0E")
	assert.NotContains(t, out, "\uFE0F")
	assert.Contains(t, out, `"billing ★\ufe0e"`)
}

// An error the CLI prints may carry text a record holds: keys update of a
// rotated-away key named its rotated_to, as written straight into the
// store, and an OSC 8 link reached the terminal. Every error is printed
// with what does not draw escaped.
func TestAnErrorNamingARecordsTextDrawsEverything(t *testing.T) {
	k := &keystore.Key{Name: "ok", Owner: "team", Permissions: []string{"read"},
		RotatedTo: "key_\x1b]8;;https://evil.example/\x1b\\key_0Vd7NFXyfOIkpygzfyqF\x1b]8;;\x1b\\"}
	path := storedRecords(t, k)
	id := k.ID

	out, errOut, code := cliRun(t, "keys", "update", id, "--name", "other", "--config", path)
	require.NotEqual(t, 0, code, out)
	assertDrawsEverything(t, errOut, []string{"keys", "update"})
	assert.NotContains(t, errOut, "\x1b]8;;", "an OSC 8 hyperlink from the store reaches the terminal")
}

// storedRecords writes keys straight into a new embedded store, as a
// record written before today's checks, by hand or by another tool would
// be, and returns the path of a config that uses it. A key without an id
// or a creation time gets one.
func storedRecords(t *testing.T, keys ...*keystore.Key) string {
	t.Helper()
	db := filepath.Join(t.TempDir(), "k.db")
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", db))
	st, err := sqlite.Open(db)
	require.NoError(t, err)
	now := time.Now().UTC()
	for i, k := range keys {
		if k.ID == "" {
			k.ID, err = keystore.NewID(now)
			require.NoError(t, err)
		}
		if k.CreatedAt.IsZero() {
			k.CreatedAt = now
		}
		require.NoError(t, st.Create(t.Context(), k, keystore.NewHasher(nil).Hash(fmt.Sprint("stored", i)), 0))
	}
	require.NoError(t, st.Close())
	return path
}

// A name with a space at either end, or two in a row, is refused by the
// CLI and the admin API, on create and on update: keys list showed
// "billing" and "billing " (an admin key) as two keys of one name.
func TestANameThatDrawsAsAnotherWithItsSpacesIsRefused(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	adminKey, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	_, k := ts.create(t, keystore.Spec{Name: "billing", Permissions: []string{"read"}})
	for _, name := range []string{"billing ", " billing", "bill  ing", " "} {
		_, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", name, "--perm", "admin", "--json")
		assert.Equal(t, 2, code, "%q: %s", name, errOut)
		assert.Contains(t, errOut, "--name")
		_, errOut, code = cliRun(t, "keys", "update", k.ID, "--config", path, "--name", name)
		assert.Equal(t, 2, code, "update to %q: %s", name, errOut)

		body, _ := json.Marshal(map[string]any{"name": name, "permissions": []string{"read"}})
		assert.Equal(t, 400, adminStatus(t, ts, "POST", "/v1/keys", adminKey, string(body)), "%q", name)
		body, _ = json.Marshal(map[string]any{"name": name})
		assert.Equal(t, 400, adminStatus(t, ts, "PATCH", "/v1/keys/"+k.ID, adminKey, string(body)), "PATCH to %q", name)
	}
	_, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "billing read only", "--perm", "read", "--json")
	assert.Equal(t, 0, code, "single spaces between words: %s", errOut)
}
