package authz

import (
	"errors"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"strings"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/config"
)

// HTTPMode is how the HTTP adapter learns the original request (SPEC §6).
type HTTPMode struct {
	Prefix   string // e.g. "/authz"
	Original string // "path", "x-original" or "x-forwarded"
	XFFHops  int    // trusted X-Forwarded-For hops for the client IP
}

// NewHTTPMode reads the http_mode section of cfg.
func NewHTTPMode(cfg *config.Config) HTTPMode {
	return HTTPMode{Prefix: cfg.HTTPMode.Prefix, Original: cfg.HTTPMode.Original, XFFHops: *cfg.HTTPMode.XFFTrustedHops}
}

// HTTPServer answers the decision over plain HTTP for proxies that call an
// HTTP auth service: Envoy's http_service, nginx auth_request, Traefik
// ForwardAuth, Caddy forward_auth. Allow is exactly 200 with the identity
// and rate-limit headers; a denial is the status, headers and JSON body of
// SPEC §3.
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

// Owns reports whether the request is a decision request: its raw path is
// the prefix or below it ("/authz", "/authz/..."), never "/authzfoo". It
// looks at the raw request target so that no path cleaning (or redirect) by
// a router runs first.
func (s *HTTPServer) Owns(r *http.Request) bool {
	p := s.mode.Load().Prefix
	raw := r.RequestURI
	if raw == "" || raw[0] != '/' {
		return false
	}
	if !strings.HasPrefix(raw, p) {
		return false
	}
	rest := raw[len(p):]
	return rest == "" || rest[0] == '/' || rest[0] == '?'
}

var errMissingOriginal = errors.New("missing original request header")

// ServeHTTP answers one decision request.
func (s *HTTPServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	mode := s.mode.Load()
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
		if names := s.credentialHeaders(&d); names != "" {
			// Envoy removes these from the upstream request; other proxies
			// need their own configuration (see the README).
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

// credentialHeaders names the present header sources, comma-separated.
func (s *HTTPServer) credentialHeaders(d *Decision) string {
	var names []string
	for i, src := range s.Authz.Policy().Sources {
		if d.Present&(1<<i) != 0 && src.kind == sourceHeader {
			names = append(names, src.name)
		}
	}
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

// httpHeaders reads http.Header by lower-case name. A header sent on
// several lines is joined as Envoy joins it (", "; "; " for cookies), not
// cut to its first line: with X-Forwarded-For the first line may be the
// client's own and the trusted hops are at the end; with a credential, two
// values make one invalid key rather than a silent choice.
type httpHeaders http.Header

func (h httpHeaders) Get(name string) string {
	vals := h[textproto.CanonicalMIMEHeaderKey(name)]
	switch len(vals) {
	case 0:
		return ""
	case 1:
		return vals[0]
	}
	if name == "cookie" {
		return strings.Join(vals, "; ")
	}
	return strings.Join(vals, ",")
}

func hostOnly(addr string) string {
	if host, _, err := net.SplitHostPort(addr); err == nil {
		return host
	}
	return addr
}
