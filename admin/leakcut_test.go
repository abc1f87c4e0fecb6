package admin

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// unreadConn is a server-side connection whose peer never reads: once its
// socket buffers are full (as after answers the client left unread), every
// Write blocks until the write deadline passes or the connection is
// closed, as a TCP write does.
type unreadConn struct {
	net.Conn
	mu       sync.Mutex
	deadline time.Time
	closed   chan struct{}
	once     sync.Once
}

func (c *unreadConn) Write(p []byte) (int, error) {
	for {
		c.mu.Lock()
		d := c.deadline
		c.mu.Unlock()
		if !d.IsZero() && !time.Now().Before(d) {
			return 0, os.ErrDeadlineExceeded
		}
		select {
		case <-c.closed:
			return 0, net.ErrClosed
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (c *unreadConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetWriteDeadline(t)
}

func (c *unreadConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	return c.Conn.SetDeadline(t)
}

func (c *unreadConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// unreadListener hands out the next accepted connection as an unreadConn
// while stuckNext is set.
type unreadListener struct {
	net.Listener
	stuckNext atomic.Bool
}

func (l *unreadListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil && l.stuckNext.CompareAndSwap(true, false) {
		return &unreadConn{Conn: c, closed: make(chan struct{})}, nil
	}
	return c, err
}

// A report that does not fit makes room by cutting off older reports still
// reading their bodies, so that stalled clients cannot keep GitHub's report
// out. A report sent with "Expect: 100-continue" on a connection whose
// client reads nothing back blocks in net/http's write of "100 Continue"
// on its first body read, holding its first buffer, and a read deadline
// alone did not end that write: it held its room until its write deadline
// (the route's 25 s and 1 s), and GitHub's newer report, waiting for it,
// was answered 503 at its own body deadline. The room here is one first
// buffer (512 bytes), full as a crowd would fill the 8 MiB.
func TestAReportBlockedWritingContinueIsCutOff(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	leaked, id := e.create(keystore.Spec{Name: "leaked", Permissions: []string{"x"}})
	opts := e.opts
	opts.Leaks = &LeakOptions{
		PublicKeys:       map[string]*ecdsa.PublicKey{githubKeyID: &e.github.PublicKey},
		BodyTimeout:      time.Second,
		MaxBufferedBytes: 512, // the room one first buffer takes: the bound full, as a crowd would fill 8 MiB
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &unreadListener{Listener: inner}
	srv := &http.Server{Handler: NewLeakHandler(opts)}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := inner.Addr().String()

	// The older report: begun with Expect: 100-continue by a client that
	// reads nothing back.
	ln.stuckNext.Store(true)
	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 300\r\nExpect: 100-continue\r\n"+
		"Github-Public-Key-Identifier: %s\r\nGithub-Public-Key-Signature: AAAA\r\n\r\n", leakPath, githubKeyID)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return opts.Leaks.bodies.heldBytes() == 512 }, 2*time.Second, time.Millisecond)

	// GitHub's report, in one go, newer: the older one should be cut off.
	start := time.Now()
	r := e.reportTo("http://"+addr, leakBody(leaked))
	took := time.Since(start)
	assert.Equal(t, http.StatusOK, r.status, "GitHub's report was kept out by an older report (answered after %v): %s", took.Round(time.Millisecond), r)
	k, err := e.store.Get(context.Background(), id)
	require.NoError(t, err)
	assert.NotNil(t, k.RevokedAt, "the leaked key stays live")
}

// The body must be one JSON array and nothing after it but white space
// (TestMalformedAndOversizedLeakReports: trailing data is 400).
// json.Decoder.More reports false before a ']' or '}', so a stray closing
// bracket or brace after the array passed as if it were not there.
func TestAClosingBracketAfterTheArrayIsRefused(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	for _, body := range []string{`[]]`, `[] }`, `[{"token":"x"}]]]]}`} {
		r := e.report([]byte(body))
		assert.Equal(t, http.StatusBadRequest, r.status, "body %q: %s", body, r)
	}
}
