package main

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	"github.com/extauthz/extauthz/authz/envoy"
)

// shippedMemoryLimit is the GOMEMLIMIT the shipped deployments give the
// process (460 MiB of a 512 MiB container).
const shippedMemoryLimit = 460 << 20

// openSilentCalls opens calls calls of method on a new raw HTTP/2
// connection to addr, each with 6 KiB of metadata (within the 8 KiB a call
// may keep), and never sends their message. It returns the connection.
func openSilentCalls(t *testing.T, addr, method string, calls int) *rawStreams {
	t.Helper()
	rs := dialRaw(t, addr)
	rs.open(t, method, nil, 0, calls, 2, 3<<10)
	return rs
}

// liveHeap is the live heap after a collection, plus the goroutine stacks.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc + ms.StackInuse
}

// receivingNow is how many calls the server counts as still receiving
// their message, in all.
func receivingNow(s *server) int {
	s.receiving.mu.Lock()
	defer s.receiving.mu.Unlock()
	return s.receiving.total
}

// One client may hold 1,024 connections with 1,024 calls in flight on
// each, and renew every call as the server's 10 s bound ends it. A Check
// whose message never comes holds a goroutine, the transport's state and
// its metadata: without a bound of their own, one address could make the
// server hold terabytes. Of a client's calls waiting for their message,
// receivingLimits.PerClient are kept and the others refused at once;
// another client is still answered, and every place comes back when the
// calls end.
func TestOneClientsSilentCallsAreBounded(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	addr := ts.srv.grpcLn.Addr().String()
	perClient := receivingLimits.PerClient

	const conns = 3
	before := liveHeap()
	var raws []*rawStreams
	for range conns {
		raws = append(raws, openSilentCalls(t, addr, authv3.Authorization_Check_FullMethodName, grpcMaxConcurrentStreams))
	}
	require.Eventually(t, func() bool { return heldChecks() == perClient }, 8*time.Second, 20*time.Millisecond,
		"a client's calls waiting for their message (held %d)", heldChecks())
	refused := func() int {
		n := 0
		for _, rs := range raws {
			n += int(rs.exhausted.Load())
		}
		return n
	}
	require.Eventually(t, func() bool { return refused() == conns*grpcMaxConcurrentStreams-perClient }, 8*time.Second, 20*time.Millisecond,
		"the others refused with RESOURCE_EXHAUSTED (%d)", refused())
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, perClient, heldChecks(), "no more of them later")
	assert.Equal(t, perClient, receivingNow(ts.srv))
	held := liveHeap()
	perCall := float64(int64(held)-int64(before)) / float64(perClient)
	t.Logf("%d silent calls opened on %d connections, %d held: heap and stacks %d → %d MiB (%.1f KiB a call held)",
		conns*grpcMaxConcurrentStreams, conns, perClient, before>>20, held>>20, perCall/1024)
	assert.Less(t, perCall*float64(receivingLimits.Total), float64(shippedMemoryLimit)/8,
		"silent calls up to the bound of all clients together hold %.1f KiB each", perCall/1024)

	// Another client is answered meanwhile.
	other := authv3.NewAuthorizationClient(dialFrom(t, addr, "127.0.0.2"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := other.Check(ctx, checkReq("GET", "/healthz", "10.1.2.3", nil))
	require.NoError(t, err)
	assert.NotNil(t, resp.GetOkResponse())

	for _, rs := range raws {
		rs.conn.Close()
	}
	require.Eventually(t, func() bool { return receivingNow(ts.srv) == 0 }, 10*time.Second, 20*time.Millisecond,
		"the places of the calls that ended come back (%d still taken)", receivingNow(ts.srv))
	assert.Eventually(t, func() bool { return heldChecks() == 0 }, 10*time.Second, 20*time.Millisecond)
}

// The other methods' calls wait for their message within the same bound:
// a unary health Check, and the streams (a health Watch, reflection).
func TestEveryMethodsSilentCallsAreBounded(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	addr := ts.srv.grpcLn.Addr().String()
	for _, method := range []string{
		healthpb.Health_Check_FullMethodName,
		healthpb.Health_Watch_FullMethodName,
		"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
	} {
		t.Run(method, func(t *testing.T) {
			var raws []*rawStreams
			for range 2 {
				raws = append(raws, openSilentCalls(t, addr, method, 256))
			}
			require.Eventually(t, func() bool { return receivingNow(ts.srv) == receivingLimits.PerClient }, 8*time.Second, 20*time.Millisecond,
				"calls waiting for their message (%d)", receivingNow(ts.srv))
			time.Sleep(300 * time.Millisecond)
			assert.Equal(t, receivingLimits.PerClient, receivingNow(ts.srv), "no more of them later")
			for _, rs := range raws {
				rs.conn.Close()
			}
			require.Eventually(t, func() bool { return receivingNow(ts.srv) == 0 }, 10*time.Second, 20*time.Millisecond)
		})
	}
}

// A Check gives its place back as soon as its message has come, not when
// its call ends: checks in flight far past the bound of calls receiving
// their message, from one client, are all answered.
func TestChecksInFlightAreNotBoundedAsCallsReceiving(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})

	checks := 4 * receivingLimits.Total
	var wg sync.WaitGroup
	errs := make(chan error, checks)
	for i := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := ts.client.Check(ctx, checkReq("GET", "/healthz", "10.1.2.3", nil))
			if err != nil {
				errs <- err
			}
		})
		if i%64 == 63 {
			wg.Wait()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("a check failed: %v", err)
	}
	assert.Equal(t, 0, receivingNow(ts.srv), "places still taken after every check was answered")
}

