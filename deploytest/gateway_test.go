package deploytest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwapiv1b1 "sigs.k8s.io/gateway-api/apis/v1beta1"
)

// gatewayObjects are the Gateway API and Envoy Gateway documents of an
// overlay, each decoded strictly into the projects' own Go API types.
type gatewayObjects struct {
	gateways        []*gwapiv1.Gateway
	routes          []*gwapiv1.HTTPRoute
	referenceGrants []*gwapiv1b1.ReferenceGrant
	securityPolicy  []*egv1a1.SecurityPolicy
	clientTraffic   []*egv1a1.ClientTrafficPolicy
	envoyProxies    []*egv1a1.EnvoyProxy
	anyGatewayKinds bool
}

func (g *gatewayObjects) add(t *testing.T, id, kind string, data []byte) {
	t.Helper()
	g.anyGatewayKinds = true
	switch kind {
	case "Gateway":
		g.gateways = append(g.gateways, decodeStrict[gwapiv1.Gateway](t, id, data))
	case "HTTPRoute":
		g.routes = append(g.routes, decodeStrict[gwapiv1.HTTPRoute](t, id, data))
	case "ReferenceGrant":
		g.referenceGrants = append(g.referenceGrants, decodeStrict[gwapiv1b1.ReferenceGrant](t, id, data))
	case "SecurityPolicy":
		g.securityPolicy = append(g.securityPolicy, decodeStrict[egv1a1.SecurityPolicy](t, id, data))
	case "ClientTrafficPolicy":
		g.clientTraffic = append(g.clientTraffic, decodeStrict[egv1a1.ClientTrafficPolicy](t, id, data))
	case "EnvoyProxy":
		g.envoyProxies = append(g.envoyProxies, decodeStrict[egv1a1.EnvoyProxy](t, id, data))
	default:
		t.Fatalf("%s: kind %s has no decoder here", id, kind)
	}
}

// checkEnvoyGateway: every route of every Gateway goes through a
// SecurityPolicy whose extAuth asks extauthz over gRPC, failing closed with a
// 503 within a second, with the target namespace's consent, and no route is
// left out, a health path neither; the Gateway's
// Envoy Pods are let through extauthz's NetworkPolicy; and the Gateway
// refuses the paths and headers two upstreams could read differently.
func (m *manifests) checkEnvoyGateway(bad func(string, ...any)) {
	g := &m.gateway
	if len(g.securityPolicy) == 0 || len(g.gateways) == 0 {
		bad("no SecurityPolicy or no Gateway")
	}
	for _, sp := range g.securityPolicy {
		m.checkSecurityPolicy(sp, bad)
	}
	for _, gw := range g.gateways {
		id := "Gateway/" + gw.Name
		m.checkGatewayProxies(gw, bad)
		m.checkBackendsFenced(gw, bad)
		if !slices.ContainsFunc(g.clientTraffic, func(ct *egv1a1.ClientTrafficPolicy) bool {
			return ct.Namespace == gw.Namespace && targets(ct.Spec.PolicyTargetReferences, "Gateway", gw.Name) && clientTrafficIsCanonical(ct)
		}) {
			bad("%s: no ClientTrafficPolicy refuses encoded slashes and header names with underscores", id)
		}
		if !slices.ContainsFunc(g.clientTraffic, func(ct *egv1a1.ClientTrafficPolicy) bool {
			return ct.Namespace == gw.Namespace && targets(ct.Spec.PolicyTargetReferences, "Gateway", gw.Name) && boundsSlowClients(ct)
		}) {
			bad("%s: no ClientTrafficPolicy bounds how long a client may take to send its headers (at most %v) and its whole request (at most %v): Envoy Gateway sets neither, so a client sending a byte at a time holds a stream", id, maxHeadersTime, maxRequestTime)
		}
		for _, r := range g.routes {
			if !slices.ContainsFunc(r.Spec.ParentRefs, func(p gwapiv1.ParentReference) bool {
				return string(p.Name) == gw.Name && string(ptrOr(p.Namespace, gwapiv1.Namespace(r.Namespace))) == gw.Namespace
			}) {
				continue
			}
			if g.protects(r, gw) {
				continue
			}
			// extauthz answers a public path (/healthz) itself and removes
			// every client-sent x-authz-* header in any spelling; a route
			// it does not see could remove only the headers a
			// RequestHeaderModifier names, and no query parameter.
			bad("HTTPRoute/%s: not covered by a SecurityPolicy with extAuth: its requests reach %s without extauthz, with any x-authz-* header the client wrote; make the path a public route of extauthz's config instead", r.Name, backendNames(r))
		}
	}
}

