package authz_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// meshOptions are the fixture's routes as the default policy, plus billing
// and orders, each with a route of its own and every kind of selector.
func meshOptions(o *authz.Options) {
	o.Policies = []authz.PolicySpec{
		{
			Name: "billing",
			Match: authz.Match{
				Context:    map[string]string{"policy": "billing"},
				Principals: []string{"spiffe://cluster.local/ns/billing/sa/billing"},
				Hosts:      []string{"billing.example.com", "*.billing.example.com"},
			},
			Routes:      []authz.RouteSpec{{Path: "/invoices/**", Permissions: []string{"read:invoices"}}},
			Sources:     authztest.Sources(),
			ForwardMeta: []string{"plan", "tenant_id"},
		},
		{
			Name: "orders",
			Match: authz.Match{
				Context:    map[string]string{"policy": "orders"},
				Principals: []string{"spiffe://cluster.local/ns/orders/sa/orders"},
				Hosts:      []string{"orders.example.com", "*.example.com"},
			},
			Routes:  []authz.RouteSpec{{Path: "/orders/**"}},
			Sources: []authz.Source{authz.HeaderSource("x-orders-key", "")},
		},
	}
}

func TestEachSelectorChoosesItsPolicy(t *testing.T) {
	f := authztest.New(t, meshOptions)
	ctx := func(kv ...string) []authz.Header {
		var out []authz.Header
		for i := 0; i < len(kv); i += 2 {
			out = append(out, authz.Header{Key: kv[i], Value: kv[i+1]})
		}
		return out
	}
	const billingID = "spiffe://cluster.local/ns/billing/sa/billing"
	tests := []struct {
		name   string
		req    authz.Request
		policy string // "" = none selected
		by     authz.Selector
		code   authz.Code // the denial before any key, "" = none (the request goes on)
	}{
		{"context_extensions select a policy", authz.Request{ContextExtensions: ctx("policy", "billing")}, "billing", authz.SelectedByContext, ""},
		{"context_extensions come before the principal and the host",
			authz.Request{ContextExtensions: ctx("policy", "orders"), DestinationPrincipal: billingID, Host: "billing.example.com"}, "orders", authz.SelectedByContext, ""},
		{"a context key given twice has its last value, as protobuf's map",
			authz.Request{ContextExtensions: ctx("policy", "billing", "policy", "orders")}, "orders", authz.SelectedByContext, ""},
		{"an extension no selector names is not a selection", authz.Request{ContextExtensions: ctx("route", "users"), Host: "orders.example.com"}, "orders", authz.SelectedByHost, ""},
		{"a selector's key with an unknown value is no policy, never a fallback",
			authz.Request{ContextExtensions: ctx("policy", "payroll"), Host: "billing.example.com"}, "", authz.SelectedByNone, authz.CodeNoPolicy},
		{"the destination principal comes before the host", authz.Request{DestinationPrincipal: billingID, Host: "orders.example.com"}, "billing", authz.SelectedByDestination, ""},
		{"an unknown principal falls through to the host", authz.Request{DestinationPrincipal: "spiffe://x/ns/y/sa/z", Host: "orders.example.com"}, "orders", authz.SelectedByHost, ""},
		{"an exact host", authz.Request{Host: "billing.example.com"}, "billing", authz.SelectedByHost, ""},
		{"a host in another case with a port", authz.Request{Host: "Billing.EXAMPLE.com:8443"}, "billing", authz.SelectedByHost, ""},
		{"the longest suffix wins", authz.Request{Host: "eu.billing.example.com"}, "billing", authz.SelectedByHost, ""},
		{"a shorter suffix where no longer one matches", authz.Request{Host: "shop.example.com"}, "orders", authz.SelectedByHost, ""},
		{"a suffix needs a label before it", authz.Request{Host: "example.com"}, "default", authz.SelectedByDefault, ""},
		{"a suffix is matched at a dot", authz.Request{Host: "evilbilling.example.com"}, "orders", authz.SelectedByHost, ""},
		{"an unknown host gets the default policy", authz.Request{Host: "api.other.org"}, "default", authz.SelectedByDefault, ""},
		{"an IPv6 literal host gets the default policy", authz.Request{Host: "[2001:db8::1]:443"}, "default", authz.SelectedByDefault, ""},
		{"a host with a trailing dot is a bad request", authz.Request{Host: "billing.example.com."}, "", authz.SelectedByNone, authz.CodeBadRequest},
		{"a host with an empty label is a bad request", authz.Request{Host: "billing..example.com"}, "", authz.SelectedByNone, authz.CodeBadRequest},
		{"a host with an empty port is a bad request", authz.Request{Host: "billing.example.com:"}, "", authz.SelectedByNone, authz.CodeBadRequest},
		{"a host with a user part is a bad request", authz.Request{Host: "x@billing.example.com"}, "", authz.SelectedByNone, authz.CodeBadRequest},
		{"a host with a space is a bad request", authz.Request{Host: "billing.example.com x"}, "", authz.SelectedByNone, authz.CodeBadRequest},
		{"no selector at all gets the default policy", authz.Request{}, "default", authz.SelectedByDefault, ""},
		{"HTTP mode: the auth path names the policy, whatever else the request says",
			authz.Request{PolicyFromPath: true, PolicyName: "billing", ContextExtensions: ctx("policy", "orders"), Host: "orders.example.com"}, "billing", authz.SelectedByPath, ""},
		{"HTTP mode: an auth path may name the default policy", authz.Request{PolicyFromPath: true, PolicyName: "default"}, "default", authz.SelectedByPath, ""},
		{"HTTP mode: an auth path naming none is no policy, never the host's",
			authz.Request{PolicyFromPath: true, Host: "billing.example.com"}, "", authz.SelectedByNone, authz.CodeNoPolicy},
		{"HTTP mode: an auth path naming an unknown policy is no policy", authz.Request{PolicyFromPath: true, PolicyName: "payroll"}, "", authz.SelectedByNone, authz.CodeNoPolicy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Method, tt.req.Path, tt.req.Headers, tt.req.XFFTrustedHops = "GET", "/", authz.HeaderMap{}, -1
			e := f.Policies.Explain(&tt.req)
			if tt.code != "" {
				assert.Equal(t, tt.code, e.Code, e.Message)
				assert.Nil(t, e.Policy)
				return
			}
			require.NotNil(t, e.Policy, e.Message)
			assert.Equal(t, tt.policy, e.Policy.Name)
			assert.Equal(t, tt.by, e.SelectedBy)
			d := f.Decide(tt.req)
			assert.Equal(t, tt.policy, d.PolicyName(), "Decide selects as Explain does")
			assert.Equal(t, tt.by, d.SelectedBy())
		})
	}
}

