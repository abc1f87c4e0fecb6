package main

import (
	"context"
	"net"
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
