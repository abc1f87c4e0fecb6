package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/internal/testproc"
	"github.com/extauthz/extauthz/keystore"
)

// TestMain lets the test binary act as the extauthz command, so tests can
// run the CLI and the server as real separate processes without building.
// TestMain runs the package's tests. Most run one at a time: the fault
// tests measure how long checks take and look for leaked goroutines, and
// others read the process's memory. The few that spend seconds waiting
// (for a replica's confirm timeout, a cache TTL, a grace period, a child
// process) and measure nothing of the process call t.Parallel: Go starts
// them only once every serial test has finished, and they wait together.
func TestMain(m *testing.M) {
	if os.Getenv("EXTAUTHZ_TEST_AS_MAIN") == "1" {
		main()
		return
	}
	// Every server and CLI process of these tests hashes with a pepper, as in
	// production; a test of the pepper's absence unsets it for itself.
	os.Setenv(testPepperEnv, testPepper)
	testproc.NoRaceExitSleep()
	goleak.VerifyTestMain(m, redistest.LeakOptions()...)
}

// The pepper every test server and CLI process hashes with, in the variable
// the default config names.
const (
	testPepperEnv = "EXTAUTHZ_PEPPER"
	testPepper    = "cmd/extauthz test pepper, not a secret"
)

// testServer is one extauthz server running in this process on free
// loopback ports, plus a key manager on its own connection to the same
// store (as the CLI would have).
type testServer struct {
	cfgPath  string
	cfg      *config.Config
	srv      *server
	client   authv3.AuthorizationClient
	conn     *grpc.ClientConn
	mgr      *keystore.Manager
	httpURL  string
	adminURL string // "" unless the config turns the admin listener on
	stop     func()
}

// serverOutput is where a test server's logs and audit events go; the
// default discards them.
type serverOutput struct {
	logs, audit io.Writer
}

const testRoutes = `
routes:
  - {path: /healthz, public: true}
  - {path: /api/users, methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users], rate_limit: 2/m}
  - {path: "/api/reports/**", permissions: [read:reports]}
`

// storeYAML returns the store section for backend "embedded" or "redis";
// for redis it starts a redis-server for the test.
func storeYAML(t *testing.T, backend string) string {
	t.Helper()
	if backend == "redis" {
		r := redistest.Start(t)
		return fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"t:\"}}\n", r.URL(0))
	}
	return fmt.Sprintf("store: {backend: embedded, path: %q}\n", filepath.Join(t.TempDir(), "extauthz.db"))
}

func startServer(t *testing.T, yaml string) *testServer {
	t.Helper()
	return startServerFile(t, writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+yaml))
}

func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "extauthz.yaml")
	require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))
	return path
}

func startServerFile(t *testing.T, path string) *testServer {
	t.Helper()
	return startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
}

// startServerOut starts a server on the config at path; tune, if given,
// adjusts it before it runs.
func startServerOut(t *testing.T, path string, out serverOutput, tune ...func(*server)) *testServer {
	t.Helper()
	return startServerTuned(t, path, out, nil, tune...)
}

// startServerTuned is startServerOut with pre, when set, called on the
// built server before it listens (to shrink a listener's timeouts), and
// tune after it listens, before it serves.
func startServerTuned(t *testing.T, path string, out serverOutput, pre func(*server), tune ...func(*server)) *testServer {
	t.Helper()
	read := fileStamp(path)
	cfg, err := config.Load(path)
	require.NoError(t, err)
	// The server's own logger, at debug, in the config's format.
	srv, err := newServer(cfg, newLogger(config.Log{Level: "debug", Format: cfg.Log.Format}, out.logs), out.audit)
	require.NoError(t, err)
	if pre != nil {
		pre(srv)
	}
	require.NoError(t, srv.listen())
	srv.cfgPath, srv.cfgRead, srv.reloadEvery = path, read, 20*time.Millisecond
	for _, f := range tune {
		f(srv)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.run(ctx) }()

	conn, err := grpc.NewClient(srv.grpcLn.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	be, err := openBackend(cfg, nil)
	require.NoError(t, err)
	mgr := be.manager(cfg)

	ts := &testServer{
		cfgPath: path, cfg: cfg, srv: srv, conn: conn, client: authv3.NewAuthorizationClient(conn), mgr: mgr,
		httpURL: "http://" + srv.httpLn.Addr().String(),
	}
	if srv.adminLn != nil {
		ts.adminURL = "http://" + srv.adminLn.Addr().String()
	}
	var once bool
	ts.stop = func() {
		if once {
			return
		}
		once = true
		conn.Close()
		cancel()
		require.NoError(t, <-done)
		be.Close()
	}
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) create(t *testing.T, spec keystore.Spec) (string, *keystore.Key) {
	t.Helper()
	secret, k, err := ts.mgr.Create(context.Background(), spec, "test")
	require.NoError(t, err)
	return secret, k
}

func checkReq(method, path, peer string, headers map[string]string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: peer, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 40000}},
		}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: method, Path: path, Host: "api.example.com", Headers: headers,
		}},
	}}
}

