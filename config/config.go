// Package config is extauthz's one configuration loader: the YAML file the
// README's Configuration section shows, strict (an unknown field is an error
// naming its path), with a default for every field so that an empty file
// works. Typed values (rates, durations, the store-error policy, the key
// format) are parsed once, here. Secrets are never in the file: it names
// the environment variables that hold them.
//
// It only reads and checks: the packages it configures do not read it
// (cmd/extauthz translates it into their own types), and compiling routes
// into a matcher is authz's job.
package config

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	yamlv2 "go.yaml.in/yaml/v2"
	yamlv3 "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// Config is the whole file.
type Config struct {
	Listen    Listen    `json:"listen"`
	TLS       TLS       `json:"tls"`
	Store     Store     `json:"store"`
	Hashing   Hashing   `json:"hashing"`
	Cache     Cache     `json:"cache"`
	Keys      Keys      `json:"keys"`
	Sources   []Source  `json:"sources"`
	ClientIP  ClientIP  `json:"client_ip"`
	RateLimit RateLimit `json:"rate_limit"`
	Routes    []Route   `json:"routes"`
	Unmatched string    `json:"unmatched"` // deny | authenticate
	Paths     Paths     `json:"paths"`
	HTTPMode  HTTPMode  `json:"http_mode"`
	Audit     Audit     `json:"audit"`
	Log       Log       `json:"log"`
	Leaks     Leaks     `json:"leaks"`
	Admin     Admin     `json:"admin"`
	Metrics   Metrics   `json:"metrics"`
	// Development declares a development setup: the one thing it relaxes is
	// the hashing pepper, which may then be missing (see CheckPepper).
	Development bool `json:"development"`

	// Mode and ForwardMeta are the default policy's, as Policy's are a
	// named policy's.
	Mode        Mode     `json:"mode"`
	ForwardMeta []string `json:"forward_meta"`
	// Policies are the named policies besides the default one, which the
	// top-level routes, unmatched, sources, rate_limit.default, mode and
	// forward_meta make.
	Policies []Policy `json:"policies"`
	// Unselected is what a request no policy selects gets: the default
	// policy, or 403 no_policy.
	Unselected Unselected `json:"unselected"`
}

// Admin configures the admin API (its address is listen.admin).
type Admin struct {
	// RateLimit is how many requests each calling key may make to the
	// admin API, counted apart from its decisions (whose own rate limit
	// applies too); "none" turns it off. The default, 600/m, is far above
	// what a person or a deployment script does and far below a loop
	// minting and revoking keys as fast as the store takes them.
	RateLimit *ratelimit.Rate `json:"rate_limit"` // nil = 600/m
}

// Metrics configures what /metrics exports beyond extauthz's own metrics.
type Metrics struct {
	// GRPC exports the gRPC server's metrics by service, method and status
	// (grpc_server_started_total, grpc_server_handled_total,
	// grpc_server_msg_received_total, grpc_server_msg_sent_total). Off by
	// default: they cost 0.7–1.3 µs and two allocations per check, as much
	// as the rest of the check handler, for what extauthz_decisions_total
	// mostly tells already; what they add is the count of RPC errors.
	GRPC bool `json:"grpc"`
}

// Leaks configures the GitHub secret-scanning endpoint (POST
// /v1/leaks/github on the HTTP listener): off unless a key file is set.
type Leaks struct {
	// GitHubKeysFile is GitHub's public-keys document for secret scanning
	// (the JSON of its meta/public_keys/secret_scanning API), saved by the
	// operator. Reports signed by any key in it are accepted.
	GitHubKeysFile string `json:"github_keys_file"`
}

// Listen holds the listener addresses; "" or off disables one.
type Listen struct {
	GRPC  Addr `json:"grpc"`
	HTTP  Addr `json:"http"`
	Admin Addr `json:"admin"`
	// Debug serves Go's profiles (/debug/pprof/) and nothing else; off by
	// default. It asks for no credential, so it belongs on loopback.
	Debug Addr `json:"debug"`
	// MaxConnectionsPerClient caps the connections one client (an address;
	// an IPv6 /64) holds open on each listener: one past it is closed as
	// soon as it is accepted.
	MaxConnectionsPerClient int `json:"max_connections_per_client"`
}

// DefaultMaxConnectionsPerClient is listen.max_connections_per_client's
// default: far above what one proxy opens (Envoy keeps a connection or a few
// per worker thread; nginx and Caddy one per request in flight), and at
// about 30 KiB a busy connection, some 30 MiB for one client at most.
const DefaultMaxConnectionsPerClient = 1024

// TLS is what every listener (gRPC, HTTP, admin) serves TLS with; off
// while CertFile is empty. The files are read at start and again when they
// change (a renewed certificate is served without a restart).
type TLS struct {
	// CertFile and KeyFile are the server's certificate chain and private
	// key, PEM (as in a kubernetes.io/tls Secret: tls.crt, tls.key).
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	// ClientCAFile, when set, turns on mutual TLS: a client must present a
	// certificate signed by one of the CAs in this PEM file, or the
	// handshake fails.
	ClientCAFile string `json:"client_ca_file"`
}

// Enabled reports whether the listeners serve TLS.
func (t TLS) Enabled() bool { return t.CertFile != "" }

// Addr is a listen address, "host:port", or "" when the listener is off.
// YAML 1.1 reads a bare off (or false, no) as a boolean; those mean off too.
type Addr string

// UnmarshalJSON reads a string, or false for "off".
func (a *Addr) UnmarshalJSON(b []byte) error {
	if string(b) == "false" {
		*a = ""
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want an address like \":9001\" or off, got %s", b)
	}
	if s == "off" {
		s = ""
	}
	*a = Addr(s)
	return nil
}

// Enabled reports whether the listener is on.
func (a Addr) Enabled() bool { return a != "" }

// Store selects and configures the key store.
type Store struct {
	Backend string `json:"backend"` // embedded | redis
	Path    string `json:"path"`
	Redis   Redis  `json:"redis"`
}

// Redis configures the Redis backend (standalone by URL, Cluster by addrs,
// Sentinel by master_name + addrs), how to log in to it and how to talk TLS.
type Redis struct {
	URL        string   `json:"url"`
	Addrs      []string `json:"addrs"`
	MasterName string   `json:"master_name"`
	// Username is the ACL user to log in as ("" = the default user, or the
	// user in the URL).
	Username    string `json:"username"`
	PasswordEnv string `json:"password_env"`
	// SentinelUsername and SentinelPasswordEnv log in to the Sentinels
	// themselves (master_name only), when they require it.
	SentinelUsername    string   `json:"sentinel_username"`
	SentinelPasswordEnv string   `json:"sentinel_password_env"`
	TLS                 RedisTLS `json:"tls"`
	Prefix              string   `json:"prefix"`
	Timeout             Duration `json:"timeout"` // what one check may wait on Redis in all
	// ConfirmReplicas is how many replicas must acknowledge a change to a
	// key (create, revoke, expire, update, rotate) before it is reported
	// done, so that a failover cannot undo it unnoticed; ConfirmTimeout is
	// how long to wait for them. 0 (the default) does not wait.
	ConfirmReplicas int      `json:"confirm_replicas"`
	ConfirmTimeout  Duration `json:"confirm_timeout"`
	// PoolSize is how many connections a replica opens to each Redis node
	// at most (0: the Redis client's default, 10 for each CPU the Go
	// runtime uses). One is held by the key change feed's blocking read and
	// one by the rate limiter's batch in flight, so at least
	// minRedisPoolSize.
	PoolSize int `json:"pool_size"`

	// Password is read from the environment variable PasswordEnv by Load,
	// SentinelPassword from SentinelPasswordEnv.
	Password         string `json:"-"`
	SentinelPassword string `json:"-"`
}

