// Command extauthz-load drives extauthz's gRPC Check (Envoy ext_authz) and
// measures what a check costs: throughput with C concurrent workers (closed
// loop), latency at a fixed rate (open loop, timed from each request's
// scheduled send so a stalled server cannot hide its queue), the decisions
// by code, RPC errors apart from denials, and the server's CPU time per
// check from /proc/<pid>/stat.
//
//	extauthz-load bench [flags]     start each scenario's servers, measure, print the table
//	extauthz-load run --target ...  measure a server someone else started
//	extauthz-load noop-server       the no-op ext_authz server (the ceiling)
//
// It is a measuring tool, not a test: its figures depend on the machine,
// and the load it generates shares the machine with the server. Compare
// scenarios of one run with each other (the table's ratios), not runs of
// different days.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"
)

const usage = `usage: extauthz-load <command> [flags]

commands:
  bench [--scenarios noop,embedded,...] [--scale]   start servers per scenario, measure, print the table
                   [--ratelimit PATH]               (the ratelimit scenario: envoyproxy/ratelimit's service_cmd)
  run --target HOST:PORT --keys-file F [--pid PID]  load a running server
  noop-server [--listen ADDR]                       serve a Check that allows at once

Run "extauthz-load <command> -h" for the flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "bench":
		err = benchCmd(ctx, args, os.Stdout, os.Stderr)
	case "run":
		err = runCmd(ctx, args, os.Stdout)
	case "noop-server":
		err = noopServerCmd(args, os.Stdout)
	case "help", "-h", "--help":
		fmt.Fprint(os.Stdout, usage)
	default:
		fmt.Fprintf(os.Stderr, "extauthz-load: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "extauthz-load: %v\n", err)
		os.Exit(1)
	}
}

// trafficFlags are the flags that shape requests, shared by bench and run.
type trafficFlags struct {
	mix, paths, header string
	minimal            bool
	zipf               float64
	unknown            int
	clients            int
	duration           time.Duration
	rate               float64
	concurrency        int
	openConcurrency    int
	conns              int
	cpuprofile         string
}

func (f *trafficFlags) register(fs *flag.FlagSet, duration time.Duration) {
	fs.StringVar(&f.mix, "mix", "valid=1", "shares of key kinds: valid, bad_checksum, unknown (well-formed, never created), limited (rate 1/h), e.g. valid=0.9,bad_checksum=0.04,unknown=0.03,limited=0.03")
	fs.StringVar(&f.paths, "paths", "GET /api/users", "requests, comma-separated METHOD /path, picked uniformly")
	fs.StringVar(&f.header, "header", "x-api-key", "header carrying the key")
	fs.BoolVar(&f.minimal, "minimal-request", false, "send only method, path, host, peer and the key (default: the headers and attributes Envoy sends)")
	fs.Float64Var(&f.zipf, "zipf", 0, "pick valid keys by Zipf with this exponent s > 1 (key 0 hottest); 0 = uniform")
	fs.IntVar(&f.unknown, "unknown-keys", 1000, "size of the pool of unknown well-formed keys")
	fs.IntVar(&f.clients, "clients", 10000, "client addresses the requests come from, uniformly (the server limits invalid keys per address: rate_limit.failed_attempts)")
	fs.DurationVar(&f.duration, "duration", duration, "length of each measured phase")
	fs.Float64Var(&f.rate, "rate", targetRate, "open-loop rate, checks per second")
	fs.IntVar(&f.concurrency, "c", 64, "closed loop: concurrent workers")
	fs.IntVar(&f.openConcurrency, "open-c", 512, "open loop: the most checks in flight")
	fs.IntVar(&f.conns, "conns", 2, "gRPC connections (HTTP/2), shared round-robin by the workers")
	fs.StringVar(&f.cpuprofile, "cpuprofile", "", "write this load tool's own CPU profile here")
}

func (f *trafficFlags) traffic() (*Traffic, error) {
	mix, err := ParseMix(f.mix)
	if err != nil {
		return nil, err
	}
	paths, err := ParsePaths(f.paths, f.header, f.minimal)
	if err != nil {
		return nil, err
	}
	if f.zipf != 0 && f.zipf <= 1 {
		return nil, fmt.Errorf("--zipf %g: the exponent must be greater than 1 (or 0 for uniform)", f.zipf)
	}
	if f.clients < 1 || f.clients > 1000000 {
		return nil, fmt.Errorf("--clients %d: want 1 to 1000000", f.clients)
	}
	return &Traffic{Mix: mix, Paths: paths, Zipf: f.zipf, Clients: f.clients}, nil
}

// startCPUProfile profiles this process when path is set; call the result to stop.
func startCPUProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// runCmd is "extauthz-load run": one closed- or open-loop run against a
// server that is already running.
func runCmd(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var tf trafficFlags
	tf.register(fs, 5*time.Second)
	targetAddr := fs.String("target", "", "gRPC address of the server (host:port), required")
	pid := fs.Int("pid", 0, "the server's pid, to measure its CPU (and RSS) from /proc")
	metrics := fs.String("metrics", "", "the server's HTTP address (host:port) to read cache hits from /metrics")
	keysFile := fs.String("keys-file", "", "valid keys: the output of extauthz keys create --json (one or more), or one key per line")
	limitedFile := fs.String("limited-keys-file", "", "keys with a tiny rate limit, for the limited share of --mix")
	prefix := fs.String("key-prefix", "sk", "the server's keys.prefix, for generating unknown keys")
	open := fs.Bool("open", false, "open loop at --rate (default: closed loop with -c workers)")
	warmup := fs.Duration("warmup", time.Second, "closed-loop warm-up before measuring (not reported)")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *targetAddr == "" || *keysFile == "" {
		return errors.New("run needs --target and --keys-file")
	}
	tr, err := tf.traffic()
	if err != nil {
		return err
	}
	valid, err := readKeysFile(*keysFile)
	if err != nil {
		return err
	}
	var limited []string
	if *limitedFile != "" {
		if limited, err = readKeysFile(*limitedFile); err != nil {
			return err
		}
	}
	unknown, err := unknownKeys(*prefix, max(tf.unknown, 1))
	if err != nil {
		return err
	}
	tr.Keys = KeySet{Valid: newKeyList(valid), Limited: newKeyList(limited), Unknown: newKeyList(unknown)}
	stopProfile, err := startCPUProfile(tf.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()
	t, err := dialTarget(*targetAddr, tf.conns)
	if err != nil {
		return err
	}
	defer t.close()
	if *warmup > 0 {
		if _, err := runLoad(ctx, t, tr, LoadOptions{Duration: *warmup, Concurrency: tf.concurrency, Seed: 1}, meters{}); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	o := LoadOptions{Duration: tf.duration, Concurrency: tf.concurrency, Seed: 2}
	if *open {
		o.Rate, o.Concurrency = tf.rate, tf.openConcurrency
	}
	before := scrapeCounters(*metrics)
	r, err := runLoad(ctx, t, tr, o, meters{serverPID: *pid})
	if err != nil {
		return err
	}
	after := scrapeCounters(*metrics)
	cache := after.sub(before)
	var rss int64
	if *pid > 0 {
		rss, _ = rssKiB(*pid)
	}
	if *asJSON {
		out := summarize(r)
		if h, ok := cache.ratio(); ok {
			out["cache_hit_ratio"] = h
		}
		out["server_rss_kib"] = rss
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	printResult(stdout, r)
	if h, ok := cache.ratio(); ok {
		fmt.Fprintf(stdout, "  cache: %.0f hits, %.0f misses = %.2f%% hits\n", cache.Hits, cache.Misses, 100*h)
	}
	fmt.Fprint(stdout, cache.leaseLine())
	if rss > 0 {
		fmt.Fprintf(stdout, "  server RSS: %.1f MiB\n", float64(rss)/1024)
	}
	return nil
}

// benchCmd is "extauthz-load bench": deploy every scenario, measure them in
// turns for --rounds rounds (bench.go), print each one's detail, then the
// table.
func benchCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var tf trafficFlags
	tf.register(fs, 1500*time.Millisecond)
	rounds := fs.Int("rounds", 5, "measure every scenario this many times, in turns (the table shows the best round)")
	names := make([]string, len(scenarios))
	for i, s := range scenarios {
		names[i] = s.Name
	}
	which := fs.String("scenarios", strings.Join(names, ","), "scenarios to run, in order (noop first: the ratios are to it)")
	bin := fs.String("extauthz", "", "the extauthz binary (default: go build ./cmd/extauthz into the work directory)")
	work := fs.String("workdir", "", "directory for configs, data and logs (default: a temporary one, removed after)")
	keys := fs.Int("keys", 100, "valid keys per scenario, created with extauthz keys create --json")
	limited := fs.Int("limited-keys", 10, "keys with rate 1/h, created when --mix has a limited share")
	warmup := fs.Duration("warmup", 500*time.Millisecond, "closed-loop warm-up before each scenario's turn (not reported)")
	firstWarmup := fs.Duration("first-warmup", 3*time.Second, "warm-up before a scenario's first turn")
	cliParallel := fs.Int("cli-parallel", 4, "extauthz keys create processes run at a time")
	audit := fs.String("audit", "none", "the servers' audit sink: none, or stdout (to a log file: what a default deployment pays)")
	scale := fs.Bool("scale", false, "also run the scale scenario (1M keys in Redis, cache 100k, Zipf traffic): takes minutes")
	scaleKeys := fs.Int("scale-keys", 1000000, "keys of the scale scenario, written straight into Redis")
	scaleCache := fs.Int("scale-cache", 100000, "cache.size of the scale scenario")
	scaleTTL := fs.Duration("scale-ttl", 0, "cache.ttl of the scale scenario (default: the server's, 30s): how long a found key is trusted before it is looked up again")
	scaleZipf := fs.Float64("scale-zipf", 1.1, "Zipf exponent of the scale scenario's traffic")
	scaleWarmup := fs.Duration("scale-warmup", 10*time.Second, "warm-up of the scale scenario")
	scaleInsert := fs.Int("scale-insert-workers", 64, "goroutines inserting the scale keys")
	profileDir := fs.String("profile", "", "after measuring, record each server with perf for --profile-duration into this directory")
	profileDur := fs.Duration("profile-duration", 5*time.Second, "length of the perf-recorded phase")
	jsonOut := fs.String("json", "", "also write every figure as JSON to this file")
	var variants listFlag
	fs.Var(&variants, "variant", "NAME=BINARY: also run each extauthz scenario with this build (repeatable), to measure a change side by side")
	rateLimitBin := fs.String("ratelimit", "", "the `PATH` of envoyproxy/ratelimit's service_cmd, for the ratelimit scenario (default: service_cmd in $GOBIN or $(go env GOPATH)/bin; build it with: "+rateLimitInstall+")")
	rateLimitWindow := fs.Duration("ratelimit-pipeline-window", 150*time.Microsecond, "REDIS_PIPELINE_WINDOW of the ratelimit scenario: its README recommends 150us-500us for throughput; 0 is its default, no write buffering")
	noopWorkers := fs.Int("noop-stream-workers", 64, "grpc.NumStreamWorkers of the no-op server (extauthz serve uses 64; keep them equal)")
	var serverEnv listFlag
	fs.Var(&serverEnv, "server-env", "KEY=VALUE for every server's environment (repeatable), e.g. GOGC=400")
	if err := fs.Parse(args); err != nil {
		return err
	}
	tr, err := tf.traffic()
	if err != nil {
		return err
	}
	var run []Scenario
	for n := range strings.SplitSeq(*which, ",") {
		if n = strings.TrimSpace(n); n == "" {
			continue
		}
		if n == "scale" {
			continue // --scale adds it, last
		}
		sc, ok := findScenario(n)
		if !ok {
			return fmt.Errorf("unknown scenario %q (have %s, scale)", n, strings.Join(names, ", "))
		}
		run = append(run, sc)
	}
	var rateLimit RateLimitOptions
	if slices.ContainsFunc(run, func(sc Scenario) bool { return sc.Peer }) {
		rateLimit = RateLimitOptions{PipelineWindow: *rateLimitWindow}
		explicit := false // --scenarios given: the peer was asked for by name
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "scenarios" || f.Name == "ratelimit" })
		rateLimit.Binary, err = findRateLimit(*rateLimitBin)
		if errors.Is(err, errNoRateLimit) && !explicit {
			fmt.Fprintf(stdout, "ratelimit scenario skipped: %v\n", err)
			run = slices.DeleteFunc(run, func(sc Scenario) bool { return sc.Peer })
		} else if err != nil {
			return fmt.Errorf("the ratelimit scenario: %w", err)
		}
	}
	if *scale || strings.Contains(","+*which+",", ",scale,") {
		if *scaleTTL < 0 {
			return fmt.Errorf("--scale-ttl %s: must not be negative", *scaleTTL)
		}
		run = append(run, scaleScenario(*scaleKeys, *scaleCache, *scaleTTL, *scaleZipf, "none"))
	}
	var extra []Scenario
	for _, v := range variants {
		name, path, ok := strings.Cut(v, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("--variant %q: want NAME=BINARY", v)
		}
		if path, err = filepath.Abs(path); err != nil {
			return err
		}
		for _, sc := range run {
			if !sc.Noop && !sc.Peer {
				sc.Name, sc.Title, sc.Binary = sc.Name+"@"+name, sc.Title+" ["+name+"]", path
				extra = append(extra, sc)
			}
		}
	}
	run = append(run, extra...)
	for _, kv := range serverEnv {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("--server-env %q: want KEY=VALUE", kv)
		}
	}
	if *audit != "none" && *audit != "stdout" {
		return fmt.Errorf("--audit %q: want none or stdout", *audit)
	}
	stopProfile, err := startCPUProfile(tf.cpuprofile)
	if err != nil {
		return err
	}
	defer stopProfile()

	o := BenchOptions{
		Extauthz: *bin, WorkDir: *work, NoopStreamWorkers: *noopWorkers, ServerEnv: serverEnv,
		Rounds: *rounds, FirstWarmup: *firstWarmup, Warmup: *warmup, Duration: tf.duration, Rate: tf.rate, Concurrency: tf.concurrency,
		OpenConcurrency: tf.openConcurrency, Conns: tf.conns,
		Keys: *keys, LimitedKeys: *limited, UnknownKeys: tf.unknown, Mix: tr.Mix, Paths: tr.Paths, Zipf: tr.Zipf, Clients: tr.Clients,
		CLIParallel: *cliParallel, Audit: *audit,
		ScaleWarmup: *scaleWarmup, ScaleInsert: *scaleInsert, RateLimit: rateLimit,
		Profile: *profileDir, ProfileDuration: *profileDur, Log: stderr,
	}
	if o.WorkDir == "" {
		if o.WorkDir, err = os.MkdirTemp("", "extauthz-load-"); err != nil {
			return err
		}
		defer os.RemoveAll(o.WorkDir)
	}
	if o.Extauthz == "" {
		o.Extauthz = filepath.Join(o.WorkDir, "extauthz")
		fmt.Fprintf(stderr, "building extauthz into %s\n", o.Extauthz)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", o.Extauthz, "github.com/extauthz/extauthz/cmd/extauthz")
		cmd.Stdout, cmd.Stderr = stderr, stderr
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build ./cmd/extauthz (or pass --extauthz): %w", err)
		}
	} else if o.Extauthz, err = filepath.Abs(o.Extauthz); err != nil {
		return err
	}
	if o.Profile != "" {
		bins := []string{o.Extauthz}
		for _, sc := range extra {
			bins = append(bins, sc.Binary)
		}
		for _, bin := range bins {
			if err := profilable(bin); err != nil {
				return fmt.Errorf("--profile: %w", err)
			}
		}
	}

	loadavg, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(stdout, "extauthz-load bench: %s, %d CPUs, GOMAXPROCS %d, load average %s\nmix %s, paths %q, %d client addresses\n",
		runtime.Version(), runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.Join(strings.Fields(string(loadavg))[:min(3, len(strings.Fields(string(loadavg))))], " "),
		o.Mix, tf.paths, o.Clients)
	results, err := runBench(ctx, run, o)
	if err != nil {
		return err
	}
	for _, r := range results {
		printScenario(stdout, r)
	}
	printTable(stdout, results, o)
	if *jsonOut != "" {
		return writeJSONFile(*jsonOut, results)
	}
	return nil
}

// summarize is a LoadResult's figures for JSON output.
func summarize(r *LoadResult) map[string]any {
	h := &r.Latency
	out := map[string]any{
		"mode": r.Mode, "rate": r.Rate, "concurrency": r.Concurrency,
		"elapsed_s": r.Elapsed.Seconds(), "scheduled": r.Scheduled, "sent": r.Sent, "completed": r.Completed,
		"rps": r.RPS(), "errors": r.Errors, "decisions": r.Decisions, "kinds": r.Kinds,
		"latency_us": map[string]float64{
			"p50": float64(h.Quantile(0.5)) / 1e3, "p90": float64(h.Quantile(0.9)) / 1e3,
			"p99": float64(h.Quantile(0.99)) / 1e3, "p999": float64(h.Quantile(0.999)) / 1e3,
			"max": float64(h.Max()) / 1e3, "mean": float64(h.Mean()) / 1e3,
		},
		"max_send_lag_us":         float64(r.MaxLag) / 1e3,
		"server_cpu_s":            r.ServerCPU.Seconds(),
		"server_cpu_us_per_check": float64(r.CPUPerCheck()) / 1e3,
		"client_cpu_us_per_check": float64(perCheck(r.ClientCPU, r.Completed)) / 1e3,
		"other_processes_cpus":    others(r),
	}
	for name, d := range r.ExtraCPU { // from /proc/<pid>/stat
		out[name+"_cpu_us_per_check"] = float64(perCheck(d, r.Completed)) / 1e3
	}
	if r.RedisMeasured {
		out["redis_info_cpu_us_per_check"] = float64(r.RedisCPUPerCheck()) / 1e3
	}
	if r.IOMeasured && r.Completed > 0 {
		out["server_reads_per_check"] = float64(r.ServerReads) / float64(r.Completed)
		out["server_writes_per_check"] = float64(r.ServerWrites) / float64(r.Completed)
		out["server_voluntary_switches_per_check"] = float64(r.ServerVoluntary) / float64(r.Completed)
		out["server_involuntary_switches_per_check"] = float64(r.ServerInvoluntary) / float64(r.Completed)
	}
	return out
}

func writeJSONFile(path string, results []*ScenarioResult) error {
	var out []map[string]any
	for _, r := range results {
		s := map[string]any{
			"scenario": r.Scenario.Name, "title": r.Scenario.Title, "keys": r.Keys,
			"closed": summarize(r.Closed), "open": summarize(r.Open),
			"closed_best_rps": r.RPS(false), "open_best_rps": r.RPS(true),
			"closed_best_cpu_us_per_check": float64(r.CPUPerCheck(false)) / 1e3,
			"open_best_cpu_us_per_check":   float64(r.CPUPerCheck(true)) / 1e3,
			"server_rss_kib":               r.ServerRSSKiB, "redis_rss_kib": r.RedisRSSKiB,
		}
		if r.Closed.RedisMeasured {
			s["closed_best_redis_cpu_us_per_check"] = float64(r.RedisCPUPerCheck(false)) / 1e3
			s["open_best_redis_cpu_us_per_check"] = float64(r.RedisCPUPerCheck(true)) / 1e3
		}
		if h, ok := r.ClosedCounters.ratio(); ok {
			s["closed_cache_hit_ratio"] = h
		}
		if h, ok := r.OpenCounters.ratio(); ok {
			s["open_cache_hit_ratio"] = h
		}
		out = append(out, s)
	}
	b, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil { // bench/, ignored by git, may not be there yet
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// listFlag is a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}
