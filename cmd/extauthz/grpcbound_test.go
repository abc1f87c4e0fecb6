package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding/gzip"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
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