// RedisTLS says how to talk TLS to Redis: on for a rediss:// url, or with
// enabled for addrs (Cluster nodes, Sentinels and the primary they name).
// Certificates are always verified.
type RedisTLS struct {
	Enabled bool `json:"enabled"`
	// CAFile is a PEM file of the CAs that sign the servers' certificates
	// ("" = the system's roots).
	CAFile string `json:"ca_file"`
	// CertFile and KeyFile are a client certificate and its key, for a Redis
	// that requires one; re-read when they change.
	CertFile string `json:"cert_file"`
	KeyFile  string `json:"key_file"`
	// ServerName is the name the servers' certificates must carry ("" = the
	// host of each address).
	ServerName string `json:"server_name"`
}

// Hashing names the environment variable holding the HMAC pepper.
type Hashing struct {
	PepperEnv string `json:"pepper_env"`

	// Pepper is read from PepperEnv by Load; empty means plain SHA-256.
	Pepper []byte `json:"-"`
}

// Cache sizes the in-process key cache.
type Cache struct {
	Size int      `json:"size"`
	TTL  Duration `json:"ttl"`
	// NegativeTTL is how long "no such key" is trusted; 0 caches it not at
	// all.
	NegativeTTL Duration `json:"negative_ttl"`
	// MaxStale bounds how long after the store last confirmed a key the
	// cache may still answer with it while the store is unreachable; past
	// it the key's checks answer 503. At least TTL; unset, 5 minutes or the
	// TTL, whichever is longer.
	MaxStale Duration `json:"max_stale"`
}

// Keys sets the format of new keys, the per-owner limit, and how long the
// records of dead keys are kept.
type Keys struct {
	Prefix      string `json:"prefix"`
	MaxPerOwner int    `json:"max_per_owner"`
	// Format is the format of Prefix, made by keystore.NewFormat when the
	// file is checked: the one place a prefix is validated.
	Format keystore.Format `json:"-"`
	// Retention is how long a key is kept after it stopped being live
	// (revoked, expired, or rotated away and past its grace period) before
	// the server purges it; 0 keeps every key forever.
	Retention Duration `json:"retention"`
}

// MinRetention is the shortest keys.retention other than 0: a shorter one
// would forget what became of a key while its clients may still use it
// (they would get invalid_key instead of revoked_key).
const MinRetention = time.Hour

// Source is one place a key may come from: exactly one of Header, Query,
// Cookie; Scheme only with Header (e.g. "Bearer" for Authorization).
type Source struct {
	Header string `json:"header,omitempty"`
	Scheme string `json:"scheme,omitempty"`
	Query  string `json:"query,omitempty"`
	Cookie string `json:"cookie,omitempty"`
}

// ClientIP says how to find the client's address: the peer, or the Nth
// X-Forwarded-For entry from the right.
type ClientIP struct {
	XFFTrustedHops int `json:"xff_trusted_hops"`
}

// RateLimit holds the default per-key limit and the store-failure policy.
type RateLimit struct {
	Default      *ratelimit.Rate            `json:"default"`        // nil = 1000/h; "none" = no limit
	OnStoreError ratelimit.StoreErrorPolicy `json:"on_store_error"` // local | allow | deny
	// FailedAttempts bounds the store lookups that find no key, per client
	// address block (an IPv4 address, an IPv6 /64) and process: past it,
	// keys of that block the cache does not know answer 429 without a
	// lookup. Keys in the cache, and malformed keys, are never held up.
	FailedAttempts *ratelimit.Rate `json:"failed_attempts"`
	// FailedAttemptsTotal is the same budget for the whole process, all
	// addresses together: past it, keys the cache does not know answer 503.
	FailedAttemptsTotal *ratelimit.Rate `json:"failed_attempts_total"`
}

// Route is one entry of the route table; the first match wins.
type Route struct {
	Path        string          `json:"path"`
	Methods     []string        `json:"methods,omitempty"`
	Permissions []string        `json:"permissions,omitempty"`
	Public      bool            `json:"public,omitempty"`
	RateLimit   *ratelimit.Rate `json:"rate_limit,omitempty"`
	// Mode overrides the policy's mode for this route; "" keeps it.
	Mode Mode `json:"mode,omitempty"`
}

// Mode is enforce (decisions are answered) or shadow (decisions are made,
// audited and counted, and every request is allowed); "" means the
// default: enforce for a policy, the policy's for a route.
type Mode string

// The values of mode.
const (
	ModeEnforce Mode = "enforce"
	ModeShadow  Mode = "shadow"
)

// Unselected is the value of unselected.
type Unselected string

// The values of unselected.
const (
	UnselectedDefault Unselected = "default"
	UnselectedDeny    Unselected = "deny"
)

// Policy is one named policy: which requests select it (Match) and what
// decides them, as the top-level settings decide the default policy's.
type Policy struct {
	Name  string      `json:"name"`
	Match PolicyMatch `json:"match"`
	// Routes and Unmatched as the top-level ones; unmatched defaults to
	// deny, whatever the top level says.
	Routes    []Route `json:"routes"`
	Unmatched string  `json:"unmatched"`
	// Sources replace the top-level sources for this policy; unset, the
	// policy has the top-level ones.
	Sources   []Source        `json:"sources"`
	RateLimit PolicyRateLimit `json:"rate_limit"`
	Mode      Mode            `json:"mode"`
	// ForwardMeta names key metadata entries sent upstream as
	// x-authz-meta-<name> ("_" written "-") on an allowed request.
	ForwardMeta []string `json:"forward_meta"`
}

// PolicyMatch says which requests select a policy, tried in this order
// across all policies: Envoy's context_extensions (every entry given must
// be there), the destination principal, the host.
type PolicyMatch struct {
	Context    map[string]string `json:"context"`
	Principals []string          `json:"principals"`
	Hosts      []string          `json:"hosts"`
}

// PolicyRateLimit is a policy's own default key rate limit.
type PolicyRateLimit struct {
	Default *ratelimit.Rate `json:"default"` // nil = the top-level rate_limit.default; "none" = no limit
}

// Paths holds the opt-in ways of reading a request path, for upstreams that
// read paths more loosely than Envoy's route matcher. The defaults reject
// every spelling such upstreams could read differently; each opt-in accepts
// one such spelling, exactly as that kind of upstream reads it.
type Paths struct {
	// MatrixParams is what a ";" in a path segment means: MatrixReject (the
	// default) answers 400; MatrixServlet removes ";params" from every
	// segment before dot segments are resolved, as servlet containers do, so
	// "/a/..;x/b" is "/b".
	MatrixParams MatrixParams `json:"matrix_params"`
	// CaseInsensitive says the upstreams fold letter case beyond ASCII.
	// Matching stays case-sensitive, and a path whose ASCII letter case
	// decides which route it gets is 400 either way (Express and ASP.NET
	// Core fold ASCII case by default); with it, a path that holds a
	// percent-encoded non-ASCII byte is answered 400 too.
	CaseInsensitive bool `json:"case_insensitive"`
}

// MatrixParams is the value of paths.matrix_params.
type MatrixParams string

// The values of paths.matrix_params.
const (
	MatrixReject  MatrixParams = "reject"
	MatrixServlet MatrixParams = "servlet"
)

