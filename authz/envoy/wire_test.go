package envoy

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
)

// envoyRequest is a CheckRequest as Envoy fills it: both peers, a
// timestamp, a dozen headers, the scheme and protocol, context extensions.
func envoyRequest() *authv3.CheckRequest {
	sock := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
	}
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: sock("203.0.113.9", 51234), Principal: "spiffe://c", Labels: map[string]string{"app": "web"}},
		Destination: &authv3.AttributeContext_Peer{Address: sock("10.0.0.2", 8080), Principal: "spiffe://cluster.local/ns/billing/sa/billing"},
		Request: &authv3.AttributeContext_Request{
			Time: timestamppb.Now(),
			Http: &authv3.AttributeContext_HttpRequest{
				Id: "1234", Method: "GET", Path: "/api/users?page=2", Host: "api.example.com", Scheme: "https", Protocol: "HTTP/1.1", Size: -1,
				Headers: map[string]string{
					":authority": "api.example.com", ":method": "GET", ":path": "/api/users?page=2", ":scheme": "https",
					"user-agent": "curl/8.5", "accept": "*/*", "x-api-key": "sk_live_abc", "x-request-id": "5f0e",
					"x-forwarded-for": "198.51.100.1", "x-forwarded-proto": "https", "x-envoy-internal": "true",
					"x-authz-key-id": "spoofed", "cookie": "a=b; api_key=sk_x",
				},
			},
		},
		ContextExtensions: map[string]string{"route": "users", "policy": "billing"},
	}}
}

// decodeBoth decodes b with the server's wire decoder and with
// proto.Unmarshal and RequestFromCheck, and fails unless they agree: the
// same Request, or (only when proto.Unmarshal fails) anything but a panic.
func decodeBoth(t *testing.T, b []byte) (authz.Request, error) {
	t.Helper()
	var in authv3.CheckRequest
	stdErr := proto.Unmarshal(b, &in)
	st := new(checkState)
	fastErr := st.decode(append([]byte(nil), b...))
	if fastErr != nil && strings.Contains(fastErr.Error(), "panic") {
		t.Fatalf("decoding %x: %v", b, fastErr)
	}
	if stdErr != nil {
		return authz.Request{}, stdErr
	}
	if fastErr != nil {
		t.Fatalf("proto.Unmarshal reads %x, the wire decoder fails: %v", b, fastErr)
	}
	want := RequestFromCheck(&in)
	got := st.req
	if got.Method != want.Method || got.Path != want.Path || got.Host != want.Host || got.Peer != want.Peer || got.XFFTrustedHops != want.XFFTrustedHops ||
		got.DestinationPrincipal != want.DestinationPrincipal {
		t.Fatalf("decoding %x:\n got %+v\nwant %+v", b, got, want)
	}
	if got.Malformed != want.Malformed {
		// The wire decoder counts map entries as they come; proto.Unmarshal
		// keeps the last of a repeated name or key, so only then may it
		// count fewer.
		if want.Malformed != "" || !repeatsMapKeys(&in, b) {
			t.Fatalf("decoding %x: Malformed %q, want %q", b, got.Malformed, want.Malformed)
		}
		return got, nil
	}
	// The wire keeps every context_extensions entry in order, protobuf's map
	// the last of each key: the decision reads them alike (lastExtension).
	// A request past the header limits keeps them too: the policy is
	// selected (step 1) before the 400 (step 2), and they select it.
	if g, w := extensionMap(got.ContextExtensions), extensionMap(want.ContextExtensions); !assert.ObjectsAreEqual(w, g) {
		t.Fatalf("decoding %x: context_extensions\n got %v\nwant %v", b, g, w)
	}
	if got.Malformed != "" {
		return got, nil // answered 400 whatever the headers say
	}
	if got.Noted() != want.Noted() {
		t.Fatalf("decoding %x: header names noted %+v, want %+v", b, got.Noted(), want.Noted())
	}
	if g, w := headerMapOf(got.Headers), headerMapOf(want.Headers); !assert.ObjectsAreEqual(w, g) {
		t.Fatalf("decoding %x: headers\n got %v\nwant %v", b, g, w)
	}
	// Every header the decision can ask for reads the same.
	for name := range headerMapOf(want.Headers) {
		if g, w := got.Headers.Get(name), want.Headers.Get(name); g != w {
			t.Fatalf("decoding %x: Get(%q) = %q, want %q", b, name, g, w)
		}
	}
	return got, nil
}

