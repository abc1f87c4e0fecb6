package main

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shippedMemoryLimit is the GOMEMLIMIT the shipped deployments give the
// process (460 MiB of a 512 MiB container).
const shippedMemoryLimit = 460 << 20

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
	before := liveHeapBytes() // the connections' goroutine stacks are a few hundred KiB of it: left out
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
	held := liveHeapBytes()
	perConn := float64(held-before) / conns
	oneClient := perConn * float64(perLimit)
	t.Logf("%d unfinished header blocks of %d KiB: live heap %d → %d MiB (%.0f KiB a connection); one client's %d connections would hold %.0f MiB",
		conns, len(block)>>10, before>>20, held>>20, perConn/1024, perLimit, oneClient/(1<<20))
	assert.Less(t, oneClient, float64(shippedMemoryLimit),
		"one client, within its connection cap and the header cap, holds %.0f MiB (%.0f KiB a connection)", oneClient/(1<<20), perConn/1024)
}
