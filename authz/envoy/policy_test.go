package envoy

import (
	"context"
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
)

// meshFixture decides with the fixture's routes as the default policy, and
// two more: billing (context policy=billing, its principal, its hosts; it
// forwards plan and tenant_id) and orders (context policy=orders, its
// hosts, shadow mode).
func meshFixture(t testing.TB) *authztest.Fixture {
	return authztest.New(t, func(o *authz.Options) {
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
				Name:    "orders",
				Match:   authz.Match{Context: map[string]string{"policy": "orders"}, Hosts: []string{"orders.example.com"}},
				Routes:  []authz.RouteSpec{{Path: "/orders/**", Permissions: []string{"read:orders"}}},
				Sources: authztest.Sources(),
				Mode:    authz.ModeShadow,
			},
		}
	})
}

// meshRequest is a CheckRequest as Envoy sends it for path on host, with
// the headers, context_extensions and destination principal given.
func meshRequest(path, host string, headers, ext map[string]string, principal string) *authv3.CheckRequest {
	in := checkRequest(headers)
	in.Attributes.Request.Http.Path, in.Attributes.Request.Http.Host = path, host
	in.Attributes.ContextExtensions = ext
	if principal != "" {
		in.Attributes.Destination = &authv3.AttributeContext_Peer{Principal: principal}
	}
	return in
}

// metadata is dynamic_metadata as Envoy reads it: the Struct decoded from
// the response bytes by the generated types, as plain values.
func metadata(t *testing.T, resp *authv3.CheckResponse) map[string]any {
	t.Helper()
	md := resp.GetDynamicMetadata()
	require.NotNil(t, md, "every CheckResponse carries dynamic_metadata")
	return md.AsMap()
}

// Over a real gRPC connection, each selector picks its policy: the
// dynamic metadata names it and the policy's own route decides.
func TestEachSelectorChoosesItsPolicyOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_inv", Name: "invoices", Owner: "acme", Permissions: []string{"read:invoices", "read:users"}})
	h := map[string]string{"x-api-key": key}
	tests := []struct {
		name   string
		in     *authv3.CheckRequest
		policy string
		route  string
		code   codes.Code
	}{
		{"context_extensions pick billing on any host", meshRequest("/invoices/7", "orders.example.com", h, map[string]string{"policy": "billing"}, ""), "billing", "/invoices/**", codes.OK},
		{"the destination principal picks billing", meshRequest("/invoices/7", "api.example.com", h, nil, "spiffe://cluster.local/ns/billing/sa/billing"), "billing", "/invoices/**", codes.OK},
		{"a host suffix picks billing", meshRequest("/invoices/7", "EU.Billing.example.com:443", h, nil, ""), "billing", "/invoices/**", codes.OK},
		{"nothing picks the default policy, where /invoices is no route", meshRequest("/invoices/7", "api.example.com", h, nil, ""), "default", "", codes.PermissionDenied},
		{"the default policy's own route", meshRequest("/api/users", "api.example.com", h, nil, ""), "default", "/api/users", codes.OK},
		{"an unknown context value is no policy", meshRequest("/invoices/7", "billing.example.com", h, map[string]string{"policy": "payroll"}, ""), "", "", codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), tt.in)
			require.NoError(t, err)
			assert.Equal(t, int32(tt.code), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			md := metadata(t, resp)
			if tt.policy == "" {
				assert.NotContains(t, md, "policy")
				assert.Equal(t, "no_policy", md["code"])
				return
			}
			assert.Equal(t, tt.policy, md["policy"])
			if tt.route == "" {
				assert.NotContains(t, md, "route")
			} else {
				assert.Equal(t, tt.route, md["route"])
			}
		})
	}
}

func TestAScopedKeyIsRefusedElsewhereOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_billing", Name: "billing job", Permissions: []string{"admin"}, Policies: []string{"billing"}})
	h := map[string]string{"x-api-key": key}

	resp, err := client.Check(context.Background(), meshRequest("/invoices/1", "billing.example.com", h, nil, ""))
	require.NoError(t, err)
	assert.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())

	resp, err = client.Check(context.Background(), meshRequest("/api/users", "api.example.com", h, nil, ""))
	require.NoError(t, err)
	assert.Equal(t, int32(codes.PermissionDenied), resp.GetStatus().GetCode())
	denied := resp.GetDeniedResponse()
	require.NotNil(t, denied)
	assert.Equal(t, int32(403), int32(denied.GetStatus().GetCode()))
	assert.JSONEq(t, `{"error":"API key is not valid under policy \"default\"","code":"policy_not_allowed"}`, denied.GetBody())
	md := metadata(t, resp)
	assert.Equal(t, "policy_not_allowed", md["code"])
	assert.Equal(t, "key_billing", md["key_id"], "the key is known: the access log can say whose it was")
}

