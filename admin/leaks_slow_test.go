package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// slowLeakServer serves the leak handler on a real listener whose server
// sets no timeouts of its own, so that only the handler's bounds act on
// slow clients. It returns the address and the options (to watch the
// bytes held); maxBuffered 0 is the default bound.
func slowLeakServer(t *testing.T, e *env, bodyTimeout time.Duration, maxBuffered int64) (string, *LeakOptions) {
	t.Helper()
	opts := e.opts
	opts.Leaks = &LeakOptions{
		PublicKeys:       map[string]*ecdsa.PublicKey{githubKeyID: &e.github.PublicKey},
		BodyTimeout:      bodyTimeout,
		MaxBufferedBytes: maxBuffered,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: NewLeakHandler(opts)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), opts.Leaks
}

// openReport starts a leak report by hand: the request line and headers,
// declaring a body of size bytes, and then as much of the body as sent.
func openReport(t *testing.T, addr string, size int, sent []byte) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"+
		"Github-Public-Key-Identifier: %s\r\nGithub-Public-Key-Signature: AAAA\r\n\r\n", leakPath, size, githubKeyID)
	require.NoError(t, err)
	if len(sent) > 0 {
		_, err = conn.Write(sent)
		require.NoError(t, err)
	}
	return conn
}

// awaitClose reads conn until the server closes it (or within passes) and
// returns the status of the answer it read, if any, and when it closed.
func awaitClose(conn net.Conn, within time.Duration) (status int, closedAfter time.Duration, err error) {
	start := time.Now()
	_ = conn.SetReadDeadline(start.Add(within))
	r := bufio.NewReader(conn)
	if resp, rerr := http.ReadResponse(r, nil); rerr == nil {
		status = resp.StatusCode
		resp.Body.Close()
	}
	_, err = io.Copy(io.Discard, r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return status, time.Since(start), fmt.Errorf("still open after %v", within)
	}
	return status, time.Since(start), nil // EOF or reset: closed
}

func TestATrickledLeakReportIsCutOffAtTheBodyDeadline(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	const bodyTimeout = 400 * time.Millisecond
	addr, _ := slowLeakServer(t, e, bodyTimeout, 4<<20)
	var wg sync.WaitGroup
	for range 3 {
		conn := openReport(t, addr, DefaultLeakBodyBytes, []byte("["))
		wg.Add(2)
		go func() { // one byte every 50 ms, until the server hangs up
			defer wg.Done()
			for {
				time.Sleep(50 * time.Millisecond)
				if _, err := conn.Write([]byte(" ")); err != nil {
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			status, after, err := awaitClose(conn, bodyTimeout+2*time.Second)
			assert.NoError(t, err, "a trickling client holds its connection")
			assert.GreaterOrEqual(t, after, bodyTimeout-50*time.Millisecond, "cut off before its deadline")
			assert.Less(t, after, bodyTimeout+time.Second, "cut off well after its deadline")
			assert.Equal(t, http.StatusBadRequest, status)
			t.Logf("a body trickled at 20 B/s: closed after %v (deadline %v)", after.Round(time.Millisecond), bodyTimeout)
		}()
	}
	wg.Wait()
}

// Clients that open reports and stall, or trickle them, hold only what
// they sent: however many there are, GitHub's report is read and answered
// (a bound on the reports begun let eight such clients answer every real
// report 503, keeping leaked keys alive for as long as they kept it up).
func TestStalledReportsDoNotKeepGitHubsReportOut(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	addr, lo := slowLeakServer(t, e, 5*time.Second, 0) // the default bounds
	leaked, id := e.create(keystore.Spec{Name: "leaked", Permissions: []string{"x"}})
	for i := range 50 {
		switch i % 3 {
		case 0: // headers only, declaring the largest body
			openReport(t, addr, DefaultLeakBodyBytes, nil)
		case 1: // a first byte, declaring a small body
			openReport(t, addr, 1000, []byte("["))
		default: // a chunked body begun
			conn, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			t.Cleanup(func() { conn.Close() })
			_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"+
				"Github-Public-Key-Identifier: %s\r\nGithub-Public-Key-Signature: AAAA\r\n\r\n10\r\n[{\"token\": \"sk_", leakPath, githubKeyID)
			require.NoError(t, err)
		}
	}
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() > 0 }, 2*time.Second, 5*time.Millisecond, "the stalled reports are being read")

	start := time.Now()
	r := e.reportTo("http://"+addr, leakBody(leaked))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	assert.Contains(t, string(r.body), truePositive)
	assert.Less(t, time.Since(start), time.Second, "answered at once, not after the stalled ones")
	k, err := e.store.Get(context.Background(), id)
	require.NoError(t, err)
	assert.NotNil(t, k.RevokedAt, "the leaked key is revoked")
	t.Logf("50 stalled reports hold %d bytes; GitHub's was answered in %v", lo.bodies.heldBytes(), time.Since(start).Round(time.Millisecond))
}

