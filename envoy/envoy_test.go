// Package envoy_test proves the shipped Envoy configurations without an Envoy
// binary: each file is parsed strictly into Envoy's own protos (the types a real
// Envoy loads), every message is checked against Envoy's validation rules, the
// ones packed in Any fields included, and the settings extauthz's security depends
// on are asserted. A table of broken copies shows each check can fail.
package envoy_test

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cncf/xds/go/udpa/annotations"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	extauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	downstreamconnsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/resource_monitors/downstream_connections/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	"github.com/extauthz/extauthz/config"
)

// The typed_config types the files use are registered by the imports above:
// ext_authz, router, http_connection_manager, upstreams/http and the stdout
// access logger, and the overload manager's downstream connections monitor. A
// file naming any
// other type fails to parse ("unable to resolve"), which is what we want: a new
// extension should be imported here deliberately, so that it is validated.

// authzMode is how Envoy talks to extauthz.
type authzMode int

const (
	grpcMode authzMode = iota // ext_authz grpc_service → extauthz :9001
	httpMode                  // ext_authz http_service → extauthz :9002 /authz
)

// shippedConfigs are every Envoy configuration in the repository.
var shippedConfigs = []struct {
	path string
	mode authzMode
}{
	{"envoy.yaml", grpcMode},
	{"envoy-http.yaml", httpMode},
	{"envoy-tls.yaml", grpcMode},
	{"../k8s/overlays/sidecar/envoy.yaml", grpcMode},
}

const extAuthzFilterName = "envoy.filters.http.ext_authz"

// identityHeaders are the upstream headers extauthz sets on allow (docs/decision.md).
var identityHeaders = []string{"x-authz-key-id", "x-authz-key-name", "x-authz-owner", "x-authz-permissions"}

// keyHeaders are the request headers a key may arrive in (the default sources).
var keyHeaders = []string{"x-api-key", "authorization", "cookie"}

// overrideHeaders are the headers some upstreams take a method or a target
// from instead of the request's own: extauthz answers 400 to one naming
// another (docs/decision.md), so it must see them.
var overrideHeaders = []string{"x-http-method-override", "x-http-method", "x-method-override", "x-original-url", "x-rewrite-url"}

// denyHeaders are the headers of a denial the client must see (docs/decision.md).
var denyHeaders = []string{
	"content-type", "www-authenticate", "retry-after", "x-authz-code",
	"ratelimit", "ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset",
}

