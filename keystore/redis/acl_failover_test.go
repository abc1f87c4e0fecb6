package redis_test

// The shipped ACL through failovers: a Cluster with a replica per master and
// a Sentinel-managed primary with a replica, every node started from the
// shipped files, the replicas logging in to their primary as a replication
// user of their own. The primary of the key records fails twice: stopped
// (SIGSTOP) until a replica takes over, then resumed; then the new primary
// killed, and restarted from its append-only file once the other node took
// over again. After each, extauthz's traffic on the clients that lived
// through it (lookups, creates, revocations and the change feed, the rate
// limiter, the audit stream) must work as the restricted user, and in the
// end no node may have refused anything: what the clients send after a
// failover (reading the slot map again, loading scripts again on a master
// that never ran them, asking a new master for WAIT) and what the nodes send
// each other (replication, the Sentinels' reconfiguration) is all allowed.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/audit"
	auditredis "github.com/extauthz/extauthz/audit/redis"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
	"github.com/extauthz/extauthz/ratelimit"
	rlredis "github.com/extauthz/extauthz/ratelimit/redis"
)

// replicationUser is the user a replica logs in to its primary as, with what
// Redis documents replication needs; an operator adds it through
// REDIS_ACL_EXTRA.
const replicationUser = "replication"

// replication returns the ACL line of the replication user and the
// arguments that make a node log in as it when it replicates.
func replication(t *testing.T) (aclLine string, args []string) {
	t.Helper()
	password := randomSecret(t)
	return fmt.Sprintf("user %s on >%s -@all +psync +replconf +ping", replicationUser, password),
		[]string{"--masteruser", replicationUser, "--masterauth", password}
}

// failingOver is a topology whose primary of the key records can fail over.
type failingOver struct {
	// dial returns a new client logged in as the restricted user.
	dial func(t *testing.T) goredis.UniversalClient
	// recordsPrimary is the node that holds the key records now.
	recordsPrimary func(t *testing.T) *redistest.Server
	// onRecordsPrimary reports whether key lives on the records' primary.
	onRecordsPrimary func(t *testing.T, key string) bool
	// waitPromoted waits until a node other than old holds the records and
	// returns it and how long that took.
	waitPromoted func(t *testing.T, old *redistest.Server) (*redistest.Server, time.Duration)
	// rejoin, when set, makes old, a primary replaced while it was stopped
	// and now resumed, a replica of primary (a Cluster's node does so by
	// itself).
	rejoin func(t *testing.T, old, primary *redistest.Server)
	// waitWhole waits until every node is up and every primary's replicas
	// are in sync.
	waitWhole func(t *testing.T)
	// nodes are every node whose ACL log must stay empty: the data nodes and
	// the Sentinels.
	nodes []*redistest.Server
}

