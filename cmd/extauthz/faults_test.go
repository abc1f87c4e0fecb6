package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
)

// These tests run extauthz under a steady load of checks while Redis, or the
// network to it, fails in five ways, and hold it to the decision's step 10
// (docs/decision.md), rate limiting's fallback (docs/rate-limiting.md) and
// what never happens (README): a decision is never an RPC error, a cached
// key keeps working, an uncached one gets a quick 503, nothing waits much
// longer than the configured timeout, and everything comes back on its own. They log what
// they measure on lines starting with "fault:".

const (
	faultTimeout  = 100 * time.Millisecond // store.redis.timeout
	faultCacheTTL = 1500 * time.Millisecond
	// faultDuration is long enough for the cached key's entry to go stale
	// (faultCacheTTL) and for the limiter's breaker to probe Redis again.
	faultDuration = 2800 * time.Millisecond
)

// faultRig is one redis-server, a fault proxy in front of it, and an
// extauthz server whose store and limiter reach Redis through the proxy.
type faultRig struct {
	redis *redistest.Server
	proxy *faultproxy.Proxy
	ts    *testServer
	http  *http.Client
}

func startFaultRig(t *testing.T, extraYAML string) *faultRig {
	t.Helper()
	// AOF, so that keys survive a kill and a restart, as in production.
	r := redistest.Start(t, "--appendonly", "yes", "--appendfsync", "always")
	p := faultproxy.Start(t, r.Addr)
	yaml := fmt.Sprintf("store: {backend: redis, redis: {url: %q, timeout: %s, prefix: \"f:\"}}\n", "redis://"+p.Addr()+"/0", faultTimeout)
	if !strings.Contains(extraYAML, "\ncache:") && !strings.HasPrefix(extraYAML, "cache:") {
		// The rig's cache, unless the test gives its own (a field given
		// twice is an error).
		yaml += fmt.Sprintf("cache: {ttl: %s}\n", faultCacheTTL)
	}
	yaml += extraYAML
	rig := &faultRig{redis: r, proxy: p, ts: startServer(t, yaml), http: &http.Client{Timeout: 5 * time.Second}}
	t.Cleanup(rig.http.CloseIdleConnections)
	return rig
}

