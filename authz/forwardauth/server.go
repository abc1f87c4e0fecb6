// Package forwardauth is the decision's face to HTTP: the forward-auth
// endpoint that proxies which call an HTTP auth service ask (Envoy's
// http_service, nginx auth_request, Traefik ForwardAuth, Caddy
// forward_auth), and the two pieces every HTTP entry point of extauthz
// shares, so that all of them read a request and answer an error alike:
// NewRequest, which reads an *http.Request into an authz.Request through one
// header adapter (authz.HeaderLines) and the decision's header limits, and
// WriteError and WriteDenial, the one writer of the JSON error answer. The
// admin API authenticates its callers with them.
//
// It is not the decision (package authz) and does not listen: cmd/extauthz
// mounts its handler on the HTTP listener.
package forwardauth

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/authz"
)

// Mode is how the endpoint learns the original request: docs/http-mode.md
// tells each convention and the proxies that use it.
type Mode struct {
	Prefix   string // e.g. "/authz": this path and those below it are decisions
	Original string // "path", "x-original" or "x-forwarded"
	XFFHops  int    // trusted X-Forwarded-For hops for the client IP
	// PassQueryAndCookieKeys lets a request whose credential is in the
	// query or a cookie be decided and allowed, though the proxy cannot
	// remove it on the way upstream. Off, such a request is 400
	// (authz.Request.HeadersOnly).
	PassQueryAndCookieKeys bool
}

// Server answers the decision over plain HTTP for proxies that call an HTTP
// auth service. Allow is exactly 200 with the identity and rate-limit
// headers; a denial is the status, headers and JSON body of the gRPC mode's
// denials. Serve it with Handler.
type Server struct {
	Authz    *authz.Authorizer
	Observer authz.Observer // may be nil
	// Tracer makes a span of each decision; nil = none, at no cost.
	Tracer authz.Tracer
	conf   atomic.Pointer[reading]
}

// reading is what a decision request is read and decided by: the mode and
// the policy set of one config file, swapped together.
type reading struct {
	mode Mode
	set  *authz.PolicySet
}

// NewServer returns a Server for mode, deciding by the Authorizer's policy
// set as it is now.
func NewServer(a *authz.Authorizer, mode Mode, obs authz.Observer) *Server {
	s := &Server{Authz: a, Observer: obs}
	s.conf.Store(&reading{mode, a.Policies()})
	return s
}

// noStore is the value of every answer's Cache-Control, shared: a header
// written as a slice of its own costs no allocation per answer (net/http
// only reads it).
var noStore = []string{"no-store"}

// SetConfig swaps the mode and the policy set together (hot reload), so
// that a request is read by one config's mode and decided by the same
// config's policies: read by one and decided by the other, a path cut at
// the old prefix (or taken from the old convention's header) would be
// routed by the new routes, which may make it a public path. Give it the
// set given to the Authorizer's SetPolicies: the endpoint decides by this
// one.
func (s *Server) SetConfig(m Mode, set *authz.PolicySet) { s.conf.Store(&reading{m, set}) }

// Handler returns the HTTP listener's handler: decision requests (the raw
// request target is the prefix or below it: "/authz", "/authz/...", never
// "/authzfoo") are answered here, everything else goes to other. It looks
// at the raw request target so that no path cleaning (or redirect) by a
// router runs first, and it reads the mode and the policy set once per
// request, together, so that a reload cannot make it recognise a request by
// one prefix and read it by another, nor read it by one config and decide
// it by another.
func (s *Server) Handler(other http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conf := s.conf.Load()
		if !conf.mode.owns(r) {
			other.ServeHTTP(w, r)
			return
		}
		s.serve(w, r, &conf.mode, conf.set)
	})
}

// owns reports whether r is a decision request under m.
func (m *Mode) owns(r *http.Request) bool {
	raw := r.RequestURI
	if raw == "" || raw[0] != '/' || !strings.HasPrefix(raw, m.Prefix) {
		return false
	}
	rest := raw[len(m.Prefix):]
	return rest == "" || rest[0] == '/' || rest[0] == '?'
}

var errMissingOriginal = errors.New("missing original request header")

// errIdentityFromClient answers, with original: x-original, a request that
// carries a header reading as an x-authz- one. nginx, the proxy of that
// convention, removes a client's header only where its config names it
// (proxy_set_header), so a name the config does not list, such as the
// x-authz-meta- header of a forward_meta entry added to a policy later,
// would reach the upstream as the client wrote it. Refusing is the only
// answer extauthz can make sure of. A client has no reason to send one.
var errIdentityFromClient = errors.New("a client header reads as an x-authz- one, which the proxy cannot be relied on to remove")