// backendNames lists the Services a route sends to, for messages.
func backendNames(r *gwapiv1.HTTPRoute) string {
	var names []string
	for _, rule := range r.Spec.Rules {
		for _, ref := range rule.BackendRefs {
			names = append(names, "Service "+string(ref.Name))
		}
	}
	if len(names) == 0 {
		return "its backends"
	}
	return strings.Join(slices.Compact(names), ", ")
}

// clientTrafficIsCanonical: encoded slashes and underscored header names are
// refused, said explicitly rather than left to a default, and slashes are
// merged.
func clientTrafficIsCanonical(ct *egv1a1.ClientTrafficPolicy) bool {
	p, h := ct.Spec.Path, ct.Spec.Headers
	return p != nil && p.EscapedSlashesAction != nil && *p.EscapedSlashesAction == egv1a1.RejectRequestAction && !ptrOr(p.DisableMergeSlashes, false) &&
		h != nil && h.WithUnderscoresAction != nil && *h.WithUnderscoresAction == egv1a1.WithUnderscoresActionRejectRequest
}

// The longest a client may take to send its request's headers, and the whole
// request (Envoy's edge guidance).
const (
	maxHeadersTime = time.Minute
	maxRequestTime = 5 * time.Minute
)

// boundsSlowClients: the request headers and the whole request each have a
// timeout, above 0 (which turns it off) and within the bounds above.
func boundsSlowClients(ct *egv1a1.ClientTrafficPolicy) bool {
	within := func(d *gwapiv1.Duration, max time.Duration) bool {
		if d == nil {
			return false
		}
		v, err := time.ParseDuration(string(*d))
		return err == nil && v > 0 && v <= max
	}
	h := ptrOr(ct.Spec.Timeout, egv1a1.ClientTimeout{}).HTTP
	return h != nil && within(h.RequestHeadersReceivedTimeout, maxHeadersTime) && within(h.RequestReceivedTimeout, maxRequestTime)
}

// targets reports whether policy target references name a kind and name.
func targets(refs egv1a1.PolicyTargetReferences, kind, name string) bool {
	all := refs.TargetRefs
	if refs.TargetRef != nil {
		all = append(all, *refs.TargetRef)
	}
	return slices.ContainsFunc(all, func(r gwapiv1.LocalPolicyTargetReferenceWithSectionName) bool {
		return string(r.Kind) == kind && string(r.Name) == name && string(r.Group) == gwapiv1.GroupName && r.SectionName == nil
	})
}

// protects reports whether a SecurityPolicy with extAuth covers the whole route.
func (g *gatewayObjects) protects(r *gwapiv1.HTTPRoute, gw *gwapiv1.Gateway) bool {
	return slices.ContainsFunc(g.securityPolicy, func(sp *egv1a1.SecurityPolicy) bool {
		if sp.Spec.ExtAuth == nil {
			return false
		}
		return (sp.Namespace == r.Namespace && targets(sp.Spec.PolicyTargetReferences, "HTTPRoute", r.Name)) ||
			(sp.Namespace == gw.Namespace && targets(sp.Spec.PolicyTargetReferences, "Gateway", gw.Name))
	})
}

