package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// meshConfig is a config with the default policy and two named ones, one
// of them in shadow mode, as an operator writes it.
const meshConfig = `
routes:
  - {path: /healthz, public: true}
  - {path: /api/users, methods: [GET], permissions: [read:users]}
policies:
  - name: billing
    match:
      context: {policy: billing}
      principals: ["spiffe://cluster.local/ns/billing/sa/billing"]
      hosts: [billing.example.com]
    routes: [{path: "/invoices/**", permissions: [read:invoices]}]
    forward_meta: [plan]
  - name: orders
    match:
      context: {policy: orders}
      hosts: ["*.orders.example.com"]
    routes: [{path: "/orders/**", permissions: [read:orders]}]
    mode: shadow
`

// meshCheck is a CheckRequest for path on host with the key in x-api-key,
// Envoy's context_extensions and the destination principal.
func meshCheck(path, host, key string, ext map[string]string, principal string) *authv3.CheckRequest {
	in := checkReq("GET", path, "10.1.2.3", map[string]string{"x-api-key": key, "x-request-id": "r-" + path})
	in.Attributes.Request.Http.Host = host
	in.Attributes.ContextExtensions = ext
	if principal != "" {
		in.Attributes.Destination = &authv3.AttributeContext_Peer{Principal: principal}
	}
	return in
}

// One server, its policies from the config file, over a real gRPC
// connection: each selector picks its policy, a scoped key is refused
// elsewhere, the key's metadata reaches Envoy's dynamic metadata and the
// upstream, and a shadow policy allows what it would deny while the audit
// log and the metrics record what it would have done.
func TestPoliciesFromTheConfigFileOverGRPC(t *testing.T) {
	var events syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: stdout}\n"+
		storeYAML(t, "embedded")+meshConfig)
	ts := startServerOut(t, path, serverOutput{logs: &events, audit: &events})
	billingKey, bk := ts.create(t, keystore.Spec{Name: "billing svc", Owner: "acme", Permissions: []string{"read:invoices"},
		Policies: []string{"billing"}, Meta: map[string]string{"plan": "gold", "tenant_id": "t-42"}})
	reader, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	ctx := context.Background()
	check := func(in *authv3.CheckRequest) *authv3.CheckResponse {
		t.Helper()
		resp, err := ts.client.Check(ctx, in)
		require.NoError(t, err)
		return resp
	}

	for _, tt := range []struct {
		name string
		in   *authv3.CheckRequest
	}{
		{"by context_extensions", meshCheck("/invoices/1", "api.example.com", billingKey, map[string]string{"policy": "billing"}, "")},
		{"by destination principal", meshCheck("/invoices/1", "api.example.com", billingKey, nil, "spiffe://cluster.local/ns/billing/sa/billing")},
		{"by host", meshCheck("/invoices/1", "billing.example.com", billingKey, nil, "")},
	} {
		t.Run("billing is selected "+tt.name, func(t *testing.T) {
			resp := check(tt.in)
			require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), resp.GetStatus().GetMessage())
			md := resp.GetDynamicMetadata().AsMap()
			assert.Equal(t, "billing", md["policy"])
			assert.Equal(t, "/invoices/**", md["route"])
			assert.Equal(t, bk.ID, md["key_id"])
			assert.Equal(t, map[string]any{"plan": "gold", "tenant_id": "t-42"}, md["meta"])
			up := headerMap(resp.GetOkResponse().GetHeaders())
			assert.Equal(t, "gold", up["x-authz-meta-plan"])
			assert.NotContains(t, up, "x-authz-meta-tenant-id", "billing forwards plan only")
		})
	}
	t.Run("the billing key is refused under the default policy", func(t *testing.T) {
		resp := check(meshCheck("/api/users", "api.example.com", billingKey, nil, ""))
		code, status := denial(t, resp)
		assert.Equal(t, "policy_not_allowed", code)
		assert.Equal(t, 403, status)
	})
	t.Run("a shadow policy allows what it would deny", func(t *testing.T) {
		resp := check(meshCheck("/orders/7", "eu.orders.example.com", reader, nil, ""))
		require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode())
		assert.Contains(t, resp.GetOkResponse().GetHeadersToRemove(), "x-api-key", "the credential is still stripped")
		assert.NotContains(t, headerMap(resp.GetOkResponse().GetHeaders()), "x-authz-key-id")
		md := resp.GetDynamicMetadata().AsMap()
		assert.Equal(t, []any{"shadow", "deny", "permission_denied", "orders"}, []any{md["mode"], md["decision"], md["code"], md["policy"]})
	})

	// The audit log and the metrics record the shadow decision as what it
	// would have been.
	var shadow map[string]any
	require.Eventually(t, func() bool {
		for line := range strings.SplitSeq(events.String(), "\n") {
			var ev map[string]any
			if json.Unmarshal([]byte(line), &ev) == nil && ev["path"] == "/orders/7" {
				shadow = ev
				return true
			}
		}
		return false
	}, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, "shadow", shadow["mode"])
	assert.Equal(t, "deny", shadow["decision"])
	assert.Equal(t, "permission_denied", shadow["code"])
	assert.Equal(t, float64(403), shadow["status"])
	assert.Equal(t, "orders", shadow["policy"])
	assert.Equal(t, "/orders/**", shadow["route"])
	assert.NotContains(t, events.String(), reader, "no key in any audit event")
	assert.NotContains(t, events.String(), billingKey)

	_, body, _ := get(t, ts.httpURL+"/metrics", nil)
	assert.Contains(t, body, `extauthz_decisions_total{code="permission_denied",mode="shadow",policy="orders",route="/orders/**"} 1`)
	assert.Contains(t, body, `extauthz_decisions_total{code="policy_not_allowed",mode="enforce",policy="default",route="/api/users"} 1`)
	assert.Contains(t, body, `extauthz_decisions_total{code="allow",mode="enforce",policy="billing",route="/invoices/**"} 3`)
}

