// Package admin is the key-management REST API of extauthz (docs/keys.md):
// JSON over HTTP on the admin listener, for callers whose API key carries a
// keys:* permission. Every change goes through keystore.Manager with the
// caller's key id as actor, so that it becomes an audit event. It also
// receives GitHub secret-scanning reports of leaked keys and revokes them.
//
// It is not the decision (package authz, whose Authenticate it uses to know
// its caller) and not a store: it reads through a keystore.Store and writes
// through a keystore.Manager. It does not listen: cmd/extauthz mounts the
// handler on the admin listener.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/forwardauth"
	"github.com/extauthz/extauthz/internal/loglimit"
	"github.com/extauthz/extauthz/internal/visible"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// DefaultMaxBodyBytes bounds a request body when Options.MaxBodyBytes is 0.
// A key request is well under 1 KiB, even with 100 allowlist entries.
const DefaultMaxBodyBytes = 64 << 10

// Options configures the admin API. Authz and Manager are required.
type Options struct {
	// Authz authenticates callers: its Authenticate runs the key steps of
	// the decision (sources, format, lookup, revoked/expired, IP allowlist).
	Authz *authz.Authorizer
	// Manager makes every change; whoever builds it sets OnChange to record
	// the audit events.
	Manager *keystore.Manager
	// Store serves reads (show, list, leak lookups); nil means Manager.Store.
	Store keystore.Store
	// Now is the clock for ttl and "live as of"; nil means time.Now.
	Now func() time.Time
	// Logger receives the API's own warnings and errors (never a key); nil
	// discards them.
	Logger *slog.Logger
	// Leaks enables POST /v1/leaks/github; nil leaves it off (404).
	Leaks *LeakOptions
	// MaxBodyBytes bounds request bodies (413 above); 0 means
	// DefaultMaxBodyBytes. The leak endpoint has its own bound.
	MaxBodyBytes int64
	// Limiter counts each calling key's requests (the server's own
	// limiter, so that with Redis the count is shared by every replica);
	// nil means a limiter of this handler's own.
	Limiter ratelimit.Limiter
	// RateLimit is the admin API's limit per calling key, counted apart
	// from the key's decisions; the zero Rate means none. The key's own
	// rate limit (its rate_limit, else the configured default) applies
	// too, counted with its decisions: a key limited to 5/m makes 5
	// requests a minute, of any kind.
	RateLimit ratelimit.Rate
	// OnAuthFailure is told of every request refused for its credential,
	// of every change refused as beyond what its caller may make (403) or
	// as a conflict (409), and of every request refused for its key's rate
	// limit (429), to audit them; nil tells no one. It must not block.
	OnAuthFailure func(AuthFailure)
	// OnRead is told of every read of keys answered (GET /v1/keys and
	// /v1/keys/{id}), with the caller's key id, to audit them; nil tells
	// no one. It must not block.
	OnRead func(keyID string, c Call)
	// OnCaller is told of every authenticated caller, with the request's
	// context (to name the key on the request's trace span); nil tells no
	// one. It must not block.
	OnCaller func(ctx context.Context, keyID string)
	// OnAnswer is told of every request answered, for metrics: its route
	// (the pattern, "POST /v1/keys", or RouteUnmatched) and its code
	// (CodeOK for a success, else the error's code, or CodeNoAnswer when
	// the client went away first); nil tells no one. It must not block.
	OnAnswer func(route, code string)
}

// Labels OnAnswer may be told besides a route's pattern and an error's code.
const (
	RouteUnmatched = "unmatched" // a path or method no route serves
	CodeOK         = "ok"
	CodeNoAnswer   = "none"
)

// AuthFailure is a request the admin API refused for its credential: no
// key, an unknown, revoked or expired one, an address the key's allowlist
// does not hold (401, 403 ip_not_allowed, 400 for a credential spelt
// ambiguously, 403 browser_request for a request a web page sent), a key
// without the keys:* permission the route needs, or a
// key asking for a change beyond what it may make (403 permission_denied:
// granting what it lacks, loosening its own key, another owner's list), or
// reaching for another owner's key (answered 404, as an unknown id is,
// with Code permission_denied); or a change refused as a conflict (409,
// with its code: key_limit_reached, not_live, rotation_pending,
// key_changed). It never holds the credential.
type AuthFailure struct {
	// KeyID is the key that was presented, when it is known (revoked,
	// expired, not allowed from the address, lacking the permission); ""
	// when there was none or it matched no key.
	KeyID string
	// ClientIP is the peer (the admin listener is reached directly).
	ClientIP netip.Addr
	// Method is the request's; Route the pattern of the route it asked
	// for ("/v1/keys/{id}"), never the raw path, in which a pasted key may
	// stand for an id.
	Method, Route        string
	RequestID, UserAgent string
	Status               int
	Code                 authz.Code
	// Authenticated says the call was refused after its key, one the
	// admin API serves (keys:read or more), was authenticated and the call
	// counted within its rate limit (403 permission_denied, the 404 of
	// another owner's key, 409, or the caller's record read again for a
	// change and found revoked, expired or out of its allowlist): only the
	// holder of such a key can cause the refusal, and no faster than its
	// rate limit. False for a refusal of the credential itself, of a call
	// over its rate limit, which anyone who reaches the admin API can
	// cause as fast as they like, and of a key without any keys:
	// permission, which every client of the data plane may hold: were its
	// refusals kept with the key changes, one such key could trim a
	// revocation out of their capped stream at the admin rate limit.
	Authenticated bool
}

