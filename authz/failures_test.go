package authz

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// guardFixture is a fixture whose keys go through a real keystore.Cache
// (TTL 30s on the fixture's clock) in front of the fixture's map, which
// counts the store lookups. perBlock and total are the failed-attempts
// budgets ("none" turns one off). Keys have no rate limit of their own, so
// that a valid key checked thousands of times is never rate limited.
func guardFixture(t testing.TB, perBlock, total string) *fixture {
	t.Helper()
	f := newFixture(t, func(o *PolicyOptions) {
		o.DefaultRate = ratelimit.Rate{}
		for rate, s := range map[*ratelimit.Rate]string{&o.FailRate: perBlock, &o.FailTotalRate: total} {
			r, err := ratelimit.ParseRate(s)
			require.NoError(t, err)
			*rate = r
		}
	})
	f.a.keys = keystore.NewCache(storeOver(f.keys), keystore.CacheOptions{TTL: 30 * time.Second, Now: func() time.Time { return f.now }})
	return f
}

// floods are the kinds of bad keys a flood may send: one key per call of
// next(i), each different.
func floods(t testing.TB, f *fixture) []struct {
	name string
	next func(i int) string
} {
	format := f.a.Policy().Format
	return []struct {
		name string
		next func(i int) string
	}{
		{"malformed keys", func(i int) string {
			return "sk_" + strconv.Itoa(i) + strings.Repeat("x", 40) // wrong length and no checksum
		}},
		{"keys with a bad checksum", func(i int) string {
			k, err := format.Generate()
			require.NoError(t, err)
			last := k[len(k)-1]
			return k[:len(k)-1] + map[bool]string{true: "1", false: "0"}[last == '0']
		}},
		{"well-formed unknown keys", func(int) string {
			k, err := format.Generate()
			require.NoError(t, err)
			return k
		}},
		{"unknown legacy-format keys", func(i int) string {
			return fmt.Sprintf("legacy-unknown-key-%08d", i)
		}},
	}
}

