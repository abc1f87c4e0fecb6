package main

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// Scenario is one server set-up the bench command measures.
type Scenario struct {
	Name  string
	Title string
	Noop  bool   // the built-in no-op server instead of extauthz
	Store string // "embedded" or "redis"
	// Binary is the extauthz binary to run ("" = BenchOptions.Extauthz):
	// --variant runs scenarios again with another build, to measure a change.
	Binary string
	// KeyRate is the rate limit of the valid keys: "none" (no limiter call
	// at all) or a rate too high to run out during a run, so that every
	// check pays for the limiter and is allowed.
	KeyRate string
	// Scale marks the scale scenario: that many keys written straight into
	// Redis (Keys, Bulk), Zipf traffic and the cache size below.
	Scale     int
	CacheSize int
	CacheTTL  time.Duration // 0: the server's default
	Zipf      float64
	// Keys, when set, is the number of valid keys instead of
	// BenchOptions.Keys. Bulk writes them straight into Redis (bulkInsert)
	// rather than through the CLI, a process per key; Even picks them
	// uniformly whatever --zipf says.
	Keys int
	Bulk bool
	Even bool
	// Peer runs envoyproxy/ratelimit (ratelimitpeer.go) instead of
	// extauthz, on a Redis of its own: ShouldRateLimit calls, one
	// descriptor per call, over Keys key ids.
	Peer bool
}

// keyCount is the number of valid keys sc uses.
func (sc Scenario) keyCount(o BenchOptions) int {
	if sc.Keys > 0 {
		return sc.Keys
	}
	return o.Keys
}

// highRate never runs out in a bench run, so a key with it always asks the
// limiter and is always allowed.
const highRate = "1000000000/h"

var scenarios = []Scenario{
	{Name: "noop", Title: "no-op ext_authz (ceiling)", Noop: true},
	{Name: "embedded", Title: "embedded store, cached key", Store: "embedded", KeyRate: "none"},
	{Name: "embedded-rl", Title: "embedded store, cached key, local rate limit", Store: "embedded", KeyRate: highRate},
	{Name: "redis", Title: "Redis store, cached key", Store: "redis", KeyRate: "none"},
	{Name: "redis-rl", Title: "Redis store + Redis rate limiting", Store: "redis", KeyRate: highRate},
	// The Redis limiter at its limit. A fleet's keys each see a
	// few checks a second. redis-even gives 1000 keys used evenly a limit
	// too small to lease (ratelimit/redis/lease.go), so every check is one
	// round trip of the limiter; the peer does the same job. redis-even-lease
	// gives the same keys a limit of thousands a second, far above their
	// demand, as most keys' limits are: long leases serve them.
	{Name: "redis-even", Title: "Redis rate limiting, 1k keys evenly, 199/s (exact)", Store: "redis", KeyRate: exactRate, Keys: evenKeys, Bulk: true, Even: true},
	{Name: "redis-even-lease", Title: "Redis rate limiting, 1k keys evenly, 3999/s (leased)", Store: "redis", KeyRate: quietRate, Keys: evenKeys, Bulk: true, Even: true},
	{Name: "ratelimit", Title: "peer envoyproxy/ratelimit, 1k key ids evenly", Store: "redis", Peer: true, Keys: evenKeys, Even: true},
}

// evenKeys is the number of keys of redis-even and of the peer.
const evenKeys = 1000

// exactRate is below the smallest limit the Redis limiter leases
// (2·leaseShare = 200, ratelimit/redis/lease.go), so every check is one Redis
// call. Spread evenly over evenKeys keys, the bench's loads (at most a few
// tens of thousands of checks a second) never reach it.
const exactRate = "199/s"

// quietRate is far above what evenKeys keys used evenly ask for (a few to a
// few tens of checks a second each, under 1/32 of it), so the Redis limiter
// gives them long leases.
const quietRate = "3999/s"

