package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// target is a server under load: gRPC connections to it, used round-robin
// by the workers (Envoy, too, spreads checks over a few connections, one or
// more per worker thread).
type target struct {
	addr  string
	conns []*grpc.ClientConn
}

func dialTarget(addr string, conns int) (*target, error) {
	t := &target{addr: addr}
	for range max(conns, 1) {
		c, err := grpc.NewClient(addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodec(rawCodec{})))
		if err != nil {
			t.close()
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		c.Connect()
		t.conns = append(t.conns, c)
	}
	return t, nil
}

func (t *target) close() {
	for _, c := range t.conns {
		c.Close()
	}
}

// LoadOptions say how hard and how long to drive a target.
type LoadOptions struct {
	Duration time.Duration
	// Rate > 0 is open loop: requests are sent on a fixed schedule of Rate
	// per second whatever the responses, and each latency is measured from
	// the request's scheduled time, so a stalled server is charged for the
	// requests it held up (no coordinated omission). Rate 0 is closed loop:
	// Concurrency workers send back to back, as fast as the server answers.
	Rate float64
	// Concurrency is the number of workers: the requests in flight (closed
	// loop), or the most that may be in flight (open loop).
	Concurrency int
	// Timeout bounds the wait for the last responses after Duration.
	Timeout time.Duration
	Seed    uint64
}

func (o LoadOptions) describe() string {
	if o.Rate > 0 {
		return fmt.Sprintf("open loop at %g/s for %s", o.Rate, o.Duration)
	}
	return fmt.Sprintf("closed loop with %d workers for %s", o.Concurrency, o.Duration)
}

// LoadResult is what one run measured.
type LoadResult struct {
	Mode        string // "closed" or "open"
	Rate        float64
	Concurrency int
	Elapsed     time.Duration // from the first send to the last response
	Scheduled   uint64        // open loop: requests the schedule called for
	Sent        uint64
	Completed   uint64 // answered (allowed or denied): the checks
	Errors      map[string]uint64
	Decisions   map[string]uint64
	Kinds       map[string]uint64 // requests sent by kind of key
	Latency     Histogram         // of answered checks
	MaxLag      time.Duration     // open loop: the latest a request left after its scheduled time
	ServerCPU   time.Duration     // of the server process (0 when its pid is unknown)
	ClientCPU   time.Duration     // of this process
	ExtraCPU    map[string]time.Duration
	// OthersCPU is what every other process on the machine used meanwhile
	// (all busy CPU time minus the server's, this process's and ExtraCPU):
	// on a shared machine, a measure of the noise in the figures.
	OthersCPU time.Duration
	// RedisCPU is what redis-server used meanwhile by its own account
	// (INFO cpu, redisinfo.go), when RedisMeasured: the run's server uses a
	// Redis the load tool started.
	RedisCPU      time.Duration
	RedisMeasured bool
	// ServerReads and ServerWrites are the server's read and write system
	// calls (procstat.go's sysIO), ServerVoluntary and ServerInvoluntary its
	// threads' context switches (ctxSwitches), when IOMeasured.
	ServerReads, ServerWrites          uint64
	ServerVoluntary, ServerInvoluntary uint64
	IOMeasured                         bool
	cpuErr                             error
}

// RPS is the checks answered per second.
func (r *LoadResult) RPS() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Completed) / r.Elapsed.Seconds()
}

// CPUPerCheck is the server's CPU time per answered check.
func (r *LoadResult) CPUPerCheck() time.Duration { return perCheck(r.ServerCPU, r.Completed) }

func perCheck(cpu time.Duration, n uint64) time.Duration {
	if n == 0 {
		return 0
	}
	return cpu / time.Duration(n)
}

// RedisCPUPerCheck is redis-server's CPU time per answered check (INFO cpu).
func (r *LoadResult) RedisCPUPerCheck() time.Duration { return perCheck(r.RedisCPU, r.Completed) }