// Call is where an admin API call that changes a key came from, for its
// audit event: the Manager's OnChange reads it from the context of the
// change with CallFrom. Its fields are those of AuthFailure.
type Call struct {
	ClientIP             netip.Addr
	Method, Route        string
	RequestID, UserAgent string
}

type callKey struct{}

// CallFrom returns the admin API call a change was made in; ok is false
// for a change made otherwise (the CLI, a leak report).
func CallFrom(ctx context.Context) (c Call, ok bool) {
	c, ok = ctx.Value(callKey{}).(Call)
	return c, ok
}

// callOf is r's Call, asking for rt. Its ClientIP is the peer as the
// decision that authenticated the call read it: IPv4-mapped as IPv4, and
// without an IPv6 zone, so that one client is one address in every event.
func callOf(r *http.Request, rt route) Call {
	ip, _ := netip.ParseAddr(forwardauth.PeerHost(r.RemoteAddr))
	return Call{ClientIP: ip.Unmap().WithZone(""), Method: r.Method, Route: rt.Path,
		RequestID: r.Header.Get("X-Request-Id"), UserAgent: r.Header.Get("User-Agent")}
}

// adminScope is the rate-limit scope of the admin API's own limit: route
// patterns begin with "/", so it never shares a count with a route's.
const adminScope = "admin"

// access is what a route asks of its caller.
type access int

const (
	needRead  access = iota + 1 // keys:read, implied by keys:write and keys:admin
	needWrite                   // keys:write, implied by keys:admin
	signed                      // no API key: a GitHub signature over the body
)

// route is one entry of the API. The table below is the single list that
// registration, the 405 answers and the OpenAPI test all read.
type route struct {
	Method, Path string
	access       access
	timeout      time.Duration
	serve        func(s *server, w http.ResponseWriter, r *http.Request, c *caller) error
	// query are the query parameters the route takes, each at most once;
	// any other is refused (checkQuery).
	query []string
}

// Pattern is the http.ServeMux pattern of the route.
func (rt route) Pattern() string { return rt.Method + " " + rt.Path }

const (
	requestTimeout = 10 * time.Second
	// GitHub waits 30 s for partners that answer with labels; a report may
	// hold many tokens, each a store lookup.
	leakTimeout = 25 * time.Second
)

// leakPath is where GitHub posts secret-scanning reports.
const leakPath = "/v1/leaks/github"

var routes = []route{
	{"POST", "/v1/keys", needWrite, requestTimeout, (*server).createKey, nil},
	{"GET", "/v1/keys", needRead, requestTimeout, (*server).listKeys, listQuery},
	{"GET", "/v1/keys/{id}", needRead, requestTimeout, (*server).showKey, nil},
	{"PATCH", "/v1/keys/{id}", needWrite, requestTimeout, (*server).updateKey, nil},
	{"DELETE", "/v1/keys/{id}", needWrite, requestTimeout, (*server).revokeKey, nil},
	{"POST", "/v1/keys/{id}/rotate", needWrite, requestTimeout, (*server).rotateKey, nil},
	{"GET", "/v1/openapi.json", needRead, requestTimeout, (*server).openAPI, nil},
	// GitHub's URL is the operator's to write: its query is not read.
	{"POST", leakPath, signed, leakTimeout, (*server).githubLeaks, nil},
}

// server is the handler New returns.
type server struct {
	authz   *authz.Authorizer
	manager *keystore.Manager
	store   keystore.Store
	now     func() time.Time
	log     *slog.Logger
	// authLog and failLog bound the lines a request's failure writes:
	// authLog those of requests that could not be authenticated (the
	// store down, the unknown-key budget spent), which anyone who reaches
	// the port can send as fast as it likes; failLog those of
	// authenticated calls (the store down, an internal error), so that
	// the first cannot crowd the second out of the log.
	authLog, failLog *loglimit.Limiter
	leaks            *LeakOptions
	maxBody          int64
	limiter          ratelimit.Limiter
	rate             ratelimit.Rate

	onAuthFailure func(AuthFailure)
	onRead        func(keyID string, c Call)
	onCaller      func(ctx context.Context, keyID string)
	onAnswer      func(route, code string)

	mux   *http.ServeMux
	paths *http.ServeMux      // method-less patterns, to tell 405 from 404
	allow map[string][]string // path pattern → methods, for the Allow header
}