// rateLimitHeaders go to the client on allow too.
var rateLimitHeaders = []string{"ratelimit", "ratelimit-policy", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"}

func TestShippedConfigsAreValidAndSecure(t *testing.T) {
	for _, c := range shippedConfigs {
		t.Run(filepath.Base(filepath.Dir(c.path))+"/"+filepath.Base(c.path), func(t *testing.T) {
			data, err := os.ReadFile(c.path)
			must(t, err)
			if err := checkConfig(data, c.mode); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestWalkerFindsEveryAny guards the walker itself: the gRPC config packs an HCM in
// the listener, the ext_authz and router configs in the HCM, a per-filter ext_authz
// config in a virtual host and the HTTP protocol options in a cluster. If the walker
// missed nested Anys, the per-message validation above would pass vacuously.
func TestWalkerFindsEveryAny(t *testing.T) {
	data, err := os.ReadFile("envoy.yaml")
	must(t, err)
	b, err := parseBootstrap(data)
	must(t, err)
	packed, err := unpackAll(b)
	must(t, err)
	var got []string
	for _, m := range packed {
		got = append(got, string(m.ProtoReflect().Descriptor().FullName()))
	}
	want := []string{
		"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
		"envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
		"envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
		"envoy.extensions.filters.http.router.v3.Router",
		"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
		"envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
	}
	slices.Sort(got)
	got = slices.Compact(got)
	if !slices.Equal(got, want) {
		t.Fatalf("unpacked %v, want %v", got, want)
	}
}

// TestBrokenConfigsAreRejected mutates a parsed copy of a shipped file and expects
// checkConfig to name the problem.
func TestBrokenConfigsAreRejected(t *testing.T) {
	tests := []struct {
		name    string
		file    string
		mode    authzMode
		mutate  func(t *testing.T, doc map[string]any)
		wantErr string
	}{
		{
			name: "an unknown top-level field is a parse error",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { doc["static_resource"] = map[string]any{} },
			wantErr: "unknown field",
		},
		{
			name: "a misspelt field inside the connection manager's typed_config is a parse error",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { hcm(t, doc)["use_remote_adress"] = true },
			wantErr: "unknown field",
		},
		{
			name: "a typed_config of a type nobody registered is a parse error",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				extAuthz(t, doc)["@type"] = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuth"
			},
			wantErr: "unable to resolve",
		},
		{
			name: "a validation rule broken outside any Any is caught by the bootstrap's ValidateAll",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { cluster(t, doc, "upstream")["connect_timeout"] = "0s" },
			wantErr: "ConnectTimeout",
		},
		{
			name: "a validation rule broken inside a per-filter Any is caught by walking the Anys",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(vhostPerFilter(t, doc), "check_settings") },
			wantErr: "invalid ExtAuthzPerRoute.Override",
		},
		{
			name: "a validation rule broken inside the ext_authz Any is caught by walking the Anys",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, extAuthz(t, doc), "grpc_service", "envoy_grpc")["cluster_name"] = ""
			},
			wantErr: "ClusterName",
		},
		{
			name: "a validation rule broken inside a cluster's protocol options Any is caught by walking the Anys",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				opts := dig(t, cluster(t, doc, "extauthz"), "typed_extension_protocol_options",
					"envoy.extensions.upstreams.http.v3.HttpProtocolOptions", "explicit_http_config")
				delete(opts, "http2_protocol_options")
			},
			wantErr: "invalid HttpProtocolOptions_ExplicitHttpConfig.ProtocolConfig",
		},
		{
			name: "ext_authz pointing at a cluster that does not exist",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, extAuthz(t, doc), "grpc_service", "envoy_grpc")["cluster_name"] = "ext-authz"
			},
			wantErr: `cluster "ext-authz" is not defined`,
		},
		{
			name: "a route pointing at a cluster that does not exist",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				routes(t, doc)[0].(map[string]any)["route"].(map[string]any)["cluster"] = "backend"
			},
			wantErr: `cluster "backend" is not defined`,
		},
		{
			name: "failing open",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { extAuthz(t, doc)["failure_mode_allow"] = true },
			wantErr: "failure_mode_allow",
		},
		{
			name: "no status_on_error, so an outage would look like a 403",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(extAuthz(t, doc), "status_on_error") },
			wantErr: "status_on_error",
		},
		{
			name: "status_on_error 403",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				extAuthz(t, doc)["status_on_error"] = map[string]any{"code": "Forbidden"}
			},
			wantErr: "status_on_error",
		},
		{
			name: "buffering the request body for authorization",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				extAuthz(t, doc)["with_request_body"] = map[string]any{"max_request_bytes": 8192}
			},
			wantErr: "with_request_body",
		},
		{
			name: "sending the peer certificate",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { extAuthz(t, doc)["include_peer_certificate"] = true },
			wantErr: "include_peer_certificate",
		},
		{
			name: "a timeout long enough to stall every request",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { dig(t, extAuthz(t, doc), "grpc_service")["timeout"] = "5s" },
			wantErr: "timeout",
		},
		{
			name: "a timeout shorter than a check may wait on a failing Redis",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { dig(t, extAuthz(t, doc), "grpc_service")["timeout"] = "0.1s" },
			wantErr: "timeout",
		},
		{
			name: "the gRPC cluster without HTTP/2",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				delete(cluster(t, doc, "extauthz"), "typed_extension_protocol_options")
			},
			wantErr: "HTTP/2",
		},
		{
			name: "trusting the client's X-Forwarded-For",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { hcm(t, doc)["use_remote_address"] = false },
			wantErr: "use_remote_address",
		},
		{
			name: "trusting one X-Forwarded-For hop nobody configured",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { hcm(t, doc)["xff_num_trusted_hops"] = 1 },
			wantErr: "xff_num_trusted_hops",
		},
		{
			name: "routing on the raw path",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(hcm(t, doc), "normalize_path") },
			wantErr: "normalize_path",
		},
		{
			name: "no HTTP/2 limits, so Envoy's defaults let a few connections hold gigabytes",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(hcm(t, doc), "http2_protocol_options") },
			wantErr: "http2_protocol_options is unset",
		},
		{
			name: "HTTP/2 without a stream limit",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				delete(dig(t, hcm(t, doc), "http2_protocol_options"), "max_concurrent_streams")
			},
			wantErr: "max_concurrent_streams",
		},
		{
			name: "HTTP/2 with Envoy's 16 MiB stream window",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, hcm(t, doc), "http2_protocol_options")["initial_stream_window_size"] = 16 << 20
			},
			wantErr: "initial_stream_window_size",
		},
		{
			name: "HTTP/2 with Envoy's 24 MiB connection window",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, hcm(t, doc), "http2_protocol_options")["initial_connection_window_size"] = 24 << 20
			},
			wantErr: "initial_connection_window_size",
		},
		{
			name: "no request_timeout, so a body trickled a byte at a time holds a stream for ever",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(hcm(t, doc), "request_timeout") },
			wantErr: "request_timeout",
		},
		{
			name: "request_headers_timeout 0s, which turns it off",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { hcm(t, doc)["request_headers_timeout"] = "0s" },
			wantErr: "request_headers_timeout is 0s",
		},
		{
			name: "stream_idle_timeout of an hour",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { hcm(t, doc)["stream_idle_timeout"] = "3600s" },
			wantErr: "stream_idle_timeout is 1h0m0s",
		},
		{
			name: "the listener's buffer limit left at Envoy's 1 MiB",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				delete(dig(t, doc, "static_resources")["listeners"].([]any)[0].(map[string]any), "per_connection_buffer_limit_bytes")
			},
			wantErr: "per_connection_buffer_limit_bytes",
		},
		{
			name: "no limit on client connections",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(doc, "overload_manager") },
			wantErr: "overload_manager is unset",
		},
		{
			name: "an overload manager without the global connection limit",
			file: "../k8s/overlays/sidecar/envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				rm := dig(t, doc, "overload_manager")["resource_monitors"].([]any)[0].(map[string]any)
				rm["name"] = "envoy.resource_monitors.downstream_connections"
			},
			wantErr: globalConnectionLimit,
		},
		{
			name: "passing encoded slashes through",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(hcm(t, doc), "path_with_escaped_slashes_action") },
			wantErr: "path_with_escaped_slashes_action",
		},
		{
			name: "HTTP mode hiding client x-authz-* headers from extauthz",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dropPattern(t, extAuthz(t, doc), "prefix", "x-authz-")
			},
			wantErr: "x-authz-admin",
		},
		{
			name: "HTTP mode hiding a method override from extauthz",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dropPattern(t, extAuthz(t, doc), "exact", "x-http-method-override")
			},
			wantErr: "does not pass x-http-method-override",
		},
		{
			name: "the admin interface on every address",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, doc, "admin", "address", "socket_address")["address"] = "0.0.0.0"
			},
			wantErr: "admin",
		},
		{
			name: "internal addresses left to Envoy's default (RFC 1918 before 1.33)",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { delete(hcm(t, doc), "internal_address_config") },
			wantErr: "internal_address_config",
		},
		{
			name: "a private range counted as internal",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				hcm(t, doc)["internal_address_config"] = map[string]any{"cidr_ranges": []any{
					map[string]any{"address_prefix": "10.0.0.0", "prefix_len": 8},
				}}
			},
			wantErr: "lists 10.0.0.0/8",
		},
		{
			name: "the sidecar's admin interface on the loopback the app shares",
			file: "../k8s/overlays/sidecar/envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				doc["admin"] = map[string]any{"address": map[string]any{
					"socket_address": map[string]any{"address": "127.0.0.1", "port_value": 9901},
				}}
			},
			wantErr: "the app shares Envoy's loopback",
		},
		{
			name: "a /healthz route that skips ext_authz, removing a fixed list of headers",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				vh := virtualHost(t, doc, 1)
				vh["routes"] = append([]any{healthzExemption(vh["routes"].([]any)[0])}, vh["routes"].([]any)...)
			},
			wantErr: "virtual host users: route path /healthz skips ext_authz",
		},
		{
			name: "the sidecar's /healthz skipping ext_authz",
			file: "../k8s/overlays/sidecar/envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				vh := virtualHost(t, doc, 0)
				vh["routes"] = append([]any{healthzExemption(vh["routes"].([]any)[0])}, vh["routes"].([]any)...)
			},
			wantErr: "route path /healthz skips ext_authz",
		},
		{
			name: "HTTP mode's /healthz skipping ext_authz",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				vh := virtualHost(t, doc, 0)
				vh["routes"] = append([]any{healthzExemption(vh["routes"].([]any)[0])}, vh["routes"].([]any)...)
			},
			wantErr: "route path /healthz skips ext_authz",
		},
		{
			name: "the catch-all route skipping ext_authz",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				routes(t, doc)[0].(map[string]any)["typed_per_filter_config"] = disabledExtAuthz(extAuthzFilterName)
			},
			wantErr: "virtual host billing: route prefix / skips ext_authz",
		},
		{
			name: "a virtual host skipping ext_authz for every route",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				virtualHost(t, doc, 1)["typed_per_filter_config"] = disabledExtAuthz(extAuthzFilterName)
			},
			wantErr: "virtual host users skips ext_authz",
		},
		{
			name: "the whole route table skipping ext_authz",
			file: "envoy-tls.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, hcm(t, doc), "route_config")["typed_per_filter_config"] = disabledExtAuthz(extAuthzFilterName)
			},
			wantErr: "route_config ingress skips ext_authz",
		},
		{
			name: "a weighted cluster skipping ext_authz",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				routes(t, doc)[0].(map[string]any)["route"] = map[string]any{"weighted_clusters": map[string]any{"clusters": []any{
					map[string]any{"name": "billing", "weight": 1, "typed_per_filter_config": disabledExtAuthz(extAuthzFilterName)},
				}}}
			},
			wantErr: "weighted cluster billing skips ext_authz",
		},
		{
			name: "ext_authz turned off by Envoy's generic FilterConfig",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				routes(t, doc)[0].(map[string]any)["typed_per_filter_config"] = map[string]any{extAuthzFilterName: map[string]any{
					"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true,
				}}
			},
			wantErr: "route prefix / skips ext_authz",
		},
		{
			name: "a disabling ExtAuthzPerRoute wrapped in a FilterConfig",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				routes(t, doc)[0].(map[string]any)["typed_per_filter_config"] = map[string]any{extAuthzFilterName: map[string]any{
					"@type":  "type.googleapis.com/envoy.config.route.v3.FilterConfig",
					"config": disabledExtAuthz(extAuthzFilterName)[extAuthzFilterName],
				}}
			},
			wantErr: "route prefix / skips ext_authz",
		},
		{
			name: "a disabling ExtAuthzPerRoute filed under another name, which a renamed filter would pick up",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				routes(t, doc)[0].(map[string]any)["typed_per_filter_config"] = disabledExtAuthz("ext_authz")
			},
			wantErr: "route prefix / skips ext_authz (typed_per_filter_config ext_authz)",
		},
		{
			name: "an access log of the path with its query",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { accessLogFields(t, doc)["path"] = "%REQ(:PATH)%" },
			wantErr: "writes the path with its query",
		},
		{
			name: "an access log of the Authorization header",
			file: "envoy.yaml", mode: grpcMode,
			mutate:  func(t *testing.T, doc map[string]any) { accessLogFields(t, doc)["auth"] = "%REQ(Authorization)%" },
			wantErr: "writes a header a key travels in",
		},
		{
			name: "an access log in Envoy's default format",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				delete(hcm(t, doc)["access_log"].([]any)[0].(map[string]any)["typed_config"].(map[string]any), "log_format")
			},
			wantErr: "no log_format",
		},
		{
			name: "the router before ext_authz, so authorization never runs",
			file: "envoy.yaml", mode: grpcMode,
			mutate: func(t *testing.T, doc map[string]any) {
				f := hcm(t, doc)["http_filters"].([]any)
				f[0], f[1] = f[1], f[0]
			},
			wantErr: "router",
		},
		{
			name: "HTTP mode sending to a cluster that does not exist",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, extAuthz(t, doc), "http_service", "server_uri")["cluster"] = "extauthz"
			},
			wantErr: `cluster "extauthz" is not defined`,
		},
		{
			name: "HTTP mode without the /authz prefix",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, extAuthz(t, doc), "http_service")["path_prefix"] = "/auth"
			},
			wantErr: "path_prefix",
		},
		{
			name: "HTTP mode not passing x-api-key to extauthz",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				p := dig(t, extAuthz(t, doc), "allowed_headers")
				p["patterns"] = p["patterns"].([]any)[1:]
			},
			wantErr: "x-api-key",
		},
		{
			name: "HTTP mode not copying an identity header upstream",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				p := dig(t, extAuthz(t, doc), "http_service", "authorization_response", "allowed_upstream_headers")
				p["patterns"] = p["patterns"].([]any)[:3]
			},
			wantErr: "x-authz-permissions",
		},
		{
			name: "HTTP mode hiding Retry-After from a rate-limited client",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				p := dig(t, extAuthz(t, doc), "http_service", "authorization_response", "allowed_client_headers")
				var kept []any
				for _, m := range p["patterns"].([]any) {
					if m.(map[string]any)["exact"] != "retry-after" {
						kept = append(kept, m)
					}
				}
				p["patterns"] = kept
			},
			wantErr: "retry-after",
		},
		{
			name: "a deprecated field, which Envoy warns about and will remove",
			file: "envoy-http.yaml", mode: httpMode,
			mutate: func(t *testing.T, doc map[string]any) {
				dig(t, extAuthz(t, doc), "http_service")["authorization_request"] = map[string]any{
					"allowed_headers": map[string]any{"patterns": []any{map[string]any{"exact": "x-api-key"}}},
				}
			},
			wantErr: "deprecated",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data, err := os.ReadFile(tt.file)
			must(t, err)
			// The unmutated file passes, so the failure below is the mutation's.
			if err := checkConfig(data, tt.mode); err != nil {
				t.Fatalf("the unmutated %s fails: %v", tt.file, err)
			}

			var doc map[string]any
			must(t, yaml.Unmarshal(data, &doc))
			tt.mutate(t, doc)
			mutated, err := yaml.Marshal(doc)
			must(t, err)

			err = checkConfig(mutated, tt.mode)
			if err == nil {
				t.Fatalf("the broken config passed; want an error containing %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error does not mention %q:\n%v", tt.wantErr, err)
			}
		})
	}
}