// HTTPMode configures the HTTP (forward-auth) listener: where a decision
// request reads the original request from.
type HTTPMode struct {
	Prefix         string `json:"prefix"`
	Original       string `json:"original"` // path | x-original | x-forwarded
	XFFTrustedHops *int   `json:"xff_trusted_hops"`
	// QueryAndCookieKeys is what a decision request does with a credential
	// sent in the query or a cookie, which no proxy that calls an HTTP auth
	// service can take off the request it forwards: refuse (the default)
	// answers it 400, pass decides it and lets the upstream have it.
	QueryAndCookieKeys string `json:"query_and_cookie_keys"`
}

// The values of http_mode.query_and_cookie_keys.
const (
	QueryAndCookieKeysRefuse = "refuse"
	QueryAndCookieKeysPass   = "pass"
)

// Audit selects where audit events go.
type Audit struct {
	Sink string `json:"sink"` // stdout | redis | none
	// StreamCap is about how many events each Redis stream keeps (the
	// decisions', and the key changes'). It shares
	// the key store's Redis, which never evicts: an event takes about 550
	// bytes there, and up to 4.3 KB when a client fills the fields it
	// controls (path, host, user agent) to their 512-byte cap.
	StreamCap int64 `json:"stream_cap"`
	QueueSize int   `json:"queue_size"`
}

