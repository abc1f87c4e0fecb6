package redis

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/ratelimit"
	"github.com/extauthz/extauthz/ratelimit/limitertest"
)

// newClient is a client for one test that gives up as fast as the limiter:
// the context deadline reaches the socket, and nothing is retried.
func newClient(t testing.TB, addr string) *goredis.Client {
	t.Helper()
	c := goredis.NewClient(&goredis.Options{
		Addr:                  addr,
		ContextTimeoutEnabled: true,
		MaxRetries:            -1,
		DialerRetries:         1,
		DialTimeout:           time.Second,
		PoolSize:              32,
	})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newRedis is a Redis limiter closed when the test ends (before its client).
func newRedis(t testing.TB, client goredis.UniversalClient, opts Options) *Limiter {
	t.Helper()
	r, err := New(client, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

var prefixes atomic.Int64

// uniquePrefix keeps the tests that share a server apart.
func uniquePrefix() string { return fmt.Sprintf("t%d:", prefixes.Add(1)) }

// shared is the factory of the conformance suite: a Redis limiter on srv
// with a prefix of its own, counting on the suite's clock.
func shared(srv *redistest.Server) limitertest.Factory {
	return func(t *testing.T, now func() time.Time) ratelimit.Limiter {
		return newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Now: now, Timeout: time.Second})
	}
}

func TestRedisConformsToTheLimiterContract(t *testing.T) {
	limitertest.Run(t, shared(redistest.Start(t)))
}

// With Redis unreachable, ratelimit.PolicyLocal decides every check with the local
// fallback, which for one replica is the whole N: the contract holds there
// too.
func TestRedisFallbackConformsToTheLimiterContract(t *testing.T) {
	limitertest.Run(t, func(t *testing.T, now func() time.Time) ratelimit.Limiter {
		down := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialerRetries: 1})
		t.Cleanup(func() { _ = down.Close() })
		return newRedis(t, down, Options{Now: now, Timeout: time.Second, OnStoreError: ratelimit.PolicyLocal})
	})
}

// The Lua script and the Go code are one algorithm written twice: on the
// same demand they must give the same Result at every check. (A lease's
// Result counts the whole grant, so leases are off here; lease_test.go holds
// them to the promise.)
func TestRedisDecidesExactlyAsTheLocalLimiter(t *testing.T) {
	srv := redistest.Start(t)
	limitertest.Differential(t, func(_ *testing.T, now func() time.Time) ratelimit.Limiter {
		return ratelimit.NewLocal(now, 0)
	}, func(t *testing.T, now func() time.Time) ratelimit.Limiter {
		return newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Now: now, Timeout: time.Second, NoLeases: true})
	})
}

func TestRedisKeysShareTheBucketsHashTagAndExpire(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	r := newRedis(t, client, Options{Prefix: "extauthz:"})
	res, err := r.Allow(context.Background(), []ratelimit.Limit{limitertest.Key10, limitertest.Route3})
	require.NoError(t, err)
	require.True(t, res.Allowed)

	keys, err := client.Keys(context.Background(), "extauthz:count:*").Result()
	require.NoError(t, err)
	slices.Sort(keys)
	assert.Equal(t, []string{"extauthz:count:{k1}:", "extauthz:count:{k1}:/api/x"}, keys)
	for _, tc := range []struct {
		key string
		w   time.Duration
	}{{keys[0], 10 * time.Second}, {keys[1], time.Second}} {
		ttl, err := client.PTTL(context.Background(), tc.key).Result()
		require.NoError(t, err)
		assert.Greater(t, ttl, tc.w-100*time.Millisecond, tc.key)
		assert.LessOrEqual(t, ttl, tc.w+tc.w/ratelimit.SubWindows+time.Millisecond, tc.key)
	}
}

func TestRedisBurstFromFreshAllowsExactlyN(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	r := newRedis(t, client, Options{Timeout: time.Second})
	limits := []ratelimit.Limit{{Name: "key", Bucket: "burst", Rate: ratelimit.Rate{N: 2, Window: time.Second}}}
	assert.Equal(t, 2, limitertest.CountAllowed(t, 16, 4, r, limits))
}

func TestRedisTwoReplicasTogetherAllowExactlyN(t *testing.T) {
	srv := redistest.Start(t)
	a := newRedis(t, newClient(t, srv.Addr), Options{Timeout: time.Second})
	// b batches differently: two batches on the wire, of at most 8 checks.
	b := newRedis(t, newClient(t, srv.Addr), Options{Timeout: time.Second, Pipelines: 2, MaxBatch: 8})
	limits := []ratelimit.Limit{
		{Name: "key", Bucket: "shared", Rate: ratelimit.Rate{N: 100, Window: time.Hour}},
		{Name: "/r", Bucket: "shared", Scope: "/r", Rate: ratelimit.Rate{N: 1000, Window: time.Minute}},
	}
	var got [2]int
	var wg sync.WaitGroup
	for i, lim := range []ratelimit.Limiter{a, b} {
		wg.Go(func() { got[i] = limitertest.CountAllowed(t, 8, 25, lim, limits) })
	}
	wg.Wait()
	t.Logf("replica a allowed %d, replica b %d", got[0], got[1])
	assert.Equal(t, 100, got[0]+got[1])
	assert.Equal(t, uint64(100), a.Stats().Allowed+b.Stats().Allowed)
	assert.Equal(t, uint64(300), a.Stats().Limited+b.Stats().Limited)
}

