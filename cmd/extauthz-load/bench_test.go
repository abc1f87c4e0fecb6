package main

import (
	"strings"
	"testing"
	"time"

	"github.com/extauthz/extauthz/config"
)

func TestTheTableTakesTheBestRound(t *testing.T) {
	mk := func(checks uint64, cpu, elapsed time.Duration) phase {
		return phase{LoadResult: &LoadResult{Completed: checks, ServerCPU: cpu, Elapsed: elapsed}}
	}
	r := &ScenarioResult{Rounds: []round{
		{Closed: mk(1000, 30*time.Millisecond, time.Second), Open: mk(500, 50*time.Millisecond, time.Second)},
		{Closed: mk(2000, 40*time.Millisecond, time.Second), Open: mk(500, 60*time.Millisecond, time.Second)},
		{Closed: mk(1500, 36*time.Millisecond, time.Second), Open: mk(500, 45*time.Millisecond, time.Second)},
	}}
	if got := r.CPUPerCheck(false); got != 20*time.Microsecond {
		t.Errorf("closed CPU per check %v, want the best round's 20µs", got)
	}
	if got := r.CPUPerCheck(true); got != 90*time.Microsecond {
		t.Errorf("open CPU per check %v, want 90µs", got)
	}
	if got := r.RPS(false); got != 2000 {
		t.Errorf("closed rps %v, want the best round's 2000", got)
	}
	if med, worst := r.CPUSpread(false); med != 24*time.Microsecond || worst != 30*time.Microsecond {
		t.Errorf("median %v worst %v, want 24µs and 30µs", med, worst)
	}
	if got := medianOf([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median of 1..4 = %v", got)
	}
	if (&ScenarioResult{}).CPUPerCheck(false) != 0 {
		t.Error("no rounds, yet a CPU figure")
	}
}

// The ratio targets are ratios to servers of the same run: the no-op for
// server CPU and p99, the peer for Redis CPU.
func TestIssue15TargetsAreRatiosOfTheSameRun(t *testing.T) {
	// result makes a scenario's result of one round: checks in each
	// phase, the server's and Redis's CPU in microseconds per check
	// (closed, open), and every open-loop check taking p99.
	result := func(sc Scenario, server, redis [2]time.Duration, p99 time.Duration) *ScenarioResult {
		const checks = 1000
		ph := func(i int, rate float64) phase {
			l := &LoadResult{Completed: checks, Rate: rate, ServerCPU: checks * server[i], RedisCPU: checks * redis[i], RedisMeasured: redis[i] > 0, Elapsed: time.Second}
			if rate > 0 {
				for range checks {
					l.Latency.Record(p99)
				}
			}
			return phase{LoadResult: l}
		}
		rd := round{Closed: ph(0, 0), Open: ph(1, 5000)}
		return &ScenarioResult{Scenario: sc, Rounds: []round{rd}, Closed: rd.Closed.LoadResult, Open: rd.Open.LoadResult}
	}
	us := time.Microsecond
	results := []*ScenarioResult{
		result(scenarios[0], [2]time.Duration{20 * us, 100 * us}, [2]time.Duration{}, 4*time.Millisecond),
		result(Scenario{Title: "exact", Store: "redis", KeyRate: exactRate, Even: true}, [2]time.Duration{40 * us, 110 * us}, [2]time.Duration{13 * us, 45 * us}, 5*time.Millisecond),
		result(Scenario{Title: "leased", Store: "redis", KeyRate: quietRate, Even: true}, [2]time.Duration{23 * us, 100 * us}, [2]time.Duration{2 * us, 14 * us}, 7*time.Millisecond),
		result(Scenario{Title: "peer", Store: "redis", Peer: true, Even: true}, [2]time.Duration{80 * us, 150 * us}, [2]time.Duration{14 * us, 28 * us}, 8*time.Millisecond),
		result(Scenario{Title: "scale", Store: "redis", KeyRate: "none", Scale: 1000000}, [2]time.Duration{40 * us, 150 * us}, [2]time.Duration{9 * us, 18 * us}, 9*time.Millisecond),
	}
	var b strings.Builder
	ratioVerdicts(&b, results, results[0])
	out := b.String()
	for _, want := range []string{
		"exact Redis CPU/check, closed loop 0.93× the peer",
		"exact Redis CPU/check, at 5000/s    1.61× the peer",
		"exact server CPU/check, closed loop 2.00× no-op",
		"exact server CPU/check, at 5000/s   1.10× no-op",
		"exact p99 at 5000/s, best round 1.25× no-op",
		"leased Redis CPU/check, at 5000/s   0.50× the peer",
		"leased server CPU/check, closed loop 1.15× no-op",
		"leased p99 at 5000/s, best round 1.75× no-op",
		"scale p99 at 5000/s, best round 2.25× no-op",
	} {
		want = strings.Join(strings.Fields(want), " ")
		found := false
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.Join(strings.Fields(line), " "), want) {
				found = true
			}
		}
		if !found {
			t.Errorf("no line %q in:\n%s", want, out)
		}
	}
	verdict := func(prefix string) string {
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.Join(strings.Fields(line), " "), prefix) {
				f := strings.Fields(line)
				return f[len(f)-1]
			}
		}
		return ""
	}
	for prefix, want := range map[string]string{
		"exact Redis CPU/check, closed loop":  "ok",
		"exact Redis CPU/check, at 5000/s":    "MISSED",
		"exact server CPU/check, closed loop": "MISSED",
		"exact server CPU/check, at 5000/s":   "ok",
		"exact p99 at 5000/s, best round":     "ok",
		"leased p99 at 5000/s, best round":    "MISSED",
		"scale p99 at 5000/s, best round":     "MISSED",
	} {
		if got := verdict(prefix); got != want {
			t.Errorf("%s: %q, want %q", prefix, got, want)
		}
	}
	if strings.Contains(out, "peer Redis") || strings.Contains(out, "no-op ext_authz") {
		t.Errorf("the servers compared against have no targets of their own:\n%s", out)
	}

	b.Reset()
	ratioVerdicts(&b, results[:1], results[0])
	if !strings.Contains(b.String(), "none measured") {
		t.Errorf("without the scenarios, it says so: %s", b.String())
	}
}

