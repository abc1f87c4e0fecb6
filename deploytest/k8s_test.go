package deploytest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	meshv1alpha1 "istio.io/api/mesh/v1alpha1"
	securityv1beta1 "istio.io/api/security/v1beta1"
	istiosecurityv1 "istio.io/client-go/pkg/apis/security/v1"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// manifests is an overlay's or a chart's output, each document decoded into
// its API type.
type manifests struct {
	overlay         string
	objects         []string // "Kind namespace/name" of every document, in order
	namespaces      []*corev1.Namespace
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	serviceAccounts []*corev1.ServiceAccount
	services        []*corev1.Service
	deployments     []*appsv1.Deployment
	statefulSets    []*appsv1.StatefulSet
	pdbs            []*policyv1.PodDisruptionBudget
	hpas            []*autoscalingv2.HorizontalPodAutoscaler
	netpols         []*networkingv1.NetworkPolicy
	serviceMonitors []*monitoringv1.ServiceMonitor
	authzPolicy     []*istiosecurityv1.AuthorizationPolicy // action CUSTOM: the ones that call extauthz
	authzGuards     []*istiosecurityv1.AuthorizationPolicy // every other action: each must guard a CUSTOM one
	peerAuthn       []*istiosecurityv1.PeerAuthentication
	gateway         gatewayObjects
}

// kinds maps each kind an overlay or the chart may emit to its apiVersion.
// Anything else in the output fails the test: a new kind must be added here,
// with its checks.
var kinds = map[string]string{
	"Namespace":               "v1",
	"ConfigMap":               "v1",
	"Secret":                  "v1",
	"ServiceAccount":          "v1",
	"Service":                 "v1",
	"Deployment":              "apps/v1",
	"StatefulSet":             "apps/v1",
	"PodDisruptionBudget":     "policy/v1",
	"HorizontalPodAutoscaler": "autoscaling/v2",
	"NetworkPolicy":           "networking.k8s.io/v1",
	"ServiceMonitor":          "monitoring.coreos.com/v1",
	"AuthorizationPolicy":     "security.istio.io/v1",
	"PeerAuthentication":      "security.istio.io/v1",
	"Gateway":                 "gateway.networking.k8s.io/v1",
	"HTTPRoute":               "gateway.networking.k8s.io/v1",
	"ReferenceGrant":          "gateway.networking.k8s.io/v1beta1",
	"SecurityPolicy":          "gateway.envoyproxy.io/v1alpha1",
	"ClientTrafficPolicy":     "gateway.envoyproxy.io/v1alpha1",
	"EnvoyProxy":              "gateway.envoyproxy.io/v1alpha1",
}

// buildOverlay runs kustomize as `kubectl apply -k` would and decodes the
// result strictly: unknown, misspelt (case included) or duplicate fields fail, as
// the API server's strict field validation would.
func buildOverlay(t *testing.T, overlay string) *manifests {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	rm, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot, "k8s", "overlays", overlay))
	if err != nil {
		t.Fatalf("kustomize build k8s/overlays/%s: %v", overlay, err)
	}
	m := &manifests{overlay: overlay}
	for _, r := range rm.Resources() {
		data, err := r.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		m.add(t, r.CurId().String(), r.GetKind(), r.GetApiVersion(), data)
	}
	return m
}

// add decodes one document (JSON) strictly into the type of its kind.
func (m *manifests) add(t *testing.T, id, kind, apiVersion string, data []byte) {
	t.Helper()
	if want, ok := kinds[kind]; !ok {
		t.Fatalf("%s: kind %s has no decoder or checks here", id, kind)
	} else if apiVersion != want {
		t.Fatalf("%s: apiVersion %s, want %s", id, apiVersion, want)
	}
	var meta struct {
		Metadata metav1.ObjectMeta `json:"metadata"`
	}
	if err := yaml.Unmarshal(data, &meta); err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	m.objects = append(m.objects, kind+" "+meta.Metadata.Namespace+"/"+meta.Metadata.Name)
	switch kind {
	case "Namespace":
		m.namespaces = append(m.namespaces, decodeStrict[corev1.Namespace](t, id, data))
	case "ConfigMap":
		m.configMaps = append(m.configMaps, decodeStrict[corev1.ConfigMap](t, id, data))
	case "Secret":
		m.secrets = append(m.secrets, decodeStrict[corev1.Secret](t, id, data))
	case "ServiceAccount":
		m.serviceAccounts = append(m.serviceAccounts, decodeStrict[corev1.ServiceAccount](t, id, data))
	case "Service":
		m.services = append(m.services, decodeStrict[corev1.Service](t, id, data))
	case "Deployment":
		m.deployments = append(m.deployments, decodeStrict[appsv1.Deployment](t, id, data))
	case "StatefulSet":
		m.statefulSets = append(m.statefulSets, decodeStrict[appsv1.StatefulSet](t, id, data))
	case "PodDisruptionBudget":
		m.pdbs = append(m.pdbs, decodeStrict[policyv1.PodDisruptionBudget](t, id, data))
	case "HorizontalPodAutoscaler":
		m.hpas = append(m.hpas, decodeStrict[autoscalingv2.HorizontalPodAutoscaler](t, id, data))
	case "NetworkPolicy":
		m.netpols = append(m.netpols, decodeStrict[networkingv1.NetworkPolicy](t, id, data))
	case "ServiceMonitor":
		m.serviceMonitors = append(m.serviceMonitors, decodeStrict[monitoringv1.ServiceMonitor](t, id, data))
	case "AuthorizationPolicy":
		ap := decodeStrict[istiosecurityv1.AuthorizationPolicy](t, id, data)
		// The generated spec decoder lets unknown fields through; protojson
		// does not, so decode the spec a second time with it.
		var raw struct {
			Spec any `json:"spec"`
		}
		if err := yaml.Unmarshal(data, &raw); err != nil {
			t.Fatal(err)
		}
		if err := protojson.Unmarshal(jsonRoundTrip(t, raw.Spec), &securityv1beta1.AuthorizationPolicy{}); err != nil {
			t.Fatalf("%s: spec: %v", id, err)
		}
		if ap.Spec.GetAction() == securityv1beta1.AuthorizationPolicy_CUSTOM {
			m.authzPolicy = append(m.authzPolicy, ap)
		} else {
			m.authzGuards = append(m.authzGuards, ap)
		}
	case "PeerAuthentication":
		pa := decodeStrict[istiosecurityv1.PeerAuthentication](t, id, data)
		var raw struct {
			Spec any `json:"spec"`
		}
		if err := yaml.Unmarshal(data, &raw); err != nil {
			t.Fatal(err)
		}
		if err := protojson.Unmarshal(jsonRoundTrip(t, raw.Spec), &securityv1beta1.PeerAuthentication{}); err != nil {
			t.Fatalf("%s: spec: %v", id, err)
		}
		m.peerAuthn = append(m.peerAuthn, pa)
	default:
		m.gateway.add(t, id, kind, data)
	}
}

func decodeStrict[T any](t *testing.T, id string, data []byte) *T {
	t.Helper()
	v, err := decodeStrictErr[T](data)
	if err != nil {
		t.Fatalf("%s: %v", id, err)
	}
	return v
}

// decodeStrictErr decodes JSON into T, refusing unknown, misspelt (case
// included) and duplicate fields.
func decodeStrictErr[T any](data []byte) (*T, error) {
	v := new(T)
	strictErrs, err := kjson.UnmarshalStrict(data, v)
	if err != nil {
		return nil, err
	}
	if len(strictErrs) > 0 {
		return nil, errors.Join(strictErrs...)
	}
	return v, nil
}

var overlays = []string{"standalone", "sidecar", "istio", "envoy-gateway"}

func TestOverlays(t *testing.T) {
	for _, o := range overlays {
		t.Run(o, func(t *testing.T) {
			m := buildOverlay(t, o)
			for _, p := range m.problems(t) {
				t.Error(p)
			}
		})
	}
}

// problems runs every check that applies to the overlay.
func (m *manifests) problems(t *testing.T) []string {
	t.Helper()
	var ps []string
	bad := func(format string, args ...any) { ps = append(ps, fmt.Sprintf(format, args...)) }
	m.checkWorkloads(t, bad)
	m.checkRedis(t, bad)
	m.checkNetworkPolicies(bad)
	m.checkPDBs(bad)
	m.checkObjectsApart(bad)
	switch m.overlay {
	case "standalone", "istio", "envoy-gateway":
		m.checkCentralService(bad)
	case "sidecar":
		m.checkSidecar(t, bad)
	}
	if m.overlay == "istio" {
		m.checkIstio(t, bad)
	}
	if m.gateway.anyGatewayKinds {
		m.checkEnvoyGateway(bad)
	}
	return ps
}

type workload struct {
	kind, name, namespace string
	replicas              int32
	selector              *metav1.LabelSelector
	pod                   *corev1.PodTemplateSpec
}

func (m *manifests) workloads() []workload {
	var ws []workload
	for _, d := range m.deployments {
		replicas := ptrOr(d.Spec.Replicas, 1)
		for _, h := range m.hpas {
			// An autoscaler owns the count: its floor is what is guaranteed.
			if h.Spec.ScaleTargetRef.Kind == "Deployment" && h.Spec.ScaleTargetRef.Name == d.Name && d.Spec.Replicas == nil {
				replicas = ptrOr(h.Spec.MinReplicas, 1)
			}
		}
		ws = append(ws, workload{"Deployment", d.Name, d.Namespace, replicas, d.Spec.Selector, &d.Spec.Template})
	}
	for _, s := range m.statefulSets {
		ws = append(ws, workload{"StatefulSet", s.Name, s.Namespace, ptrOr(s.Spec.Replicas, 1), s.Spec.Selector, &s.Spec.Template})
	}
	return ws
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && !s.Empty() && s.Matches(labels.Set(l))
}

func allContainers(spec *corev1.PodSpec) []*corev1.Container {
	var cs []*corev1.Container
	for i := range spec.InitContainers {
		cs = append(cs, &spec.InitContainers[i])
	}
	for i := range spec.Containers {
		cs = append(cs, &spec.Containers[i])
	}
	return cs
}

func isExtauthz(c *corev1.Container) bool {
	return strings.HasPrefix(c.Image, "extauthz:") || strings.HasSuffix(strings.Split(c.Image, ":")[0], "/extauthz")
}

// checkWorkloads: the Pod hardening the restricted Pod Security Standard asks
// for, resources, and for every extauthz container its config, secrets, ports
// and probes.
func (m *manifests) checkWorkloads(t *testing.T, bad func(string, ...any)) {
	ws := m.workloads()
	if len(ws) == 0 {
		bad("no workloads")
	}
	extauthzSeen := false
	for _, w := range ws {
		id := w.kind + "/" + w.name
		spec := &w.pod.Spec
		if !selects(w.selector, w.pod.Labels) {
			bad("%s: selector does not match its own Pod labels", id)
		}
		if ptrOr(spec.AutomountServiceAccountToken, true) {
			bad("%s: automountServiceAccountToken must be false: nothing here talks to the API server", id)
		}
		if spec.HostNetwork || spec.HostPID || spec.HostIPC {
			bad("%s: shares the node's network, process or IPC namespace", id)
		}
		for _, v := range spec.Volumes {
			if v.HostPath != nil {
				bad("%s: volume %s is a hostPath: the node's files are no Pod's business", id, v.Name)
			}
		}
		podSC := spec.SecurityContext
		if podSC == nil {
			podSC = &corev1.PodSecurityContext{}
		}
		for _, sc := range podSC.Sysctls {
			bad("%s: sets sysctl %s", id, sc.Name)
		}
		for _, c := range allContainers(spec) {
			cid := id + " container " + c.Name
			checkContainerHardening(cid, c, podSC, bad)
			r := c.Resources
			if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
				bad("%s: needs cpu and memory requests and a memory limit", cid)
			}
			if !pinnedImage(c.Image) {
				bad("%s: image %q is not pinned to a tag", cid, c.Image)
			}
			for _, e := range c.Env {
				if strings.Contains(e.Name, "PEPPER") || strings.Contains(e.Name, "PASSWORD") {
					if e.Value != "" || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
						bad("%s: %s must come from a Secret, not a literal", cid, e.Name)
					}
				}
			}
			if isExtauthz(c) {
				extauthzSeen = true
				m.checkExtauthzContainer(t, cid, c, spec, w, bad)
			}
		}
		for _, v := range spec.Volumes {
			if v.ConfigMap != nil && m.configMap(v.ConfigMap.Name) == nil {
				bad("%s: volume %s names ConfigMap %s, which the overlay does not create", id, v.Name, v.ConfigMap.Name)
			}
		}
	}
	if !extauthzSeen {
		bad("no extauthz container in the overlay")
	}
}

