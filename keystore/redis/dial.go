package redis

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	goredis "github.com/redis/go-redis/v9"
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

	// Username and Password authenticate to Redis (ACL user, or the
	// requirepass password with no username). The password comes from an
	// environment variable the caller resolved, never from the config file.
	Username string
	Password string
	// SentinelPassword authenticates to the Sentinels, when they need it.
	SentinelPassword string
	// DB is the database number (standalone and Sentinel only; a Cluster has
	// only database 0). With URL, the database comes from the URL's path.
	DB int
	// TLS connects to Addrs with TLS (each verified against its own host
	// name). With
	// URL, use the rediss:// scheme instead.
	TLS bool

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
		SentinelPassword: o.SentinelPassword,
		DB:               o.DB,
		PoolSize:         o.PoolSize,
	}
	if o.TLS {
		// No ServerName: crypto/tls takes it from each address dialed, so
		// every Cluster node or Sentinel-announced primary is verified
		// against its own name.
		u.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	t := o.tuning()
	u.DialTimeout, u.ReadTimeout, u.WriteTimeout = t.dial, t.read, t.write
	u.MaxRetries, u.DialerRetries, u.PoolTimeout = t.retries, t.dialerRetries, t.pool
	u.ContextTimeoutEnabled = true
	return goredis.NewUniversalClient(u), nil
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
	case o.URL != "" && o.TLS:
		return errors.New("store.redis: tls is for addrs; use a rediss:// url instead")
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
	opt, err := goredis.ParseURL(o.URL)
	if err != nil {
		return nil, fmt.Errorf("store.redis: url: %v", err)
	}
	if o.Username != "" {
		opt.Username = o.Username
	}
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
