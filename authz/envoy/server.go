// Package envoy is the decision's face to Envoy: the
// envoy.service.auth.v3.Authorization gRPC service (ext_authz), which reads
// a CheckRequest into an authz.Request, has authz decide, and answers with
// the CheckResponse of the Decision. Its codec decodes CheckRequests straight
// from the wire (wire.go), response.go is the one path from a Decision to a
// CheckResponse, and metadata.go encodes the dynamic metadata every
// response carries.
//
// It is not the decision (package authz) and does not listen: cmd/extauthz
// registers it on its gRPC server.
package envoy

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/authz"
)

// MaxCheckRequestBytes is the largest CheckRequest the gRPC server accepts
// (grpc.MaxRecvMsgSize): room for authz.MaxHeaderBytes of headers and the
// rest of what Envoy sends. A larger message is an RPC error, which Envoy
// answers with its status_on_error.
const MaxCheckRequestBytes = 1 << 20

// CheckServer is Envoy's envoy.service.auth.v3.Authorization over an
// authz.Authorizer.
type CheckServer struct {
	authv3.UnimplementedAuthorizationServer
	Authz    *authz.Authorizer
	Observer authz.Observer // may be nil
	Logger   *slog.Logger   // for recovered panics; may be nil
	// Tracer makes a span of each check; nil = none, at no cost.
	Tracer authz.Tracer

	identity atomic.Pointer[identityMemo] // made on first use
}

// checkState is the request and decision of one check, reused through
// checkStates: handing them to the Observer interface would otherwise put
// both on the heap for every check.
type checkState struct {
	req  authz.Request
	d    authz.Decision
	hdrs authz.HeaderList // req.Headers when decoded by the server's codec
	ext  []authz.Header   // req.ContextExtensions, likewise
	out  []byte           // the response being written
	tmp  []byte           // the message within it being written
}

var checkStates = sync.Pool{New: func() any { return new(checkState) }}

// maxKeptHeaders bounds the header entries a pooled checkState keeps room
// for, and maxKeptBytes the bytes of response it keeps room for: one huge
// request must not pin its arrays for good.
const (
	maxKeptHeaders = 64
	maxKeptBytes   = 16 << 10
)

// reset empties st for its next check. Nothing of st outlives a check: the
// response and the observer copy what they keep (strings, which are
// immutable); the header array is kept, cleared so that it pins no strings.
func (st *checkState) reset() {
	hdrs := st.hdrs[:0]
	if cap(hdrs) > maxKeptHeaders {
		hdrs = nil
	}
	clear(hdrs[:cap(hdrs)])
	ext := st.ext[:0]
	clear(ext[:cap(ext)])
	out, tmp := st.out[:0], st.tmp[:0]
	if cap(out) > maxKeptBytes || cap(tmp) > maxKeptBytes {
		out, tmp = nil, nil
	}
	*st = checkState{hdrs: hdrs, ext: ext, out: out, tmp: tmp}
}