func (ts *testServer) check(t *testing.T, method, path string, headers map[string]string) *authv3.CheckResponse {
	t.Helper()
	resp, err := ts.client.Check(context.Background(), checkReq(method, path, "10.1.2.3", headers))
	require.NoError(t, err, "a decision is never an RPC error")
	return resp
}

func headerMap(opts []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		m[strings.ToLower(o.GetHeader().GetKey())] = o.GetHeader().GetValue()
	}
	return m
}

// denial asserts a denied response and returns its code.
func denial(t *testing.T, resp *authv3.CheckResponse) (string, int) {
	t.Helper()
	d := resp.GetDeniedResponse()
	if d == nil {
		return "", 200
	}
	hs := headerMap(d.GetHeaders())
	var body struct{ Error, Code string }
	require.NoError(t, json.Unmarshal([]byte(d.GetBody()), &body), d.GetBody())
	assert.Equal(t, body.Code, hs["x-authz-code"])
	assert.Equal(t, "application/json", hs["content-type"])
	assert.NotEmpty(t, body.Error)
	return body.Code, int(d.GetStatus().GetCode())
}

// checkCode is the denial code of one check of key on GET /api/users ("":
// allowed).
func checkCode(t *testing.T, ts *testServer, key string) string {
	t.Helper()
	code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}))
	return code
}

