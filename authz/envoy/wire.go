package envoy

import (
	"context"
	"errors"
	"fmt"
	"unicode/utf8"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/authz"
)

// A CheckRequest carries far more than a decision reads: Envoy sends the
// peers, their labels and certificates, a timestamp, the scheme, the
// protocol, the route's metadata... proto.Unmarshal builds every one of
// them, a string and a map entry at a time, and that was the largest single
// cost of a check (about 8 µs of 30 on the development VM, the same as the
// no-op server pays). The server instead decodes the wire bytes straight
// into a Request: one copy of the message, whose bytes the strings then
// share, and the fields the decision needs. It gives the Request that
// proto.Unmarshal and RequestFromCheck give, or an error where they fail
// (a malformed field, a string that is not UTF-8); FuzzDecodeCheck,
// FuzzDecodeCheckMessages and FuzzDecodeCheckParts hold it to that. Two
// differences are meant. It counts map entries as they come, so a header
// name or a context_extensions key repeated (Envoy never repeats one) may
// put a request past the caps, answered 400, that protobuf's map would
// keep within them. And it checks only what it reads, so a message
// protobuf refuses for a field the decision never reads (a body that is
// not UTF-8, a malformed timestamp or pipe) is decided; the framing of
// every message it walks is checked, so such a field cannot hide or move
// one it reads.

// ServerCodec is the gRPC server option Register needs: the "proto" codec,
// except that it decodes an Authorization/Check request straight into an
// authz.Request. Every other message (health, reflection) goes to grpc-go's own
// proto codec.
func ServerCodec() grpc.ServerOption {
	return grpc.ForceServerCodecV2(checkCodec{base: encoding.GetCodecV2("proto")})
}

// Register registers s as envoy.service.auth.v3.Authorization on r, a server
// made with ServerCodec. (authv3.RegisterAuthorizationServer works with any
// server, at the cost of the full proto decoding.)
func Register(r grpc.ServiceRegistrar, s *CheckServer) {
	r.RegisterService(&serviceDesc, s)
}

var serviceDesc = func() grpc.ServiceDesc {
	d := authv3.Authorization_ServiceDesc
	d.Methods = []grpc.MethodDesc{{MethodName: "Check", Handler: checkHandler}}
	return d
}()

const checkMethod = "/envoy.service.auth.v3.Authorization/Check"

func checkHandler(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
	s := srv.(*CheckServer)
	st := checkStates.Get().(*checkState)
	if err := dec(st); err != nil {
		st.reset()
		checkStates.Put(st)
		return nil, err
	}
	if interceptor == nil {
		return encoded(s.check(ctx, st))
	}
	// Interceptors see the decoded Request and the response's bytes: there
	// is neither a CheckRequest nor a CheckResponse.
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: checkMethod}
	return interceptor(ctx, &st.req, info, func(ctx context.Context, _ any) (any, error) {
		return encoded(s.check(ctx, st))
	})
}

// encoded is a serialized CheckResponse as the handler returns it for
// checkCodec to send: a mem.SliceBuffer, which Marshal passes on as it is.
// (Only this handler returns a mem.Buffer; boxed as one, it reaches the
// wire without another allocation.)
func encoded(b []byte, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	return mem.SliceBuffer(b), nil
}

type checkCodec struct{ base encoding.CodecV2 }

func (c checkCodec) Name() string { return c.base.Name() }

// Marshal sends a response the Check handler wrote (encoded) as it is, and
// marshals any other message (health, reflection) as grpc-go does.
func (c checkCodec) Marshal(v any) (mem.BufferSlice, error) {
	if b, ok := v.(mem.Buffer); ok {
		return mem.BufferSlice{b}, nil
	}
	return c.base.Marshal(v)
}

func (c checkCodec) Unmarshal(data mem.BufferSlice, v any) error {
	st, ok := v.(*checkState)
	if !ok {
		return c.base.Unmarshal(data, v)
	}
	// data goes back to grpc-go's buffer pool when this returns: the
	// Request's strings share a copy of it, which they own.
	return st.decode(data.Materialize())
}

// errMalformedCheck is the codec's error for bytes that are no CheckRequest
// (grpc-go answers it INTERNAL, as it does proto.Unmarshal's).
var errMalformedCheck = errors.New("decoding the CheckRequest: malformed message")

