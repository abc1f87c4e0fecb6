// Package redistest starts throwaway redis-server processes for tests, each on
// a free loopback port with its own directory, stopped when the test ends. No
// test in this repository talks to a Redis it did not start through here.
package redistest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server started for a test.
type Server struct {
	Addr string // host:port on 127.0.0.1

	tb   testing.TB
	dir  string
	port int
	args []string
	cmd  *exec.Cmd
}

// Start runs redis-server on a free port and stops it in tb.Cleanup. extra
// are added to the command line (e.g. "--appendonly", "yes"). It fails the
// test if redis-server is not installed: CI installs it, so a missing binary
// is a broken machine, not a reason to skip.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH (install the redis-server package): %v", err)
	}
	s := &Server{tb: tb, dir: tb.TempDir(), port: FreePort(tb)}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	s.args = append([]string{
		"--port", strconv.Itoa(s.port),
		"--bind", "127.0.0.1",
		"--dir", s.dir,
		"--save", "",
		"--appendonly", "no",
		"--protected-mode", "no",
	}, extra...)
	s.start(bin)
	tb.Cleanup(s.Stop)
	return s
}

func (s *Server) start(bin string) {
	s.tb.Helper()
	logf, err := os.Create(filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", time.Now().UnixNano())))
	if err != nil {
		s.tb.Fatalf("create redis log: %v", err)
	}
	cmd := exec.Command(bin, s.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.tb.Fatalf("start redis-server: %v", err)
	}
	s.cmd = cmd
	go func() { _ = cmd.Wait(); logf.Close() }()
	if err := waitPing(s.Addr, 10*time.Second); err != nil {
		s.tb.Fatalf("redis-server on %s did not answer PING: %v", s.Addr, err)
	}
}

// Stop kills the server (SIGKILL, like a crash). Calling it twice is harmless.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused server must be able to die
	_ = s.cmd.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.Addr, 50*time.Millisecond); err != nil {
			break
		} else {
			c.Close()
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.cmd = nil
}

// Restart starts the server again on the same port and directory (with AOF
// enabled, the data survives).
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	bin, _ := exec.LookPath("redis-server")
	s.start(bin)
}

// Pause stops the server process (SIGSTOP): connections stay open, nothing answers.
func (s *Server) Pause() { _ = s.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume continues a paused server.
func (s *Server) Resume() { _ = s.cmd.Process.Signal(syscall.SIGCONT) }

// URL returns a redis:// URL for database db.
func (s *Server) URL(db int) string { return fmt.Sprintf("redis://%s/%d", s.Addr, db) }

// Do sends one command with the inline protocol and returns the first reply
// line; enough for test set-up without a client library.
func (s *Server) Do(args ...string) (string, error) { return do(s.Addr, args...) }

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitPing waits until the server answers PING (a server with a password
// answering NOAUTH is up too).
func waitPing(addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var reply string
	var err error
	for time.Now().Before(deadline) {
		reply, err = do(addr, "PING")
		if err == nil && (reply == "+PONG" || strings.HasPrefix(reply, "-NOAUTH")) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err == nil {
		err = fmt.Errorf("last reply %q", reply)
	}
	return err
}

func do(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}