// adminStatus is the status of one admin API call to ts with key ("" =
// none) and a JSON body ("" = none).
func adminStatus(t *testing.T, ts *testServer, method, path, key, body string) int {
	t.Helper()
	req, err := http.NewRequest(method, ts.adminURL+path, strings.NewReader(body))
	require.NoError(t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

func TestDecisionsOverGRPC(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+testRoutes+"rate_limit: {default: 100/m}\n")
			reader, rk := ts.create(t, keystore.Spec{Name: "reader", Owner: "acme", Permissions: []string{"read:users"}})
			admin, _ := ts.create(t, keystore.Spec{Name: "root", Permissions: []string{"admin"}})
			local, _ := ts.create(t, keystore.Spec{Name: "office", Permissions: []string{"read:users"}, IPAllowlist: mustCIDRs(t, "192.168.0.0/16")})
			revoked, revokedKey := ts.create(t, keystore.Spec{Name: "old", Permissions: []string{"read:users"}})
			_, err := ts.mgr.Revoke(context.Background(), revokedKey.ID, "test")
			require.NoError(t, err)
			future := time.Now().Add(150 * time.Millisecond)
			expiring, _ := ts.create(t, keystore.Spec{Name: "temp", Permissions: []string{"read:users"}, ExpiresAt: &future})
			badSum := reader[:20] + string("ab"[map[bool]int{true: 1}[reader[20] == 'a']]) + reader[21:]

			tests := []struct {
				name    string
				method  string
				path    string
				headers map[string]string
				code    string
				status  int
			}{
				{"a reader reads users", "GET", "/api/users", map[string]string{"x-api-key": reader}, "", 200},
				{"Bearer works", "GET", "/api/users", map[string]string{"authorization": "Bearer " + reader}, "", 200},
				{"the query works", "GET", "/api/users?api_key=" + reader, nil, "", 200},
				{"a cookie works", "GET", "/api/users", map[string]string{"cookie": "api_key=" + reader}, "", 200},
				{"admin passes any permission", "GET", "/api/reports/2026", map[string]string{"x-api-key": admin}, "", 200},
				{"a public route needs no key", "GET", "/healthz", nil, "", 200},
				{"a dot-dot segment is a bad request: upstreams read it apart", "GET", "/healthz/../api/users", nil, "bad_request", 400},
				{"encoded dot-dot is a bad request: upstreams read it apart", "GET", "/healthz/%2e%2e/api/reports/x", map[string]string{"x-api-key": reader}, "bad_request", 400},
				{"double slashes are a bad request: upstreams read them apart", "GET", "//api//users", map[string]string{"x-api-key": reader}, "bad_request", 400},
				{"an encoded slash is a bad request", "GET", "/api%2Fusers", nil, "bad_request", 400},
				{"an encoded letter is 400: Express reads it as another name", "GET", "/api/%75sers", map[string]string{"x-api-key": reader}, "bad_request", 400},
				{"case that picks a rule for a case-blind router is 400", "GET", "/API/REPORTS/x", map[string]string{"x-api-key": reader}, "bad_request", 400},
				{"case that reaches no rule either way", "GET", "/API/Elsewhere", map[string]string{"x-api-key": reader}, "no_route", 403},
				{"a trailing slash does not dodge a rule", "GET", "/api/reports/", map[string]string{"x-api-key": reader}, "permission_denied", 403},
				{"no route", "GET", "/admin", map[string]string{"x-api-key": admin}, "no_route", 403},
				{"no key", "GET", "/api/users", nil, "missing_key", 401},
				{"a bad checksum", "GET", "/api/users", map[string]string{"x-api-key": badSum}, "invalid_key", 401},
				{"an unknown key", "GET", "/api/users", map[string]string{"x-api-key": "legacy-unknown-key-123"}, "invalid_key", 401},
				{"a key in two places: the first present source wins", "GET", "/api/users?api_key=" + admin, map[string]string{"x-api-key": "sk_garbage"}, "invalid_key", 401},
				{"a revoked key", "GET", "/api/users", map[string]string{"x-api-key": revoked}, "revoked_key", 401},
				{"an address outside the allowlist", "GET", "/api/users", map[string]string{"x-api-key": local}, "ip_not_allowed", 403},
				{"a missing permission", "DELETE", "/api/users/7", map[string]string{"x-api-key": reader}, "permission_denied", 403},
				{"a 64 KB header", "GET", "/api/users", map[string]string{"x-api-key": strings.Repeat("k", 64<<10)}, "invalid_key", 401},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					resp := ts.check(t, tt.method, tt.path, tt.headers)
					code, status := denial(t, resp)
					assert.Equal(t, tt.code, code)
					assert.Equal(t, tt.status, status)
					wantRPC := map[int]codes.Code{200: codes.OK, 400: codes.InvalidArgument, 401: codes.Unauthenticated, 403: codes.PermissionDenied}[tt.status]
					assert.Equal(t, int32(wantRPC), resp.GetStatus().GetCode())
					if tt.status == 401 {
						assert.Contains(t, headerMap(resp.GetDeniedResponse().GetHeaders())["www-authenticate"], "Bearer")
					}
					assert.NotContains(t, resp.String(), reader, "no response carries a key")
				})
			}

			t.Run("an allow sets identity, strips spoofing and every credential", func(t *testing.T) {
				resp := ts.check(t, "GET", "/api/users?api_key="+admin+"&page=2", map[string]string{
					"x-api-key":         reader,
					"cookie":            "session=abc; api_key=" + admin + "; theme=dark",
					"x-authz-key-id":    "key_spoofed",
					"x-authz-admin":     "true",
					"X-Authz-Something": "x",
				})
				ok := resp.GetOkResponse()
				require.NotNil(t, ok, resp.String())
				set := headerMap(ok.GetHeaders())
				assert.Equal(t, rk.ID, set["x-authz-key-id"])
				assert.Equal(t, "reader", set["x-authz-key-name"])
				assert.Equal(t, "acme", set["x-authz-owner"])
				assert.Equal(t, "read:users", set["x-authz-permissions"])
				assert.Equal(t, "session=abc; theme=dark", set["cookie"], "the api_key cookie is cut, the rest kept")
				for _, o := range ok.GetHeaders() {
					assert.Equal(t, corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD, o.GetAppendAction())
					//lint:ignore SA1019 identity headers overwrite (docs/decision.md): the deprecated append field stays unset
					assert.Nil(t, o.GetAppend())
				}
				assert.ElementsMatch(t, []string{"x-api-key", "x-authz-admin", "X-Authz-Something"}, ok.GetHeadersToRemove())
				assert.Equal(t, []string{"api_key"}, ok.GetQueryParametersToRemove())
				rl := headerMap(ok.GetResponseHeadersToAdd())
				assert.Equal(t, `"key";q=100;w=60`, rl["ratelimit-policy"])
			})

			t.Run("a public route strips every x-authz header and the credential", func(t *testing.T) {
				resp := ts.check(t, "GET", "/healthz", map[string]string{"x-authz-key-id": "spoof", "authorization": "Bearer " + reader})
				ok := resp.GetOkResponse()
				require.NotNil(t, ok)
				assert.Empty(t, ok.GetHeaders())
				assert.ElementsMatch(t, []string{"x-authz-key-id", "authorization"}, ok.GetHeadersToRemove())
			})

			t.Run("an expired key", func(t *testing.T) {
				time.Sleep(time.Until(future))
				code, status := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": expiring}))
				assert.Equal(t, "expired_key", code)
				assert.Equal(t, 401, status)
			})

			t.Run("a route limit answers 429 with Retry-After", func(t *testing.T) {
				del, _ := ts.create(t, keystore.Spec{Name: "deleter", Permissions: []string{"delete:users"}})
				for range 2 {
					resp := ts.check(t, "DELETE", "/api/users/1", map[string]string{"x-api-key": del})
					require.NotNil(t, resp.GetOkResponse(), resp.String())
				}
				resp := ts.check(t, "DELETE", "/api/users/1", map[string]string{"x-api-key": del})
				code, status := denial(t, resp)
				assert.Equal(t, "rate_limited", code)
				assert.Equal(t, 429, status)
				assert.Equal(t, int32(codes.ResourceExhausted), resp.GetStatus().GetCode())
				hs := headerMap(resp.GetDeniedResponse().GetHeaders())
				assert.NotEmpty(t, hs["retry-after"])
				assert.Equal(t, `"/api/users/{id}";q=2;w=60`, hs["ratelimit-policy"])
			})
		})
	}
}

