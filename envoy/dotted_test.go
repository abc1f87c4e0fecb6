package envoy_test

import (
	"os"
	"strings"
	"testing"

	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
)

// extauthz reads "." in a header name as "-" (PHP turns "." into "_" in
// $_SERVER, so X.Authz.Owner is HTTP_X_AUTHZ_OWNER): it names a client's
// x.authz.owner for removal, refuses x.api.key and x.http.method.override. The
// Envoy http_service config rejects "_" names at the listener
// (headers_with_underscores_action) but nothing rejects "." names, and its
// allowed_headers (exact x-api-key, prefix x-authz-, exact override names) never
// handed a dotted spelling to extauthz: Envoy passed it to the upstream, where a
// PHP app reads a client's X.Authz.Owner as the identity on a public route, an
// unchecked X.Api.Key as the credential, and X.HTTP.Method.Override as the
// method, none of which extauthz saw.
func TestEnvoyHTTPPassesDottedSpellingsToExtauthz(t *testing.T) {
	data, err := os.ReadFile("envoy-http.yaml")
	must(t, err)
	b, err := parseBootstrap(data)
	must(t, err)
	msgs, err := unpackAll(b)
	must(t, err)
	var authz *extauthzv3.ExtAuthz
	for _, m := range msgs {
		if a, ok := m.(*extauthzv3.ExtAuthz); ok {
			authz = a
		}
	}
	if authz == nil {
		t.Fatal("no ext_authz filter")
	}
	for _, h := range []string{
		"x.authz.owner", "x-authz.owner", "x.authz-admin",
		"x.api.key", "x-api.key",
		"x.http.method.override", "x.original.url",
	} {
		if !matchesAny(authz.GetAllowedHeaders(), h) {
			t.Errorf("envoy-http.yaml: allowed_headers does not pass %s to extauthz, and the listener does not reject it: it reaches the upstream unseen (PHP reads it as %s)", h, strings.NewReplacer(".", "-").Replace(h))
		}
	}
}
