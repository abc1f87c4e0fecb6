package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line with the same line, and closes its
// connections when the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// client is one connection through the proxy that sends lines and reads
// their echo.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *client) send(line string) {
	c.t.Helper()
	_, err := c.c.Write([]byte(line + "\n"))
	require.NoError(c.t, err)
}

// recv reads one line, waiting at most d.
func (c *client) recv(d time.Duration) (string, error) {
	_ = c.c.SetReadDeadline(time.Now().Add(d))
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	return line[:len(line)-1], nil
}

func (c *client) roundTrip(line string) string {
	c.t.Helper()
	c.send(line)
	got, err := c.recv(5 * time.Second)
	require.NoError(c.t, err)
	return got
}

// firstReadError connects to addr, sends a line and reads: it returns
// the error of the dial or of that first read. A connection the proxy
// resets at once can fail either way, depending on when the RST arrives.
func firstReadError(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_, _ = c.Write([]byte("lost\n"))
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(make([]byte, 16))
	return err
}

func isTimeout(err error) bool { return errors.Is(err, os.ErrDeadlineExceeded) }

func TestFaultProxyForwardsBothWays(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	for _, line := range []string{"ping", "a longer line with spaces", ""} {
		assert.Equal(t, line, c.roundTrip(line))
	}
	big := make([]byte, 200<<10) // several chunks each way
	for i := range big {
		big[i] = 'a' + byte(i%26)
	}
	assert.Equal(t, string(big), c.roundTrip(string(big)))
	assert.Equal(t, 1, p.Conns())
}

func TestFaultProxyDelayAddsLatencyNotQueueing(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	require.Equal(t, "warm", c.roundTrip("warm"))

	const d = 150 * time.Millisecond
	p.SetDelay(d)
	start := time.Now()
	require.Equal(t, "slow", c.roundTrip("slow"))
	rtt := time.Since(start)
	assert.GreaterOrEqual(t, rtt, 2*d, "a round trip crosses the delay twice")

	// Five lines sent 20 ms apart: each is delayed from when it arrived, so
	// the last echo comes about 2d after the last send, not 10d after the
	// first (which a proxy sleeping per chunk in turn would give).
	start = time.Now()
	for range 5 {
		c.send("x")
		time.Sleep(20 * time.Millisecond)
	}
	for range 5 {
		got, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, "x", got)
	}
	burst := time.Since(start)
	assert.GreaterOrEqual(t, burst, 2*d)
	assert.Less(t, burst, 6*d, "delays added up instead of overlapping")
	t.Logf("delay %v: one round trip %v, five pipelined %v", d, rtt.Round(time.Millisecond), burst.Round(time.Millisecond))

	p.SetDelay(0)
	start = time.Now()
	require.Equal(t, "fast", c.roundTrip("fast"))
	assert.Less(t, time.Since(start), d, "SetDelay(0) removes the delay")
}

func TestFaultProxyDropClosesAndRefusesUntilHeal(t *testing.T) {
	p := Start(t, echoServer(t))
	before := dial(t, p.Addr())
	require.Equal(t, "hi", before.roundTrip("hi"))

	p.Drop()
	_, err := before.recv(2 * time.Second)
	require.Error(t, err)
	assert.False(t, isTimeout(err), "a dropped connection breaks at once, it does not hang: %v", err)
	require.Eventually(t, func() bool { return p.Conns() == 0 }, 2*time.Second, 5*time.Millisecond)

	// The listener stays, but a new connection is reset at once.
	err = firstReadError(p.Addr())
	require.Error(t, err)
	assert.False(t, isTimeout(err), "a new connection is refused at once: %v", err)

	p.Heal()
	after := dial(t, p.Addr())
	assert.Equal(t, "back", after.roundTrip("back"))
}

func TestFaultProxyBlackholeHoldsDataUntilHeal(t *testing.T) {
	p := Start(t, echoServer(t))
	before := dial(t, p.Addr())
	require.Equal(t, "hi", before.roundTrip("hi"))

	p.Blackhole()
	before.send("held")
	_, err := before.recv(300 * time.Millisecond)
	assert.True(t, isTimeout(err), "an open connection gets no answer and no error: %v", err)

	during := dial(t, p.Addr()) // accepted, so the dial itself succeeds
	during.send("queued")
	_, err = during.recv(300 * time.Millisecond)
	assert.True(t, isTimeout(err), "a new connection gets no answer and no error: %v", err)
	assert.Equal(t, 2, p.Conns())

	p.Heal()
	got, err := before.recv(2 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "held", got, "what was sent during the partition arrives after it")
	got, err = during.recv(2 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "queued", got)
	assert.Equal(t, "again", before.roundTrip("again"))
}

func TestFaultProxyDropEndsABlackhole(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	require.Equal(t, "hi", c.roundTrip("hi"))
	p.Blackhole()
	c.send("held")
	p.Drop()
	_, err := c.recv(2 * time.Second)
	require.Error(t, err)
	assert.False(t, isTimeout(err), "%v", err)
}

func TestFaultProxyHealClearsTheDelay(t *testing.T) {
	p := Start(t, echoServer(t))
	c := dial(t, p.Addr())
	p.SetDelay(time.Hour)
	c.send("stuck")
	_, err := c.recv(100 * time.Millisecond)
	require.True(t, isTimeout(err), "%v", err)
	p.Heal()
	got, err := c.recv(2 * time.Second)
	require.NoError(t, err)
	assert.Equal(t, "stuck", got, "a waiting chunk goes as soon as the delay is gone")
}

func TestFaultProxyTargetDownBreaksTheClientConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	target := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := Start(t, target)
	err = firstReadError(p.Addr())
	require.Error(t, err)
	assert.False(t, isTimeout(err), "the client learns at once that the target is down: %v", err)
}

func TestFaultProxyCloseEndsEverything(t *testing.T) {
	target := echoServer(t)
	ignore := goleak.IgnoreCurrent() // the echo server's listener
	p := Start(t, target)
	healthy := dial(t, p.Addr())
	require.Equal(t, "hi", healthy.roundTrip("hi"))
	p.Blackhole()
	held := dial(t, p.Addr())
	held.send("never")
	p.SetDelay(time.Hour)

	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close hung on a blackholed or delayed connection")
	}
	for _, c := range []*client{healthy, held} {
		_, err := c.recv(2 * time.Second)
		assert.Error(t, err)
		assert.False(t, isTimeout(err), "%v", err)
	}
	_, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	assert.Error(t, err, "a closed proxy no longer listens")
	p.Close() // again: harmless
	goleak.VerifyNone(t, ignore)
}
