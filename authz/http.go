package authz

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// HTTPMode is how the HTTP adapter learns the original request (SPEC §6).
type HTTPMode struct {
	Prefix   string // e.g. "/authz"
	Original string // "path", "x-original" or "x-forwarded"
	XFFHops  int    // trusted X-Forwarded-For hops for the client IP
}

// HTTPServer answers the decision over plain HTTP for proxies that call an
// HTTP auth service: Envoy's http_service, nginx auth_request, Traefik
// ForwardAuth, Caddy forward_auth. Allow is exactly 200 with the identity
// and rate-limit headers; a denial is the status, headers and JSON body of
// the gRPC mode's denials. Serve it with Handler.
type HTTPServer struct {
	Authz    *Authorizer
	Observer Observer // may be nil
	mode     atomic.Pointer[HTTPMode]
}

// NewHTTPServer returns an HTTPServer for mode.
func NewHTTPServer(a *Authorizer, mode HTTPMode, obs Observer) *HTTPServer {
	s := &HTTPServer{Authz: a, Observer: obs}
	s.mode.Store(&mode)
	return s
}

// SetMode swaps the mode (hot reload).
func (s *HTTPServer) SetMode(m HTTPMode) { s.mode.Store(&m) }

// Handler returns the HTTP listener's handler: decision requests (the raw
// request target is the prefix or below it: "/authz", "/authz/...", never
// "/authzfoo") are answered here, everything else goes to other. It looks
// at the raw request target so that no path cleaning (or redirect) by a
// router runs first, and it reads the mode once per request, so that a
// reload cannot make it recognise a request by one prefix and read it by
// another.
func (s *HTTPServer) Handler(other http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mode := s.mode.Load()
		if !mode.owns(r) {
			other.ServeHTTP(w, r)
			return
		}
		s.serve(w, r, mode)
	})
}

// owns reports whether r is a decision request under m.
func (m *HTTPMode) owns(r *http.Request) bool {
	raw := r.RequestURI
	if raw == "" || raw[0] != '/' || !strings.HasPrefix(raw, m.Prefix) {
		return false
	}
	rest := raw[len(m.Prefix):]
	return rest == "" || rest[0] == '/' || rest[0] == '?'
}

var errMissingOriginal = errors.New("missing original request header")

// serve answers one decision request under mode.
//
// Allow is 200 with the identity headers on every allow, empty on a public
// route (so that a proxy that copies them, such as Envoy's http_service,
// overwrites a client's, and nginx sends none), and
// x-envoy-auth-headers-to-remove naming the credential headers and every
// client header that reads as an x-authz- one except those the identity
// headers overwrite. Envoy applies that list after it sets the identity
// headers; other proxies need their own configuration (deploy/proxies).
func (s *HTTPServer) serve(w http.ResponseWriter, r *http.Request, mode *HTTPMode) {
	start := time.Now()
	req, err := originalRequest(r, mode)
	var d Decision
	if err != nil {
		d.deny(CodeBadRequest, "malformed request: "+err.Error())
	} else {
		s.Authz.Decide(r.Context(), &req, &d)
	}
	h := w.Header()
	for _, hv := range d.ResponseHeaders(nil) {
		h.Set(hv.Key, hv.Value)
	}
	if d.Allowed() {
		for _, hv := range d.IdentityHeaders(nil) {
			h.Set(hv.Key, hv.Value)
		}
		if d.Key == nil {
			for _, name := range [...]string{HeaderKeyID, HeaderKeyName, HeaderOwner, HeaderPermissions} {
				h.Set(name, "")
			}
		}
		if names := removedHeaders(&req, &d); names != "" {
			h.Set("x-envoy-auth-headers-to-remove", names)
		}
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(d.Code.HTTPStatus())
		io.WriteString(w, d.Body())
	}
	if s.Observer != nil {
		s.Observer.Observe(&req, &d, time.Since(start))
	}
}

// removedHeaders names, comma-separated, the headers the upstream must not
// get: the present header sources and the spoofed identity headers.
func removedHeaders(req *Request, d *Decision) string {
	var names []string
	for i, src := range d.policy.Sources {
		if d.Present&(1<<i) != 0 && src.kind == sourceHeader {
			names = append(names, src.name)
		}
	}
	names = appendSpoofed(names, req, d.Key != nil, true)
	return strings.Join(names, ", ")
}

// originalRequest reads the original request from exactly the place mode
// names; the headers of the other conventions are ignored, so a client
// cannot choose the path that gets authorised by sending its own
// X-Forwarded-Uri through a proxy that passes client headers on.
func originalRequest(r *http.Request, mode *HTTPMode) (Request, error) {
	req := Request{
		Host:           r.Host,
		Headers:        httpHeaders(r.Header),
		Peer:           hostOnly(r.RemoteAddr),
		XFFTrustedHops: mode.XFFHops,
	}
	var budget headerBudget
	for k, vs := range r.Header {
		req.names.note(k)
		for _, v := range vs {
			if !budget.add(k, v) {
				req.Malformed = errTooManyHeaders
			}
		}
	}
	switch mode.Original {
	case "x-original":
		req.Method, req.Path = r.Header.Get("X-Original-Method"), r.Header.Get("X-Original-Uri")
		if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
			req.Host = fh
		}
	case "x-forwarded":
		req.Method, req.Path = r.Header.Get("X-Forwarded-Method"), r.Header.Get("X-Forwarded-Uri")
		if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
			req.Host = fh
		}
	default: // "path": the request itself, below the prefix
		req.Method = r.Method
		req.Path = r.RequestURI[len(mode.Prefix):]
		if req.Path == "" || req.Path[0] == '?' {
			req.Path = "/" + req.Path
		}
	}
	if req.Method == "" || req.Path == "" {
		return req, errMissingOriginal
	}
	return req, nil
}

func hostOnly(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