// ErrorCount is the number of failed RPCs (never a denial).
func (r *LoadResult) ErrorCount() uint64 {
	var n uint64
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// workerStats is one worker's share of a LoadResult, merged at the end.
type workerStats struct {
	sent, completed uint64
	errors          map[string]uint64
	decisions       map[string]uint64
	kinds           [numKinds]uint64
	latency         Histogram
	maxLag          time.Duration
}

func (w *workerStats) send(ctx context.Context, conn *grpc.ClientConn, method string, p *picker, res reply) (time.Time, error) {
	k, req, err := p.next()
	if err != nil {
		return time.Time{}, err
	}
	w.kinds[k]++
	w.sent++
	err = conn.Invoke(ctx, method, req, res)
	done := time.Now()
	if err != nil {
		w.errors[errorName(err)]++
		return done, nil
	}
	w.completed++
	w.decisions[res.decision()]++
	return done, nil
}

func errorName(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Code().String()
	}
	return err.Error()
}

// meters are the processes whose CPU a run measures, besides this one.
type meters struct {
	serverPID int
	extra     map[string]int // e.g. "redis": its pid
}

// runLoad drives t with traffic tr for o.Duration and returns what it saw.
func runLoad(ctx context.Context, t *target, tr *Traffic, o LoadOptions, m meters) (*LoadResult, error) {
	if err := tr.check(); err != nil {
		return nil, err
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Second
	}
	// One context bounds every RPC: a per-request timeout would cost this
	// process a timer per request; a hung server is caught by this one.
	ctx, cancel := context.WithTimeout(ctx, o.Duration+o.Timeout)
	defer cancel()

	workers := make([]*workerStats, o.Concurrency)
	pickers := make([]*picker, o.Concurrency)
	for i := range workers {
		workers[i] = &workerStats{errors: map[string]uint64{}, decisions: map[string]uint64{}}
		pickers[i] = newPicker(tr, o.Seed+uint64(i)*7919+1)
		if _, _, err := pickers[i].next(); err != nil { // builds the templates before the clock starts
			return nil, err
		}
	}
	method := tr.method()
	res := &LoadResult{Rate: o.Rate, Concurrency: o.Concurrency, ExtraCPU: map[string]time.Duration{}}
	server := startCPU(m.serverPID)
	serverSys := startSys(m.serverPID)
	client := startCPU(os.Getpid())
	busy0, busyErr := machineBusyTicks()
	extra := map[string]*cpuMeter{}
	for name, pid := range m.extra {
		extra[name] = startCPU(pid)
	}

	var wg sync.WaitGroup
	var failed error
	var failOnce sync.Once
	fail := func(err error) { failOnce.Do(func() { failed = err; cancel() }) }
	start := time.Now()
	var last time.Time
	var lastMu sync.Mutex
	finish := func(t time.Time) {
		lastMu.Lock()
		if t.After(last) {
			last = t
		}
		lastMu.Unlock()
	}

	if o.Rate <= 0 {
		res.Mode = "closed"
		deadline := start.Add(o.Duration)
		for i := range workers {
			wg.Go(func() {
				w, p, conn := workers[i], pickers[i], t.conns[i%len(t.conns)]
				r := tr.newReply()
				var end time.Time
				for ctx.Err() == nil {
					sent := time.Now()
					if !sent.Before(deadline) {
						break
					}
					before := w.completed
					done, err := w.send(ctx, conn, method, p, r)
					if err != nil {
						fail(err)
						return
					}
					if w.completed > before {
						w.latency.Record(done.Sub(sent))
					}
					end = done
				}
				finish(end)
			})
		}
	} else {
		res.Mode = "open"
		total := scheduledCount(o.Rate, o.Duration)
		res.Scheduled = uint64(total)
		jobs := make(chan time.Duration, o.Concurrency)
		for i := range workers {
			wg.Go(func() {
				w, p, conn := workers[i], pickers[i], t.conns[i%len(t.conns)]
				r := tr.newReply()
				var end time.Time
				for at := range jobs {
					intended := start.Add(at)
					if lag := time.Since(intended); lag > w.maxLag {
						w.maxLag = lag
					}
					before := w.completed
					done, err := w.send(ctx, conn, method, p, r)
					if err != nil {
						fail(err)
						return
					}
					if w.completed > before {
						w.latency.Record(done.Sub(intended))
					}
					end = done
				}
				finish(end)
			})
		}
		dispatch(ctx, o.Rate, total, func() time.Duration { return time.Since(start) }, sleepCtx(ctx), func(at time.Duration) bool {
			select {
			case jobs <- at:
				return true
			case <-ctx.Done():
				return false
			}
		})
		close(jobs)
	}
	wg.Wait()
	if failed != nil {
		return nil, failed
	}
	if last.IsZero() {
		last = time.Now()
	}
	res.Elapsed = last.Sub(start)
	res.ServerCPU, res.cpuErr = server.stop()
	var sys sysCounts
	sys, res.IOMeasured = serverSys.stop()
	res.ServerReads, res.ServerWrites = sys.Reads, sys.Writes
	res.ServerVoluntary, res.ServerInvoluntary = sys.Voluntary, sys.Involuntary
	res.ClientCPU, _ = client.stop()
	for name, mtr := range extra {
		res.ExtraCPU[name], _ = mtr.stop()
	}
	if busy1, err := machineBusyTicks(); err == nil && busyErr == nil && m.serverPID > 0 {
		res.OthersCPU = ticksToDuration(busy1-busy0) - res.ServerCPU - res.ClientCPU
		for _, d := range res.ExtraCPU {
			res.OthersCPU -= d
		}
		res.OthersCPU = max(res.OthersCPU, 0)
	}

	res.Errors, res.Decisions, res.Kinds = map[string]uint64{}, map[string]uint64{}, map[string]uint64{}
	for _, w := range workers {
		res.Sent += w.sent
		res.Completed += w.completed
		for k, v := range w.errors {
			res.Errors[k] += v
		}
		for k, v := range w.decisions {
			res.Decisions[k] += v
		}
		for k, v := range w.kinds {
			if v > 0 {
				res.Kinds[kind(k).String()] += v
			}
		}
		res.Latency.Merge(&w.latency)
		res.MaxLag = max(res.MaxLag, w.maxLag)
	}
	if o.Rate > 0 && res.Sent < res.Scheduled && ctx.Err() != nil {
		res.Errors["not_sent_before_timeout"] += res.Scheduled - res.Sent
	}
	return res, nil
}