// Every field the decision knows is in dynamic_metadata, typed as Envoy's
// filters read them, for allowed and denied checks alike; the forwarded
// metadata reaches the upstream as headers.
func TestDynamicMetadataCarriesTheDecision(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_meta", Name: "billing svc", Owner: "acme", Permissions: []string{"read:invoices", "read:users"},
		Meta: map[string]string{"plan": "gold", "tenant_id": "t-42", "region": "eu"}})
	bare := fx.AddKey(t, &keystore.Key{ID: "key_bare", Name: "bare", Permissions: []string{}})
	billing := map[string]string{"policy": "billing"}

	resp, err := client.Check(context.Background(), meshRequest("/invoices/1", "x", map[string]string{"x-api-key": key}, billing, ""))
	require.NoError(t, err)
	require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
	assert.Equal(t, map[string]any{
		"decision": "allow", "mode": "enforce", "policy": "billing", "route": "/invoices/**",
		"key_id": "key_meta", "key_name": "billing svc", "owner": "acme",
		"permissions": []any{"read:invoices", "read:users"},
		"meta":        map[string]any{"plan": "gold", "tenant_id": "t-42", "region": "eu"},
	}, metadata(t, resp))
	up := upstreamHeaders(t, resp)
	assert.Equal(t, "gold", up["x-authz-meta-plan"])
	assert.Equal(t, "t-42", up["x-authz-meta-tenant-id"])
	assert.NotContains(t, up, "x-authz-meta-region", "only what the policy forwards")

	// The same key again: the memoized bytes, the same answer.
	again, err := client.Check(context.Background(), meshRequest("/invoices/2", "x", map[string]string{"x-api-key": key}, billing, ""))
	require.NoError(t, err)
	assert.Equal(t, metadata(t, resp), metadata(t, again))

	tests := []struct {
		name string
		in   *authv3.CheckRequest
		want map[string]any
	}{
		{"a missing key: no key fields", meshRequest("/invoices/1", "x", nil, billing, ""),
			map[string]any{"decision": "deny", "mode": "enforce", "code": "missing_key", "policy": "billing", "route": "/invoices/**"}},
		{"a key without the permission: the key and the code", meshRequest("/invoices/1", "x", map[string]string{"x-api-key": bare}, billing, ""),
			map[string]any{"decision": "deny", "mode": "enforce", "code": "permission_denied", "policy": "billing", "route": "/invoices/**",
				"key_id": "key_bare", "key_name": "bare", "owner": "default", "permissions": []any{}, "meta": map[string]any{}}},
		{"no route: no route field", meshRequest("/nowhere", "x", nil, billing, ""),
			map[string]any{"decision": "deny", "mode": "enforce", "code": "no_route", "policy": "billing"}},
		{"a public route", meshRequest("/healthz", "x", nil, nil, ""),
			map[string]any{"decision": "allow", "mode": "enforce", "policy": "default", "route": "/healthz"}},
		{"a shadow policy's would-be denial", meshRequest("/orders/1", "x", map[string]string{"x-api-key": bare}, map[string]string{"policy": "orders"}, ""),
			map[string]any{"decision": "deny", "mode": "shadow", "code": "permission_denied", "policy": "orders", "route": "/orders/**",
				"key_id": "key_bare", "key_name": "bare", "owner": "default", "permissions": []any{}, "meta": map[string]any{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), tt.in)
			require.NoError(t, err)
			assert.Equal(t, tt.want, metadata(t, resp))
		})
	}
}

// The hand-encoded field is exactly what the generated Struct would be:
// decoding it gives the message structpb builds from the same values.
func TestTheEncodedMetadataIsAStruct(t *testing.T) {
	k := &keystore.Key{ID: "key_1", Name: `quote " and ключ`, Permissions: []string{"a", "b:c"}, Meta: map[string]string{"z": "1", "a": "2"}}
	var d authz.Decision
	d.Key = k
	d.Deny(authz.CodeRateLimited, "")
	b := dynamicMetadata(&d, keyMetadata(k))
	var resp authv3.CheckResponse
	require.NoError(t, proto.Unmarshal(b, &resp))
	want, err := structpb.NewStruct(map[string]any{
		"decision": "deny", "mode": "enforce", "code": "rate_limited",
		"key_id": "key_1", "key_name": `quote " and ключ`, "owner": "default", "permissions": []any{"a", "b:c"},
		"meta": map[string]any{"z": "1", "a": "2"},
	})
	require.NoError(t, err)
	assert.True(t, proto.Equal(want, resp.GetDynamicMetadata()), "got %v", resp.GetDynamicMetadata())
	assert.Empty(t, resp.ProtoReflect().GetUnknown(), "nothing but the field")
}

// In shadow mode the check is answered OK whatever the decision was, with
// the credential still stripped, spoofed identity headers still removed,
// and identity headers only when the decision itself allowed the key.
func TestAShadowDecisionIsAllowedOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	bare := fx.AddKey(t, &keystore.Key{ID: "key_bare", Name: "bare", Permissions: []string{}})
	reader := fx.AddKey(t, &keystore.Key{ID: "key_reader", Name: "reader", Permissions: []string{"read:orders"}})
	orders := map[string]string{"policy": "orders"}

	for _, tt := range []struct {
		name     string
		headers  map[string]string
		code     string
		identity bool
	}{
		{"no key", map[string]string{"x-authz-key-id": "spoofed"}, "missing_key", false},
		{"an invalid key", map[string]string{"x-api-key": "sk_nonsense", "x-authz-owner": "spoofed"}, "invalid_key", false},
		{"a key without the permission", map[string]string{"x-api-key": bare, "x-authz-key-id": "spoofed"}, "permission_denied", false},
		{"a key the decision allows", map[string]string{"x-api-key": reader, "x-authz-key-id": "spoofed"}, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest("/orders/1", "x", tt.headers, orders, ""))
			require.NoError(t, err)
			assert.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "shadow mode answers OK")
			ok := resp.GetOkResponse()
			require.NotNil(t, ok)
			assert.Empty(t, ok.GetResponseHeadersToAdd(), "no trace on the client's answer")
			up := upstreamHeaders(t, resp)
			if tt.identity {
				assert.Equal(t, "key_reader", up["x-authz-key-id"])
			} else {
				assert.NotContains(t, up, "x-authz-key-id")
				for name := range tt.headers {
					if name != "x-api-key" {
						assert.Contains(t, ok.GetHeadersToRemove(), name, "a spoofed identity header is removed")
					}
				}
			}
			if _, sent := tt.headers["x-api-key"]; sent {
				assert.Contains(t, ok.GetHeadersToRemove(), "x-api-key", "the credential never reaches the upstream")
			}
			md := metadata(t, resp)
			assert.Equal(t, "shadow", md["mode"])
			if tt.code == "" {
				assert.Equal(t, "allow", md["decision"])
				assert.NotContains(t, md, "code")
			} else {
				assert.Equal(t, "deny", md["decision"])
				assert.Equal(t, tt.code, md["code"])
			}
		})
	}
}

