package keystore

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func mustFormat(t testing.TB, prefix string) Format {
	t.Helper()
	f, err := NewFormat(prefix)
	require.NoError(t, err)
	return f
}

func TestGeneratedKeysMatchTheSpecFormat(t *testing.T) {
	f := mustFormat(t, "sk")
	re := regexp.MustCompile(`^sk_[0-9A-Za-z]{49}$`)
	seen := map[string]bool{}
	for range 1000 {
		k, err := f.Generate()
		require.NoError(t, err)
		require.Regexp(t, re, k)
		require.NoError(t, f.Check(k))
		require.False(t, seen[k], "duplicate key")
		seen[k] = true
		// The checksum is the base62 CRC-32 of "<prefix>_<random>", MSD first, 0-padded to 6.
		body := k[:len(k)-6]
		assert.Equal(t, base62Pad(uint64(crc32.ChecksumIEEE([]byte(body))), 6), k[len(k)-6:])
	}
	assert.Regexp(t, f.Regexp(), "token sk_"+strings.Repeat("a", 49)+" in a file")
}

// base62Pad is an independent encoder to check appendChecksum against.
func base62Pad(v uint64, width int) string {
	s := ""
	for v > 0 {
		s = string(base62[v%62]) + s
		v /= 62
	}
	return strings.Repeat("0", width-len(s)) + s
}

func TestRandomPartIsUniform(t *testing.T) {
	// 2000 keys × 43 characters: every base62 character appears, and none
	// far more than its share (a modulo bias would show up here).
	f := mustFormat(t, "sk")
	counts := map[byte]int{}
	for range 2000 {
		k, _ := f.Generate()
		for i := 3; i < 3+43; i++ {
			counts[k[i]]++
		}
	}
	require.Len(t, counts, 62)
	expect := 2000 * 43 / 62
	for c, n := range counts {
		assert.InDelta(t, expect, n, float64(expect)*0.2, "character %q", c)
	}
}

func TestCheckRejectsWithoutAStore(t *testing.T) {
	f := mustFormat(t, "sk")
	good, _ := f.Generate()
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'a' {
			b[i] = 'b'
		} else {
			b[i] = 'a'
		}
		return string(b)
	}
	tests := []struct {
		name string
		key  string
		ok   bool
	}{
		{"a generated key passes", good, true},
		{"one changed random character fails the checksum", flip(good, 10), false},
		{"one changed checksum character fails", flip(good, len(good)-1), false},
		{"a truncated key fails", good[:len(good)-1], false},
		{"a key with an extra character fails", good + "a", false},
		{"a non-base62 character fails", good[:10] + "-" + good[11:], false},
		{"a legacy key of 16 safe characters passes", "legacy_key-1.abc", true},
		{"a legacy key of 15 characters fails", "legacy_key-1.ab", false},
		{"a legacy key of 256 characters passes", strings.Repeat("x", 256), true},
		{"anything over 256 bytes fails unread", strings.Repeat("x", 257), false},
		{"a legacy key with a space fails", "legacy key 12345678", false},
		{"a legacy key with a NUL fails", "legacy\x00key12345678", false},
		{"a legacy key with unicode fails", "légacykey12345678", false},
		{"the empty string fails", "", false},
		{"the prefix alone fails", "sk_", false},
		{"a prefixed key of legacy shape fails (prefix means new format)", "sk_this-is-not-a-valid-key", false},
		// A generated key with its prefix mistyped or lost is no imported
		// key: its checksum says it is this format's, mistyped.
		{"a generated key with another prefix fails", "pk_" + good[3:], false},
		{"a generated key with its prefix in capitals fails", "SK_" + good[3:], false},
		{"a generated key with its underscore typed as - fails", "sk-" + good[3:], false},
		{"a generated key with its underscore typed as . fails", "sk." + good[3:], false},
		{"a generated key without its prefix fails", good[3:], false},
		{"another prefix before another checksum is a legacy key", "pk_" + flip(good, len(good)-1)[3:], true},
		{"an imported key of the same length is a legacy key", "sk-" + strings.Repeat("a", 49), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := f.Check(tt.key)
			if tt.ok {
				assert.NoError(t, err)
			} else {
				assert.ErrorIs(t, err, ErrMalformed)
			}
		})
	}
}