// checkContainerHardening: what the restricted Pod Security Standard asks of
// a container, each setting its own or, where Kubernetes inherits it, its
// Pod's (podSC).
func checkContainerHardening(cid string, c *corev1.Container, podSC *corev1.PodSecurityContext, bad func(string, ...any)) {
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if !ptrOr(sc.RunAsNonRoot, ptrOr(podSC.RunAsNonRoot, false)) {
		bad("%s: runAsNonRoot is not set", cid)
	}
	// A fixed, non-zero user and group, each the container's own or its
	// Pod's. Left unset, they are the image's: its USER (root for many
	// images, which runAsNonRoot then refuses at start, not here), and a group
	// that is 0 for a USER given as a bare number, which lets the process
	// write whatever the root group may.
	for what, id := range map[string]int64{
		"runAsUser":  ptrOr(sc.RunAsUser, ptrOr(podSC.RunAsUser, -1)),
		"runAsGroup": ptrOr(sc.RunAsGroup, ptrOr(podSC.RunAsGroup, -1)),
	} {
		switch id {
		case -1:
			bad("%s: %s is not set: the image's would apply", cid, what)
		case 0:
			bad("%s: %s 0", cid, what)
		}
	}
	if ptrOr(sc.AllowPrivilegeEscalation, true) {
		bad("%s: allowPrivilegeEscalation must be false", cid)
	}
	if ptrOr(sc.Privileged, false) {
		bad("%s: privileged", cid)
	}
	if sc.ProcMount != nil && *sc.ProcMount != corev1.DefaultProcMount {
		bad("%s: procMount %s", cid, *sc.ProcMount)
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			bad("%s: hostPort %d publishes the container on the node's address, past every NetworkPolicy", cid, p.HostPort)
		}
	}
	if !ptrOr(sc.ReadOnlyRootFilesystem, false) {
		bad("%s: readOnlyRootFilesystem must be true", cid)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		bad("%s: capabilities must drop ALL and add none", cid)
	}
	seccomp := podSC.SeccompProfile
	if sc.SeccompProfile != nil {
		seccomp = sc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		bad("%s: seccompProfile must be RuntimeDefault", cid)
	}
}

func (m *manifests) configMap(name string) *corev1.ConfigMap {
	for _, c := range m.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// mountedFile returns the ConfigMap data behind a file path in a container.
func (m *manifests) mountedFile(c *corev1.Container, spec *corev1.PodSpec, file string) (string, error) {
	for _, vm := range c.VolumeMounts {
		if path.Dir(file) != path.Clean(vm.MountPath) {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil {
				continue
			}
			cm := m.configMap(v.ConfigMap.Name)
			if cm == nil {
				return "", fmt.Errorf("ConfigMap %s does not exist", v.ConfigMap.Name)
			}
			data, ok := cm.Data[path.Base(file)]
			if !ok {
				return "", fmt.Errorf("ConfigMap %s has no key %s", cm.Name, path.Base(file))
			}
			return data, nil
		}
	}
	return "", fmt.Errorf("%s is not in a mounted ConfigMap", file)
}

// extauthzConfigOf returns the config an extauthz container runs with.
func (m *manifests) extauthzConfigOf(c *corev1.Container, spec *corev1.PodSpec) (*extauthzConfig, error) {
	if len(c.Args) != 3 || c.Args[0] != "serve" || c.Args[1] != "--config" {
		return nil, fmt.Errorf("args %q are not serve --config FILE", c.Args)
	}
	data, err := m.mountedFile(c, spec, c.Args[2])
	if err != nil {
		return nil, err
	}
	cfg, err := parseExtauthzConfig([]byte(data))
	if err != nil {
		return nil, err
	}
	return cfg, noSecretsInConfig(cfg)
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// portNumber resolves a probe or Service port (number or name) in a container.
func portNumber(c *corev1.Container, p intstr.IntOrString) int {
	if p.Type == intstr.Int {
		return p.IntValue()
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort)
		}
	}
	return -1
}

func containerPort(c *corev1.Container, name string) int {
	return portNumber(c, intstr.FromString(name))
}

func (m *manifests) checkExtauthzContainer(t *testing.T, cid string, c *corev1.Container, spec *corev1.PodSpec, w workload, bad func(string, ...any)) {
	cfg, err := m.extauthzConfigOf(c, spec)
	if err != nil {
		bad("%s: config: %v", cid, err)
		return
	}
	if e := envVar(c, "EXTAUTHZ_CONFIG"); e == nil || e.Value != c.Args[2] {
		bad("%s: EXTAUTHZ_CONFIG must name %s, the file it serves (the CLI in the Pod reads it)", cid, c.Args[2])
	}
	if pe := cfg.Hashing.PepperEnv; pe != "" {
		e := envVar(c, pe)
		if e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			bad("%s: the config reads the pepper from $%s, which is not set from a Secret", cid, pe)
		} else if ptrOr(e.ValueFrom.SecretKeyRef.Optional, false) {
			bad("%s: the pepper Secret is optional: keys hashed without it stop matching once it appears", cid)
		}
	} else {
		bad("%s: hashing.pepper_env is not set", cid)
	}
	checkGoMemLimit(cid, c, bad)
	checkCacheFits(cid, c, cfg, bad)
	_, httpPort := hostPort(t, cfg.httpListen())
	if containerPort(c, "http") != httpPort {
		bad("%s: containerPort http is %d, the config listens on %d", cid, containerPort(c, "http"), httpPort)
	}
	if grpcHost, grpcPort := hostPort(t, cfg.grpcListen()); !isLoopback(grpcHost) && containerPort(c, "grpc") != grpcPort {
		bad("%s: containerPort grpc is %d, the config listens on %d", cid, containerPort(c, "grpc"), grpcPort)
	}
	m.checkProbes(cid, c, cfg, httpPort, bad)
	checkGraceOutlastsStop(cid, c, spec, cfg, bad)
	m.checkTLSFiles(cid, c, spec, cfg, bad)
	if admin := cfg.adminListen(); admin != "" {
		if host, _ := hostPort(t, admin); !isLoopback(host) {
			bad("%s: listen.admin %q is not loopback; in Kubernetes use port-forward or exec", cid, admin)
		}
	}
	if cfg.Store.Backend == "embedded" {
		m.checkEmbedded(cid, c, cfg, w, bad)
		return
	}
	if cfg.Store.Backend != "redis" {
		bad("%s: store.backend %q: replicas need the shared Redis store", cid, cfg.Store.Backend)
		return
	}
	if _, rc := m.redisContainer(); rc == nil {
		// Redis is not part of this deployment (the chart with your own
		// Redis): its password must still come from a Secret.
		if e := envVar(c, cfg.Store.Redis.PasswordEnv); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
			bad("%s: $%s (store.redis.password_env) is not set from a Secret", cid, cfg.Store.Redis.PasswordEnv)
		}
		return
	}
	for _, p := range configMatchesACL(cfg, readRepoFile(t, path.Join(shippedRedisDir, "users.acl"))) {
		bad("%s: %s", cid, p)
	}
	if _, rc := m.redisContainer(); rc != nil {
		mine, theirs := envVar(c, cfg.Store.Redis.PasswordEnv), envVar(rc, "REDIS_PASSWORD")
		switch {
		case mine == nil || mine.ValueFrom == nil || mine.ValueFrom.SecretKeyRef == nil:
			bad("%s: $%s (store.redis.password_env) is not set from a Secret", cid, cfg.Store.Redis.PasswordEnv)
		case ptrOr(mine.ValueFrom.SecretKeyRef.Optional, false):
			bad("%s: the Redis password Secret is optional: extauthz would start unable to log in", cid)
		case theirs != nil && theirs.ValueFrom != nil && theirs.ValueFrom.SecretKeyRef != nil &&
			(mine.ValueFrom.SecretKeyRef.Name != theirs.ValueFrom.SecretKeyRef.Name || mine.ValueFrom.SecretKeyRef.Key != theirs.ValueFrom.SecretKeyRef.Key):
			bad("%s: the Redis password comes from another Secret than Redis's own", cid)
		}
	}
	// store.redis.url must reach the Redis of this overlay, and the
	// NetworkPolicy in front of it must admit this Pod.
	host, port := urlHostPort(t, cfg.Store.Redis.URL, 6379)
	svc := m.service(strings.Split(host, ".")[0])
	if svc == nil {
		bad("%s: store.redis.url host %q is no Service in the overlay", cid, host)
		return
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return int(p.Port) == port }) {
		bad("%s: Service %s has no port %d (store.redis.url)", cid, svc.Name, port)
	}
	for _, np := range m.netpols {
		for _, sts := range m.statefulSets {
			if !selects(&np.Spec.PodSelector, sts.Spec.Template.Labels) || !selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, sts.Spec.Template.Labels) {
				continue
			}
			if !admits(np, w.pod.Labels, port) {
				bad("%s: NetworkPolicy %s keeps this Pod away from Redis", cid, np.Name)
			}
		}
	}
}

// checkProbes: readiness asks /readyz and liveness /healthz on the HTTP
// listener, over TLS when the listeners serve it. With a client CA the kubelet,
// which has no client certificate, can only see that the port accepts
// connections.
func (m *manifests) checkProbes(cid string, c *corev1.Container, cfg *extauthzConfig, httpPort int, bad func(string, ...any)) {
	// A gRPC probe asks grpc.health.v1 on the Check listener, in plain text
	// from the node: it must be that listener, reachable and without TLS.
	if p := c.StartupProbe; p != nil && p.GRPC != nil {
		host, port, _ := net.SplitHostPort(cfg.grpcListen())
		if strconv.Itoa(int(p.GRPC.Port)) != port || isLoopback(host) || cfg.TLS.CertFile != "" {
			bad("%s: the gRPC startup probe asks port %d; the gRPC listener is %s%s", cid, p.GRPC.Port, cfg.grpcListen(), map[bool]string{true: " with TLS", false: ""}[cfg.TLS.CertFile != ""])
		}
		if s := ptrOr(p.GRPC.Service, ""); s != "" && s != "envoy.service.auth.v3.Authorization" {
			bad("%s: the gRPC startup probe asks for service %q, which extauthz does not report", cid, s)
		}
	}
	for name, pr := range map[string]struct {
		probe *corev1.Probe
		path  string
	}{"readiness": {c.ReadinessProbe, "/readyz"}, "liveness": {c.LivenessProbe, "/healthz"}} {
		if cfg.TLS.ClientCAFile != "" {
			if pr.probe == nil || pr.probe.TCPSocket == nil || portNumber(c, pr.probe.TCPSocket.Port) != httpPort {
				bad("%s: %s probe: with a client CA the kubelet cannot complete a TLS handshake; want tcpSocket on the HTTP listener %d", cid, name, httpPort)
			}
			continue
		}
		if pr.probe == nil || pr.probe.HTTPGet == nil {
			bad("%s: no %s httpGet probe", cid, name)
			continue
		}
		if pr.probe.HTTPGet.Path != pr.path || portNumber(c, pr.probe.HTTPGet.Port) != httpPort {
			bad("%s: %s probe is %s on %d, want %s on the HTTP listener %d", cid, name, pr.probe.HTTPGet.Path, portNumber(c, pr.probe.HTTPGet.Port), pr.path, httpPort)
		}
		want := corev1.URISchemeHTTP
		if cfg.TLS.CertFile != "" {
			want = corev1.URISchemeHTTPS
		}
		if got := orDefault(string(pr.probe.HTTPGet.Scheme), string(corev1.URISchemeHTTP)); got != string(want) {
			bad("%s: %s probe speaks %s to a listener that serves %s", cid, name, got, want)
		}
		if name == "readiness" {
			checkReadinessOutlastsMaxStale(cid, pr.probe, cfg, bad)
		}
	}
}

