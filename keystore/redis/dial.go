package redis

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Default timeouts. An auth check waits on Redis only when its cache misses,
// and then it must answer quickly either way: a slow Redis is a 503 (or a
// stale cache entry) in a quarter of a second, never a request stuck for the
// go-redis default of 5 s per read.
const (
	DefaultDialTimeout  = time.Second
	DefaultReadTimeout  = 250 * time.Millisecond
	DefaultWriteTimeout = 250 * time.Millisecond
	// DefaultMaxRetries retries a command once, which covers the common case
	// of a pooled connection that a Redis restart closed.
	DefaultMaxRetries = 1
)

// Options says how to reach Redis: a standalone server by URL, a Cluster by
// its seed addresses, or a Sentinel-managed primary by master name and the
// Sentinel addresses. It mirrors the store.redis section of the config, so
// the same client serves the key store, the rate limiter and the audit sink.
type Options struct {
	// URL of a standalone server: redis://[user:password@]host:port/db, or
	// rediss:// for TLS. go-redis query parameters (dial_timeout, …) are
	// accepted; the fields below override them when set.
	URL string
	// Addrs are host:port addresses: one standalone server, the seed nodes
	// of a Cluster (more than one address, or Cluster set), or the Sentinels
	// when MasterName is set.
	Addrs []string
	// MasterName selects Sentinel: the name of the primary the Sentinels at
	// Addrs watch. The client follows failovers.
	MasterName string
	// Cluster forces Redis Cluster with a single address (a managed
	// service's configuration endpoint).
	Cluster bool

	// Username and Password authenticate to Redis: an ACL user and its
	// password, or the requirepass password alone. The password comes from
	// an environment variable the caller resolved, never from the config
	// file. A username may also come from the URL (redis://user@host), not
	// from both.
	Username string
	Password string
	// SentinelUsername and SentinelPassword authenticate to the Sentinels
	// themselves, when they require it (their ACL is their own, not the
	// primary's).
	SentinelUsername string
	SentinelPassword string
	// DB is the database number (standalone and Sentinel only; a Cluster has
	// only database 0). With URL, the database comes from the URL's path.
	DB int
	// TLS says whether and how to talk TLS: to every Cluster node, to the
	// Sentinels and the primary they name, or to the server of a rediss://
	// URL.
	TLS TLSOptions

	// DialTimeout bounds connecting (DefaultDialTimeout when 0).
	DialTimeout time.Duration
	// ReadTimeout and WriteTimeout bound each command on the socket
	// (DefaultReadTimeout and DefaultWriteTimeout when 0). A caller's context
	// deadline, when earlier, wins.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// PoolSize is the number of connections per node (go-redis' default,
	// 10 per CPU, when 0).
	PoolSize int
	// MaxRetries is how often a failed command is retried: 0 means
	// DefaultMaxRetries, -1 means never.
	MaxRetries int
}

// TLSOptions say how to talk TLS to Redis. Certificates are always
// verified: there is no switch to skip that. A private CA goes in CAFile; a
// server known by another name than the address dialled (an IP address, a
// Cluster node announcing its IP) is verified against ServerName.
type TLSOptions struct {
	// Enabled turns TLS on for Addrs. With URL the scheme decides
	// (rediss://); Enabled may only agree with it.
	Enabled bool
	// CAFile is a PEM file of the certificate authorities that sign the
	// servers' certificates; empty trusts the system's roots. It is read
	// once, by Dial.
	CAFile string
	// CertFile and KeyFile are a client certificate and its key (PEM), for
	// servers that require one (tls-auth-clients). Both or neither. They are
	// read again for a new connection whenever either file has changed, so
	// a renewed certificate needs no restart.
	CertFile string
	KeyFile  string
	// ServerName is the name every server's certificate must carry; empty
	// means the host of each address dialled (of the URL, of each seed or
	// announced Cluster node, of the primary a Sentinel names).
	ServerName string
}