// scheduledCount is the number of requests an open-loop run of rate r per
// second sends in d: one at 0, then every 1/r, strictly before d.
func scheduledCount(r float64, d time.Duration) int {
	if r <= 0 || d <= 0 {
		return 0
	}
	n := int(math.Ceil(d.Seconds() * r))
	for n > 0 && scheduledAt(n-1, r) >= d { // float rounding at the boundary
		n--
	}
	return n
}

// scheduledAt is when, from the start, request i of an open-loop run at r
// per second is due.
func scheduledAt(i int, r float64) time.Duration {
	return time.Duration(math.Round(float64(i) * 1e9 / r))
}

// dispatch hands out total requests at rate r: each request's due time
// (since the start) goes to send as soon as the clock passes it. When send
// blocks (every worker busy) or a sleep oversleeps, the requests that fell
// due meanwhile go out back to back, keeping their own due times: the
// schedule never slips, and their latency includes the wait. It returns
// early when send returns false.
func dispatch(ctx context.Context, r float64, total int, now func() time.Duration, sleep func(time.Duration), send func(time.Duration) bool) {
	for i := 0; i < total && ctx.Err() == nil; {
		t := now()
		for ; i < total; i++ {
			at := scheduledAt(i, r)
			if at > t {
				break
			}
			if !send(at) {
				return
			}
		}
		if i < total {
			if d := scheduledAt(i, r) - now(); d > 0 {
				sleep(d)
			}
		}
	}
}

func sleepCtx(ctx context.Context) func(time.Duration) {
	return func(d time.Duration) {
		if d <= 0 {
			return
		}
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}
