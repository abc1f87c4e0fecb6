package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/ratelimit"
)

func TestAnEmptyFileGivesTheDefaults(t *testing.T) {
	for _, text := range []string{"", "\n", "# only a comment\n", "{}"} {
		cfg, err := Parse([]byte(text))
		require.NoError(t, err, "%q", text)
		want := Default()
		assert.Equal(t, want.Listen, cfg.Listen)
		assert.Equal(t, "embedded", cfg.Store.Backend)
		assert.Equal(t, want.Sources, cfg.Sources)
		assert.Equal(t, ratelimit.Rate{N: 1000, Window: time.Hour}, *cfg.RateLimit.Default)
		assert.Equal(t, "deny", cfg.Unmatched)
		assert.Equal(t, 1, *cfg.HTTPMode.XFFTrustedHops)
		assert.Equal(t, Paths{MatrixParams: MatrixReject, CaseInsensitive: false}, cfg.Paths, "the strict path readings")
	}
}

func TestThePathReadingsAreOptIn(t *testing.T) {
	cfg, err := Parse([]byte("paths: {matrix_params: servlet, case_insensitive: true}\n"))
	require.NoError(t, err)
	assert.Equal(t, Paths{MatrixParams: MatrixServlet, CaseInsensitive: true}, cfg.Paths)

	cfg, err = Parse([]byte("paths: {case_insensitive: true}\n"))
	require.NoError(t, err)
	assert.Equal(t, MatrixReject, cfg.Paths.MatrixParams, "setting one keeps the other's default")
}

func TestTheSpecExampleParses(t *testing.T) {
	text := `
listen: {grpc: ":9001", http: ":9002", admin: "127.0.0.1:9003"}
store:
  backend: embedded
  path: ./data/extauthz.db
  redis:
    url: redis://127.0.0.1:6379/0
    password_env: REDIS_PASSWORD
    prefix: "extauthz:"
hashing: {pepper_env: EXTAUTHZ_PEPPER}
cache: {size: 100000, ttl: 30s, negative_ttl: 5s}
keys:
  prefix: sk
  max_per_owner: 100
sources:
  - {header: x-api-key}
  - {header: authorization, scheme: Bearer}
  - {query: api_key}
  - {cookie: api_key}
client_ip: {xff_trusted_hops: 0}
rate_limit:
  default: 1000/h
  on_store_error: local
routes:
  - {path: /healthz, public: true}
  - {path: /api/users, methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users], rate_limit: 10/m}
  - {path: "/api/reports/**", permissions: [read:reports]}
unmatched: deny
http_mode: {prefix: /authz, original: path, xff_trusted_hops: 1}
audit: {sink: stdout}
`
	cfg, err := Parse([]byte(text))
	require.NoError(t, err)
	require.Len(t, cfg.Routes, 4)
	assert.Equal(t, ratelimit.Rate{N: 10, Window: time.Minute}, *cfg.Routes[2].RateLimit)
	assert.Equal(t, 30*time.Second, time.Duration(cfg.Cache.TTL))
}

func TestSecretsComeFromTheNamedEnvironmentVariables(t *testing.T) {
	t.Setenv("MY_PEPPER", "s3cret")
	t.Setenv("MY_REDIS_PW", "pw")
	cfg, err := Parse([]byte("hashing: {pepper_env: MY_PEPPER}\nstore: {redis: {password_env: MY_REDIS_PW}}\n"))
	require.NoError(t, err)
	assert.Equal(t, []byte("s3cret"), cfg.Hashing.Pepper)
	assert.Equal(t, "pw", cfg.Store.Redis.Password)
}

func TestListsReplaceTheDefaults(t *testing.T) {
	cfg, err := Parse([]byte("sources: [{header: x-token}]\n"))
	require.NoError(t, err)
	assert.Equal(t, []Source{{Header: "x-token"}}, cfg.Sources)
}