// status GETs one of the server's own HTTP endpoints.
func (rig *faultRig) status(t *testing.T, path string) int {
	t.Helper()
	resp, err := rig.http.Get(rig.ts.httpURL + path)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// metric reads one counter or gauge from /metrics: name, or
// name{label="value",...}, the sum of its series with those labels.
func (rig *faultRig) metric(t *testing.T, name string) float64 {
	t.Helper()
	family, sel, _ := strings.Cut(strings.TrimSuffix(name, "}"), "{")
	var labels []string
	for pair := range strings.SplitSeq(sel, ",") {
		if k, v, ok := strings.Cut(pair, "="); ok {
			labels = append(labels, k, strings.Trim(v, `"`))
		}
	}
	fams := scrape(t, rig.http, rig.ts.httpURL+"/metrics")
	if fams[family] == nil {
		t.Fatalf("metric %s not in /metrics", family)
	}
	v, _ := sample(fams, family, labels...) // no such series yet: 0
	return v
}

// faultSample is one Check sent during a scenario.
type faultSample struct {
	worker     string
	start, end time.Time
	code       string // "" = allowed
	httpStatus int
	rpcStatus  int32 // CheckResponse.status.code
	retryAfter string
	limit      string // X-RateLimit-Limit of the answer ("": none)
	err        error  // an RPC error: never acceptable
}

func (s faultSample) took() time.Duration { return s.end.Sub(s.start) }

// faultLoad runs workers that send Checks through the server's gRPC client,
// each pausing a little between checks so that two cores keep up, and keeps
// every sample.
type faultLoad struct {
	ts      *testServer
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []faultSample
}

func newFaultLoad(ts *testServer) *faultLoad {
	return &faultLoad{ts: ts, stop: make(chan struct{})}
}

// run starts a worker named name, checking method path with key, once
// begin is closed (nil: at once), until Stop.
func (l *faultLoad) run(name, method, path, key string, begin <-chan struct{}) {
	l.wg.Go(func() {
		if begin != nil {
			select {
			case <-begin:
			case <-l.stop:
				return
			}
		}
		req := checkReq(method, path, "10.1.2.3", map[string]string{"x-api-key": key})
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			// The deadline only turns a hang into a visible RPC error.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s := faultSample{worker: name, start: time.Now()}
			resp, err := l.ts.client.Check(ctx, req)
			s.end = time.Now()
			cancel()
			if s.err = err; err == nil {
				s.rpcStatus = resp.GetStatus().GetCode()
				s.httpStatus = 200
				s.limit = headerMap(resp.GetOkResponse().GetResponseHeadersToAdd())["x-ratelimit-limit"]
				if d := resp.GetDeniedResponse(); d != nil {
					hs := headerMap(d.GetHeaders())
					s.code, s.retryAfter, s.httpStatus = hs["x-authz-code"], hs["retry-after"], int(d.GetStatus().GetCode())
					s.limit = hs["x-ratelimit-limit"]
				}
			}
			l.mu.Lock()
			l.samples = append(l.samples, s)
			l.mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
}

// Stop ends the workers and returns every sample.
func (l *faultLoad) Stop() []faultSample {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.samples)
}

// snapshot returns the samples so far.
func (l *faultLoad) snapshot() []faultSample {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.samples)
}

// controlWorker is the load's storeless check, on a public route that asks
// no store: how long it takes is the machine's own stall at that moment.
const controlWorker = "control"

// machineStall is the longest a storeless check (the worker named control,
// on the same server) took while s ran: time the machine, not a store, took.
func machineStall(s faultSample, samples []faultSample, control string) time.Duration {
	var most time.Duration
	for _, c := range samples {
		if c.err != nil || c.worker != control || c.end.Before(s.start) || c.start.After(s.end) {
			continue
		}
		most = max(most, c.took())
	}
	return most
}

// requireWithinBound fails t for each check kept by keep that took longer
// than bound, unless the control worker's checks saw as long a stall at the
// same moment: what is bounded is the wait on the stores, and on two
// shared cores under the race detector the machine alone can hold a check
// up for tens of milliseconds. It logs how many it excused.
func requireWithinBound(t *testing.T, samples []faultSample, keep func(faultSample) bool, bound time.Duration) {
	t.Helper()
	var over, excused int
	for _, s := range samples {
		if s.err != nil || !keep(s) || s.took() <= bound {
			continue
		}
		if stall := machineStall(s, samples, controlWorker); s.took()-stall <= bound {
			excused++
		} else if over++; over <= 3 {
			t.Errorf("%s: a check took %v (the machine stalled storeless checks by %v then), past the bound %v", s.worker, s.took(), stall, bound)
		}
	}
	assert.Zero(t, over, "checks past store.redis.timeout + %v", checkMargin)
	if excused > 0 {
		t.Logf("%d checks past the bound were matched by a storeless check stalled as long at the same moment (machine load, not Redis)", excused)
	}
}

// faultStats are latency percentiles of a set of checks.
type faultStats struct {
	n             int
	p50, p99, max time.Duration
}

func latencies(samples []faultSample, keep func(faultSample) bool) faultStats {
	var d []time.Duration
	for _, s := range samples {
		if keep(s) {
			d = append(d, s.took())
		}
	}
	if len(d) == 0 {
		return faultStats{}
	}
	slices.Sort(d)
	return faultStats{n: len(d), p50: d[len(d)/2], p99: d[(len(d)*99)/100], max: d[len(d)-1]}
}

func (s faultStats) String() string {
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", s.n, s.p50.Round(100*time.Microsecond), s.p99.Round(100*time.Microsecond), s.max.Round(100*time.Microsecond))
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// faultKind is one way for Redis to fail, and its end.
type faultKind struct {
	name         string
	inject, heal func(*faultRig)
}

var faultKinds = []faultKind{
	{"killed", func(r *faultRig) { r.redis.Stop() }, func(r *faultRig) { r.redis.Restart() }},
	{"paused", func(r *faultRig) { r.redis.Pause() }, func(r *faultRig) { r.redis.Resume() }},
	{"slowed", func(r *faultRig) { r.proxy.SetDelay(3 * faultTimeout) }, func(r *faultRig) { r.proxy.Heal() }},
	{"dropped", func(r *faultRig) { r.proxy.Drop() }, func(r *faultRig) { r.proxy.Heal() }},
	{"blackholed", func(r *faultRig) { r.proxy.Blackhole() }, func(r *faultRig) { r.proxy.Heal() }},
}

// TestFaultRedisFailsUnderLoad runs the Redis-failure-under-load scenario for each fault,
// with on_store_error: local.
func TestFaultRedisFailsUnderLoad(t *testing.T) {
	for _, f := range faultKinds {
		t.Run(f.name, func(t *testing.T) { runFaultScenario(t, f) })
	}
}

func runFaultScenario(t *testing.T, f faultKind) {
	// Every goroutine the scenario starts (server, proxy, redis-server
	// waiter, clients) must be gone once its cleanups ran.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, append(redistest.LeakOptions(), ignore)...) })

	rig := startFaultRig(t, testRoutes+"rate_limit: {default: 100000/m, on_store_error: local}\n")
	ts := rig.ts
	healed := false
	t.Cleanup(func() { // a failed assertion must not leave the server stopping against a dead Redis
		if !healed {
			f.heal(rig)
		}
	})

	cached, _ := ts.create(t, keystore.Spec{Name: "cached", Permissions: []string{"read:users"}})
	uncached, _ := ts.create(t, keystore.Spec{Name: "uncached", Permissions: []string{"read:users"}})
	// victim is revoked after recovery; made now so that its creation is
	// old news to the change feed by then.
	victim, vk := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
	require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": cached}).GetOkResponse())
	require.Equal(t, 200, rig.status(t, "/readyz"))
	fallbackBefore := rig.metric(t, "extauthz_ratelimit_fallback_total")

	load := newFaultLoad(ts)
	defer load.Stop()
	faulted := make(chan struct{})
	load.run("cached-1", "GET", "/api/users", cached, nil)
	load.run("cached-2", "GET", "/api/users", cached, nil)
	load.run("uncached", "GET", "/api/users", uncached, faulted)
	load.run(controlWorker, "GET", "/healthz", "", nil)
	time.Sleep(300 * time.Millisecond) // a healthy baseline
	assert.Equal(t, fallbackBefore, rig.metric(t, "extauthz_ratelimit_fallback_total"),
		"a healthy Redis decides every rate limit (Redis store errors so far: %v)", rig.metric(t, "extauthz_ratelimit_store_errors_total"))

	tFault := time.Now()
	f.inject(rig)
	tInjected := time.Now()
	close(faulted)

	// During the fault: alive, not ready.
	require.Eventually(t, func() bool { return rig.status(t, "/readyz") == 503 }, 3*time.Second, 50*time.Millisecond, "/readyz says 503 while Redis is unreachable")
	tNotReady := time.Since(tFault)
	assert.Equal(t, 200, rig.status(t, "/healthz"), "/healthz stays 200: the process is fine")
	time.Sleep(time.Until(tFault.Add(faultDuration)))
	assert.Equal(t, 503, rig.status(t, "/readyz"), "/readyz stays 503 until Redis is back")
	assert.Equal(t, 200, rig.status(t, "/healthz"), "/healthz stays 200 to the end of the fault")

	tHealStart := time.Now()
	f.heal(rig)
	healed = true
	tHealed := time.Now()

	// Recovery: the uncached key is found, /readyz is 200, and the limiter
	// is back on the shared count (its fallback counter stops growing for
	// a whole second while the cached key's checks go on).
	var uncachedBack, readyBack time.Duration
	limiterBack, limiterOK := rig.waitShared(t, tHealed, func(now time.Time) bool {
		if readyBack == 0 && rig.status(t, "/readyz") == 200 {
			readyBack = now.Sub(tHealed)
		}
		if uncachedBack == 0 {
			for _, s := range load.snapshot() {
				if s.worker == "uncached" && s.start.After(tHealed) && s.err == nil && s.code == "" {
					uncachedBack = s.end.Sub(tHealed)
					break
				}
			}
		}
		return uncachedBack > 0 && readyBack > 0
	})
	samples := load.Stop()
	require.NotZero(t, uncachedBack, "the uncached key is not found again within 8 s of the fault's end")
	require.NotZero(t, readyBack, "/readyz is not 200 again within 8 s of the fault's end")
	require.True(t, limiterOK, "the limiter still falls back to local limits 8 s after the fault's end")

	// A revocation made now reaches the server within 1 s, through the
	// change feed: the victim is fetched (for the first time) just before,
	// so without the feed its cache entry would keep it alive for
	// faultCacheTTL.
	victimHeaders := map[string]string{"x-api-key": victim}
	tFetched := time.Now()
	require.NotNil(t, ts.check(t, "GET", "/api/users", victimHeaders).GetOkResponse())
	_, err := ts.mgr.Revoke(context.Background(), vk.ID, "test")
	require.NoError(t, err)
	tRevoked := time.Now()
	var revokeReach time.Duration
	for {
		code, _ := denial(t, ts.check(t, "GET", "/api/users", victimHeaders))
		if code == "revoked_key" {
			revokeReach = time.Since(tRevoked)
			break
		}
		require.Equal(t, "", code)
		require.Less(t, time.Since(tRevoked), 2*time.Second, "the revocation did not reach the server")
		time.Sleep(5 * time.Millisecond)
	}
	assert.Less(t, revokeReach, time.Second, "a revocation after recovery reaches the server within 1 s")
	assert.Less(t, time.Since(tFetched), faultCacheTTL, "inconclusive: the victim's cache entry may have expired instead of being invalidated")

	// Every decision, before, during and after the fault.
	var rpcErrors, cachedDenied, total int
	for _, s := range samples {
		total++
		if s.err != nil {
			rpcErrors++
			if rpcErrors <= 3 {
				t.Errorf("%s: an RPC error %v after %v (a decision is never an RPC error)", s.worker, s.err, s.took())
			}
			continue
		}
		if strings.HasPrefix(s.worker, "cached") && s.code != "" {
			cachedDenied++
			if cachedDenied <= 3 {
				t.Errorf("%s: the cached key was denied %s (%d) at %v into the fault", s.worker, s.code, s.httpStatus, s.start.Sub(tFault).Round(time.Millisecond))
			}
		}
	}
	assert.Zero(t, rpcErrors, "RPC errors")
	assert.Zero(t, cachedDenied, "denials of the cached key")

	// The uncached key, between the fault and its end: 503 unavailable,
	// Retry-After: 1, gRPC UNAVAILABLE, every time.
	var first503 time.Duration
	var during, wrong int
	for _, s := range samples {
		if s.worker != "uncached" || s.err != nil || s.start.Before(tInjected) || !s.end.Before(tHealStart) {
			continue
		}
		during++
		if s.code != "unavailable" || s.httpStatus != 503 || s.retryAfter != "1" || s.rpcStatus != int32(codes.Unavailable) {
			wrong++
			if wrong <= 3 {
				t.Errorf("uncached key during the fault: code %q, status %d, Retry-After %q, rpc %d; want unavailable, 503, 1, %d",
					s.code, s.httpStatus, s.retryAfter, s.rpcStatus, codes.Unavailable)
			}
			continue
		}
		if first503 == 0 {
			first503 = s.end.Sub(tFault)
		}
	}
	require.NotZero(t, during, "no check of the uncached key ran during the fault")
	assert.Zero(t, wrong)

	// Latency of the checks that started during the fault.
	inFault := func(s faultSample) bool {
		return !s.start.Before(tFault) && s.start.Before(tHealStart) && s.worker != controlWorker
	}
	all := latencies(samples, inFault)
	cachedStats := latencies(samples, func(s faultSample) bool { return inFault(s) && s.worker != "uncached" })
	uncachedStats := latencies(samples, func(s faultSample) bool { return inFault(s) && s.worker == "uncached" })
	// After the cached key's entry went stale (faultCacheTTL after it was
	// last fetched, before the fault) every check of it asks the store.
	staleFrom := tFault.Add(faultCacheTTL)
	staleStats := latencies(samples, func(s faultSample) bool { return inFault(s) && s.worker != "uncached" && s.start.After(staleFrom) })
	baseline := latencies(samples, func(s faultSample) bool { return s.start.Before(tFault) && s.worker != controlWorker })

	t.Logf("fault: %-10s healthy baseline: %v", f.name, baseline)
	t.Logf("fault: %-10s first 503 for the uncached key %s after the fault began; /readyz 503 after %s",
		f.name, ms(first503), ms(tNotReady))
	t.Logf("fault: %-10s during the fault, all checks:   %v", f.name, all)
	t.Logf("fault: %-10s during the fault, cached key:   %v (of which stale-entry: %v)", f.name, cachedStats, staleStats)
	t.Logf("fault: %-10s during the fault, uncached key: %v", f.name, uncachedStats)
	t.Logf("fault: %-10s recovery after the fault ended (heal took %s): uncached key found %s, /readyz 200 %s, limiter shared again %s, revocation reached the server in %s",
		f.name, ms(tHealed.Sub(tHealStart)), ms(uncachedBack), ms(readyBack), ms(limiterBack), ms(revokeReach))
	t.Logf("fault: %-10s %d checks in all, %d RPC errors; fallback decisions %.0f",
		f.name, total, rpcErrors, rig.metric(t, "extauthz_ratelimit_fallback_total")-fallbackBefore)

	// A check waits on Redis for the timeout in all, its retries, its
	// lookup and its rate-limit call together (and a tenth more for the
	// rate limit after a lookup that took all of it).
	requireWithinBound(t, samples, inFault, faultTimeout+checkMargin)
}

// waitShared polls, for at most 8 s after healed, until the limiter is back
// on the shared count (its fallback counter has not grown for a whole second
// while checks go on) and done, called at each poll, says the rest is back
// too. It returns how long after healed the counter last grew.
func (rig *faultRig) waitShared(t *testing.T, healed time.Time, done func(now time.Time) bool) (time.Duration, bool) {
	t.Helper()
	last := rig.metric(t, "extauthz_ratelimit_fallback_total")
	lastGrowth := healed
	for deadline := healed.Add(8 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		// The time after the scrape, not before it: /metrics may wait up to
		// a quarter of a second for its next gather, and a value that grew
		// holds fallbacks up to that gather, later than the request was sent.
		v := rig.metric(t, "extauthz_ratelimit_fallback_total")
		now := time.Now()
		if v != last {
			last, lastGrowth = v, now
		}
		if ok := done(now); ok && now.Sub(lastGrowth) >= time.Second {
			return lastGrowth.Sub(healed), true
		}
	}
	return 0, false
}

// TestFaultOnStoreErrorPolicies: with the limiter's store partitioned, a
// rate-limited route answers what on_store_error says, while a route with no
// limit keeps allowing the cached key; and the limit comes back after. The
// route's limit is large enough to be leased (ratelimit/redis/lease.go): requests
// already counted in Redis before the fault may still be handed out at its
// start, at most one lease's worth, and never once the policy has answered.
func TestFaultOnStoreErrorPolicies(t *testing.T) {
	routes := `
routes:
  - {path: /api/users, methods: [GET], permissions: [read:users]}
  - {path: /api/limited, methods: [GET], permissions: [read:users], rate_limit: 100000/m}
  - {path: /healthz, public: true}
`
	for _, tt := range []struct {
		policy string
		code   string // for the limited route during the fault
		status int
	}{
		{"deny", "unavailable", 503},
		{"allow", "", 200},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, append(redistest.LeakOptions(), ignore)...) })
			rig := startFaultRig(t, routes+"rate_limit: {default: none, on_store_error: "+tt.policy+"}\n")
			t.Cleanup(rig.proxy.Heal)
			ts := rig.ts
			key, _ := ts.create(t, keystore.Spec{Name: "k", Permissions: []string{"read:users"}})
			headers := map[string]string{"x-api-key": key}
			require.NotNil(t, ts.check(t, "GET", "/api/users", headers).GetOkResponse())
			require.NotNil(t, ts.check(t, "GET", "/api/limited", headers).GetOkResponse())

			load := newFaultLoad(ts)
			defer load.Stop()
			load.run("unlimited", "GET", "/api/users", key, nil)
			load.run("limited", "GET", "/api/limited", key, nil)
			load.run(controlWorker, "GET", "/healthz", "", nil)
			time.Sleep(200 * time.Millisecond)

			tFault := time.Now()
			rig.proxy.Blackhole()
			tInjected := time.Now()
			time.Sleep(time.Second) // shorter than the cache TTL: the key stays fresh
			tHealStart := time.Now()
			rig.proxy.Heal()
			tHealed := time.Now()

			back, ok := rig.waitShared(t, tHealed, func(time.Time) bool { return true })
			require.True(t, ok, "the limiter still falls back 8 s after the fault's end")
			tBack := tHealed.Add(back)
			time.Sleep(200 * time.Millisecond) // some checks on the shared count
			samples := load.Stop()

			slices.SortFunc(samples, func(a, b faultSample) int { return a.start.Compare(b.start) })
			var rpcErrors, wrong, limitedDuring, leasedDuring int
			policyAnswered := false
			bad := func(format string, args ...any) {
				if wrong++; wrong <= 3 {
					t.Errorf(format, args...)
				}
			}
			for _, s := range samples {
				switch {
				case s.err != nil:
					rpcErrors++
					bad("%s: an RPC error %v after %v (a decision is never an RPC error)", s.worker, s.err, s.took())
				case s.worker == "unlimited" && s.code != "":
					bad("the cached key on a route with no limit was denied %s", s.code)
				case s.worker == "limited" && s.start.After(tBack) && s.code != "":
					bad("the limited route after recovery: denied %s", s.code)
				case s.worker == "limited" && !s.start.Before(tInjected) && s.end.Before(tHealStart):
					limitedDuring++
					if tt.code != "" && s.code == "" && !policyAnswered {
						leasedDuring++ // from a lease granted before the fault
						continue
					}
					policyAnswered = true
					if s.code != tt.code || s.httpStatus != tt.status ||
						(tt.status == 503 && (s.retryAfter != "1" || s.rpcStatus != int32(codes.Unavailable))) {
						bad("the limited route during the fault: code %q status %d Retry-After %q rpc %d; want %q %d",
							s.code, s.httpStatus, s.retryAfter, s.rpcStatus, tt.code, tt.status)
					}
				}
			}
			require.NotZero(t, limitedDuring)
			assert.LessOrEqual(t, leasedDuring, 100000/2000, "more allowed during the fault than one lease holds")
			if tt.code != "" {
				assert.True(t, policyAnswered, "the policy never answered during the fault")
			}
			assert.Zero(t, rpcErrors)
			assert.Zero(t, wrong)
			inFault := func(s faultSample) bool { return !s.start.Before(tFault) && s.start.Before(tHealStart) }
			isLimited := func(s faultSample) bool { return inFault(s) && s.worker == "limited" }
			limited := latencies(samples, isLimited)
			t.Logf("fault: policy-%-5s blackholed 1s: limited route %v; shared limit used again %s after the fault ended",
				tt.policy, limited, ms(back))
			requireWithinBound(t, samples, isLimited, faultTimeout+checkMargin)
		})
	}
}