func TestNewFormatRejectsBadPrefixes(t *testing.T) {
	for _, p := range []string{"", "s_k", "sk!", strings.Repeat("a", 17), "sk-live"} {
		_, err := NewFormat(p)
		assert.Error(t, err, "prefix %q", p)
	}
}

func TestIDsSortByCreationAndValidate(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a, err := NewID(t0)
	require.NoError(t, err)
	b, _ := NewID(t0.Add(time.Millisecond))
	c, _ := NewID(t0.Add(100 * 24 * time.Hour))
	assert.Less(t, a, b)
	assert.Less(t, b, c)
	for _, id := range []string{a, b, c} {
		assert.True(t, ValidID(id), id)
	}
	for _, bad := range []string{"", "key_", "key_short", "sk_" + a[4:], a + "x", a[:len(a)-1] + "!"} {
		assert.False(t, ValidID(bad), bad)
	}
}

func TestHashIsHMACWithPepperAndSHA256Without(t *testing.T) {
	key := "sk_example"
	plain := NewHasher(nil).Hash(key)
	assert.Equal(t, Hash(sha256.Sum256([]byte(key))), plain)

	m := hmac.New(sha256.New, []byte("pepper"))
	m.Write([]byte(key))
	var want Hash
	copy(want[:], m.Sum(nil))
	hs := NewHasher([]byte("pepper"))
	assert.Equal(t, want, hs.Hash(key))
	assert.Equal(t, want, hs.Hash(key), "pooled hashers are reset between uses")
	assert.NotEqual(t, plain, want)

	parsed, err := ParseHash(want.String())
	require.NoError(t, err)
	assert.Equal(t, want, parsed)
	_, err = ParseHash("zz")
	assert.Error(t, err)
}

// A pooled HMAC state outlives the call that hashed a key with it: it
// keeps no byte of the key, neither in its scratch buffer nor in the
// digest's (which a next use would otherwise only overwrite).
func TestAPooledHasherKeepsNoPlaintext(t *testing.T) {
	hs := NewHasher([]byte("pepper"))
	st := hs.pool.New().(*hmacState)
	empty := hmac.New(sha256.New, []byte("pepper")).Sum(nil)
	for _, key := range []string{
		"sk_" + strings.Repeat("K", 49),      // a generated key's length
		"legacy-" + strings.Repeat("L", 100), // an imported one, over a block
		strings.Repeat("M", 256),             // the longest a check hashes
		strings.Repeat("N", 2000),            // longer than the buffer kept
	} {
		mac := hmac.New(sha256.New, []byte("pepper"))
		mac.Write([]byte(key))
		assert.Equal(t, Hash(mac.Sum(nil)), st.hash(key))
		assert.NotContains(t, string(st.in[:cap(st.in)]), key[len(key)-8:], "the scratch buffer keeps the key")
		assert.Equal(t, empty, st.mac.Sum(nil), "the digest was not reset after use")
		st.mac.Reset()
	}
}

func BenchmarkCheckFormat(b *testing.B) {
	f := mustFormat(b, "sk")
	k, _ := f.Generate()
	b.ReportAllocs()
	for b.Loop() {
		if f.Check(k) != nil {
			b.Fatal("rejected")
		}
	}
}

func BenchmarkHashHMAC(b *testing.B) {
	hs := NewHasher([]byte("pepper"))
	b.ReportAllocs()
	for b.Loop() {
		hs.Hash("sk_0123456789012345678901234567890123456789012345678")
	}
}