func TestMalformedKeysAreNeverCountedAgainstAnAddress(t *testing.T) {
	f := guardFixture(t, "1/h", "1/h")
	for _, flood := range floods(t, f)[:2] {
		for i := range 5000 {
			d := f.decide(Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": flood.next(i)}})
			require.Equal(t, CodeInvalidKey, d.Code, flood.name)
		}
	}
	assert.Zero(t, f.keys.calls.Load(), "malformed keys cost no lookup")
	d := f.decide(Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": "legacy-unknown-key-first"}})
	assert.Equal(t, CodeInvalidKey, d.Code, "the first unknown key is looked up: nothing was counted before it")
	assert.EqualValues(t, 1, f.keys.calls.Load())
}

// TestAFloodFromOneAddressNeverTurnsAwayAKnownKey: whatever a flood sends
// from a key holder's address, the holder's key keeps being allowed — from
// the cache, and when its entry expires mid-flood, from the store.
func TestAFloodFromOneAddressNeverTurnsAwayAKnownKey(t *testing.T) {
	for _, flood := range floods(t, newFixture(t, nil)) {
		t.Run(flood.name, func(t *testing.T) {
			f := guardFixture(t, "3/m", "10/s")
			good := Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": f.good}}
			require.True(t, f.decide(good).Allowed())
			cache := f.a.keys.(*keystore.Cache)
			refreshes := 0
			for i := range 2000 {
				d := f.decide(Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": flood.next(i)}})
				require.Contains(t, []Code{CodeInvalidKey, CodeRateLimited}, d.Code)
				if i%10 == 0 {
					switch i % 500 {
					case 0:
						f.now = f.now.Add(31 * time.Second) // the good key's entry expires (and the budget refills a little)
						refreshes++
					case 200:
						cache.Invalidate(keystore.NewHasher([]byte("pepper")).Hash(f.good)) // the key was changed
						refreshes++
					case 400:
						cache.Invalidate(keystore.Hash{}) // the cache forgot everything (a gap in the change feed)
						refreshes++
					}
					d := f.decide(good)
					require.True(t, d.Allowed(), "flood step %d: the valid key got %s", i, d.Code)
				}
			}
			// 3 at the start, one more per 20 s of the 4×31 s that passed.
			assert.LessOrEqual(t, f.keys.calls.Load(), int64(1+refreshes+3+6), "store lookups stay within the budget")
		})
	}
}

func TestAnAddressPastItsBudgetIsRefusedUnknownKeysOnly(t *testing.T) {
	f := guardFixture(t, "3/m", "none")
	unknown := func(peer string, i int) Decision {
		return f.decide(Request{Path: "/api/users", Peer: peer, Headers: HeaderMap{"x-api-key": fmt.Sprintf("legacy-unknown-key-%04d", i)}})
	}
	for i := range 3 {
		assert.Equal(t, CodeInvalidKey, unknown("10.9.9.9", i).Code)
	}
	calls := f.keys.calls.Load()
	d := unknown("10.9.9.9", 3)
	assert.Equal(t, CodeRateLimited, d.Code)
	assert.Equal(t, 429, d.Code.HTTPStatus())
	assert.Equal(t, 20*time.Second, d.RateLimit.RetryAfter, "one lookup per 20 s at 3/m")
	assert.Contains(t, d.ResponseHeaders(nil), Header{Key: "RateLimit-Policy", Value: `"failed_attempts";q=3;w=60`})
	assert.Contains(t, d.ResponseHeaders(nil), Header{Key: "Retry-After", Value: "20"})
	assert.Equal(t, calls, f.keys.calls.Load(), "a refused lookup costs nothing")

	assert.Equal(t, CodeInvalidKey, unknown("10.9.9.9", 0).Code, "a key the negative cache knows is answered, not refused")
	good := Request{Path: "/api/users", Peer: "10.9.9.9", Headers: HeaderMap{"x-api-key": f.good}}
	assert.Equal(t, CodeRateLimited, f.decide(good).Code,
		"a valid key this process has never seen waits like any unknown key: only the lookup the guard saves could tell them apart")
	assert.Equal(t, CodeInvalidKey, unknown("10.8.8.8", 9).Code, "other addresses keep their own budget")

	f.now = f.now.Add(20 * time.Second)
	assert.True(t, f.decide(good).Allowed(), "a token back after 20 s, and a found key gives it back")
	assert.Equal(t, CodeInvalidKey, unknown("10.9.9.9", 10).Code)
	assert.Equal(t, CodeRateLimited, unknown("10.9.9.9", 11).Code)
	for range 100 {
		require.True(t, f.decide(good).Allowed(), "once cached, the valid key never meets the guard again")
	}
}

func TestFoundKeysGiveTheirTokenBack(t *testing.T) {
	f := guardFixture(t, "2/m", "2/m")
	hasher := keystore.NewHasher([]byte("pepper"))
	for i := range 50 {
		secret := fmt.Sprintf("legacy-valid-key-%04d", i)
		f.keys.keys[hasher.Hash(secret)] = &keystore.Key{ID: "key_" + strconv.Itoa(i), Permissions: []string{"read:users"}}
		d := f.decide(Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": secret}})
		require.True(t, d.Allowed(), "valid key %d, seen for the first time: %s", i, d.Code)
	}
	for i := range 2 {
		d := f.decide(Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": fmt.Sprintf("legacy-unknown-key-%04d", i)}})
		assert.Equal(t, CodeInvalidKey, d.Code, "the budget is whole: valid keys did not spend it")
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := guardFixture(t, "1/h", "none")
			unknown := func(peer, key string) Code {
				return f.decide(Request{Path: "/api/users", Peer: peer, Headers: HeaderMap{"x-api-key": key}}).Code
			}
			require.Equal(t, CodeInvalidKey, unknown(tt.first, "legacy-unknown-key-one"))
			want := CodeInvalidKey
			if tt.shared {
				want = CodeRateLimited
			}
			assert.Equal(t, want, unknown(tt.then, "legacy-unknown-key-two"))
		})
	}
}

// TestTheProcessBudgetBoundsLookupsFromEveryAddress: a flood spread over
// many addresses, each within its own budget, is held by the process's.
func TestTheProcessBudgetBoundsLookupsFromEveryAddress(t *testing.T) {
	f := guardFixture(t, "100/m", "5/s")
	good := Request{Path: "/api/users", Peer: "10.1.2.3", Headers: HeaderMap{"x-api-key": f.good}}
	require.True(t, f.decide(good).Allowed())
	calls := f.keys.calls.Load()
	codesSeen := map[Code]int{}
	for i := range 1000 {
		peer := fmt.Sprintf("2001:db8:%x::1", i) // a /64 each
		d := f.decide(Request{Path: "/api/users", Peer: peer, Headers: HeaderMap{"x-api-key": fmt.Sprintf("legacy-unknown-key-%04d", i)}})
		codesSeen[d.Code]++
		require.True(t, f.decide(good).Allowed(), "the cached key passes throughout")
	}
	assert.Equal(t, map[Code]int{CodeInvalidKey: 5, CodeUnavailable: 995}, codesSeen)
	assert.Equal(t, calls+5, f.keys.calls.Load())

	d := f.decide(Request{Path: "/api/users", Peer: "10.7.7.7", Headers: HeaderMap{"x-api-key": "legacy-unknown-key-last"}})
	assert.Equal(t, CodeUnavailable, d.Code)
	assert.Contains(t, d.ResponseHeaders(nil), Header{Key: "retry-after", Value: "1"})
}

// TestTheGuardKeepsItsPromise checks the bound the guard states: over any
// interval of length T, the lookups that found nothing number at most
// N + N·T/W, whatever the timing and however many found their key.
func TestTheGuardKeepsItsPromise(t *testing.T) {
	rate := ratelimit.Rate{N: 5, Window: 10 * time.Second}
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 1))
		g := newLookupGuard()
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := start
		var kept []time.Time
		for range 400 {
			now = now.Add(time.Duration(rng.Int64N(int64(2 * time.Second))))
			if v, _ := g.admit(testAddr, rate, ratelimit.Rate{}, now); v != lookupAdmitted {
				continue
			}
			if rng.IntN(3) == 0 {
				g.refund(testAddr, rate, ratelimit.Rate{}) // found
				continue
			}
			kept = append(kept, now)
		}
		require.Greater(t, len(kept), 20, "seed %d: the test exercises the bucket", seed)
		for i := range kept {
			for j := i; j < len(kept); j++ {
				span := kept[j].Sub(kept[i])
				bound := float64(rate.N) + float64(rate.N)*float64(span)/float64(rate.Window)
				require.LessOrEqual(t, float64(j-i+1), bound+1e-9, "seed %d: %d failed lookups in %v", seed, j-i+1, span)
			}
		}
	}
}

