package redis

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/internal/certfile"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Default timeouts. An auth check waits on Redis only when its cache misses,
// and then it must answer quickly either way: a slow Redis is a 503 (or a
// stale cache entry) in a quarter of a second, never a request stuck for the
// go-redis default of 5 s per read. Options.Timeout, when set, replaces them
// all.
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

	// Timeout bounds each call as a whole: every retry, Cluster redirect,
	// dial and wait for a pooled connection inside one command or pipeline
	// (a blocking read, XREAD BLOCK, gets its block time and a second on
	// top). A caller's context deadline, when earlier, wins. It is also the
	// default of the three socket timeouts below. When 0, calls are bounded
	// by the largest of those.
	Timeout time.Duration
	// DialTimeout bounds connecting (Timeout, else DefaultDialTimeout, when
	// 0).
	DialTimeout time.Duration
	// ReadTimeout and WriteTimeout bound each command on the socket
	// (Timeout, else DefaultReadTimeout and DefaultWriteTimeout, when 0).
	ReadTimeout  time.Duration
	WriteTimeout time.Duration
	// PoolSize is the most connections the client opens to each node
	// (go-redis' default, 10 per CPU, when 0). Pipelines take theirs from
	// the same pool, so it bounds every connection of the client but
	// those of pub/sub, which the server does not use.
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
	// Logger, when set, is told when the client certificate's files are
	// reloaded, and when a change of them does not load (the pair in use
	// stays): a renewal that failed must not pass in silence until the
	// certificate in use expires and Redis refuses every new connection.
	Logger *slog.Logger
}

// any reports whether a setting other than Enabled is made.
func (t TLSOptions) any() bool {
	return t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
}

// Dial checks o and returns a client for it. It does not connect: go-redis
// dials on first use, so a server can start while Redis is still coming up
// (use Ping to wait for it). The caller owns the client and closes it.
//
// Every call on the client ends within Options.Timeout, on every topology:
// go-redis's own bounds are per attempt (a read, a dial), and a Cluster
// client makes up to four attempts (MaxRedirects) with back-off between
// them, each of which may wait out a read timeout on a master that stopped
// answering. So the client carries a hook that gives each call a deadline
// of Timeout, and with ContextTimeoutEnabled every socket wait inside it
// (reads, writes, dials, the Sentinel's answer, the pool) ends there too.
// On a Cluster, a call that fails on the network also makes the client
// read the slot map again (see reloadOnFailure).
func Dial(o Options) (goredis.UniversalClient, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	t := o.tuning()
	if o.URL != "" {
		opt, err := o.urlOptions(t)
		if err != nil {
			return nil, err
		}
		budget := t.call
		if o.Timeout == 0 { // the url's query may have set the socket timeouts
			budget = max(opt.DialTimeout, opt.ReadTimeout, opt.WriteTimeout)
		}
		opt.Dialer = boundReplies(goredis.NewDialer(opt))
		c := goredis.NewClient(opt)
		c.AddHook(callBudget{d: budget})
		return c, nil
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
		PipelinePoolSize: oneConnectionPool,
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
	// go-redis's own dialer (its keep-alive, TLS with each address's name
	// verified), every connection read through the reply bounds. Given a
	// Dialer, go-redis uses it for Cluster nodes, Sentinels and the
	// primary they name alike.
	u.Dialer = boundReplies(goredis.NewDialer(&goredis.Options{DialTimeout: t.dial, TLSConfig: u.TLSConfig}))
	u.DialTimeout, u.ReadTimeout, u.WriteTimeout = t.dial, t.read, t.write
	u.MaxRetries, u.DialerRetries, u.PoolTimeout = t.retries, t.dialerRetries, t.pool
	u.ContextTimeoutEnabled = true
	budget := callBudget{d: t.call}
	switch {
	case o.MasterName != "":
		c := goredis.NewFailoverClient(u.Failover())
		c.AddHook(budget)
		return c, nil
	case o.isCluster():
		co := u.Cluster()
		// The Cluster client retries a failed command itself (MaxRedirects
		// attempts, a MOVED or ASK included), choosing the node afresh each
		// time; a retry inside the node's client would only ask the same
		// node again.
		co.MaxRetries = -1
		c := goredis.NewClusterClient(co)
		c.AddHook(budget)
		c.AddHook(reloadOnFailure{c})
		return c, nil
	default:
		c := goredis.NewClient(u.Simple())
		c.AddHook(budget)
		return c, nil
	}
}

// callBudget gives every call that reaches it a deadline of d (plus the
// block time of a blocking read), unless its context ends sooner. It is the
// outermost hook, so the deadline covers go-redis's retries, redirects,
// back-off and dials, which its own timeouts bound only one by one.
type callBudget struct{ d time.Duration }

func (b callBudget) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (b callBudget) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		block, forever := blockTime(cmd)
		if forever {
			return next(ctx, cmd)
		}
		ctx, cancel := b.bound(ctx, block)
		defer cancel()
		return next(ctx, cmd)
	}
}