func TestKeyJSONUsesTheRecordNamesAndEmptyLists(t *testing.T) {
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := json.Marshal(&Key{ID: "key_1", Name: "n", Owner: "o", CreatedAt: created})
	require.NoError(t, err)
	assert.JSONEq(t, `{"id":"key_1","name":"n","owner":"o","permissions":[],"ip_allowlist":[],"policies":[],"meta":{},
		"created_at":"2026-01-02T03:04:05Z","expires_at":null,"last_used_at":null,"revoked_at":null,
		"rate_limit":null,"rotated_from":null,"rotated_to":null,"lineage":null}`, string(b))
	var back Key
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, "key_1", back.ID)
	assert.Empty(t, back.RotatedFrom)
}

func TestCreatedAddsTheSecretToTheFlatRecord(t *testing.T) {
	b, err := json.Marshal(Created{Key: &Key{ID: "key_1", RotatedFrom: "key_0"}, Secret: "sk_x"})
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, "sk_x", m["key"])
	assert.Equal(t, "key_1", m["id"])
	assert.Equal(t, "key_0", m["rotated_from"])
}

func TestAKeyPastedIntoANameOwnerPermissionOrMetadataIsRefused(t *testing.T) {
	f := mustFormat(t, "sk")
	secret, _ := f.Generate()
	m := &Manager{Format: f}
	for _, tt := range []struct {
		name  string
		perms []string
		meta  map[string]string
		field string
		owner string
	}{
		{"ok", nil, nil, "owner", secret},
		{"ok", nil, nil, "owner", "team_" + secret},
		{"ok", nil, nil, "owner", secret + "@corp"},
		{"ci " + secret, nil, nil, "name", ""},
		{secret, nil, nil, "name", ""},
		{"ok", []string{"read:" + secret}, nil, "permissions", ""},
		{"ok", nil, map[string]string{"plan": secret}, "meta", ""},
		{"ok", nil, map[string]string{"note": "rotated from " + secret + " yesterday"}, "meta", ""},
		// Glued to a label by characters a key may hold itself, or not.
		{"old_" + secret, nil, nil, "name", ""},
		{secret + "_old", nil, nil, "name", ""},
		{"x" + secret + "y", nil, nil, "name", ""},
		{"ok", []string{"read_" + secret}, nil, "permissions", ""},
		{"ok", nil, map[string]string{"note": "was_" + secret}, "meta", ""},
		{"ok", nil, map[string]string{"note": "sk_" + secret}, "meta", ""},
		// Cut in two permissions, neither most of a key: joined, as the
		// upstream gets them, one but for a comma.
		{"ok", []string{"read", secret[:len("sk_")+21], secret[len("sk_")+21:]}, nil, "permissions", ""},
		// The same without the prefix: the random part is the secret.
		{"ok", []string{"read", secret[len("sk_") : len("sk_")+21], secret[len("sk_")+21:]}, nil, "permissions", ""},
		// A run of bytes no key has inside one, wider than a wrap.
		{secret[:20] + "\x01\x01\x01\x01\x01" + secret[20:], nil, nil, "name", ""},
		{secret[len("sk_"):20] + "     " + secret[20:], nil, nil, "name", ""},
	} {
		err := m.refusePastedKeys(tt.name, tt.owner, tt.perms, tt.meta)
		var fe *FieldError
		require.ErrorAs(t, err, &fe)
		assert.Equal(t, tt.field, fe.Field)
		assert.NotContains(t, err.Error(), secret)
	}
	assert.NoError(t, m.refusePastedKeys("sk_live_service", "sk_team", []string{"read:users"}, map[string]string{"plan": "sk_gold"}),
		"a label that only starts like a key is fine")
	other := "0"
	if secret[len(secret)-1] == '0' {
		other = "1"
	}
	// A key with its checksum mistyped or cut is no key, but carries all
	// of its secret, and a label is written out on every decision: refused
	// as a key is, and so is one whose "_" was typed as "-".
	broken := secret[:len(secret)-1] + other // its checksum's last character changed
	for _, s := range []string{"old_" + broken, "old_" + secret[:len(secret)-1], "sk-" + secret[3:], "sk_ " + secret[3:]} {
		err := m.refusePastedKeys(s, "", nil, nil)
		var fe *FieldError
		require.ErrorAs(t, err, &fe, "%q", s)
		assert.Equal(t, "name", fe.Field)
		assert.NotContains(t, err.Error(), secret[3:20])
	}
	// Words after the prefix are no key, however long: a label is read
	// for a key's characters in a row, not across gaps as output is.
	for _, tc := range []struct {
		name, owner string
		meta        map[string]string
	}{
		{name: "sk-learn model for fraud detection"},
		{name: "sk-learn classifier for fraud detection"},
		{name: "sk_live_payments_reconciliation"},
		{name: "ok", owner: "servicedesk_integrationaccountsforproduction"},
		{name: "ok", meta: map[string]string{"model": "sk-learn GradientBoostingClassifier", "lib": "sk-learn 1.5.2"}},
	} {
		assert.NoError(t, m.refusePastedKeys(tc.name, tc.owner, []string{"read:sk-reports"}, tc.meta), "%q %q %v", tc.name, tc.owner, tc.meta)
	}
}