// The longest `extauthz serve` takes to stop after SIGTERM, each step
// bounded in cmd/extauthz (serve.go, shutdown and close): the calls in
// flight on the gRPC, HTTP and admin listeners, which stop together, 10 s
// (drainFor), the queued last_used_at times 5 s (keystore.Cache.RunTouches),
// the audit events 5 s (closeAudit), the queued spans 5 s
// (tracing.shutdown); with Redis, the rate limiter's last call
// (store.redis.timeout) after them. That is 25 s; 30 keeps a margin for a
// machine too busy to keep to its timers, which is when Pods get replaced.
const (
	serverStopBound     = 30 * time.Second
	defaultRedisTimeout = 200 * time.Millisecond
	// Kubernetes' default terminationGracePeriodSeconds.
	defaultGracePeriod = 30
)

// checkGraceOutlastsStop: the kubelet kills a container terminationGracePeriod
// after the Pod began to stop, preStop included; one that is still writing
// its audit events then loses them. The grace period must cover the preStop
// sleep and the server's whole stop.
func checkGraceOutlastsStop(cid string, c *corev1.Container, spec *corev1.PodSpec, cfg *extauthzConfig, bad func(string, ...any)) {
	var preStop time.Duration
	if l := c.Lifecycle; l != nil && l.PreStop != nil {
		if l.PreStop.Sleep == nil {
			bad("%s: a preStop hook other than sleep: its length cannot be known", cid)
			return
		}
		preStop = time.Duration(l.PreStop.Sleep.Seconds) * time.Second
	}
	stop := serverStopBound
	if cfg.Store.Backend == "redis" {
		t := defaultRedisTimeout
		if d, err := time.ParseDuration(cfg.Store.Redis.Timeout); err == nil {
			t = d
		}
		stop += t
	}
	grace := time.Duration(ptrOr(spec.TerminationGracePeriodSeconds, defaultGracePeriod)) * time.Second
	if grace < preStop+stop {
		bad("%s: terminationGracePeriodSeconds %v is shorter than the preStop sleep (%v) and the server's stop (up to %v): the kubelet would kill it before its audit events are written", cid, grace.Seconds(), preStop, stop)
	}
}

// checkReadinessOutlastsMaxStale: with Redis, /readyz answers 503 as soon as
// Redis does not answer, and an outage of the one Redis every replica
// shares makes them all fail it at once. Kubernetes does not prefer the
// ready replicas, it removes the others from the Service (and, for a
// sidecar, the whole Pod of the app), so a readiness probe that gives up
// before cache.max_stale turns every Redis outage into a total one, while
// each replica could still serve its cached keys for that long.
func checkReadinessOutlastsMaxStale(cid string, p *corev1.Probe, cfg *extauthzConfig, bad func(string, ...any)) {
	if cfg.Store.Backend != "redis" {
		return
	}
	maxStale := 5 * time.Minute
	if d, err := time.ParseDuration(cfg.Cache.MaxStale); err == nil {
		maxStale = d
	}
	if ttl, err := time.ParseDuration(cfg.Cache.TTL); err == nil && cfg.Cache.MaxStale == "" {
		maxStale = max(maxStale, ttl)
	}
	period := 10 * time.Second // Kubernetes' default
	if p.PeriodSeconds > 0 {
		period = time.Duration(p.PeriodSeconds) * time.Second
	}
	failures := p.FailureThreshold
	if failures <= 0 {
		failures = 3
	}
	if tolerated := time.Duration(failures) * period; tolerated < maxStale {
		bad("%s: readiness probe: %d failures %v apart take a replica out after %v of a Redis outage, every replica at once, "+
			"while each could serve its cached keys for cache.max_stale (%v); let it fail for at least that long",
			cid, failures, period, tolerated, maxStale)
	}
}

// checkTLSFiles: the listeners' certificate, key and client CA are files of
// mounted Secrets, whole volumes (no subPath) so that a renewal reaches them.
func (m *manifests) checkTLSFiles(cid string, c *corev1.Container, spec *corev1.PodSpec, cfg *extauthzConfig, bad func(string, ...any)) {
	for field, file := range map[string]string{"tls.cert_file": cfg.TLS.CertFile, "tls.key_file": cfg.TLS.KeyFile, "tls.client_ca_file": cfg.TLS.ClientCAFile} {
		if file == "" {
			continue
		}
		if _, _, err := mountedSecret(c, spec, file); err != nil {
			bad("%s: %s: %v", cid, field, err)
		}
	}
}

// checkEmbedded: the embedded store is one SQLite file, so exactly one
// process may open it: a StatefulSet of one replica (never two Pods of an
// ordinal at once), nothing that scales it, and the file on a volume of its
// own that outlives the Pod.
func (m *manifests) checkEmbedded(cid string, c *corev1.Container, cfg *extauthzConfig, w workload, bad func(string, ...any)) {
	if w.kind != "StatefulSet" || w.replicas != 1 {
		bad("%s: the embedded store runs in a %s of %d replicas; want a StatefulSet of exactly 1", cid, w.kind, w.replicas)
	}
	for _, h := range m.hpas {
		if h.Spec.ScaleTargetRef.Name == w.name {
			bad("%s: HorizontalPodAutoscaler %s scales the embedded store", cid, h.Name)
		}
	}
	var sts *appsv1.StatefulSet
	for _, s := range m.statefulSets {
		if s.Name == w.name {
			sts = s
		}
	}
	dir := path.Dir(cfg.Store.Path)
	var claim string
	for _, vm := range c.VolumeMounts {
		if path.Clean(vm.MountPath) == dir && !vm.ReadOnly {
			claim = vm.Name
		}
	}
	if sts == nil || claim == "" || !slices.ContainsFunc(sts.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == claim }) {
		bad("%s: store.path %s is not on a volumeClaimTemplate: the keys would die with the Pod", cid, cfg.Store.Path)
	}
	if sts != nil && (sts.Spec.PersistentVolumeClaimRetentionPolicy == nil || sts.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType) {
		bad("%s: the embedded store's volume is deleted with the StatefulSet, and every key with it", cid)
	}
	if fs := ptrOr(w.pod.Spec.SecurityContext, corev1.PodSecurityContext{}).FSGroup; fs == nil || *fs != ptrOr(ptrOr(c.SecurityContext, corev1.SecurityContext{}).RunAsUser, -1) {
		bad("%s: fsGroup must be the container's user, or the non-root process cannot write the store's volume", cid)
	}
}

// extauthzAdmits reports whether the extauthz Pods' policies let Pods with
// these labels in namespace ns, not extauthz's own, reach the gRPC port.
func (m *manifests) extauthzAdmits(podLabels map[string]string, ns string) bool {
	for _, w := range m.workloads() {
		if w.kind != "Deployment" || w.name != "extauthz" {
			continue
		}
		grpcPort, _ := m.listenPorts(w.name)
		for _, np := range m.policiesFor(w) {
			for _, rule := range np.Spec.Ingress {
				if !ruleOpensPort(rule.Ports, grpcPort) {
					continue
				}
				for _, peer := range rule.From {
					nsSel := peer.NamespaceSelector
					nsOK := nsSel != nil && ((len(nsSel.MatchLabels) == 0 && len(nsSel.MatchExpressions) == 0) ||
						selects(nsSel, map[string]string{namespaceNameLabel: ns}))
					if nsOK && peer.PodSelector != nil && selects(peer.PodSelector, podLabels) {
						return true
					}
				}
			}
		}
	}
	return false
}

// admits reports whether a NetworkPolicy lets Pods with these labels (in the
// same namespace) reach the given port.
func admits(np *networkingv1.NetworkPolicy, podLabels map[string]string, port int) bool {
	for _, rule := range np.Spec.Ingress {
		portOK := len(rule.Ports) == 0
		for _, p := range rule.Ports {
			if p.Port != nil && p.Port.IntValue() == port {
				portOK = true
			}
		}
		fromOK := len(rule.From) == 0
		for _, peer := range rule.From {
			if peer.PodSelector != nil && peer.NamespaceSelector == nil && selects(peer.PodSelector, podLabels) {
				fromOK = true
			}
		}
		if portOK && fromOK {
			return true
		}
	}
	return false
}

// redisContainer is the overlay's Redis: its StatefulSet and container.
func (m *manifests) redisContainer() (*appsv1.StatefulSet, *corev1.Container) {
	for _, s := range m.statefulSets {
		for i, c := range s.Spec.Template.Spec.Containers {
			if strings.HasPrefix(c.Image, "redis:") {
				return s, &s.Spec.Template.Spec.Containers[i]
			}
		}
	}
	return nil, nil
}

// checkRedis: the Redis the keys live in runs the shipped files (start.sh,
// redis.conf, the ACL), keeps what it is given (AOF on a PersistentVolume, no
// eviction) and lets in only who knows the password from the Secret.
func (m *manifests) checkRedis(t *testing.T, bad func(string, ...any)) {
	s, c := m.redisContainer()
	if s == nil {
		bad("no Redis StatefulSet")
		return
	}
	id := "StatefulSet/" + s.Name
	spec := &s.Spec.Template.Spec
	const startScript = "/etc/redis/start.sh"
	if !slices.Equal(c.Command, []string{"sh", startScript}) {
		bad("%s: command %q, want [sh %s]: the shipped start script renders the ACL", id, c.Command, startScript)
		return
	}
	files := map[string]string{}
	for _, f := range shippedRedisFiles {
		data, err := m.mountedFile(c, spec, path.Join(path.Dir(startScript), f))
		if err != nil {
			bad("%s: %s: %v", id, f, err)
			return
		}
		if data != readRepoFile(t, path.Join(shippedRedisDir, f)) {
			bad("%s: the mounted %s is not %s/%s, the file the Go tests prove", id, f, shippedRedisDir, f)
		}
		files[f] = data
	}
	conf := redisConf(files["redis.conf"])
	if redisSetting(conf, c.Args, "appendonly", "no") != "yes" {
		bad("%s: Redis runs without appendonly yes: created keys can be lost", id)
	}
	if fs := redisSetting(conf, c.Args, "appendfsync", "everysec"); fs != "everysec" && fs != "always" {
		bad("%s: appendfsync %s", id, fs)
	}
	if p := redisSetting(conf, c.Args, "maxmemory-policy", "noeviction"); p != "noeviction" {
		bad("%s: maxmemory-policy %s: Redis may evict key records", id, p)
	}
	limit := c.Resources.Limits.Memory()
	if mm, err := redisBytes(redisSetting(conf, c.Args, "maxmemory", "0")); err != nil || mm == 0 {
		bad("%s: no maxmemory: at its memory limit Redis would be killed rather than refuse writes", id)
	} else if limit.IsZero() || mm > limit.Value()*3/4 {
		bad("%s: maxmemory %d bytes is over three quarters of the memory limit %s (an AOF rewrite forks)", id, mm, limit.String())
	}
	if e := envVar(c, "REDIS_PASSWORD"); e == nil || e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil {
		bad("%s: REDIS_PASSWORD is not set from a Secret: start.sh will not start", id)
	} else if ptrOr(e.ValueFrom.SecretKeyRef.Optional, false) {
		bad("%s: the Redis password Secret is optional", id)
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.Exec == nil || !strings.Contains(strings.Join(p.Exec.Command, " "), "--user "+redisUser) {
			bad("%s: the %s probe does not log in as %s (the default user can do nothing)", id, name, redisUser)
		}
	}
	acl := "/run/redis/users.acl" // start.sh's default
	if e := envVar(c, "REDIS_ACL_FILE"); e != nil {
		acl = e.Value
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool {
		return path.Dir(acl) == path.Clean(vm.MountPath) && slices.ContainsFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == vm.Name && v.EmptyDir != nil })
	}) {
		bad("%s: %s, where start.sh renders the ACL, is not an emptyDir", id, path.Dir(acl))
	}
	dir := lastFlagValue(c.Args, "--dir", "/data")
	var claim string
	for _, vm := range c.VolumeMounts {
		if path.Clean(vm.MountPath) == path.Clean(dir) {
			claim = vm.Name
		}
	}
	if !slices.ContainsFunc(s.Spec.VolumeClaimTemplates, func(p corev1.PersistentVolumeClaim) bool { return p.Name == claim }) {
		bad("%s: Redis's data directory %s is not on a volumeClaimTemplate", id, dir)
	}
	if svc := m.service(s.Spec.ServiceName); svc == nil || svc.Spec.ClusterIP != corev1.ClusterIPNone {
		bad("%s: serviceName %q is not a headless Service in the overlay", id, s.Spec.ServiceName)
	}
}

