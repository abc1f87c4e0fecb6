package keystore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// recordCases are keys of every shape a record must carry unchanged.
func recordCases(t *testing.T) []struct {
	name string
	key  Key
} {
	at := func(s string) *time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		require.NoError(t, err)
		return &v
	}
	rate, err := ParseRateLimit("100/m")
	require.NoError(t, err)
	none, err := ParseRateLimit("none")
	require.NoError(t, err)
	var stale RateLimit
	require.NoError(t, stale.UnmarshalText([]byte("100 per fortnight")))
	long := make([]string, 40)
	for i := range long {
		long[i] = fmt.Sprintf("read:resource-%02d", i)
	}
	return []struct {
		name string
		key  Key
	}{
		{"with every field set", Key{
			ID: "key_1", Name: "billing", Owner: "team-a", Permissions: []string{"read:users", "write:users"},
			RateLimit:   rate,
			IPAllowlist: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("192.0.2.7/32")},
			Policies:    []string{"public", "internal"}, Meta: map[string]string{"tier": "gold", "team": "ünïcode ✓"},
			CreatedAt: *at("2026-01-01T00:00:00.123456789Z"), ExpiresAt: at("2027-01-01T00:00:00Z"),
			LastUsedAt: at("2026-06-01T00:00:00+02:00"), RevokedAt: at("2026-07-01T00:00:00Z"),
			RotatedFrom: "key_0", RotatedTo: "key_2", Lineage: "key_00",
		}},
		{"with empty lists", Key{ID: "key_1", Owner: "default", Permissions: []string{}, IPAllowlist: []netip.Prefix{}, Policies: []string{}, RateLimit: none}},
		{"with permissions but no policies", Key{ID: "key_1", Permissions: []string{"a", ""}, Policies: nil}},
		{"with policies but no permissions", Key{ID: "key_1", Policies: []string{"p"}}},
		{"with a rate that no longer parses", Key{ID: "key_1", RateLimit: stale, ExpiresAt: at("2027-01-01T00:00:00Z")}},
		{"longer than fits inline", Key{ID: "key_big", Name: strings.Repeat("n", 300), Permissions: long, Meta: map[string]string{"k": strings.Repeat("v", 500)}}},
		{"with nothing", Key{}},
		{"with a zone the binary form cannot say", Key{ID: "key_1", CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", -60))}},
	}
}

// A record decodes to the key it encodes, field for field: nil lists stay
// nil, empty ones empty, times the same instant in the same zone.
func TestARecordIsTheSameKey(t *testing.T) {
	for _, tc := range recordCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			orig := tc.key.Clone()
			var r record
			r.set(&tc.key, nil)
			assert.Equal(t, orig, &tc.key, "encoding leaves the key alone")
			assert.Equal(t, len(appendRecord(nil, &tc.key)) > recordInline, r.big != nil, "inline exactly when it fits")
			k, err := decodeRecord(r.bytes())
			require.NoError(t, err)
			want := *orig
			if len(want.Meta) == 0 {
				want.Meta = nil // no metadata is none, in the cache as in the SQLite store
			}
			if _, off := want.CreatedAt.Zone(); off == -60 {
				assert.True(t, k.CreatedAt.Equal(want.CreatedAt), "the same instant")
				assert.Equal(t, time.UTC, k.CreatedAt.Location(), "in UTC")
				want.CreatedAt = k.CreatedAt
			}
			assert.Equal(t, &want, k)
			assert.Equal(t, orig.Permissions == nil, k.Permissions == nil)
			assert.Equal(t, orig.Policies == nil, k.Policies == nil)
			assert.Equal(t, orig.IPAllowlist == nil, k.IPAllowlist == nil)
			if k.ExpiresAt != nil {
				assert.Equal(t, orig.ExpiresAt.Location().String(), k.ExpiresAt.Location().String())
			}
			if k.LastUsedAt != nil {
				assert.True(t, k.LastUsedAt.Equal(*orig.LastUsedAt))
				_, off := k.LastUsedAt.Zone()
				assert.Equal(t, 2*3600, off, "the zone offset survives")
			}
			if len(k.Permissions) > 0 {
				k.Permissions = append(k.Permissions, "more")
				assert.Equal(t, want.Policies, k.Policies, "the permissions cannot grow into the policies")
			}
		})
	}
}

