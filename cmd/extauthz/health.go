package main

import (
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
type healthService struct {
	*health.Server
}

// servedHealth are the services the server reports a status for.
var servedHealth = map[string]bool{"": true, authv3.Authorization_ServiceDesc.ServiceName: true}

// unknownHealthService is the one name every Watch of an unknown service
// waits under; it is not a valid service name, so nothing ever sets it.
const unknownHealthService = "(unknown)"

func (h healthService) Watch(in *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	if !servedHealth[in.GetService()] {
		in = &healthpb.HealthCheckRequest{Service: unknownHealthService}
	}
	return h.Server.Watch(in, stream)
}
