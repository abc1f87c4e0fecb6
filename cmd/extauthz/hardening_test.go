package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

func TestServeRefusesToStartWithoutAPepper(t *testing.T) {
	t.Setenv(testPepperEnv, "")
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: off, admin: off}\n"+storeYAML(t, "embedded"))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	_, err = newServer(cfg, slog.New(slog.DiscardHandler), io.Discard)
	require.ErrorContains(t, err, "hashing.pepper_env: $EXTAUTHZ_PEPPER is empty or unset")

	_, stderr, code := cliRun(t, "serve", "--config", path)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "development: true", "the error names the way out")
	_, err = os.Stat(cfg.Store.Path)
	assert.ErrorIs(t, err, os.ErrNotExist, "a refused start touches no store")
}

func TestADevelopmentSetupStartsWithoutAPepperAndSaysSo(t *testing.T) {
	t.Setenv(testPepperEnv, "")
	var logs syncbuf.Buffer
	path := writeConfig(t, "development: true\nlisten: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	key, _ := ts.create(t, keystore.Spec{Name: "dev", Permissions: []string{"read:users"}})
	code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}))
	assert.Empty(t, code)
	assert.Contains(t, logs.String(), "DEVELOPMENT SETUP, NOT FOR PRODUCTION: no hashing pepper")
}

// A server whose config lets HTTP mode pass query and cookie credentials
// and keeps the default query and cookie sources says at start that those
// keys would reach the upstream; it still serves.
func TestServeWarnsOfSourcesAnHTTPModeProxyCannotStrip(t *testing.T) {
	var logs syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		"http_mode: {original: x-original, query_and_cookie_keys: pass}\n"+storeYAML(t, "embedded")+testRoutes)
	startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	assert.Contains(t, logs.String(), "sources[2] {query: api_key} with http_mode.query_and_cookie_keys: pass")
	assert.Contains(t, logs.String(), "sources[3] {cookie: api_key} with http_mode.query_and_cookie_keys: pass")
}

func TestConfigCheckAndKeyCommandsWithoutAPepper(t *testing.T) {
	t.Setenv(testPepperEnv, "")
	store := fmt.Sprintf("store: {path: %q}\n", t.TempDir()+"/k.db")
	prod, dev := writeConfig(t, store), writeConfig(t, "development: true\n"+store)

	_, stderr, code := cliRun(t, "config", "check", "--config", prod)
	assert.Equal(t, 1, code, "a production config without its pepper fails the check")
	assert.Contains(t, stderr, "hashing.pepper_env: $EXTAUTHZ_PEPPER is empty or unset")
	_, stderr, code = cliRun(t, "config", "check", "--config", dev)
	assert.Equal(t, 0, code)
	assert.Contains(t, stderr, "warning: DEVELOPMENT SETUP")
	out, _, code := cliRun(t, "config", "check", "--config", "../../extauthz.yaml")
	assert.Equal(t, 0, code, "make run's config is a declared development setup: %s", out)

	_, stderr, code = cliRun(t, "keys", "create", "--config", prod, "--name", "n", "--perm", "p")
	assert.Equal(t, 1, code, "a key hashed without the server's pepper would never match")
	assert.Contains(t, stderr, "keys create: hashing.pepper_env")

	out, stderr, code = cliRun(t, "keys", "create", "--config", dev, "--name", "n", "--perm", "p", "--json")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "warning: DEVELOPMENT SETUP")
	id := strings.Split(strings.Split(out, `"id": "`)[1], `"`)[0]

	_, stderr, code = cliRun(t, "keys", "rotate", id, "--config", prod)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "keys rotate: hashing.pepper_env")
	for _, args := range [][]string{{"keys", "list"}, {"keys", "show", id}, {"keys", "revoke", id}} {
		_, stderr, code := cliRun(t, append(args, "--config", prod)...)
		assert.Equal(t, 0, code, "%v hashes nothing and needs no pepper: %s", args, stderr)
	}
}

// slowProbe is one way a client holds a connection open, against a listener.
type slowProbe struct {
	name string
	// send writes to conn until the server hangs up (or done closes).
	send func(conn net.Conn, done <-chan struct{})
	// bound is how soon after the connection opened the server must close it.
	bound func(l httpLimits) time.Duration
}

// trickle writes b one byte every 50 ms, until the write fails or done.
func trickle(conn net.Conn, b string, done <-chan struct{}) {
	for i := 0; ; i = (i + 1) % len(b) {
		select {
		case <-done:
			return
		case <-time.After(50 * time.Millisecond):
		}
		if _, err := conn.Write([]byte{b[i]}); err != nil {
			return
		}
	}
}

