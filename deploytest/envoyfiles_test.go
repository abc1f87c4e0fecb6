package deploytest

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// envoyFile is the part of an Envoy bootstrap the cross-checks read. The full
// file is validated against Envoy's protos by envoy/envoy_test.go; here only the
// addresses and names that other files must agree with are picked out.
type envoyFile struct {
	// clusters maps a cluster name to its endpoint addresses.
	clusters map[string][]endpoint
	// listenPorts are the ports of the listeners.
	listenPorts []int
	// grpcAuthzCluster is ext_authz's grpc_service cluster, if any.
	grpcAuthzCluster string
	// httpAuthz is ext_authz's http_service, if any.
	httpAuthz *struct {
		uri, cluster, pathPrefix string
	}
	// vhostContext maps each virtual host to the context_extensions its
	// ext_authz per-filter config sets (nil when it sets none).
	vhostContext map[string]map[string]string
	// vhostSkips maps each virtual host to the routes (their match) whose
	// per-filter config turns a filter off, ext_authz the only one here
	// (envoy/envoy_test.go proves each config in full); "*" is the virtual
	// host's own.
	vhostSkips map[string][]string
}

type endpoint struct {
	host string
	port int
}

func (e endpoint) String() string { return e.host + ":" + strconv.Itoa(e.port) }

func loadEnvoyFile(t *testing.T, path string) *envoyFile {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, path))
	if err != nil {
		t.Fatal(err)
	}
	return parseEnvoyFile(t, data)
}

func parseEnvoyFile(t *testing.T, data []byte) *envoyFile {
	t.Helper()
	type socketAddress struct {
		Address   string `json:"address"`
		PortValue int    `json:"port_value"`
	}
	var b struct {
		StaticResources struct {
			Listeners []struct {
				Address struct {
					SocketAddress socketAddress `json:"socket_address"`
				} `json:"address"`
				FilterChains []struct {
					Filters []struct {
						TypedConfig struct {
							RouteConfig struct {
								VirtualHosts []struct {
									Name                 string `json:"name"`
									TypedPerFilterConfig map[string]struct {
										CheckSettings struct {
											ContextExtensions map[string]string `json:"context_extensions"`
										} `json:"check_settings"`
										Disabled bool `json:"disabled"`
									} `json:"typed_per_filter_config"`
									Routes []struct {
										Match struct {
											Path   string `json:"path"`
											Prefix string `json:"prefix"`
										} `json:"match"`
										TypedPerFilterConfig map[string]struct {
											Disabled bool `json:"disabled"`
										} `json:"typed_per_filter_config"`
									} `json:"routes"`
								} `json:"virtual_hosts"`
							} `json:"route_config"`
							HTTPFilters []struct {
								Name        string `json:"name"`
								TypedConfig struct {
									GRPCService *struct {
										EnvoyGRPC struct {
											ClusterName string `json:"cluster_name"`
										} `json:"envoy_grpc"`
									} `json:"grpc_service"`
									HTTPService *struct {
										ServerURI struct {
											URI     string `json:"uri"`
											Cluster string `json:"cluster"`
										} `json:"server_uri"`
										PathPrefix string `json:"path_prefix"`
									} `json:"http_service"`
								} `json:"typed_config"`
							} `json:"http_filters"`
						} `json:"typed_config"`
					} `json:"filters"`
				} `json:"filter_chains"`
			} `json:"listeners"`
			Clusters []struct {
				Name           string `json:"name"`
				LoadAssignment struct {
					Endpoints []struct {
						LbEndpoints []struct {
							Endpoint struct {
								Address struct {
									SocketAddress socketAddress `json:"socket_address"`
								} `json:"address"`
							} `json:"endpoint"`
						} `json:"lb_endpoints"`
					} `json:"endpoints"`
				} `json:"load_assignment"`
			} `json:"clusters"`
		} `json:"static_resources"`
	}
	// Not strict on purpose: this struct names only what is read here.
	if err := yaml.Unmarshal(data, &b); err != nil {
		t.Fatalf("envoy config: %v", err)
	}
	f := &envoyFile{clusters: map[string][]endpoint{}, vhostContext: map[string]map[string]string{}, vhostSkips: map[string][]string{}}
	for _, c := range b.StaticResources.Clusters {
		var eps []endpoint
		for _, le := range c.LoadAssignment.Endpoints {
			for _, e := range le.LbEndpoints {
				sa := e.Endpoint.Address.SocketAddress
				eps = append(eps, endpoint{sa.Address, sa.PortValue})
			}
		}
		f.clusters[c.Name] = eps
	}
	for _, l := range b.StaticResources.Listeners {
		f.listenPorts = append(f.listenPorts, l.Address.SocketAddress.PortValue)
		for _, fc := range l.FilterChains {
			for _, flt := range fc.Filters {
				for _, vh := range flt.TypedConfig.RouteConfig.VirtualHosts {
					f.vhostContext[vh.Name] = vh.TypedPerFilterConfig["envoy.filters.http.ext_authz"].CheckSettings.ContextExtensions
					for _, c := range vh.TypedPerFilterConfig {
						if c.Disabled {
							f.vhostSkips[vh.Name] = append(f.vhostSkips[vh.Name], "*")
						}
					}
					for _, r := range vh.Routes {
						for _, c := range r.TypedPerFilterConfig {
							if c.Disabled {
								f.vhostSkips[vh.Name] = append(f.vhostSkips[vh.Name], r.Match.Path+r.Match.Prefix)
							}
						}
					}
				}
				for _, hf := range flt.TypedConfig.HTTPFilters {
					if hf.Name != "envoy.filters.http.ext_authz" {
						continue
					}
					if g := hf.TypedConfig.GRPCService; g != nil {
						f.grpcAuthzCluster = g.EnvoyGRPC.ClusterName
					}
					if h := hf.TypedConfig.HTTPService; h != nil {
						f.httpAuthz = &struct{ uri, cluster, pathPrefix string }{h.ServerURI.URI, h.ServerURI.Cluster, h.PathPrefix}
					}
				}
			}
		}
	}
	if f.grpcAuthzCluster == "" && f.httpAuthz == nil {
		t.Fatal("envoy config: no ext_authz filter found")
	}
	return f
}