// exerciseFailovers fails the primary of the key records over twice, as the
// file comment says, and checks extauthz's traffic after each.
func exerciseFailovers(t *testing.T, d *deployed, tp failingOver) {
	ctx := t.Context()
	prefix := aclPrefix + "failover:"
	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	hasher := keystore.NewHasher([]byte("acl test pepper"))
	c := tp.dial(t)
	store := redisstore.New(c, prefix)
	confirming := redisstore.New(c, prefix, redisstore.ConfirmChanges(redisstore.Confirm{Replicas: 1, Timeout: time.Second}))
	// The change feed, read by another extauthz replica on a client of its own.
	watched := redisstore.New(tp.dial(t), prefix)
	for _, s := range []*redisstore.Store{store, confirming, watched} {
		t.Cleanup(func() { _ = s.Close() })
	}
	m := &keystore.Manager{Store: store, Format: f, Hasher: hasher}
	mc := &keystore.Manager{Store: confirming, Format: f, Hasher: hasher}
	spec := keystore.Spec{Name: "failover", Owner: "acl", Permissions: []string{"read:users"}}

	var fedMu sync.Mutex
	fed := map[keystore.Hash]bool{}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watching := make(chan error, 1)
	go func() {
		watching <- watched.Watch(watchCtx, func(h keystore.Hash) {
			fedMu.Lock()
			fed[h] = true
			fedMu.Unlock()
		})
	}()
	t.Cleanup(func() { stopWatch(); require.NoError(t, <-watching) })
	wasFed := func(h keystore.Hash) bool {
		fedMu.Lock()
		defer fedMu.Unlock()
		return fed[h]
	}
	fedWithin := func(h keystore.Hash, d time.Duration) bool {
		for deadline := time.Now().Add(d); !wasFed(h); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				return false
			}
		}
		return true
	}

	// The limiter denies on a Redis error, so that a refused command shows
	// as an error instead of a quiet fallback.
	lim, err := rlredis.New(c, rlredis.Options{Prefix: prefix, OnStoreError: ratelimit.PolicyDeny, Heartbeat: 50 * time.Millisecond, Timeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lim.Close() })
	var bucket string // its counters on the records' primary, which fails
	for i := 0; bucket == ""; i++ {
		require.Less(t, i, 200, "no bucket whose counters live on the records' primary")
		if b := "key_" + randomSecret(t)[:12]; tp.onRecordsPrimary(t, "{"+b+"}") {
			bucket = b
		}
	}
	// A limit this small is never leased: every check is counted in Redis.
	rate := ratelimit.Rate{N: 190, Window: time.Minute}
	allow := func() error {
		res, err := lim.Allow(ctx, []ratelimit.Limit{{Name: "key", Bucket: bucket, Rate: rate}})
		if err == nil && !res.Allowed {
			err = errors.New("denied")
		}
		return err
	}

	var secrets, ids []string
	create := func(mgr *keystore.Manager) (string, error) {
		secret, k, err := mgr.Create(ctx, spec, "test")
		if k != nil {
			secrets, ids = append(secrets, secret), append(ids, k.ID)
		}
		return secret, err
	}
	// feeding creates keys through mgr until the change feed reports one:
	// a change made while the feed's reader starts or recovers from a
	// failure is reported as "forget everything" instead.
	feeding := func(t *testing.T, mgr *keystore.Manager, when string) {
		for deadline := time.Now().Add(10 * time.Second); ; {
			secret, err := create(mgr)
			require.NoError(t, err, "a create %s", when)
			if fedWithin(hasher.Hash(secret), 100*time.Millisecond) {
				return
			}
			require.True(t, time.Now().Before(deadline), "the change feed reports no create %s", when)
		}
	}
	// Changes confirmed by the replica: the replication user is let in.
	feeding(t, mc, "confirmed by the records' replica")
	for range 5 {
		_, err := create(mc)
		require.NoError(t, err)
	}
	require.NoError(t, allow())

	// serving checks, after a failover, everything extauthz does on the
	// clients that lived through it.
	revoked := 0
	serving := func(t *testing.T, auditPrefix, when string) {
		// The first lookup waits for the clients to find the new primary.
		require.Eventually(t, func() bool {
			_, err := store.Lookup(ctx, hasher.Hash(secrets[len(secrets)-1]))
			return err == nil
		}, 15*time.Second, 20*time.Millisecond, "no lookup succeeds %s", when)
		for i, secret := range secrets {
			k, err := store.Lookup(ctx, hasher.Hash(secret))
			require.NoError(t, err, "key %d of %d, %s", i+1, len(secrets), when)
			require.Equal(t, ids[i], k.ID)
		}
		feeding(t, m, when)
		k, err := m.Revoke(ctx, ids[revoked], "test")
		require.NoError(t, err, "a revocation %s", when)
		require.NotNil(t, k.RevokedAt)
		require.True(t, fedWithin(hasher.Hash(secrets[revoked]), 5*time.Second), "the change feed does not report a revocation %s", when)
		revoked++
		listed, _, err := store.List(ctx, keystore.ListOptions{Owner: "acl", IncludeRevoked: true, Limit: 1000})
		require.NoError(t, err, "listing keys %s", when)
		require.Equal(t, len(ids), len(listed), "keys listed %s", when)

		// The limiter's breaker may still be open from the failover.
		require.Eventually(t, func() bool { return allow() == nil }, 10*time.Second, 20*time.Millisecond,
			"no rate-limit check is counted %s", when)
		errorsBefore := lim.Stats().StoreErrors
		for range 20 {
			require.NoError(t, allow(), "a rate-limit check %s", when)
		}
		require.Equal(t, errorsBefore, lim.Stats().StoreErrors, "rate-limit calls failed %s", when)
		require.Zero(t, lim.Stats().Leased, "checks answered from a lease, not by Redis")
		require.Eventually(t, func() bool { return lim.Replicas() == 1 }, 5*time.Second, 10*time.Millisecond,
			"the limiter's heartbeat does not count it %s", when)

		// What was written to the audit stream before is there, and the
		// stream takes and tails events.
		var past bytes.Buffer
		require.NoError(t, auditredis.Tail(ctx, c, auditPrefix, auditredis.TailOptions{KeyID: "key_before"}, &past), "audit tail %s", when)
		require.Equal(t, 1, strings.Count(past.String(), "\n"), "the audit event written before, %s: %s", when, past.String())
		exerciseAudit(t, c, auditPrefix)
	}

	// auditOnRecordsPrimary returns a prefix whose audit streams live on the
	// records' primary, with an event written there.
	round := 0
	auditOnRecordsPrimary := func(t *testing.T) string {
		round++
		for i := 0; ; i++ {
			require.Less(t, i, 500, "no audit prefix whose streams live on the records' primary")
			p := fmt.Sprintf("%saudit-%d-%d:", prefix, round, i)
			if tp.onRecordsPrimary(t, auditredis.StreamKey(p)) && tp.onRecordsPrimary(t, auditredis.ChangeStreamKey(p)) {
				ev := audit.Event{Time: time.Now(), Type: audit.TypeKeyUpdated, KeyID: "key_before", Owner: "acl", Actor: "cli"}
				require.NoError(t, auditredis.NewSink(c, p, 1000).Write(ctx, []audit.Event{ev}))
				// Replicated before the primary fails: a confirmed change
				// after it on the same primary.
				_, err := create(mc)
				require.NoError(t, err)
				return p
			}
		}
	}

	// replicatedAs checks that the replicas of primary log in as the
	// replication user (not as the test's admin).
	replicatedAs := func(t *testing.T, primary *redistest.Server) {
		clients, err := d.admin(t, primary).ClientList(ctx).Result()
		require.NoError(t, err)
		n := 0
		for _, line := range strings.Split(clients, "\n") {
			if strings.Contains(line, " flags=S ") {
				n++
				require.Contains(t, line, " user="+replicationUser+" ", "a replica of %s", primary.Addr)
			}
		}
		require.Equal(t, 1, n, "replicas connected to %s", primary.Addr)
	}

	// The ACL logs of nodes killed and restarted: a restart empties it.
	var lostLogs []string
	requireNoDenials := func(t *testing.T) {
		for _, e := range lostLogs {
			require.Fail(t, "a killed node had refused a command", e)
		}
		for _, n := range tp.nodes {
			require.Empty(t, aclDenials(t, d.admin(t, n)), "node %s refused commands", n.Addr)
		}
	}

	// The second failover starts from where the first left the topology.
	if !t.Run("the primary stopped, a replica promoted, the old primary back as a replica", func(t *testing.T) {
		auditPrefix := auditOnRecordsPrimary(t)
		old := tp.recordsPrimary(t)
		old.Pause()
		primary, took := tp.waitPromoted(t, old)
		t.Logf("failover: a replica took over in %s", took.Round(time.Millisecond))
		old.Resume()
		if tp.rejoin != nil {
			tp.rejoin(t, old, primary)
		}
		serving(t, auditPrefix, "after the failover")
		tp.waitWhole(t)
		replicatedAs(t, primary)
		_, err := create(mc)
		require.NoError(t, err, "a create confirmed by the old primary, now a replica")
		requireNoDenials(t)
	}) {
		return
	}
	t.Run("the primary killed, a replica promoted, the old primary restarted from its append-only file", func(t *testing.T) {
		auditPrefix := auditOnRecordsPrimary(t)
		old := tp.recordsPrimary(t)
		for _, e := range aclDenials(t, d.admin(t, old)) {
			lostLogs = append(lostLogs, old.Addr+": "+e)
		}
		old.Stop()
		primary, took := tp.waitPromoted(t, old)
		t.Logf("failover: a replica took over in %s", took.Round(time.Millisecond))
		serving(t, auditPrefix, "after the failover")
		_, err := create(mc)
		require.ErrorIs(t, err, keystore.ErrUnconfirmed, "the new primary has no replica left")
		require.ErrorContains(t, err, "0 of the 1 replicas", "WAIT was refused or failed instead of answering")

		old.Restart()
		persistence, err := old.Info("persistence")
		require.NoError(t, err)
		require.Equal(t, "1", persistence["aof_enabled"], "the restarted node keeps no append-only file")
		tp.waitWhole(t)
		replicatedAs(t, primary)
		require.Eventually(t, func() bool {
			n, err := confirming.ConfirmingReplicas(ctx)
			return err == nil && n == 1
		}, 15*time.Second, 20*time.Millisecond, "the restarted node does not confirm the records' writes")
		_, err = create(mc)
		require.NoError(t, err, "a create confirmed by the restarted node, now a replica")
		for i, secret := range secrets {
			_, err := store.Lookup(ctx, hasher.Hash(secret))
			require.NoError(t, err, "key %d of %d, after the restart", i+1, len(secrets))
		}
		requireNoDenials(t)
	})
}

