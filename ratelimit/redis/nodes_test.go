package redis

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/ratelimit"
)

// clusterLimiter is a limiter on a new Cluster of masters masters, its
// heartbeat (and so its rounds of retiring idle nodes) every heartbeat.
func clusterLimiter(t *testing.T, masters int, heartbeat time.Duration) (*Limiter, *goredis.ClusterClient) {
	t.Helper()
	cluster := redistest.StartCluster(t, masters)
	client := goredis.NewClusterClient(&goredis.ClusterOptions{
		Addrs: cluster.Addrs(), ContextTimeoutEnabled: true, MaxRetries: 3, DialTimeout: time.Second,
	})
	t.Cleanup(func() { _ = client.Close() })
	return newRedis(t, client, Options{Prefix: uniquePrefix(), Timeout: time.Second, Heartbeat: heartbeat}), client
}

// bucketsOnMasters returns, for each of the Cluster's masters, a bucket
// whose counters it holds, keyed by its address.
func bucketsOnMasters(t *testing.T, lim *Limiter, client *goredis.ClusterClient, masters int, limitsOf func(string) []ratelimit.Limit) map[string]string {
	t.Helper()
	buckets := map[string]string{}
	for i := 0; len(buckets) < masters; i++ {
		require.Less(t, i, 1000, "no bucket found on every master")
		b := fmt.Sprint("key", i)
		node, err := client.MasterForKey(context.Background(), lim.counterKey(&limitsOf(b)[0]))
		require.NoError(t, err)
		if _, ok := buckets[node.Options().Addr]; !ok {
			buckets[node.Options().Addr] = b
		}
	}
	return buckets
}

func (r *Limiter) nodeAddrs() []string {
	var addrs []string
	r.nodes.Range(func(addr, _ any) bool {
		addrs = append(addrs, addr.(string))
		return true
	})
	return addrs
}

// senders counts the goroutines running a limiter's senders.
func senders() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), ").sender(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// A Cluster master's address can go away for good (a failover promotes a
// replica at another address; a Pod restarts with a new IP). The limiter
// kept a node, with its sender goroutines, for every address it had ever
// sent a check to, for the life of the process. A node no check has gone
// to for a while is now retired and its senders end; a later check to that
// address makes a new one, and the counts, which live in Redis, carry on.
func TestAClusterMastersNodeNoCheckGoesToIsRetired(t *testing.T) {
	const masters = 3
	lim, client := clusterLimiter(t, masters, 5*time.Millisecond)
	lim.idleRounds.Store(4)
	limitsOf := func(bucket string) []ratelimit.Limit {
		return []ratelimit.Limit{{Name: "key", Bucket: bucket, Rate: ratelimit.Rate{N: 3, Window: time.Hour}}}
	}
	buckets := bucketsOnMasters(t, lim, client, masters, limitsOf)
	ctx := context.Background()
	allow := func(bucket string) bool {
		t.Helper()
		res, err := lim.Allow(ctx, limitsOf(bucket))
		require.NoError(t, err)
		return res.Allowed
	}
	var kept, idle string
	for addr, b := range buckets {
		if kept == "" {
			kept = addr
		} else if idle == "" {
			idle = addr
		}
		require.True(t, allow(b)) // the first check (through home) maps the slots
	}
	for _, b := range buckets {
		require.True(t, allow(b), "%s: 2 of 3", b)
	}
	require.ElementsMatch(t, []string{kept, idle, otherThan(buckets, kept, idle)}, lim.nodeAddrs())
	before := senders()

	// Checks keep going to one master only: the other two nodes retire,
	// and their senders end.
	require.Eventually(t, func() bool {
		allowWithin(t, lim, limitsOf(buckets[kept]))
		return assert.ObjectsAreEqual([]string{kept}, lim.nodeAddrs()) && senders() == before-2
	}, 10*time.Second, 5*time.Millisecond, "nodes %v, senders %d (%d before)", lim.nodeAddrs(), senders(), before)

	// A check to a retired master's address makes its node again, and its
	// count went on in Redis meanwhile: the third request is the last.
	require.True(t, allow(buckets[idle]), "3 of 3")
	require.False(t, allow(buckets[idle]), "4 of 3")
	assert.Contains(t, lim.nodeAddrs(), idle)
	assert.Zero(t, lim.Stats().Fallback+lim.Stats().StoreErrors)
}

