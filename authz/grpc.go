package authz

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
)

// Observer is told about every decision after it is made (metrics, audit).
// It must not block.
type Observer interface {
	Observe(req *Request, d *Decision, latency time.Duration)
}

// CheckServer is Envoy's envoy.service.auth.v3.Authorization over an Authorizer.
type CheckServer struct {
	authv3.UnimplementedAuthorizationServer
	Authz    *Authorizer
	Observer Observer     // may be nil
	Logger   *slog.Logger // for recovered panics; may be nil

	identity atomic.Pointer[identityMemo] // made on first use
}

// checkState is the request and decision of one check, reused through
// checkStates: handing them to the Observer interface would otherwise put
// both on the heap for every check.
type checkState struct {
	req  Request
	d    Decision
	hdrs headerList // req.Headers when decoded by the server's codec
}

var checkStates = sync.Pool{New: func() any { return new(checkState) }}

// maxKeptHeaders bounds the header entries a pooled checkState keeps room
// for: one huge request must not pin its array for good.
const maxKeptHeaders = 64

// reset empties st for its next check. Nothing of st outlives a check: the
// response and the observer copy what they keep (strings, which are
// immutable); the header array is kept, cleared so that it pins no strings.
func (st *checkState) reset() {
	hdrs := st.hdrs[:0]
	if cap(hdrs) > maxKeptHeaders {
		hdrs = nil
	}
	clear(hdrs[:cap(hdrs)])
	*st = checkState{hdrs: hdrs}
}

// Check answers one ext_authz request. A denial is a CheckResponse with a
// non-OK status, never an RPC error: Envoy treats an RPC error as a failure
// of the authorization service, not as a denial. A panic is recovered into
// a 503 denial.
func (s *CheckServer) Check(ctx context.Context, in *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	st := checkStates.Get().(*checkState)
	st.req = RequestFromCheck(in)
	return s.check(ctx, st), nil
}

// check decides st.req and answers it, then returns st to checkStates.
func (s *CheckServer) check(ctx context.Context, st *checkState) (resp *authv3.CheckResponse) {
	defer func() {
		if r := recover(); r != nil {
			LogPanic(s.Logger, "check", r)
			var d Decision
			d.deny(CodeUnavailable, "")
			resp = s.response(&Request{Headers: HeaderMap{}}, &d)
		}
	}()
	start := time.Now()
	s.Authz.Decide(ctx, &st.req, &st.d)
	resp = s.response(&st.req, &st.d)
	if s.Observer != nil {
		s.Observer.Observe(&st.req, &st.d, time.Since(start))
	}
	st.reset()
	checkStates.Put(st)
	return resp
}

// LogPanic logs a recovered panic without its value: the value is whatever
// was being formatted when it happened, which may be a key or a header. The
// type and the stack (whose argument words are numbers, not string
// contents) are enough to find the bug.
func LogPanic(logger *slog.Logger, where string, r any) {
	if logger == nil {
		logger = slog.Default()
	}
	logger.Error("panic recovered", "in", where, "type", fmt.Sprintf("%T", r), "stack", string(debug.Stack()))
}

// RequestFromCheck reads the attributes of a CheckRequest; any part may be
// missing (the getters are nil-safe), which step 1 then rejects. A request
// past MaxHeaders or MaxHeaderBytes gets no headers and Malformed set.
func RequestFromCheck(in *authv3.CheckRequest) Request {
	attrs := in.GetAttributes()
	h := attrs.GetRequest().GetHttp()
	req := Request{
		Method:         h.GetMethod(),
		Path:           h.GetPath(),
		Host:           h.GetHost(),
		Peer:           attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(),
		XFFTrustedHops: -1,
	}
	var budget headerBudget
	headers := h.GetHeaders()
	for k, v := range headers {
		req.names.note(k)
		if !budget.add(k, v) {
			req.Malformed = errTooManyHeaders
		}
	}
	if len(headers) == 0 && h.GetHeaderMap() != nil {
		headers = joinHeaderMap(h.GetHeaderMap().GetHeaders(), &budget, &req.names)
		if headers == nil {
			req.Malformed = errTooManyHeaders
		}
	}
	if req.Malformed != "" {
		headers = nil
	}
	req.Headers = HeaderMap(headers)
	return req
}