func (m *manifests) checkSecurityPolicy(sp *egv1a1.SecurityPolicy, bad func(string, ...any)) {
	id := "SecurityPolicy/" + sp.Name
	ea := sp.Spec.ExtAuth
	if ea == nil || ea.GRPC == nil || ea.HTTP != nil {
		bad("%s: extAuth must name one gRPC service", id)
		return
	}
	if len(sp.Spec.TargetRefs) == 0 && sp.Spec.TargetRef == nil {
		bad("%s: targets nothing", id)
	}
	if len(sp.Spec.TargetSelectors) > 0 {
		bad("%s: targetSelectors pick routes by label; name them in targetRefs so that what is protected can be read here", id)
	}
	all := slices.Clone(sp.Spec.TargetRefs)
	if sp.Spec.TargetRef != nil {
		all = append(all, *sp.Spec.TargetRef)
	}
	for _, ref := range all {
		found := false
		switch ref.Kind {
		case "HTTPRoute":
			found = slices.ContainsFunc(m.gateway.routes, func(r *gwapiv1.HTTPRoute) bool { return r.Name == string(ref.Name) && r.Namespace == sp.Namespace })
		case "Gateway":
			found = slices.ContainsFunc(m.gateway.gateways, func(g *gwapiv1.Gateway) bool { return g.Name == string(ref.Name) && g.Namespace == sp.Namespace })
		}
		if !found {
			bad("%s: targets %s %s, which is not in namespace %s here", id, ref.Kind, ref.Name, sp.Namespace)
		}
	}
	if ea.FailOpen == nil || *ea.FailOpen {
		bad("%s: failOpen must be false, and say so", id)
	}
	if ptrOr(ea.StatusOnError, 403) != 503 {
		bad("%s: statusOnError %d, want 503 (an outage is not a denial)", id, ptrOr(ea.StatusOnError, 403))
	}
	if d, err := time.ParseDuration(string(ptrOr(ea.Timeout, "10s"))); err != nil || d <= 0 || d > maxAuthzTimeout {
		bad("%s: timeout %v; want set and at most %v (Envoy Gateway's default is 10 s)", id, ptrOr(ea.Timeout, ""), maxAuthzTimeout)
	}
	refs := ea.GRPC.BackendRefs
	if ea.GRPC.BackendRef != nil {
		refs = append(refs, egv1a1.BackendRef{BackendObjectReference: *ea.GRPC.BackendRef})
	}
	if len(refs) != 1 {
		bad("%s: %d backends, want the one extauthz Service", id, len(refs))
		return
	}
	ref := refs[0].BackendObjectReference
	ns := string(ptrOr(ref.Namespace, gwapiv1.Namespace(sp.Namespace)))
	if string(ptrOr(ref.Group, "")) != "" || string(ptrOr(ref.Kind, "Service")) != "Service" {
		bad("%s: backend %s/%s is not a Service", id, ptrOr(ref.Group, ""), ptrOr(ref.Kind, "Service"))
		return
	}
	svc := m.service(string(ref.Name))
	if svc == nil || svc.Namespace != ns {
		bad("%s: backend %s.%s is not a Service here", id, ref.Name, ns)
		return
	}
	i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return ref.Port != nil && p.Port == int32(*ref.Port) })
	if i < 0 || svc.Spec.Ports[i].Name != "grpc" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		bad("%s: backend port %v is not the grpc port of the ClusterIP Service %s", id, ptrOr(ref.Port, 0), svc.Name)
	}
	if ns != sp.Namespace && !m.gateway.grants(sp, string(ref.Name), ns) {
		bad("%s: refers to Service %s in namespace %s, and no ReferenceGrant there allows it", id, ref.Name, ns)
	}
	if hc := ptrOr(ea.GRPC.BackendSettings, egv1a1.ClusterSettings{}).HealthCheck; hc == nil || hc.Active == nil || hc.Active.Type != egv1a1.ActiveHealthCheckerTypeGRPC {
		bad("%s: no active gRPC health check: a replica that is shutting down keeps getting checks", id)
	}
}

// grants reports whether a ReferenceGrant in namespace ns lets the policy refer
// to the Service.
func (g *gatewayObjects) grants(sp *egv1a1.SecurityPolicy, service, ns string) bool {
	return slices.ContainsFunc(g.referenceGrants, func(rg *gwapiv1b1.ReferenceGrant) bool {
		if rg.Namespace != ns {
			return false
		}
		from := slices.ContainsFunc(rg.Spec.From, func(f gwapiv1b1.ReferenceGrantFrom) bool {
			return string(f.Group) == egv1a1.GroupName && f.Kind == egv1a1.KindSecurityPolicy && string(f.Namespace) == sp.Namespace
		})
		to := slices.ContainsFunc(rg.Spec.To, func(to gwapiv1b1.ReferenceGrantTo) bool {
			return to.Group == "" && to.Kind == "Service" && (to.Name == nil || string(*to.Name) == service)
		})
		return from && to
	})
}

