package envoy

import (
	"context"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/keystore"
)

// Over a real gRPC connection: a Forwarded host quoted with a "," or ";"
// in it is, to Spring (ForwardedHeaderUtils before 7.1, the regex
// host="?([^;,"]+)"?) and Reactor Netty, billing.example.com; so is
// host="billing.example.com,for=x" to Rack, which splits the value at ","
// and ";" before it reads quotes. extauthz reads the whole quoted string,
// matches no policy's host with it, and allows the request under the
// default policy its Host selects, where the same host unquoted is 400.
func TestAQuotedForwardedHostHoldingADelimiterIsABadRequestOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_users", Name: "users", Permissions: []string{"read:users"}, Policies: []string{"default"}})
	check := func(forwarded string) (int32, string) {
		resp, err := client.Check(context.Background(),
			meshRequest("/api/users", "api.example.org", map[string]string{"x-api-key": key, "forwarded": forwarded}, nil, ""))
		require.NoError(t, err)
		return resp.GetStatus().GetCode(), resp.GetStatus().GetMessage()
	}
	code, msg := check("for=192.0.2.1;host=billing.example.com")
	require.Equal(t, int32(codes.InvalidArgument), code, "control: billing's host in Forwarded is refused (%s)", msg)
	for _, forwarded := range []string{
		`for=192.0.2.1;host="billing.example.com,x"`,
		`for=192.0.2.1;host="billing.example.com;x"`,
		`host="billing.example.com,for=x"`, // Rack: host billing.example.com, for x"
	} {
		code, msg := check(forwarded)
		assert.Equal(t, int32(codes.InvalidArgument), code, "Forwarded: %s reads as host billing.example.com to Spring/Reactor Netty (or Rack); answered %v %s", forwarded, codes.Code(code), msg)
	}
}
