package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
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
	const gzipped = "\x1f\x8b"

	t.Run("profiles go tool pprof reads", func(t *testing.T) {
		goTool, err := exec.LookPath("go")
		require.NoError(t, err, "go is on PATH where the tests run")
		for _, name := range []string{"heap", "allocs", "goroutine", "profile?seconds=1"} {
			code, body, _ := get(t, debugURL+"/debug/pprof/"+name, nil)
			require.Equal(t, http.StatusOK, code, "%s: %s", name, body)
			require.True(t, strings.HasPrefix(body, gzipped), "%s: a gzipped profile", name)
			file := filepath.Join(t.TempDir(), "profile.pb.gz")
			require.NoError(t, os.WriteFile(file, []byte(body), 0o600))
			out, err := exec.Command(goTool, "tool", "pprof", "-top", file).CombinedOutput()
			require.NoError(t, err, "go tool pprof -top %s: %s", name, out)
			assert.Contains(t, string(out), "flat%", name)
		}
		code, body, _ := get(t, debugURL+"/debug/pprof/goroutine?debug=1", nil)
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, body, "goroutine profile: total")
		code, body, _ = get(t, debugURL+"/debug/pprof/", nil)
		require.Equal(t, http.StatusOK, code)
		assert.Contains(t, body, "heap")
	})

	t.Run("nothing else there", func(t *testing.T) {
		for _, path := range []string{"/debug/pprof/cmdline", "/debug/pprof/nosuchprofile", "/metrics", "/healthz", "/v1/keys", "/"} {
			code, _, _ := get(t, debugURL+path, nil)
			assert.Equal(t, http.StatusNotFound, code, path)
		}
		// net/http/pprof records for as long as it is asked: a request
		// holds the CPU profiler, or waits for a delta, at most
		// maxProfileFor.
		for _, path := range []string{"profile?seconds=61", "trace?seconds=600", "heap?seconds=1e9", "allocs?seconds=NaN", "profile?seconds=Inf", "goroutine?seconds=x"} {
			code, body, _ := get(t, debugURL+"/debug/pprof/"+path, nil)
			assert.Equal(t, http.StatusBadRequest, code, "%s: %s", path, body)
		}
	})

	t.Run("no other listener serves them", func(t *testing.T) {
		for _, base := range []string{ts.httpURL, ts.adminURL} {
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/goroutine?debug=1"} {
				code, body, _ := get(t, base+path, nil)
				assert.NotEqual(t, http.StatusOK, code, "%s%s", base, path)
				assert.NotContains(t, body, "goroutine", "%s%s", base, path)
				assert.False(t, strings.HasPrefix(body, gzipped), "%s%s", base, path)
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
		ws := listenerWarnings(cfg)
		if !warned {
			assert.Empty(t, ws, addr)
			continue
		}
		require.Len(t, ws, 1, addr)
		w := ws[0]
		assert.Contains(t, w, "listen.debug", addr)
		assert.Contains(t, w, "asks for no credential", addr)
		rep, _, _ := checkConfig(writeConfig(t, "listen: {debug: \""+addr+"\"}\n"))
		assert.Contains(t, rep.Warnings, w, "config check says so: %s", addr)
	}
}

// POST /debug/pprof/symbol is net/http/pprof's Symbol, which reads the
// whole body and buffers a line of answer per address (some 70 bytes for
// each 9 of the body) before it writes any: unbounded, a client of the
// debug listener could make the process hold gigabytes in seconds. go tool
// pprof posts one address per location of a profile, tens of kilobytes: a
// body over 1 MiB is 413, and one under it is answered.
func TestTheDebugListenerBoundsASymbolLookupsBody(t *testing.T) {
	ts := startServerFile(t, writeConfig(t, `listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", admin: off, debug: "127.0.0.1:0"}`+"\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes))
	url := "http://" + ts.srv.debugLn.Addr().String() + "/debug/pprof/symbol"
	word := fmt.Sprintf("%#x+", reflect.ValueOf((*server).buildAdmin).Pointer())
	post := func(body io.Reader, size int64) (int, int64) {
		t.Helper()
		req, err := http.NewRequest("POST", url, body)
		require.NoError(t, err)
		req.ContentLength = size
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		n, _ := io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, n
	}
	big := strings.Repeat(word, (16<<20)/len(word))
	status, n := post(strings.NewReader(big), int64(len(big)))
	assert.Equal(t, http.StatusRequestEntityTooLarge, status)
	assert.Less(t, n, int64(1<<10))
	status, n = post(io.MultiReader(strings.NewReader(big)), -1) // no length given: read up to the bound
	assert.Equal(t, http.StatusRequestEntityTooLarge, status)
	assert.Less(t, n, int64(1<<10))
	small := strings.Repeat(word, 100)
	status, n = post(strings.NewReader(small), int64(len(small)))
	assert.Equal(t, http.StatusOK, status)
	assert.Greater(t, n, int64(len(small)), "the addresses are named")
}