func TestMalformedCheckRequestsAreDeniedNotErrors(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	for name, req := range map[string]*authv3.CheckRequest{
		"an empty request": {},
		"no http request":  {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{}}},
		"no source":        {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/api/users"}}}},
		"binary header bytes": {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/healthz", HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{
			{Key: "x-api-key", RawValue: []byte("\xff\xfe\x00\x01garbage")},
			{Key: "cookie", RawValue: []byte("api_key=x; other=\xff\xfe")},
		}}}}}},
		"a raw header map only": {Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: "GET", Path: "/api/users", HeaderMap: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "X-Api-Key", RawValue: []byte("not-a-valid-key-at-all")}}}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := ts.client.Check(context.Background(), req)
			require.NoError(t, err)
			if req.GetAttributes().GetRequest().GetHttp().GetPath() == "/healthz" {
				ok := resp.GetOkResponse()
				require.NotNil(t, ok, "a public route")
				assert.Contains(t, ok.GetHeadersToRemove(), "cookie", "a non-UTF-8 cookie with a credential is dropped whole")
				return
			}
			assert.NotEqual(t, int32(codes.OK), resp.GetStatus().GetCode())
			assert.NotNil(t, resp.GetDeniedResponse())
		})
	}
}

func TestHealthService(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded"))
	resp, err := healthpb.NewHealthClient(ts.conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: "envoy.service.auth.v3.Authorization"})
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
}

// grpcurl and ghz find the service through reflection, which goes through
// the server's codec (envoy.ServerCodec) like every other message.
func TestReflectionListsAndDescribesTheAuthorizationService(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded"))
	stream, err := reflectionpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(context.Background())
	require.NoError(t, err)
	defer stream.CloseSend()

	require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
	resp, err := stream.Recv()
	require.NoError(t, err)
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	assert.Contains(t, names, "envoy.service.auth.v3.Authorization")

	require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "envoy.service.auth.v3.Authorization"}}))
	resp, err = stream.Recv()
	require.NoError(t, err)
	require.NotEmpty(t, resp.GetFileDescriptorResponse().GetFileDescriptorProto(), resp.String())
}

// A reflection answer costs the server about twenty Checks (it builds and
// marshals the descriptors of the Authorization service and every file it
// imports, some 45 KB) for a request of 37 bytes, sent as often as a
// caller likes, on as many streams and connections. Reflection is for
// grpcurl and ghz, a few messages at a time: past reflectionRate, counted
// over the whole server, a message ends its stream with RESOURCE_EXHAUSTED,
// and Checks go on being answered.
func TestReflectionIsBoundedAcrossTheServer(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded"))
	client := reflectionpb.NewServerReflectionClient(ts.conn)
	req := &reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "envoy.service.auth.v3.Authorization"}}
	answered := 0
	var err error
	start := time.Now()
	// Asked until refused: however slowly this machine answers, the budget
	// runs out once asks come faster than it refills (N a window), which a
	// loop of them does unless each takes more than W/N.
	for range 100 * reflectionRate.N {
		var stream reflectionpb.ServerReflection_ServerReflectionInfoClient
		if stream, err = client.ServerReflectionInfo(t.Context()); err != nil {
			break
		}
		if err = stream.Send(req); err == nil {
			_, err = stream.Recv()
		}
		stream.CloseSend()
		if err != nil {
			break
		}
		answered++
	}
	assert.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.LessOrEqual(t, int64(answered), reflectionRate.N*(1+int64(time.Since(start)/reflectionRate.Window)))
	ts.check(t, "GET", "/healthz", nil) // answered meanwhile, not an RPC error
}

