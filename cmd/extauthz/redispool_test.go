package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// TestThePoolSizeBoundsTheConnectionsToRedis runs checks that all go to
// Redis (a cache of one key, 64 keys in turn, each check rate-limited)
// from 16 callers at once, with every key lookup's reply held back 2 ms by
// a proxy so that lookups overlap, and counts the connections Redis holds
// meanwhile. With store.redis.pool_size 4 there are never more than 4 (the
// change feed's blocking read, the rate limiter's batch and the lookups
// share them) and every check is still allowed; with the Redis client's
// default (10 per CPU) the same load opens more, which is what shows the
// setting reaches the client.
func TestThePoolSizeBoundsTheConnectionsToRedis(t *testing.T) {
	run := func(t *testing.T, poolSize int) (most int) {
		r := redistest.Start(t)
		rw := redistest.StartRewriter(t, r.Addr)
		rw.Set(func(cmd []string, reply []byte) []byte {
			if strings.EqualFold(cmd[0], "GET") && len(cmd) > 1 && strings.Contains(cmd[1], "{keys}:h:") {
				time.Sleep(2 * time.Millisecond)
			}
			return reply
		})
		pool := ""
		if poolSize > 0 {
			pool = fmt.Sprintf(", pool_size: %d", poolSize)
		}
		store := func(addr string) string {
			return fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"p:\", timeout: 1s%s}}\n", "redis://"+addr+"/0", pool)
		}
		rest := testRoutes + "cache: {size: 1}\nrate_limit: {default: 1000/m}\n"

		// The keys are made beside the server, straight in Redis, so that
		// every connection Redis counts is the server's (through the proxy).
		cfg, err := config.Parse([]byte(store(r.Addr) + rest))
		require.NoError(t, err)
		be, err := openBackend(cfg, nil)
		require.NoError(t, err)
		mgr := be.manager(cfg)
		keys := make([]string, 64)
		for i := range keys {
			keys[i], _, err = mgr.Create(context.Background(), keystore.Spec{Name: "pooled", Permissions: []string{"read:users"}}, "test")
			require.NoError(t, err)
		}
		be.Close()

		ts := startServer(t, store(rw.Addr())+rest)
		require.Empty(t, checkCode(t, ts, keys[0]), "allowed once Redis answers")

		var (
			stop            atomic.Bool
			checks, denials atomic.Int64
			wg              sync.WaitGroup
		)
		for w := range 16 {
			wg.Go(func() {
				for i := w; !stop.Load(); i++ {
					if code := checkCode(t, ts, keys[i%len(keys)]); code != "" {
						denials.Add(1)
						t.Logf("denied: %s", code)
					}
					checks.Add(1)
				}
			})
		}
		deadline := time.Now().Add(time.Second)
		for time.Now().Before(deadline) {
			info, err := r.Info("clients")
			require.NoError(t, err)
			n, err := strconv.Atoi(info["connected_clients"])
			require.NoError(t, err)
			most = max(most, n-1) // not this query's own connection
			time.Sleep(10 * time.Millisecond)
		}
		stop.Store(true)
		wg.Wait()
		t.Logf("pool_size %d: %d checks, at most %d connections to Redis", poolSize, checks.Load(), most)
		require.Positive(t, checks.Load())
		assert.Zero(t, denials.Load(), "every check allowed")

		// What the pool did, as /metrics tells it.
		fams := scrape(t, nil, ts.httpURL+"/metrics")
		inUse, ok1 := sample(fams, "extauthz_redis_connections", "state", "in_use")
		idle, ok2 := sample(fams, "extauthz_redis_connections", "state", "idle")
		waits, ok3 := sample(fams, "extauthz_redis_pool_waits_total")
		waited, ok4 := sample(fams, "extauthz_redis_pool_wait_seconds_total")
		require.True(t, ok1 && ok2 && ok3 && ok4, "the pool's metrics are exported")
		t.Logf("metrics: %v in use, %v idle, %v waits for %.3fs", inUse, idle, waits, waited)
		assert.Positive(t, inUse+idle)
		if poolSize > 0 {
			assert.LessOrEqual(t, inUse+idle, float64(poolSize))
			// 16 callers, each lookup held 2 ms, on 4 connections.
			assert.Positive(t, waits, "calls waited for one of the 4 connections")
			assert.Positive(t, waited)
		}
		return most
	}

	var bounded, unbounded int
	t.Run("pool_size 4", func(t *testing.T) {
		bounded = run(t, 4)
		assert.LessOrEqual(t, bounded, 4, "connections to Redis past store.redis.pool_size")
	})
	t.Run("the default", func(t *testing.T) {
		unbounded = run(t, 0)
		assert.Greater(t, unbounded, 4, "the same load through the default pool holds more connections: otherwise this test shows nothing")
	})
}
