package envoy

import (
	"hash/maphash"
	"slices"
	"sync/atomic"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// okResponse is an allowed CheckResponse in one allocation: its messages
// and the backing array of headers_to_remove.
type okResponse struct {
	resp   authv3.CheckResponse
	status rpcstatus.Status
	wrap   authv3.CheckResponse_OkResponse
	ok     authv3.OkHttpResponse
	remove [4]string
}

// response is the one path from a Decision to the CheckResponse Envoy gets.
//
// A denial carries the google.rpc status of its code, and the HTTP status,
// headers and JSON body the client sees. An allow (a decision made in
// shadow mode is one, whatever its code) sets the identity headers and the
// metadata headers the policy forwards upstream when the decision itself
// allowed a key (overwriting, never appending, so a client's value cannot
// survive), removes every credential present (a header by name, a query
// parameter with query_parameters_to_remove, a cookie by rewriting the
// cookie header without it) and every client header that reads as an
// x-authz- one, and adds the rate-limit headers to the response. Both carry
// dynamic_metadata (metadata.go).
func (s *CheckServer) response(req *authz.Request, d *authz.Decision) *authv3.CheckResponse {
	var buf [8]authz.Header
	var parts *responseParts
	if d.Key != nil {
		parts = s.identityMemo().parts(d)
	}
	if !d.Allowed() {
		headers := d.ResponseHeaders(buf[:0])
		resp := &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(grpcCode(d.Code)), Message: d.Message},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: typev3.StatusCode(d.Code.HTTPStatus())},
				Headers: headerOptions(headers),
				Body:    d.Body(),
			}},
		}
		setMetadata(resp, d, parts)
		return resp
	}
	r := &okResponse{}
	r.resp.Status = &r.status
	r.resp.HttpResponse = &r.wrap
	r.wrap.OkResponse = &r.ok
	ok := &r.ok
	if parts != nil {
		ok.Headers = parts.headers
	}
	remove := r.remove[:0]
	var cookies []string // present cookie sources, stripped in one rewrite
	for i, src := range d.Sources() {
		if d.Present&(1<<i) == 0 {
			continue
		}
		switch src.Kind() {
		case authz.SourceHeader:
			remove = append(remove, src.Name())
		case authz.SourceQuery:
			ok.QueryParametersToRemove = append(ok.QueryParametersToRemove, src.Name())
		case authz.SourceCookie:
			cookies = append(cookies, src.Name())
		}
	}
	if len(cookies) > 0 {
		// A cookie header that is not UTF-8 (possible with Envoy's
		// encode_raw_headers) cannot travel in the response proto: drop the
		// whole header rather than fail the check or pass the credential on.
		if rest := authz.CookieWithout(req.Headers.Get("cookie"), cookies...); rest != "" && utf8.ValidString(rest) {
			// Appending copies: the memoized options are full (len == cap).
			ok.Headers = append(ok.Headers, headerOptions([]authz.Header{{Key: "cookie", Value: rest}})...)
		} else {
			remove = append(remove, "cookie")
		}
	}
	ok.HeadersToRemove = req.AppendSpoofed(remove, d, false)
	if hs := d.ResponseHeaders(buf[:0]); len(hs) > 0 {
		ok.ResponseHeadersToAdd = headerOptions(hs)
	}
	setMetadata(&r.resp, d, parts)
	return &r.resp
}

