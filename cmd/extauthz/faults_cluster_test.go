package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
)

// These tests run two extauthz servers on one Redis Cluster, or one
// Sentinel-managed primary, under a steady load of gRPC checks while the
// node that holds the key records fails in the ways those topologies live
// through: stopped and resumed, killed and replaced by its replica,
// restarted from its append-only file, its slots moved to another master.
// For each they hold extauthz to what faults_test.go holds it to on one
// server, and more: no check waits past store.redis.timeout plus
// checkMargin, no key whose create a replica confirmed is lost (one lost
// unconfirmed fails closed), a shared rate limit
// never allows more than N in any window, and a revocation after recovery
// reaches both servers within a second. They log what they measure on
// lines starting with "fault:".

// checkMargin is what a check may take past store.redis.timeout: the tenth
// of it a rate-limit call keeps after a lookup that took all of it
// (authz.Authorizer.SetStoreTime), then gRPC, the decision and the
// scheduling of two shared cores under the race detector. A second Redis
// wait (a retry, a rate-limit call with a timeout of its own) would add a
// whole timeout.
const checkMargin = 50 * time.Millisecond

// Rate limit of the metered key: N per W.
const (
	meteredN = 40
	meteredW = time.Second
)

// topo is a running topology: how the servers reach it, and the node that
// holds the key records.
type topo struct {
	name      string
	storeYAML func(prefix string) string
	cluster   *redistest.Cluster
	sentinels *redistest.SentinelSet
}

// recordsMaster is the node serving the key records of prefix now.
func (tp *topo) recordsMaster(t *testing.T, prefix string) *redistest.Server {
	t.Helper()
	if tp.cluster != nil {
		return tp.cluster.Master(tp.cluster.Slot(prefix + "{keys}:x"))
	}
	m, err := tp.sentinels.Master()
	require.NoError(t, err)
	return m
}

// bucketMaster is the node serving the rate-limit counters of key id.
func (tp *topo) bucketMaster(t *testing.T, id string) *redistest.Server {
	t.Helper()
	if tp.cluster != nil {
		return tp.cluster.Master(tp.cluster.Slot("{" + id + "}"))
	}
	m, err := tp.sentinels.Master()
	require.NoError(t, err)
	return m
}

// waitWhole waits until the topology has healed: every node up and in sync.
func (tp *topo) waitWhole(t *testing.T) {
	t.Helper()
	if tp.cluster != nil {
		require.NoError(t, tp.cluster.WaitHealthy(30*time.Second))
		return
	}
	require.Eventually(t, func() bool {
		m, err := tp.sentinels.Master()
		if err != nil {
			return false
		}
		repl, err := m.Info("replication")
		return err == nil && repl["connected_slaves"] == fmt.Sprint(len(tp.sentinels.Replicas))
	}, 30*time.Second, 20*time.Millisecond, "the Sentinel set does not heal")
}

// scenario is one fault in one topology, with everything it measured.
type scenario struct {
	t       *testing.T
	tp      *topo
	prefix  string
	servers []*faultRig // two extauthz servers sharing the store

	cached, uncached, metered string
	meteredID                 string
	victim                    *keystore.Key // revoked after recovery
	victimSecret              string
	durable                   map[string]string // secret -> id: made before the fault

	// What the fault's inject and heal note.
	node     *redistest.Server // the node that fails
	promoted time.Duration     // how long Redis took to promote a replica (0: no failover)
	notes    []string

	// fallbacks is how many rate-limit checks the servers decided without
	// Redis over the scenario's load, from its first check (their local
	// share, on top of Redis's count).
	fallbacks int
}

func (sc *scenario) note(format string, args ...any) {
	sc.notes = append(sc.notes, fmt.Sprintf(format, args...))
}

// topoFault is one way for the node holding the key records to fail.
type topoFault struct {
	name string
	// meteredOnVictim: choose the metered key so that its counters live on
	// the failing node (a Sentinel set has no other); otherwise elsewhere.
	meteredOnVictim bool
	// unavailable: uncached keys must get 503 while the fault lasts (not so
	// for a slot migration, which Redis serves throughout).
	unavailable bool
	inject      func(sc *scenario)
	// heal ends the fault, or waits for Redis to end it (a promotion).
	heal func(sc *scenario)
}

