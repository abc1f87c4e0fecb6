package redis

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
)

func TestDialRefusesBadOptions(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
	}{
		{"neither url nor addrs", Options{}, "store.redis: set url or addrs"},
		{"both url and addrs", Options{URL: "redis://127.0.0.1:6379/0", Addrs: []string{"127.0.0.1:6379"}}, "store.redis: set url or addrs, not both"},
		{"a url scheme other than redis or rediss", Options{URL: "http://127.0.0.1:6379"}, `store.redis: url scheme "http": want redis:// or rediss://`},
		{"a unix socket url", Options{URL: "unix:///tmp/redis.sock"}, `url scheme "unix"`},
		{"a url without a scheme", Options{URL: "127.0.0.1:6379"}, "store.redis: url"},
		{"a url without a host", Options{URL: "redis:///0"}, "store.redis: url has no host"},
		{"a url with a bad database", Options{URL: "redis://127.0.0.1:6379/zero"}, "the path must be a database number"},
		{"a url with an unknown option", Options{URL: "redis://127.0.0.1:6379/0?colour=blue"}, "an option go-redis does not take"},
		// go-redis's own messages quote the path or the option, where a
		// password that broke the url up stands.
		{"a password that starts with '/'", Options{URL: "redis://default:/Zq8kR2pLx9vW4mT7@127.0.0.1:6379/0"}, "the url is not shown"},
		{"a password after digits and '?'", Options{URL: "redis://default:4711?Zq8kR2pLx9vW4mT7@127.0.0.1:6379/0"}, "the url is not shown"},
		{"a password in the url and from the environment", Options{URL: "redis://:a@127.0.0.1:6379/0", Password: "b"}, "password set both in the url and from password_env"},
		{"master_name with a url", Options{URL: "redis://127.0.0.1:6379", MasterName: "mymaster"}, "master_name needs addrs (the Sentinel addresses), not url"},
		{"cluster with a url", Options{URL: "redis://127.0.0.1:6379", Cluster: true}, "a cluster needs addrs, not url"},
		{"tls with a redis url", Options{URL: "redis://127.0.0.1:6379", TLS: TLSOptions{Enabled: true}}, "use a rediss:// url instead"},
		{"db with a url", Options{URL: "redis://127.0.0.1:6379", DB: 2}, "put the database in the url path"},
		{"master_name and cluster", Options{Addrs: []string{"a:26379"}, MasterName: "m", Cluster: true}, "set master_name (Sentinel) or cluster, not both"},
		{"a database on a cluster", Options{Addrs: []string{"a:6379", "b:6379"}, DB: 1}, "store.redis: db 1: Redis Cluster has only database 0"},
		{"a sentinel password without sentinel", Options{Addrs: []string{"a:6379"}, SentinelPassword: "x"}, "sentinel password set without master_name"},
		{"a negative db", Options{Addrs: []string{"a:6379"}, DB: -1}, "db -1 must not be negative"},
		{"an address without a port", Options{Addrs: []string{"a:6379", "redis.internal"}}, `store.redis: addrs[1] "redis.internal": want host:port`},
		{"an address without a host", Options{Addrs: []string{":6379"}}, `addrs[0] ":6379": missing host`},
		{"an address with a login", Options{Addrs: []string{"user:Zq8kR2pL@redis:6379"}}, `addrs[0]: want host:port only, no scheme or login (not shown`},
		{"a url for an address", Options{Addrs: []string{"a:6379", "redis://:Zq8kR2pL@redis:6379"}}, `addrs[1]: want host:port only`},
		{"an address with a bad port", Options{Addrs: []string{"a:http"}}, `port "http": want a number from 1 to 65535`},
		{"an address with port 0", Options{Addrs: []string{"a:0"}}, `port "0"`},
		{"an address with a port too high", Options{Addrs: []string{"a:65536"}}, `port "65536"`},
		{"a negative dial timeout", Options{Addrs: []string{"a:6379"}, DialTimeout: -time.Second}, "dial timeout -1s must not be negative"},
		{"a negative read timeout", Options{Addrs: []string{"a:6379"}, ReadTimeout: -1}, "read timeout -1ns must not be negative"},
		{"a negative write timeout", Options{Addrs: []string{"a:6379"}, WriteTimeout: -1}, "write timeout -1ns must not be negative"},
		{"a negative pool size", Options{Addrs: []string{"a:6379"}, PoolSize: -3}, "pool size -3 must not be negative"},
		{"max retries below -1", Options{Addrs: []string{"a:6379"}, MaxRetries: -2}, "max retries -2"},
		{"a CA file with a redis url", Options{URL: "redis://127.0.0.1:6379", TLS: TLSOptions{CAFile: "ca.pem"}}, "need a rediss:// url"},
		{"a server name with a redis url", Options{URL: "redis://127.0.0.1:6379", TLS: TLSOptions{ServerName: "redis.internal"}}, "need a rediss:// url"},
		{"TLS files with addrs but TLS off", Options{Addrs: []string{"a:6379"}, TLS: TLSOptions{CAFile: "ca.pem"}}, "need tls.enabled: true"},
		{"a client certificate without its key", Options{URL: "rediss://127.0.0.1:6379", TLS: TLSOptions{CertFile: "c.pem"}}, "set cert_file and key_file together"},
		{"a client key without its certificate", Options{Addrs: []string{"a:6379"}, TLS: TLSOptions{Enabled: true, KeyFile: "k.pem"}}, "set cert_file and key_file together"},
		{"a server name with a port", Options{URL: "rediss://127.0.0.1:6379", TLS: TLSOptions{ServerName: "redis.internal:6379"}}, `server_name "redis.internal:6379"`},
		{"a server name with a scheme", Options{Addrs: []string{"a:6379"}, TLS: TLSOptions{Enabled: true, ServerName: "rediss://x"}}, "want a host name"},
		{"a CA file that does not exist", Options{URL: "rediss://127.0.0.1:6379", TLS: TLSOptions{CAFile: "/nonexistent/ca.pem"}}, "store.redis.tls.ca_file: open /nonexistent/ca.pem"},
		{"a client certificate that does not exist", Options{Addrs: []string{"a:6379"}, TLS: TLSOptions{Enabled: true, CertFile: "/nonexistent/c.pem", KeyFile: "/nonexistent/k.pem"}}, "store.redis.tls.cert_file"},
		{"skip_verify in the url", Options{URL: "rediss://127.0.0.1:6379/0?skip_verify=true"}, "skip_verify is not supported"},
		{"a pool of pipelines in the url", Options{URL: "redis://127.0.0.1:6379/0?pipeline_pool_size=10"}, "pipeline_pool_size is not supported: pipelines share the one pool of pool_size"},
		{"a username without a password", Options{Addrs: []string{"a:6379"}, Username: "extauthz"}, `username is set and has no password`},
		// Not quoted: it may be a password written where the user goes.
		{"a username in the url without a password", Options{URL: "redis://Zq8kR2pLx9vW4mT7@127.0.0.1:6379/0"}, `the username has no password`},
		{"a username both in the url and the field", Options{URL: "redis://extauthz@127.0.0.1:6379/0", Username: "other", Password: "pw"}, "username set both in the url and in username"},
		{"a sentinel username without a password", Options{Addrs: []string{"a:26379"}, MasterName: "m", SentinelUsername: "s"}, `sentinel username is set and has no password`},
		{"a sentinel username without sentinel", Options{Addrs: []string{"a:6379"}, SentinelUsername: "s", SentinelPassword: "pw"}, "sentinel username set without master_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Dial(tt.opts)
			require.ErrorContains(t, err, tt.wantErr)
			require.NotContains(t, err.Error(), "Zq8kR2pL", "never quotes what may be a password")
			require.Nil(t, c)
		})
	}
}

