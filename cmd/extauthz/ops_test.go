package main

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

func get(t *testing.T, url string, headers map[string]string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

func TestMetricsCountDecisions(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	key, _ := ts.create(t, keystore.Spec{Name: "m", Permissions: []string{"read:users"}})
	for range 3 {
		ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
	}
	ts.check(t, "GET", "/api/users", nil)
	ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": "sk_nope"})

	status, body, _ := get(t, ts.httpURL+"/metrics", nil)
	require.Equal(t, 200, status)
	for _, want := range []string{
		`extauthz_decisions_total{code="allow",mode="enforce",policy="default",route="/api/users"} 3`,
		`extauthz_decisions_total{code="missing_key",mode="enforce",policy="default",route="/api/users"} 1`,
		`extauthz_decisions_total{code="invalid_key",mode="enforce",policy="default",route="/api/users"} 1`,
		`extauthz_check_duration_seconds_count 5`,
		`extauthz_cache_hits_total 2`,
		`extauthz_cache_misses_total 1`,
		`extauthz_ratelimit_allowed_total 3`,
		`extauthz_audit_dropped_total 0`,
		`extauthz_audit_dropped_changes_total 0`,
	} {
		assert.Contains(t, body, want)
	}
	assert.NotContains(t, body, key, "no metric carries a key")
	assert.NotContains(t, body, "grpc_server_", "the gRPC server's own metrics are off by default")
}

func TestHealthAndReadiness(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\n", r.URL(0)))
	status, _, _ := get(t, ts.httpURL+"/healthz", nil)
	assert.Equal(t, 200, status)
	status, _, _ = get(t, ts.httpURL+"/readyz", nil)
	assert.Equal(t, 200, status)
	r.Stop()
	// A ping's answer stands for readyFor: the next one finds Redis gone.
	time.Sleep(readyFor)
	status, body, _ := get(t, ts.httpURL+"/readyz", nil)
	assert.Equal(t, 503, status, body)
	status, _, _ = get(t, ts.httpURL+"/healthz", nil)
	assert.Equal(t, 200, status, "alive even when Redis is down")
}

func TestHTTPModeThroughTheServer(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	key, k := ts.create(t, keystore.Spec{Name: "h", Permissions: []string{"read:users"}})
	status, body, h := get(t, ts.httpURL+"/authz/api/users", map[string]string{"X-Api-Key": key, "X-Forwarded-For": "10.0.0.1"})
	require.Equal(t, 200, status, body)
	assert.Equal(t, k.ID, h.Get("X-Authz-Key-Id"))
	status, body, h = get(t, ts.httpURL+"/authz/api/users", nil)
	assert.Equal(t, 401, status)
	assert.JSONEq(t, `{"error":"missing API key","code":"missing_key"}`, body)
	assert.Equal(t, "missing_key", h.Get("X-Authz-Code"))
	status, _, _ = get(t, ts.httpURL+"/authzfoo", nil)
	assert.Equal(t, 404, status)
}

func TestAChangedConfigFileIsReloaded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	write := func(perm string) {
		yaml := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\nroutes: [{path: /api/users, permissions: [%s]}]\n",
			filepath.Join(dir, "k.db"), perm)
		require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
	}
	write("read:users")
	ts := startServerFile(t, path)
	key, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})
	h := map[string]string{"x-api-key": key}
	require.NotNil(t, ts.check(t, "GET", "/api/users", h).GetOkResponse())

	time.Sleep(10 * time.Millisecond) // a different mtime even on coarse clocks
	write("write:users")
	require.Eventually(t, func() bool {
		code, _ := denial(t, ts.check(t, "GET", "/api/users", h))
		return code == "permission_denied"
	}, 5*time.Second, 20*time.Millisecond)
}

