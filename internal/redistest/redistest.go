// Package redistest starts throwaway redis-server processes for tests, each on
// a free loopback port with its own directory, stopped when the test ends. No
// test in this repository talks to a Redis it did not start through here, and
// the load tool starts its Redis through Run.
//
// It is not for a Redis anyone depends on: servers keep no data unless asked
// to, and die with the process that started them.
//
// Servers can also be started the way a deployment starts them (through a
// launcher script, with its redis.conf and ACL), over TLS with a throwaway
// certificate authority, as a Cluster (cluster.go) or watched by a Sentinel
// (sentinel.go).
package redistest

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Server is one redis-server started for a test.
type Server struct {
	Addr string // host:port on 127.0.0.1 (the TLS port when TLS is on)
	// TLS holds the certificates of a server started with Options.TLS; nil
	// otherwise.
	TLS *TLSFiles

	tb   testing.TB
	dir  string
	port int
	opts Options
	args []string
	cmd  *exec.Cmd

	mu     sync.Mutex
	paused bool
}

// Options say how StartWith runs a server. The zero value is what Start does.
type Options struct {
	// Args are added to the command line after the helper's own, so they win.
	Args []string
	// Launcher, when set, is run instead of redis-server: a program that
	// ends by exec'ing redis-server with the arguments it was given (a
	// deployment's start script). Env is added to its environment.
	Launcher string
	Env      []string
	// Deployed keeps the persistence and memory settings of the launcher's
	// own redis.conf: the helper then passes only the port, the bind address
	// and the data directory, not its usual "--save '' --appendonly no".
	Deployed bool
	// TLS serves TLS only (no plaintext port), with certificates from a CA
	// made for this server (Server.TLS); clients must present a certificate
	// signed by it.
	TLS bool
	// Certs are the certificates a TLS server presents and trusts (default:
	// a CA and certificates made for this server). Servers that must trust
	// each other, such as the nodes of a Cluster, share one set.
	Certs *TLSFiles
	// User and Password are what the helper itself logs in with (to wait for
	// the server, for Do, to set up a Cluster) when the server's default user
	// cannot run those commands. Empty: the default user, unauthenticated.
	User, Password string
	// Port is the port to listen on; 0 picks a free one.
	Port int
}

// Start runs redis-server on a free port and stops it in tb.Cleanup. extra
// are added to the command line (e.g. "--appendonly", "yes"). It fails the
// test if redis-server is not installed: CI installs it, so a missing binary
// is a broken machine, not a reason to skip.
func Start(tb testing.TB, extra ...string) *Server {
	tb.Helper()
	return StartWith(tb, Options{Args: extra})
}

// StartWith runs a server as opts say, on a free port, and stops it in
// tb.Cleanup.
func StartWith(tb testing.TB, opts Options) *Server {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		s, err := tryStart(tb, opts)
		if err == nil {
			return s
		}
		if opts.Port != 0 || !portTaken(err) || attempt == portAttempts {
			tb.Fatal(err)
		}
	}
}

// portAttempts bounds how often a server is started again on other ports
// because one it was given was taken meanwhile.
const portAttempts = 3

// portTaken reports whether a server failed to start because a port it was
// to listen on was taken between FreePort and its bind (another test's
// process got it first).
func portTaken(err error) bool {
	return err != nil && strings.Contains(err.Error(), "Address already in use")
}

// tryStart runs a server as opts say (on a free port unless opts.Port) and
// stops it in tb.Cleanup, or returns why it did not start.
func tryStart(tb testing.TB, opts Options) (*Server, error) {
	tb.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		tb.Fatalf("redis-server not found on PATH (install the redis-server package): %v", err)
	}
	s := &Server{tb: tb, dir: tb.TempDir(), port: opts.Port, opts: opts}
	if s.port == 0 {
		s.port = FreePort(tb)
	}
	if opts.TLS {
		s.TLS = opts.Certs
		if s.TLS == nil {
			s.TLS = NewTLSFiles(tb, s.dir)
		}
	}
	s.commandLine()
	tb.Cleanup(s.Stop)
	if err := s.launch(); err != nil {
		// Killed without waiting for its port to close: the port may be
		// another process's, which is why it failed.
		s.mu.Lock()
		if s.cmd != nil && s.cmd.Process != nil {
			_ = s.cmd.Process.Kill()
		}
		s.cmd = nil
		s.mu.Unlock()
		return nil, err
	}
	return s, nil
}

// commandLine sets the server's address and arguments from its port,
// directory, options and certificates.
func (s *Server) commandLine() {
	opts := s.opts
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	port := []string{"--port", strconv.Itoa(s.port)}
	if opts.TLS {
		port = []string{
			"--port", "0",
			"--tls-port", strconv.Itoa(s.port),
			"--tls-cert-file", s.TLS.ServerCert,
			"--tls-key-file", s.TLS.ServerKey,
			"--tls-ca-cert-file", s.TLS.CA,
			"--tls-auth-clients", "yes",
		}
	}
	s.args = append(port, "--bind", "127.0.0.1", "--dir", s.dir)
	if !opts.Deployed {
		s.args = append(s.args, "--save", "", "--appendonly", "no", "--protected-mode", "no")
	}
	s.args = append(s.args, opts.Args...)
}

// start launches the server and fails the test if it does not come up.
func (s *Server) start() {
	s.tb.Helper()
	if err := s.launch(); err != nil {
		s.tb.Fatal(err)
	}
}

