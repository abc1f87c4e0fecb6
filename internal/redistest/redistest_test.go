package redistest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartAnswersAndStops(t *testing.T) {
	s := Start(t)
	reply, err := s.Do("SET", "k", "v")
	if err != nil || reply != "+OK" {
		t.Fatalf("SET: %q %v", reply, err)
	}
	s.Stop()
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("the server still answers after Stop")
	}
}

func TestStartWithAPasswordIsReadyAtOnce(t *testing.T) {
	s := Start(t, "--requirepass", "pw")
	reply, err := s.Do("PING")
	if err != nil || !strings.HasPrefix(reply, "-NOAUTH") {
		t.Fatalf("PING without auth: %q %v", reply, err)
	}
}

func TestRestartKeepsTheAppendOnlyFile(t *testing.T) {
	s := Start(t, "--appendonly", "yes", "--appendfsync", "always")
	if _, err := s.Do("SET", "durable", "1"); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	reply, err := s.Do("EXISTS", "durable")
	if err != nil || reply != ":1" {
		t.Fatalf("EXISTS after restart: %q %v", reply, err)
	}
}

func TestStartWithTLSServesTLSOnly(t *testing.T) {
	s := StartWith(t, Options{TLS: true})
	if reply, err := s.Do("PING"); err != nil || reply != "+PONG" {
		t.Fatalf("PING over TLS: %q %v", reply, err)
	}
	if !strings.HasPrefix(s.URL(0), "rediss://") {
		t.Fatalf("URL %q is not rediss://", s.URL(0))
	}
	plain := &Server{Addr: s.Addr}
	if reply, err := plain.Do("PING"); err == nil && reply == "+PONG" {
		t.Fatal("the TLS port answered a plaintext PING")
	}
}

func TestStartWithAUserLogsIn(t *testing.T) {
	s := StartWith(t, Options{Args: []string{"--requirepass", "pw"}, Password: "pw"})
	if reply, err := s.Do("SET", "k", "v"); err != nil || reply != "+OK" {
		t.Fatalf("SET after logging in: %q %v", reply, err)
	}
}

func TestStartWithALauncher(t *testing.T) {
	launcher := filepath.Join(t.TempDir(), "launch.sh")
	script := "#!/bin/sh\n[ \"$LAUNCH_TEST\" = yes ] || exit 3\nexec redis-server \"$@\" --requirepass from-launcher\n"
	if err := os.WriteFile(launcher, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	s := StartWith(t, Options{Launcher: launcher, Env: []string{"LAUNCH_TEST=yes"}, Password: "from-launcher"})
	if reply, err := s.Do("PING"); err != nil || reply != "+PONG" {
		t.Fatalf("PING through the launcher's server: %q %v", reply, err)
	}
}

func TestStartSentinelMonitorsThePrimary(t *testing.T) {
	primary := StartWith(t, Options{TLS: true})
	sentinel := StartSentinel(t, primary, SentinelOptions{MasterName: "mymaster"})
	reply, err := sentinel.Do("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster")
	if err != nil || reply != "*2" {
		t.Fatalf("SENTINEL GET-MASTER-ADDR-BY-NAME: %q %v", reply, err)
	}
}

// Run is Start for a program that is not a test: it returns an error
// instead of failing a test, and the caller stops the server.
func TestRunStartsAServerOutsideATest(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "redis")
	s, err := Run(dir, "--maxmemory", "10mb")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Stop()
	if s.PID() <= 0 {
		t.Fatalf("PID %d", s.PID())
	}
	if reply, err := s.Do("CONFIG", "GET", "dir"); err != nil || !strings.HasPrefix(reply, "*2") {
		t.Fatalf("CONFIG GET dir: %q %v", reply, err)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("its data directory: %v", err)
	}
	s.Stop()
	if s.PID() != 0 {
		t.Fatalf("PID %d after Stop", s.PID())
	}
	if _, err := s.Do("PING"); err == nil {
		t.Fatal("the server still answers after Stop")
	}
}