// New returns the admin API handler: the key routes below, plus
// GET /v1/openapi.json and, when o.Leaks is set, POST /v1/leaks/github.
// Every answer is JSON; errors are {"error": "...", "code": "..."}.
// It panics if o.Authz or o.Manager is nil.
func New(o Options) http.Handler {
	var rs []route
	for _, rt := range routes {
		if rt.access == signed && o.Leaks == nil {
			continue
		}
		rs = append(rs, rt)
	}
	return newServer(o, rs)
}

// NewLeakHandler returns a handler that serves only POST /v1/leaks/github,
// for mounting on a listener GitHub can reach (the admin listener is meant
// to stay private). It panics if o.Leaks, o.Authz or o.Manager is nil.
func NewLeakHandler(o Options) http.Handler {
	if o.Leaks == nil {
		panic("admin.NewLeakHandler: Options.Leaks is nil")
	}
	var rs []route
	for _, rt := range routes {
		if rt.access == signed {
			rs = append(rs, rt)
		}
	}
	return newServer(o, rs)
}

func newServer(o Options, rs []route) *server {
	if o.Authz == nil || o.Manager == nil {
		panic("admin: Options.Authz and Options.Manager are required")
	}
	s := &server{
		authz: o.Authz, manager: o.Manager, store: o.Store, now: o.Now, log: o.Logger, authLog: loglimit.New(failLogBurst, failLogEvery, o.Now), failLog: loglimit.New(failLogBurst, failLogEvery, o.Now),
		leaks: o.Leaks, maxBody: o.MaxBodyBytes, limiter: o.Limiter, rate: o.RateLimit,
		onAuthFailure: o.OnAuthFailure, onRead: o.OnRead, onCaller: o.OnCaller, onAnswer: o.OnAnswer,
		mux: http.NewServeMux(), paths: http.NewServeMux(), allow: map[string][]string{},
	}
	if s.store == nil {
		s.store = o.Manager.Store
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.maxBody <= 0 {
		s.maxBody = DefaultMaxBodyBytes
	}
	if s.limiter == nil {
		s.limiter = ratelimit.NewLocal(s.now, 0)
	}
	for _, rt := range rs {
		s.mux.HandleFunc(rt.Pattern(), s.handle(rt))
		if _, ok := s.allow[rt.Path]; !ok {
			s.paths.HandleFunc(rt.Path, func(http.ResponseWriter, *http.Request) {})
		}
		s.allow[rt.Path] = append(s.allow[rt.Path], rt.Method)
		if rt.Method == "GET" {
			s.allow[rt.Path] = append(s.allow[rt.Path], "HEAD")
		}
	}
	s.mux.HandleFunc("/", s.noRoute)
	return s
}

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.onAnswer == nil {
		s.serve(w, r)
		return
	}
	aw := &answerWriter{ResponseWriter: w}
	s.serve(aw, r)
	route := r.Pattern // set by the mux on r itself
	if route == "" || route == "/" {
		route = RouteUnmatched
	}
	code := CodeNoAnswer
	switch {
	case aw.status == 0:
	case aw.status < 400:
		code = CodeOK
	default:
		if code = w.Header().Get(authz.HeaderCode); code == "" { // every error answer has one
			code = strconv.Itoa(aw.status)
		}
	}
	s.onAnswer(route, code)
}

// answerWriter notes the status of the answer written through it.
type answerWriter struct {
	http.ResponseWriter
	status int
}

