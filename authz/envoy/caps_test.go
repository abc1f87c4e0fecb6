package envoy

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// cappedRequest is a CheckRequest of key as big as the caps let it be and
// as costly as its bytes can make it: n header entries filling bytes of
// names and values, all but a few named like spoofed identity headers (so
// each is named back in headers_to_remove), the key also in a cookie among
// thousands of others and in a query of thousands of parameters (so both
// are scanned and stripped), and a 60 KiB request target.
func cappedRequest(key string, n, bytes int) *authv3.CheckRequest {
	cookie := strings.Repeat("c=v; ", n*4) + "api_key=" + key
	headers := map[string]string{"x-api-key": key, "user-agent": "bench", "x-request-id": "r1", "cookie": cookie}
	used := 0
	for k, v := range headers {
		used += len(k) + len(v)
	}
	per := (bytes - used) / (n - len(headers))
	for i := len(headers); i < n; i++ {
		name := fmt.Sprintf("x_authz-spoof-%04d", i)
		headers[name] = strings.Repeat("v", per-len(name))
	}
	req := checkRequest(headers)
	req.Attributes.Request.Http.Path = "/api/users?" + strings.Repeat("page=2&", n*15) + "api_key=" + key
	return req
}

// capsFixture is the decision the caps benchmark and test run: a cached
// admin key, no rate limit.
func capsFixture(t testing.TB) (*authztest.Fixture, *CheckServer) {
	f := authztest.New(t, func(o *authz.Options) { o.DefaultRate = ratelimit.Rate{} })
	f.Rebuild(keystore.NewCache(f.Keys.Store(), keystore.CacheOptions{}), nil)
	return f, &CheckServer{Authz: f.Authz}
}

// decodeAndCheck is what the server does with one message (the codec's
// copy and wire decoding, the decision, and the response's bytes), and the
// response read back.
func decodeAndCheck(tb testing.TB, s *CheckServer, msg []byte) *authv3.CheckResponse {
	resp := new(authv3.CheckResponse)
	if err := proto.Unmarshal(wireCheck(tb, s, msg), resp); err != nil {
		tb.Fatal(err)
	}
	return resp
}

// wireCheck is what the server does with one message: the codec's copy
// and wire decoding, the decision, and the response's bytes.
func wireCheck(tb testing.TB, s *CheckServer, msg []byte) []byte {
	st := checkStates.Get().(*checkState)
	if err := st.decode(append([]byte(nil), msg...)); err != nil {
		tb.Fatal(err)
	}
	b, err := s.check(context.Background(), st)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestARequestAtTheCapsIsAnsweredAndOnePastThemIs400(t *testing.T) {
	f, s := capsFixture(t)
	req := cappedRequest(f.Admin, authz.MaxHeaders, authz.MaxHeaderBytes)
	msg := marshal(t, req)
	require.Less(t, len(msg), MaxCheckRequestBytes)

	resp := decodeAndCheck(t, s, msg)
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, resp.GetStatus().GetMessage())
	assert.Len(t, ok.GetHeadersToRemove(), authz.MaxHeaders-4+1, "every spoofed header, once, and the credential header")
	assert.Equal(t, []string{"api_key"}, ok.GetQueryParametersToRemove())
	assert.NotContains(t, upstreamHeaders(t, resp)["cookie"], f.Admin, "the cookie is rewritten without the key")

	for name, over := range map[string]*authv3.CheckRequest{
		"one header too many": cappedRequest(f.Admin, authz.MaxHeaders+1, authz.MaxHeaderBytes-1024),
		"one byte too many":   cappedRequest(f.Admin, authz.MaxHeaders, authz.MaxHeaderBytes+512),
	} {
		resp := decodeAndCheck(t, s, marshal(t, over))
		assert.Equal(t, int32(400), int32(resp.GetDeniedResponse().GetStatus().GetCode()), name)
		assert.Contains(t, resp.GetStatus().GetMessage(), "more than 512 headers", name)
	}
}

// BenchmarkCheckAtTheCaps compares a check as Envoy sends it with checks
// of requests built to cost the most the caps allow (cappedRequest), at a
// quarter, half and all of the caps, from the wire bytes to the marshalled
// response. Linear work shows as a steady MB/s from a quarter of the caps
// to all of them; the README states the ratio of the last to "envoy".
func BenchmarkCheckAtTheCaps(b *testing.B) {
	f, s := capsFixture(b)
	normal := envoyRequest()
	normal.Attributes.Request.Http.Headers["x-api-key"] = f.Admin
	cases := []struct {
		name string
		req  *authv3.CheckRequest
	}{
		{"envoy", normal},
		{"quarter caps", cappedRequest(f.Admin, authz.MaxHeaders/4, authz.MaxHeaderBytes/4)},
		{"half caps", cappedRequest(f.Admin, authz.MaxHeaders/2, authz.MaxHeaderBytes/2)},
		{"caps", cappedRequest(f.Admin, authz.MaxHeaders, authz.MaxHeaderBytes)},
	}
	for _, c := range cases {
		msg := marshal(b, c.req)
		if resp := decodeAndCheck(b, s, msg); resp.GetOkResponse() == nil {
			b.Fatal(resp.GetStatus().GetMessage())
		}
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				wireCheck(b, s, msg)
			}
		})
	}
}

