package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// phpServerName is the $_SERVER name PHP gives a request header that Caddy's
// php_fastcgi passes as HTTP_<NAME> (Caddy upper-cases it and turns '-' and
// ' ' into '_'; PHP's php_register_variable_ex then turns '.' and ' ' into '_').
func phpServerName(header string) string {
	n := strings.ToUpper(header)
	n = strings.NewReplacer("-", "_", " ", "_", ".", "_").Replace(n)
	return "HTTP_" + n
}

// The Caddyfile deleted a client's X-Authz-* headers and every header with a
// '_', because CGI/PHP read X_Authz_Owner as X-Authz-Owner. A '.' is a valid
// token character too, Caddy passed it on, and PHP folds it to '_' as well:
// X.Authz.Owner arrives in $_SERVER as HTTP_X_AUTHZ_OWNER, the variable of
// extauthz's X-Authz-Owner; X.Real.IP as HTTP_X_REAL_IP, the header the
// Caddyfile removes. nginx drops such names (ignore_invalid_headers on).
func TestCaddyDropsDottedSpellingsOfIdentityAndAddressHeaders(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	caddy := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	// What the upstream must not receive from the client, by the name PHP reads.
	spoofed := map[string]string{
		"X.Authz.Owner":       "HTTP_X_AUTHZ_OWNER",
		"X.Authz.Key.Id":      "HTTP_X_AUTHZ_KEY_ID",
		"X.Authz.Permissions": "HTTP_X_AUTHZ_PERMISSIONS",
		"X.Authz.Admin":       "HTTP_X_AUTHZ_ADMIN",
		"X.Real.IP":           "HTTP_X_REAL_IP",
		"X-Real.IP":           "HTTP_X_REAL_IP",
	}
	for _, c := range []struct {
		name, target string
		extra        []string
	}{
		{"public route", "/healthz", nil},
		{"key route", "/api/users", []string{"X-Api-Key: " + reader}},
	} {
		t.Run(c.name, func(t *testing.T) {
			headers := append([]string{}, c.extra...)
			for h := range spoofed {
				headers = append(headers, h+": spoofed")
			}
			r := caddy.raw(t, caddyRequest("GET", c.target, headers...))
			require.Equal(t, 200, r.status, r.body)
			got := up.last(t)
			phpNames := map[string]bool{}
			for _, php := range spoofed {
				phpNames[php] = true
			}
			for name, vals := range got.Headers {
				if strings.Contains(name, ".") && phpNames[phpServerName(name)] {
					assert.Fail(t, "a client-written header reaches the upstream",
						"upstream got %q = %q, which PHP behind php_fastcgi reads as $_SERVER[%q]", name, vals, phpServerName(name))
				}
			}
		})
	}
}

// The same spelling of the credential header: extauthz answers x_api_key 400
// because CGI/PHP/Rack read it as X-Api-Key, and the Caddyfile removes
// X-Api-Key after the decision; X.Api.Key, which PHP behind php_fastcgi
// reads as $_SERVER["HTTP_X_API_KEY"], is neither refused nor removed, so
// the upstream receives the very key extauthz just checked.
func TestCaddyDropsADottedSpellingOfTheCredentialHeader(t *testing.T) {
	ts, _ := startCaddyExtauthz(t, caddyExtauthzConfig(t)+caddyRoutes)
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
	up := startEchoUpstream(t)
	caddy := startCaddy(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	for _, target := range []string{"/api/users", "/healthz"} {
		before := up.calls.Load()
		r := caddy.raw(t, caddyRequest("GET", target, "X-Api-Key: "+reader, "X.Api.Key: "+reader))
		if up.calls.Load() == before {
			continue // refused before the upstream: fixed
		}
		require.Equal(t, 200, r.status, r.body)
		for name, vals := range up.last(t).Headers {
			for _, v := range vals {
				assert.NotContains(t, v, reader, "%s: the upstream got the key in %q, read by PHP as $_SERVER[%q]", target, name, phpServerName(name))
			}
		}
	}
}