// scaleScenario is the scale run: 1M keys in Redis, a cache of 100k,
// Zipf traffic. It is left out unless asked for (--scale).
func scaleScenario(keys, cacheSize int, ttl time.Duration, zipf float64, rate string) Scenario {
	title := fmt.Sprintf("Redis, %s keys, cache %s, Zipf s=%g", count(keys), count(cacheSize), zipf)
	if ttl > 0 {
		title += ", ttl " + ttl.String()
	}
	return Scenario{
		Name: "scale", Title: title,
		Store: "redis", KeyRate: rate, Scale: keys, Keys: keys, Bulk: true, CacheSize: cacheSize, CacheTTL: ttl, Zipf: zipf,
	}
}

func findScenario(name string) (Scenario, bool) {
	for _, s := range scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Scenario{}, false
}

// BenchOptions are the settings shared by every scenario of one bench run.
type BenchOptions struct {
	Extauthz string // the extauthz binary
	WorkDir  string
	// NoopStreamWorkers is grpc.NumStreamWorkers of the no-op server (0 =
	// none, like extauthz serve today).
	NoopStreamWorkers int
	// ServerEnv is added to the environment of every server (extauthz and
	// the no-op), e.g. GOGC=400, to measure runtime settings.
	ServerEnv []string

	Rounds          int // each scenario is measured once per round, in turns
	FirstWarmup     time.Duration
	Warmup          time.Duration
	Duration        time.Duration
	Rate            float64 // open loop
	Concurrency     int     // closed loop workers
	OpenConcurrency int     // open loop: the most requests in flight
	Conns           int

	Keys        int // valid keys created through the CLI
	LimitedKeys int // keys with rate 1/h (for the "limited" share of the mix)
	UnknownKeys int
	Mix         Mix
	Paths       []requestShape
	Zipf        float64
	Clients     int
	CLIParallel int
	Audit       string // the servers' audit sink

	ScaleWarmup time.Duration // warm-up of the scale scenario (filling the cache)
	ScaleInsert int           // goroutines writing the scale (and other bulk) keys

	RateLimit RateLimitOptions // the peer scenario's

	Profile         string // directory for perf profiles ("" = none)
	ProfileDuration time.Duration

	Log io.Writer // progress
}

// counters are the server's own counts over a phase, from its /metrics.
type counters struct {
	Hits, Misses float64 // key cache
	// RateLimited is the rate-limited checks (allowed or limited), Leased
	// those answered from a Redis lease without a Redis call, Calls the
	// calls of the rate-limit script in Redis (one per batch).
	RateLimited, Leased, Calls float64
}

var counterMetrics = []string{
	"extauthz_cache_hits_total", "extauthz_cache_misses_total",
	"extauthz_ratelimit_allowed_total", "extauthz_ratelimit_limited_total", "extauthz_ratelimit_leased_total",
	"extauthz_ratelimit_redis_calls_total",
}

func countersOf(m map[string]float64) counters {
	return counters{
		Hits: m["extauthz_cache_hits_total"], Misses: m["extauthz_cache_misses_total"],
		RateLimited: m["extauthz_ratelimit_allowed_total"] + m["extauthz_ratelimit_limited_total"],
		Leased:      m["extauthz_ratelimit_leased_total"],
		Calls:       m["extauthz_ratelimit_redis_calls_total"],
	}
}

func (c counters) sub(o counters) counters {
	return counters{c.Hits - o.Hits, c.Misses - o.Misses, c.RateLimited - o.RateLimited, c.Leased - o.Leased, c.Calls - o.Calls}
}

// leaseLine says how many rate-limited checks a lease answered, and how
// many of the others went to Redis together in one script call, on average
// ("" when none was rate limited).
func (c counters) leaseLine() string {
	if c.RateLimited == 0 {
		return ""
	}
	line := fmt.Sprintf("  rate limit: %.0f checks, %.0f answered from a lease = %.2f%% without a Redis call", c.RateLimited, c.Leased, 100*c.Leased/c.RateLimited)
	if c.Calls > 0 {
		line += fmt.Sprintf("; %.0f script calls = %.1f checks a call", c.Calls, (c.RateLimited-c.Leased)/c.Calls)
	}
	return line + "\n"
}

func (c counters) ratio() (float64, bool) {
	if c.Hits+c.Misses == 0 {
		return 0, false
	}
	return c.Hits / (c.Hits + c.Misses), true
}

func (c counters) add(o counters) counters {
	return counters{c.Hits + o.Hits, c.Misses + o.Misses, c.RateLimited + o.RateLimited, c.Leased + o.Leased, c.Calls + o.Calls}
}