// TestClusterFailoverWithTheShippedACL: a Cluster of 3 masters with a
// replica each, every node started from the shipped files with their
// persistence, the replicas logging in as the replication user.
func TestClusterFailoverWithTheShippedACL(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newDeployed(t, deployedRedis)
	replUser, replArgs := replication(t)
	node := d.options(t, false, replUser)
	node.Deployed = true // redis.conf's append-only file, which a restart loads
	node.Args = replArgs
	cluster := redistest.StartClusterOf(t, redistest.ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second, Node: node})
	slot := cluster.Slot(aclPrefix + "{keys}:all")
	exerciseFailovers(t, d, failingOver{
		dial: func(t *testing.T) goredis.UniversalClient {
			c := d.dialAsExtauthz(t, redisstore.Options{Addrs: cluster.Addrs(), Timeout: 2 * time.Second})
			require.IsType(t, &goredis.ClusterClient{}, c)
			return c
		},
		recordsPrimary: func(t *testing.T) *redistest.Server { return cluster.Master(slot) },
		onRecordsPrimary: func(t *testing.T, key string) bool {
			return cluster.Master(cluster.Slot(key)) == cluster.Master(slot)
		},
		waitPromoted: func(t *testing.T, old *redistest.Server) (*redistest.Server, time.Duration) {
			m, took, err := cluster.WaitPromoted(slot, old, 30*time.Second)
			require.NoError(t, err)
			return m, took
		},
		waitWhole: func(t *testing.T) { require.NoError(t, cluster.WaitHealthy(30*time.Second)) },
		nodes:     cluster.Nodes,
	})
}

