package redistest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// ReplyError is an error reply of the server ("-ERR ...", "-MOVED ...").
type ReplyError string

func (e ReplyError) Error() string { return string(e) }

// Query sends one command (after logging in as Options.User, if set) and
// returns its whole reply, read as RESP2: a string (simple or bulk), an
// int64, nil, or a []any of those. An error reply is returned as a
// ReplyError (inside an array: as an element).
func (s *Server) Query(args ...string) (any, error) {
	c, r, err := s.session(true)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := send(c, args...); err != nil {
		return nil, err
	}
	v, err := readReply(r)
	if err != nil {
		return nil, err
	}
	if e, ok := v.(ReplyError); ok {
		return nil, e
	}
	return v, nil
}

// QueryString is Query for a reply that is a string (CLUSTER NODES, INFO).
func (s *Server) QueryString(args ...string) (string, error) {
	v, err := s.Query(args...)
	if err != nil {
		return "", err
	}
	str, ok := v.(string)
	if !ok {
		return "", fmt.Errorf("%s: the reply %v is not a string", strings.Join(args[:min(len(args), 2)], " "), v)
	}
	return str, nil
}

// Info returns the fields of INFO section as a map.
func (s *Server) Info(section string) (map[string]string, error) {
	text, err := s.QueryString("INFO", section)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m, nil
}

const maxReplyDepth = 8

// readReply reads one RESP2 value.
func readReply(r *bufio.Reader) (any, error) { return readValue(r, 0) }

func readValue(r *bufio.Reader, depth int) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("redistest: empty reply line")
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return body, nil
	case '-':
		return ReplyError(body), nil
	case ':':
		return strconv.ParseInt(body, 10, 64)
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("redistest: bad bulk length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("redistest: bad array length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		if depth >= maxReplyDepth {
			return nil, errors.New("redistest: reply nested too deep")
		}
		out := make([]any, n)
		for i := range out {
			if out[i], err = readValue(r, depth+1); err != nil {
				return nil, err
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("redistest: unexpected reply %q", line)
}