func (w *answerWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *answerWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *answerWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *server) serve(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Cache-Control", "no-store") // create and rotate answers carry a secret
	h.Set("X-Content-Type-Options", "nosniff")
	// ServeMux would answer a path with "//", "." or ".." with a redirect
	// and an HTML body; no route has such a path, so it is simply unknown.
	if p := r.URL.Path; p == "" || p[0] != '/' || path.Clean(p) != p {
		s.writeError(w, r, errNoRoute)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// noRoute answers what no route matched: 405 when the path exists with
// other methods, else 404.
func (s *server) noRoute(w http.ResponseWriter, r *http.Request) {
	if _, pattern := s.paths.Handler(r); pattern != "" {
		methods := s.allow[pattern]
		w.Header().Set("Allow", strings.Join(methods, ", "))
		s.writeError(w, r, &apiError{http.StatusMethodNotAllowed, codeMethodNotAllowed,
			"method not allowed here; allowed: " + strings.Join(methods, ", ")})
		return
	}
	s.writeError(w, r, errNoRoute)
}

// handle authenticates and authorizes the caller of rt, then serves it.
func (s *server) handle(rt route) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), rt.timeout)
		defer cancel()
		r = r.WithContext(ctx)
		var c *caller
		if rt.access != signed {
			r = r.WithContext(context.WithValue(r.Context(), callKey{}, callOf(r, rt)))
			if fromBrowserPage(r) {
				s.authFailed(r, rt, "", http.StatusForbidden, codeFromWebPage)
				s.writeError(w, r, errFromWebPage)
				return
			}
			var ok bool
			if c, ok = s.authenticate(w, r, rt); !ok {
				return
			}
			if s.onCaller != nil {
				s.onCaller(r.Context(), c.key.ID)
			}
			if !s.rateLimit(w, r, rt, c) {
				return
			}
			if err := c.need(rt.access); err != nil {
				s.refused(r, rt, c, http.StatusForbidden, codePermissionDenied)
				s.writeError(w, r, err)
				return
			}
			if rt.access == needWrite {
				if c, ok = s.current(w, r, rt, c); !ok {
					return
				}
				// The store makes the change only if the caller's record
				// is still the one just checked, in the step that writes.
				r = r.WithContext(keystore.WithWriter(r.Context(), c.key))
			}
		}
		var err error
		if rt.access != signed {
			err = s.checkQuery(r, rt)
		}
		if err == nil {
			err = checkNoBody(r, rt)
		}
		if err == nil {
			err = rt.serve(s, w, r, c)
		}
		if err == nil && c != nil && rt.access == needRead && s.onRead != nil && strings.HasPrefix(rt.Path, "/v1/keys") {
			// Keys read: who read them, from where (the spec at
			// /v1/openapi.json is no key's).
			s.onRead(c.key.ID, callOf(r, rt))
		}
		if errors.Is(err, keystore.ErrWriterChanged) && c != nil {
			// The caller was revoked, narrowed or otherwise changed
			// between its check and the write, which made nothing: it
			// is answered as it would be now.
			if _, ok := s.current(w, r, rt, c); !ok {
				return
			}
			err = errWriterChanged
		}
		if err != nil {
			ae := s.answer(r, err)
			switch {
			case c == nil || ae == nil:
			case ae.code == codePermissionDenied:
				// A change beyond what the caller may make (granting a
				// permission it lacks, loosening its own key, another
				// owner's list) is an attempt to escalate: audited like
				// a call without the route's permission.
				s.refused(r, rt, c, http.StatusForbidden, codePermissionDenied)
			case errors.Is(err, errNotYours):
				// Another owner's key: answered 404 like no key, so that
				// ids do not leak, but reaching for it is an escalation
				// refused all the same (a writer trying to revoke another
				// tenant's key, whose id it saw in a log or a header).
				s.refused(r, rt, c, http.StatusNotFound, codePermissionDenied)
			case ae.code == codeAlreadyCreated:
				// A create sent again: a client's retry, asking for no more
				// than it asked before.
			case ae.status == http.StatusConflict:
				// A change refused for a key's state or its owner's
				// limit: one more live key than keys.max_per_owner, a new
				// life for a retired key, a writer's second rotation of a
				// line in grace. Each is a try at more than the caller may
				// have, as a 403 is, and audited like one, with its code.
				s.refused(r, rt, c, http.StatusConflict, ae.code)
			}
			if ae != nil {
				forwardauth.WriteError(w, ae.status, ae.code, ae.msg)
			}
		}
	}
}

// fromBrowserPage reports whether r was sent by a web page, as browsers
// mark such requests: an Origin header (every request but a same-origin
// GET or HEAD), or Sec-Fetch-Site other than "none" (which is a URL the
// user typed or bookmarked). No client of the admin API is a web page: it
// serves none, and answers no CORS preflight. But a page the operator
// opens may send it requests all the same (an <img> or a form, which need
// no preflight, from any site to http://localhost:9003, or fetch from a
// page whose name was rebound to 127.0.0.1), and the browser adds the
// api_key cookie it holds for localhost, which is one of the default key
// sources. Such a request would spend that key's rate limit, which its
// decisions share, or the address's budget of unknown keys: it is refused
// before anything is read from it.
func fromBrowserPage(r *http.Request) bool {
	if _, ok := r.Header["Origin"]; ok {
		return true
	}
	site, ok := r.Header["Sec-Fetch-Site"]
	return ok && (len(site) != 1 || site[0] != "none")
}

