package redis_test

// These tests start redis-server exactly as the shipped deployments do
// (k8s/base/redis/start.sh with its redis.conf and users.acl; the compose demo
// mounts the same directory) and run all of extauthz's Redis traffic as the
// restricted user that ACL defines: the key store's conformance suite, the
// rate limiter with its heartbeat, the audit stream and its tail. They then
// prove the ACL is exactly right: nothing was refused (ACL LOG is empty, so a
// command missing from the ACL fails the test even where extauthz rides out
// the error), every command it grants was used (so none is there for
// nothing), and what an attacker holding the password would try is refused.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/audit"
	auditredis "github.com/extauthz/extauthz/audit/redis"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
	"github.com/extauthz/extauthz/keystore/storetest"
	"github.com/extauthz/extauthz/ratelimit"
	rlredis "github.com/extauthz/extauthz/ratelimit/redis"
)

// deployedRedis is the directory of the Redis that every shipped deployment
// runs (deploytest checks that Kubernetes and compose use these very files).
const deployedRedis = "../../k8s/base/redis"

// The ACL user extauthz logs in as, and the key prefix its ACL allows.
const (
	aclUser   = "extauthz"
	aclPrefix = "extauthz:"
)

// commandsOnlyClusterUses are granted for the Cluster client's routing (it
// reads the slot map and the command table, and follows an ASK redirect
// while a slot moves); a standalone client never sends them.
// TestClusterOverTLSWithTheShippedACL proves they are used.
var commandsOnlyClusterUses = []string{"cluster|slots", "command", "asking"}

// commandsOnlyHealthChecksUse are granted for the deployments' own Redis
// health check (docker-compose.yml runs `redis-cli --user extauthz ping`);
// extauthz's readiness reads a key of the slot its lookups read instead.
var commandsOnlyHealthChecksUse = []string{"ping"}

// deployed is a Redis started from the shipped files, with a test-only admin
// user (appended through REDIS_ACL_EXTRA, as an operator would add a
// replication user) to read the ACL log and command statistics.
type deployed struct {
	password      string
	adminPassword string
	launcher      string
}

const adminUser = "acltest-admin"

// newDeployed prepares passwords for a Redis started by dir/start.sh, which
// renders the ACL itself: the test never writes the extauthz user's line.
func newDeployed(t *testing.T, dir string) *deployed {
	t.Helper()
	d := &deployed{password: randomSecret(t), adminPassword: randomSecret(t), launcher: filepath.Join(dir, "start.sh")}
	if _, err := os.Stat(d.launcher); err != nil {
		t.Fatalf("the shipped Redis launcher: %v", err)
	}
	return d
}

func randomSecret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 24)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return hex.EncodeToString(b)
}

// options are the redistest options that start a node the deployed way;
// moreUsers are ACL lines appended after the test's admin user.
func (d *deployed) options(t *testing.T, tlsOn bool, moreUsers ...string) redistest.Options {
	t.Helper()
	dir := t.TempDir()
	extra := filepath.Join(dir, "extra.acl")
	lines := append([]string{fmt.Sprintf("user %s on >%s ~* &* +@all", adminUser, d.adminPassword)}, moreUsers...)
	require.NoError(t, os.WriteFile(extra, []byte(strings.Join(lines, "\n")+"\n"), 0o600))
	return redistest.Options{
		Launcher: d.launcher,
		Env: []string{
			"REDIS_PASSWORD=" + d.password,
			"REDIS_ACL_FILE=" + filepath.Join(dir, "users.acl"),
			"REDIS_ACL_EXTRA=" + extra,
		},
		TLS:      tlsOn,
		User:     adminUser,
		Password: d.adminPassword,
	}
}

// admin returns a client logged in as the test's admin user on srv.
func (d *deployed) admin(t *testing.T, srv *redistest.Server) *goredis.Client {
	t.Helper()
	o := &goredis.Options{Addr: srv.Addr, Username: adminUser, Password: d.adminPassword, MaxRetries: -1}
	if srv.TLS != nil {
		o.TLSConfig = srv.TLS.ClientConfig()
	}
	c := goredis.NewClient(o)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// grantedCommands reads the commands users.acl grants the extauthz user.
func grantedCommands(t *testing.T, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "users.acl"))
	require.NoError(t, err)
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "user" || f[1] != aclUser {
			continue
		}
		for _, rule := range f[2:] {
			if strings.HasPrefix(rule, "+") && !strings.HasPrefix(rule, "+@") {
				out = append(out, strings.ToLower(rule[1:]))
			}
		}
	}
	require.NotEmpty(t, out, "users.acl grants the %s user no command", aclUser)
	return out
}

// aclDenials returns the entries of a server's ACL log, each as
// "<reason> <object> by <username>" ("command hset by extauthz").
func aclDenials(t *testing.T, admin *goredis.Client) []string {
	t.Helper()
	entries, err := admin.Do(t.Context(), "ACL", "LOG").Slice()
	require.NoError(t, err)
	var out []string
	for _, e := range entries {
		m, ok := e.(map[any]any)
		require.True(t, ok, "an ACL LOG entry of type %T", e)
		out = append(out, fmt.Sprintf("%v %v by %v", m["reason"], m["object"], m["username"]))
	}
	return out
}

