package main

import (
	"context"
	"log"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/extauthz/extauthz/audit"
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

// maxListenerLogLen caps a line of an HTTP listener's own error log.
const maxListenerLogLen = 512

// listenerErrorLog is the ErrorLog of an HTTP listener: net/http's own
// messages (a failed TLS handshake, an accept error) as warnings of logger.
//
// Some of them quote what the client sent: a failed handshake names every
// application protocol the client offered, up to 64 KiB of text of the
// client's choosing, which can be a pasted key. Anyone who can open a
// connection could otherwise put a key, or a 64 KiB line, in the log at
// will. So a message that holds a key (holdsKey, the configured format) is
// replaced whole, as the audit log's client fields are, and any other is
// cut at maxListenerLogLen; the line still says what failed and for whom.
func listenerErrorLog(logger *slog.Logger, holdsKey func(string) bool) *log.Logger {
	return log.New(listenerLogWriter{logger, holdsKey}, "", 0)
}

type listenerLogWriter struct {
	logger   *slog.Logger
	holdsKey func(string) bool
}

func (w listenerLogWriter) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	if w.holdsKey != nil && w.holdsKey(msg) {
		msg = audit.RedactedMark
	} else if len(msg) > maxListenerLogLen {
		msg = strings.ToValidUTF8(msg[:maxListenerLogLen], "") + " [cut]"
	}
	w.logger.Log(context.Background(), slog.LevelWarn, msg)
	return len(p), nil
}