func (b callBudget) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		var block time.Duration
		for _, cmd := range cmds {
			d, forever := blockTime(cmd)
			if forever {
				return next(ctx, cmds)
			}
			block = max(block, d)
		}
		ctx, cancel := b.bound(ctx, block)
		defer cancel()
		return next(ctx, cmds)
	}
}

// bound returns ctx with a deadline d+extra from now, or ctx itself when its
// own deadline is sooner (the rate limiter's calls already carry one: no
// allocation for them).
func (b callBudget) bound(ctx context.Context, extra time.Duration) (context.Context, context.CancelFunc) {
	limit := b.d + extra
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= limit {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, limit)
}

// blockSlack is what a blocking read may take past its block time besides
// the timeout: Redis ends a block on its own timer, which it checks hz times
// a second (every 100 ms by default), later still when it is busy.
const blockSlack = time.Second

// blockTime reads how long Redis may rightly hold a call extauthz sends
// (its block time and blockSlack), and whether it may hold it forever: the
// BLOCK argument of XREAD and XREADGROUP (the change feed, audit tail -f),
// and the timeout of WAIT (a change waiting for its replicas); 0 is
// forever for both.
func blockTime(cmd goredis.Cmder) (time.Duration, bool) {
	args := cmd.Args()
	switch cmd.Name() {
	case "xread", "xreadgroup":
		for i := 1; i+1 < len(args); i++ {
			if s, ok := args[i].(string); ok && strings.EqualFold(s, "block") {
				return blockArg(args[i+1])
			}
		}
	case "wait":
		if len(args) == 3 {
			return blockArg(args[2])
		}
	}
	return 0, false
}

// blockArg reads a block time in milliseconds, as blockTime returns it.
func blockArg(arg any) (time.Duration, bool) {
	var ms int64
	switch v := arg.(type) {
	case int64:
		ms = v
	case int:
		ms = int64(v)
	case string:
		ms, _ = strconv.ParseInt(v, 10, 64)
	}
	if ms <= 0 {
		return 0, true
	}
	return time.Duration(ms)*time.Millisecond + blockSlack, false
}

// reloadOnFailure has a Cluster client read the slot map again after a
// call failed on the network or with CLUSTERDOWN. go-redis reloads it on a
// MOVED or ASK reply and otherwise only once a minute: after a master is
// killed and a replica promoted, nothing answers MOVED, and without this the
// client would keep calling the dead address for up to a minute. Reloads are
// coalesced (one at a time, 200 ms apart) and run in the background.
type reloadOnFailure struct{ c *goredis.ClusterClient }

func (r reloadOnFailure) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (r reloadOnFailure) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		err := next(ctx, cmd)
		if topologySuspect(err) {
			r.c.ReloadState(ctx)
		}
		return err
	}
}

func (r reloadOnFailure) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []goredis.Cmder) error {
		err := next(ctx, cmds)
		suspect := topologySuspect(err)
		for _, cmd := range cmds {
			suspect = suspect || topologySuspect(cmd.Err())
		}
		if suspect {
			r.c.ReloadState(ctx)
		}
		return err
	}
}

