package envoy

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

func checkRequest(headers map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1"}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/api/users", Host: "api.example.com", Headers: headers,
		}},
	}}
}

func upstreamHeaders(t *testing.T, resp *authv3.CheckResponse) map[string]string {
	t.Helper()
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, resp.String())
	m := map[string]string{}
	for _, h := range ok.GetHeaders() {
		m[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
	}
	return m
}

// The identity headers of a key record are built once and shared; a record
// the cache replaces (the key was renamed, say) must get its own.
func TestIdentityHeadersFollowTheKeyRecord(t *testing.T) {
	f := authztest.New(t, nil)
	s := &CheckServer{Authz: f.Authz}
	h := f.Hasher.Hash(f.Good)
	in := checkRequest(map[string]string{"x-api-key": f.Good})

	resp, err := s.Check(context.Background(), in)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{authz.HeaderKeyID: "key_good", authz.HeaderKeyName: "good", authz.HeaderOwner: "acme", authz.HeaderPermissions: "read:users"}, upstreamHeaders(t, resp))

	renamed := *f.Keys.Get(h)
	renamed.Name, renamed.Permissions = "renamed", []string{"read:users", "write:users"}
	f.Keys.Put(h, &renamed)
	resp, err = s.Check(context.Background(), in)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{authz.HeaderKeyID: "key_good", authz.HeaderKeyName: "renamed", authz.HeaderOwner: "acme", authz.HeaderPermissions: "read:users,write:users"}, upstreamHeaders(t, resp))
}

// A cookie credential adds the rest of the cookie header to the identity
// headers; that must not leak into the shared ones of the next response.
func TestCookieHeaderDoesNotStickToTheSharedIdentity(t *testing.T) {
	f := authztest.New(t, nil)
	s := &CheckServer{Authz: f.Authz}
	resp, err := s.Check(context.Background(), checkRequest(map[string]string{"cookie": "theme=dark; api_key=" + f.Good}))
	require.NoError(t, err)
	assert.Equal(t, "theme=dark", upstreamHeaders(t, resp)["cookie"])
	assert.Len(t, resp.GetOkResponse().GetHeaders(), 5)

	resp, err = s.Check(context.Background(), checkRequest(map[string]string{"x-api-key": f.Good}))
	require.NoError(t, err)
	assert.Len(t, resp.GetOkResponse().GetHeaders(), 4)
	assert.NotContains(t, upstreamHeaders(t, resp), "cookie")
}

// Responses sharing one key's identity messages are marshalled by gRPC on
// many goroutines at once. Under -race this proves that is only reading,
// and every response must encode the same bytes.
func TestSharedIdentityHeadersMarshalConcurrently(t *testing.T) {
	// No rate limit: its headers would differ from one response to the next.
	f := authztest.New(t, func(o *authz.Options) { o.DefaultRate = ratelimit.Rate{} })
	s := &CheckServer{Authz: f.Authz}
	in := checkRequest(map[string]string{"x-api-key": f.Good})
	first, err := s.Check(context.Background(), in)
	require.NoError(t, err)
	require.Len(t, upstreamHeaders(t, first), 4)
	require.Nil(t, first.GetOkResponse().GetResponseHeadersToAdd())
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(first)
	require.NoError(t, err)

	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for range 8 {
		wg.Go(func() {
			for range 200 {
				resp, err := s.Check(context.Background(), in)
				if err != nil {
					errs <- err.Error()
					return
				}
				got, err := proto.MarshalOptions{Deterministic: true}.Marshal(resp)
				if err != nil || string(got) != string(want) {
					errs <- "a response encoded differently"
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
}

// FuzzCheck drives the whole gRPC handler with arbitrary attributes: it
// must never panic, never return an RPC error, always produce a response
// that marshals (a non-UTF-8 string in it would fail on the wire) and
// whose bytes decode to the messages of the decision, and never put a
// presented credential into it.
func FuzzCheck(f *testing.F) {
	fx := authztest.New(f, nil)
	s := &CheckServer{Authz: fx.Authz}
	f.Add("GET", "/api/users", "x-api-key", fx.Good, "a=b; api_key=x", "10.0.0.1")
	f.Add("get", "/healthz/../api/users?api_key="+fx.Admin, "authorization", "Bearer "+fx.Admin, "", "::1")
	f.Add("DELETE", "/api/users/1", "x-authz-key-id", "spoof", "api_key="+fx.Perms, "")
	f.Add("", "", "", "", "", "")
	f.Add("GET", "/a%2Fb", "cookie", "\xff", "\x00", "300.1.1.1")
	f.Fuzz(func(t *testing.T, method, path, name, value, cookie, peer string) {
		headers := map[string]string{}
		if name != "" {
			headers[strings.ToLower(name)] = value
		}
		if cookie != "" {
			headers["cookie"] = cookie
		}
		in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
				SocketAddress: &corev3.SocketAddress{Address: peer},
			}}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: method, Path: path, Headers: headers,
			}},
		}}
		resp, err := s.Check(context.Background(), in)
		if err != nil {
			if utf8Valid(method, path, name, value, cookie, peer) {
				t.Fatalf("RPC error: %v", err)
			}
			return // such a request cannot arrive: Envoy's strings are UTF-8
		}
		if resp.GetStatus() == nil || resp.GetHttpResponse() == nil {
			t.Fatalf("incomplete response: %v", resp)
		}
		if _, err := proto.Marshal(resp); err != nil && utf8Valid(method, path, name, value, cookie, peer) {
			t.Fatalf("response does not marshal: %v", err)
		}
		// The bytes decode to the messages of the decision.
		req := RequestFromCheck(in)
		var d authz.Decision
		fx.Authz.Decide(context.Background(), &req, &d)
		if b, _, err := s.appendResponse(nil, nil, &req, &d); err == nil {
			var got authv3.CheckResponse
			if err := proto.Unmarshal(b, &got); err != nil {
				t.Fatalf("the written response does not decode: %v", err)
			}
			if want := wantResponse(&req, &d); !proto.Equal(want, &got) {
				t.Fatalf("written:\n%v\nwant:\n%v", &got, want)
			}
		} else if utf8Valid(method, path, name, value, cookie, peer) {
			t.Fatalf("the response to a request that could arrive cannot be written: %v", err)
		}
		if resp.GetStatus().GetCode() == 0 {
			for _, o := range resp.GetOkResponse().GetHeaders() {
				if k := o.GetHeader().GetValue(); strings.Contains(k, fx.Good) || strings.Contains(k, fx.Admin) {
					t.Fatalf("a key reached an upstream header: %s", o.GetHeader().GetKey())
				}
			}
		}
	})
}