// checkGatewayProxies: the Gateway's Envoy Pods carry the label the extauthz
// NetworkPolicy admits.
func (m *manifests) checkGatewayProxies(gw *gwapiv1.Gateway, bad func(string, ...any)) {
	id := "Gateway/" + gw.Name
	labels := m.gatewayEnvoyLabels(gw)
	if labels == nil {
		bad("%s: no EnvoyProxy of its namespace labels its Envoy Pods", id)
		return
	}
	if !m.extauthzAdmits(labels, envoyGatewayNamespace) {
		bad("%s: its Envoy Pods (%v) are not let through to extauthz's gRPC port by a NetworkPolicy", id, labels)
	}
}

// backendLabel is the label the overlay's NetworkPolicy selects a backend's
// Pods by, with the backend Service's name as its value (as the sidecar
// overlay's demo-app Pods carry it): the Service itself is the user's, not in
// the overlay.
const backendLabel = "app.kubernetes.io/name"

// checkBackendsFenced: the Pods of every Service a route of the Gateway
// sends to take connections from the Gateway's Envoy Pods alone. Any other
// Pod could call the Service directly, skipping the Gateway and extauthz.
func (m *manifests) checkBackendsFenced(gw *gwapiv1.Gateway, bad func(string, ...any)) {
	envoyLabels := m.gatewayEnvoyLabels(gw)
	for _, r := range m.gateway.routes {
		if !slices.ContainsFunc(r.Spec.ParentRefs, func(p gwapiv1.ParentReference) bool {
			return string(p.Name) == gw.Name && string(ptrOr(p.Namespace, gwapiv1.Namespace(r.Namespace))) == gw.Namespace
		}) {
			continue
		}
		for _, rule := range r.Spec.Rules {
			for _, ref := range rule.BackendRefs {
				ns := string(ptrOr(ref.Namespace, gwapiv1.Namespace(r.Namespace)))
				svc := string(ref.Name)
				fenced := slices.ContainsFunc(m.netpols, func(np *networkingv1.NetworkPolicy) bool {
					return np.Namespace == ns && np.Spec.PodSelector.MatchLabels[backendLabel] == svc &&
						slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) && onlyFrom(np, envoyLabels)
				})
				if !fenced {
					bad("HTTPRoute/%s: no NetworkPolicy in %s lets only the Gateway's Envoy Pods reach the Pods of Service %s (%s=%s): any Pod could call it and skip extauthz", r.Name, ns, svc, backendLabel, svc)
				}
			}
		}
	}
	// Policies are additive: one that lets others in too undoes the fence.
	for _, np := range m.netpols {
		for _, r := range m.gateway.routes {
			for _, rule := range r.Spec.Rules {
				for _, ref := range rule.BackendRefs {
					if np.Namespace == string(ptrOr(ref.Namespace, gwapiv1.Namespace(r.Namespace))) &&
						np.Spec.PodSelector.MatchLabels[backendLabel] == string(ref.Name) && !onlyFrom(np, envoyLabels) {
						bad("NetworkPolicy/%s lets Pods other than the Gateway's Envoy reach Service %s, which would skip extauthz", np.Name, ref.Name)
					}
				}
			}
		}
	}
}

// onlyFrom reports whether every ingress rule of np admits only Pods with
// these labels in one named namespace (or the policy's own), and there is
// one. A label alone admits any Pod whose author wrote it, in any namespace.
func onlyFrom(np *networkingv1.NetworkPolicy, podLabels map[string]string) bool {
	if len(np.Spec.Ingress) == 0 || len(podLabels) == 0 {
		return false
	}
	for _, rule := range np.Spec.Ingress {
		if len(rule.From) == 0 {
			return false
		}
		for _, peer := range rule.From {
			if peer.IPBlock != nil || peer.PodSelector == nil || len(peer.PodSelector.MatchExpressions) > 0 || !namesOneNamespace(peer.NamespaceSelector) {
				return false
			}
			for k, v := range podLabels {
				if peer.PodSelector.MatchLabels[k] != v {
					return false
				}
			}
		}
	}
	return true
}