// A file written in place can be read halfway, and YAML cut short can still
// be valid and more open: here the half of the new file has the route with
// no permissions. The watch loads a changed file only once it stayed the same
// from one poll to the next.
func TestAConfigFileCaughtHalfWrittenIsNotLoaded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	head := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n", filepath.Join(dir, "k.db"))
	route := "routes:\n  - path: /api/users\n    methods: [GET]\n    permissions:\n"
	before := head + route + "      - admin:users\n"
	after := before + "      - audit:users\n"
	half := head + route // cut where a write pauses: valid, and needs no permission at all
	write := func(text string) {
		time.Sleep(10 * time.Millisecond) // a different mtime even on coarse clocks
		require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	}
	write(before)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard},
		func(s *server) { s.reloadEvery = time.Hour }) // the test polls, below
	reader, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})
	admin, _ := ts.create(t, keystore.Spec{Name: "a", Permissions: []string{"admin:users"}})
	code := func(key string) string {
		c, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}))
		return c
	}
	inForce := func() string {
		switch r, a := code(reader), code(admin); {
		case r == "permission_denied" && a == "":
			return "before"
		case r == "" && a == "":
			return "half"
		case r == "permission_denied" && a == "permission_denied":
			return "after"
		default:
			return "reader " + r + ", admin " + a
		}
	}
	w := ts.srv.newWatch()
	w.poll()
	require.Equal(t, "before", inForce())

	write(half)
	w.poll()
	assert.Equal(t, "before", inForce(), "a file seen changed for the first time is not loaded")
	write(after)
	w.poll()
	assert.Equal(t, "before", inForce(), "nor one that changed again since")
	w.poll()
	assert.Equal(t, "after", inForce(), "a file that stayed the same for a poll is loaded")
	w.poll()
	assert.Equal(t, "after", inForce())

	// A file that does not load is said once, and the next good one loads.
	reloads := func(result string) float64 {
		var m dto.Metric
		require.NoError(t, ts.srv.reloads.WithLabelValues(result).Write(&m))
		return m.GetCounter().GetValue()
	}
	write(before + "  - {path: /x, permision: [y]}\n")
	w.poll()
	w.poll()
	w.poll()
	assert.Equal(t, 1.0, reloads("error"))
	assert.Equal(t, "after", inForce())
	write(before)
	w.poll()
	w.poll()
	assert.Equal(t, "before", inForce())
}

func TestSIGHUPReloadsAndABrokenFileKeepsTheOldConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	grpcPort := redistest.FreePort(t)
	write := func(routes string) {
		yaml := fmt.Sprintf("listen: {grpc: \"127.0.0.1:%d\", http: off, admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%s",
			grpcPort, filepath.Join(dir, "k.db"), routes)
		require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
	}
	write("routes: [{path: /api/users, permissions: [read:users]}]\n")
	var out struct{ Key string }
	created := cli(t, "keys", "create", "--config", path, "--name", "hup", "--perm", "read:users", "--json")
	require.NoError(t, jsonUnmarshal(created, &out))

	cmd := exec.Command(os.Args[0], "serve", "--config", path)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "extauthz serving") }, 10*time.Second, 20*time.Millisecond)

	conn, err := grpc.NewClient(fmt.Sprintf("127.0.0.1:%d", grpcPort), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := authv3.NewAuthorizationClient(conn)
	code := func() string {
		resp, err := client.Check(context.Background(), checkReq("GET", "/api/users", "10.0.0.1", map[string]string{"x-api-key": out.Key}))
		require.NoError(t, err)
		c, _ := denial(t, resp)
		return c
	}
	require.Equal(t, "", code())

	write("routes: [{path: /api/users, permissions: [admin:users]}]\n")
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return code() == "permission_denied" }, 5*time.Second, 20*time.Millisecond)

	write("routes: [{path: /api/users, permision: [read:users]}]\n")
	require.NoError(t, cmd.Process.Signal(syscall.SIGHUP))
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "config reload failed") }, 5*time.Second, 20*time.Millisecond)
	assert.Contains(t, stderr.String(), "permision: unknown field")
	assert.Equal(t, "permission_denied", code(), "the old config still serves")
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }

func TestAuditTailReadsTheRedisStream(t *testing.T) {
	r := redistest.Start(t)
	path := writeConfig(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\naudit: {sink: redis}\n", r.URL(0)))
	var a, b struct{ ID string }
	require.NoError(t, jsonUnmarshal(cli(t, "keys", "create", "--config", path, "--name", "a", "--perm", "x", "--json"), &a))
	require.NoError(t, jsonUnmarshal(cli(t, "keys", "create", "--config", path, "--name", "b", "--perm", "x", "--json"), &b))
	cli(t, "keys", "revoke", a.ID, "--config", path)

	out := cli(t, "audit", "tail", "--key", a.ID, "--config", path)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	assert.Contains(t, lines[0], `"event":"key.created"`)
	assert.Contains(t, lines[1], `"event":"key.revoked"`)
	assert.Contains(t, lines[1], `"actor":"cli"`)
	assert.NotContains(t, out, b.ID)
}

// A reload applies the decision's settings only. A change it does not apply
// (here: turning on mutual TLS, tightening the admin API's rate limit and
// the per-owner key limit) must say so, naming each, rather than log
// "config reloaded" while the listeners go on taking plain text from
// anyone.
func TestAReloadNamesEveryChangeItDoesNotApply(t *testing.T) {
	dir := t.TempDir()
	certs := redistest.NewTLSFiles(t, t.TempDir())
	path := filepath.Join(dir, "extauthz.yaml")
	head := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		filepath.Join(dir, "k.db"), testRoutes)
	require.NoError(t, os.WriteFile(path, []byte(head), 0o600))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	key, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})

	// A change a reload applies is not warned about.
	time.Sleep(10 * time.Millisecond) // a different mtime even on coarse clocks
	require.NoError(t, os.WriteFile(path, []byte(head+"unmatched: deny\nmode: enforce\n"), 0o600))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "config reloaded") }, 5*time.Second, 20*time.Millisecond)
	assert.NotContains(t, logs.String(), "need a restart")

	time.Sleep(10 * time.Millisecond)
	next := head + fmt.Sprintf("tls: {cert_file: %q, key_file: %q, client_ca_file: %q}\nadmin: {rate_limit: 10/m}\nkeys: {max_per_owner: 5}\n",
		certs.ServerCert, certs.ServerKey, certs.CA)
	require.NoError(t, os.WriteFile(path, []byte(next), 0o600))
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"msg":"config reloaded",`) == 2 }, 5*time.Second, 20*time.Millisecond)

	// What the reload could not do: the gRPC listener still answers a
	// plain-text client with no certificate.
	require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
	var warned string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "need a restart") {
			warned = line
		}
	}
	require.NotEmpty(t, warned, "the reload says that some changes are not in effect:\n%s", logs.String())
	for _, field := range []string{"tls", "admin", "keys"} {
		assert.Contains(t, warned, `"`+field, "names %s", field)
	}
}

// A route an earlier, broader one shadows never decides a request: here
// the admin routes added after /api/** leave /api/admin/* to a key that
// can only read. config check warns of it; so must serve, when it starts
// on such a file and when a reload brings one in, or the log says only
// "config reloaded" while the protection the operator added is not there.
func TestAReloadWarnsOfARouteThatIsNeverReached(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	head := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n",
		filepath.Join(dir, "k.db"))
	good := head + "routes:\n  - {path: \"/api/admin/**\", permissions: [admin]}\n  - {path: \"/api/**\", permissions: [read]}\n"
	shadowed := head + "routes:\n  - {path: \"/api/**\", permissions: [read]}\n  - {path: \"/api/admin/**\", permissions: [admin]}\n"
	const warning = `routes[1] \"/api/admin/**\" is never reached`

	require.NoError(t, os.WriteFile(path, []byte(good), 0o600))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard}, func(s *server) { s.reloadEvery = time.Hour })
	reader, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read"}})
	code := func() string {
		c, _ := denial(t, ts.check(t, "GET", "/api/admin/users", map[string]string{"x-api-key": reader}))
		return c
	}
	require.Equal(t, "permission_denied", code())
	assert.NotContains(t, logs.String(), "never reached")

	require.NoError(t, os.WriteFile(path, []byte(shadowed), 0o600))
	ts.srv.reload("test", nil)
	require.Equal(t, "", code(), "the reloaded table lets the reader into /api/admin")
	assert.Contains(t, logs.String(), warning, "the reload says why")

	// And at start, on the same file.
	var started syncbuf.Buffer
	startServerOut(t, path, serverOutput{logs: &started, audit: io.Discard})
	assert.Contains(t, started.String(), warning)
}