// A Check call's message may be up to envoy.MaxCheckRequestBytes, and
// grpc-go keeps what has come of it until the rest arrives or the call's
// bound ends it, granting the stream more window as it reads. A client
// that sends all but the last bytes of the largest message on many calls
// makes the server hold one body per call: those calls are counted as still
// receiving, and all that the bound lets every client hold this way must
// stay within the memory the shipped deployments give the process.
func TestUnfinishedCheckMessagesFitTheShippedMemoryLimit(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	addr := ts.srv.grpcLn.Addr().String()

	const (
		calls = 48
		size  = envoy.MaxCheckRequestBytes - 64 // a message the server accepts
		sent  = size - 16                       // all of it but the last bytes
	)
	var h2c http.Protocols // HTTP/2 without TLS, from the first byte, as gRPC speaks it
	h2c.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &h2c, HTTP2: &http.HTTP2Config{StrictMaxConcurrentRequests: true}} // one connection
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()

	chunk := make([]byte, 32<<10)
	before := liveHeap()
	wrote := make(chan struct{}, calls)
	for range calls {
		pr, pw := io.Pipe()
		req, err := http.NewRequestWithContext(ctx, "POST", "http://"+addr+"/envoy.service.auth.v3.Authorization/Check", pr)
		require.NoError(t, err)
		req.Header.Set("content-type", "application/grpc")
		req.Header.Set("te", "trailers")
		wg.Go(func() {
			resp, err := tr.RoundTrip(req)
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
		wg.Go(func() {
			defer pw.Close()
			var hdr [5]byte
			binary.BigEndian.PutUint32(hdr[1:], size)
			if _, err := pw.Write(hdr[:]); err != nil {
				return
			}
			for left := sent; left > 0; {
				n := min(left, len(chunk))
				if _, err := pw.Write(chunk[:n]); err != nil {
					return
				}
				left -= n
			}
			wrote <- struct{}{}
			<-ctx.Done() // and never the rest
		})
	}
	for range calls {
		select {
		case <-wrote:
		case <-time.After(8 * time.Second):
			t.Fatal("the server did not take the messages' bytes")
		}
	}
	require.Eventually(t, func() bool { return receivingNow(ts.srv) == calls }, 5*time.Second, 20*time.Millisecond,
		"calls counted as receiving (%d)", receivingNow(ts.srv))
	held := liveHeap()
	perCall := float64(int64(held)-int64(before)) / calls
	all := perCall * float64(receivingLimits.Total)
	t.Logf("%d calls each %d KiB into a %d KiB message: heap and stacks %d → %d MiB (%.0f KiB a call); %d such calls would hold %.0f MiB",
		calls, sent>>10, size>>10, before>>20, held>>20, perCall/1024, receivingLimits.Total, all/(1<<20))
	assert.Less(t, all, float64(shippedMemoryLimit)/2,
		"the calls every client together may keep waiting for the largest message hold %.0f MiB (%.0f KiB a call)", all/(1<<20), perCall/1024)
}

// A check waiting on the store has its message: it no longer counts as
// receiving, so one client's checks in flight are not bounded by
// receivingLimits. While twice as many checks as a client may have calls
// receiving wait on a slow store (one key, 1.4 s to look up), none counts,
// and as many again are answered meanwhile; none is refused.
func TestChecksWaitingOnTheStoreDoNotCountAsReceiving(t *testing.T) {
	ts, proxy := resetRig(t, "")
	proxy.SetDelay(700 * time.Millisecond) // a lookup takes 1.4 s, within the store's timeout (2 s)
	unknown, err := ts.mgr.Format.Generate()
	require.NoError(t, err)
	errs := make(chan error, 4*receivingLimits.PerClient)
	var wg sync.WaitGroup
	wave := func() {
		for range 2 * receivingLimits.PerClient {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_, err := ts.client.Check(ctx, checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": unknown}))
				errs <- err
			})
		}
	}
	wave()
	require.Eventually(t, func() bool { return ts.srv.cache.Stats().Misses > 0 }, 10*time.Second, time.Millisecond,
		"no check asked the store")
	require.Eventually(t, func() bool { return receivingNow(ts.srv) == 0 }, time.Second, time.Millisecond,
		"checks waiting on the store still count as receiving (%d)", receivingNow(ts.srv))
	wave()
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, 0, receivingNow(ts.srv))
}

