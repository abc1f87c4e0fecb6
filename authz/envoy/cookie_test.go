package envoy

import (
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/authz/authztest"
)

// A cookie credential inside another cookie's piece: extauthz splits the
// Cookie header at ";" and ",", so "theme=dark api_key=<key>" is one cookie,
// theme. Python's http.cookies.SimpleCookie (Bottle, aiohttp before 3.12,
// CherryPy) separates cookies at white space too, and WebOb (Pyramid) finds
// every name=value with a findall, so any byte a cookie name cannot hold
// separates for it: both read api_key=<key>. The proxy cannot strip a cookie
// it does not see, so such a header is refused (400), whatever credential
// the request is otherwise allowed by; a value that merely holds "=" or
// white space is not.
func TestACookieKeyHiddenInAnotherCookieIsRefused(t *testing.T) {
	fx := authztest.New(t, nil)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	check := func(cookie string) *authv3.CheckResponse {
		t.Helper()
		resp, err := client.Check(t.Context(), checkRequest(map[string]string{"x-api-key": fx.Good, "cookie": cookie}))
		require.NoError(t, err)
		return resp
	}
	for _, cookie := range []string{
		"theme=dark api_key=" + fx.Admin,  // SimpleCookie, WebOb
		"theme=dark\tapi_key=" + fx.Admin, // SimpleCookie, WebOb
		`theme="x"api_key=` + fx.Admin,    // WebOb
		`theme=dark"api_key=` + fx.Admin,  // WebOb
		"theme api_key=" + fx.Admin,       // WebOb
		"a=1; theme=dark api_key=" + fx.Admin,
		"theme=dark API_KEY=" + fx.Admin, // a spelling that reads as the name
		"theme=dark api_key =" + fx.Admin,
	} {
		resp := check(cookie)
		assert.Equal(t, int32(codes.InvalidArgument), resp.GetStatus().GetCode(), "%q: %s", cookie, resp.GetStatus().GetMessage())
		assert.Equal(t, "bad_request", metadata(t, resp)["code"], cookie)
	}
	for _, cookie := range []string{
		"theme=dark",
		"session=YWJj/api_key=", // base64 with "=": the name before the last "=" is "YWJj/api_key", not api_key
		"prefs=a=b=c",
		"note=hello world",
		"theme=dark xapi_key=1",
	} {
		assert.Equal(t, int32(codes.OK), check(cookie).GetStatus().GetCode(), cookie)
	}
}