// topologySuspect reports whether err may mean the node is gone or the slot
// map changed: anything but a reply of Redis (a missing key, a script
// error) or a caller that cancelled, and the replies that say the Cluster
// is changing.
func topologySuspect(err error) bool {
	if err == nil || errors.Is(err, goredis.Nil) || errors.Is(err, context.Canceled) {
		return false
	}
	var reply goredis.Error
	if errors.As(err, &reply) {
		msg := reply.Error()
		return strings.HasPrefix(msg, "CLUSTERDOWN") || strings.HasPrefix(msg, "MASTERDOWN")
	}
	return true
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
		// Read again for each new connection once either file has changed
		// (cert-manager and the like renew them in place).
		pair, err := certfile.Load("store.redis.tls", t.CertFile, t.KeyFile)
		if err != nil {
			return nil, err
		}
		pair.Logger = t.Logger
		certfile.WarnReadable(t.Logger, "store.redis.tls.key_file", t.KeyFile, nil)
		cfg.GetClientCertificate = pair.GetClientCertificate
	}
	return cfg, nil
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
		// The username is not quoted, here or below: a password written
		// where it goes would be printed.
		return errors.New("store.redis: username is set and has no password (set the environment variable password_env names)")
	case o.SentinelUsername != "" && o.SentinelPassword == "":
		return errors.New("store.redis: sentinel username is set and has no password")
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
	case o.Timeout < 0:
		return fmt.Errorf("store.redis: timeout %s must not be negative", o.Timeout)
	case o.PoolSize < 0:
		return fmt.Errorf("store.redis: pool size %d must not be negative", o.PoolSize)
	case o.MaxRetries < -1:
		return fmt.Errorf("store.redis: max retries %d: want -1 (never), 0 (default) or more", o.MaxRetries)
	}
	for i, a := range o.Addrs {
		if strings.ContainsAny(a, "@/") {
			// A login or a url written where host:port goes: not quoted,
			// as it may hold the password.
			return fmt.Errorf("store.redis: addrs[%d]: want host:port only, no scheme or login (not shown: it may hold a password)", i)
		}
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
func (o *Options) urlOptions(t tuning) (*goredis.Options, error) {
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
	if u.Query().Has("pipeline_pool_size") {
		return nil, errors.New("store.redis: url: pipeline_pool_size is not supported: pipelines share the one pool of pool_size")
	}
	opt, err := goredis.ParseURL(o.URL)
	if err != nil {
		// Not go-redis's message: it quotes the url's path or an option's
		// name, where a password mistyped into the url may stand.
		msg := "does not parse as redis://host:port/db?option=value"
		switch {
		case strings.Contains(err.Error(), "invalid database number"), strings.Contains(err.Error(), "invalid URL path"):
			msg = "the path must be a database number (redis://host:port/0)"
		case strings.Contains(err.Error(), "unexpected option"):
			msg = "an option go-redis does not take (pool_size, dial_timeout, read_timeout, ... are)"
		}
		return nil, fmt.Errorf("store.redis: url: %s; the url is not shown, as it may hold a password", msg)
	}
	if o.Username != "" {
		opt.Username = o.Username
	}
	if opt.Username != "" && opt.Password == "" && o.Password == "" {
		// Not quoted: a password written where the url's user name goes
		// (redis://SECRET@host) reads as a user name.
		return nil, errors.New("store.redis: the username has no password (set the environment variable password_env names)")
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
	opt.PipelinePoolSize = oneConnectionPool
	// Timeouts from the URL's query win over our defaults but not over
	// explicit fields.
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
	if opt.PoolTimeout == 0 || o.Timeout > 0 {
		opt.PoolTimeout = t.pool
	}
	opt.DialerRetries = t.dialerRetries
	opt.ContextTimeoutEnabled = true
	return opt, nil
}

// oneConnectionPool is go-redis's PipelinePoolSize that sends pipelines
// through the client's one pool. Its default is a second pool of 10
// connections per node for pipelines alone, on top of PoolSize: more
// connections than an operator setting a pool size asked for, each with
// 128 KiB buffers, for pipelines of a few small commands.
const oneConnectionPool = -1

type tuning struct {
	call, dial, read, write, pool time.Duration
	retries, dialerRetries        int
}

// tuning fills in the defaults.
func (o *Options) tuning() tuning {
	t := tuning{call: o.Timeout, dial: o.DialTimeout, read: o.ReadTimeout, write: o.WriteTimeout, retries: o.MaxRetries}
	if t.dial == 0 {
		t.dial = cmp.Or(o.Timeout, DefaultDialTimeout)
	}
	if t.read == 0 {
		t.read = cmp.Or(o.Timeout, DefaultReadTimeout)
	}
	if t.write == 0 {
		t.write = cmp.Or(o.Timeout, DefaultWriteTimeout)
	}
	if t.call == 0 {
		t.call = max(t.dial, t.read, t.write)
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
	if o.Timeout > 0 {
		t.pool = o.Timeout
	}
	return t
}
