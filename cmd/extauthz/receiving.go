package main

import (
	"context"
	"net/netip"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// receivingLimits bound the gRPC calls waiting for a message, per client
// (clientOf) and in all. grpc-go starts a call's handler as soon as its
// headers come, and the handler then waits for the message, holding a
// goroutine, the transport's state, the call's metadata and what has come
// of the message, up to envoy.MaxCheckRequestBytes: about 366 KiB in all.
// One client within its connection cap (1,024) and the calls a connection
// may have in flight (1,024), renewing each call as the server's bound ends
// it, could otherwise make the server hold hundreds of gigabytes.
//
// A call counts only while it waits: Envoy sends a Check's message with its
// headers, so its handler finds it there and the place is given back at
// once, and checks in flight (waiting on the store, say) do not count. So
// the bound is on the calls a client can hold, not on the checks it makes.
// At the bound, what the calls hold is at most 512 × 366 KiB, 183 MiB,
// within the memory the shipped deployments give the process (GOMEMLIMIT
// 460 MiB). A call past it is refused with RESOURCE_EXHAUSTED, which Envoy
// answers with its status_on_error.
var receivingLimits = clientLimit{PerClient: 128, Total: 512}

// errTooManyReceiving refuses a call past receivingLimits.
var errTooManyReceiving = status.Error(codes.ResourceExhausted, "too many calls of this client, or of all, are waiting for their message")

// Begin takes a place among the calls waiting for their message for the
// call of ctx, or refuses it (envoy.Receiving).
func (s *server) Begin(ctx context.Context) (netip.Addr, error) {
	p, _ := peer.FromContext(ctx)
	client := clientOf(p)
	if !s.receiving.acquire(client) {
		if s.refusedCalls != nil {
			method, _ := grpc.Method(ctx)
			s.refusedCalls.Printf("gRPC call refused: its client has %d calls, or all clients %d, waiting for their message (method %s, from %s)",
				receivingLimits.PerClient, receivingLimits.Total, method, peerString(p))
		}
		return netip.Addr{}, errTooManyReceiving
	}
	return client, nil
}

// End gives back the place Begin took for client.
func (s *server) End(client netip.Addr) { s.receiving.release(client) }

// receive reads a message with recv within receivingLimits.
func (s *server) receive(ctx context.Context, recv func() error) error {
	client, err := s.Begin(ctx)
	if err != nil {
		return err
	}
	defer s.End(client)
	return recv()
}

// boundUnary is desc with each method's message read within
// receivingLimits, as the Check handler reads its own (envoy.Receiving).
func (s *server) boundUnary(desc grpc.ServiceDesc) *grpc.ServiceDesc {
	methods := make([]grpc.MethodDesc, len(desc.Methods))
	for i, m := range desc.Methods {
		handler := m.Handler
		m.Handler = func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			return handler(srv, ctx, func(msg any) error {
				return s.receive(ctx, func() error { return dec(msg) })
			}, intercept)
		}
		methods[i] = m
	}
	desc.Methods = methods
	return &desc
}

// boundStream reads every message of a streaming call (a health Watch,
// reflection) within receivingLimits: a stream's handler waits for its
// messages as a unary one does.
func (s *server) boundStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, receivingStream{ServerStream: ss, s: s})
}

type receivingStream struct {
	grpc.ServerStream
	s *server
}

func (r receivingStream) RecvMsg(m any) error {
	return r.s.receive(r.Context(), func() error { return r.ServerStream.RecvMsg(m) })
}
