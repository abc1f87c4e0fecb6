// Package deploytest proves the deployment artefacts (Dockerfile,
// docker-compose.yml, deploy/, k8s/) without Docker or a cluster: each file is
// loaded with the library the real tool uses (kustomize, compose-go) or decoded
// strictly into the API types the cluster would, and the settings that make the
// system work and stay safe are asserted. The Envoy configs themselves are
// proved by envoy/envoy_test.go in the main module; here they are cross-checked
// against the files that must agree with them.
//
// It is a module of its own so that kustomize, k8s.io/api, istio.io and
// compose-go never enter the service's dependency graph.
package deploytest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

// repoRoot is the main module, which holds the files under test.
const repoRoot = ".."

// extauthzConfig mirrors the config file (the README's Configuration block)
// field for field. The service's own config package is written elsewhere;
// this copy lets the shipped configs be held to the contract, so a typo or a
// field the config doesn't have fails here, as it would when the server
// starts ("unknown fields are errors").
type extauthzConfig struct {
	Listen struct {
		GRPC  string `json:"grpc"`
		HTTP  string `json:"http"`
		Admin string `json:"admin"`
		// Go's profiles, off unless set.
		Debug string `json:"debug"`
		// One client's open connections on each listener.
		MaxConnectionsPerClient int `json:"max_connections_per_client"`
	} `json:"listen"`
	Store struct {
		Backend string `json:"backend"`
		Path    string `json:"path"`
		Redis   struct {
			URL        string   `json:"url"`
			Addrs      []string `json:"addrs"`
			MasterName string   `json:"master_name"`
			// The ACL login and TLS settings, beyond the contract's example.
			Username            string `json:"username"`
			PasswordEnv         string `json:"password_env"`
			SentinelUsername    string `json:"sentinel_username"`
			SentinelPasswordEnv string `json:"sentinel_password_env"`
			TLS                 struct {
				Enabled    bool   `json:"enabled"`
				CAFile     string `json:"ca_file"`
				CertFile   string `json:"cert_file"`
				KeyFile    string `json:"key_file"`
				ServerName string `json:"server_name"`
			} `json:"tls"`
			Prefix  string `json:"prefix"`
			Timeout string `json:"timeout"`
			// Replicas that must acknowledge a change to a key, and how long
			// to wait for them.
			ConfirmReplicas int    `json:"confirm_replicas"`
			ConfirmTimeout  string `json:"confirm_timeout"`
			// The most connections to each node (0: the client's default).
			PoolSize int `json:"pool_size"`
		} `json:"redis"`
	} `json:"store"`
	Hashing struct {
		PepperEnv string `json:"pepper_env"`
	} `json:"hashing"`
	Cache struct {
		Size        int    `json:"size"`
		TTL         string `json:"ttl"`
		NegativeTTL string `json:"negative_ttl"`
		MaxStale    string `json:"max_stale"`
	} `json:"cache"`
	Keys struct {
		Prefix      string `json:"prefix"`
		MaxPerOwner int    `json:"max_per_owner"`
		Retention   string `json:"retention"`
	} `json:"keys"`
	Sources []struct {
		Header string `json:"header"`
		Scheme string `json:"scheme"`
		Query  string `json:"query"`
		Cookie string `json:"cookie"`
	} `json:"sources"`
	ClientIP struct {
		XFFTrustedHops int `json:"xff_trusted_hops"`
	} `json:"client_ip"`
	RateLimit struct {
		Default             string `json:"default"`
		OnStoreError        string `json:"on_store_error"`
		FailedAttempts      string `json:"failed_attempts"`
		FailedAttemptsTotal string `json:"failed_attempts_total"`
	} `json:"rate_limit"`
	Routes    []configRoute `json:"routes"`
	Unmatched string        `json:"unmatched"`
	// The opt-in readings of a request path.
	Paths struct {
		MatrixParams    string `json:"matrix_params"`
		CaseInsensitive bool   `json:"case_insensitive"`
	} `json:"paths"`
	// The default policy's mode and forwarded metadata; the named policies,
	// and what a request none selects gets.
	Mode        string         `json:"mode"`
	ForwardMeta []string       `json:"forward_meta"`
	Policies    []configPolicy `json:"policies"`
	Unselected  string         `json:"unselected"`
	HTTPMode    struct {
		Prefix             string `json:"prefix"`
		Original           string `json:"original"`
		XFFTrustedHops     *int   `json:"xff_trusted_hops"`
		QueryAndCookieKeys string `json:"query_and_cookie_keys"`
	} `json:"http_mode"`
	Audit struct {
		Sink      string `json:"sink"`
		StreamCap int64  `json:"stream_cap"`
		QueueSize int    `json:"queue_size"`
	} `json:"audit"`
	// The settings the README documents beyond the contract's example.
	Log struct {
		Level  string `json:"level"`
		Format string `json:"format"`
	} `json:"log"`
	Leaks struct {
		GitHubKeysFile string `json:"github_keys_file"`
	} `json:"leaks"`
	Admin struct {
		RateLimit string `json:"rate_limit"`
	} `json:"admin"`
	// The gRPC server's own metrics on /metrics.
	Metrics struct {
		GRPC bool `json:"grpc"`
	} `json:"metrics"`
	Development bool `json:"development"`
	// TLS on every listener; client_ca_file asks clients for certificates.
	TLS struct {
		CertFile     string `json:"cert_file"`
		KeyFile      string `json:"key_file"`
		ClientCAFile string `json:"client_ca_file"`
	} `json:"tls"`
}