// authzEndpoints returns where the file sends authorization requests, and the
// http_service URI's own host:port when it has one (they must agree).
func (f *envoyFile) authzEndpoints(t *testing.T) []endpoint {
	t.Helper()
	name := f.grpcAuthzCluster
	if f.httpAuthz != nil {
		name = f.httpAuthz.cluster
		u, err := url.Parse(f.httpAuthz.uri)
		if err != nil {
			t.Fatalf("http_service uri %q: %v", f.httpAuthz.uri, err)
		}
		port, _ := strconv.Atoi(u.Port())
		for _, e := range f.clusters[name] {
			if e.host != u.Hostname() || e.port != port {
				t.Errorf("http_service uri %s names %s:%d, its cluster %s holds %s", f.httpAuthz.uri, u.Hostname(), port, name, e)
			}
		}
	}
	eps := f.clusters[name]
	if len(eps) == 0 {
		t.Fatalf("ext_authz cluster %q has no endpoints", name)
	}
	return eps
}

// TestHealthzIsAPublicRouteBehindEveryShippedEnvoy: behind each shipped Envoy
// config, /healthz goes through extauthz, and the extauthz config beside it
// answers it as a public route of the policy that virtual host selects, so a
// probe needs no key and a client's x-authz-* headers are removed there as
// everywhere. A route that turns ext_authz off could remove only the headers
// it names, and Envoy cannot remove headers by prefix.
func TestHealthzIsAPublicRouteBehindEveryShippedEnvoy(t *testing.T) {
	for _, pair := range []struct{ envoy, config string }{
		{"envoy/envoy.yaml", "deploy/compose/extauthz.yaml"},
		{"envoy/envoy-http.yaml", "deploy/compose/extauthz.yaml"},
		{"k8s/overlays/sidecar/envoy.yaml", "k8s/overlays/sidecar/extauthz.yaml"},
	} {
		t.Run(pair.envoy, func(t *testing.T) {
			cfg, err := parseExtauthzConfig([]byte(readRepoFile(t, pair.config)))
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range healthzProblems(loadEnvoyFile(t, pair.envoy), cfg) {
				t.Errorf("%s with %s: %s", pair.envoy, pair.config, p)
			}
		})
	}

	cfg, err := parseExtauthzConfig([]byte(readRepoFile(t, "deploy/compose/extauthz.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	ef := loadEnvoyFile(t, "envoy/envoy.yaml")
	for _, tt := range []struct {
		name   string
		mutate func(ef *envoyFile, cfg *extauthzConfig)
		want   string
	}{
		{"a route of /healthz that skips ext_authz", func(ef *envoyFile, _ *extauthzConfig) {
			ef.vhostSkips["users"] = []string{"/healthz"}
		}, "virtual host users: route /healthz skips ext_authz"},
		{"a virtual host that skips ext_authz", func(ef *envoyFile, _ *extauthzConfig) {
			ef.vhostSkips["billing"] = []string{"*"}
		}, "virtual host billing: route * skips ext_authz"},
		{"/healthz left out of a policy", func(_ *envoyFile, cfg *extauthzConfig) {
			cfg.Policies[1].Routes = cfg.Policies[1].Routes[1:]
		}, "policy billing does not answer GET /healthz as a public route"},
		{"/healthz needing a key", func(_ *envoyFile, cfg *extauthzConfig) {
			cfg.Policies[0].Routes[0] = configRoute{Path: "/healthz", Permissions: []string{"read:health"}}
		}, "policy users does not answer GET /healthz as a public route"},
		{"/healthz public for HEAD only", func(_ *envoyFile, cfg *extauthzConfig) {
			cfg.Policies[0].Routes[0].Methods = []string{"HEAD"}
		}, "policy users does not answer GET /healthz as a public route"},
		{"a protected route before the public one", func(_ *envoyFile, cfg *extauthzConfig) {
			cfg.Policies[0].Routes = append([]configRoute{{Path: "/{name}", Permissions: []string{"read:users"}}}, cfg.Policies[0].Routes...)
		}, "policy users does not answer GET /healthz as a public route"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ef, cfg := cloneEnvoyFile(ef), cloneConfig(t, cfg)
			tt.mutate(ef, cfg)
			problems := healthzProblems(ef, cfg)
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tt.want) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.want, problems)
			}
		})
	}
}