// startReloadable starts a server on a config file of its own, reloaded
// only when a test calls reload, and returns the file, what it holds and
// the server's log.
func startReloadable(t *testing.T) (ts *testServer, path, yaml string, logs *syncbuf.Buffer) {
	dir := t.TempDir()
	path = filepath.Join(dir, "extauthz.yaml")
	yaml = fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		filepath.Join(dir, "k.db"), testRoutes)
	require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
	logs = &syncbuf.Buffer{}
	ts = startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard}, func(s *server) { s.reloadEvery = time.Hour })
	return ts, path, yaml, logs
}

// A config file every user of the machine may write lets any of them
// rewrite every policy, which the watch applies within seconds: serve warns
// of it when it starts and at each reload, naming the file and its mode.
func TestAConfigFileEveryoneMayWriteIsWarnedOf(t *testing.T) {
	ts, path, _, logs := startReloadable(t)
	ts.srv.reload("test", nil)
	require.Contains(t, logs.String(), "config reloaded")
	assert.NotContains(t, logs.String(), "writable by every user", "a private file is not warned of")

	require.NoError(t, os.Chmod(path, 0o666))
	ts.srv.reload("test", nil)
	assert.Contains(t, logs.String(), `"msg":"the config file is writable by every user of this machine`)
	assert.Contains(t, logs.String(), `"mode":"0666"`)

	var started syncbuf.Buffer
	startServerOut(t, path, serverOutput{logs: &started, audit: io.Discard})
	require.Eventually(t, func() bool { return strings.Contains(started.String(), `"trigger":"start"`) }, 5*time.Second, 20*time.Millisecond)
	assert.Contains(t, started.String(), "writable by every user")
}

// The key format (keys.prefix) is a setting a reload does not apply, and
// the decision keeps it with the rest. A reload that changed it for the
// decision alone would stop it recognising the keys in use as keys: one
// sent in another policy's source would reach that policy's upstream, and
// the admin API would quote it in its errors, until a restart, while the
// log said the change was not in effect.
func TestAReloadKeepsTheKeyFormat(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	head := fmt.Sprintf(`listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", admin: off}
audit: {sink: none}
store: {path: %q}
routes: [{path: /api/users, permissions: [read:users]}]
policies:
  - name: billing
    match: {context: {policy: billing}}
    sources: [{header: x-billing-key}]
    routes: [{path: "/invoices/**", permissions: [read:invoices]}]
`, filepath.Join(dir, "k.db"))
	require.NoError(t, os.WriteFile(path, []byte(head), 0o600))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	billing, _ := ts.create(t, keystore.Spec{Name: "billing", Permissions: []string{"read:invoices"}})
	other, _ := ts.create(t, keystore.Spec{Name: "other", Permissions: []string{"read:users"}})
	stripped := func() []string {
		t.Helper()
		in := checkReq("GET", "/invoices/1", "10.1.2.3", map[string]string{"x-billing-key": billing, "x-api-key": other})
		in.Attributes.ContextExtensions = map[string]string{"policy": "billing"}
		resp, err := ts.client.Check(context.Background(), in)
		require.NoError(t, err)
		require.NotNil(t, resp.GetOkResponse(), "%v", resp.GetStatus())
		return filterSources(resp.GetOkResponse().GetHeadersToRemove())
	}
	require.ElementsMatch(t, []string{"x-billing-key", "x-api-key"}, stripped())

	time.Sleep(10 * time.Millisecond) // a different mtime even on coarse clocks
	require.NoError(t, os.WriteFile(path, []byte(head+"keys: {prefix: pk}\n"), 0o600))
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "need a restart") }, 5*time.Second, 20*time.Millisecond)
	assert.ElementsMatch(t, []string{"x-billing-key", "x-api-key"}, stripped(), "the key in the other policy's source still never reaches the upstream")
}

