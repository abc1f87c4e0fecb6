package envoy

import (
	"context"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
)

// Python's SimpleCookie reads a double-quoted cookie value whole, ";" and
// "," and spaces included: `api_key="theirs; <key>"` is api_key =
// "theirs; <key>" to it, a value holding a key of ours, where extauthz
// splits at the ";" inside the quotes and sees "theirs"; so with ","
// unquoted, for the readers that split cookies at ";" alone (Go's
// net/http, Node's cookie). Another service's cookie is stripped when the
// cookies hold a key of ours, with every piece that holds it: stripping
// the named piece alone would leave the key after the separator.
func TestAKeyInsideAQuotedOrJoinedCookieValueIsStripped(t *testing.T) {
	fx, client := publicBillingFixture(t)
	billing := map[string]string{"policy": "billing"}
	for _, cookie := range []string{
		`api_key="theirs; ` + fx.Good + `"`,
		`api_key="theirs, ` + fx.Good + `"`,
		// Unquoted: Go's net/http and Node's cookie split cookies at ";"
		// alone, and read api_key as "theirs,<key>".
		`api_key=theirs,` + fx.Good,
		// The pieces after the separator go too.
		`api_key=` + fx.Good + `,` + fx.Good,
		`api_key="` + fx.Good + `; ` + fx.Good + `"`,
	} {
		t.Run(cookie[:20], func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest("/invoices/1", "billing.example.com", map[string]string{"cookie": cookie}, billing, ""))
			require.NoError(t, err)
			if resp.GetStatus().GetCode() != int32(codes.OK) {
				return // refused: the key reaches no upstream
			}
			cookieSent := cookieUpstream(cookie, resp.GetOkResponse())
			assert.False(t, strings.Contains(cookieSent, fx.Good), "the upstream gets cookie %q, which Python's SimpleCookie (quoted) or Go's net/http and Node (unquoted \",\") read as api_key holding our key", cookieSent)
		})
	}
}

// Another policy's header is stripped when it holds a key as sent; no
// header reader percent-decodes or unescapes a value, so another service's
// own value that holds no key as sent ("sk%5F…", "s\k_…") reaches its
// upstream.
func TestAnotherServicesHeaderValueIsNotDecoded(t *testing.T) {
	fx, client := publicBillingFixture(t)
	billing := map[string]string{"policy": "billing"}
	for _, v := range []string{
		strings.Replace(fx.Good, "_", "%5F", 1),
		fx.Good[:1] + `\` + fx.Good[1:],
	} {
		t.Run(v[:6], func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest("/invoices/1", "billing.example.com", map[string]string{"x-api-key": v}, billing, ""))
			require.NoError(t, err)
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			assert.NotContains(t, resp.GetOkResponse().GetHeadersToRemove(), "x-api-key", "a header value holding no key as sent is the upstream's")
		})
	}
}

// The deciding policy's own cookie credential: "api_key=<key>,<key>" is
// allowed by the first value, and the cookie header is rewritten without
// it, and without the piece after the "," that holds the key again: every
// credential present is removed.
func TestTheOwnCookieKeyIsRemovedWhole(t *testing.T) {
	fx, client := publicBillingFixture(t)
	for _, cookie := range []string{
		"api_key=" + fx.Good + "," + fx.Good,
		`api_key="` + fx.Good + `; ` + fx.Good + `"`,
	} {
		t.Run(cookie[:12], func(t *testing.T) {
			resp, err := client.Check(context.Background(), checkRequest(map[string]string{"cookie": cookie}))
			require.NoError(t, err)
			if resp.GetStatus().GetCode() != int32(codes.OK) {
				return
			}
			cookieSent := cookieUpstream(cookie, resp.GetOkResponse())
			assert.NotContains(t, cookieSent, fx.Good, "the upstream gets the key in cookie %q", cookieSent)
		})
	}
}

// cookieUpstream is the cookie header the upstream gets after an allow
// that sent sent: removed, rewritten, or as it was.
func cookieUpstream(sent string, ok *authv3.OkHttpResponse) string {
	for _, h := range ok.GetHeadersToRemove() {
		if h == "cookie" {
			return ""
		}
	}
	for _, h := range ok.GetHeaders() {
		if h.GetHeader().GetKey() == "cookie" {
			return h.GetHeader().GetValue()
		}
	}
	return sent
}