// A client's x-authz-meta-* headers never reach the upstream: removed, or
// overwritten by the key's own value.
func TestSpoofedMetadataHeadersAreRemovedOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	withPlan := fx.AddKey(t, &keystore.Key{ID: "key_plan", Name: "p", Permissions: []string{"read:invoices"}, Meta: map[string]string{"plan": "free"}})
	resp, err := client.Check(context.Background(), meshRequest("/invoices/1", "billing.example.com", map[string]string{
		"x-api-key": withPlan, "x-authz-meta-plan": "enterprise", "x-authz-meta-tenant-id": "victim", "x_authz_meta_plan": "enterprise",
	}, nil, ""))
	require.NoError(t, err)
	require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
	ok := resp.GetOkResponse()
	assert.Equal(t, "free", upstreamHeaders(t, resp)["x-authz-meta-plan"])
	for _, h := range ok.GetHeaders() {
		if h.GetHeader().GetKey() == "x-authz-meta-plan" {
			assert.Equal(t, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, h.GetAppendAction())
		}
	}
	assert.ElementsMatch(t, []string{"x-api-key", "x-authz-meta-tenant-id", "x_authz_meta_plan"}, ok.GetHeadersToRemove())
}

// A shadow policy's request refused before its key was looked for (a path
// that is not canonical, no route) is allowed all the same, so its
// credentials must be stripped all the same: this
// policy's wherever they are, and another service's key in that service's
// source. During a rollout most refusals are of this kind, and each would
// otherwise hand the upstream a key.
func TestAShadowRefusalBeforeTheKeyStillStripsEveryCredential(t *testing.T) {
	fx := authztest.New(t, func(o *authz.Options) {
		o.Policies = []authz.PolicySpec{
			{
				Name:    "orders",
				Match:   authz.Match{Context: map[string]string{"policy": "orders"}},
				Routes:  []authz.RouteSpec{{Path: "/orders/**", Permissions: []string{"read:orders"}}},
				Sources: authztest.Sources(),
				Mode:    authz.ModeShadow,
			},
			{
				Name:    "billing",
				Match:   authz.Match{Context: map[string]string{"policy": "billing"}},
				Routes:  []authz.RouteSpec{{Path: "/invoices/**", Permissions: []string{"read:invoices"}}},
				Sources: []authz.Source{authz.HeaderSource("x-billing-key", "")},
			},
		}
	})
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_orders", Name: "orders", Permissions: []string{"read:orders"}})
	billingKey := fx.AddKey(t, &keystore.Key{ID: "key_billing", Name: "billing", Permissions: []string{"read:invoices"}, Policies: []string{"billing"}})
	headers := map[string]string{
		"x-api-key": key, "authorization": "Bearer " + key, "cookie": "api_key=" + key + "; theme=dark",
		"x-billing-key": billingKey,
	}
	for _, tt := range []struct{ name, path, code string }{
		{"a path that is not canonical", "/orders//1?api_key=" + key, "bad_request"},
		{"a path no route takes", "/elsewhere?api_key=" + key, "no_route"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "x", headers, map[string]string{"policy": "orders"}, ""))
			require.NoError(t, err)
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "shadow mode answers OK")
			assert.Equal(t, tt.code, metadata(t, resp)["code"])
			ok := resp.GetOkResponse()
			assert.Subset(t, ok.GetHeadersToRemove(), []string{"x-api-key", "authorization", "x-billing-key"})
			assert.Contains(t, ok.GetQueryParametersToRemove(), "api_key")
			if cookie, set := upstreamHeaders(t, resp)["cookie"]; set {
				assert.Equal(t, "theme=dark", cookie)
			} else {
				assert.Contains(t, ok.GetHeadersToRemove(), "cookie")
			}
		})
	}
}