// resetRig is a server whose Redis answers every call, slowly (300 ms each
// way, through a proxy), within a store timeout of 2 s: a check of a key not
// cached waits on its lookup long enough to be reset while it does.
func resetRig(t *testing.T, extraYAML string) (*testServer, *faultproxy.Proxy) {
	t.Helper()
	r := redistest.Start(t)
	p := faultproxy.Start(t, r.Addr)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, timeout: 2s, prefix: \"f:\"}}\n", "redis://"+p.Addr()+"/0")+
		"routes:\n  - {path: /api/users, methods: [GET], permissions: [read:users]}\n"+extraYAML)
	p.SetDelay(300 * time.Millisecond)
	t.Cleanup(p.Heal)
	return ts, p
}

// A client leaves a check of an unknown, well-formed key while the server
// asks the store for it: by resetting it (cancelling the RPC, as Envoy does
// when its client resets), or by a deadline of its own that passes first
// (a gRPC deadline is the caller's to set: Envoy's timeout, or whatever a
// client that reaches the port directly sends). Each way requires that the
// server had begun to look the key up.
var leavingWays = []struct {
	name  string
	leave func(t *testing.T, ts *testServer)
}{
	{"reset", resetWhileLookedUp},
	{"short deadline", shortDeadlineWhileLookedUp},
}

