// Package authztest is test support for the decision and its adapters: a
// decision over keys held in memory, with four keys of known shape and a
// clock the test moves, so that authz's own tests and those of authz/envoy
// and authz/forwardauth decide the same requests the same way.
//
// It is test support, not a decision: import it only from _test.go files.
package authztest

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// Keys is an authz.KeyLookup over a map that counts its calls; the real
// stores are exercised end to end in cmd/extauthz.
type Keys struct {
	mu      sync.Mutex
	records map[keystore.Hash]*keystore.Key
	// Calls counts the lookups.
	Calls atomic.Int64
	// Down makes every lookup fail as an unreachable store does.
	Down atomic.Bool
}

// Put stores k under hash h (replacing what was there).
func (m *Keys) Put(h keystore.Hash, k *keystore.Key) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.records[h] = k
}

// Get returns the record stored under h, or nil.
func (m *Keys) Get(h keystore.Hash) *keystore.Key {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.records[h]
}

// Cached knows nothing: every lookup goes to the map, as a cache miss would.
func (m *Keys) Cached(keystore.Hash) (*keystore.Key, keystore.CacheState, error) {
	return nil, keystore.CacheUnknown, nil
}

// Lookup finds h in the map.
func (m *Keys) Lookup(_ context.Context, h keystore.Hash) (*keystore.Key, error) {
	m.Calls.Add(1)
	if m.Down.Load() {
		return nil, keystore.ErrUnavailable
	}
	if k := m.Get(h); k != nil {
		return k, nil
	}
	return nil, keystore.ErrNotFound
}

// Store is m as the keystore.Store a keystore.Cache wants in front of it:
// only Lookup works.
func (m *Keys) Store() keystore.Store { return lookupStore{m: m} }

type lookupStore struct {
	keystore.Store
	m *Keys
}

func (s lookupStore) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	return s.m.Lookup(ctx, h)
}

// Pepper is the fixture's hashing pepper.
const Pepper = "pepper"

// Format is the fixture's key format: the default prefix, sk.
var Format = func() keystore.Format {
	f, err := keystore.NewFormat("sk")
	if err != nil {
		panic(err)
	}
	return f
}()

// Sources are the default configuration's key sources: the x-api-key
// header, a Bearer token, the api_key query parameter and cookie.
func Sources() []authz.Source {
	return []authz.Source{
		authz.HeaderSource("x-api-key", ""), authz.HeaderSource("authorization", "Bearer"),
		authz.QuerySource("api_key"), authz.CookieSource("api_key"),
	}
}

// Options are the fixture's settings: the default configuration's sources
// and failed-attempts budgets, 100/m per key, and four routes, all in the
// default policy.
func Options() authz.Options {
	return authz.Options{
		Routes: []authz.RouteSpec{
			{Path: "/healthz", Public: true},
			{Path: "/api/users", Methods: []string{"GET"}, Permissions: []string{"read:users"}},
			{Path: "/api/users/{id}", Methods: []string{"DELETE"}, Permissions: []string{"delete:users"}, RateLimit: ratelimit.Rate{N: 1, Window: time.Minute}},
			{Path: "/api/reports/**", Permissions: []string{"read:reports"}},
		},
		Sources:       Sources(),
		Format:        Format,
		DefaultRate:   ratelimit.Rate{N: 100, Window: time.Minute},
		FailRate:      ratelimit.Rate{N: 100, Window: time.Minute},
		FailTotalRate: ratelimit.Rate{N: 1000, Window: time.Second},
	}
}

// Fixture is a decision over Keys, with four keys of known shape.
type Fixture struct {
	// Authz decides; Rebuild replaces it.
	Authz    *authz.Authorizer
	Keys     *Keys
	Policies *authz.PolicySet
	Hasher   *keystore.Hasher
	// Cache is the keystore.Cache in front of Keys, when Rebuild put one.
	Cache *keystore.Cache
	// Now is the fixture's clock: the decision and the rate limiter read it.
	Now time.Time

	Good  string // read:users, owner acme, from 10.0.0.0/8 and 2001:db8::/32 only
	Admin string // admin, owner default
	Other string // a legacy-format key, no permissions
	Perms string // read:users and delete:users, rate 2/m

	limiter ratelimit.Limiter
}