// hold is how long a fault that does not end by itself lasts: past the
// cache TTL, so that cached keys are served stale too.
const hold = 2 * time.Second

func clusterFaults() []topoFault {
	return []topoFault{
		{name: "a master stopped (SIGSTOP) and resumed", unavailable: true,
			inject: func(sc *scenario) {
				// No failover: this is the stopped master coming back.
				for _, r := range sc.tp.cluster.Replicas(sc.tp.cluster.Slot(sc.prefix + "{keys}:x")) {
					_, err := r.Query("CONFIG", "SET", "cluster-replica-no-failover", "yes")
					require.NoError(sc.t, err)
					sc.t.Cleanup(func() { _, _ = r.Query("CONFIG", "SET", "cluster-replica-no-failover", "no") })
				}
				sc.node.Pause()
			},
			heal: func(sc *scenario) { time.Sleep(hold); sc.node.Resume() }},
		{name: "a master killed, its replica promoted", unavailable: true,
			inject: func(sc *scenario) { sc.node.Stop() },
			heal: func(sc *scenario) {
				slot := sc.tp.cluster.Slot(sc.prefix + "{keys}:x")
				_, took, err := sc.tp.cluster.WaitPromoted(slot, sc.node, 30*time.Second)
				require.NoError(sc.t, err)
				sc.promoted = took
				// The dead master stays dead while the servers recover: nothing
				// answers them MOVED. It rejoins, as a replica, for the next
				// scenario.
				sc.t.Cleanup(sc.node.Restart)
			}},
		{name: "a master restarted from its append-only file", unavailable: true,
			inject: func(sc *scenario) {
				for _, r := range sc.tp.cluster.Replicas(sc.tp.cluster.Slot(sc.prefix + "{keys}:x")) {
					_, err := r.Query("CONFIG", "SET", "cluster-replica-no-failover", "yes")
					require.NoError(sc.t, err)
					sc.t.Cleanup(func() { _, _ = r.Query("CONFIG", "SET", "cluster-replica-no-failover", "no") })
				}
				sc.node.Stop()
			},
			heal: func(sc *scenario) {
				time.Sleep(hold)
				start := time.Now()
				sc.node.Restart()
				sc.note("restart and AOF load took %s", ms(time.Since(start)))
			}},
		{name: "the slots of the key records and of a rate limit moved to another master",
			meteredOnVictim: true,
			inject: func(sc *scenario) {
				c := sc.tp.cluster
				var to *redistest.Server
				for _, m := range c.Masters() {
					if m != sc.node {
						to = m
						break
					}
				}
				var migrations []*redistest.Migration
				for _, key := range []string{sc.prefix + "{keys}:x", "{" + sc.meteredID + "}"} {
					m, err := c.StartMigration(c.Slot(key), to)
					require.NoError(sc.t, err)
					migrations = append(migrations, m)
				}
				// Half the keys now answer ASK on the old master, half are
				// still served there, for a whole second of checks.
				moved := 0
				for _, m := range migrations {
					left, err := m.Move(200)
					require.NoError(sc.t, err)
					moved += 200 - left
				}
				time.Sleep(time.Second)
				for _, m := range migrations {
					n, err := m.Finish()
					require.NoError(sc.t, err)
					moved += n
				}
				sc.note("moved 2 slots (%d keys) from %s to %s", moved, sc.node.Addr, to.Addr)
			},
			heal: func(sc *scenario) { time.Sleep(500 * time.Millisecond) }},
	}
}