// A request past the header limits is read no further: its headers are
// dropped unread, so neither a credential nor a client's x-authz-* header
// among them could be named for removal. Shadow mode must not let it
// through: it is answered 400 as in enforce mode.
func TestAShadowPolicyRefusesARequestPastTheHeaderLimits(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	reader := fx.AddKey(t, &keystore.Key{ID: "key_reader", Name: "reader", Permissions: []string{"read:orders"}})
	headers := map[string]string{"x-api-key": reader, "x-authz-key-id": "key_admin", "x-authz-permissions": "admin"}
	for i := len(headers); i <= authz.MaxHeaders; i++ {
		headers[fmt.Sprintf("x-filler-%d", i)] = "1"
	}
	resp, err := client.Check(context.Background(), meshRequest("/orders/1", "x", headers, map[string]string{"policy": "orders"}, ""))
	require.NoError(t, err)
	assert.Equal(t, int32(codes.InvalidArgument), resp.GetStatus().GetCode(), "answered, not let through unread")
	assert.Nil(t, resp.GetOkResponse())
	md := metadata(t, resp)
	assert.Equal(t, "bad_request", md["code"])
	assert.Equal(t, "enforce", md["mode"])
	assert.Equal(t, "orders", md["policy"], "the context_extensions still select the policy the 400 is counted under")
}

// An IPv6 literal is "[...]" and at most a port: anything after the "]"
// is no literal, and a proxy matching "*.billing.example.com" as a suffix
// of the whole host (Envoy) routes "[::1]x.billing.example.com" to
// billing. Read as the literal alone it would be decided by the default
// policy, so it is refused as a host two readers route apart.
func TestAnIPv6LiteralWithMoreAfterItIsABadRequestOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_users", Name: "users", Permissions: []string{"read:users"}, Policies: []string{"default"}})
	for _, tt := range []struct {
		host string
		code codes.Code
	}{
		{"[::1]x.billing.example.com", codes.InvalidArgument},
		{"[::1]:1.billing.example.com", codes.InvalidArgument},
		{"[::1].billing.example.com", codes.InvalidArgument},
		{"[::1]:", codes.InvalidArgument},
		{"[::1]:80", codes.OK}, // a literal: the default policy, where the key is valid
		{"[2001:db8::1]", codes.OK},
		{"x.billing.example.com", codes.PermissionDenied}, // billing, where it is not
	} {
		t.Run(tt.host, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest("/api/users", tt.host, map[string]string{"x-api-key": key}, nil, ""))
			require.NoError(t, err)
			assert.Equal(t, int32(tt.code), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			if tt.code == codes.InvalidArgument {
				assert.Equal(t, "bad_request", metadata(t, resp)["code"])
			}
		})
	}
}

// A host longer than any DNS name is still matched by a proxy's
// "*.billing.example.com" as a suffix: it must not be decided by the
// default policy as a host no configured one could be.
func TestAnOverlongHostIsABadRequestOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_users", Name: "users", Permissions: []string{"read:users"}, Policies: []string{"default"}})
	host := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 63) + ".billing.example.com"
	resp, err := client.Check(context.Background(), meshRequest("/api/users", host, map[string]string{"x-api-key": key}, nil, ""))
	require.NoError(t, err)
	assert.Equal(t, int32(codes.InvalidArgument), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
	assert.Equal(t, "bad_request", metadata(t, resp)["code"])
}

// Envoy joins a header sent on two lines with ",": another service's key
// sent twice arrives as "<key>,<key>", which no key's shape matches whole.
// It is that service's key all the same, twice, and must not reach this
// upstream; a value of this upstream's own under the name still does.
func TestAnotherServicesKeySentTwiceIsStrippedOverGRPC(t *testing.T) {
	fx := authztest.New(t, func(o *authz.Options) {
		o.Policies = []authz.PolicySpec{{
			Name:    "billing",
			Match:   authz.Match{Context: map[string]string{"policy": "billing"}},
			Routes:  []authz.RouteSpec{{Path: "/invoices/**", Permissions: []string{"read:invoices"}}},
			Sources: []authz.Source{authz.HeaderSource("x-billing-key", ""), authz.HeaderSource("authorization", "Bearer")},
		}}
		o.Sources = []authz.Source{authz.HeaderSource("x-api-key", "")}
	})
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	users := fx.AddKey(t, &keystore.Key{ID: "key_users", Name: "users", Permissions: []string{"read:users"}})
	billing := fx.AddKey(t, &keystore.Key{ID: "key_billing", Name: "billing", Permissions: []string{"read:invoices"}})
	for _, tt := range []struct {
		name    string
		headers map[string]string
		removed []string
	}{
		{"the same key twice", map[string]string{"x-billing-key": billing + "," + billing}, []string{"x-billing-key"}},
		{"a key after something else", map[string]string{"x-billing-key": "x, " + billing}, []string{"x-billing-key"}},
		{"a Bearer key on the second line", map[string]string{"authorization": "Bearer eyJhbGciOi.x.y,Bearer " + billing}, []string{"authorization"}},
		{"this upstream's own tokens stay", map[string]string{"authorization": "Bearer eyJhbGciOi.x.y,Bearer abc"}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tt.headers["x-api-key"] = users
			resp, err := client.Check(context.Background(), meshRequest("/api/users", "api.example.com", tt.headers, nil, ""))
			require.NoError(t, err)
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			assert.ElementsMatch(t, append([]string{"x-api-key"}, tt.removed...), resp.GetOkResponse().GetHeadersToRemove())
		})
	}
}