func TestKeyJSONCarriesPoliciesAndMeta(t *testing.T) {
	k := &Key{ID: "key_1", Policies: []string{"billing"}, Meta: map[string]string{"plan": "gold"}}
	b, err := json.Marshal(k)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, []any{"billing"}, m["policies"])
	assert.Equal(t, map[string]any{"plan": "gold"}, m["meta"])
	var back Key
	require.NoError(t, json.Unmarshal(b, &back))
	assert.Equal(t, k.Policies, back.Policies)
	assert.Equal(t, k.Meta, back.Meta)

	// A record written before keys had policies and metadata reads as a key
	// valid under every policy, with none.
	var old Key
	require.NoError(t, json.Unmarshal([]byte(`{"id":"key_0","name":"n","owner":"o","permissions":["a"],"ip_allowlist":[],
		"created_at":"2026-01-02T03:04:05Z","expires_at":null,"last_used_at":null,"revoked_at":null,
		"rate_limit":null,"rotated_from":null,"rotated_to":null}`), &old))
	assert.Empty(t, old.Policies)
	assert.Empty(t, old.Meta)
	assert.True(t, old.ValidUnder("billing"))
	assert.Equal(t, "key_0", old.RateBucket(), "a record from before lineages counts in its own buckets")
}

func TestPoliciesAndMetaAreBounded(t *testing.T) {
	long := strings.Repeat("a", 257)
	tooMany := map[string]string{}
	for i := range MaxMetaEntries + 1 {
		tooMany[fmt.Sprintf("m%d", i)] = "v"
	}
	tests := []struct {
		name     string
		policies []string
		meta     map[string]string
		field    string // "" = valid
	}{
		{"no policies and no metadata", nil, nil, ""},
		{"policies and metadata within bounds", []string{"billing", "orders-v2", "a_b"}, map[string]string{"plan": "gold", "tenant_id": "t-42", "note": "Zürich office"}, ""},
		{"an upper-case policy name", []string{"Billing"}, nil, "policies[0]"},
		{"a policy name with a slash", []string{"billing/x"}, nil, "policies[0]"},
		{"a policy name starting with _", []string{"_policy"}, nil, "policies[0]"},
		{"an empty policy name", []string{""}, nil, "policies[0]"},
		{"a policy named twice", []string{"a", "b", "a"}, nil, "policies[2]"},
		{"too many policies", make([]string, MaxPolicies+1), nil, "policies"},
		{"a metadata name with a dash", nil, map[string]string{"plan-tier": "x"}, "meta"},
		{"an upper-case metadata name", nil, map[string]string{"Plan": "x"}, "meta"},
		{"a metadata name starting with a digit", nil, map[string]string{"1plan": "x"}, "meta"},
		{"a metadata name of 65 bytes", nil, map[string]string{strings.Repeat("a", 65): "x"}, "meta"},
		{"an empty metadata value", nil, map[string]string{"plan": ""}, "meta.plan"},
		{"a metadata value of 257 bytes", nil, map[string]string{"plan": long}, "meta.plan"},
		{"a metadata value with a newline", nil, map[string]string{"plan": "gold\r\nx-injected: 1"}, "meta.plan"},
		{"a metadata value with a bidirectional control", nil, map[string]string{"plan": "gold\u202e"}, "meta.plan"},
		{"a metadata value that is not UTF-8", nil, map[string]string{"plan": "\xff"}, "meta.plan"},
		{"seventeen metadata entries", nil, tooMany, "meta"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := Spec{Name: "k", Policies: tt.policies, Meta: tt.meta}
			err := s.Validate(time.Now())
			if tt.field == "" {
				require.NoError(t, err)
				return
			}
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tt.field, fe.Field)
			for _, v := range tt.meta {
				if len(v) > 3 {
					assert.NotContains(t, err.Error(), v, "an error never quotes a value")
				}
			}
		})
	}
}