// A stall in one round of one server must not decide a ratio of tails.
func TestTheBestP99IsTheBestRounds(t *testing.T) {
	open := func(d time.Duration) round {
		l := &LoadResult{Completed: 100, Rate: 5000}
		for range 100 {
			l.Latency.Record(d)
		}
		return round{Closed: phase{LoadResult: &LoadResult{}}, Open: phase{LoadResult: l}}
	}
	r := &ScenarioResult{Rounds: []round{open(70 * time.Millisecond), open(5 * time.Millisecond)}}
	if got := r.BestP99(); got < 4900*time.Microsecond || got > 5100*time.Microsecond {
		t.Errorf("best p99 %v, want the second round's 5ms", got)
	}
}

// The servers' config is one extauthz takes, and the scale scenario's
// --scale-ttl reaches its cache.
func TestTheServerConfigLoads(t *testing.T) {
	t.Setenv(pepperEnv, "a pepper of the load tool, long enough")
	for _, tc := range []struct {
		cache string
		ttl   time.Duration
	}{
		{"{size: 100000}", 30 * time.Second},
		{"{size: 100000, ttl: 5m0s}", 5 * time.Minute},
	} {
		cfg, err := config.Parse([]byte(serverConfig(`{backend: redis, redis: {url: "redis://127.0.0.1:1", prefix: "load:"}}`, tc.cache, "none")))
		if err != nil {
			t.Fatalf("%s: %v", tc.cache, err)
		}
		if got := time.Duration(cfg.Cache.TTL); got != tc.ttl {
			t.Errorf("%s: ttl %v, want %v", tc.cache, got, tc.ttl)
		}
	}
	if sc := scaleScenario(1000, 100, 5*time.Minute, 1.1, "none"); sc.CacheTTL != 5*time.Minute || !strings.HasSuffix(sc.Title, ", ttl 5m0s") {
		t.Errorf("scale scenario with a ttl: %+v", sc)
	}
}