func TestDialRefusesCertificatesThatDoNotLoad(t *testing.T) {
	dir := t.TempDir()
	files := redistest.NewTLSFiles(t, dir)
	junk := filepath.Join(dir, "junk.pem")
	require.NoError(t, os.WriteFile(junk, []byte("not a certificate"), 0o600))
	tests := []struct {
		name    string
		tls     TLSOptions
		wantErr string
	}{
		{"a CA file without a certificate", TLSOptions{CAFile: junk}, "ca_file " + junk + ": no PEM certificate in it"},
		{"a key that is not the certificate's", TLSOptions{CertFile: files.ClientCert, KeyFile: files.ServerKey}, "private key does not match public key"},
		{"a certificate file that is not one", TLSOptions{CertFile: junk, KeyFile: files.ClientKey}, "cert_file " + junk},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Dial(Options{URL: "rediss://127.0.0.1:6379/0", TLS: tt.tls})
			require.ErrorContains(t, err, tt.wantErr)
			require.Nil(t, c)
		})
	}
}

func TestDialErrorsDoNotRepeatThePassword(t *testing.T) {
	for _, u := range []string{
		"redis://:hunter2@127.0.0.1:6379/0?colour=blue",
		"redis://:hunter2@127.0.0.1:6379/zero",
		"redis://:hunter2@127.0.0.1:port/0",
		"redis://:hunter2@[::1/0",
		"ftp://:hunter2@127.0.0.1/",
	} {
		_, err := Dial(Options{URL: u})
		require.Error(t, err, u)
		require.NotContains(t, err.Error(), "hunter2")
	}
}