// One client may hold listen.max_connections_per_client (1,024) connections
// on the HTTP listener, each with a header block it has not finished (the
// ReadHeader bound, 5 s, ends it; the client opens another). Go's server
// parses the lines as they come, and a block of short header lines costs it
// several times its bytes: what one client may hold this way, measured on
// a few connections, stays within the memory the shipped deployments give
// the process.
func TestOneClientsUnfinishedHeaderBlocksFitTheShippedMemoryLimit(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	addr := ts.srv.httpLn.Addr().String()
	perLimit := ts.cfg.Listen.MaxConnectionsPerClient
	require.Equal(t, 1024, perLimit, "the documented default")

	const conns = 40
	// One-byte headers up to the cap, all but the blank line that ends them.
	head := "GET /authz/api/users HTTP/1.1\r\nHost: x\r\n"
	block := head + strings.Repeat("a:b\r\n", (ts.srv.http.MaxHeaderBytes-len(head)-64)/5)
	before := liveHeap()
	var cs []net.Conn
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	for range conns {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		cs = append(cs, c)
		_, err = io.WriteString(c, block)
		require.NoError(t, err)
	}
	time.Sleep(time.Second) // within the 5 s the server waits for the rest
	for _, c := range cs {  // none answered yet: the server is still reading
		require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Millisecond)))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		require.True(t, errors.As(err, &ne) && ne.Timeout(), "the server answered a header block under its cap: %v", err)
	}
	held := liveHeap()
	perConn := float64(int64(held)-int64(before)) / conns
	oneClient := perConn * float64(perLimit)
	t.Logf("%d unfinished header blocks of %d KiB: heap and stacks %d → %d MiB (%.0f KiB a connection); one client's %d connections would hold %.0f MiB",
		conns, len(block)>>10, before>>20, held>>20, perConn/1024, perLimit, oneClient/(1<<20))
	assert.Less(t, oneClient, float64(shippedMemoryLimit),
		"one client, within its connection cap and the header cap, holds %.0f MiB (%.0f KiB a connection)", oneClient/(1<<20), perConn/1024)
}

// BenchmarkReceiving is what the bound of calls waiting for their message
// adds to a Check: a place taken before its message is read and given back
// after.
func BenchmarkReceiving(b *testing.B) {
	s := &server{receiving: newClientCount(receivingLimits)}
	ctx := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 40000}})
	b.ReportAllocs()
	for b.Loop() {
		client, err := s.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		s.End(client)
	}
}