// commandCalls returns how often each command ran on srv, from INFO
// commandstats (commands run by scripts included).
func commandCalls(t *testing.T, admin *goredis.Client) map[string]int {
	t.Helper()
	info, err := admin.Info(t.Context(), "commandstats").Result()
	require.NoError(t, err)
	calls := map[string]int{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		for _, kv := range strings.Split(rest, ",") {
			if n, ok := strings.CutPrefix(kv, "calls="); ok {
				calls[strings.TrimPrefix(name, "cmdstat_")], _ = strconv.Atoi(n)
			}
		}
	}
	return calls
}

// dialAsExtauthz dials srv as the restricted user, the way the server does.
func (d *deployed) dialAsExtauthz(t *testing.T, o redisstore.Options) goredis.UniversalClient {
	t.Helper()
	o.Username, o.Password = aclUser, d.password
	if o.Timeout == 0 {
		// These tests prove what Redis allows, not how fast: a TLS handshake
		// under the race detector on a busy machine outlasts the defaults.
		o.DialTimeout, o.ReadTimeout, o.WriteTimeout = 10*time.Second, 5*time.Second, 5*time.Second
	}
	c, err := redisstore.Dial(o)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func tlsOptions(f *redistest.TLSFiles) redisstore.TLSOptions {
	return redisstore.TLSOptions{Enabled: true, CAFile: f.CA, CertFile: f.ClientCert, KeyFile: f.ClientKey}
}

func TestTheShippedACLIsEnoughAndNoMore(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newDeployed(t, deployedRedis)
	opts := d.options(t, false)
	opts.Deployed = true // redis.conf's own persistence and eviction settings
	srv := redistest.StartWith(t, opts)
	admin := d.admin(t, srv)
	dialExtauthz := func(t *testing.T) goredis.UniversalClient {
		return d.dialAsExtauthz(t, redisstore.Options{URL: srv.URL(0)})
	}

	t.Run("the key store keeps its whole contract", func(t *testing.T) {
		var n atomic.Int32
		storetest.Run(t, func(t *testing.T) func() (keystore.Store, error) {
			prefix := fmt.Sprintf("%sconformance-%d:", aclPrefix, n.Add(1))
			return func() (keystore.Store, error) { return redisstore.New(dialExtauthz(t), prefix), nil }
		})
	})
	t.Run("the rate limiter counts, leases, re-windows and heartbeats", func(t *testing.T) {
		exerciseLimiter(t, dialExtauthz(t), dialExtauthz(t))
	})
	t.Run("the audit stream takes events and tails them", func(t *testing.T) {
		exerciseAudit(t, dialExtauthz(t), aclPrefix)
	})
	t.Run("a change asks the replicas to confirm it", func(t *testing.T) {
		exerciseConfirm(t, dialExtauthz(t))
	})
	t.Run("nothing was refused and every granted command was used", func(t *testing.T) {
		require.Empty(t, aclDenials(t, admin), "Redis refused commands extauthz sent: the ACL misses them")
		requireAllUsed(t, []map[string]int{commandCalls(t, admin)}, append(commandsOnlyClusterUses, commandsOnlyHealthChecksUse...))
	})
	t.Run("a crash loses nothing that was written", func(t *testing.T) {
		// The scripts' writes are logged as transactions, which Redis
		// re-checks against the default user's ACL when it replays them.
		time.Sleep(1500 * time.Millisecond) // appendfsync everysec
		before := snapshot(t, admin)
		require.Greater(t, len(before), 100, "too few keys to compare")
		srv.Restart() // SIGKILL, then start.sh again
		after := snapshot(t, admin)
		require.Len(t, after, len(before), "%d of %d keys lost in a restart: the append-only file did not bring them back", len(before)-len(after), len(before))
		require.Equal(t, before, after, "keys changed in a restart")
	})
	t.Run("with the password, nothing else is allowed", func(t *testing.T) {
		requireRefused(t, dialExtauthz(t), admin)
	})
	t.Run("without the password, nothing at all", func(t *testing.T) {
		requireLockedOut(t, srv, d)
	})
}

// snapshot returns every key of the server that will not expire within a
// minute, with its type and content, for comparing two points in time.
func snapshot(t *testing.T, admin *goredis.Client) map[string]string {
	t.Helper()
	ctx := t.Context()
	out := map[string]string{}
	iter := admin.Scan(ctx, 0, "*", 1000).Iterator()
	for iter.Next(ctx) {
		key := iter.Val()
		ttl, err := admin.PTTL(ctx, key).Result()
		require.NoError(t, err)
		if ttl >= 0 && ttl < time.Minute {
			continue // may expire between the two snapshots
		}
		kind, err := admin.Type(ctx, key).Result()
		require.NoError(t, err)
		var v any
		switch kind {
		case "string":
			v, err = admin.Get(ctx, key).Result()
		case "hash":
			v, err = admin.HGetAll(ctx, key).Result()
		case "zset":
			v, err = admin.ZRangeWithScores(ctx, key, 0, -1).Result()
		case "stream":
			v, err = admin.XRange(ctx, key, "-", "+").Result()
		default:
			t.Fatalf("key %s has type %s, which extauthz never writes", key, kind)
		}
		require.NoError(t, err)
		out[key] = fmt.Sprintf("%s %v", kind, v)
	}
	require.NoError(t, iter.Err())
	return out
}

// exerciseConfirm creates and revokes a key through a store that asks one
// replica to confirm each change, on c, whose Redis has no replica: WAIT is
// allowed, and answers that none acknowledged the change.
func exerciseConfirm(t *testing.T, c goredis.UniversalClient) {
	t.Helper()
	s := redisstore.New(c, aclPrefix+"confirm:", redisstore.ConfirmChanges(redisstore.Confirm{Replicas: 1, Timeout: 50 * time.Millisecond}))
	t.Cleanup(func() { _ = s.Close() })
	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	m := &keystore.Manager{Store: s, Format: f, Hasher: keystore.NewHasher([]byte("acl test pepper"))}
	_, k, err := m.Create(t.Context(), keystore.Spec{Name: "confirm", Owner: "acl", Permissions: []string{"read:users"}}, "test")
	require.ErrorIs(t, err, keystore.ErrUnconfirmed)
	require.ErrorContains(t, err, "0 of the 1 replicas", "WAIT was refused or failed instead of answering")
	_, err = m.Revoke(t.Context(), k.ID, "test")
	require.ErrorIs(t, err, keystore.ErrUnconfirmed)
	require.ErrorContains(t, err, "0 of the 1 replicas", "WAIT was refused or failed instead of answering")
}

// exerciseMigration moves the key records' slot and two rate-limit
// counters' slots to another master the way a resharding does, and checks
// that extauthz keeps working on c while they move: keys are found wherever
// their records are (an ASK redirect), checks are counted, and a change or a
// check whose keys the move has split (Redis answers TRYAGAIN) waits for the
// move to end instead of failing.
func exerciseMigration(t *testing.T, cluster *redistest.Cluster, c goredis.UniversalClient) {
	ctx := t.Context()
	prefix := aclPrefix + "migration:"
	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	hasher := keystore.NewHasher([]byte("acl test pepper"))
	store := redisstore.New(c, prefix)
	confirming := redisstore.New(c, prefix, redisstore.ConfirmChanges(redisstore.Confirm{Replicas: 1, Timeout: 50 * time.Millisecond}))
	for _, s := range []*redisstore.Store{store, confirming} {
		t.Cleanup(func() { _ = s.Close() })
	}
	m := &keystore.Manager{Store: store, Format: f, Hasher: hasher}
	mc := &keystore.Manager{Store: confirming, Format: f, Hasher: hasher}
	// An expiry puts every index a revocation writes in place, so that
	// all of its keys are there to move.
	expires := time.Now().Add(time.Hour)
	spec := keystore.Spec{Name: "moving", Owner: "acl", Permissions: []string{"read:users"}, ExpiresAt: &expires}
	var secrets, ids []string
	for range 10 {
		secret, k, err := m.Create(ctx, spec, "test")
		require.NoError(t, err)
		secrets, ids = append(secrets, secret), append(ids, k.ID)
	}

	lim, err := rlredis.New(c, rlredis.Options{Prefix: prefix, OnStoreError: ratelimit.PolicyDeny, Timeout: 5 * time.Second})
	require.NoError(t, err)
	t.Cleanup(func() { _ = lim.Close() })
	rate := ratelimit.Rate{N: 1000, Window: time.Minute}
	keyLimit := func(bucket string) ratelimit.Limit { return ratelimit.Limit{Name: "key", Bucket: bucket, Rate: rate} }
	routeLimit := func(bucket string) ratelimit.Limit {
		return ratelimit.Limit{Name: "route", Bucket: bucket, Scope: "route:/api", Rate: rate}
	}
	allow := func(limits ...ratelimit.Limit) error {
		res, err := lim.Allow(ctx, limits)
		if err == nil && !res.Allowed {
			err = errors.New("denied")
		}
		return err
	}
	single, double := "key_"+randomSecret(t)[:12], "key_"+randomSecret(t)[:12]
	require.NoError(t, allow(keyLimit(single)))
	require.NoError(t, allow(keyLimit(double)))

	// The records' slot moves part of its keys; each counter's slot moves
	// all of its keys, but is not handed over yet.
	var migrations []*redistest.Migration
	for i, key := range []string{prefix + "{keys}:all", "{" + single + "}", "{" + double + "}"} {
		slot := cluster.Slot(key)
		var to *redistest.Server
		for _, n := range cluster.Masters() {
			if n != cluster.Master(slot) {
				to = n
				break
			}
		}
		mig, err := cluster.StartMigration(slot, to)
		require.NoError(t, err)
		migrations = append(migrations, mig)
		left, err := mig.Move(0)
		require.NoError(t, err)
		require.Positive(t, left)
		if i == 0 {
			left, err = mig.Move(left / 2)
			require.Positive(t, left)
		} else {
			left, err = mig.Move(left)
			require.Zero(t, left)
		}
		require.NoError(t, err)
	}

	// Meanwhile: every key is found and checks of one limit are counted.
	lookAll := func(when string) {
		t.Helper()
		for i, secret := range secrets {
			k, err := store.Lookup(ctx, hasher.Hash(secret))
			require.NoError(t, err, "key %d of %d, %s", i+1, len(secrets), when)
			require.Equal(t, ids[i], k.ID)
		}
		listed, _, err := store.List(ctx, keystore.ListOptions{Owner: "acl", IncludeRevoked: true})
		require.NoError(t, err, "listing keys %s", when)
		require.GreaterOrEqual(t, len(listed), len(ids), "listing keys %s", when)
	}
	lookAll("the records' slot half moved")
	require.NoError(t, allow(keyLimit(single)), "a check whose counter moved")

	// Once every record has moved, a change of existing records is made on
	// the new master (an ASK redirect), and confirmed there.
	left, err := migrations[0].Move(1 << 20)
	require.NoError(t, err)
	require.Zero(t, left)
	lookAll("every record moved, the slot not handed over")
	_, err = mc.Revoke(ctx, ids[1], "test")
	require.ErrorIs(t, err, keystore.ErrUnconfirmed, "a revocation whose replicas confirm it, every record moved")
	require.ErrorContains(t, err, "0 of the 1 replicas", "WAIT was not asked on the new master")

	// So is a change of existing records without confirmation: the Cluster
	// client follows the ASK itself.
	_, err = m.Revoke(ctx, ids[0], "test")
	require.NoError(t, err, "a revocation, every record moved")

	// These wait for the moves to end: a new record, or a route's counter
	// beside a key's that moved, needs every key of its call on one node,
	// which Redis refuses until the slot is handed over.
	type outcome struct {
		what string
		err  error
	}
	done := make(chan outcome, 3)
	var started sync.WaitGroup
	started.Add(cap(done))
	go func() {
		started.Done()
		_, _, err := m.Create(ctx, spec, "test")
		done <- outcome{"a create", err}
	}()
	go func() {
		started.Done()
		_, _, err := mc.Create(ctx, spec, "test")
		if errors.Is(err, keystore.ErrUnconfirmed) {
			err = nil // stored, but this Cluster has no replica to confirm it
		}
		done <- outcome{"a create whose replicas confirm it", err}
	}()
	go func() {
		started.Done()
		done <- outcome{"a check of two limits", allow(keyLimit(double), routeLimit(double))}
	}()
	started.Wait()
	time.Sleep(300 * time.Millisecond)
	require.Zero(t, len(done), "a call Redis refuses until the moves end returned before they ended")
	for _, mig := range migrations {
		_, err := mig.Finish()
		require.NoError(t, err)
	}
	for range cap(done) {
		o := <-done
		require.NoError(t, o.err, "%s while the slots moved", o.what)
	}
	for _, id := range ids[:2] {
		k, err := store.Get(ctx, id)
		require.NoError(t, err)
		require.NotNil(t, k.RevokedAt, "the revocations made while the records moved")
	}
	lookAll("after the move")
	require.Zero(t, lim.Stats().StoreErrors)
	require.Zero(t, lim.Stats().Fallback)
}

// requireAllUsed fails for every command the ACL grants that no server
// counted a call of, except those in exempt.
func requireAllUsed(t *testing.T, perServer []map[string]int, exempt []string) {
	t.Helper()
	for _, cmd := range grantedCommands(t, deployedRedis) {
		if slices.Contains(exempt, cmd) {
			continue
		}
		n := 0
		for _, calls := range perServer {
			n += calls[cmd]
		}
		require.Positive(t, n, "users.acl grants %q, but nothing extauthz does sent it: remove it from the ACL", cmd)
	}
}

// exerciseLimiter runs the Redis rate limiter through every path of its two
// scripts on c (and c2, a second replica): counting and denying, dropping
// sub-windows that aged out, recounting a bucket whose window changed,
// leasing a large limit, heartbeats, and leaving the heartbeat set.
func exerciseLimiter(t *testing.T, c, c2 goredis.UniversalClient) {
	ctx := t.Context()
	newLimiter := func(c goredis.UniversalClient) *rlredis.Limiter {
		// Deny on a Redis error, so that a refused command fails the test
		// here instead of falling back quietly.
		lim, err := rlredis.New(c, rlredis.Options{
			Prefix: aclPrefix, OnStoreError: ratelimit.PolicyDeny, Heartbeat: 50 * time.Millisecond, Timeout: 5 * time.Second,
		})
		require.NoError(t, err)
		return lim
	}
	lim, other := newLimiter(c), newLimiter(c2)
	bucket := "key_" + randomSecret(t)[:12]
	allow := func(rate ratelimit.Rate, b string) bool {
		t.Helper()
		res, err := lim.Allow(ctx, []ratelimit.Limit{{Name: "key", Bucket: b, Rate: rate}})
		require.NoError(t, err)
		return res.Allowed
	}

	small := ratelimit.Rate{N: 3, Window: time.Minute}
	for i := range 3 {
		require.True(t, allow(small, bucket), "request %d of 3/m", i+1)
	}
	require.False(t, allow(small, bucket), "the 4th request of 3/m")

	// The same bucket under another window (a key's rate_limit changed):
	// the count is carried over (written at once, the check denied).
	require.False(t, allow(ratelimit.Rate{N: 3, Window: 2 * time.Minute}, bucket))
	require.True(t, allow(ratelimit.Rate{N: 4, Window: 3 * time.Minute}, bucket))

	// A steady stream for longer than the window: sub-windows that aged
	// out are dropped from the counter.
	steady := ratelimit.Rate{N: 1000, Window: time.Second}
	for range 14 {
		require.True(t, allow(steady, bucket+"-steady"))
		time.Sleep(100 * time.Millisecond)
	}

	// A large limit is leased: several requests counted in one call.
	big := ratelimit.Rate{N: 1_000_000, Window: time.Minute}
	for i := 0; lim.Stats().Leased == 0; i++ {
		require.Less(t, i, 1000, "no request of a large limit was answered from a lease")
		require.True(t, allow(big, bucket+"-big"))
	}

	require.Eventually(t, func() bool { return lim.Replicas() == 2 && other.Replicas() == 2 },
		5*time.Second, 10*time.Millisecond, "the two replicas do not see each other's heartbeat")
	require.NoError(t, other.Close())
	require.NoError(t, lim.Close())
	for _, l := range []*rlredis.Limiter{lim, other} {
		require.Zero(t, l.Stats().StoreErrors, "Redis refused or failed rate-limit calls")
		require.Zero(t, l.Stats().Fallback)
	}
}

// exerciseAudit writes events to the streams of prefix on c and reads them
// back, the past ones and, following, a new one.
func exerciseAudit(t *testing.T, c goredis.UniversalClient, prefix string) {
	ctx := t.Context()
	sink := auditredis.NewSink(c, prefix, 1000)
	ev := func(n int) audit.Event {
		return audit.Event{Time: time.Now(), Type: audit.TypeKeyUpdated, KeyID: "key_acl", KeyName: strconv.Itoa(n), Owner: "default", Actor: "cli"}
	}
	require.NoError(t, sink.Write(ctx, []audit.Event{ev(1), ev(2)}))

	var past bytes.Buffer
	require.NoError(t, auditredis.Tail(ctx, c, prefix, auditredis.TailOptions{KeyID: "key_acl"}, &past))
	require.Equal(t, 2, strings.Count(past.String(), "\n"), "the past events: %s", past.String())

	followCtx, stop := context.WithCancel(ctx)
	r, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- auditredis.Tail(followCtx, c, prefix, auditredis.TailOptions{Count: -1, Follow: true}, w)
		w.Close()
	}()
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	// Tail may start reading after a write made too early: keep writing
	// until one arrives.
	var got string
	for i := 0; got == ""; i++ {
		require.Less(t, i, 50, "audit tail -f saw no new event")
		require.NoError(t, sink.Write(ctx, []audit.Event{ev(3)}))
		select {
		case got = <-lines:
		case <-time.After(100 * time.Millisecond):
		}
	}
	require.Contains(t, got, `"key_name":"3"`)
	stop()
	require.NoError(t, <-done)
	for range lines { // drain until Tail's writer is closed
	}
}

