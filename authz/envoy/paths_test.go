package envoy

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
)

// Envoy's normalize_path does not fold letter case, and an Envoy without it
// passes percent-encodings on: an upstream that routes case-insensitively
// (Express, ASP.NET Core, by default) or matches the raw path (Express)
// would serve these as the protected tree. Over gRPC they are 400 too.
func TestASpellingARawOrCaseBlindRouterReadsApartIsRefusedOverGRPC(t *testing.T) {
	fx := authztest.New(t, func(o *authz.Options) {
		o.Routes = []authz.RouteSpec{
			{Path: "/api/admin/**", Permissions: []string{"admin"}},
			{Path: "/**", Public: true},
		}
	})
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	check := func(path string) *authv3.CheckResponse {
		t.Helper()
		in := checkRequest(nil)
		in.Attributes.Request.Http.Path = path
		resp, err := client.Check(t.Context(), in)
		require.NoError(t, err)
		return resp
	}
	assert.Equal(t, int32(codes.Unauthenticated), check("/api/admin/keys").GetStatus().GetCode())
	assert.Equal(t, int32(codes.OK), check("/Docs/x").GetStatus().GetCode(), "upper case that picks no other route")
	for _, p := range []string{"/API/admin/keys", "/Api/Admin/keys", "/api/%61dmin/keys", "/api/adm%69n/keys"} {
		resp := check(p)
		assert.Equal(t, int32(codes.InvalidArgument), resp.GetStatus().GetCode(), "%s: %s", p, resp.GetStatus().GetMessage())
		assert.Equal(t, "bad_request", metadata(t, resp)["code"], p)
	}
}