// Log configures the service's own logs (not the audit events).
type Log struct {
	Level  string `json:"level"`  // debug | info | warn | error
	Format string `json:"format"` // json | text
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"30s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("bad duration %q (want e.g. 30s, 5m, 24h)", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// DefaultAuditStreamCap is audit.stream_cap's default, the cap of each of
// the two audit streams (decisions, key changes): at most about 86 MB
// of the key store's Redis even when every event is as large as a client
// can make it (20,000 × 4.3 KB), about 11 MB for typical events.
const DefaultAuditStreamCap = 20_000

// MaxCacheTTL and MaxCacheMaxStale bound cache.ttl and cache.max_stale:
// each is how long a revocation may go unseen (the ttl where the change
// stream fails, max_stale while the store is down), so a value past them
// is a mistyped unit (720h for 720s) rather than a choice.
const (
	MaxCacheTTL      = time.Hour
	MaxCacheMaxStale = 24 * time.Hour
)

// MaxAuditStreamCap bounds audit.stream_cap. The streams live in the key
// store's Redis, which never evicts, and any client that reaches the
// listeners adds events to the decisions' one: a cap of a million is some
// 4.3 GB when each event is as large as a client can make it. A Redis
// filled to its maxmemory refuses every write, revocations included.
const MaxAuditStreamCap = 1_000_000

// MaxAuditQueueSize bounds audit.queue_size. The queue is made whole when
// a server or a keys command starts, so a size beyond what can be made
// would stop it there (a panic, after config check passed the file); a
// million events waiting already means the sink has been down for a while,
// and more would only hold more memory before they are dropped anyway.
const MaxAuditQueueSize = 1 << 20

// The bounds of store.redis.confirm_replicas and confirm_timeout: more
// replicas than a deployment runs would never confirm, and an admin request
// (10 s) must outlast the wait.
const (
	maxConfirmReplicas = 16
	maxConfirmTimeout  = 5 * time.Second
)

// The bounds of store.redis.pool_size (and of a url's ?pool_size=): the
// key change feed's blocking read holds one connection and the rate
// limiter's batch in flight another, so fewer than four leaves a key
// lookup waiting on both; more than 1024 per replica is a fleet that
// exhausts Redis's maxclients (10,000) at ten replicas.
const (
	minRedisPoolSize = 4
	maxRedisPoolSize = 1024
)

// Default returns the configuration an empty file gives.
func Default() Config {
	hour := ratelimit.Rate{N: 1000, Window: time.Hour}
	failures := ratelimit.Rate{N: 100, Window: time.Minute}
	adminRate := ratelimit.Rate{N: 600, Window: time.Minute}
	failuresTotal := ratelimit.Rate{N: 1000, Window: time.Second}
	one := 1
	return Config{
		Listen: Listen{GRPC: ":9001", HTTP: ":9002", Admin: "127.0.0.1:9003", MaxConnectionsPerClient: DefaultMaxConnectionsPerClient},
		Store: Store{Backend: "embedded", Path: "./data/extauthz.db", Redis: Redis{
			URL: "redis://127.0.0.1:6379/0", PasswordEnv: "REDIS_PASSWORD", Prefix: "extauthz:",
			Timeout: Duration(200 * time.Millisecond), ConfirmTimeout: Duration(time.Second),
		}},
		Hashing: Hashing{PepperEnv: "EXTAUTHZ_PEPPER"},
		Cache: Cache{Size: 100000, TTL: Duration(30 * time.Second), NegativeTTL: Duration(5 * time.Second),
			MaxStale: Duration(5 * time.Minute)},
		Keys: Keys{Prefix: "sk", MaxPerOwner: 100, Retention: Duration(30 * 24 * time.Hour)},
		Sources: []Source{
			{Header: "x-api-key"},
			{Header: "authorization", Scheme: "Bearer"},
			{Query: "api_key"},
			{Cookie: "api_key"},
		},
		RateLimit: RateLimit{Default: &hour, OnStoreError: ratelimit.PolicyLocal, FailedAttempts: &failures, FailedAttemptsTotal: &failuresTotal},
		Unmatched: "deny",
		Paths:     Paths{MatrixParams: MatrixReject},
		HTTPMode:  HTTPMode{Prefix: "/authz", Original: "path", XFFTrustedHops: &one, QueryAndCookieKeys: QueryAndCookieKeysRefuse},
		Audit:     Audit{Sink: "stdout", StreamCap: DefaultAuditStreamCap, QueueSize: 8192},
		Log:       Log{Level: "info", Format: "json"},
		Admin:     Admin{RateLimit: &adminRate},

		Mode:       ModeEnforce,
		Unselected: UnselectedDefault,
	}
}

// Load reads, decodes and validates the file at path ("" = defaults only),
// then reads the secrets from the environment variables it names. Errors
// name the file and the field.
func Load(path string) (*Config, error) {
	cfg, _, err := LoadSetting(path)
	return cfg, err
}

// LoadSetting is Load, and reports whether the file sets anything at all:
// one that is empty, blank, only comments or an empty document or mapping
// is the defaults, which have no routes and deny every request.
func LoadSetting(path string) (cfg *Config, setsSomething bool, err error) {
	var data []byte
	if path != "" {
		if data, err = os.ReadFile(path); err != nil {
			return nil, false, fmt.Errorf("read config: %w", err)
		}
	}
	cfg, setsSomething, err = parse(data)
	if err != nil {
		if path == "" {
			return nil, false, err
		}
		return nil, false, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, setsSomething, nil
}

// Parse decodes and validates YAML config text (empty text = defaults) and
// resolves secrets from the environment.
func Parse(data []byte) (*Config, error) {
	cfg, _, err := parse(data)
	return cfg, err
}

// parse is Parse, and reports whether data sets any field.
func parse(data []byte) (_ *Config, setsSomething bool, _ error) {
	cfg := Default()
	// Strict: a field given twice is an error, never "last wins" (a second
	// routes: block would silently drop the first one's protected routes).
	// The decoder's own strict mode, so that what counts as the same key
	// (an alias, "on" and "true", "1" and "01") is what the decoder reads.
	// It also refuses a field that a merge key (<<: *anchor) brings in and
	// the mapping gives again: the one reading that cannot disagree with
	// the decoder's, at the price of writing such a route out.
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		msg := withoutValues(err.Error())
		if strings.Contains(msg, "already set in map") {
			return nil, false, fmt.Errorf("parse yaml: %s (a field given twice, or given again beside a merge key (<<) that brings it: write it once)", msg)
		}
		return nil, false, fmt.Errorf("parse yaml: %s", msg)
	}
	if err := oneDocument(data); err != nil {
		return nil, false, err
	}
	if err := keysStayApart(data, js); err != nil {
		return nil, false, err
	}
	if err := numbersReadOneWay(data); err != nil {
		return nil, false, err
	}
	if s := strings.TrimSpace(string(js)); s != "null" && s != "" {
		var tree any
		if err := json.Unmarshal(js, &tree); err != nil {
			return nil, false, fmt.Errorf("parse yaml: %w", err)
		}
		if _, ok := tree.(map[string]any); !ok {
			return nil, false, errors.New("config must be a mapping of fields (listen, store, routes, ...)")
		}
		if err := checkFields("", tree, reflect.TypeFor[Config]()); err != nil {
			return nil, false, err
		}
		// Lists replace the defaults rather than merge into them.
		if m := tree.(map[string]any); m["sources"] != nil {
			cfg.Sources = nil
		}
		if err := json.Unmarshal(js, &cfg); err != nil {
			return nil, false, describeJSONError(err)
		}
		// An unset max_stale is the default or the ttl, whichever is longer.
		if cache, _ := tree.(map[string]any)["cache"].(map[string]any); cache["max_stale"] == nil {
			cfg.Cache.MaxStale = max(cfg.Cache.MaxStale, cfg.Cache.TTL)
		}
		// However it is written (fields, empty sections, the defaults
		// spelt out), a file that comes to the defaults sets nothing.
		setsSomething = !reflect.DeepEqual(cfg, Default())
	}
	if err := cfg.validate(); err != nil {
		return nil, false, err
	}
	cfg.Store.Redis.Password = os.Getenv(cfg.Store.Redis.PasswordEnv)
	if cfg.Store.Redis.SentinelPasswordEnv != "" {
		cfg.Store.Redis.SentinelPassword = os.Getenv(cfg.Store.Redis.SentinelPasswordEnv)
	}
	if cfg.Hashing.PepperEnv != "" {
		cfg.Hashing.Pepper = []byte(os.Getenv(cfg.Hashing.PepperEnv))
	}
	return &cfg, setsSomething, nil
}

// withoutValues is a YAML decoder's message with each value it quotes
// (between backquotes: "cannot unmarshal !!str `...` into int") left out.
// The value is the file's text, which may be a secret written where it
// does not belong: a Redis url with its password, given a tag (!!int) that
// the decoder refuses before the config's own checks, which never quote
// one, could read it.
//
// Everything from the first backquote to the last goes: a value may hold a
// backquote of its own, and pairing them one by one would show what
// follows it.
func withoutValues(msg string) string {
	i, j := strings.IndexByte(msg, '`'), strings.LastIndexByte(msg, '`')
	if i < 0 || j == i {
		return msg
	}
	return msg[:i] + "(a value, not shown)" + msg[j+1:]
}

// numbersReadOneWay refuses a plain scalar that YAML's two versions read
// as different values. The decoder reads YAML 1.1, where 010 is the octal
// 8, 1_000 is 1000 and 0b11 is 3; YAML 1.2 (and most other tools an
// operator checks a file with) reads 010 as 10 and the other two as text.
// xff_trusted_hops: 010 would trust 8 hops. Quoted, such text is text.
func numbersReadOneWay(data []byte) error {
	var root yamlv3.Node
	if err := yamlv3.Unmarshal(data, &root); err != nil {
		return nil // the decoder that read the config took it; its reading stands
	}
	var walk func(n *yamlv3.Node) error
	walk = func(n *yamlv3.Node) error {
		if n.Kind == yamlv3.ScalarNode && n.Style == 0 && twoWayNumber(n.Value) {
			return fmt.Errorf("parse yaml: line %d: %s reads as one number to this reader (YAML 1.1: a leading 0 is octal, _ is dropped, 0b is binary) and as another value to YAML 1.2: write the number in plain decimal digits, or quote it if it is text",
				n.Line, n.Value)
		}
		if n.Kind == yamlv3.MappingNode {
			// A key is a name (a field, a context key Envoy sends as it
			// is written): one YAML reads as a number is turned into that
			// number's text, so 0x10 would name "16" and 1.10 "1.1".
			for i := 0; i < len(n.Content); i += 2 {
				k := n.Content[i]
				if k.Kind == yamlv3.AliasNode {
					// *a as a key is whatever a's node reads as: a
					// number anchored elsewhere (&a 0x1) names "1".
					return fmt.Errorf("parse yaml: line %d: the key *%s is an alias: write the key itself", k.Line, k.Value)
				}
				if k.Kind != yamlv3.ScalarNode {
					continue
				}
				if k.Style == 0 && (k.ShortTag() == "!!int" || k.ShortTag() == "!!float") {
					return fmt.Errorf("parse yaml: line %d: the key %s reads as a number, and would be read as that number's text: quote it (\"%s\")", k.Line, k.Value, k.Value)
				}
				// A tag written on a key (!!int 0x10, !!binary ...) makes
				// it other text than the file shows in the same way.
				if k.Style&yamlv3.TaggedStyle != 0 && k.ShortTag() != "!!str" {
					return fmt.Errorf("parse yaml: line %d: the key %s is tagged %s, and would be read as other text than it shows: write it untagged, quoted", k.Line, k.Value, k.ShortTag())
				}
			}
		}
		for _, c := range n.Content {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	return walk(&root)
}

// twoWayNumber reports whether v, a plain scalar, is a number whose value
// YAML 1.1 and 1.2 read differently: octal digits after a leading zero
// that make another number in decimal (010), an underscore among digits,
// or 0b.
func twoWayNumber(v string) bool {
	v = strings.TrimLeft(v, "+-")
	if len(v) < 2 || v[0] < '0' || v[0] > '9' {
		return false
	}
	if v[0] == '0' && (v[1] == 'b' || v[1] == 'B') {
		return len(v) > 2 && strings.Trim(v[2:], "01_") == ""
	}
	if strings.Trim(v, "0123456789_") != "" {
		return false // a float, a time, a word
	}
	if strings.Contains(v, "_") {
		return true
	}
	// A leading zero: YAML 1.1 reads octal digits as octal (with an 8 or
	// a 9 among them, as decimal), YAML 1.2 as decimal. 01 to 07 are the
	// same either way.
	octal, err := strconv.ParseInt(v, 8, 64)
	if v[0] != '0' || err != nil {
		return false
	}
	decimal, err := strconv.ParseInt(v, 10, 64)
	return err != nil || octal != decimal
}

// keysStayApart refuses a mapping whose keys YAML keeps apart but that
// turn into one field name on the way to JSON: 1 and "1", 0x10 and "16",
// null and "null". The decoder's strict mode sees two keys; the JSON names
// one twice, and the last would silently win (a policy's context selector
// the one the file happened to list last). data and js are the config as
// YAML and as the JSON it became; each mapping of one is paired with the
// object of the other by walking both.
func keysStayApart(data, js []byte) error {
	var y any
	if err := yamlv2.Unmarshal(data, &y); err != nil {
		return nil // the decoder that made js took it; its reading stands
	}
	var j any
	if err := json.Unmarshal(js, &j); err != nil {
		return nil
	}
	return keysApart("", y, j)
}

func keysApart(path string, y, j any) error {
	switch y := y.(type) {
	case map[any]any:
		jm, ok := j.(map[string]any)
		if !ok {
			return nil
		}
		if len(jm) < len(y) {
			where := path
			if where == "" {
				where = "the top level"
			}
			return fmt.Errorf("%s: two keys read as one field name (such as 1 and \"1\", or 0x10 and \"16\"): write each key once, as a string", where)
		}
		for k, v := range y {
			name := fmt.Sprint(k)
			if jv, ok := jm[name]; ok {
				if err := keysApart(join(path, name), v, jv); err != nil {
					return err
				}
			}
		}
	case []any:
		jl, ok := j.([]any)
		if !ok || len(jl) != len(y) {
			return nil
		}
		for i := range y {
			if err := keysApart(fmt.Sprintf("%s[%d]", path, i), y[i], jl[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// oneDocument refuses a file that holds more than one YAML document. The
// decoder reads the first and drops the rest without a word, so routes, a
// policy or an unselected: deny written after a "---" (two files joined, a
// rendered template) or after a "..." would be silently left out: every
// protection they give gone, while config check passes. Empty documents
// after the first (a trailing "---") say nothing, and are let be.
func oneDocument(data []byte) error {
	dec := yamlv2.NewDecoder(bytes.NewReader(data))
	for n := 1; ; n++ {
		var doc any
		switch err := dec.Decode(&doc); {
		case err == io.EOF:
			return nil
		case err != nil:
			return fmt.Errorf("parse yaml: after the first document: %w (a file holds one document: write everything in it)", err)
		case n > 1 && doc != nil:
			return fmt.Errorf("parse yaml: document %d: the file holds more than one YAML document (\"---\"), and only the first would be read: write everything in one", n)
		}
	}
}

// CheckPepper reports a missing hashing pepper: without one, keys are
// stored as plain SHA-256, and keys made before a pepper is set stop
// matching once it is. Only a declared development setup may run so; the
// error names the variable and the way out.
func (c *Config) CheckPepper() error {
	if len(c.Hashing.Pepper) > 0 || c.Development {
		return nil
	}
	if c.Hashing.PepperEnv == "" {
		return errors.New("hashing.pepper_env: no pepper variable is named, so keys would be hashed with plain SHA-256; " +
			"name one (e.g. EXTAUTHZ_PEPPER) and set it to a long random secret, or declare a development setup with development: true")
	}
	return fmt.Errorf("hashing.pepper_env: %s is empty or unset, so keys would be hashed with plain SHA-256; "+
		"set it to a long random secret (and keep it: keys hashed under one pepper do not match under another), "+
		"or declare a development setup with development: true", EnvRef(c.Hashing.PepperEnv))
}

// validEnvName reports whether name can name an environment variable:
// letters, digits and _, not starting with a digit.
func validEnvName(name string) bool {
	for i, r := range name {
		if !(r == '_' || 'A' <= r && r <= 'Z' || 'a' <= r && r <= 'z' || i > 0 && '0' <= r && r <= '9') {
			return false
		}
	}
	return name != ""
}

// EnvRef is how a message names the variable an *_env field names: $NAME
// when it looks like a variable's name as variables are written (upper
// case, digits and _, with an _ and a letter: EXTAUTHZ_PEPPER), else "the
// variable it names". Someone may have written the secret itself where its
// variable's name goes, and a message must not print it: a random secret
// has lower-case letters, or, made with base32 or upper-case hex, none but
// A-Z and digits, never an _.
func EnvRef(name string) string {
	underscore, letter := false, false
	for _, r := range name {
		switch {
		case r == '_':
			underscore = true
		case 'A' <= r && r <= 'Z':
			letter = true
		case '0' <= r && r <= '9':
		default:
			return "the variable it names"
		}
	}
	if !underscore || !letter || len(name) > 64 {
		return "the variable it names"
	}
	return "$" + name
}

// checkFields walks the decoded YAML tree against the Go type and reports
// the first field the type does not have, with its full path, so that a typo
// like "permision" is an error rather than a silently ignored setting.
func checkFields(path string, v any, t reflect.Type) error {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch val := v.(type) {
	case map[string]any:
		if t.Kind() != reflect.Struct {
			return nil // type errors are reported by the decoder
		}
		fields := map[string]reflect.Type{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name != "" && name != "-" {
				fields[name] = f.Type
			}
		}
		keys := make([]string, 0, len(val))
		for k := range val {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				return fmt.Errorf("%s: unknown field%s", join(path, k), suggest(k, fields))
			}
			if err := checkFields(join(path, k), val[k], ft); err != nil {
				return err
			}
		}
	case nil:
		// A list written with no value ("methods:", "null", "~", or a
		// template's empty rendering) decodes as if it were left out, and
		// a list left out means its default: every method, the top-level
		// sources. An empty list ([]) is refused where that would widen
		// access; null must not be the way around it.
		if t.Kind() == reflect.Slice {
			return fmt.Errorf("%s: written with no value (null): list its entries, or leave the field out for its default", path)
		}
	case []any:
		if t.Kind() != reflect.Slice {
			return nil
		}
		for i, e := range val {
			if err := checkFields(fmt.Sprintf("%s[%d]", path, i), e, t.Elem()); err != nil {
				return err
			}
		}
	case string:
		// A typed value (a rate, the store-error policy) is parsed here
		// first, so that its error names its path; the decoder then parses
		// it into the Config.
		if u, ok := reflect.New(t).Interface().(encoding.TextUnmarshaler); ok {
			if err := u.UnmarshalText([]byte(val)); err != nil {
				return fmt.Errorf("%s: %w", path, err)
			}
		}
	}
	return nil
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// suggest names the known field closest to a misspelt one.
func suggest(k string, fields map[string]reflect.Type) string {
	best, bestD := "", 3
	for name := range fields {
		if d := editDistance(k, name); d < bestD || d == bestD && name < best {
			best, bestD = name, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// suggestValue names the allowed value closest to a misspelt one, if any is close.
func suggestValue(v string, allowed ...string) string {
	fields := map[string]reflect.Type{}
	for _, a := range allowed {
		fields[a] = nil
	}
	return suggest(v, fields)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func describeJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		hint := ""
		if te.Value == "bool" && te.Type.Kind() == reflect.String {
			hint = " (YAML reads an unquoted on, off, yes, no, y or n as a boolean: quote it)"
		}
		return fmt.Errorf("%s: want %s, got %s%s", te.Field, te.Type, te.Value, hint)
	}
	// Errors from our own UnmarshalJSON/UnmarshalText methods carry no path in
	// encoding/json; they do say what was wrong and with which value.
	return fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "json: "))
}

// listenerNames are the listen fields, in the order serve opens them.
var listenerNames = [...]string{"listen.grpc", "listen.http", "listen.admin", "listen.debug"}

// addr is the address of the listener named by one of listenerNames.
func (l *Listen) addr(name string) Addr {
	switch name {
	case "listen.grpc":
		return l.GRPC
	case "listen.http":
		return l.HTTP
	case "listen.admin":
		return l.Admin
	}
	return l.Debug
}

// clash names two enabled listeners that would bind the same port: the
// same non-zero port on the same host, or where either host is every
// address ("", 0.0.0.0, ::, in any spelling: Go binds both families for
// either). Addresses are compared as IPs (::ffff:127.0.0.1 is 127.0.0.1,
// 0:0:0:0:0:0:0:1 is ::1), localhost as 127.0.0.1 (what Go binds for it),
// ports as numbers (09001 is 9001, 00 any free port); other host names as
// written.
func (l *Listen) clash() (string, string, bool) {
	type bound struct {
		name, host string
		port       int
	}
	var seen []bound
	norm := func(h string) string {
		if h == "localhost" {
			return "127.0.0.1"
		}
		if ip, err := netip.ParseAddr(h); err == nil {
			if ip = ip.Unmap(); ip.IsUnspecified() {
				return ""
			}
			return ip.String()
		}
		return h
	}
	for _, name := range listenerNames {
		a := l.addr(name)
		if !a.Enabled() {
			continue
		}
		host, p, err := net.SplitHostPort(string(a))
		port, perr := strconv.Atoi(p)
		if err != nil || perr != nil || port == 0 {
			continue
		}
		host = norm(host)
		for _, b := range seen {
			if b.port == port && (b.host == host || b.host == "" || host == "") {
				return b.name, name, true
			}
		}
		seen = append(seen, bound{name, host, port})
	}
	return "", "", false
}

func (c *Config) validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
	}
	for name, addr := range map[string]Addr{"listen.grpc": c.Listen.GRPC, "listen.http": c.Listen.HTTP, "listen.admin": c.Listen.Admin, "listen.debug": c.Listen.Debug} {
		if !addr.Enabled() {
			continue
		}
		if _, _, err := net.SplitHostPort(string(addr)); err != nil {
			bad(name, "%q is not host:port (e.g. \":9001\" or \"127.0.0.1:9003\")", addr)
		}
	}
	if a, b, ok := c.Listen.clash(); ok {
		bad(b, "the same port as %s (%s, %s): two listeners cannot share one, and serve would fail to start", a, c.Listen.addr(a), c.Listen.addr(b))
	}
	if n := c.Listen.MaxConnectionsPerClient; n < 1 || n > 1<<20 {
		bad("listen.max_connections_per_client", "%d: want 1 to 1048576", n)
	}
	// A variable's name, never the secret: a value no variable can be named
	// (a base64 secret) is refused without quoting it.
	for field, name := range map[string]string{"hashing.pepper_env": c.Hashing.PepperEnv,
		"store.redis.password_env": c.Store.Redis.PasswordEnv, "store.redis.sentinel_password_env": c.Store.Redis.SentinelPasswordEnv} {
		if name != "" && !validEnvName(name) {
			bad(field, "not an environment variable name (letters, digits and _): name the variable that holds the secret, never the secret itself")
		}
	}
	if (c.TLS.CertFile == "") != (c.TLS.KeyFile == "") {
		bad("tls", "set cert_file and key_file together")
	}
	if c.TLS.ClientCAFile != "" && c.TLS.CertFile == "" {
		bad("tls.client_ca_file", "needs cert_file and key_file (mutual TLS is TLS first)")
	}
	switch c.Store.Backend {
	case "embedded":
		if c.Store.Path == "" {
			bad("store.path", "required with the embedded backend")
		}
		// A Redis set up here and not used would leave each replica with a
		// store of its own: a key revoked on one would still pass on the
		// others. Say so rather than run that way.
		r, d := c.Store.Redis, Default().Store.Redis
		if len(r.Addrs) == 0 {
			r.Addrs = nil
		}
		if !reflect.DeepEqual(r, d) {
			bad("store.redis", "set, but store.backend is embedded, which does not use Redis: set store.backend: redis, or remove store.redis")
		}
	case "redis":
		r := c.Store.Redis
		if len(r.Addrs) > 0 && r.URL != "" && r.URL != Default().Store.Redis.URL {
			bad("store.redis", "set url or addrs, not both")
		}
		if r.MasterName != "" && len(r.Addrs) == 0 {
			bad("store.redis.addrs", "required with master_name (the Sentinel addresses)")
		}
		for i, a := range r.Addrs {
			validateRedisAddr(fmt.Sprintf("store.redis.addrs[%d]", i), a, bad)
		}
		if u, err := url.Parse(r.URL); r.URL != "" && (err != nil || u.Scheme != "redis" && u.Scheme != "rediss") {
			bad("store.redis.url", "want redis://host:port/db or rediss://...")
		} else if _, ok := u.User.Password(); ok && err == nil || err == nil && u.Query().Has("password") {
			bad("store.redis.url", "must not contain a password; name its environment variable in password_env")
		} else if r.URL != "" && !redisURLShape(u) {
			bad("store.redis.url", "does not read as redis://host:port/db: a password written into it whose first characters are '/', '?', '#' or digits "+
				"breaks it up so (not shown: it may hold one); name the password's environment variable in password_env")
		}
		if r.Prefix == "" {
			bad("store.redis.prefix", "must not be empty")
		}
		validateRedisAuth(r, bad)
		if r.Timeout <= 0 {
			bad("store.redis.timeout", "must be positive")
		}
		if r.ConfirmReplicas < 0 || r.ConfirmReplicas > maxConfirmReplicas {
			bad("store.redis.confirm_replicas", "%d: want 0 (do not wait) to %d replicas", r.ConfirmReplicas, maxConfirmReplicas)
		}
		if r.ConfirmReplicas > 0 && (r.ConfirmTimeout <= 0 || time.Duration(r.ConfirmTimeout) > maxConfirmTimeout) {
			bad("store.redis.confirm_timeout", "%s: want more than 0 and at most %s (a change's request waits this long when a replica is behind)", time.Duration(r.ConfirmTimeout), maxConfirmTimeout)
		}
		validateRedisPoolSize(r, bad)
	default:
		bad("store.backend", "%q: want embedded or redis", c.Store.Backend)
	}
	if c.Cache.Size < 1 {
		bad("cache.size", "must be at least 1")
	}
	if c.Cache.TTL <= 0 || c.Cache.NegativeTTL < 0 {
		bad("cache.ttl", "ttl must be positive and negative_ttl not negative")
	} else if c.Cache.MaxStale < c.Cache.TTL {
		bad("cache.max_stale", "%s is shorter than cache.ttl (%s), within which a cached key is served anyway; set it to at least the ttl",
			time.Duration(c.Cache.MaxStale), time.Duration(c.Cache.TTL))
	} else if c.Cache.TTL > Duration(MaxCacheTTL) {
		bad("cache.ttl", "%s: want at most %s; where the change stream fails, the ttl is how long a revoked key is still answered from the cache",
			time.Duration(c.Cache.TTL), MaxCacheTTL)
	} else if c.Cache.MaxStale > Duration(MaxCacheMaxStale) {
		bad("cache.max_stale", "%s: want at most %s; it is how long a key revoked during a store outage may still be answered",
			time.Duration(c.Cache.MaxStale), MaxCacheMaxStale)
	}
	if c.Cache.NegativeTTL > Duration(MaxCacheTTL) {
		bad("cache.negative_ttl", "%s: want at most %s; where the change stream fails, it is how long a new key may still be answered as unknown",
			time.Duration(c.Cache.NegativeTTL), MaxCacheTTL)
	}
	if c.Keys.MaxPerOwner < 0 {
		bad("keys.max_per_owner", "must not be negative (0 = no limit)")
	}
	if r := time.Duration(c.Keys.Retention); r < 0 || r > 0 && r < MinRetention {
		bad("keys.retention", "%s: want 0 (keep dead keys forever) or at least %s, e.g. 720h", r, MinRetention)
	}
	if c.Admin.RateLimit == nil {
		bad("admin.rate_limit", "must be a rate like 600/m, or none")
	}
	if f, err := keystore.NewFormat(c.Keys.Prefix); err != nil {
		bad("keys.prefix", "%v", err)
	} else {
		c.Keys.Format = f
	}
	if len(c.Sources) == 0 {
		bad("sources", "at least one key source is required")
	}
	validateSources("sources", c.Sources, bad)
	if c.ClientIP.XFFTrustedHops < 0 || c.ClientIP.XFFTrustedHops > 16 {
		bad("client_ip.xff_trusted_hops", "must be 0 to 16")
	}
	if c.RateLimit.Default == nil {
		bad("rate_limit.default", "must be a rate like 1000/h, or none")
	}
	if c.RateLimit.FailedAttempts == nil {
		bad("rate_limit.failed_attempts", "must be a rate like 100/m, or none")
	}
	if c.RateLimit.FailedAttemptsTotal == nil {
		bad("rate_limit.failed_attempts_total", "must be a rate like 1000/s, or none")
	}
	validateRoutes("routes", c.Routes, bad)
	validateUnmatched("unmatched", c.Unmatched, bad)
	validateMode("mode", c.Mode, bad)
	validateForwardMeta("forward_meta", c.ForwardMeta, bad)
	switch c.Unselected {
	case UnselectedDefault, UnselectedDeny:
	default:
		bad("unselected", "%q: want default or deny%s", c.Unselected,
			suggestValue(string(c.Unselected), string(UnselectedDefault), string(UnselectedDeny)))
	}
	if c.Unselected == UnselectedDeny && len(c.Policies) == 0 {
		// Without named policies every request is decided by the default
		// one: the rules that unselected: deny says no request gets by
		// falling through. A policies list that rendered or was edited
		// down to nothing would hand every workload's requests to them.
		bad("unselected", "deny, but no policies are named: every request would be decided by the default policy (the top-level routes), which unselected: deny keeps requests from falling through to; name the policies, or say unselected: default")
	}
	c.validatePolicies(bad)
	switch c.Paths.MatrixParams {
	case MatrixReject, MatrixServlet:
	default:
		bad("paths.matrix_params", "%q: want reject or servlet%s", c.Paths.MatrixParams,
			suggestValue(string(c.Paths.MatrixParams), string(MatrixReject), string(MatrixServlet)))
	}
	hm := c.HTTPMode
	if !strings.HasPrefix(hm.Prefix, "/") || strings.HasSuffix(hm.Prefix, "/") || slices.Contains([]string{"/healthz", "/readyz", "/metrics"}, hm.Prefix) {
		bad("http_mode.prefix", "%q: want a path like /authz (leading slash, no trailing slash, not /healthz, /readyz or /metrics)", hm.Prefix)
	}
	switch hm.Original {
	case "path", "x-original", "x-forwarded":
	default:
		bad("http_mode.original", "%q: want path, x-original or x-forwarded", hm.Original)
	}
	if hm.XFFTrustedHops == nil || *hm.XFFTrustedHops < 0 || *hm.XFFTrustedHops > 16 {
		bad("http_mode.xff_trusted_hops", "must be 0 to 16")
	}
	switch hm.QueryAndCookieKeys {
	case QueryAndCookieKeysRefuse, QueryAndCookieKeysPass:
	default:
		bad("http_mode.query_and_cookie_keys", "%q: want refuse or pass%s", hm.QueryAndCookieKeys,
			suggestValue(hm.QueryAndCookieKeys, QueryAndCookieKeysRefuse, QueryAndCookieKeysPass))
	}
	switch c.Audit.Sink {
	case "stdout", "none":
	case "redis":
		if c.Store.Backend != "redis" {
			bad("audit.sink", "redis needs store.backend: redis")
		}
	default:
		bad("audit.sink", "%q: want stdout, redis or none", c.Audit.Sink)
	}
	if c.Audit.StreamCap < 1 || c.Audit.QueueSize < 1 {
		bad("audit", "stream_cap and queue_size must be positive")
	} else if c.Audit.QueueSize > MaxAuditQueueSize {
		bad("audit.queue_size", "%d: want at most %d", c.Audit.QueueSize, MaxAuditQueueSize)
	} else if c.Audit.StreamCap > MaxAuditStreamCap {
		bad("audit.stream_cap", "%d: want at most %d (each stream may then hold some 4.3 GB of the key store's Redis, which never evicts, when clients fill their events' fields)",
			c.Audit.StreamCap, MaxAuditStreamCap)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format", "%q: want json or text", c.Log.Format)
	}
	return errors.Join(errs...)
}

// validateSources checks a list of key sources at path.
func validateSources(path string, sources []Source, bad func(field, format string, args ...any)) {
	for i, s := range sources {
		field := fmt.Sprintf("%s[%d]", path, i)
		n := 0
		for _, v := range []string{s.Header, s.Query, s.Cookie} {
			if v != "" {
				n++
			}
		}
		if n != 1 {
			bad(field, "set exactly one of header, query, cookie")
		}
		if s.Scheme != "" && s.Header == "" {
			bad(field, "scheme goes with header")
		}
		if s.Header != "" && (strings.ToLower(s.Header) != s.Header || strings.ContainsAny(s.Header, " :\t")) {
			bad(field+".header", "%q: header names must be lower-case tokens", s.Header)
		} else if strings.ContainsAny(s.Header, "_.") {
			// CGI, WSGI, PHP and Rack read "_" (and PHP ".") as "-": the
			// other spellings of such a name, which extauthz reads against
			// its "-" spelling, would be handed to them unchecked.
			bad(field+".header", "%q: write a header name with \"-\", not \"_\" or \".\" (upstreams read the three alike)", s.Header)
		}
	}
}

// validateRoutes checks a route table at path (the compiled table's own
// checks, of patterns and their order, are authz's).
func validateRoutes(path string, routes []Route, bad func(field, format string, args ...any)) {
	for i, r := range routes {
		field := fmt.Sprintf("%s[%d]", path, i)
		if r.Public && (len(r.Permissions) > 0 || r.RateLimit != nil) {
			bad(field, "a public route takes no permissions or rate_limit (no key is looked up)")
		}
		if r.Methods != nil && len(r.Methods) == 0 {
			// Written, but empty: most likely a template's list that
			// rendered to nothing. Read as every method, it would make a
			// public route public for every method; read as none, it
			// would be a route that decides nothing. Neither is a guess to
			// make.
			bad(field+".methods", "an empty list: name the methods, or leave methods out for every method")
		}
		if r.Permissions != nil && len(r.Permissions) == 0 {
			// The same: a template's empty list, which read as written
			// would open the route to any valid key.
			bad(field+".permissions", "an empty list: name the permissions, or leave permissions out for any valid key")
		}
		for _, m := range r.Methods {
			if m == "" || strings.ToUpper(m) != m || strings.ContainsAny(m, " /") {
				bad(field+".methods", "%q: want upper-case method names like GET", m)
			}
		}
		for _, p := range r.Permissions {
			if p == "" || strings.ContainsAny(p, ", \t") {
				bad(field+".permissions", "%q: permissions are non-empty and contain no comma or space", p)
			}
		}
		if r.Mode != "" {
			validateMode(field+".mode", r.Mode, bad)
		}
	}
}

func validateUnmatched(field, v string, bad func(field, format string, args ...any)) {
	switch v {
	case "deny", "authenticate":
	default:
		bad(field, "%q: want deny or authenticate%s", v, suggestValue(v, "deny", "authenticate"))
	}
}

func validateMode(field string, m Mode, bad func(field, format string, args ...any)) {
	switch m {
	case ModeEnforce, ModeShadow:
	default:
		bad(field, "%q: want enforce or shadow%s", m, suggestValue(string(m), string(ModeEnforce), string(ModeShadow)))
	}
}

// validateForwardMeta checks the metadata names a policy forwards.
func validateForwardMeta(path string, names []string, bad func(field, format string, args ...any)) {
	for i, name := range names {
		field := fmt.Sprintf("%s[%d]", path, i)
		if err := keystore.ValidateMetaName(field, name); err != nil {
			bad(field, "%q: %s", name, err.(*keystore.FieldError).Message)
		} else if slices.Contains(names[:i], name) {
			bad(field, "%q is named twice", name)
		}
	}
}

// validatePolicies checks the named policies' own settings and fills in
// their defaults (unmatched: deny, mode: enforce). Their selectors are
// checked when the decision compiles them: whether two policies could be
// selected alike, or one never, is the decision's knowledge.
func (c *Config) validatePolicies(bad func(field, format string, args ...any)) {
	names := map[string]int{}
	for i := range c.Policies {
		p := &c.Policies[i]
		at := fmt.Sprintf("policies[%d]", i)
		switch err := keystore.ValidatePolicyName(at+".name", p.Name); {
		case err != nil:
			bad(at+".name", "%q: %s", p.Name, err.(*keystore.FieldError).Message)
		case p.Name == "default":
			bad(at+".name", `"default" is the policy of the top-level routes, unmatched, sources and rate_limit; name this one otherwise`)
		default:
			if j, dup := names[p.Name]; dup {
				bad(at+".name", "%q already names policies[%d]", p.Name, j)
			}
			names[p.Name] = i
		}
		if p.Unmatched == "" {
			p.Unmatched = "deny"
		}
		validateUnmatched(at+".unmatched", p.Unmatched, bad)
		if p.Mode == "" {
			p.Mode = ModeEnforce
		}
		validateMode(at+".mode", p.Mode, bad)
		validateRoutes(at+".routes", p.Routes, bad)
		if p.Sources != nil && len(p.Sources) == 0 {
			bad(at+".sources", "at least one key source, or leave sources out for the top-level ones")
		}
		validateSources(at+".sources", p.Sources, bad)
		validateForwardMeta(at+".forward_meta", p.ForwardMeta, bad)
		for _, k := range slices.Sorted(maps.Keys(p.Match.Context)) {
			if k == "true" || k == "false" {
				// A key written on, yes, y, off, no or n unquoted is a
				// boolean to YAML, read back as "true" or "false": a
				// selector no context_extensions entry has, whose
				// workload's requests would go to the default policy.
				bad(at+".match.context", "a key read as %q: YAML reads an unquoted on, off, yes, no, y or n as a boolean; quote the key (\"on\": ...), or name no context key true or false", k)
			}
		}
	}
}

// redisURLShape reports whether u has the shape of a Redis url: a host
// with a port of digits or none, a path naming a database ("/", "/0") or
// none, no fragment and no '@' but the one ending a user name. A password
// written into the url after "user:" that starts with '/', '?' or '#', or
// with digits and then one of them, does not read as a password but splits
// the url elsewhere (host "user:", the rest a path, query or fragment), and
// each of those is printed: where the store is named, by the dialer's
// errors.
func redisURLShape(u *url.URL) bool {
	if u.Opaque != "" || u.Fragment != "" || strings.Contains(u.Host+u.Path+u.RawQuery, "@") {
		return false
	}
	if db, ok := strings.CutPrefix(u.Path, "/"); ok && db != "" {
		if _, err := strconv.ParseUint(db, 10, 32); err != nil {
			return false
		}
	} else if u.Path != "" && u.Path != "/" {
		return false
	}
	if u.Hostname() == "" || strings.HasSuffix(u.Host, ":") {
		return false
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return false
		}
	}
	return true
}

// validateRedisAddr checks one of store.redis.addrs: host:port, nothing
// else. A login written into it (user:pw@host:port, or a whole url) would
// be printed wherever the store is named and by the dialer's errors, so it
// is refused as a password in the url is, and no message quotes the
// address: it may hold the password.
func validateRedisAddr(field, addr string, bad func(field, format string, args ...any)) {
	if strings.ContainsAny(addr, "@/") {
		bad(field, "want host:port only, no scheme or login; name the password's environment variable in password_env and the user in username")
		return
	}
	host, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
		bad(field, "want host:port, e.g. redis-0:6379")
	}
}

// validateRedisPoolSize checks store.redis.pool_size, and the pool size a
// url may set instead (?pool_size=), against the same bounds: a pool too
// small for the change feed and the rate limiter leaves every key lookup
// waiting for a connection, then failing.
func validateRedisPoolSize(r Redis, bad func(field, format string, args ...any)) {
	want := fmt.Sprintf("want 0 (the Redis client's default, 10 per CPU) or %d to %d connections to each node (the key change feed holds one, the rate limiter's batch another)", minRedisPoolSize, maxRedisPoolSize)
	if r.PoolSize != 0 && (r.PoolSize < minRedisPoolSize || r.PoolSize > maxRedisPoolSize) {
		bad("store.redis.pool_size", "%d: %s", r.PoolSize, want)
	}
	u, err := url.Parse(r.URL)
	if r.URL == "" || err != nil {
		return
	}
	if u.Query().Has("pipeline_pool_size") {
		bad("store.redis.url", "?pipeline_pool_size= is not supported: pipelines share the one pool of pool_size")
	}
	if !u.Query().Has("pool_size") {
		return
	}
	if r.PoolSize != 0 {
		bad("store.redis.pool_size", "set here and in the url's ?pool_size=; keep one")
		return
	}
	n, err := strconv.Atoi(u.Query().Get("pool_size"))
	switch {
	case err != nil:
		bad("store.redis.url", "?pool_size= is not a number: %s", want)
	case n != 0 && (n < minRedisPoolSize || n > maxRedisPoolSize):
		bad("store.redis.url", "?pool_size=%d: %s", n, want)
	}
}

// validateRedisAuth checks the login and TLS settings of store.redis: each
// must mean something for the topology chosen, or it is an error rather than
// silently ignored.
func validateRedisAuth(r Redis, bad func(field, format string, args ...any)) {
	byURL := len(r.Addrs) == 0
	u, err := url.Parse(r.URL)
	secure := err == nil && u.Scheme == "rediss"
	if byURL && err == nil {
		if u.User.Username() != "" && r.Username != "" {
			bad("store.redis.username", "the url names a user too; keep one")
		}
		if u.Query().Has("skip_verify") {
			bad("store.redis.url", "skip_verify is not supported: certificates are always verified (set tls.ca_file or tls.server_name)")
		}
	}
	if strings.ContainsAny(r.Username, " \t:@/") {
		bad("store.redis.username", "want an ACL user name (no spaces, ':', '@' or '/'; not quoted here: a login or a password written there would be printed)")
	}
	t := r.TLS
	files := t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
	switch {
	case byURL && t.Enabled && !secure:
		bad("store.redis.tls.enabled", "the url is redis://; use a rediss:// url for TLS")
	case byURL && files && !secure:
		bad("store.redis.tls", "ca_file, cert_file, key_file and server_name need a rediss:// url")
	case !byURL && files && !t.Enabled:
		bad("store.redis.tls", "ca_file, cert_file, key_file and server_name need enabled: true (with addrs)")
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		bad("store.redis.tls", "set cert_file and key_file together")
	}
	if strings.ContainsAny(t.ServerName, ":/ \t@") {
		bad("store.redis.tls.server_name", "%q: want a host name, without port or scheme", t.ServerName)
	}
	if r.MasterName == "" && (r.SentinelUsername != "" || r.SentinelPasswordEnv != "") {
		bad("store.redis", "sentinel_username and sentinel_password_env need master_name (Sentinel)")
	}
	if r.SentinelUsername != "" && r.SentinelPasswordEnv == "" {
		bad("store.redis.sentinel_password_env", "required with sentinel_username")
	}
}