// repeatsMapKeys reports whether the wire form b of in holds more header
// or context_extensions entries than in's maps kept.
func repeatsMapKeys(in *authv3.CheckRequest, b []byte) bool {
	var req authz.Request
	var hdrs authz.HeaderList
	w := wireDecoder{req: &req, hdrs: &hdrs}
	w.checkRequest(b)
	return req.HeaderEntries() > len(in.GetAttributes().GetRequest().GetHttp().GetHeaders()) ||
		w.extEntries > len(in.GetAttributes().GetContextExtensions())
}

// extensionMap is context_extensions as the decision reads them: the last
// value of each key.
func extensionMap(ext []authz.Header) map[string]string {
	m := map[string]string{}
	for _, e := range ext {
		m[e.Key] = e.Value
	}
	return m
}

func headerMapOf(h authz.Headers) map[string]string {
	m := map[string]string{}
	switch h := h.(type) {
	case authz.HeaderMap:
		for k, v := range h {
			m[k] = v
		}
	case *authz.HeaderList:
		for _, e := range *h {
			m[e.Key] = e.Value
		}
	}
	return m
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	require.NoError(t, err)
	return b
}

func TestWireDecoderReadsWhatProtoUnmarshalReads(t *testing.T) {
	full := envoyRequest()
	withPipe := envoyRequest()
	withPipe.Attributes.Source.Address = &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: "/run/envoy.sock"}}}
	rawHeaders := envoyRequest()
	rawHeaders.Attributes.Request.Http.Headers = nil
	rawHeaders.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
		{Key: "X-Api-Key", RawValue: []byte("sk_live_abc")}, {Key: "x-forwarded-for", Value: "1.2.3.4"}, {Key: "X-Forwarded-For", Value: "5.6.7.8"},
	}}
	socketAgain := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{
		Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 1}}}}}}}
	otherHeaders := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Method: "POST", Headers: map[string]string{"x-api-key": "second", "x-new": ""}}}}}
	otherSelectors := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Destination:       &authv3.AttributeContext_Peer{Principal: "spiffe://cluster.local/ns/orders/sa/orders"},
		ContextExtensions: map[string]string{"policy": "orders", "tier": "gold"},
	}}
	destinationAddressOnly := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Destination: &authv3.AttributeContext_Peer{Service: "billing", Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "10.0.0.3"}}}},
	}}
	manyHeaders := envoyRequest()
	for i := range authz.MaxHeaders {
		manyHeaders.Attributes.Request.Http.Headers[fmt.Sprintf("x-h%d", i)] = "v"
	}
	manyExtensions := envoyRequest()
	for i := range MaxContextExtensions + 1 {
		manyExtensions.Attributes.ContextExtensions[fmt.Sprintf("k%d", i)] = "v"
	}
	// 65 entries on the wire, but two keys given twice: protobuf keeps 63.
	var repeatedExtensions []byte
	for i := range MaxContextExtensions {
		repeatedExtensions = append(repeatedExtensions, marshal(t, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			ContextExtensions: map[string]string{fmt.Sprintf("k%d", min(i, 62)): fmt.Sprint(i)}}})...)
	}
	repeatedExtensions = append(repeatedExtensions, marshal(t, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		ContextExtensions: map[string]string{"k0": "last"}}})...)

	cat := func(parts ...[]byte) []byte {
		return []byte(strings.Join(func() []string {
			var s []string
			for _, p := range parts {
				s = append(s, string(p))
			}
			return s
		}(), ""))
	}
	// a field of the given number holding b, length-delimited
	field := func(num protowire.Number, b []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), b)
	}
	varint := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
	}

	tests := []struct {
		name    string
		b       []byte
		fast    bool // the wire decoder answers it itself (no fallback)
		wantErr bool
	}{
		{"what Envoy sends", marshal(t, full), true, false},
		{"an empty message", nil, true, false},
		{"a pipe peer has no address", marshal(t, withPipe), true, false},
		{"encode_raw_headers: header_map, joined and lower-cased", marshal(t, rawHeaders), true, false},
		// Concatenated messages merge: scalars are replaced, maps gain
		// entries, and a later oneof member replaces an earlier one.
		{"two messages merge; a repeated header name replaces the first", cat(marshal(t, full), marshal(t, otherHeaders)), true, false},
		{"socket, then pipe: no peer", cat(marshal(t, full), marshal(t, withPipe)), true, false},
		{"pipe, then a socket without an address: no peer", cat(marshal(t, withPipe), marshal(t, socketAgain)), true, false},
		{"socket, then socket without an address: the address stays", cat(marshal(t, full), marshal(t, socketAgain)), true, false},
		{"two messages merge: a repeated context key keeps the last value, the principal is replaced", cat(marshal(t, full), marshal(t, otherSelectors)), true, false},
		{"a destination without a principal leaves the principal as it was", cat(marshal(t, full), marshal(t, destinationAddressOnly)), true, false},
		{"more context_extensions than the decision reads: answered 400", marshal(t, manyExtensions), true, false},
		{"more headers than the decision reads: answered 400 under the policy its context_extensions select", marshal(t, manyHeaders), true, false},
		{"65 context_extensions entries on the wire of 63 keys: answered 400, as Envoy never repeats one", repeatedExtensions, true, false},
		{"a context extension that is not UTF-8", cat(marshal(t, full), field(1, field(10, cat(field(1, []byte("policy")), field(2, []byte("\xff")))))), false, true},
		{"a destination principal that is not UTF-8", cat(marshal(t, full), field(1, field(2, field(4, []byte("\xc3"))))), false, true},
		{"a context extension entry without a value is the empty value", cat(marshal(t, full), field(1, field(10, field(1, []byte("policy"))))), true, false},
		{"a known field with another wire type is an unknown field", cat(marshal(t, full), varint(1, 7)), true, false},
		{"a map entry without a key is the empty name", cat(marshal(t, full), field(1, field(4, field(2, field(3, field(2, []byte("v"))))))), true, false},
		{"a map entry with unknown fields", cat(marshal(t, full), field(1, field(4, field(2, field(3, cat(field(1, []byte("k")), varint(9, 1), field(2, []byte("v")))))))), true, false},
		{"a path that is not UTF-8", cat(marshal(t, full), field(1, field(4, field(2, field(4, []byte("/\xff")))))), false, true},
		{"a header value that is not UTF-8", cat(marshal(t, full), field(1, field(4, field(2, field(3, cat(field(1, []byte("k")), field(2, []byte("\xc3")))))))), false, true},
		{"truncated", marshal(t, full)[:100], false, true},
		{"a length past the end", []byte{0x0a, 0x7f, 0x0a}, false, true},
		{"field number 0", []byte{0x02, 0x00}, false, true},
		{"a stray end-group", []byte{0x0c}, false, true},
		{"a group as an unknown field", cat(marshal(t, full), []byte{0x7b, 0x08, 0x01, 0x7c}), true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := decodeBoth(t, tt.b)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			var req authz.Request
			var hdrs authz.HeaderList
			fast := (&wireDecoder{req: &req, hdrs: &hdrs}).checkRequest(tt.b)
			assert.Equal(t, tt.fast, fast, "answered by the wire decoder itself")
		})
	}

	got, err := decodeBoth(t, marshal(t, full))
	require.NoError(t, err)
	assert.Equal(t, []any{"GET", "/api/users?page=2", "api.example.com", "203.0.113.9", -1, ""},
		[]any{got.Method, got.Path, got.Host, got.Peer, got.XFFTrustedHops, got.Malformed})
	assert.Equal(t, "spiffe://cluster.local/ns/billing/sa/billing", got.DestinationPrincipal)
	assert.Equal(t, map[string]string{"route": "users", "policy": "billing"}, extensionMap(got.ContextExtensions))

	past, err := decodeBoth(t, marshal(t, manyHeaders))
	require.NoError(t, err)
	assert.NotEmpty(t, past.Malformed)
	assert.Equal(t, map[string]string{"route": "users", "policy": "billing"}, extensionMap(past.ContextExtensions))

	many, err := decodeBoth(t, marshal(t, manyExtensions))
	require.NoError(t, err)
	assert.Equal(t, "more than 64 context_extensions", many.Malformed)
	assert.Empty(t, many.ContextExtensions)
	repeated, err := decodeBoth(t, repeatedExtensions)
	require.NoError(t, err)
	assert.Equal(t, "more than 64 context_extensions", repeated.Malformed, "65 entries on the wire, though of 63 keys")
	assert.Empty(t, repeated.ContextExtensions)
	noted := got.Noted()
	assert.Equal(t, []any{13, false, true}, []any{got.HeaderEntries(), noted.Underscored(), noted.Spoofing()},
		"13 header names noted: one reads as an x-authz- header, none holds a _")
	assert.Equal(t, "sk_live_abc", got.Headers.Get("x-api-key"))
}