// Stalled bodies that did send their bytes, enough to fill the bound, do
// not keep GitHub's report out either: a report that does not fit cuts off
// the older readers, oldest first (503, connection closed), as many as it
// needs, and the others keep reading. Counting bytes alone let clients
// that sent as much as the bound and stalled (eight of 1 MiB by default)
// hold every real report off.
func TestFullStalledBodiesAreCutOffForANewerReport(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	leaked, id := e.create(keystore.Spec{Name: "leaked", Permissions: []string{"x"}})
	// Each stalled body has its first buffer (512 bytes), almost full.
	addr, lo := slowLeakServer(t, e, 5*time.Second, 8*512)
	var stalled []net.Conn
	for i := range 8 {
		stalled = append(stalled, openReport(t, addr, 2000, bytes.Repeat([]byte(" "), 500)))
		require.Eventually(t, func() bool { return lo.bodies.heldBytes() == int64(512*(i+1)) }, 2*time.Second, time.Millisecond)
	}

	r := e.reportTo("http://"+addr, leakBody(leaked))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	assert.Contains(t, string(r.body), truePositive)
	k, err := e.store.Get(context.Background(), id)
	require.NoError(t, err)
	assert.NotNil(t, k.RevokedAt, "the leaked key is revoked")

	status, _, err := awaitClose(stalled[0], time.Second)
	require.NoError(t, err, "the oldest is cut off and its connection closed")
	assert.Equal(t, http.StatusServiceUnavailable, status)
	for _, c := range stalled[1:] {
		_, err := c.Write([]byte(" "))
		require.NoError(t, err, "the newer ones are still read")
	}
	assert.Equal(t, int64(7*512), lo.bodies.heldBytes(), "only the room needed was made")
	for _, c := range stalled[1:] {
		c.Close()
	}
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 0 }, 2*time.Second, 5*time.Millisecond, "the room comes back")
}

// A report whose buffer does not fit, and that is itself the oldest
// reader, is refused (503, connection closed) rather than cut off a newer
// one, and keeps nothing counted.
func TestTheOldestReaderIsRefusedNotANewerOne(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	addr, lo := slowLeakServer(t, e, 5*time.Second, 4096)
	old := openReport(t, addr, 3000, bytes.Repeat([]byte(" "), 500))
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 512 }, 2*time.Second, time.Millisecond)
	newer := openReport(t, addr, 2000, bytes.Repeat([]byte(" "), 1500))
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 512+2048 }, 2*time.Second, time.Millisecond)

	// 1100 bytes need a buffer of 2048, which fits only without the newer.
	_, err := old.Write(bytes.Repeat([]byte(" "), 600))
	require.NoError(t, err)
	status, _, err := awaitClose(old, time.Second)
	require.NoError(t, err, "the refused connection is closed, not drained")
	assert.Equal(t, http.StatusServiceUnavailable, status)
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 2048 }, 2*time.Second, time.Millisecond, "the refused report keeps nothing counted")

	_, err = newer.Write(bytes.Repeat([]byte(" "), 500))
	require.NoError(t, err)
	_ = newer.SetReadDeadline(time.Now().Add(time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(newer), nil)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "the newer report was read in full (and is not signed)")
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 0 }, 2*time.Second, 5*time.Millisecond)

	r := e.reportTo("http://"+addr, leakBody("sk_x"))
	assert.Equal(t, http.StatusOK, r.status, "%s", r)
	assert.Equal(t, "", r.header.Get("Retry-After"))
	assert.Zero(t, lo.bodies.heldBytes(), "an answered report keeps nothing counted")
}