func sentinelFaults() []topoFault {
	return []topoFault{
		{name: "the primary stopped (SIGSTOP) and failed over", meteredOnVictim: true, unavailable: true,
			inject: func(sc *scenario) { sc.node.Pause() },
			heal: func(sc *scenario) {
				m, took, err := sc.tp.sentinels.WaitPromoted(sc.node, 30*time.Second)
				require.NoError(sc.t, err)
				sc.promoted = took
				sc.node.Resume()
				// The Sentinels would make it a replica of the new primary
				// within seconds; the next scenario needs that replica now.
				host, port, _ := strings.Cut(m.Addr, ":")
				_, err = sc.node.Query("REPLICAOF", host, port)
				require.NoError(sc.t, err)
			}},
		{name: "the primary killed and failed over, then back from its AOF as a replica", meteredOnVictim: true, unavailable: true,
			inject: func(sc *scenario) { sc.node.Stop() },
			heal: func(sc *scenario) {
				_, took, err := sc.tp.sentinels.WaitPromoted(sc.node, 30*time.Second)
				require.NoError(sc.t, err)
				sc.promoted = took
				sc.node.Restart()
			}},
	}
}

// TestFaultClusterUnderLoad: a 3-master Cluster with a replica each, two
// extauthz servers, the master of the key records failing in each way.
func TestFaultClusterUnderLoad(t *testing.T) {
	c := redistest.StartClusterOf(t, redistest.ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second,
		Node: redistest.Options{Args: []string{"--appendonly", "yes", "--appendfsync", "always", "--cluster-require-full-coverage", "no"}}})
	tp := &topo{name: "cluster", cluster: c, storeYAML: func(prefix string) string {
		return fmt.Sprintf("store: {backend: redis, redis: {addrs: [%s], timeout: %s, prefix: %q, %s}}\n", strings.Join(c.Addrs(), ", "), faultTimeout, prefix, faultConfirm)
	}}
	for i, f := range clusterFaults() {
		t.Run(f.name, func(t *testing.T) { runTopoScenario(t, tp, f, fmt.Sprintf("c%d:", i)) })
	}
}

// faultConfirm makes every change to a key, creates included, wait for one
// replica (up to 300 ms): a create that returned without an error must
// survive any failover, and one the replicas did not confirm must fail
// closed if a failover loses it.
const faultConfirm = "confirm_replicas: 1, confirm_timeout: 300ms"

// TestFaultSentinelUnderLoad: a primary, a replica and three Sentinels, two
// extauthz servers, the primary failing over.
func TestFaultSentinelUnderLoad(t *testing.T) {
	set := redistest.StartSentinelSet(t, redistest.SentinelSetOptions{
		Node:     redistest.Options{Args: []string{"--appendonly", "yes", "--appendfsync", "always"}},
		Sentinel: redistest.SentinelOptions{MasterName: "extauthz", DownAfter: time.Second, FailoverTimeout: 10 * time.Second},
	})
	tp := &topo{name: "sentinel", sentinels: set, storeYAML: func(prefix string) string {
		return fmt.Sprintf("store: {backend: redis, redis: {addrs: [%s], master_name: extauthz, timeout: %s, prefix: %q, %s}}\n",
			strings.Join(set.Addrs(), ", "), faultTimeout, prefix, faultConfirm)
	}}
	for i, f := range sentinelFaults() {
		t.Run(f.name, func(t *testing.T) { runTopoScenario(t, tp, f, fmt.Sprintf("s%d:", i)) })
	}
}

