package authz_test

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
)

func TestMalformedKeysAreNeverCountedAgainstAnAddress(t *testing.T) {
	f := authztest.NewGuarded(t, "1/h", "1/h")
	for _, flood := range authztest.Floods(t, authztest.Format)[:2] {
		for i := range 5000 {
			d := f.Decide(authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": flood.Next(i)}})
			require.Equal(t, authz.CodeInvalidKey, d.Code, flood.Name)
		}
	}
	assert.Zero(t, f.Keys.Calls.Load(), "malformed keys cost no lookup")
	d := f.Decide(authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": "legacy-unknown-key-first"}})
	assert.Equal(t, authz.CodeInvalidKey, d.Code, "the first unknown key is looked up: nothing was counted before it")
	assert.EqualValues(t, 1, f.Keys.Calls.Load())
}

// TestAFloodFromOneAddressNeverTurnsAwayAKnownKey: whatever a flood sends
// from a key holder's address, the holder's key keeps being allowed — from
// the cache, and when its entry expires mid-flood, from the store.
func TestAFloodFromOneAddressNeverTurnsAwayAKnownKey(t *testing.T) {
	for _, flood := range authztest.Floods(t, authztest.Format) {
		t.Run(flood.Name, func(t *testing.T) {
			f := authztest.NewGuarded(t, "3/m", "10/s")
			good := authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": f.Good}}
			require.True(t, f.Decide(good).Allowed())
			cache := f.Cache
			refreshes := 0
			for i := range 2000 {
				d := f.Decide(authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": flood.Next(i)}})
				require.Contains(t, []authz.Code{authz.CodeInvalidKey, authz.CodeRateLimited}, d.Code)
				if i%10 == 0 {
					switch i % 500 {
					case 0:
						f.Now = f.Now.Add(31 * time.Second) // the good key's entry expires (and the budget refills a little)
						refreshes++
					case 200:
						cache.Invalidate(f.Hasher.Hash(f.Good)) // the key was changed
						refreshes++
					case 400:
						cache.Invalidate(keystore.Hash{}) // the cache forgot everything (a gap in the change feed)
						refreshes++
					}
					d := f.Decide(good)
					require.True(t, d.Allowed(), "flood step %d: the valid key got %s", i, d.Code)
				}
			}
			// 3 at the start, one more per 20 s of the 4×31 s that passed.
			assert.LessOrEqual(t, f.Keys.Calls.Load(), int64(1+refreshes+3+6), "store lookups stay within the budget")
		})
	}
}

func TestAnAddressPastItsBudgetIsRefusedUnknownKeysOnly(t *testing.T) {
	f := authztest.NewGuarded(t, "3/m", "none")
	unknown := func(peer string, i int) authz.Decision {
		return f.Decide(authz.Request{Path: "/api/users", Peer: peer, Headers: authz.HeaderMap{"x-api-key": fmt.Sprintf("legacy-unknown-key-%04d", i)}})
	}
	for i := range 3 {
		assert.Equal(t, authz.CodeInvalidKey, unknown("10.9.9.9", i).Code)
	}
	calls := f.Keys.Calls.Load()
	d := unknown("10.9.9.9", 3)
	assert.Equal(t, authz.CodeRateLimited, d.Code)
	assert.Equal(t, 429, d.Code.HTTPStatus())
	assert.Equal(t, 20*time.Second, d.RateLimit.RetryAfter, "one lookup per 20 s at 3/m")
	assert.Contains(t, d.ResponseHeaders(nil), authz.Header{Key: "RateLimit-Policy", Value: `"failed_attempts";q=3;w=60`})
	assert.Contains(t, d.ResponseHeaders(nil), authz.Header{Key: "Retry-After", Value: "20"})
	assert.Equal(t, calls, f.Keys.Calls.Load(), "a refused lookup costs nothing")

	assert.Equal(t, authz.CodeInvalidKey, unknown("10.9.9.9", 0).Code, "a key the negative cache knows is answered, not refused")
	good := authz.Request{Path: "/api/users", Peer: "10.9.9.9", Headers: authz.HeaderMap{"x-api-key": f.Good}}
	assert.Equal(t, authz.CodeRateLimited, f.Decide(good).Code,
		"a valid key this process has never seen waits like any unknown key: only the lookup the guard saves could tell them apart")
	assert.Equal(t, authz.CodeInvalidKey, unknown("10.8.8.8", 9).Code, "other addresses keep their own budget")

	f.Now = f.Now.Add(20 * time.Second)
	assert.True(t, f.Decide(good).Allowed(), "a token back after 20 s, and a found key gives it back")
	assert.Equal(t, authz.CodeInvalidKey, unknown("10.9.9.9", 10).Code)
	assert.Equal(t, authz.CodeRateLimited, unknown("10.9.9.9", 11).Code)
	for range 100 {
		require.True(t, f.Decide(good).Allowed(), "once cached, the valid key never meets the guard again")
	}
}

func TestFoundKeysGiveTheirTokenBack(t *testing.T) {
	f := authztest.NewGuarded(t, "2/m", "2/m")
	for i := range 50 {
		secret := fmt.Sprintf("legacy-valid-key-%04d", i)
		f.Keys.Put(f.Hasher.Hash(secret), &keystore.Key{ID: "key_" + strconv.Itoa(i), Permissions: []string{"read:users"}})
		d := f.Decide(authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": secret}})
		require.True(t, d.Allowed(), "valid key %d, seen for the first time: %s", i, d.Code)
	}
	for i := range 2 {
		d := f.Decide(authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": fmt.Sprintf("legacy-unknown-key-%04d", i)}})
		assert.Equal(t, authz.CodeInvalidKey, d.Code, "the budget is whole: valid keys did not spend it")
	}
}

func TestAddressesAreCountedByBlock(t *testing.T) {
	tests := []struct {
		name        string
		first, then string
		shared      bool
	}{
		{"an IPv6 /64 is one client", "2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:fffe", true},
		{"the next /64 is another", "2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{"an IPv4-mapped address is its IPv4 address", "::ffff:10.1.2.3", "10.1.2.3", true},
		{"IPv4 addresses are counted one by one", "10.1.2.3", "10.1.2.4", false},
		{"a zone does not make another block", "fe80::1%eth0", "fe80::2%eth1", true},
		{"IPv4 clients translated by NAT64 are counted one by one", "64:ff9b::10.1.2.3", "64:ff9b::10.1.2.4", false},
		{"a NAT64 address is one client", "64:ff9b::10.1.2.3", "64:ff9b::a01:203", true},
		{"IPv4 clients of a local-use NAT64 prefix are counted one by one", "64:ff9b:1::10.1.2.3", "64:ff9b:1::10.1.2.4", false},
		{"and so under a /56 prefix of it", "64:ff9b:1:aa00:a:102:3:0", "64:ff9b:1:aa00:a:102:4:0", false},
		{"the local-use prefix is no wider than its /48", "64:ff9b:2::1", "64:ff9b:2::2", true},
		{"a NAT64 address is its IPv4 client", "64:ff9b::10.1.2.3", "10.1.2.3", true},
		{"a 6to4 site is its IPv4 address", "2002:a01:203:1::1", "10.1.2.3", true},
		{"and so in every /64 of it", "2002:a01:203:1::1", "2002:a01:203:ffff::1", true},
		{"6to4 sites are counted one by one", "2002:a01:203::1", "2002:a01:204::1", false},
		{"a Teredo client is its NAT's address, inverted", "2001:0:c000:201:0:f227:f5fe:fdfc", "10.1.2.3", true},
		{"Teredo clients of one server are counted one by one", "2001:0:c000:201:0:f227:f5fe:fdfc", "2001:0:c000:201:0:f227:f5fe:fdfb", false},
		{"Teredo is no wider than its /32", "2001:1::1", "2001:1::2", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := authztest.NewGuarded(t, "1/h", "none")
			unknown := func(peer, key string) authz.Code {
				return f.Decide(authz.Request{Path: "/api/users", Peer: peer, Headers: authz.HeaderMap{"x-api-key": key}}).Code
			}
			require.Equal(t, authz.CodeInvalidKey, unknown(tt.first, "legacy-unknown-key-one"))
			want := authz.CodeInvalidKey
			if tt.shared {
				want = authz.CodeRateLimited
			}
			assert.Equal(t, want, unknown(tt.then, "legacy-unknown-key-two"))
		})
	}
}

// TestTheProcessBudgetBoundsLookupsFromEveryAddress: a flood spread over
// many addresses, each within its own budget, is held by the process's.
func TestTheProcessBudgetBoundsLookupsFromEveryAddress(t *testing.T) {
	f := authztest.NewGuarded(t, "100/m", "5/s")
	good := authz.Request{Path: "/api/users", Peer: "10.1.2.3", Headers: authz.HeaderMap{"x-api-key": f.Good}}
	require.True(t, f.Decide(good).Allowed())
	calls := f.Keys.Calls.Load()
	codesSeen := map[authz.Code]int{}
	for i := range 1000 {
		peer := fmt.Sprintf("2001:db8:%x::1", i) // a /64 each
		d := f.Decide(authz.Request{Path: "/api/users", Peer: peer, Headers: authz.HeaderMap{"x-api-key": fmt.Sprintf("legacy-unknown-key-%04d", i)}})
		codesSeen[d.Code]++
		require.True(t, f.Decide(good).Allowed(), "the cached key passes throughout")
	}
	assert.Equal(t, map[authz.Code]int{authz.CodeInvalidKey: 5, authz.CodeUnavailable: 995}, codesSeen)
	assert.Equal(t, calls+5, f.Keys.Calls.Load())

	d := f.Decide(authz.Request{Path: "/api/users", Peer: "10.7.7.7", Headers: authz.HeaderMap{"x-api-key": "legacy-unknown-key-last"}})
	assert.Equal(t, authz.CodeUnavailable, d.Code)
	assert.Contains(t, d.ResponseHeaders(nil), authz.Header{Key: "retry-after", Value: "1"})
}
