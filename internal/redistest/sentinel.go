package redistest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// SentinelOptions say how StartSentinel runs a Sentinel.
type SentinelOptions struct {
	// MasterName is the name the Sentinel monitors the primary under.
	MasterName string
	// AuthUser and AuthPass are what the Sentinel logs in to the primary
	// with (sentinel auth-user / auth-pass); empty when the primary needs no
	// login.
	AuthUser, AuthPass string
	// Config are more sentinel.conf lines: the Sentinel's own users, for
	// example.
	Config []string
}

// StartSentinel runs a Sentinel (redis-server --sentinel) on a free port
// that monitors primary, and stops it in tb.Cleanup. When primary serves
// TLS, the Sentinel does too, with the same certificates, and talks TLS to
// the primary.
func StartSentinel(tb testing.TB, primary *Server, so SentinelOptions) *Server {
	tb.Helper()
	if so.MasterName == "" {
		tb.Fatal("StartSentinel: no MasterName")
	}
	s := &Server{tb: tb, dir: tb.TempDir(), port: FreePort(tb), TLS: primary.TLS}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	lines := []string{
		"bind 127.0.0.1",
		"dir " + s.dir,
		fmt.Sprintf("port %d", s.port),
	}
	if s.TLS != nil {
		lines = []string{
			"bind 127.0.0.1",
			"dir " + s.dir,
			"port 0",
			fmt.Sprintf("tls-port %d", s.port),
			"tls-cert-file " + s.TLS.ServerCert,
			"tls-key-file " + s.TLS.ServerKey,
			"tls-ca-cert-file " + s.TLS.CA,
			"tls-auth-clients yes",
			"tls-replication yes", // to the primary, over TLS
		}
	}
	host, port, _ := net.SplitHostPort(primary.Addr)
	lines = append(lines, fmt.Sprintf("sentinel monitor %s %s %s 1", so.MasterName, host, port))
	if so.AuthUser != "" {
		lines = append(lines, fmt.Sprintf("sentinel auth-user %s %s", so.MasterName, so.AuthUser))
	}
	if so.AuthPass != "" {
		lines = append(lines, fmt.Sprintf("sentinel auth-pass %s %s", so.MasterName, so.AuthPass))
	}
	lines = append(lines, so.Config...)
	// Sentinel rewrites its config file, so it is a file of its own.
	conf := filepath.Join(s.dir, "sentinel.conf")
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		tb.Fatalf("write sentinel.conf: %v", err)
	}
	s.args = []string{conf, "--sentinel"}
	s.start()
	tb.Cleanup(s.Stop)
	return s
}