// TestModeMismatchIsRejected: the HTTP-mode file is not a gRPC-mode config, and
// the other way round; each mode's checks really look at their own service.
func TestModeMismatchIsRejected(t *testing.T) {
	for file, mode := range map[string]authzMode{"envoy-http.yaml": grpcMode, "envoy.yaml": httpMode} {
		data, err := os.ReadFile(file)
		must(t, err)
		err = checkConfig(data, mode)
		if err == nil || !strings.Contains(err.Error(), "ext_authz has no") {
			t.Errorf("%s checked in the wrong mode: got %v, want a missing-service error", file, err)
		}
	}
}

// checkConfig parses an Envoy bootstrap strictly, validates every message in it
// (those packed in Anys too) and checks the settings extauthz relies on.
func checkConfig(data []byte, mode authzMode) error {
	b, err := parseBootstrap(data)
	if err != nil {
		return err
	}
	if err := b.ValidateAll(); err != nil {
		return fmt.Errorf("bootstrap: %w", err)
	}
	packed, err := unpackAll(b)
	if err != nil {
		return err
	}
	for _, m := range packed {
		v, ok := m.(interface{ ValidateAll() error })
		if !ok {
			return fmt.Errorf("%s has no validation rules compiled in", m.ProtoReflect().Descriptor().FullName())
		}
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	all := append([]proto.Message{b}, packed...)
	for _, m := range all {
		if err := noDeprecated(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name())); err != nil {
			return err
		}
	}
	if err := untrustedDownstreamUnset(all); err != nil {
		return err
	}
	return checkPolicy(b, mode)
}

// parseBootstrap turns YAML into a Bootstrap, rejecting unknown fields and Any
// types that are not registered.
func parseBootstrap(data []byte) (*bootstrapv3.Bootstrap, error) {
	j, err := yaml.YAMLToJSON(data)
	if err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	b := &bootstrapv3.Bootstrap{}
	// protojson rejects unknown fields unless told otherwise, in Anys as well.
	if err := protojson.Unmarshal(j, b); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	return b, nil
}

// unpackAll returns the message inside every Any in m's tree, depth first, Anys
// nested in unpacked messages included. The generated ValidateAll stops at an Any
// (it can't know the type), so these have to be validated one by one.
func unpackAll(m proto.Message) ([]proto.Message, error) {
	var out []proto.Message
	var walk func(protoreflect.Message) error
	walk = func(msg protoreflect.Message) error {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				return fmt.Errorf("unpack %s: %w", a.GetTypeUrl(), err)
			}
			out = append(out, inner)
			return walk(inner.ProtoReflect())
		}
		var err error
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len() && err == nil; i++ {
					err = walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					err = walk(mv.Message())
					return err == nil
				})
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				err = walk(v.Message())
			}
			return err == nil
		})
		return err
	}
	if err := walk(m.ProtoReflect()); err != nil {
		return nil, err
	}
	return out, nil
}