// setMetadata puts d's dynamic_metadata into resp (see metadata.go): the
// memoized bytes of parts when there are some, else encoded now.
func setMetadata(resp *authv3.CheckResponse, d *authz.Decision, parts *responseParts) {
	var b []byte
	if parts != nil {
		b = parts.metadata
	} else {
		b = dynamicMetadata(d, nil)
	}
	resp.ProtoReflect().SetUnknown(protoreflect.RawFields(b))
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
func headerOptions(hs []authz.Header) []*corev3.HeaderValueOption {
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

// grpcCode is the google.rpc code of CheckResponse.status for a decision's
// code: the one matching its HTTP status.
func grpcCode(c authz.Code) codes.Code {
	switch c.HTTPStatus() {
	case 200:
		return codes.OK
	case 400:
		return codes.InvalidArgument
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 429:
		return codes.ResourceExhausted
	}
	return codes.Unavailable
}

// identitySets bounds the identity memo: at most two key records per set
// are remembered (and kept alive by it), about 1.5 KB each. Two ways in
// 2,048 sets hold what one way in 4,096 did, but a key loses its place to
// a neighbour far less often: with a thousand keys used at random, on 3%
// of checks instead of 12–14% (measured over three seeds).
const identitySets = 2048

// identityMemo remembers, for recently seen key records, what a response
// says about the key, already encoded: its identity headers in Envoy's form
// and its part of the dynamic metadata; and, for the last policy, route and
// outcome it was decided under, the whole upstream header list (the
// identity headers and the forwarded metadata) and dynamic_metadata field.
// Allowing a cached key again on the same route thus builds nothing: header
// messages and the metadata were most of what a response cost.
//
// Sharing is safe because both sides are read-only: a key record is never
// modified once the cache hands it out (keystore.Cache.Lookup), and proto
// messages and unknown-field bytes are only read when marshalled (the size
// cache they keep is written atomically). A record is recognised by its
// pointer, which its entry keeps alive, so a new record at a recycled
// address cannot be mistaken for it. Sets are chosen by key ID, so a record
// refetched from the store takes its predecessor's place; likewise a
// policy or route is recognised by its pointer, which a reload replaces.
type identityMemo struct {
	seed maphash.Seed
	// sets[i] holds the entries of two key IDs of set i, the one made
	// last first.
	sets [identitySets][2]atomic.Pointer[identityEntry]
}

type identityEntry struct {
	key      *keystore.Key
	opts     []*corev3.HeaderValueOption // the identity headers; len == cap: appending copies
	metadata []byte                      // keyMetadata(key)
	last     atomic.Pointer[responseParts]
}

// responseParts are the parts of a response to one key under one policy,
// route and outcome.
type responseParts struct {
	policy *authz.Policy
	route  *authz.Route
	code   authz.Code
	shadow bool
	// headers are the upstream headers of an identified decision (identity
	// and forwarded metadata; nil otherwise), len == cap: appending copies.
	headers  []*corev3.HeaderValueOption
	metadata []byte // the dynamic_metadata field
}

func newIdentityMemo() *identityMemo { return &identityMemo{seed: maphash.MakeSeed()} }

// entry returns k's entry, made when k is not a record of its set. The new
// entry goes first; the one first before it moves second, unless it was of
// k's ID (an older record of the key, which the new one replaces). Two
// callers at once may lose one of theirs: it is made again when next needed.
func (m *identityMemo) entry(k *keystore.Key) *identityEntry {
	set := &m.sets[maphash.String(m.seed, k.ID)%identitySets]
	for i := range set {
		if e := set[i].Load(); e != nil && e.key == k {
			return e
		}
	}
	var buf [4]authz.Header
	opts := headerOptions(authz.AppendIdentityHeaders(buf[:0], k))
	e := &identityEntry{key: k, opts: opts[:len(opts):len(opts)], metadata: keyMetadata(k)}
	if old := set[0].Swap(e); old != nil && old.key.ID != k.ID {
		set[1].Store(old)
	}
	return e
}

// parts returns the response parts of d, which has a key: the entry's last
// ones when d was decided under the same policy, route and outcome, else
// new ones, which become the last. The parts are shared: callers may append
// to their slices (that copies, as they are full) but not modify them.
func (m *identityMemo) parts(d *authz.Decision) *responseParts {
	e := m.entry(d.Key)
	if p := e.last.Load(); p != nil && p.policy == d.Policy && p.route == d.Route && p.code == d.Code && p.shadow == d.Shadow {
		return p
	}
	p := &responseParts{policy: d.Policy, route: d.Route, code: d.Code, shadow: d.Shadow, metadata: dynamicMetadata(d, e.metadata)}
	if d.Identified() {
		p.headers = e.opts
		var buf [4]authz.Header
		if meta := d.MetaHeaders(buf[:0], false); len(meta) > 0 {
			p.headers = append(slices.Clip(e.opts), headerOptions(meta)...)
			p.headers = p.headers[:len(p.headers):len(p.headers)]
		}
	}
	e.last.Store(p)
	return p
}