func TestBadConfigsFailWithAPreciseMessage(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		{"an unknown top-level field names itself", "listne: {}", `listne: unknown field (did you mean "listen"?)`},
		{"an unknown nested field names its path", "routes:\n  - {path: /a, permision: [x]}", `routes[0].permision: unknown field (did you mean "permissions"?)`},
		{"an unknown redis field names its path", "store: {redis: {pasword_env: X}}", "store.redis.pasword_env: unknown field"},
		{"a password in the file is refused", "store: {backend: redis, redis: {url: \"redis://:hunter2@h:6379/0\"}}", "store.redis.url: must not contain a password"},
		{"a bad duration", "cache: {ttl: soon}", `bad duration "soon"`},
		{"a bad rate", "rate_limit: {default: 10/fortnight}", `rate "10/fortnight"`},
		{"a zero rate", "rate_limit: {default: 0/s}", "count must be"},
		{"a bad backend", "store: {backend: mongo}", `store.backend: "mongo"`},
		{"a bad unmatched", "unmatched: allow", `unmatched: "allow"`},
		{"a source with two places", "sources: [{header: a, query: b}]", "sources[0]: set exactly one"},
		{"a scheme without a header", "sources: [{query: a, scheme: Bearer}]", "sources[0]: scheme goes with header"},
		{"an upper-case header name", "sources: [{header: X-Api-Key}]", "lower-case"},
		{"a public route with permissions", "routes: [{path: /a, public: true, permissions: [x]}]", "routes[0]: a public route"},
		{"a lower-case method", "routes: [{path: /a, methods: [get]}]", "routes[0].methods"},
		{"a permission with a comma", "routes: [{path: /a, permissions: [\"a,b\"]}]", "routes[0].permissions"},
		{"a wrong type names the field", "cache: {size: big}", "cache.size"},
		{"a bad listen address", "listen: {grpc: nine}", "listen.grpc"},
		{"a redis audit sink without redis", "audit: {sink: redis}", "audit.sink"},
		{"an http_mode prefix with a trailing slash", "http_mode: {prefix: /authz/}", "http_mode.prefix"},
		{"a bad http_mode original", "http_mode: {original: header}", "http_mode.original"},
		{"a bad matrix_params", "paths: {matrix_params: allow}", `paths.matrix_params: "allow": want reject or servlet`},
		{"a misspelt matrix_params value", "paths: {matrix_params: rejects}", `(did you mean "reject"?)`},
		{"a misspelt paths field", "paths: {case_insensitve: true}", `paths.case_insensitve: unknown field (did you mean "case_insensitive"?)`},
		{"a case_insensitive that is not a boolean", "paths: {case_insensitive: sometimes}", "case_insensitive"},
		{"not a mapping", "- a\n- b\n", "must be a mapping"},
		{"not YAML", "listen: [", "parse yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.text))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NotContains(t, err.Error(), "hunter2", "errors never echo a secret")
		})
	}
}

func TestLoadNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	require.NoError(t, os.WriteFile(path, []byte("bogus: 1\n"), 0o600))
	_, err := Load(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), path+": bogus: unknown field")

	_, err = Load(filepath.Join(t.TempDir(), "missing.yaml"))
	assert.ErrorContains(t, err, "read config")
}

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs([]string{"10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"})
	require.NoError(t, err)
	want := []string{"10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::1/128"}
	for i, p := range got {
		assert.Equal(t, want[i], p.String())
	}
	for _, bad := range []string{"10.0.0.1/8", "300.1.1.1", "fe80::1%eth0", "nope"} {
		_, err := ParseCIDRs([]string{bad})
		assert.Error(t, err, bad)
	}
}

func TestAListenerCanBeTurnedOff(t *testing.T) {
	for _, v := range []string{"off", `"off"`, `""`, "false"} {
		cfg, err := Parse([]byte("listen: {admin: " + v + "}"))
		require.NoError(t, err, v)
		assert.False(t, cfg.Listen.Admin.Enabled(), v)
		assert.True(t, cfg.Listen.GRPC.Enabled())
	}
}