// authenticate runs the key steps of the decision on r, read as every HTTP
// entry point reads a request (forwardauth.NewRequest: the same header
// adapter, limits and credential-name checks as HTTP mode). On failure it
// writes the decision's status, headers and JSON body (401, 403
// ip_not_allowed, 503, or 400 for a malformed path or an ambiguous
// credential name) and returns false.
func (s *server) authenticate(w http.ResponseWriter, r *http.Request, rt route) (*caller, bool) {
	// The admin listener is reached directly, not through a proxy that
	// appends to X-Forwarded-For: the peer is the client.
	req := forwardauth.NewRequest(r, 0)
	req.Method = r.Method
	req.Path = r.URL.RequestURI() // with the query: api_key may be a source
	var d authz.Decision
	s.authz.Authenticate(r.Context(), &req, &d)
	if d.Allowed() {
		return newCaller(d.Key), true
	}
	forwardauth.WriteDenial(w, &d)
	if d.Code == authz.CodeUnavailable {
		// The store failed, or the process's budget of unknown keys is
		// spent: not the caller's credential. The route's pattern, not the
		// path: a secret pasted into the path (DELETE /v1/keys/sk_…) would
		// land in the log. The reason is the server's own text.
		logLimited(s.log, s.authLog, slog.LevelWarn, "admin API: a request could not be authenticated (503)", "route", rt.Pattern(), "reason", d.Message)
		return nil, false
	}
	var keyID string
	if d.Key != nil {
		keyID = d.Key.ID
	}
	s.authFailed(r, rt, keyID, d.Code.HTTPStatus(), d.Code)
	return nil, false
}

// current is the caller of a change as the store holds its key. The cache
// that authenticated it answers for up to a second after the key changed
// (on every replica but the one that made the change), and a change is
// made on the store, which knows better: a writer revoked as stolen must
// not mint keys, nor rotate its owner's keys for their secrets, once its
// revocation was answered, nor one whose expiry or allowlist an operator
// narrowed act within the old ones, nor one a newer version restricted in
// a way this one cannot read (its record's "requires") act by the rest of
// its record. So the key is read again, and checked again as the decision
// checks it (a record this version cannot enforce, revoked, expired, IP
// allowlist, the route's permission); its stored record is then what
// bounds the change.
// On failure current writes the answer and returns false.
func (s *server) current(w http.ResponseWriter, r *http.Request, rt route, c *caller) (*caller, bool) {
	var k *keystore.Key
	var err error
	if cg, ok := s.store.(keystore.CheckedGetter); ok {
		k, err = cg.GetForCheck(r.Context(), c.key.ID)
	} else {
		k, err = s.store.Get(r.Context(), c.key.ID)
	}
	var code authz.Code
	switch {
	case errors.Is(err, keystore.ErrNotFound): // purged meanwhile
		code = authz.CodeInvalidKey
	case errors.Is(err, keystore.ErrNeedsNewer):
		// A newer version restricted the key in a way this one cannot
		// read: as the decision does, refuse rather than act by the rest
		// of the record (a writer would mint keys free of the
		// restriction). Not the caller's fault: not audited.
		var d authz.Decision
		d.Deny(authz.CodeUnavailable, authz.NeedsNewerMessage)
		forwardauth.WriteDenial(w, &d)
		return nil, false
	case err != nil:
		s.writeError(w, r, fmt.Errorf("reading the calling key: %w", err))
		return nil, false
	case k.StatusAt(s.now()) == keystore.Revoked:
		code = authz.CodeRevokedKey
	case k.StatusAt(s.now()) == keystore.Expired:
		code = authz.CodeExpiredKey
	case !allowedFrom(k.IPAllowlist, callOf(r, rt).ClientIP):
		code = authz.CodeIPNotAllowed
	}
	if code != "" {
		var d authz.Decision
		d.Deny(code, "")
		forwardauth.WriteDenial(w, &d)
		s.refused(r, rt, c, code.HTTPStatus(), code)
		return nil, false
	}
	c = newCaller(k)
	if err := c.need(rt.access); err != nil {
		s.refused(r, rt, c, http.StatusForbidden, codePermissionDenied)
		s.writeError(w, r, err)
		return nil, false
	}
	return c, true
}

// allowedFrom reports whether a key with allowlist allow may be used from
// ip, as the decision's step 8 does.
func allowedFrom(allow []netip.Prefix, ip netip.Addr) bool {
	return len(allow) == 0 || ip.IsValid() && slices.ContainsFunc(allow, func(p netip.Prefix) bool { return p.Contains(ip) })
}

// authFailed tells OnAuthFailure of a request refused for its credential
// or over its rate limit: what anyone who reaches the admin API can cause.
func (s *server) authFailed(r *http.Request, rt route, keyID string, status int, code authz.Code) {
	s.tellFailure(r, rt, AuthFailure{KeyID: keyID, Status: status, Code: code})
}

