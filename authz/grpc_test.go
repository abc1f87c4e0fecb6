package authz

import (
	"context"
	"sync"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

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
	f := newFixture(t, nil)
	s := &CheckServer{Authz: f.a}
	h := keystore.NewHasher([]byte("pepper")).Hash(f.good)
	in := checkRequest(map[string]string{"x-api-key": f.good})

	resp, err := s.Check(context.Background(), in)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{HeaderKeyID: "key_good", HeaderKeyName: "good", HeaderOwner: "acme", HeaderPermissions: "read:users"}, upstreamHeaders(t, resp))

	renamed := *f.keys.keys[h]
	renamed.Name, renamed.Permissions = "renamed", []string{"read:users", "write:users"}
	f.keys.keys[h] = &renamed
	resp, err = s.Check(context.Background(), in)
	require.NoError(t, err)
	assert.Equal(t, map[string]string{HeaderKeyID: "key_good", HeaderKeyName: "renamed", HeaderOwner: "acme", HeaderPermissions: "read:users,write:users"}, upstreamHeaders(t, resp))
}

// A cookie credential adds the rest of the cookie header to the identity
// headers; that must not leak into the shared ones of the next response.
func TestCookieHeaderDoesNotStickToTheSharedIdentity(t *testing.T) {
	f := newFixture(t, nil)
	s := &CheckServer{Authz: f.a}
	resp, err := s.Check(context.Background(), checkRequest(map[string]string{"cookie": "theme=dark; api_key=" + f.good}))
	require.NoError(t, err)
	assert.Equal(t, "theme=dark", upstreamHeaders(t, resp)["cookie"])
	assert.Len(t, resp.GetOkResponse().GetHeaders(), 5)

	resp, err = s.Check(context.Background(), checkRequest(map[string]string{"x-api-key": f.good}))
	require.NoError(t, err)
	assert.Len(t, resp.GetOkResponse().GetHeaders(), 4)
	assert.NotContains(t, upstreamHeaders(t, resp), "cookie")
}

// Responses sharing one key's identity messages are marshalled by gRPC on
// many goroutines at once. Under -race this proves that is only reading,
// and every response must encode the same bytes.
func TestSharedIdentityHeadersMarshalConcurrently(t *testing.T) {
	// No rate limit: its headers would differ from one response to the next.
	f := newFixture(t, func(o *PolicyOptions) { o.DefaultRate = ratelimit.Rate{} })
	s := &CheckServer{Authz: f.a}
	in := checkRequest(map[string]string{"x-api-key": f.good})
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