// A shadow policy with a route that enforces answers a path it cannot
// read in enforce mode, over gRPC as Envoy asks: /enforced/ and
// /index.php/enforced are /enforced to some upstream, and a shadowed
// refusal would let them through to it. What no route claims stays
// shadowed.
func TestAShadowPolicysEnforcingRouteIsNotBypassedBySpellingOverGRPC(t *testing.T) {
	fx := authztest.New(t, func(o *authz.Options) {
		o.Policies = []authz.PolicySpec{{
			Name:  "orders",
			Match: authz.Match{Context: map[string]string{"policy": "orders"}},
			Routes: []authz.RouteSpec{
				{Path: "/orders/**", Permissions: []string{"read:orders"}},
				{Path: "/enforced", Permissions: []string{"admin:orders"}, Mode: authz.ModeEnforce},
			},
			Sources: authztest.Sources(),
			Mode:    authz.ModeShadow,
		}}
	})
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	reader := fx.AddKey(t, &keystore.Key{ID: "key_reader", Name: "reader", Permissions: []string{"read:orders"}})
	for _, tt := range []struct {
		path string
		code codes.Code
		mode string
	}{
		{"/enforced", codes.PermissionDenied, "enforce"},
		{"/enforced/", codes.InvalidArgument, "enforce"},
		{"/index.php/enforced", codes.InvalidArgument, "enforce"},
		{"/orders//../enforced", codes.InvalidArgument, "enforce"},
		{"/elsewhere", codes.OK, "shadow"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "x", map[string]string{"x-api-key": reader}, map[string]string{"policy": "orders"}, ""))
			require.NoError(t, err)
			assert.Equal(t, int32(tt.code), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			assert.Equal(t, tt.mode, metadata(t, resp)["mode"])
		})
	}
}

// Envoy joins a header sent on two lines with ",": a Bearer key on the
// second line of an Authorization header whose first line has another
// scheme (or an empty Bearer) reaches the upstream with the first unless
// it is removed. The header is present: stripped on a public route and
// beside another source's key, and an invalid key when it is the one read.
// A header with another scheme in every line stays the upstream's.
func TestABearerKeyOnALaterAuthorizationLineIsStrippedOverGRPC(t *testing.T) {
	fx := authztest.New(t, nil)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	for _, tt := range []struct {
		name    string
		path    string
		headers map[string]string
		code    string // "" = allowed
		removed []string
	}{
		{"after a Basic line, on a public route", "/healthz", map[string]string{"authorization": "Basic Zm9vOmJhcg==,Bearer " + fx.Good}, "", []string{"authorization"}},
		{"after an empty Bearer line, on a public route", "/healthz", map[string]string{"authorization": "Bearer,Bearer " + fx.Good}, "", []string{"authorization"}},
		{"after another scheme, with spaces", "/healthz", map[string]string{"authorization": "Token abc , bearer  " + fx.Good}, "", []string{"authorization"}},
		{"beside a key in x-api-key", "/api/users", map[string]string{"x-api-key": fx.Good, "authorization": "Basic Zm9vOmJhcg==,Bearer " + fx.Admin}, "", []string{"x-api-key", "authorization"}},
		{"read as the key, it is invalid", "/api/users", map[string]string{"authorization": "Basic Zm9vOmJhcg==,Bearer " + fx.Good}, "invalid_key", nil},
		{"another scheme on every line stays", "/healthz", map[string]string{"authorization": "Basic Zm9vOmJhcg==,Basic YmFyOmJheg=="}, "", nil},
		{"an empty Bearer on every line stays", "/healthz", map[string]string{"authorization": "Bearer,Bearer "}, "", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "api.example.com", tt.headers, nil, ""))
			require.NoError(t, err)
			if tt.code != "" {
				assert.Equal(t, tt.code, metadata(t, resp)["code"])
				assert.Nil(t, resp.GetOkResponse())
				return
			}
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			assert.ElementsMatch(t, tt.removed, resp.GetOkResponse().GetHeadersToRemove())
		})
	}
}

// A credential spelt so that some upstream reads it as a source's but the
// proxy, which strips by exact name, does not (api%5Fkey, api_key[],
// api_key%00x, a cookie API_KEY) cannot be stripped, so shadow mode must not
// let it through: the 400 is enforced, as past the header limits. So is a
// refusal before the key step (a path no route takes, one that is not
// canonical) of a request that carries such a spelling. A shadow refusal
// whose credentials are all strippable is still allowed.
func TestAShadowPolicyEnforcesACredentialItCannotStrip(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	reader := fx.AddKey(t, &keystore.Key{ID: "key_reader", Name: "reader", Permissions: []string{"read:orders"}})
	for _, tt := range []struct {
		name, path string
		headers    map[string]string
		enforced   bool
	}{
		{"an encoded underscore", "/orders/1?api%5Fkey=" + reader, nil, true},
		{"an array index", "/orders/1?api_key[]=" + reader, nil, true},
		{"a NUL", "/orders/1?api_key%00x=" + reader, nil, true},
		{"beside the exact name", "/orders/1?api_key=" + reader + "&api.key=" + reader, nil, true},
		{"a cookie in capitals", "/orders/1", map[string]string{"cookie": "API_KEY=" + reader}, true},
		{"on a path no route takes", "/elsewhere?api%5Fkey=" + reader, nil, true},
		{"on a path that is not canonical", "/orders//1?api%5Fkey=" + reader, nil, true},
		{"every credential strippable, no route", "/elsewhere?api_key=" + reader, nil, false},
		{"every credential strippable, allowed", "/orders/1?api_key=" + reader, nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "x", tt.headers, map[string]string{"policy": "orders"}, ""))
			require.NoError(t, err)
			md := metadata(t, resp)
			if !tt.enforced {
				require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "shadow mode answers OK")
				assert.Contains(t, resp.GetOkResponse().GetQueryParametersToRemove(), "api_key")
				return
			}
			assert.NotEqual(t, int32(codes.OK), resp.GetStatus().GetCode(), "let through with a key it cannot strip (code %s)", md["code"])
			assert.Nil(t, resp.GetOkResponse())
			assert.Equal(t, "enforce", md["mode"])
		})
	}
}