// namesOneNamespace reports whether a peer's namespace selector admits a
// single namespace: its own (nil) or one named by kubernetes.io/metadata.name,
// which Kubernetes sets and no one else can.
func namesOneNamespace(sel *metav1.LabelSelector) bool {
	return sel == nil || (sel.MatchLabels[namespaceNameLabel] != "" && len(sel.MatchExpressions) == 0)
}

// namespaceNameLabel is the label Kubernetes gives every namespace, its name.
const namespaceNameLabel = "kubernetes.io/metadata.name"

// envoyGatewayNamespace is where Envoy Gateway runs the Envoy Pods of every
// Gateway (its install guide's namespace), as the overlay says.
const envoyGatewayNamespace = "envoy-gateway-system"

// gatewayEnvoyLabels are the labels the Gateway's EnvoyProxy puts on its
// Envoy Pods (nil when there is none).
func (m *manifests) gatewayEnvoyLabels(gw *gwapiv1.Gateway) map[string]string {
	if infra := gw.Spec.Infrastructure; infra != nil && infra.ParametersRef != nil && string(infra.ParametersRef.Group) == egv1a1.GroupName && string(infra.ParametersRef.Kind) == egv1a1.KindEnvoyProxy {
		for _, ep := range m.gateway.envoyProxies {
			if ep.Name == infra.ParametersRef.Name && ep.Namespace == gw.Namespace {
				if k := ep.Spec.Provider; k != nil && k.Kubernetes != nil && k.Kubernetes.EnvoyDeployment != nil && k.Kubernetes.EnvoyDeployment.Pod != nil {
					return k.Kubernetes.EnvoyDeployment.Pod.Labels
				}
			}
		}
	}
	return nil
}

// TestEnvoyGatewayMatchesTheChart: the example's SecurityPolicy reaches the
// Service the chart creates when installed as release extauthz in namespace
// extauthz, as the overlay's comment says.
func TestEnvoyGatewayMatchesTheChart(t *testing.T) {
	overlay := buildOverlay(t, "envoy-gateway")
	chart, _ := mustRenderChart(t, "")
	chart.gateway = overlay.gateway
	// The overlay's own policies for the Gateway's backends come along.
	for _, np := range overlay.netpols {
		if np.Namespace != "extauthz" {
			chart.netpols = append(chart.netpols, np)
		}
	}
	var ps []string
	chart.checkEnvoyGateway(func(format string, args ...any) { ps = append(ps, fmt.Sprintf(format, args...)) })
	for _, p := range ps {
		t.Error(p)
	}
}