// requireRefused tries, as the extauthz user, what an attacker holding its
// password would, and expects Redis to refuse each: commands it has no need
// for, keys outside its prefix, and both again from inside a script.
func requireRefused(t *testing.T, c goredis.UniversalClient, admin *goredis.Client) {
	ctx := t.Context()
	require.NoError(t, admin.Set(ctx, "other:secret", "kept", 0).Err())
	require.NoError(t, c.Set(ctx, aclPrefix+"mine", "1", 0).Err(), "a key under its own prefix")

	attempts := [][]any{
		{"FLUSHALL"}, {"FLUSHDB"}, {"KEYS", "*"}, {"SCAN", "0"}, {"RANDOMKEY"},
		{"CONFIG", "GET", "*"}, {"CONFIG", "SET", "maxmemory-policy", "allkeys-lru"}, {"CONFIG", "SET", "appendonly", "no"},
		{"CONFIG", "REWRITE"}, {"DEBUG", "SLEEP", "0"}, {"SHUTDOWN", "NOSAVE"}, {"SAVE"}, {"BGSAVE"}, {"BGREWRITEAOF"},
		{"REPLICAOF", "127.0.0.1", "1"}, {"MODULE", "LIST"}, {"ACL", "SETUSER", aclUser, "+@all", "~*"}, {"ACL", "LIST"},
		{"ACL", "WHOAMI"}, {"CLIENT", "LIST"}, {"CLIENT", "KILL", "TYPE", "normal"}, {"INFO"}, {"SELECT", "1"},
		{"SWAPDB", "0", "1"}, {"SCRIPT", "FLUSH"}, {"SCRIPT", "LOAD", "return 1"}, {"FUNCTION", "FLUSH"},
		{"PUBLISH", "extauthz:changes", "x"}, {"OBJECT", "ENCODING", aclPrefix + "mine"}, {"RENAME", aclPrefix + "mine", "other:x"},
		{"COPY", aclPrefix + "mine", "other:x"}, {"MOVE", aclPrefix + "mine", "1"}, {"DUMP", aclPrefix + "mine"},
		{"EXPIRE", aclPrefix + "mine", "1"}, {"PERSIST", aclPrefix + "mine"}, {"INCR", aclPrefix + "mine"},
		{"MIGRATE", "127.0.0.1", "1", aclPrefix + "mine", "0", "1000"},
		// Keys outside the prefix, for every kind of write and read it has.
		{"GET", "other:secret"}, {"SET", "other:secret", "stolen"}, {"DEL", "other:secret"}, {"EXISTS", "other:secret"},
		{"MGET", aclPrefix + "mine", "other:secret"}, {"SET", "extauthz", "x"}, {"SET", "extauthz-other:x", "x"},
		{"HSET", "other:h", "f", "v"}, {"ZADD", "other:z", "1", "m"}, {"XADD", "other:s", "*", "f", "v"},
		{"PEXPIRE", "other:secret", "1"},
		// And from inside a script, which runs with the caller's rights.
		{"EVAL", "return redis.call('FLUSHALL')", "0"},
		{"EVAL", "return redis.call('XADD', 'other:s', '*', 'f', 'v')", "0"},
		{"EVAL", "return redis.call('KEYS', '*')", "0"},
		{"EVAL", "return redis.call('SET', 'other:secret', 'stolen')", "0"},
		{"EVAL", "return redis.call('GET', KEYS[1])", "1", "other:secret"},
		{"EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "1", "other:secret"},
	}
	for _, args := range attempts {
		err := c.Do(ctx, args...).Err()
		require.Error(t, err, "%v was allowed", args)
		msg := err.Error()
		byACL := strings.HasPrefix(msg, "NOPERM") || strings.Contains(msg, "The user executing the script can't")
		// DEBUG and MODULE are off in redis.conf, which Redis checks first.
		byConfig := strings.HasSuffix(msg, "command not allowed. If the enable-debug-command option is set to \"local\", you can run it from a local connection, otherwise you need to set this option in the configuration file, and then restart the server.") ||
			strings.Contains(msg, "MODULE command not allowed")
		require.True(t, byACL || byConfig, "%v: refused, but not by the ACL: %v", args, err)
	}
	v, err := admin.Get(ctx, "other:secret").Result()
	require.NoError(t, err)
	require.Equal(t, "kept", v, "a key outside the prefix changed")
	n, err := admin.Exists(ctx, aclPrefix+"mine").Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the user's own key is gone")
}

// requireLockedOut: without the extauthz password no one can run anything;
// the default user is off.
func requireLockedOut(t *testing.T, srv *redistest.Server, d *deployed) {
	ctx := t.Context()
	for _, tt := range []struct{ name, user, password, want string }{
		{"no login", "", "", "NOAUTH"},
		{"the default user with any password", "default", d.password, "WRONGPASS"},
		{"the extauthz user with a wrong password", aclUser, d.password + "x", "WRONGPASS"},
		{"the extauthz user with no password", aclUser, "", "NOAUTH"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := goredis.NewClient(&goredis.Options{Addr: srv.Addr, Username: tt.user, Password: tt.password, MaxRetries: -1, DisableIdentity: true})
			defer c.Close()
			for _, cmd := range []*goredis.StatusCmd{c.Ping(ctx), c.Set(ctx, aclPrefix+"x", "1", 0), c.FlushAll(ctx)} {
				require.ErrorContains(t, cmd.Err(), tt.want)
			}
		})
	}
}