func runTopoScenario(t *testing.T, tp *topo, f topoFault, prefix string) {
	// Every goroutine the scenario starts must be gone once its cleanups
	// ran, but for the waiter of a node it restarted, which belongs to the
	// topology the test's scenarios share.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() {
		goleak.VerifyNone(t, append(redistest.LeakOptions(), ignore,
			goleak.IgnoreAnyFunction("github.com/extauthz/extauthz/internal/redistest.(*Server).launch.func1"))...)
	})
	tp.waitWhole(t)

	yaml := tp.storeYAML(prefix) + testRoutes + fmt.Sprintf("cache: {ttl: %s}\n", faultCacheTTL) +
		"keys: {max_per_owner: 0}\nrate_limit: {default: none, on_store_error: local}\n"
	sc := &scenario{t: t, tp: tp, prefix: prefix, durable: map[string]string{}}
	// Server 1's log is kept: what an operator reads during the fault. (It
	// starts last: go-redis logs to the logger of the last server started.)
	var logs syncbuf.Buffer
	for i := range 2 {
		out := serverOutput{logs: io.Discard, audit: io.Discard}
		if i == 1 {
			out.logs = &logs
		}
		cfg := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+yaml)
		rig := &faultRig{ts: startServerOut(t, cfg, out), http: &http.Client{Timeout: 5 * time.Second}}
		t.Cleanup(rig.http.CloseIdleConnections)
		sc.servers = append(sc.servers, rig)
	}
	a := sc.servers[0].ts
	// A replica that has just connected may still be loading the primary's
	// data, and acknowledges nothing until it has.
	require.Eventually(t, func() bool {
		n, err := a.mgr.Store.(*redisstore.Store).ConfirmingReplicas(context.Background())
		return err == nil && n >= 1
	}, 30*time.Second, 20*time.Millisecond, "no replica confirms the key records' writes")
	read := keystore.Spec{Permissions: []string{"read:users"}}
	// The keys the scenario starts with. Their creates are not under test:
	// on a machine busy with other tests one may outlast the 100 ms store
	// timeout, and is made again (a create that timed out after Redis ran
	// it leaves a key nobody uses).
	mk := func(name string, spec keystore.Spec) (string, *keystore.Key) {
		spec.Name = name
		for attempt := 1; ; attempt++ {
			secret, k, err := a.mgr.Create(context.Background(), spec, "test")
			if err == nil || !errors.Is(err, keystore.ErrUnavailable) || attempt == 5 {
				require.NoError(t, err, "creating the scenario's key %q", name)
				return secret, k
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	sc.cached, _ = mk("cached", read)
	sc.uncached, _ = mk("uncached", read)
	sc.victimSecret, sc.victim = mk("victim", read)
	for i := range 50 {
		secret, k := mk(fmt.Sprintf("durable-%d", i), read)
		sc.durable[secret] = k.ID
	}
	sc.node = tp.recordsMaster(t, prefix)
	// The metered key: its counters on the failing node, or elsewhere.
	metered := read
	meteredRate, perr := keystore.ParseRateLimit(fmt.Sprintf("%d/%s", meteredN, meteredW))
	require.NoError(t, perr)
	metered.RateLimit = meteredRate
	for i := 0; sc.metered == ""; i++ {
		require.Less(t, i, 50, "no key id whose counters land where the scenario needs them")
		secret, k := mk("metered", metered)
		if (tp.bucketMaster(t, k.ID) == sc.node) == f.meteredOnVictim {
			sc.metered, sc.meteredID = secret, k.ID
		}
	}
	for _, rig := range sc.servers {
		require.NotNil(t, rig.ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": sc.cached}).GetOkResponse())
		require.Equal(t, 200, rig.status(t, "/readyz"))
		// A check decided without Redis is limited to N over the replicas
		// of the last heartbeat (every 2 s), and its answer names that
		// share as its limit: until each server has seen the other's, it
		// would take all of N for itself, and its answers would look like
		// Redis's (judge tells them apart by it).
		require.Eventually(t, func() bool { return rig.metric(t, "extauthz_ratelimit_replicas") >= 2 }, 5*time.Second, 50*time.Millisecond)
	}
	// Counted from before the first check of the load: a check can fall
	// back in the baseline too (a Redis call that outlasts its timeout on a
	// busy machine), and judge counts the allowed checks from the first.
	fallbacksBefore := 0.0
	for _, rig := range sc.servers {
		fallbacksBefore += rig.metric(t, "extauthz_ratelimit_fallback_total")
	}

	// The load: on each server the cached and the metered key from the
	// start, the uncached key from the fault on; and keys created all along.
	faulted := make(chan struct{})
	var loads []*faultLoad
	for i, rig := range sc.servers {
		l := newFaultLoad(rig.ts)
		loads = append(loads, l)
		name := func(w string) string { return fmt.Sprintf("%s@%d", w, i) }
		l.run(name("cached"), "GET", "/api/users", sc.cached, nil)
		l.run(name("metered"), "GET", "/api/users", sc.metered, nil)
		l.run(name("uncached"), "GET", "/api/users", sc.uncached, faulted)
		// A public route asks no store: how long it takes is the machine's
		// own stall at that moment, which judge takes off the other checks.
		l.run(name(controlWorker), "GET", "/healthz", "", nil)
	}
	creator := startCreator(a)
	stopAll := func() []faultSample {
		var all []faultSample
		for _, l := range loads {
			all = append(all, l.Stop()...)
		}
		return all
	}
	defer stopAll()
	time.Sleep(300 * time.Millisecond) // a healthy baseline

	seen := operatorMetrics(t, sc.servers[1])
	logsFrom := len(logs.String())
	tFault := time.Now()
	f.inject(sc)
	close(faulted)
	f.heal(sc)
	tHealed := time.Now()

	// Recovery: on each server the uncached key is allowed and /readyz is 200.
	uncachedBack := make([]time.Duration, len(sc.servers))
	readyBack := make([]time.Duration, len(sc.servers))
	deadline := tHealed.Add(10 * time.Second)
	for done := false; !done && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		done = true
		for i, rig := range sc.servers {
			if readyBack[i] == 0 && rig.status(t, "/readyz") == 200 {
				readyBack[i] = time.Since(tHealed)
			}
			if uncachedBack[i] == 0 {
				for _, s := range loads[i].snapshot() {
					if strings.HasPrefix(s.worker, "uncached") && s.start.After(tHealed) && s.err == nil && s.code == "" {
						uncachedBack[i] = s.end.Sub(tHealed)
						break
					}
				}
			}
			done = done && readyBack[i] > 0 && uncachedBack[i] > 0
		}
	}
	time.Sleep(meteredW) // a window of checks on the healed store
	samples := stopAll()
	for name, v := range operatorMetrics(t, sc.servers[1]) {
		seen[name] = v - seen[name]
	}
	fallbacksAfter := 0.0
	for _, rig := range sc.servers {
		fallbacksAfter += rig.metric(t, "extauthz_ratelimit_fallback_total")
	}
	sc.fallbacks = int(fallbacksAfter - fallbacksBefore)
	logLines := logMessages(logs.String()[logsFrom:])
	created := creator.stop()
	for i := range sc.servers {
		require.NotZero(t, uncachedBack[i], "server %d: the uncached key is not allowed within 10 s of the fault's end", i)
		require.NotZero(t, readyBack[i], "server %d: /readyz is not 200 within 10 s of the fault's end", i)
	}

	// A revocation made now reaches both servers within a second.
	victim := map[string]string{"x-api-key": sc.victimSecret}
	for _, rig := range sc.servers {
		require.NotNil(t, rig.ts.check(t, "GET", "/api/users", victim).GetOkResponse())
	}
	// The old primary may not yet be the new one's replica, so the
	// revocation may be unconfirmed; it is in effect all the same.
	_, err := a.mgr.Revoke(context.Background(), sc.victim.ID, "test")
	if !errors.Is(err, keystore.ErrUnconfirmed) {
		require.NoError(t, err)
	}
	tRevoked := time.Now()
	var revokeReach time.Duration
	for _, rig := range sc.servers {
		require.Eventually(t, func() bool {
			code, _ := denial(t, rig.ts.check(t, "GET", "/api/users", victim))
			return code == "revoked_key"
		}, 2*time.Second, 5*time.Millisecond, "the revocation did not reach a server")
		revokeReach = max(revokeReach, time.Since(tRevoked))
	}
	assert.Less(t, revokeReach, time.Second, "a revocation after recovery reaches every server within 1 s")

	// Every key made before the fault is found in the store, and so is every
	// key whose create returned during it: a replica confirmed it. A create
	// the replicas did not confirm (the README's "Changes that a failover
	// cannot undo") still stands without a failover, but one the old
	// primary took in its last moment, or back from its AOF before it
	// became a replica, can go in a failover. Such a key must fail closed:
	// every server refuses it as invalid.
	found := func(secret, id string) (bool, error) {
		k, err := a.mgr.Store.Lookup(context.Background(), a.mgr.Hasher.Hash(secret))
		return err == nil && k.ID == id, err
	}
	lost := 0
	for secret, id := range sc.durable {
		if ok, err := found(secret, id); !ok {
			if lost++; lost <= 3 {
				t.Errorf("key %s, made before the fault, is not in the store after it: %v", id, err)
			}
		}
	}
	for secret, id := range created.confirmed {
		if ok, err := found(secret, id); !ok {
			if lost++; lost <= 3 {
				t.Errorf("key %s, whose create returned confirmed, is not in the store after the fault: %v", id, err)
			}
		}
	}
	lostInFailover := 0
	for secret, id := range created.unconfirmed {
		ok, err := found(secret, id)
		switch {
		case ok:
		case sc.promoted == 0:
			if lost++; lost <= 3 {
				t.Errorf("key %s, whose create returned, is not in the store after a fault without a failover: %v", id, err)
			}
		default:
			lostInFailover++
			for i, rig := range sc.servers {
				code, _ := denial(t, rig.ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret}))
				assert.Equal(t, "invalid_key", code, "server %d: key %s, lost in the failover, is not refused as invalid", i, id)
			}
		}
	}

	if !f.unavailable {
		// Redis serves a slot throughout its move: a change waits for the
		// records' slot to be handed over rather than failing.
		assert.Zero(t, created.failed, "creates failed while Redis stayed available")
	}
	sc.judge(samples, tFault, tHealed, f)
	for i := range sc.servers {
		t.Logf("fault: %s %-68s server %d: uncached key allowed %s after the fault ended, /readyz 200 after %s",
			tp.name, f.name, i, ms(uncachedBack[i]), ms(readyBack[i]))
	}
	t.Logf("fault: %s %-68s %d keys created before and %d during the fault (%d unconfirmed, %d of those lost in the failover and refused; %d creates failed); revocation reached both servers in %s",
		tp.name, f.name, len(sc.durable), len(created.confirmed)+len(created.unconfirmed), len(created.unconfirmed), lostInFailover, created.failed, ms(revokeReach))
	if sc.promoted > 0 {
		t.Logf("fault: %s %-68s Redis promoted a replica %s after the fault began", tp.name, f.name, ms(sc.promoted))
	}
	for _, n := range sc.notes {
		t.Logf("fault: %s %-68s %s", tp.name, f.name, n)
	}
	var grew []string
	for _, name := range slices.Sorted(maps.Keys(seen)) {
		grew = append(grew, fmt.Sprintf("%s +%.0f", name, seen[name]))
	}
	t.Logf("fault: %s %-68s server 1's metrics over the scenario: %s", tp.name, f.name, strings.Join(grew, ", "))
	t.Logf("fault: %s %-68s server 1 logged: %s", tp.name, f.name, strings.Join(logLines, " | "))
}

