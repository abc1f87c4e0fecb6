package main

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLoadAgainstTheNoopServer runs the no-op server in this process and
// drives it for a second closed loop and half a second open loop, through
// the real gRPC path: every check must be answered, allowed, and counted.
func TestLoadAgainstTheNoopServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := newNoopGRPC(0)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)

	tr := testTraffic(t, 50, 1.2, Mix{1})
	tgt, err := dialTarget(ln.Addr().String(), 2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tgt.close)
	ctx := context.Background()

	closed, err := runLoad(ctx, tgt, tr, LoadOptions{Duration: time.Second, Concurrency: 8}, meters{})
	if err != nil {
		t.Fatal(err)
	}
	if closed.RPS() <= 0 || closed.ErrorCount() != 0 {
		t.Fatalf("closed loop: %.0f rps, errors %v", closed.RPS(), closed.Errors)
	}
	if closed.Decisions["allow"] != closed.Completed || closed.Latency.Count() != closed.Completed || closed.Sent != closed.Completed {
		t.Fatalf("closed loop: sent %d, completed %d, allowed %d, latencies %d", closed.Sent, closed.Completed, closed.Decisions["allow"], closed.Latency.Count())
	}
	if closed.ClientCPU <= 0 {
		t.Errorf("the load tool's own CPU was not measured")
	}

	open, err := runLoad(ctx, tgt, tr, LoadOptions{Duration: 500 * time.Millisecond, Rate: 2000, Concurrency: 64}, meters{})
	if err != nil {
		t.Fatal(err)
	}
	if open.Scheduled != 1000 || open.Sent != 1000 || open.Completed != 1000 || open.ErrorCount() != 0 {
		t.Fatalf("open loop at 2000/s for 0.5s: scheduled %d, sent %d, completed %d, errors %v", open.Scheduled, open.Sent, open.Completed, open.Errors)
	}
	if open.Latency.Quantile(0.5) <= 0 {
		t.Fatal("no latency recorded")
	}
}

// TestRedisEvenScenarioMakesEveryCheckOneRedisCall deploys the redis-even
// scenario for real (extauthz serve built from this tree, a redis-server,
// keys written straight into Redis) with fewer keys and short phases: every
// check must be allowed, rate limited in Redis without a lease, and Redis's
// own CPU must be measured for both phases.
func TestRedisEvenScenarioMakesEveryCheckOneRedisCall(t *testing.T) {
	sc, ok := findScenario("redis-even")
	if !ok {
		t.Fatal("no redis-even scenario")
	}
	sc.Keys = 200 // each far from exactRate at any speed this test runs
	bin := filepath.Join(t.TempDir(), "extauthz")
	build := exec.Command("go", "build", "-o", bin, "github.com/extauthz/extauthz/cmd/extauthz")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/extauthz: %v\n%s", err, out)
	}
	paths, err := ParsePaths("GET /api/users", "x-api-key", false)
	if err != nil {
		t.Fatal(err)
	}
	var progress strings.Builder
	o := BenchOptions{
		Extauthz: bin, WorkDir: t.TempDir(), Rounds: 1, Duration: 300 * time.Millisecond,
		Rate: 500, Concurrency: 4, OpenConcurrency: 16, Conns: 1,
		Keys: 5, UnknownKeys: 1, Mix: Mix{1}, Paths: paths, Zipf: 1.5, Clients: 10,
		CLIParallel: 1, Audit: "none", ScaleInsert: 8, Log: &progress,
	}
	results, err := runBench(context.Background(), []Scenario{sc}, o)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	r := results[0]
	if r.Keys != 200 || !strings.Contains(progress.String(), "inserted 200 keys") {
		t.Fatalf("%d keys; progress:\n%s", r.Keys, progress.String())
	}
	for _, ph := range []struct {
		name     string
		res      *LoadResult
		counters counters
	}{{"closed", r.Closed, r.ClosedCounters}, {"open", r.Open, r.OpenCounters}} {
		res := ph.res
		if res.Completed == 0 || res.ErrorCount() != 0 || res.Decisions["allow"] != res.Completed {
			t.Errorf("%s loop: %d checks, decisions %v, errors %v", ph.name, res.Completed, res.Decisions, res.Errors)
		}
		if ph.counters.RateLimited != float64(res.Completed) || ph.counters.Leased != 0 {
			t.Errorf("%s loop: %d checks, the server rate limited %.0f, %.0f from a lease; want all of them, none leased",
				ph.name, res.Completed, ph.counters.RateLimited, ph.counters.Leased)
		}
		if !res.RedisMeasured || res.RedisCPU <= 0 {
			t.Errorf("%s loop: Redis CPU %v (measured: %v)", ph.name, res.RedisCPU, res.RedisMeasured)
		}
	}
	var table strings.Builder
	printTable(&table, results, o)
	if want := us(r.RedisCPUPerCheck(false)) + "/" + us(r.RedisCPUPerCheck(true)); !strings.Contains(table.String(), want) {
		t.Errorf("the table does not show Redis CPU per check %s:\n%s", want, table.String())
	}
}