var testAddr = parseAddr("10.1.2.3")

// TestAFloodNeverTurnsAwayAValidKeyOverGRPC floods a real gRPC server with
// bad keys from the valid key's own address and checks the valid key after
// every few, and the store lookups the flood cost.
func TestAFloodNeverTurnsAwayAValidKeyOverGRPC(t *testing.T) {
	f := guardFixture(t, "100/m", "1000/s")
	client := authv3.NewAuthorizationClient(serveChecks(t, f))
	check := func(key string) *authv3.CheckResponse {
		req := checkRequest(map[string]string{"x-api-key": key})
		req.Attributes.Source.Address.GetSocketAddress().Address = "10.1.2.3"
		resp, err := client.Check(context.Background(), req)
		require.NoError(t, err)
		return resp
	}
	require.Equal(t, int32(codes.OK), check(f.good).GetStatus().GetCode())
	calls := f.keys.calls.Load()
	for _, flood := range floods(t, f) {
		for i := range 500 {
			resp := check(flood.next(i))
			require.NotEqual(t, int32(codes.OK), resp.GetStatus().GetCode())
			if i%5 == 0 {
				resp := check(f.good)
				require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "%s, step %d: %s", flood.name, i, resp.GetStatus().GetMessage())
			}
		}
	}
	assert.LessOrEqual(t, f.keys.calls.Load()-calls, int64(100), "1000 unknown keys from one address: at most its budget of lookups")
}

// TestAFloodNamingAnAddressNeverTurnsAwayItsValidKeyOverHTTP: in HTTP mode
// the client address is read from X-Forwarded-For, so a flood can name the
// victim's address; the victim's key still passes.
func TestAFloodNamingAnAddressNeverTurnsAwayItsValidKeyOverHTTP(t *testing.T) {
	f, srv := httpFixture(t, "path", 1)
	o := testOptions()
	o.Routes = []RouteSpec{{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}}}
	o.DefaultRate = ratelimit.Rate{}
	p, err := NewPolicy(o)
	require.NoError(t, err)
	f.a.SetPolicy(p)
	f.a.keys = keystore.NewCache(storeOver(f.keys), keystore.CacheOptions{TTL: 30 * time.Second, Now: func() time.Time { return f.now }})
	victim := map[string]string{"X-Api-Key": f.good, "X-Forwarded-For": "10.1.2.3"}
	resp, _ := do(t, srv, "GET", "/authz/api/users", victim)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	calls := f.keys.calls.Load()
	statuses := map[int]int{}
	for _, flood := range floods(t, f) {
		for i := range 300 {
			resp, _ := do(t, srv, "GET", "/authz/api/users", map[string]string{"X-Api-Key": flood.next(i), "X-Forwarded-For": "6.6.6.6, 10.1.2.3"})
			statuses[resp.StatusCode]++
			if i%5 == 0 {
				resp, body := do(t, srv, "GET", "/authz/api/users", victim)
				require.Equal(t, http.StatusOK, resp.StatusCode, "%s, step %d: %s", flood.name, i, body)
			}
		}
	}
	assert.Positive(t, statuses[http.StatusTooManyRequests], "the named address's budget ran out: %v", statuses)
	assert.LessOrEqual(t, f.keys.calls.Load()-calls, int64(100), "at most the default budget of lookups (100/m)")
}