// refused tells OnAuthFailure of a call of c refused after c was
// authenticated and the call counted within its rate limit
// (AuthFailure.Authenticated).
func (s *server) refused(r *http.Request, rt route, c *caller, status int, code authz.Code) {
	s.tellFailure(r, rt, AuthFailure{KeyID: c.key.ID, Status: status, Code: code, Authenticated: c.read})
}

// tellFailure completes f with r's call and hands it to OnAuthFailure.
func (s *server) tellFailure(r *http.Request, rt route, f AuthFailure) {
	if s.onAuthFailure == nil {
		return
	}
	call := callOf(r, rt)
	f.ClientIP, f.Method, f.Route, f.RequestID, f.UserAgent = call.ClientIP, call.Method, call.Route, call.RequestID, call.UserAgent
	s.onAuthFailure(f)
}

// rateLimit counts the request against the caller's limits: the admin API's
// own (Options.RateLimit) and the key's (its rate_limit, else the
// configured default), together, as a decision counts a key's and a
// route's. Every request of an authenticated caller counts, refused ones
// too. On 429 it writes the answer, with Retry-After and the rate-limit
// headers, tells OnAuthFailure (a key hammering the admin API is what a
// stolen one does), and returns false; otherwise it sets the rate-limit
// headers.
func (s *server) rateLimit(w http.ResponseWriter, r *http.Request, rt route, c *caller) bool {
	var limits [2]ratelimit.Limit
	n := 0
	if keyRate := c.key.RateLimit.Or(s.authz.Policies().Default.DefaultRate); !keyRate.IsZero() {
		limits[n] = ratelimit.Limit{Name: "key", Bucket: c.key.RateBucket(), Rate: keyRate}
		n++
	}
	if !s.rate.IsZero() {
		limits[n] = ratelimit.Limit{Name: adminScope, Bucket: c.key.RateBucket(), Scope: adminScope, Rate: s.rate}
		n++
	}
	if n == 0 {
		return true
	}
	res, err := s.limiter.Allow(r.Context(), limits[:n])
	if err != nil {
		s.writeError(w, r, fmt.Errorf("rate limit: %w: %w", keystore.ErrUnavailable, err))
		return false
	}
	h := w.Header()
	for _, hd := range ratelimit.AppendHeaders(nil, res) {
		h.Set(hd.Key, hd.Value)
	}
	if !res.Allowed {
		s.authFailed(r, rt, c.key.ID, http.StatusTooManyRequests, authz.CodeRateLimited)
		s.writeError(w, r, &apiError{http.StatusTooManyRequests, authz.CodeRateLimited,
			"rate limited: too many requests from this key (limit \"" + res.Limit.Name + "\": " + res.Limit.Rate.String() + "); retry after the seconds Retry-After gives"})
		return false
	}
	return true
}

// caller is an authenticated admin API client.
type caller struct {
	key   *keystore.Key // shared with the cache: read only
	owner string
	// admin: keys:admin — every owner, may grant anything.
	admin, write, read bool
}

// newCaller reads what k may do here. Only the keys:* permissions count,
// by name: the app-level admin permission grants every route permission of
// the decision, not the management of keys.
func newCaller(k *keystore.Key) *caller {
	c := &caller{key: k, owner: k.Owner}
	if c.owner == "" {
		c.owner = keystore.DefaultOwner
	}
	has := func(p string) bool { return slices.Contains(k.Permissions, p) }
	c.admin = has(permKeysAdmin)
	c.write = c.admin || has(permKeysWrite)
	c.read = c.write || has(permKeysRead)
	return c
}

// The permissions the admin API reads.
const (
	permAdmin     = "admin" // every route permission; only keys:admin may grant it
	permKeysAdmin = "keys:admin"
	permKeysWrite = "keys:write"
	permKeysRead  = "keys:read"
)

// actor is how audit events name the caller.
func (c *caller) actor() string { return c.key.ID }

func (c *caller) need(a access) error {
	switch {
	case a == needWrite && !c.write:
		return permissionDenied(`missing permission "keys:write"`)
	case a == needRead && !c.read:
		return permissionDenied(`missing permission "keys:read"`)
	}
	return nil
}

// reach is nil when k is within the caller's reach (every key for
// keys:admin, its own owner's keys otherwise), else errNotYours.
func (c *caller) reach(k *keystore.Key) error {
	if !c.admin && k.Owner != c.owner {
		return errNotYours
	}
	return nil
}

// canGrant checks that the caller may give a key these permissions: a
// keys:admin caller any, a keys:write caller only those it holds itself and
// never admin or keys:admin. The error names the first one it may not.
func (s *server) canGrant(c *caller, perms []string) error {
	if c.admin {
		return nil
	}
	for _, p := range perms {
		if p == permAdmin || p == permKeysAdmin {
			return permissionDenied("granting " + s.mentionLabel(p) + " needs keys:admin")
		}
		if !slices.Contains(c.key.Permissions, p) {
			return permissionDenied("missing permission " + s.mentionLabel(p) + ": a keys:write caller may only grant permissions it holds")
		}
	}
	return nil
}

