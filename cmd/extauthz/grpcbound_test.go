package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/authz/envoy"
)

// heldChecks counts this process's Check handlers waiting for a message.
func heldChecks() int {
	var b bytes.Buffer
	_ = pprof.Lookup("goroutine").WriteTo(&b, 2)
	n := 0
	for g := range strings.SplitSeq(b.String(), "\n\n") {
		if strings.Contains(g, "authz/envoy.checkHandler(") && strings.Contains(g, "RecvMsg") {
			n++
		}
	}
	return n
}

// A client that opens Check calls and never sends their message, with no
// deadline or a long one, is cut off at the server's bound (shortened here
// to 400 ms), and so are its handlers; Envoy's Check with its own deadline,
// and a health Watch stream, are not.
func TestAGRPCCallThatNeverSendsIsCutOff(t *testing.T) {
	const bound = 400 * time.Millisecond
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	var applied time.Duration
	ts := startServerTuned(t, path, serverOutput{logs: io.Discard, audit: io.Discard}, func(s *server) { applied, s.maxCall = s.maxCall, bound })
	assert.Equal(t, 10*time.Second, applied, "the server runs with the documented bound")

	watch, err := healthpb.NewHealthClient(ts.conn).Watch(context.Background(), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	_, err = watch.Recv()
	require.NoError(t, err, "the Watch stream's first status")
	watched := make(chan error, 1)
	go func() { _, err := watch.Recv(); watched <- err }()

	const calls = 50
	desc := &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}
	ended := make(chan error, calls)
	start := time.Now()
	for i := range calls {
		ctx := context.Background()
		if i%2 == 1 { // a deadline far past the bound
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, time.Minute)
			defer cancel()
		}
		stream, err := ts.conn.NewStream(ctx, desc, authv3.Authorization_Check_FullMethodName)
		require.NoError(t, err)
		go func() { ended <- stream.RecvMsg(new(authv3.CheckResponse)) }()
	}
	require.Eventually(t, func() bool { return heldChecks() == calls }, 5*time.Second, 10*time.Millisecond, "every call reaches a handler")

	// Meanwhile a Check with Envoy's own deadline is answered.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	resp, err := ts.client.Check(ctx, checkReq("GET", "/healthz", "10.1.2.3", nil))
	require.NoError(t, err)
	assert.NotNil(t, resp.GetOkResponse())

	for range calls {
		select {
		case err := <-ended:
			assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "%v", err)
		case <-time.After(10 * time.Second):
			t.Fatalf("a call that never sent is still open %v after it began (bound %v)", time.Since(start), bound)
		}
	}
	assert.Eventually(t, func() bool { return heldChecks() == 0 }, 5*time.Second, 10*time.Millisecond, "handlers left waiting")

	select {
	case err := <-watched:
		t.Fatalf("the health Watch stream ended: %v", err)
	case <-time.After(bound):
	}
}

// Health Watch streams are exempt from the call bound, so what one holds
// must not be the caller's to size: a client naming a service of nearly a
// megabyte in each of many streams on one connection would otherwise make
// the server keep every name for as long as the connection lives. Each
// stream still gets SERVICE_UNKNOWN and stays open, as the health protocol
// says, and a watch of the served services still sees their status.
func TestAHealthWatchHoldsNoClientSizedName(t *testing.T) {
	saved := watchLimits // more streams from one client than it may open
	watchLimits = watchLimit{PerClient: 100, Total: 100}
	t.Cleanup(func() { watchLimits = saved })
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	hc := healthpb.NewHealthClient(ts.conn)

	for _, service := range []string{"", authv3.Authorization_ServiceDesc.ServiceName} {
		w, err := hc.Watch(t.Context(), &healthpb.HealthCheckRequest{Service: service})
		require.NoError(t, err)
		resp, err := w.Recv()
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus(), "service %q", service)
	}

	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	const streams, nameLen = 64, 1<<20 - 64
	for i := range streams {
		name := fmt.Sprintf("%03d", i) + strings.Repeat("s", nameLen)
		w, err := hc.Watch(t.Context(), &healthpb.HealthCheckRequest{Service: name})
		require.NoError(t, err)
		resp, err := w.Recv()
		require.NoError(t, err)
		require.Equal(t, healthpb.HealthCheckResponse_SERVICE_UNKNOWN, resp.GetStatus())
	}
	grown := int64(heap()) - int64(before)
	assert.Less(t, grown, int64(16<<20), "%d watches of %d-byte names hold %d MiB", streams, nameLen, grown>>20)
}