// /readyz answers anyone who reaches the HTTP listener, and asks the store.
// A flood of it must not become a flood of store calls, which the
// failed-attempts budgets keep from every other unauthenticated request:
// concurrent readiness checks share one store call, and a result stands for
// a moment. Nor can a caller that hangs up make the shared call fail for the
// others.
func TestAFloodOfReadinessChecksIsNotAFloodOfStoreCalls(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\n", r.URL(0)))
	opt, err := goredis.ParseURL(r.URL(0))
	require.NoError(t, err)
	rc := goredis.NewClient(opt)
	defer rc.Close()
	gets := func() int {
		info, err := rc.Info(context.Background(), "commandstats").Result()
		require.NoError(t, err)
		for line := range strings.SplitSeq(info, "\r\n") {
			if rest, ok := strings.CutPrefix(line, "cmdstat_get:calls="); ok {
				n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
				return n
			}
		}
		return 0
	}
	require.Equal(t, 200, func() int { s, _, _ := get(t, ts.httpURL+"/readyz", nil); return s }())

	// (That a caller who hangs up cannot fail the shared call is
	// TestAReadinessPingIsNoCallersToEnd: here its answer would come from
	// the call just made, and no call be made for it.)

	before := gets()
	const callers, each = 20, 10
	var wg sync.WaitGroup
	statuses := make(chan int, callers*each)
	for range callers {
		wg.Go(func() {
			for range each {
				s, _, _ := get(t, ts.httpURL+"/readyz", nil)
				statuses <- s
			}
		})
	}
	start := time.Now()
	wg.Wait()
	close(statuses)
	for s := range statuses {
		require.Equal(t, 200, s)
	}
	calls := gets() - before
	// One call per moment (readyFor) in which checks came, and one more.
	limit := int(time.Since(start)/readyFor) + 2
	assert.LessOrEqual(t, calls, limit, "%d readiness checks made %d store calls", callers*each, calls)
}

// Anyone who reaches the HTTP listener may ask for /metrics, and a page
// costs about a millisecond of CPU: a flood of requests must cost a few
// gathers a second, not one each. Sharing must not make the page stale: a
// request sees what happened before it came, in every format.
func TestAFloodOfScrapesIsNotAFloodOfGathers(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded"))
	var gathers, value atomic.Int64
	ts.srv.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "test_gathers", Help: "Gathers so far."},
		func() float64 { return float64(gathers.Add(1)) }))
	ts.srv.metrics.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "test_value", Help: "What the test set last."},
		func() float64 { return float64(value.Load()) }))

	// Fresh: each scrape sees the value set just before it, in text,
	// gzipped text and protobuf alike.
	for i := range int64(3) {
		value.Store(i + 1)
		assertValue := func(got float64, format string) {
			assert.Equal(t, float64(i+1), got, "a %s scrape right after a change", format)
		}
		v, _ := sample(scrape(t, nil, ts.httpURL+"/metrics"), "test_value")
		assertValue(v, "text")
		req, err := http.NewRequest("GET", ts.httpURL+"/metrics", nil)
		require.NoError(t, err)
		req.Header.Set("Accept", string(expfmt.NewFormat(expfmt.TypeProtoDelim)))
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true}}).Do(req)
		require.NoError(t, err)
		require.Equal(t, "gzip", resp.Header.Get("Content-Encoding"))
		require.Contains(t, resp.Header.Get("Content-Type"), "application/vnd.google.protobuf")
		zr, err := gzip.NewReader(resp.Body)
		require.NoError(t, err)
		fams := map[string]*dto.MetricFamily{}
		for dec := expfmt.NewDecoder(zr, expfmt.NewFormat(expfmt.TypeProtoDelim)); ; {
			var mf dto.MetricFamily
			if err := dec.Decode(&mf); err != nil {
				require.ErrorIs(t, err, io.EOF)
				break
			}
			fams[mf.GetName()] = &mf
		}
		resp.Body.Close()
		v, _ = sample(fams, "test_value")
		assertValue(v, "gzipped protobuf")
	}

	before := gathers.Load()
	const callers, each = 20, 5
	var wg sync.WaitGroup
	start := time.Now()
	for range callers {
		wg.Go(func() {
			for range each {
				s, body, _ := get(t, ts.httpURL+"/metrics", nil)
				assert.Equal(t, 200, s)
				assert.True(t, strings.Contains(body, "extauthz_build_info"), "a page without the metrics")
			}
		})
	}
	wg.Wait()
	n := gathers.Load() - before
	// One gather per metricsEvery in which scrapes came, and one more.
	limit := int64(time.Since(start)/metricsEvery) + 2
	assert.LessOrEqual(t, n, limit, "%d scrapes gathered %d times", callers*each, n)
}