// What is written out must hold no key nor enough of one to shorten the
// search for the rest: ResemblesKey sets off on the prefix and 22 or more
// base62 characters (131 bits of a key's 256), checksum or not, wherever
// they stand. ContainsKey, which decisions use, needs the whole key.
func TestAKeyWithoutItsChecksumOrEndStillResemblesAKey(t *testing.T) {
	f, err := NewFormat("sk")
	require.NoError(t, err)
	key, err := f.Generate()
	require.NoError(t, err)
	last := "a"
	if key[len(key)-1] == 'a' {
		last = "b"
	}
	mistyped := key[:len(key)-1] + last // its checksum no longer matches
	for _, s := range []string{
		key,
		"ua/1 (" + key + ")",
		key[:len(key)-checksumLen],          // the checksum left off
		key[:len(key)-checksumLen-1] + " x", // and a character more
		mistyped,
		"sk_x sk_" + key[3:3+resembleLen],       // the second of two markers
		"user-" + key[:3+resembleLen] + "-tail", // glued to other text
	} {
		assert.True(t, f.ResemblesKey(s), "%q", s)
	}
	assert.False(t, f.ContainsKey(key[:len(key)-checksumLen]), "a decision needs the whole key")
	for _, s := range []string{
		"",
		"sk_",
		"sk_" + key[3:3+resembleLen-1],     // 21 characters: 125 bits unknown
		key[3:],                            // no prefix
		"sk_" + key[3:13] + "-" + key[13:], // cut by a character no key has
		"pk_" + key[3:],
	} {
		assert.False(t, f.ResemblesKey(s), "%q", s)
	}
}