// The HTTP listener selects by the auth path the proxy sets.
func TestPoliciesOverHTTPMode(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+meshConfig+"http_mode: {xff_trusted_hops: 0}\n")
	billingKey, _ := ts.create(t, keystore.Spec{Name: "billing svc", Permissions: []string{"read:invoices"}, Policies: []string{"billing"},
		Meta: map[string]string{"plan": "gold"}})
	status, _, h := get(t, ts.httpURL+"/authz/_policy/billing/invoices/1", map[string]string{"X-Api-Key": billingKey})
	assert.Equal(t, 200, status)
	assert.Equal(t, "gold", h.Get("X-Authz-Meta-Plan"))
	status, _, h = get(t, ts.httpURL+"/authz/invoices/1", map[string]string{"X-Api-Key": billingKey, "Host": "billing.example.com"})
	assert.Equal(t, 403, status)
	assert.Equal(t, "no_policy", h.Get("X-Authz-Code"))
	status, _, h = get(t, ts.httpURL+"/authz/_policy/default/api/users", map[string]string{"X-Api-Key": billingKey})
	assert.Equal(t, 403, status)
	assert.Equal(t, "policy_not_allowed", h.Get("X-Authz-Code"))
}

// A reload swaps every policy at once. Two configs whose answers to the
// same checks differ in every field (the policy that selects them, its
// route, its mode, the key source it reads, the code) are swapped in and
// out while workers send checks over gRPC without pause: every answer must
// be wholly one config's, never a mixture a half-loaded set would give.
func TestAReloadSwapsEveryPolicyAtOnceUnderLoad(t *testing.T) {
	store := storeYAML(t, "embedded")
	const head = "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nrate_limit: {default: none}\n"
	// Version A: context policy=svc selects "alpha", which reads x-key-a
	// and enforces /r/{a}; the key has the permission.
	versionA := head + store + `
policies:
  - name: alpha
    match: {context: {policy: svc}}
    sources: [{header: x-key-a}]
    routes: [{path: "/r/{a}", permissions: [p]}]
`
	// Version B: the same context selects "beta", which reads x-key-b, in
	// shadow mode, on /r/{b} needing a permission the key lacks.
	versionB := head + store + `
policies:
  - name: beta
    match: {context: {policy: svc}}
    sources: [{header: x-key-b}]
    routes: [{path: "/r/{b}", permissions: [q]}]
    mode: shadow
`
	path := writeConfig(t, versionA)
	ts := startServerFile(t, path)
	key, _ := ts.create(t, keystore.Spec{Name: "k", Permissions: []string{"p"}})
	in := checkReq("GET", "/r/1", "10.1.2.3", map[string]string{"x-key-a": key, "x-key-b": key})
	in.Attributes.ContextExtensions = map[string]string{"policy": "svc"}

	type answer struct{ policy, route, mode, decision, code, removed string }
	wantA := answer{"alpha", "/r/{a}", "enforce", "allow", "", "x-key-a"}
	wantB := answer{"beta", "/r/{b}", "shadow", "deny", "permission_denied", "x-key-b"}
	read := func(resp *authv3.CheckResponse) answer {
		md := resp.GetDynamicMetadata().AsMap()
		s := func(k string) string { v, _ := md[k].(string); return v }
		return answer{s("policy"), s("route"), s("mode"), s("decision"), s("code"), strings.Join(resp.GetOkResponse().GetHeadersToRemove(), ",")}
	}

	reloadRace(t, ts, path, versionA, versionB, 2*time.Millisecond, func() (answered, problem string) {
		resp, err := ts.client.Check(context.Background(), in)
		if err != nil {
			return "", err.Error()
		}
		if resp.GetStatus().GetCode() != int32(codes.OK) {
			return "", fmt.Sprintf("denied: %s %v", resp.GetStatus().GetMessage(), resp.GetDynamicMetadata().AsMap())
		}
		switch got := read(resp); got {
		case wantA:
			return "A", ""
		case wantB:
			return "B", ""
		default:
			return "", fmt.Sprintf("an answer of neither config: %+v", got)
		}
	})
}

