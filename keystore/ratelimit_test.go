package keystore

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

func TestARateLimitIsParsedOnceAndKeepsItsText(t *testing.T) {
	def := ratelimit.Rate{N: 1000, Window: time.Hour}
	for _, tt := range []struct {
		name, in string
		set      bool
		rate     ratelimit.Rate
	}{
		{"unset is the default", "", false, def},
		{"none is no limit", "none", true, ratelimit.Rate{}},
		{"a rate per minute", "100/m", true, ratelimit.Rate{N: 100, Window: time.Minute}},
		{"a rate per duration keeps its spelling", "100/10m", true, ratelimit.Rate{N: 100, Window: 10 * time.Minute}},
		{"spaces around are kept as written", " 5/s ", true, ratelimit.Rate{N: 5, Window: time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRateLimit(tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.set, r.IsSet())
			assert.Equal(t, tt.in, r.String())
			assert.Equal(t, tt.rate, r.Or(def))
		})
	}
	_, err := ParseRateLimit("lots")
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "rate_limit", fe.Field)
}

// The JSON of a key record, as every output shows it and the Redis store
// keeps it, is byte for byte what the string-typed record wrote (these are
// the old encoder's bytes) with the policies and meta fields added after
// ip_allowlist and lineage at the end; the old bytes, without them, still
// decode.
func TestAKeyRecordEncodesAsItAlwaysHas(t *testing.T) {
	at := time.Unix(0, 0).UTC()
	for _, tt := range []struct {
		rate string
		want string
	}{
		{"100/m", `{"id":"k","name":"","owner":"","permissions":[],"ip_allowlist":[],"created_at":"1970-01-01T00:00:00Z","expires_at":null,"last_used_at":null,"revoked_at":null,"rate_limit":"100/m","rotated_from":null,"rotated_to":null}`},
		{"none", `{"id":"k","name":"","owner":"","permissions":[],"ip_allowlist":[],"created_at":"1970-01-01T00:00:00Z","expires_at":null,"last_used_at":null,"revoked_at":null,"rate_limit":"none","rotated_from":null,"rotated_to":null}`},
		{"", `{"id":"k","name":"","owner":"","permissions":[],"ip_allowlist":[],"created_at":"1970-01-01T00:00:00Z","expires_at":null,"last_used_at":null,"revoked_at":null,"rate_limit":null,"rotated_from":null,"rotated_to":null}`},
	} {
		r, err := ParseRateLimit(tt.rate)
		require.NoError(t, err)
		b, err := json.Marshal(&Key{ID: "k", RateLimit: r, CreatedAt: at})
		require.NoError(t, err)
		want := strings.Replace(tt.want, `"ip_allowlist":[],`, `"ip_allowlist":[],"policies":[],"meta":{},`, 1)
		want = strings.TrimSuffix(want, "}") + `,"lineage":null}`
		assert.Equal(t, want, string(b), "rate %q", tt.rate)

		var back Key
		require.NoError(t, json.Unmarshal([]byte(tt.want), &back), "the old bytes decode")
		assert.Equal(t, r, back.RateLimit)
	}
}

// A stored rate that this version no longer reads (written by another
// version, or by hand) still loads, shows as written, and counts as the
// default, as the decision always treated it; a change to the key refuses
// to write it back.
func TestAStoredRateThatNoLongerParsesLoadsAsTheDefault(t *testing.T) {
	def := ratelimit.Rate{N: 1000, Window: time.Hour}
	for _, raw := range []string{`"10/fortnight"`, `"0/s"`, `"lots"`} {
		var k Key
		require.NoError(t, json.Unmarshal([]byte(`{"id":"k","rate_limit":`+raw+`}`), &k), raw)
		assert.True(t, k.RateLimit.IsSet(), raw)
		assert.Equal(t, def, k.RateLimit.Or(def), raw)
		b, err := json.Marshal(&k)
		require.NoError(t, err)
		assert.Contains(t, string(b), `"rate_limit":`+raw)
		err = (&Spec{Name: "n", Permissions: []string{"x"}, RateLimit: k.RateLimit}).Validate(time.Now())
		assert.ErrorContains(t, err, "rate_limit: rate ", raw)
	}
}
