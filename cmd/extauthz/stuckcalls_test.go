package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// stingyClient is a raw HTTP/2 client that grants the server no flow-control
// window for its answers (SETTINGS_INITIAL_WINDOW_SIZE 0, and never a
// WINDOW_UPDATE), but otherwise behaves: it reads every frame, acknowledges
// settings and answers pings, so that keepalive finds nothing wrong.
type stingyClient struct {
	conn *countingConn
	wmu  sync.Mutex
	fr   *http2.Framer

	goaway atomic.Bool
	closed atomic.Bool
	data   atomic.Int64 // DATA frames received (answers the server could send)
}

func dialStingy(t *testing.T, addr string) *stingyClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	sc := &stingyClient{conn: &countingConn{Conn: c}}
	sc.fr = http2.NewFramer(sc.conn, nil)
	_, err = io.WriteString(sc.conn, http2.ClientPreface)
	require.NoError(t, err)
	require.NoError(t, sc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0}))
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		defer sc.closed.Store(true)
		rfr := http2.NewFramer(io.Discard, c)
		rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		for {
			f, err := rfr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					sc.wmu.Lock()
					_ = sc.fr.WriteSettingsAck()
					sc.wmu.Unlock()
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					sc.wmu.Lock()
					_ = sc.fr.WritePing(true, f.Data)
					sc.wmu.Unlock()
				}
			case *http2.GoAwayFrame:
				sc.goaway.Store(true)
			case *http2.DataFrame:
				sc.data.Add(1)
			}
		}
	}()
	return sc
}

// open sends calls Check calls, each with two copies of one 2,800-byte
// "-bin" metadata entry (5.6 KB decoded, within the 8 KiB a call may keep;
// HPACK sends each copy after the first as a one-byte index) and an empty
// CheckRequest, and half-closes them. It returns the bytes written.
func (sc *stingyClient) open(t *testing.T, calls int) int {
	t.Helper()
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	before := sc.conn.n
	pad := make([]byte, 2800)
	_, _ = rand.Read(pad)
	padValue := base64.StdEncoding.EncodeToString(pad)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	msg := binary.BigEndian.AppendUint32([]byte{0}, 0) // an empty CheckRequest, uncompressed
	for i := range calls {
		block.Reset()
		for _, f := range []hpack.HeaderField{
			{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
			{Name: ":path", Value: "/envoy.service.auth.v3.Authorization/Check"},
			{Name: ":authority", Value: "x"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
			{Name: "x-p-bin", Value: padValue}, {Name: "x-p-bin", Value: padValue},
		} {
			require.NoError(t, enc.WriteField(f))
		}
		id := uint32(2*i + 1)
		require.NoError(t, sc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true}))
		require.NoError(t, sc.fr.WriteData(id, true, msg))
	}
	return sc.conn.n - before
}

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

	sc := dialStingy(t, ts.srv.grpcLn.Addr().String())
	before := liveHeapBytes()
	const calls = grpcMaxConcurrentStreams
	sent := sc.open(t, calls)
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