// reloadRace sends check from 8 workers without pause while the config at
// path is rewritten, versionB and versionA in turns, and reloaded, for 3
// s and at least 101 reloads (up to a minute on a machine that slow). Each check says which version answered it ("A" or "B"), or what was
// wrong with its answer, which fails the test: a config is swapped whole
// or not at both ends of every check. Both versions must have answered.
func reloadRace(t *testing.T, ts *testServer, path, versionA, versionB string, pause time.Duration, check func() (answered, problem string)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var seenA, seenB, checks atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan string, 16)
	for range 8 {
		wg.Go(func() {
			for ctx.Err() == nil {
				answered, problem := check()
				if problem != "" {
					errs <- problem
					return
				}
				checks.Add(1)
				if answered == "A" {
					seenA.Add(1)
				} else {
					seenB.Add(1)
				}
			}
		})
	}
	reloads := 0
	start := time.Now()
	for ; (time.Since(start) < 3*time.Second || reloads <= 100) && time.Since(start) < time.Minute && len(errs) == 0; reloads++ {
		next := versionB
		if reloads%2 == 1 {
			next = versionA
		}
		// Written whole and renamed into place, as editors and ConfigMap
		// updates do: the file watch must never read half a file.
		require.NoError(t, os.WriteFile(path+".new", []byte(next), 0o600))
		require.NoError(t, os.Rename(path+".new", path))
		ts.srv.reload("test", nil) // as SIGHUP does; the file watch may reload it too
		time.Sleep(pause)
	}
	cancel()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	t.Logf("%d reloads, %d checks: %d answered by version A, %d by version B", reloads, checks.Load(), seenA.Load(), seenB.Load())
	assert.Greater(t, reloads, 100)
	assert.Positive(t, seenA.Load(), "version A answered")
	assert.Positive(t, seenB.Load(), "version B answered")
}

// Every config file the repository ships loads and compiles as the server
// would load it: the deployment tests check them against a mirror of the
// config's fields, this against the decision's own rules (exclusive
// selectors, hosts that can match, policy names).
func TestTheShippedConfigsCompile(t *testing.T) {
	for _, path := range []string{
		"../../extauthz.yaml",
		"../../deploy/compose/extauthz.yaml",
		"../../deploy/docker/extauthz.yaml",
		"../../k8s/base/config.yaml",
		"../../k8s/overlays/istio/config.yaml",
	} {
		t.Run(strings.TrimPrefix(path, "../../"), func(t *testing.T) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			cfg, err := config.Parse(data)
			require.NoError(t, err)
			set, err := newPolicies(cfg)
			require.NoError(t, err)
			assert.Len(t, set.Policies(), len(cfg.Policies)+1)
		})
	}
}