// The strings of a decoded Request are views of the message decode is
// given (the codec gives it its own copy, never grpc-go's pooled buffer),
// and a pooled checkState keeps no string of the last check.
func TestDecodedStringsShareOneCopyAndAreDroppedOnReset(t *testing.T) {
	b := marshal(t, envoyRequest())
	st := new(checkState)
	require.NoError(t, st.decode(b))
	for _, s := range []string{st.req.Path, st.req.Host, st.req.Peer, st.req.Headers.Get("x-api-key")} {
		p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
		lo := uintptr(unsafe.Pointer(&b[0]))
		assert.True(t, p >= lo && p < lo+uintptr(len(b)), "%q is a copy, not a view of the message", s)
	}

	st = new(checkState)
	require.NoError(t, st.decode(marshal(t, envoyRequest())))
	require.NotEmpty(t, st.hdrs)
	st.reset()
	assert.Empty(t, st.hdrs)
	for _, h := range st.hdrs[:cap(st.hdrs)] {
		assert.Equal(t, authz.Header{}, h, "a pooled header array must not pin the last request's bytes")
	}
	assert.Equal(t, authz.Request{}, st.req)
}

// FuzzDecodeCheck holds the wire decoder to proto.Unmarshal and
// RequestFromCheck on arbitrary bytes (see decodeBoth).
func FuzzDecodeCheck(f *testing.F) {
	full := marshal(f, envoyRequest())
	f.Add(full)
	f.Add(full[:len(full)/2])
	f.Add(append(append([]byte(nil), full...), full...))
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeBoth(t, b)
	})
}