// New returns a Fixture with Options, changed by mutate when it is not nil.
func New(tb testing.TB, mutate func(*authz.Options)) *Fixture {
	tb.Helper()
	o := Options()
	if mutate != nil {
		mutate(&o)
	}
	p, err := authz.Compile(o)
	require.NoError(tb, err)
	f := &Fixture{
		Keys:     &Keys{records: map[keystore.Hash]*keystore.Key{}},
		Policies: p,
		Hasher:   keystore.NewHasher([]byte(Pepper)),
		Now:      time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC),
	}
	add := func(k *keystore.Key) string {
		secret, err := p.Format.Generate()
		require.NoError(tb, err)
		f.Keys.Put(f.Hasher.Hash(secret), k)
		return secret
	}
	f.Good = add(&keystore.Key{ID: "key_good", Name: "good", Owner: "acme", Permissions: []string{"read:users"},
		IPAllowlist: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8::/32")}})
	f.Admin = add(&keystore.Key{ID: "key_admin", Name: "admin", Owner: "default", Permissions: []string{"admin"}})
	twoPerMinute, err := keystore.ParseRateLimit("2/m")
	require.NoError(tb, err)
	f.Perms = add(&keystore.Key{ID: "key_perms", Name: "perms", Permissions: []string{"read:users", "delete:users"}, RateLimit: twoPerMinute})
	f.Other = "legacy-key-0123456789"
	f.Keys.Put(f.Hasher.Hash(f.Other), &keystore.Key{ID: "key_legacy", Name: "legacy", Permissions: []string{}})
	f.limiter = ratelimit.NewLocal(f.clock, 1000)
	f.Authz = authz.NewAuthorizer(p, f.Keys, f.Hasher, f.limiter, f.clock)
	return f
}

func (f *Fixture) clock() time.Time { return f.Now }

// AddKey stores k under a new secret of the fixture's format and returns
// the secret.
func (f *Fixture) AddKey(tb testing.TB, k *keystore.Key) string {
	tb.Helper()
	secret, err := Format.Generate()
	require.NoError(tb, err)
	f.Keys.Put(f.Hasher.Hash(secret), k)
	return secret
}

// Rebuild replaces Authz with one over keys (a *keystore.Cache is also kept
// in Cache) and the clock now (nil: the fixture's), with the same policies,
// hasher and rate limiter.
func (f *Fixture) Rebuild(keys authz.KeyLookup, now func() time.Time) {
	if now == nil {
		now = f.clock
	}
	if c, ok := keys.(*keystore.Cache); ok {
		f.Cache = c
	}
	f.Authz = authz.NewAuthorizer(f.Policies, keys, f.Hasher, f.limiter, now)
}

// UseCache puts a keystore.Cache with opts in front of Keys (on the
// fixture's clock unless opts says otherwise) and decides through it.
func (f *Fixture) UseCache(opts keystore.CacheOptions) *keystore.Cache {
	if opts.Now == nil {
		opts.Now = f.clock
	}
	c := keystore.NewCache(f.Keys.Store(), opts)
	f.Rebuild(c, nil)
	return c
}

// Decide decides req, filling in what a test leaves out: GET, no headers,
// the peer 10.1.2.3, the policy's own X-Forwarded-For hops.
func (f *Fixture) Decide(req authz.Request) authz.Decision {
	if req.Method == "" {
		req.Method = "GET"
	}
	if req.Headers == nil {
		req.Headers = authz.HeaderMap{}
	}
	if req.Peer == "" {
		req.Peer = "10.1.2.3"
	}
	req.XFFTrustedHops = -1
	var d authz.Decision
	f.Authz.Decide(context.Background(), &req, &d)
	return d
}

// NewGuarded returns a Fixture whose keys go through a real keystore.Cache
// (TTL 30s on the fixture's clock) in front of Keys, which counts the store
// lookups. perBlock and total are the failed-attempts budgets ("none" turns
// one off). Keys have no rate limit of their own, so that a valid key
// checked thousands of times is never rate limited.
func NewGuarded(tb testing.TB, perBlock, total string) *Fixture {
	tb.Helper()
	f := New(tb, func(o *authz.Options) {
		o.DefaultRate = ratelimit.Rate{}
		for rate, s := range map[*ratelimit.Rate]string{&o.FailRate: perBlock, &o.FailTotalRate: total} {
			r, err := ratelimit.ParseRate(s)
			require.NoError(tb, err)
			*rate = r
		}
	})
	f.UseCache(keystore.CacheOptions{TTL: 30 * time.Second})
	return f
}

// Flood is one kind of bad key a flood may send: Next(i) is the i-th, each
// different.
type Flood struct {
	Name string
	Next func(i int) string
}

// Floods are the kinds of bad keys a flood may send, for keys of format.
func Floods(tb testing.TB, format keystore.Format) []Flood {
	return []Flood{
		{"malformed keys", func(i int) string {
			return "sk_" + strconv.Itoa(i) + strings.Repeat("x", 40) // wrong length and no checksum
		}},
		{"keys with a bad checksum", func(i int) string {
			k, err := format.Generate()
			require.NoError(tb, err)
			last := k[len(k)-1]
			return k[:len(k)-1] + map[bool]string{true: "1", false: "0"}[last == '0']
		}},
		{"well-formed unknown keys", func(int) string {
			k, err := format.Generate()
			require.NoError(tb, err)
			return k
		}},
		{"unknown legacy-format keys", func(i int) string {
			return fmt.Sprintf("legacy-unknown-key-%08d", i)
		}},
	}
}