// A key sent in another policy's source is no credential under the policy
// that decides the request, but it is a secret all the same: it is removed
// before the request goes upstream, over gRPC and in HTTP mode, in every
// value of the name, while the decision reads only the selected policy's own
// source. What is no key of ours there (the upstream's own Bearer tokens, a
// cookie of its own) reaches the upstream untouched.
func TestAKeyInAnotherPolicysSourceIsStrippedToo(t *testing.T) {
	const cfg = `
http_mode: {xff_trusted_hops: 0}
routes: [{path: /api/users, permissions: [read:users]}]
policies:
  - name: billing
    match: {context: {policy: billing}}
    sources: [{header: x-billing-key}]
    routes: [{path: "/invoices/**", permissions: [read:invoices]}]
`
	ts := startServer(t, storeYAML(t, "embedded")+cfg)
	billing, _ := ts.create(t, keystore.Spec{Name: "billing", Permissions: []string{"read:invoices"}})
	other, _ := ts.create(t, keystore.Spec{Name: "other", Permissions: []string{"read:users"}})
	// underBilling checks a request under the billing policy; ok is nil
	// for a denial.
	underBilling := func(t *testing.T, path string, h map[string]string) (*authv3.CheckResponse, *authv3.OkHttpResponse) {
		t.Helper()
		in := checkReq("GET", path, "10.1.2.3", h)
		in.Attributes.ContextExtensions = map[string]string{"policy": "billing"}
		resp, err := ts.client.Check(context.Background(), in)
		require.NoError(t, err)
		return resp, resp.GetOkResponse()
	}
	// cookieSent is the cookie header the response sets, "" for none.
	cookieSent := func(ok *authv3.OkHttpResponse) string {
		for _, h := range ok.GetHeaders() {
			if h.GetHeader().GetKey() == "cookie" {
				return h.GetHeader().GetValue()
			}
		}
		return ""
	}

	t.Run("every source's key is removed", func(t *testing.T) {
		resp, ok := underBilling(t, "/invoices/1?api_key="+other+"&page=2", map[string]string{
			"x-billing-key": billing, "x-api-key": other, "authorization": "Bearer " + other, "cookie": "api_key=" + other + "; theme=dark"})
		require.NotNil(t, ok, "%v", resp.GetStatus())
		assert.Equal(t, "billing", resp.GetDynamicMetadata().AsMap()["key_name"], "decided on the policy's own source")
		assert.ElementsMatch(t, []string{"x-billing-key", "x-api-key", "authorization"}, filterSources(ok.GetHeadersToRemove()))
		assert.Equal(t, []string{"api_key"}, ok.GetQueryParametersToRemove())
		assert.Equal(t, "theme=dark", cookieSent(ok), "the other policy's cookie is cut")
	})
	t.Run("a key in a second value is removed too", func(t *testing.T) {
		resp, ok := underBilling(t, "/invoices/1?api_key=page2&api_key="+other, map[string]string{"x-billing-key": billing})
		require.NotNil(t, ok, "%v", resp.GetStatus())
		assert.Equal(t, []string{"api_key"}, ok.GetQueryParametersToRemove(), "the key in the second api_key must not reach the upstream")
		resp, ok = underBilling(t, "/invoices/1", map[string]string{"x-billing-key": billing, "cookie": "api_key=theme; a=1; api_key=" + other})
		require.NotNil(t, ok, "%v", resp.GetStatus())
		assert.Equal(t, "a=1", cookieSent(ok), "the key in the second api_key cookie must not reach the upstream")
	})
	t.Run("what is no key of ours is left alone", func(t *testing.T) {
		const session = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS11cHN0cmVhbQ"
		resp, ok := underBilling(t, "/invoices/1?api_key=a-widget-setting", map[string]string{
			"x-billing-key": billing, "authorization": "Bearer " + session, "cookie": "api_key=0123456789abcdef0123; theme=dark"})
		require.NotNil(t, ok, "%v", resp.GetStatus())
		assert.ElementsMatch(t, []string{"x-billing-key"}, filterSources(ok.GetHeadersToRemove()), "the upstream's own token is no key of ours")
		assert.Empty(t, ok.GetQueryParametersToRemove())
		assert.Empty(t, cookieSent(ok), "the cookie header is left as it is")
		status, _, h := get(t, ts.httpURL+"/authz/_policy/billing/invoices/1", map[string]string{"X-Billing-Key": billing, "Authorization": "Bearer " + session})
		require.Equal(t, 200, status)
		assert.ElementsMatch(t, []string{"x-billing-key"}, filterSources(strings.Split(h.Get("X-Envoy-Auth-Headers-To-Remove"), ", ")), "nor in HTTP mode")
	})
	t.Run("a key only in another policy's source is still no credential here", func(t *testing.T) {
		resp, _ := underBilling(t, "/invoices/1", map[string]string{"x-api-key": billing})
		assert.Equal(t, "missing_key", resp.GetDynamicMetadata().AsMap()["code"])
	})
	t.Run("HTTP mode removes it too", func(t *testing.T) {
		status, _, h := get(t, ts.httpURL+"/authz/_policy/billing/invoices/1", map[string]string{"X-Billing-Key": billing, "X-Api-Key": other})
		require.Equal(t, 200, status)
		assert.ElementsMatch(t, []string{"x-billing-key", "x-api-key"}, filterSources(strings.Split(h.Get("X-Envoy-Auth-Headers-To-Remove"), ", ")))
	})
}

