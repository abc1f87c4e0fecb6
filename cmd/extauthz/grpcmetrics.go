package main

import (
	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"google.golang.org/grpc"
)

// grpcMetrics are the gRPC server's own metrics (calls started and handled
// by service, method and status; messages received and sent), from the
// grpc-ecosystem Prometheus provider, when metrics.grpc is on. A nil
// *grpcMetrics is off and costs nothing.
//
// The provider works with the server's own codec and stream workers: its
// interceptor sees the Check call like any other (the handler passes it the
// decoded request), and it counts per call, not per decoded type.
type grpcMetrics struct{ *grpcprom.ServerMetrics }

// newGRPCMetrics returns the metrics, or nil when off. Counters only: the
// check's own latency is extauthz_check_duration_seconds.
func newGRPCMetrics(on bool) *grpcMetrics {
	if !on {
		return nil
	}
	return &grpcMetrics{grpcprom.NewServerMetrics()}
}

// serverOptions are the interceptors that count every call.
func (m *grpcMetrics) serverOptions() []grpc.ServerOption {
	if m == nil {
		return nil
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(m.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(m.StreamServerInterceptor()),
	}
}

// initialize makes every method's series, at zero, so that rates and
// alerts work before the first call.
func (m *grpcMetrics) initialize(s *grpc.Server) {
	if m != nil {
		m.InitializeMetrics(s)
	}
}