// Check answers one ext_authz request. A denial is a CheckResponse with a
// non-OK status, never an RPC error: Envoy treats an RPC error as a failure
// of the authorization service, not as a denial. A panic is recovered into
// a 503 denial.
//
// The server registered by Register does not come here: it decodes the
// request from the wire and sends the response's bytes as written. This
// method reads the response back into its message.
func (s *CheckServer) Check(ctx context.Context, in *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	st := checkStates.Get().(*checkState)
	st.req = RequestFromCheck(in)
	b, err := s.check(ctx, st)
	if err != nil {
		return nil, err
	}
	resp := new(authv3.CheckResponse)
	if err := proto.Unmarshal(b, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

// check decides st.req and answers it with the serialized CheckResponse
// (a new slice, the caller's), then returns st to checkStates. The error is
// a response that cannot be sent (errNotUTF8).
func (s *CheckServer) check(ctx context.Context, st *checkState) (resp []byte, err error) {
	start := time.Now()
	var traced func(*authz.Decision)
	defer func() {
		if r := recover(); r != nil {
			authz.LogPanic(s.Logger, "check", r)
			var d authz.Decision
			d.Deny(authz.CodeUnavailable, "")
			resp, _, err = s.appendResponse(nil, nil, &authz.Request{Headers: authz.HeaderMap{}}, &d)
			s.observePanic(st, &d, time.Since(start))
			authz.EndPanicked(traced, st.d)
		}
	}()
	if s.Tracer != nil {
		ctx, traced = s.Tracer.Start(ctx, &st.req)
	}
	s.Authz.Decide(ctx, &st.req, &st.d)
	st.out, st.tmp, err = s.appendResponse(st.out[:0], st.tmp, &st.req, &st.d)
	if err == nil {
		resp = slices.Clone(st.out)
	} else {
		unsent(&st.d)
	}
	if traced != nil {
		traced(&st.d)
	}
	if s.Observer != nil {
		s.Observer.Observe(&st.req, &st.d, time.Since(start))
	}
	st.reset()
	checkStates.Put(st)
	return resp, err
}

// unsent makes d what the client got when its answer could not be sent
// (errNotUTF8): the check ends as an RPC error, which Envoy answers as the
// authorization service failing (status_on_error: 503 in the shipped
// configs, failure_mode_allow false), whatever d decided and in shadow
// mode too. The trace, the metrics and the audit then say so, naming the
// key, rather than record an allow, or a denial, that the client never
// got.
func unsent(d *authz.Decision) {
	d.Shadow = false
	d.Deny(authz.CodeUnavailable, "")
}

// observePanic tells the Observer of a check that panicked, answered d
// (503), with what the decision had learnt: someone who found an input that
// crashes a check is audited, and attributed, for each try. A panic of the
// Observer itself is not retried.
func (s *CheckServer) observePanic(st *checkState, d *authz.Decision, latency time.Duration) {
	if s.Observer == nil {
		return
	}
	defer func() { _ = recover() }()
	d.ClientIP, d.Method, d.Path = st.d.ClientIP, st.d.Method, st.d.Path
	d.Policy, d.Route, d.Key = st.d.Policy, st.d.Route, st.d.Key
	s.Observer.Observe(&st.req, d, latency)
}

// MaxContextExtensions is the most context_extensions entries a
// CheckRequest may carry: Envoy's configuration sets a handful; a request
// with more is answered 400.
const MaxContextExtensions = 64

// errTooManyExtensions is Request.Malformed past MaxContextExtensions.
const errTooManyExtensions = "more than 64 context_extensions"

// RequestFromCheck reads the attributes of a CheckRequest; any part may be
// missing (the getters are nil-safe), which the decision's steps then
// reject. A request past authz.MaxHeaders or authz.MaxHeaderBytes gets no
// headers and Malformed set, as does one past MaxContextExtensions.
func RequestFromCheck(in *authv3.CheckRequest) authz.Request {
	attrs := in.GetAttributes()
	h := attrs.GetRequest().GetHttp()
	req := authz.Request{
		Method:               h.GetMethod(),
		Path:                 h.GetPath(),
		Host:                 h.GetHost(),
		Peer:                 attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(),
		DestinationPrincipal: attrs.GetDestination().GetPrincipal(),
		XFFTrustedHops:       -1,
	}
	if ext := attrs.GetContextExtensions(); len(ext) > MaxContextExtensions {
		req.Malformed = errTooManyExtensions
	} else {
		for k, v := range ext {
			req.ContextExtensions = append(req.ContextExtensions, authz.Header{Key: k, Value: v})
		}
	}
	headers := h.GetHeaders()
	for k, v := range headers {
		req.NoteHeader(k, v)
	}
	if len(headers) == 0 && h.GetHeaderMap() != nil {
		headers = joinHeaderMap(h.GetHeaderMap().GetHeaders(), &req)
	}
	if req.Malformed != "" {
		headers = nil
	}
	req.Headers = authz.HeaderMap(headers)
	return req
}

// joinHeaderMap reads Envoy's header_map (encode_raw_headers) for req:
// names lower-cased, the values of a repeated name joined with "," as Envoy
// joins them in the headers map. It is linear in the entries (each name's
// values are joined once), and returns nil past the header limits.
func joinHeaderMap(entries []*corev3.HeaderValue, req *authz.Request) map[string]string {
	values := make(map[string][]string, len(entries))
	for _, hv := range entries {
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		name := strings.ToLower(hv.GetKey())
		if !req.NoteHeader(name, v) {
			return nil
		}
		values[name] = append(values[name], v)
	}
	headers := make(map[string]string, len(values))
	for name, vs := range values {
		headers[name] = strings.Join(vs, ",")
	}
	return headers
}