// Any cut or corruption of a record is an error, never a panic or a key
// read out of bounds.
func TestABrokenRecordIsAnErrorNotAPanic(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range recordCases(t) {
		b := appendRecord(nil, &tc.key)
		for n := range len(b) {
			_, err := decodeRecord(b[:n])
			assert.ErrorIs(t, err, errBadRecord, "%s cut at %d of %d bytes", tc.name, n, len(b))
		}
		for range 2000 {
			c := append([]byte(nil), b...)
			for range 1 + rng.IntN(3) {
				c[rng.IntN(len(c))] = byte(rng.Uint32())
			}
			assert.NotPanics(t, func() { _, _ = decodeRecord(c) })
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	for _, tc := range recordCases(&testing.T{}) {
		f.Add(appendRecord(nil, &tc.key))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := decodeRecord(b)
		if err != nil {
			return
		}
		// What decodes encodes to a record that decodes to the same key
		// again (the first decoding may normalize what no encoding writes,
		// such as a time with more than a second of nanoseconds).
		b2 := appendRecord(nil, k)
		k2, err := decodeRecord(b2)
		require.NoError(t, err)
		assert.Equal(t, b2, appendRecord(nil, k2))
	})
}

// The cache's entries hold no pointer the collector must follow, but the
// slice of a record too long to keep inline: with a full cache every
// collection would otherwise walk a hundred thousand keys.
func TestACacheEntryHoldsNoPointerButALongRecords(t *testing.T) {
	var walk func(t reflect.Type, path string) []string
	walk = func(t reflect.Type, path string) []string {
		switch t.Kind() {
		case reflect.Struct:
			var out []string
			for i := range t.NumField() {
				out = append(out, walk(t.Field(i).Type, path+"."+t.Field(i).Name)...)
			}
			return out
		case reflect.Array:
			return walk(t.Elem(), path+"[]")
		case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
			reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
			return nil
		}
		return []string{path}
	}
	assert.Equal(t, []string{"sieveSlot.val.rec.big"}, walk(reflect.TypeFor[sieveSlot[entry]](), "sieveSlot"))
	assert.Empty(t, walk(reflect.TypeFor[sieveSlot[int64]](), "sieveSlot"), "the negative entries")
	assert.Equal(t, 320, int(reflect.TypeFor[sieveSlot[entry]]().Size()), "the size the comment on recordInline gives")
}

// A hit shares the key its record was last decoded to, so that what is
// derived from a key (its response headers) can be kept per *Key; a refill
// is a new key.
func TestHitsShareOneKeyUntilItIsFilledAgain(t *testing.T) {
	c, st, _, h := setup(t)
	first, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	for range 3 {
		k, err := c.Lookup(context.Background(), h)
		require.NoError(t, err)
		assert.Same(t, first, k)
	}
	forget(c, h) // as if other hashes had taken its place
	fromRecord, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, first, fromRecord, "decoded from the record")
	again, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Same(t, fromRecord, again)

	st.set(h, &Key{ID: "key_known", Name: "renamed"})
	c.Invalidate(h)
	renamed, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, "renamed", renamed.Name)
	for i := range c.front[frontSet(h)] { // the first fill's, left over
		c.front[frontSet(h)][i].Store(&decoded{hash: h, seq: 1, key: first})
	}
	k, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, "renamed", k.Name, "a decoded key of an earlier fill is never served")
}

// forget empties the front set of h.
func forget(c *Cache, h Hash) {
	for i := range c.front[frontSet(h)] {
		c.front[frontSet(h)][i].Store(nil)
	}
}

// Two keys whose hashes share a set of the front both keep their decoded
// key; a third takes the place of the one remembered first.
func TestTwoKeysOfOneFrontSetBothStayDecoded(t *testing.T) {
	c, st, _, _ := setup(t)
	var hs []Hash
	for i := 0; len(hs) < 3; i++ {
		h := NewHasher(nil).Hash(fmt.Sprintf("sk_%d", i))
		if len(hs) == 0 || frontSet(h) == frontSet(hs[0]) {
			hs = append(hs, h)
			st.set(h, &Key{ID: fmt.Sprintf("key_%d", i)})
		}
	}
	first := map[Hash]*Key{}
	for _, h := range hs[:2] {
		k, err := c.Lookup(context.Background(), h)
		require.NoError(t, err)
		first[h] = k
	}
	for range 3 {
		for _, h := range hs[:2] {
			k, err := c.Lookup(context.Background(), h)
			require.NoError(t, err)
			assert.Same(t, first[h], k, "%s is still decoded", k.ID)
		}
	}
	_, err := c.Lookup(context.Background(), hs[2]) // the third: hs[0] was remembered first
	require.NoError(t, err)
	k, err := c.Lookup(context.Background(), hs[1])
	require.NoError(t, err)
	assert.Same(t, first[hs[1]], k)
	k, err = c.Lookup(context.Background(), hs[0])
	require.NoError(t, err)
	assert.NotSame(t, first[hs[0]], k, "decoded again")
	assert.Equal(t, first[hs[0]].ID, k.ID)
}

// A key too long to keep inline is served as it was stored.
func TestALongKeyIsCachedWhole(t *testing.T) {
	c, st, _, h := setup(t)
	big := recordCases(t)[5].key
	st.set(h, &big)
	_, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	forget(c, h)
	k, err := c.Lookup(context.Background(), h)
	require.NoError(t, err)
	assert.Equal(t, &big, k)
	assert.EqualValues(t, 1, st.lookups.Load())
}

// BenchmarkCollectionWithAFullCache is one collection of a heap holding a
// full cache of 100k keys (and little else): what the collector's marking
// costs per cycle on a server with a large cache.
func BenchmarkCollectionWithAFullCache(b *testing.B) {
	st := newCountingStore()
	c := NewCache(st, CacheOptions{Size: 100000})
	now := time.Now().UTC()
	for i := range 100000 {
		var h Hash
		h[0], h[1], h[2] = byte(i), byte(i>>8), byte(i>>16)
		st.keys[h] = &Key{ID: fmt.Sprintf("key_%022d", i), Name: "load key", Owner: "load",
			Permissions: []string{"read:users"}, CreatedAt: now, Meta: map[string]string{}}
		if _, err := c.Lookup(context.Background(), h); err != nil {
			b.Fatal(err)
		}
		delete(st.keys, h) // only the cache holds it
	}
	runtime.GC()
	for b.Loop() {
		runtime.GC()
	}
	runtime.KeepAlive(c)
}