// MayHoldKey, for what is written out only (audit fields, log lines), reads
// more loosely than ResemblesKey: a key whose "_" was mistyped, or with a
// character of its first 22 mistyped as one no key has, or wrapped where it
// was copied from, still carries all of its secret but a character or two.
// A false positive there costs a field replaced by a mark.
func TestAMistypedOrWrappedKeyMayHoldAKey(t *testing.T) {
	f, err := NewFormat("sk")
	require.NoError(t, err)
	key, err := f.Generate()
	require.NoError(t, err)
	for _, s := range []string{
		key,
		"sk-" + key[3:],                    // the underscore mistyped
		"sk." + key[3:],                    // as a dot
		"sk_" + key[3:13] + "-" + key[13:], // a character mistyped as one no key has
		"ua " + key[:3+20] + " " + key[3+20:],
		"x sk_" + key[3:8] + ".." + key[8:],              // two bytes no key has
		"sk%5F" + key[3:],                                // the underscore percent-encoded
		"tool/1 key=sk " + key[3:],                       // typed as a space
		"ua " + key[:3+20] + "\t   " + key[3+20:],        // wrapped at four bytes
		"ua " + key[:3+20] + "\u00a0\u00a0" + key[3+20:], // at two no-break spaces
		"sk_" + key[3:8] + "----" + key[8:13] + "-" + key[13:18] + "-" + key[18:], // three runs
		"ua " + key[:3] + "\r\n  " + key[3:],                                      // wrapped right after the underscore
		"ua " + key[:3] + " " + key[3:],
		"ua sk-\t" + key[3:],
		// The prefix lost or mistyped: the random part and its checksum
		// are all of the secret, and tell a reader it is a key.
		key[3:],
		"pk_" + key[3:],
		"SK_" + key[3:],
		"/api/reports/sk:" + key[3:] + "/raw",
		"id=" + key[3:] + "xyz", // glued on one side
		"xyz" + key[3:],
		// Grouped or wrapped anywhere, its checksum whole: read with the
		// groups' separators taken out.
		"sk_" + key[3:6] + "-" + key[6:9] + "-" + key[9:12] + "-" + key[12:15] + "-" + key[15:],
		"client/1.0 " + grouped(key, " ", 4),
		"client/1.0 " + grouped(key, "-", 4),
		"client/1.0 " + grouped(key, "\u200b", 6), // a zero-width space every six
		// The prefix in capitals and the checksum mistyped.
		"client/1.0 SK_" + key[3:len(key)-1] + otherBase62(key[len(key)-1]),
		// Percent-encoded, every byte.
		"token=" + percentEncoded(key),
		// The Basic credentials of "<key>:".
		"Basic " + base64.StdEncoding.EncodeToString([]byte(key+":")),
		"Basic " + base64.RawURLEncoding.EncodeToString([]byte("user:"+key)),
	} {
		assert.True(t, f.MayHoldKey(s), "%q", s)
	}
	for _, s := range []string{
		"",
		"sk-fine",
		"sk_" + key[3:3+resembleLen-1],       // 21 characters
		"sk_" + key[3:8] + "-----" + key[8:], // five bytes in a row: read no further
		// Four runs, the checksum mistyped: too far from a key to read
		// across, and no checksum says it is one.
		"sk_" + key[3:6] + "-" + key[6:9] + "-" + key[9:12] + "-" + key[12:15] + "-" + key[15:len(key)-1] + otherBase62(key[len(key)-1]),
		"sk learn model for fraud detection",          // words after a space
		"task-" + strings.Repeat("ab-", 5) + "done",   // words, not a key
		"/api/desk-booking-requests-history-overview", // a marker inside a word
		"/api/task_management-dashboard-overview-2024",
		"pk_" + key[3:len(key)-1] + otherBase62(key[len(key)-1]),                              // no prefix and the checksum wrong: a token like any other
		strings.Repeat("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", 2), // hex digests
		"xyz" + key[3:] + "xyz",                                                               // glued on both sides
	} {
		assert.False(t, f.MayHoldKey(s), "%q", s)
	}
}

// grouped is s in groups of n joined by sep.
func grouped(s, sep string, n int) string {
	var parts []string
	for len(s) > n {
		parts = append(parts, s[:n])
		s = s[n:]
	}
	return strings.Join(append(parts, s), sep)
}

// percentEncoded is s with every byte percent-encoded.
func percentEncoded(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		fmt.Fprintf(&b, "%%%02X", s[i])
	}
	return b.String()
}

// otherBase62 is a base62 character other than c.
func otherBase62(c byte) string {
	if c == 'x' {
		return "y"
	}
	return "x"
}

// A label holding a key whose prefix is lost or mistyped is refused, as one
// holding the key is: it would be written into every decision the key makes.
func TestALabelHoldingAKeyWithoutItsPrefixHoldsAKey(t *testing.T) {
	f, err := NewFormat("sk")
	require.NoError(t, err)
	key, err := f.Generate()
	require.NoError(t, err)
	for _, s := range []string{key[3:], "billing " + key[3:], "SK_" + key[3:], "sk:" + key[3:]} {
		assert.True(t, f.LabelHoldsKey(s), "%q", s)
	}
	assert.False(t, f.LabelHoldsKey("billing "+key[3:len(key)-1]+otherBase62(key[len(key)-1])), "a long token whose checksum does not match")
}

