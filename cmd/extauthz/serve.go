package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	goredis "github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/extauthz/extauthz/admin"
	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/envoy"
	"github.com/extauthz/extauthz/authz/forwardauth"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/gcfloor"
	"github.com/extauthz/extauthz/internal/visible"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
	rlredis "github.com/extauthz/extauthz/ratelimit/redis"
)

// newServeCmd is "extauthz serve": run until SIGINT/SIGTERM, then drain.
func newServeCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "serve [--config FILE]",
		Short: "Run the gRPC, HTTP and admin listeners",
		Long: `Run the servers: gRPC ext_authz and health (listen.grpc), HTTP forward-auth,
/healthz, /readyz and /metrics (listen.http), and the admin API (listen.admin).
SIGTERM or SIGINT drains them; SIGHUP, or a change of the file, reloads the
routes, sources and limits. Without --config or $EXTAUTHZ_CONFIG it serves the
built-in defaults. It refuses to start without a hashing pepper unless the config
declares development: true.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			// SIGHUP is caught from here to the process's end, not only
			// while the config watch runs: uncaught, it ends the process,
			// and one sent as the server starts (a config tool that sends
			// it after each write) or while it stops (writing the queued
			// audit events and last-use times) would kill it there.
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			path := configPath(c)
			read := fileStamp(path) // before it is read: a change from here on is reloaded (newWatch)
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			// Standard output (the audit sink) and standard error are often
			// pipes into a log shipper. Go exits on a write to either once
			// its reader is gone; a server must not die with its log
			// reader: the write fails, and the audit queue counts and logs
			// the events lost.
			signal.Ignore(syscall.SIGPIPE)
			return serve(c.Context(), cfg, path, read, hup, c.ErrOrStderr(), c.OutOrStdout())
		},
	}
	addConfigFlag(c.Flags())
	return c
}

// serve runs a server on cfg, read from path (as read stamps it before it
// was read), until ctx is done; hup is where SIGHUP arrives, and audit
// events with the stdout sink go to auditOut.
func serve(ctx context.Context, cfg *config.Config, path string, read stamp, hup <-chan os.Signal, stderr, auditOut io.Writer) error {
	logger := newLogger(cfg.Log, stderr)
	second := func(sig os.Signal) {
		logger.Error("second signal: exiting at once; checks and admin calls in flight, and audit events and last_used_at times not yet written, are lost",
			"signal", sig.String())
	}
	onSecondSignal.Store(&second)
	srv, err := newServer(cfg, logger, auditOut)
	if err != nil {
		return err
	}
	srv.cfgPath, srv.cfgRead, srv.hup = path, read, hup
	defer gcfloor.Start(gcHeapFloor, 500*time.Millisecond)()
	if err := srv.listen(); err != nil {
		srv.close()
		return err
	}
	return srv.run(ctx)
}

// Caps of the gRPC listener beyond envoy.MaxCheckRequestBytes: the HTTP/2
// header list of one call (Envoy's metadata: a few hundred bytes) and the
// calls one connection may have in flight (Envoy opens another connection
// past it).
const (
	grpcMaxMetadataBytes     = 64 << 10
	grpcMaxConcurrentStreams = 1024
)

// grpcMaxCallMetadataBytes bounds the metadata a call keeps while it is
// open, as decoded (names and values). grpcMaxMetadataBytes bounds the
// header list as it arrives, but HPACK lets a client name a header in its
// table with one byte, and grpc-go decodes every copy of a "-bin" header
// into a string of its own: 20 bytes on the wire became 46 KiB held by a
// call for its whole life (a Check whose message never comes: 10 s; a
// health Watch: as long as its client likes). Envoy's calls carry a few
// hundred bytes (its tracing headers, a grpc_service's initial_metadata).
const grpcMaxCallMetadataBytes = 8 << 10

// metadataBytes is what md holds: its names and values.
func metadataBytes(md metadata.MD) int {
	n := 0
	for k, vs := range md {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return n
}

// grpcConnLimit bounds a gRPC connection's life before and between calls,
// as the HTTP listeners' header and idle timeouts do theirs.
type grpcConnLimit struct {
	// Handshake is how long a new connection has to finish its TLS and
	// HTTP/2 handshake: without it, grpc-go waits 120 s for a client that
	// opens a connection and sends nothing.
	Handshake time.Duration
	// Idle is how long a connection with no call in flight stays open; it
	// is then closed with a GOAWAY, which Envoy answers by opening a new
	// one when it next needs it. Without it, a client that answers the
	// keepalive pings could hold a connection open forever at no cost of
	// its own, and as many as it likes.
	Idle time.Duration
	// Age is how long any connection stays open (grpc-go adds up to 10%
	// either way): it is then sent a GOAWAY, and AgeGrace later closed
	// with whatever it still holds. Envoy opens a new connection for its
	// next call. grpcMaxCall cannot end a call whose client never grants
	// the flow-control window for its answer (SETTINGS_INITIAL_WINDOW_SIZE
	// 0): grpc-go forgets a stream only once its trailers are written,
	// which queue behind that answer, so such a client kept each call's
	// metadata and its place among the connection's 1,024 for as long as
	// it answered pings, and the connection was never idle. Zero: no bound.
	Age, AgeGrace time.Duration
}

// grpcConnLimits are the gRPC listener's; tests shorten them. The grace
// lets a call that began just before the GOAWAY run to its own bound.
var grpcConnLimits = grpcConnLimit{Handshake: 5 * time.Second, Idle: 5 * time.Minute, Age: 5 * time.Minute, AgeGrace: grpcMaxCall + 5*time.Second}

// grpcMaxCall bounds a gRPC call that states no shorter deadline of its
// own. Envoy sends its ext_authz timeout (grpc-timeout) with every Check,
// so what this bounds is a client that sends none: without it, one could
// open calls and never send their message, each held (a goroutine, its
// buffers) for as long as the connection lives, on as many connections as
// it likes. Health Watch streams, meant to last, are exempt, and bounded
// in number instead (healthService). The HTTP listeners' whole-request
// bound is the same 10 s (httpLimits.Read).
const grpcMaxCall = 10 * time.Second

// gcHeapFloor is how far the heap may grow between collections however
// little is live (internal/gcfloor): it trades up to this much memory for
// about four times fewer collections under load with a small cache. GOGC
// in the environment turns it off.
const gcHeapFloor = 16 << 20

// newLogger is the server's log: JSON lines on w, or slog's text format.
// Some values in it are text others wrote (the URL of a leak report,
// what a client offered in a failed TLS handshake). slog's JSON leaves C1
// controls, bidirectional overrides and zero-width characters raw, which
// act on the terminal or the log viewer showing the line, and its text
// format leaves raw (and a value bare) the characters Go counts as
// printable though they draw nothing, so each is written through a filter:
// visibleJSON, visibleText.
func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level)) // validated by config
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(visibleText{w}, opts))
	}
	return slog.New(slog.NewJSONHandler(visibleJSON{w}, opts))
}

// visibleText writes the lines of slog's text handler (one line per Write)
// with every character that does not draw itself escaped. slog quotes a
// value with strconv's escapes when it holds a control or a format
// character, but a filler (U+3164, U+115F, ...: visible.Rune) is printable
// to Go, so it stays raw inside quotes and leaves a value bare: "curlㅤ/8"
// read as curl/8. Each bare key or value, and each quoted one, that holds
// such a character is written quoted by visible.Quote instead, which reads
// back (strconv.Unquote) as what was logged.
type visibleText struct{ w io.Writer }

func (v visibleText) Write(p []byte) (int, error) {
	if visibleASCII(p) {
		return v.w.Write(p)
	}
	out := make([]byte, 0, len(p)+32)
	for i := 0; i < len(p); {
		// A line is keys and values between ' ', '=' and the line's end,
		// each bare or a Go string literal: a bare one never holds a space,
		// '=' or '"', which slog quotes.
		j := i
		if p[i] == '"' {
			j = endOfQuoted(p, i)
		} else {
			for j < len(p) && p[j] != ' ' && p[j] != '=' && p[j] != '\n' && p[j] != '"' {
				j++
			}
		}
		if j == i { // a separator
			out = append(out, p[i])
			i++
			continue
		}
		out = appendVisibleToken(out, p[i:j])
		i = j
	}
	if _, err := v.w.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// visibleASCII reports whether p is ASCII without DEL, which slog's
// handlers have already escaped wherever it does not draw itself: a line
// either filter passes on as it is.
func visibleASCII(p []byte) bool {
	for _, c := range p {
		if c >= 0x7f {
			return false
		}
	}
	return true
}

// endOfQuoted returns the index after the Go string literal that starts at
// p[i], or len(p) when it does not end.
func endOfQuoted(p []byte, i int) int {
	for j := i + 1; j < len(p); j++ {
		switch p[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(p)
}

// appendVisibleToken appends tok, a bare key or value or a quoted one, as
// it is when every character of it draws itself, else quoted by
// visible.Quote.
func appendVisibleToken(out, tok []byte) []byte {
	if visibleASCII(tok) {
		return append(out, tok...)
	}
	s := string(tok)
	if tok[0] == '"' {
		u, err := strconv.Unquote(s)
		if err != nil {
			return append(out, strconv.Quote(s)...) // not slog's; quoted whole, escaping all
		}
		s = u
	} else if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !visible.Rune(r) }) {
		return append(out, tok...)
	}
	return append(out, visible.Quote(s)...)
}

// visibleJSON writes the JSON lines of slog's JSON handler (one line per
// Write) with every character that does not draw itself as a \u escape
// (visible.EscapeJSON): the same values to a reader of the JSON.
type visibleJSON struct{ w io.Writer }

func (v visibleJSON) Write(p []byte) (int, error) {
	if visibleASCII(p) {
		return v.w.Write(p)
	}
	if _, err := v.w.Write(visible.EscapeJSON(make([]byte, 0, len(p)+32), p)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// server is one running extauthz: the store, the cache, the decision and
// its listeners.
type server struct {
	cfg     *config.Config
	logger  *slog.Logger
	be      *backend
	cache   *keystore.Cache
	limiter limiter
	authz   *authz.Authorizer

	grpc     *grpc.Server
	maxCall  time.Duration // grpcMaxCall; tests shorten it
	health   *health.Server
	http     *http.Server
	httpMode *forwardauth.Server
	audit    *audit.Logger
	metrics  *prometheus.Registry
	// refusedCalls logs, a few a minute, the gRPC calls boundCall refuses
	// for their metadata: an Envoy or mesh that sends more than the bound
	// has every check fail, and this says why.
	refusedCalls *log.Logger
	// endWatches tells the health Watch streams that shutdown has begun
	// (healthService.ending).
	endWatches context.CancelFunc

	// cfgPath is reloaded on SIGHUP and when the file changes ("" = none);
	// reloadEvery is how often the file is polled for changes. hup, when
	// set, is where SIGHUP arrives (serve catches it for the process's
	// life); else the config watch catches it while it runs.
	cfgPath     string
	cfgRead     stamp // the file at cfgPath as it was before the config in force was first read
	hup         <-chan os.Signal
	reloadEvery time.Duration
	reloads     *prometheus.CounterVec
	// connsRefused counts, by listener, connections closed at once because
	// their client held listen.max_connections_per_client (capListener).
	connsRefused *prometheus.CounterVec
	// adminAnswers counts the admin API's answers by route and code.
	adminAnswers *prometheus.CounterVec
	lastLoad     prometheus.Gauge
	obs          *observer
	grpcMetrics  *grpcMetrics
	// sweepEvery is how often the key store is swept (sweep.go).
	sweepEvery time.Duration

	adminSrv *http.Server
	debugSrv *http.Server // listen.debug: Go's profiles (debug.go)
	// tls is what every listener serves TLS with; nil when off.
	tls *listenerTLS
	// tracing exports a span per check and admin call; nil when off.
	tracing *tracing

	// ready is the store ping /readyz shares between its callers.
	ready readiness
	// manager is the key lifecycle the admin API and the pepper check share.
	manager *keystore.Manager
	// pepperWrong is set once the store's pepper mark is found to be
	// another pepper's (checkPepper): the server is then never ready.
	pepperWrong atomic.Bool

	grpcLn, httpLn, adminLn, debugLn net.Listener
	// bg runs the cache's watch and last-used writer, the config watch and
	// the store sweep; cancelBg stops them.
	bg       sync.WaitGroup
	cancelBg context.CancelFunc
}

// newServer builds a server from cfg without listening yet; audit events
// with the stdout sink go to auditOut.
func newServer(cfg *config.Config, logger *slog.Logger, auditOut io.Writer) (*server, error) {
	policies, err := newPolicies(cfg)
	if err != nil {
		return nil, err
	}
	if err := requirePepper(cfg, func(msg string) { logger.Warn(msg) }); err != nil {
		return nil, err
	}
	warnPublicRedisPassword(cfg, func(msg string) { logger.Warn(msg) })
	for _, w := range policyWarnings(cfg, policies) {
		logger.Warn(w)
	}
	goredis.SetLogger(redisLog{logger})
	be, err := openBackend(cfg, logger)
	if err != nil {
		return nil, err
	}
	s := &server{cfg: cfg, logger: logger, be: be, maxCall: grpcMaxCall, manager: be.manager(cfg)}
	cacheOpts := keystore.CacheOptions{
		Size:        cfg.Cache.Size,
		TTL:         time.Duration(cfg.Cache.TTL),
		NegativeTTL: time.Duration(cfg.Cache.NegativeTTL),
		MaxStale:    time.Duration(cfg.Cache.MaxStale),
		// A record written by hand, or before labels were refused so,
		// never repeats a secret to the upstream.
		LabelHoldsKey: cfg.Keys.Format.LabelHoldsKey,
		Logger:        logger,
	}
	if cacheOpts.NegativeTTL == 0 {
		// negative_ttl: 0 trusts "no such key" for no time; the cache's
		// own zero would mean its default.
		cacheOpts.NegativeTTL = -1
	}
	if be.redis != nil {
		// A lookup waits on Redis no longer than any other Redis call.
		cacheOpts.FetchTimeout = time.Duration(cfg.Store.Redis.Timeout)
	}
	s.cache = keystore.NewCache(be.store, cacheOpts)
	if s.limiter, err = newLimiter(cfg, be); err != nil {
		be.Close()
		return nil, err
	}
	s.authz = authz.NewAuthorizer(policies, s.cache, keystore.NewHasher(cfg.Hashing.Pepper), s.limiter, nil)
	if be.redis != nil {
		s.authz.SetStoreTime(time.Duration(cfg.Store.Redis.Timeout))
	}

	s.audit = newAuditLogger(cfg, be, auditOut, logger)
	s.metrics = prometheus.NewRegistry()
	s.obs = newObserver(s.metrics, s.audit)
	s.obs.setPolicies(policies)
	registerStats(s.metrics, s.cache, s.limiter, s.audit)
	if be.redis != nil {
		registerRedisPool(s.metrics, be.redis)
	}
	s.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "extauthz_config_reloads_total", Help: "Config reloads by result."}, []string{"result"})
	s.lastLoad = prometheus.NewGauge(prometheus.GaugeOpts{Name: "extauthz_config_last_reload_success_timestamp_seconds",
		Help: "When the config in force was loaded (at start, or by the last successful reload), in seconds since the Unix epoch."})
	s.lastLoad.SetToCurrentTime()
	s.reloads.WithLabelValues("ok")
	s.reloads.WithLabelValues("error")
	s.connsRefused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "extauthz_connections_refused_total",
		Help: "Connections closed as soon as they were accepted, their client holding listen.max_connections_per_client open on the listener already."}, []string{"listener"})
	for _, l := range []string{"grpc", "http", "admin"} {
		s.connsRefused.WithLabelValues(l)
	}
	s.adminAnswers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "extauthz_admin_requests_total",
		Help: "Admin API requests answered, by route (its pattern, or unmatched) and code (ok, the error's code, or none when the client went away first)."}, []string{"route", "code"})
	s.metrics.MustRegister(s.reloads, s.lastLoad, s.connsRefused, s.adminAnswers)
	s.grpcMetrics = newGRPCMetrics(cfg.Metrics.GRPC)
	if s.grpcMetrics != nil {
		s.metrics.MustRegister(s.grpcMetrics)
	}

	if s.tls, err = newListenerTLS(cfg.TLS, logger); err != nil {
		s.limiter.Close()
		be.Close()
		return nil, err
	}
	if s.tracing, err = newTracing(context.Background(), logger, cfg.Keys.Format.MayHoldKey); err != nil {
		s.limiter.Close()
		be.Close()
		return nil, err
	}
	grpcOpts := s.grpcMetrics.serverOptions()
	if tc := s.tls.config("h2"); tc != nil {
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(tc)))
	}
	s.refusedCalls = listenerErrorLog(logger, cfg.Keys.Format.MayHoldKey)
	s.grpc = grpc.NewServer(append(grpcOpts,
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second,
			MaxConnectionIdle: grpcConnLimits.Idle, MaxConnectionAge: grpcConnLimits.Age, MaxConnectionAgeGrace: grpcConnLimits.AgeGrace}),
		grpc.ConnectionTimeout(grpcConnLimits.Handshake),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
		// Caps on what one connection can make the server hold: a
		// CheckRequest (its headers are capped again inside it, answered
		// 400), the HTTP/2 metadata of a call, the calls in flight.
		grpc.MaxRecvMsgSize(envoy.MaxCheckRequestBytes),
		grpc.MaxHeaderListSize(grpcMaxMetadataBytes),
		grpc.MaxConcurrentStreams(grpcMaxConcurrentStreams),
		//lint:ignore SA1019 the one way to keep a registered compressor off this server (refuseCompressed)
		grpc.RPCDecompressor(refuseCompressed{}),
		grpc.InTapHandle(s.boundCall),
		// Reflection answers cost far more than they weigh (reflection.go).
		grpc.ChainStreamInterceptor(newReflectionBudget().interceptor),
		// A fixed pool of stream workers instead of a goroutine per check,
		// whose fresh stack grows on every call: measured with the load tool,
		// 30.0 → 26.0 µs of server CPU per check.
		grpc.NumStreamWorkers(64),
		// Check requests are decoded straight into what the decision
		// reads, not into the whole CheckRequest (authz/envoy/wire.go).
		envoy.ServerCodec(),
	)...)
	envoy.Register(s.grpc, &envoy.CheckServer{Authz: s.authz, Observer: s.obs, Logger: logger, Tracer: s.tracing.checks()})
	s.health = health.NewServer()
	ending, endWatches := context.WithCancel(context.Background())
	s.endWatches = endWatches
	healthpb.RegisterHealthServer(s.grpc, healthService{Server: s.health, watches: newWatchCount(watchLimits), ending: ending})
	reflection.Register(s.grpc)
	s.grpcMetrics.initialize(s.grpc)

	s.httpMode = forwardauth.NewServer(s.authz, httpMode(cfg), s.obs)
	s.httpMode.Tracer = s.tracing.checks()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.Handle("GET /metrics", newMetricsPage(s.metrics))
	// Decision requests are recognised on the raw path before the mux, whose
	// path cleaning would redirect /authz/a/../b instead of answering it.
	s.http = decisionLimits.apply(&http.Server{
		Handler:   recoverHTTP(logger, "http", s.httpMode.Handler(mux)),
		ErrorLog:  listenerErrorLog(logger, cfg.Keys.Format.MayHoldKey),
		TLSConfig: s.tls.config("http/1.1"),
	})
	s.debugSrv = debugLimits.apply(&http.Server{
		Handler:   recoverHTTP(logger, "debug", debugHandler()),
		ErrorLog:  listenerErrorLog(logger, cfg.Keys.Format.MayHoldKey),
		TLSConfig: s.tls.config("http/1.1"),
	})
	if err := s.buildAdmin(mux); err != nil {
		s.tracing.shutdown()
		s.limiter.Close()
		be.Close()
		return nil, err
	}
	s.reloadEvery = 2 * time.Second
	s.sweepEvery = defaultSweepEvery
	return s, nil
}

// buildAdmin makes the admin API (its own listener, meant to stay private)
// and, when configured, mounts the GitHub leak endpoint on the public mux.
func (s *server) buildAdmin(public *http.ServeMux) error {
	m := s.manager
	auditChanges(m, s.audit)
	opts := admin.Options{Authz: s.authz, Manager: m, Store: s.be.store, Logger: s.logger,
		Limiter: s.limiter, RateLimit: *s.cfg.Admin.RateLimit, OnAuthFailure: s.auditAuthFailure, OnRead: s.auditRead,
		OnAnswer: func(route, code string) { s.adminAnswers.WithLabelValues(route, code).Inc() }}
	if s.tracing != nil {
		opts.OnCaller = noteCaller
	}
	if path := s.cfg.Leaks.GitHubKeysFile; path != "" {
		doc, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("leaks.github_keys_file: %w", err)
		}
		keys, err := admin.ParseGitHubPublicKeys(doc)
		if err != nil {
			return fmt.Errorf("leaks.github_keys_file %s: %w", path, err)
		}
		opts.Leaks = &admin.LeakOptions{PublicKeys: keys, OnLeak: func(k *keystore.Key) {
			s.audit.Record(audit.Event{Type: audit.TypeKeyLeaked, KeyID: k.ID, KeyName: k.Name, Owner: k.Owner, Actor: admin.LeakActor})
		}}
		public.Handle("POST /v1/leaks/github", admin.NewLeakHandler(opts))
	}
	s.adminSrv = adminLimits.apply(&http.Server{
		Handler:   recoverHTTP(s.logger, "admin", s.tracing.admin(admin.New(opts))),
		ErrorLog:  listenerErrorLog(s.logger, s.cfg.Keys.Format.MayHoldKey),
		TLSConfig: s.tls.config("http/1.1"),
	})
	return nil
}

// auditAuthFailure records a request the admin API refused for its
// credential, or as beyond what its caller may do. One refused after its
// key was authenticated, only the key's holder could cause: it is kept
// with the key changes (audit.Event.KeyHolder).
func (s *server) auditAuthFailure(f admin.AuthFailure) {
	s.audit.Record(audit.Event{Type: audit.TypeAdminAuthFailed, KeyID: f.KeyID, ClientIP: f.ClientIP,
		Method: f.Method, Route: f.Route, RequestID: f.RequestID, UserAgent: f.UserAgent, Status: f.Status, Code: string(f.Code),
		KeyHolder: f.Authenticated})
}

// auditRead records a read of keys the admin API answered, which only an
// authenticated key's holder makes: kept with the key changes.
func (s *server) auditRead(keyID string, c admin.Call) {
	s.audit.Record(audit.Event{Type: audit.TypeAdminRead, KeyID: keyID, ClientIP: c.ClientIP,
		Method: c.Method, Route: c.Route, RequestID: c.RequestID, UserAgent: c.UserAgent, Status: http.StatusOK, KeyHolder: true})
}

// readyz is 200 when the store answers and its pepper mark has been found
// to be this server's pepper. A server whose store is down still serves
// cached keys, but a load balancer should prefer a replica that can also
// answer for uncached ones.
func (s *server) readyz(w http.ResponseWriter, _ *http.Request) {
	err := s.ready.check(s.readyPing)
	if s.pepperWrong.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "hashing pepper differs from the key store's (see the log)\n")
		return
	}
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		io.WriteString(w, "store unavailable\n")
		return
	}
	io.WriteString(w, "ok\n")
}

// readyPing is /readyz's store call: a ping and, until the store's pepper
// mark has been found to match (checkPepper), that check too. Until then
// the server cannot tell whether its keys are the store's: a store that
// was down at start and is back answers the ping before checkPepper's next
// try, and a server with another pepper was ready meanwhile, long enough
// for a rollout to count it and go on to the next replica.
func (s *server) readyPing(ctx context.Context, d time.Duration) error {
	if err := s.be.ping(ctx, d); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return s.notePepper(s.manager.CheckPepper(ctx)) // no store call once it matched
}

// readyFor is how long a store ping answers /readyz for.
const readyFor = 250 * time.Millisecond

// readiness is /readyz's store ping, shared. Anyone who reaches the HTTP
// listener may ask for /readyz, with no key, and the store lookups such
// callers can cause are otherwise bounded (rate_limit.failed_attempts and
// failed_attempts_total): a ping per request would be a way around those
// budgets, and a flood of them would hold the store client's connections
// that lookups wait for. So one ping runs at a time, every check that
// comes meanwhile waits for it, and its result answers for readyFor after
// it ends: at most a few pings a second, however many callers. A probe
// sees the store as it was a quarter of a second ago at most.
//
// The ping runs on a context of its own, not the caller's: a caller that
// hangs up must not make it fail for the others waiting on it.
type readiness struct {
	mu  sync.Mutex
	at  time.Time // when the last ping ended
	err error     // what it found
}

func (r *readiness) check(ping func(context.Context, time.Duration) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.at.IsZero() && time.Since(r.at) < readyFor {
		return r.err
	}
	r.err = ping(context.Background(), time.Second)
	r.at = time.Now()
	return r.err
}

// listen opens the configured listeners (":0" picks a free port; the
// addresses are then in grpcLn/httpLn).
func (s *server) listen() error {
	for _, l := range []struct {
		name string
		addr config.Addr
		ln   *net.Listener
	}{{"grpc", s.cfg.Listen.GRPC, &s.grpcLn}, {"http", s.cfg.Listen.HTTP, &s.httpLn}, {"admin", s.cfg.Listen.Admin, &s.adminLn}, {"debug", s.cfg.Listen.Debug, &s.debugLn}} {
		if !l.addr.Enabled() {
			continue
		}
		ln, err := net.Listen("tcp", string(l.addr))
		if err != nil {
			return fmt.Errorf("listen.%s: %w", l.name, err)
		}
		*l.ln = capConns(ln, l.name, s.cfg.Listen.MaxConnectionsPerClient, s.connsRefused, s.logger)
	}
	return nil
}

// run serves until ctx is done, then stops gracefully: in-flight checks
// finish, queued last-used times are written, the store is closed.
func (s *server) run(ctx context.Context) error {
	bgCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancelBg = cancel
	s.bg.Add(5)
	go func() { defer s.bg.Done(); s.checkConfirmingReplicas(bgCtx) }()
	go func() { defer s.bg.Done(); s.cache.Watch(bgCtx) }()
	go func() { defer s.bg.Done(); s.cache.RunTouches(bgCtx, 10*time.Second) }()
	go func() { defer s.bg.Done(); s.watchConfig(bgCtx) }()
	go func() { defer s.bg.Done(); s.sweepStore(bgCtx) }()

	errc := make(chan error, 3)
	if s.grpcLn != nil {
		s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		s.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
		go func() { errc <- s.grpc.Serve(s.grpcLn) }()
	}
	// After the serving status above, which a wrong pepper turns off.
	s.bg.Add(1)
	go func() { defer s.bg.Done(); s.checkPepper(bgCtx) }()
	for _, l := range []struct {
		srv *http.Server
		ln  net.Listener
	}{{s.http, s.httpLn}, {s.adminSrv, s.adminLn}, {s.debugSrv, s.debugLn}} {
		if l.ln == nil {
			continue
		}
		go func() {
			var err error
			if l.srv.TLSConfig != nil {
				err = l.srv.ServeTLS(l.ln, "", "") // the certificate comes from TLSConfig.GetCertificate
			} else {
				err = l.srv.Serve(l.ln)
			}
			if !errors.Is(err, http.ErrServerClosed) {
				errc <- err
			}
		}()
	}
	s.logger.Info("extauthz serving", "version", version, "grpc", addrOf(s.grpcLn), "http", addrOf(s.httpLn),
		"admin", addrOf(s.adminLn), "debug", addrOf(s.debugLn), "store", describeStore(s.cfg), "tls", describeTLS(s.cfg.TLS))
	for _, w := range listenerWarnings(s.cfg) {
		s.logger.Warn(w)
	}

	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		s.logger.Error("listener failed", "err", err)
	}
	s.shutdown()
	return err
}

// shutdown drains: gRPC health goes NOT_SERVING first so Envoy stops
// sending (and each Watch stream, told so, ends), then the listeners
// stop together, each taking no new connection or call and letting those
// in flight finish (drainFor), then background work. Together: an HTTP
// listener left open while the gRPC calls drained went on answering, its
// /readyz "ready", for as long as one slow check held the stop.
func (s *server) shutdown() {
	s.endWatches() // first: a Watch ends once it has sent the NOT_SERVING that follows
	s.health.Shutdown()
	var wg sync.WaitGroup
	wg.Go(func() {
		done := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(drainFor):
			s.grpc.Stop()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), drainFor)
	defer cancel()
	for _, h := range []*http.Server{s.http, s.adminSrv, s.debugSrv} {
		wg.Go(func() {
			if err := h.Shutdown(ctx); err != nil {
				h.Close() // what is still in flight at the bound is cut off, as gRPC's is
			}
		})
	}
	wg.Wait()
	s.close()
	s.logger.Info("extauthz stopped")
}

// drainFor bounds how long the listeners' calls in flight may take to
// finish once a stop begins.
const drainFor = 10 * time.Second

func (s *server) close() {
	if s.cancelBg != nil {
		s.cancelBg()
		s.bg.Wait()
	}
	// Every listener, those opened before one that failed to open too: a
	// start that stopped there must not leave a port bound (closing one a
	// server's Shutdown closed already is a harmless error).
	for _, ln := range []net.Listener{s.grpcLn, s.httpLn, s.adminLn, s.debugLn} {
		if ln != nil {
			ln.Close()
		}
	}
	// And the gRPC server's stream workers, which it starts when it is
	// made (a no-op after run's stop).
	s.grpc.Stop()
	closeAudit(s.audit)
	s.tracing.shutdown()
	if err := s.limiter.Close(); err != nil {
		s.logger.Warn("close rate limiter", "err", err)
	}
	if err := s.be.Close(); err != nil {
		s.logger.Warn("close store", "err", err)
	}
}

// limiter is a rate limiter the server owns and stops.
type limiter interface {
	ratelimit.Limiter
	Stats() ratelimit.Stats
	Close() error
}

// newLimiter returns the shared Redis limiter with the Redis store (with the
// configured fallback when Redis fails), else a local one: with the embedded
// store each process limits on its own (docs/rate-limiting.md).
func newLimiter(cfg *config.Config, be *backend) (limiter, error) {
	if be.redis == nil {
		return localLimiter{ratelimit.NewLocal(nil, 0)}, nil
	}
	return rlredis.New(be.redis, rlredis.Options{
		Prefix:       cfg.Store.Redis.Prefix,
		Timeout:      time.Duration(cfg.Store.Redis.Timeout),
		OnStoreError: cfg.RateLimit.OnStoreError,
	})
}

// localLimiter gives the local limiter the Close the server calls.
type localLimiter struct{ *ratelimit.Local }

func (localLimiter) Close() error { return nil }

// recoverHTTP answers a panicking handler with a 503 JSON denial and logs
// it without its value (net/http's own recovery would log the value, which
// may hold a key).
func recoverHTTP(logger *slog.Logger, where string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler {
					panic(v)
				}
				authz.LogPanic(logger, where, v)
				forwardauth.WriteError(w, http.StatusServiceUnavailable, authz.CodeUnavailable, "internal error")
			}
		}()
		h.ServeHTTP(w, r)
	})
}

func addrOf(l net.Listener) string {
	if l == nil {
		return "off"
	}
	return l.Addr().String()
}

// refuseCompressed is the gRPC listener's decompressor for gzip, the one
// compressor linked in (by the OTLP exporter, which registers it for every
// server in the process): it refuses the message unread. Envoy never
// compresses a CheckRequest, and a compressed message is what would let a
// caller make the server inflate and hold far more than it sent: a message
// just under MaxCheckRequestBytes gzips to about a kilobyte, and costs a
// MiB buffer and over half a millisecond to inflate, on every stream at
// once. Any other compression is refused by grpc-go itself (no such
// decompressor is installed). It is grpc-go's older server option, the one
// way to keep a registered compressor off a server's messages.
type refuseCompressed struct{}

func (refuseCompressed) Do(io.Reader) ([]byte, error) {
	return nil, errors.New("compressed messages are not accepted")
}

func (refuseCompressed) Type() string { return "gzip" }

// boundCall refuses a gRPC call whose metadata holds more than
// grpcMaxCallMetadataBytes, and gives the others the deadline grpcMaxCall
// unless they have a sooner one or are a health Watch stream. It runs as
// each call arrives, before its message is read, so a call whose message
// never comes ends at the deadline too.
func (s *server) boundCall(ctx context.Context, info *tap.Info) (context.Context, error) {
	if n := metadataBytes(info.Header); n > grpcMaxCallMetadataBytes {
		if s.refusedCalls != nil {
			from := "an unknown address"
			if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
				from = p.Addr.String()
			}
			s.refusedCalls.Printf("gRPC call refused: its metadata holds %d bytes once decoded, over the %d a call may keep (method %s, from %s)",
				n, grpcMaxCallMetadataBytes, info.FullMethodName, from)
		}
		return nil, status.Errorf(codes.ResourceExhausted, "the call's metadata holds %d bytes once decoded, over the %d this server keeps for a call", n, grpcMaxCallMetadataBytes)
	}
	if info.FullMethodName == healthpb.Health_Watch_FullMethodName {
		return ctx, nil
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= s.maxCall {
		return ctx, nil // Envoy's Check: no timer of ours
	}
	bounded, cancel := context.WithTimeout(ctx, s.maxCall)
	_ = cancel // not ours to call: the call's end cancels ctx, which stops this child's timer with it
	return bounded, nil
}