// Upstreams that trust X-Forwarded-Host or Forwarded (Express's "trust
// proxy", Django's USE_X_FORWARDED_HOST, Rails, Spring's
// ForwardedHeaderFilter) take the host from them. Where the host selects the
// policy, one that names another policy's host than the request's is 400:
// the request would be decided by one service's rules and answered as
// another's.
func TestAForwardedHostOfAnotherPolicyIsABadRequest(t *testing.T) {
	f := authztest.New(t, meshOptions)
	tests := []struct {
		name    string
		host    string
		headers authz.HeaderMap
		policy  string // "" = 400
	}{
		{"X-Forwarded-Host of another policy", "orders.example.com", authz.HeaderMap{"x-forwarded-host": "billing.example.com"}, ""},
		{"of the default policy, from a named one", "billing.example.com", authz.HeaderMap{"x-forwarded-host": "api.other.org"}, ""},
		{"of a named policy, from the default one", "api.other.org", authz.HeaderMap{"x-forwarded-host": "billing.example.com"}, ""},
		{"the second of a list", "billing.example.com", authz.HeaderMap{"x-forwarded-host": "billing.example.com, shop.example.com"}, ""},
		{"not in canonical form", "billing.example.com", authz.HeaderMap{"x-forwarded-host": "billing.example.com."}, ""},
		{"Forwarded's host", "orders.example.com", authz.HeaderMap{"forwarded": `for=192.0.2.1;host=billing.example.com;proto=https`}, ""},
		{"quoted, in the second element, any case", "orders.example.com", authz.HeaderMap{"forwarded": `for=192.0.2.1, Host="Billing.example.com:443"`}, ""},
		// Spellings upstreams read and a plain reading would not.
		{"X-Forwarded-Host as CGI names it", "api.other.org", authz.HeaderMap{"x_forwarded_host": "billing.example.com"}, ""},
		{"X-Forwarded-Host half underscored", "api.other.org", authz.HeaderMap{"x-forwarded_host": "billing.example.com"}, ""},
		{"Forwarded as CGI names it", "api.other.org", authz.HeaderMap{"FORWARDED": "host=billing.example.com"}, ""},
		{"host= at the end of another name (unanchored regex readers)", "api.other.org", authz.HeaderMap{"forwarded": "for=192.0.2.1;xhost=billing.example.com"}, ""},
		{"host= inside a quoted value", "api.other.org", authz.HeaderMap{"forwarded": `for="host=billing.example.com"`}, ""},
		{"a quoted-pair, which some readers unescape", "api.other.org", authz.HeaderMap{"forwarded": `for=192.0.2.1;host="billing\.example\.com"`}, ""},
		{"a backslash anywhere", "billing.example.com", authz.HeaderMap{"forwarded": `for="\"x"`}, ""},
		{"an unclosed quote", "billing.example.com", authz.HeaderMap{"forwarded": `for="192.0.2.1;host=billing.example.com`}, ""},
		{"a pair without =", "billing.example.com", authz.HeaderMap{"forwarded": "for=192.0.2.1;host"}, ""},
		{"spaces around =", "api.other.org", authz.HeaderMap{"forwarded": "host = billing.example.com"}, ""},
		{"an unquoted value that is no token", "billing.example.com", authz.HeaderMap{"forwarded": "for=[2001:db8::1]"}, ""},
		// A byte no host name holds: some reader cuts the host there or
		// decodes it, and finds another policy's host inside. Spring before
		// 7.1 and Reactor Netty read host="?([^;,"]+), Rack splits at ","
		// and ";" before it reads quotes.
		{"a quoted host holding a comma", "api.other.org", authz.HeaderMap{"forwarded": `host="billing.example.com,x"`}, ""},
		{"a quoted host holding a semicolon", "api.other.org", authz.HeaderMap{"forwarded": `for=192.0.2.1;host="billing.example.com;x"`}, ""},
		{"a quoted host holding another pair", "api.other.org", authz.HeaderMap{"forwarded": `host="billing.example.com,for=x"`}, ""},
		{"a quoted host ending in the request's own policy's host", "shop.example.com", authz.HeaderMap{"forwarded": `host="billing.example.com,shop.example.com"`}, ""},
		{"a quoted host holding a space", "api.other.org", authz.HeaderMap{"forwarded": `host="billing.example.com x"`}, ""},
		{"a quoted host of the same policy holding a comma", "billing.example.com", authz.HeaderMap{"forwarded": `host="billing.example.com,billing.example.com"`}, ""},
		{"a percent-encoded host", "api.other.org", authz.HeaderMap{"forwarded": `host="billing%2Eexample.com"`}, ""},
		{"a non-ASCII host", "api.other.org", authz.HeaderMap{"x-forwarded-host": "billing.exam\u0440le.com"}, ""},
		{"X-Forwarded-Host holding a semicolon", "api.other.org", authz.HeaderMap{"x-forwarded-host": "billing.example.com;x"}, ""},
		{"X-Forwarded-Host holding a quote", "api.other.org", authz.HeaderMap{"x-forwarded-host": `"billing.example.com"`}, ""},
		{"an IP literal with more than a port after it", "api.other.org", authz.HeaderMap{"x-forwarded-host": "[2001:db8::1]x.billing.example.com"}, ""},
		{"an IP literal holding a letter past f", "api.other.org", authz.HeaderMap{"x-forwarded-host": "[billing.example.com]"}, ""},
		// Go's net.SplitHostPort reads the name inside brackets: a host of
		// hexadecimal letters, digits and dots must not pass as a literal.
		{"a name of hex letters in brackets", "api.other.org", authz.HeaderMap{"x-forwarded-host": "[bad.cafe]:443"}, ""},
		{"an IPv4 address in brackets", "api.other.org", authz.HeaderMap{"forwarded": `host="[10.0.0.5]"`}, ""},
		{"an IPv6 literal with a zone", "api.other.org", authz.HeaderMap{"forwarded": `host="[fe80::1%eth0]"`}, ""},
		{"the same host", "billing.example.com", authz.HeaderMap{"x-forwarded-host": "billing.example.com"}, "billing"},
		{"Forwarded as proxies write it", "billing.example.com", authz.HeaderMap{"forwarded": `for=192.0.2.1;proto=https;by="[2001:db8::1]:80", for=198.51.100.17;host=billing.example.com`}, "billing"},
		{"empty pairs and elements", "billing.example.com", authz.HeaderMap{"forwarded": "for=192.0.2.1;; ,proto=https"}, "billing"},
		{"another spelling of it", "billing.example.com", authz.HeaderMap{"x-forwarded-host": "BILLING.example.com:8443"}, "billing"},
		{"another host of the same policy", "billing.example.com", authz.HeaderMap{"x-forwarded-host": "eu.billing.example.com"}, "billing"},
		{"Forwarded without a host", "billing.example.com", authz.HeaderMap{"forwarded": "for=192.0.2.1;proto=https"}, "billing"},
		{"an empty X-Forwarded-Host", "billing.example.com", authz.HeaderMap{"x-forwarded-host": ""}, "billing"},
		{"two hosts of no policy", "api.other.org", authz.HeaderMap{"x-forwarded-host": "www.other.org"}, "default"},
		{"an IP literal and a port, of no policy", "api.other.org", authz.HeaderMap{"forwarded": `host="[2001:db8::1]:8443"`}, "default"},
		{"an IPv4-mapped IP literal, of no policy", "api.other.org", authz.HeaderMap{"x-forwarded-host": "[::ffff:10.0.0.5]"}, "default"},
		{"an underscore and a port, of no policy", "api.other.org", authz.HeaderMap{"x-forwarded-host": "internal_api.other.org:80"}, "default"},
		// An empty host (Host: with no value, an empty :authority) selects
		// no policy by host, as a host of no policy does.
		{"of a named policy, from an empty host", "", authz.HeaderMap{"x-forwarded-host": "billing.example.com"}, ""},
		{"Forwarded's, from an empty host", "", authz.HeaderMap{"forwarded": "host=billing.example.com"}, ""},
		{"not in canonical form, from an empty host", "", authz.HeaderMap{"x-forwarded-host": "api.other.org."}, ""},
		{"of no policy, from an empty host", "", authz.HeaderMap{"x-forwarded-host": "api.other.org"}, "default"},
		{"none, from an empty host", "", authz.HeaderMap{}, "default"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.Decide(authz.Request{Method: "GET", Path: "/", Host: tt.host, Headers: tt.headers, XFFTrustedHops: -1})
			if tt.policy == "" {
				assert.Equal(t, authz.CodeBadRequest, d.Code, d.Message)
				return
			}
			assert.NotEqual(t, authz.CodeBadRequest, d.Code, d.Message)
			assert.Equal(t, tt.policy, d.PolicyName())
		})
	}
	// Selected otherwise, the policy does not depend on the host, and the
	// headers are the upstream's business.
	d := f.Decide(authz.Request{Method: "GET", Path: "/", Host: "orders.example.com", ContextExtensions: []authz.Header{{Key: "policy", Value: "orders"}},
		Headers: authz.HeaderMap{"x-forwarded-host": "billing.example.com"}, XFFTrustedHops: -1})
	assert.Equal(t, "orders", d.PolicyName(), d.Message)
}

