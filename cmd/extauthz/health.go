package main

import (
	"context"
	"net"
	"sync"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/extauthz/extauthz/authz"
)

// healthService is grpc-go's health server as the gRPC listener serves it:
// a Watch of a service this server does not report on is watched under one
// fixed name instead of the name the caller sent.
//
// A Watch stream is meant to last (boundCall exempts it from the call
// bound), and grpc-go's server keeps the name it watches for as long as the
// stream is open. The name is the caller's to write, up to the 1 MiB a
// message may have, and a connection may hold 1,024 streams: about a
// gigabyte per connection, held by anyone who can reach the gRPC port. A
// name that is not served never becomes served (the server sets statuses
// only for servedHealth), so every such stream sees SERVICE_UNKNOWN either
// way, and the stream stays open as the health protocol asks.
//
// The streams themselves are bounded too, in number (watchLimits): each one
// holds a goroutine and the transport's state for it, about 8 KiB (and
// its metadata, at most grpcMaxCallMetadataBytes: boundCall), and
// nothing else ends it, so without a bound anyone who can reach the port
// could open them by the million, 1,024 a connection, and keep them at no
// cost of their own until the server runs out of memory. The bound is per
// client (watchClient) as well as in all, so that one client cannot take
// every stream. Its own clients watch once per connection (grpc-go's
// client-side health checking); Envoy's and Kubernetes' health checks call
// Check.
//
// And a Watch ends at shutdown, once it has told its client NOT_SERVING
// (endingWatch): graceful stop waits for every call in flight, so one
// client keeping a Watch open would otherwise hold up every shutdown for
// its whole bound, and the last-use writes and audit events behind it.
type healthService struct {
	*health.Server
	watches *watchCount
	// ending is done once shutdown has begun.
	ending context.Context
}

// watchLimit bounds the Watch streams open at once, per client address
// and in all.
type watchLimit struct {
	PerClient, Total int
}

// watchLimits are the gRPC listener's; tests lower them.
var watchLimits = watchLimit{PerClient: 16, Total: 1024}

// watchCount counts the open Watch streams against a watchLimit.
type watchCount struct {
	limit watchLimit

	mu       sync.Mutex
	total    int
	byClient map[string]int
}

func newWatchCount(limit watchLimit) *watchCount {
	return &watchCount{limit: limit, byClient: make(map[string]int)}
}

// acquire takes a place for a stream from client, or reports that none is
// free; a place taken is given back with release.
func (w *watchCount) acquire(client string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.total >= w.limit.Total || w.byClient[client] >= w.limit.PerClient {
		return false
	}
	w.total++
	w.byClient[client]++
	return true
}

func (w *watchCount) release(client string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.total--
	if w.byClient[client]--; w.byClient[client] == 0 {
		delete(w.byClient, client)
	}
}

// watchClient is what a Watch stream counts against: its client's block
// of addresses (authz.AddressBlock: an IPv4 address, an IPv6 /64), as the
// lookup guard counts it, not the address and port, which every new
// connection changes, nor an IPv6 address, of which one host may pick any
// in its /64. A peer that is not an IP address (a Unix socket's) counts as
// one client.
func watchClient(p *peer.Peer) string {
	if p == nil || p.Addr == nil {
		return ""
	}
	if a, ok := p.Addr.(*net.TCPAddr); ok {
		return authz.AddressBlock(a.AddrPort().Addr()).String()
	}
	return p.Addr.Network()
}

// errTooManyWatches is the answer to a Watch past its bound. Such a client
// can still call Check.
var errTooManyWatches = status.Error(codes.ResourceExhausted, "too many health Watch streams are open; call Check instead")

// servedHealth are the services the server reports a status for.
var servedHealth = map[string]bool{"": true, authv3.Authorization_ServiceDesc.ServiceName: true}

// unknownHealthService is the one name every Watch of an unknown service
// waits under; it is not a valid service name, so nothing ever sets it.
const unknownHealthService = "(unknown)"

func (h healthService) Watch(in *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	p, _ := peer.FromContext(stream.Context())
	client := watchClient(p)
	if !h.watches.acquire(client) {
		return errTooManyWatches
	}
	defer h.watches.release(client)
	w := &endingWatch{Health_WatchServer: stream, ending: h.ending}
	w.ctx, w.cancel = context.WithCancel(stream.Context())
	defer w.cancel()
	if !servedHealth[in.GetService()] {
		in = &healthpb.HealthCheckRequest{Service: unknownHealthService}
		// Nothing sets this one's status, so no NOT_SERVING will come.
		defer context.AfterFunc(h.ending, w.cancel)()
	}
	return h.Server.Watch(in, w)
}

// endingWatch is a Watch stream that ends once it has sent NOT_SERVING
// after shutdown began (ending is done). It ends through its context, which
// the health server's Watch waits on; ending it with ending itself could
// end it before the NOT_SERVING that health.Server.Shutdown queues is sent.
type endingWatch struct {
	healthpb.Health_WatchServer
	ctx    context.Context
	cancel context.CancelFunc
	ending context.Context
}

func (w *endingWatch) Context() context.Context { return w.ctx }

func (w *endingWatch) Send(r *healthpb.HealthCheckResponse) error {
	err := w.Health_WatchServer.Send(r)
	if r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING && w.ending.Err() != nil {
		w.cancel()
	}
	return err
}
