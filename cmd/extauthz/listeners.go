package main

import (
	"net/http"
	"time"
)

// httpLimits is what an HTTP listener grants one client, so that a slow or
// idle client cannot hold a connection (or the memory behind it) open:
//
//   - ReadHeader: the request line and headers must arrive within it
//     (a slowloris sending one header byte at a time is cut off here);
//   - Read: the whole request, headers and body, must arrive within it
//     (bodies are small here; a handler that reads a larger one sets its own,
//     tighter, read deadline with http.ResponseController);
//   - Write: from the end of the headers, the handler must have written its
//     answer within it (a handler that takes longer extends it explicitly);
//   - Idle: a kept-alive connection with no request in flight is closed
//     after it;
//   - MaxHeaderBytes: the request line and headers together, at most.
type httpLimits struct {
	ReadHeader, Read, Write, Idle time.Duration
	MaxHeaderBytes                int
}

// decisionLimits are the HTTP listener's: forward-auth decisions, health,
// metrics and the GitHub leak receiver. A decision request has no body, so
// Read is ReadHeader with room to spare; the leak receiver, the one handler
// that reads a body, bounds that read itself. A decision answers within a
// few store timeouts (a cache fill waits at most 2 s), well inside Write.
// The header cap is over four times Envoy's default limit on request headers
// (60 KiB), which an HTTP-mode check carries along.
var decisionLimits = httpLimits{
	ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second,
	Idle: 2 * time.Minute, MaxHeaderBytes: 256 << 10,
}

// adminLimits are the admin listener's. Its request bodies are at most
// 64 KiB (admin.DefaultMaxBodyBytes), read within Read; a request is served
// within 10 s (its handler timeout), inside Write.
var adminLimits = httpLimits{
	ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 20 * time.Second,
	Idle: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
}

// apply sets l on srv.
func (l httpLimits) apply(srv *http.Server) *http.Server {
	srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout = l.ReadHeader, l.Read, l.Write
	srv.IdleTimeout, srv.MaxHeaderBytes = l.Idle, l.MaxHeaderBytes
	return srv
}
