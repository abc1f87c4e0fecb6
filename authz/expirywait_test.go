package authz_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
)

// movingClock is a fake clock safe to move from the store's goroutine.
type movingClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *movingClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *movingClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// slowStore answers like Keys but takes wait on clock first (a store round
// trip within store.redis.timeout / the lookup timeout); with down it then
// fails as an unreachable store.
type slowStore struct {
	keystore.Store
	keys  *authztest.Keys
	clock *movingClock
	wait  time.Duration
	down  bool
}

func (s *slowStore) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	s.clock.Add(s.wait)
	if s.down {
		return nil, keystore.ErrUnavailable
	}
	return s.keys.Lookup(ctx, h)
}

// A key's expiry (a rotated key's grace end, --ttl) was judged at the time
// read when the check began, before the store lookup it waited on: a key
// that expired while the check waited for the store (up to the store's
// timeout, then perhaps served stale) was allowed after its expiry. It is
// judged when the lookup has answered.
func TestAKeyThatExpiresWhileItsLookupWaitsIsExpired(t *testing.T) {
	for _, how := range []string{"uncached key, store answers", "cached key past ttl, store down (stale)"} {
		t.Run(how, func(t *testing.T) {
			f := authztest.New(t, nil)
			clock := &movingClock{t: f.Now}
			expires := clock.Now().Add(100 * time.Millisecond)
			if how != "uncached key, store answers" {
				expires = clock.Now().Add(31 * time.Second)
			}
			secret := f.AddKey(t, &keystore.Key{ID: "key_grace", Name: "rotated away", Permissions: []string{"read:users"}, ExpiresAt: &expires})
			st := &slowStore{Store: f.Keys.Store(), keys: f.Keys, clock: clock}
			c := keystore.NewCache(st, keystore.CacheOptions{TTL: 30 * time.Second, Now: clock.Now, FetchTimeout: 10 * time.Second})
			f.Rebuild(c, clock.Now)
			req := authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": secret}}
			if how != "uncached key, store answers" {
				d := f.Decide(req) // cached while the store answers
				require.True(t, d.Allowed(), d.Message)
				clock.Add(30*time.Second + 900*time.Millisecond) // past the TTL; the key expires in 100ms
				st.down = true
			}
			st.wait = 200 * time.Millisecond // store.redis.timeout's default
			d := f.Decide(req)
			answeredAt := clock.Now()
			require.True(t, answeredAt.After(expires), "test setup: the answer comes after the expiry")
			require.False(t, d.Allowed(), "key expired at %s allowed at %s (%s after its expiry), code %q",
				expires.Format(time.StampMilli), answeredAt.Format(time.StampMilli), answeredAt.Sub(expires), d.Code)
		})
	}
}