// A key of ours under another Authorization scheme ("Token <key>") is no
// Bearer credential, so it is not read as the key, but an upstream must
// not get it either (one that searches the value for "Bearer ", or that
// logs the header): the header is stripped whenever it holds a key of ours,
// under this policy's source and another's. A value of another scheme that
// holds none stays the upstream's.
func TestAKeyUnderAnotherAuthorizationSchemeIsStrippedUnread(t *testing.T) {
	fx, client := publicBillingFixture(t)
	notOurs := "Token sk_" + strings.Repeat("a", len(fx.Good)-3)
	for _, tt := range []struct {
		name, path, auth string
		headers          map[string]string
		ctx              map[string]string
		code             string // "" = allowed
		removed          []string
	}{
		{"on a public route", "/healthz", "Token " + fx.Good, nil, nil, "", []string{"authorization"}},
		{"after a space-less scheme", "/healthz", "Token=" + fx.Good, nil, nil, "", []string{"authorization"}},
		{"beside the key read", "/api/users", "Token " + fx.Admin, map[string]string{"x-api-key": fx.Good}, nil, "", []string{"x-api-key", "authorization"}},
		{"not read as the key", "/api/users", "Token " + fx.Good, nil, nil, "missing_key", nil},
		{"under another policy's source", "/invoices/1", "Token " + fx.Good, nil, map[string]string{"policy": "billing"}, "", []string{"authorization"}},
		{"another scheme's own value", "/healthz", "Basic Zm9vOmJhcg==", nil, nil, "", nil},
		{"a key's shape with a bad checksum", "/healthz", notOurs, nil, nil, "", nil},
		// Basic credentials encode the key: an upstream that takes an API
		// key as the Basic user (Stripe's clients send it so) reads it.
		{"as the Basic user", "/healthz", "Basic " + b64(fx.Good+":"), nil, nil, "", []string{"authorization"}},
		{"as the Basic password, the scheme in capitals, unpadded", "/healthz", "BASIC " + strings.TrimRight(b64("me:"+fx.Good), "="), nil, nil, "", []string{"authorization"}},
		{"as Basic credentials on a later line", "/healthz", "Token abc, Basic " + b64(fx.Good+":"), nil, nil, "", []string{"authorization"}},
		{"as Basic credentials, not read as the key", "/api/users", "Basic " + b64(fx.Good+":"), nil, nil, "missing_key", nil},
		{"as Basic credentials under another policy's source", "/invoices/1", "Basic " + b64(fx.Good+":"), nil, map[string]string{"policy": "billing"}, "", []string{"authorization"}},
		{"Basic credentials of a key's shape with a bad checksum", "/healthz", "Basic " + b64(notOurs[len("Token "):]+":"), nil, nil, "", nil},
		// Lenient decoders (Python's b64decode, Node's Buffer) skip bytes
		// outside the alphabet and read on past, or stop at, the padding:
		// what one of them reads as the key is stripped too.
		{"as Basic credentials with a byte a lenient decoder skips", "/healthz", "Basic " + junkIn(b64(fx.Good+":"), "*"), nil, nil, "", []string{"authorization"}},
		{"as Basic credentials with white space inside", "/healthz", "Basic " + junkIn(b64(fx.Good+":"), "\t"), nil, nil, "", []string{"authorization"}},
		{"as Basic credentials with data after the padding", "/healthz", "Basic " + padded(fx.Good+":") + "junk", nil, nil, "", []string{"authorization"}},
		{"as Basic credentials in the URL alphabet with a byte skipped", "/healthz", "Basic " + junkIn(base64.URLEncoding.EncodeToString([]byte("\xfb\xff:"+fx.Good)), "."), nil, nil, "", []string{"authorization"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			headers := map[string]string{"authorization": tt.auth}
			for k, v := range tt.headers {
				headers[k] = v
			}
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "api.example.com", headers, tt.ctx, ""))
			require.NoError(t, err)
			if tt.code != "" {
				assert.Equal(t, tt.code, metadata(t, resp)["code"])
				assert.Nil(t, resp.GetOkResponse())
				return
			}
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			assert.ElementsMatch(t, tt.removed, resp.GetOkResponse().GetHeadersToRemove())
		})
	}
}

// b64 is s in standard base64, as Basic credentials carry it.
func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// padded is s in standard base64 with its padding: bytes are added to s
// until its encoding needs some.
func padded(s string) string {
	for len(s)%3 == 0 {
		s += "x"
	}
	return b64(s)
}

// junkIn is s with junk put in its middle.
func junkIn(s, junk string) string { return s[:len(s)/2] + junk + s[len(s)/2:] }