const pepperEnv = "EXTAUTHZ_LOAD_PEPPER"

// pepper is the HMAC pepper the scenarios hash with (a production server
// has one; without it the server logs a warning and hashes with SHA-256).
var pepper = "extauthz-load-pepper-not-a-secret"

// deployment is one scenario set up: its servers running, its keys
// created, a client connected. Every scenario of a bench is deployed
// before the first measurement, so that the rounds can take turns.
type deployment struct {
	sc                 Scenario
	dir                string
	server             *child
	redis              *redistest.Server
	grpcAddr, httpAddr string
	traffic            *Traffic
	target             *target
	setup              time.Duration // starting Redis and creating the keys
}

func (d *deployment) close() {
	if d.target != nil {
		d.target.close()
	}
	if d.server != nil {
		d.server.stop()
	}
	if d.redis != nil {
		d.redis.Stop()
	}
}

// meters are the processes whose CPU a phase of d measures.
func (d *deployment) meters() meters {
	m := meters{serverPID: d.server.pid(), extra: map[string]int{}}
	if d.redis != nil {
		m.extra["redis"] = d.redis.PID()
	}
	return m
}

// deploy starts what sc needs (Redis, the server) and creates its keys.
func deploy(ctx context.Context, sc Scenario, o BenchOptions) (_ *deployment, err error) {
	d := &deployment{sc: sc, dir: filepath.Join(o.WorkDir, sc.Name)}
	defer func() {
		if err != nil {
			d.close() // what was started before the failure
		}
	}()
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return nil, err
	}
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, "["+sc.Name+"] "+format+"\n", args...) }
	env := append(append(os.Environ(), o.ServerEnv...), pepperEnv+"="+pepper)
	tr := &Traffic{Mix: o.Mix, Paths: o.Paths, Zipf: o.Zipf, Clients: o.Clients}
	if sc.Even {
		tr.Zipf = 0
	} else if sc.Zipf > 0 {
		tr.Zipf = sc.Zipf
	}
	d.traffic = tr
	start := time.Now()

	var valid, limited, unknown []string
	if unknown, err = unknownKeys("sk", max(o.UnknownKeys, 1)); err != nil {
		return nil, err
	}
	if sc.Noop {
		// The no-op server reads no key; well-formed ones keep the requests
		// the same size as the others'.
		if valid, err = unknownKeys("sk", max(o.Keys, 1)); err != nil {
			return nil, err
		}
		limited = valid[:max(min(o.LimitedKeys, len(valid)), 1)]
		if d.server, d.grpcAddr, err = startNoop(d.dir, env, o.NoopStreamWorkers); err != nil {
			return nil, err
		}
	} else if sc.Peer {
		if d.redis, err = redistest.Run(filepath.Join(d.dir, "redis")); err != nil {
			return nil, err
		}
		valid = make([]string, sc.keyCount(o))
		for i := range valid {
			if valid[i], err = keystore.NewID(time.Now()); err != nil {
				return nil, err
			}
		}
		// The peer is asked about key ids, nothing else: no paths, no
		// invalid keys (those never reach a rate limit service).
		if tr.Mix != (Mix{kindValid: 1}) {
			logf("the peer gets valid key ids only (--mix %s does not apply)", tr.Mix)
		}
		tr.Mix, tr.Paths, tr.RateLimit = Mix{kindValid: 1}, tr.Paths[:1], &peerDescriptor
		d.setup = time.Since(start)
		logf("starting envoyproxy/ratelimit %s with %d descriptors, REDIS_PIPELINE_WINDOW=%s", o.RateLimit.Binary, len(valid), o.RateLimit.PipelineWindow)
		if d.server, d.grpcAddr, err = startRateLimit(o.RateLimit, d.dir, env, d.redis.Addr, valid); err != nil {
			return nil, err
		}
	} else {
		cacheSize := 100000
		if sc.CacheSize > 0 {
			cacheSize = sc.CacheSize
		}
		store := fmt.Sprintf("{backend: embedded, path: %q}", filepath.Join(d.dir, "extauthz.db"))
		redisURL := ""
		if sc.Store == "redis" {
			if d.redis, err = redistest.Run(filepath.Join(d.dir, "redis")); err != nil {
				return nil, err
			}
			redisURL = d.redis.URL(0)
			store = fmt.Sprintf("{backend: redis, redis: {url: %q, prefix: %q}}", redisURL, "load:")
		}
		cfg := filepath.Join(d.dir, "extauthz.yaml")
		cache := fmt.Sprintf("{size: %d}", cacheSize)
		if sc.CacheTTL > 0 {
			cache = fmt.Sprintf("{size: %d, ttl: %s}", cacheSize, sc.CacheTTL)
		}
		if err := os.WriteFile(cfg, []byte(serverConfig(store, cache, o.Audit)), 0o600); err != nil {
			return nil, err
		}
		perms := []string{"read:users", "read:reports"}
		if sc.Bulk {
			if redisURL == "" {
				return nil, fmt.Errorf("bulk keys are written into Redis: the scenario's store is %s", sc.Store)
			}
			n := sc.keyCount(o)
			workers := min(o.ScaleInsert, n)
			logf("writing %d keys straight into Redis with %d goroutines (keystore/redis Create: what keys create does, without a process per key)", n, workers)
			rate, err := keystore.ParseRateLimit(sc.KeyRate)
			if err != nil {
				return nil, err
			}
			valid, err = bulkInsert(ctx, redisURL, "load:", []byte(pepper),
				keystore.Spec{Permissions: perms, RateLimit: rate}, n, workers, o.Log)
			if err != nil {
				return nil, err
			}
		} else {
			n := sc.keyCount(o)
			logf("creating %d keys with `extauthz keys create --json`", n)
			if valid, err = createKeys(ctx, o.Extauthz, cfg, env, "valid", n, perms, sc.KeyRate, o.CLIParallel); err != nil {
				return nil, err
			}
		}
		if o.Mix[kindLimited] > 0 {
			if limited, err = createKeys(ctx, o.Extauthz, cfg, env, "limited", max(o.LimitedKeys, 1), perms, "1/h", o.CLIParallel); err != nil {
				return nil, err
			}
		}
		d.setup = time.Since(start)
		logf("%d keys ready in %s; starting extauthz", len(valid)+len(limited), d.setup.Round(time.Millisecond))
		bin := o.Extauthz
		if sc.Binary != "" {
			bin = sc.Binary
		}
		if d.server, d.grpcAddr, d.httpAddr, err = startExtauthz(bin, d.dir, cfg, env); err != nil {
			return nil, err
		}
	}
	tr.Keys = KeySet{Valid: newKeyList(valid), Limited: newKeyList(limited), Unknown: newKeyList(unknown)}
	if d.target, err = dialTarget(d.grpcAddr, o.Conns); err != nil {
		return nil, err
	}
	return d, nil
}

