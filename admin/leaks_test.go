package admin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// leakBody is a GitHub report of the given tokens.
func leakBody(tokens ...string) []byte {
	reports := make([]leakReport, len(tokens))
	for i, tok := range tokens {
		reports[i] = leakReport{Token: tok, Type: "extauthz_api_key", URL: "https://github.com/octo/repo/blob/abc/config.yaml", Source: "content"}
	}
	b, _ := json.Marshal(reports)
	return b
}

func sign(t testing.TB, key *ecdsa.PrivateKey, body []byte) string {
	t.Helper()
	digest := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(sig)
}

// report posts body as GitHub would, signed with the env's GitHub key;
// hdr overrides headers ("" deletes one).
func (e *env) report(body []byte, hdr ...string) response {
	e.t.Helper()
	h := append([]string{
		"Github-Public-Key-Identifier", githubKeyID,
		"Github-Public-Key-Signature", sign(e.t, e.github, body),
	}, hdr...)
	return e.send("POST", leakPath, "", body, h...)
}

func tokenHash(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}

func TestALeakedKeyIsRevokedAndReported(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		live, liveID := e.create(keystore.Spec{Name: "live", Owner: "team-a", Permissions: []string{"keys:read"}})
		require.Equal(t, http.StatusOK, e.send("GET", "/v1/keys", live, nil).status) // cached
		revoked, revokedID := e.create(keystore.Spec{Name: "revoked", Permissions: []string{"x"}})
		_, err := e.manager.Revoke(context.Background(), revokedID, "cli")
		require.NoError(t, err)
		unknown, err := e.manager.Format.Generate()
		require.NoError(t, err)
		garbage := "sk_thisIsNotAValidKeyAtAllButLooksLikeOneSortOf1234"
		tokens := []string{live, revoked, unknown, garbage, "", live}

		r := e.report(leakBody(tokens...))
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		var labels []map[string]string
		require.NoError(t, json.Unmarshal(r.body, &labels))
		want := []string{truePositive, truePositive, falsePositive, falsePositive, falsePositive, truePositive}
		require.Len(t, labels, len(tokens))
		for i, l := range labels {
			assert.Equal(t, map[string]string{"token_hash": tokenHash(tokens[i]), "token_type": "extauthz_api_key", "label": want[i]}, l, "token %d", i)
		}
		for _, tok := range tokens[:4] {
			assert.NotContains(t, string(r.body), tok, "the answer names tokens by hash only")
			assert.NotContains(t, e.rec.Logs(), tok)
		}

		k, err := e.store.Get(context.Background(), liveID)
		require.NoError(t, err)
		require.NotNil(t, k.RevokedAt, "the live key is revoked")
		assert.Contains(t, e.rec.Changes(), change{keystore.ChangeRevoked, liveID, "team-a", LeakActor, ""})
		leaked := e.rec.Leaked()
		require.Len(t, leaked, 2, "one key.leaked each, the repeated token included once")
		assert.Equal(t, liveID, leaked[0].ID)
		assert.NotNil(t, leaked[0].RevokedAt, "OnLeak sees the revoked record")
		assert.Equal(t, revokedID, leaked[1].ID)
		assert.Contains(t, e.rec.Logs(), "https://github.com/octo/repo/blob/abc/config.yaml", "the operator learns where it leaked")

		var denied response
		eventually(t, "the leaked key answers revoked_key", func() bool {
			denied = e.send("GET", "/v1/keys", live, nil)
			return denied.status == http.StatusUnauthorized
		})
		assert.Equal(t, "revoked_key", denied.code(t))

		t.Run("a second report of the same key changes nothing more", func(t *testing.T) {
			before := len(e.rec.Changes())
			r := e.report(leakBody(live))
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			assert.Contains(t, string(r.body), truePositive)
			assert.Len(t, e.rec.Changes(), before, "no second revocation")
		})
		t.Run("an empty report is answered with no labels", func(t *testing.T) {
			r := e.report([]byte(`[]`))
			require.Equal(t, http.StatusOK, r.status, "%s", r)
			assert.JSONEq(t, `[]`, string(r.body))
		})
	})
}

