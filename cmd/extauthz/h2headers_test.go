package main

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
)

// Over TLS the HTTP and admin listeners offered HTTP/2, whose server in
// net/http bounds a connection's first header block by ReadHeaderTimeout
// but not the header blocks of later requests: a client that sent one
// request and then began a second one's headers and never ended them held
// the connection, and the headers it had sent (decoded, up to the header
// cap), for the 2 minutes of the idle timeout instead of 5 s, renewed by
// each block it did finish (64 such connections held 20 MiB). The listeners
// now speak HTTP/1.1 only, where every request's headers have their 5 s.
func TestUnfinishedHeadersAfterAFirstRequestAreCutOffOverTLS(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	ts := startTLSServer(t, certs, false)
	for _, l := range []struct {
		name, addr string
		bound      time.Duration
	}{
		{"http", ts.httpAddr, decisionLimits.ReadHeader},
		{"admin", ts.adminAddr, adminLimits.ReadHeader},
	} {
		t.Run(l.name, func(t *testing.T) {
			t.Parallel()
			c := clientTLS(certs, false)
			c.NextProtos = []string{"h2"}
			_, err := tls.Dial("tcp", l.addr, c)
			require.Error(t, err, "a client that speaks only HTTP/2 is refused at the handshake")

			c.NextProtos = []string{"h2", "http/1.1"}
			conn, err := tls.Dial("tcp", l.addr, c)
			require.NoError(t, err)
			defer conn.Close()
			require.Equal(t, "http/1.1", conn.ConnectionState().NegotiatedProtocol)

			// A first, ordinary request, answered.
			_, err = io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
			require.NoError(t, err)
			require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			require.NoError(t, err)
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()

			// The second request's headers: begun, never ended.
			start := time.Now()
			_, err = io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaa")
			require.NoError(t, err)
			require.NoError(t, conn.SetReadDeadline(start.Add(l.bound+3*time.Second)))
			_, err = io.Copy(io.Discard, br)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("%s listener: headers begun %v ago and never finished still hold the connection; the bound is %v",
					l.name, time.Since(start).Round(time.Millisecond), l.bound)
			}
			assert.GreaterOrEqual(t, time.Since(start), l.bound-time.Second, "cut off at the header bound, not before")
		})
	}
}