func TestEnvoyGatewayProblemsAreCaught(t *testing.T) {
	sp := func(m *manifests) *egv1a1.SecurityPolicy { return m.gateway.securityPolicy[0] }
	route := func(m *manifests, name string) *gwapiv1.HTTPRoute {
		for _, r := range m.gateway.routes {
			if r.Name == name {
				return r
			}
		}
		t.Fatalf("no HTTPRoute %s", name)
		return nil
	}
	tests := []struct {
		name    string
		mutate  func(m *manifests)
		wantErr string
	}{
		{"failing open", func(m *manifests) { sp(m).Spec.ExtAuth.FailOpen = ptr(true) }, "failOpen"},
		{"failOpen left to its default", func(m *manifests) { sp(m).Spec.ExtAuth.FailOpen = nil }, "failOpen"},
		{"an outage answered 403", func(m *manifests) { sp(m).Spec.ExtAuth.StatusOnError = nil }, "statusOnError 403"},
		{"Envoy Gateway's 10 s default timeout", func(m *manifests) { sp(m).Spec.ExtAuth.Timeout = nil }, "timeout"},
		{"the HTTP port for a gRPC check", func(m *manifests) {
			sp(m).Spec.ExtAuth.GRPC.BackendRefs[0].Port = ptr(gwapiv1.PortNumber(9002))
		}, "not the grpc port"},
		{"a Service that does not exist", func(m *manifests) {
			sp(m).Spec.ExtAuth.GRPC.BackendRefs[0].Name = "ext-authz"
		}, "is not a Service here"},
		{"no consent from namespace extauthz", func(m *manifests) { m.gateway.referenceGrants = nil }, "no ReferenceGrant"},
		{"consent for another kind of policy", func(m *manifests) {
			m.gateway.referenceGrants[0].Spec.From[0].Kind = "EnvoyExtensionPolicy"
		}, "no ReferenceGrant"},
		{"extAuth over HTTP", func(m *manifests) {
			sp(m).Spec.ExtAuth.HTTP = &egv1a1.HTTPExtAuthService{}
		}, "one gRPC service"},
		{"no health check", func(m *manifests) { sp(m).Spec.ExtAuth.GRPC.BackendSettings = nil }, "health check"},
		{"the policy targeting a route that does not exist", func(m *manifests) {
			sp(m).Spec.TargetRefs[0].Name = "demo"
		}, "not covered by a SecurityPolicy"},
		{"a /healthz route that skips extauthz, removing a fixed list of headers", func(m *manifests) {
			m.gateway.routes = append(m.gateway.routes, healthzRoute(route(m, "demo-app")))
		}, "HTTPRoute/demo-app-healthz: not covered by a SecurityPolicy"},
		{"a second route to the app that the policy does not name", func(m *manifests) {
			r := route(m, "demo-app").DeepCopy()
			r.Name = "demo-app-v2"
			m.gateway.routes = append(m.gateway.routes, r)
		}, "HTTPRoute/demo-app-v2: not covered by a SecurityPolicy with extAuth: its requests reach Service demo-app"},
		{"the policy narrowed to one rule of the route", func(m *manifests) {
			sp(m).Spec.TargetRefs[0].SectionName = ptr(gwapiv1.SectionName("rule-0"))
		}, "HTTPRoute/demo-app: not covered by a SecurityPolicy"},
		{"the policy without extAuth", func(m *manifests) {
			sp(m).Spec.ExtAuth = nil
		}, "HTTPRoute/demo-app: not covered by a SecurityPolicy with extAuth"},
		{"the Envoy Pods without the proxy label", func(m *manifests) {
			m.gateway.envoyProxies[0].Spec.Provider.Kubernetes.EnvoyDeployment.Pod.Labels = map[string]string{"app": "gw"}
		}, "not let through"},
		{"the extauthz NetworkPolicy without the proxies", func(m *manifests) {
			for _, np := range m.netpols {
				if np.Name == "extauthz" {
					np.Spec.Ingress[0].From = []networkingv1.NetworkPolicyPeer{np.Spec.Ingress[1].From[0]}
				}
			}
		}, "not let through"},
		{"the app's Pods open to every Pod", func(m *manifests) {
			m.netpols = slices.DeleteFunc(m.netpols, func(np *networkingv1.NetworkPolicy) bool { return np.Namespace == "demo" })
		}, "any Pod could call it"},
		{"the app's Pods open to a namespace besides the Gateway", func(m *manifests) {
			for _, np := range m.netpols {
				if np.Namespace == "demo" {
					np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "monitoring"}},
					}}})
				}
			}
		}, "any Pod could call it"},
		{"the app's Pods open to the proxy label in every namespace", func(m *manifests) {
			for _, np := range m.netpols {
				if np.Namespace == "demo" {
					np.Spec.Ingress[0].From[0].NamespaceSelector = &metav1.LabelSelector{}
				}
			}
		}, "any Pod could call it"},
		{"encoded slashes unescaped", func(m *manifests) {
			m.gateway.clientTraffic[0].Spec.Path.EscapedSlashesAction = ptr(egv1a1.UnescapeAndForward)
		}, "encoded slashes"},
		{"header names with underscores left to the default", func(m *manifests) {
			m.gateway.clientTraffic[0].Spec.Headers.WithUnderscoresAction = nil
		}, "underscores"},
		{"no limit on how long a request's body may trickle in", func(m *manifests) {
			m.gateway.clientTraffic[0].Spec.Timeout.HTTP.RequestReceivedTimeout = nil
		}, "whole request"},
		{"the headers' timeout turned off", func(m *manifests) {
			m.gateway.clientTraffic[0].Spec.Timeout.HTTP.RequestHeadersReceivedTimeout = ptr(gwapiv1.Duration("0s"))
		}, "send its headers"},
		{"an hour for the whole request", func(m *manifests) {
			m.gateway.clientTraffic[0].Spec.Timeout.HTTP.RequestReceivedTimeout = ptr(gwapiv1.Duration("1h"))
		}, "whole request"},
		{"slashes not merged", func(m *manifests) {
			m.gateway.clientTraffic[0].Spec.Path.DisableMergeSlashes = ptr(true)
		}, "encoded slashes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := buildOverlay(t, "envoy-gateway")
			if ps := m.problems(t); len(ps) > 0 {
				t.Fatalf("the unmutated overlay has problems: %v", ps)
			}
			tt.mutate(m)
			ps := m.problems(t)
			if !slices.ContainsFunc(ps, func(p string) bool { return strings.Contains(p, tt.wantErr) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantErr, ps)
			}
		})
	}
}