// A label holding a key wrapped or grouped anywhere (a space, '.' or ':'
// in it, or every few characters) is refused: the whole secret would reach
// every upstream the key calls, in x-authz-key-name and its kin, with one
// character taken out. Words after the prefix still pass.
func TestALabelHoldingAGroupedOrWrappedKeyHoldsAKey(t *testing.T) {
	f, err := NewFormat("sk")
	require.NoError(t, err)
	key, err := f.Generate()
	require.NoError(t, err)
	for _, s := range []string{
		key[:13] + " " + key[13:],
		key[:20] + "." + key[20:],
		"read:users," + key[:16] + ":" + key[16:],
		"team " + grouped(key, " ", 4),
		grouped(key, "-", 8),
		"SK " + grouped(key[3:], " ", 5),
	} {
		assert.True(t, f.LabelHoldsKey(s), "%q", s)
	}
	for _, s := range []string{
		"sk-learn GradientBoostingClassifier",
		"sk_live_payments_reconciliation",
		"desk booking " + grouped(key[3:len(key)-1]+otherBase62(key[len(key)-1]), " ", 4), // no checksum matches
	} {
		assert.False(t, f.LabelHoldsKey(s), "%q", s)
	}
}

// A label may hold a text or emoji presentation selector right after what
// has both forms (a symbol, punctuation, a digit of a keycap, ℹ), and no
// other variation selector anywhere:
// after a letter they draw nothing, and "billing-readonly\ufe0e" would
// pass for "billing-readonly".
func TestALabelKeepsOnlyASymbolsPresentationSelector(t *testing.T) {
	for _, ok := range []string{"love \u2764\ufe0f", "check \u2714\ufe0e done", "deploy \U0001F680",
		"team 1\ufe0f\u20e3 ci", "#\ufe0f\u20e3", "\u203c\ufe0f", "\u2194\ufe0f", "\u2139\ufe0f"} {
		assert.NoError(t, CheckText("name", ok), "%+q", ok)
	}
	for _, bad := range []string{"billing-readonly\ufe0e", "billing\U000E0100-readonly", "admin\ufe0f", "\ufe0f", "love \u2764\ufe0f\ufe0f", "\u2764\ufe00", "x\u2764 \ufe0f"} {
		assert.Error(t, CheckText("name", bad), "%+q", bad)
	}
}

// RedactLabels leaves a key whose labels hold no key as it is (the same
// pointer: nothing copied on the lookups of ordinary keys), and never
// changes the key it was given.
func TestRedactLabelsCopiesOnlyAKeyWhoseLabelsHoldOne(t *testing.T) {
	f, err := NewFormat("sk")
	require.NoError(t, err)
	leaked, err := f.Generate()
	require.NoError(t, err)
	clean := &Key{ID: "key_1", Name: "svc", Owner: "team", Permissions: []string{"read"}, Meta: map[string]string{"plan": "gold"}}
	assert.Same(t, clean, RedactLabels(clean, f.LabelHoldsKey))
	assert.Same(t, clean, RedactLabels(clean, nil))
	assert.Zero(t, testing.AllocsPerRun(100, func() { RedactLabels(clean, f.LabelHoldsKey) }))

	held := &Key{ID: "key_2", Name: "svc " + leaked, Owner: leaked, Permissions: []string{"read", leaked},
		Meta: map[string]string{"plan": "gold", "note": leaked, strings.ToLower(leaked): "x"}}
	was := *held
	got := RedactLabels(held, f.LabelHoldsKey)
	assert.Equal(t, &Key{ID: "key_2", Name: RedactedLabel, Owner: RedactedLabel, Permissions: []string{"read"},
		Meta: map[string]string{"plan": "gold", "note": RedactedLabel}}, got)
	assert.Equal(t, was, *held)
	assert.Equal(t, []string{"read", leaked}, held.Permissions)
	assert.Len(t, held.Meta, 3)
}