// A config without named policies selects nothing: every request is the
// default policy's, whatever it carries, as before policies existed.
func TestWithoutPoliciesEveryRequestIsTheDefaultPolicys(t *testing.T) {
	f := authztest.New(t, nil)
	d := f.Decide(authz.Request{Path: "/api/users", Host: "billing.example.com.", PolicyFromPath: true, PolicyName: "x",
		ContextExtensions: []authz.Header{{Key: "policy", Value: "billing"}}, Headers: authz.HeaderMap{"x-api-key": f.Good}})
	assert.Equal(t, authz.Code(""), d.Code, d.Message)
	assert.Equal(t, "default", d.PolicyName())
}

func TestUnselectedDenyRefusesWhatNoPolicySelects(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) { meshOptions(o); o.DenyUnselected = true })
	d := f.Decide(authz.Request{Path: "/api/users", Host: "api.other.org", Headers: authz.HeaderMap{"x-api-key": f.Good}})
	assert.Equal(t, authz.CodeNoPolicy, d.Code)
	assert.Equal(t, 403, d.Code.HTTPStatus())
	assert.Nil(t, d.Policy)
	d = f.Decide(authz.Request{Path: "/invoices/1", Host: "billing.example.com", Headers: authz.HeaderMap{"x-api-key": f.Admin}})
	assert.Equal(t, authz.Code(""), d.Code, d.Message)
}