// With the server's clock and real time: every interval of W holds at most
// N, and the long run is close to N/W. The client cannot see the server's
// clock, only that each check ran between its call and its answer, so the
// interval check is the one those bounds make certain: any N+1 allowed checks
// span more than W from the first call to the last answer.
func TestRedisRealTimeAccuracy(t *testing.T) {
	srv := redistest.Start(t)
	r := newRedis(t, newClient(t, srv.Addr), Options{Timeout: time.Second})
	const n, w, run = 20, 2 * time.Second, 7 * time.Second
	limits := []ratelimit.Limit{{Name: "key", Bucket: "realtime", Rate: ratelimit.Rate{N: n, Window: w}}}
	type span struct{ call, answer time.Time }
	var mu sync.Mutex
	var allowed []span
	start := time.Now()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for time.Since(start) < run {
				call := time.Now()
				res, err := r.Allow(context.Background(), limits)
				answer := time.Now()
				if err != nil {
					t.Error(err)
					return
				}
				if res.Allowed {
					mu.Lock()
					allowed = append(allowed, span{call, answer})
					mu.Unlock()
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	slices.SortFunc(allowed, func(a, b span) int { return a.call.Compare(b.call) })
	for i := 0; i+n < len(allowed); i++ {
		last := allowed[i].answer
		for _, s := range allowed[i : i+n+1] {
			if s.answer.After(last) {
				last = s.answer
			}
		}
		require.Greater(t, last.Sub(allowed[i].call), w-time.Microsecond,
			"%d checks allowed within %v from %v", n+1, last.Sub(allowed[i].call), allowed[i].call.Sub(start))
	}
	// An exact sliding log allows the opening burst, then N per W.
	ideal := n * (1 + float64(run-w/2)/float64(w))
	t.Logf("%d allowed in %v at %d/%v (an exact sliding log: about %.0f)", len(allowed), run, n, w, ideal)
	assert.InDelta(t, ideal, float64(len(allowed)), ideal*0.06)
}

func TestRedisReloadsTheScriptAfterAFlush(t *testing.T) {
	srv := redistest.Start(t)
	r := newRedis(t, newClient(t, srv.Addr), Options{Timeout: time.Second})
	limits := []ratelimit.Limit{{Name: "key", Bucket: "flush", Rate: ratelimit.Rate{N: 3, Window: time.Hour}}}
	for i := range 4 {
		if i == 2 {
			reply, err := srv.Do("SCRIPT", "FLUSH")
			require.NoError(t, err)
			require.Equal(t, "+OK", reply)
		}
		res, err := r.Allow(context.Background(), limits)
		require.NoError(t, err)
		assert.Equal(t, i < 3, res.Allowed, "check %d", i)
	}
	assert.Zero(t, r.Stats().Fallback)
}

func TestNewRedisRejectsBadOptions(t *testing.T) {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1"})
	defer client.Close()
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"a prefix with a hash tag", Options{Prefix: "a{b}:"}, `prefix "a{b}:"`},
		{"an unknown policy", Options{OnStoreError: "retry"}, `on_store_error "retry"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(client, tc.opts)
			require.ErrorContains(t, err, tc.want)
		})
	}
	_, err := New(nil, Options{})
	require.Error(t, err)

	var p ratelimit.StoreErrorPolicy
	require.NoError(t, p.UnmarshalText([]byte("deny")))
	assert.Equal(t, ratelimit.PolicyDeny, p)
	require.ErrorContains(t, p.UnmarshalText([]byte("Deny")), `"Deny"`)
}

func TestRedisRejectsLimitsItCannotApplyWithoutCallingRedis(t *testing.T) {
	client := goredis.NewClient(&goredis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})
	defer client.Close()
	r := newRedis(t, client, Options{OnStoreError: ratelimit.PolicyDeny})
	one := ratelimit.Rate{N: 1, Window: time.Second}
	_, err := r.Allow(context.Background(), []ratelimit.Limit{{Bucket: "a", Rate: one}, {Bucket: "b", Scope: "s", Rate: one}})
	require.ErrorIs(t, err, ratelimit.ErrMixedBuckets)
	res, err := r.Allow(context.Background(), nil)
	require.NoError(t, err)
	assert.Equal(t, ratelimit.Result{Allowed: true}, res)
	assert.Equal(t, ratelimit.Stats{Allowed: 1}, r.Stats())
}

func TestRedisCloseStopsChecks(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	a := newRedis(t, client, Options{Heartbeat: 50 * time.Millisecond, InstanceID: "a"})
	b := newRedis(t, client, Options{Heartbeat: 50 * time.Millisecond, InstanceID: "b"})
	require.Eventually(t, func() bool { return a.Replicas() == 2 && b.Replicas() == 2 }, 5*time.Second, 10*time.Millisecond)
	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "twice")
	_, err := a.Allow(context.Background(), []ratelimit.Limit{limitertest.Key10})
	require.ErrorIs(t, err, ErrClosed)
	require.Eventually(t, func() bool { return b.Replicas() == 1 }, 5*time.Second, 10*time.Millisecond,
		"a closed replica leaves the heartbeat set at once")
}

// A check waiting behind a batch on the wire is answered ErrClosed by Close,
// not left to its timeout: Close answers every pending check (the wait has
// no case of its own for Close, which would cost every waiting check a lock
// of one channel they all share).
func TestRedisCloseAnswersAPendingCheck(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	r, err := New(client, Options{Prefix: uniquePrefix(), Timeout: 5 * time.Second, Pipelines: 1, InstanceID: "a"})
	require.NoError(t, err)
	exact := ratelimit.Limit{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 10, Window: time.Second}}
	srv.Pause()
	defer srv.Resume()
	onWire := make(chan error, 1)
	go func() { _, err := r.Allow(context.Background(), []ratelimit.Limit{exact}); onWire <- err }()
	require.Eventually(t, func() bool {
		q := r.home.queue
		q.mu.Lock()
		defer q.mu.Unlock()
		return q.sending == 1
	}, 5*time.Second, time.Millisecond, "the first check takes the wire")
	pending := make(chan error, 1)
	go func() { _, err := r.Allow(context.Background(), []ratelimit.Limit{exact}); pending <- err }()
	require.Eventually(t, func() bool {
		q := r.home.queue
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.pending) == 1
	}, 5*time.Second, time.Millisecond, "the second check waits behind it")
	start := time.Now()
	go func() { _ = r.Close() }()
	select {
	case err := <-pending:
		require.ErrorIs(t, err, ErrClosed)
		assert.Less(t, time.Since(start), 2*time.Second, "answered by Close, not by its 5s timeout")
	case <-time.After(4 * time.Second):
		t.Fatal("a pending check was not answered by Close")
	}
	srv.Resume()
	require.NoError(t, <-onWire, "the check on the wire is answered by its own call")
}

// outage is a test bed of two replicas (a and b) on one Redis, with short
// heartbeats, timeout and breaker interval.
type outage struct {
	srv     *redistest.Server
	a, b    *Limiter
	timeout time.Duration
}

func newOutage(t *testing.T, policy ratelimit.StoreErrorPolicy) *outage {
	t.Helper()
	o := &outage{srv: redistest.Start(t), timeout: 50 * time.Millisecond}
	opts := Options{
		Timeout:      o.timeout,
		OnStoreError: policy,
		Heartbeat:    200 * time.Millisecond, // replicas count for 600ms: no flapping on a loaded machine
		BreakerProbe: 200 * time.Millisecond,
	}
	opts.InstanceID = "a"
	o.a = newRedis(t, newClient(t, o.srv.Addr), opts)
	opts.InstanceID = "b"
	o.b = newRedis(t, newClient(t, o.srv.Addr), opts)
	require.Eventually(t, func() bool { return o.a.Replicas() == 2 && o.b.Replicas() == 2 }, 5*time.Second, 10*time.Millisecond)
	return o
}

// checks runs count checks on r one after another and returns how many were
// allowed, the errors, and the slowest check.
func checks(r *Limiter, limits []ratelimit.Limit, count int) (allowed int, errs []error, slowest time.Duration) {
	for range count {
		start := time.Now()
		res, err := r.Allow(context.Background(), limits)
		slowest = max(slowest, time.Since(start))
		if err != nil {
			errs = append(errs, err)
		} else if res.Allowed {
			allowed++
		}
	}
	return allowed, errs, slowest
}

func TestRedisOutageWithLocalFallback(t *testing.T) {
	for _, tc := range []struct {
		name string
		down func(o *outage)
		up   func(o *outage)
	}{
		{"redis killed and restarted", func(o *outage) { o.srv.Stop() }, func(o *outage) { o.srv.Restart() }},
		{"redis hung (SIGSTOP) and resumed", func(o *outage) { o.srv.Pause() }, func(o *outage) { o.srv.Resume() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := newOutage(t, ratelimit.PolicyLocal)
			limits := []ratelimit.Limit{{Name: "key", Bucket: "down", Rate: ratelimit.Rate{N: 10, Window: time.Hour}}}
			allowed, errs, _ := checks(o.a, limits, 4)
			require.Empty(t, errs)
			require.Equal(t, 4, allowed)

			tc.down(o)
			// Each replica now allows its share, 10/2, on its own.
			for _, r := range []*Limiter{o.a, o.b} {
				allowed, errs, slowest := checks(r, limits, 20)
				assert.Empty(t, errs)
				assert.Equal(t, 5, allowed)
				assert.Less(t, slowest, 5*o.timeout, "no check waits much past the timeout")
				assert.True(t, r.BreakerOpen())
				st := r.Stats()
				assert.Equal(t, uint64(20), st.Fallback)
				assert.GreaterOrEqual(t, st.StoreErrors, uint64(5))
				assert.Less(t, st.StoreErrors, uint64(20), "the breaker stopped calling Redis")
				assert.Equal(t, 2, r.Replicas(), "the last count is kept while Redis is down")
			}
			// A breaker interval later one check probes, fails, and is decided
			// locally too: still nothing beyond the share.
			time.Sleep(250 * time.Millisecond)
			allowed, errs, slowest := checks(o.a, limits, 5)
			assert.Empty(t, errs)
			assert.Zero(t, allowed)
			assert.Less(t, slowest, 5*o.timeout)

			tc.up(o)
			// The breaker closes after a probe, and the shared count is back:
			// a and b together allow N of a fresh bucket.
			require.Eventually(t, func() bool {
				fallbacks := o.a.Stats().Fallback
				_, _ = o.a.Allow(context.Background(), []ratelimit.Limit{{Name: "probe", Bucket: "probe", Rate: ratelimit.Rate{N: 1000, Window: time.Second}}})
				return o.a.Stats().Fallback == fallbacks && !o.a.BreakerOpen()
			}, 10*time.Second, 20*time.Millisecond)
			require.Eventually(t, func() bool {
				_, _ = o.b.Allow(context.Background(), []ratelimit.Limit{{Name: "probe", Bucket: "probe", Rate: ratelimit.Rate{N: 1000, Window: time.Second}}})
				return !o.b.BreakerOpen()
			}, 10*time.Second, 20*time.Millisecond)
			fresh := []ratelimit.Limit{{Name: "key", Bucket: "after", Rate: ratelimit.Rate{N: 10, Window: time.Hour}}}
			aAllowed, errs, _ := checks(o.a, fresh, 7)
			require.Empty(t, errs)
			bAllowed, errs, _ := checks(o.b, fresh, 7)
			require.Empty(t, errs)
			assert.Equal(t, 7, aAllowed)
			assert.Equal(t, 3, bAllowed)
		})
	}
}

func TestRedisOutagePolicies(t *testing.T) {
	limits := []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 1, Window: time.Hour}}}
	t.Run("allow lets every check through", func(t *testing.T) {
		o := newOutage(t, ratelimit.PolicyAllow)
		o.srv.Stop()
		allowed, errs, slowest := checks(o.a, limits, 20)
		assert.Empty(t, errs)
		assert.Equal(t, 20, allowed)
		assert.Less(t, slowest, 5*o.timeout)
		st := o.a.Stats()
		assert.Positive(t, st.Calls)
		assert.LessOrEqual(t, st.Calls, st.StoreErrors, "every call failed, and the breaker stopped them")
		st.Calls = 0
		assert.Equal(t, ratelimit.Stats{Allowed: 20, Fallback: 20, StoreErrors: st.StoreErrors}, st)
	})
	t.Run("deny answers ratelimit.ErrUnavailable, for a 503", func(t *testing.T) {
		o := newOutage(t, ratelimit.PolicyDeny)
		o.srv.Pause()
		for range 10 {
			start := time.Now()
			res, err := o.a.Allow(context.Background(), limits)
			assert.Less(t, time.Since(start), 5*o.timeout)
			require.ErrorIs(t, err, ratelimit.ErrUnavailable)
			assert.False(t, res.Allowed)
		}
		assert.True(t, o.a.BreakerOpen())
		o.srv.Resume()
	})
}

func TestRedisGivesUpWithTheCaller(t *testing.T) {
	o := newOutage(t, ratelimit.PolicyAllow)
	o.srv.Pause()
	defer o.srv.Resume()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
	defer cancel()
	_, err := o.a.Allow(ctx, []ratelimit.Limit{limitertest.Key10})
	require.True(t, errors.Is(err, context.DeadlineExceeded), "got %v", err)
	assert.Zero(t, o.a.Stats().StoreErrors, "a caller giving up is not a Redis failure")
}

func TestRedisCluster(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	client := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs:                 cluster.Addrs(),
		ContextTimeoutEnabled: true,
		MaxRetries:            3,
	})
	t.Cleanup(func() { _ = client.Close() })
	a := newRedis(t, client, Options{Prefix: "extauthz:", Timeout: time.Second})
	b := newRedis(t, client, Options{Prefix: "extauthz:", Timeout: time.Second})

	// Buckets on every node: each check's limits must land in one slot.
	nodes := map[string]bool{}
	for i := range 30 {
		bucket := fmt.Sprint("key", i)
		limits := []ratelimit.Limit{
			{Name: "key", Bucket: bucket, Rate: ratelimit.Rate{N: 5, Window: time.Hour}},
			{Name: "/r", Bucket: bucket, Scope: "/r", Rate: ratelimit.Rate{N: 50, Window: time.Minute}},
		}
		assert.Equal(t, 5, limitertest.CountAllowed(t, 2, 4, a, limits)+limitertest.CountAllowed(t, 2, 4, b, limits), bucket)

		ctx := context.Background()
		slot := func(l *ratelimit.Limit) int64 {
			s, err := client.ClusterKeySlot(ctx, a.counterKey(l)).Result()
			require.NoError(t, err)
			return s
		}
		require.Equal(t, slot(&limits[0]), slot(&limits[1]))
		node, err := client.MasterForKey(ctx, a.counterKey(&limits[0]))
		require.NoError(t, err)
		nodes[node.Options().Addr] = true
	}
	assert.Len(t, nodes, 3, "the buckets spread over the masters")
	assert.Zero(t, a.Stats().Fallback+b.Stats().Fallback)
	require.Eventually(t, func() bool { return a.Replicas() == 2 }, 5*time.Second, 10*time.Millisecond)
}

// On a Cluster, one master failing opens only its own breaker: the
// buckets of the other masters keep their shared counts. With one breaker
// for all, a few failed checks on the failing master sent every bucket to
// OnStoreError, where "local" lets each replica allow its share of N on top
// of what Redis had counted.
func TestAFailingClusterMasterOpensOnlyItsOwnBreaker(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	client := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs: cluster.Addrs(), ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: time.Second,
	})
	t.Cleanup(func() { _ = client.Close() })
	const timeout = 100 * time.Millisecond
	lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: timeout,
		OnStoreError: ratelimit.PolicyDeny, BreakerFailures: 2, BreakerProbe: time.Minute})
	ctx := context.Background()

	// Two buckets whose counters live on different masters.
	limitsOf := func(bucket string) []ratelimit.Limit {
		return []ratelimit.Limit{{Name: "key", Bucket: bucket, Rate: ratelimit.Rate{N: 1000, Window: time.Hour}}}
	}
	masterOf := func(bucket string) string {
		node, err := client.MasterForKey(ctx, lim.counterKey(&limitsOf(bucket)[0]))
		require.NoError(t, err)
		return node.Options().Addr
	}
	failing, healthy := "key0", ""
	for i := 1; healthy == ""; i++ {
		if b := fmt.Sprint("key", i); masterOf(b) != masterOf(failing) {
			healthy = b
		}
	}
	for _, b := range []string{failing, healthy} {
		res, err := lim.Allow(ctx, limitsOf(b))
		require.NoError(t, err)
		require.True(t, res.Allowed)
	}

	victim := cluster.Master(cluster.Slot(lim.counterKey(&limitsOf(failing)[0])))
	victim.Pause()
	defer victim.Resume()
	for range 3 {
		_, err := lim.Allow(ctx, limitsOf(failing))
		require.ErrorIs(t, err, ratelimit.ErrUnavailable, "deny: a check its master does not answer is a 503")
	}
	require.True(t, lim.BreakerOpen())
	start := time.Now()
	_, err := lim.Allow(ctx, limitsOf(failing))
	require.ErrorIs(t, err, ratelimit.ErrUnavailable)
	require.Less(t, time.Since(start), timeout/2, "the failing master's breaker is open: no wait")

	fallbacks := lim.Stats().Fallback
	for range 5 {
		res, err := lim.Allow(ctx, limitsOf(healthy))
		require.NoError(t, err, "a bucket on a healthy master is counted in Redis, not sent to on_store_error")
		require.True(t, res.Allowed)
	}
	require.Equal(t, fallbacks, lim.Stats().Fallback)
}

// Under load, a master that stops answering holds up only the checks bound
// for it. Checks of buckets on the other masters are answered by Redis
// throughout, never by OnStoreError: with one queue for the whole Cluster,
// every batch on the wire waited for the stopped master, the checks of
// healthy masters timed out with it (in the batch, or queued behind it),
// and those timeouts opened the healthy masters' breakers too, at the
// start of the fault and again at each of the stopped master's probes.
func TestAStoppedClusterMasterHoldsUpOnlyItsOwnChecksUnderLoad(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	client := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs: cluster.Addrs(), ContextTimeoutEnabled: true, MaxRetries: -1, DialTimeout: time.Second,
	})
	t.Cleanup(func() { _ = client.Close() })
	const timeout = 100 * time.Millisecond
	lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: timeout, OnStoreError: ratelimit.PolicyDeny})
	ctx := context.Background()

	limitsOf := func(bucket string) []ratelimit.Limit {
		return []ratelimit.Limit{{Name: "key", Bucket: bucket, Rate: ratelimit.Rate{N: 1 << 30, Window: time.Hour}}}
	}
	masterOf := func(bucket string) string {
		node, err := client.MasterForKey(ctx, lim.counterKey(&limitsOf(bucket)[0]))
		require.NoError(t, err)
		return node.Options().Addr
	}
	var failing, healthy []string
	for i := 0; len(healthy) < 24 || len(failing) < 8; i++ {
		b := fmt.Sprint("key", i)
		if masterOf(b) == masterOf("key0") {
			failing = append(failing, b)
		} else {
			healthy = append(healthy, b)
		}
	}

	var stopping atomic.Bool
	var healthyChecks, healthyFailed, failingChecks atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	load := func(bucket string, checks, failed *atomic.Int64) {
		for !stopping.Load() {
			_, err := lim.Allow(ctx, limitsOf(bucket))
			checks.Add(1)
			if err != nil && failed != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
			time.Sleep(time.Millisecond)
		}
	}
	for _, b := range healthy[:24] {
		wg.Go(func() { load(b, &healthyChecks, &healthyFailed) })
	}
	for _, b := range failing[:8] {
		wg.Go(func() { load(b, &failingChecks, nil) })
	}
	require.Eventually(t, func() bool { return healthyChecks.Load() > 100 && failingChecks.Load() > 100 },
		10*time.Second, 10*time.Millisecond, "the load runs")

	victim := cluster.Master(cluster.Slot(lim.counterKey(&limitsOf(failing[0])[0])))
	victim.Pause()
	resumed := false
	defer func() {
		if !resumed {
			victim.Resume()
		}
	}()
	before := healthyChecks.Load()
	// Long enough for the breaker of the stopped master to open and probe
	// twice (every second), each probe stalling a batch for the timeout.
	time.Sleep(2500 * time.Millisecond)
	during := healthyChecks.Load() - before
	victim.Resume()
	resumed = true
	stopping.Store(true)
	wg.Wait()

	require.NotZero(t, lim.Stats().Fallback, "the stopped master's checks went to OnStoreError")
	assert.Greater(t, during, int64(100), "the healthy masters' checks went on")
	assert.Zero(t, healthyFailed.Load(), "a check of a healthy master was decided without Redis (first: %v)", firstErr.Load())
}

func TestRedisOddInputs(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	made := []*Limiter{
		newRedis(t, client, Options{Now: clock.Now, Timeout: time.Second}),
		newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: time.Second}), // the server's clock
	}
	for _, r := range made {
		limitertest.OddInputs(t, r, clock)
	}
	for _, r := range made {
		st := r.Stats()
		assert.Zero(t, st.StoreErrors, "the script failed on some input")
		assert.Positive(t, st.Allowed)
	}
}

// Redis dies under load and comes back: no check fails or waits much past
// the timeout, the fallback takes over, and the shared count resumes.
func TestRedisKilledInTheMiddleOfARun(t *testing.T) {
	o := newOutage(t, ratelimit.PolicyLocal)
	limits := []ratelimit.Limit{{Name: "key", Bucket: "busy", Rate: ratelimit.Rate{N: 1e6, Window: time.Hour}}}
	var slowest atomic.Int64
	var failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start := time.Now()
				res, err := o.a.Allow(context.Background(), limits)
				d := time.Since(start)
				for {
					old := slowest.Load()
					if int64(d) <= old || slowest.CompareAndSwap(old, int64(d)) {
						break
					}
				}
				if err != nil || !res.Allowed {
					failed.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	o.srv.Stop()
	time.Sleep(500 * time.Millisecond)
	fallbacks := o.a.Stats().Fallback
	o.srv.Restart()
	require.Eventually(t, func() bool { return !o.a.BreakerOpen() }, 10*time.Second, 10*time.Millisecond)
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()

	st := o.a.Stats()
	t.Logf("stats %+v, slowest check %v", st, time.Duration(slowest.Load()))
	assert.Zero(t, failed.Load(), "no errors and no denials beyond the policy")
	assert.Less(t, time.Duration(slowest.Load()), 5*o.timeout)
	assert.Positive(t, fallbacks)
	assert.Less(t, st.StoreErrors, st.Fallback/4, "the breaker kept most checks off the dead Redis")
	assert.Greater(t, st.Allowed, st.Fallback, "the shared count decided before and after")
	n, err := newClient(t, o.srv.Addr).Exists(context.Background(), "count:{busy}:").Result()
	require.NoError(t, err)
	assert.Equal(t, int64(1), n, "checks after the restart counted in Redis again")
}

// A check whose time for the store an earlier step spent (a key lookup
// that waited on a Redis that does not answer) is decided by the
// store-error policy at its store deadline, not after a timeout of its own,
// and without counting against Redis or tripping the breaker.
func TestRedisDecidesByPolicyWhenTheCheckTimeForTheStoreIsSpent(t *testing.T) {
	limits := []ratelimit.Limit{{Name: "key", Bucket: "spent", Rate: ratelimit.Rate{N: 1, Window: time.Hour}}}

	t.Run("a deadline already past: no call to Redis at all", func(t *testing.T) {
		o := newOutage(t, ratelimit.PolicyAllow)
		ctx, cancel := ratelimit.WithStoreDeadline(context.Background(), time.Now().Add(-time.Millisecond))
		defer cancel()
		for range 3 { // N is 1: only the policy allows three
			res, err := o.a.Allow(ctx, limits)
			require.NoError(t, err)
			assert.True(t, res.Allowed)
		}
		assert.Equal(t, ratelimit.Stats{Allowed: 3, Fallback: 3}, o.a.Stats())
	})

	t.Run("a deadline reached while Redis does not answer", func(t *testing.T) {
		// A limiter whose own timeout is far longer than the check's store
		// deadline: ending near the deadline, not the timeout, is what shows,
		// with a margin no loaded machine comes near.
		srv := redistest.Start(t)
		const timeout = 5 * time.Second
		lim := newRedis(t, newClient(t, srv.Addr), Options{Timeout: timeout, OnStoreError: ratelimit.PolicyDeny, InstanceID: "slow"})
		srv.Pause()
		defer srv.Resume()
		for range 10 {
			ctx, cancel := ratelimit.WithStoreDeadline(context.Background(), time.Now().Add(20*time.Millisecond))
			start := time.Now()
			_, err := lim.Allow(ctx, limits)
			took := time.Since(start)
			cancel()
			require.ErrorIs(t, err, ratelimit.ErrUnavailable, "the deny policy decided")
			assert.Less(t, took, timeout/5, "waited past the store deadline, toward the limiter's own timeout")
		}
		assert.Zero(t, lim.Stats().StoreErrors, "running out of the check's time is not a Redis failure")
		assert.False(t, lim.BreakerOpen())
	})

	t.Run("a deadline that left Redis most of its timeout: a failure like any", func(t *testing.T) {
		o := newOutage(t, ratelimit.PolicyDeny)
		o.srv.Pause()
		defer o.srv.Resume()
		for range 10 {
			ctx, cancel := ratelimit.WithStoreDeadline(context.Background(), time.Now().Add(o.timeout-time.Millisecond))
			_, err := o.a.Allow(ctx, limits)
			cancel()
			require.ErrorIs(t, err, ratelimit.ErrUnavailable)
		}
		assert.True(t, o.a.BreakerOpen(), "a Redis that never answers opens the breaker, whichever deadline ended each call")
	})

	t.Run("the caller's own deadline still means the caller gave up", func(t *testing.T) {
		o := newOutage(t, ratelimit.PolicyAllow)
		o.srv.Pause()
		defer o.srv.Resume()
		parent, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		defer cancel()
		ctx, cancel2 := ratelimit.WithStoreDeadline(parent, time.Now().Add(time.Hour))
		defer cancel2()
		_, err := o.a.Allow(ctx, limits)
		require.ErrorIs(t, err, context.DeadlineExceeded)
	})
}

// One script call decides a whole batch (one Redis). It must decide exactly
// as the same checks sent one call each: checks of one bucket in a batch see
// each other's counts, and every check's values land in its own place
// whatever the number of limits of the checks around it. The two runs use
// two prefixes on one server and one clock; every value of every reply is
// compared.
func TestABatchDecidesAsItsChecksOneByOne(t *testing.T) {
	srv := redistest.Start(t)
	client := newClient(t, srv.Addr)
	clock := limitertest.NewClock()
	opts := func() Options { return Options{Prefix: uniquePrefix(), Now: clock.Now, Timeout: time.Second} }
	batched, single := newRedis(t, client, opts()), newRedis(t, client, opts())
	require.False(t, batched.perCheck, "a plain client gets one call per batch")

	rng := rand.New(rand.NewPCG(15, 1))
	rates := []ratelimit.Rate{{N: 2, Window: time.Second}, {N: 5, Window: 2 * time.Second}, {N: 4000, Window: time.Minute}}
	check := func() ([]ratelimit.Limit, int64) {
		i := rng.IntN(4) // few buckets: batches repeat them
		b := fmt.Sprintf("b%d", i)
		limits := []ratelimit.Limit{{Name: "key", Bucket: b, Rate: rates[i%len(rates)]}}
		if rng.IntN(2) == 0 {
			limits = append(limits, ratelimit.Limit{Name: "/r", Bucket: b, Scope: "/r", Rate: rates[(i+1)%2]})
		}
		want := int64(1)
		if rng.IntN(5) == 0 {
			want = 1 + rng.Int64N(3) // a lease's ask
		}
		return limits, want
	}
	ctx := context.Background()
	var allowed, denied, twoOfABucket int
	for step := range 60 {
		size := 1 + rng.IntN(12)
		var inBatch, oneByOne []*call
		seen := map[string]bool{}
		for range size {
			limits, want := check()
			if seen[limits[0].Bucket] {
				twoOfABucket++
			}
			seen[limits[0].Bucket] = true
			inBatch = append(inBatch, batched.newCall(limits, len(limits), want))
			oneByOne = append(oneByOne, single.newCall(limits, len(limits), want))
		}
		batched.run(ctx, inBatch)
		for i := range size {
			single.run(ctx, oneByOne[i:i+1])
			a, b := <-inBatch[i].reply, <-oneByOne[i].reply
			require.NoError(t, a.err)
			require.NoError(t, b.err)
			require.Equal(t, b.vals, a.vals, "step %d, check %d of %d", step, i, size)
			if a.vals[0] > 0 {
				allowed++
			} else {
				denied++
			}
		}
		clock.Set(clock.Now().Add(time.Duration(rng.IntN(150)) * time.Millisecond))
	}
	// The walk exercised what it claims to.
	t.Logf("%d allowed, %d denied, %d checks of a bucket already in their batch", allowed, denied, twoOfABucket)
	assert.Greater(t, allowed, 50)
	assert.Greater(t, denied, 50)
	assert.Greater(t, twoOfABucket, 100)
}

// Stats().Calls counts the script's calls: one per check while each finds
// the wire free, and one for all the checks that queued behind a call.
// Redis is paused (CLIENT PAUSE) while the queue fills, so that the batch's
// size does not depend on the scheduler.
func TestRedisCountsItsScriptCalls(t *testing.T) {
	srv := redistest.Start(t)
	r := newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Timeout: 10 * time.Second})
	ctx := context.Background()
	limits := func(i int) []ratelimit.Limit {
		return []ratelimit.Limit{{Name: "key", Bucket: fmt.Sprint("calls", i), Rate: ratelimit.Rate{N: 5, Window: time.Hour}}}
	}
	for i := range 10 {
		_, err := r.Allow(ctx, limits(i))
		require.NoError(t, err)
	}
	require.EqualValues(t, 10, r.Stats().Calls, "one at a time: a call each")

	_, err := srv.Do("CLIENT", "PAUSE", "10000", "WRITE") // scripts wait; CLIENT UNPAUSE does not
	require.NoError(t, err)
	const n = 64
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := r.Allow(ctx, limits(100+i))
			assert.NoError(t, err)
		})
	}
	// One check is on the wire, held by the pause; the others queue.
	require.Eventually(t, func() bool {
		q := r.home.queue
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.pending) == n-1
	}, 5*time.Second, time.Millisecond)
	_, err = srv.Do("CLIENT", "UNPAUSE")
	require.NoError(t, err)
	wg.Wait()
	st := r.Stats()
	assert.EqualValues(t, 12, st.Calls, "the queued checks went as one call")
	assert.EqualValues(t, 10+n, st.Allowed)
}

// Calls are pooled, and a check whose caller gave up leaves its call in a
// batch that is still on the wire: its reply comes later. That call must
// never be handed to another check, or the late reply would answer that
// check (and the batcher, finding the channel full, would block). Here the
// first wave's callers give up while Redis is paused with their batch; the
// second wave, on another bucket with room to spare, queues behind it and
// must get answers of its own: every check allowed.
func TestRedisNeverReusesTheCallOfACallerThatGaveUp(t *testing.T) {
	srv := redistest.Start(t)
	r := newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Timeout: 10 * time.Second})
	scarce := []ratelimit.Limit{{Name: "key", Bucket: "scarce", Rate: ratelimit.Rate{N: 1, Window: time.Hour}}}
	ample := []ratelimit.Limit{{Name: "key", Bucket: "ample", Rate: ratelimit.Rate{N: 1000, Window: time.Hour}}}
	giveUpAfter := func(d time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := r.Allow(ctx, scarce)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
	}
	state := func(pending, sending int) func() bool { return queueIs(r, pending, sending) }

	_, err := srv.Do("CLIENT", "PAUSE", "2000", "WRITE")
	require.NoError(t, err)
	// The opener goes on the wire first and gives up first, so that the
	// first wave, queued behind it, leaves as one batch, which the pause
	// holds past the first wave's own deadline.
	var gaveUp sync.WaitGroup
	gaveUp.Go(func() { giveUpAfter(200 * time.Millisecond) })
	require.Eventually(t, state(0, 1), 5*time.Second, time.Millisecond)
	const n = 16
	for range n {
		gaveUp.Go(func() { giveUpAfter(time.Second) })
	}
	require.Eventually(t, state(n, 1), 5*time.Second, time.Millisecond, "the first wave queues")
	require.Eventually(t, state(0, 1), 5*time.Second, time.Millisecond, "the first wave leaves as a batch")
	gaveUp.Wait()

	var waited sync.WaitGroup
	for range n {
		waited.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			res, err := r.Allow(ctx, ample)
			if assert.NoError(t, err) {
				assert.True(t, res.Allowed, "a check got the answer of an abandoned one")
				assert.GreaterOrEqual(t, res.Remaining, int64(1000-n))
			}
		})
	}
	waited.Wait()
	// A call reused too soon also goes out with arguments that are no
	// longer its batch's (go-redis reads them as it writes the batch),
	// which Redis refuses; the checks would then fall back to OnStoreError,
	// which allows them. So no check may have seen Redis fail.
	st := r.Stats()
	assert.Zero(t, st.StoreErrors, "a batch failed")
	assert.Zero(t, st.Fallback, "a check was decided without Redis")
	assert.EqualValues(t, n, st.Allowed, "the second wave: an abandoned check counts nowhere")
}

// A check whose caller gave up while it waited in the queue is never sent:
// nobody waits for its answer, and under overload, when Redis answers late
// and callers give up by the thousand, sending them would only load Redis
// further, and count checks that were never allowed. Here Redis pauses
// under one check on the wire while a wave queued behind it gives up.
func TestRedisSendsNoCheckWhoseCallerGaveUpWhileItWaited(t *testing.T) {
	srv := redistest.Start(t)
	r := newRedis(t, newClient(t, srv.Addr), Options{Prefix: uniquePrefix(), Timeout: 10 * time.Second})
	limits := []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 100, Window: time.Hour}}}
	state := func(pending, sending int) func() bool { return queueIs(r, pending, sending) }

	_, err := srv.Do("CLIENT", "PAUSE", "2000", "WRITE")
	require.NoError(t, err)
	opened := make(chan ratelimit.Result, 1)
	go func() {
		res, err := r.Allow(context.Background(), limits)
		assert.NoError(t, err)
		opened <- res
	}()
	require.Eventually(t, state(0, 1), 5*time.Second, time.Millisecond, "the opener on the wire")
	const n = 16
	var gaveUp sync.WaitGroup
	for range n {
		gaveUp.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			_, err := r.Allow(ctx, limits)
			assert.ErrorIs(t, err, context.DeadlineExceeded)
		})
	}
	gaveUp.Wait()
	require.True(t, state(n, 1)(), "the wave gave up queued, behind the opener")

	res := <-opened
	require.True(t, res.Allowed)
	require.Eventually(t, state(0, 0), 5*time.Second, time.Millisecond, "the wave left the queue")
	res, err = r.Allow(context.Background(), limits)
	require.NoError(t, err)
	assert.EqualValues(t, 100-2, res.Remaining, "the checks given up were counted")
	assert.EqualValues(t, 2, r.Stats().Calls, "the checks given up were sent")
}

// Replicas whose configs disagree on a limit's window, for as long as a
// reload takes to reach them all (or a key's new rate to reach their
// caches), check one counter each with its own window. The count carries
// over from one window to the other: were it to start over, a client whose
// checks alternate between the replicas would never be limited.
func TestRedisReplicasOnTwoWindowsShareOneCount(t *testing.T) {
	srv := redistest.Start(t)
	for _, n := range []int64{5, 400} { // exact checks, and leases
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			prefix := uniquePrefix()
			a := newRedis(t, newClient(t, srv.Addr), Options{Prefix: prefix, Timeout: time.Second})
			b := newRedis(t, newClient(t, srv.Addr), Options{Prefix: prefix, Timeout: time.Second})
			limits := func(w time.Duration) []ratelimit.Limit {
				return []ratelimit.Limit{
					{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 10 * n, Window: time.Hour}},
					{Name: "/r", Bucket: "k", Scope: "/r", Rate: ratelimit.Rate{N: n, Window: w}},
				}
			}
			old, reloaded := limits(time.Minute), limits(2*time.Minute)
			allowed := 0
			for i := range 4 * n {
				lim, l := a, old
				if i%2 == 1 || n > 5 && i%64 >= 32 {
					lim, l = b, reloaded
				}
				res, err := lim.Allow(context.Background(), l)
				require.NoError(t, err)
				if res.Allowed {
					allowed++
				}
			}
			assert.LessOrEqual(t, allowed, int(n), "allowed of %d/m on one replica and %d/2m on the other", n, n)
		})
	}
}

// While a slot moves, a check of two limits whose counters the move has
// split is refused (TRYAGAIN) and sent again until the move ends, within
// Timeout. A move that stalls (a resharding stopped halfway leaves its slot
// moving until someone fixes it) refuses it for the whole Timeout: that
// wait is the refused check's alone, not the other checks', which are
// answered by Redis meanwhile, not held up behind it until they time out.
func TestAStalledSlotMoveHoldsUpOnlyTheChecksItRefuses(t *testing.T) {
	cluster := redistest.StartCluster(t, 3)
	client := goredis.NewClusterClient(&goredis.ClusterOptions{Addrs: cluster.Addrs(), ContextTimeoutEnabled: true, MaxRetries: -1})
	t.Cleanup(func() { _ = client.Close() })
	const timeout = time.Second
	lim := newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: timeout, Pipelines: 1, NoLeases: true,
		OnStoreError: ratelimit.PolicyDeny, BreakerFailures: 100})
	ctx := context.Background()
	rate := ratelimit.Rate{N: 1000, Window: time.Minute}
	key := ratelimit.Limit{Name: "key", Bucket: "stalled", Rate: rate}
	route := ratelimit.Limit{Name: "route", Bucket: "stalled", Scope: "/r", Rate: rate}
	_, err := lim.Allow(ctx, []ratelimit.Limit{key})
	require.NoError(t, err)

	// The key's counter moves; the route's, not yet counted, would be made
	// on the new master, which refuses it until the slot is handed over.
	slot := cluster.Slot(lim.counterKey(&key))
	from := cluster.Master(slot)
	var to *redistest.Server
	for _, m := range cluster.Masters() {
		if m != from {
			to = m
			break
		}
	}
	mig, err := cluster.StartMigration(slot, to)
	require.NoError(t, err)
	left, err := mig.Move(1 << 20)
	require.NoError(t, err)
	require.Zero(t, left)
	refusals := func() int {
		info, err := to.Info("errorstats")
		require.NoError(t, err)
		var n int
		_, _ = fmt.Sscanf(info["errorstat_TRYAGAIN"], "count=%d", &n)
		return n
	}

	split := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := lim.Allow(ctx, []ratelimit.Limit{key, route})
		split <- err
	}()
	require.Eventually(t, func() bool { return refusals() > 0 }, timeout/2, time.Millisecond, "the check of both limits is refused")
	other := ratelimit.Limit{Name: "key", Bucket: "elsewhere", Rate: rate}
	for range 3 {
		asked := time.Now()
		res, err := lim.Allow(ctx, []ratelimit.Limit{other})
		require.NoError(t, err, "a check the move does not refuse, made while a refused one waits")
		require.True(t, res.Allowed)
		require.Less(t, time.Since(asked), timeout/4, "a check the move does not refuse waited for one it does")
	}
	require.ErrorIs(t, <-split, ratelimit.ErrUnavailable, "the move never ended")
	require.GreaterOrEqual(t, time.Since(start), timeout-50*time.Millisecond, "the refused check waited for the move until its Timeout")
	require.Greater(t, refusals(), 3, "the refused check was sent again while it waited")
	require.EqualValues(t, 1, lim.Stats().Fallback, "only the refused check was decided without Redis")
}

// Looking through a Cluster batch's answers for the refused ones (NOSCRIPT,
// TRYAGAIN) costs nothing when Redis answered them all: go-redis's
// HasErrorPrefix allocates even for no error.
func TestLookingForRefusedChecksAllocatesNothing(t *testing.T) {
	cmds := []*goredis.IntSliceCmd{goredis.NewIntSliceCmd(context.Background()), goredis.NewIntSliceCmd(context.Background())}
	allocs := testing.AllocsPerRun(100, func() {
		_ = failedWith(cmds, nil, "NOSCRIPT")
		_ = hasErrorPrefix(cmds[0].Err(), "TRYAGAIN")
	})
	assert.Zero(t, allocs)
	cmds[1].SetErr(replyError("TRYAGAIN Multiple keys request during rehashing of slot"))
	assert.Equal(t, []int{1}, failedWith(cmds, nil, "TRYAGAIN"))
	assert.Empty(t, failedWith(cmds, []int{0}, "TRYAGAIN"))
	assert.Empty(t, failedWith(cmds, nil, "NOSCRIPT"))
}

// replyError is an error reply of Redis, as go-redis reads one.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

// A Cluster that has never answered (the server started before it, as it
// may) leaves the client no slot map, and every call first asks a seed
// node for one. A check then waits no longer than Timeout, and after
// BreakerFailures of them the breaker answers at once: finding a check's
// master must not ask the Cluster outside the breaker and the Timeout,
// each time, for as long as the client's own read timeout.
func TestAClusterWithNoSlotMapYetHoldsAChecksNoLongerThanItsTimeout(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = silent.Close() })
	var conns sync.WaitGroup
	conns.Go(func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			held = append(held, c) // read nothing, answer nothing
		}
	})
	client := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs: []string{silent.Addr().String()}, ContextTimeoutEnabled: true, MaxRetries: -1,
		DialTimeout: time.Second, ReadTimeout: 5 * time.Second,
	})
	t.Cleanup(func() { _ = client.Close(); _ = silent.Close(); conns.Wait() })
	lim := newRedis(t, client, Options{
		Prefix: uniquePrefix(), Timeout: 50 * time.Millisecond, OnStoreError: ratelimit.PolicyDeny,
		BreakerFailures: 2, BreakerProbe: time.Hour,
	})

	limits := []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 10, Window: time.Minute}}}
	start := time.Now()
	for range 4 {
		_, err := lim.Allow(context.Background(), limits)
		require.ErrorIs(t, err, ratelimit.ErrUnavailable)
	}
	assert.Less(t, time.Since(start), 2*time.Second, "four checks each waited past the Timeout")
	assert.True(t, lim.BreakerOpen(), "the failed checks opened the breaker")
}

// queueIs reports, when called, whether r's queue holds pending checks
// and sending batches on the wire.
func queueIs(r *Limiter, pending, sending int) func() bool {
	return func() bool {
		q := r.home.queue
		q.mu.Lock()
		defer q.mu.Unlock()
		return len(q.pending) == pending && q.sending == sending
	}
}