// originalHeader is the one value of an original-request header. Sent on
// several lines it is an error, not a choice: a proxy that appends its
// header to a client's (HAProxy's add-header, Apache's RequestHeader add)
// puts the client's line first, and which line is the proxy's cannot be
// told from the request. Joined, the lines would be no method, path or
// host anyone serves.
func originalHeader(r *http.Request, name string) (string, error) {
	vs := r.Header.Values(name)
	if len(vs) > 1 {
		return "", errors.New(name + " sent more than once")
	}
	if len(vs) == 0 {
		return "", nil
	}
	return vs[0], nil
}

// serve answers one decision request, read by mode and decided by set.
//
// Allow is 200 with the identity headers and the metadata headers the
// policy forwards on every allow, empty when the request was allowed
// without a key (a public route, shadow mode: so that a proxy that copies
// them, such as Envoy's http_service, overwrites a client's, and nginx
// sends none), and x-envoy-auth-headers-to-remove naming the credential
// headers and every client header that reads as an x-authz- one except
// those set with a value. Envoy applies that list after it sets the
// headers; other proxies need their own configuration (deploy/proxies).
func (s *Server) serve(w http.ResponseWriter, r *http.Request, mode *Mode, set *authz.PolicySet) {
	start := time.Now()
	// One set reads the auth path and decides it.
	req, err := originalRequest(r, mode, set.Named())
	ctx := r.Context()
	var traced func(*authz.Decision)
	if s.Tracer != nil {
		ctx, traced = s.Tracer.Start(ctx, &req)
	}
	var d authz.Decision
	if s.Observer != nil || traced != nil {
		// A check that panics is audited too, as the 503 the server's
		// recovery answers, with what the decision had read: someone who
		// found an input that crashes a check is attributed for each try.
		// Its span ends so too. The panic goes on to that recovery, which
		// logs it.
		defer func() {
			if v := recover(); v != nil {
				if s.Observer != nil {
					observePanic(s.Observer, &req, d, time.Since(start))
				}
				authz.EndPanicked(traced, d)
				panic(v)
			}
		}()
	}
	if err != nil {
		d.ClientIP = set.ClientIP(&req)
		d.Deny(authz.CodeBadRequest, "malformed request: "+err.Error())
	} else {
		s.Authz.DecideUnder(ctx, set, &req, &d)
	}
	if traced != nil {
		traced(&d)
	}
	// The answer is this request's alone: it depends on the key, the client
	// address, the rate limit's state and the time. A cache a proxy puts in
	// front of extauthz (nginx proxy_cache on the auth location, keyed by
	// default on the original URI) would otherwise serve one key's allow,
	// identity and all, to the next request for that URI, with another key
	// or none, and no revocation or rate limit would reach it.
	w.Header()["Cache-Control"] = noStore
	if d.Allowed() {
		h := w.Header()
		for _, hv := range d.ResponseHeaders(nil) {
			h.Set(hv.Key, hv.Value)
		}
		for _, hv := range d.IdentityHeaders(nil) {
			h.Set(hv.Key, hv.Value)
		}
		if !d.Identified() {
			for _, name := range [...]string{authz.HeaderKeyID, authz.HeaderKeyName, authz.HeaderOwner, authz.HeaderPermissions} {
				h.Set(name, "")
			}
		}
		for _, hv := range d.MetaHeaders(nil, true) {
			h.Set(hv.Key, hv.Value)
		}
		if names := removedHeaders(&req, &d); names != "" {
			h.Set("x-envoy-auth-headers-to-remove", names)
		}
		w.WriteHeader(http.StatusOK)
	} else {
		WriteDenial(w, &d)
	}
	if s.Observer != nil {
		s.Observer.Observe(&req, &d, time.Since(start))
	}
}

// observePanic tells obs of a check that panicked, as a 503 with what d
// had read. A panic of the Observer itself is not retried.
func observePanic(obs authz.Observer, req *authz.Request, d authz.Decision, latency time.Duration) {
	defer func() { _ = recover() }()
	p := authz.Panicked(d)
	obs.Observe(req, &p, latency)
}

// removedHeaders names, comma-separated, the headers the upstream must not
// get: the present header sources and the spoofed identity headers.
func removedHeaders(req *authz.Request, d *authz.Decision) string {
	var names []string
	for i, src := range d.Sources() {
		if d.Present&(1<<i) != 0 && src.Kind() == authz.SourceHeader {
			names = append(names, src.Name())
		}
	}
	names = req.AppendSpoofed(names, d, true)
	return strings.Join(names, ", ")
}

// PolicyPathPrefix starts the part of the auth path that names the policy:
// <prefix>/_policy/<name>, then (original: path) the original path.
const PolicyPathPrefix = "/_policy/"