// Another service's query or cookie credential, spelt so that an upstream
// reads it as that name but the proxy, which strips by exact name, does
// not (api%5Fkey, api_key[], API_KEY as a cookie), would carry a key of
// ours to this upstream unstripped: the request is refused, as for this
// policy's own names. Only when it holds a key of ours: the name is no
// credential here, and this upstream may use it for its own values.
func TestAnotherServicesCredentialSpeltToDodgeStrippingIsRefused(t *testing.T) {
	fx, client := publicBillingFixture(t)
	billing := map[string]string{"policy": "billing"}
	encoded := strings.ReplaceAll(fx.Good, "_", "%5F")
	for _, tt := range []struct {
		name, path string
		headers    map[string]string
		refused    bool
	}{
		{"an encoded underscore", "/invoices/1?api%5Fkey=" + fx.Good, nil, true},
		{"an array index", "/invoices/1?api_key[]=" + fx.Good, nil, true},
		{"the key itself percent-encoded", "/invoices/1?api.key=" + encoded, nil, true},
		{"beside a malformed escape", "/invoices/1?q=%zz&api%5Fkey=" + fx.Good, nil, true},
		{"a cookie in capitals", "/invoices/1", map[string]string{"cookie": "API_KEY=" + fx.Good}, true},
		{"a header with _ for -", "/invoices/1", map[string]string{"x_api_key": fx.Good}, true},
		{"a header with _ for -, the key inside", "/invoices/1", map[string]string{"x_api_key": "Token " + fx.Good}, true},
		{"a header with _ for - and no key of ours is this upstream's", "/invoices/1", map[string]string{"x_api_key": "their-own-value"}, false},
		{"the exact name is stripped, not refused", "/invoices/1?api_key=" + fx.Good, nil, false},
		{"a spelling with no key of ours is this upstream's", "/invoices/1?api%5Fkey=their-own-value", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "billing.example.com", tt.headers, billing, ""))
			require.NoError(t, err)
			if tt.refused {
				assert.Equal(t, "bad_request", metadata(t, resp)["code"])
				assert.Nil(t, resp.GetOkResponse())
				return
			}
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
		})
	}
}

// Another service's query or cookie credential is stripped when it holds a
// key of ours as some upstream reads it, not only when the value is one
// whole: with a newline or a space after it (a key file's), twice, or
// encoded as a cookie reader decodes it (percent-encoded for PHP, Rack and
// Node's cookie; a backslash escape in quotes for Python's SimpleCookie and
// werkzeug, which read "\163k_..." as "sk_..."). That service's own values
// under the name still reach the upstream.
func TestAKeyInsideAnotherServicesQueryOrCookieIsStripped(t *testing.T) {
	fx, client := publicBillingFixture(t) // the default policy's sources: x-api-key, Bearer, ?api_key, cookie api_key
	billing := map[string]string{"policy": "billing"}
	encoded := strings.ReplaceAll(fx.Good, "_", "%5F")
	for _, tt := range []struct {
		name, path string
		cookie     string
		stripped   bool
	}{
		{"query: a trailing newline", "/invoices/1?api_key=" + fx.Good + "%0A", "", true},
		{"query: a trailing space", "/invoices/1?api_key=" + fx.Good + "+", "", true},
		{"query: two keys in one value", "/invoices/1?api_key=" + fx.Good + "," + fx.Good, "", true},
		{"query: a malformed escape after the key", "/invoices/1?api_key=" + fx.Good + "%ZZ", "", true},
		{"query: the second of two values", "/invoices/1?api_key=theirs&api_key=" + fx.Good, "", true},
		{"query: that service's own value", "/invoices/1?api_key=theirs%0A", "", false},
		{"cookie: percent-encoded", "/invoices/1", "api_key=" + encoded, true},
		{"cookie: a trailing encoded newline", "/invoices/1", "api_key=" + fx.Good + "%0A", true},
		{"cookie: an octal escape in quotes", "/invoices/1", `api_key="\163` + fx.Good[1:] + `"`, true},
		{"cookie: a backslash before a letter", "/invoices/1", `api_key="` + fx.Good[:3] + `\` + fx.Good[3:] + `"`, true},
		{"cookie: that service's own value", "/invoices/1", `api_key="their\163own"`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var headers map[string]string
			if tt.cookie != "" {
				headers = map[string]string{"cookie": tt.cookie}
			}
			resp, err := client.Check(context.Background(), meshRequest(tt.path, "billing.example.com", headers, billing, ""))
			require.NoError(t, err)
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			ok := resp.GetOkResponse()
			stripped := slices.Contains(ok.GetQueryParametersToRemove(), "api_key") || slices.Contains(ok.GetHeadersToRemove(), "cookie")
			for _, h := range ok.GetHeaders() {
				if h.GetHeader().GetKey() == "cookie" && !strings.Contains(h.GetHeader().GetValue(), "api_key") {
					stripped = true
				}
			}
			assert.Equal(t, tt.stripped, stripped, "%v", ok)
		})
	}
}

// publicBillingFixture is the default policy and a "billing" policy (its
// routes all public, its one source x-billing-key), served over gRPC: the
// default policy's sources are then another service's to a request that
// selects billing.
func publicBillingFixture(t *testing.T) (*authztest.Fixture, authv3.AuthorizationClient) {
	fx := authztest.New(t, func(o *authz.Options) {
		o.Policies = []authz.PolicySpec{{
			Name:    "billing",
			Match:   authz.Match{Context: map[string]string{"policy": "billing"}},
			Routes:  []authz.RouteSpec{{Path: "/invoices/**", Public: true}},
			Sources: []authz.Source{authz.HeaderSource("x-billing-key", "")},
		}}
	})
	return fx, authv3.NewAuthorizationClient(serveChecks(t, fx))
}