// Envoy never compresses a CheckRequest, and a compressed message is what
// lets a caller make the server hold and inflate far more than it sent: a
// Check padded to just under the 1 MiB message cap gzips to about a
// kilobyte, and each such call would cost the server a MiB buffer and
// over half a millisecond of inflating, on as many streams at once as it
// likes. So a compressed message is refused, unread, on every method
// (Check, health, reflection), while the same calls uncompressed are
// answered.
func TestACompressedGRPCMessageIsRefused(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	ctx := t.Context()

	bomb := checkReq("GET", "/healthz", "10.1.2.3", nil)
	pad := envoy.MaxCheckRequestBytes - 64 - proto.Size(bomb)
	bomb.ProtoReflect().SetUnknown(protowire.AppendBytes(protowire.AppendTag(nil, 15, protowire.BytesType), make([]byte, pad)))
	require.Less(t, proto.Size(bomb), envoy.MaxCheckRequestBytes)
	_, err := ts.client.Check(ctx, bomb, grpc.UseCompressor(gzip.Name))
	require.Error(t, err, "a compressed Check is not decided")
	assert.NotEqual(t, codes.OK, status.Code(err))
	resp, err := ts.client.Check(ctx, bomb)
	require.NoError(t, err, "the same Check uncompressed is decided")
	assert.NotNil(t, resp.GetOkResponse())

	// (grpc-go sends an empty message uncompressed: name a service.)
	hc := &healthpb.HealthCheckRequest{Service: authv3.Authorization_ServiceDesc.ServiceName}
	_, err = healthpb.NewHealthClient(ts.conn).Check(ctx, hc, grpc.UseCompressor(gzip.Name))
	assert.Error(t, err, "a compressed health Check")
	_, err = healthpb.NewHealthClient(ts.conn).Check(ctx, hc)
	assert.NoError(t, err)
}

// dialFrom opens a gRPC connection to addr whose client address is local, a
// loopback address other than 127.0.0.1 standing for another client.
func dialFrom(t *testing.T, addr, local string) *grpc.ClientConn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Health Watch streams last until their client ends them, so their number
// is bounded, per client address and in all: one client with many
// connections cannot open them by the million and hold the server's memory,
// nor take every place from the others. A Watch past the bound is refused
// with RESOURCE_EXHAUSTED, Check still answers, and a place given back is
// free again.
func TestHealthWatchStreamsAreBounded(t *testing.T) {
	saved := watchLimits
	watchLimits = watchLimit{PerClient: 3, Total: 5}
	t.Cleanup(func() { watchLimits = saved })
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	addr := ts.srv.grpcLn.Addr().String()

	watch := func(conn *grpc.ClientConn) (context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(t.Context())
		w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if err != nil {
			cancel()
		}
		return cancel, err
	}
	exhausted := func(err error) bool { return status.Code(err) == codes.ResourceExhausted }

	// One client, over two connections: three places, not more.
	a1, a2 := dialFrom(t, addr, "127.0.0.1"), dialFrom(t, addr, "127.0.0.1")
	var held []context.CancelFunc
	for i, conn := range []*grpc.ClientConn{a1, a2, a1} {
		cancel, err := watch(conn)
		require.NoError(t, err, "watch %d of the first client", i)
		held = append(held, cancel)
	}
	_, err := watch(a2)
	assert.True(t, exhausted(err), "a fourth watch of one client: %v", err)
	resp, err := authv3.NewAuthorizationClient(a2).Check(t.Context(), checkReq("GET", "/healthz", "10.1.2.3", nil))
	require.NoError(t, err, "Check past the watch bound")
	assert.NotNil(t, resp.GetOkResponse())

	// Another client gets the two places left in all, not a third.
	b := dialFrom(t, addr, "127.0.0.2")
	for i := range 2 {
		cancel, err := watch(b)
		require.NoError(t, err, "watch %d of the second client", i)
		t.Cleanup(cancel)
	}
	_, err = watch(dialFrom(t, addr, "127.0.0.3"))
	assert.True(t, exhausted(err), "a watch past the bound in all: %v", err)

	// A place given back is free again.
	held[0]()
	assert.Eventually(t, func() bool {
		cancel, err := watch(dialFrom(t, addr, "127.0.0.3"))
		if err == nil {
			t.Cleanup(cancel)
		}
		return err == nil
	}, 5*time.Second, 20*time.Millisecond, "the place a watch gave back")
	for _, cancel := range held[1:] {
		cancel()
	}
}