// healthzProblems: in each virtual host of an Envoy file (or, in HTTP mode,
// under the auth path's policy) no route skips ext_authz, and the policy
// extauthz decides /healthz under answers GET /healthz as a public route.
func healthzProblems(ef *envoyFile, cfg *extauthzConfig) []string {
	var problems []string
	for _, vh := range slices.Sorted(maps.Keys(ef.vhostContext)) {
		for _, r := range ef.vhostSkips[vh] {
			problems = append(problems, fmt.Sprintf("virtual host %s: route %s skips ext_authz: the upstream gets any x-authz-* header the client wrote", vh, r))
		}
		policy := "default"
		if ef.httpAuthz != nil {
			if name, ok := strings.CutPrefix(ef.httpAuthz.pathPrefix, cfg.httpPrefix()+"/_policy/"); ok {
				policy = name
			}
		} else if ext := ef.vhostContext[vh]; len(ext) > 0 {
			policy = cfg.policyByContext(ext)
		}
		if !cfg.publicFor(policy, "GET", "/healthz") {
			problems = append(problems, fmt.Sprintf("virtual host %s: policy %s does not answer GET /healthz as a public route (its first route for it must be public: true)", vh, orDefault(policy, "(none)")))
		}
	}
	return problems
}

// publicFor reports whether the first route of the named policy (or the
// default one) that takes method and path is public.
func (c *extauthzConfig) publicFor(policy, method, path string) bool {
	routes := c.Routes
	if policy != "default" {
		i := slices.IndexFunc(c.Policies, func(p configPolicy) bool { return p.Name == policy })
		if i < 0 {
			return false
		}
		routes = c.Policies[i].Routes
	}
	for _, r := range routes {
		if (len(r.Methods) == 0 || slices.Contains(r.Methods, method)) && patternMatches(r.Path, path) {
			return r.Public
		}
	}
	return false
}

// patternMatches reads a route pattern as the config does: a literal
// segment matches itself, {name} and * one segment, a last ** the rest.
func patternMatches(pattern, path string) bool {
	ps, segs := strings.Split(strings.TrimPrefix(pattern, "/"), "/"), strings.Split(strings.TrimPrefix(path, "/"), "/")
	for i, p := range ps {
		if p == "**" && i == len(ps)-1 {
			return true
		}
		if i >= len(segs) || (p != segs[i] && p != "*" && !(strings.HasPrefix(p, "{") && segs[i] != "")) {
			return false
		}
	}
	return len(ps) == len(segs)
}

func cloneEnvoyFile(ef *envoyFile) *envoyFile {
	c := *ef
	c.vhostContext = maps.Clone(ef.vhostContext)
	c.vhostSkips = maps.Clone(ef.vhostSkips)
	return &c
}

func cloneConfig(t *testing.T, cfg *extauthzConfig) *extauthzConfig {
	t.Helper()
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var c extauthzConfig
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return &c
}
