package redis

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/internal/redistest"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
	"github.com/extauthz/extauthz/ratelimit"
	"github.com/extauthz/extauthz/ratelimit/limitertest"
)

// BenchmarkRedisAllow measures the Redis limiter's throughput with 64
// concurrent callers against a redistest server, and beside it what
// `redis-benchmark -t incr -c 64 -n 200000 -P 1 -q -p <port>` reaches on the
// same server just before and just after (the metric incr/s, their mean, and
// checks/s as a fraction of it: the machine's load moves both):
//
//	go test -run '^$' -bench 'BenchmarkRedisAllow' -benchtime 200000x ./ratelimit/redis/
func BenchmarkRedisAllow(b *testing.B) {
	srv := redistest.Start(b)
	client := newClient(b, srv.Addr)
	for _, tc := range []struct {
		name  string
		two   bool
		exact bool // a limit too small to lease: every check goes to Redis
		opts  Options
	}{
		{"one limit", false, false, Options{}},
		{"two limits", true, false, Options{}},
		{"one limit, exact", false, true, Options{}},
		{"one limit, exact, 4 pipelines", false, true, Options{Pipelines: 4}},
	} {
		checks := limitertest.Checks(10000, tc.two)
		if tc.exact {
			for _, c := range checks {
				c[0].Rate = ratelimit.Rate{N: 2*leaseShare - 1, Window: time.Second}
			}
		}
		b.Run(tc.name, func(b *testing.B) {
			tc.opts.Prefix = uniquePrefix()
			tc.opts.Timeout = time.Second
			lim := newRedis(b, client, tc.opts)
			ctx := context.Background()
			var seq atomic.Int64
			b.SetParallelism((64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			var incr float64
			if b.N > 1 {
				incr = redisBenchmarkINCR(b, srv)
			}
			cpu0 := redisCPU(b, client)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seq.Add(1) * 7919)
				for pb.Next() {
					i++
					if _, err := lim.Allow(ctx, checks[i%len(checks)]); err != nil {
						b.Error(err)
						return
					}
				}
			})
			rate := float64(b.N) / time.Since(start).Seconds()
			b.StopTimer()
			b.ReportMetric(rate, "checks/s")
			b.ReportMetric((redisCPU(b, client)-cpu0).Seconds()*1e6/float64(b.N), "redis-µs/check")
			if b.N > 1 {
				incr = (incr + redisBenchmarkINCR(b, srv)) / 2
				b.ReportMetric(incr, "redis-benchmark-incr/s")
				b.ReportMetric(rate/incr, "of-incr")
			}
			if st := lim.Stats(); st.Fallback != 0 {
				b.Errorf("%d checks fell back: the figure is not Redis's", st.Fallback)
			}
		})
	}
}

// redisCPU is the CPU time the Redis server has used, user and system, from
// INFO cpu.
func redisCPU(b testing.TB, client goredis.UniversalClient) time.Duration {
	info, err := client.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatalf("INFO cpu: %v", err)
	}
	var total float64
	for line := range strings.Lines(info) {
		name, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (name == "used_cpu_sys" || name == "used_cpu_user") {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatalf("INFO cpu: %s: %v", line, err)
			}
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}

// redisBenchmarkINCR runs redis-benchmark's INCR test (64 clients, no
// pipelining) against srv and returns its requests/s.
func redisBenchmarkINCR(b *testing.B, srv *redistest.Server) float64 {
	port := srv.Addr[strings.LastIndexByte(srv.Addr, ':')+1:]
	out, err := exec.Command("redis-benchmark", "-t", "incr", "-c", "64", "-n", "200000", "-P", "1", "-q", "-p", port).CombinedOutput()
	if err != nil {
		b.Fatalf("redis-benchmark: %v\n%s", err, out)
	}
	// "INCR: 98765.43 requests per second, p50=0.335 msec" (after progress
	// lines ending in \r)
	text := string(out)
	i := strings.LastIndex(text, "INCR:")
	if i < 0 {
		b.Fatalf("redis-benchmark: unexpected output %q", out)
	}
	f := strings.Fields(text[i+len("INCR:"):])
	if len(f) == 0 {
		b.Fatalf("redis-benchmark: unexpected output %q", out)
	}
	rate, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		b.Fatalf("redis-benchmark: unexpected output %q", out)
	}
	return rate
}

