package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/extauthz/extauthz/internal/syncbuf"
)

// countingConn counts the bytes a client writes.
type countingConn struct {
	net.Conn
	n int
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n += n
	return n, err
}

// rawStreams is one raw HTTP/2 connection that opens gRPC calls whose
// headers it writes itself, and counts the calls the server ended with
// grpc-status 8 (RESOURCE_EXHAUSTED) in a trailers-only answer. It
// acknowledges the server's settings and answers its pings, so that
// keepalive finds nothing wrong with it.
type rawStreams struct {
	conn      *countingConn
	wmu       sync.Mutex // one writer at a time: open, and the reader's acknowledgements
	exhausted atomic.Int64
	data      atomic.Int64 // DATA frames received: answers the server could send
	goaway    atomic.Bool
	closed    atomic.Bool // the server closed the connection
}

// dialRaw opens a raw HTTP/2 connection to addr with the settings given
// and reads what the server sends (so that it never blocks on the client).
func dialRaw(t *testing.T, addr string, settings ...http2.Setting) *rawStreams {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	rs := &rawStreams{conn: &countingConn{Conn: c}}
	_, err = io.WriteString(rs.conn, http2.ClientPreface)
	require.NoError(t, err)
	require.NoError(t, http2.NewFramer(rs.conn, c).WriteSettings(settings...))
	read := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-read })
	go func() {
		defer close(read)
		defer rs.closed.Store(true)
		rfr := http2.NewFramer(io.Discard, c)
		rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		acks := http2.NewFramer(c, nil) // not counted: what the client sends of its own accord
		ack := func(write func() error) {
			rs.wmu.Lock()
			defer rs.wmu.Unlock()
			_ = write()
		}
		for {
			f, err := rfr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamEnded() && f.PseudoValue("status") == "200" {
					for _, hf := range f.RegularFields() {
						if hf.Name == "grpc-status" && hf.Value == "8" {
							rs.exhausted.Add(1)
						}
					}
				}
			case *http2.SettingsFrame:
				if !f.IsAck() {
					ack(acks.WriteSettingsAck)
				}
			case *http2.PingFrame:
				if !f.IsAck() {
					ack(func() error { return acks.WritePing(true, f.Data) })
				}
			case *http2.GoAwayFrame:
				rs.goaway.Store(true)
			case *http2.DataFrame:
				rs.data.Add(1)
			}
		}
	}()
	return rs
}

// open opens calls streams of method path (ids from first on), each a
// HEADERS frame carrying pads copies of one "-bin" entry of padBytes
// decoded bytes: HPACK puts the entry in its table once, and names it by a
// one-byte index after that. With msg, each sends it as its one message
// and half-closes; without, its message never comes. It returns the bytes
// written.
func (rs *rawStreams) open(t *testing.T, path string, msg []byte, first, calls, pads, padBytes int) int {
	t.Helper()
	rs.wmu.Lock()
	defer rs.wmu.Unlock()
	before := rs.conn.n
	fr := http2.NewFramer(rs.conn, nil)
	pad := make([]byte, padBytes)
	_, _ = rand.Read(pad)
	padValue := base64.StdEncoding.EncodeToString(pad)
	var block bytes.Buffer
	enc := hpack.NewEncoder(&block)
	for i := range calls {
		id := uint32(2*(first+i) + 1)
		block.Reset()
		for _, f := range []hpack.HeaderField{
			{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"}, {Name: ":path", Value: path},
			{Name: ":authority", Value: "x"}, {Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
		} {
			require.NoError(t, enc.WriteField(f))
		}
		for range pads {
			require.NoError(t, enc.WriteField(hpack.HeaderField{Name: "x-p-bin", Value: padValue}))
		}
		require.NoError(t, fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block.Bytes(), EndHeaders: true}))
		if msg != nil {
			require.NoError(t, fr.WriteData(id, true, msg))
		}
	}
	return rs.conn.n - before
}