// TestSentinelFailoverWithTheShippedACL: a primary and a replica started
// from the shipped files with their persistence, the replica logging in as
// the replication user, and three Sentinels, which log in to them as a
// Sentinel user of their own; extauthz logs in to the Sentinels as the
// Sentinel user operations.md documents.
func TestSentinelFailoverWithTheShippedACL(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	// A Sentinel rewrites the config file of each node it reconfigures
	// (CONFIG REWRITE): the nodes run a copy of the shipped files, so that
	// the repository's own are left alone. They share it: what differs
	// between them (port, directory, whom a replica follows) is on their
	// command lines, which win over the file when a node restarts.
	d := newDeployed(t, shippedCopy(t, nil))
	replUser, replArgs := replication(t)
	monitorPassword, sentinelPassword := randomSecret(t), randomSecret(t)
	node := d.options(t, false, replUser, sentinelMonitorUser(monitorPassword))
	node.Deployed = true
	node.Args = replArgs
	const master = "extauthz"
	set := redistest.StartSentinelSet(t, redistest.SentinelSetOptions{
		Node: node,
		Sentinel: redistest.SentinelOptions{
			MasterName: master, AuthUser: "sentinel", AuthPass: monitorPassword,
			DownAfter: time.Second, FailoverTimeout: 10 * time.Second,
			Config: []string{
				extauthzSentinelUser(sentinelPassword),
				fmt.Sprintf("user %s on >%s ~* &* +@all", adminUser, d.adminPassword),
			},
		},
	})
	nodes := append([]*redistest.Server{set.Primary}, set.Replicas...)
	exerciseFailovers(t, d, failingOver{
		dial: func(t *testing.T) goredis.UniversalClient {
			return d.dialAsExtauthz(t, redisstore.Options{
				Addrs: set.Addrs(), MasterName: master, Timeout: 2 * time.Second,
				SentinelUsername: "extauthz-sentinel", SentinelPassword: sentinelPassword,
			})
		},
		recordsPrimary: func(t *testing.T) *redistest.Server {
			m, err := set.Master()
			require.NoError(t, err)
			return m
		},
		onRecordsPrimary: func(*testing.T, string) bool { return true },
		waitPromoted: func(t *testing.T, old *redistest.Server) (*redistest.Server, time.Duration) {
			m, took, err := set.WaitPromoted(old, 30*time.Second)
			require.NoError(t, err)
			return m, took
		},
		rejoin: func(t *testing.T, old, primary *redistest.Server) {
			// The Sentinels would make it a replica once they next read its
			// INFO (every 10 s); the test does not wait for that.
			host, port, _ := strings.Cut(primary.Addr, ":")
			_, err := old.Query("REPLICAOF", host, port)
			require.NoError(t, err)
		},
		waitWhole: func(t *testing.T) {
			require.Eventually(t, func() bool {
				m, err := set.Master()
				if err != nil {
					return false
				}
				repl, err := m.Info("replication")
				return err == nil && repl["connected_slaves"] == strconv.Itoa(len(set.Replicas)) &&
					strings.Contains(repl["slave0"], "state=online")
			}, 30*time.Second, 20*time.Millisecond, "the Sentinel set does not heal")
		},
		nodes: append(nodes, set.Sentinels...),
	})
}