// Where GitHub found a key may name it: a file or gist called after the
// secret it holds, or a source that quotes it. The log line says where it
// leaked, but never holds a key, revoked or not, nor the piece of one that
// cutting a long URL would leave.
func TestALeakReportsURLThatHoldsAKeyIsLeftOutOfTheLog(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		long := "https://github.com/octo/repo/blob/abc/" + strings.Repeat("d/", 240)
		for _, tc := range []struct {
			name        string
			url, source func(key, other string) string
		}{
			{"the URL ends in the leaked key", func(k, _ string) string { return "https://github.com/octo/repo/blob/abc/" + k }, plain("content")},
			{"the URL names it glued to other text", func(k, _ string) string { return "https://gist.github.com/octo/1#file-old_" + k + "_v2-env" }, plain("gist")},
			{"the URL holds another live key", func(_, o string) string { return "https://github.com/octo/repo/blob/abc/" + o + ".txt" }, plain("content")},
			// Not the key the report names, and not a key at all as written,
			// but a live one all the same once the reader fixes one character.
			{"the URL holds another key with its _ typed as -", func(_, o string) string {
				return "https://github.com/octo/repo/blob/abc/" + strings.Replace(o, "_", "-", 1) + ".env"
			}, plain("content")},
			{"the URL holds another key with a dot inside", func(_, o string) string {
				return "https://github.com/octo/repo/blob/abc/" + o[:24] + "." + o[24:] + ".txt"
			}, plain("content")},
			{"the URL holds another key percent-encoded", func(_, o string) string {
				return "https://github.com/octo/repo/blob/abc/" + strings.Replace(o, "_", "%5F", 1) + ".txt"
			}, plain("content")},
			{"the source quotes another key wrapped at a space", plain("https://github.com/octo/repo/issues/1"), func(_, o string) string {
				return "issue_comment:" + o[:30] + " " + o[30:]
			}},
			{"the source quotes the key", plain("https://github.com/octo/repo/issues/1"), func(k, _ string) string { return "issue_comment:" + k }},
			{"a long URL holds the key across the cut", func(k, _ string) string { return long[:500] + k }, plain("content")},
			{"a long URL holds the key past the cut", func(k, _ string) string { return long + k }, plain("content")},
		} {
			t.Run(tc.name, func(t *testing.T) {
				leaked, _ := e.create(keystore.Spec{Name: "leaked", Permissions: []string{"x"}})
				other, _ := e.create(keystore.Spec{Name: "other", Permissions: []string{"x"}})
				body, err := json.Marshal([]leakReport{{Token: leaked, Type: "extauthz_api_key", URL: tc.url(leaked, other), Source: tc.source(leaked, other)}})
				require.NoError(t, err)
				r := e.report(body)
				require.Equal(t, http.StatusOK, r.status, "%s", r)
				require.Contains(t, string(r.body), truePositive)
				logs := e.rec.Logs()
				require.Contains(t, logs, "GitHub reported a leaked API key")
				for _, k := range []string{leaked, other} {
					for i := 0; i+16 <= len(k); i += 8 {
						require.NotContains(t, logs, k[i:i+16], "a piece of a key reached the log")
					}
				}
			})
		}
	})
}

// plain is a report field that does not depend on the keys.
func plain(v string) func(string, string) string { return func(string, string) string { return v } }

// An expired key that leaked is revoked too: moving its expiry would
// otherwise make the leaked secret work again.
func TestALeakedExpiredKeyIsRevoked(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		secret, id := e.create(keystore.Spec{Name: "old", Permissions: []string{"x"}})
		past := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
		_, err := e.store.Update(context.Background(), id, keystore.OwnerLimit{}, func(k *keystore.Key) error {
			k.ExpiresAt = &past
			return nil
		})
		require.NoError(t, err)

		r := e.report(leakBody(secret))
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Contains(t, string(r.body), truePositive)
		k, err := e.store.Get(context.Background(), id)
		require.NoError(t, err)
		require.NotNil(t, k.RevokedAt, "the expired key is revoked")
		assert.Contains(t, e.rec.Changes(), change{keystore.ChangeRevoked, id, keystore.DefaultOwner, LeakActor, ""})
	})
}