// TestSlowClientsAreCutOffOnEveryListener opens real connections that
// trickle headers, trickle a body, sit idle or send too much header, to the
// HTTP and the admin listener, with the listeners' timeouts shrunk for the
// test, and measures when the server hangs up.
func TestSlowClientsAreCutOffOnEveryListener(t *testing.T) {
	for name, l := range map[string]httpLimits{"http": decisionLimits, "admin": adminLimits} {
		assert.Positive(t, l.ReadHeader, name)
		assert.Positive(t, l.Read, name)
		assert.Positive(t, l.Write, name)
		assert.Positive(t, l.Idle, name)
		assert.Positive(t, l.MaxHeaderBytes, name)
	}
	short := httpLimits{ReadHeader: 300 * time.Millisecond, Read: 700 * time.Millisecond, Write: 2 * time.Second, Idle: 500 * time.Millisecond}
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes)
	var applied []httpLimits
	ts := startServerTuned(t, path, serverOutput{logs: io.Discard, audit: io.Discard}, func(s *server) {
		for _, srv := range []*http.Server{s.http, s.adminSrv} {
			applied = append(applied, httpLimits{srv.ReadHeaderTimeout, srv.ReadTimeout, srv.WriteTimeout, srv.IdleTimeout, srv.MaxHeaderBytes})
			l := short
			l.MaxHeaderBytes = srv.MaxHeaderBytes
			l.apply(srv)
		}
	})
	assert.Equal(t, []httpLimits{decisionLimits, adminLimits}, applied, "the server runs with the documented limits")
	admin, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})

	probes := []slowProbe{
		{"headers trickled", func(c net.Conn, done <-chan struct{}) {
			fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n")
			trickle(c, "X-Slow: aaaaaaaaaaaaaaaa\r\n", done)
		}, func(l httpLimits) time.Duration { return l.ReadHeader }},
		{"a body trickled", func(c net.Conn, done <-chan struct{}) {
			fmt.Fprintf(c, "POST /v1/keys HTTP/1.1\r\nHost: x\r\nX-Api-Key: %s\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{", admin)
			trickle(c, `"name":"n",`, done)
		}, func(l httpLimits) time.Duration { return l.Read }},
		{"idle after a request", func(c net.Conn, done <-chan struct{}) {
			fmt.Fprint(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
		}, func(l httpLimits) time.Duration { return l.Idle }},
	}
	for _, listener := range []struct{ name, addr string }{
		{"http", ts.srv.httpLn.Addr().String()}, {"admin", ts.srv.adminLn.Addr().String()},
	} {
		for _, p := range probes {
			t.Run(listener.name+": "+p.name, func(t *testing.T) {
				conn, err := net.Dial("tcp", listener.addr)
				require.NoError(t, err)
				defer conn.Close()
				start := time.Now()
				done := make(chan struct{})
				var wg sync.WaitGroup
				wg.Go(func() { p.send(conn, done) })
				defer func() { close(done); wg.Wait() }()
				bound := p.bound(short)
				_ = conn.SetReadDeadline(start.Add(bound + 3*time.Second))
				_, err = io.Copy(io.Discard, conn) // until the server closes
				elapsed := time.Since(start)
				var ne net.Error
				require.False(t, errors.As(err, &ne) && ne.Timeout(), "still open after %v", elapsed)
				assert.Less(t, elapsed, bound+time.Second, "closed long after its bound of %v", bound)
				t.Logf("closed after %v (bound %v)", elapsed.Round(time.Millisecond), bound)
			})
		}
		t.Run(listener.name+": headers over the cap", func(t *testing.T) {
			conn, err := net.Dial("tcp", listener.addr)
			require.NoError(t, err)
			defer conn.Close()
			go fmt.Fprintf(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n", strings.Repeat("a", 300<<10))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
		})
	}
}

// TestAFloodNeverTurnsAwayAValidKeyOnARealServer sends floods of bad keys
// from one address to a real server, over gRPC (the peer address) and over
// HTTP (naming the address in X-Forwarded-For), with the default budgets,
// and checks a valid key from that address after every few: always
// allowed. The store lookups the floods cost stay within the budget.
func TestAFloodNeverTurnsAwayAValidKeyOnARealServer(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+testRoutes+"rate_limit: {default: 1000000/m}\n")
			valid, _ := ts.create(t, keystore.Spec{Name: "victim", Permissions: []string{"read:users"}})
			format, err := keystore.NewFormat("sk")
			require.NoError(t, err)
			require.Equal(t, int32(codes.OK), ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": valid}).GetStatus().GetCode())

			badKey := func(i int) string {
				switch i % 3 {
				case 0:
					return "sk_" + strconv.Itoa(i) // malformed
				case 1:
					return fmt.Sprintf("legacy-unknown-key-%08d", i) // well-formed, unknown
				}
				k, err := format.Generate() // well-formed, our format, unknown
				require.NoError(t, err)
				return k
			}
			httpCheck := func(key string) int {
				req, err := http.NewRequest("GET", ts.httpURL+"/authz/api/users", nil)
				require.NoError(t, err)
				req.Header.Set("X-Api-Key", key)
				req.Header.Set("X-Forwarded-For", "10.1.2.3") // the victim's address, named by the attacker
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				resp.Body.Close()
				return resp.StatusCode
			}
			misses := ts.srv.cache.Stats().Misses
			start := time.Now()
			codesSeen := map[string]int{}
			for i := range 1500 {
				code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": badKey(i)}))
				codesSeen["grpc "+code]++
				codesSeen[fmt.Sprint("http ", httpCheck(badKey(i)))]++
				if i%10 == 0 {
					resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": valid})
					require.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "gRPC, flood step %d: %s", i, resp.GetDeniedResponse().GetBody())
					require.Equal(t, http.StatusOK, httpCheck(valid), "HTTP, flood step %d", i)
				}
			}
			elapsed := time.Since(start)
			lookups := ts.srv.cache.Stats().Misses - misses
			// The address's 100, what refilled meanwhile (100/m), and the valid
			// key's own refresh once its create reached the cache (a change).
			budget := 100 + uint64(elapsed.Seconds()*100/60) + 1
			t.Logf("%s: 3000 bad keys from one address in %v: %v; %d store lookups (budget %d)", backend, elapsed.Round(time.Millisecond), codesSeen, lookups, budget)
			assert.LessOrEqual(t, lookups, budget, "the floods cost at most the address's budget of lookups")
			assert.Positive(t, codesSeen["grpc rate_limited"], "the budget ran out")
			other, _ := ts.create(t, keystore.Spec{Name: "other", Permissions: []string{"read:users"}})
			resp, err := ts.client.Check(context.Background(), checkReq("GET", "/api/users", "10.9.9.9", map[string]string{"x-api-key": other}))
			require.NoError(t, err)
			assert.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "a new key from another address is looked up at once")
		})
	}
}

