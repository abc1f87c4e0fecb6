package authz_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// slowKeys is authztest.Keys whose store takes wait to answer, and whose cache
// answers when cached is set.
type slowKeys struct {
	*authztest.Keys
	wait   time.Duration
	cached bool
}

func (s *slowKeys) Cached(h keystore.Hash) (*keystore.Key, keystore.CacheState, error) {
	if s.cached {
		k, err := s.Keys.Lookup(context.Background(), h)
		return k, keystore.CacheAnswered, err
	}
	return nil, keystore.CacheUnknown, nil
}

func (s *slowKeys) Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error) {
	time.Sleep(s.wait)
	return s.Keys.Lookup(ctx, h)
}

// deadlineLimiter allows everything and notes the deadline it was given.
type deadlineLimiter struct {
	deadline time.Time
	has      bool
}

func (l *deadlineLimiter) Allow(ctx context.Context, _ []ratelimit.Limit) (ratelimit.Result, error) {
	l.deadline, l.has = ctx.Deadline()
	return ratelimit.Result{Allowed: true}, nil
}

// A check waits on its stores once in all: when the key lookup went to the
// store, the rate limiter gets what is left of the check's store time, as a
// deadline it reads as "decide without the store" (WithStoreDeadline).
func TestACheckWaitsOnItsStoresForTheStoreTimeInAll(t *testing.T) {
	const storeTime = 200 * time.Millisecond
	for _, tt := range []struct {
		name         string
		cached       bool
		wait         time.Duration
		set          bool
		wantDeadline bool
	}{
		{"a lookup that went to the store leaves the limiter the rest", false, 80 * time.Millisecond, true, true},
		{"a lookup that took all the store time leaves the limiter a tenth", false, 250 * time.Millisecond, true, true},
		{"a cached key leaves the limiter its own bound", true, 0, true, false},
		{"without a store time each call has its own bound", false, 10 * time.Millisecond, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := authztest.New(t, nil)
			lim := &deadlineLimiter{}
			keys := &slowKeys{Keys: f.Keys, wait: tt.wait, cached: tt.cached}
			a := authz.NewAuthorizer(f.Policies, keys, f.Hasher, lim, func() time.Time { return f.Now })
			if tt.set {
				a.SetStoreTime(storeTime)
			}
			var d authz.Decision
			start := time.Now()
			a.Decide(context.Background(), &authz.Request{Method: "GET", Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Good}, Peer: "10.1.2.3", XFFTrustedHops: -1}, &d)
			require.True(t, d.Allowed(), d.Code)
			require.Equal(t, tt.wantDeadline, lim.has)
			if tt.wantDeadline {
				want := start.Add(max(storeTime, tt.wait+storeTime/10))
				assert.WithinRange(t, lim.deadline, want, want.Add(20*time.Millisecond),
					"the deadline is the store time from when the lookup began, or a tenth of it from when the lookup ended")
			}
		})
	}
}