// A leak revokes the leaked key only (its successor may be the one its
// owner made because of the leak), and the log line names the keys of its
// line of rotations that still work: whoever found it may have rotated it
// first. Keys of the same owner outside the line, and keys of the line
// already dead, are not named.
func TestALeakNamesTheKeysOfItsLineThatStillWork(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		ctx := context.Background()
		_, first := e.create(keystore.Spec{Name: "line", Owner: "team-a", Permissions: []string{"x"}})
		_, other := e.create(keystore.Spec{Name: "other", Owner: "team-a", Permissions: []string{"x"}})
		leakedSecret, leaked, err := e.manager.Rotate(ctx, first, time.Hour, "cli", nil)
		require.NoError(t, err)
		_, next, err := e.manager.Rotate(ctx, leaked.ID, time.Hour, "cli", nil)
		require.NoError(t, err)
		_, newest, err := e.manager.Rotate(ctx, next.ID, 0, "cli", nil) // next dies at once
		require.NoError(t, err)

		r := e.report(leakBody(leakedSecret))
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		line := leakLine(t, e.rec.Logs(), leaked.ID)
		assert.Contains(t, line, "still_live=\"["+newest.ID+" "+first+"]\"", "the newest key, then the first (in its grace period)")
		assert.NotContains(t, line, next.ID, "a key of the line that no longer works")
		assert.NotContains(t, line, other, "a key outside the line")
		k, err := e.store.Get(ctx, newest.ID)
		require.NoError(t, err)
		assert.Nil(t, k.RevokedAt, "only the leaked key is revoked")

		// A line too long to walk key by key: its live keys are found among
		// the owner's.
		longSecret, start := e.create(keystore.Spec{Name: "long", Owner: "team-a", Permissions: []string{"x"}})
		_, k, err = e.manager.Rotate(ctx, start, time.Hour, "cli", nil)
		require.NoError(t, err)
		for range 20 {
			_, k, err = e.manager.Rotate(ctx, k.ID, 0, "cli", nil)
			require.NoError(t, err)
		}
		r = e.report(leakBody(longSecret))
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Contains(t, leakLine(t, e.rec.Logs(), start), "still_live=["+k.ID+"]")

		lone, _ := e.create(keystore.Spec{Name: "lone", Owner: "team-a", Permissions: []string{"x"}})
		r = e.report(leakBody(lone))
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.Contains(t, e.rec.Logs(), "still_live=[]", "a key never rotated leaves none")
	})
}

// leakLine is the leak report's log line about the key id.
func leakLine(t *testing.T, logs, id string) string {
	t.Helper()
	for l := range strings.Lines(logs) {
		if strings.Contains(l, "leaked API key") && strings.Contains(l, "key_id="+id) {
			return l
		}
	}
	t.Fatalf("no leak line names %s in\n%s", id, logs)
	return ""
}

func TestLeakReportsMustBeSignedByGitHub(t *testing.T) {
	forEachBackend(t, envOptions{}, func(t *testing.T, e *env) {
		victim, id := e.create(keystore.Spec{Name: "victim", Permissions: []string{"x"}})
		body := leakBody(victim)
		stranger, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		require.NoError(t, err)
		for _, tc := range []struct {
			name string
			hdr  []string
		}{
			{"no signature headers", []string{"Github-Public-Key-Identifier", "", "Github-Public-Key-Signature", ""}},
			{"no key identifier", []string{"Github-Public-Key-Identifier", ""}},
			{"no signature", []string{"Github-Public-Key-Signature", ""}},
			{"an unknown key identifier", []string{"Github-Public-Key-Identifier", "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"}},
			{"a signature that is not base64", []string{"Github-Public-Key-Signature", "not base64!"}},
			{"a signature that is not ASN.1", []string{"Github-Public-Key-Signature", base64.StdEncoding.EncodeToString([]byte("hello"))}},
			{"a signature of another body", []string{"Github-Public-Key-Signature", sign(t, e.github, leakBody("sk_other"))}},
			{"a signature by another key", []string{"Github-Public-Key-Signature", sign(t, stranger, body)}},
		} {
			t.Run(tc.name+" is 401", func(t *testing.T) {
				r := e.report(body, tc.hdr...)
				require.Equal(t, http.StatusUnauthorized, r.status, "%s", r)
				assert.Equal(t, "invalid_signature", r.code(t))
			})
		}
		t.Run("an unsigned body is refused before it is parsed", func(t *testing.T) {
			r := e.report([]byte(`{not json`), "Github-Public-Key-Signature", sign(t, e.github, body))
			require.Equal(t, http.StatusUnauthorized, r.status, "%s", r)
		})
		k, err := e.store.Get(context.Background(), id)
		require.NoError(t, err)
		assert.Nil(t, k.RevokedAt, "no forged report revoked anything")
		assert.Empty(t, e.rec.Leaked())
	})
}