// FuzzDecodeCheckMessages builds CheckRequests from fuzzed fields, so that
// nearly every input is a valid message (FuzzDecodeCheck's are mostly not),
// and appends a second one to exercise protobuf's merging.
func FuzzDecodeCheckMessages(f *testing.F) {
	f.Add("GET", "/api/users", "api.example.com", "10.0.0.1", "x-api-key", "sk_1", "x-api-key", "sk_2", uint8(0))
	f.Add("", "", "", "::1", "", "", "cookie", "a=b", uint8(1))
	f.Add("POST", "/a?b", "h", "", "X-Upper", "v", "x-authz-owner", "spoof", uint8(2))
	f.Add("GET", "/", "h", "10.0.0.1", "policy", "billing", "orders", "spiffe://cluster.local/ns/a/sa/b", uint8(12))
	f.Fuzz(func(t *testing.T, method, path, host, peer, k1, v1, k2, v2 string, shape uint8) {
		first := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: peer}}}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: method, Path: path, Host: host, Headers: map[string]string{k1: v1, k2: v2},
			}},
		}}
		second := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Headers: map[string]string{k2: v1},
		}}}}
		if shape&1 != 0 {
			second.Attributes.Source = &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: v2}}}}
		}
		if shape&2 != 0 {
			second.Attributes.Request.Http.Method, second.Attributes.Request.Http.Path = v1, k1
		}
		if shape&4 != 0 { // context_extensions, a key of them repeated
			first.Attributes.ContextExtensions = map[string]string{k1: v1, "policy": v2}
			second.Attributes.ContextExtensions = map[string]string{k1: v2}
		}
		if shape&8 != 0 { // the destination principal, replaced
			first.Attributes.Destination = &authv3.AttributeContext_Peer{Principal: v1}
			second.Attributes.Destination = &authv3.AttributeContext_Peer{Principal: v2}
		}
		a, err := proto.Marshal(first)
		if err != nil {
			return // a string that is not UTF-8: no valid message has it
		}
		b, err := proto.Marshal(second)
		if err != nil {
			return
		}
		if _, err := decodeBoth(t, a); err != nil {
			t.Fatalf("a message proto.Marshal wrote does not decode: %v", err)
		}
		if _, err := decodeBoth(t, append(a, b...)); err != nil {
			t.Fatalf("two concatenated messages do not decode: %v", err)
		}
	})
}