// A report refused for want of room is answered 503 with Retry-After: 1,
// in the JSON of every error.
func TestALeakReportRefusedForRoomSaysWhenToRetry(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	addr, lo := slowLeakServer(t, e, 5*time.Second, 600) // room for one first buffer
	stalled := openReport(t, addr, 2000, bytes.Repeat([]byte(" "), 1000))
	status, _, err := awaitClose(stalled, time.Second)
	require.NoError(t, err)
	assert.Equal(t, http.StatusServiceUnavailable, status, "its second buffer does not fit, and none is older")
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 0 }, 2*time.Second, time.Millisecond)

	open := openReport(t, addr, 2000, bytes.Repeat([]byte(" "), 100))
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 512 }, 2*time.Second, time.Millisecond)
	defer open.Close()
	r := e.reportTo("http://"+addr, leakBody("sk_x")) // cuts the open one off
	assert.Equal(t, http.StatusOK, r.status, "%s", r)

	tiny := &LeakOptions{PublicKeys: map[string]*ecdsa.PublicKey{githubKeyID: &e.github.PublicKey}, MaxBufferedBytes: 100}
	opts := e.opts
	opts.Leaks = tiny
	srv := httptest.NewServer(NewLeakHandler(opts))
	t.Cleanup(srv.Close)
	r = e.reportTo(srv.URL, leakBody("sk_x"))
	require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
	assert.Equal(t, "unavailable", r.code(t))
	assert.Equal(t, "1", r.header.Get("Retry-After"))
}

// TestStalledLeakBodiesHoldBoundedMemory: 100 clients each send a report
// of 1 MiB less one byte and stall. Without a bound the server would hold
// 100 MiB until they gave up; with it, MaxBufferedBytes at most (about
// twice that with the buffers' growth), and every connection is closed
// within the body deadline.
func TestStalledLeakBodiesHoldBoundedMemory(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	// A body deadline long enough that, on a machine busy with other
	// tests, the reports admitted are still being read once all 100 are
	// open (each forced collection below takes its share of the time too):
	// 4 s was not, once, on CI's two cores.
	const bodyTimeout, maxBuffered, clients = 8 * time.Second, 4 << 20, 100
	addr, lo := slowLeakServer(t, e, bodyTimeout, maxBuffered)
	body := make([]byte, DefaultLeakBodyBytes-1)
	before := liveHeap()

	conns := make([]net.Conn, clients)
	opened := make([]time.Time, clients)
	var sent sync.WaitGroup
	for i := range conns {
		conns[i], opened[i] = openReport(t, addr, DefaultLeakBodyBytes, nil), time.Now()
		sent.Add(1)
		go func() { defer sent.Done(); _, _ = conns[i].Write(body) }() // fails on refused ones
	}
	var peak uint64
	require.Eventually(t, func() bool {
		live := liveHeap()
		peak = max(peak, live-min(live, before))
		return lo.bodies.heldBytes() >= 3<<20 && peak >= 2<<20
	}, bodyTimeout-time.Second, 20*time.Millisecond, "the admitted reports are being read")
	for range 5 {
		live := liveHeap()
		peak = max(peak, live-min(live, before))
		time.Sleep(50 * time.Millisecond)
	}
	assert.LessOrEqual(t, lo.bodies.heldBytes(), int64(maxBuffered))
	t.Logf("%d stalled 1 MiB reports: live heap grew by %.1f MiB at most (bound %d MiB of bodies)", clients, float64(peak)/(1<<20), maxBuffered>>20)
	assert.Less(t, peak, uint64(3*maxBuffered+4<<20), "memory grows with the bytes bounded, not with the clients")

	// Those left are the newest (older ones were cut off to make room for
	// them): each is closed at its own body deadline.
	open := make([]time.Duration, clients)
	var closed sync.WaitGroup
	for i, c := range conns {
		closed.Add(1)
		go func() {
			defer closed.Done()
			_, _, err := awaitClose(c, time.Until(opened[i].Add(bodyTimeout+2*time.Second)))
			assert.NoError(t, err)
			open[i] = time.Since(opened[i])
		}()
	}
	closed.Wait()
	sent.Wait()
	t.Logf("every connection closed within %v of its start (body deadline %v)", slices.Max(open).Round(time.Millisecond), bodyTimeout)
	require.Eventually(t, func() bool { return lo.bodies.heldBytes() == 0 }, time.Second, 5*time.Millisecond)
}

// liveHeap is the heap a collection, made now, found live: what the
// server holds, without the garbage its readers make meanwhile.
func liveHeap() uint64 {
	runtime.GC()
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(sample)
	return sample[0].Value.Uint64()
}

// reportTo posts a signed report as report does, to another server.
func (e *env) reportTo(url string, body []byte) response {
	e.t.Helper()
	saved := e.url
	e.url = url
	defer func() { e.url = saved }()
	return e.report(body)
}