// The store call /readyz shares is made on no caller's context: a caller
// who hangs up, or whose request times out, would otherwise end the call
// that the others wait on, and its failure would answer them 503 for as
// long as it stands.
func TestAReadinessPingIsNoCallersToEnd(t *testing.T) {
	var r readiness
	var done <-chan struct{}
	calls := 0
	ping := func(ctx context.Context, d time.Duration) error {
		calls++
		done = ctx.Done()
		assert.Equal(t, time.Second, d, "the ping has a bound of its own")
		return nil
	}
	require.NoError(t, r.check(ping))
	assert.Equal(t, 1, calls)
	assert.Nil(t, done, "the shared ping's context can be ended by someone other than its own bound")
}

// A server on the built-in defaults (no config file) has nothing to reload,
// but a SIGHUP must not end it, as one nobody catches would: operators and
// their tools send it after a config change out of habit.
func TestSIGHUPWithoutAConfigFileIsLoggedNotFatal(t *testing.T) {
	var logs syncbuf.Buffer
	s := &server{logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.watchConfig(ctx) }()
	defer func() { cancel(); <-done }()
	// This test's own catch keeps the test binary alive whatever the watch
	// does; the signal is sent until the watch, once it catches it too,
	// says so (it may not have asked for it yet when the first one comes).
	// It stays registered after the test: a SIGHUP of the loop below still
	// on its way once both had stopped catching it would end the binary.
	mine := make(chan os.Signal, 1)
	signal.Notify(mine, syscall.SIGHUP)
	require.Eventually(t, func() bool {
		require.NoError(t, syscall.Kill(os.Getpid(), syscall.SIGHUP))
		return strings.Contains(logs.String(), "no config file to reload")
	}, 5*time.Second, 10*time.Millisecond)
}

// An emptied config file is not swapped in: setting nothing, it is the
// defaults, whose no routes would deny every request of a running server.
// Nor is one of blanks, comments, an empty document or mapping (echo >
// file, a template that rendered only its header comment), which sets
// nothing either. The reload fails, says why, and the routes in force stay.
func TestAnEmptiedConfigFileIsNotReloaded(t *testing.T) {
	for _, content := range []string{"", "\n", "  \n\n", "# managed by the deploy tool\n", "---\n", "{}\n", "---\n# nothing\n...\n", "listen: {}\nstore: {}\n"} {
		t.Run(fmt.Sprintf("%q", content), func(t *testing.T) {
			ts, path, yaml, logs := startReloadable(t)
			reader, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})
			require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": reader}).GetOkResponse())

			require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
			ts.srv.reload("test", nil)
			assert.Contains(t, logs.String(), "config reload failed; keeping the running config")
			assert.Contains(t, logs.String(), "the config file sets nothing")
			assert.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": reader}).GetOkResponse(), "the routes in force were dropped")

			// A file with content again reloads as ever.
			require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
			ts.srv.reload("test", nil)
			assert.Contains(t, logs.String(), "config reloaded")
		})
	}
}

// A config file of two YAML documents is not loaded, at start or on a
// reload: the decoder would read the first alone, and here the admin route
// after the "---" would be gone, leaving /api/admin to any valid key under
// unmatched: authenticate. Over gRPC the reader stays refused there.
func TestAConfigFileOfTwoDocumentsIsNotLoaded(t *testing.T) {
	ts, path, yaml, logs := startReloadable(t)
	reader, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})
	adminCode := func() string {
		c, _ := denial(t, ts.check(t, "GET", "/api/admin/users", map[string]string{"x-api-key": reader}))
		return c
	}
	require.Equal(t, "no_route", adminCode())

	joined := yaml + "unmatched: authenticate\n---\nroutes: [{path: \"/api/admin/**\", permissions: [admin]}]\n"
	require.NoError(t, os.WriteFile(path, []byte(joined), 0o600))
	ts.srv.reload("test", nil)
	assert.Contains(t, logs.String(), "config reload failed; keeping the running config")
	assert.Contains(t, logs.String(), "more than one YAML document")
	assert.Equal(t, "no_route", adminCode(), "the reader got into /api/admin")

	_, err := config.Load(path)
	require.ErrorContains(t, err, "more than one YAML document", "serve and config check refuse it too")
}