// Over a real gRPC connection, a server made with ServerCodec and Register
// decides from the wire decoder; Envoy's header_map form, which it leaves
// to proto.Unmarshal, is decided the same; a message that is not a
// CheckRequest is an RPC error, as with grpc-go's own codec.
func TestRegisteredServerDecidesOverGRPC(t *testing.T) {
	fx := authztest.New(t, nil)
	conn := serveChecks(t, fx)
	client := authv3.NewAuthorizationClient(conn)
	ctx := context.Background()

	req := checkRequest(map[string]string{"x-api-key": fx.Good, "x-authz-owner": "spoofed", "user-agent": "test"})
	resp, err := client.Check(ctx, req)
	require.NoError(t, err)
	require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.String())
	assert.Equal(t, "key_good", upstreamHeaders(t, resp)[authz.HeaderKeyID])
	assert.Equal(t, "acme", upstreamHeaders(t, resp)[authz.HeaderOwner], "the spoofed owner is overwritten")
	assert.Contains(t, resp.GetOkResponse().GetHeadersToRemove(), "x-api-key")

	raw := checkRequest(nil)
	raw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "X-Api-Key", RawValue: []byte(fx.Good)}}}
	resp, err = client.Check(ctx, raw)
	require.NoError(t, err)
	assert.Equal(t, "key_good", upstreamHeaders(t, resp)[authz.HeaderKeyID])

	resp, err = client.Check(ctx, checkRequest(map[string]string{"user-agent": "test"}))
	require.NoError(t, err)
	assert.Equal(t, int32(codes.Unauthenticated), resp.GetStatus().GetCode(), resp.String())

	// Bytes that are no CheckRequest: the codec's error, as before.
	err = conn.Invoke(ctx, checkMethod, &authv3.CheckRequest{}, new(authv3.CheckResponse), grpc.ForceCodecV2(rawBytesCodec{b: []byte{0x0a, 0x7f}}))
	assert.Equal(t, codes.Internal, status.Code(err), "%v", err)
}

// serveChecks serves fx's Authorizer as Register does, on a server made
// with ServerCodec and opts, and returns a client connection to it.
func serveChecks(t *testing.T, fx *authztest.Fixture, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	srv := grpc.NewServer(append([]grpc.ServerOption{ServerCodec()}, opts...)...)
	Register(srv, &CheckServer{Authz: fx.Authz})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// rawBytesCodec sends b whatever the message, to put malformed bytes on
// the wire.
type rawBytesCodec struct{ b []byte }

func (c rawBytesCodec) Marshal(any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(c.b)}, nil
}
func (rawBytesCodec) Unmarshal(mem.BufferSlice, any) error { return nil }
func (rawBytesCodec) Name() string                         { return "proto" }

// BenchmarkDecodeCheck compares the two ways a CheckRequest as Envoy sends
// it becomes a Request.
func BenchmarkDecodeCheck(b *testing.B) {
	msg := marshal(b, envoyRequest())
	b.Run("proto.Unmarshal+RequestFromCheck", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var in authv3.CheckRequest
			if err := proto.Unmarshal(msg, &in); err != nil {
				b.Fatal(err)
			}
			_ = RequestFromCheck(&in)
		}
	})
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		st := new(checkState)
		for b.Loop() {
			// what the codec does: its own copy of grpc-go's buffer
			if err := st.decode(append([]byte(nil), msg...)); err != nil {
				b.Fatal(err)
			}
			st.reset()
		}
	})
}

// A server with a unary interceptor still decides through the wire
// decoder; the interceptor sees the decoded Request (there is no
// CheckRequest) and its own handler call.
func TestRegisteredServerRunsUnderAnInterceptor(t *testing.T) {
	fx := authztest.New(t, nil)
	var seen []string
	conn := serveChecks(t, fx, grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*authz.Request); ok {
			seen = append(seen, info.FullMethod+" "+r.Method+" "+r.Path)
		}
		return handler(ctx, req)
	}))

	resp, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), checkRequest(map[string]string{"x-api-key": fx.Good}))
	require.NoError(t, err)
	assert.Equal(t, "key_good", upstreamHeaders(t, resp)[authz.HeaderKeyID])
	assert.Equal(t, []string{checkMethod + " GET /api/users"}, seen)
}