// allowWithin sends a check that may be denied (its limit ran out) but not fail.
func allowWithin(t *testing.T, lim *Limiter, limits []ratelimit.Limit) {
	t.Helper()
	_, err := lim.Allow(context.Background(), limits)
	require.NoError(t, err)
}

func otherThan(m map[string]string, a, b string) string {
	for k := range m {
		if k != a && k != b {
			return k
		}
	}
	return ""
}

// Retiring races with the checks that find a node: a check may take a node
// from the map as it leaves it. With every node retired at every round (a
// round a millisecond), checks from many goroutines over buckets on every
// master are all answered by Redis (none fails, none falls back), no bucket
// is allowed more than its limit, and the nodes did change under them.
func TestChecksRacingTheRetiringOfTheirNodeAreAllAnswered(t *testing.T) {
	const masters, n = 3, 40
	lim, client := clusterLimiter(t, masters, time.Millisecond)
	lim.idleRounds.Store(0) // every node, every round
	limitsOf := func(bucket string) []ratelimit.Limit {
		return []ratelimit.Limit{{Name: "key", Bucket: bucket, Rate: ratelimit.Rate{N: n, Window: time.Hour}}}
	}
	var buckets []string
	for _, b := range bucketsOnMasters(t, lim, client, masters, limitsOf) {
		buckets = append(buckets, b)
	}

	seen := map[*node]bool{}
	stopWatching := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			select {
			case <-stopWatching:
				return
			default:
			}
			lim.nodes.Range(func(_, v any) bool {
				seen[v.(*node)] = true
				return true
			})
			time.Sleep(100 * time.Microsecond)
		}
	})

	var mu sync.Mutex
	allowed := map[string]int{}
	var errs []error
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 3 * n {
				b := buckets[(w+i)%len(buckets)]
				res, err := lim.Allow(context.Background(), limitsOf(b))
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else if res.Allowed {
					allowed[b]++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(stopWatching)
	watch.Wait()

	require.Empty(t, errs)
	for _, b := range buckets {
		assert.Equal(t, n, allowed[b], b)
	}
	assert.Zero(t, lim.Stats().Fallback+lim.Stats().StoreErrors)
	assert.Greater(t, len(seen), 2*masters, "the nodes were retired and made again under the checks")
}

// A node retires while a check still holds it: its senders keep serving
// that check's queue until the check lets it go, and a check that comes
// meanwhile gets a new node rather than the retiring one.
func TestARetiredNodeKeepsItsSendersUntilItsLastCheckLetsGo(t *testing.T) {
	lim, _ := clusterLimiter(t, 3, time.Hour) // rounds by hand below
	limits := []ratelimit.Limit{{Name: "key", Bucket: "k", Rate: ratelimit.Rate{N: 10, Window: time.Hour}}}
	allowWithin(t, lim, limits) // through home: maps the slots

	held := lim.nodeFor(context.Background(), limits)
	require.NotSame(t, lim.home, held)
	lim.idleRounds.Store(1)
	lim.round.Add(1)
	lim.retireIdle()
	require.Empty(t, lim.nodeAddrs(), "retired: no longer found")
	select {
	case <-held.stop:
		t.Fatal("a held node's senders were stopped")
	default:
	}
	other := lim.nodeFor(context.Background(), limits)
	require.NotSame(t, held, other, "a check after the retiring gets a new node")
	lim.letGo(other)

	lim.letGo(held)
	lim.retireIdle()
	select {
	case <-held.stop:
	default:
		t.Fatal("the node's senders still run after its last check let it go")
	}
}
