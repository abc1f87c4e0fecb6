package main

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/config"
)

// TestTheDebugListener serves Go's profiles on listen.debug, read by
// go tool pprof itself, and nothing else there; no other listener serves
// them, though importing net/http/pprof registers them on
// http.DefaultServeMux; and the listener is off unless set.
func TestTheDebugListener(t *testing.T) {
	ts := startServerFile(t, writeConfig(t, `listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", admin: "127.0.0.1:0", debug: "127.0.0.1:0"}`+"\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes))
	require.NotNil(t, ts.srv.debugLn)
	debugURL := "http://" + ts.srv.debugLn.Addr().String()
	get := func(t *testing.T, url string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, body
	}
	gzipped := []byte{0x1f, 0x8b}

	t.Run("profiles go tool pprof reads", func(t *testing.T) {
		goTool, err := exec.LookPath("go")
		require.NoError(t, err, "go is on PATH where the tests run")
		for _, name := range []string{"heap", "allocs", "goroutine", "profile?seconds=1"} {
			code, body := get(t, debugURL+"/debug/pprof/"+name)
			require.Equal(t, http.StatusOK, code, "%s: %s", name, body)
			require.True(t, bytes.HasPrefix(body, gzipped), "%s: a gzipped profile", name)
			file := filepath.Join(t.TempDir(), "profile.pb.gz")
			require.NoError(t, os.WriteFile(file, body, 0o600))
			out, err := exec.Command(goTool, "tool", "pprof", "-top", file).CombinedOutput()
			require.NoError(t, err, "go tool pprof -top %s: %s", name, out)
			assert.Contains(t, string(out), "flat%", name)
		}
		code, body := get(t, debugURL+"/debug/pprof/goroutine?debug=1")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, string(body), "goroutine profile: total")
		code, body = get(t, debugURL+"/debug/pprof/")
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, string(body), "heap")
	})

	t.Run("nothing else there", func(t *testing.T) {
		for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof/nosuchprofile", "/metrics", "/healthz", "/v1/keys", "/"} {
			code, _ := get(t, debugURL+path)
			assert.Equal(t, http.StatusNotFound, code, path)
		}
		// net/http/pprof records for as long as it is asked: a request
		// holds the CPU profiler, or waits for a delta, at most
		// maxProfileFor.
		for _, path := range []string{"profile?seconds=61", "trace?seconds=600", "heap?seconds=1e9", "allocs?seconds=NaN", "profile?seconds=Inf", "goroutine?seconds=x"} {
			code, body := get(t, debugURL+"/debug/pprof/"+path)
			assert.Equal(t, http.StatusBadRequest, code, "%s: %s", path, body)
		}
	})

	t.Run("no other listener serves them", func(t *testing.T) {
		for _, base := range []string{ts.httpURL, ts.adminURL} {
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1"} {
				code, body := get(t, base+path)
				assert.NotEqual(t, http.StatusOK, code, "%s%s", base, path)
				assert.NotContains(t, string(body), "goroutine", "%s%s", base, path)
				assert.False(t, bytes.HasPrefix(body, gzipped), "%s%s", base, path)
			}
		}
	})

	t.Run("off unless set", func(t *testing.T) {
		ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
		assert.Nil(t, ts.srv.debugLn)
	})
}

// A debug listener off loopback is a warning of config check and serve: it
// asks for no credential.
func TestADebugListenerOffLoopbackIsAWarning(t *testing.T) {
	for addr, warned := range map[string]bool{
		":6060": true, "0.0.0.0:6060": true, "10.0.0.7:6060": true, "[::]:6060": true,
		"127.0.0.1:6060": false, "localhost:6060": false, "[::1]:6060": false, "off": false,
	} {
		cfg, err := config.Parse([]byte("hashing: {pepper_env: " + testPepperEnv + "}\nlisten: {debug: \"" + addr + "\"}\n"))
		require.NoError(t, err, addr)
		w := debugWarning(cfg)
		if !warned {
			assert.Empty(t, w, addr)
			continue
		}
		assert.Contains(t, w, "listen.debug", addr)
		assert.Contains(t, w, "asks for no credential", addr)
		rep, _, _ := checkConfig(writeConfig(t, "listen: {debug: \""+addr+"\"}\n"))
		assert.Contains(t, rep.Warnings, w, "config check says so: %s", addr)
	}
}