// shippedCopy copies the shipped Redis files to a directory of the test's,
// through edit (when not nil), and returns the directory.
func shippedCopy(t *testing.T, edit func(name string, data []byte) []byte) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"start.sh", "redis.conf", "users.acl"} {
		data, err := os.ReadFile(filepath.Join(deployedRedis, name))
		require.NoError(t, err)
		if edit != nil {
			data = edit(name, data)
		}
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), data, 0o755))
	}
	return dir
}

// TestAMissingCommandIsCaught: a command extauthz needs but the ACL lacks
// shows in the ACL log even where extauthz rides the error out (the change
// watcher retries, the limiter falls back), so the checks above fail.
func TestAMissingCommandIsCaught(t *testing.T) {
	dir := shippedCopy(t, func(name string, data []byte) []byte {
		if name == "users.acl" {
			for _, cmd := range []string{" +xread", " +set "} {
				require.Contains(t, string(data), cmd)
				data = bytes.Replace(data, []byte(cmd), []byte(" "), 1)
			}
		}
		return data
	})
	d := newDeployed(t, dir)
	srv := redistest.StartWith(t, d.options(t, false))
	admin := d.admin(t, srv)
	c := d.dialAsExtauthz(t, redisstore.Options{URL: srv.URL(0)})

	var feedLog bytes.Buffer
	store := redisstore.New(c, aclPrefix, redisstore.LogTo(slog.New(slog.NewTextHandler(&feedLog, nil))))
	t.Cleanup(func() { _ = store.Close() })
	watchCtx, stop := context.WithTimeout(t.Context(), 700*time.Millisecond)
	defer stop()
	require.NoError(t, store.Watch(watchCtx, func(keystore.Hash) {}), "the watcher rides Redis errors out")
	// The feed failed on every wait: the operator is told, once.
	require.Equal(t, 1, strings.Count(feedLog.String(), "key change feed: Redis failed"), "%s", feedLog.String())
	require.Contains(t, feedLog.String(), "NOPERM")
	require.NotContains(t, feedLog.String(), "reading changes from Redis again")

	lim, err := rlredis.New(c, rlredis.Options{Prefix: aclPrefix, Timeout: 5 * time.Second})
	require.NoError(t, err)
	res, err := lim.Allow(t.Context(), []ratelimit.Limit{{Name: "key", Bucket: "b", Rate: ratelimit.Rate{N: 5, Window: time.Minute}}})
	require.NoError(t, err)
	require.True(t, res.Allowed, "the limiter falls back to counting locally")
	require.NoError(t, lim.Close())
	require.NotZero(t, lim.Stats().Fallback)

	log := strings.Join(aclDenials(t, admin), "\n")
	for _, cmd := range []string{"xread", "set"} {
		require.Contains(t, log, "command "+cmd+" by "+aclUser, "the ACL log does not name the missing %s", cmd)
	}
}