// filterSources keeps the credential headers among names (dropping the
// identity headers every allow removes as spoofable).
func filterSources(names []string) []string {
	var out []string
	for _, n := range names {
		if !strings.HasPrefix(n, "x-authz-") && n != "x-envoy-auth-headers-to-remove" && n != "" {
			out = append(out, n)
		}
	}
	return out
}

// Istio's AuthorizationPolicy writes a principal without "spiffe://"
// (cluster.local/ns/billing/sa/billing), and docs/policies.md shows one
// written so; Envoy reports the destination principal with it. A policy
// selected by such a principal never matched, and the billing workload's
// requests went to the default policy, here one that makes the invoices
// public. A reload to such a file fails, and the running config stays.
func TestAPrincipalWrittenAsIstioWritesItIsRefused(t *testing.T) {
	var logs syncbuf.Buffer
	store := storeYAML(t, "embedded")
	file := func(principal string) string {
		return "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n" + store +
			"routes: [{path: \"/invoices/**\", public: true}]\n" +
			"policies:\n  - name: billing\n    match: {principals: [\"" + principal + "\"]}\n" +
			"    routes: [{path: \"/invoices/**\", permissions: [read:invoices]}]\n"
	}
	path := writeConfig(t, file("spiffe://cluster.local/ns/billing/sa/billing"))
	ts, check := startBilling(t, path, "spiffe://cluster.local/ns/billing/sa/billing", &logs)

	require.NoError(t, os.WriteFile(path, []byte(file("cluster.local/ns/billing/sa/billing")), 0o600))
	ts.srv.reload("test", nil)
	assert.Contains(t, logs.String(), "config reload failed")
	assert.Contains(t, logs.String(), `write \"spiffe://cluster.local/ns/billing/sa/billing\"`)
	code, policy := check()
	assert.Equal(t, "billing", policy, "the running config still selects billing")
	assert.Equal(t, "missing_key", code)
}

// In HTTP mode a reload swaps http_mode with the policies: a check reads
// the original request by one config's http_mode and decides it by that
// same config's routes. Here the two versions differ in both (the prefix
// moves from /authz to /authz/v2, and the routes with it), and each denies
// the request sent: /authz/v2/r/1 is /v2/r/1 under version A, which needs
// a permission, and /r/1 under version B, which needs another. Read by one
// version and routed by the other, it is a public route of that other,
// allowed without a key. Workers send it without pause while the two are
// swapped in and out: no answer may be a 200, and every one is one
// version's denial.
func TestAReloadSwapsTheHTTPModeWithThePolicies(t *testing.T) {
	store := storeYAML(t, "embedded")
	const head = "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nrate_limit: {default: none}\n"
	versionA := head + store + `
http_mode: {prefix: /authz}
routes:
  - {path: "/v2/r/{a}", permissions: [perm-a]}
  - {path: "/r/**", public: true}
`
	versionB := head + store + `
http_mode: {prefix: /authz/v2}
routes:
  - {path: "/r/{b}", permissions: [perm-b]}
  - {path: "/v2/**", public: true}
`
	path := writeConfig(t, versionA)
	ts := startServerFile(t, path)
	key, _ := ts.create(t, keystore.Spec{Name: "k"})
	url := ts.httpURL + "/authz/v2/r/1"

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	reloadRace(t, ts, path, versionA, versionB, time.Millisecond, func() (answered, problem string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("X-Api-Key", key)
		resp, err := client.Do(req)
		if err != nil {
			return "", err.Error()
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == 403 && strings.Contains(string(body), `missing permission \"perm-a\"`):
			return "A", ""
		case resp.StatusCode == 403 && strings.Contains(string(body), `missing permission \"perm-b\"`):
			return "B", ""
		default:
			return "", fmt.Sprintf("an answer of neither config: %d %s", resp.StatusCode, body)
		}
	})
}

