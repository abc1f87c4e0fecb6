package deploytest

import (
	"maps"
	"strings"
	"testing"
)

// TestTheChartsIstioSelectorIsTheOneGiven: istio.selector names "the
// labels of the workloads to protect". Helm merges a map the user gives with
// the map of values.yaml, so a selector given as {app: billing} renders as
// {app: billing, extauthz/protected: "true"}: the CUSTOM AuthorizationPolicy
// (and its ambient guard) then select only the Pods that carry both labels,
// and a Pod labelled app=billing alone, the workload the operator named, is
// never sent to extauthz. Every request to it reaches it unchecked.
func TestTheChartsIstioSelectorIsTheOneGiven(t *testing.T) {
	want := map[string]string{"app": "billing"}
	m, _ := mustRenderChart(t, `
istio: {enabled: true, namespace: demo, selector: {app: billing}}
`)
	if len(m.authzPolicy) == 0 {
		t.Fatal("no CUSTOM AuthorizationPolicy rendered")
	}
	for _, ap := range m.authzPolicy {
		if got := ap.Spec.GetSelector().GetMatchLabels(); !maps.Equal(got, want) {
			t.Errorf("AuthorizationPolicy %s/%s (CUSTOM) selects %v, not the istio.selector given, %v: a Pod labelled only %v is never checked by extauthz",
				ap.Namespace, ap.Name, got, want, want)
		}
	}
	for _, ap := range m.authzGuards {
		if got := ap.Spec.GetSelector().GetMatchLabels(); !maps.Equal(got, want) {
			t.Errorf("AuthorizationPolicy %s/%s (%v) selects %v, not the istio.selector given, %v",
				ap.Namespace, ap.Name, ap.Spec.GetAction(), got, want)
		}
	}
}

// With no selector given, the chart selects extauthz/protected: "true".
func TestTheChartsIstioSelectorDefaultsToTheProtectedLabel(t *testing.T) {
	want := map[string]string{"extauthz/protected": "true"}
	m, notes := mustRenderChart(t, `
istio: {enabled: true, namespace: demo}
`)
	if !strings.Contains(notes, "with extauthz/protected=true") {
		t.Errorf("the install notes do not say which label to give the workloads:\n%s", notes)
	}
	if len(m.authzPolicy) == 0 || len(m.authzGuards) == 0 {
		t.Fatal("no AuthorizationPolicies rendered")
	}
	for _, ap := range append(m.authzPolicy, m.authzGuards...) {
		if got := ap.Spec.GetSelector().GetMatchLabels(); !maps.Equal(got, want) {
			t.Errorf("AuthorizationPolicy %s/%s selects %v, want %v", ap.Namespace, ap.Name, got, want)
		}
	}
}