// BenchmarkRedisCallAtRest measures what one call costs a Redis that is
// otherwise idle: calls one at a time at 5,000 a second, as a replica sends
// them when every check is its own batch (a limit too small to lease, a few
// checks a second per key). The metric redis-µs/call is Redis's own CPU per
// call (INFO cpu) for a PING (waking up to read a request and write a reply,
// whatever the request), for envoyproxy/ratelimit's call (INCRBY and PEXPIRE
// in one pipeline), for the least a script call can be (a script that
// returns 1), for the least a script that counts can be (one that reads a
// key and writes it back with an expiry), and for allow.lua checking one
// limit of one of 1,000 keys. What each adds to the PING is its own work,
// paid on a core whose caches the rest of the machine has used since the
// last call:
//
//	go test -run '^$' -bench 'BenchmarkRedisCallAtRest' -benchtime 20000x ./ratelimit/redis/
func BenchmarkRedisCallAtRest(b *testing.B) {
	srv := redistest.Start(b)
	client := newClient(b, srv.Addr)
	ctx := context.Background()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench:count:{key%d}:", i)
	}
	rate := ratelimit.Rate{N: 2*leaseShare - 1, Window: time.Second}
	wUs, sUs := rate.Micros()
	trivial := goredis.NewScript("return 1")
	getSet := goredis.NewScript("local v = redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], 'x', 'PX', 1000) return 1")
	for _, s := range []*goredis.Script{trivial, getSet} {
		if err := s.Load(ctx, client).Err(); err != nil {
			b.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		call func(i int) error
	}{
		{"PING", func(int) error { return client.Ping(ctx).Err() }},
		{"INCRBY and PEXPIRE", func(i int) error {
			_, err := client.Pipelined(ctx, func(p goredis.Pipeliner) error {
				p.IncrBy(ctx, keys[i%len(keys)], 1)
				p.PExpire(ctx, keys[i%len(keys)], time.Second)
				return nil
			})
			return err
		}},
		{"a script that returns 1", func(i int) error {
			return trivial.EvalSha(ctx, client, []string{keys[i%len(keys)]}).Err()
		}},
		{"a script that GETs and SETs", func(i int) error {
			return getSet.EvalSha(ctx, client, []string{keys[i%len(keys)]}).Err()
		}},
		{"allow.lua", func(i int) error {
			c := &call{keys: []string{keys[i%len(keys)]}, args: appendArgs(nil, 1, 1, rate.N, wUs, sUs)}
			return allow(ctx, client, batchArgs([]*call{c}, "")).Err()
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			if err := client.Del(ctx, keys...).Err(); err != nil {
				b.Fatal(err)
			}
			for i := range 1000 { // warm: the script loaded, the counters there
				if err := tc.call(i); err != nil {
					b.Fatal(err)
				}
			}
			const every = time.Second / 5000
			cpu0 := redisCPU(b, client)
			b.ResetTimer()
			start := time.Now()
			i := 0
			for b.Loop() {
				time.Sleep(time.Until(start.Add(time.Duration(i) * every)))
				if err := tc.call(i); err != nil {
					b.Fatal(err)
				}
				i++
			}
			b.StopTimer()
			b.ReportMetric((redisCPU(b, client)-cpu0).Seconds()*1e6/float64(i), "redis-µs/call")
		})
	}
}

// BenchmarkRedisClientCall measures what a call of allow.lua (one check of
// one limit) costs this process, the replica's side: its CPU per call
// (getrusage, user and system) when calls go one after another, each
// waiting for its reply, as a replica's batches do when Redis is idle. Four
// ways to send it: through go-redis as the limiter does (a pooled
// connection, checked with a non-blocking peek each time it is taken); the
// same through a client as the server dials it (keystore/redis.Dial: every
// reply read through the bound on what it may declare, each call given its
// time budget by a hook); on one connection go-redis hands out for good
// (client.Conn: no pool, no peek); and written and read by hand on one
// net.Conn (no pool, no hooks, no reconnection, no TLS: the most "a
// pipeline writer of our own" could save, before the code that would make
// it usable):
//
//	go test -run '^$' -bench 'BenchmarkRedisClientCall' -benchtime 30000x -count 6 ./ratelimit/redis/
func BenchmarkRedisClientCall(b *testing.B) {
	srv := redistest.Start(b)
	client := newClient(b, srv.Addr)
	ctx := context.Background()
	rate := ratelimit.Rate{N: 2*leaseShare - 1, Window: time.Second}
	wUs, sUs := rate.Micros()
	c := &call{keys: []string{"bench:count:{key}:"}, args: appendArgs(nil, 1, 1, rate.N, wUs, sUs)}
	if err := allow(ctx, client, batchArgs([]*call{c}, "")).Err(); err != nil { // loads the script
		b.Fatal(err)
	}
	dialled, err := redisstore.Dial(redisstore.Options{URL: "redis://" + srv.Addr + "/0", MaxRetries: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer dialled.Close()
	sticky := client.Conn()
	defer sticky.Close()
	conn, err := net.Dial("tcp", srv.Addr)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	rd := bufio.NewReader(conn)
	var buf []byte
	for _, tc := range []struct {
		name string
		call func() error
	}{
		{"go-redis", func() error { return allow(ctx, client, batchArgs([]*call{c}, "")).Err() }},
		{"go-redis as the server dials it (replies scanned, a call budget)", func() error {
			return allow(ctx, dialled, batchArgs([]*call{c}, "")).Err()
		}},
		{"go-redis, one connection", func() error {
			cmd := allowCmd(ctx, batchArgs([]*call{c}, ""), "evalsha", allowScript.Hash())
			return sticky.Process(ctx, cmd)
		}},
		{"by hand, one connection", func() error {
			buf = appendRESP(buf[:0], "evalsha", allowScript.Hash(), "1", c.keys[0], "", strconv.Itoa(ratelimit.Span), string(c.args))
			if err := conn.SetDeadline(time.Now().Add(time.Second)); err != nil {
				return err
			}
			if _, err := conn.Write(buf); err != nil {
				return err
			}
			return readInts(rd)
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cpu0 := processCPU()
			for b.Loop() {
				if err := tc.call(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N)/1e3, "client-cpu-µs/call")
		})
	}
}

// processCPU is this process's CPU time so far, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// appendRESP appends a command in the Redis protocol: an array of bulk
// strings.
func appendRESP(b []byte, args ...string) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(len(args)), 10)
	b = append(b, "\r\n"...)
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, "\r\n"...)
		b = append(b, a...)
		b = append(b, "\r\n"...)
	}
	return b
}

