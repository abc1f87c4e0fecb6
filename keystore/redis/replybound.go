package redis

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"syscall"
)

// What one reply from Redis may declare. go-redis allocates what a reply's
// header declares before it reads what follows: "*2147483647\r\n" is a
// 32 GiB slice, "$2147483647\r\n" a 2 GiB string, and it reads nested
// aggregates by recursion, so a reply of "*1\r\n" a few million times over
// (four bytes a level) can take a goroutine's stack past Go's 1 GB limit.
// Each of those ends the process, which no recover catches, from bytes sent
// by whoever answers for Redis: a broken proxy, a man in the middle of a
// plaintext link, or a compromised server. Every connection is read
// through a scanner that adds up what each reply declares, and fails the
// read (the call gets an error, go-redis drops the connection) before
// go-redis sees a header past these bounds. Nothing extauthz reads comes near them: its
// largest reply, a page of 1,000 keys each as large as a key may be, is
// 17 MiB of strings (TestAPageOfTheLargestKeysFitsTheBounds).
const (
	// maxReplyElements bounds the elements of every array, set, map (two
	// per entry) and push of one reply together: a slice of 4 MiB.
	maxReplyElements = 1 << 18
	// maxReplyString bounds one string: what a header alone can make
	// go-redis set aside before any of the string has come. A key record
	// as large as a key may be is about 18 KB.
	maxReplyString = 4 << 20
	// maxReplyBytes bounds the strings of one reply together, which the
	// peer must have sent (each string's header comes after the one
	// before's body).
	maxReplyBytes = 64 << 20
	// maxReplyDepth bounds how deep a reply's aggregates nest.
	maxReplyDepth = 32
	// maxReplyLine bounds a simple string, error, number or header line,
	// which go-redis reads whole whatever its length.
	maxReplyLine = 64 << 10
)

// boundReplies wraps dial so that every connection it makes is read
// through a replyScanner.
func boundReplies(dial func(ctx context.Context, network, addr string) (net.Conn, error)) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		b := &boundedConn{Conn: c}
		if sc, ok := c.(syscall.Conn); ok {
			// go-redis checks a pooled connection before reusing it by
			// peeking at its socket, which it can only do through
			// syscall.Conn: without it, a connection a Redis restart
			// closed would fail a check's call before the pool dropped it.
			// A peek reads nothing, so nothing goes past the scanner.
			return &boundedSyscallConn{boundedConn: b, sc: sc}, nil
		}
		return b, nil
	}
}

// boundedConn is a connection to Redis whose replies are scanned as they
// are read. After a reply past the bounds every read fails.
type boundedConn struct {
	net.Conn
	scan replyScanner
}

func (c *boundedConn) Read(p []byte) (int, error) {
	if c.scan.err != nil {
		return 0, c.scan.err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if e := c.scan.feed(p[:n]); e != nil {
			return 0, e
		}
	}
	return n, err
}

type boundedSyscallConn struct {
	*boundedConn
	sc syscall.Conn
}

func (c *boundedSyscallConn) SyscallConn() (syscall.RawConn, error) { return c.sc.SyscallConn() }

// replyScanner follows a stream of RESP2 and RESP3 replies as it arrives,
// in pieces of any size, and fails at the first header that would take a
// reply past the bounds above, or that go-redis could not read either. It
// does not check what it need not: a line's content is go-redis's to
// parse. A string's body is skipped as go-redis skips it, by its declared
// length plus two, so the two stay in step.
type replyScanner struct {
	state uint8
	kind  byte // the type byte of the header or line being read
	neg   bool // the header's number began with '-'
	n     int64
	digit bool  // the header has a digit
	line  int   // bytes of the current line so far
	body  int64 // bytes of a string's body still to come, CRLF included

	frames [maxReplyDepth]frame
	depth  int
	// What the reply being read has declared so far.
	elements, bytes int64

	err error
}

// frame is an aggregate being read: the values still to come of it.
type frame struct {
	left int64
	attr bool // an attribute: it annotates the value after it and is none itself
}