// noDeprecated fails on any set field or enum value marked deprecated: Envoy logs
// a warning for each, and removes them a few releases later. Anys are not entered
// here; the caller checks each unpacked message itself.
func noDeprecated(msg protoreflect.Message, path string) error {
	var err error
	msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		p := path + "." + string(fd.Name())
		if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
			err = fmt.Errorf("%s is deprecated", p)
			return false
		}
		if fd.Kind() == protoreflect.EnumKind && !fd.IsList() && !fd.IsMap() {
			ev := fd.Enum().Values().ByNumber(v.Enum())
			if ev != nil {
				if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
					err = fmt.Errorf("%s: value %s is deprecated", p, ev.Name())
					return false
				}
			}
		}
		if fd.Message() == nil || fd.Message().FullName() == "google.protobuf.Any" {
			return true
		}
		switch {
		case fd.IsList():
			for i := 0; i < v.List().Len() && err == nil; i++ {
				err = noDeprecated(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
			}
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					err = noDeprecated(mv.Message(), fmt.Sprintf("%s[%v]", p, k))
					return err == nil
				})
			}
		default:
			err = noDeprecated(v.Message(), p)
		}
		return err == nil
	})
	return err
}

// untrustedDownstreamUnset fails on every field Envoy marks to be configured
// where clients are untrusted (the udpa.annotations.security option
// configure_for_untrusted_downstream: the overload manager, the listener's
// buffer limit, the connection manager's timeouts and HTTP/2 limits, and so
// on) and that a message of the config leaves unset: its default is made for
// a mesh of trusted peers. Every shipped config faces clients. A field that a
// newer go-control-plane marks fails here once it is updated, which is the
// point. Anys are not entered; the caller passes each unpacked message.
func untrustedDownstreamUnset(msgs []proto.Message) error {
	var errs []error
	var walk func(msg protoreflect.Message, path string)
	walk = func(msg protoreflect.Message, path string) {
		fields := msg.Descriptor().Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			if forUntrustedDownstream(fd) && !msg.Has(fd) {
				errs = append(errs, fmt.Errorf("%s.%s is unset: Envoy says to set it where clients are untrusted (its default suits a mesh of trusted peers)", path, fd.Name()))
			}
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			p := path + "." + string(fd.Name())
			switch {
			case fd.Message() == nil || fd.Message().FullName() == "google.protobuf.Any":
			case fd.IsList():
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message(), fmt.Sprintf("%s[%d]", p, i))
				}
			case fd.IsMap():
				if fd.MapValue().Message() != nil {
					v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
						walk(mv.Message(), fmt.Sprintf("%s[%v]", p, k))
						return true
					})
				}
			default:
				walk(v.Message(), p)
			}
			return true
		})
	}
	for _, m := range msgs {
		walk(m.ProtoReflect(), string(m.ProtoReflect().Descriptor().Name()))
	}
	return errors.Join(errs...)
}

// forUntrustedDownstream reports whether Envoy's protos mark the field as one
// to configure in front of untrusted clients.
func forUntrustedDownstream(fd protoreflect.FieldDescriptor) bool {
	opts, ok := fd.Options().(*descriptorpb.FieldOptions)
	if !ok || !proto.HasExtension(opts, annotations.E_Security) {
		return false
	}
	return proto.GetExtension(opts, annotations.E_Security).(*annotations.FieldSecurityAnnotation).GetConfigureForUntrustedDownstream()
}

// maxAuthzTimeout bounds how long one request may wait for a decision.
const maxAuthzTimeout = time.Second

// minAuthzTimeout is the longest a check may wait on Redis with the default
// store.redis.timeout (the timeout and a tenth more for a rate limit after
// a lookup that took all of it), plus 25 ms for the rest of the check: a
// shorter ext_authz timeout would fail, as errors, the checks of cached keys
// that extauthz answers from its cache while Redis is failing.
var minAuthzTimeout = func() time.Duration {
	d := time.Duration(config.Default().Store.Redis.Timeout)
	return d + d/10 + 25*time.Millisecond
}()

// problems collects everything wrong with a config, so one run names them all.
type problems struct{ errs []error }

func (p *problems) add(format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf(format, args...))
}

// checkPolicy asserts the settings that make Envoy a correct front for extauthz.
func checkPolicy(b *bootstrapv3.Bootstrap, mode authzMode) error {
	p := &problems{}
	clusters := map[string]*clusterv3.Cluster{}
	for _, c := range b.GetStaticResources().GetClusters() {
		clusters[c.GetName()] = c
	}
	checkAdmin(p, b, clusters)
	checkConnectionLimit(p, b)

	var hcms int
	for _, l := range b.GetStaticResources().GetListeners() {
		if v := l.GetPerConnectionBufferLimitBytes(); v == nil || v.GetValue() > maxConnectionBuffer {
			p.add("listener %s: per_connection_buffer_limit_bytes is %v; want set and at most %d (Envoy's default is 1 MiB a connection)", l.GetName(), v, maxConnectionBuffer)
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcmv3.HttpConnectionManager
				if !f.GetTypedConfig().MessageIs(&h) {
					continue
				}
				if err := f.GetTypedConfig().UnmarshalTo(&h); err != nil {
					p.add("listener %s: %v", l.GetName(), err)
					continue
				}
				hcms++
				checkHCM(p, "listener "+l.GetName(), &h, mode, clusters)
			}
		}
	}
	if hcms == 0 {
		p.add("no listener has an http_connection_manager")
	}
	return errors.Join(p.errs...)
}

// The limits Envoy's edge guidance sets for clients it cannot trust.
const (
	maxConnectionBuffer   = 32 << 10 // listener per_connection_buffer_limit_bytes
	maxH2Streams          = 100      // concurrent streams on one client connection
	maxH2StreamWindow     = 64 << 10 // what a client may send on a stream before Envoy reads it
	maxH2ConnectionWindow = 1 << 20  // and on the whole connection
)

// globalConnectionLimit is the overload manager's resource monitor that caps
// the client connections of every listener together.
const globalConnectionLimit = "envoy.resource_monitors.global_downstream_max_connections"

// checkConnectionLimit: without a global limit a client can open connections
// until Envoy runs out of memory or file descriptors (Envoy warns at start).
func checkConnectionLimit(p *problems, b *bootstrapv3.Bootstrap) {
	for _, rm := range b.GetOverloadManager().GetResourceMonitors() {
		var dc downstreamconnsv3.DownstreamConnectionsConfig
		if rm.GetName() == globalConnectionLimit && rm.GetTypedConfig().UnmarshalTo(&dc) == nil && dc.GetMaxActiveDownstreamConnections() > 0 {
			return
		}
	}
	p.add("no overload_manager resource monitor %s with max_active_downstream_connections above 0: a client could open connections until Envoy runs out of memory or file descriptors", globalConnectionLimit)
}

// checkAdmin: Envoy's admin interface takes no credentials and can change
// runtime values, turn on debug logging (which writes every request's headers,
// keys included), drain listeners and stop Envoy. It may listen on loopback
// only, and not at all where the app Envoy forwards to shares that loopback
// (a sidecar: an upstream on 127.0.0.1), since the app, or anything that can
// make it send a request, would then reach it.
func checkAdmin(p *problems, b *bootstrapv3.Bootstrap, clusters map[string]*clusterv3.Cluster) {
	addr := b.GetAdmin().GetAddress()
	if addr == nil {
		return // no admin interface
	}
	ip := addr.GetSocketAddress().GetAddress()
	if ip != "127.0.0.1" && ip != "::1" {
		p.add("admin listens on %q: it must stay on loopback", ip)
	}
	for _, name := range routedClusters(b) {
		for _, ep := range clusters[name].GetLoadAssignment().GetEndpoints() {
			for _, lb := range ep.GetLbEndpoints() {
				a := lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress()
				if a == "127.0.0.1" || a == "::1" || a == "localhost" {
					p.add("admin listens on %q beside the upstream %s on %s: the app shares Envoy's loopback and would reach it; remove the admin block", ip, name, a)
					return
				}
			}
		}
	}
}