// phase is one measured phase of one round.
type phase struct {
	*LoadResult
	Counters counters // the server's own counts during the phase
}

// round is one turn of a scenario: a warm-up (not measured), then a
// closed-loop and an open-loop phase.
type round struct{ Closed, Open phase }

func (o BenchOptions) closedLoad(seed uint64) LoadOptions {
	return LoadOptions{Concurrency: o.Concurrency, Duration: o.Duration, Seed: seed}
}

func (o BenchOptions) openLoad(seed uint64) LoadOptions {
	return LoadOptions{Rate: o.Rate, Concurrency: o.OpenConcurrency, Duration: o.Duration, Seed: seed}
}

// measure runs round n of d.
func (d *deployment) measure(ctx context.Context, o BenchOptions, n int) (round, error) {
	logf := func(format string, args ...any) { fmt.Fprintf(o.Log, "["+d.sc.Name+"] "+format+"\n", args...) }
	var r round
	warm := o.Warmup
	if n == 0 {
		// A fresh server's first seconds are not its steady state (its heap
		// and GC pacing grow, connections and caches warm up).
		warm = max(warm, o.FirstWarmup)
		if d.sc.Scale > 0 {
			warm = max(warm, o.ScaleWarmup)
		}
	}
	seed := uint64(n) * 1000
	if warm > 0 {
		logf("round %d: warm-up, closed loop for %s", n+1, warm)
		w := o.closedLoad(seed + 1)
		w.Duration = warm
		if _, err := runLoad(ctx, d.target, d.traffic, w, meters{}); err != nil {
			return r, fmt.Errorf("warm-up: %w", err)
		}
	}
	before := scrapeCounters(d.httpAddr)
	c := o.closedLoad(seed + 2)
	logf("round %d: %s", n+1, c.describe())
	res, err := d.run(ctx, c)
	if err != nil {
		return r, fmt.Errorf("closed loop: %w", err)
	}
	mid := scrapeCounters(d.httpAddr)
	r.Closed = phase{res, mid.sub(before)}
	op := o.openLoad(seed + 3)
	logf("round %d: %s", n+1, op.describe())
	if res, err = d.run(ctx, op); err != nil {
		return r, fmt.Errorf("open loop: %w", err)
	}
	after := scrapeCounters(d.httpAddr)
	r.Open = phase{res, after.sub(mid)}
	return r, nil
}