// Istio hands a connection to a protected workload's TCP port to the same
// provider through Envoy's network ext_authz filter: a CheckRequest with the
// peers and no HTTP request. It must be refused, even under a policy whose
// every route is public: there is no method, path or key to decide on.
func TestAConnectionCheckWithoutAnHTTPRequestIsRefusedOverGRPC(t *testing.T) {
	fx := authztest.New(t, func(o *authz.Options) {
		o.Policies = []authz.PolicySpec{{
			Name:    "open",
			Match:   authz.Match{Principals: []string{"spiffe://cluster.local/ns/demo/sa/open"}},
			Routes:  []authz.RouteSpec{{Path: "/**", Public: true}},
			Sources: authztest.Sources(),
		}}
	})
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	socket := func(ip string, port uint32) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
		}}}
	}
	in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: socket("10.0.0.7", 41234), Principal: "spiffe://cluster.local/ns/demo/sa/client"},
		Destination: &authv3.AttributeContext_Peer{Address: socket("10.0.0.9", 5432), Principal: "spiffe://cluster.local/ns/demo/sa/open"},
	}}

	// The same peers with an HTTP request are allowed: the policy is selected.
	withHTTP := proto.Clone(in).(*authv3.CheckRequest)
	withHTTP.Attributes.Request = &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/x", Host: "open"}}
	resp, err := client.Check(context.Background(), withHTTP)
	require.NoError(t, err)
	require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())

	resp, err = client.Check(context.Background(), in)
	require.NoError(t, err, "a refusal, not an RPC error")
	assert.Equal(t, int32(codes.InvalidArgument), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
	assert.Nil(t, resp.GetOkResponse())
	assert.Equal(t, "bad_request", metadata(t, resp)["code"])
}

// Where the host selects the policy, an X-Forwarded-Host or Forwarded host
// of another policy's is 400 over gRPC: an upstream that trusts it would
// serve the request as that other service's.
func TestAForwardedHostOfAnotherPolicyIsABadRequestOverGRPC(t *testing.T) {
	fx := meshFixture(t)
	client := authv3.NewAuthorizationClient(serveChecks(t, fx))
	key := fx.AddKey(t, &keystore.Key{ID: "key_users", Name: "users", Permissions: []string{"read:users"}, Policies: []string{"default"}})
	for _, tt := range []struct {
		headers map[string]string
		code    codes.Code
	}{
		{map[string]string{"x-forwarded-host": "x.billing.example.com"}, codes.InvalidArgument},
		{map[string]string{"forwarded": "for=192.0.2.1;host=billing.example.com"}, codes.InvalidArgument},
		// Read as billing's by an upstream: Spring before 7.1 and Reactor
		// Netty find host= anywhere, Spring 7.1 and Jetty unescape, CGI,
		// WSGI and Rack read "_" as "-".
		{map[string]string{"forwarded": "for=192.0.2.1;xhost=billing.example.com"}, codes.InvalidArgument},
		{map[string]string{"forwarded": `for="host=billing.example.com"`}, codes.InvalidArgument},
		{map[string]string{"forwarded": `for=192.0.2.1;host="billing\.example\.com"`}, codes.InvalidArgument},
		{map[string]string{"x_forwarded_host": "billing.example.com"}, codes.InvalidArgument},
		{map[string]string{"x-forwarded-host": "api.example.org:443"}, codes.OK}, // no policy's, as the request's host
		{map[string]string{"forwarded": "for=192.0.2.1;proto=https"}, codes.OK},
		{map[string]string{}, codes.OK},
	} {
		headers := map[string]string{"x-api-key": key}
		maps.Copy(headers, tt.headers)
		// The request's host one of no policy, and empty (Host: with no
		// value, an empty :authority), which selects none either.
		for _, host := range []string{"api.example.org", ""} {
			resp, err := client.Check(context.Background(), meshRequest("/api/users", host, headers, nil, ""))
			require.NoError(t, err)
			assert.Equal(t, int32(tt.code), resp.GetStatus().GetCode(), "host %q, %v: %s", host, tt.headers, resp.GetStatus().GetMessage())
		}
	}
}

// Another service's header source without a scheme is stripped when its
// value holds a key of ours anywhere, not only when the whole value is one:
// "Token <key>" there is no credential of that service, but its upstream
// would get our key. A value of its own stays.
func TestAKeyInsideAnotherServicesHeaderIsStripped(t *testing.T) {
	fx, client := publicBillingFixture(t)
	for _, tt := range []struct {
		name, value string
		removed     []string
	}{
		{"the whole value", fx.Good, []string{"x-billing-key"}},
		{"after another scheme", "Token " + fx.Good, []string{"x-billing-key"}},
		{"in a list", "abc, " + fx.Good, []string{"x-billing-key"}},
		{"that service's own token", "billing-token-123", nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := client.Check(context.Background(), meshRequest("/healthz", "api.example.com", map[string]string{"x-billing-key": tt.value}, nil, ""))
			require.NoError(t, err)
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			assert.ElementsMatch(t, tt.removed, resp.GetOkResponse().GetHeadersToRemove())
		})
	}
}