// Once GitHub signs with a key the keys file does not hold, every real
// report is refused as forged; the log says so, and what to do, at most
// once a minute (anyone can send such a report), naming the identifier
// only when it has the shape of GitHub's.
func TestAReportSignedByAnUnknownGitHubKeyIsLogged(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	const newID = "bcb53661c06b4728e59d897fb6165d5c9cda0fd9cdf9d09ead458168deb7518c"
	const warning = "signed by a GitHub key that leaks.github_keys_file does not hold"
	body := leakBody("sk_x")
	for range 3 {
		r := e.report(body, "Github-Public-Key-Identifier", newID)
		require.Equal(t, http.StatusUnauthorized, r.status, "%s", r)
		assert.Equal(t, "invalid_signature", r.code(t))
	}
	assert.Equal(t, 1, strings.Count(e.rec.Logs(), warning), "%s", e.rec.Logs())
	assert.Contains(t, e.rec.Logs(), newID)

	e.clock.Advance(time.Minute)
	odd := "sk_" + strings.Repeat("z", 49) + " level=ERROR"
	require.Equal(t, http.StatusUnauthorized, e.report(body, "Github-Public-Key-Identifier", odd).status)
	assert.Equal(t, 2, strings.Count(e.rec.Logs(), warning), "a minute later, logged again")
	assert.NotContains(t, e.rec.Logs(), "zzzz", "a sender's text is not logged")

	require.Equal(t, http.StatusUnauthorized, e.report(body, "Github-Public-Key-Signature", "bm9wZQ==").status)
	assert.Equal(t, 2, strings.Count(e.rec.Logs(), warning), "a bad signature by a known key is not this")
}

func TestMalformedAndOversizedLeakReports(t *testing.T) {
	forEachBackend(t, envOptions{leakBytes: 4096}, func(t *testing.T, e *env) {
		for _, tc := range []struct {
			name   string
			body   string
			status int
		}{
			{"an object instead of an array is 400", `{"token": "x"}`, 400},
			{"malformed JSON is 400", `[{"token": `, 400},
			{"a token that is not a string is 400", `[{"token": 5}]`, 400},
			{"trailing data is 400", `[] []`, 400},
			{"unknown fields are GitHub's business and accepted", `[{"token": "x", "type": "t", "new_field": 1}]`, 200},
			{"a body over the limit is 413", "[" + strings.Repeat(`{"token":"x"},`, 400) + `{"token":"x"}]`, 413},
		} {
			t.Run(tc.name, func(t *testing.T) {
				r := e.report([]byte(tc.body))
				require.Equal(t, tc.status, r.status, "%s", r)
				switch tc.status {
				case 400:
					assert.Equal(t, "bad_request", r.code(t))
				case 413:
					assert.Equal(t, "payload_too_large", r.code(t))
				}
			})
		}
	})
}

// countingStore counts Lookup calls.
type countingStore struct {
	keystore.Store
	lookups atomic.Int64
}

func (s *countingStore) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	s.lookups.Add(1)
	return s.Store.Lookup(ctx, h)
}