// launch runs the server process and waits until it answers PING.
func (s *Server) launch() error {
	logf, err := os.Create(s.logPath())
	if err != nil {
		return fmt.Errorf("create redis log: %w", err)
	}
	bin := s.opts.Launcher
	if bin == "" {
		bin, _ = exec.LookPath("redis-server")
	}
	cmd := exec.Command(bin, s.args...)
	cmd.Env = append(os.Environ(), s.opts.Env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Kept across the launcher's exec: the server dies with the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", bin, err)
	}
	s.mu.Lock()
	s.cmd = cmd
	s.mu.Unlock()
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	if err := s.waitPing(10*time.Second, exited); err != nil {
		log, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("redis-server on %s did not answer PING: %w\n%s", s.Addr, err, log)
	}
	// What answered may be another test's redis-server, on a port taken
	// between FreePort and this one's bind (which then fails): ask it
	// who it is, where the login may run INFO.
	if info, err := s.Info("server"); err == nil && info["process_id"] != strconv.Itoa(cmd.Process.Pid) {
		_ = cmd.Process.Kill() // it fails to bind, if it has not already
		<-exited
		log, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("redis-server on %s: another process (pid %s) answers there: Address already in use\n%s", s.Addr, info["process_id"], log)
	}
	return nil
}

func (s *Server) logPath() string {
	return filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", time.Now().UnixNano()))
}

// Stop kills the server (SIGKILL, like a crash) and waits until its port
// refuses connections. Calling it twice is harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd := s.cmd
	s.cmd, s.paused = nil, false
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGCONT) // a paused server must be able to die
	_ = cmd.Process.Kill()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.DialTimeout("tcp", s.Addr, 50*time.Millisecond); err != nil {
			break
		} else {
			c.Close()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Restart starts the server again on the same port and directory (with AOF
// enabled, the data survives).
func (s *Server) Restart() {
	s.tb.Helper()
	s.Stop()
	s.start()
}

// Pause stops the server process (SIGSTOP): connections stay open, nothing answers.
func (s *Server) Pause() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.paused = true
		_ = s.cmd.Process.Signal(syscall.SIGSTOP)
	}
}

// Resume continues a paused server.
func (s *Server) Resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		s.paused = false
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Up reports whether the server runs and is not paused: whether the helper
// may expect an answer from it.
func (s *Server) Up() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cmd != nil && !s.paused
}

// URL returns a redis:// URL for database db (rediss:// with TLS).
func (s *Server) URL(db int) string {
	if s.TLS != nil {
		return fmt.Sprintf("rediss://%s/%d", s.Addr, db)
	}
	return fmt.Sprintf("redis://%s/%d", s.Addr, db)
}

// Dir is the server's data directory.
func (s *Server) Dir() string { return s.dir }

// Do sends one command (after logging in as Options.User, if set) and
// returns the first line of its reply; enough for test set-up without a
// client library.
func (s *Server) Do(args ...string) (string, error) {
	return s.do(true, args...)
}

// dial opens a connection to the server, over TLS when it serves TLS.
func (s *Server) dial() (net.Conn, error) {
	d := &net.Dialer{Timeout: time.Second}
	if s.TLS != nil {
		return tls.DialWithDialer(d, "tcp", s.Addr, s.TLS.ClientConfig())
	}
	return d.Dial("tcp", s.Addr)
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(tb testing.TB) int {
	tb.Helper()
	port, err := pickPort()
	if err != nil {
		tb.Fatalf("find a free port: %v", err)
	}
	return port
}

// pickPort is how FreePort finds a port (a test hands out a taken one).
var pickPort = freePort

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitPing waits until the server answers PING, or its process exits. A
// server whose default user may not run PING, answering NOAUTH or NOPERM,
// is up too; but when the helper has a login it pings logged in, so that a
// server still loading its data (LOADING) is not taken for ready.
func (s *Server) waitPing(timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	var reply string
	var err error
	for time.Now().Before(deadline) {
		reply, err = s.do(s.opts.Password != "", "PING")
		if err == nil && (reply == "+PONG" || strings.HasPrefix(reply, "-NOAUTH") || strings.HasPrefix(reply, "-NOPERM")) {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("the process exited (last reply %q, %v)", reply, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err == nil {
		err = fmt.Errorf("last reply %q", reply)
	}
	return err
}

// do sends args on a fresh connection, first logging in as Options.User when
// login is set, and returns the first line of the reply.
func (s *Server) do(login bool, args ...string) (string, error) {
	c, r, err := s.session(login)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return roundTrip(c, r, args...)
}

// session opens a connection with a 5 s deadline, logged in as Options.User
// when login is set and the helper has a password.
func (s *Server) session(login bool) (net.Conn, *bufio.Reader, error) {
	c, err := s.dial()
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	if login && s.opts.Password != "" {
		line, err := roundTrip(c, r, "AUTH", orDefault(s.opts.User, "default"), s.opts.Password)
		if err == nil && line != "+OK" {
			err = fmt.Errorf("AUTH as %q: %s", s.opts.User, line)
		}
		if err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	return c, r, nil
}

func roundTrip(c net.Conn, r *bufio.Reader, args ...string) (string, error) {
	if err := send(c, args...); err != nil {
		return "", err
	}
	line, err := r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// send writes one command in RESP.
func send(c net.Conn, args ...string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	_, err := c.Write([]byte(b.String()))
	return err
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