// operatorMetrics reads the metrics an operator watches during a Redis fault.
func operatorMetrics(t *testing.T, rig *faultRig) map[string]float64 {
	t.Helper()
	m := map[string]float64{}
	for _, name := range []string{
		`extauthz_decisions_total{code="unavailable",mode="enforce"}`, "extauthz_store_errors_total", "extauthz_cache_stale_total",
		"extauthz_ratelimit_fallback_total", "extauthz_ratelimit_store_errors_total",
	} {
		m[name] = rig.metric(t, name)
	}
	return m
}

// logMessages returns each distinct message of a JSON log, with its level
// and how often it came; a redis client message (logged with its own "msg"
// attribute) is cut before the first address or number in it.
func logMessages(text string) []string {
	counts := map[string]int{}
	var order []string
	for _, line := range strings.Split(text, "\n") {
		level := logField.FindStringSubmatch(line)
		msgs := logMsg.FindAllStringSubmatch(line, -1)
		if level == nil || len(msgs) == 0 {
			continue
		}
		msg := level[1] + " " + msgs[0][1]
		if len(msgs) > 1 {
			inner := msgs[1][1]
			if i := strings.IndexAny(inner, "0123456789"); i > 0 {
				inner = strings.TrimSpace(inner[:i]) + "…"
			}
			msg += ": " + inner
		}
		if counts[msg] == 0 {
			order = append(order, msg)
		}
		counts[msg]++
	}
	out := make([]string, len(order))
	for i, m := range order {
		out[i] = fmt.Sprintf("%s (×%d)", m, counts[m])
	}
	return out
}

