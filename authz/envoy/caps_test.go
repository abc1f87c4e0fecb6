package envoy

import (
	"context"
	"fmt"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