// utf8Valid: proto3 refuses non-UTF-8 request strings, so Envoy never sends
// them in headers (raw header bytes come in header_map instead); only the
// responses to requests that could arrive must marshal.
func utf8Valid(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}

// BenchmarkCheckHandler is the whole gRPC handler for a cached key, as the
// server runs it: the CheckRequest's wire bytes read, the decision with the
// default rate limit (local), and the CheckResponse's bytes written (no
// network).
func BenchmarkCheckHandler(b *testing.B) {
	b.Run("no limit", func(b *testing.B) { benchmarkCheckHandler(b, ratelimit.Rate{}, 1) })
	b.Run("local limit", func(b *testing.B) { benchmarkCheckHandler(b, ratelimit.Rate{N: 1e9, Window: time.Hour}, 1) })
}

// BenchmarkCheckHandlerManyKeys is the handler for cached keys when many
// are in use: a thousand keys taken in turn, each with its own identity
// headers, so that what is kept per key (the cache's decoded keys, the
// response's identity memo) is tried beyond a handful.
func BenchmarkCheckHandlerManyKeys(b *testing.B) {
	benchmarkCheckHandler(b, ratelimit.Rate{}, 1000)
}

func benchmarkCheckHandler(b *testing.B, rate ratelimit.Rate, keys int) {
	f := authztest.New(b, func(o *authz.Options) { o.DefaultRate = rate })
	f.Now = time.Now()
	msgs := make([][]byte, keys)
	for i := range msgs {
		secret := f.Good
		if keys > 1 {
			secret = f.AddKey(b, &keystore.Key{ID: fmt.Sprintf("key_%04d", i), Name: "many", Owner: "acme", Permissions: []string{"read:users"}})
		}
		msgs[i] = marshal(b, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1"}}}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: "GET", Path: "/api/users?page=2", Host: "api.example.com",
				Headers: map[string]string{"x-api-key": secret, "user-agent": "bench", "x-request-id": "r1", "accept": "*/*"},
			}},
		}})
	}
	f.Rebuild(keystore.NewCache(f.Keys.Store(), keystore.CacheOptions{}), time.Now)
	s := &CheckServer{Authz: f.Authz}
	for _, msg := range msgs {
		var resp authv3.CheckResponse
		require.NoError(b, proto.Unmarshal(wireCheck(b, s, msg), &resp))
		require.NotNil(b, resp.GetOkResponse(), resp.String())
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		wireCheck(b, s, msgs[i%len(msgs)])
	}
}

// TestAFloodNeverTurnsAwayAValidKeyOverGRPC floods a real gRPC server with
// bad keys from the valid key's own address and checks the valid key after
// every few, and the store lookups the flood cost.
func TestAFloodNeverTurnsAwayAValidKeyOverGRPC(t *testing.T) {
	f := authztest.NewGuarded(t, "100/m", "1000/s")
	client := authv3.NewAuthorizationClient(serveChecks(t, f))
	check := func(key string) *authv3.CheckResponse {
		req := checkRequest(map[string]string{"x-api-key": key})
		req.Attributes.Source.Address.GetSocketAddress().Address = "10.1.2.3"
		resp, err := client.Check(context.Background(), req)
		require.NoError(t, err)
		return resp
	}
	require.Equal(t, int32(codes.OK), check(f.Good).GetStatus().GetCode())
	calls := f.Keys.Calls.Load()
	for _, flood := range authztest.Floods(t, f.Policies.Format) {
		for i := range 500 {
			resp := check(flood.Next(i))
			require.NotEqual(t, int32(codes.OK), resp.GetStatus().GetCode())
			if i%5 == 0 {
				resp := check(f.Good)
				require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "%s, step %d: %s", flood.Name, i, resp.GetStatus().GetMessage())
			}
		}
	}
	assert.LessOrEqual(t, f.Keys.Calls.Load()-calls, int64(100), "1000 unknown keys from one address: at most its budget of lookups")
}