// resetWhileLookedUp sends a check of an unknown key and resets it (cancels
// the RPC) once the server has begun to look the key up in the store, and
// requires that the reset ended it.
func resetWhileLookedUp(t *testing.T, ts *testServer) {
	t.Helper()
	unknown, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	misses := ts.srv.cache.Stats().Misses
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := ts.client.Check(ctx, checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": unknown}))
		done <- err
	}()
	require.Eventually(t, func() bool { return ts.srv.cache.Stats().Misses > misses }, 5*time.Second, time.Millisecond,
		"the check never asked the store")
	cancel()
	require.Equal(t, codes.Canceled, status.Code(<-done), "the reset did not end the check")
}

// shortDeadlineWhileLookedUp sends a check of an unknown key with a gRPC
// deadline of 400 ms, shorter than the store takes (600 ms) and than half
// its timeout (1 s), yet long enough for a slow machine's server to have
// begun the lookup, and waits for the server's answer. It speaks HTTP/2 itself, as any client of the port may:
// a grpc-go client cancels the call at its own deadline, and the server
// then sees a reset rather than its deadline passing.
func shortDeadlineWhileLookedUp(t *testing.T, ts *testServer) {
	t.Helper()
	unknown, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	msg, err := proto.Marshal(checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": unknown}))
	require.NoError(t, err)
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg)))
	misses := ts.srv.cache.Stats().Misses
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest("POST", "http://"+ts.srv.grpcLn.Addr().String()+"/envoy.service.auth.v3.Authorization/Check",
		bytes.NewReader(append(body, msg...)))
	require.NoError(t, err)
	req.Header.Set("content-type", "application/grpc")
	req.Header.Set("te", "trailers")
	req.Header.Set("grpc-timeout", "400m")
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(req)
	var answer []byte
	if err == nil {
		answer, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	require.Greater(t, ts.srv.cache.Stats().Misses, misses, "the check never asked the store")
	if err != nil {
		// grpc-go ends a call whose deadline passed before its handler
		// answered with RST_STREAM CANCEL.
		require.ErrorContains(t, err, "CANCEL; received from peer")
		return
	}
	switch grpcStatus := cmp.Or(resp.Trailer.Get("grpc-status"), resp.Header.Get("grpc-status")); grpcStatus {
	case "4": // DEADLINE_EXCEEDED
	case "0": // the handler answered at its deadline: 503, store unavailable
		var out authv3.CheckResponse
		require.Greater(t, len(answer), 5)
		require.NoError(t, proto.Unmarshal(answer[5:], &out))
		code, httpStatus := denial(t, &out)
		require.Equal(t, 503, httpStatus, "a check whose deadline passed while the store was asked: %s", code)
	default:
		t.Fatalf("a check whose deadline passed while the store was asked ended with grpc-status %q", grpcStatus)
	}
}