// TestClusterOverTLSWithTheShippedACL: a 3-node Cluster started from the
// shipped files, TLS on every link (clients and cluster bus) with client
// certificates, and extauthz as the restricted user.
func TestClusterOverTLSWithTheShippedACL(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newDeployed(t, deployedRedis)
	cluster := redistest.StartClusterWith(t, 3, d.options(t, true))
	dialCluster := func(t *testing.T) goredis.UniversalClient {
		c := d.dialAsExtauthz(t, redisstore.Options{Addrs: cluster.Addrs(), TLS: tlsOptions(cluster.TLS)})
		require.IsType(t, &goredis.ClusterClient{}, c)
		return c
	}
	t.Run("the key store keeps its whole contract", func(t *testing.T) {
		var n atomic.Int32
		storetest.Run(t, func(t *testing.T) func() (keystore.Store, error) {
			prefix := fmt.Sprintf("%sconformance-%d:", aclPrefix, n.Add(1))
			return func() (keystore.Store, error) { return redisstore.New(dialCluster(t), prefix), nil }
		})
	})
	t.Run("the rate limiter", func(t *testing.T) { exerciseLimiter(t, dialCluster(t), dialCluster(t)) })
	t.Run("the audit stream", func(t *testing.T) { exerciseAudit(t, dialCluster(t), aclPrefix) })
	t.Run("confirming a change", func(t *testing.T) { exerciseConfirm(t, dialCluster(t)) })
	t.Run("while slots move to another master", func(t *testing.T) { exerciseMigration(t, cluster, dialCluster(t)) })
	t.Run("nothing was refused and every granted command was used", func(t *testing.T) {
		var calls []map[string]int
		for _, n := range cluster.Nodes {
			admin := d.admin(t, n)
			require.Empty(t, aclDenials(t, admin), "node %s refused commands extauthz sent", n.Addr)
			calls = append(calls, commandCalls(t, admin))
		}
		requireAllUsed(t, calls, commandsOnlyHealthChecksUse)
	})
	t.Run("without a client certificate, no connection", func(t *testing.T) {
		o := tlsOptions(cluster.TLS)
		o.CertFile, o.KeyFile = "", ""
		c := d.dialAsExtauthz(t, redisstore.Options{Addrs: cluster.Addrs(), TLS: o})
		require.Error(t, c.Ping(t.Context()).Err())
	})
}

