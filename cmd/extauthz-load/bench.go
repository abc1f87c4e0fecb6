package main

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// The bench command's figures are ratios to the no-op server measured in
// the same run, on a machine that other work may share. To keep a burst of
// someone else's work from landing on one scenario only, every scenario is
// deployed first and the measurements then take turns: round 1 measures
// each scenario once, round 2 again, and so on. The table reports, per
// scenario, the best round's throughput and CPU per check, and the latency
// percentiles of all rounds' requests together.
//
// Best, not median: interference (other processes, the hypervisor, which
// threads share a core) only ever adds CPU time to a check, and on the
// development VM it does so in bursts of seconds, so that the median of three
// rounds of the no-op server moved by 30% between runs while the best round
// moved by 10%, and the ratios to it by a few percent.

// ScenarioResult is what one scenario measured over every round.
type ScenarioResult struct {
	Scenario Scenario
	Keys     int
	Setup    time.Duration
	Rounds   []round
	// Closed and Open are every round's phase merged: counts, decisions,
	// errors and latencies of all requests, CPU of all phases.
	Closed, Open                 *LoadResult
	ClosedCounters, OpenCounters counters
	ServerRSSKiB, RedisRSSKiB    int64 // after the last round
	Profiles                     []string
}

// stat returns agg of f over the rounds' phases (0 without rounds).
func (r *ScenarioResult) stat(open bool, agg func([]float64) float64, f func(*LoadResult) float64) float64 {
	if len(r.Rounds) == 0 {
		return 0
	}
	var vs []float64
	for _, rd := range r.Rounds {
		p := rd.Closed
		if open {
			p = rd.Open
		}
		vs = append(vs, f(p.LoadResult))
	}
	return agg(vs)
}

// CPUPerCheck is the least CPU per check of the rounds (see above).
func (r *ScenarioResult) CPUPerCheck(open bool) time.Duration {
	return time.Duration(r.stat(open, slices.Min, func(l *LoadResult) float64 { return float64(l.CPUPerCheck()) }))
}

// RedisCPUPerCheck is the least redis-server CPU per check of the rounds
// (INFO cpu), for the same reason as CPUPerCheck.
func (r *ScenarioResult) RedisCPUPerCheck(open bool) time.Duration {
	return time.Duration(r.stat(open, slices.Min, func(l *LoadResult) float64 { return float64(l.RedisCPUPerCheck()) }))
}

// BestP99 is the lowest open-loop p99 of the rounds: for a ratio of two
// servers' tails, a stall that landed on one round of one of them (the
// merged percentiles of the table take it in whole) would decide it.
func (r *ScenarioResult) BestP99() time.Duration {
	return time.Duration(r.stat(true, slices.Min, func(l *LoadResult) float64 { return float64(l.Latency.Quantile(0.99)) }))
}

// RPS is the highest checks per second of the rounds.
func (r *ScenarioResult) RPS(open bool) float64 {
	return r.stat(open, slices.Max, (*LoadResult).RPS)
}

// CPUSpread is the median and the most CPU per check of the rounds, for
// the detail: how noisy the rounds were.
func (r *ScenarioResult) CPUSpread(open bool) (median, worst time.Duration) {
	cpu := func(l *LoadResult) float64 { return float64(l.CPUPerCheck()) }
	return time.Duration(r.stat(open, medianOf, cpu)), time.Duration(r.stat(open, slices.Max, cpu))
}

func medianOf(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// runBench deploys every scenario, measures them in turns for o.Rounds
// rounds, and returns their results in the order given.
func runBench(ctx context.Context, scs []Scenario, o BenchOptions) ([]*ScenarioResult, error) {
	var deps []*deployment
	defer func() {
		for _, d := range deps {
			d.close()
		}
	}()
	results := make([]*ScenarioResult, len(scs))
	for i, sc := range scs {
		d, err := deploy(ctx, sc, o)
		if err != nil {
			return nil, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		deps = append(deps, d)
		results[i] = &ScenarioResult{Scenario: sc, Keys: d.traffic.Keys.Valid.Len(), Setup: d.setup}
	}
	for n := range max(o.Rounds, 1) {
		for i, d := range deps {
			rd, err := d.measure(ctx, o, n)
			if err != nil {
				return nil, fmt.Errorf("scenario %s, round %d: %w", d.sc.Name, n+1, err)
			}
			results[i].Rounds = append(results[i].Rounds, rd)
		}
	}
	for i, d := range deps {
		r := results[i]
		var closed, open []*LoadResult
		for _, rd := range r.Rounds {
			closed, open = append(closed, rd.Closed.LoadResult), append(open, rd.Open.LoadResult)
			r.ClosedCounters, r.OpenCounters = r.ClosedCounters.add(rd.Closed.Counters), r.OpenCounters.add(rd.Open.Counters)
		}
		r.Closed, r.Open = mergeLoad(closed), mergeLoad(open)
		r.ServerRSSKiB, _ = rssKiB(d.server.pid())
		if d.redis != nil {
			r.RedisRSSKiB, _ = rssKiB(d.redis.PID())
		}
	}
	if o.Profile != "" {
		for i, d := range deps {
			logf := func(format string, args ...any) { fmt.Fprintf(o.Log, "["+d.sc.Name+"] "+format+"\n", args...) }
			for _, ph := range []struct {
				name string
				load LoadOptions
			}{{"closed", o.closedLoad(99)}, {"open", o.openLoad(98)}} {
				out, err := profile(ctx, d.target, d.traffic, ph.load, o, d.sc.Name+"-"+ph.name, d.server.pid(), logf)
				if err != nil {
					logf("profile: %v", err)
					continue
				}
				results[i].Profiles = append(results[i].Profiles, out)
			}
		}
	}
	return results, nil
}

// mergeLoad adds up runs of the same kind: counts, CPU and elapsed time are
// summed, latencies merged.
func mergeLoad(rs []*LoadResult) *LoadResult {
	m := &LoadResult{Errors: map[string]uint64{}, Decisions: map[string]uint64{}, Kinds: map[string]uint64{}, ExtraCPU: map[string]time.Duration{}}
	for _, r := range rs {
		m.Mode, m.Rate, m.Concurrency = r.Mode, r.Rate, r.Concurrency
		m.Elapsed += r.Elapsed
		m.Scheduled += r.Scheduled
		m.Sent += r.Sent
		m.Completed += r.Completed
		for k, v := range r.Errors {
			m.Errors[k] += v
		}
		for k, v := range r.Decisions {
			m.Decisions[k] += v
		}
		for k, v := range r.Kinds {
			m.Kinds[k] += v
		}
		m.Latency.Merge(&r.Latency)
		m.MaxLag = max(m.MaxLag, r.MaxLag)
		m.ServerCPU += r.ServerCPU
		m.ClientCPU += r.ClientCPU
		m.OthersCPU += r.OthersCPU
		m.RedisCPU += r.RedisCPU
		m.RedisMeasured = m.RedisMeasured || r.RedisMeasured
		m.ServerReads += r.ServerReads
		m.ServerWrites += r.ServerWrites
		m.ServerVoluntary += r.ServerVoluntary
		m.ServerInvoluntary += r.ServerInvoluntary
		m.IOMeasured = m.IOMeasured || r.IOMeasured
		for k, v := range r.ExtraCPU {
			m.ExtraCPU[k] += v
		}
		if m.cpuErr == nil {
			m.cpuErr = r.cpuErr
		}
	}
	return m
}
