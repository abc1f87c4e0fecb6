package deploytest

import (
	"net/url"
	"os"
	"path/filepath"
	"strconv"
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
									} `json:"typed_per_filter_config"`
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
	f := &envoyFile{clusters: map[string][]endpoint{}, vhostContext: map[string]map[string]string{}}
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