// decode fills st.req from a serialized CheckRequest b, which it keeps.
//
// It never hands b to proto.Unmarshal: protobuf builds every entry of every
// map and list in a message, those the decision never reads included, and
// a megabyte of empty header_map entries is half a million objects (about
// 120 MB and over half a second), of source labels a map of as many keys.
// Envoy's header_map alone is unmarshalled, a field at a time once its
// entries are counted, and only while they number at most the header cap
// in all (wireDecoder.headerMap).
func (st *checkState) decode(b []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			// Not expected (FuzzDecodeCheck), but a panic here would escape
			// grpc-go's handler and end the process.
			err = fmt.Errorf("decoding the CheckRequest: panic (%T)", r)
		}
	}()
	st.hdrs = st.hdrs[:0]
	w := wireDecoder{req: &st.req, hdrs: &st.hdrs, ext: st.ext[:0]}
	ok := w.checkRequest(b)
	st.ext = w.ext // its array is reused by the next check
	if !ok {
		st.req = authz.Request{}
		clear(st.hdrs)
		st.hdrs = st.hdrs[:0]
		clear(st.ext)
		st.ext = st.ext[:0]
		return errMalformedCheck
	}
	st.req.Headers = &st.hdrs
	st.req.XFFTrustedHops = -1
	if w.rawSeen && st.req.HeaderEntries() == 0 {
		// Envoy's encode_raw_headers: read as RequestFromCheck reads it,
		// which is also what it does with a header_map beside entries of
		// the headers map (Envoy never sends both): ignore it.
		var entries []*corev3.HeaderValue
		if w.raw != nil {
			entries = w.raw.Headers
		}
		st.req.Headers = authz.HeaderMap(joinHeaderMap(entries, &st.req))
		// Entries past the cap were counted, not kept: RequestFromCheck
		// finds the request past MaxHeaders, and so does this (each call
		// counts one more entry: at most MaxHeaders+1 of them).
		for w.rawEntries > len(entries) && st.req.Malformed == "" {
			st.req.NoteHeader("", "")
		}
	}
	if w.extEntries > MaxContextExtensions {
		st.req.Malformed = errTooManyExtensions
	}
	if st.req.Malformed != "" {
		// Answered 400 whatever the headers say. The context_extensions
		// are kept when within their cap, as RequestFromCheck keeps them:
		// the policy is selected (step 1) before the 400 (step 2), and
		// they select it, so without them the request would be decided
		// under another policy, or be 403 no_policy, in place of the 400.
		clear(st.hdrs)
		st.hdrs = st.hdrs[:0]
		st.req.Headers = &st.hdrs
		if w.extEntries > MaxContextExtensions {
			clear(st.ext)
			st.ext = st.ext[:0]
			st.req.ContextExtensions = nil
		}
	}
	return nil
}

// wireDecoder reads the fields of a CheckRequest a decision needs. Each
// method walks one message's fields in order, so that a message or scalar
// repeated on the wire merges or replaces exactly as proto.Unmarshal does;
// each returns false for a malformed field it reads or walks, which
// proto.Unmarshal refuses too.
type wireDecoder struct {
	req  *authz.Request
	hdrs *authz.HeaderList
	ext  []authz.Header // req.ContextExtensions, in wire order
	// socket says the last member of source.address's oneof on the wire
	// was socket_address: another member replaces it (Peer becomes "").
	socket bool
	// extEntries counts the context_extensions entries on the wire.
	extEntries int
	// rawSeen says the message has Envoy's header_map; raw holds its
	// entries up to MaxHeaders of them, rawEntries counts them all.
	rawSeen    bool
	raw        *corev3.HeaderMap
	rawEntries int
}

// Field numbers, from envoy/service/auth/v3 and envoy/config/core/v3.
const (
	fieldCheckAttributes       = 1 // CheckRequest.attributes
	fieldAttrSource            = 1 // AttributeContext.source
	fieldAttrRequest           = 4 // AttributeContext.request
	fieldPeerAddress           = 1 // AttributeContext.Peer.address
	fieldAddrSocket            = 1 // Address.socket_address
	fieldAddrPipe              = 2 // Address.pipe
	fieldAddrInternal          = 3 // Address.envoy_internal_address
	fieldSocketAddress         = 2 // SocketAddress.address
	fieldRequestHTTP           = 2 // AttributeContext.Request.http
	fieldHTTPMethod            = 2
	fieldHTTPHeaders           = 3 // map<string, string>
	fieldHTTPPath              = 4
	fieldHTTPHost              = 5
	fieldHTTPHeaderMap         = 13 // encode_raw_headers: a HeaderMap
	fieldHeaderMapHeaders      = 1  // HeaderMap.headers: repeated HeaderValue
	fieldMapKey, fieldMapValue = 1, 2

	// What selects a policy.
	fieldAttrDestination       = 2  // AttributeContext.destination
	fieldAttrContextExtensions = 10 // AttributeContext.context_extensions: map<string, string>
	fieldPeerPrincipal         = 4  // AttributeContext.Peer.principal
)

// fields calls f with the number and contents of each length-delimited
// field of the message b, and skips every other field. f returns false to
// give up; so does a malformed field.
func fields(b []byte, f func(num protowire.Number, v []byte) bool) bool {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num > protowire.MaxValidNumber {
			return false
		}
		if typ != protowire.BytesType {
			// Known fields here are all length-delimited; protobuf keeps
			// one with another wire type as an unknown field.
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 || !f(num, v) {
			return false
		}
		b = b[n:]
	}
	return true
}

// str returns v as a string sharing its bytes, or false when v is not UTF-8
// (protobuf rejects such a string field).
func str(v []byte) (string, bool) {
	if !utf8.Valid(v) {
		return "", false
	}
	return unsafe.String(unsafe.SliceData(v), len(v)), true
}