// run is one measured phase of d: runLoad, and redis-server's own CPU
// meanwhile when d has one.
func (d *deployment) run(ctx context.Context, load LoadOptions) (*LoadResult, error) {
	if d.redis == nil {
		return runLoad(ctx, d.target, d.traffic, load, d.meters())
	}
	before, err := redisCPU(d.redis)
	if err != nil {
		return nil, err
	}
	res, err := runLoad(ctx, d.target, d.traffic, load, d.meters())
	if err != nil {
		return nil, err
	}
	after, err := redisCPU(d.redis)
	if err != nil {
		return nil, err
	}
	res.RedisCPU, res.RedisMeasured = after-before, true
	return res, nil
}

// serverConfig is the extauthz config of a scenario: the store, no admin
// listener, no default rate limit (the keys carry their own), the demo
// routes, and logs quiet enough not to cost anything.
func serverConfig(store, cache, audit string) string {
	return fmt.Sprintf(`# written by extauthz-load
listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", admin: off}
store: %s
hashing: {pepper_env: %s}
cache: %s
keys: {max_per_owner: 0}
rate_limit: {default: none}
routes:
  - {path: /healthz, public: true}
  - {path: /api/users, methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users], rate_limit: 10/m}
  - {path: "/api/reports/**", permissions: [read:reports]}
unmatched: deny
audit: {sink: %s}
log: {level: info, format: json}
`, store, pepperEnv, cache, audit)
}

// createKeys runs `extauthz keys create --json` n times (parallel at a
// time) and returns the secrets. The first runs alone: several processes
// opening a new SQLite file at once can fail with SQLITE_BUSY while it is
// switched to WAL (a create that meets "database is locked" later is tried
// again, too).
func createKeys(ctx context.Context, bin, cfg string, env []string, name string, n int, perms []string, rate string, parallel int) ([]string, error) {
	keys := make([]string, n)
	create := func(i int) error {
		args := []string{"keys", "create", "--config", cfg, "--name", fmt.Sprintf("load-%s-%d", name, i), "--rate", rate, "--json"}
		for _, p := range perms {
			args = append(args, "--perm", p)
		}
		for attempt := 0; ; attempt++ {
			cmd := exec.CommandContext(ctx, bin, args...)
			cmd.Env = env
			var stderr strings.Builder
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				if strings.Contains(stderr.String(), "database is locked") && attempt < 5 {
					time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
					continue
				}
				return fmt.Errorf("extauthz keys create: %w: %s", err, strings.TrimSpace(stderr.String()))
			}
			var created struct {
				Key string `json:"key"`
			}
			if err := json.Unmarshal(out, &created); err != nil || created.Key == "" {
				return fmt.Errorf("extauthz keys create --json printed no key: %v", err)
			}
			keys[i] = created.Key
			return nil
		}
	}
	if n == 0 {
		return nil, nil
	}
	if err := create(0); err != nil {
		return nil, err
	}
	errs := make(chan error, n)
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i := 1; i < n; i++ {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := create(i); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return nil, err
	}
	return keys, nil
}