// A client that leaves its checks while their keys are looked up (resets
// them, or gives them a deadline shorter than half the store's timeout)
// must not make a server take Redis for down: were each one a store
// failure, three in a row would open the key cache's breaker, and every
// uncached key of every client would get 503 for a second, again and
// again for as long as the client kept it up.
func TestFaultClientsLeavingChecksDoNotTakeTheStoreForDown(t *testing.T) {
	for _, way := range leavingWays {
		t.Run(way.name, func(t *testing.T) {
			ts, proxy := resetRig(t, "")
			key, _ := ts.create(t, keystore.Spec{Name: "k", Permissions: []string{"read:users"}})
			for range 5 {
				way.leave(t, ts)
			}
			proxy.Heal() // Redis at full speed: only an open breaker would refuse now
			code, httpStatus := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}))
			assert.Equal(t, 200, httpStatus, "an uncached key after five checks left: denied %s", code)
			assert.Zero(t, ts.srv.cache.Stats().StoreFailures, "a check left counted as a store failure")
		})
	}
}

// A lookup of an unknown key counts against its client's failed attempts
// even when the client leaves the check: the store is asked all the same,
// so leaving must not be a way around the bound.
func TestFaultLookupsLeftCountAsFailedAttempts(t *testing.T) {
	for _, way := range leavingWays {
		t.Run(way.name, func(t *testing.T) {
			ts, proxy := resetRig(t, "rate_limit: {failed_attempts: 3/m}\n")
			for range 3 {
				way.leave(t, ts)
			}
			proxy.Heal()
			unknown, err := ts.mgr.Format.Generate()
			require.NoError(t, err)
			code, httpStatus := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": unknown}))
			assert.Equal(t, "rate_limited", code, "a fourth unknown key from the address after three lookups left (status %d)", httpStatus)
		})
	}
}

