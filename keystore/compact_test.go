package keystore

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestACompactKeyIsTheSameRecord(t *testing.T) {
	at := func(s string) *time.Time { v, _ := time.Parse(time.RFC3339, s); return &v }
	for _, tc := range []struct {
		name string
		key  Key
	}{
		{"with every field set", Key{
			ID: "key_1", Name: "billing", Owner: "team-a", Permissions: []string{"read:users", "write:users"},
			RateLimit: RateLimit{}, IPAllowlist: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")},
			Policies: []string{"public", "internal"}, Meta: map[string]string{"tier": "gold"},
			CreatedAt: *at("2026-01-01T00:00:00Z"), ExpiresAt: at("2027-01-01T00:00:00Z"),
			LastUsedAt: at("2026-06-01T00:00:00Z"), RevokedAt: at("2026-07-01T00:00:00Z"),
			RotatedFrom: "key_0", RotatedTo: "key_2",
		}},
		{"with empty lists", Key{ID: "key_1", Owner: "default", Permissions: []string{}, IPAllowlist: []netip.Prefix{}, Policies: []string{}}},
		{"with nothing", Key{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.key.Clone()
			c := compact(&tc.key)
			assert.Equal(t, orig, &tc.key, "compact leaves its argument alone")
			assert.Equal(t, orig.Permissions == nil, c.Permissions == nil)
			assert.Equal(t, orig.Policies == nil, c.Policies == nil)
			want := *orig
			if len(want.Meta) == 0 {
				want.Meta = nil
			}
			assert.Equal(t, &want, c)
			if c.ExpiresAt != nil {
				assert.NotSame(t, tc.key.ExpiresAt, c.ExpiresAt)
			}
			c.Permissions = append(c.Permissions, "more")
			assert.Equal(t, orig.Policies, c.Policies, "the permissions cannot grow into the policies")
		})
	}
	assert.Nil(t, compact(nil))
}
