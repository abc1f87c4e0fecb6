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
		assert.Equal(t, 30*24*time.Hour, time.Duration(cfg.Keys.Retention))
		assert.Equal(t, ratelimit.Rate{N: 600, Window: time.Minute}, *cfg.Admin.RateLimit)
		assert.Equal(t, Paths{MatrixParams: MatrixReject, CaseInsensitive: false}, cfg.Paths, "the strict path readings")
	}
}

func TestKeyRetentionAndTheAdminRateLimit(t *testing.T) {
	for _, tt := range []struct {
		name, text string
		retention  time.Duration
		adminRate  ratelimit.Rate
	}{
		{"a retention of a week", "keys: {retention: 168h}", 7 * 24 * time.Hour, ratelimit.Rate{N: 600, Window: time.Minute}},
		{"a retention of 0 keeps dead keys forever", "keys: {retention: 0s}", 0, ratelimit.Rate{N: 600, Window: time.Minute}},
		{"the shortest retention", "keys: {retention: 1h}", time.Hour, ratelimit.Rate{N: 600, Window: time.Minute}},
		{"another admin rate", "admin: {rate_limit: 100/m}", 30 * 24 * time.Hour, ratelimit.Rate{N: 100, Window: time.Minute}},
		{"no admin rate", "admin: {rate_limit: none}", 30 * 24 * time.Hour, ratelimit.Rate{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.text))
			require.NoError(t, err)
			assert.Equal(t, tt.retention, time.Duration(cfg.Keys.Retention))
			assert.Equal(t, tt.adminRate, *cfg.Admin.RateLimit)
		})
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
	cfg, err := Parse([]byte("hashing: {pepper_env: MY_PEPPER}\nstore: {backend: redis, redis: {password_env: MY_REDIS_PW}}\n"))
	require.NoError(t, err)
	assert.Equal(t, []byte("s3cret"), cfg.Hashing.Pepper)
	assert.Equal(t, "pw", cfg.Store.Redis.Password)
}

func TestRedisLoginAndTLSSettings(t *testing.T) {
	t.Setenv("REDIS_PW", "pw")
	t.Setenv("SENTINEL_PW", "spw")
	cfg, err := Parse([]byte(`
store:
  backend: redis
  redis:
    addrs: ["s1:26379", "s2:26379"]
    master_name: keys
    username: extauthz
    password_env: REDIS_PW
    sentinel_username: watcher
    sentinel_password_env: SENTINEL_PW
    tls: {enabled: true, ca_file: /tls/ca.crt, cert_file: /tls/tls.crt, key_file: /tls/tls.key, server_name: redis.internal}
`))
	require.NoError(t, err)
	r := cfg.Store.Redis
	assert.Equal(t, "extauthz", r.Username)
	assert.Equal(t, "pw", r.Password)
	assert.Equal(t, "watcher", r.SentinelUsername)
	assert.Equal(t, "spw", r.SentinelPassword)
	assert.Equal(t, RedisTLS{Enabled: true, CAFile: "/tls/ca.crt", CertFile: "/tls/tls.crt", KeyFile: "/tls/tls.key", ServerName: "redis.internal"}, r.TLS)

	cfg, err = Parse([]byte("store: {backend: redis, redis: {url: \"rediss://redis:6380/0\", username: extauthz, tls: {ca_file: /tls/ca.crt}}}\n"))
	require.NoError(t, err, "a rediss:// url needs no tls.enabled")
	assert.Equal(t, "/tls/ca.crt", cfg.Store.Redis.TLS.CAFile)
	assert.False(t, Default().Store.Redis.TLS.Enabled, "TLS is off by default")
	assert.Empty(t, Default().Store.Redis.Username, "the default user by default")
}

// A check waits on Redis for store.redis.timeout and a tenth more at most;
// the shipped Envoy configs give a decision 250 ms (envoy/envoy_test.go
// holds them to more than this default allows).
func TestTheRedisTimeoutFitsUnderEnvoysDefault(t *testing.T) {
	cfg, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, Duration(200*time.Millisecond), cfg.Store.Redis.Timeout)
	cfg, err = Parse([]byte("store: {backend: redis, redis: {timeout: 120ms}}"))
	require.NoError(t, err)
	assert.Equal(t, Duration(120*time.Millisecond), cfg.Store.Redis.Timeout)
}

// Changes are not confirmed by replicas unless asked for; when asked, the
// wait is a second unless set.
func TestConfirmingChangesIsOffByDefault(t *testing.T) {
	cfg, err := Parse([]byte("store: {backend: redis}"))
	require.NoError(t, err)
	assert.Zero(t, cfg.Store.Redis.ConfirmReplicas)
	cfg, err = Parse([]byte("store: {backend: redis, redis: {confirm_replicas: 1}}"))
	require.NoError(t, err)
	assert.Equal(t, 1, cfg.Store.Redis.ConfirmReplicas)
	assert.Equal(t, Duration(time.Second), cfg.Store.Redis.ConfirmTimeout)
}