// any reports whether a setting other than Enabled is made.
func (t TLSOptions) any() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// Dial checks o and returns a client for it. It does not connect: go-redis
// dials on first use, so a server can start while Redis is still coming up
// (use Ping to wait for it). The caller owns the client and closes it.
func Dial(o Options) (goredis.UniversalClient, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.URL != "" {
		opt, err := o.urlOptions()
		if err != nil {
			return nil, err
		}
		return goredis.NewClient(opt), nil
	}
	u := &goredis.UniversalOptions{
		Addrs:            o.Addrs,
		MasterName:       o.MasterName,
		IsClusterMode:    o.Cluster,
		Username:         o.Username,
		Password:         o.Password,
		SentinelUsername: o.SentinelUsername,
		SentinelPassword: o.SentinelPassword,
		DB:               o.DB,
		PoolSize:         o.PoolSize,
		// Only the commands the store, the limiter and the audit sink need
		// reach Redis, so that its ACL can grant exactly those: no CLIENT
		// SETINFO on connect, no CLIENT MAINT_NOTIFICATIONS (a managed
		// service's feature; failovers are handled by the retry).
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if o.TLS.Enabled {
		// Without a ServerName, crypto/tls takes it from each address
		// dialled, so every Cluster node and Sentinel-named primary is
		// verified against its own name.
		cfg, err := o.TLS.config("")
		if err != nil {
			return nil, err
		}
		u.TLSConfig = cfg
	}
	t := o.tuning()
	u.DialTimeout, u.ReadTimeout, u.WriteTimeout = t.dial, t.read, t.write
	u.MaxRetries, u.DialerRetries, u.PoolTimeout = t.retries, t.dialerRetries, t.pool
	u.ContextTimeoutEnabled = true
	return goredis.NewUniversalClient(u), nil
}

// config builds the TLS configuration, reading CAFile and checking the
// client certificate. host is the name to verify when ServerName is empty
// ("" = each address's own host).
func (t TLSOptions) config(host string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}
	if t.ServerName != "" {
		cfg.ServerName = t.ServerName
	}
	if t.CAFile != "" {
		pem, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("store.redis.tls.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("store.redis.tls.ca_file %s: no PEM certificate in it", t.CAFile)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cc := &clientCert{certFile: t.CertFile, keyFile: t.KeyFile}
		if _, err := cc.load(); err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = cc.get
	}
	return cfg, nil
}

// clientCert hands crypto/tls the client certificate, read again whenever
// either file changed since it was last read (cert-manager and the like
// renew them in place). While a renewal is half written (a new certificate
// next to the old key), the last pair that loaded is used.
type clientCert struct {
	certFile, keyFile string

	mu    sync.Mutex
	stamp [2]os.FileInfo // of the files the pair in cert was read from
	cert  *tls.Certificate
}

// unchanged reports whether a file is still the one read before: the same
// file (a Kubernetes Secret volume renews by swapping in a new one), with
// the same size and modification time.
func unchanged(before, now os.FileInfo) bool {
	return before != nil && os.SameFile(before, now) && before.Size() == now.Size() && before.ModTime().Equal(now.ModTime())
}

func (c *clientCert) get(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cert, err := c.load()
	if err != nil && cert == nil {
		return nil, err
	}
	return cert, nil
}

// load returns the current pair, reading the files if they changed. On a
// read error it returns the error and the last pair that loaded (if any).
func (c *clientCert) load() (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var now [2]os.FileInfo
	var err error
	if now[0], err = os.Stat(c.certFile); err != nil {
		return c.cert, fmt.Errorf("store.redis.tls.cert_file: %w", err)
	}
	if now[1], err = os.Stat(c.keyFile); err != nil {
		return c.cert, fmt.Errorf("store.redis.tls.key_file: %w", err)
	}
	if c.cert != nil && unchanged(c.stamp[0], now[0]) && unchanged(c.stamp[1], now[1]) {
		return c.cert, nil
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return c.cert, fmt.Errorf("store.redis.tls: cert_file %s and key_file %s: %v", c.certFile, c.keyFile, err)
	}
	c.cert, c.stamp = &pair, now
	return c.cert, nil
}

// validate reports the first thing wrong with o, naming the config field.
func (o *Options) validate() error {
	switch {
	case o.URL == "" && len(o.Addrs) == 0:
		return errors.New("store.redis: set url or addrs")
	case o.URL != "" && len(o.Addrs) > 0:
		return errors.New("store.redis: set url or addrs, not both")
	case o.URL != "" && o.MasterName != "":
		return errors.New("store.redis: master_name needs addrs (the Sentinel addresses), not url")
	case o.URL != "" && o.Cluster:
		return errors.New("store.redis: a cluster needs addrs, not url")
	case o.URL != "" && o.TLS.Enabled && !strings.HasPrefix(o.URL, "rediss://"):
		return errors.New("store.redis: tls.enabled with a redis:// url; use a rediss:// url instead")
	case o.URL == "" && o.TLS.any() && !o.TLS.Enabled:
		return errors.New("store.redis.tls: ca_file, cert_file, key_file and server_name need tls.enabled: true (with addrs)")
	case o.URL != "" && o.TLS.any() && !strings.HasPrefix(o.URL, "rediss://"):
		return errors.New("store.redis.tls: ca_file, cert_file, key_file and server_name need a rediss:// url")
	case (o.TLS.CertFile == "") != (o.TLS.KeyFile == ""):
		return errors.New("store.redis.tls: set cert_file and key_file together")
	case strings.ContainsAny(o.TLS.ServerName, ":/ \t@"):
		return fmt.Errorf("store.redis.tls.server_name %q: want a host name, without port or scheme", o.TLS.ServerName)
	case o.URL == "" && o.Username != "" && o.Password == "":
		return fmt.Errorf("store.redis: username %q has no password (set the environment variable password_env names)", o.Username)
	case o.SentinelUsername != "" && o.SentinelPassword == "":
		return fmt.Errorf("store.redis: sentinel username %q has no password", o.SentinelUsername)
	case o.SentinelUsername != "" && o.MasterName == "":
		return errors.New("store.redis: sentinel username set without master_name")
	case o.URL != "" && o.DB != 0:
		return errors.New("store.redis: db is for addrs; put the database in the url path (redis://host:port/1)")
	case o.MasterName != "" && o.Cluster:
		return errors.New("store.redis: set master_name (Sentinel) or cluster, not both")
	case o.isCluster() && o.DB != 0:
		return fmt.Errorf("store.redis: db %d: Redis Cluster has only database 0", o.DB)
	case o.SentinelPassword != "" && o.MasterName == "":
		return errors.New("store.redis: sentinel password set without master_name")
	case o.DB < 0:
		return fmt.Errorf("store.redis: db %d must not be negative", o.DB)
	case o.DialTimeout < 0:
		return fmt.Errorf("store.redis: dial timeout %s must not be negative", o.DialTimeout)
	case o.ReadTimeout < 0:
		return fmt.Errorf("store.redis: read timeout %s must not be negative", o.ReadTimeout)
	case o.WriteTimeout < 0:
		return fmt.Errorf("store.redis: write timeout %s must not be negative", o.WriteTimeout)
	case o.PoolSize < 0:
		return fmt.Errorf("store.redis: pool size %d must not be negative", o.PoolSize)
	case o.MaxRetries < -1:
		return fmt.Errorf("store.redis: max retries %d: want -1 (never), 0 (default) or more", o.MaxRetries)
	}
	for i, a := range o.Addrs {
		if err := checkAddr(a); err != nil {
			return fmt.Errorf("store.redis: addrs[%d] %q: %v", i, a, err)
		}
	}
	return nil
}

func (o *Options) isCluster() bool {
	return o.MasterName == "" && (len(o.Addrs) > 1 || o.Cluster)
}

func checkAddr(a string) error {
	host, port, err := net.SplitHostPort(a)
	if err != nil {
		return errors.New("want host:port")
	}
	if host == "" {
		return errors.New("missing host")
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q: want a number from 1 to 65535", port)
	}
	return nil
}

// urlOptions parses o.URL and applies the other fields. Errors never repeat
// the URL: it may carry a password.
func (o *Options) urlOptions() (*goredis.Options, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("store.redis: url is not a valid URL: %v", err)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("store.redis: url scheme %q: want redis:// or rediss://", u.Scheme)
	}
	if u.Host == "" {
		return nil, errors.New("store.redis: url has no host (want redis://host:port/db)")
	}
	if p, ok := u.User.Password(); ok && p != "" && o.Password != "" {
		return nil, errors.New("store.redis: password set both in the url and from password_env; keep one")
	}
	if u.User.Username() != "" && o.Username != "" {
		return nil, errors.New("store.redis: username set both in the url and in username; keep one")
	}
	if u.Query().Has("skip_verify") {
		return nil, errors.New("store.redis: url: skip_verify is not supported: certificates are always verified (set tls.ca_file or tls.server_name)")
	}
	opt, err := goredis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("store.redis: url: %v", err)
	}
	if o.Username != "" {
		opt.Username = o.Username
	}
	if opt.Username != "" && opt.Password == "" && o.Password == "" {
		return nil, fmt.Errorf("store.redis: username %q has no password (set the environment variable password_env names)", opt.Username)
	}
	if opt.TLSConfig != nil {
		// ParseURL verifies the URL's host; ServerName and CAFile refine that.
		if opt.TLSConfig, err = o.TLS.config(opt.TLSConfig.ServerName); err != nil {
			return nil, err
		}
	}
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if o.Password != "" {
		opt.Password = o.Password
	}
	if o.PoolSize > 0 {
		opt.PoolSize = o.PoolSize
	}
	// Timeouts from the URL's query win over our defaults but not over
	// explicit fields.
	t := o.tuning()
	if o.DialTimeout > 0 || opt.DialTimeout == 0 {
		opt.DialTimeout = t.dial
	}
	if o.ReadTimeout > 0 || opt.ReadTimeout == 0 {
		opt.ReadTimeout = t.read
	}
	if o.WriteTimeout > 0 || opt.WriteTimeout == 0 {
		opt.WriteTimeout = t.write
	}
	if o.MaxRetries != 0 || opt.MaxRetries == 0 {
		opt.MaxRetries = t.retries
	}
	if opt.PoolTimeout == 0 {
		opt.PoolTimeout = t.pool
	}
	opt.DialerRetries = t.dialerRetries
	opt.ContextTimeoutEnabled = true
	return opt, nil
}

type tuning struct {
	dial, read, write, pool time.Duration
	retries, dialerRetries  int
}

// tuning fills in the defaults.
func (o *Options) tuning() tuning {
	t := tuning{dial: o.DialTimeout, read: o.ReadTimeout, write: o.WriteTimeout, retries: o.MaxRetries}
	if t.dial == 0 {
		t.dial = DefaultDialTimeout
	}
	if t.read == 0 {
		t.read = DefaultReadTimeout
	}
	if t.write == 0 {
		t.write = DefaultWriteTimeout
	}
	if t.retries == 0 {
		t.retries = DefaultMaxRetries
	}
	// go-redis re-dials 5 times, 100 ms apart, inside a single command: half
	// a second of a request's time spent on a Redis that is down. One dial
	// per attempt; the command retry above is the retry.
	t.dialerRetries = 1
	// Waiting for a free pooled connection is bounded like a read: a pool
	// exhausted by a slow Redis must not queue requests for seconds.
	t.pool = 2 * t.read
	return t
}
