package redis

import (
	"context"
	"encoding/binary"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/ratelimit"
)

// doubles packs vs as a counter is stored: little-endian doubles.
func doubles(vs ...float64) string {
	b := make([]byte, 0, 8*len(vs))
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, math.Float64bits(v))
	}
	return string(b)
}

// A value at a counter's name that no check of ours wrote (by hand, or by
// something else sharing the prefix) must not fail the batch of checks it
// is sent with: each of them would be taken for a Redis outage and decided
// by on_store_error, every other key's included. A string of the wrong
// shape, or with a header no counter has, starts the count afresh; a
// counter's shape holding values no counter holds (NaN, a group from the
// far future) is still decided by Redis, whatever it counts.
func TestAValueThatIsNoCounterFailsNoBatch(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	ctx := context.Background()
	rate := ratelimit.Rate{N: 5, Window: time.Minute}
	_, sub := rate.Micros()
	s := float64(sub)
	for _, tc := range []struct {
		name   string
		value  string
		afresh bool // counted from nothing: N allowed, then denied
	}{
		{"an empty string", "", true},
		{"a string of 1 byte", "x", true},
		{"a string of 15 bytes", strings.Repeat("x", 15), true},
		{"a string of 16 bytes", strings.Repeat("x", 16), true},
		{"a string of 20 bytes", strings.Repeat("x", 20), true},
		{"a header of NaN", doubles(math.NaN(), math.NaN(), 1, 256), true},
		{"a sub-window of 0", doubles(0, 1, 1, 256), true},
		{"a negative sub-window", doubles(-s, 1, 1, 256), true},
		{"a negative total", doubles(s, -1e300, 1, 256), true},
		{"a total of NaN", doubles(s, math.NaN(), 1, 256), true},
		{"an infinite total", doubles(s, math.Inf(1), 1, 256+1), true},
		{"a total beyond 2^53", doubles(s, 1e300, 1, 256+1), true},
		// Carried over to this limit's sub-window, its count past any
		// integer a reply holds.
		{"another sub-window, a recent group holding more than any count", doubles(s/2, 1, float64(time.Now().UnixMicro()/(sub/2)), 1e300), false},
		{"a group from the far future", doubles(s, 1, 1e300, 256+1), false},
		{"a group of NaN", doubles(s, 1, math.NaN(), math.NaN()), false},
		{"an infinite group", doubles(s, 1, math.Inf(1), math.Inf(1)), false},
		{"another sub-window, a group of NaN", doubles(s/2, 1, math.NaN(), math.NaN()), false},
		{"another sub-window, a group from the far future", doubles(s/2, 1, 1e300, 256+1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: time.Second, OnStoreError: ratelimit.PolicyDeny, NoLeases: true})
			l := ratelimit.Limit{Name: "key", Bucket: "b", Rate: rate}
			require.NoError(t, client.Set(ctx, lim.counterKey(&l), tc.value, 0).Err())
			other := ratelimit.Limit{Name: "key", Bucket: "other", Rate: rate}
			for i := range rate.N + 1 {
				// Sent together, so that both are one batch.
				done := make(chan ratelimit.Result, 1)
				go func() {
					res, err := lim.Allow(ctx, []ratelimit.Limit{other})
					assert.NoError(t, err, "another key's check in the batch")
					done <- res
				}()
				res, err := lim.Allow(ctx, []ratelimit.Limit{l})
				require.NoError(t, err, "the check is taken for a Redis outage")
				<-done
				if tc.afresh {
					assert.Equal(t, i < rate.N, res.Allowed, "check %d", i+1)
				}
			}
			assert.Zero(t, lim.Stats().StoreErrors)
		})
	}
	for _, put := range []func(key string) error{
		func(k string) error { return client.HSet(ctx, k, "a", "b").Err() },
		func(k string) error { return client.RPush(ctx, k, "a").Err() },
	} {
		lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: time.Second, OnStoreError: ratelimit.PolicyDeny, NoLeases: true})
		l := ratelimit.Limit{Name: "key", Bucket: "b", Rate: rate}
		require.NoError(t, put(lim.counterKey(&l)))
		res, err := lim.Allow(ctx, []ratelimit.Limit{l})
		require.NoError(t, err, "a key of another type is taken for a Redis outage")
		assert.True(t, res.Allowed, "a key of another type starts the count afresh")
	}
}