// Labels the NetworkPolicies admit by (documented in k8s/base/networkpolicy.yaml).
const (
	redisClientLabel = "extauthz/redis-client"
	proxyLabel       = "extauthz/proxy"
	protectedLabel   = "extauthz/protected" // the Istio overlay's workloads
	monitoringNS     = "monitoring"
)

// Ports of the extauthz listeners other Pods may reach, unless the config
// says otherwise (listenPorts).
const (
	grpcPort     = 9001
	httpPort     = 9002
	redisPort    = 6379
	dnsPort      = 53
	kubeDNSLabel = "k8s-app"
	// dnsNamespace is where the cluster DNS Pods run (kubeadm's CoreDNS and
	// most distributions').
	dnsNamespace = "kube-system"
)

// policiesFor returns the NetworkPolicies that select a workload's Pods.
func (m *manifests) policiesFor(w workload) []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, np := range m.netpols {
		if np.Namespace == w.namespace && selects(&np.Spec.PodSelector, w.pod.Labels) {
			out = append(out, np)
		}
	}
	return out
}

func ruleOpensPort(ports []networkingv1.NetworkPolicyPort, port int) bool {
	if len(ports) == 0 {
		return true
	}
	return slices.ContainsFunc(ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port == nil || p.Port.IntValue() == port })
}

// requiresLabel reports whether a selector only matches objects that carry
// label=value.
func requiresLabel(sel *metav1.LabelSelector, label, value string) bool {
	return sel != nil && sel.MatchLabels[label] == value
}

// checkNetworkPolicies: every Pod is behind a NetworkPolicy; Redis takes
// connections from extauthz only and makes none; extauthz takes decisions
// from proxies only and metrics from the monitoring namespace, and talks to
// Redis and DNS only.
func (m *manifests) checkNetworkPolicies(bad func(string, ...any)) {
	// Every check below reads a rule's ports one by one (.port): a range
	// (endPort) would open ports they never see, and no policy here needs
	// one, so none may hold one.
	for _, np := range m.netpols {
		var ports []networkingv1.NetworkPolicyPort
		for _, rule := range np.Spec.Ingress {
			ports = append(ports, rule.Ports...)
		}
		for _, rule := range np.Spec.Egress {
			ports = append(ports, rule.Ports...)
		}
		for _, p := range ports {
			if p.EndPort != nil {
				bad("NetworkPolicy/%s: opens ports %v to %d, a range; name each port", np.Name, p.Port, *p.EndPort)
			}
		}
	}
	redis, _ := m.redisContainer()
	for _, w := range m.workloads() {
		id := w.kind + "/" + w.name
		nps := m.policiesFor(w)
		if !slices.ContainsFunc(nps, func(np *networkingv1.NetworkPolicy) bool {
			return slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress)
		}) {
			bad("%s: no NetworkPolicy limits who reaches its Pods", id)
		}
		switch {
		case redis != nil && w.name == redis.Name && w.kind == "StatefulSet":
			m.checkRedisPolicies(id, nps, bad)
		case w.name == "extauthz" && (w.kind == "Deployment" || w.kind == "StatefulSet"):
			m.checkExtauthzPolicies(id, w, nps, bad)
		}
	}
}

func (m *manifests) checkRedisPolicies(id string, nps []*networkingv1.NetworkPolicy, bad func(string, ...any)) {
	egressClosed := false
	for _, np := range nps {
		pid := "NetworkPolicy/" + np.Name
		if slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) && len(np.Spec.Egress) == 0 {
			egressClosed = true
		}
		for _, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 || slices.ContainsFunc(rule.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port == nil || p.Port.IntValue() != redisPort }) {
				bad("%s: opens %s on other ports than %d", pid, id, redisPort)
			}
			if len(rule.From) == 0 {
				bad("%s: admits every Pod to %s", pid, id)
			}
			for _, peer := range rule.From {
				if peer.IPBlock != nil || peer.NamespaceSelector != nil || !requiresLabel(peer.PodSelector, redisClientLabel, "true") {
					bad("%s: admits Pods to %s by something other than %s=true in its own namespace", pid, id, redisClientLabel)
				}
			}
		}
	}
	if !egressClosed {
		bad("%s: no NetworkPolicy closes its egress: a Redis that is taken over could reach out", id)
	}
	// Every Pod the label admits runs extauthz (the sidecar overlay's app Pods
	// do, beside the app: there the ACL password is what keeps the app out).
	for _, w := range m.workloads() {
		if w.pod.Labels[redisClientLabel] != "true" {
			continue
		}
		if !slices.ContainsFunc(allContainers(&w.pod.Spec), isExtauthz) {
			bad("%s/%s carries %s=true but runs no extauthz: it can reach Redis", w.kind, w.name, redisClientLabel)
		}
	}
}

// listenPorts are the gRPC and HTTP ports a workload's extauthz listens on.
func (m *manifests) listenPorts(name string) (grpc, http int) {
	grpc, http = grpcPort, httpPort
	if cfg := m.configOfWorkload(name); cfg != nil {
		if _, p, err := net.SplitHostPort(cfg.grpcListen()); err == nil {
			grpc, _ = strconv.Atoi(p)
		}
		if _, p, err := net.SplitHostPort(cfg.httpListen()); err == nil {
			http, _ = strconv.Atoi(p)
		}
	}
	return grpc, http
}

func (m *manifests) checkExtauthzPolicies(id string, w workload, nps []*networkingv1.NetworkPolicy, bad func(string, ...any)) {
	grpcPort, httpPort := m.listenPorts(w.name)
	proxies, metrics, egress := false, false, false
	for _, np := range nps {
		pid := "NetworkPolicy/" + np.Name
		for _, rule := range np.Spec.Ingress {
			if len(rule.From) == 0 {
				bad("%s: admits every Pod to %s", pid, id)
			}
			for _, p := range rule.Ports {
				if p.Port == nil || (p.Port.IntValue() != grpcPort && p.Port.IntValue() != httpPort) {
					bad("%s: opens port %v of %s; only %d and %d serve other Pods", pid, p.Port, id, grpcPort, httpPort)
				}
			}
			for _, peer := range rule.From {
				switch {
				case peer.IPBlock != nil:
					bad("%s: admits an IP block to %s", pid, id)
				case requiresLabel(peer.PodSelector, protectedLabel, "true") && !namesOneNamespace(peer.NamespaceSelector):
					// The protected workloads' namespace is known: a label
					// alone is one any Pod's author can write.
					bad("%s: admits Pods labelled %s=true to %s from every namespace, not the protected workloads' own", pid, protectedLabel, id)
				case requiresLabel(peer.PodSelector, protectedLabel, "true") && ruleOpensPort(rule.Ports, httpPort):
					// Their sidecars ask over gRPC; the application beside
					// each has no business with HTTP decisions or /metrics.
					bad("%s: lets the Istio-protected workloads reach %s beyond its gRPC port %d", pid, id, grpcPort)
				case peer.PodSelector != nil && (requiresLabel(peer.PodSelector, proxyLabel, "true") || requiresLabel(peer.PodSelector, protectedLabel, "true")):
					proxies = proxies || ruleOpensPort(rule.Ports, grpcPort)
				case peer.PodSelector == nil && requiresLabel(peer.NamespaceSelector, "kubernetes.io/metadata.name", monitoringNS):
					if ruleOpensPort(rule.Ports, grpcPort) || len(rule.Ports) == 0 {
						bad("%s: the monitoring namespace may reach more of %s than the metrics port %d", pid, id, httpPort)
					}
					metrics = true
				default:
					bad("%s: admits Pods to %s that are neither proxies (%s=true) nor the %s namespace", pid, id, proxyLabel, monitoringNS)
				}
			}
		}
		if slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress) {
			egress = true
			for _, rule := range np.Spec.Egress {
				for _, p := range rule.Ports {
					if p.Port == nil || (p.Port.IntValue() != redisPort && p.Port.IntValue() != dnsPort) {
						bad("%s: lets %s connect to port %v; it needs Redis and DNS only", pid, id, p.Port)
					}
				}
				if len(rule.Ports) == 0 || len(rule.To) == 0 {
					bad("%s: lets %s connect anywhere", pid, id)
				}
				for _, peer := range rule.To {
					switch {
					case anyDestination(peer):
						bad("%s: lets %s connect to every address or every Pod of every namespace", pid, id)
					case ruleOpensPort(rule.Ports, dnsPort) && (peer.PodSelector == nil || peer.PodSelector.MatchLabels[kubeDNSLabel] == ""):
						bad("%s: lets %s reach port %d of more than the cluster DNS Pods (%s): DNS is a way out for whoever runs code there", pid, id, dnsPort, kubeDNSLabel)
					case ruleOpensPort(rule.Ports, dnsPort) && (peer.NamespaceSelector == nil || peer.NamespaceSelector.MatchLabels[namespaceNameLabel] != dnsNamespace):
						// Anyone who may create a Pod in some namespace
						// can give it the DNS Pods' label.
						bad("%s: lets %s reach port %d of Pods outside namespace %s, where the cluster DNS runs: any Pod can carry the DNS Pods' label, and DNS is a way out for whoever runs code there", pid, id, dnsPort, dnsNamespace)
					}
				}
			}
		}
	}
	if !proxies {
		bad("%s: no NetworkPolicy lets the proxies (%s=true) reach its gRPC port", id, proxyLabel)
	}
	if !metrics {
		bad("%s: no NetworkPolicy lets the %s namespace scrape /metrics", id, monitoringNS)
	}
	if !egress {
		bad("%s: no NetworkPolicy limits where it connects", id)
	}
}

// anyDestination reports whether an egress peer lets a Pod connect to every
// address (an IP block of prefix length 0) or to every Pod in every namespace.
func anyDestination(peer networkingv1.NetworkPolicyPeer) bool {
	if peer.IPBlock != nil {
		_, n, err := net.ParseCIDR(peer.IPBlock.CIDR)
		if err != nil {
			return true
		}
		ones, _ := n.Mask.Size()
		return ones == 0
	}
	emptySel := func(s *metav1.LabelSelector) bool {
		return s != nil && len(s.MatchLabels) == 0 && len(s.MatchExpressions) == 0
	}
	return emptySel(peer.NamespaceSelector) && (peer.PodSelector == nil || emptySel(peer.PodSelector))
}

