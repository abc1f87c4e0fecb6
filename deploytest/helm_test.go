package deploytest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	chartutil "helm.sh/helm/v4/pkg/chart/v2/util"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// chartDir is the Helm chart, relative to the repository root.
const chartDir = "deploy/helm/extauthz"

// The release the tests render: with this name the chart's objects have the
// kustomize base's names (Deployment extauthz, Secrets extauthz-pepper and
// extauthz-redis), so the overlays' checks apply unchanged.
const (
	releaseName      = "extauthz"
	releaseNamespace = "extauthz"
	// The oldest Kubernetes the chart declares (Chart.yaml kubeVersion).
	renderKubeVersion = "v1.30.0"
)

// loadChart loads the chart directory as helm does (files/redis is a link to
// k8s/base/redis, which the loader follows).
func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	// The loader logs each link it follows (files/redis) to slog's default.
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	ch, err := loader.Load(filepath.Join(repoRoot, chartDir))
	if err != nil {
		t.Fatalf("load %s: %v", chartDir, err)
	}
	return ch
}

// installDryRun renders a chart with values as `helm template` (a
// client-only dry-run install) does, step for step with the packages its
// install action uses: the chart's kubeVersion against the cluster's, the
// values coalesced and checked against values.schema.json, the templates
// rendered, NOTES.txt of the top chart taken apart, hooks split from the
// manifests in install order. (The action itself would also link Helm's
// Kubernetes client and registry code, twice the packages to compile.) It
// returns the manifest stream and the notes.
func installDryRun(t *testing.T, ch *chart.Chart, valuesYAML string) (manifest, notes string, err error) {
	t.Helper()
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(valuesYAML), &vals); err != nil {
		t.Fatalf("values: %v", err)
	}
	kv, err := common.ParseKubeVersion(renderKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	caps := common.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	if c := ch.Metadata.KubeVersion; c != "" && !chartutil.IsCompatibleRange(c, caps.KubeVersion.String()) {
		return "", "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", c, caps.KubeVersion.Version)
	}
	if err := chartutil.ProcessDependencies(ch, vals); err != nil {
		return "", "", err
	}
	opts := common.ReleaseOptions{Name: releaseName, Namespace: releaseNamespace, Revision: 1, IsInstall: true}
	top, err := util.ToRenderValuesWithSchemaValidation(ch, vals, opts, caps, false)
	if err != nil {
		return "", "", err
	}
	files, err := engine.Engine{}.Render(ch, top)
	if err != nil {
		return "", "", err
	}
	for name, text := range files {
		if strings.HasSuffix(name, "/NOTES.txt") {
			if name == path.Join(ch.Name(), "templates", "NOTES.txt") {
				notes = text
			}
			delete(files, name)
		}
	}
	hooks, sorted, err := releaseutil.SortManifests(files, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return "", "", err
	}
	if len(hooks) > 0 {
		t.Fatalf("the chart renders %d hooks; it has none on purpose (helm template would print them apart)", len(hooks))
	}
	var b strings.Builder
	for _, m := range sorted {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.Name, m.Content)
	}
	return b.String(), notes, nil
}

// renderChart renders the chart with values and decodes every document
// strictly into its API type, as buildOverlay does for the overlays.
func renderChart(t *testing.T, valuesYAML string) (*manifests, string, error) {
	t.Helper()
	return renderChartOf(t, loadChart(t), valuesYAML)
}

func renderChartOf(t *testing.T, ch *chart.Chart, valuesYAML string) (*manifests, string, error) {
	t.Helper()
	manifest, notes, err := installDryRun(t, ch, valuesYAML)
	if err != nil {
		return nil, "", err
	}
	m := &manifests{overlay: "helm"}
	docs := releaseutil.SplitManifests(manifest)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return strings.Compare(a, b) })
	for _, k := range keys {
		doc := docs[k]
		source := "?"
		if m := regexp.MustCompile(`(?m)^# Source: (.+)$`).FindStringSubmatch(doc); m != nil {
			source = m[1]
		}
		// Duplicate keys are an error here, as in the API server's strict
		// field validation.
		data, err := yaml.YAMLToJSONStrict([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		if string(bytes.TrimSpace(data)) == "null" {
			continue
		}
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name string `json:"name"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal(data, &head); err != nil {
			t.Fatalf("%s: %v", source, err)
		}
		m.add(t, fmt.Sprintf("%s %s/%s", source, head.Kind, head.Metadata.Name), head.Kind, head.APIVersion, data)
	}
	return m, notes, nil
}

// mustRenderChart is renderChart for values that must render.
func mustRenderChart(t *testing.T, valuesYAML string) (*manifests, string) {
	t.Helper()
	m, notes, err := renderChart(t, valuesYAML)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return m, notes
}

// chartCases are value sets the chart must render into a deployment that
// passes every check.
var chartCases = []struct {
	name, values string
}{
	{"the defaults", ``},
	{"redis with autoscaling, a ServiceMonitor, scrape annotations and TLS", `
autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 12}
metrics:
  podAnnotations: true
  serviceMonitor: {enabled: true, labels: {release: prometheus}}
tls: {enabled: true, existingSecret: extauthz-tls}
`},
	{"mutual TLS with the client CA from its own Secret", `
tls:
  enabled: true
  existingSecret: extauthz-tls
  clientCA: {enabled: true, existingSecret: proxies-ca, key: ca.pem}
`},
	{"a LoadBalancer, under mutual TLS", `
service: {type: LoadBalancer}
tls:
  enabled: true
  existingSecret: extauthz-tls
  clientCA: {enabled: true}
`},
	{"the embedded store", `
store: {backend: embedded}
replicaCount: 1
`},
	{"istio", `
istio: {enabled: true, namespace: demo}
`},
	{"a max_stale of an hour and a half, and a readiness probe that lasts it", `
readinessFailureThreshold: 1080
config:
  cache: {max_stale: 1.5h}
`},
	{"a long ttl, the unset max_stale, and a readiness probe that lasts it", `
readinessFailureThreshold: 72
config:
  cache: {ttl: 6m}
`},
	{"your own Redis", `
redis: {enabled: false}
store:
  redis:
    url: redis://redis.storage.svc.cluster.local:6379/0
    username: authz
    prefix: "authz:"
    password: {existingSecret: managed-redis, key: secret}
networkPolicy:
  extraEgress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: storage}}}]
    ports: [{port: 6379, protocol: TCP}]
`},
	{"secrets created from values, other listen ports and a custom config", `
pepper: {value: a-pepper-for-the-test-only-0123456789}
store: {redis: {password: {value: a-redis-password-for-the-test}}}
listen: {grpc: 7001, http: 7002, admin: "127.0.0.1:7003"}
resources: {limits: {memory: 1Gi}}
readinessFailureThreshold: 120
config:
  cache: {size: 1000000, ttl: 1m, negative_ttl: 10s, max_stale: 10m}
  log: {level: debug, format: text}
  keys: {prefix: ak, max_per_owner: 20, retention: 2160h}
  rate_limit: {default: 100/m, on_store_error: deny, failed_attempts: 50/m}
  routes:
  - {path: /, public: true}
  unmatched: authenticate
  store: {redis: {timeout: 500ms}}