// The wire decoder leaves nothing to proto.Unmarshal that would make it
// build a message's every entry: a CheckRequest of a megabyte of Envoy's
// header_map entries, of context_extensions, or of a map the decision never
// reads (the source's labels) followed by one header_map entry or by a
// malformed byte, would otherwise cost the whole message's objects (about
// 120 MB and over half a second for the first). Each is decoded with
// allocations a small multiple of its size, and answered as the caps say:
// 400, or an error for the malformed one.
func TestAMessageOfManyEntriesCostsNoObjectPerEntry(t *testing.T) {
	field := func(b []byte, num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	const size = MaxCheckRequestBytes - 4096
	repeat := func(num protowire.Number, entry []byte) []byte {
		var b []byte
		for len(b) < size {
			b = field(b, num, entry)
		}
		return b
	}
	http := func(h []byte) []byte {
		return field(nil, fieldCheckAttributes, field(nil, fieldAttrRequest, field(nil, fieldRequestHTTP, h)))
	}
	oneRaw := http(field(nil, fieldHTTPHeaderMap, field(nil, 1, field(nil, 1, []byte("x-api-key")))))
	labels := field(nil, fieldCheckAttributes, field(nil, fieldAttrSource, repeat(3, field(field(nil, 1, []byte("k")), 2, []byte("v")))))
	tests := []struct {
		name      string
		msg       []byte
		malformed string // "" for a message that is no CheckRequest
	}{
		{"header_map entries", http(field(nil, fieldHTTPHeaderMap, repeat(1, nil))), "more than 512 headers or 256 KiB of headers"},
		{"header_map messages", http(repeat(fieldHTTPHeaderMap, field(nil, 1, nil))), "more than 512 headers or 256 KiB of headers"},
		{"context_extensions entries", field(nil, fieldCheckAttributes, repeat(fieldAttrContextExtensions, nil)), "more than 64 context_extensions"},
		{"unread labels, then a header_map entry", append(labels, oneRaw...), ""},
		{"unread labels, then a malformed byte", append(labels, 0x0a), "-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			st := new(checkState)
			err := st.decode(append([]byte(nil), tt.msg...))
			runtime.ReadMemStats(&after)
			allocated := after.TotalAlloc - before.TotalAlloc
			assert.Less(t, allocated, uint64(4*len(tt.msg)), "%d bytes allocated for a message of %d", allocated, len(tt.msg))
			if tt.malformed == "-" {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.malformed, st.req.Malformed)
		})
	}
}

// Over a real gRPC connection, a megabyte of empty header_map entries is
// answered 400 at a cost of a few copies of the message, not the hundred
// megabytes of objects proto.Unmarshal would make of it.
func TestAMegabyteOfHeaderMapEntriesOverGRPCIsCheap(t *testing.T) {
	fx := authztest.New(t, nil)
	conn := serveChecks(t, fx)
	field := func(b []byte, num protowire.Number, v []byte) []byte {
		return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), v)
	}
	var entries []byte
	for len(entries) < MaxCheckRequestBytes-4096 {
		entries = field(entries, fieldHeaderMapHeaders, nil)
	}
	msg := field(nil, fieldCheckAttributes, field(nil, fieldAttrRequest, field(nil, fieldRequestHTTP, field(nil, fieldHTTPHeaderMap, entries))))
	call := func() (*authv3.CheckResponse, error) {
		resp := new(authv3.CheckResponse)
		err := conn.Invoke(t.Context(), checkMethod, &authv3.CheckRequest{}, resp, grpc.ForceCodecV2(rawRequestCodec{rawBytesCodec{b: msg}}))
		return resp, err
	}
	_, err := call() // warm grpc-go's buffer pools
	require.NoError(t, err)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	resp, err := call()
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	assert.Equal(t, int32(400), int32(resp.GetDeniedResponse().GetStatus().GetCode()))
	allocated := after.TotalAlloc - before.TotalAlloc
	assert.Less(t, allocated, uint64(16*len(msg)), "%d bytes allocated in client and server for a message of %d", allocated, len(msg))
}

// rawRequestCodec sends b as rawBytesCodec does and reads the response.
type rawRequestCodec struct{ rawBytesCodec }

func (rawRequestCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return proto.Unmarshal(data.Materialize(), v.(proto.Message))
}
