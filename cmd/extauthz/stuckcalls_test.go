package main

import (
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
)

// A client that never grants the flow-control window for its answers
// (SETTINGS_INITIAL_WINDOW_SIZE 0) does not hold its calls past the
// connection's age. Such calls outlive the call bound: the handler returns,
// but grpc-go forgets a stream only once its trailers are written, which
// queue behind the answer; each keeps its metadata (8 KiB decoded for a few
// bytes on the wire) and its place among the connection's 1,024, and a
// connection with calls in flight is never idle. Before the age bound, 1,024
// such calls (35 KB sent) held 8.8 MiB for as long as the client answered
// pings, on each of the connections a client may open. Here every bound is
// 300 ms: the connection is sent a GOAWAY and closed, and what it held is
// let go.
func TestACallWhoseAnswerIsNeverAcceptedIsHeldNoLongerThanItsConnectionsAge(t *testing.T) {
	const bound = 300 * time.Millisecond
	saved := grpcConnLimits
	grpcConnLimits = grpcConnLimit{Handshake: bound, Idle: bound, Age: bound, AgeGrace: bound}
	t.Cleanup(func() { grpcConnLimits = saved })
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: io.Discard, audit: io.Discard}, func(s *server) { s.maxCall = bound })

	// No flow-control window for the answers, and never a WINDOW_UPDATE.
	sc := dialRaw(t, ts.srv.grpcLn.Addr().String(), http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	before := liveHeapBytes()
	const calls = grpcMaxConcurrentStreams
	// Each with two copies of one 2,800-byte "-bin" entry: 5.6 KB decoded,
	// within the 8 KiB a call may keep, and an empty CheckRequest.
	sent := sc.open(t, "/envoy.service.auth.v3.Authorization/Check", []byte{0, 0, 0, 0, 0}, 0, calls, 2, 2800)
	start := time.Now()
	// Well past the age and its grace (and its jitter); the bound being
	// proved is that it ends at all, not how soon.
	require.Eventually(t, sc.closed.Load, 60*bound, 10*time.Millisecond,
		"a connection holding %d calls whose answers its client never accepted is still open %v after its age and grace of %v each", calls, 60*bound, bound)
	t.Logf("%d calls, %d bytes sent: closed after %v (GOAWAY first: %v, answers sent %d)", calls, sent, time.Since(start).Round(time.Millisecond), sc.goaway.Load(), sc.data.Load())
	assert.True(t, sc.goaway.Load(), "closed without a GOAWAY first")
	var held int64
	assert.Eventually(t, func() bool { held = liveHeapBytes() - before; return held < int64(16*sent) }, 10*time.Second, 50*time.Millisecond,
		"once the connection is closed the server still holds %d KiB for the %d bytes sent", held>>10, sent)

	// And the server answers as before.
	assert.NotNil(t, ts.check(t, "GET", "/healthz", nil).GetOkResponse())
}
