package envoy_test

import (
	"os"
	"regexp"
	"strings"
	"testing"

	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
)

// patternMatches is matchesAny with every StringMatcher kind, regular expressions too.
func patternMatches(l *matcherv3.ListStringMatcher, name string) bool {
	for _, p := range l.GetPatterns() {
		v := name
		if p.GetIgnoreCase() {
			v = strings.ToLower(v)
		}
		switch m := p.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if v == m.Exact {
				return true
			}
		case *matcherv3.StringMatcher_Prefix:
			if strings.HasPrefix(v, m.Prefix) {
				return true
			}
		case *matcherv3.StringMatcher_Suffix:
			if strings.HasSuffix(v, m.Suffix) {
				return true
			}
		case *matcherv3.StringMatcher_Contains:
			if strings.Contains(v, m.Contains) {
				return true
			}
		case *matcherv3.StringMatcher_SafeRegex:
			if re, err := regexp.Compile("^(?:" + m.SafeRegex.GetRegex() + ")$"); err == nil && re.MatchString(v) {
				return true
			}
		}
	}
	return false
}

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
		if !patternMatches(authz.GetAllowedHeaders(), h) {
			t.Errorf("envoy-http.yaml: allowed_headers does not pass %s to extauthz, and the listener does not reject it: it reaches the upstream unseen (PHP reads it as %s)", h, strings.NewReplacer(".", "-").Replace(h))
		}
	}
}