// TestACachedKeyIsServedForAtMostMaxStaleWhileRedisIsDown blackholes
// Redis right after a key was checked: the key is served from the cache
// until cache.max_stale after the store last confirmed it, then 503, and
// served again once Redis is back.
func TestACachedKeyIsServedForAtMostMaxStaleWhileRedisIsDown(t *testing.T) {
	const ttl, maxStale = 200 * time.Millisecond, 1500 * time.Millisecond
	r := redistest.Start(t)
	proxy := faultproxy.Start(t, r.Addr)
	t.Cleanup(proxy.Heal)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, timeout: 100ms, prefix: \"s:\"}}\n", "redis://"+proxy.Addr()+"/0")+
		fmt.Sprintf("cache: {ttl: %s, max_stale: %s}\n", ttl, maxStale)+testRoutes+"rate_limit: {default: 1000000/m, on_store_error: local}\n")
	key, _ := ts.create(t, keystore.Spec{Name: "cached", Permissions: []string{"read:users"}})
	check := func() string {
		code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}))
		return code
	}
	require.Eventually(t, func() bool { return check() == "" }, 2*time.Second, 20*time.Millisecond)
	require.Empty(t, check())
	proxy.Blackhole() // the store last confirmed the key at most ttl ago
	down := time.Now()

	var lastAllowed, firstRefused time.Duration
	for time.Since(down) < maxStale+time.Second {
		code, at := check(), time.Since(down)
		switch {
		case code == "" && firstRefused == 0:
			lastAllowed = at
		case code == "unavailable" && firstRefused == 0:
			firstRefused = at
		case code != "unavailable":
			t.Fatalf("%v into the outage: %q (after the first 503 at %v)", at, code, firstRefused)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("Redis blackholed: the cached key allowed until %v, 503 from %v (max_stale %v, ttl %v)",
		lastAllowed.Round(time.Millisecond), firstRefused.Round(time.Millisecond), maxStale, ttl)
	assert.GreaterOrEqual(t, lastAllowed, maxStale-ttl-200*time.Millisecond, "served from the cache for about max_stale")
	require.NotZero(t, firstRefused, "still served long after max_stale")
	assert.Less(t, firstRefused, maxStale+300*time.Millisecond, "served past max_stale")

	proxy.Heal()
	require.Eventually(t, func() bool { return check() == "" }, 5*time.Second, 50*time.Millisecond, "served again once Redis is back")
}

// A pepper guards the stored hashes only if it cannot be guessed: every
// command warns of a short one and of the compose demo's, and still runs.
// So it does of one with a file's line ending, which one command may get
// and another not: keys made by one would be unknown to the other.
func TestAWeakPepperIsWarnedOf(t *testing.T) {
	for _, tc := range []struct{ pepper, want string }{
		{"short", "is 5 bytes"},
		{"demo-only-pepper-not-for-production", "the demo default written in docker-compose.yml"},
		{testPepper + "\n", "ends with white space, most likely a file's line ending"},
		{" " + testPepper, "begins or ends with white space"},
		{"short\n", "is 6 bytes"}, // the line ending hides no other warning
		{"short\n", "begins or ends with white space"},
	} {
		// A store of its own: keys of one store are all made under one pepper.
		path := writeConfig(t, fmt.Sprintf("store: {path: %q}\n", t.TempDir()+"/k.db"))
		t.Setenv(testPepperEnv, tc.pepper)
		_, stderr, code := cliRun(t, "config", "check", "--config", path)
		assert.Equal(t, 0, code, stderr)
		assert.Contains(t, stderr, tc.want)
		assert.NotContains(t, stderr, "-pepper-not-for", "the pepper itself is never printed")
		_, stderr, code = cliRun(t, "keys", "create", "--config", path, "--name", "n", "--perm", "p")
		assert.Equal(t, 0, code, stderr)
		assert.Contains(t, stderr, tc.want)
	}
	t.Setenv(testPepperEnv, testPepper)
	_, stderr, _ := cliRun(t, "config", "check", "--config", writeConfig(t, fmt.Sprintf("store: {path: %q}\n", t.TempDir()+"/k.db")))
	assert.NotContains(t, stderr, "pepper", "a long pepper of one's own is no warning")
}

// The compose demo's Redis password is written in docker-compose.yml: a
// setup copied from the demo runs with it unless told. Redis, started by the
// shipped start.sh as compose starts it, and every extauthz command that
// logs in with it say so, never printing it; they still run.
func TestTheDemoRedisPasswordIsWarnedOf(t *testing.T) {
	const demo = "demo-only-redis-password"
	dir := t.TempDir()
	r := redistest.StartWith(t, redistest.Options{
		Launcher: "../../k8s/base/redis/start.sh",
		Env:      []string{"REDIS_PASSWORD=" + demo, "REDIS_ACL_FILE=" + filepath.Join(dir, "users.acl")},
		Deployed: true,
		User:     "extauthz",
		Password: demo,
	})
	logs, err := filepath.Glob(filepath.Join(r.Dir(), "redis-*.log"))
	require.NoError(t, err)
	require.NotEmpty(t, logs)
	started, err := os.ReadFile(logs[0])
	require.NoError(t, err)
	assert.Contains(t, string(started), "start.sh: warning: REDIS_PASSWORD is the demo default")
	assert.NotContains(t, string(started), demo)

	const want = "the Redis password ($REDIS_PASSWORD) is the demo default written in docker-compose.yml"
	redisStore := fmt.Sprintf("store: {backend: redis, redis: {url: %q, username: extauthz, password_env: REDIS_PASSWORD}}\n", r.URL(0))
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+redisStore+testRoutes)
	t.Setenv("REDIS_PASSWORD", demo)
	_, stderr, code := cliRun(t, "config", "check", "--config", path)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, want)
	_, stderr, code = cliRun(t, "keys", "create", "--config", path, "--name", "n", "--perm", "p")
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, want)
	assert.NotContains(t, stderr, demo, "the password itself is never printed")

	var served syncbuf.Buffer
	startServerOut(t, path, serverOutput{logs: &served, audit: io.Discard})
	assert.Contains(t, served.String(), want)

	// A password of one's own is no warning.
	t.Setenv("REDIS_PASSWORD", "a-redis-password-of-this-test-only")
	_, stderr, _ = cliRun(t, "config", "check", "--config", path)
	assert.NotContains(t, stderr, "Redis password")
}
