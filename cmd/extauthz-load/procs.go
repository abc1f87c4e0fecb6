package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// child is a process the load tool started: a server under test or the
// no-op server (Redis is started through internal/redistest). It is stopped
// by its own pid, and dies with the load tool (Pdeathsig) if the tool is
// killed first.
type child struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  string // file with its standard error (and output)
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// startChild starts bin with args, its output going to dir/<name>.log. If
// ready is non-nil, it reads the standard error line by line until ready
// returns true (the server says it listens), an error, or the timeout.
func startChild(name, dir string, env []string, ready func(line string) (bool, error), bin string, args ...string) (*child, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// The standard error of a server that must say it is ready goes through
	// a pipe that this process reads (and copies to the log); an *os.File
	// is handed to the child as is, with no copying goroutine in exec.
	var pr, pw *os.File
	copied := make(chan struct{})
	if ready != nil {
		if pr, pw, err = os.Pipe(); err != nil {
			logf.Close()
			return nil, err
		}
		cmd.Stderr = pw
	} else {
		cmd.Stderr = logf
		close(copied)
	}
	err = cmd.Start()
	if pw != nil {
		pw.Close() // the child has its own copy: EOF comes when it exits
	}
	if err != nil {
		logf.Close()
		if pr != nil {
			pr.Close()
		}
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	go func() { _ = cmd.Wait(); <-copied; logf.Close(); close(c.done) }()
	if ready == nil {
		return c, nil
	}
	found := make(chan error, 1)
	go func() {
		defer close(copied)
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if !signalled {
				ok, err := ready(line)
				if err != nil || ok {
					found <- err
					signalled = true
				}
			}
		}
		if !signalled {
			found <- fmt.Errorf("%s exited before it was ready", name)
		}
	}()
	select {
	case err = <-found:
	case <-time.After(30 * time.Second):
		err = fmt.Errorf("%s not ready after 30s", name)
	}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("%w\n%s", err, tail(logPath, 20))
	}
	return c, nil
}

// stop asks the process to end (SIGTERM), and kills it after 10 s.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startExtauthz runs `extauthz serve --config cfg` and returns its gRPC and
// HTTP addresses, read from its "extauthz serving" log line (the config
// listens on port 0, so there is no race for a port).
func startExtauthz(bin, dir, cfg string, env []string) (c *child, grpcAddr, httpAddr string, err error) {
	c, err = startChild("extauthz", dir, env, func(line string) (bool, error) {
		var rec struct {
			Msg  string `json:"msg"`
			GRPC string `json:"grpc"`
			HTTP string `json:"http"`
		}
		if json.Unmarshal([]byte(line), &rec) != nil || rec.Msg != "extauthz serving" {
			return false, nil
		}
		if rec.GRPC == "" || rec.GRPC == "off" {
			return false, errors.New("extauthz serves no gRPC listener")
		}
		grpcAddr, httpAddr = rec.GRPC, rec.HTTP
		return true, nil
	}, bin, "serve", "--config", cfg)
	return c, grpcAddr, httpAddr, err
}

// startNoop runs this program's own no-op server as a separate process.
func startNoop(dir string, env []string, streamWorkers int) (*child, string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, "", err
	}
	// The address is printed on standard output; read it from the log file.
	c, err := startChild("noop", dir, env, nil, self, "noop-server", "--listen", "127.0.0.1:0", "--stream-workers", strconv.Itoa(streamWorkers))
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(c.log)
		if addr, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "listening "); ok && !strings.Contains(addr, "\n") {
			return c, addr, nil
		}
		select {
		case <-c.done:
			return nil, "", fmt.Errorf("noop server exited:\n%s", tail(c.log, 20))
		case <-time.After(10 * time.Millisecond):
		}
	}
	c.stop()
	return nil, "", errors.New("noop server did not say where it listens")
}