// mention quotes a client-supplied name for an error message, unless it
// has the shape of an API key or may hold one, read as everything written
// out is (Format.MayHoldKey: a key mistyped, wrapped, or with its prefix
// lost): someone may have pasted one in the wrong place, and a key never
// appears in an error. Quoting escapes control,
// bidirectional and other invisible characters, so that an echoed name
// reads as what it is.
func (s *server) mention(v string) string {
	return s.mentionBy(v, s.authz.Policies().Format.MayHoldKey)
}

// mentionLabel is mention for a permission the request asks for, which
// has passed the checks of a label (Format.LabelHoldsKey): read as a label
// is, so that a permission a key may hold ("sk-learn-classifier:read") is
// named, where the looser reading of client text would hide it.
func (s *server) mentionLabel(v string) string {
	return s.mentionBy(v, s.authz.Policies().Format.LabelHoldsKey)
}

func (s *server) mentionBy(v string, holdsKey func(string) bool) string {
	if f := s.authz.Policies().Format; len(v) >= 16 && (f.Check(v) == nil || holdsKey(v)) {
		return "(a value shaped like an API key, not shown)"
	}
	return visible.Quote(strings.ToValidUTF8(v, "\uFFFD"))
}

// Error codes of the admin API beyond those of the decision (authz.Code).
const (
	codeNotFound         authz.Code = "not_found"
	codeMethodNotAllowed authz.Code = "method_not_allowed"
	codeTooLarge         authz.Code = "payload_too_large"
	codeUnsupportedMedia authz.Code = "unsupported_media_type"
	codeFromWebPage      authz.Code = "browser_request"
	codeKeyLimit         authz.Code = "key_limit_reached"
	codeChanged          authz.Code = "key_changed"
	codeRotationPending  authz.Code = "rotation_pending"
	codeNotLive          authz.Code = "not_live"
	codeInvalidSignature authz.Code = "invalid_signature"
	codeUnconfirmed      authz.Code = "unconfirmed"
	codeInternal         authz.Code = "internal_error"
	codeBadRequest                  = authz.CodeBadRequest
	codePermissionDenied            = authz.CodePermissionDenied
	codeUnavailable                 = authz.CodeUnavailable
)

// unconfirmedRotation is the "unconfirmed" note of a rotation that the
// store's replicas did not confirm in time. A rotation cannot be repeated;
// a later confirmed change (a replica takes its primary's writes in order)
// confirms it.
const unconfirmedRotation = "the rotation is made and in effect, but fewer Redis replicas than store.redis.confirm_replicas acknowledged it in time, so a failover could still undo it and leave the old key working past its grace period; once the old key's clients use the new one, revoke the old key (DELETE /v1/keys/{old id}): a confirmed revocation confirms the rotation with it"

// unconfirmedCreate is the "unconfirmed" note of a create that the store's
// replicas did not confirm in time. Repeating it would make a second key.
const unconfirmedCreate = "the key is made and works, but fewer Redis replicas than store.redis.confirm_replicas acknowledged it in time, so a failover could still undo it, and then every check would refuse this key as unknown; do not create it again: any confirmed change to a key after this one (a replica takes its primary's writes in order) confirms it too"

// apiError is an answer other than success, with its status and code.
type apiError struct {
	status int
	code   authz.Code
	msg    string
}

func (e *apiError) Error() string { return e.msg }

var (
	errNoRoute  = &apiError{http.StatusNotFound, codeNotFound, "no such route"}
	errNotFound = &apiError{http.StatusNotFound, codeNotFound, "no such key"}
	// errNotYours is another owner's key: the caller hears errNotFound's
	// very answer, and the audit hears of the attempt (handle).
	errNotYours = &apiError{http.StatusNotFound, codeNotFound, "no such key"}
	errTooLarge = &apiError{http.StatusRequestEntityTooLarge, codeTooLarge, "request body too large"}
	// errWriterChanged answers a change the store refused because the
	// calling key's record changed after it was checked (and still allows
	// the call as it is now).
	errWriterChanged = &apiError{http.StatusConflict, codeChanged, "the key making this request changed while the request was being served, and nothing was changed; send the request again"}
	// errFromWebPage answers a request a browser sent for a web page
	// (fromBrowserPage).
	errFromWebPage = &apiError{http.StatusForbidden, codeFromWebPage, "the admin API does not answer requests from web pages (this one carries Origin or Sec-Fetch-Site): call it with curl or another HTTP client"}
)

