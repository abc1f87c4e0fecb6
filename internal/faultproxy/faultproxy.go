// Package faultproxy is a TCP proxy for tests that puts network faults
// between a client and a server on demand: latency, dropped connections and
// a partition (a blackhole). Tests put it between extauthz and redis-server
// to see what the service does when the network to Redis goes bad, which
// killing or pausing redis-server alone cannot show.
//
// It is not a general-purpose proxy: it listens on loopback only, has no
// configuration but its knobs, and lives as long as the test that started it.
package faultproxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// chunkSize is the most one read takes from a connection; queueLen is how
// many read chunks a direction holds while they wait out a delay or a
// blackhole, after which reading stops and TCP's own window pushes back.
const (
	chunkSize   = 32 << 10
	queueLen    = 64
	dialTimeout = time.Second
)

// state is the fault in force besides the delay.
type state int

const (
	healthy    state = iota
	dropped          // connections are closed, new ones reset
	blackholed       // connections are accepted and read, nothing is forwarded
)

// Proxy forwards TCP connections from Addr to a target, with faults that
// tests switch at run time. Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	state   state
	delay   time.Duration
	closed  bool
	changed chan struct{} // closed and replaced at every change of state or delay
	links   map[*link]struct{}
	wg      sync.WaitGroup // the accept loop and every link's goroutines
}

// Start listens on a free loopback port and forwards every connection to
// target (host:port). The proxy is closed in tb.Cleanup, which waits for
// every goroutine it started.
func Start(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("faultproxy: listen on a loopback port: %v", err)
	}
	p := &Proxy{target: target, ln: ln, changed: make(chan struct{}), links: map[*link]struct{}{}}
	p.wg.Go(p.accept)
	tb.Cleanup(p.Close)
	return p
}

// Addr is the host:port clients connect to instead of the target.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetDelay adds d of latency to every chunk of data in each direction (so a
// request and its reply take 2d more), without limiting throughput: chunks
// read while others wait are delayed from when they arrived, not one after
// the other. Zero removes the delay; chunks already waiting are then sent.
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = max(d, 0)
	p.notifyLocked()
}

// Drop closes every current connection, both to the client and to the
// target, and resets every new one as soon as it is accepted (the client
// sees its connection reset, as if the port refused it) until Heal.
func (p *Proxy) Drop() {
	p.mu.Lock()
	p.state = dropped
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.notifyLocked()
	p.mu.Unlock()
	for _, l := range links {
		l.close()
	}
}

// Blackhole makes the proxy a network partition until Heal: current and new
// connections stay open, and what either side sends is read but neither
// forwarded nor answered, so a client sees neither an error nor a reply,
// only its own timeouts. Like TCP after a partition heals, the data held
// meanwhile is delivered at Heal, unless its connection was closed.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state = blackholed
	p.notifyLocked()
}

// Heal ends every fault: no delay, connections forwarded again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.state, p.delay = healthy, 0
	p.notifyLocked()
}

// Conns reports how many client connections are open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops listening, closes every connection and waits for the proxy's
// goroutines to end. Calling it again does nothing.
func (p *Proxy) Close() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	links := make([]*link, 0, len(p.links))
	for l := range p.links {
		links = append(links, l)
	}
	p.notifyLocked()
	p.mu.Unlock()
	p.ln.Close()
	for _, l := range links {
		l.close()
	}
	p.wg.Wait()
}

func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// now returns the state and delay in force, and a channel closed at their
// next change.
func (p *Proxy) now() (state, time.Duration, bool, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state, p.delay, p.closed, p.changed
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// A transient accept error (EMFILE, a connection reset in the
			// backlog): the next Accept may work.
			time.Sleep(5 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		if p.closed || p.state == dropped {
			p.mu.Unlock()
			reset(c)
			continue
		}
		l := newLink(c)
		p.links[l] = struct{}{}
		p.wg.Go(func() { p.serve(l) })
		p.mu.Unlock()
	}
}

// reset closes c with an RST rather than a FIN, as a refused or broken
// connection looks to its client.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	c.Close()
}

// serve connects l's client to the target once no blackhole stands in the
// way, then forwards both directions until either side closes.
func (p *Proxy) serve(l *link) {
	defer func() {
		l.close()
		p.mu.Lock()
		delete(p.links, l)
		p.mu.Unlock()
	}()
	// A connection accepted during a partition reaches the target only
	// after it heals.
	for {
		st, _, closed, changed := p.now()
		if closed || st == dropped {
			return
		}
		if st != blackholed {
			break
		}
		select {
		case <-changed:
		case <-l.done:
			return
		}
	}
	ctx, cancel := context.WithTimeout(l.ctx, dialTimeout)
	server, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.target)
	cancel()
	if err != nil {
		// The target is down: the client's connection breaks as a direct
		// one to the target would have been refused.
		reset(l.client)
		return
	}
	if !l.setServer(server) {
		return
	}
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(l, l.client, server) })
	wg.Go(func() { p.pipe(l, server, l.client) })
	wg.Wait()
}

// chunk is data read from one side, waiting to be written to the other.
type chunk struct {
	data []byte
	read time.Time
}

// pipe forwards src to dst: one goroutine reads and timestamps chunks, this
// one writes each when its delay has passed and no blackhole holds it. When
// src ends, what was read is still delivered before the link closes.
func (p *Proxy) pipe(l *link, src, dst net.Conn) {
	queue := make(chan chunk, queueLen)
	var reader sync.WaitGroup
	reader.Go(func() {
		defer close(queue)
		for {
			buf := make([]byte, chunkSize)
			n, err := src.Read(buf)
			if n > 0 {
				select {
				case queue <- chunk{buf[:n], time.Now()}:
				case <-l.done:
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	defer reader.Wait()
	defer l.close() // before the wait: closing src is what ends the reader's Read
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for c := range queue {
		for {
			st, delay, closed, changed := p.now()
			if closed || st == dropped {
				return
			}
			wait := time.Until(c.read.Add(delay))
			if st != blackholed && wait <= 0 {
				break
			}
			if st == blackholed {
				wait = time.Hour // until Heal (or a delay change) wakes us
			}
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-changed:
				timer.Stop()
			case <-l.done:
				return
			}
		}
		if _, err := dst.Write(c.data); err != nil {
			return
		}
	}
}

// link is one client connection and its connection to the target.
type link struct {
	client net.Conn
	ctx    context.Context // done when the link closes
	cancel context.CancelFunc
	done   <-chan struct{} // ctx.Done()

	mu     sync.Mutex
	server net.Conn
	closed bool
}

func newLink(client net.Conn) *link {
	ctx, cancel := context.WithCancel(context.Background())
	return &link{client: client, ctx: ctx, cancel: cancel, done: ctx.Done()}
}

// setServer attaches the target's connection, or closes it and reports
// false when the link closed meanwhile.
func (l *link) setServer(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		c.Close()
		return false
	}
	l.server = c
	return true
}

func (l *link) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	l.cancel()
	l.client.Close()
	if l.server != nil {
		l.server.Close()
	}
}