// The selectors cost a check no allocation: a pooled state decodes a
// request with context extensions and a destination principal into arrays
// it keeps, and one without them touches none.
func TestDecodingSelectorsAllocatesNothing(t *testing.T) {
	with := marshal(t, envoyRequest())
	plain := envoyRequest()
	plain.Attributes.ContextExtensions, plain.Attributes.Destination = nil, nil
	without := marshal(t, plain)
	for name, b := range map[string][]byte{"with selectors": with, "without": without} {
		st := new(checkState)
		require.NoError(t, st.decode(b))
		st.reset()
		allocs := testing.AllocsPerRun(100, func() {
			if err := st.decode(b); err != nil {
				t.Fatal(err)
			}
			st.reset()
		})
		assert.Zero(t, allocs, name)
	}
}

// With encode_raw_headers Envoy sends header bytes as they came: a cookie
// named "\xa0api_key" is api_key to Python's frameworks (str.strip on a
// header decoded as Latin-1), so it is found, checked and cut from the
// cookie header like "api_key"; the rewritten header, not UTF-8 otherwise,
// is removed whole.
func TestARawCookieNameIsReadTrimmedAsPythonReadsIt(t *testing.T) {
	fx := authztest.New(t, nil)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	for _, cookie := range []string{"\xa0api_key=" + fx.Admin, "a=1; api_key\x85=" + fx.Admin} {
		raw := checkRequest(nil)
		raw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "x-api-key", RawValue: []byte(fx.Good)}, {Key: "cookie", RawValue: []byte(cookie)},
		}}
		resp, err := client.Check(context.Background(), raw)
		require.NoError(t, err)
		require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.String())
		assert.Equal(t, "key_good", upstreamHeaders(t, resp)[authz.HeaderKeyID])
		assert.NotContains(t, upstreamHeaders(t, resp)["cookie"], fx.Admin)
		if _, set := upstreamHeaders(t, resp)["cookie"]; !set {
			assert.Contains(t, resp.GetOkResponse().GetHeadersToRemove(), "cookie", "%q reaches the upstream", cookie)
		}
	}
}