// joinHeaderMap reads Envoy's header_map (encode_raw_headers): names
// lower-cased, the values of a repeated name joined with "," as Envoy joins
// them in the headers map. It is linear in the entries (each name's values
// are joined once), and returns nil past the budget.
func joinHeaderMap(entries []*corev3.HeaderValue, budget *headerBudget, names *headerNames) map[string]string {
	values := make(map[string][]string, len(entries))
	for _, hv := range entries {
		v := hv.GetValue()
		if v == "" {
			v = string(hv.GetRawValue())
		}
		if !budget.add(hv.GetKey(), v) {
			return nil
		}
		name := strings.ToLower(hv.GetKey())
		names.note(name)
		values[name] = append(values[name], v)
	}
	headers := make(map[string]string, len(values))
	for name, vs := range values {
		headers[name] = strings.Join(vs, ",")
	}
	return headers
}

// okResponse is an allowed CheckResponse in one allocation: its messages
// and the backing array of headers_to_remove.
type okResponse struct {
	resp   authv3.CheckResponse
	status rpcstatus.Status
	wrap   authv3.CheckResponse_OkResponse
	ok     authv3.OkHttpResponse
	remove [4]string
}

func (s *CheckServer) response(req *Request, d *Decision) *authv3.CheckResponse {
	var buf [8]Header
	if !d.Allowed() {
		headers := d.ResponseHeaders(buf[:0])
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(d.Code.GRPCCode()), Message: d.Message},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(d.Code.HTTPStatus())},
				Headers: headerOptions(headers),
				Body:    d.Body(),
			}},
		}
	}
	r := &okResponse{}
	r.resp.Status = &r.status
	r.resp.HttpResponse = &r.wrap
	r.wrap.OkResponse = &r.ok
	ok := &r.ok
	if d.Key != nil {
		ok.Headers = s.identityMemo().options(d.Key)
	}
	remove := r.remove[:0]
	var cookies []string // present cookie sources, stripped in one rewrite
	for i, src := range d.policy.Sources {
		if d.Present&(1<<i) == 0 {
			continue
		}
		switch src.kind {
		case sourceHeader:
			remove = append(remove, src.name)
		case sourceQuery:
			ok.QueryParametersToRemove = append(ok.QueryParametersToRemove, src.name)
		case sourceCookie:
			cookies = append(cookies, src.name)
		}
	}
	if len(cookies) > 0 {
		// A cookie header that is not UTF-8 (possible with Envoy's
		// encode_raw_headers) cannot travel in the response proto: drop the
		// whole header rather than fail the check or pass the credential on.
		if rest := CookieWithout(req.Headers.Get("cookie"), cookies...); rest != "" && utf8.ValidString(rest) {
			// Appending copies: the memoized options are full (len == cap).
			ok.Headers = append(ok.Headers, headerOptions([]Header{{Key: "cookie", Value: rest}})...)
		} else {
			remove = append(remove, "cookie")
		}
	}
	ok.HeadersToRemove = appendSpoofed(remove, req, d.Key != nil, false)
	if d.HasRateLimit {
		ok.ResponseHeadersToAdd = headerOptions(d.ResponseHeaders(buf[:0]))
	}
	return &r.resp
}

// identityMemo returns the server's memo of identity headers, made on first use.
func (s *CheckServer) identityMemo() *identityMemo {
	if m := s.identity.Load(); m != nil {
		return m
	}
	s.identity.CompareAndSwap(nil, newIdentityMemo())
	return s.identity.Load()
}

// headerOptions turns headers into Envoy's form, each overwriting any header
// of the same name (never appending, so a client value cannot survive).
func headerOptions(hs []Header) []*corev3.HeaderValueOption {
	if len(hs) == 0 {
		return nil
	}
	// One allocation for all the messages, one for the pointers.
	type pair struct {
		opt corev3.HeaderValueOption
		hv  corev3.HeaderValue
	}
	pairs := make([]pair, len(hs))
	opts := make([]*corev3.HeaderValueOption, len(hs))
	for i, h := range hs {
		p := &pairs[i]
		p.hv.Key, p.hv.Value = h.Key, h.Value
		p.opt.Header, p.opt.AppendAction = &p.hv, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
		opts[i] = &p.opt
	}
	return opts
}