// routedClusters names the clusters the listeners' routes send requests to:
// the upstreams, not the ext_authz service.
func routedClusters(b *bootstrapv3.Bootstrap) []string {
	var names []string
	for _, l := range b.GetStaticResources().GetListeners() {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) != nil {
					continue
				}
				for _, vh := range h.GetRouteConfig().GetVirtualHosts() {
					for _, r := range vh.GetRoutes() {
						if c := r.GetRoute().GetCluster(); c != "" {
							names = append(names, c)
						}
						for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
							names = append(names, wc.GetName())
						}
					}
				}
			}
		}
	}
	return names
}

func checkHCM(p *problems, where string, h *hcmv3.HttpConnectionManager, mode authzMode, clusters map[string]*clusterv3.Cluster) {
	fail := func(format string, args ...any) { p.add(where+": "+format, args...) }
	needCluster := func(name, what string) *clusterv3.Cluster {
		c, ok := clusters[name]
		if !ok {
			fail("%s: cluster %q is not defined", what, name)
		}
		return c
	}

	if !h.GetUseRemoteAddress().GetValue() {
		fail("use_remote_address must be true: Envoy is the edge, the TCP peer is the client")
	}
	if n := h.GetXffNumTrustedHops(); n != 0 {
		fail("xff_num_trusted_hops is %d: trust no client-sent X-Forwarded-For", n)
	}
	checkInternalAddresses(fail, h.GetInternalAddressConfig())
	if !h.GetNormalizePath().GetValue() {
		fail("normalize_path must be true so routes match the path extauthz authorizes")
	}
	if !h.GetMergeSlashes() {
		fail("merge_slashes must be true so routes match the path extauthz authorizes")
	}
	if h.GetPathWithEscapedSlashesAction() != hcmv3.HttpConnectionManager_REJECT_REQUEST {
		fail("path_with_escaped_slashes_action must be REJECT_REQUEST (extauthz rejects %%2F too)")
	}
	if h.GetCommonHttpProtocolOptions().GetHeadersWithUnderscoresAction() != corev3.HttpProtocolOptions_REJECT_REQUEST {
		fail("headers_with_underscores_action must be REJECT_REQUEST")
	}
	checkSlowClients(fail, h)

	// Filter order: ext_authz before the router, the router last.
	filters := h.GetHttpFilters()
	authzAt, routerAt := -1, -1
	var authz extauthzv3.ExtAuthz
	for i, f := range filters {
		switch {
		case f.GetTypedConfig().MessageIs(&authz):
			if authzAt >= 0 {
				fail("more than one ext_authz filter")
			}
			authzAt = i
			if f.GetName() != extAuthzFilterName {
				fail("the ext_authz filter is named %q; per-route configs use %q", f.GetName(), extAuthzFilterName)
			}
			if f.GetDisabled() {
				fail("the ext_authz filter is disabled")
			}
			if err := f.GetTypedConfig().UnmarshalTo(&authz); err != nil {
				fail("ext_authz: %v", err)
			}
		case f.GetTypedConfig().MessageIs(&routerv3.Router{}):
			routerAt = i
		}
	}
	switch {
	case authzAt < 0:
		fail("no ext_authz filter")
		return
	case routerAt != len(filters)-1:
		fail("the router must be the last http filter")
	case authzAt > routerAt:
		fail("ext_authz comes after the router and never runs")
	}

	if authz.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		fail("ext_authz transport_api_version must be V3")
	}
	if authz.GetFailureModeAllow() {
		fail("ext_authz failure_mode_allow must be false: fail closed")
	}
	if got := authz.GetStatusOnError().GetCode(); got != typev3.StatusCode_ServiceUnavailable {
		fail("ext_authz status_on_error is %v, want ServiceUnavailable (503)", got)
	}
	if authz.GetIncludePeerCertificate() {
		fail("ext_authz include_peer_certificate must be false")
	}
	if authz.GetWithRequestBody() != nil {
		fail("ext_authz with_request_body must be absent: keys never travel in the body")
	}

	switch mode {
	case grpcMode:
		g := authz.GetGrpcService()
		if g == nil {
			fail("ext_authz has no grpc_service (gRPC mode)")
			break
		}
		checkTimeout(fail, g.GetTimeout() != nil, g.GetTimeout().AsDuration())
		name := g.GetEnvoyGrpc().GetClusterName()
		if c := needCluster(name, "ext_authz grpc_service"); c != nil && !speaksHTTP2(c) {
			fail("cluster %q carries gRPC but is not configured for HTTP/2", name)
		}
	case httpMode:
		s := authz.GetHttpService()
		if s == nil {
			fail("ext_authz has no http_service (HTTP mode)")
			break
		}
		checkTimeout(fail, s.GetServerUri().GetTimeout() != nil, s.GetServerUri().GetTimeout().AsDuration())
		needCluster(s.GetServerUri().GetCluster(), "ext_authz http_service server_uri")
		if pp := s.GetPathPrefix(); !authPathRE.MatchString(pp) {
			fail("ext_authz http_service path_prefix is %q, want /authz (http_mode.prefix) or /authz/_policy/<name> (a policy)", pp)
		}
		for _, hdr := range append(slices.Concat(keyHeaders, overrideHeaders), "x-request-id", "user-agent", "x-forwarded-for") {
			if !matchesAny(authz.GetAllowedHeaders(), hdr) {
				fail("ext_authz allowed_headers does not pass %s to extauthz", hdr)
			}
		}
		// extauthz names every client x-authz-* header it sees for removal;
		// it must see all of them, not only the identity headers.
		for _, hdr := range append(slices.Clone(identityHeaders), "x-authz-admin", "x-authz-code") {
			if !matchesAny(authz.GetAllowedHeaders(), hdr) {
				fail("ext_authz allowed_headers does not pass %s to extauthz, which could not name it for removal", hdr)
			}
		}
		resp := s.GetAuthorizationResponse()
		for _, hdr := range identityHeaders {
			if !matchesAny(resp.GetAllowedUpstreamHeaders(), hdr) {
				fail("allowed_upstream_headers does not copy %s to the upstream", hdr)
			}
		}
		for _, hdr := range denyHeaders {
			if !matchesAny(resp.GetAllowedClientHeaders(), hdr) {
				fail("allowed_client_headers does not pass %s to a denied client", hdr)
			}
		}
		for _, hdr := range rateLimitHeaders {
			if !matchesAny(resp.GetAllowedClientHeadersOnSuccess(), hdr) {
				fail("allowed_client_headers_on_success does not pass %s to an allowed client", hdr)
			}
		}
		// Identity headers must replace what the client sent, never sit beside it.
		if resp.GetAllowedUpstreamHeadersToAppend() != nil {
			fail("allowed_upstream_headers_to_append would append to client-sent headers; use allowed_upstream_headers")
		}
	}

	checkAccessLogs(h.GetAccessLog(), fail)
	checkRoutes(h.GetRouteConfig(), needCluster, fail)
}