// sentinelMonitorUser is the ACL line, on each node, of the user a Sentinel
// logs in as to watch it and to reconfigure it in a failover: what Redis
// documents a Sentinel needs.
func sentinelMonitorUser(password string) string {
	return "user sentinel on >" + password +
		" allchannels -@all +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish +info +client|setname +client|kill +script|kill"
}

// extauthzSentinelUser is the ACL line, on each Sentinel, of the user
// extauthz asks it for the primary as: what docs/operations.md documents.
func extauthzSentinelUser(password string) string {
	return "user extauthz-sentinel on >" + password +
		" resetchannels &+switch-master &+replica-reconf-done -@all +ping +sentinel|get-master-addr-by-name +sentinel|sentinels +subscribe"
}

// TestSentinelOverTLSWithACLUsers: a primary started from the shipped files
// and a Sentinel, both over TLS with client certificates, each with its own
// ACL: extauthz logs in to the Sentinel as one user and to the primary as
// another.
func TestSentinelOverTLSWithACLUsers(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	d := newDeployed(t, deployedRedis)
	monitorPassword, sentinelPassword := randomSecret(t), randomSecret(t)
	// The Sentinel's own user on the primary (what Redis documents it needs).
	opts := d.options(t, true, sentinelMonitorUser(monitorPassword))
	primary := redistest.StartWith(t, opts)

	const master = "extauthz"
	sentinel := redistest.StartSentinel(t, primary, redistest.SentinelOptions{
		MasterName: master, AuthUser: "sentinel", AuthPass: monitorPassword,
		Config: []string{
			"user default off",
			extauthzSentinelUser(sentinelPassword),
			fmt.Sprintf("user %s on >%s ~* &* +@all", adminUser, d.adminPassword),
		},
	})
	sentinelOpts := func(user, password string) redisstore.Options {
		return redisstore.Options{
			Addrs: []string{sentinel.Addr}, MasterName: master, TLS: tlsOptions(primary.TLS),
			SentinelUsername: user, SentinelPassword: password,
		}
	}
	c := d.dialAsExtauthz(t, sentinelOpts("extauthz-sentinel", sentinelPassword))
	require.NoError(t, c.Ping(t.Context()).Err())

	t.Run("the key store keeps its whole contract", func(t *testing.T) {
		var n atomic.Int32
		storetest.Run(t, func(t *testing.T) func() (keystore.Store, error) {
			prefix := fmt.Sprintf("%sconformance-%d:", aclPrefix, n.Add(1))
			return func() (keystore.Store, error) {
				return redisstore.New(d.dialAsExtauthz(t, sentinelOpts("extauthz-sentinel", sentinelPassword)), prefix), nil
			}
		})
	})
	t.Run("the rate limiter", func(t *testing.T) {
		exerciseLimiter(t, c, d.dialAsExtauthz(t, sentinelOpts("extauthz-sentinel", sentinelPassword)))
	})
	t.Run("the audit stream", func(t *testing.T) { exerciseAudit(t, c, aclPrefix) })
	t.Run("neither the primary nor the Sentinel refused anything extauthz sent", func(t *testing.T) {
		for _, e := range aclDenials(t, d.admin(t, primary)) {
			require.NotContains(t, e, " by "+aclUser, "the primary refused a command extauthz sent")
		}
		require.Empty(t, aclDenials(t, d.admin(t, sentinel)), "the Sentinel refused a command extauthz sent")
	})
	for _, tt := range []struct{ name, user, password string }{
		{"a wrong Sentinel password", "extauthz-sentinel", sentinelPassword + "x"},
		{"no Sentinel login", "", ""},
		{"the primary's password at the Sentinel", aclUser, d.password},
	} {
		t.Run(tt.name+" finds no primary", func(t *testing.T) {
			c := d.dialAsExtauthz(t, sentinelOpts(tt.user, tt.password))
			require.Error(t, c.Ping(t.Context()).Err())
		})
	}
}

