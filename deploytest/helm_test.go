package deploytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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

// installDryRun renders a chart with values exactly as `helm template` (a
// client-only dry-run install) does: values schema, the chart's kubeVersion,
// templates, NOTES. It returns the manifest stream and the notes.
func installDryRun(t *testing.T, ch *chart.Chart, valuesYAML string) (manifest, notes string, err error) {
	t.Helper()
	vals := map[string]any{}
	if err := yaml.Unmarshal([]byte(valuesYAML), &vals); err != nil {
		t.Fatalf("values: %v", err)
	}
	cfg := action.NewConfiguration(action.ConfigurationSetLogger(slog.NewTextHandler(io.Discard, nil)))
	install := action.NewInstall(cfg)
	install.DryRunStrategy = action.DryRunClient
	install.Replace = true
	install.ReleaseName = releaseName
	install.Namespace = releaseNamespace
	kv, err := common.ParseKubeVersion(renderKubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	install.KubeVersion = kv
	r, err := install.RunWithContext(context.Background(), ch, vals)
	if err != nil {
		return "", "", err
	}
	rel, ok := r.(*releasev1.Release)
	if !ok {
		t.Fatalf("install returned a %T", r)
	}
	if len(rel.Hooks) > 0 {
		t.Fatalf("the chart renders %d hooks; it has none on purpose (helm template would print them apart)", len(rel.Hooks))
	}
	return rel.Manifest, rel.Info.Notes, nil
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
	{"the embedded store", `
store: {backend: embedded}
replicaCount: 1
`},
	{"istio", `
istio: {enabled: true, namespace: demo}
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
	m.checkHPAs(bad)
	m.checkServiceMonitors(bad)
	m.checkServiceAccounts(bad)
	m.checkChartSecrets(bad)
	if len(m.deployments) > 0 {
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