// A gRPC connection is bounded before and between its calls, as the HTTP
// listeners' are: one that never finishes its handshake is closed at the
// handshake bound, and one with no call in flight at the idle bound, with a
// GOAWAY, though it answers every frame. A connection with a call in flight
// (a health Watch) is not idle, and stays.
func TestAGRPCConnectionIsBoundedBeforeAndBetweenCalls(t *testing.T) {
	saved := grpcConnLimits
	grpcConnLimits = grpcConnLimit{Handshake: 300 * time.Millisecond, Idle: 300 * time.Millisecond}
	t.Cleanup(func() { grpcConnLimits = saved })
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	addr := ts.srv.grpcLn.Addr().String()

	watch, err := healthpb.NewHealthClient(ts.conn).Watch(t.Context(), &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	_, err = watch.Recv()
	require.NoError(t, err)
	watched := make(chan error, 1)
	go func() { _, err := watch.Recv(); watched <- err }()

	for _, sent := range []string{"", "PRI * HTTP/2.0\r\n", http2.ClientPreface} {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		_, err = io.WriteString(c, sent)
		require.NoError(t, err)
		start := time.Now()
		require.NoError(t, c.SetReadDeadline(start.Add(5*time.Second)))
		_, err = io.Copy(io.Discard, c)
		require.NoError(t, err, "a connection that sent %q and then nothing is still open after %v", sent, time.Since(start))
	}

	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, http2.ClientPreface)
	require.NoError(t, err)
	fr := http2.NewFramer(c, c)
	require.NoError(t, fr.WriteSettings())
	start := time.Now()
	require.NoError(t, c.SetReadDeadline(start.Add(5*time.Second)))
	for {
		f, err := fr.ReadFrame()
		require.NoError(t, err, "an idle connection got no GOAWAY in %v", time.Since(start))
		if s, ok := f.(*http2.SettingsFrame); ok && !s.IsAck() {
			require.NoError(t, fr.WriteSettingsAck())
		}
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			require.NoError(t, fr.WritePing(true, p.Data))
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
	}

	select {
	case err := <-watched:
		t.Fatalf("the connection of a health Watch was closed as idle: %v", err)
	case <-time.After(time.Second):
	}
	resp, err := ts.client.Check(t.Context(), checkReq("GET", "/healthz", "10.1.2.3", nil))
	require.NoError(t, err)
	assert.NotNil(t, resp.GetOkResponse())
}

// A client's Watch places are counted by the block of addresses it is
// routinely given, as the lookup guard counts its unknown keys: an IPv4
// address, or an IPv6 /64. Counted by address, one IPv6 host, free to
// pick any of its /64's 2^64 addresses for each connection, took every
// place in all, and no other client could watch.
func TestHealthWatchPlacesAreCountedPerAddressBlock(t *testing.T) {
	from := func(addr string) *peer.Peer {
		return &peer.Peer{Addr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr))}
	}
	w := newWatchCount(watchLimit{PerClient: 2, Total: 100})
	for i, addr := range []string{"[2001:db8:1:2::1]:5000", "[2001:db8:1:2::2]:5001", "[2001:db8:1:2:ffff::3]:5002"} {
		ok := w.acquire(watchClient(from(addr)))
		assert.Equal(t, i < 2, ok, "watch %d of one /64, from %s", i, addr)
	}
	assert.True(t, w.acquire(watchClient(from("[2001:db8:1:3::1]:5000"))), "another /64 is another client")
	for i, addr := range []string{"10.0.0.1:1", "[::ffff:10.0.0.1]:2", "10.0.0.1:3"} {
		assert.Equal(t, i < 2, w.acquire(watchClient(from(addr))), "watch %d of one IPv4 address, mapped or not, from %s", i, addr)
	}
	assert.True(t, w.acquire(watchClient(from("10.0.0.2:1"))), "another IPv4 address is another client")
}

// A health Watch lasts until its client ends it, so it must not hold up
// shutdown: graceful stop waits for every call in flight, and a client
// that keeps a Watch open (anyone who reaches the port may) would make
// every shutdown wait out its whole bound, holding back the last-use
// writes and the audit events queued behind it. A Watch of a served
// service sees NOT_SERVING, and then its stream ends; one of a service
// this server does not report on just ends.
func TestAHealthWatchDoesNotHoldUpShutdown(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard})
	conn := dialFrom(t, ts.srv.grpcLn.Addr().String(), "127.0.0.1")
	told := map[string]bool{"": true, "not.served": false} // whether the Watch is told NOT_SERVING
	streams := map[string]healthpb.Health_WatchClient{}
	for service := range told {
		w, err := healthpb.NewHealthClient(conn).Watch(t.Context(), &healthpb.HealthCheckRequest{Service: service})
		require.NoError(t, err)
		_, err = w.Recv()
		require.NoError(t, err)
		streams[service] = w
	}

	start := time.Now()
	ts.stop()
	assert.Less(t, time.Since(start), 5*time.Second, "shutdown waited for the Watch streams")
	for service, notServing := range told {
		last := healthpb.HealthCheckResponse_ServingStatus(-1)
		for {
			resp, err := streams[service].Recv()
			if err != nil {
				break
			}
			last = resp.GetStatus()
		}
		if notServing {
			assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, last, "the last status of a Watch of %q", service)
		}
	}
}