// checkObjectsApart: no two documents are one object (the second would
// replace the first), and no Service or NetworkPolicy selects the Pods of
// two workloads: extauthz's policy would open Redis to the proxies, Redis's
// shut extauthz in, and a Service send checks to Redis.
func (m *manifests) checkObjectsApart(bad func(string, ...any)) {
	seen := map[string]bool{}
	for _, o := range m.objects {
		if seen[o] {
			bad("%s is rendered twice: the second replaces the first", o)
		}
		seen[o] = true
	}
	selected := func(namespace string, sel *metav1.LabelSelector) []string {
		var out []string
		for _, w := range m.workloads() {
			if w.namespace == namespace && selects(sel, w.pod.Labels) {
				out = append(out, w.kind+"/"+w.name)
			}
		}
		return out
	}
	for _, svc := range m.services {
		if ws := selected(svc.Namespace, &metav1.LabelSelector{MatchLabels: svc.Spec.Selector}); len(ws) > 1 {
			bad("Service/%s selects the Pods of %v", svc.Name, ws)
		}
	}
	for _, np := range m.netpols {
		if ws := selected(np.Namespace, &np.Spec.PodSelector); len(ws) > 1 {
			bad("NetworkPolicy/%s selects the Pods of %v", np.Name, ws)
		}
	}
}

// checkPDBs: each PDB protects exactly one workload and can be satisfied.
func (m *manifests) checkPDBs(bad func(string, ...any)) {
	for _, pdb := range m.pdbs {
		var matched []workload
		for _, w := range m.workloads() {
			if w.namespace == pdb.Namespace && selects(pdb.Spec.Selector, w.pod.Labels) {
				matched = append(matched, w)
			}
		}
		if len(matched) != 1 {
			bad("PodDisruptionBudget/%s selects %d workloads, want exactly 1", pdb.Name, len(matched))
			continue
		}
		if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() >= int(matched[0].replicas) {
			bad("PodDisruptionBudget/%s: minAvailable must be below %s/%s's %d replicas, or no node could ever drain", pdb.Name, matched[0].kind, matched[0].name, matched[0].replicas)
		}
	}
}

// checkCentralService: the shared extauthz Deployment, its Service (ports named
// grpc and http, which Istio reads the protocol from) and its PDB.
func (m *manifests) checkCentralService(bad func(string, ...any)) {
	var dep *appsv1.Deployment
	for _, d := range m.deployments {
		if d.Name == "extauthz" {
			dep = d
		}
	}
	if dep == nil {
		bad("no Deployment extauthz")
		return
	}
	c := &dep.Spec.Template.Spec.Containers[0]
	svc := m.service("extauthz")
	if svc == nil {
		bad("no Service extauthz")
		return
	}
	if !selects(&metav1.LabelSelector{MatchLabels: svc.Spec.Selector}, dep.Spec.Template.Labels) {
		bad("Service extauthz does not select the Deployment's Pods")
	}
	// Off the cluster no NetworkPolicy tells a proxy from anyone else: only a
	// client certificate does.
	for _, s := range m.services {
		if s.Spec.Type != "" && s.Spec.Type != corev1.ServiceTypeClusterIP && selects(&metav1.LabelSelector{MatchLabels: s.Spec.Selector}, dep.Spec.Template.Labels) {
			if cfg := m.configOfWorkload(dep.Name); cfg == nil || cfg.TLS.ClientCAFile == "" {
				bad("Service %s is a %s: it publishes the decision ports and /metrics off the cluster, where only a client certificate (tls.client_ca_file) keeps anyone out", s.Name, s.Spec.Type)
			}
		}
	}
	grpc, http := m.listenPorts(dep.Name)
	want := map[string]int{"grpc": grpc, "http": http}
	for name, port := range want {
		i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == name })
		if i < 0 {
			bad("Service extauthz has no port named %s", name)
			continue
		}
		sp := svc.Spec.Ports[i]
		if int(sp.Port) != port || portNumber(c, sp.TargetPort) != port {
			bad("Service extauthz port %s is %d → %d, want %d → the container's %d", name, sp.Port, portNumber(c, sp.TargetPort), port, port)
		}
	}
	if !slices.ContainsFunc(m.pdbs, func(p *policyv1.PodDisruptionBudget) bool {
		return selects(p.Spec.Selector, dep.Spec.Template.Labels)
	}) {
		bad("no PodDisruptionBudget covers Deployment extauthz")
	}
	if i := slices.IndexFunc(m.workloads(), func(w workload) bool { return w.kind == "Deployment" && w.name == dep.Name }); i >= 0 && m.workloads()[i].replicas < 2 {
		bad("Deployment extauthz runs one replica: every request depends on it")
	}
}

// checkSidecar: the app Pod runs extauthz and Envoy as native sidecars, Envoy's
// config (the file envoy/envoy_test.go proves) points at the sidecar on
// loopback, and nothing but Envoy is reachable from other Pods.
func (m *manifests) checkSidecar(t *testing.T, bad func(string, ...any)) {
	for _, d := range m.deployments {
		if d.Name == "extauthz" {
			bad("the sidecar overlay still runs the central Deployment extauthz")
		}
	}
	if m.service("extauthz") != nil || len(m.pdbs) != 1 {
		bad("the sidecar overlay keeps the central Service or PDB")
	}
	var app *appsv1.Deployment
	for _, d := range m.deployments {
		if d.Name == "demo-app" {
			app = d
		}
	}
	if app == nil {
		bad("no Deployment demo-app")
		return
	}
	spec := &app.Spec.Template.Spec
	var names []string
	for _, c := range spec.InitContainers {
		names = append(names, c.Name)
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			bad("init container %s is not a native sidecar (restartPolicy: Always)", c.Name)
		}
	}
	if !slices.Equal(names, []string{"extauthz", "envoy"}) {
		bad("sidecars are %v, want [extauthz envoy] in that order (Envoy must find extauthz up)", names)
		return
	}
	ext, envoy := &spec.InitContainers[0], &spec.InitContainers[1]
	checkRedisPasswordIsolated(app.Name, spec, ext, bad)
	if ext.StartupProbe == nil {
		bad("the extauthz sidecar has no startupProbe, so Envoy starts before it answers")
	}
	cfg, err := m.extauthzConfigOf(ext, spec)
	if err != nil {
		bad("extauthz sidecar config: %v", err)
		return
	}
	grpcHost, grpcPort := hostPort(t, cfg.grpcListen())
	if !isLoopback(grpcHost) {
		bad("the extauthz sidecar's gRPC listener %q is not loopback: other Pods could ask it for decisions", cfg.grpcListen())
	}
	if len(envoy.Args) < 2 || envoy.Args[0] != "-c" {
		bad("envoy args %q do not name a config with -c", envoy.Args)
		return
	}
	envoyYAML, err := m.mountedFile(envoy, spec, envoy.Args[1])
	if err != nil {
		bad("envoy config: %v", err)
		return
	}
	if onDisk := readRepoFile(t, "k8s/overlays/sidecar/envoy.yaml"); envoyYAML != onDisk {
		bad("the Envoy ConfigMap is not k8s/overlays/sidecar/envoy.yaml, the file envoy_test.go validates")
	}
	ef := parseEnvoyFile(t, []byte(envoyYAML))
	for _, e := range ef.authzEndpoints(t) {
		if !isLoopback(e.host) || e.port != grpcPort {
			bad("Envoy sends ext_authz to %s, the sidecar listens on %s", e, cfg.grpcListen())
		}
	}
	appC := &spec.Containers[0]
	appPort := ""
	if e := envVar(appC, "HTTP_PORT"); e != nil {
		appPort = e.Value
	}
	for _, e := range ef.clusters["upstream"] {
		if !isLoopback(e.host) || strconv.Itoa(e.port) != appPort {
			bad("Envoy's upstream is %s, the app listens on 127.0.0.1:%s", e, appPort)
		}
	}
	envoyPort := containerPort(envoy, "envoy")
	if !slices.Contains(ef.listenPorts, envoyPort) {
		bad("Envoy's containerPort %d is not its listener %v", envoyPort, ef.listenPorts)
	}
	svc := m.service("demo-app")
	if svc == nil || len(svc.Spec.Ports) != 1 || portNumber(envoy, svc.Spec.Ports[0].TargetPort) != envoyPort {
		bad("Service demo-app must expose Envoy's port %d and nothing else", envoyPort)
	}
	var guarded bool
	for _, np := range m.netpols {
		if !selects(&np.Spec.PodSelector, app.Spec.Template.Labels) {
			continue
		}
		guarded = true
		for _, rule := range np.Spec.Ingress {
			if len(rule.Ports) == 0 {
				bad("NetworkPolicy %s admits every port of the app Pod: Envoy can be bypassed", np.Name)
			}
			for _, p := range rule.Ports {
				if p.Port == nil || p.Port.IntValue() != envoyPort {
					bad("NetworkPolicy %s admits port %v besides Envoy's %d", np.Name, p.Port, envoyPort)
				}
			}
		}
	}
	if !guarded {
		bad("no NetworkPolicy limits the app Pod to Envoy's port: the app's own port bypasses authorization")
	}
}

// checkRedisPasswordIsolated: an app that shares its Pod with an extauthz
// sidecar shares its network too, so it can reach Redis: only the password
// keeps it out. Nothing but the extauthz container may have a way to it.
func checkRedisPasswordIsolated(pod string, spec *corev1.PodSpec, ext *corev1.Container, bad func(string, ...any)) {
	if ptrOr(spec.ShareProcessNamespace, false) {
		bad("%s: shareProcessNamespace lets the app read the extauthz container's environment, Redis password included", pod)
	}
	pw := envVar(ext, "REDIS_PASSWORD")
	if pw == nil || pw.ValueFrom == nil || pw.ValueFrom.SecretKeyRef == nil {
		bad("the extauthz sidecar has no REDIS_PASSWORD from a Secret")
		return
	}
	secret := pw.ValueFrom.SecretKeyRef.Name
	for _, c := range allContainers(spec) {
		if c == ext {
			continue
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == secret {
				bad("%s: the %s container gets the Redis password Secret %s too", pod, c.Name, secret)
			}
		}
		for _, ef := range c.EnvFrom {
			if ef.SecretRef != nil && ef.SecretRef.Name == secret {
				bad("%s: the %s container gets the Redis password Secret %s too", pod, c.Name, secret)
			}
		}
	}
	for _, v := range spec.Volumes {
		if v.Secret != nil && v.Secret.SecretName == secret {
			bad("%s: the Redis password Secret %s is a volume of the Pod", pod, secret)
		}
	}
}

// meshConfigFile is k8s/overlays/istio/mesh-config.yaml.
const meshConfigFile = "k8s/overlays/istio/mesh-config.yaml"

// loadMeshConfig decodes the IstioOperator snippet: its envelope strictly, its
// meshConfig with protojson into Istio's own MeshConfig type (strict as well).
func loadMeshConfig(t *testing.T, data []byte) (*meshv1alpha1.MeshConfig, error) {
	t.Helper()
	var op struct {
		APIVersion string            `json:"apiVersion"`
		Kind       string            `json:"kind"`
		Metadata   metav1.ObjectMeta `json:"metadata"`
		Spec       struct {
			MeshConfig any `json:"meshConfig"`
		} `json:"spec"`
	}
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, err
	}
	strictErrs, err := kjson.UnmarshalStrict(j, &op)
	if err != nil {
		return nil, err
	}
	if len(strictErrs) > 0 {
		return nil, errors.Join(strictErrs...)
	}
	if op.APIVersion != "install.istio.io/v1alpha1" || op.Kind != "IstioOperator" {
		return nil, fmt.Errorf("%s/%s is not an IstioOperator", op.APIVersion, op.Kind)
	}
	mc := &meshv1alpha1.MeshConfig{}
	if err := protojson.Unmarshal(jsonRoundTrip(t, op.Spec.MeshConfig), mc); err != nil {
		return nil, fmt.Errorf("meshConfig: %w", err)
	}
	return mc, nil
}