// checkSlowClients: a client that sends slowly, or opens many HTTP/2 streams
// and sends into each, holds Envoy's memory only as long and as much as these
// allow. A timeout of 0 turns it off. The bounds are Envoy's edge guidance.
func checkSlowClients(fail func(string, ...any), h *hcmv3.HttpConnectionManager) {
	for _, to := range []struct {
		name string
		d    *durationpb.Duration
		max  time.Duration
	}{
		{"request_headers_timeout", h.GetRequestHeadersTimeout(), time.Minute},
		{"stream_idle_timeout", h.GetStreamIdleTimeout(), 5 * time.Minute},
		{"request_timeout", h.GetRequestTimeout(), 5 * time.Minute},
	} {
		if to.d == nil || to.d.AsDuration() <= 0 || to.d.AsDuration() > to.max {
			fail("%s is %v: want set, above 0 (0 turns it off) and at most %v, or a client sending a byte at a time holds a stream for as long", to.name, to.d.AsDuration(), to.max)
		}
	}
	if d := h.GetCommonHttpProtocolOptions().GetIdleTimeout(); d != nil && d.AsDuration() <= 0 {
		fail("common_http_protocol_options.idle_timeout is 0, which keeps an idle connection open for ever")
	}
	h2 := h.GetHttp2ProtocolOptions()
	if n := h2.GetMaxConcurrentStreams(); n == nil || n.GetValue() > maxH2Streams {
		fail("http2_protocol_options.max_concurrent_streams is %v; want set and at most %d", n, maxH2Streams)
	}
	if w := h2.GetInitialStreamWindowSize(); w == nil || w.GetValue() > maxH2StreamWindow {
		fail("http2_protocol_options.initial_stream_window_size is %v; want set and at most %d: it is what Envoy buffers for each stream", w, maxH2StreamWindow)
	}
	if w := h2.GetInitialConnectionWindowSize(); w == nil || w.GetValue() > maxH2ConnectionWindow {
		fail("http2_protocol_options.initial_connection_window_size is %v; want set and at most %d", w, maxH2ConnectionWindow)
	}
}

// checkInternalAddresses: no client may count as internal. Envoy honours the
// x-envoy-* request headers of an internal request (x-envoy-retry-on,
// x-envoy-retriable-status-codes: 200, x-envoy-max-retries), so an internal
// client could have one checked request sent upstream again and again, past
// every rate limit. Left unset, Envoy before 1.33 counts every RFC 1918
// address as internal: a client behind a Kubernetes Service, a cloud load
// balancer or Docker's port mapping. Set to ranges no peer comes from
// (0.0.0.0/32, ::/128), no version counts any client as internal.
func checkInternalAddresses(fail func(string, ...any), c *hcmv3.HttpConnectionManager_InternalAddressConfig) {
	if c == nil || len(c.GetCidrRanges()) == 0 {
		fail("internal_address_config must list only 0.0.0.0/32 or ::/128: unset or empty, Envoy before 1.33 trusts the x-envoy-* headers (retries) of every RFC 1918 client")
		return
	}
	if c.GetUnixSockets() {
		fail("internal_address_config.unix_sockets must be false")
	}
	for _, r := range c.GetCidrRanges() {
		full := uint32(32)
		if strings.Contains(r.GetAddressPrefix(), ":") {
			full = 128
		}
		if (r.GetAddressPrefix() != "0.0.0.0" && r.GetAddressPrefix() != "::") || r.GetPrefixLen().GetValue() != full {
			fail("internal_address_config lists %s/%d: a client from there could send x-envoy-* headers (retries) that Envoy honours", r.GetAddressPrefix(), r.GetPrefixLen().GetValue())
		}
	}
}

// authPathRE is an HTTP-mode auth path: the prefix, or the prefix naming a
// policy.
var authPathRE = regexp.MustCompile(`^/authz(/_policy/[a-z0-9][a-z0-9_-]{0,62})?$`)

// loggedCommandRE finds the access-log commands that read a request or
// response header (or the path) by name.
var loggedCommandRE = regexp.MustCompile(`%(REQ|RESP|TRAILER|REQ_WITHOUT_QUERY)\(([^)]*)\)`)

// checkAccessLogs: no access log may write a credential or the path with its
// query (?api_key=...): only REQ_WITHOUT_QUERY may name the path, and no
// command may name a header a key travels in.
func checkAccessLogs(logs []*accesslogv3.AccessLog, fail func(string, ...any)) {
	for _, l := range logs {
		var stdout streamv3.StdoutAccessLog
		if !l.GetTypedConfig().MessageIs(&stdout) {
			fail("access log %s: only envoy.access_loggers.stdout is checked here; add its checks for another", l.GetName())
			continue
		}
		if err := l.GetTypedConfig().UnmarshalTo(&stdout); err != nil {
			fail("access log %s: %v", l.GetName(), err)
			continue
		}
		f := stdout.GetLogFormat()
		if f == nil {
			fail("access log %s: no log_format: Envoy's default writes the path with its query", l.GetName())
			continue
		}
		var formats []string
		if t := f.GetTextFormatSource(); t != nil {
			formats = append(formats, t.GetInlineString())
		}
		for _, v := range f.GetJsonFormat().GetFields() {
			formats = append(formats, v.GetStringValue())
		}
		for _, format := range formats {
			if strings.Contains(format, "%PATH") {
				fail("access log %s: %q writes the path with its query; use %%REQ_WITHOUT_QUERY(:PATH)%%", l.GetName(), format)
			}
			for _, m := range loggedCommandRE.FindAllStringSubmatch(format, -1) {
				name := strings.ToLower(strings.TrimSpace(strings.SplitN(m[2], "?", 2)[0]))
				switch {
				case m[1] != "REQ_WITHOUT_QUERY" && (name == ":path" || name == "x-envoy-original-path"):
					fail("access log %s: %s writes the path with its query, where a key may be; use %%REQ_WITHOUT_QUERY(:PATH)%%", l.GetName(), m[0])
				case slices.Contains(keyHeaders, name):
					fail("access log %s: %s writes a header a key travels in", l.GetName(), m[0])
				}
			}
		}
	}
}

func checkTimeout(fail func(string, ...any), set bool, d time.Duration) {
	if !set || d < minAuthzTimeout || d > maxAuthzTimeout {
		fail("ext_authz timeout is %v (set: %v); want set, at least %v (a check waiting on a failing Redis with the default store.redis.timeout) and at most %v",
			d, set, minAuthzTimeout, maxAuthzTimeout)
	}
}

func checkRoutes(rc *routev3.RouteConfiguration, needCluster func(name, what string) *clusterv3.Cluster, fail func(string, ...any)) {
	if rc == nil {
		fail("route_config must be inline (no RDS) so these checks see it")
		return
	}
	// No route may skip ext_authz, /healthz included: extauthz answers a
	// public path itself, without a key, and removes every client-sent
	// x-authz-* header in any spelling. A route that skips it can only remove
	// the headers it names, and Envoy cannot remove headers by prefix, so a
	// client's x-authz-admin or x-authz-meta-<name> would reach the upstream
	// as sent; and no route match keeps a body out (a GET may carry one, over
	// HTTP/2 with neither Content-Length nor Transfer-Encoding).
	skips := func(where string, tpfc map[string]*anypb.Any) {
		for _, name := range slices.Sorted(maps.Keys(tpfc)) {
			if disablesExtAuthz(name, tpfc[name]) {
				fail("%s skips ext_authz (typed_per_filter_config %s): requests there reach the upstream unchecked, with any x-authz-* header the client wrote; make the path a public route of extauthz's config instead", where, name)
			}
		}
	}
	skips("route_config "+rc.GetName(), rc.GetTypedPerFilterConfig())
	for _, vh := range rc.GetVirtualHosts() {
		skips("virtual host "+vh.GetName(), vh.GetTypedPerFilterConfig())
		for _, r := range vh.GetRoutes() {
			what := describeRoute(r)
			skips("virtual host "+vh.GetName()+": "+what, r.GetTypedPerFilterConfig())
			if a := r.GetRoute(); a != nil {
				if c := a.GetCluster(); c != "" {
					needCluster(c, what)
				}
				for _, wc := range a.GetWeightedClusters().GetClusters() {
					needCluster(wc.GetName(), what)
					skips("virtual host "+vh.GetName()+": "+what+": weighted cluster "+wc.GetName(), wc.GetTypedPerFilterConfig())
				}
			}
		}
	}
}