`},
}

// TestChartProxiesCanBeLimitedToTheirNamespaces: with the proxies'
// namespaces named, no Pod elsewhere reaches extauthz by its labels alone,
// the Istio-protected workloads included, whose namespace the chart knows.
func TestChartProxiesCanBeLimitedToTheirNamespaces(t *testing.T) {
	m, _ := mustRenderChart(t, `
networkPolicy: {proxyNamespaceLabels: {kubernetes.io/metadata.name: gateways}}
istio: {enabled: true, namespace: demo}
`)
	w, _ := m.extauthzWorkload()
	proxy := map[string]string{proxyLabel: "true"}
	protected := map[string]string{protectedLabel: "true"}
	if !m.extauthzAdmits(proxy, "gateways") || !m.extauthzAdmits(protected, "demo") {
		t.Error("the proxies, or the protected workloads, are not let in from their own namespace")
	}
	for _, ns := range []string{"tenant", "default"} {
		if m.extauthzAdmits(proxy, ns) || m.extauthzAdmits(protected, ns) {
			t.Errorf("a Pod in namespace %s that labels itself a proxy or protected reaches extauthz", ns)
		}
	}
	for _, np := range m.policiesFor(w) {
		for _, rule := range np.Spec.Ingress {
			for _, peer := range rule.From {
				if sel := peer.NamespaceSelector; sel != nil && len(sel.MatchLabels) == 0 && len(sel.MatchExpressions) == 0 {
					t.Errorf("NetworkPolicy/%s admits %v from every namespace", np.Name, peer.PodSelector)
				}
			}
		}
	}
}

// TestChartNamesAnotherClustersDNS: where the cluster DNS runs elsewhere or
// is labelled otherwise, the values name it, and extauthz's egress to port
// 53 goes to those Pods in that namespace, no further.
func TestChartNamesAnotherClustersDNS(t *testing.T) {
	m, _ := mustRenderChart(t, `
networkPolicy:
  dnsPodLabels: {k8s-app: null, app: resolver}
  dnsNamespaceLabels: {kubernetes.io/metadata.name: dns}