// configRoute is one entry of a route table.
type configRoute struct {
	Path        string   `json:"path"`
	Methods     []string `json:"methods"`
	Permissions []string `json:"permissions"`
	Public      bool     `json:"public"`
	RateLimit   string   `json:"rate_limit"`
	Mode        string   `json:"mode"`
}

// configPolicy is one named policy.
type configPolicy struct {
	Name  string `json:"name"`
	Match struct {
		Context    map[string]string `json:"context"`
		Principals []string          `json:"principals"`
		Hosts      []string          `json:"hosts"`
	} `json:"match"`
	Routes    []configRoute `json:"routes"`
	Unmatched string        `json:"unmatched"`
	Sources   []struct {
		Header string `json:"header"`
		Scheme string `json:"scheme"`
		Query  string `json:"query"`
		Cookie string `json:"cookie"`
	} `json:"sources"`
	RateLimit struct {
		Default string `json:"default"`
	} `json:"rate_limit"`
	Mode        string   `json:"mode"`
	ForwardMeta []string `json:"forward_meta"`
}

// policyByContext returns the named policy whose context selector the
// context_extensions ext satisfy ("" when none does). Selectors are
// mutually exclusive (the server refuses a config where they are not).
func (c *extauthzConfig) policyByContext(ext map[string]string) string {
	for _, p := range c.Policies {
		if len(p.Match.Context) == 0 {
			continue
		}
		ok := true
		for k, v := range p.Match.Context {
			ok = ok && ext[k] == v
		}
		if ok {
			return p.Name
		}
	}
	return ""
}

// policyNamed reports whether name is the default policy or a named one.
func (c *extauthzConfig) policyNamed(name string) bool {
	return name == "default" || slices.ContainsFunc(c.Policies, func(p configPolicy) bool { return p.Name == name })
}

// The config file's defaults the cross-checks need when a file leaves a field out.
const (
	defaultGRPCListen  = ":9001"
	defaultHTTPListen  = ":9002"
	defaultAdminListen = "127.0.0.1:9003"
	defaultHTTPPrefix  = "/authz"
)

func (c *extauthzConfig) grpcListen() string  { return orDefault(c.Listen.GRPC, defaultGRPCListen) }
func (c *extauthzConfig) httpListen() string  { return orDefault(c.Listen.HTTP, defaultHTTPListen) }
func (c *extauthzConfig) adminListen() string { return listenOrOff(c.Listen.Admin, defaultAdminListen) }

