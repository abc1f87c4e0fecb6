package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestNginxFragmentInTargetIsNotCutForTheDecision sends, through the shipped
// nginx config, a request target holding a raw "#". nginx passes the target
// on to the upstream as the client wrote it, and an upstream that parses a
// request target as RFC 9112 says (no fragment: Go's net/http, so Caddy and
// Traefik too) reads the "#" as part of the path. extauthz must not decide
// the request as the path before the "#" (a public route) while the upstream
// serves another one.
func TestNginxFragmentInTargetIsNotCutForTheDecision(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+nginxRoutes)
	up := startEchoUpstream(t)
	ngx := startNginx(t, strings.TrimPrefix(ts.httpURL, "http://"), up.addr)

	u, err := url.Parse(ngx.url)
	require.NoError(t, err)
	c, err := net.DialTimeout("tcp", u.Host, 2*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	fmt.Fprintf(c, "GET /healthz#/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	require.NoError(t, err)
	resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		got := up.last(t)
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader("GET " + got.URI + " HTTP/1.1\r\nHost: x\r\n\r\n")))
		require.NoError(t, err)
		t.Fatalf("allowed as the public /healthz, but the upstream was asked for %q (Go reads the path %q)", got.URI, r.URL.Path)
	}
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Zero(t, up.calls.Load(), "the upstream is never asked")
}