// A route's methods written as an empty list (a template's list that
// rendered to nothing) is refused rather than read as every method: here it
// would make /status public for DELETE too, where the operator meant only
// GET to be. The reload fails, and over gRPC DELETE still needs a key.
func TestARouteWithAnEmptyListOfMethodsIsRefused(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	file := func(public string) string {
		return fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n"+
			"routes:\n  - {path: /status, methods: %s, public: true}\n  - {path: /status, permissions: [admin]}\n", filepath.Join(dir, "k.db"), public)
	}
	require.NoError(t, os.WriteFile(path, []byte(file("[GET]")), 0o600))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard}, func(s *server) { s.reloadEvery = time.Hour })
	deleteCode := func() string {
		c, _ := denial(t, ts.check(t, "DELETE", "/status", nil))
		return c
	}
	require.Equal(t, "missing_key", deleteCode())

	require.NoError(t, os.WriteFile(path, []byte(file("[]")), 0o600))
	ts.srv.reload("test", nil)
	assert.Contains(t, logs.String(), "config reload failed; keeping the running config")
	assert.Contains(t, logs.String(), "routes[0].methods: an empty list")
	assert.Equal(t, "missing_key", deleteCode(), "DELETE /status became public")
}

// The watch knows a config file by which file its path names, not only by
// its size and time: a symbolic link retargeted to another file (ln -sfn,
// the deploy of NixOS's /etc, whose store files all have one time, or of
// release directories) with the same size and time is loaded. Here the
// new file takes read:users off /api/users.
func TestAConfigSymlinkSwappedToAnotherFileOfTheSameSizeAndTimeIsReloaded(t *testing.T) {
	dir := t.TempDir()
	head := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n", filepath.Join(dir, "k.db"))
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	require.NoError(t, os.WriteFile(a, []byte(head+"routes: [{path: /api/users, permissions: [read:users]}]\n"), 0o600))
	require.NoError(t, os.WriteFile(b, []byte(head+"routes: [{path: /api/users, permissions: [gone:users]}]\n"), 0o600))
	epoch := time.Unix(1, 0) // as in the Nix store
	require.NoError(t, os.Chtimes(a, epoch, epoch))
	require.NoError(t, os.Chtimes(b, epoch, epoch))
	path := filepath.Join(dir, "extauthz.yaml")
	require.NoError(t, os.Symlink("a.yaml", path))

	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard}, func(s *server) { s.reloadEvery = time.Hour })
	reader, _ := ts.create(t, keystore.Spec{Name: "r", Permissions: []string{"read:users"}})
	code := func() string {
		c, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": reader}))
		return c
	}
	w := ts.srv.newWatch()
	require.Equal(t, "", code())

	next := filepath.Join(dir, "next") // ln -sfn b.yaml extauthz.yaml, atomically
	require.NoError(t, os.Symlink("b.yaml", next))
	require.NoError(t, os.Rename(next, path))
	for range 3 {
		w.poll()
	}
	assert.Equal(t, "permission_denied", code(), "the swapped-in config was never loaded")
}

// serve warns of an admin listener reachable off loopback without TLS as
// it starts, as config check does: under the chart or compose nobody runs
// the check.
func TestServeWarnsOfACleartextAdminListenerOffLoopback(t *testing.T) {
	var logs syncbuf.Buffer
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"0.0.0.0:0\"}\naudit: {sink: none}\n"+storeYAML(t, "embedded"))
	startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "extauthz serving") }, 5*time.Second, 20*time.Millisecond)
	assert.Contains(t, logs.String(), "is reachable off this host and tls is off")
}