func TestAKeySurvivesARestartOfTheEmbeddedStore(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	yaml := fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		filepath.Join(dir, "data", "keys.db"), testRoutes)
	require.NoError(t, os.WriteFile(path, []byte(yaml), 0o600))

	first := startServerFile(t, path)
	key, _ := first.create(t, keystore.Spec{Name: "durable", Permissions: []string{"read:users"}})
	require.NotNil(t, first.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
	first.stop()

	second := startServerFile(t, path)
	require.NotNil(t, second.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
}

// cli runs the extauthz command in a separate process (this test binary
// acting as main) and returns its standard output.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Run(), "extauthz %s: %s", strings.Join(args, " "), stderr.String())
	return stdout.String()
}

func TestCLIChangesReachARunningServerWithinOneSecond(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			ts := startServer(t, storeYAML(t, backend)+testRoutes)
			var created struct {
				ID  string `json:"id"`
				Key string `json:"key"`
			}
			out := cli(t, "keys", "create", "--config", ts.cfgPath, "--name", "ci", "--perm", "read:users", "--json")
			require.NoError(t, json.Unmarshal([]byte(out), &created), out)
			headers := map[string]string{"x-api-key": created.Key}
			require.NotNil(t, ts.check(t, "GET", "/api/users", headers).GetOkResponse(), "the new key works at once")

			cli(t, "keys", "revoke", created.ID, "--config", ts.cfgPath)
			start := time.Now()
			for {
				code, _ := denial(t, ts.check(t, "GET", "/api/users", headers))
				if code == "revoked_key" {
					break
				}
				require.Equal(t, "", code)
				require.Less(t, time.Since(start), time.Second, "revocation did not reach the server within 1 s")
				time.Sleep(10 * time.Millisecond)
			}
			t.Logf("%s: revoke reached the server's cache in %v", backend, time.Since(start).Round(time.Millisecond))
		})
	}
}

func TestRotationGivesAGracePeriod(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	oldKey, old := ts.create(t, keystore.Spec{Name: "svc", Owner: "team", Permissions: []string{"read:users"}, RateLimit: rateLimit(t, "1000/m")})
	var rotated map[string]any
	out := cli(t, "keys", "rotate", old.ID, "--grace", "4s", "--config", ts.cfgPath, "--json")
	require.NoError(t, json.Unmarshal([]byte(out), &rotated), out)
	assert.Equal(t, old.ID, rotated["rotated_from"])
	assert.Equal(t, old.ID, rotated["lineage"], "the new key counts in the old one's rate limits")
	assert.Equal(t, "team", rotated["owner"])
	assert.Equal(t, "1000/m", rotated["rate_limit"])
	newKey := rotated["key"].(string)

	for _, k := range []string{oldKey, newKey} {
		require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": k}).GetOkResponse(), "both work during the grace period")
	}
	require.Eventually(t, func() bool {
		code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": oldKey}))
		return code == "expired_key"
	}, 10*time.Second, 50*time.Millisecond, "the old key expires after the grace period")
	require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": newKey}).GetOkResponse())

	var shown map[string]any
	require.NoError(t, json.Unmarshal([]byte(cli(t, "keys", "show", old.ID, "--json", "--config", ts.cfgPath)), &shown))
	assert.Equal(t, rotated["id"], shown["rotated_to"])
	assert.NotContains(t, shown, "key", "show never prints a secret")
}

func TestServeStopsGracefullyOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.yaml")
	require.NoError(t, os.WriteFile(path, []byte(fmt.Sprintf(
		"listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\nstore: {path: %q}\n", filepath.Join(dir, "k.db"))), 0o600))
	cmd := exec.Command(os.Args[0], "serve", "--config", path)
	cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	var stderr syncbuf.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	require.Eventually(t, func() bool { return strings.Contains(stderr.String(), "extauthz serving") }, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, cmd.Process.Signal(os.Interrupt))
	require.NoError(t, cmd.Wait(), stderr.String())
	assert.Contains(t, stderr.String(), "extauthz stopped")
}

func mustCIDRs(t *testing.T, s ...string) []netip.Prefix {
	t.Helper()
	p, err := keystore.ParseCIDRs(s)
	require.NoError(t, err)
	return p
}

var _ io.Writer = (*syncbuf.Buffer)(nil)