func liveHeapBytes() int64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A call may keep at most 8 KiB of metadata, as decoded. HPACK lets a
// client name a header already in its table with one byte, and grpc-go
// decodes each copy of a "-bin" header into a string of its own, so 16
// copies of a 2,800-byte entry, about 20 bytes on the wire, made 44 KiB
// that a Check whose message never comes held for its 10 s (2,267 times
// what was sent, measured before the bound), and a health Watch for as
// long as its client liked. Such calls are now refused as they arrive
// (RESOURCE_EXHAUSTED) and hold nothing; calls within the bound are held
// as before.
func TestACallsMetadataIsBoundedAsDecoded(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard}, func(s *server) { s.maxCall = 3 * time.Second })
	addr := ts.srv.grpcLn.Addr().String()
	const calls, padBytes = 500, 2800

	// Within the bound (2 copies, 5.6 KB): held, as any call whose message
	// has not come.
	within := dialRaw(t, addr)
	within.open(t, "/envoy.service.auth.v3.Authorization/Check", nil, 0, 50, 2, padBytes)
	require.Eventually(t, func() bool { return heldChecks() == 50 }, 5*time.Second, 10*time.Millisecond, "calls within the bound are held")
	assert.Zero(t, within.exhausted.Load())
	within.conn.Close()
	require.Eventually(t, func() bool { return heldChecks() == 0 }, 10*time.Second, 20*time.Millisecond)

	// Over it (16 copies, 44.8 KB): refused as they arrive, none held.
	over := dialRaw(t, addr)
	before := liveHeapBytes()
	sent := over.open(t, "/envoy.service.auth.v3.Authorization/Check", nil, 0, calls, 16, padBytes)
	require.Eventually(t, func() bool { return over.exhausted.Load() == calls }, 5*time.Second, 10*time.Millisecond, "each call over the bound is refused")
	held := liveHeapBytes() - before
	assert.Zero(t, heldChecks(), "no call over the bound is held")
	t.Logf("%d calls of 44.8 KB of metadata each, %d bytes sent: the server holds %d KiB after refusing them", calls, sent, held>>10)
	assert.Less(t, held, int64(16*sent), "the server holds %d KiB for %d bytes sent", held>>10, sent)
	// An operator whose Envoy or mesh sends more than that hears why every
	// check fails, a few lines a minute, not one per call.
	refusals := strings.Count(logs.String(), "gRPC call refused: its metadata holds")
	assert.Positive(t, refusals, "the refusal is logged:\n%s", logs.String())
	assert.LessOrEqual(t, refusals, listenerLogBurst, "and at most a few times a minute")
	assert.Contains(t, logs.String(), "/envoy.service.auth.v3.Authorization/Check")

	// A health Watch is held without a deadline: over the bound, refused too.
	watches := dialRaw(t, addr)
	watches.open(t, "/grpc.health.v1.Health/Watch", []byte{0, 0, 0, 0, 0}, 0, 16, 16, padBytes)
	require.Eventually(t, func() bool { return watches.exhausted.Load() == 16 }, 5*time.Second, 10*time.Millisecond, "each Watch over the bound is refused")

	// Through grpc-go's own client, as an Envoy with too much
	// initial_metadata would meet it: the error says why.
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-big", strings.Repeat("a", 9<<10))
	_, err := ts.client.Check(ctx, checkReq("GET", "/healthz", "10.1.2.3", nil))
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	assert.Contains(t, status.Convert(err).Message(), "metadata")
	ctx = metadata.AppendToOutgoingContext(context.Background(), "x-trace", strings.Repeat("a", 4<<10))
	resp, err := ts.client.Check(ctx, checkReq("GET", "/healthz", "10.1.2.3", nil))
	require.NoError(t, err)
	assert.NotNil(t, resp.GetOkResponse(), "4 KiB of metadata is within the bound")
	_, err = healthpb.NewHealthClient(ts.conn).Check(ctx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
}