// originalRequest reads the original request from exactly the place mode
// names; the headers of the other conventions are ignored, so a client
// cannot choose the path that gets authorised by sending its own
// X-Forwarded-Uri through a proxy that passes client headers on. The policy
// comes from the auth path alone (see authPolicy), read only when named
// policies exist: without them /_policy/... is a path like any other.
func originalRequest(r *http.Request, mode *Mode, named bool) (authz.Request, error) {
	req := NewRequest(r, mode.XFFHops)
	rest := r.RequestURI[len(mode.Prefix):]
	req.PolicyFromPath = true
	req.HeadersOnly = !mode.PassQueryAndCookieKeys
	if named {
		req.PolicyName, rest = authPolicy(rest)
	}
	var names [3]string // method, URI, host
	switch mode.Original {
	case "x-original":
		if req.Noted().Spoofing() {
			return req, errIdentityFromClient
		}
		names = [3]string{"X-Original-Method", "X-Original-Uri", "X-Forwarded-Host"}
	case "x-forwarded":
		names = [3]string{"X-Forwarded-Method", "X-Forwarded-Uri", "X-Forwarded-Host"}
	default: // "path": the request itself, below the prefix (and the policy)
		req.Method = r.Method
		req.Path = rest
		if req.Path == "" || req.Path[0] == '?' {
			req.Path = "/" + req.Path
		}
		return req, nil
	}
	var vals [3]string
	for i, name := range names {
		v, err := originalHeader(r, name)
		if err != nil {
			return req, err
		}
		vals[i] = v
	}
	req.Method, req.Path = vals[0], vals[1]
	if vals[2] != "" {
		req.Host = vals[2]
	}
	if req.Method == "" || req.Path == "" {
		return req, errMissingOriginal
	}
	return req, nil
}

// authPolicy splits the auth path below the prefix into the policy it names
// (/_policy/<name>) and what follows ("/", "/...", "?..." or ""). A path
// that names none gives "" and is answered 403 no_policy: the proxy's
// config writes the name, so a request without one comes from a proxy that
// was not told which policy it serves. (Defaulting instead would let a
// client behind a proxy with the bare prefix write /_policy/<name>/ into
// its own path and choose.)
func authPolicy(rest string) (name, after string) {
	tail, ok := strings.CutPrefix(rest, PolicyPathPrefix)
	if !ok {
		return "", rest
	}
	if i := strings.IndexAny(tail, "/?"); i >= 0 {
		return tail[:i], tail[i:]
	}
	return tail, ""
}

// NewRequest reads r's headers, host and peer into an authz.Request, as
// every HTTP entry point must: its headers through authz.HeaderLines (a
// header sent on several lines reads as one value, joined as Envoy joins
// it, so two credentials are one invalid key wherever they arrive), each
// noted against the decision's header limits. xffHops is how many
// X-Forwarded-For hops to trust for the client address (0: the peer).
// Method and Path are the caller's to fill: they depend on where the
// original request is read from.
//
// With hops trusted, the peer is a proxy, never the client, so Peer is
// what a decision over gRPC has there: whoever connected to the proxy, the
// last X-Forwarded-For entry, which the proxy appended ("" when it sent
// none: no address, which matches no allowlist). A header with fewer
// entries than the hops trusted then reads as that entry, as over gRPC it
// reads as the peer Envoy reports, and never as the proxy's own address: a
// key allowlisted to the proxy's network would pass for every client of a
// proxy that sent no X-Forwarded-For.
func NewRequest(r *http.Request, xffHops int) authz.Request {
	req := authz.Request{
		Host:           r.Host,
		Headers:        authz.HeaderLines(r.Header),
		Peer:           PeerHost(r.RemoteAddr),
		XFFTrustedHops: xffHops,
	}
	if xffHops > 0 {
		xff := req.Headers.Get("x-forwarded-for")
		req.Peer = strings.TrimSpace(xff[strings.LastIndexByte(xff, ',')+1:])
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			req.NoteHeader(k, v)
		}
	}
	return req
}

// PeerHost is the host of a "host:port" remote address (the address itself
// when it has no port).
func PeerHost(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}

// WriteDenial answers d's denial as every HTTP entry point answers one: the
// decision's status and response headers (WWW-Authenticate, Retry-After,
// the rate-limit headers) and, through WriteError, the JSON body.
func WriteDenial(w http.ResponseWriter, d *authz.Decision) {
	h := w.Header()
	for _, hv := range d.ResponseHeaders(nil) {
		h.Set(hv.Key, hv.Value)
	}
	WriteError(w, d.Code.HTTPStatus(), d.Code, d.Message)
}

// WriteError is the one writer of an error answer over HTTP: status, the
// JSON content type, x-authz-code (from which a proxy that drops the body,
// such as nginx, can rebuild it), Retry-After: 1 with a 503,
// Cache-Control: no-store, and the body authz.ErrorBody. The decision's
// denials, the admin API's errors and a recovered panic all answer through
// it. message must never hold a key.
func WriteError(w http.ResponseWriter, status int, code authz.Code, message string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h["Cache-Control"] = noStore // an answer to one caller, never to be reused (see serve)
	h.Set(authz.HeaderCode, string(code))
	if status == http.StatusServiceUnavailable {
		h.Set("Retry-After", "1")
	}
	w.WriteHeader(status)
	io.WriteString(w, authz.ErrorBody(code, message)) //nolint:errcheck // the client is gone
}