// describeRoute names a route by its match, for messages.
func describeRoute(r *routev3.Route) string {
	m := r.GetMatch()
	switch {
	case m.GetPath() != "":
		return "route path " + m.GetPath()
	case m.GetPrefix() != "":
		return "route prefix " + m.GetPrefix()
	case m.GetPathSeparatedPrefix() != "":
		return "route path_separated_prefix " + m.GetPathSeparatedPrefix()
	default:
		return fmt.Sprintf("route %v", m)
	}
}

// disablesExtAuthz reports whether one typed_per_filter_config entry turns
// ext_authz off: an ExtAuthzPerRoute with disabled set, under any name (under
// another than the filter's Envoy does not apply it today, but a renamed
// filter would), or a FilterConfig with disabled set under the filter's name,
// or wrapping such an ExtAuthzPerRoute.
func disablesExtAuthz(name string, a *anypb.Any) bool {
	var per extauthzv3.ExtAuthzPerRoute
	if a.MessageIs(&per) {
		return a.UnmarshalTo(&per) == nil && per.GetDisabled()
	}
	var fc routev3.FilterConfig
	if a.MessageIs(&fc) && a.UnmarshalTo(&fc) == nil {
		return (name == extAuthzFilterName && fc.GetDisabled()) || (fc.GetConfig() != nil && disablesExtAuthz(name, fc.GetConfig()))
	}
	return false
}

// speaksHTTP2 reports whether Envoy uses HTTP/2 to the cluster's endpoints.
func speaksHTTP2(c *clusterv3.Cluster) bool {
	a, ok := c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
	if !ok {
		return false
	}
	var opts upstreamhttpv3.HttpProtocolOptions
	if err := a.UnmarshalTo(&opts); err != nil {
		return false
	}
	return opts.GetExplicitHttpConfig().GetHttp2ProtocolOptions() != nil
}