// listenOrOff is a listen address with its default, or "" for "off".
func listenOrOff(v, def string) string {
	if v == "off" {
		return ""
	}
	return orDefault(v, def)
}
func (c *extauthzConfig) httpPrefix() string { return orDefault(c.HTTPMode.Prefix, defaultHTTPPrefix) }

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// parseExtauthzConfig decodes a config strictly: every key must be a config file
// field spelt exactly (encoding/json alone would accept `Listen` for `listen`),
// every value of the right type, and the values the config enumerates valid.
func parseExtauthzConfig(data []byte) (*extauthzConfig, error) {
	var raw any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("yaml: %w", err)
	}
	if raw == nil {
		return &extauthzConfig{}, nil // an empty file is valid: every field has a default
	}
	if err := exactKeys(raw, reflect.TypeFor[extauthzConfig](), "config"); err != nil {
		return nil, err
	}
	var c extauthzConfig
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// exactKeys walks a decoded YAML value alongside a Go type and rejects any map
// key that is not one of the struct's json names, compared case-sensitively.
func exactKeys(v any, t reflect.Type, path string) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want a mapping, got %T", path, v)
		}
		fields := map[string]reflect.Type{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			fields[name] = f.Type
		}
		for k, sub := range m {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("%s: unknown field %q", path, k)
			}
			if sub == nil {
				continue
			}
			if err := exactKeys(sub, ft, path+"."+k); err != nil {
				return err
			}
		}
	case reflect.Slice:
		l, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want a list, got %T", path, v)
		}
		for i, e := range l {
			if err := exactKeys(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
	}
	return nil
}

var (
	// A policy name, and a metadata entry's name.
	policyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	metaNameRE   = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	// N/unit or N/<duration>, or "none".
	rateRE = regexp.MustCompile(`^(none|[1-9][0-9]*/([smhd]|[0-9]+(ms|s|m|h)))$`)
	// A literal segment, {name}, *, or ** as the last segment.
	segmentRE = regexp.MustCompile(`^([A-Za-z0-9._~!$&'()+,;=:@-]+|\{[A-Za-z_][A-Za-z0-9_]*\}|\*|\*\*)$`)
)