// FuzzDecodeCheckParts builds a CheckRequest part by part from a program of
// ops, so that what FuzzDecodeCheckMessages cannot write (it marshals whole
// messages) comes up: a part of any message split over several top-level
// chunks or nested copies of its parents, which protobuf merges; a map
// entry whose key or value is given twice, or missing; a known field number
// with another wire type, an unknown field or a group, at every level the
// wire decoder walks; each member of the source address's oneof, and a
// socket address without an address; Envoy's header_map beside the headers
// map, with value, raw_value or both. decodeBoth holds the wire decoder to
// proto.Unmarshal on each.
func FuzzDecodeCheckParts(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0x83, 6, 7, 8}, "GET", "x-api-key", "sk_1")
	f.Add([]byte{8, 0x89, 0x8b, 8, 0x8a, 0x88}, "10.0.0.1", "::1", "/run/s")
	f.Add([]byte{3, 4, 5, 0x83, 0x85, 12, 13, 14}, "x-api-key", "a", "b")
	f.Add([]byte{6, 0x86, 0x86, 7, 0x87, 15, 16, 17, 0x8f, 0x90, 0x91}, "policy", "billing", "orders")
	f.Add([]byte{18, 19, 0x92, 0x93, 1, 0x81, 2, 0x82}, "/a", "/b", "h")
	f.Fuzz(func(t *testing.T, ops []byte, s1, s2, s3 string) {
		if len(ops) > 64 {
			return
		}
		field := func(b []byte, num protowire.Number, v []byte) []byte {
			return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
		}
		str := func(b []byte, num protowire.Number, s string) []byte { return field(b, num, []byte(s)) }
		strs := []string{s1, s2, s3}
		// Each part is the path of messages it lies in, outermost first,
		// and its bytes within the innermost.
		type part struct {
			path []protowire.Number
			b    []byte
		}
		attrs := []protowire.Number{fieldCheckAttributes}
		http := []protowire.Number{fieldCheckAttributes, fieldAttrRequest, fieldRequestHTTP}
		source := []protowire.Number{fieldCheckAttributes, fieldAttrSource}
		address := []protowire.Number{fieldCheckAttributes, fieldAttrSource, fieldPeerAddress}
		socket := []protowire.Number{fieldCheckAttributes, fieldAttrSource, fieldPeerAddress, fieldAddrSocket}
		levels := [][]protowire.Number{nil, attrs, source, address, socket, http,
			{fieldCheckAttributes, fieldAttrRequest}, {fieldCheckAttributes, fieldAttrDestination}}
		// encode writes parts as one message: a run of parts in the same
		// field shares one copy of it.
		var encode func(parts []part) []byte
		encode = func(parts []part) []byte {
			var b []byte
			for len(parts) > 0 {
				if len(parts[0].path) == 0 {
					b = append(b, parts[0].b...)
					parts = parts[1:]
					continue
				}
				num, n := parts[0].path[0], 1
				for n < len(parts) && len(parts[n].path) > 0 && parts[n].path[0] == num {
					n++
				}
				inner := make([]part, n)
				for j := range inner {
					inner[j] = part{parts[j].path[1:], parts[j].b}
				}
				b = field(b, num, encode(inner))
				parts = parts[n:]
			}
			return b
		}
		var b []byte
		var chunk []part
		for i, op := range ops {
			s, s2 := strs[i%3], strs[(i+1)%3]
			var p part
			kind := op & 0x7f % 20
			switch kind {
			case 0:
				p = part{http, str(nil, fieldHTTPMethod, s)}
			case 1:
				p = part{http, str(nil, fieldHTTPPath, s)}
			case 2:
				p = part{http, str(nil, fieldHTTPHost, s)}
			case 3: // a header entry
				p = part{http, field(nil, fieldHTTPHeaders, str(str(nil, fieldMapKey, s), fieldMapValue, s2))}
			case 4: // a header entry without a value, then one without a key
				p = part{http, field(field(nil, fieldHTTPHeaders, str(nil, fieldMapKey, s)), fieldHTTPHeaders, str(nil, fieldMapValue, s2))}
			case 5: // a header entry whose key and value come twice, in reverse
				e := str(str(str(str(nil, fieldMapValue, s2), fieldMapKey, s2), fieldMapKey, s), fieldMapValue, s)
				p = part{http, field(nil, fieldHTTPHeaders, e)}
			case 6:
				p = part{attrs, field(nil, fieldAttrContextExtensions, str(str(nil, fieldMapKey, s), fieldMapValue, s2))}
			case 7:
				p = part{[]protowire.Number{fieldCheckAttributes, fieldAttrDestination}, str(nil, fieldPeerPrincipal, s)}
			case 8:
				p = part{socket, str(nil, fieldSocketAddress, s)}
			case 9:
				p = part{address, field(nil, fieldAddrPipe, str(nil, 1, s))}
			case 10:
				p = part{address, field(nil, fieldAddrInternal, str(nil, 1, s))}
			case 11: // a socket address with a port and no address
				p = part{socket, protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 80)}
			case 12, 13, 14: // header_map: value, raw_value, or both
				var hv []byte
				hv = str(hv, 1, s)
				if kind != 13 {
					hv = str(hv, 2, s2)
				}
				if kind != 12 {
					hv = str(hv, 3, s)
				}
				p = part{http, field(nil, fieldHTTPHeaderMap, field(nil, 1, hv))}
			case 15, 16, 17: // another wire type, an unknown field, a group, at some level
				lvl := levels[int(op>>1)%len(levels)]
				num := protowire.Number(1 + int(op)%5)
				var b []byte
				switch kind {
				case 15:
					b = protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), uint64(len(s)))
				case 16:
					b = str(nil, 99, s)
				case 17:
					b = protowire.AppendTag(nil, num, protowire.StartGroupType)
					b = protowire.AppendTag(protowire.AppendVarint(protowire.AppendTag(b, 1, protowire.VarintType), 1), num, protowire.EndGroupType)
				}
				p = part{lvl, b}
			case 18: // an empty message at some level
				lvl := levels[int(op>>1)%len(levels)]
				if len(lvl) == 0 {
					continue
				}
				p = part{lvl[:len(lvl)-1], field(nil, lvl[len(lvl)-1], nil)}
			case 19: // the source's principal and service, which are not read
				p = part{source, str(str(nil, 4, s), 2, s2)}
			}
			// The top bit ends the message so far: the part starts another,
			// and protobuf merges the two. Otherwise it joins the message,
			// within the fields it shares with the part before it.
			if op&0x80 != 0 {
				b, chunk = append(b, encode(chunk)...), nil
			}
			chunk = append(chunk, p)
		}
		decodeBoth(t, append(b, encode(chunk)...))
	})
}
