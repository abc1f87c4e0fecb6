package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// serveChild is "extauthz serve" running as a child process.
type serveChild struct {
	cmd      *exec.Cmd
	stderr   *syncbuf.Buffer
	exited   chan struct{}
	err      error // cmd.Wait's, once exited is closed
	grpcAddr string
}

// startServeChild runs "extauthz serve" on the config yaml, with a gRPC
// listener on a free port, and waits until it serves.
func startServeChild(t *testing.T, yaml string) *serveChild {
	t.Helper()
	return startServeChildHTTP(t, "off", yaml)
}

// startServeChildHTTP is startServeChild with the HTTP listener on
// httpAddr ("off" for none).
func startServeChildHTTP(t *testing.T, httpAddr, yaml string) *serveChild {
	t.Helper()
	c := &serveChild{stderr: &syncbuf.Buffer{}, exited: make(chan struct{}), grpcAddr: fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))}
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: %q, http: %q, admin: off}\naudit: {sink: none}\n%s", c.grpcAddr, httpAddr, yaml))
	c.cmd = exec.Command(os.Args[0], "serve", "--config", path)
	c.cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
	c.cmd.Stderr = c.stderr
	require.NoError(t, c.cmd.Start())
	go func() { c.err = c.cmd.Wait(); close(c.exited) }()
	t.Cleanup(func() {
		_ = c.cmd.Process.Kill()
		<-c.exited
	})
	require.Eventually(t, func() bool { return strings.Contains(c.stderr.String(), "extauthz serving") }, 10*time.Second, 20*time.Millisecond)
	return c
}

// waitExit waits up to d for the process to exit and returns how: its
// exit status, or -1 with the signal that killed it.
func (c *serveChild) waitExit(t *testing.T, d time.Duration) (int, os.Signal) {
	t.Helper()
	select {
	case <-c.exited:
	case <-time.After(d):
		t.Fatalf("still running %s later:\n%s", d, c.stderr.String())
	}
	var ee *exec.ExitError
	if c.err != nil && !errors.As(c.err, &ee) {
		t.Fatalf("wait: %v", c.err)
	}
	if ws, ok := c.cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return -1, ws.Signal()
	}
	return c.cmd.ProcessState.ExitCode(), nil
}

// A second SIGINT or SIGTERM during the drain exits at once (status 1,
// saying so), as it does for Caddy and Docker: the operator who sends it
// again has chosen not to wait. The drain is held by a Check call whose
// message never comes, which graceful stop waits for up to its 10 s.
func TestASecondSignalExitsAtOnce(t *testing.T) {
	for _, sigs := range [][2]os.Signal{{syscall.SIGTERM, syscall.SIGTERM}, {os.Interrupt, syscall.SIGTERM}, {syscall.SIGTERM, os.Interrupt}} {
		t.Run(fmt.Sprintf("%s then %s", sigs[0], sigs[1]), func(t *testing.T) {
			c := startServeChild(t, fmt.Sprintf("store: {path: %q}\n%s", filepath.Join(t.TempDir(), "k.db"), testRoutes))
			holdACheck(t, c.grpcAddr)

			require.NoError(t, c.cmd.Process.Signal(sigs[0]))
			select {
			case <-c.exited:
				t.Fatalf("the drain did not wait for the call in flight:\n%s", c.stderr.String())
			case <-time.After(500 * time.Millisecond):
			}
			require.NoError(t, c.cmd.Process.Signal(sigs[1]))
			code, sig := c.waitExit(t, 3*time.Second)
			assert.Nil(t, sig)
			assert.Equal(t, 1, code)
			assert.Contains(t, c.stderr.String(), "second signal: exiting at once")
			assert.NotContains(t, c.stderr.String(), "extauthz stopped")
		})
	}
}

// SIGHUP is caught for the whole life of serve, not only while the config
// watch runs: uncaught, it ends the process, and one sent while the server
// stops (a config tool that sends it after each write, as the Pod is
// replaced) cut the stop short before the queued last_used_at times were
// written. Here their write is slowed by latency to Redis, and a SIGHUP
// arrives while it is under way.
func TestASIGHUPWhileStoppingDoesNotCutTheStopShort(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	r := redistest.Start(t)
	p := faultproxy.Start(t, r.Addr)
	direct := fmt.Sprintf("store: {backend: redis, redis: {url: %q, timeout: 5s, prefix: \"h:\"}}\n", r.URL(0))
	cfg, err := config.Load(writeConfig(t, direct))
	require.NoError(t, err)
	be, err := openBackend(cfg, nil)
	require.NoError(t, err)
	defer be.Close()
	secret, k, err := be.manager(cfg).Create(context.Background(), keystore.Spec{Name: "used", Permissions: []string{"read:users"}}, "test")
	require.NoError(t, err)

	c := startServeChild(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, timeout: 5s, prefix: \"h:\"}}\n%s", "redis://"+p.Addr()+"/0", testRoutes))
	conn, err := grpc.NewClient(c.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	// A few uses: one made as the cache's watch first forgets everything
	// (at start) is not noted, the next one is.
	for range 3 {
		resp, err := authv3.NewAuthorizationClient(conn).Check(context.Background(), checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": secret}))
		require.NoError(t, err)
		require.NotNil(t, resp.GetOkResponse(), "the key is allowed, and its use queued to be written")
		time.Sleep(100 * time.Millisecond)
	}
	conn.Close()

	p.SetDelay(400 * time.Millisecond) // the write of the last use takes 800 ms or more
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	time.Sleep(300 * time.Millisecond)
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGHUP))
	code, sig := c.waitExit(t, 15*time.Second)
	require.Nil(t, sig, "killed by a signal:\n%s", c.stderr.String())
	assert.Equal(t, 0, code, c.stderr.String())
	assert.Contains(t, c.stderr.String(), "extauthz stopped")
	got, err := be.store.Get(context.Background(), k.ID)
	require.NoError(t, err)
	assert.NotNil(t, got.LastUsedAt, "the last use queued at the stop was not written:\n%s", c.stderr.String())
}

// The listeners stop together: once a stop begins, the HTTP listener takes
// no new request while a gRPC call in flight holds the drain, as the gRPC
// listener takes no new call. It used to answer, /readyz "ok" included,
// until the gRPC drain had ended (up to 10 s).
func TestTheHTTPListenerStopsWithTheGRPCOne(t *testing.T) {
	httpAddr := fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t))
	c := startServeChildHTTP(t, httpAddr, fmt.Sprintf("store: {path: %q}\n%s", filepath.Join(t.TempDir(), "k.db"), testRoutes))
	get := func() (int, error) {
		client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get("http://" + httpAddr + "/readyz")
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	code, err := get()
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code)

	release := holdACheck(t, c.grpcAddr)
	require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool { _, err := get(); return err != nil }, 2*time.Second, 20*time.Millisecond,
		"the HTTP listener still answers while the gRPC drain waits")
	select {
	case <-c.exited:
		t.Fatalf("the drain did not wait for the gRPC call in flight:\n%s", c.stderr.String())
	default:
	}
	release() // the call ends, and with it the drain
	code, sig := c.waitExit(t, 15*time.Second)
	assert.Nil(t, sig)
	assert.Equal(t, 0, code, c.stderr.String())
}

// holdACheck opens a Check call to the gRPC server at addr whose message
// never comes, which a graceful stop waits for (up to its bound), until
// the returned release, or the test's end.
func holdACheck(t *testing.T, addr string) (release func()) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	_, err = conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, authv3.Authorization_Check_FullMethodName)
	require.NoError(t, err)
	return cancel
}
