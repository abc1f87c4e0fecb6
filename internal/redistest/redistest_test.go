package redistest

import (
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
