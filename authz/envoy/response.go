package envoy

import (
	"hash/maphash"
	"slices"
	"sync/atomic"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// Field numbers of the CheckResponse messages (envoy/service/auth/v3,
// envoy/config/core/v3, envoy/type/v3, google/rpc), as
// TestTheFieldNumbersAreTheProtos reads them from the descriptors.
const (
	fieldCheckResponseStatus = 1 // CheckResponse.status, a google.rpc.Status
	fieldCheckResponseDenied = 2 // CheckResponse.denied_response
	fieldCheckResponseOK     = 3 // CheckResponse.ok_response
	fieldRPCStatusCode       = 1 // google.rpc.Status.code
	fieldRPCStatusMessage    = 2 // google.rpc.Status.message
	fieldDeniedStatus        = 1 // DeniedHttpResponse.status, an HttpStatus
	fieldDeniedHeaders       = 2 // DeniedHttpResponse.headers
	fieldDeniedBody          = 3 // DeniedHttpResponse.body
	fieldHTTPStatusCode      = 1 // HttpStatus.code
	fieldOKHeaders           = 2 // OkHttpResponse.headers
	fieldOKHeadersToRemove   = 5 // OkHttpResponse.headers_to_remove
	fieldOKResponseHeaders   = 6 // OkHttpResponse.response_headers_to_add
	fieldOKQueryToRemove     = 8 // OkHttpResponse.query_parameters_to_remove
	fieldOptionHeader        = 1 // HeaderValueOption.header, a HeaderValue
	fieldOptionAppendAction  = 3 // HeaderValueOption.append_action
	fieldHeaderKey           = 1 // HeaderValue.key
	fieldHeaderValue         = 2 // HeaderValue.value
)

// A response is written as the bytes it marshals to, the way requests are
// read (wire.go): building the messages and having proto.Marshal size and
// walk them took 5.5 µs of a Redis-limited check under perf on the
// development VM (2.2 to build, 3.3 to marshal), several times the
// decision of a cached key, while the bytes of what repeats (a key's
// identity headers, its dynamic metadata) can be kept encoded. The bytes
// are those of the message the decision describes, fields in number order,
// empty strings omitted as proto3 omits them:
// TestTheWrittenResponseIsTheProtoOfTheDecision holds them to the messages
// proto.Marshal would be given, and FuzzCheck to responses that decode.

// errNotUTF8 is a response that cannot be sent: proto3 strings are UTF-8,
// and Envoy refuses a response that is not. proto.Marshal refused it too;
// the check becomes an RPC error, which Envoy treats as the authorization
// service failing (failure_mode_allow decides, false by default).
var errNotUTF8 = status.Error(codes.Internal, "the response would carry a string that is not UTF-8")

// appendResponse appends the CheckResponse of d, made for req, to b; tmp is
// scratch space, returned for the next call to reuse.
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
func (s *CheckServer) appendResponse(b, tmp []byte, req *authz.Request, d *authz.Decision) (out, scratch []byte, err error) {
	var buf [8]authz.Header
	var parts *responseParts
	if d.Key != nil {
		if parts = s.identityMemo().parts(d); parts.notUTF8 {
			return b, tmp, errNotUTF8
		}
	}
	w := responseWriter{}
	if !d.Allowed() {
		rpc := protowire.AppendTag(tmp[:0], fieldRPCStatusCode, protowire.VarintType)
		rpc = protowire.AppendVarint(rpc, uint64(grpcCode(d.Code)))
		rpc = w.appendString(rpc, fieldRPCStatusMessage, d.Message)
		b = appendMessage(b, fieldCheckResponseStatus, rpc)
		// The status is copied into b: the denied_response is written in
		// tmp's room after it.
		denied := protowire.AppendTag(rpc[len(rpc):], fieldDeniedStatus, protowire.BytesType)
		denied = protowire.AppendVarint(denied, uint64(protowire.SizeTag(fieldHTTPStatusCode)+protowire.SizeVarint(uint64(d.Code.HTTPStatus()))))
		denied = protowire.AppendTag(denied, fieldHTTPStatusCode, protowire.VarintType)
		denied = protowire.AppendVarint(denied, uint64(d.Code.HTTPStatus()))
		for _, h := range d.ResponseHeaders(buf[:0]) {
			denied = w.appendHeader(denied, fieldDeniedHeaders, h.Key, h.Value)
		}
		denied = w.appendString(denied, fieldDeniedBody, d.Body())
		b = appendMessage(b, fieldCheckResponseDenied, denied)
		tmp = denied[:0]
	} else {
		b = appendMessage(b, fieldCheckResponseStatus, nil) // OK: a status with every field zero
		ok := tmp[:0]
		if parts != nil {
			ok = append(ok, parts.headers...)
		}
		var names [4]string
		remove, queries, cookies := presentSources(d, names[:0])
		if len(cookies) > 0 {
			// A cookie header that is not UTF-8 (possible with Envoy's
			// encode_raw_headers) cannot travel in the response: drop the
			// whole header rather than fail the check or pass the
			// credential on.
			if rest := authz.CookieWithout(req.Headers.Get("cookie"), d.Policy.HoldsKey, cookies...); rest != "" && utf8.ValidString(rest) {
				ok = w.appendHeader(ok, fieldOKHeaders, "cookie", rest)
			} else {
				remove = append(remove, "cookie")
			}
		}
		for _, name := range req.AppendSpoofed(remove, d, false) {
			ok = w.appendString(ok, fieldOKHeadersToRemove, name)
		}
		for _, h := range d.ResponseHeaders(buf[:0]) {
			ok = w.appendHeader(ok, fieldOKResponseHeaders, h.Key, h.Value)
		}
		for _, name := range queries {
			ok = w.appendString(ok, fieldOKQueryToRemove, name)
		}
		b = appendMessage(b, fieldCheckResponseOK, ok)
		tmp = ok[:0]
	}
	if parts != nil {
		b = append(b, parts.metadata...)
	} else {
		b = append(b, dynamicMetadata(d, nil)...)
	}
	if w.notUTF8 {
		return b, tmp, errNotUTF8
	}
	return b, tmp, nil
}

// presentSources returns the names of the key sources present in the
// request, by kind: headers appended to headers, query parameters, cookies.
func presentSources(d *authz.Decision, headers []string) (_, queries, cookies []string) {
	for i, src := range d.Sources() {
		if d.Present&(1<<i) == 0 {
			continue
		}
		switch src.Kind() {
		case authz.SourceHeader:
			headers = append(headers, src.Name())
		case authz.SourceQuery:
			queries = append(queries, src.Name())
		case authz.SourceCookie:
			cookies = append(cookies, src.Name())
		}
	}
	return headers, queries, cookies
}

// responseWriter appends the fields of a response, noting whether any
// string was not UTF-8.
type responseWriter struct{ notUTF8 bool }

// appendString appends the string field of number num, unless s is empty
// (proto3 omits it).
func (w *responseWriter) appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	if !utf8.ValidString(s) {
		w.notUTF8 = true
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendHeader appends a HeaderValueOption as the field of number num: the
// header key: value, overwriting any header of the same name (never
// appending, so a client value cannot survive).
func (w *responseWriter) appendHeader(b []byte, num protowire.Number, key, value string) []byte {
	hv := 0
	if key != "" {
		hv += protowire.SizeTag(fieldHeaderKey) + protowire.SizeBytes(len(key))
	}
	if value != "" {
		hv += protowire.SizeTag(fieldHeaderValue) + protowire.SizeBytes(len(value))
	}
	overwrite := uint64(corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD)
	opt := protowire.SizeTag(fieldOptionHeader) + protowire.SizeBytes(hv) +
		protowire.SizeTag(fieldOptionAppendAction) + protowire.SizeVarint(overwrite)
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(opt))
	b = protowire.AppendTag(b, fieldOptionHeader, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(hv))
	b = w.appendString(b, fieldHeaderKey, key)
	b = w.appendString(b, fieldHeaderValue, value)
	b = protowire.AppendTag(b, fieldOptionAppendAction, protowire.VarintType)
	return protowire.AppendVarint(b, overwrite)
}

// appendMessage appends msg, the encoded fields of a message, as the field
// of number num.
func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

// identityMemo returns the server's memo of identity headers, made on first use.
func (s *CheckServer) identityMemo() *identityMemo {
	if m := s.identity.Load(); m != nil {
		return m
	}
	s.identity.CompareAndSwap(nil, newIdentityMemo())
	return s.identity.Load()
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
// says about the key, already encoded: its identity headers as
// OkHttpResponse.headers fields and its part of the dynamic metadata; and,
// for the last policy, route and outcome it was decided under, the whole
// upstream header list (the identity headers and the forwarded metadata)
// and dynamic_metadata field. Allowing a cached key again on the same route
// thus encodes nothing of it: the header fields and the metadata were most
// of what a response cost.
//
// Sharing is safe because both sides are read-only: a key record is never
// modified once the cache hands it out (keystore.Cache.Lookup), and the
// encoded bytes are only ever copied. A record is recognised by its
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
	headers  []byte // the identity headers, as OkHttpResponse.headers fields
	metadata []byte // keyMetadata(key)
	notUTF8  bool   // a string of the headers or the metadata is not UTF-8
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
	// and forwarded metadata; nil otherwise), as OkHttpResponse.headers
	// fields.
	headers  []byte
	metadata []byte // the dynamic_metadata field
	notUTF8  bool   // a string of headers or metadata is not UTF-8: the response cannot be sent
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
	var w responseWriter
	var headers []byte
	for _, h := range authz.AppendIdentityHeaders(buf[:0], k) {
		headers = w.appendHeader(headers, fieldOKHeaders, h.Key, h.Value)
	}
	metadata := keyMetadata(k)
	e := &identityEntry{key: k, headers: headers, metadata: metadata, notUTF8: w.notUTF8 || !keyIsUTF8(k)}
	if old := set[0].Swap(e); old != nil && old.key.ID != k.ID {
		set[1].Store(old)
	}
	return e
}

// keyIsUTF8 reports whether every string of k's record is UTF-8, as the
// keys' checks of their text ensure (keystore.CheckText) unless a store's
// record was written otherwise.
func keyIsUTF8(k *keystore.Key) bool {
	ok := utf8.ValidString(k.ID) && utf8.ValidString(k.Name) && utf8.ValidString(k.Owner)
	for _, p := range k.Permissions {
		ok = ok && utf8.ValidString(p)
	}
	for name, v := range k.Meta {
		ok = ok && utf8.ValidString(name) && utf8.ValidString(v)
	}
	return ok
}

// parts returns the response parts of d, which has a key: the entry's last
// ones when d was decided under the same policy, route and outcome, else
// new ones, which become the last. The parts are shared: callers may copy
// them but not modify them.
func (m *identityMemo) parts(d *authz.Decision) *responseParts {
	e := m.entry(d.Key)
	if p := e.last.Load(); p != nil && p.policy == d.Policy && p.route == d.Route && p.code == d.Code && p.shadow == d.Shadow {
		return p
	}
	p := &responseParts{policy: d.Policy, route: d.Route, code: d.Code, shadow: d.Shadow, metadata: dynamicMetadata(d, e.metadata), notUTF8: e.notUTF8}
	if d.Identified() {
		p.headers = e.headers
		var buf [4]authz.Header
		if meta := d.MetaHeaders(buf[:0], false); len(meta) > 0 {
			var w responseWriter
			p.headers = slices.Clone(e.headers)
			for _, h := range meta {
				p.headers = w.appendHeader(p.headers, fieldOKHeaders, h.Key, h.Value)
			}
			p.notUTF8 = p.notUTF8 || w.notUTF8
		}
	}
	e.last.Store(p)
	return p
}
