package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"

	"github.com/extauthz/extauthz/internal/syncbuf"
)

// tcpFrom opens a TCP connection to addr from the loopback address src
// (any of 127.0.0.0/8 is this host's), so that one test can be several
// clients.
func tcpFrom(ctx context.Context, src, addr string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	return d.DialContext(ctx, "tcp", addr)
}

// closedAtOnce reports whether the server closed c within a second, where
// a connection it keeps stays open (after its greeting: gRPC's settings)
// until the handshake bound.
func closedAtOnce(t *testing.T, c net.Conn) bool {
	t.Helper()
	require.NoError(t, c.SetReadDeadline(time.Now().Add(time.Second)))
	n, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	require.NoError(t, err, "a connection refused is closed, not reset")
	require.Zero(t, n, "a connection refused is closed unanswered")
	return true
}

// One client cannot hold the process's memory and open files with
// connections: on each listener, one past listen.max_connections_per_client
// is closed as soon as it is accepted, while other clients, and the same
// client once one of its connections has closed, are served.
func TestAClientHoldsAtMostMaxConnectionsPerListener(t *testing.T) {
	logs := &syncbuf.Buffer{}
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off, max_connections_per_client: 3}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard})

	for _, l := range []struct {
		name  string
		addr  string
		serve func(t *testing.T, src string) // one call as client src
	}{
		{"grpc", ts.srv.grpcLn.Addr().String(), func(t *testing.T, src string) {
			resp, err := authv3.NewAuthorizationClient(dialFrom(t, ts.srv.grpcLn.Addr().String(), src)).Check(t.Context(), checkReq("GET", "/healthz", "10.1.2.3", nil))
			require.NoError(t, err, "client %s", src)
			assert.NotNil(t, resp.GetOkResponse())
		}},
		{"http", ts.srv.httpLn.Addr().String(), func(t *testing.T, src string) {
			client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return tcpFrom(ctx, src, addr) }}}
			defer client.CloseIdleConnections()
			resp, err := client.Get(ts.httpURL + "/healthz")
			require.NoError(t, err, "client %s", src)
			resp.Body.Close()
			assert.Equal(t, http.StatusOK, resp.StatusCode)
		}},
	} {
		t.Run(l.name, func(t *testing.T) {
			var held []net.Conn
			for range 3 {
				c, err := tcpFrom(t.Context(), "127.0.0.1", l.addr)
				require.NoError(t, err)
				defer c.Close()
				held = append(held, c)
			}
			for i, c := range held {
				require.False(t, closedAtOnce(t, c), "connection %d of 3 was closed", i+1)
			}
			over, err := tcpFrom(t.Context(), "127.0.0.1", l.addr)
			require.NoError(t, err)
			defer over.Close()
			require.True(t, closedAtOnce(t, over), "a fourth connection of one client was kept")

			l.serve(t, "127.0.0.2") // another client is served meanwhile

			// Once one of its connections has closed, the client has a place again.
			require.NoError(t, held[0].Close())
			require.Eventually(t, func() bool {
				c, err := tcpFrom(t.Context(), "127.0.0.1", l.addr)
				require.NoError(t, err)
				defer c.Close()
				return !closedAtOnce(t, c)
			}, 5*time.Second, 50*time.Millisecond, "the closed connection's place was not given back")
		})
	}

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return tcpFrom(ctx, "127.0.0.3", addr) }}}
	fams := scrape(t, client, ts.httpURL+"/metrics")
	for _, l := range []string{"grpc", "http"} {
		n, ok := sample(fams, "extauthz_connections_refused_total", "listener", l)
		require.True(t, ok)
		assert.GreaterOrEqual(t, n, 1.0, l)
	}
	assert.Contains(t, logs.String(), "max_connections_per_client")
	assert.Contains(t, logs.String(), `"client":"127.0.0.1"`)
}
