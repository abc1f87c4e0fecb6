package main

import (
	"context"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/internal/loglimit"
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
// The header cap is above Envoy's default limit on request headers (60
// KiB) and nginx's (32 KiB), which an HTTP-mode check carries along. A
// header block Go's server is still reading costs it about four times its
// bytes (a map entry and strings per line), and one client may hold
// listen.max_connections_per_client (1,024) of them for ReadHeader, then
// open them again: 64 KiB keeps that within the memory the shipped
// deployments give the process (measured: about 300 MiB for 1,024 blocks
// of one-byte headers, where 256 KiB made it a gibibyte).
var decisionLimits = httpLimits{
	ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second,
	Idle: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
}

// adminLimits are the admin listener's. Its request bodies are at most
// 64 KiB (admin.DefaultMaxBodyBytes), read within Read; a request is served
// within 10 s (its handler timeout), inside Write.
var adminLimits = httpLimits{
	ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 20 * time.Second,
	Idle: 2 * time.Minute, MaxHeaderBytes: 64 << 10,
}

// apply sets l on srv, and has it speak HTTP/1.1 only: net/http's HTTP/2
// server bounds a connection's first header block by ReadHeader, but not
// the header blocks of later requests on it, which may then stay unfinished
// (holding what they sent, decoded, up to MaxHeaderBytes) for as long as
// Idle, renewed by each finished one. The proxies' auth calls, health
// checks, scrapes and admin clients all speak HTTP/1.1, where ReadHeader
// bounds every request.
func (l httpLimits) apply(srv *http.Server) *http.Server {
	srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout = l.ReadHeader, l.Read, l.Write
	srv.IdleTimeout, srv.MaxHeaderBytes = l.Idle, l.MaxHeaderBytes
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	return srv
}

// maxListenerLogLen caps a line of an HTTP listener's own error log.
const maxListenerLogLen = 512

// An HTTP listener's own error log writes at most listenerLogBurst lines
// per listenerLogEvery; the first line written after it left some out
// says how many (messages_left_out).
const (
	listenerLogBurst = 10
	listenerLogEvery = time.Minute
)

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
//
// And anyone who can open a connection can fail a handshake: one opened
// and closed without a byte is a line ("TLS handshake error ... EOF"), at
// whatever rate the client connects. So the lines are a few a minute, as
// the audit queue's own complaints are; a flood is a count in the next
// line, not a log that grows as fast as the client can connect.
func listenerErrorLog(logger *slog.Logger, holdsKey func(string) bool) *log.Logger {
	return log.New(&limitedLogWriter{logger: logger, holdsKey: holdsKey, limit: loglimit.New(listenerLogBurst, listenerLogEvery, nil)}, "", 0)
}

// limitedLogWriter writes each line it is given as a warning of logger, a
// few a minute at most (listenerLogBurst per listenerLogEvery), a line that
// holds a key replaced and any other cut at maxListenerLogLen: the lines of
// a library's own log that anyone can make it write.
type limitedLogWriter struct {
	logger   *slog.Logger
	holdsKey func(string) bool
	limit    *loglimit.Limiter
}

func (w *limitedLogWriter) Write(p []byte) (int, error) {
	leftOut, ok := w.limit.Admit()
	if !ok {
		return len(p), nil
	}
	msg := strings.TrimSuffix(string(p), "\n")
	if w.holdsKey != nil && w.holdsKey(msg) {
		msg = audit.RedactedMark
	} else if len(msg) > maxListenerLogLen {
		msg = strings.ToValidUTF8(msg[:maxListenerLogLen], "") + " [cut]"
	}
	var attrs []any
	if leftOut > 0 {
		attrs = []any{"messages_left_out", leftOut}
	}
	w.logger.Log(context.Background(), slog.LevelWarn, msg, attrs...)
	return len(p), nil
}

// capListener closes, as soon as it is accepted, a connection from a client
// that holds max open on the listener already: one client (an address, an
// IPv6 /64, as authz.AddressBlock counts clients everywhere) cannot hold the
// process's memory and open files with connections, busy or idle, that the
// handshake and idle bounds do not end. A client past it is logged once a
// minute at most, and counted in refused.
type capListener struct {
	net.Listener
	name    string // the listener, for the log and the metric
	max     int
	refused prometheus.Counter
	logger  *slog.Logger

	mu       sync.Mutex
	open     map[netip.Addr]int // by client block; no entry at 0
	lastWarn time.Time
}

// capConns wraps ln so that a client holds at most max connections on it.
func capConns(ln net.Listener, name string, max int, refused *prometheus.CounterVec, logger *slog.Logger) *capListener {
	return &capListener{Listener: ln, name: name, max: max, refused: refused.WithLabelValues(name), logger: logger,
		open: map[netip.Addr]int{}}
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		block := clientBlock(c.RemoteAddr())
		l.mu.Lock()
		if l.open[block] < l.max {
			l.open[block]++
			l.mu.Unlock()
			return &capConn{Conn: c, l: l, block: block}, nil
		}
		warn := time.Since(l.lastWarn) >= time.Minute
		if warn {
			l.lastWarn = time.Now()
		}
		l.mu.Unlock()
		c.Close()
		l.refused.Inc()
		if warn {
			l.logger.Warn("a client holds as many connections as listen.max_connections_per_client allows: its new ones are closed at once (logged once a minute; extauthz_connections_refused_total counts them)",
				"listener", l.name, "client", block.String(), "max_connections_per_client", l.max)
		}
	}
}

// release ends the count of one connection of block.
func (l *capListener) release(block netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[block]--; l.open[block] <= 0 {
		delete(l.open, block)
	}
}

// clientBlock is the block a connection's peer counts in; one block for a
// peer that is not an IP address.
func clientBlock(a net.Addr) netip.Addr {
	var ip netip.Addr
	if tcp, ok := a.(*net.TCPAddr); ok {
		ip = tcp.AddrPort().Addr()
	}
	return authz.AddressBlock(ip)
}

// capConn is an accepted connection, counted until it is closed.
type capConn struct {
	net.Conn
	l     *capListener
	block netip.Addr
	once  sync.Once
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.block) })
	return err
}