// matchesAny reports whether a ListStringMatcher lets the header name through.
// Only the matcher kinds these files use are understood; any other fails closed.
func matchesAny(l *matcherv3.ListStringMatcher, name string) bool {
	for _, p := range l.GetPatterns() {
		v := name
		if p.GetIgnoreCase() {
			v = strings.ToLower(v)
		}
		switch m := p.GetMatchPattern().(type) {
		case *matcherv3.StringMatcher_Exact:
			if want := m.Exact; v == want || (p.GetIgnoreCase() && strings.EqualFold(v, want)) {
				return true
			}
		case *matcherv3.StringMatcher_Prefix:
			if strings.HasPrefix(v, m.Prefix) {
				return true
			}
		case *matcherv3.StringMatcher_SafeRegex:
			// Envoy's RE2 matches the whole name; Go's regexp is RE2 too.
			if re, err := regexp.Compile("^(?:" + m.SafeRegex.GetRegex() + ")$"); err == nil && re.MatchString(v) {
				return true
			}
		}
	}
	return false
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// The helpers below find the pieces of a parsed file that the broken-config table
// changes. They fail the test, rather than return nil, when the shape moved.

func dig(t *testing.T, m map[string]any, keys ...string) map[string]any {
	t.Helper()
	for _, k := range keys {
		next, ok := m[k].(map[string]any)
		if !ok {
			t.Fatalf("no object at %q in %v", k, keys)
		}
		m = next
	}
	return m
}

func hcm(t *testing.T, doc map[string]any) map[string]any {
	t.Helper()
	l := dig(t, doc, "static_resources")["listeners"].([]any)[0].(map[string]any)
	fc := l["filter_chains"].([]any)[0].(map[string]any)
	return fc["filters"].([]any)[0].(map[string]any)["typed_config"].(map[string]any)
}

func extAuthz(t *testing.T, doc map[string]any) map[string]any {
	t.Helper()
	for _, f := range hcm(t, doc)["http_filters"].([]any) {
		if f := f.(map[string]any); f["name"] == extAuthzFilterName {
			return f["typed_config"].(map[string]any)
		}
	}
	t.Fatal("no ext_authz filter")
	return nil
}

func accessLogFields(t *testing.T, doc map[string]any) map[string]any {
	t.Helper()
	l := hcm(t, doc)["access_log"].([]any)[0].(map[string]any)
	return dig(t, l, "typed_config", "log_format", "json_format")
}

func routes(t *testing.T, doc map[string]any) []any {
	t.Helper()
	vh := dig(t, hcm(t, doc), "route_config")["virtual_hosts"].([]any)[0].(map[string]any)
	return vh["routes"].([]any)
}

// dropPattern removes the allowed_headers pattern {kind: value} of the
// ext_authz filter config, which must have it.
func dropPattern(t *testing.T, authz map[string]any, kind, value string) {
	t.Helper()
	m := dig(t, authz, "allowed_headers")
	pats := m["patterns"].([]any)
	n := len(pats)
	m["patterns"] = slices.DeleteFunc(pats, func(p any) bool { return p.(map[string]any)[kind] == value })
	if len(m["patterns"].([]any)) != n-1 {
		t.Fatalf("allowed_headers has no %s pattern %q", kind, value)
	}
}

// virtualHost is the i-th virtual host of the first listener's route table.
func virtualHost(t *testing.T, doc map[string]any, i int) map[string]any {
	t.Helper()
	return dig(t, hcm(t, doc), "route_config")["virtual_hosts"].([]any)[i].(map[string]any)
}

// vhostPerFilter is the first virtual host's ext_authz per-filter config.
func vhostPerFilter(t *testing.T, doc map[string]any) map[string]any {
	t.Helper()
	return dig(t, virtualHost(t, doc, 0), "typed_per_filter_config", extAuthzFilterName)
}

// disabledExtAuthz is a typed_per_filter_config that turns ext_authz off,
// filed under name.
func disabledExtAuthz(name string) map[string]any {
	return map[string]any{name: map[string]any{
		"@type":    "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
		"disabled": true,
	}}
}

// healthzExemption is a route that sends GET /healthz without a query to
// catchAll's cluster with ext_authz off and a fixed list of headers removed:
// the shape of the exemption the shipped files once had.
func healthzExemption(catchAll any) map[string]any {
	remove := []any{}
	for _, h := range slices.Concat(identityHeaders, keyHeaders, overrideHeaders) {
		remove = append(remove, h)
	}
	return map[string]any{
		"match": map[string]any{"path": "/healthz", "headers": []any{
			map[string]any{"name": ":path", "string_match": map[string]any{"exact": "/healthz"}},
			map[string]any{"name": ":method", "string_match": map[string]any{"exact": "GET"}},
		}},
		"route":                     map[string]any{"cluster": catchAll.(map[string]any)["route"].(map[string]any)["cluster"], "timeout": "5s"},
		"request_headers_to_remove": remove,
		"typed_per_filter_config":   disabledExtAuthz(extAuthzFilterName),
	}
}

func cluster(t *testing.T, doc map[string]any, name string) map[string]any {
	t.Helper()
	for _, c := range dig(t, doc, "static_resources")["clusters"].([]any) {
		if c := c.(map[string]any); c["name"] == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

// extauthzTLS returns the transport socket of the extauthz cluster of a
// config, decoded (nil when the cluster speaks plain text).
func extauthzTLS(t *testing.T, data []byte) *tlsv3.UpstreamTlsContext {
	t.Helper()
	b, err := parseBootstrap(data)
	must(t, err)
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() != "extauthz" {
			continue
		}
		ts := c.GetTransportSocket()
		if ts == nil {
			return nil
		}
		var ctx tlsv3.UpstreamTlsContext
		must(t, ts.GetTypedConfig().UnmarshalTo(&ctx))
		return &ctx
	}
	t.Fatal("no extauthz cluster")
	return nil
}

// envoy-tls.yaml speaks TLS to extauthz and verifies it: a CA to trust, the
// name the certificate must carry, TLS 1.2 at least, h2 by ALPN (gRPC), and
// a client certificate for extauthz's mutual TLS. envoy.yaml carries the
// same block, commented out, and this holds the two to the same text.
func TestTheTLSVariantVerifiesExtauthz(t *testing.T) {
	data, err := os.ReadFile("envoy-tls.yaml")
	must(t, err)
	ctx := extauthzTLS(t, data)
	if ctx == nil {
		t.Fatal("envoy-tls.yaml: the extauthz cluster has no transport_socket")
	}
	common := ctx.GetCommonTlsContext()
	v := common.GetValidationContext()
	switch {
	case ctx.GetSni() != "extauthz":
		t.Errorf("sni %q, want extauthz", ctx.GetSni())
	case v.GetTrustedCa().GetFilename() == "":
		t.Error("no trusted_ca: Envoy would not verify extauthz's certificate")
	case len(v.GetMatchTypedSubjectAltNames()) == 0:
		t.Error("no match_typed_subject_alt_names: any certificate the CA signed would pass")
	case v.GetTrustChainVerification() != tlsv3.CertificateValidationContext_VERIFY_TRUST_CHAIN:
		t.Error("trust_chain_verification is not VERIFY_TRUST_CHAIN")
	case !slices.Equal(common.GetAlpnProtocols(), []string{"h2"}):
		t.Errorf("alpn_protocols %v, want [h2]: gRPC needs HTTP/2", common.GetAlpnProtocols())
	case common.GetTlsParams().GetTlsMinimumProtocolVersion() != tlsv3.TlsParameters_TLSv1_2:
		t.Error("tls_minimum_protocol_version is not TLSv1_2")
	case len(common.GetTlsCertificates()) != 1:
		t.Error("no client certificate for mutual TLS")
	}

	plain, err := os.ReadFile("envoy.yaml")
	must(t, err)
	if extauthzTLS(t, plain) != nil {
		t.Fatal("envoy.yaml speaks TLS to extauthz; compose runs it in plain text")
	}
	// Uncomment envoy.yaml's block (and its mutual-TLS lines) and it must be
	// envoy-tls.yaml's.
	var lines []string
	in := false
	for _, line := range strings.Split(string(plain), "\n") {
		switch {
		case strings.HasPrefix(line, "    # transport_socket:"):
			in = true
		case in && !strings.HasPrefix(line, "    #"):
			in = false
		}
		if in {
			line = "    " + strings.TrimPrefix(line, "    # ")
			line = strings.Replace(line, "# - certificate_chain", "- certificate_chain", 1)
			line = strings.Replace(line, "#   private_key", "  private_key", 1)
			line = strings.Replace(line, "# tls_certificates:", "tls_certificates:", 1)
		}
		lines = append(lines, line)
	}
	uncommented := extauthzTLS(t, []byte(strings.Join(lines, "\n")))
	if uncommented == nil || !proto.Equal(uncommented, ctx) {
		t.Errorf("envoy.yaml's commented transport_socket is not envoy-tls.yaml's:\n%v\n%v", uncommented, ctx)
	}
}

// forwardingHeaders are the headers upstreams read the client's address,
// the host or the original target from that Envoy does not write itself:
// a client's own would reach the upstream beside what extauthz checked.
var forwardingHeaders = []string{
	"x-real-ip", "x-client-ip", "true-client-ip", "cf-connecting-ip", "fastly-client-ip", "x-cluster-client-ip",
	"forwarded", "x-forwarded-host",
	"x-original-uri", "x-original-method", "x-forwarded-uri", "x-forwarded-method",
}

// Every shipped Envoy removes a client's forwarding headers on the way
// upstream, as the shipped nginx, Caddy and Traefik configs do: an upstream
// reading X-Real-IP would take a client-written address for the one an IP
// allowlist checked, one reading Forwarded or X-Forwarded-Host another
// site's host, and one built for a forward-auth proxy another target.
func TestShippedConfigsRemoveClientWrittenForwardingHeaders(t *testing.T) {
	for _, c := range shippedConfigs {
		t.Run(filepath.Base(filepath.Dir(c.path))+"/"+filepath.Base(c.path), func(t *testing.T) {
			data, err := os.ReadFile(c.path)
			must(t, err)
			var doc any
			must(t, yaml.Unmarshal(data, &doc))
			var removed []string
			collectRemoved(doc, &removed)
			for _, h := range forwardingHeaders {
				if !slices.Contains(removed, h) {
					t.Errorf("%s passes a client's %s to the upstream (request_headers_to_remove: %v)", c.path, h, removed)
				}
			}
		})
	}
}

// The Envoy Gateway overlay's HTTPRoute to the app removes them too, with
// a RequestHeaderModifier.
func TestTheGatewayOverlayRemovesClientWrittenForwardingHeaders(t *testing.T) {
	const path = "../k8s/overlays/envoy-gateway/gateway.yaml"
	data, err := os.ReadFile(path)
	must(t, err)
	routes := 0
	for _, doc := range strings.Split(string(data), "\n---\n") {
		var route struct {
			Kind string `json:"kind"`
			Spec struct {
				Rules []struct {
					Filters []struct {
						Type                  string `json:"type"`
						RequestHeaderModifier struct {
							Remove []string `json:"remove"`
						} `json:"requestHeaderModifier"`
					} `json:"filters"`
				} `json:"rules"`
			} `json:"spec"`
		}
		must(t, yaml.Unmarshal([]byte(doc), &route))
		if route.Kind != "HTTPRoute" {
			continue
		}
		routes++
		for i, rule := range route.Spec.Rules {
			var removed []string
			for _, f := range rule.Filters {
				if f.Type == "RequestHeaderModifier" {
					for _, h := range f.RequestHeaderModifier.Remove {
						removed = append(removed, strings.ToLower(h))
					}
				}
			}
			for _, h := range forwardingHeaders {
				if !slices.Contains(removed, h) {
					t.Errorf("%s: rule %d passes a client's %s to the app (removed: %v)", path, i, h, removed)
				}
			}
		}
	}
	if routes == 0 {
		t.Fatalf("%s: no HTTPRoute", path)
	}
}

// collectRemoved gathers every request_headers_to_remove entry anywhere in
// a decoded config (route configuration, virtual host, route), lower-cased.
func collectRemoved(v any, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if k == "request_headers_to_remove" {
				list, _ := e.([]any)
				for _, h := range list {
					s, _ := h.(string)
					*out = append(*out, strings.ToLower(s))
				}
				continue
			}
			collectRemoved(e, out)
		}
	case []any:
		for _, e := range v {
			collectRemoved(e, out)
		}
	}
}