// Each policy decides by its own routes, unmatched, sources and default
// rate.
func TestAPolicyDecidesByItsOwnSettings(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) {
		meshOptions(o)
		o.Policies[1].DefaultRate = ratelimit.Rate{N: 1, Window: time.Hour}
	})
	billing := []authz.Header{{Key: "policy", Value: "billing"}}
	orders := []authz.Header{{Key: "policy", Value: "orders"}}
	tests := []struct {
		name string
		req  authz.Request
		code authz.Code
	}{
		{"the default policy's route is no route under billing",
			authz.Request{Path: "/api/users", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Admin}}, authz.CodeNoRoute},
		{"billing's route under billing", authz.Request{Path: "/invoices/7", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Admin}}, ""},
		{"billing's route is no route under the default policy", authz.Request{Path: "/invoices/7", Headers: authz.HeaderMap{"x-api-key": f.Admin}}, authz.CodeNoRoute},
		{"orders reads its own source only", authz.Request{Path: "/orders/1", ContextExtensions: orders, Headers: authz.HeaderMap{"x-api-key": f.Admin}}, authz.CodeMissingKey},
		{"orders' source", authz.Request{Path: "/orders/1", ContextExtensions: orders, Headers: authz.HeaderMap{"x-orders-key": f.Admin}}, ""},
		{"orders' default rate of 1/h", authz.Request{Path: "/orders/2", ContextExtensions: orders, Headers: authz.HeaderMap{"x-orders-key": f.Admin}}, authz.CodeRateLimited},
		{"the default policy's rate is its own", authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Admin}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.Decide(tt.req)
			assert.Equal(t, tt.code, d.Code, d.Message)
		})
	}
}

// One pattern in two policies is two routes: a key's count on one is not
// its count on the other.
func TestTheSameRouteInTwoPoliciesCountsApart(t *testing.T) {
	limited := ratelimit.Rate{N: 1, Window: time.Hour}
	f := authztest.New(t, func(o *authz.Options) {
		o.DefaultRate = ratelimit.Rate{}
		o.Routes = []authz.RouteSpec{{Path: "/x", RateLimit: limited}}
		o.Policies = []authz.PolicySpec{{Name: "b", Match: authz.Match{Hosts: []string{"b.example.com"}},
			Routes: []authz.RouteSpec{{Path: "/x", RateLimit: limited}}, Sources: authztest.Sources()}}
	})
	for _, host := range []string{"a.example.com", "b.example.com"} {
		d := f.Decide(authz.Request{Path: "/x", Host: host, Headers: authz.HeaderMap{"x-api-key": f.Admin}})
		assert.Equal(t, authz.Code(""), d.Code, "first call on %s: %s", host, d.Message)
	}
	d := f.Decide(authz.Request{Path: "/x", Host: "b.example.com", Headers: authz.HeaderMap{"x-api-key": f.Admin}})
	assert.Equal(t, authz.CodeRateLimited, d.Code)
}