// TestFaultChangesMadeWhileCutOffAreInForceOnceRedisAnswers: a server cut
// off from Redis hears of no change, and keeps serving its cached keys as
// they were (README, Cache: for up to cache.max_stale). Changes made
// meanwhile by a client that still reaches Redis (a revocation, a narrowed
// permission or allowlist, a rotation ending the grace period now) must
// all be in force within about a second of the server reaching Redis again,
// however long the entries had left: the change feed, unable to know what
// it missed, makes the cache forget everything. The cache TTL here is far
// longer than the test, so nothing but that can refuse the keys.
func TestFaultChangesMadeWhileCutOffAreInForceOnceRedisAnswers(t *testing.T) {
	for _, f := range []faultKind{faultKinds[3], faultKinds[4]} { // dropped, blackholed
		t.Run(f.name, func(t *testing.T) {
			ignore := goleak.IgnoreCurrent()
			t.Cleanup(func() { goleak.VerifyNone(t, append(redistest.LeakOptions(), ignore)...) })
			rig := startFaultRig(t, testRoutes+"cache: {ttl: 1m, max_stale: 5m}\n")
			t.Cleanup(rig.proxy.Heal)
			ts := rig.ts
			// The operator's CLI, on its own connection to Redis, past the proxy.
			client, err := redisstore.Dial(redisstore.Options{URL: rig.redis.URL(0)})
			require.NoError(t, err)
			t.Cleanup(func() { client.Close() })
			cli := &keystore.Manager{Store: redisstore.New(client, "f:"), Hasher: ts.mgr.Hasher, Format: ts.mgr.Format}

			type change struct {
				name, want string
				make       func(id string) error
				secret     string
				id         string
			}
			ctx := context.Background()
			changes := []*change{
				{name: "revoked", want: "revoked_key", make: func(id string) error { _, err := cli.Revoke(ctx, id, "test"); return err }},
				{name: "narrowed", want: "permission_denied", make: func(id string) error {
					perms := []string{"read:reports"}
					_, err := cli.Update(ctx, id, keystore.Patch{Permissions: &perms}, nil, "test")
					return err
				}},
				{name: "fenced", want: "ip_not_allowed", make: func(id string) error {
					allow := mustCIDRs(t, "192.0.2.0/24")
					_, err := cli.Update(ctx, id, keystore.Patch{IPAllowlist: &allow}, nil, "test")
					return err
				}},
				{name: "rotated", want: "expired_key", make: func(id string) error { _, _, err := cli.Rotate(ctx, id, 0, "test", nil); return err }},
			}
			for _, c := range changes {
				var k *keystore.Key
				c.secret, k = ts.create(t, keystore.Spec{Name: c.name, Permissions: []string{"read:users"}})
				c.id = k.ID
			}
			time.Sleep(100 * time.Millisecond) // the creates' change events pass before the keys are cached
			code := func(c *change) string {
				resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": c.secret})
				code, _ := denial(t, resp)
				return code
			}
			for _, c := range changes {
				require.Empty(t, code(c), "%s: allowed before the fault", c.name)
			}

			f.inject(rig)
			time.Sleep(300 * time.Millisecond)
			for _, c := range changes {
				require.NoError(t, c.make(c.id), c.name)
			}
			time.Sleep(1500 * time.Millisecond)
			for _, c := range changes {
				assert.Empty(t, code(c), "%s: a cached key is served as it was while the store cannot be asked", c.name)
			}

			f.heal(rig)
			healed := time.Now()
			for _, c := range changes {
				for got := code(c); got != c.want; got = code(c) {
					require.Less(t, time.Since(healed), 5*time.Second, "%s: still %q after Redis answered again", c.name, got)
					time.Sleep(5 * time.Millisecond)
				}
			}
			took := time.Since(healed)
			t.Logf("fault: %-10s changes made while cut off were all in force %s after Redis answered again", f.name, ms(took))
			assert.Less(t, took, 1500*time.Millisecond, "changes made while cut off take effect within about a second of Redis answering")
		})
	}
}