// readInts reads a reply that must be an array of integers.
func readInts(rd *bufio.Reader) error {
	line, err := rd.ReadSlice('\n')
	if err != nil {
		return err
	}
	if len(line) < 3 || line[0] != '*' {
		return fmt.Errorf("reply %q, want an array", line)
	}
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	if err != nil {
		return err
	}
	for range n {
		if line, err = rd.ReadSlice('\n'); err != nil {
			return err
		}
		if len(line) < 3 || line[0] != ':' {
			return fmt.Errorf("reply %q, want an integer", line)
		}
	}
	return nil
}

// BenchmarkRedisScriptInstructions counts the instructions Redis runs for
// allow.lua, under valgrind's callgrind: a count that repeats exactly from
// run to run, where Redis's CPU time on a shared machine moves by half, so a
// change to the script can be judged by a few percent. The traffic is
// `make load`'s redis-even: 1,000 keys used evenly, 5,000 checks a second
// (of a clock the benchmark passes to the script, so the counters look the
// same however slowly Redis runs under valgrind), one limit too small to
// lease; the counters are warmed with 4 seconds of it first. It reports
// instructions per call and per check for a call of one check (the case of
// an idle Redis) and of 16 (a busy one), of 16 checks of two limits each (a
// key's and a route's, which the script runs by its path for several
// limits), for the floor of any such script (its Redis calls and reply,
// none of its arithmetic), for the peer's pair of commands, and for a PING:
// what reading a request and writing its reply costs whatever the request. The script is
// given the clock, so its call of TIME, about 11,000 instructions a call, is
// not counted. It needs valgrind (callgrind_control included):
//
//	go test -run '^$' -bench 'BenchmarkRedisScriptInstructions' -benchtime 300x ./ratelimit/redis/
func BenchmarkRedisScriptInstructions(b *testing.B) {
	for _, tool := range []string{"valgrind", "callgrind_control"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not found (install the valgrind package): %v", tool, err)
		}
	}
	dir := b.TempDir()
	launcher := filepath.Join(dir, "redis-under-callgrind")
	script := "#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no --toggle-collect=processInputBuffer --callgrind-out-file=" + filepath.Join(dir, "cg.out") + " redis-server \"$@\"\n"
	if err := os.WriteFile(launcher, []byte(script), 0o755); err != nil {
		b.Fatal(err)
	}
	srv := redistest.StartWith(b, redistest.Options{Launcher: launcher})
	client := newClient(b, srv.Addr)
	ctx := context.Background()
	if err := allowScript.Load(ctx, client).Err(); err != nil {
		b.Fatal(err)
	}
	rate := ratelimit.Rate{N: 2*leaseShare - 1, Window: time.Second}
	wUs, sUs := rate.Micros()
	callgrind := func(args ...string) {
		if out, err := exec.Command("callgrind_control", append(args, strconv.Itoa(srv.PID()))...).CombinedOutput(); err != nil {
			b.Fatalf("callgrind_control %v: %v\n%s", args, err, out)
		}
	}
	// counted runs f with instructions counted and returns how many Redis ran.
	dumps := 0
	counted := func(f func()) float64 {
		callgrind("--zero")
		callgrind("--instr=on")
		f()
		callgrind("--instr=off")
		callgrind("--dump")
		dumps++
		data, err := os.ReadFile(filepath.Join(dir, "cg.out."+strconv.Itoa(dumps)))
		if err != nil {
			b.Fatal(err)
		}
		for line := range strings.Lines(string(data)) {
			if v, ok := strings.CutPrefix(line, "totals: "); ok {
				n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
				if err != nil {
					b.Fatalf("callgrind dump: %q: %v", line, err)
				}
				return n
			}
		}
		b.Fatalf("callgrind dump %d has no totals line", dumps)
		return 0
	}
	for _, tc := range []struct {
		size int
		two  bool // a key's limit and a route's: the script's path for several limits
	}{{1, false}, {16, false}, {16, true}} {
		// The clock and the keys go on from run to run of the benchmark
		// (go test runs it with b.N = 1 first): the warm-up is paid once.
		size := tc.size
		rng := rand.New(rand.NewPCG(1, 2))
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
		batch := make([]*call, size)
		send := func(b *testing.B) {
			for i := range batch {
				now += 200 // 5,000 checks a second
				key := fmt.Sprintf("bench:count:{key%d}:", rng.IntN(1000))
				c := &call{keys: []string{key}, args: appendArgs(nil, 1, 1, rate.N, wUs, sUs)}
				if tc.two {
					c.keys = append(c.keys, key+"/r")
					c.args = appendArgs(nil, 1, 2, rate.N, wUs, sUs, rate.N, wUs, sUs)
				}
				batch[i] = c
			}
			if err := allow(ctx, client, batchArgs(batch, strconv.FormatInt(now, 10))).Err(); err != nil {
				b.Fatal(err)
			}
		}
		warm := false
		name := fmt.Sprintf("a call of %d", size)
		if tc.two {
			name += ", two limits"
		}
		b.Run(name, func(b *testing.B) {
			if !warm {
				for range 20000 / size {
					send(b)
				}
				warm = true
			}
			b.ResetTimer()
			n := counted(func() {
				for range b.N {
					send(b)
				}
			})
			b.ReportMetric(n/float64(b.N), "instructions/call")
			b.ReportMetric(n/float64(b.N*size), "instructions/check")
		})
	}
	// The floor of any script that counts as allow.lua does: a script of no
	// arithmetic at all making the Redis calls of a one-check call (a GET
	// of the counter, a SET of a counter-sized string with its expiry) and
	// a reply of four values, given the same arguments plus that string.
	floor := goredis.NewScript("redis.call('GET', KEYS[1]) " +
		"redis.call('SET', KEYS[1], ARGV[4], 'PX', '1050') return {1, 2, 3, 4}")
	if err := floor.Load(ctx, client).Err(); err != nil {
		b.Fatal(err)
	}
	b.Run("floor: a script's call, GET, SET, a reply", func(b *testing.B) {
		counter := strings.Repeat("c", 16+16*5) // five groups
		args := string(appendArgs(nil, 1, 1, rate.N, wUs, sUs))
		n := counted(func() {
			for i := range b.N {
				key := fmt.Sprintf("bench:floor:{key%d}:", i%1000)
				if err := floor.EvalSha(ctx, client, []string{key}, "1", strconv.Itoa(ratelimit.Span), args, counter).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(n/float64(b.N), "instructions/call")
	})
	// What commands without a script cost, for comparison: the peer's pair
	// (envoyproxy/ratelimit's INCRBY and EXPIRE, pipelined), and a count
	// kept as INCR-first sub-window counters (INCRBY, PEXPIRE, and an MGET
	// of the window's 20 sub-windows).
	rng := rand.New(rand.NewPCG(3, 4))
	b.Run("peer: INCRBY+EXPIRE", func(b *testing.B) {
		n := counted(func() {
			for range b.N {
				key := fmt.Sprintf("bench:peer:key%d_%d", rng.IntN(1000), time.Now().Unix())
				pipe := client.Pipeline()
				pipe.IncrBy(ctx, key, 1)
				pipe.Expire(ctx, key, time.Second)
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(n/float64(b.N), "instructions/call")
	})
	b.Run("INCRBY+PEXPIRE+MGET20", func(b *testing.B) {
		keys := make([]string, 20)
		n := counted(func() {
			for range b.N {
				k := rng.IntN(1000)
				sub := time.Now().UnixMilli() / 50
				for j := range keys {
					keys[j] = fmt.Sprintf("bench:sub:{key%d}:%d", k, sub-int64(j))
				}
				pipe := client.Pipeline()
				pipe.IncrBy(ctx, keys[0], 1)
				pipe.PExpire(ctx, keys[0], 2*time.Second)
				pipe.MGet(ctx, keys...)
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(n/float64(b.N), "instructions/call")
	})
	b.Run("PING", func(b *testing.B) {
		n := counted(func() {
			for range b.N {
				if err := client.Ping(ctx).Err(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(n/float64(b.N), "instructions/call")
	})
}