// A principal that names the spiffe scheme but is no SPIFFE ID is carried
// by no certificate: a template's placeholder left in, a trust domain in
// capitals, a trailing slash. Its policy would never be selected, and the
// billing workload's requests would go to the default policy, here one that
// makes the invoices public. A reload to such a file fails, and over gRPC
// the running config still decides billing's requests.
func TestAPrincipalThatIsNoSPIFFEIDIsRefused(t *testing.T) {
	const billing = "spiffe://cluster.local/ns/billing/sa/billing"
	var logs syncbuf.Buffer
	store := storeYAML(t, "embedded")
	file := func(principal string) string {
		return "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n" + store +
			"routes: [{path: \"/invoices/**\", public: true}]\n" +
			"policies:\n  - name: billing\n    match: {principals: [\"" + principal + "\"]}\n" +
			"    routes: [{path: \"/invoices/**\", permissions: [read:invoices]}]\n"
	}
	path := writeConfig(t, file(billing))
	ts, check := startBilling(t, path, billing, &logs)

	for _, bad := range []string{
		"spiffe://${TRUST_DOMAIN}/ns/billing/sa/billing",
		"spiffe://$(TRUST_DOMAIN)/ns/billing/sa/billing",
		"spiffe://cluster.local/ns/${NAMESPACE}/sa/billing",
		"spiffe://Cluster.Local/ns/billing/sa/billing",
		"SPIFFE://cluster.local/ns/billing/sa/billing",
		"spiffe://cluster.local/ns/billing/sa/billing/",
		"spiffe://cluster.local:15443/ns/billing/sa/billing",
	} {
		seen := len(logs.String())
		require.NoError(t, os.WriteFile(path, []byte(file(bad)), 0o600))
		ts.srv.reload("test", nil)
		logged := logs.String()[seen:]
		assert.Contains(t, logged, "config reload failed", bad)
		assert.Contains(t, logged, "is no SPIFFE ID", bad)
		code, policy := check()
		assert.Equal(t, "billing", policy, "%s: the running config still selects billing", bad)
		assert.Equal(t, "missing_key", code, bad)
	}
}

// unselected: deny says no request falls through to the default policy.
// Without named policies every request would (a config has its top-level
// settings decide everything), so a policies list that rendered empty
// would hand the billing workload's requests to the top-level routes, here
// ones that make the invoices public. Such a file is refused: a reload to it
// fails, and over gRPC billing still decides.
func TestUnselectedDenyWithoutPoliciesIsRefused(t *testing.T) {
	const billing = "spiffe://cluster.local/ns/billing/sa/billing"
	var logs syncbuf.Buffer
	store := storeYAML(t, "embedded")
	head := "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n" + store +
		"unselected: deny\nroutes: [{path: \"/invoices/**\", public: true}]\n"
	path := writeConfig(t, head+"policies:\n  - name: billing\n    match: {principals: [\""+billing+"\"]}\n"+
		"    routes: [{path: \"/invoices/**\", permissions: [read:invoices]}]\n")
	ts, check := startBilling(t, path, billing, &logs)

	require.NoError(t, os.WriteFile(path, []byte(head+"policies: []\n"), 0o600))
	ts.srv.reload("test", nil)
	assert.Contains(t, logs.String(), "config reload failed")
	assert.Contains(t, logs.String(), "unselected: deny, but no policies are named")
	code, policy := check()
	assert.Equal(t, "billing", policy, "the running config still selects billing")
	assert.Equal(t, "missing_key", code, "the invoice is not public")
}

// startBilling starts a server on the config at path, reloaded only when
// told, logging to logs, whose config has a billing policy selected by the
// principal billing that guards /invoices/**; check sends a keyless check
// of /invoices/1 from billing's sidecar and returns the denial's code and
// the policy that decided it, which start out missing_key and billing.
func startBilling(t *testing.T, path, billing string, logs *syncbuf.Buffer) (*testServer, func() (string, any)) {
	t.Helper()
	ts := startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard}, func(s *server) { s.reloadEvery = time.Hour })
	in := meshCheck("/invoices/1", "billing.demo.svc", "", nil, billing)
	check := func() (string, any) {
		resp, err := ts.client.Check(context.Background(), in)
		require.NoError(t, err)
		code, _ := denial(t, resp)
		return code, resp.GetDynamicMetadata().AsMap()["policy"]
	}
	code, policy := check()
	require.Equal(t, "billing", policy)
	require.Equal(t, "missing_key", code)
	return ts, check
}