`)
	w, _ := m.extauthzWorkload()
	var peers []networkingv1.NetworkPolicyPeer
	for _, np := range m.policiesFor(w) {
		for _, rule := range np.Spec.Egress {
			if ruleOpensPort(rule.Ports, dnsPort) {
				peers = append(peers, rule.To...)
			}
		}
	}
	want := networkingv1.NetworkPolicyPeer{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{namespaceNameLabel: "dns"}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": "resolver"}},
	}
	if len(peers) != 1 || !reflect.DeepEqual(peers[0], want) {
		t.Errorf("extauthz may reach port %d of %+v, want only %+v", dnsPort, peers, want)
	}
}

func TestChartRenders(t *testing.T) {
	ch := loadChart(t)
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			m, notes, err := renderChartOf(t, ch, tc.values)
			if err != nil {
				t.Fatalf("helm template: %v", err)
			}
			for _, p := range m.chartProblems(t, notes) {
				t.Error(p)
			}
		})
	}
}

// TestNotesMakeTheAdminKeyAsTheREADMEDoes: the install notes' first admin
// key carries every restriction of the README's bootstrap (its permission,
// its allowlist of the loopback the admin API is called from, which is
// where kubectl port-forward connects from, and the check of a copied key
// through a proxy names no such address), whatever store the chart runs;
// only the name and the CLI's own flags may differ, and the allowlist
// follows the admin listener to IPv6's loopback.
func TestNotesMakeTheAdminKeyAsTheREADMEDoes(t *testing.T) {
	readme := adminKeyFlags(t, "README.md", readRepoFile(t, "README.md"))
	if ip := readme["--ip"]; !slices.Equal(ip, []string{"127.0.0.1/32"}) {
		t.Fatalf("README.md: the admin key's --ip is %q; this test expects the loopback", ip)
	}
	for _, tc := range []struct{ values, loopback string }{
		{``, "127.0.0.1/32"},
		{"store: {backend: embedded}\nreplicaCount: 1", "127.0.0.1/32"},
		{`listen: {admin: "localhost:7003"}`, "127.0.0.1/32"},
		{`listen: {admin: "[::1]:7003"}`, "::1/128"},
		{`listen: {admin: "off"}`, "127.0.0.1/32"},
	} {
		_, notes := mustRenderChart(t, tc.values)
		got := adminKeyFlags(t, "NOTES.txt", notes)
		for flag, want := range readme {
			if flag == "--ip" {
				want = []string{tc.loopback}
			}
			if !slices.Equal(got[flag], want) {
				t.Errorf("values %q: the notes' admin key has %s %q, want %q", tc.values, flag, got[flag], want)
			}
		}
	}
}

// adminKeyFlags are the flags of the one `keys create` command in text that
// makes a keys:admin key, by name, leaving out those that do not shape the
// key (--name, --config, --json).
func adminKeyFlags(t *testing.T, source, text string) map[string][]string {
	t.Helper()
	var lines []string
	for _, line := range strings.Split(text, "\n") {
		if strings.Contains(line, "keys create") && strings.Contains(line, "keys:admin") {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("%s: %d commands make an admin key, want 1: %q", source, len(lines), lines)
	}
	_, args, _ := strings.Cut(lines[0], "keys create")
	args, _, _ = strings.Cut(args, "|")
	args, _, _ = strings.Cut(args, ")")
	flags := map[string][]string{}
	fields := strings.Fields(args)
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		if !strings.HasPrefix(f, "--") {
			t.Fatalf("%s: %q in the admin key's command is not a flag", source, f)
		}
		switch f {
		case "--json":
			continue
		case "--name", "--config":
			i++
			continue
		}
		if i+1 == len(fields) {
			t.Fatalf("%s: %s without a value", source, f)
		}
		flags[f] = append(flags[f], fields[i+1])
		i++
	}
	if len(flags["--perm"]) == 0 {
		t.Fatalf("%s: the admin key's command has no --perm", source)
	}
	return flags
}

// chartProblems runs the overlays' checks that apply to the rendered chart,
// and the chart's own.
func (m *manifests) chartProblems(t *testing.T, notes string) []string {
	t.Helper()
	var ps []string
	bad := func(format string, args ...any) { ps = append(ps, fmt.Sprintf(format, args...)) }
	m.checkWorkloads(t, bad)
	if _, rc := m.redisContainer(); rc != nil {
		m.checkRedis(t, bad)
	}
	m.checkNetworkPolicies(bad)
	m.checkPDBs(bad)
	m.checkObjectsApart(bad)
	m.checkHPAs(bad)
	m.checkServiceMonitors(bad)
	m.checkServiceAccounts(bad)
	m.checkChartSecrets(bad)
	if w, ok := m.extauthzWorkload(); ok && w.kind == "Deployment" {
		m.checkCentralService(bad)
	}
	if len(m.authzPolicy) > 0 {
		mc, err := meshConfigFromNotes(t, notes)
		if err != nil {
			bad("NOTES: %v", err)
		} else {
			m.checkIstioWith(mc, bad)
		}
	}
	return ps
}

// extauthzWorkload is the chart's own extauthz Deployment or StatefulSet.
func (m *manifests) extauthzWorkload() (workload, bool) {
	for _, w := range m.workloads() {
		if w.name == releaseName {
			return w, true
		}
	}
	return workload{}, false
}

// checkHPAs: an autoscaler scales the extauthz Deployment (never the embedded
// store's StatefulSet), which then leaves its replica count to it, and never
// below two replicas.
func (m *manifests) checkHPAs(bad func(string, ...any)) {
	for _, h := range m.hpas {
		id := "HorizontalPodAutoscaler/" + h.Name
		ref := h.Spec.ScaleTargetRef
		var dep *appsv1.Deployment
		for _, d := range m.deployments {
			if ref.Kind == "Deployment" && ref.APIVersion == "apps/v1" && ref.Name == d.Name {
				dep = d
			}
		}
		if dep == nil {
			bad("%s: scales %s %s/%s, which is not an extauthz Deployment here", id, ref.APIVersion, ref.Kind, ref.Name)
			continue
		}
		if dep.Spec.Replicas != nil {
			bad("%s: Deployment %s still sets replicas: every helm upgrade would undo the autoscaler", id, dep.Name)
		}
		if ptrOr(h.Spec.MinReplicas, 1) < 2 {
			bad("%s: minReplicas %d: every request behind it waits on this service", id, ptrOr(h.Spec.MinReplicas, 1))
		}
		if len(h.Spec.Metrics) == 0 {
			bad("%s: no metrics", id)
		}
		cfg := m.configOfWorkload(dep.Name)
		if cfg == nil || cfg.Store.Backend != "redis" {
			bad("%s: scales a Deployment whose replicas do not share a Redis store", id)
		}
	}
}

// configOfWorkload is the config the extauthz container of a workload runs.
func (m *manifests) configOfWorkload(name string) *extauthzConfig {
	for _, w := range m.workloads() {
		if w.name != name {
			continue
		}
		for _, c := range allContainers(&w.pod.Spec) {
			if isExtauthz(c) {
				cfg, err := m.extauthzConfigOf(c, &w.pod.Spec)
				if err == nil {
					return cfg
				}
			}
		}
	}
	return nil
}

// checkServiceMonitors: each scrapes /metrics on the HTTP port of exactly one
// Service (so each Pod once), in the scheme the listener speaks.
func (m *manifests) checkServiceMonitors(bad func(string, ...any)) {
	for _, sm := range m.serviceMonitors {
		id := "ServiceMonitor/" + sm.Name
		var selected []*corev1.Service
		for _, svc := range m.services {
			if svc.Namespace == sm.Namespace && selects(&sm.Spec.Selector, svc.Labels) {
				selected = append(selected, svc)
			}
		}
		if len(selected) != 1 {
			bad("%s: selects %d Services, want exactly 1 (each Pod scraped once)", id, len(selected))
			continue
		}
		svc := selected[0]
		w, ok := m.extauthzWorkload()
		if !ok || !selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, w.pod.Labels) {
			bad("%s: Service %s does not front the extauthz Pods", id, svc.Name)
			continue
		}
		cfg := m.configOfWorkload(w.name)
		if len(sm.Spec.Endpoints) != 1 {
			bad("%s: %d endpoints, want 1", id, len(sm.Spec.Endpoints))
			continue
		}
		ep := sm.Spec.Endpoints[0]
		i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port })
		if i < 0 || cfg == nil {
			bad("%s: port %q is not a port of Service %s", id, ep.Port, svc.Name)
			continue
		}
		_, port, _ := net.SplitHostPort(cfg.httpListen())
		if httpPort, _ := strconv.Atoi(port); int(svc.Spec.Ports[i].Port) != httpPort {
			bad("%s: scrapes port %s (%d), /metrics is on the HTTP listener %d", id, ep.Port, svc.Spec.Ports[i].Port, httpPort)
		}
		if ep.Path != "/metrics" {
			bad("%s: path %q, want /metrics", id, ep.Path)
		}
		wantScheme := "http"
		if cfg.TLS.CertFile != "" {
			wantScheme = "https"
		}
		if ep.Scheme == nil || strings.ToLower(ep.Scheme.String()) != wantScheme {
			bad("%s: scheme %v, the listener speaks %s", id, ep.Scheme, wantScheme)
		}
	}
}

// checkServiceAccounts: the Pods run under an account of the chart that
// mounts no API token (neither does any Pod: checkWorkloads).
func (m *manifests) checkServiceAccounts(bad func(string, ...any)) {
	for _, sa := range m.serviceAccounts {
		if ptrOr(sa.AutomountServiceAccountToken, true) {
			bad("ServiceAccount/%s: automountServiceAccountToken must be false", sa.Name)
		}
	}
	for _, w := range m.workloads() {
		name := w.pod.Spec.ServiceAccountName
		if name == "" || !slices.ContainsFunc(m.serviceAccounts, func(sa *corev1.ServiceAccount) bool { return sa.Name == name }) {
			bad("%s/%s: runs as ServiceAccount %q, which the chart does not create", w.kind, w.name, name)
		}
	}
}

// checkChartSecrets: a Secret the chart creates holds what a container reads
// from it; the pepper's survives an uninstall.
func (m *manifests) checkChartSecrets(bad func(string, ...any)) {
	for _, s := range m.secrets {
		id := "Secret/" + s.Name
		used := false
		for _, w := range m.workloads() {
			for _, c := range allContainers(&w.pod.Spec) {
				for _, e := range c.Env {
					if ref := e.ValueFrom; ref != nil && ref.SecretKeyRef != nil && ref.SecretKeyRef.Name == s.Name {
						used = true
						if _, ok := s.Data[ref.SecretKeyRef.Key]; !ok {
							bad("%s: no key %s, which %s/%s reads as %s", id, ref.SecretKeyRef.Key, w.kind, w.name, e.Name)
						}
						if e.Name == "EXTAUTHZ_PEPPER" && s.Annotations["helm.sh/resource-policy"] != "keep" {
							bad("%s: the pepper's Secret is deleted with the release, and with it every key", id)
						}
					}
				}
			}
		}
		if !used {
			bad("%s: no container reads it", id)
		}
	}
}

// meshConfigFromNotes reads the meshConfig block the install notes print.
func meshConfigFromNotes(t *testing.T, notes string) (*meshv1alpha1.MeshConfig, error) {
	t.Helper()
	_, block, ok := strings.Cut(notes, "\nmeshConfig:\n")
	if !ok {
		return nil, errors.New("no meshConfig block")
	}
	block, _, _ = strings.Cut(block, "\n\n")
	var indented strings.Builder
	for _, line := range strings.Split("meshConfig:\n"+block, "\n") {
		indented.WriteString("  " + line + "\n")
	}
	op := "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nmetadata: {name: from-notes}\nspec:\n" + indented.String()
	return loadMeshConfig(t, []byte(op))
}

// memLimitMiB reads GOMEMLIMIT's MiB form ("460MiB").
func memLimitMiB(v string) (int64, bool) {
	n, ok := strings.CutSuffix(v, "MiB")
	if !ok {
		return 0, false
	}
	i, err := strconv.ParseInt(n, 10, 64)
	return i, err == nil && i > 0
}

// checkGoMemLimit: GOMEMLIMIT is set below the container's memory limit and
// near it (80–95%), so the collector works harder before the kernel kills.
func checkGoMemLimit(cid string, c *corev1.Container, bad func(string, ...any)) {
	e := envVar(c, "GOMEMLIMIT")
	limit := c.Resources.Limits.Memory()
	if e == nil || limit.IsZero() {
		bad("%s: GOMEMLIMIT and a memory limit must both be set", cid)
		return
	}
	mib, ok := memLimitMiB(e.Value)
	if !ok {
		bad("%s: GOMEMLIMIT %q is not N MiB", cid, e.Value)
		return
	}
	soft := resource.NewQuantity(mib<<20, resource.BinarySI)
	if pct := soft.Value() * 100 / limit.Value(); pct < 80 || pct > 95 {
		bad("%s: GOMEMLIMIT %s is %d%% of the memory limit %s; keep it at 80–95%%", cid, e.Value, pct, limit.String())
	}
}

// What one cached key takes (docs/operations.md, Memory: 320 bytes, more
// for a record over 216 bytes) and extauthz's default cache size.
const (
	cachedKeyBytes   = 320
	defaultCacheSize = 100000
)

// checkCacheFits: a full key cache takes at most half of GOMEMLIMIT. The
// cached keys are live heap, which at GOGC=100 grows by as much again
// between collections, beside everything else the process holds; a cache
// that fills the soft limit makes the collector run without end, and the
// kernel kill the container, on every replica that sees enough keys.
func checkCacheFits(cid string, c *corev1.Container, cfg *extauthzConfig, bad func(string, ...any)) {
	e := envVar(c, "GOMEMLIMIT")
	if e == nil {
		return // checkGoMemLimit says so
	}
	mib, ok := memLimitMiB(e.Value)
	if !ok {
		return
	}
	size := cfg.Cache.Size
	if size == 0 {
		size = defaultCacheSize
	}
	if full := int64(size) * cachedKeyBytes; full > mib<<20/2 {
		bad("%s: a full cache of %d keys takes about %d MiB, over half of GOMEMLIMIT %s: raise the memory limit or lower cache.size", cid, size, full>>20, e.Value)
	}
}

// mountedSecret returns the Secret and key behind a file in a container.
func mountedSecret(c *corev1.Container, spec *corev1.PodSpec, file string) (secret, key string, err error) {
	for _, vm := range c.VolumeMounts {
		if path.Dir(file) != path.Clean(vm.MountPath) {
			continue
		}
		if vm.SubPath != "" {
			return "", "", fmt.Errorf("%s is mounted with subPath: a renewed Secret would never reach it", file)
		}
		for _, v := range spec.Volumes {
			if v.Name != vm.Name || v.Secret == nil {
				continue
			}
			for _, it := range v.Secret.Items {
				if it.Path == path.Base(file) {
					return v.Secret.SecretName, it.Key, nil
				}
			}
			if len(v.Secret.Items) == 0 {
				return v.Secret.SecretName, path.Base(file), nil
			}
			return "", "", fmt.Errorf("Secret volume %s does not project %s", v.Name, path.Base(file))
		}
	}
	return "", "", fmt.Errorf("%s is not in a mounted Secret", file)
}

// TestChartRefusesBadValues: values that cannot work, or that say one thing
// in two places, fail at render time with a message naming the value.
func TestChartRefusesBadValues(t *testing.T) {
	ch := loadChart(t)
	tests := []struct{ name, values, wantErr string }{
		{"the embedded store with two replicas", "store: {backend: embedded}\nreplicaCount: 2", "exactly 1 replica"},
		{"the embedded store left at the default replica count", "store: {backend: embedded}", "replicaCount 2"},
		{"the embedded store autoscaled", "store: {backend: embedded}\nreplicaCount: 1\nautoscaling: {enabled: true}", "cannot scale"},
		{"the embedded store as a sidecar", "store: {backend: embedded}\nreplicaCount: 1\nsidecar: {enabled: true}", "sidecar.enabled with store.backend embedded"},
		{"Redis settings for the embedded store", "store: {backend: embedded}\nreplicaCount: 1\nconfig: {store: {redis: {timeout: 500ms}}}", "config.store.redis is set, but store.backend is embedded"},
		{"an unknown store", "store: {backend: postgres}", "store/backend"},
		{"extauthz named as the chart's Redis is selected", "nameOverride: redis", `nameOverride "redis"`},
		{"a name too long for its suffixes", "fullnameOverride: " + strings.Repeat("x", 55), "keep it to 54"},
		{"a nameOverride that makes the names too long for their suffixes", "nameOverride: " + strings.Repeat("y", 50), "keep it to 54"},
		{"a misspelt top-level value", "replicas: 3", "replicas"},
		{"a misspelt nested value", "store: {redis: {pasword: {value: x}}}", "pasword"},
		{"a listen port in config", "config: {listen: {grpc: ':9101'}}", "config.listen is set by the chart: use the value listen"},
		{"the Redis URL in config", "config: {store: {redis: {url: 'redis://other:6379/0'}}}", "config.store.redis.url is set by the chart: use the value store.redis.url"},
		{"the pepper's variable in config", "config: {hashing: {pepper_env: MY_PEPPER}}", "use the value pepper"},
		{"TLS files in config", "config: {tls: {cert_file: /x}}", "config.tls is set by the chart"},
		{"the embedded store's path in config", "config: {store: {path: /data/x.db}}", "config.store.path"},
		{"a password in the Redis URL", "redis: {enabled: false}\nstore: {redis: {url: 'redis://:hunter2@redis.example:6379/0'}}\nnetworkPolicy: {extraEgress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}", "store/redis/url"},
		{"a Redis URL that is not redis://", "redis: {enabled: false}\nstore: {redis: {url: 'http://redis.example:6379'}}\nnetworkPolicy: {extraEgress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}", "store/redis/url"},
		{"the admin API on every interface", "listen: {admin: ':9003'}", "listen/admin"},
		{"the admin API on a Pod address", "listen: {admin: '10.0.0.1:9003'}", "listen/admin"},
		{"two listeners on one port", "listen: {grpc: 9002}", "three different ports"},
		{"the admin API on the HTTP port", "listen: {admin: '127.0.0.1:9002'}", "three different ports"},
		{"the profiles on every interface", "listen: {debug: ':9004'}", "listen/debug"},
		{"the profiles on a Pod address", "listen: {debug: '10.0.0.1:9004'}", "listen/debug"},
		{"the profiles on the gRPC port", "listen: {debug: '127.0.0.1:9001'}", "debug needs a port of its own"},
		{"the profiles on the admin port", "listen: {debug: 'localhost:9003'}", "debug needs a port of its own"},
		{"TLS without its Secret", "tls: {enabled: true}", "tls.existingSecret"},
		{"a TLS Secret with TLS off", "tls: {existingSecret: x}", "tls.enabled is false"},
		{"a client CA with TLS off", "tls: {clientCA: {enabled: true}}", "tls.enabled is false"},
		{"the pepper both from a Secret and a value", "pepper: {existingSecret: a, value: b}", "pepper: set existingSecret or value, not both"},
		{"the Redis password both ways", "store: {redis: {password: {existingSecret: a, value: b}}}", "not both"},
		{"your Redis and the chart's at once", "store: {redis: {url: 'redis://mine:6379/0'}}", "set redis.enabled false"},
		{"no Redis at all", "redis: {enabled: false}", "store.redis.url"},
		{"your Redis behind a NetworkPolicy with no way out to it", "redis: {enabled: false}\nstore: {redis: {url: 'redis://mine:6379/0'}}", "networkPolicy.extraEgress"},
		{"an egress rule that opens everything", "networkPolicy: {extraEgress: [{}]}", "extraEgress"},
		{"a max_stale the readiness probe gives up before", "config: {cache: {max_stale: 10m}}", "readinessFailureThreshold 60"},
		{"a max_stale in hours the readiness probe gives up before", "readinessFailureThreshold: 1079\nconfig: {cache: {max_stale: 1.5h}}", "raise it to at least 1080"},
		{"a max_stale in parts the readiness probe gives up before", "readinessFailureThreshold: 100\nconfig: {cache: {max_stale: 8m30s}}", "raise it to at least 102"},
		{"a ttl, the unset max_stale, the readiness probe gives up before", "config: {cache: {ttl: 6m}}", "unset: cache.ttl"},
		{"a max_stale the sidecar's readiness probe gives up before", "sidecar: {enabled: true}\nconfig: {cache: {max_stale: 10m}}", "readinessFailureThreshold 60"},
		{"DNS in every namespace", "networkPolicy: {dnsNamespaceLabels: {kubernetes.io/metadata.name: null}}", "dnsNamespaceLabels"},
		{"DNS on every Pod", "networkPolicy: {dnsPodLabels: {k8s-app: null}}", "dnsPodLabels"},
		{"the chart's Redis with another ACL user", "store: {redis: {username: admin}}", "lets in the ACL user extauthz only"},
		{"keys outside the chart's Redis ACL", "store: {redis: {prefix: 'authz:'}}", "keep the prefix under extauthz:"},
		{"an autoscaler floor of one", "autoscaling: {enabled: true, minReplicas: 1}", "autoscaling/minReplicas"},
		{"an autoscaler ceiling below its floor", "autoscaling: {enabled: true, minReplicas: 4, maxReplicas: 3}", "maxReplicas is below minReplicas"},
		{"a disruption budget nothing can satisfy", "podDisruptionBudget: {minAvailable: 2}", "no node could ever be drained"},
		{"a grace period the preStop sleep and the server's stop do not fit in", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds"},
		{"a key cache larger than the heap may grow", "config: {cache: {size: 1000000}}", "config.cache.size 1000000: a full cache takes about 305 MiB, over half of GOMEMLIMIT 460MiB"},
		{"a key cache larger than a GOMEMLIMIT given in GiB allows", "goMemLimit: 1GiB\nresources: {limits: {memory: 1200Mi}}\nconfig: {cache: {size: 2000000}}", "over half of GOMEMLIMIT 1GiB"},
		{"a memory limit GOMEMLIMIT cannot be derived from", "resources: {limits: {memory: 1000M}}", "give it in Mi or Gi"},
		{"no memory limit", "resources: {limits: {memory: null}}", "memory"},
		{"no memory limit for Redis", "redis: {resources: {limits: {memory: null}}}", "memory"},
		{"no limits for Redis", "redis: {resources: {limits: null}}", "limits"},
		{"Istio without the protected namespace", "istio: {enabled: true}", "istio.namespace"},
		{"Istio with extauthz's own TLS", "istio: {enabled: true, namespace: demo}\ntls: {enabled: true, existingSecret: extauthz-tls}", "istio.enabled with tls.enabled"},
		{"Istio skipping a path prefix", "istio: {enabled: true, namespace: demo, notPaths: ['/public/*']}", "istio/notPaths/0"},
		{"Istio skipping a path suffix", "istio: {enabled: true, namespace: demo, notPaths: ['*.png']}", "istio/notPaths/0"},
		{"Istio skipping every path", "istio: {enabled: true, namespace: demo, notPaths: ['*']}", "istio/notPaths/0"},
		{"Istio skipping a path with a parameter", "istio: {enabled: true, namespace: demo, notPaths: ['/healthz;x']}", "istio/notPaths/0"},
		{"a LoadBalancer that answers anyone", "service: {type: LoadBalancer}", "service.type LoadBalancer publishes"},
		{"a NodePort with TLS but no client certificates", "service: {type: NodePort}\ntls: {enabled: true, existingSecret: x}", "tls.clientCA.enabled"},
		{"a sidecar with an autoscaler", "sidecar: {enabled: true}\nautoscaling: {enabled: true}", "autoscaling.enabled with sidecar.enabled"},
		{"a sidecar with Istio", "sidecar: {enabled: true}\nistio: {enabled: true, namespace: demo}", "istio.enabled with sidecar.enabled"},
		{"an image digest that is not one", "image: {digest: latest}", "image/digest"},
		{"the pepper in clear in extraEnv", "extraEnv: [{name: EXTAUTHZ_PEPPER, value: Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a}]", "extraEnv[0] EXTAUTHZ_PEPPER is set by the chart"},
		{"the Redis password in clear in extraEnv", "extraEnv: [{name: OTEL_SERVICE_NAME, value: x}, {name: REDIS_PASSWORD, value: hunter2}]", "extraEnv[1] REDIS_PASSWORD is set by the chart"},
		{"the config file moved by extraEnv", "extraEnv: [{name: EXTAUTHZ_CONFIG, value: /tmp/other.yaml}]", "extraEnv[0] EXTAUTHZ_CONFIG is set by the chart"},
		{"a Sentinel password in clear in extraEnv", "redis: {enabled: false}\nconfig: {store: {redis: {addrs: ['s-0:26379'], master_name: m, sentinel_username: u, sentinel_password_env: SENTINEL_PW}}}\n" +
			"networkPolicy: {extraEgress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]}\nextraEnv: [{name: SENTINEL_PW, value: hunter2}]", "extraEnv[0] SENTINEL_PW holds a secret"},
		{"a Secret key that is not one", "pepper: {key: \"pepper: eA==\\n  injected\"}", "pepper/key"},
		{"a Redis password key that is not one", "store: {redis: {password: {key: \"a b\"}}}", "store/redis/password/key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := installDryRun(t, ch, tt.values)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestChartProblemsAreCaught breaks a rendered chart in memory and expects the
// checks to say so: the chart's own checks can fail.
func TestChartProblemsAreCaught(t *testing.T) {
	container := func(m *manifests) *corev1.Container {
		w, ok := m.extauthzWorkload()
		if !ok {
			t.Fatal("no extauthz workload")
		}
		return &w.pod.Spec.Containers[0]
	}
	const (
		defaults = ``
		embedded = "store: {backend: embedded}\nreplicaCount: 1"
		scaled   = "autoscaling: {enabled: true}\nmetrics: {serviceMonitor: {enabled: true}}\ntls: {enabled: true, existingSecret: extauthz-tls}"
		withMade = "pepper: {value: a-pepper-for-the-test-only-0123456789}"
		mtls     = "tls: {enabled: true, existingSecret: extauthz-tls, clientCA: {enabled: true}}"
	)
	tests := []struct {
		values  string
		name    string
		mutate  func(m *manifests)
		wantErr string
	}{
		{defaults, "readiness that takes every replica out 10 s into a Redis outage", func(m *manifests) {
			container(m).ReadinessProbe.FailureThreshold = 2
		}, "cache.max_stale"},
		{embedded, "the embedded store with two replicas", func(m *manifests) {
			m.statefulSets[0].Spec.Replicas = ptr(int32(2))
		}, "StatefulSet of exactly 1"},
		{embedded, "the embedded store in a Deployment", func(m *manifests) {
			s := m.statefulSets[0]
			m.deployments = append(m.deployments, &appsv1.Deployment{ObjectMeta: s.ObjectMeta, Spec: appsv1.DeploymentSpec{Replicas: s.Spec.Replicas, Selector: s.Spec.Selector, Template: s.Spec.Template}})
			m.statefulSets = m.statefulSets[:0]
		}, "StatefulSet of exactly 1"},
		{embedded, "the embedded store off its volume", func(m *manifests) {
			c := container(m)
			c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == "data" })
		}, "not on a volumeClaimTemplate"},
		{embedded, "the embedded store's volume deleted with the StatefulSet", func(m *manifests) {
			m.statefulSets[0].Spec.PersistentVolumeClaimRetentionPolicy = nil
		}, "deleted with the StatefulSet"},
		{embedded, "the embedded store's volume not writable by the process", func(m *manifests) {
			m.statefulSets[0].Spec.Template.Spec.SecurityContext.FSGroup = nil
		}, "fsGroup"},
		{scaled, "an autoscaler that may scale to one replica", func(m *manifests) {
			m.hpas[0].Spec.MinReplicas = ptr(int32(1))
		}, "minReplicas 1"},
		{scaled, "an autoscaler fighting the Deployment's replicas", func(m *manifests) {
			m.deployments[0].Spec.Replicas = ptr(int32(2))
		}, "still sets replicas"},
		{scaled, "an autoscaler aimed at another Deployment", func(m *manifests) {
			m.hpas[0].Spec.ScaleTargetRef.Name = "other"
		}, "not an extauthz Deployment"},
		{scaled, "a ServiceMonitor that scrapes each Pod twice", func(m *manifests) {
			m.serviceMonitors[0].Spec.Selector.MatchExpressions = nil
		}, "selects 2 Services"},
		{scaled, "a ServiceMonitor on the gRPC port", func(m *manifests) {
			m.serviceMonitors[0].Spec.Endpoints[0].Port = "grpc"
		}, "/metrics is on the HTTP listener"},
		{scaled, "a ServiceMonitor scraping a TLS listener in plain HTTP", func(m *manifests) {
			m.serviceMonitors[0].Spec.Endpoints[0].Scheme = nil
		}, "the listener speaks https"},
		{scaled, "a plain-HTTP readiness probe on a TLS listener", func(m *manifests) {
			container(m).ReadinessProbe.HTTPGet.Scheme = corev1.URISchemeHTTP
		}, "speaks HTTP to a listener that serves HTTPS"},
		{scaled, "a plain-text gRPC startup probe on a TLS listener", func(m *manifests) {
			container(m).StartupProbe.ProbeHandler = corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9001}}
		}, "with TLS"},
		{scaled, "the certificate mounted with subPath", func(m *manifests) {
			c := container(m)
			for i := range c.VolumeMounts {
				if c.VolumeMounts[i].Name == "extauthz-tls" {
					c.VolumeMounts[i].SubPath = "tls.crt"
				}
			}
		}, "subPath"},
		{scaled, "the certificate not mounted at all", func(m *manifests) {
			c := container(m)
			c.VolumeMounts = slices.DeleteFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == "extauthz-tls" })
		}, "tls.cert_file"},
		{mtls, "an HTTP probe the kubelet cannot pass under mutual TLS", func(m *manifests) {
			container(m).LivenessProbe.ProbeHandler = corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http"), Scheme: corev1.URISchemeHTTPS}}
		}, "cannot complete a TLS handshake"},
		{defaults, "a gRPC startup probe on the HTTP port", func(m *manifests) {
			container(m).StartupProbe.GRPC.Port = 9002
		}, "the gRPC startup probe asks port 9002"},
		{defaults, "a gRPC startup probe for a service extauthz does not report", func(m *manifests) {
			container(m).StartupProbe.GRPC.Service = ptr("grpc.health.v1.Health")
		}, "does not report"},
		{defaults, "GOMEMLIMIT at the memory limit", func(m *manifests) {
			envVar(container(m), "GOMEMLIMIT").Value = "512MiB"
		}, "keep it at 80–95%"},
		{defaults, "GOMEMLIMIT missing", func(m *manifests) {
			c := container(m)
			c.Env = slices.DeleteFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" })
		}, "GOMEMLIMIT"},
		{withMade, "the pepper's Secret deleted on uninstall", func(m *manifests) {
			m.secrets[0].Annotations = nil
		}, "every key"},
		{withMade, "a created Secret without the key the container reads", func(m *manifests) {
			m.secrets[0].Data = map[string][]byte{"other": []byte("x")}
		}, "no key pepper"},
		{defaults, "a ServiceAccount that mounts a token", func(m *manifests) {
			m.serviceAccounts[0].AutomountServiceAccountToken = nil
		}, "automountServiceAccountToken"},
		{defaults, "Pods under an account the chart does not create", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.ServiceAccountName = "default"
		}, `ServiceAccount "default"`},
		{defaults, "a LoadBalancer in front of plain-text listeners", func(m *manifests) {
			m.service(releaseName).Spec.Type = corev1.ServiceTypeLoadBalancer
		}, "Service extauthz is a LoadBalancer"},
		{mtls, "a NodePort under TLS that asks for no client certificate", func(m *manifests) {
			for _, cm := range m.configMaps {
				if cm.Name == releaseName {
					cm.Data["config.yaml"] = regexp.MustCompile(`(?m)^\s*client_ca_file: .*\n`).ReplaceAllString(cm.Data["config.yaml"], "")
				}
			}
			m.service(releaseName).Spec.Type = corev1.ServiceTypeNodePort
		}, "Service extauthz is a NodePort"},
		{defaults, "the extauthz Service selecting the Redis Pod too", func(m *manifests) {
			svc := m.service(releaseName)
			svc.Spec.Selector = map[string]string{"app.kubernetes.io/instance": releaseName}
		}, "Service/extauthz selects the Pods of [Deployment/extauthz StatefulSet/extauthz-redis]"},
		{defaults, "the extauthz NetworkPolicy selecting the Redis Pod too", func(m *manifests) {
			for _, np := range m.netpols {
				if np.Name == releaseName {
					np.Spec.PodSelector.MatchLabels = map[string]string{"app.kubernetes.io/instance": releaseName}
				}
			}
		}, "NetworkPolicy/extauthz selects the Pods of"},
		{defaults, "two documents of one name", func(m *manifests) {
			m.objects = append(m.objects, m.objects[0])
		}, "rendered twice"},
		{defaults, "the chart's Redis running other files than k8s/base/redis", func(m *manifests) {
			for _, cm := range m.configMaps {
				if cm.Name == "extauthz-redis" {
					cm.Data["redis.conf"] += "appendonly no\n"
				}
			}
		}, "the file the Go tests prove"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, notes := mustRenderChart(t, tt.values)
			if ps := m.chartProblems(t, notes); len(ps) > 0 {
				t.Fatalf("the unmutated chart has problems: %v", ps)
			}
			tt.mutate(m)
			ps := m.chartProblems(t, notes)
			if !slices.ContainsFunc(ps, func(p string) bool { return strings.Contains(p, tt.wantErr) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantErr, ps)
			}
		})
	}
}

// TestChartAsASidecar renders an app's chart that includes the extauthz
// chart's sidecar templates (testdata/sidecar-app, with the Envoy config the
// sidecar overlay uses) and holds it to the same checks: extauthz beside the
// app as a native sidecar that starts first, gRPC on loopback where Envoy
// sends its checks, the admin API off, and the Redis password for the
// extauthz container alone.
func TestChartAsASidecar(t *testing.T) {
	// The second asks for the profiles, which the app would share.
	for _, values := range []string{"", `extauthz: {listen: {debug: "127.0.0.1:9004"}}`} {
		m, notes := renderSidecarApp(t, values)
		for _, p := range m.chartProblems(t, notes) {
			t.Errorf("values %q: %s", values, p)
		}
		for _, p := range m.sidecarProblems(t) {
			t.Errorf("values %q: %s", values, p)
		}
	}
}

func renderSidecarApp(t *testing.T, values string) (*manifests, string) {
	t.Helper()
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	app, err := loader.Load("testdata/sidecar-app")
	if err != nil {
		t.Fatal(err)
	}
	// What helm dependency update would put into charts/.
	app.AddDependency(loadChart(t))
	m, notes, err := renderChartOf(t, app, values)
	if err != nil {
		t.Fatalf("helm template: %v", err)
	}
	return m, notes
}

// sidecarProblems: the checks of a Pod that runs extauthz beside an app.
func (m *manifests) sidecarProblems(t *testing.T) []string {
	t.Helper()
	var ps []string
	bad := func(format string, args ...any) { ps = append(ps, fmt.Sprintf(format, args...)) }
	if _, ok := m.extauthzWorkload(); ok || m.service(releaseName) != nil || len(m.pdbs) > 0 || len(m.hpas) > 0 {
		bad("sidecar.enabled still renders an extauthz Deployment, Service, PDB or autoscaler of its own")
	}
	sidecars := 0
	for _, w := range m.workloads() {
		spec := &w.pod.Spec
		for i := range spec.Containers {
			if isExtauthz(&spec.Containers[i]) {
				bad("%s/%s: extauthz is a plain container: it may start after the proxy that needs it, and stop before", w.kind, w.name)
			}
		}
		if len(spec.InitContainers) == 0 || !isExtauthz(&spec.InitContainers[0]) {
			continue
		}
		sidecars++
		ext := &spec.InitContainers[0]
		if ext.RestartPolicy == nil || *ext.RestartPolicy != corev1.ContainerRestartPolicyAlways || ext.StartupProbe == nil {
			bad("%s/%s: extauthz is not the first native sidecar (restartPolicy Always, a startupProbe): the proxy may start before it answers", w.kind, w.name)
		}
		checkRedisPasswordIsolated(w.name, spec, ext, bad)
		// The Pod is the app's, and its securityContext what the app's
		// chart makes it: the container carries every setting itself.
		checkContainerHardening(w.kind+"/"+w.name+" container extauthz (in a Pod that sets nothing)", ext, &corev1.PodSecurityContext{}, bad)
		cfg, err := m.extauthzConfigOf(ext, spec)
		if err != nil {
			bad("%s/%s: %v", w.kind, w.name, err)
			continue
		}
		grpcHost, grpcPort := hostPort(t, cfg.grpcListen())
		if !isLoopback(grpcHost) {
			bad("%s/%s: the sidecar's gRPC listener %q is not loopback: other Pods could ask it for decisions", w.kind, w.name, cfg.grpcListen())
		}
		if cfg.adminListen() != "" {
			bad("%s/%s: the sidecar's admin API %q is on: the app shares its loopback", w.kind, w.name, cfg.adminListen())
		}
		if d := cfg.Listen.Debug; d != "" && d != "off" {
			bad("%s/%s: the sidecar's profiles %q are on: the app shares its loopback", w.kind, w.name, d)
		}
		var proxyPorts []int
		for _, c := range spec.InitContainers[1:] {
			if len(c.Args) < 2 || c.Args[0] != "-c" {
				continue
			}
			for _, p := range c.Ports {
				proxyPorts = append(proxyPorts, int(p.ContainerPort))
			}
			envoyYAML, err := m.mountedFile(&c, spec, c.Args[1])
			if err != nil {
				bad("%s: %v", c.Name, err)
				continue
			}
			for _, e := range parseEnvoyFile(t, []byte(envoyYAML)).authzEndpoints(t) {
				if !isLoopback(e.host) || e.port != grpcPort {
					bad("%s/%s: Envoy sends ext_authz to %s, the sidecar listens on %s", w.kind, w.name, e, cfg.grpcListen())
				}
			}
		}
		// Other Pods may reach the proxy only: the app listens on the Pod's
		// address too and would skip authorization, and so does extauthz's
		// HTTP listener (it must, for the kubelet's probes), which answers
		// HTTP-mode decisions and /metrics to whoever asks.
		guarded := false
		for _, np := range m.policiesFor(w) {
			if !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
				continue
			}
			guarded = true
			for _, rule := range np.Spec.Ingress {
				if len(rule.Ports) == 0 {
					bad("%s/%s: NetworkPolicy %s admits every port of the Pod: the proxy can be bypassed", w.kind, w.name, np.Name)
				}
				for _, p := range rule.Ports {
					if p.Port == nil || !slices.Contains(proxyPorts, p.Port.IntValue()) {
						bad("%s/%s: NetworkPolicy %s admits port %v besides the proxy's %v", w.kind, w.name, np.Name, p.Port, proxyPorts)
					}
				}
			}
		}
		if !guarded {
			bad("%s/%s: no NetworkPolicy limits the Pod to the proxy's port: the app's own port and extauthz's HTTP listener (decisions, /metrics) are open to every Pod", w.kind, w.name)
		}
	}
	if sidecars == 0 {
		bad("no Pod runs extauthz as a sidecar")
	}
	return ps
}

func TestChartSidecarProblemsAreCaught(t *testing.T) {
	app := func(m *manifests) *corev1.PodSpec { return &m.deployments[0].Spec.Template.Spec }
	tests := []struct {
		name, values string
		mutate       func(m *manifests)
		wantErr      string
	}{
		{"the app given the Redis password", "", func(m *manifests) {
			spec := app(m)
			spec.Containers[0].Env = append(spec.Containers[0].Env, *envVar(&spec.InitContainers[0], "REDIS_PASSWORD"))
		}, "the app container gets the Redis password"},
		{"extauthz leaving seccomp to the app's Pod", "", func(m *manifests) {
			app(m).InitContainers[0].SecurityContext.SeccompProfile = nil
		}, "(in a Pod that sets nothing): seccompProfile"},
		{"extauthz leaving non-root to the app's Pod", "", func(m *manifests) {
			app(m).InitContainers[0].SecurityContext.RunAsNonRoot = nil
		}, "(in a Pod that sets nothing): runAsNonRoot"},
		{"a shared process namespace", "", func(m *manifests) {
			app(m).ShareProcessNamespace = ptr(true)
		}, "shareProcessNamespace"},
		{"extauthz as a plain container", "", func(m *manifests) {
			spec := app(m)
			spec.Containers = append(spec.Containers, spec.InitContainers[0])
			spec.InitContainers = spec.InitContainers[1:]
		}, "plain container"},
		{"extauthz started after Envoy", "", func(m *manifests) {
			ic := app(m).InitContainers
			ic[0], ic[1] = ic[1], ic[0]
		}, "no Pod runs extauthz as a sidecar"},
		{"Envoy pointed at another port", "extauthz: {listen: {grpc: 9101}}", func(m *manifests) {}, "Envoy sends ext_authz to 127.0.0.1:9001"},
		{"no NetworkPolicy in front of the app Pod", "", func(m *manifests) {
			m.netpols = slices.DeleteFunc(m.netpols, func(np *networkingv1.NetworkPolicy) bool { return np.Name == "shop" })
		}, "no NetworkPolicy limits the Pod to the proxy's port"},
		{"extauthz's HTTP port opened to other Pods", "", func(m *manifests) {
			for _, np := range m.netpols {
				if np.Name == "shop" {
					np.Spec.Ingress[0].Ports = append(np.Spec.Ingress[0].Ports, networkingv1.NetworkPolicyPort{Port: ptr(intstr.FromInt32(9002))})
				}
			}
		}, "admits port 9002 besides the proxy's"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, notes := renderSidecarApp(t, tt.values)
			if tt.values == "" {
				if ps := append(m.chartProblems(t, notes), m.sidecarProblems(t)...); len(ps) > 0 {
					t.Fatalf("the unmutated app has problems: %v", ps)
				}
			}
			tt.mutate(m)
			ps := append(m.chartProblems(t, notes), m.sidecarProblems(t)...)
			if !slices.ContainsFunc(ps, func(p string) bool { return strings.Contains(p, tt.wantErr) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantErr, ps)
			}
		})
	}
}

// TestSidecarTemplatesNeedSidecarMode: an app that includes the sidecar
// templates while the extauthz chart runs as a Deployment fails to render,
// rather than get a sidecar whose gRPC listens on every interface.
func TestSidecarTemplatesNeedSidecarMode(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	app, err := loader.Load("testdata/sidecar-app")
	if err != nil {
		t.Fatal(err)
	}
	app.AddDependency(loadChart(t))
	_, _, err = installDryRun(t, app, "extauthz: {sidecar: {enabled: false}}")
	if err == nil || !strings.Contains(err.Error(), "need sidecar.enabled: true") {
		t.Fatalf("got %v, want the sidecar templates to refuse", err)
	}
}

// TestChartLints: helm lint --strict passes for every value set the chart
// must render (Chart.yaml, values against the schema, templates rendered with
// missing keys as errors, the rendered YAML's object names).
func TestChartLints(t *testing.T) {
	defer slog.SetDefault(slog.Default())
	slog.SetDefault(slog.New(slog.NewTextHandler(io.Discard, nil)))
	kv, err := common.ParseKubeVersion(renderKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			vals := map[string]any{}
			if err := yaml.Unmarshal([]byte(tc.values), &vals); err != nil {
				t.Fatal(err)
			}
			result := lint.RunAll(filepath.Join(repoRoot, chartDir), vals, releaseNamespace, lint.WithKubeVersion(kv))
			for _, msg := range result.Messages {
				if msg.Severity >= support.WarningSev {
					t.Error(msg)
				}
			}
		})
	}
	// The linter itself can fail.
	result := lint.RunAll(filepath.Join(repoRoot, chartDir), map[string]any{"replicas": 3}, releaseNamespace, lint.WithKubeVersion(kv))
	if result.HighestSeverity < support.ErrorSev {
		t.Errorf("helm lint accepted an unknown value: %v", result.Messages)
	}
}

// TestOneExtauthzImage: every overlay and the chart's defaults run the same
// extauthz image, so the README's places to change its name (the kustomize
// images entries, image.repository and image.tag) are all there is to change.
func TestOneExtauthzImage(t *testing.T) {
	images := map[string][]string{}
	collect := func(from string, m *manifests) {
		for _, w := range m.workloads() {
			for _, c := range allContainers(&w.pod.Spec) {
				if isExtauthz(c) && !slices.Contains(images[c.Image], from) {
					images[c.Image] = append(images[c.Image], from)
				}
			}
		}
	}
	for _, o := range overlays {
		collect("k8s/overlays/"+o, buildOverlay(t, o))
	}
	chartDefaults, _ := mustRenderChart(t, "")
	collect(chartDir, chartDefaults)
	if len(images) != 1 {
		t.Fatalf("the extauthz image differs between deployments: %v", images)
	}
	// The images entries rename that image, not one nobody uses.
	for _, o := range []string{"base", "overlays/sidecar"} {
		var k struct {
			Images []struct {
				Name, NewName, NewTag string
			} `json:"images"`
		}
		if err := yaml.Unmarshal([]byte(readRepoFile(t, "k8s/"+o+"/kustomization.yaml")), &k); err != nil {
			t.Fatal(err)
		}
		if len(k.Images) != 1 || k.Images[0].Name != "extauthz" {
			t.Errorf("k8s/%s/kustomization.yaml: images %v, want one entry for extauthz", o, k.Images)
			continue
		}
		if _, ok := images[k.Images[0].NewName+":"+k.Images[0].NewTag]; !ok {
			t.Errorf("k8s/%s/kustomization.yaml sets %s:%s, the deployments run %v", o, k.Images[0].NewName, k.Images[0].NewTag, images)
		}
	}
}

// TestChartProfilesAreOffUnlessAsked: the debug listener (Go's profiles,
// no credential) is off in the config the chart writes, and on the loopback
// address asked for when set.
func TestChartProfilesAreOffUnlessAsked(t *testing.T) {
	for values, want := range map[string]string{
		``:                                  "off",
		`listen: {debug: "127.0.0.1:9004"}`: "127.0.0.1:9004",
	} {
		m, _ := mustRenderChart(t, values)
		var seen int
		for _, w := range m.workloads() {
			cfg := m.configOfWorkload(w.name)
			if cfg == nil {
				continue
			}
			seen++
			if got := listenOrOff(cfg.Listen.Debug, ""); got != strings.TrimSuffix(want, "off") {
				t.Errorf("values %q: %s listens for profiles on %q, want %q", values, w.name, cfg.Listen.Debug, want)
			}
		}
		if seen == 0 {
			t.Fatalf("values %q: no extauthz workload rendered", values)
		}
	}
}