// A policy's own default is counted by the policy, not by its rate: a
// reload that changes the rate keeps the count (carried over to the new
// window), as a route's count is kept, so a key is not given the new rate
// afresh on top of the old one while the reload reaches the replicas. Nor
// does a change of the top-level default move the policy's count.
func TestAPolicysOwnDefaultKeepsItsCountAcrossAReload(t *testing.T) {
	policyB := func(top, own ratelimit.Rate, declared bool) func(o *authz.Options) {
		return func(o *authz.Options) {
			o.DefaultRate = top
			o.Policies = []authz.PolicySpec{{Name: "b", Match: authz.Match{Hosts: []string{"b.example.com"}},
				Routes: []authz.RouteSpec{{Path: "/x"}}, Sources: authztest.Sources(), DefaultRate: own, OwnDefaultRate: declared}}
		}
	}
	twoAnHour := ratelimit.Rate{N: 2, Window: time.Hour}
	tests := []struct {
		name        string
		before, now func(o *authz.Options)
		more        int // allowed after the reload
	}{
		{"its window shortened", policyB(ratelimit.Rate{N: 100, Window: time.Minute}, twoAnHour, true),
			policyB(ratelimit.Rate{N: 100, Window: time.Minute}, ratelimit.Rate{N: 2, Window: 30 * time.Minute}, true), 0},
		{"its N raised", policyB(ratelimit.Rate{N: 100, Window: time.Minute}, twoAnHour, true),
			policyB(ratelimit.Rate{N: 100, Window: time.Minute}, ratelimit.Rate{N: 3, Window: time.Hour}, true), 1},
		{"the top-level default made equal to it", policyB(ratelimit.Rate{N: 100, Window: time.Minute}, twoAnHour, true),
			policyB(twoAnHour, twoAnHour, true), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := authztest.New(t, tt.before)
			req := authz.Request{Path: "/x", Host: "b.example.com", Headers: authz.HeaderMap{"x-api-key": f.Admin}}
			allowed := func() (n int) {
				for range 4 {
					if f.Decide(req).Allowed() {
						n++
					}
				}
				return n
			}
			require.Equal(t, 2, allowed(), "2/h under policy b")

			o := authztest.Options()
			tt.now(&o)
			set, err := authz.Compile(o)
			require.NoError(t, err)
			f.Authz.SetPolicies(set)
			f.Now = f.Now.Add(time.Minute)
			assert.Equal(t, tt.more, allowed(), "the 2 made a minute ago still count under the new default")
		})
	}

	// Two policies with the same default of their own count apart, as two
	// policies with different ones do: each is its service's.
	f := authztest.New(t, func(o *authz.Options) {
		o.DefaultRate = ratelimit.Rate{N: 100, Window: time.Minute}
		for _, name := range []string{"b", "c"} {
			o.Policies = append(o.Policies, authz.PolicySpec{Name: name, Match: authz.Match{Hosts: []string{name + ".example.com"}},
				Routes: []authz.RouteSpec{{Path: "/x"}}, Sources: authztest.Sources(), DefaultRate: twoAnHour, OwnDefaultRate: true})
		}
	})
	for _, host := range []string{"b.example.com", "c.example.com"} {
		for i := range 3 {
			d := f.Decide(authz.Request{Path: "/x", Host: host, Headers: authz.HeaderMap{"x-api-key": f.Admin}})
			assert.Equal(t, i < 2, d.Allowed(), "check %d on %s: %s", i+1, host, d.Message)
		}
	}
}

func TestAScopedKeyIsRefusedUnderOtherPolicies(t *testing.T) {
	f := authztest.New(t, meshOptions)
	scoped := f.AddKey(t, &keystore.Key{ID: "key_scoped", Name: "billing job", Permissions: []string{"admin"}, Policies: []string{"billing"}})
	both := f.AddKey(t, &keystore.Key{ID: "key_both", Name: "two", Permissions: []string{"admin"}, Policies: []string{"billing", "default"}})
	tests := []struct {
		name   string
		key    string
		policy string
		code   authz.Code
	}{
		{"a key scoped to billing works under billing", scoped, "billing", ""},
		{"a key scoped to billing is refused under the default policy", scoped, "default", authz.CodePolicyNotAllowed},
		{"a key scoped to billing is refused under orders", scoped, "orders", authz.CodePolicyNotAllowed},
		{"a key naming default works under the default policy", both, "default", ""},
		{"a key naming two policies works under each", both, "billing", ""},
		{"an unscoped key works under every policy", f.Admin, "orders", ""},
	}
	paths := map[string]string{"billing": "/invoices/1", "orders": "/orders/1", "default": "/api/users"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.Decide(authz.Request{Path: paths[tt.policy], PolicyFromPath: true, PolicyName: tt.policy,
				Headers: authz.HeaderMap{"x-api-key": tt.key, "x-orders-key": tt.key}})
			assert.Equal(t, tt.code, d.Code, d.Message)
			if tt.code != "" {
				assert.Equal(t, 403, d.Code.HTTPStatus())
				assert.Equal(t, `API key is not valid under policy "`+tt.policy+`"`, d.Message)
				assert.False(t, d.Identified(), "a refused key is not named upstream")
			}
		})
	}
	// The scope is checked after the key is known to be the caller's: an
	// address outside its allowlist is that, wherever it is used.
	fromOutside := f.AddKey(t, &keystore.Key{ID: "key_ip", Name: "ip", Permissions: []string{"admin"}, Policies: []string{"billing"},
		IPAllowlist: f.Keys.Get(f.Hasher.Hash(f.Good)).IPAllowlist})
	d := f.Decide(authz.Request{Path: "/orders/1", Peer: "192.0.2.1", PolicyFromPath: true, PolicyName: "orders", Headers: authz.HeaderMap{"x-orders-key": fromOutside}})
	assert.Equal(t, authz.CodeIPNotAllowed, d.Code)
}

