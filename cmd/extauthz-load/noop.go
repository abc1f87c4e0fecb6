package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/extauthz/extauthz/internal/gcfloor"
)

// noopServer answers every Check with OK at once. It is the ceiling the
// real server is compared with: the same grpc-go, the same server options,
// and the request decoding every grpc-go ext_authz server gets from the
// generated code (proto.Unmarshal of the whole CheckRequest), and no
// decision at all. extauthz decodes only the fields it reads
// (authz/envoy/wire.go), which costs less than that decoding: so it can measure
// below 1.00×, and the handler's own cost is what --profile shows.
type noopServer struct {
	authv3.UnimplementedAuthorizationServer
}

var okResponse = &authv3.CheckResponse{Status: &rpcstatus.Status{}}

func (noopServer) Check(context.Context, *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	return okResponse, nil
}

// newNoopGRPC returns a gRPC server with extauthz's server options
// (cmd/extauthz/serve.go) and the no-op Authorization service.
// streamWorkers > 0 adds grpc.NumStreamWorkers, for comparing with a server
// built with it.
func newNoopGRPC(streamWorkers uint32) *grpc.Server {
	opts := []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		grpc.MaxRecvMsgSize(1 << 20),
		grpc.MaxHeaderListSize(64 << 10),
		grpc.MaxConcurrentStreams(1024),
	}
	if streamWorkers > 0 {
		opts = append(opts, grpc.NumStreamWorkers(streamWorkers))
	}
	s := grpc.NewServer(opts...)
	authv3.RegisterAuthorizationServer(s, noopServer{})
	return s
}

// noopServerCmd is "extauthz-load noop-server": serve the no-op Check on
// --listen until SIGINT/SIGTERM, after printing "listening <addr>" on
// standard output. The scenario runner starts it as a process of its own,
// so that its CPU is read from /proc exactly like the real server's.
func noopServerCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("noop-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:0", "gRPC listen address")
	workers := fs.Uint("stream-workers", 0, "grpc.NumStreamWorkers (0: a goroutine per stream, as extauthz serve does)")
	heapFloor := fs.Uint("gc-heap-floor-mib", 16, "the GC heap floor extauthz serve runs with (internal/gcfloor; 0: off, plain GOGC)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := newNoopGRPC(uint32(*workers))
	// The same runtime setting as extauthz serve, so that the ceiling
	// collects garbage as often as the server compared with it.
	if *heapFloor > 0 {
		defer gcfloor.Start(uint64(*heapFloor)<<20, 500*time.Millisecond)()
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; s.Stop() }()
	fmt.Fprintf(stdout, "listening %s\n", ln.Addr())
	return s.Serve(ln)
}