const (
	atType   = iota // the next byte is a value's type
	inLine          // in a simple value's line, up to its '\n'
	inHeader        // in a length header's number
	atLF            // the header's '\r' was read, its '\n' is next
	inBody          // in a string's body
)

func (s *replyScanner) fail(format string, args ...any) error {
	s.err = fmt.Errorf("redis: reply refused, the connection is dropped: "+format, args...)
	return s.err
}

// feed scans the next bytes read.
func (s *replyScanner) feed(p []byte) error {
	for len(p) > 0 {
		switch s.state {
		case atType:
			s.kind = p[0]
			p = p[1:]
			s.line = 1
			switch s.kind {
			case '+', '-', ':', '_', ',', '#', '(':
				s.state = inLine
			case '$', '!', '=', '*', '~', '>', '%', '|':
				s.state, s.n, s.neg, s.digit = inHeader, 0, false, false
			default:
				return s.fail("a value of unknown type %q", s.kind)
			}
		case inLine:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				s.line += len(p)
				if s.line > maxReplyLine {
					return s.fail("a line longer than %d bytes", maxReplyLine)
				}
				return nil
			}
			if s.line += i + 1; s.line > maxReplyLine {
				return s.fail("a line longer than %d bytes", maxReplyLine)
			}
			p = p[i+1:]
			s.state = atType
			s.value()
		case inHeader:
			c := p[0]
			p = p[1:]
			switch {
			case c >= '0' && c <= '9':
				s.digit = true
				// Every bound is at most maxReplyBytes: a number past it is
				// refused at once, long before it could overflow.
				if s.n = s.n*10 + int64(c-'0'); s.n > maxReplyBytes {
					return s.fail("a %q header declaring more than %d", s.kind, maxReplyBytes)
				}
			case c == '-' && !s.digit && !s.neg:
				s.neg = true
			case c == '\r' && s.digit:
				s.state = atLF
			default:
				return s.fail("a %q header that is no length", s.kind)
			}
		case atLF:
			if p[0] != '\n' {
				return s.fail("a %q header without its line end", s.kind)
			}
			p = p[1:]
			if err := s.header(); err != nil {
				return err
			}
		case inBody:
			if int64(len(p)) < s.body {
				s.body -= int64(len(p))
				return nil
			}
			p = p[s.body:]
			s.state = atType
			s.value()
		}
	}
	return nil
}

// header takes a length header just read.
func (s *replyScanner) header() error {
	s.state = atType
	if s.neg {
		// -1 is RESP2's nil string or array (RESP3 has "_"); Redis writes
		// no other negative length.
		if s.n != 1 || (s.kind != '$' && s.kind != '*') {
			return s.fail("a %q header of length -%d", s.kind, s.n)
		}
		s.value()
		return nil
	}
	switch s.kind {
	case '$', '!', '=':
		if s.n > maxReplyString {
			return s.fail("a string of %d bytes, more than the %d one may hold", s.n, maxReplyString)
		}
		if s.bytes += s.n; s.bytes > maxReplyBytes {
			return s.fail("strings of more than %d bytes in one reply", maxReplyBytes)
		}
		s.state, s.body = inBody, s.n+2
		return nil
	}
	count := s.n
	if s.kind == '%' || s.kind == '|' {
		count *= 2 // a key and a value each
	}
	if s.elements += count; s.elements > maxReplyElements {
		return s.fail("more than %d elements in one reply", maxReplyElements)
	}
	attr := s.kind == '|'
	if count == 0 {
		if !attr {
			s.value()
		}
		return nil
	}
	if s.depth == maxReplyDepth {
		return s.fail("aggregates nested more than %d deep", maxReplyDepth)
	}
	s.frames[s.depth] = frame{left: count, attr: attr}
	s.depth++
	return nil
}

// value counts a value just completed in the aggregates it belongs to, and
// when it completes the reply, starts the next reply's count afresh.
func (s *replyScanner) value() {
	for s.depth > 0 {
		f := &s.frames[s.depth-1]
		if f.left--; f.left > 0 {
			return
		}
		s.depth--
		if f.attr {
			return // the value the attribute annotates is still to come
		}
	}
	s.elements, s.bytes = 0, 0
}