// TestTheShippedRedisNeverEvicts: at maxmemory, redis.conf's noeviction
// refuses writes rather than drop a key record.
func TestTheShippedRedisNeverEvicts(t *testing.T) {
	d := newDeployed(t, deployedRedis)
	opts := d.options(t, false)
	opts.Deployed = true
	srv := redistest.StartWith(t, opts)
	admin := d.admin(t, srv)
	store := redisstore.New(d.dialAsExtauthz(t, redisstore.Options{URL: srv.URL(0)}), aclPrefix)
	t.Cleanup(func() { _ = store.Close() })
	ctx := t.Context()

	hasher := keystore.NewHasher([]byte("pepper"))
	create := func() (*keystore.Key, keystore.Hash) {
		t.Helper()
		now := time.Now().UTC()
		id, err := keystore.NewID(now)
		require.NoError(t, err)
		k := &keystore.Key{ID: id, Name: "durable", Owner: "default", Permissions: []string{"read:users"}, CreatedAt: now}
		h := hasher.Hash(id + "-secret-" + randomSecret(t))
		require.NoError(t, store.Create(ctx, k, h, 0))
		return k, h
	}

	t.Run("at maxmemory writes are refused and nothing is evicted", func(t *testing.T) {
		first, h := create()
		used, err := admin.Info(ctx, "memory").Result()
		require.NoError(t, err)
		var usedBytes int64
		for _, line := range strings.Split(used, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "used_memory:"); ok {
				usedBytes, _ = strconv.ParseInt(v, 10, 64)
			}
		}
		require.Positive(t, usedBytes)
		require.NoError(t, admin.ConfigSet(ctx, "maxmemory", strconv.FormatInt(usedBytes+2<<20, 10)).Err())
		t.Cleanup(func() { _ = admin.ConfigSet(context.Background(), "maxmemory", "0").Err() })
		var refused error
		for i := 0; i < 100_000 && refused == nil; i++ {
			k, h := func() (*keystore.Key, keystore.Hash) {
				now := time.Now().UTC()
				id, err := keystore.NewID(now)
				require.NoError(t, err)
				return &keystore.Key{ID: id, Name: strings.Repeat("n", 200), Owner: "filler", CreatedAt: now}, hasher.Hash(id + "-filler")
			}()
			refused = store.Create(ctx, k, h, 0)
		}
		require.ErrorContains(t, refused, "OOM", "Redis took writes past maxmemory")
		got, err := store.Lookup(ctx, h)
		require.NoError(t, err, "a key was evicted to make room: is maxmemory-policy noeviction?")
		require.Equal(t, first.ID, got.ID)
	})
}
