package redistest

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
)

// Rewriter is a RESP proxy for tests: it forwards each command of a client
// to a Redis and the command's reply back, and lets the test put another
// reply in its place. It plays what a buggy or compromised Redis, a proxy in
// between, or a man in the middle of a plaintext link could answer, in
// front of a real Redis that answers everything else.
//
// Commands go one at a time per connection: a pipeline is forwarded command
// by command, in order. Unsolicited pushes (RESP3 client tracking, pub/sub)
// are not supported.
type Rewriter struct {
	target string
	ln     net.Listener

	mu      sync.Mutex
	rewrite func(cmd []string, reply []byte) []byte
	closed  bool
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// StartRewriter listens on a free loopback port and forwards every
// connection to target (host:port), until tb's cleanup.
func StartRewriter(tb testing.TB, target string) *Rewriter {
	tb.Helper()
	return StartRewriterTLS(tb, target, nil)
}

// StartRewriterTLS is StartRewriter with clients talking TLS to it (cfg,
// as a server; nil: plaintext) while it talks plaintext to target: the man
// in the middle a client cannot tell from Redis, for a test of what a
// client does with a reply inside TLS.
func StartRewriterTLS(tb testing.TB, target string, cfg *tls.Config) *Rewriter {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("redistest: rewriter: listen on a loopback port: %v", err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	p := &Rewriter{target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	tb.Cleanup(p.Close)
	return p
}

// Addr is the host:port clients connect to instead of the target.
func (p *Rewriter) Addr() string { return p.ln.Addr().String() }

// Set makes f decide every reply from now on: it gets the command (its
// arguments, the name first as the client spelled it) and the reply Redis
// gave, raw, and returns the raw bytes the client gets instead (the same
// slice: unchanged). nil forwards every reply as it is.
func (p *Rewriter) Set(f func(cmd []string, reply []byte) []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rewrite = f
}

// Close stops listening, closes every connection and waits for them.
func (p *Rewriter) Close() {
	p.mu.Lock()
	p.closed = true
	_ = p.ln.Close()
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// track adds c to the connections Close closes, or closes it when Close has
// begun.
func (p *Rewriter) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Rewriter) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
	_ = c.Close()
}

func (p *Rewriter) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			return
		}
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Rewriter) serve(client net.Conn) {
	defer p.untrack(client)
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	cr, sr := bufio.NewReader(client), bufio.NewReader(server)
	for {
		raw, cmd, err := readCommand(cr)
		if err != nil {
			return
		}
		if _, err := server.Write(raw); err != nil {
			return
		}
		reply, err := readRaw(sr, nil, 0)
		if err != nil {
			return
		}
		p.mu.Lock()
		f := p.rewrite
		p.mu.Unlock()
		if f != nil {
			reply = f(cmd, reply)
		}
		if _, err := client.Write(reply); err != nil {
			return
		}
	}
}

// readCommand reads one command of a client (an array of bulk strings),
// raw and as its arguments.
func readCommand(r *bufio.Reader) ([]byte, []string, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, nil, err
	}
	if len(line) < 4 || line[0] != '*' {
		return nil, nil, fmt.Errorf("redistest: rewriter: a command that is not an array: %q", line)
	}
	raw := append([]byte(nil), line...)
	n, err := strconv.Atoi(string(line[1 : len(line)-2]))
	if err != nil || n < 0 {
		return nil, nil, fmt.Errorf("redistest: rewriter: bad command length %q", line)
	}
	cmd := make([]string, 0, n)
	for range n {
		start := len(raw)
		if raw, err = readRaw(r, raw, maxReplyDepth); err != nil {
			return nil, nil, err
		}
		arg := raw[start:]
		if arg[0] != '$' {
			return nil, nil, fmt.Errorf("redistest: rewriter: an argument that is not a bulk string: %q", arg)
		}
		_, body, _ := cutLine(arg)
		cmd = append(cmd, string(body[:len(body)-2]))
	}
	return raw, cmd, nil
}

// cutLine splits b after its first CRLF.
func cutLine(b []byte) (line, rest []byte, ok bool) {
	for i := 0; i+1 < len(b); i++ {
		if b[i] == '\r' && b[i+1] == '\n' {
			return b[:i], b[i+2:], true
		}
	}
	return b, nil, false
}

// readRaw appends one RESP2 or RESP3 value, as read, to buf.
func readRaw(r *bufio.Reader, buf []byte, depth int) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if err != nil {
		return buf, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return buf, fmt.Errorf("redistest: rewriter: bad line %q", line)
	}
	buf = append(buf, line...)
	body := string(line[1 : len(line)-2])
	switch line[0] {
	case '+', '-', ':', '_', ',', '#', '(':
		return buf, nil
	case '$', '=', '!':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return buf, fmt.Errorf("redistest: rewriter: bad length %q", line)
		}
		if n == -1 {
			return buf, nil
		}
		start := len(buf)
		buf = append(buf, make([]byte, n+2)...)
		_, err = io.ReadFull(r, buf[start:])
		return buf, err
	case '*', '~', '>', '%', '|':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return buf, fmt.Errorf("redistest: rewriter: bad length %q", line)
		}
		if depth > 2*maxReplyDepth {
			return buf, errors.New("redistest: rewriter: reply nested too deep")
		}
		if line[0] == '%' || line[0] == '|' {
			n *= 2
		}
		for range max(n, 0) {
			if buf, err = readRaw(r, buf, depth+1); err != nil {
				return buf, err
			}
		}
		if line[0] == '|' { // an attribute comes before the value it describes
			return readRaw(r, buf, depth+1)
		}
		return buf, nil
	}
	return buf, fmt.Errorf("redistest: rewriter: unexpected reply %q", line)
}
