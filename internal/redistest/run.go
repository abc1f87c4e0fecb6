package redistest

import (
	"fmt"
	"os"
	"os/exec"
)

// Run starts a plain redis-server as Start does (no persistence, on a free
// loopback port), for a program that is not a test, such as the load tool:
// its data directory is dir (created if missing), and the caller stops it
// with Stop. extra are added to the command line. A server from Run is not
// restarted (Restart is for tests).
func Run(dir string, extra ...string) (*Server, error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return nil, fmt.Errorf("redis-server not found on PATH (install the redis-server package): %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	s := &Server{dir: dir, port: port, opts: Options{Args: extra}}
	s.commandLine()
	if err := s.launch(); err != nil {
		return nil, err
	}
	return s, nil
}

// PID is the server process's id, for measuring its CPU and memory (0 once
// it is stopped).
func (s *Server) PID() int {
	if s.cmd == nil || s.cmd.Process == nil {
		return 0
	}
	return s.cmd.Process.Pid
}