var (
	logField = regexp.MustCompile(`"level":"([A-Z]+)"`)
	logMsg   = regexp.MustCompile(`"msg":"((?:[^"\\]|\\.)*)"`)
)

// judge holds every sample of the scenario to the rules and logs the figures.
func (sc *scenario) judge(samples []faultSample, tFault, tHealed time.Time, f topoFault) {
	t := sc.t
	bound := faultTimeout + checkMargin
	var rpcErrors, cachedDenied, over, excused, uncachedWrong, uncached503 int
	for _, s := range samples {
		if s.err != nil {
			if rpcErrors++; rpcErrors <= 3 {
				t.Errorf("%s: an RPC error %v after %v (a decision is never an RPC error)", s.worker, s.err, s.took())
			}
			continue
		}
		if s.took() > bound {
			// What is bounded is the wait on the stores: a check whose
			// excess a storeless check on the same server saw at the same
			// moment was held up by the machine, not by Redis.
			_, server, _ := strings.Cut(s.worker, "@")
			if stall := machineStall(s, samples, controlWorker+"@"+server); s.took()-stall <= bound {
				excused++
			} else if over++; over <= 3 {
				t.Errorf("%s: a check took %v at %v into the fault (the machine stalled storeless checks by %v then), past the bound %v",
					s.worker, s.took(), s.start.Sub(tFault).Round(time.Millisecond), stall, bound)
			}
		}
		switch {
		case strings.HasPrefix(s.worker, "cached") && s.code != "":
			if cachedDenied++; cachedDenied <= 3 {
				t.Errorf("%s: the cached key was denied %s at %v into the fault", s.worker, s.code, s.start.Sub(tFault).Round(time.Millisecond))
			}
		case strings.HasPrefix(s.worker, "uncached") && s.code != "":
			if s.code != "unavailable" || s.httpStatus != 503 || s.retryAfter != "1" || s.rpcStatus != int32(codes.Unavailable) {
				if uncachedWrong++; uncachedWrong <= 3 {
					t.Errorf("%s: the uncached key was denied %q (%d, Retry-After %q); the only denial it may get is 503 unavailable", s.worker, s.code, s.httpStatus, s.retryAfter)
				}
			} else {
				uncached503++
			}
		case strings.HasPrefix(s.worker, "metered") && s.code != "" && s.code != "rate_limited":
			t.Errorf("%s: the metered key was denied %q", s.worker, s.code)
		}
	}
	assert.Zero(t, rpcErrors, "RPC errors")
	assert.Zero(t, over, "checks past store.redis.timeout + %v", checkMargin)
	if excused > 0 {
		t.Logf("%d checks past the bound were matched by a storeless check stalled as long at the same moment (machine load, not Redis)", excused)
	}
	assert.Zero(t, cachedDenied, "denials of the cached key")
	assert.Zero(t, uncachedWrong, "denials of the uncached key other than 503 unavailable")
	if f.unavailable {
		assert.NotZero(t, uncached503, "the uncached key never got 503 while the records' node was down")
	}

	// The metered key: allowed checks per window of W, both servers together.
	// A check decided at some instant between its start and its end, so a
	// window of start times W minus the slowest check long holds only
	// checks decided within W.
	inFault := func(s faultSample) bool { return !s.start.Before(tFault) && s.start.Before(tHealed) }
	all := latencies(samples, func(s faultSample) bool { return s.err == nil })
	during := latencies(samples, func(s faultSample) bool { return s.err == nil && inFault(s) })
	// Who decided an allowed check is in its answer's X-RateLimit-Limit:
	// Redis names the key's limit, N; a server deciding without Redis names
	// its local share, N over the replicas of its last heartbeat, which is
	// below N once the servers have seen each other's (before the load).
	var allowed, byRedis []time.Time
	local := 0
	for _, s := range samples {
		if s.err != nil || !strings.HasPrefix(s.worker, "metered") || s.code != "" {
			continue
		}
		allowed = append(allowed, s.start)
		if share, err := strconv.Atoi(s.limit); err == nil && share > 0 && share < meteredN {
			local++
		} else {
			byRedis = append(byRedis, s.start)
		}
	}
	span := meteredW - all.max
	most, mostAt := mostWithin(allowed, span)
	mostByRedis, mostByRedisAt := mostWithin(byRedis, span)
	where := func(at time.Time) string {
		switch {
		case !at.Before(tHealed):
			return "after the fault"
		case !at.Before(tFault.Add(-span)):
			return "across the fault"
		}
		return "before the fault"
	}
	if f.meteredOnVictim && f.unavailable {
		// Its counters' node failed: each server limits locally to its share
		// (N/2) meanwhile, on top of what Redis counted in the same window.
		assert.LessOrEqual(t, most, 2*meteredN, "the metered key: more than N in Redis plus N/2 per server locally, in one window")
	} else {
		// No node is down, but a call can still fail (a slot moving key by
		// key answers TRYAGAIN to a script whose keys it has split, until
		// the timeout; a call that outlasts its timeout on a busy machine):
		// each check a server then decides locally may be allowed on top of
		// Redis's count, as the operations doc says of on_store_error:
		// local. None other may be: the checks Redis allowed are at most N
		// in every window, and every check allowed with a local share is
		// one the servers counted as decided without Redis.
		assert.LessOrEqual(t, mostByRedis, meteredN,
			"the metered key: more than N allowed by Redis in one window (%s)", where(mostByRedisAt))
		assert.LessOrEqual(t, local, sc.fallbacks,
			"the metered key: more checks allowed with a local share than the servers decided without Redis")
	}

	t.Logf("fault: %s %-68s checks: all %v; during the fault %v", sc.tp.name, f.name, all, during)
	t.Logf("fault: %s %-68s uncached key: %d × 503 during the fault; metered key (%d/%s): at most %d allowed in a %v window (%s), at most %d by Redis; %d allowed locally, of %d checks decided without Redis",
		sc.tp.name, f.name, uncached503, meteredN, meteredW, most, span.Round(time.Millisecond), where(mostAt), mostByRedis, local, sc.fallbacks)
}