func TestDialPicksTheClientKind(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want goredis.UniversalClient
	}{
		{"a url is a standalone server", Options{URL: "redis://127.0.0.1:6379/2"}, &goredis.Client{}},
		{"a rediss url is a standalone server over TLS", Options{URL: "rediss://127.0.0.1:6380/0"}, &goredis.Client{}},
		{"one address is a standalone server", Options{Addrs: []string{"127.0.0.1:6379"}, DB: 3}, &goredis.Client{}},
		{"several addresses are a Cluster", Options{Addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}}, &goredis.ClusterClient{}},
		{"one address with cluster set is a Cluster", Options{Addrs: []string{"cfg.example:6379"}, Cluster: true}, &goredis.ClusterClient{}},
		{"master_name is Sentinel", Options{Addrs: []string{"127.0.0.1:26379", "127.0.0.1:26380"}, MasterName: "mymaster"}, &goredis.Client{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Dial(tt.opts)
			require.NoError(t, err)
			t.Cleanup(func() { _ = c.Close() })
			require.IsType(t, tt.want, c)
		})
	}
}

func TestDialDefaultsAreShort(t *testing.T) {
	c := dial(t, Options{URL: "redis://127.0.0.1:6379/1"})
	o := c.(*goredis.Client).Options()
	require.Equal(t, DefaultReadTimeout, o.ReadTimeout)
	require.Equal(t, DefaultWriteTimeout, o.WriteTimeout)
	require.Equal(t, DefaultDialTimeout, o.DialTimeout)
	require.Equal(t, DefaultMaxRetries, o.MaxRetries)
	require.Equal(t, 1, o.DB)
	require.True(t, o.ContextTimeoutEnabled)

	c = dial(t, Options{URL: "redis://127.0.0.1:6379/0?read_timeout=2s&pool_size=7"})
	o = c.(*goredis.Client).Options()
	require.Equal(t, 2*time.Second, o.ReadTimeout, "a timeout in the url")
	require.Equal(t, 7, o.PoolSize)

	c = dial(t, Options{URL: "redis://127.0.0.1:6379/0?read_timeout=2s", ReadTimeout: 100 * time.Millisecond, PoolSize: 3, MaxRetries: -1})
	o = c.(*goredis.Client).Options()
	require.Equal(t, 100*time.Millisecond, o.ReadTimeout, "an explicit field wins over the url")
	require.Equal(t, 3, o.PoolSize)
	require.Equal(t, 0, o.MaxRetries, "-1 means no retries")

	cc := dial(t, Options{Addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}, WriteTimeout: time.Second})
	co := cc.(*goredis.ClusterClient).Options()
	require.Equal(t, DefaultReadTimeout, co.ReadTimeout)
	require.Equal(t, time.Second, co.WriteTimeout)
}

// TestPipelinesShareTheOnePool holds PoolSize to every connection the
// client opens: go-redis otherwise gives pipelines a pool of their own, of
// 10 connections per node on top of PoolSize (and 128 KiB buffers each).
func TestPipelinesShareTheOnePool(t *testing.T) {
	for name, opts := range map[string]func(*redistest.Server) Options{
		"by url":     func(s *redistest.Server) Options { return Options{URL: s.URL(0), PoolSize: 1} },
		"by address": func(s *redistest.Server) Options { return Options{Addrs: []string{s.Addr}, PoolSize: 1} },
	} {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t)
			c := dial(t, opts(srv))
			ctx := context.Background()
			require.NoError(t, c.Set(ctx, "a", "1", 0).Err())
			_, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
				p.Set(ctx, "b", "2", 0)
				p.Get(ctx, "a")
				return nil
			})
			require.NoError(t, err)
			require.NoError(t, c.Get(ctx, "b").Err())
			info, err := srv.Info("clients")
			require.NoError(t, err)
			require.Equal(t, "2", info["connected_clients"], "the client's one connection, and the query's own")
		})
	}
	cc := dial(t, Options{Addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}})
	require.Equal(t, oneConnectionPool, cc.(*goredis.ClusterClient).Options().PipelinePoolSize, "a Cluster's nodes too")
}