func TestGarbageInALeakReportCostsNoStoreCall(t *testing.T) {
	counting := &countingStore{}
	e := newEnv(t, backends[0], envOptions{readStore: func(s keystore.Store) keystore.Store {
		counting.Store = s
		return counting
	}})
	wellFormed, err := e.manager.Format.Generate()
	require.NoError(t, err)
	r := e.report(leakBody("", "password123", "sk_short", strings.Repeat("a", 300), "sk_"+strings.Repeat("A", 49), "legacy key with spaces in it"))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	assert.NotContains(t, string(r.body), truePositive)
	assert.Zero(t, counting.lookups.Load())

	r = e.report(leakBody(wellFormed))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	assert.Equal(t, int64(1), counting.lookups.Load(), "a well-formed token is looked up")
}

// vanishingStore finds the keys of gone as they were, after they were deleted.
type vanishingStore struct {
	keystore.Store
	gone map[keystore.Hash]*keystore.Key
}

func (s *vanishingStore) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	if k, ok := s.gone[h]; ok {
		return k.Clone(), nil
	}
	return s.Store.Lookup(ctx, h)
}

// A key deleted between its lookup and its revocation (the retention sweep
// of a long-dead key) is a false positive, as it is on the next report:
// the rest of the report is still handled and answered, not failed as 404.
func TestAKeyDeletedDuringALeakReportIsAFalsePositive(t *testing.T) {
	vanishing := &vanishingStore{gone: map[keystore.Hash]*keystore.Key{}}
	e := newEnv(t, backends[0], envOptions{readStore: func(s keystore.Store) keystore.Store {
		vanishing.Store = s
		return vanishing
	}})
	gone, err := e.manager.Format.Generate()
	require.NoError(t, err)
	id, err := keystore.NewID(time.Now())
	require.NoError(t, err)
	vanishing.gone[e.manager.Hasher.Hash(gone)] = &keystore.Key{ID: id, Name: "swept", Owner: keystore.DefaultOwner, CreatedAt: time.Now()}
	live, liveID := e.create(keystore.Spec{Name: "live", Permissions: []string{"x"}})

	r := e.report(leakBody(gone, live))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	var labels []map[string]string
	require.NoError(t, json.Unmarshal(r.body, &labels))
	require.Len(t, labels, 2)
	assert.Equal(t, falsePositive, labels[0]["label"])
	assert.Equal(t, truePositive, labels[1]["label"])
	k, err := e.store.Get(context.Background(), liveID)
	require.NoError(t, err)
	assert.NotNil(t, k.RevokedAt, "the rest of the report is handled")
	require.Len(t, e.rec.Leaked(), 1)
	assert.Equal(t, liveID, e.rec.Leaked()[0].ID)
}

func TestTheLeakEndpointIsOffWithoutGitHubKeys(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{noLeaks: true})
	r := e.report(leakBody("sk_x"))
	require.Equal(t, http.StatusNotFound, r.status, "%s", r)
	assert.Equal(t, "not_found", r.code(t))
}

