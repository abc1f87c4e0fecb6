package main

import (
	"testing"
	"time"
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