func TestDialSendsNothingTheACLNeedNotGrant(t *testing.T) {
	c := dial(t, Options{URL: "redis://127.0.0.1:6379/0"})
	o := c.(*goredis.Client).Options()
	require.True(t, o.DisableIdentity, "CLIENT SETINFO on connect")
	require.Equal(t, maintnotifications.ModeDisabled, o.MaintNotificationsConfig.Mode, "CLIENT MAINT_NOTIFICATIONS on connect")

	cc := dial(t, Options{Addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}})
	co := cc.(*goredis.ClusterClient).Options()
	require.True(t, co.DisableIdentity)
	require.Equal(t, maintnotifications.ModeDisabled, co.MaintNotificationsConfig.Mode)
}

func TestDialOverTLS(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	other := redistest.NewTLSFiles(t, t.TempDir()) // a CA the server does not know
	files := func(o TLSOptions) TLSOptions {
		o.CAFile, o.CertFile, o.KeyFile = srv.TLS.CA, srv.TLS.ClientCert, srv.TLS.ClientKey
		return o
	}
	port := strings.TrimPrefix(srv.Addr, "127.0.0.1:")
	tests := []struct {
		name   string
		opts   Options
		wantOK bool
	}{
		{"a rediss url, the CA and a client certificate", Options{URL: srv.URL(0), TLS: files(TLSOptions{})}, true},
		{"a rediss url with tls.enabled agreeing", Options{URL: srv.URL(0), TLS: files(TLSOptions{Enabled: true})}, true},
		{"addrs with TLS enabled", Options{Addrs: []string{srv.Addr}, TLS: files(TLSOptions{Enabled: true})}, true},
		{"a host name verified against server_name", Options{URL: "rediss://localhost:" + port + "/0", TLS: files(TLSOptions{ServerName: redistest.ServerName})}, true},
		{"the certificate checked against the host dialled", Options{URL: "rediss://localhost:" + port + "/0", TLS: files(TLSOptions{})}, false},
		{"a server name the certificate does not carry", Options{URL: srv.URL(0), TLS: files(TLSOptions{ServerName: "other.test"})}, false},
		{"the system roots, which do not know the CA", Options{URL: srv.URL(0), TLS: TLSOptions{CertFile: srv.TLS.ClientCert, KeyFile: srv.TLS.ClientKey}}, false},
		{"no client certificate", Options{URL: srv.URL(0), TLS: TLSOptions{CAFile: srv.TLS.CA}}, false},
		{"a client certificate from another CA", Options{URL: srv.URL(0), TLS: TLSOptions{CAFile: srv.TLS.CA, CertFile: other.ClientCert, KeyFile: other.ClientKey}}, false},
		{"plaintext to the TLS port", Options{URL: strings.Replace(srv.URL(0), "rediss://", "redis://", 1)}, false},
		{"addrs without TLS", Options{Addrs: []string{srv.Addr}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// What is refused, not how fast: a handshake under the race
			// detector on a busy machine can outlast the defaults.
			tt.opts.DialTimeout, tt.opts.ReadTimeout = 10*time.Second, 5*time.Second
			err := dial(t, tt.opts).Set(t.Context(), "k", "v", 0).Err()
			if tt.wantOK {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}

func TestDialRereadsARenewedClientCertificate(t *testing.T) {
	srv := redistest.StartWith(t, redistest.Options{TLS: true})
	untrusted := redistest.NewTLSFiles(t, t.TempDir())
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	install := func(certFrom, keyFrom string) {
		t.Helper()
		for from, to := range map[string]string{certFrom: cert, keyFrom: key} {
			data, err := os.ReadFile(from)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(to+".new", data, 0o600))
			require.NoError(t, os.Rename(to+".new", to)) // as a Secret volume swaps files
		}
		// The server drops every connection: the next command dials anew.
		_, err := srv.Do("CLIENT", "KILL", "TYPE", "normal")
		require.NoError(t, err)
	}
	install(srv.TLS.ClientCert, srv.TLS.ClientKey)
	var logs syncbuf.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	c := dial(t, Options{URL: srv.URL(0), TLS: TLSOptions{CAFile: srv.TLS.CA, CertFile: cert, KeyFile: key, Logger: logger},
		DialTimeout: 10 * time.Second, ReadTimeout: 5 * time.Second})
	require.NoError(t, c.Ping(t.Context()).Err())

	install(untrusted.ClientCert, untrusted.ClientKey)
	require.Error(t, c.Ping(t.Context()).Err(), "a new connection still presented the old certificate")

	install(srv.TLS.ClientCert, srv.TLS.ClientKey)
	require.NoError(t, c.Ping(t.Context()).Err(), "the renewed certificate was not picked up")
	require.Contains(t, logs.String(), "certificate files reloaded")

	// A renewal that does not load (a certificate beside another's key)
	// keeps the pair in use, and the log says so.
	install(srv.TLS.ClientCert, untrusted.ClientKey)
	require.NoError(t, c.Ping(t.Context()).Err(), "the pair in use was not kept")
	require.Contains(t, logs.String(), "certificate files changed but do not load")
	require.Contains(t, logs.String(), "store.redis.tls")
}

func TestDialAuthenticatesWithThePassword(t *testing.T) {
	// Not Start(t, "--requirepass", …): Start waits for a PONG that a
	// password-protected server never sends to it.
	srv := redistest.Start(t)
	reply, err := srv.Do("CONFIG", "SET", "requirepass", "s3cret")
	require.NoError(t, err)
	require.Equal(t, "+OK", reply)
	tests := []struct {
		name   string
		opts   Options
		wantOK bool
	}{
		{"the password from the environment", Options{URL: srv.URL(0), Password: "s3cret"}, true},
		{"the password in the url", Options{URL: "redis://:s3cret@" + srv.Addr + "/0"}, true},
		{"the password with addrs", Options{Addrs: []string{srv.Addr}, Password: "s3cret"}, true},
		{"no password", Options{URL: srv.URL(0)}, false},
		{"a wrong password", Options{Addrs: []string{srv.Addr}, Password: "guess"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := dial(t, tt.opts).Ping(t.Context()).Err()
			if tt.wantOK {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				require.NotContains(t, err.Error(), "s3cret")
			}
		})
	}
}

func TestDialTimeoutSetsEverySocketTimeout(t *testing.T) {
	const d = 80 * time.Millisecond
	o := dial(t, Options{URL: "redis://127.0.0.1:6379/0", Timeout: d}).(*goredis.Client).Options()
	require.Equal(t, []time.Duration{d, d, d, d}, []time.Duration{o.DialTimeout, o.ReadTimeout, o.WriteTimeout, o.PoolTimeout})

	o = dial(t, Options{URL: "redis://127.0.0.1:6379/0?read_timeout=2s", Timeout: d}).(*goredis.Client).Options()
	require.Equal(t, 2*time.Second, o.ReadTimeout, "a socket timeout in the url still wins over the default")

	co := dial(t, Options{Addrs: []string{"127.0.0.1:7000", "127.0.0.1:7001"}, Timeout: d, DialTimeout: time.Second}).(*goredis.ClusterClient).Options()
	require.Equal(t, []time.Duration{time.Second, d, d, d}, []time.Duration{co.DialTimeout, co.ReadTimeout, co.WriteTimeout, co.PoolTimeout})
	require.Equal(t, -1, co.MaxRetries, "a Cluster node's client does not retry: the Cluster client does")
	require.Equal(t, 3, co.MaxRedirects)

	_, err := Dial(Options{URL: "redis://127.0.0.1:6379/0", Timeout: -time.Second})
	require.ErrorContains(t, err, "store.redis: timeout -1s must not be negative")
}

// A blocking read (the change feed's XREAD BLOCK) may wait its block time:
// the call's deadline is the timeout and blockSlack on top of it.
func TestABlockingReadMayWaitItsBlockTime(t *testing.T) {
	srv := redistest.Start(t)
	c := dial(t, Options{URL: srv.URL(0), Timeout: 50 * time.Millisecond})
	start := time.Now()
	err := c.XRead(t.Context(), &goredis.XReadArgs{Streams: []string{"s", "$"}, Block: 300 * time.Millisecond}).Err()
	require.ErrorIs(t, err, goredis.Nil, "the read ended on its block time, not on the 50ms timeout")
	require.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)

	srv.Pause()
	defer srv.Resume()
	start = time.Now()
	err = c.XRead(t.Context(), &goredis.XReadArgs{Streams: []string{"s", "$"}, Block: 100 * time.Millisecond}).Err()
	require.Error(t, err)
	require.NotErrorIs(t, err, goredis.Nil)
	took := time.Since(start)
	require.Less(t, took, 100*time.Millisecond+50*time.Millisecond+blockSlack+100*time.Millisecond, "a server that does not answer holds the read no longer than block + timeout + slack")
	require.Greater(t, took, 100*time.Millisecond+50*time.Millisecond+blockSlack-50*time.Millisecond, "go-redis would have given up only after block + 10 s: the budget ended it")
}
