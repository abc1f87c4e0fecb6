package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A server started with another pepper than the store's keys were hashed
// with (a secret mistyped, cut, or kept with its file's line ending) would
// answer every key 401. It says why, reports itself unready on /readyz and
// NOT_SERVING on gRPC health, so that a rollout stops at its first replica,
// and neither it nor the CLI with that pepper makes a key the fleet cannot
// find.
func TestAServerWithAnotherPepperIsNeverReady(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, backend)+testRoutes)

			// The fleet's processes marked the store with their pepper.
			cfg, err := config.Load(path)
			require.NoError(t, err)
			be, err := openBackend(cfg, nil)
			require.NoError(t, err)
			fleet := &keystore.Manager{Store: be.store, Hasher: keystore.NewHasher([]byte(testPepper + "\n")), Format: cfg.Keys.Format}
			fleetKey, _, err := fleet.Create(context.Background(), keystore.Spec{Name: "the fleet's", Permissions: []string{"read:users"}}, "test")
			require.NoError(t, err)
			require.NoError(t, be.Close())

			logs := &syncbuf.Buffer{}
			ts := startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard})
			readyz := func() (int, string) {
				resp, err := http.Get(ts.httpURL + "/readyz")
				require.NoError(t, err)
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(body)
			}
			require.Eventually(t, func() bool { code, _ := readyz(); return code == http.StatusServiceUnavailable }, 10*time.Second, 20*time.Millisecond)
			_, body := readyz()
			assert.Contains(t, body, "pepper")
			assert.Contains(t, logs.String(), "the hashing pepper differs from the one the key store's keys were hashed with")
			assert.NotContains(t, logs.String(), testPepper, "the pepper itself is never logged")
			for _, service := range []string{"", "envoy.service.auth.v3.Authorization"} {
				hc, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
				require.NoError(t, err)
				assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, hc.GetStatus(), "service %q", service)
			}
			// What it would serve: the fleet's key unknown.
			denied := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": fleetKey}).GetDeniedResponse()
			require.NotNil(t, denied)
			assert.EqualValues(t, 401, denied.GetStatus().GetCode())

			// The CLI with this pepper makes no key, and says why.
			_, stderr, code := cliRun(t, "keys", "create", "--config", path, "--name", "unfindable", "--perm", "read:users")
			assert.NotZero(t, code)
			assert.Contains(t, stderr, "another pepper")
			assert.NotContains(t, stderr, "sk_", "no secret printed")
			keys, _, err := ts.mgr.Store.List(context.Background(), keystore.ListOptions{IncludeRevoked: true})
			require.NoError(t, err)
			assert.Len(t, keys, 1, "a key made under another pepper")
		})
	}
}

// A server whose pepper is the store's is ready, and a store made before
// the mark existed is marked by the first process to ask.
func TestAServerWithTheStoresPepperIsReady(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			ts := startServerOut(t, writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, backend)+testRoutes),
				serverOutput{logs: logs, audit: io.Discard})
			require.NoError(t, ts.srv.manager.CheckPepper(context.Background()), "the server's pepper is the store's")
			key, _ := ts.create(t, keystore.Spec{Name: "k", Permissions: []string{"read:users"}})
			require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
			resp, err := http.Get(ts.httpURL + "/readyz")
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
			assert.False(t, strings.Contains(logs.String(), "pepper differs"), logs.String())
		})
	}
}

// A server cannot say it is ready before it knows its pepper is the
// store's. Started while Redis is unreachable, it could not check the
// mark; once Redis was back, the ping answered and /readyz said 200 until
// the check's next try, long enough for a rollout to count a replica with
// a mistyped pepper as ready and go on to the next.
func TestAServerIsNotReadyBeforeItHasCheckedThePepper(t *testing.T) {
	r := redistest.Start(t)
	direct := writeConfig(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"p:\"}}\n", r.URL(0)))
	cfg, err := config.Load(direct)
	require.NoError(t, err)
	be, err := openBackend(cfg, nil)
	require.NoError(t, err)
	fleet := &keystore.Manager{Store: be.store, Hasher: keystore.NewHasher([]byte("the fleet's own pepper")), Format: cfg.Keys.Format}
	_, _, err = fleet.Create(context.Background(), keystore.Spec{Name: "the fleet's", Permissions: []string{"read:users"}}, "test")
	require.NoError(t, err)
	require.NoError(t, be.Close())

	p := faultproxy.Start(t, r.Addr)
	p.Drop()
	logs := &syncbuf.Buffer{}
	ts := startServerOut(t, writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {backend: redis, redis: {url: %q, prefix: \"p:\"}}\n%s",
		"redis://"+p.Addr()+"/0", testRoutes)), serverOutput{logs: logs, audit: io.Discard})
	require.Eventually(t, func() bool { return strings.Contains(logs.String(), "the key store's pepper mark is not checked yet") }, 10*time.Second, 10*time.Millisecond)
	p.Heal()

	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(ts.httpURL + "/readyz")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "ready with a pepper it has not checked: %s", body)
		if strings.Contains(string(body), "pepper") {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	assert.Contains(t, logs.String(), "the hashing pepper differs")
	assert.Equal(t, 1, strings.Count(logs.String(), "the hashing pepper differs"), "said once")
}