func TestTheLeakHandlerServesOnlyTheLeakRoute(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	victim, id := e.create(keystore.Spec{Name: "victim", Permissions: []string{"x"}})
	srv := httptest.NewServer(NewLeakHandler(e.opts))
	defer srv.Close()
	post := func(path string, body []byte, key string) *http.Response {
		req, err := http.NewRequest("POST", srv.URL+path, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Github-Public-Key-Identifier", githubKeyID)
		req.Header.Set("Github-Public-Key-Signature", sign(t, e.github, body))
		req.Header.Set("x-api-key", key)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}
	assert.Equal(t, http.StatusOK, post(leakPath, leakBody(victim), "").StatusCode)
	k, err := e.store.Get(context.Background(), id)
	require.NoError(t, err)
	assert.NotNil(t, k.RevokedAt)
	assert.Equal(t, http.StatusNotFound, post("/v1/keys", []byte(`{"name":"n","permissions":["x"]}`), e.root).StatusCode,
		"the key API is not on the public listener")

	assert.Panics(t, func() { NewLeakHandler(Options{Authz: e.opts.Authz, Manager: e.manager}) }, "Leaks is required")
	assert.Panics(t, func() { New(Options{Manager: e.manager}) }, "Authz is required")
	assert.Panics(t, func() { New(Options{Authz: e.opts.Authz}) }, "Manager is required")
}

func TestParseGitHubPublicKeys(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ecPEM := pemOf(t, &ec.PublicKey)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	require.NoError(t, err)

	doc := func(id, key string) []byte {
		b, _ := json.Marshal(map[string]any{"public_keys": []map[string]any{{"key_identifier": id, "key": key, "is_current": true}}})
		return b
	}
	keys, err := ParseGitHubPublicKeys(doc("abc", ecPEM))
	require.NoError(t, err)
	require.Contains(t, keys, "abc")
	assert.True(t, keys["abc"].Equal(&ec.PublicKey))

	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	// docOf is a document of several keys: identifier, PEM, identifier, ...
	docOf := func(pairs ...string) []byte {
		var list []map[string]any
		for i := 0; i < len(pairs); i += 2 {
			list = append(list, map[string]any{"key_identifier": pairs[i], "key": pairs[i+1], "is_current": i == 0})
		}
		b, _ := json.Marshal(map[string]any{"public_keys": list})
		return b
	}
	keys, err = ParseGitHubPublicKeys(docOf("abc", ecPEM, "def", pemOf(t, &other.PublicKey), "abc", ecPEM))
	require.NoError(t, err, "a key listed twice under its identifier is still one key")
	assert.Len(t, keys, 2)
	assert.True(t, keys["def"].Equal(&other.PublicKey))

	for _, tc := range []struct {
		name string
		doc  []byte
		want string
	}{
		{"not JSON", []byte("nope"), "GitHub public keys"},
		{"no keys", []byte(`{"public_keys": []}`), "lists none"},
		{"no identifier", doc("", ecPEM), "key_identifier"},
		{"not PEM", doc("abc", "MFkw..."), "abc: not PEM"},
		{"an RSA key", doc("abc", pemOf(t, &rsaKey.PublicKey)), "P-256"},
		{"a P-384 key", doc("abc", pemOf(t, &p384.PublicKey)), "P-256"},
		{"one identifier for two keys", docOf("abc", ecPEM, "def", ecPEM, "abc", pemOf(t, &other.PublicKey)), "abc: listed twice, with different keys"},
	} {
		t.Run(tc.name+" is refused", func(t *testing.T) {
			_, err := ParseGitHubPublicKeys(tc.doc)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
		})
	}
}

func pemOf(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

// A key whose record a newer version restricted in a way this one cannot
// read (its "requires") is not decided here, but a leak report must still
// revoke it: a leaked key is revoked by whichever replica GitHub reaches.
// The revocation keeps what this version does not know of the record.
func TestALeakedKeyWhoseRecordNeedsANewerVersionIsRevoked(t *testing.T) {
	srv := redistest.Start(t)
	e := newEnv(t, backend{"redis", func(t testing.TB) (keystore.Store, func()) { return openRedis(t, srv) }}, envOptions{})
	ctx := t.Context()

	tok, id := e.create(keystore.Spec{Name: "batch", Permissions: []string{"x"}})
	recKey := "admintest:{keys}:h:" + e.manager.Hasher.Hash(tok).String()
	stored, err := srv.QueryString("GET", recKey)
	require.NoError(t, err)
	_, err = srv.Query("SET", recKey, strings.TrimSuffix(stored, "}")+`,"requires":["bound_to"],"bound_to":{"cidr":"10.0.0.0/8"}}`)
	require.NoError(t, err)

	r := e.report(leakBody(tok))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	assert.Contains(t, string(r.body), truePositive)
	k, err := e.store.Get(ctx, id)
	require.NoError(t, err)
	require.NotNil(t, k.RevokedAt, "the leaked key is revoked")
	after, err := srv.QueryString("GET", recKey)
	require.NoError(t, err)
	assert.Contains(t, after, `"requires":["bound_to"]`, "and its record keeps what this version does not know")
	assert.Contains(t, after, `"bound_to":{"cidr":"10.0.0.0/8"}`)
}