func badRequest(field, msg string) *apiError {
	return &apiError{http.StatusBadRequest, codeBadRequest, field + ": " + msg}
}

func permissionDenied(msg string) *apiError {
	return &apiError{http.StatusForbidden, codePermissionDenied, msg}
}

// writeError answers err (see answer).
func (s *server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if ae := s.answer(r, err); ae != nil {
		forwardauth.WriteError(w, ae.status, ae.code, ae.msg)
	}
}

// answer is the one mapping from errors to responses; nil when the client
// went away and nobody reads one. Its log lines name the route's pattern
// (r.Pattern), never the path, which may hold whatever a caller pasted
// into it.
func (s *server) answer(r *http.Request, err error) *apiError {
	var ae *apiError
	var fe *keystore.FieldError
	switch {
	case errors.As(err, &ae):
	case errors.As(err, &fe):
		ae = badRequest(fe.Field, fe.Message)
	case errors.Is(err, keystore.ErrNotFound):
		ae = errNotFound
	case errors.Is(err, keystore.ErrKeyLimit):
		ae = &apiError{http.StatusConflict, codeKeyLimit, "the owner already has the maximum number of live keys (keys.max_per_owner); revoke one first"}
	case errors.Is(err, keystore.ErrRetired):
		ae = &apiError{http.StatusConflict, codeNotLive, "the key was revoked or rotated away, and such a key never changes again (revoking it still works); change its successor or create a new key"}
	case errors.Is(err, keystore.ErrChanged):
		ae = &apiError{http.StatusConflict, codeChanged, "the key changed again and again while it was being rotated; read it and try again"}
	case errors.Is(err, keystore.ErrNotLive):
		ae = &apiError{http.StatusConflict, codeNotLive, "the key is revoked, expired or rotated away; create a new key instead"}
	case errors.Is(err, keystore.ErrUnconfirmed):
		s.log.Warn("admin API: a change is stored but not confirmed by the store's replicas", "route", r.Pattern, "err", err)
		ae = &apiError{http.StatusServiceUnavailable, codeUnconfirmed, "the change is made and in effect, but fewer Redis replicas than store.redis.confirm_replicas acknowledged it in time, so a failover could still undo it; repeat the same request (it is safe to) once replication is healthy"}
	case errors.Is(err, keystore.ErrPepperMismatch):
		s.log.Error("admin API: refused to make a key: this server's hashing pepper differs from the one the key store's keys were hashed with", "route", r.Pattern)
		ae = &apiError{http.StatusServiceUnavailable, codeUnavailable, "this server hashes keys with another pepper than the key store's keys were made with, so a key it made would be unknown to the other servers; it makes none until its operator gives it their pepper"}
	case errors.Is(err, keystore.ErrNewerRecord):
		ae = &apiError{http.StatusServiceUnavailable, codeUnavailable, "the key's record holds fields a newer version of extauthz wrote, which this server cannot copy into a new key; rotate it through a server of that version (during a rolling upgrade, retry shortly)"}
	case errors.Is(err, keystore.ErrUnavailable), errors.Is(err, context.DeadlineExceeded):
		logLimited(s.log, s.failLog, slog.LevelWarn, "admin API: key store unavailable", "route", r.Pattern, "err", err)
		ae = &apiError{http.StatusServiceUnavailable, codeUnavailable, "key store unavailable, retry shortly"}
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return nil // the client went away; nobody reads an answer
	default:
		logLimited(s.log, s.failLog, slog.LevelError, "admin API request failed", "route", r.Pattern, "err", err)
		ae = &apiError{http.StatusInternalServerError, codeInternal, "internal error"}
	}
	return ae
}

// The lines of requests' failures: at most failLogBurst per failLogEvery.
const (
	failLogBurst = 10
	failLogEvery = time.Minute
)

// logLimited logs a request's failure to log within limit's bound; the
// first line after some were left out says how many.
func logLimited(log *slog.Logger, limit *loglimit.Limiter, level slog.Level, msg string, attrs ...any) {
	leftOut, ok := limit.Admit()
	if !ok {
		return
	}
	if leftOut > 0 {
		attrs = append(attrs, "messages_left_out", leftOut)
	}
	log.Log(context.Background(), level, msg, attrs...)
}

// writeJSON answers a success with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // our own types: cannot happen
		forwardauth.WriteError(w, http.StatusInternalServerError, codeInternal, "internal error")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	// An operator reads these with curl in a terminal: a record written
	// before labels were checked, or straight into the store, has its
	// controls, bidirectional overrides and zero-width characters escaped
	// (encoding/json leaves them raw), the same values to a program.
	w.Write(append(visible.EscapeJSON(nil, b), '\n')) //nolint:errcheck // the client is gone
}