func TestShadowModeDecidesButAllows(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) {
		meshOptions(o)
		o.Policies[0].Mode = authz.ModeShadow
		o.Policies[0].Routes = append(o.Policies[0].Routes, authz.RouteSpec{Path: "/enforced", Permissions: []string{"x"}, Mode: authz.ModeEnforce})
		o.Policies[1].Mode = authz.ModeShadow
		o.Routes = append(o.Routes, authz.RouteSpec{Path: "/trial/**", Permissions: []string{"trial"}, Mode: authz.ModeShadow})
	})
	billing := []authz.Header{{Key: "policy", Value: "billing"}}
	orders := []authz.Header{{Key: "policy", Value: "orders"}}
	scopedElsewhere := f.AddKey(t, &keystore.Key{ID: "key_orders", Name: "o", Permissions: []string{"admin"}, Policies: []string{"orders"}})
	tests := []struct {
		name       string
		req        authz.Request
		code       authz.Code // what the decision was
		shadow     bool
		allowed    bool
		identified bool
	}{
		{"a shadow policy allows a request without a key, recording missing_key",
			authz.Request{Path: "/invoices/1", ContextExtensions: billing}, authz.CodeMissingKey, true, true, false},
		{"a shadow policy allows an invalid key, recording invalid_key",
			authz.Request{Path: "/invoices/1", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": "sk_nonsense"}}, authz.CodeInvalidKey, true, true, false},
		{"a shadow policy allows a key without the permission, and does not name it upstream",
			authz.Request{Path: "/invoices/1", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodePermissionDenied, true, true, false},
		{"a shadow policy allows a key scoped elsewhere, recording policy_not_allowed",
			authz.Request{Path: "/invoices/1", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": scopedElsewhere}}, authz.CodePolicyNotAllowed, true, true, false},
		{"a shadow policy allows a malformed path, recording bad_request",
			authz.Request{Path: "/orders/../x", ContextExtensions: orders}, authz.CodeBadRequest, true, true, false},
		{"a shadow policy allows a path whose spellings get other routes",
			authz.Request{Path: "/index.php/orders/1", ContextExtensions: orders}, authz.CodeBadRequest, true, true, false},
		// But not where a route of it enforces: the upstream may serve such
		// a path as that route (/enforced/../enforced, /enforced/ and
		// /index.php/enforced are all /enforced to some upstream).
		{"a shadow policy with an enforce route refuses a malformed path",
			authz.Request{Path: "/invoices/../enforced", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodeBadRequest, false, false, false},
		{"a shadow policy with an enforce route refuses a slash that changes the route",
			authz.Request{Path: "/enforced/", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodeBadRequest, false, false, false},
		{"a shadow policy with an enforce route refuses a script's path info",
			authz.Request{Path: "/index.php/enforced", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodeBadRequest, false, false, false},
		{"a shadow policy with an enforce route still shadows what no route claims",
			authz.Request{Path: "/elsewhere", ContextExtensions: billing}, authz.CodeNoRoute, true, true, false},
		{"a shadow policy's would-be allow names the key upstream",
			authz.Request{Path: "/invoices/1", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Admin}}, "", true, true, true},
		{"an enforce route in a shadow policy denies",
			authz.Request{Path: "/enforced", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodePermissionDenied, false, false, false},
		{"a shadow route in an enforce policy allows",
			authz.Request{Path: "/trial/a", Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodePermissionDenied, true, true, false},
		{"the enforce policy's other routes deny",
			authz.Request{Path: "/api/reports/a", Headers: authz.HeaderMap{"x-api-key": f.Good}}, authz.CodePermissionDenied, false, false, false},
		{"no policy is never shadow",
			authz.Request{Path: "/invoices/1", ContextExtensions: []authz.Header{{Key: "policy", Value: "payroll"}}}, authz.CodeNoPolicy, false, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.Decide(tt.req)
			assert.Equal(t, tt.code, d.Code, d.Message)
			assert.Equal(t, tt.shadow, d.Shadow)
			assert.Equal(t, tt.allowed, d.Allowed())
			assert.Equal(t, tt.identified, d.Identified())
			if tt.shadow {
				assert.Equal(t, authz.ModeShadow, d.Mode())
				assert.Empty(t, d.ResponseHeaders(nil), "a shadow decision leaves no trace on the client's answer")
			}
			if !tt.identified {
				assert.Empty(t, d.IdentityHeaders(nil))
				assert.Empty(t, d.MetaHeaders(nil, false))
			}
		})
	}
}

func TestForwardedMetadataIsSetOnlyForAnIdentifiedKey(t *testing.T) {
	f := authztest.New(t, meshOptions)
	withMeta := f.AddKey(t, &keystore.Key{ID: "key_meta", Name: "m", Permissions: []string{"read:invoices"},
		Meta: map[string]string{"plan": "gold", "tenant_id": "t-42", "internal": "not forwarded"}})
	billing := []authz.Header{{Key: "policy", Value: "billing"}}
	d := f.Decide(authz.Request{Path: "/invoices/1", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": withMeta}})
	require.Equal(t, authz.Code(""), d.Code, d.Message)
	assert.Equal(t, []authz.Header{{Key: "x-authz-meta-plan", Value: "gold"}, {Key: "x-authz-meta-tenant-id", Value: "t-42"}}, d.MetaHeaders(nil, false))

	// A key without the entry: nothing, or a blank to overwrite with.
	d = f.Decide(authz.Request{Path: "/invoices/1", ContextExtensions: billing, Headers: authz.HeaderMap{"x-api-key": f.Admin}})
	require.Equal(t, authz.Code(""), d.Code, d.Message)
	assert.Empty(t, d.MetaHeaders(nil, false))
	assert.Equal(t, []authz.Header{{Key: "x-authz-meta-plan"}, {Key: "x-authz-meta-tenant-id"}}, d.MetaHeaders(nil, true))

	// The default policy forwards nothing.
	d = f.Decide(authz.Request{Path: "/api/users", Headers: authz.HeaderMap{"x-api-key": f.Admin}})
	assert.Empty(t, d.MetaHeaders(nil, true))
}

// A client's own x-authz-meta-* headers are removed like every x-authz-*
// header, except those the response sets with a value (setting overwrites).
func TestSpoofedMetadataHeadersAreRemoved(t *testing.T) {
	f := authztest.New(t, meshOptions)
	withPlan := f.AddKey(t, &keystore.Key{ID: "key_plan", Name: "p", Permissions: []string{"read:invoices"}, Meta: map[string]string{"plan": "free"}})
	billing := []authz.Header{{Key: "policy", Value: "billing"}}
	spoof := authz.HeaderMap{"x-authz-meta-plan": "enterprise", "x-authz-meta-tenant-id": "other", "X_Authz_Meta_Plan": "enterprise", "x-authz-meta-admin": "1"}
	for name, tt := range map[string]struct {
		key  string
		keep []string
	}{
		"a key with the entry keeps (overwrites) its header": {withPlan, []string{"x-authz-meta-plan"}},
		"a key without any entry keeps none":                 {f.Admin, nil},
		"a request without a key keeps none":                 {"", nil},
		"a key the decision refuses keeps none":              {f.Good, nil},
	} {
		t.Run(name, func(t *testing.T) {
			h := authz.HeaderMap{}
			for k, v := range spoof {
				h[k] = v
			}
			if tt.key != "" {
				h["x-api-key"] = tt.key
			}
			req := authz.Request{Method: "GET", Path: "/invoices/1", ContextExtensions: billing, Headers: h, Peer: "10.1.2.3", XFFTrustedHops: -1}
			d := f.Decide(req)
			removed := req.AppendSpoofed(nil, &d, true)
			for k := range spoof {
				lower := strings.ToLower(k)
				kept := false
				for _, keep := range tt.keep {
					kept = kept || keep == k
				}
				assert.Equal(t, !kept, contains(removed, lower), "%s removed", k)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestPolicyConfigsThatCannotWorkAreRefused(t *testing.T) {
	named := func(name string, m authz.Match) authz.PolicySpec {
		return authz.PolicySpec{Name: name, Match: m, Sources: authztest.Sources()}
	}
	tests := []struct {
		name     string
		policies []authz.PolicySpec
		want     string
	}{
		{"a policy named default", []authz.PolicySpec{named("default", authz.Match{})}, `policies[0].name: "default" is the policy of the top-level settings`},
		{"two policies of one name", []authz.PolicySpec{named("a", authz.Match{}), named("a", authz.Match{})}, `policies[1].name: "a" names two policies`},
		{"a name with a capital", []authz.PolicySpec{named("Billing", authz.Match{})}, `policies[0].name: 1 to 63 characters`},
		{"two context selectors one request satisfies", []authz.PolicySpec{
			named("a", authz.Match{Context: map[string]string{"policy": "a"}}),
			named("b", authz.Match{Context: map[string]string{"tier": "gold"}}),
		}, `policies[1].match.context: a request with context_extensions {policy=a, tier=gold} would select both "a" and "b"`},
		{"two identical context selectors", []authz.PolicySpec{
			named("a", authz.Match{Context: map[string]string{"policy": "x"}}),
			named("b", authz.Match{Context: map[string]string{"policy": "x"}}),
		}, `would select both "a" and "b"`},
		{"an empty context value", []authz.PolicySpec{named("a", authz.Match{Context: map[string]string{"policy": ""}})}, `policies[0].match.context: keys and values must not be empty`},
		{"one principal in two policies", []authz.PolicySpec{
			named("a", authz.Match{Principals: []string{"spiffe://c/ns/a/sa/a"}}),
			named("b", authz.Match{Principals: []string{"spiffe://c/ns/a/sa/a"}}),
		}, `policies[1].match.principals[0]: "spiffe://c/ns/a/sa/a" already selects policy "a"`},
		{"an empty principal", []authz.PolicySpec{named("a", authz.Match{Principals: []string{""}})}, `policies[0].match.principals[0]`},
		{"a principal as Istio's AuthorizationPolicy writes it", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"cluster.local/ns/a/sa/a"}})},
			`policies[0].match.principals[0]: "cluster.local/ns/a/sa/a" is how Istio's AuthorizationPolicy writes a principal, but Envoy reports the destination's as its certificate's URI SAN: write "spiffe://cluster.local/ns/a/sa/a"`},
		{"a placeholder left in a principal's trust domain", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://${TRUST_DOMAIN}/ns/a/sa/a"}})},
			`policies[0].match.principals[0]: "spiffe://${TRUST_DOMAIN}/ns/a/sa/a" is no SPIFFE ID (a trust domain is lower-case letters`},
		{"a principal in Kubernetes' $(VAR) form", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://$(TD)/ns/a/sa/a"}})}, `is no SPIFFE ID`},
		{"a placeholder in a principal's path", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://cluster.local/ns/${NS}/sa/a"}})}, `a path segment is letters`},
		{"a principal's trust domain in capitals", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://Cluster.Local/ns/a/sa/a"}})}, `is no SPIFFE ID`},
		{"a principal's scheme in capitals", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"SPIFFE://cluster.local/ns/a/sa/a"}})}, `in lower case`},
		{"a principal with a port", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://cluster.local:443/ns/a/sa/a"}})}, `no port`},
		{"a principal with a trailing slash", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://cluster.local/ns/a/sa/a/"}})}, `an empty path segment`},
		{"a principal with a doubled slash", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://cluster.local//ns/a/sa/a"}})}, `an empty path segment`},
		{"a principal with a dot segment", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://cluster.local/ns/../sa/a"}})}, `".." path segment`},
		{"a principal without a trust domain", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe:///ns/a/sa/a"}})}, `no trust domain`},
		{"a principal with a query", []authz.PolicySpec{named("a", authz.Match{Principals: []string{"spiffe://cluster.local/ns/a/sa/a?x=1"}})}, `is no SPIFFE ID`},
		{"one host in two policies", []authz.PolicySpec{
			named("a", authz.Match{Hosts: []string{"a.example.com"}}),
			named("b", authz.Match{Hosts: []string{"x.example.com", "a.example.com"}}),
		}, `policies[1].match.hosts[1]: "a.example.com" already selects policy "a"`},
		{"one suffix in two policies", []authz.PolicySpec{
			named("a", authz.Match{Hosts: []string{"*.example.com"}}),
			named("b", authz.Match{Hosts: []string{"*.example.com"}}),
		}, `already selects policy "a"`},
		{"a host with a port never matches", []authz.PolicySpec{named("a", authz.Match{Hosts: []string{"a.example.com:8443"}})}, `leave the port out`},
		{"a host in capitals", []authz.PolicySpec{named("a", authz.Match{Hosts: []string{"A.example.com"}})}, `write it so`},
		{"a host with a trailing dot", []authz.PolicySpec{named("a", authz.Match{Hosts: []string{"a.example.com."}})}, `not a host name`},
		{"a lone wildcard", []authz.PolicySpec{named("a", authz.Match{Hosts: []string{"*"}})}, `no other wildcard`},
		{"a wildcard at the end", []authz.PolicySpec{named("a", authz.Match{Hosts: []string{"billing.*"}})}, `no other wildcard`},
		{"a wildcard inside a label", []authz.PolicySpec{named("a", authz.Match{Hosts: []string{"*billing.example.com"}})}, `no other wildcard`},
		{"forwarding a metadata name no key can have", []authz.PolicySpec{{Name: "a", Sources: authztest.Sources(), ForwardMeta: []string{"Plan"}}}, `policies[0].forward_meta[0]`},
		{"forwarding one entry twice", []authz.PolicySpec{{Name: "a", Sources: authztest.Sources(), ForwardMeta: []string{"plan", "plan"}}}, `policies[0].forward_meta[1]: "plan" is named twice`},
		{"a bad route in a policy names its path", []authz.PolicySpec{{Name: "a", Sources: authztest.Sources(), Routes: []authz.RouteSpec{{Path: "x"}}}}, `policies[0].routes[0] "x": path must start with /`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := authztest.Options()
			o.Policies = tt.policies
			_, err := authz.Compile(o)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	// Disjoint selectors of every kind compile.
	o := authztest.Options()
	meshOptions(&o)
	o.Policies = append(o.Policies, named("gold", authz.Match{Context: map[string]string{"policy": "billing-gold", "tier": "gold"}}),
		// What else Envoy reports when a certificate has no URI SAN: its
		// first DNS SAN, or its subject.
		named("dns", authz.Match{Principals: []string{"billing.internal.example.com", "CN=billing/eu,O=Acme"}}),
		// SPIFFE IDs as certificates carry them: a trust domain alone, and
		// a path of any letters.
		named("spiffe", authz.Match{Principals: []string{"spiffe://example.org", "spiffe://prod.example-org_1/Team.A/svc-1_x"}}))
	_, err := authz.Compile(o)
	require.NoError(t, err)
}

func TestExplainShowsWhatAppliesBeforeAnyKey(t *testing.T) {
	f := authztest.New(t, func(o *authz.Options) { meshOptions(o); o.Policies[0].Mode = authz.ModeShadow })
	e := f.Policies.Explain(&authz.Request{Method: "get", Path: "/invoices/1?x=1", Host: "billing.example.com", Headers: authz.HeaderMap{}, XFFTrustedHops: -1})
	assert.Equal(t, authz.CodeBadRequest, e.Code, "a lower-case method is refused as Decide refuses it")
	e = f.Policies.Explain(&authz.Request{Method: "GET", Path: "/invoices/1?x=1", Host: "billing.example.com", Headers: authz.HeaderMap{}, XFFTrustedHops: -1})
	require.NotNil(t, e.Policy)
	assert.Equal(t, "billing", e.Policy.Name)
	assert.Equal(t, authz.SelectedByHost, e.SelectedBy)
	assert.Equal(t, "host", e.SelectedBy.String())
	require.NotNil(t, e.Route)
	assert.Equal(t, "/invoices/**", e.Route.Pattern)
	assert.Equal(t, []string{"read:invoices"}, e.Route.Permissions)
	assert.Equal(t, "/invoices/1", e.Path)
	assert.True(t, e.Shadow)
	assert.Equal(t, authz.Code(""), e.Code)
}

// HTTP mode reads the auth path by one policy set (it cuts /_policy/<name>
// off the path only when the set has named policies) and must decide it by
// the same one: a reload between the two that dropped the named policies
// would decide the cut path under the new default policy.
func TestDecideUnderDecidesByTheSetItIsGiven(t *testing.T) {
	named := authztest.New(t, meshOptions)
	plain := authztest.New(t, nil)
	readBy := named.Authz.Policies()
	require.True(t, readBy.Named())
	named.Authz.SetPolicies(plain.Authz.Policies()) // the reload, in between

	req := authz.Request{Method: "GET", Path: "/invoices/7", PolicyFromPath: true, PolicyName: "billing", Headers: authz.HeaderMap{}}
	var d authz.Decision
	named.Authz.DecideUnder(t.Context(), readBy, &req, &d)
	assert.Equal(t, "billing", d.PolicyName(), "decided by the set the path was read by")

	req = authz.Request{Method: "GET", Path: "/invoices/7", PolicyFromPath: true, PolicyName: "billing", Headers: authz.HeaderMap{}}
	d = authz.Decision{}
	named.Authz.Decide(t.Context(), &req, &d)
	assert.Equal(t, "default", d.PolicyName(), "Decide takes the set in force")
}