func (w *wireDecoder) checkRequest(b []byte) bool {
	return fields(b, func(num protowire.Number, v []byte) bool {
		return num != fieldCheckAttributes || fields(v, w.attributes)
	})
}

func (w *wireDecoder) attributes(num protowire.Number, v []byte) bool {
	switch num {
	case fieldAttrSource:
		return fields(v, w.peer)
	case fieldAttrDestination:
		return fields(v, w.destination)
	case fieldAttrRequest:
		return fields(v, w.request)
	case fieldAttrContextExtensions:
		return w.contextExtension(v)
	}
	return true
}

func (w *wireDecoder) destination(num protowire.Number, v []byte) bool {
	if num != fieldPeerPrincipal {
		return true
	}
	s, ok := str(v)
	w.req.DestinationPrincipal = s
	return ok
}

// contextExtension reads one entry of the context_extensions map: a missing
// key or value is "". Past MaxContextExtensions entries on the wire the
// request is answered 400 (decode) and entries are read but not kept:
// Envoy sets a handful and never repeats a key, so a message that does is
// refused rather than counted by key as protobuf's map would.
func (w *wireDecoder) contextExtension(v []byte) bool {
	var e authz.Header
	ok := fields(v, func(num protowire.Number, v []byte) bool {
		var ok bool
		switch num {
		case fieldMapKey:
			e.Key, ok = str(v)
		case fieldMapValue:
			e.Value, ok = str(v)
		default:
			return true
		}
		return ok
	})
	if w.extEntries++; w.extEntries <= MaxContextExtensions {
		w.ext = append(w.ext, e)
		w.req.ContextExtensions = w.ext
	}
	return ok
}

func (w *wireDecoder) peer(num protowire.Number, v []byte) bool {
	if num == fieldPeerAddress {
		return fields(v, w.address)
	}
	return true
}

func (w *wireDecoder) address(num protowire.Number, v []byte) bool {
	switch num {
	case fieldAddrSocket:
		if !w.socket {
			w.socket, w.req.Peer = true, ""
		}
		return fields(v, w.socketAddress)
	case fieldAddrPipe, fieldAddrInternal:
		w.socket, w.req.Peer = false, ""
	}
	return true
}

func (w *wireDecoder) socketAddress(num protowire.Number, v []byte) bool {
	if num != fieldSocketAddress {
		return true
	}
	s, ok := str(v)
	w.req.Peer = s
	return ok
}

func (w *wireDecoder) request(num protowire.Number, v []byte) bool {
	if num == fieldRequestHTTP {
		return fields(v, w.http)
	}
	return true
}

func (w *wireDecoder) http(num protowire.Number, v []byte) bool {
	var dst *string
	switch num {
	case fieldHTTPMethod:
		dst = &w.req.Method
	case fieldHTTPPath:
		dst = &w.req.Path
	case fieldHTTPHost:
		dst = &w.req.Host
	case fieldHTTPHeaders:
		return w.header(v)
	case fieldHTTPHeaderMap:
		return w.headerMap(v)
	default:
		return true
	}
	s, ok := str(v)
	*dst = s
	return ok
}

// header reads one entry of the headers map: a missing key or value is "".
// Past the header limits, entries are read but not kept.
func (w *wireDecoder) header(v []byte) bool {
	var h authz.Header
	ok := fields(v, func(num protowire.Number, v []byte) bool {
		var ok bool
		switch num {
		case fieldMapKey:
			h.Key, ok = str(v)
		case fieldMapValue:
			h.Value, ok = str(v)
		default:
			return true
		}
		return ok
	})
	within := w.req.Malformed == ""
	if !w.req.NoteHeader(h.Key, h.Value) && within {
		// Stop keeping entries: the request is answered 400 whatever they
		// say, and a message of empty entries must not grow a huge list.
		clear(*w.hdrs)
		*w.hdrs = (*w.hdrs)[:0]
	}
	if w.req.Malformed == "" {
		*w.hdrs = append(*w.hdrs, h)
	}
	return ok
}

// headerMap reads one header_map field, a HeaderMap whose entries protobuf
// appends to those of any earlier one. Its entries are unmarshalled
// (joinHeaderMap reads them as RequestFromCheck does) while there are at
// most MaxHeaders of them in all; past that they are counted only, the
// request being answered 400 whatever they say.
func (w *wireDecoder) headerMap(v []byte) bool {
	n := 0
	if !fields(v, func(num protowire.Number, _ []byte) bool {
		if num == fieldHeaderMapHeaders {
			n++
		}
		return true
	}) {
		return false
	}
	w.rawSeen = true
	w.rawEntries += n
	if n == 0 || w.rawEntries > authz.MaxHeaders {
		return true
	}
	if w.raw == nil {
		w.raw = new(corev3.HeaderMap)
	}
	return proto.UnmarshalOptions{Merge: true}.Unmarshal(v, w.raw) == nil
}