func (c *extauthzConfig) validate() error {
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	oneOf := func(field, v string, allowed ...string) {
		if v != "" && !slices.Contains(allowed, v) {
			bad("%s: %q is not one of %v", field, v, allowed)
		}
	}
	duration := func(field, v string) {
		if v == "" {
			return
		}
		if d, err := time.ParseDuration(v); err != nil || d < 0 {
			bad("%s: %q is not a Go duration", field, v)
		}
	}
	rate := func(field, v string) {
		if v != "" && !rateRE.MatchString(v) {
			bad("%s: %q is not a rate (N/s, N/m, N/h, N/d, N/<duration>, none)", field, v)
		}
	}

	for field, addr := range map[string]string{"listen.grpc": c.Listen.GRPC, "listen.http": c.Listen.HTTP, "listen.admin": c.Listen.Admin, "listen.debug": c.Listen.Debug} {
		if addr == "" || addr == "off" {
			continue
		}
		if _, port, err := net.SplitHostPort(addr); err != nil {
			bad("%s: %q: %v", field, addr, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			bad("%s: %q: bad port", field, addr)
		}
	}
	oneOf("store.backend", c.Store.Backend, "embedded", "redis")
	if c.Store.Backend == "redis" && c.Store.Redis.URL == "" && len(c.Store.Redis.Addrs) == 0 {
		bad("store.redis: the redis backend needs url or addrs")
	}
	if c.Store.Backend != "redis" {
		// Unused Redis settings would leave each replica a store of its
		// own; the server refuses them, so a shipped file must not hold any.
		r := c.Store.Redis
		for field, v := range map[string]bool{
			"url":          r.URL != "" && r.URL != "redis://127.0.0.1:6379/0",
			"addrs":        len(r.Addrs) > 0,
			"master_name":  r.MasterName != "",
			"username":     r.Username != "" || r.SentinelUsername != "" || r.SentinelPasswordEnv != "",
			"password_env": r.PasswordEnv != "" && r.PasswordEnv != "REDIS_PASSWORD",
			"tls":          r.TLS != (extauthzConfig{}).Store.Redis.TLS,
			"prefix":       r.Prefix != "" && r.Prefix != "extauthz:",
			"timeout":      r.Timeout != "" && r.Timeout != "200ms",
			"confirm_*":    r.ConfirmReplicas != 0 || r.ConfirmTimeout != "" && r.ConfirmTimeout != "1s",
			"pool_size":    r.PoolSize != 0,
		} {
			if v {
				bad("store.redis.%s: set, but store.backend is embedded, which does not use Redis", field)
			}
		}
	}
	if u := c.Store.Redis.URL; u != "" && !strings.HasPrefix(u, "redis://") && !strings.HasPrefix(u, "rediss://") {
		bad("store.redis.url: %q is not redis:// or rediss://", u)
	}
	duration("cache.ttl", c.Cache.TTL)
	duration("cache.negative_ttl", c.Cache.NegativeTTL)
	duration("cache.max_stale", c.Cache.MaxStale)
	duration("keys.retention", c.Keys.Retention)
	duration("store.redis.timeout", c.Store.Redis.Timeout)
	if c.Cache.Size < 0 || c.Keys.MaxPerOwner < 0 {
		bad("cache.size and keys.max_per_owner must not be negative")
	}
	for i, s := range c.Sources {
		n := 0
		for _, v := range []string{s.Header, s.Query, s.Cookie} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			bad("sources[%d]: exactly one of header, query, cookie", i)
		}
		if s.Scheme != "" && s.Header == "" {
			bad("sources[%d]: scheme applies to a header only", i)
		}
	}
	if c.ClientIP.XFFTrustedHops < 0 {
		bad("client_ip.xff_trusted_hops must not be negative")
	}
	rate("rate_limit.default", c.RateLimit.Default)
	rate("rate_limit.failed_attempts", c.RateLimit.FailedAttempts)
	rate("rate_limit.failed_attempts_total", c.RateLimit.FailedAttemptsTotal)
	rate("admin.rate_limit", c.Admin.RateLimit)
	oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	oneOf("log.format", c.Log.Format, "json", "text")
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls: cert_file and key_file go together")
	}
	if c.TLS.ClientCAFile != "" && c.TLS.CertFile == "" {
		bad("tls.client_ca_file: needs cert_file and key_file")
	}
	oneOf("rate_limit.on_store_error", c.RateLimit.OnStoreError, "local", "allow", "deny")
	checkRoutes := func(at string, routes []configRoute) {
		for i, r := range routes {
			validateRoute(fmt.Sprintf("%s[%d]", at, i), r, bad, rate)
			oneOf(fmt.Sprintf("%s[%d].mode", at, i), r.Mode, "enforce", "shadow")
		}
	}
	checkRoutes("routes", c.Routes)
	oneOf("mode", c.Mode, "enforce", "shadow")
	oneOf("unselected", c.Unselected, "default", "deny")
	for _, m := range c.ForwardMeta {
		if !metaNameRE.MatchString(m) {
			bad("forward_meta: %q is not a metadata name", m)
		}
	}
	names := map[string]bool{"default": true}
	for i, p := range c.Policies {
		at := fmt.Sprintf("policies[%d]", i)
		if !policyNameRE.MatchString(p.Name) || names[p.Name] {
			bad("%s.name: %q is not a policy name, or is taken", at, p.Name)
		}
		names[p.Name] = true
		checkRoutes(at+".routes", p.Routes)
		oneOf(at+".unmatched", p.Unmatched, "deny", "authenticate")
		oneOf(at+".mode", p.Mode, "enforce", "shadow")
		rate(at+".rate_limit.default", p.RateLimit.Default)
		for _, m := range p.ForwardMeta {
			if !metaNameRE.MatchString(m) {
				bad("%s.forward_meta: %q is not a metadata name", at, m)
			}
		}
	}
	oneOf("unmatched", c.Unmatched, "deny", "authenticate")
	if p := c.HTTPMode.Prefix; p != "" && (!strings.HasPrefix(p, "/") || strings.HasSuffix(p, "/")) {
		bad("http_mode.prefix: %q must start, and not end, with /", p)
	}
	oneOf("http_mode.original", c.HTTPMode.Original, "path", "x-original", "x-forwarded")
	oneOf("http_mode.query_and_cookie_keys", c.HTTPMode.QueryAndCookieKeys, "refuse", "pass")
	if h := c.HTTPMode.XFFTrustedHops; h != nil && *h < 0 {
		bad("http_mode.xff_trusted_hops must not be negative")
	}
	oneOf("audit.sink", c.Audit.Sink, "stdout", "redis", "none")
	if len(errs) > 0 {
		return fmt.Errorf("config: %s", strings.Join(errs, "; "))
	}
	return nil
}