// TestGatewayDecodersAreStrict: a misspelt field of the SecurityPolicy, deep or
// in the wrong case, fails the decoding the overlay goes through.
func TestGatewayDecodersAreStrict(t *testing.T) {
	for _, doc := range []string{
		`{"apiVersion":"gateway.envoyproxy.io/v1alpha1","kind":"SecurityPolicy","metadata":{"name":"x"},"spec":{"extauth":{}}}`,
		`{"apiVersion":"gateway.envoyproxy.io/v1alpha1","kind":"SecurityPolicy","metadata":{"name":"x"},"spec":{"extAuth":{"failopen":false}}}`,
		`{"apiVersion":"gateway.envoyproxy.io/v1alpha1","kind":"SecurityPolicy","metadata":{"name":"x"},"spec":{"extAuth":{"grpc":{"backendRefs":[{"name":"a","prot":9001}]}}}}`,
	} {
		if _, err := decodeStrictErr[egv1a1.SecurityPolicy]([]byte(doc)); err == nil {
			t.Errorf("accepted %s", doc)
		}
	}
	if _, err := decodeStrictErr[gwapiv1.HTTPRoute]([]byte(`{"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute","metadata":{"name":"x"},"spec":{"rules":[{"matchs":[]}]}}`)); err == nil {
		t.Error("accepted a misspelt HTTPRoute field")
	}
}

// healthzRoute is an HTTPRoute beside app that sends GET /healthz to app's
// backends without extauthz, removing a fixed list of headers: the shape of
// the exemption the overlay once had.
func healthzRoute(app *gwapiv1.HTTPRoute) *gwapiv1.HTTPRoute {
	r := app.DeepCopy()
	r.Name = "demo-app-healthz"
	r.Spec.Rules = []gwapiv1.HTTPRouteRule{{
		Matches: []gwapiv1.HTTPRouteMatch{{
			Path:   &gwapiv1.HTTPPathMatch{Type: ptr(gwapiv1.PathMatchExact), Value: ptr("/healthz")},
			Method: ptr(gwapiv1.HTTPMethodGet),
		}},
		Filters: []gwapiv1.HTTPRouteFilter{{
			Type: gwapiv1.HTTPRouteFilterRequestHeaderModifier,
			RequestHeaderModifier: &gwapiv1.HTTPHeaderFilter{Remove: []string{
				"x-authz-key-id", "x-authz-key-name", "x-authz-owner", "x-authz-permissions", "x-api-key", "authorization", "cookie",
				"x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url",
			}},
		}},
		BackendRefs: app.Spec.Rules[0].BackendRefs,
	}}
	return r
}

// Behind Envoy Gateway the proxies' namespace is known: a Pod labelled as a
// proxy in any other namespace (whoever may create a Pod there may label
// it) does not reach extauthz, and the Gateway's own Envoy Pods still do.
func TestEnvoyGatewayLetsInOnlyItsOwnNamespacesProxies(t *testing.T) {
	m := buildOverlay(t, "envoy-gateway")
	proxy := map[string]string{"extauthz/proxy": "true"}
	if !m.extauthzAdmits(proxy, envoyGatewayNamespace) {
		t.Errorf("the Gateway's Envoy Pods in %s are not let in", envoyGatewayNamespace)
	}
	for _, ns := range []string{"some-tenant", "demo", "extauthz"} {
		if m.extauthzAdmits(proxy, ns) {
			t.Errorf("a Pod labelled as a proxy in namespace %s is let in", ns)
		}
	}
}