// maxAuthzTimeout bounds how long one request may wait for a decision.
const maxAuthzTimeout = time.Second

// checkIstio: the AuthorizationPolicy hands requests to a provider that the mesh
// config defines, pointing at the Service this overlay builds, failing closed.
func (m *manifests) checkIstio(t *testing.T, bad func(string, ...any)) {
	mc, err := loadMeshConfig(t, []byte(readRepoFile(t, meshConfigFile)))
	if err != nil {
		bad("%s: %v", meshConfigFile, err)
		return
	}
	m.checkIstioWith(mc, bad)
	if cfg := m.configOfWorkload("extauthz"); cfg == nil {
		bad("no extauthz config")
	} else {
		m.checkIstioPolicies(cfg, bad)
	}
}

// checkIstioPolicies: the workloads the AuthorizationPolicies protect are
// told apart by their destination principals (Istio's CUSTOM action sets no
// context_extensions): every policy of extauthz's config is selected by
// principals, each the SPIFFE id of a service account in the namespace an
// AuthorizationPolicy protects, and mTLS is STRICT there, or a plaintext
// request would carry no principal.
func (m *manifests) checkIstioPolicies(cfg *extauthzConfig, bad func(string, ...any)) {
	if len(cfg.Policies) < 2 {
		bad("the Istio overlay's config has %d named policies; it shows one per protected workload", len(cfg.Policies))
	}
	if cfg.Unselected != "deny" {
		bad("the Istio overlay's config must say unselected: deny: a request of a workload no policy names must not get another's rules")
	}
	protected := map[string]bool{}
	for _, ap := range m.authzPolicy {
		protected[ap.Namespace] = true
	}
	for _, p := range cfg.Policies {
		if len(p.Match.Principals) == 0 || len(p.Match.Context) > 0 || len(p.Match.Hosts) > 0 {
			bad("policy %s: select it by destination principal alone (Istio sets no context_extensions, and hosts are the client's)", p.Name)
		}
		for _, principal := range p.Match.Principals {
			ns, sa, ok := strings.Cut(strings.TrimPrefix(principal, "spiffe://cluster.local/ns/"), "/sa/")
			if !strings.HasPrefix(principal, "spiffe://cluster.local/ns/") || !ok || sa == "" || strings.Contains(sa, "/") {
				bad("policy %s: principal %q is not spiffe://cluster.local/ns/<namespace>/sa/<service account>", p.Name, principal)
				continue
			}
			if !protected[ns] {
				bad("policy %s: principal %q is in namespace %s, which no AuthorizationPolicy protects", p.Name, principal, ns)
			}
		}
	}
	for ns := range protected {
		strict := slices.ContainsFunc(m.peerAuthn, func(pa *istiosecurityv1.PeerAuthentication) bool {
			return pa.Namespace == ns && pa.Spec.GetMtls().GetMode() == securityv1beta1.PeerAuthentication_MutualTLS_STRICT
		})
		if !strict {
			bad("namespace %s: no PeerAuthentication with mtls STRICT, so a plaintext request carries no destination principal", ns)
		}
	}
}

func (m *manifests) checkIstioWith(mc *meshv1alpha1.MeshConfig, bad func(string, ...any)) {
	if len(m.authzPolicy) == 0 {
		bad("no AuthorizationPolicy")
	}
	m.checkAmbientGuards(bad)
	for _, ap := range m.authzPolicy {
		id := "AuthorizationPolicy/" + ap.Name
		// The sidecars of the Pods it selects are what call extauthz.
		if sel := ap.Spec.GetSelector().GetMatchLabels(); !m.extauthzAdmits(sel, ap.Namespace) {
			bad("%s: the Pods it protects (%v) are not let through to extauthz's gRPC port by a NetworkPolicy", id, sel)
		}
		if ap.Spec.GetAction() != securityv1beta1.AuthorizationPolicy_CUSTOM {
			bad("%s: action %v, want CUSTOM", id, ap.Spec.GetAction())
		}
		if len(ap.Spec.GetRules()) == 0 {
			bad("%s: no rules: a CUSTOM policy without rules matches nothing", id)
		}
		// A request no rule matches is not checked at all. Only an empty
		// rule, {}, matches every request (and TCP connection): each field
		// narrows it, and even paths ["*"] is a match of one character or
		// more, which a request without a path (an HTTP/2 CONNECT) misses.
		if !slices.ContainsFunc(ap.Spec.GetRules(), matchesEverything) {
			bad("%s: no rule matches every request (an empty rule, {}): the requests its rules leave out reach the workload unchecked", id)
		}
		// A path Istio skips reaches the workload with whatever headers the
		// client wrote (identity headers, credentials, method and target
		// overrides): Istio cannot strip them there. extauthz answers such a
		// path itself, as a public route.
		for _, r := range ap.Spec.GetRules() {
			for _, to := range r.GetTo() {
				if p := to.GetOperation().GetNotPaths(); len(p) > 0 {
					bad("%s: skips %v, where a client's identity headers and overrides reach the workload unchecked; make them public routes of extauthz instead", id, p)
				}
			}
		}
		if ap.Namespace == "" || ap.Namespace == "extauthz" {
			bad("%s: lives in %q; it belongs in the protected workloads' namespace", id, ap.Namespace)
		}
		name := ap.Spec.GetProvider().GetName()
		var provider *meshv1alpha1.MeshConfig_ExtensionProvider
		for _, p := range mc.GetExtensionProviders() {
			if p.GetName() == name {
				provider = p
			}
		}
		if provider == nil {
			bad("%s: provider %q is not in %s", id, name, meshConfigFile)
			continue
		}
		g := provider.GetEnvoyExtAuthzGrpc()
		if g == nil {
			bad("provider %s is not envoyExtAuthzGrpc", name)
			continue
		}
		svcName, ns, ok := strings.Cut(strings.TrimSuffix(g.GetService(), ".svc.cluster.local"), ".")
		svc := m.service(svcName)
		if !ok || svc == nil || svc.Namespace != ns {
			bad("provider %s: service %q is not a Service this overlay creates (want <name>.<namespace>.svc.cluster.local)", name, g.GetService())
		} else {
			i := slices.IndexFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return int(p.Port) == int(g.GetPort()) })
			if i < 0 || !strings.HasPrefix(svc.Spec.Ports[i].Name, "grpc") {
				bad("provider %s: port %d is not a grpc-named port of Service %s", name, g.GetPort(), svcName)
			}
		}
		if d := g.GetTimeout(); d == nil || d.AsDuration() <= 0 || d.AsDuration() > maxAuthzTimeout {
			bad("provider %s: timeout %v; want set and at most %v (Istio's default is 10 minutes)", name, d.AsDuration(), maxAuthzTimeout)
		}
		if g.GetFailOpen() {
			bad("provider %s: failOpen must be false", name)
		}
		if g.GetStatusOnError() != "503" {
			bad("provider %s: statusOnError %q, want \"503\"", name, g.GetStatusOnError())
		}
	}
}

// ambientGuardMethod is the method the guards' rule names: no client's.
const ambientGuardMethod = "EXTAUTHZ-AMBIENT-GUARD"

// checkAmbientGuards: each CUSTOM policy has a guard, a DENY policy of the
// same namespace and selector, that denies nothing through a sidecar and
// every connection through ztunnel, which runs no CUSTOM policy (a workload
// in ambient mode would take every request unchecked) but runs a DENY
// policy without its HTTP fields. So the guard's one rule holds HTTP
// fields alone (methods: ambientGuardMethod): a port, a source or a
// condition would stay in ztunnel's rule and narrow it. And nothing else
// is in the output beside the CUSTOM policies and their guards: an ALLOW
// policy there would decide what the workloads' own ALLOW policies may let
// through.
func (m *manifests) checkAmbientGuards(bad func(string, ...any)) {
	for _, g := range m.authzGuards {
		id := "AuthorizationPolicy/" + g.Name
		if g.Spec.GetAction() != securityv1beta1.AuthorizationPolicy_DENY {
			bad("%s: action %v; beside the CUSTOM policies only their ambient guards belong, each a DENY", id, g.Spec.GetAction())
			continue
		}
		if !isAmbientGuard(g.Spec.GetRules()) {
			bad("%s: not an ambient guard: want one rule, to: [{operation: {methods: [%q]}}] and nothing else, which a sidecar never matches and ztunnel, dropping its HTTP fields, matches for every connection", id, ambientGuardMethod)
		}
	}
	for _, ap := range m.authzPolicy {
		guarded := slices.ContainsFunc(m.authzGuards, func(g *istiosecurityv1.AuthorizationPolicy) bool {
			return g.Namespace == ap.Namespace && g.Spec.GetAction() == securityv1beta1.AuthorizationPolicy_DENY &&
				proto.Equal(g.Spec.GetSelector(), ap.Spec.GetSelector()) && isAmbientGuard(g.Spec.GetRules())
		})
		if !guarded {
			bad("AuthorizationPolicy/%s: no ambient guard (a DENY policy of its namespace and selector naming the method %s): a workload it selects that lands in ambient mode takes every request unchecked", ap.Name, ambientGuardMethod)
		}
	}
}

// isAmbientGuard reports whether rules are the guard's one rule: an
// operation of methods [ambientGuardMethod] and no other field anywhere.
func isAmbientGuard(rules []*securityv1beta1.Rule) bool {
	if len(rules) != 1 || len(rules[0].GetFrom()) > 0 || len(rules[0].GetWhen()) > 0 || len(rules[0].GetTo()) != 1 {
		return false
	}
	want := &securityv1beta1.Operation{Methods: []string{ambientGuardMethod}}
	return proto.Equal(rules[0].GetTo()[0].GetOperation(), want)
}

// matchesEverything reports whether an AuthorizationPolicy rule has nothing
// that narrows it: no source, no condition, no operation field.
func matchesEverything(r *securityv1beta1.Rule) bool {
	if len(r.GetFrom()) > 0 || len(r.GetWhen()) > 0 {
		return false
	}
	for _, to := range r.GetTo() {
		if o := to.GetOperation(); o != nil && !proto.Equal(o, &securityv1beta1.Operation{}) {
			return false
		}
	}
	return true
}