// mostWithin returns the most of times (in any order) that lie in one
// window [a, a+span), and the a of the first such window.
func mostWithin(times []time.Time, span time.Duration) (int, time.Time) {
	times = slices.SortedFunc(slices.Values(times), time.Time.Compare)
	most, at := 0, time.Time{}
	for i := range times {
		j, _ := slices.BinarySearchFunc(times, times[i].Add(span), time.Time.Compare)
		if j-i > most {
			most, at = j-i, times[i]
		}
	}
	return most, at
}

// creator makes keys all along a scenario (each its own owner), as an
// operator's automation would, and remembers those whose create returned,
// confirmed by a replica or not.
type creator struct {
	ts      *testServer
	stopped chan struct{}
	done    sync.WaitGroup
	mu      sync.Mutex
	created createdKeys
}

// createdKeys are the creator's keys (secret -> id) and how many creates
// failed.
type createdKeys struct {
	confirmed, unconfirmed map[string]string
	failed                 int
}

func startCreator(ts *testServer) *creator {
	c := &creator{ts: ts, stopped: make(chan struct{}), created: createdKeys{confirmed: map[string]string{}, unconfirmed: map[string]string{}}}
	c.done.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-c.stopped:
				return
			case <-time.After(20 * time.Millisecond):
			}
			secret, k, err := ts.mgr.Create(context.Background(), keystore.Spec{
				Name: "made-during", Owner: fmt.Sprintf("creator-%d", i), Permissions: []string{"read:users"},
			}, "test")
			c.mu.Lock()
			switch {
			case err == nil:
				c.created.confirmed[secret] = k.ID
			case errors.Is(err, keystore.ErrUnconfirmed):
				c.created.unconfirmed[secret] = k.ID
			default:
				c.created.failed++
			}
			c.mu.Unlock()
		}
	})
	return c
}

// stop ends the creator and returns what it made.
func (c *creator) stop() createdKeys {
	close(c.stopped)
	c.done.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.created
}