// validateRoute checks one route of a table at field.
func validateRoute(field string, r configRoute, bad func(string, ...any), rate func(field, v string)) {
	if !strings.HasPrefix(r.Path, "/") {
		bad("%s.path: %q must start with /", field, r.Path)
	} else if r.Path != "/" {
		segs := strings.Split(strings.TrimPrefix(r.Path, "/"), "/")
		for j, seg := range segs {
			if !segmentRE.MatchString(seg) || (seg == "**" && j != len(segs)-1) {
				bad("%s.path: %q: bad segment %q", field, r.Path, seg)
			}
		}
	}
	for _, m := range r.Methods {
		if m != strings.ToUpper(m) || m == "" {
			bad("%s.methods: %q", field, m)
		}
	}
	if r.Public && len(r.Permissions) > 0 {
		bad("%s: a public route needs no permissions", field)
	}
	rate(field+".rate_limit", r.RateLimit)
}

// noSecretsInConfig: secrets come from the environment, never the file. A
// password in a redis URL is the one place a file could carry one.
func noSecretsInConfig(c *extauthzConfig) error {
	if c.Store.Redis.URL == "" {
		return nil
	}
	if u := c.Store.Redis.URL; strings.Contains(strings.TrimPrefix(strings.TrimPrefix(u, "rediss://"), "redis://"), "@") {
		return fmt.Errorf("store.redis.url carries credentials; use password_env")
	}
	return nil
}