// The pool size is the Redis client's own unless set, here or in the url
// (one of the two), and the bounds take the smallest and largest pools.
func TestTheRedisPoolSizeIsTheClientsUnlessSet(t *testing.T) {
	for _, tc := range []struct {
		conf string
		want int
	}{
		{"store: {backend: redis}", 0},
		{"store: {backend: redis, redis: {pool_size: 4}}", 4},
		{"store: {backend: redis, redis: {pool_size: 1024}}", 1024},
		{"store: {backend: redis, redis: {url: \"redis://h:6379/0?pool_size=4\"}}", 0},
		{"store: {backend: redis, redis: {url: \"redis://h:6379/0?pool_size=0\"}}", 0},
	} {
		cfg, err := Parse([]byte(tc.conf))
		require.NoError(t, err, tc.conf)
		assert.Equal(t, tc.want, cfg.Store.Redis.PoolSize, tc.conf)
	}
}

func TestTheAuditStreamCapIsSmallByDefault(t *testing.T) {
	cfg, err := Parse(nil)
	require.NoError(t, err)
	// 4.3 KB is what one event of fields at their cap takes in Redis (measured
	// with MEMORY USAGE); the stream must stay a small part of the key store.
	assert.LessOrEqual(t, cfg.Audit.StreamCap*4300, int64(100<<20), "the default audit stream can hold over 100 MiB")
	assert.EqualValues(t, 20_000, cfg.Audit.StreamCap)
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
		// Last-wins would let a second block silently drop the first.
		{"a top-level field given twice", "routes:\n  - {path: /admin/**, permissions: [admin]}\nroutes:\n  - {path: /**, public: true}", `key "routes" already set in map`},
		{"a nested field given twice", "store:\n  path: a.db\n  path: b.db", `line 3: key "path" already set in map`},
		{"a route field given twice", "routes:\n  - {path: /a, permissions: [x], public: false, public: true}", `key "public" already set in map`},
		// Two keys YAML keeps apart that JSON names alike: the last would win.
		{"a context key as a number and a string", "policies:\n- name: p\n  match:\n    context:\n      1: billing\n      \"1\": users\n", `policies[0].match.context: two keys read as one field name`},
		{"a context key in hex and in decimal", "policies:\n- name: p\n  match:\n    context:\n      0x10: billing\n      \"16\": users\n", `policies[0].match.context: two keys read as one field name`},
		{"a context key true and \"true\"", "policies:\n- name: p\n  match:\n    context:\n      true: billing\n      \"true\": users\n", `policies[0].match.context: two keys read as one field name`},
		{"an unknown redis field names its path", "store: {redis: {pasword_env: X}}", "store.redis.pasword_env: unknown field"},
		{"a password in the file is refused", "store: {backend: redis, redis: {url: \"redis://:hunter2@h:6379/0\"}}", "store.redis.url: must not contain a password"},
		// Numbers YAML 1.1 (the decoder) and YAML 1.2 read as different values.
		{"a number with a leading zero", "client_ip: {xff_trusted_hops: 010}", "line 1: 010 reads as one number to this reader"},
		{"a number with an underscore", "cache:\n  size: 100_000\n", "line 2: 100_000 reads as one number"},
		{"a binary number", "cache: {size: 0b1000}", "0b1000 reads as one number"},
		{"a negative_ttl past an hour", "cache: {negative_ttl: 720h}", "cache.negative_ttl: 720h0m0s: want at most 1h0m0s"},
		{"a value the YAML decoder refuses is not quoted", "store: {backend: redis, redis: {url: !!int \"redis://:hunter2@h:6379/0\"}}", "cannot decode !!str (a value, not shown) as a !!int"},
		{"a bad duration", "cache: {ttl: soon}", `bad duration "soon"`},
		{"a bad rate", "rate_limit: {default: 10/fortnight}", `rate "10/fortnight"`},
		{"a bad rate names its path", "routes: [{path: /a, rate_limit: 10/fortnight}]", `routes[0].rate_limit: rate "10/fortnight"`},
		{"a bad on_store_error names its path", "rate_limit: {on_store_error: retry}", `rate_limit.on_store_error: "retry": want local, allow or deny`},
		{"a bad keys.prefix", "keys: {prefix: s-k}", `keys.prefix: key prefix "s-k": only letters and digits are allowed`},
		{"a zero rate", "rate_limit: {default: 0/s}", "count must be"},
		{"a bad backend", "store: {backend: mongo}", `store.backend: "mongo"`},
		{"Redis set up but the embedded store in use", "store: {redis: {url: \"redis://redis:6379/0\"}}", "store.redis: set, but store.backend is embedded"},
		{"Cluster addresses with the embedded store", "store: {backend: embedded, redis: {addrs: [\"a:6379\", \"b:6379\"]}}", "store.redis: set, but store.backend is embedded"},
		{"a Redis prefix with the embedded store", "store: {redis: {prefix: \"tenant-a:\"}}", "store.redis: set, but store.backend is embedded"},
		{"a bad unmatched", "unmatched: allow", `unmatched: "allow"`},
		{"a source with two places", "sources: [{header: a, query: b}]", "sources[0]: set exactly one"},
		{"a scheme without a header", "sources: [{query: a, scheme: Bearer}]", "sources[0]: scheme goes with header"},
		{"an upper-case header name", "sources: [{header: X-Api-Key}]", "lower-case"},
		{"a public route with permissions", "routes: [{path: /a, public: true, permissions: [x]}]", "routes[0]: a public route"},
		{"a lower-case method", "routes: [{path: /a, methods: [get]}]", "routes[0].methods"},
		{"unselected: deny without policies", "unselected: deny\nroutes: [{path: /a, public: true}]\npolicies: []", "unselected: deny, but no policies are named"},
		{"unselected: deny with policies left out", "unselected: deny", "unselected: deny, but no policies are named"},
		{"an empty list of methods", "routes: [{path: /a}, {path: /b, methods: [], public: true}]", "routes[1].methods: an empty list: name the methods, or leave methods out for every method"},
		{"an empty list of methods in a policy", "policies: [{name: b, routes: [{path: /a, methods: []}]}]", "policies[0].routes[0].methods: an empty list"},
		{"a permission with a comma", "routes: [{path: /a, permissions: [\"a,b\"]}]", "routes[0].permissions"},
		{"a wrong type names the field", "cache: {size: big}", "cache.size"},
		{"a bad listen address", "listen: {grpc: nine}", "listen.grpc"},
		{"a redis audit sink without redis", "audit: {sink: redis}", "audit.sink"},
		{"an unknown redis tls field", "store: {redis: {tls: {ca_fille: /x}}}", `store.redis.tls.ca_fille: unknown field (did you mean "ca_file"?)`},
		{"tls.enabled with a redis:// url", "store: {backend: redis, redis: {url: \"redis://h:6379/0\", tls: {enabled: true}}}", "store.redis.tls.enabled: the url is redis://"},
		{"a CA file with a redis:// url", "store: {backend: redis, redis: {url: \"redis://h:6379/0\", tls: {ca_file: /ca.crt}}}", "store.redis.tls: ca_file, cert_file, key_file and server_name need a rediss:// url"},
		{"a CA file with addrs but TLS off", "store: {backend: redis, redis: {addrs: [\"a:6379\", \"b:6379\"], tls: {ca_file: /ca.crt}}}", "need enabled: true"},
		{"a client certificate without its key", "store: {backend: redis, redis: {url: \"rediss://h:6379/0\", tls: {cert_file: /c.crt}}}", "set cert_file and key_file together"},
		{"a server name with a port", "store: {backend: redis, redis: {url: \"rediss://h:6379/0\", tls: {server_name: \"h:6379\"}}}", "store.redis.tls.server_name"},
		{"a negative confirm_replicas", "store: {backend: redis, redis: {confirm_replicas: -1}}", "store.redis.confirm_replicas: -1: want 0 (do not wait) to 16 replicas"},
		{"confirm_replicas without a timeout", "store: {backend: redis, redis: {confirm_replicas: 1, confirm_timeout: 0s}}", "store.redis.confirm_timeout: 0s: want more than 0 and at most 5s"},
		{"a confirm_timeout past an admin request's", "store: {backend: redis, redis: {confirm_replicas: 1, confirm_timeout: 10s}}", "store.redis.confirm_timeout: 10s"},
		{"a pool too small for the change feed and the limiter", "store: {backend: redis, redis: {pool_size: 3}}", "store.redis.pool_size: 3: want 0 (the Redis client's default, 10 per CPU) or 4 to 1024 connections to each node"},
		{"a negative pool size", "store: {backend: redis, redis: {pool_size: -1}}", "store.redis.pool_size: -1: want 0"},
		{"a pool past what a Redis serves a fleet", "store: {backend: redis, redis: {pool_size: 1025}}", "store.redis.pool_size: 1025: want 0"},
		{"a pool size in the url and the field", "store: {backend: redis, redis: {url: \"redis://h:6379/0?pool_size=8\", pool_size: 8}}", "store.redis.pool_size: set here and in the url's ?pool_size=; keep one"},
		{"a pool too small in the url", "store: {backend: redis, redis: {url: \"redis://h:6379/0?pool_size=1\"}}", "store.redis.url: ?pool_size=1: want 0"},
		{"a pool size in the url that is no number", "store: {backend: redis, redis: {url: \"redis://h:6379/0?pool_size=many\"}}", "store.redis.url: ?pool_size= is not a number"},
		{"a pool of pipelines in the url", "store: {backend: redis, redis: {url: \"redis://h:6379/0?pipeline_pool_size=10\"}}", "store.redis.url: ?pipeline_pool_size= is not supported"},
		{"a pool size with the embedded store", "store: {redis: {pool_size: 8}}", "store.redis: set, but store.backend is embedded"},
		{"skip_verify in the url", "store: {backend: redis, redis: {url: \"rediss://h:6379/0?skip_verify=true\"}}", "store.redis.url: skip_verify is not supported"},
		{"a username in the url and the field", "store: {backend: redis, redis: {url: \"redis://a@h:6379/0\", username: b}}", "store.redis.username: the url names a user too"},
		{"a username with a space", "store: {backend: redis, redis: {username: \"ext authz\"}}", "store.redis.username"},
		{"a sentinel user without sentinel", "store: {backend: redis, redis: {sentinel_username: w, sentinel_password_env: X}}", "need master_name"},
		{"a sentinel user without a password", "store: {backend: redis, redis: {addrs: [\"s:26379\"], master_name: m, sentinel_username: w}}", "store.redis.sentinel_password_env: required with sentinel_username"},
		{"an http_mode prefix with a trailing slash", "http_mode: {prefix: /authz/}", "http_mode.prefix"},
		{"a bad http_mode original", "http_mode: {original: header}", "http_mode.original"},
		{"the default gRPC port given to the admin listener", "listen: {admin: \"0.0.0.0:9001\"}", "listen.admin: the same port as listen.grpc"},
		{"a bad http_mode query_and_cookie_keys", "http_mode: {query_and_cookie_keys: allow}", "http_mode.query_and_cookie_keys"},
		{"an empty http_mode query_and_cookie_keys", "http_mode: {query_and_cookie_keys: \"\"}", "http_mode.query_and_cookie_keys"},
		{"a bad matrix_params", "paths: {matrix_params: allow}", `paths.matrix_params: "allow": want reject or servlet`},
		{"a misspelt matrix_params value", "paths: {matrix_params: rejects}", `(did you mean "reject"?)`},
		{"a misspelt paths field", "paths: {case_insensitve: true}", `paths.case_insensitve: unknown field (did you mean "case_insensitive"?)`},
		{"a case_insensitive that is not a boolean", "paths: {case_insensitive: sometimes}", "case_insensitive"},
		{"not a mapping", "- a\n- b\n", "must be a mapping"},
		{"not YAML", "listen: [", "parse yaml"},
		{"a negative retention", "keys: {retention: -1h}", "keys.retention: -1h0m0s: want 0 (keep dead keys forever) or at least 1h0m0s"},
		{"a retention too short to be meant", "keys: {retention: 10m}", "keys.retention: 10m0s: want 0"},
		{"a misspelt retention", "keys: {retension: 1h}", `keys.retension: unknown field (did you mean "retention"?)`},
		{"a bad admin rate", "admin: {rate_limit: lots}", `rate "lots"`},
		{"an empty admin rate", "admin: {rate_limit: null}", "admin.rate_limit: must be a rate like 600/m, or none"},
		{"a misspelt admin field", "admin: {ratelimit: 1/s}", `admin.ratelimit: unknown field (did you mean "rate_limit"?)`},
		{"a TLS certificate without its key", "tls: {cert_file: /etc/tls/tls.crt}", "tls: set cert_file and key_file together"},
		{"a TLS key without its certificate", "tls: {key_file: /etc/tls/tls.key}", "tls: set cert_file and key_file together"},
		{"a client CA without TLS", "tls: {client_ca_file: /etc/tls/ca.crt}", "tls.client_ca_file: needs cert_file and key_file"},
		{"a misspelt TLS field", "tls: {certfile: /x}", `tls.certfile: unknown field (did you mean "cert_file"?)`},
		{"a misspelt metrics field", "metrics: {gprc: true}", `metrics.gprc: unknown field (did you mean "grpc"?)`},
		{"metrics.grpc that is not a boolean", "metrics: {grpc: yes please}", "metrics.grpc"},
		{"a misspelt policy field", "policies: [{name: a, mach: {}}]", `policies[0].mach: unknown field (did you mean "match"?)`},
		{"a misspelt selector", "policies: [{name: a, match: {host: [a.example.com]}}]", `policies[0].match.host: unknown field (did you mean "hosts"?)`},
		{"a policy named default", "policies: [{name: default}]", `policies[0].name: "default" is the policy of the top-level routes`},
		{"two policies of one name", "policies: [{name: a}, {name: a}]", `policies[1].name: "a" already names policies[0]`},
		{"a policy name with a capital", "policies: [{name: Billing}]", `policies[0].name: "Billing": 1 to 63 characters`},
		{"a policy without a name", "policies: [{match: {hosts: [a.example.com]}}]", `policies[0].name: "": 1 to 63 characters`},
		{"a bad policy unmatched", "policies: [{name: a, unmatched: allow}]", `policies[0].unmatched: "allow": want deny or authenticate`},
		{"a misspelt mode", "policies: [{name: a, mode: shdow}]", `policies[0].mode: "shdow": want enforce or shadow (did you mean "shadow"?)`},
		{"a bad top-level mode", "mode: dryrun", `mode: "dryrun": want enforce or shadow`},
		{"a bad route mode", "policies: [{name: a, routes: [{path: /x, mode: audit}]}]", `policies[0].routes[0].mode: "audit"`},
		{"a bad route in a policy", "policies: [{name: a, routes: [{path: /x, methods: [get]}]}]", "policies[0].routes[0].methods"},
		{"an empty source list in a policy", "policies: [{name: a, sources: []}]", "policies[0].sources: at least one key source, or leave sources out"},
		{"a bad source in a policy", "policies: [{name: a, sources: [{header: X-Key}]}]", "policies[0].sources[0].header"},
		{"a bad policy rate", "policies: [{name: a, rate_limit: {default: lots}}]", `policies[0].rate_limit.default: rate "lots"`},
		{"a forward_meta name no key can have", "forward_meta: [Plan]", `forward_meta[0]: "Plan": names are 1 to 64 characters`},
		{"a policy forwarding an entry twice", "policies: [{name: a, forward_meta: [plan, plan]}]", `policies[0].forward_meta[1]: "plan" is named twice`},
		{"a misspelt unselected", "unselected: defualt", `unselected: "defualt": want default or deny (did you mean "default"?)`},
		{"a context key YAML reads as a boolean (on)", "policies: [{name: a, match: {context: {on: x}}}]", `policies[0].match.context: a key read as "true"`},
		{"a context key YAML reads as a boolean (n)", "policies: [{name: a, match: {context: {n: x}}}]", `policies[0].match.context: a key read as "false"`},
		{"a context value YAML reads as a boolean", "policies: [{name: a, match: {context: {tier: yes}}}]", "policies.match.context: want string, got bool (YAML reads an unquoted on, off, yes, no, y or n as a boolean: quote it)"},
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

// TLS is off and the gRPC server's own metrics are off unless the file
// says otherwise; both take effect for every listener.
func TestTLSAndMetricsSettings(t *testing.T) {
	cfg, err := Parse(nil)
	require.NoError(t, err)
	assert.False(t, cfg.TLS.Enabled())
	assert.False(t, cfg.Metrics.GRPC)
	cfg, err = Parse([]byte("tls: {cert_file: /etc/tls/tls.crt, key_file: /etc/tls/tls.key, client_ca_file: /etc/ca/ca.crt}\nmetrics: {grpc: true}\n"))
	require.NoError(t, err)
	assert.Equal(t, TLS{CertFile: "/etc/tls/tls.crt", KeyFile: "/etc/tls/tls.key", ClientCAFile: "/etc/ca/ca.crt"}, cfg.TLS)
	assert.True(t, cfg.TLS.Enabled())
	assert.True(t, cfg.Metrics.GRPC)
}

func TestPoliciesParseWithTheirDefaults(t *testing.T) {
	cfg, err := Parse([]byte(`
routes: [{path: /api/users, permissions: [read:users], mode: shadow}]
forward_meta: [plan]
unselected: deny
policies:
  - name: billing
    match:
      context: {policy: billing}
      principals: ["spiffe://cluster.local/ns/billing/sa/billing"]
      hosts: [billing.example.com, "*.billing.example.com"]
    routes: [{path: "/invoices/**", permissions: [read:invoices]}]
    sources: [{header: x-billing-key}]
    rate_limit: {default: 100/m}
    mode: shadow
    forward_meta: [plan, tenant_id]
  - name: orders
    routes: [{path: /orders}]
`))
	require.NoError(t, err)
	assert.Equal(t, ModeEnforce, cfg.Mode, "the default policy enforces unless told otherwise")
	assert.Equal(t, ModeShadow, cfg.Routes[0].Mode)
	assert.Equal(t, []string{"plan"}, cfg.ForwardMeta)
	assert.Equal(t, UnselectedDeny, cfg.Unselected)
	require.Len(t, cfg.Policies, 2)
	b := cfg.Policies[0]
	assert.Equal(t, "billing", b.Name)
	assert.Equal(t, map[string]string{"policy": "billing"}, b.Match.Context)
	assert.Equal(t, []string{"spiffe://cluster.local/ns/billing/sa/billing"}, b.Match.Principals)
	assert.Equal(t, []string{"billing.example.com", "*.billing.example.com"}, b.Match.Hosts)
	assert.Equal(t, []Source{{Header: "x-billing-key"}}, b.Sources)
	assert.Equal(t, ratelimit.Rate{N: 100, Window: time.Minute}, *b.RateLimit.Default)
	assert.Equal(t, ModeShadow, b.Mode)
	assert.Equal(t, []string{"plan", "tenant_id"}, b.ForwardMeta)
	assert.Equal(t, "deny", b.Unmatched)

	o := cfg.Policies[1]
	assert.Equal(t, "deny", o.Unmatched, "a policy's unmatched defaults to deny")
	assert.Equal(t, ModeEnforce, o.Mode)
	assert.Nil(t, o.Sources, "no sources of its own: the top-level ones")
	assert.Nil(t, o.RateLimit.Default, "no default rate of its own: the top-level one")

	cfg, err = Parse(nil)
	require.NoError(t, err)
	assert.Empty(t, cfg.Policies)
	assert.Equal(t, UnselectedDefault, cfg.Unselected)
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

func TestAListenerCanBeTurnedOff(t *testing.T) {
	for _, v := range []string{"off", `"off"`, `""`, "false"} {
		cfg, err := Parse([]byte("listen: {admin: " + v + "}"))
		require.NoError(t, err, v)
		assert.False(t, cfg.Listen.Admin.Enabled(), v)
		assert.True(t, cfg.Listen.GRPC.Enabled())
	}
}

func TestCacheMaxStaleDefaultsToFiveMinutesAndIsAtLeastTheTTL(t *testing.T) {
	cfg, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, 5*time.Minute, time.Duration(cfg.Cache.MaxStale))

	cfg, err = Parse([]byte("cache: {ttl: 1m, max_stale: 1h}\n"))
	require.NoError(t, err)
	assert.Equal(t, time.Hour, time.Duration(cfg.Cache.MaxStale))

	cfg, err = Parse([]byte("cache: {ttl: 1h}\n"))
	require.NoError(t, err, "a long ttl without a max_stale is no error")
	assert.Equal(t, time.Hour, time.Duration(cfg.Cache.MaxStale), "an unset max_stale follows a longer ttl")

	for _, text := range []string{"cache: {max_stale: 10s}\n", "cache: {ttl: 10m, max_stale: 5m}\n"} {
		_, err = Parse([]byte(text))
		assert.ErrorContains(t, err, "cache.max_stale: ", text)
		assert.ErrorContains(t, err, "shorter than cache.ttl", text)
	}
	_, err = Parse([]byte("cache: {max_stale: later}\n"))
	assert.ErrorContains(t, err, `bad duration "later"`)
}

func TestFailedAttemptsHaveAPerAddressAndAProcessBudget(t *testing.T) {
	cfg, err := Parse(nil)
	require.NoError(t, err)
	assert.Equal(t, ratelimit.Rate{N: 100, Window: time.Minute}, *cfg.RateLimit.FailedAttempts)
	assert.Equal(t, ratelimit.Rate{N: 1000, Window: time.Second}, *cfg.RateLimit.FailedAttemptsTotal)

	cfg, err = Parse([]byte("rate_limit: {failed_attempts: none, failed_attempts_total: 50/s}\n"))
	require.NoError(t, err)
	assert.True(t, cfg.RateLimit.FailedAttempts.IsZero())
	assert.Equal(t, ratelimit.Rate{N: 50, Window: time.Second}, *cfg.RateLimit.FailedAttemptsTotal)

	_, err = Parse([]byte("rate_limit: {failed_attempts_totl: 5/s}\n"))
	assert.ErrorContains(t, err, `rate_limit.failed_attempts_totl: unknown field (did you mean "failed_attempts_total"?)`)
}

func TestAMissingPepperIsRefusedOutsideADevelopmentSetup(t *testing.T) {
	tests := []struct {
		name, text, pepper string
		wantErr            string // "" = accepted
	}{
		{"a pepper is set", "", "a-long-random-secret", ""},
		{"no pepper", "", "", "hashing.pepper_env: $EXTAUTHZ_PEPPER is empty or unset"},
		{"no pepper variable named", "hashing: {pepper_env: \"\"}\n", "a-long-random-secret", "hashing.pepper_env: no pepper variable is named"},
		{"no pepper in a development setup", "development: true\n", "", ""},
		{"development: false is production", "development: false\n", "", "development: true"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("EXTAUTHZ_PEPPER", tt.pepper)
			cfg, err := Parse([]byte(tt.text))
			require.NoError(t, err, "loading a config never needs the pepper (keys list, revoke)")
			err = cfg.CheckPepper()
			if tt.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// A field given twice is an error, not the last one silently winning: a
// second permissions line, or a second routes block further down a long
// file, would otherwise open what the first one closed, and config check
// would call it ok.
func TestAFieldGivenTwiceIsAnError(t *testing.T) {
	for _, text := range []string{
		"routes:\n  - path: /admin/**\n    permissions: [admin:all]\n    permissions: []\n",
		"routes: [{path: /admin/**, permissions: [admin:all]}]\nunmatched: deny\nroutes: [{path: /public, public: true}]\nunmatched: authenticate\n",
		"mode: enforce\nmode: shadow\n",
		"store: {backend: redis, backend: embedded}\n",
	} {
		_, err := Parse([]byte(text))
		require.Error(t, err, text)
		assert.Contains(t, err.Error(), "already set", text)
	}
}

// The *_env fields name a variable; putting the secret itself there is an
// easy slip (pepper_env: <the pepper>). Such a value is refused if it
// cannot be a variable's name, and no message quotes it either way.
func TestASecretWrittenWhereItsVariableGoesIsNeverEchoed(t *testing.T) {
	const b64 = "Zq8kR2pL+x9vW4mT/7nB3cY6hJ1sD5fG0a=" // openssl rand -base64
	const alnum = "Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a"  // a secret that is also a valid name
	for _, tt := range []struct{ text, field string }{
		{"hashing: {pepper_env: \"" + b64 + "\"}", "hashing.pepper_env"},
		{"store: {backend: redis, redis: {password_env: \"" + b64 + "\"}}", "store.redis.password_env"},
		{"store: {backend: redis, redis: {addrs: [a:1], master_name: m, sentinel_username: u, sentinel_password_env: \"" + b64 + "\"}}", "store.redis.sentinel_password_env"},
	} {
		_, err := Parse([]byte(tt.text))
		require.Error(t, err, tt.text)
		assert.Contains(t, err.Error(), tt.field+": not an environment variable name")
		assert.NotContains(t, err.Error(), "Zq8kR2pL")
	}
	_, err := Parse([]byte("store: {backend: redis, redis: {url: \"redis://127.0.0.1:6379/0?password=" + alnum + "\"}}"))
	require.ErrorContains(t, err, "store.redis.url: must not contain a password", "a password in the query is one too")
	assert.NotContains(t, err.Error(), "Zq8kR2pL")
	// A password after "user:" that starts with '/', '?', '#' or digits
	// and one of them does not read as a password: the url splits
	// elsewhere, and the rest would be printed as its path or query.
	for _, u := range []string{
		"redis://default:/" + alnum + "@127.0.0.1:1/0",
		"redis://default:4711/" + alnum + "@127.0.0.1:1/0",
		"redis://default:4711?" + alnum + "@127.0.0.1:1/0",
		"redis://default:#" + alnum + "@127.0.0.1:1/0",
		"redis://:/" + alnum + "@127.0.0.1:1",
		"redis://h:6379/" + alnum,
	} {
		_, err := Parse([]byte("store: {backend: redis, redis: {url: \"" + u + "\"}}"))
		require.ErrorContains(t, err, "store.redis.url: does not read as redis://host:port/db", u)
		assert.NotContains(t, err.Error(), "Zq8kR2pL")
	}
	for _, u := range []string{"redis://h", "redis://h:6379", "redis://h:6379/", "redis://h:6379/15", "rediss://[::1]:6380/0", "redis://user@h:6379/0?pool_size=20"} {
		_, err := Parse([]byte("store: {backend: redis, redis: {url: \"" + u + "\"}}"))
		assert.NoError(t, err, u)
	}
	cfg, err := Parse([]byte("hashing: {pepper_env: " + alnum + "}"))
	require.NoError(t, err)
	err = cfg.CheckPepper()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "hashing.pepper_env")
	assert.NotContains(t, err.Error(), "Zq8kR2pL", "a name that does not look like one is not quoted")
	cfg, err = Parse([]byte("hashing: {pepper_env: MY_PEPPER}"))
	require.NoError(t, err)
	assert.Contains(t, cfg.CheckPepper().Error(), "$MY_PEPPER is empty or unset", "a conventional name still is")
}

// The decoder's own strict reading decides what a field given twice is, so
// that no other reading of the file can disagree with it. A field a merge
// key brings in and the mapping gives again counts too: refused with a
// message that says how to write it.
func TestADuplicateAsTheDecoderReadsItIsRefused(t *testing.T) {
	for _, text := range []string{
		"routes:\n  - &admin {path: /api/admin/**, permissions: [admin]}\n  - <<: *admin\n    path: /internal/**\n",
		"routes: [{path: /a, permissions: [x]}]\n\"routes\": [{path: /b, public: true}]\n",
		"&k routes: [{path: /a, permissions: [x]}]\n*k : [{path: /b, public: true}]\n",
		"policies:\n  - name: p\n    match: {context: {on: a, true: b}}\n",
		"policies:\n  - name: p\n    match: {context: {1: a, 01: b}}\n",
	} {
		_, err := Parse([]byte(text))
		require.Error(t, err, text)
		assert.Contains(t, err.Error(), "already set in map", text)
		assert.Contains(t, err.Error(), "write it once", text)
	}
	cfg, err := Parse([]byte("routes:\n  - &admin {path: /api/admin/**, permissions: [admin]}\n  - <<: *admin\n"))
	require.NoError(t, err, "a merge key alone is fine")
	assert.Equal(t, []string{"admin"}, cfg.Routes[1].Permissions)
}

// store.redis.addrs are host:port addresses, and nothing else: a login
// written into one ("user:pw@host:6379", or a whole url) would be printed
// wherever the store is named (config check, serve's start line, the keys
// commands' "wrote to") and by the dialer's own errors. It is refused, as
// a password in the url is, without quoting the address.
func TestARedisAddressWithALoginIsRefusedWithoutEchoingIt(t *testing.T) {
	const secret = "Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a"
	for _, addr := range []string{
		secret + "@redis-0:6379",
		"extauthz:" + secret + "@redis-0:6379",
		"redis://:" + secret + "@redis-0:6379",
		"rediss://extauthz:" + secret + "@redis-0:6379/0",
	} {
		for _, text := range []string{
			"store: {backend: redis, redis: {addrs: [\"redis-1:6379\", \"" + addr + "\"]}}",
			"store: {backend: redis, redis: {master_name: m, addrs: [\"" + addr + "\"]}}",
		} {
			_, err := Parse([]byte(text))
			require.Error(t, err, addr)
			assert.Contains(t, err.Error(), "store.redis.addrs[", addr)
			assert.NotContains(t, err.Error(), secret, addr)
		}
	}
	for _, addr := range []string{"redis-0:6379", "10.0.0.7:6380", "[fd00::7]:6379", "redis-0.redis.extauthz.svc.cluster.local:26379"} {
		_, err := Parse([]byte("store: {backend: redis, redis: {addrs: [\"" + addr + "\"]}}"))
		assert.NoError(t, err, addr)
	}
}

// audit.queue_size is a buffer made when the server (or a keys command)
// starts: one too large to make panicked there, after config check had
// called the file valid. Its bound is the config's.
func TestTheAuditQueueHasAnUpperBound(t *testing.T) {
	for _, n := range []string{"9223372036854775807", "1048577"} {
		_, err := Parse([]byte("audit: {queue_size: " + n + "}"))
		require.Error(t, err, n)
		assert.Contains(t, err.Error(), "audit.queue_size", n)
	}
	cfg, err := Parse([]byte("audit: {queue_size: 1048576}"))
	require.NoError(t, err)
	assert.Equal(t, 1<<20, cfg.Audit.QueueSize)
}

// The YAML decoder reads a file's first document and drops the rest without
// a word: routes or a policy after a "---" (two files joined, a rendered
// template) or after a "..." would be silently missing, with every
// protection they give. Such a file is refused; a leading "---" and empty
// documents after the first say nothing and are fine.
func TestAFileOfMoreThanOneDocumentIsRefused(t *testing.T) {
	const admin = "routes: [{path: \"/api/admin/**\", permissions: [admin]}]\n"
	for _, text := range []string{
		"unmatched: authenticate\n---\n" + admin,
		"---\nunmatched: authenticate\n---\n" + admin,
		"unmatched: authenticate\n...\n" + admin,
		"unmatched: authenticate\n...\n---\n" + admin,
		"unmatched: authenticate\n---\n---\n" + admin,
		"unmatched: authenticate\n--- " + admin,
		"unmatched: authenticate\n---\nunselected: deny\n",
		"unmatched: authenticate\n---\n[]\n",
		"unmatched: authenticate\n---\nfalse\n",
	} {
		_, err := Parse([]byte(text))
		require.Error(t, err, text)
		assert.Contains(t, err.Error(), "parse yaml:", text)
		assert.Contains(t, err.Error(), "one", text)
	}
	for _, text := range []string{
		admin,
		"---\n" + admin,
		admin + "---\n",
		admin + "...\n",
		admin + "---\n# nothing more\n",
		admin + "--- ~\n",
	} {
		cfg, err := Parse([]byte(text))
		require.NoError(t, err, text)
		require.Len(t, cfg.Routes, 1, text)
		assert.Equal(t, []string{"admin"}, cfg.Routes[0].Permissions, text)
	}
}

// A list written with no value (methods: with nothing after it, null, ~, a
// template's empty rendering) decodes as if left out, which means every
// method, or a policy's top-level sources. methods: [] is refused for
// exactly that reason; null is refused too, with the path named.
func TestANullListIsRefusedLikeAnEmptyOne(t *testing.T) {
	for _, tt := range []struct{ name, text, want string }{
		{"methods: with nothing after it", "routes:\n  - path: /status\n    public: true\n    methods:\n", "routes[0].methods: written with no value (null)"},
		{"methods: null", "routes: [{path: /status, public: true, methods: null}]\n", "routes[0].methods"},
		{"methods: ~", "routes: [{path: /status, public: true, methods: ~}]\n", "routes[0].methods"},
		{"methods: null in a policy", "policies: [{name: b, match: {hosts: [b.example.com]}, routes: [{path: /s, public: true, methods: null}]}]\n", "policies[0].routes[0].methods"},
		{"a policy's sources: null", "policies: [{name: b, match: {hosts: [b.example.com]}, sources: null}]\n", "policies[0].sources"},
		{"routes: null", "routes: null\n", "routes: written with no value"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.text))
			require.Error(t, err, "a null list was read as left out")
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	_, err := Parse([]byte("routes: [{path: /status, public: true}]\n"))
	require.NoError(t, err, "a list left out is its default")
}

// Three settings that each trade away a protection when mistyped (an h for
// an s, a zero too many) have a ceiling: the ttl and max_stale are how long
// a revocation may go unseen, and the audit streams fill the key store's
// Redis, which never evicts, with what any client sends.
func TestSettingsThatWeakenAProtectionHaveACeiling(t *testing.T) {
	for _, tt := range []struct{ text, want string }{
		{"cache: {ttl: 720h}\n", "cache.ttl: 720h0m0s: want at most 1h0m0s"},
		{"cache: {max_stale: 87600h}\n", "cache.max_stale: 87600h0m0s: want at most 24h0m0s"},
		{"store: {backend: redis}\naudit: {sink: redis, stream_cap: 2000000000}\n", "audit.stream_cap: 2000000000: want at most 1000000"},
	} {
		_, err := Parse([]byte(tt.text))
		require.Error(t, err, tt.text)
		assert.Contains(t, err.Error(), tt.want)
	}
	for _, text := range []string{"cache: {ttl: 1h, max_stale: 24h}\n", "store: {backend: redis}\naudit: {sink: redis, stream_cap: 1000000}\n"} {
		_, err := Parse([]byte(text))
		require.NoError(t, err, text)
	}
}

// Numbers in plain decimal digits, and text that looks like a number once
// quoted, read one way to every YAML reader and are taken as they are.
func TestNumbersThatReadOneWayAreTaken(t *testing.T) {
	cfg, err := Parse([]byte("client_ip: {xff_trusted_hops: 10}\ncache: {size: 0x10, ttl: 30s}\n" +
		"policies: [{name: a, match: {context: {tier: \"010\", plan: '1_000'}}}]\n"))
	require.NoError(t, err)
	assert.Equal(t, 10, cfg.ClientIP.XFFTrustedHops)
	assert.Equal(t, 16, cfg.Cache.Size)
	assert.Equal(t, map[string]string{"tier": "010", "plan": "1_000"}, cfg.Policies[0].Match.Context)
}