// TestKubernetesProblemsAreCaught breaks a built overlay in memory and expects
// the checks to say so.
func TestKubernetesProblemsAreCaught(t *testing.T) {
	extauthzContainer := func(m *manifests) *corev1.Container {
		for _, d := range m.deployments {
			if d.Name == "extauthz" {
				return &d.Spec.Template.Spec.Containers[0]
			}
		}
		t.Fatal("no Deployment extauthz")
		return nil
	}
	netpol := func(m *manifests, name string) *networkingv1.NetworkPolicy {
		for _, np := range m.netpols {
			if np.Name == name {
				return np
			}
		}
		t.Fatalf("no NetworkPolicy %s", name)
		return nil
	}
	// The ingress rule of the extauthz NetworkPolicy that admits the
	// Istio-protected workloads, and their peer in it.
	protectedRule := func(m *manifests) *networkingv1.NetworkPolicyIngressRule {
		np := netpol(m, "extauthz")
		for i, rule := range np.Spec.Ingress {
			for _, peer := range rule.From {
				if requiresLabel(peer.PodSelector, protectedLabel, "true") {
					return &np.Spec.Ingress[i]
				}
			}
		}
		t.Fatal("no ingress rule of NetworkPolicy/extauthz admits the protected workloads")
		return nil
	}
	protectedPeer := func(m *manifests) *networkingv1.NetworkPolicyPeer {
		rule := protectedRule(m)
		for i, peer := range rule.From {
			if requiresLabel(peer.PodSelector, protectedLabel, "true") {
				return &rule.From[i]
			}
		}
		return nil
	}
	setConfig := func(m *manifests, name, data string) {
		for _, cm := range m.configMaps {
			if strings.HasPrefix(cm.Name, name) {
				cm.Data["config.yaml"] = data
			}
		}
	}
	tests := []struct {
		overlay string
		name    string
		mutate  func(m *manifests)
		wantErr string
	}{
		{"standalone", "privilege escalation allowed", func(m *manifests) {
			extauthzContainer(m).SecurityContext.AllowPrivilegeEscalation = ptr(true)
		}, "allowPrivilegeEscalation"},
		{"standalone", "capabilities kept", func(m *manifests) {
			extauthzContainer(m).SecurityContext.Capabilities.Drop = nil
		}, "drop ALL"},
		{"standalone", "the node's network", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.HostNetwork = true
		}, "node's network"},
		{"sidecar", "the node's process namespace", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.HostPID = true
		}, "node's network, process"},
		{"standalone", "a hostPath volume for Redis", func(m *manifests) {
			spec := &m.statefulSets[0].Spec.Template.Spec
			spec.Volumes = append(spec.Volumes, corev1.Volume{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/"}}})
		}, "hostPath"},
		{"standalone", "a hostPort", func(m *manifests) {
			extauthzContainer(m).Ports[0].HostPort = 9001
		}, "hostPort"},
		{"standalone", "an unmasked /proc", func(m *manifests) {
			extauthzContainer(m).SecurityContext.ProcMount = ptr(corev1.UnmaskedProcMount)
		}, "procMount"},
		{"standalone", "a sysctl", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.SecurityContext.Sysctls = []corev1.Sysctl{{Name: "net.ipv4.ip_unprivileged_port_start", Value: "0"}}
		}, "sysctl"},
		{"standalone", "DNS egress to every address", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[1].To = []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}}}
		}, "every address"},
		{"standalone", "DNS egress to any Pod", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[1].To[0].PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}
		}, "cluster DNS Pods"},
		{"standalone", "DNS egress to the DNS label in every namespace", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[1].To[0].NamespaceSelector = &metav1.LabelSelector{}
		}, "outside namespace kube-system"},
		{"standalone", "DNS egress to the DNS label in extauthz's own namespace", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[1].To[0].NamespaceSelector = nil
		}, "outside namespace kube-system"},
		{"standalone", "DNS egress to the DNS label in another namespace", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[1].To[0].NamespaceSelector.MatchLabels[namespaceNameLabel] = "tenant"
		}, "outside namespace kube-system"},
		{"standalone", "Redis egress to every Pod of every namespace", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[0].To = []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{}}}
		}, "every Pod of every namespace"},
		{"istio", "the protected label admitted from every namespace", func(m *manifests) {
			protectedPeer(m).NamespaceSelector.MatchLabels = nil
		}, "from every namespace"},
		{"istio", "the protected workloads let through to the HTTP port too", func(m *manifests) {
			rule := protectedRule(m)
			rule.Ports = append(rule.Ports, networkingv1.NetworkPolicyPort{Port: ptr(intstr.FromInt32(9002))})
		}, "beyond its gRPC port"},
		{"istio", "the protected workloads let through to every port", func(m *manifests) {
			protectedRule(m).Ports = nil
		}, "beyond its gRPC port"},
		{"istio", "the protected workloads let through to a range of ports from the gRPC one", func(m *manifests) {
			rule := protectedRule(m)
			rule.Ports[0].EndPort = ptr(int32(9002))
		}, "a range"},
		{"standalone", "Redis egress to a range of ports from 6379", func(m *manifests) {
			netpol(m, "extauthz").Spec.Egress[0].Ports[0].EndPort = ptr(int32(6400))
		}, "a range"},
		{"standalone", "a writable root filesystem", func(m *manifests) {
			m.statefulSets[0].Spec.Template.Spec.Containers[0].SecurityContext.ReadOnlyRootFilesystem = nil
		}, "readOnlyRootFilesystem"},
		{"standalone", "running as root", func(m *manifests) {
			extauthzContainer(m).SecurityContext.RunAsNonRoot = nil
			m.deployments[0].Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
		}, "runAsNonRoot"},
		{"standalone", "Redis's group left to the image", func(m *manifests) {
			m.statefulSets[0].Spec.Template.Spec.SecurityContext.RunAsGroup = nil
		}, "runAsGroup is not set"},
		{"standalone", "extauthz in the root group", func(m *manifests) {
			extauthzContainer(m).SecurityContext.RunAsGroup = ptr(int64(0))
		}, "runAsGroup 0"},
		{"sidecar", "the app's user left to the image", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.Containers[0].SecurityContext.RunAsUser = nil
		}, "runAsUser is not set"},
		{"standalone", "no seccomp profile", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.SecurityContext.SeccompProfile = nil
		}, "seccompProfile"},
		{"standalone", "a grace period the preStop sleep and the stop do not fit in", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.TerminationGracePeriodSeconds = ptr(int64(30))
		}, "terminationGracePeriodSeconds 30 is shorter"},
		{"sidecar", "the app Pod's grace period left at Kubernetes' default", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.TerminationGracePeriodSeconds = nil
		}, "terminationGracePeriodSeconds 30 is shorter"},
		{"standalone", "a key cache larger than the heap may grow", func(m *manifests) {
			for _, cm := range m.configMaps {
				if strings.HasPrefix(cm.Name, "extauthz-config") {
					cm.Data["config.yaml"] = strings.Replace(cm.Data["config.yaml"], "cache: {size: 100000,", "cache: {size: 1000000,", 1)
				}
			}
		}, "a full cache of 1000000 keys"},
		{"standalone", "no memory limit", func(m *manifests) {
			delete(extauthzContainer(m).Resources.Limits, corev1.ResourceMemory)
		}, "memory limit"},
		{"standalone", "readiness on the wrong path", func(m *manifests) {
			extauthzContainer(m).ReadinessProbe.HTTPGet.Path = "/healthz"
		}, "readiness probe"},
		{"standalone", "readiness that takes every replica out 10 s into a Redis outage", func(m *manifests) {
			extauthzContainer(m).ReadinessProbe.FailureThreshold = 2
		}, "cache.max_stale"},
		{"standalone", "liveness on the gRPC port", func(m *manifests) {
			extauthzContainer(m).LivenessProbe.HTTPGet.Port = intstr.FromString("grpc")
		}, "liveness probe"},
		{"standalone", "the Service's gRPC port renamed, so Istio treats it as TCP", func(m *manifests) {
			m.service("extauthz").Spec.Ports[0].Name = "tcp-authz"
		}, "no port named grpc"},
		{"standalone", "a PDB that selects the Redis Pods", func(m *manifests) {
			m.pdbs[0].Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "redis"}}
		}, "PodDisruptionBudget"},
		{"standalone", "Redis without AOF", func(m *manifests) {
			c := &m.statefulSets[0].Spec.Template.Spec.Containers[0]
			c.Args = append(c.Args, "--appendonly", "no")
		}, "without appendonly yes"},
		{"standalone", "Redis evicting keys", func(m *manifests) {
			c := &m.statefulSets[0].Spec.Template.Spec.Containers[0]
			c.Args = append(c.Args, "--maxmemory-policy", "allkeys-lru")
		}, "maxmemory-policy allkeys-lru"},
		{"standalone", "Redis without maxmemory", func(m *manifests) {
			c := &m.statefulSets[0].Spec.Template.Spec.Containers[0]
			c.Args = []string{"--dir", "/data"}
		}, "no maxmemory"},
		{"standalone", "Redis's maxmemory at its memory limit", func(m *manifests) {
			c := &m.statefulSets[0].Spec.Template.Spec.Containers[0]
			c.Args = []string{"--dir", "/data", "--maxmemory", "1gb"}
		}, "three quarters"},
		{"standalone", "Redis started without the shipped script", func(m *manifests) {
			m.statefulSets[0].Spec.Template.Spec.Containers[0].Command = []string{"redis-server"}
		}, "renders the ACL"},
		{"standalone", "Redis running another ACL than the proved one", func(m *manifests) {
			for _, cm := range m.configMaps {
				if strings.HasPrefix(cm.Name, "redis-config") {
					cm.Data["users.acl"] = "user default on nopass ~* &* +@all\n"
				}
			}
		}, "the file the Go tests prove"},
		{"standalone", "Redis without its password", func(m *manifests) {
			c := &m.statefulSets[0].Spec.Template.Spec.Containers[0]
			c.Env = nil
		}, "REDIS_PASSWORD is not set from a Secret"},
		{"standalone", "a Redis probe as the default user", func(m *manifests) {
			m.statefulSets[0].Spec.Template.Spec.Containers[0].ReadinessProbe.Exec.Command = []string{"redis-cli", "ping"}
		}, "does not log in"},
		{"standalone", "extauthz logging in as the default user", func(m *manifests) {
			setConfig(m, "extauthz-config", "store: {backend: redis, redis: {url: 'redis://redis:6379/0', password_env: REDIS_PASSWORD}}\nhashing: {pepper_env: EXTAUTHZ_PEPPER}\n")
		}, "is not the ACL's user"},
		{"standalone", "extauthz's keys outside the ACL's prefix", func(m *manifests) {
			setConfig(m, "extauthz-config", "store: {backend: redis, redis: {url: 'redis://redis:6379/0', username: extauthz, password_env: REDIS_PASSWORD, prefix: 'authz:'}}\nhashing: {pepper_env: EXTAUTHZ_PEPPER}\n")
		}, "outside the key patterns"},
		{"standalone", "extauthz's Redis password made optional", func(m *manifests) {
			envVar(extauthzContainer(m), "REDIS_PASSWORD").ValueFrom.SecretKeyRef.Optional = ptr(true)
		}, "Redis password Secret is optional"},
		{"standalone", "extauthz's Redis password from another Secret", func(m *manifests) {
			envVar(extauthzContainer(m), "REDIS_PASSWORD").ValueFrom.SecretKeyRef.Name = "other"
		}, "another Secret than Redis's own"},
		{"standalone", "Redis open to every Pod", func(m *manifests) {
			netpol(m, "redis").Spec.Ingress[0].From = nil
		}, "admits every Pod"},
		{"standalone", "Redis open to another namespace", func(m *manifests) {
			netpol(m, "redis").Spec.Ingress[0].From[0].NamespaceSelector = &metav1.LabelSelector{}
		}, "by something other than"},
		{"standalone", "Redis allowed to connect out", func(m *manifests) {
			np := netpol(m, "redis")
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{}}
		}, "closes its egress"},
		{"standalone", "a Pod without extauthz labelled as a Redis client", func(m *manifests) {
			m.statefulSets[0].Spec.Template.Labels[redisClientLabel] = "true"
		}, "runs no extauthz"},
		{"standalone", "extauthz's decision ports open to every Pod", func(m *manifests) {
			netpol(m, "extauthz").Spec.Ingress[0].From = nil
		}, "admits every Pod"},
		{"standalone", "extauthz's decision ports open to any Pod of the cluster", func(m *manifests) {
			netpol(m, "extauthz").Spec.Ingress[0].From[0].PodSelector = nil
		}, "neither proxies"},
		{"standalone", "the monitoring namespace let through to gRPC", func(m *manifests) {
			np := netpol(m, "extauthz")
			np.Spec.Ingress[1].Ports = append(np.Spec.Ingress[1].Ports, networkingv1.NetworkPolicyPort{Port: ptr(intstr.FromInt32(9001))})
		}, "more of"},
		{"standalone", "extauthz's admin port opened", func(m *manifests) {
			np := netpol(m, "extauthz")
			np.Spec.Ingress[0].Ports = append(np.Spec.Ingress[0].Ports, networkingv1.NetworkPolicyPort{Port: ptr(intstr.FromInt32(9003))})
		}, "opens port 9003"},
		{"standalone", "extauthz allowed to connect anywhere", func(m *manifests) {
			np := netpol(m, "extauthz")
			np.Spec.Egress = append(np.Spec.Egress, networkingv1.NetworkPolicyEgressRule{})
		}, "connect anywhere"},
		{"standalone", "no policy in front of extauthz", func(m *manifests) {
			m.netpols = slices.DeleteFunc(m.netpols, func(np *networkingv1.NetworkPolicy) bool { return np.Name == "extauthz" })
		}, "no NetworkPolicy limits who reaches"},
		{"istio", "the protected workloads shut out of extauthz", func(m *manifests) {
			np := netpol(m, "extauthz")
			np.Spec.Ingress = slices.DeleteFunc(np.Spec.Ingress, func(rule networkingv1.NetworkPolicyIngressRule) bool {
				return slices.ContainsFunc(rule.From, func(peer networkingv1.NetworkPolicyPeer) bool {
					return requiresLabel(peer.PodSelector, protectedLabel, "true")
				})
			})
		}, "are not let through"},
		{"sidecar", "the sidecar's Redis password given to the app too", func(m *manifests) {
			spec := &m.deployments[0].Spec.Template.Spec
			spec.Containers[0].Env = append(spec.Containers[0].Env, *envVar(&spec.InitContainers[0], "REDIS_PASSWORD"))
		}, "the app container gets the Redis password"},
		{"sidecar", "the sidecar's readiness taking the app's Pods out 10 s into a Redis outage", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.InitContainers[0].ReadinessProbe.FailureThreshold = 2
		}, "cache.max_stale"},
		{"sidecar", "a shared process namespace", func(m *manifests) {
			m.deployments[0].Spec.Template.Spec.ShareProcessNamespace = ptr(true)
		}, "shareProcessNamespace"},
		{"standalone", "Redis data not on a volume", func(m *manifests) {
			m.statefulSets[0].Spec.VolumeClaimTemplates = nil
		}, "volumeClaimTemplate"},
		{"standalone", "a config key extauthz does not have", func(m *manifests) {
			setConfig(m, "extauthz-config", "listen: {grpc: ':9001'}\nstore: {backend: redis, redis: {url: 'redis://redis:6379/0', password: x}}\n")
		}, `unknown field "password"`},
		{"standalone", "a config whose Redis is not the overlay's", func(m *manifests) {
			setConfig(m, "extauthz-config", "store: {backend: redis, redis: {url: 'redis://cache:6379/0'}}\nhashing: {pepper_env: EXTAUTHZ_PEPPER}\n")
		}, `host "cache"`},
		{"standalone", "the pepper written into the manifest", func(m *manifests) {
			e := envVar(extauthzContainer(m), "EXTAUTHZ_PEPPER")
			e.ValueFrom, e.Value = nil, "s3cret"
		}, "EXTAUTHZ_PEPPER must come from a Secret"},
		{"standalone", "the pepper Secret made optional", func(m *manifests) {
			envVar(extauthzContainer(m), "EXTAUTHZ_PEPPER").ValueFrom.SecretKeyRef.Optional = ptr(true)
		}, "optional"},
		{"standalone", "the Redis NetworkPolicy shutting extauthz out", func(m *manifests) {
			delete(m.deployments[0].Spec.Template.Labels, "extauthz/redis-client")
		}, "keeps this Pod away from Redis"},
		{"sidecar", "the sidecar's gRPC listener on every interface", func(m *manifests) {
			for _, cm := range m.configMaps {
				if strings.HasPrefix(cm.Name, "extauthz-config") {
					cm.Data["config.yaml"] = strings.Replace(cm.Data["config.yaml"], `grpc: "127.0.0.1:9001"`, `grpc: ":9001"`, 1)
				}
			}
		}, "not loopback"},
		{"sidecar", "Envoy pointed at another port than the sidecar", func(m *manifests) {
			for _, cm := range m.configMaps {
				if strings.HasPrefix(cm.Name, "envoy-sidecar") {
					cm.Data["envoy.yaml"] = strings.Replace(cm.Data["envoy.yaml"], "port_value: 9001", "port_value: 9101", 1)
				}
			}
		}, "Envoy sends ext_authz to 127.0.0.1:9101"},
		{"sidecar", "the app's port opened to other Pods", func(m *manifests) {
			np := m.netpols[len(m.netpols)-1]
			np.Spec.Ingress = append(np.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptr(intstr.FromInt32(8000))}},
			})
		}, "besides Envoy's"},
		{"sidecar", "Envoy started before extauthz", func(m *manifests) {
			ic := m.deployments[0].Spec.Template.Spec.InitContainers
			ic[0], ic[1] = ic[1], ic[0]
		}, "in that order"},
		{"istio", "an ALLOW policy instead of CUSTOM", func(m *manifests) {
			m.authzPolicy[0].Spec.Action = securityv1beta1.AuthorizationPolicy_ALLOW
		}, "want CUSTOM"},
		{"istio", "a provider the mesh config does not define", func(m *manifests) {
			m.authzPolicy[0].Spec.ActionDetail = &securityv1beta1.AuthorizationPolicy_Provider{Provider: &securityv1beta1.AuthorizationPolicy_ExtensionProvider{Name: "ext-authz"}}
		}, `provider "ext-authz"`},
		{"istio", "a policy without rules", func(m *manifests) {
			m.authzPolicy[0].Spec.Rules = nil
		}, "no rules"},
		{"istio", "a policy that skips /healthz", func(m *manifests) {
			m.authzPolicy[0].Spec.Rules[0].To = []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{NotPaths: []string{"/healthz"}}}}
		}, "skips [/healthz]"},
		{"istio", "a policy of every path, which a request without one escapes", func(m *manifests) {
			m.authzPolicy[0].Spec.Rules = []*securityv1beta1.Rule{{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Paths: []string{"*"}}}}}}
		}, "no rule matches every request"},
		{"istio", "a policy of GET requests only", func(m *manifests) {
			m.authzPolicy[0].Spec.Rules = []*securityv1beta1.Rule{{To: []*securityv1beta1.Rule_To{{Operation: &securityv1beta1.Operation{Methods: []string{"GET"}}}}}}
		}, "no rule matches every request"},
		{"istio", "a policy of requests from one namespace", func(m *manifests) {
			m.authzPolicy[0].Spec.Rules = []*securityv1beta1.Rule{{From: []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"ingress"}}}}}}
		}, "no rule matches every request"},
		{"istio", "no ambient guard", func(m *manifests) {
			m.authzGuards = nil
		}, "no ambient guard"},
		{"istio", "a guard of other workloads", func(m *manifests) {
			m.authzGuards[0].Spec.Selector.MatchLabels = map[string]string{"app": "other"}
		}, "no ambient guard"},
		{"istio", "a guard in another namespace", func(m *manifests) {
			m.authzGuards[0].Namespace = "shop"
		}, "no ambient guard"},
		{"istio", "a guard of one port, which ztunnel keeps", func(m *manifests) {
			m.authzGuards[0].Spec.Rules[0].To[0].Operation.Ports = []string{"8080"}
		}, "not an ambient guard"},
		{"istio", "a guard of one source, which ztunnel keeps", func(m *manifests) {
			m.authzGuards[0].Spec.Rules[0].From = []*securityv1beta1.Rule_From{{Source: &securityv1beta1.Source{Namespaces: []string{"ingress"}}}}
		}, "not an ambient guard"},
		{"istio", "a guard of GET, which a sidecar denies", func(m *manifests) {
			m.authzGuards[0].Spec.Rules[0].To[0].Operation.Methods = []string{"GET"}
		}, "not an ambient guard"},
		{"istio", "a guard that allows", func(m *manifests) {
			m.authzGuards[0].Spec.Action = securityv1beta1.AuthorizationPolicy_ALLOW
		}, "only their ambient guards belong"},
		{"istio", "mTLS permissive, so a plaintext request has no principal", func(m *manifests) {
			m.peerAuthn[0].Spec.Mtls.Mode = securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE
		}, "mtls STRICT"},
		{"istio", "a workload's policy selected by host", func(m *manifests) {
			editIstioConfig(t, m, `principals: ["spiffe://cluster.local/ns/demo/sa/orders"]`, `hosts: [orders.demo.svc.cluster.local]`)
		}, "select it by destination principal alone"},
		{"istio", "a principal in a namespace nothing protects", func(m *manifests) {
			editIstioConfig(t, m, "ns/demo/sa/orders", "ns/shop/sa/orders")
		}, "which no AuthorizationPolicy protects"},
		{"istio", "the default policy for a workload no policy names", func(m *manifests) {
			editIstioConfig(t, m, "\nunselected: deny\n", "\nunselected: default\n")
		}, "unselected: deny"},
	}
	for _, tt := range tests {
		t.Run(tt.overlay+": "+tt.name, func(t *testing.T) {
			m := buildOverlay(t, tt.overlay)
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

// editIstioConfig replaces from with to in the extauthz config of the built
// Istio overlay.
func editIstioConfig(t *testing.T, m *manifests, from, to string) {
	t.Helper()
	for _, cm := range m.configMaps {
		if data, ok := cm.Data["config.yaml"]; ok && strings.Contains(data, "policies:") {
			if !strings.Contains(data, from) {
				t.Fatalf("the Istio config no longer contains %q; update this case", from)
			}
			cm.Data["config.yaml"] = strings.Replace(data, from, to, 1)
			return
		}
	}
	t.Fatal("no ConfigMap holds the Istio overlay's config")
}

func TestMeshConfigProblemsAreCaught(t *testing.T) {
	good := readRepoFile(t, meshConfigFile)
	m := buildOverlay(t, "istio")
	tests := []struct{ name, from, to, wantErr string }{
		{"failing open", "failOpen: false", "failOpen: true", "failOpen"},
		{"an outage reported as 403", `statusOnError: "503"`, `statusOnError: "403"`, "statusOnError"},
		{"Istio's 10-minute default timeout", "timeout: 0.25s", "timeout: 600s", "timeout"},
		{"a service in another namespace", "extauthz.extauthz.svc", "extauthz.default.svc", "is not a Service"},
		{"the HTTP port for a gRPC provider", "port: 9001", "port: 9002", "grpc-named port"},
		{"a misspelt provider field", "failOpen: false", "failopen: false", "failopen"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !strings.Contains(good, tt.from) {
				t.Fatalf("%s no longer contains %q; update this case", meshConfigFile, tt.from)
			}
			var ps []string
			bad := func(format string, args ...any) { ps = append(ps, fmt.Sprintf(format, args...)) }
			mc, err := loadMeshConfig(t, []byte(strings.Replace(good, tt.from, tt.to, 1)))
			if err != nil {
				ps = append(ps, err.Error())
			} else {
				m.checkIstioWith(mc, bad)
			}
			if !slices.ContainsFunc(ps, func(p string) bool { return strings.Contains(p, tt.wantErr) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantErr, ps)
			}
		})
	}
}

// TestOverlaysRejectUnknownFields: the strict decoding above is what catches a
// misspelt manifest field; prove it does, case included.
func TestOverlaysRejectUnknownFields(t *testing.T) {
	for _, doc := range []string{
		`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replica":2}}`,
		`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"Replicas":2}}`,
		`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"x"},"spec":{"replicas":2,"replicas":3}}`,
	} {
		strictErrs, err := kjson.UnmarshalStrict([]byte(doc), &appsv1.Deployment{})
		if err == nil && len(strictErrs) == 0 {
			t.Errorf("accepted %s", doc)
		}
	}
	var ap securityv1beta1.AuthorizationPolicy
	if err := protojson.Unmarshal([]byte(`{"action":"CUSTOM","provider":{"name":"x"},"rulez":[]}`), &ap); err == nil {
		t.Error("protojson accepted an unknown AuthorizationPolicy field")
	}
}

// TestNoManifestCarriesASecret: no Secret objects and no literal secrets in any
// file under k8s/ (the pepper and Redis password are created out of band).
func TestNoManifestCarriesASecret(t *testing.T) {
	err := filepath.WalkDir(filepath.Join(repoRoot, "k8s"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(string(data), "kind: Secret") || strings.Contains(string(data), "secretGenerator") {
			t.Errorf("%s defines a Secret; secrets are created out of band", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
