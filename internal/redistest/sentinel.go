package redistest

import (
	"cmp"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
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
	// Quorum is how many Sentinels must agree that the primary is down
	// (default 1).
	Quorum int
	// PrimaryAddr is where the Sentinel is told the primary is (default:
	// its own address). A fault proxy's address there puts the proxy between
	// the primary and every client the Sentinel sends to it.
	PrimaryAddr string
	// DownAfter is down-after-milliseconds: how long the primary may not
	// answer before a Sentinel counts it down (Redis's default, 30 s, when
	// 0). FailoverTimeout is failover-timeout (Redis's default when 0).
	DownAfter, FailoverTimeout time.Duration
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
	host, port, _ := net.SplitHostPort(cmp.Or(so.PrimaryAddr, primary.Addr))
	lines = append(lines, fmt.Sprintf("sentinel monitor %s %s %s %d", so.MasterName, host, port, max(so.Quorum, 1)))
	if so.DownAfter > 0 {
		lines = append(lines, fmt.Sprintf("sentinel down-after-milliseconds %s %d", so.MasterName, so.DownAfter.Milliseconds()))
	}
	if so.FailoverTimeout > 0 {
		lines = append(lines, fmt.Sprintf("sentinel failover-timeout %s %d", so.MasterName, so.FailoverTimeout.Milliseconds()))
	}
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

// StartReplica runs a server like StartWith that replicates primary (over
// TLS when primary serves TLS), and waits until its link to the primary is
// up on both sides. The primary must let the replica in: opts.Args may carry --masteruser
// and --masterauth.
func StartReplica(tb testing.TB, primary *Server, opts Options) *Server {
	tb.Helper()
	host, port, _ := net.SplitHostPort(primary.Addr)
	if primary.TLS != nil {
		opts.TLS, opts.Certs = true, primary.TLS
		opts.Args = append([]string{"--tls-replication", "yes"}, opts.Args...)
	}
	opts.Args = append([]string{"--replicaof", host, port}, opts.Args...)
	r := StartWith(tb, opts)
	_, myPort, _ := net.SplitHostPort(r.Addr)
	if err := waitFor(10*time.Second, func() error {
		repl, err := r.Info("replication")
		if err == nil && repl["master_link_status"] != "up" {
			err = fmt.Errorf("master_link_status %q", repl["master_link_status"])
		}
		if err != nil {
			return err
		}
		// The replica's side of the link can be up before the primary
		// counts it: WAIT on the primary counts only replicas it lists
		// online, so a test that confirms a change at once would find none.
		return listsOnline(primary, myPort)
	}); err != nil {
		tb.Fatalf("replica %s of %s: %v", r.Addr, primary.Addr, err)
	}
	return r
}

// SentinelSet is a primary, its replicas and the Sentinels that watch them,
// started for a test: what a Sentinel deployment runs.
type SentinelSet struct {
	// Primary is the primary the set started with (after a failover, one of
	// the replicas serves instead: Master says which).
	Primary   *Server
	Replicas  []*Server
	Sentinels []*Server
	name      string
	nodes     []*Server
}

// SentinelSetOptions say how StartSentinelSet runs a set.
type SentinelSetOptions struct {
	// Replicas of the primary (default 1) and Sentinels (default 3).
	Replicas, Sentinels int
	// Node is how the primary and the replicas run.
	Node Options
	// Sentinel is how each Sentinel runs; its Quorum defaults to a majority
	// of the Sentinels.
	Sentinel SentinelOptions
}

// StartSentinelSet starts a primary, its replicas and Sentinels, and waits
// until every Sentinel knows every replica and every other Sentinel (before
// that, a failover may find no quorum or no replica to promote).
func StartSentinelSet(tb testing.TB, o SentinelSetOptions) *SentinelSet {
	tb.Helper()
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Sentinels <= 0 {
		o.Sentinels = 3
	}
	if o.Sentinel.Quorum <= 0 {
		o.Sentinel.Quorum = o.Sentinels/2 + 1
	}
	// A primary waits 5 s by default for more replicas before it streams
	// its data to a new one.
	o.Node.Args = append([]string{"--repl-diskless-sync-delay", "0"}, o.Node.Args...)
	set := &SentinelSet{name: o.Sentinel.MasterName, Primary: StartWith(tb, o.Node)}
	set.nodes = append(set.nodes, set.Primary)
	for range o.Replicas {
		r := StartReplica(tb, set.Primary, o.Node)
		set.Replicas = append(set.Replicas, r)
		set.nodes = append(set.nodes, r)
	}
	for range o.Sentinels {
		set.Sentinels = append(set.Sentinels, StartSentinel(tb, set.Primary, o.Sentinel))
	}
	if err := waitFor(30*time.Second, func() error {
		for _, s := range set.Sentinels {
			for what, want := range map[string]int{"REPLICAS": o.Replicas, "SENTINELS": o.Sentinels - 1} {
				v, err := s.Query("SENTINEL", what, set.name)
				if err != nil {
					return err
				}
				if got := len(v.([]any)); got < want {
					return fmt.Errorf("sentinel %s knows %d %s, want %d", s.Addr, got, strings.ToLower(what), want)
				}
			}
		}
		return nil
	}); err != nil {
		tb.Fatalf("sentinel set: %v", err)
	}
	return set
}

// Addrs are the Sentinels' addresses, what a Sentinel client is given.
func (set *SentinelSet) Addrs() []string {
	addrs := make([]string, len(set.Sentinels))
	for i, s := range set.Sentinels {
		addrs[i] = s.Addr
	}
	return addrs
}

// Master asks the Sentinels which node is the primary now.
func (set *SentinelSet) Master() (*Server, error) {
	err := fmt.Errorf("no Sentinel is up")
	for _, s := range set.Sentinels {
		if !s.Up() {
			continue
		}
		var v any
		if v, err = s.Query("SENTINEL", "GET-MASTER-ADDR-BY-NAME", set.name); err != nil {
			continue
		}
		hp, _ := v.([]any)
		if len(hp) != 2 {
			return nil, fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME: %v", v)
		}
		addr := net.JoinHostPort(hp[0].(string), hp[1].(string))
		for _, n := range set.nodes {
			if n.Addr == addr {
				return n, nil
			}
		}
		return nil, fmt.Errorf("the Sentinels name %s, not a node of this set", addr)
	}
	return nil, err
}

// WaitPromoted waits until every Sentinel that is up names a primary other
// than old, and that node says it is a master; it returns that node and how
// long it waited.
func (set *SentinelSet) WaitPromoted(old *Server, timeout time.Duration) (*Server, time.Duration, error) {
	start := time.Now()
	var m *Server
	err := waitFor(timeout, func() error {
		m = nil
		for _, s := range set.Sentinels {
			if !s.Up() {
				continue
			}
			v, err := s.Query("SENTINEL", "GET-MASTER-ADDR-BY-NAME", set.name)
			if err != nil {
				return err
			}
			hp, _ := v.([]any)
			if len(hp) != 2 || net.JoinHostPort(hp[0].(string), hp[1].(string)) == old.Addr {
				return fmt.Errorf("sentinel %s still names %v", s.Addr, v)
			}
		}
		n, err := set.Master()
		if err != nil {
			return err
		}
		repl, err := n.Info("replication")
		if err != nil || repl["role"] != "master" {
			return fmt.Errorf("%s is not master yet (%v)", n.Addr, err)
		}
		m = n
		return nil
	})
	return m, time.Since(start), err
}

// waitFor calls f every 20 ms until it returns nil or timeout passes, and
// returns its last error.
func waitFor(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// listsOnline says whether primary's INFO lists a replica on port as
// online (a "slaveN" line: "ip=…,port=…,state=online,…").
func listsOnline(primary *Server, port string) error {
	repl, err := primary.Info("replication")
	if err != nil {
		return err
	}
	for name, v := range repl {
		if !strings.HasPrefix(name, "slave") || !strings.Contains(","+v+",", ",port="+port+",") {
			continue
		}
		if strings.Contains(","+v+",", ",state=online,") {
			return nil
		}
		return fmt.Errorf("primary lists replica :%s as %s", port, v)
	}
	return fmt.Errorf("primary does not list replica :%s yet", port)
}
