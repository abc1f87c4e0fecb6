package authz

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
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
}

// Check answers one ext_authz request. A denial is a CheckResponse with a
// non-OK status, never an RPC error: Envoy treats an RPC error as a failure
// of the authorization service, not as a denial. A panic is recovered into
// a 503 denial.
func (s *CheckServer) Check(ctx context.Context, in *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	defer func() {
		if r := recover(); r != nil {
			LogPanic(s.Logger, "check", r)
			var d Decision
			d.deny(CodeUnavailable, "")
			resp = s.response(&Request{Headers: HeaderMap{}}, &d)
		}
	}()
	start := time.Now()
	req := RequestFromCheck(in)
	var d Decision
	s.Authz.Decide(ctx, &req, &d)
	resp = s.response(&req, &d)
	if s.Observer != nil {
		s.Observer.Observe(&req, &d, time.Since(start))
	}
	return resp, nil
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
// missing (the getters are nil-safe), which step 1 then rejects.
func RequestFromCheck(in *authv3.CheckRequest) Request {
	attrs := in.GetAttributes()
	h := attrs.GetRequest().GetHttp()
	headers := h.GetHeaders()
	if len(headers) == 0 && h.GetHeaderMap() != nil {
		// Envoy with encode_raw_headers sends header_map instead.
		headers = make(map[string]string, len(h.GetHeaderMap().GetHeaders()))
		for _, hv := range h.GetHeaderMap().GetHeaders() {
			name := strings.ToLower(hv.GetKey())
			v := hv.GetValue()
			if v == "" {
				v = string(hv.GetRawValue())
			}
			if prev, ok := headers[name]; ok {
				v = prev + "," + v
			}
			headers[name] = v
		}
	}
	return Request{
		Method:         h.GetMethod(),
		Path:           h.GetPath(),
		Host:           h.GetHost(),
		Headers:        HeaderMap(headers),
		Peer:           attrs.GetSource().GetAddress().GetSocketAddress().GetAddress(),
		XFFTrustedHops: -1,
	}
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
	ok := &authv3.OkHttpResponse{}
	up := d.IdentityHeaders(buf[:0])
	var remove []string
	p := s.Authz.Policy()
	for i, src := range p.Sources {
		if d.Present&(1<<i) == 0 {
			continue
		}
		switch src.kind {
		case sourceHeader:
			remove = append(remove, src.name)
		case sourceQuery:
			ok.QueryParametersToRemove = append(ok.QueryParametersToRemove, src.name)
		case sourceCookie:
			// A cookie header that is not UTF-8 (possible with Envoy's
			// encode_raw_headers) cannot travel in the response proto: drop the
			// whole header rather than fail the check or pass the credential on.
			if rest := CookieWithout(req.Headers.Get("cookie"), src.name); rest != "" && utf8.ValidString(rest) {
				up = append(up, Header{Key: "cookie", Value: rest})
			} else {
				remove = append(remove, "cookie")
			}
		}
	}
	remove = appendSpoofed(remove, req.Headers, d.Key != nil)
	ok.Headers = headerOptions(up)
	ok.HeadersToRemove = remove
	if d.HasRateLimit {
		ok.ResponseHeadersToAdd = headerOptions(d.ResponseHeaders(buf[:0]))
	}
	return &authv3.CheckResponse{
		Status:       &rpcstatus.Status{},
		HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
	}
}

// appendSpoofed appends every client-sent x-authz-* header, except, when
// identity headers are set (keepIdentity), the four that overwrite them.
func appendSpoofed(remove []string, h Headers, keepIdentity bool) []string {
	m, ok := h.(HeaderMap)
	if !ok {
		return remove
	}
	for name := range m {
		if !utf8.ValidString(name) {
			continue // not a valid header name; Envoy's codec rejects such requests
		}
		if len(name) > len(IdentityPrefix) && strings.EqualFold(name[:len(IdentityPrefix)], IdentityPrefix) {
			switch strings.ToLower(name) {
			case HeaderKeyID, HeaderKeyName, HeaderOwner, HeaderPermissions:
				if keepIdentity {
					continue
				}
			}
			remove = append(remove, name)
		}
	}
	return remove
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