// hostPort splits a listen address or URL authority into host and port.
func hostPort(t *testing.T, addr string) (string, int) {
	t.Helper()
	host, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return host, port
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

func TestSpecConfigDecoderIsStrict(t *testing.T) {
	valid := `
listen: {grpc: ":9001", http: ":9002", admin: "127.0.0.1:9003"}
store: {backend: redis, redis: {url: "redis://redis:6379/0", password_env: REDIS_PASSWORD, prefix: "extauthz:"}}
hashing: {pepper_env: EXTAUTHZ_PEPPER}
cache: {size: 100, ttl: 30s, negative_ttl: 5s}
keys: {prefix: sk, max_per_owner: 100}
sources: [{header: x-api-key}, {header: authorization, scheme: Bearer}, {query: api_key}, {cookie: api_key}]
client_ip: {xff_trusted_hops: 0}
rate_limit: {default: 100/10m, on_store_error: local}
routes: [{path: /healthz, public: true}, {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users], rate_limit: 10/m}, {path: "/r/**"}]
unmatched: deny
http_mode: {prefix: /authz, original: path, xff_trusted_hops: 1}
audit: {sink: stdout}
mode: enforce
forward_meta: [plan]
unselected: deny
policies:
  - name: billing
    match: {context: {policy: billing}, principals: ["spiffe://cluster.local/ns/billing/sa/billing"], hosts: ["*.billing.example.com"]}
    routes: [{path: "/invoices/**", permissions: [read:invoices], mode: shadow}]
    unmatched: deny
    sources: [{header: x-api-key}]
    rate_limit: {default: 100/m}
    mode: shadow
    forward_meta: [plan, tenant_id]
`
	if _, err := parseExtauthzConfig([]byte(valid)); err != nil {
		t.Fatalf("the README's example config is rejected: %v", err)
	}
	if _, err := parseExtauthzConfig(nil); err != nil {
		t.Fatalf("an empty file is rejected: %v", err)
	}
	tests := []struct {
		name, yaml, wantErr string
	}{
		{"an unknown top-level field", "listen: {grpc: ':9001'}\nlisten_admin: x\n", `unknown field "listen_admin"`},
		{"a field in the wrong case", "Listen: {grpc: ':9001'}\n", `unknown field "Listen"`},
		{"an unknown nested field", "store: {redis: {password: hunter2}}\n", `unknown field "password"`},
		{"an unknown field in a list item", "routes: [{path: /x, permission: [a]}]\n", `unknown field "permission"`},
		{"a wrong type", "cache: {size: lots}\n", "decode"},
		{"a duplicate key", "audit: {sink: stdout}\naudit: {sink: none}\n", "already set"},
		{"an unknown backend", "store: {backend: postgres}\n", "store.backend"},
		{"Redis set up for the embedded store", "store: {backend: embedded, redis: {url: 'redis://redis:6379/0'}}\n", "store.redis.url: set, but store.backend is embedded"},
		{"a bad duration", "cache: {ttl: 30}\n", "cache.ttl"},
		{"a bad rate", "rate_limit: {default: 100/minute}\n", "rate_limit.default"},
		{"a source naming two places", "sources: [{header: x-api-key, query: api_key}]\n", "exactly one"},
		{"** before the last segment", "routes: [{path: '/a/**/b'}]\n", "bad segment"},
		{"an unknown original convention", "http_mode: {original: x-envoy}\n", "http_mode.original"},
		{"a listen address without a port", "listen: {http: 'localhost'}\n", "listen.http"},
		{"a TLS certificate without its key", "tls: {cert_file: /etc/tls/tls.crt}\n", "go together"},
		{"a client CA without a certificate to serve", "tls: {client_ca_file: /etc/ca.crt}\n", "tls.client_ca_file"},
		{"a misspelt TLS field", "tls: {certfile: /x}\n", `unknown field "certfile"`},
		{"a misspelt policy field", "policies: [{name: a, mach: {}}]\n", `unknown field "mach"`},
		{"a misspelt selector", "policies: [{name: a, match: {host: [a.example.com]}}]\n", `unknown field "host"`},
		{"a policy named default", "policies: [{name: default}]\n", "policies[0].name"},
		{"a bad policy mode", "policies: [{name: a, mode: dryrun}]\n", "policies[0].mode"},
		{"a bad route mode", "routes: [{path: /a, mode: off}]\n", "routes[0].mode"},
		{"a bad unselected", "unselected: allow\n", "unselected"},
		{"a forwarded metadata name with a dash", "forward_meta: [plan-tier]\n", "forward_meta"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseExtauthzConfig([]byte(tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	withPassword, err := parseExtauthzConfig([]byte("store: {backend: redis, redis: {url: 'redis://:hunter2@redis:6379/0'}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if noSecretsInConfig(withPassword) == nil {
		t.Fatal("a password in store.redis.url is not caught")
	}
}

// jsonRoundTrip re-encodes v (decoded YAML) as JSON, for decoders that take JSON.
func jsonRoundTrip(t *testing.T, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := json.NewEncoder(&buf).Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The mirror reads every field of the README's Configuration block, the
// reference of the config file (which the service's own tests hold to its
// loader): a field the service gained and the mirror lacks would fail a
// shipped config that sets it here, for no fault of the file.
func TestTheMirrorReadsTheREADMEConfigBlock(t *testing.T) {
	readme := readRepoFile(t, "README.md")
	_, section, ok := strings.Cut(readme, "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatal("README.md's Configuration section has no yaml block")
	}
	block, _, _ = strings.Cut(block, "```")
	if _, err := parseExtauthzConfig([]byte(block)); err != nil {
		t.Fatalf("the README's Configuration block: %v", err)
	}
}