// scrapeCounters reads the server's counters from its /metrics (zeros when
// there is no HTTP listener or no answer).
func scrapeCounters(httpAddr string) counters {
	if httpAddr == "" || httpAddr == "off" {
		return counters{}
	}
	m, err := scrapeMetrics("http://"+httpAddr+"/metrics", counterMetrics...)
	if err != nil {
		return counters{}
	}
	return countersOf(m)
}

// scrapeMetrics returns the values of the named unlabelled metrics.
func scrapeMetrics(url string, names ...string) (map[string]float64, error) {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return parseMetrics(resp.Body, names...)
}

// parseMetrics reads Prometheus text format lines "name value".
func parseMetrics(r io.Reader, names ...string) (map[string]float64, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || !want[f[0]] {
			continue
		}
		v, err := strconv.ParseFloat(f[1], 64)
		if err != nil {
			return nil, fmt.Errorf("metric %s: %w", f[0], err)
		}
		out[f[0]] = v
	}
	return out, sc.Err()
}

// profilable reports why perf could not name bin's functions: a binary
// linked with -ldflags "-s" has no symbol table, and every Go function of
// its profile would read [unknown]. A run with --profile checks its servers
// first rather than measure for minutes to print nothing of use.
func profilable(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("%s: %w", bin, err)
	}
	defer f.Close()
	if f.Section(".symtab") == nil {
		return fmt.Errorf("%s has no symbol table (linked with -ldflags -s), so perf could not name its functions: build it without -s, as make load does", bin)
	}
	return nil
}

// profile records the server's CPU with perf during one more closed-loop
// phase (not one of the measured ones: perf costs CPU too), and writes
// perf's report, flat (self time) and with callers' totals, next to the
// data.
func profile(ctx context.Context, t *target, tr *Traffic, load LoadOptions, o BenchOptions, name string, pid int, logf func(string, ...any)) (string, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return "", fmt.Errorf("perf not found: %w", err)
	}
	if err := os.MkdirAll(o.Profile, 0o755); err != nil {
		return "", err
	}
	data := filepath.Join(o.Profile, name+".perf.data")
	rec := exec.Command(perf, "record", "-F", "997", "-g", "-p", strconv.Itoa(pid), "-o", data)
	var recOut strings.Builder
	rec.Stdout, rec.Stderr = &recOut, &recOut
	if err := rec.Start(); err != nil {
		return "", err
	}
	time.Sleep(300 * time.Millisecond) // perf attaches
	load.Duration = o.ProfileDuration
	logf("profiling with perf: %s", load.describe())
	res, lerr := runLoad(ctx, t, tr, load, meters{serverPID: pid})
	_ = rec.Process.Signal(syscall.SIGINT)
	// perf exits with the interrupt's status even when it wrote its data.
	if err := rec.Wait(); err != nil {
		if fi, serr := os.Stat(data); serr != nil || fi.Size() == 0 {
			return "", fmt.Errorf("perf record: %w: %s", err, recOut.String())
		}
	}
	if lerr != nil {
		return "", lerr
	}
	out := filepath.Join(o.Profile, name+".perf.txt")
	f, err := os.Create(out)
	if err != nil {
		return "", err
	}
	defer f.Close()
	script := exec.Command(perf, "script", "-i", data, "-F", "comm,ip,sym")
	stacks, err := script.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := script.Start(); err != nil {
		return "", err
	}
	sum, perr := parsePerfScript(stacks)
	if err := script.Wait(); err != nil {
		return "", fmt.Errorf("perf script: %w", err)
	}
	if perr != nil {
		return "", perr
	}
	fmt.Fprintf(f, "perf record -F 997 -g of %s (pid %d), %s, %s\n", name, pid, load.describe(), data)
	fmt.Fprintf(f, "%d checks, %.0f/s; server CPU (with perf attached) %s µs/check\n", res.Completed, res.RPS(), us(res.CPUPerCheck()))
	sum.perCheck = float64(time.Second/997) / 1e3 / float64(max(res.Completed, 1))
	sum.write(f, 40)
	return out, nil
}

// count writes 1000000 as 1M and 100000 as 100k.
func count(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return strconv.Itoa(n/1e6) + "M"
	case n >= 1e3 && n%1e3 == 0:
		return strconv.Itoa(n/1e3) + "k"
	}
	return strconv.Itoa(n)
}
