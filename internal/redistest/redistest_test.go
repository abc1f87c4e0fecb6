package redistest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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

func TestClusterWithReplicasFailsOverAndMovesSlots(t *testing.T) {
	c := StartClusterOf(t, ClusterOptions{Masters: 3, Replicas: 1, NodeTimeout: time.Second, Proxied: true,
		Node: Options{Args: []string{"--cluster-require-full-coverage", "no"}}})
	require.Len(t, c.Nodes, 6)
	require.Len(t, c.Masters(), 3)
	slot := c.Slot("{k}x")
	old := c.Master(slot)
	require.Len(t, c.Replicas(slot), 1)
	for _, a := range c.Addrs() {
		require.NotContains(t, []string{c.Nodes[0].Addr}, a, "clients are given the proxies")
	}
	for i := range 50 {
		_, err := old.Query("SET", fmt.Sprintf("{k}%d", i), "v")
		require.NoError(t, err)
	}

	t.Run("a slot moves, key by key", func(t *testing.T) {
		var to *Server
		for _, m := range c.Masters() {
			if m != old {
				to = m
			}
		}
		m, err := c.StartMigration(slot, to)
		require.NoError(t, err)
		left, err := m.Move(20)
		require.NoError(t, err)
		require.Equal(t, 30, left)
		asked := 0
		for i := range 50 {
			if _, err := old.Query("GET", fmt.Sprintf("{k}%d", i)); err != nil {
				require.ErrorContains(t, err, "ASK")
				asked++
			}
		}
		require.Equal(t, 20, asked, "the keys already moved are asked for on the target")
		moved, err := m.Finish()
		require.NoError(t, err)
		require.Equal(t, 50, moved)
		require.Equal(t, to, c.Master(slot))
		_, err = old.Query("GET", "{k}0")
		require.ErrorContains(t, err, "MOVED")
		v, err := to.Query("GET", "{k}49")
		require.NoError(t, err)
		require.Equal(t, "v", v)
		old = to
	})

	t.Run("a killed master's replica takes over", func(t *testing.T) {
		require.NoError(t, c.WaitHealthy(30*time.Second))
		// The slot's new owner reaches the replicas by gossip, not by the
		// migration's SETSLOT: a replica that still takes the slot for the
		// old master's when it learns otherwise may drop the slot's keys
		// as another node's. Every node must name the new owner first, and
		// only then is the slot's replica the new owner's (asked before,
		// the slot map could still name the old owner's replica, which
		// rightly holds none of the slot's keys).
		require.Eventually(t, func() bool { return c.agree(slot, old) }, 30*time.Second, 20*time.Millisecond,
			"every node names the slot's new master")
		// The replica is the one the master itself replicates to, the one
		// its WAIT counts. In CI a replica taken from the slot map (one
		// node's view) once held none of the keys after the master's WAIT
		// counted one replica: either the map named another replica, or
		// the replica had dropped them (below). Not reproduced since.
		replica := replicaOf(t, c, old)
		if mapped := c.Replicas(slot); len(mapped) != 1 || mapped[0] != replica {
			t.Logf("the slot map names replicas %v of the slot's master, which replicates to %s", addrsOf(mapped), replica.Addr)
		}
		// Replication is asynchronous: the keys just migrated in must reach
		// the replica before its master dies, or the promotion loses them.
		replicated := func() any {
			t.Helper()
			acked, err := old.Query("WAIT", "1", "5000")
			require.NoError(t, err)
			require.EqualValues(t, 1, acked, "the replica acknowledged every write")
			held, err := replica.Query("CLUSTER", "COUNTKEYSINSLOT", strconv.Itoa(slot))
			require.NoError(t, err)
			return held
		}
		held := replicated()
		if held != int64(50) {
			// A replica that still took the slot for another master's
			// when the keys came may have dropped them; now that every
			// node names their master, written again they stay. What
			// this subtest proves is the promotion.
			t.Logf("the replica held %v of the slot's 50 keys after the move; writing them again", held)
			for i := range 50 {
				_, err := old.Query("SET", fmt.Sprintf("{k}%d", i), "v")
				require.NoError(t, err)
			}
			held = replicated()
		}
		if held != int64(50) {
			ri, _ := replica.Info("replication")
			nodes, _ := replica.QueryString("CLUSTER", "NODES")
			t.Fatalf("the replica %s holds %v of the slot's 50 keys before its master dies; its replication: %v\nits CLUSTER NODES:\n%s", replica.Addr, held, ri, nodes)
		}
		old.Stop()
		got, took, err := c.WaitPromoted(slot, old, 30*time.Second)
		if err != nil {
			nodes, _ := replica.QueryString("CLUSTER", "NODES")
			logs, _ := filepath.Glob(filepath.Join(replica.Dir(), "*.log"))
			for _, l := range logs {
				b, _ := os.ReadFile(l)
				t.Log(string(b))
			}
			t.Fatalf("%v\n%s", err, nodes)
		}
		require.Equal(t, replica, got)
		t.Logf("promoted in %v", took)
		v, err := got.Query("GET", "{k}49")
		require.NoError(t, err)
		require.Equal(t, "v", v, "the replica had the data")
		old.Restart()
		require.NoError(t, c.WaitHealthy(30*time.Second), "the old master rejoins as a replica")
	})
}

func TestSentinelSetFailsOver(t *testing.T) {
	set := StartSentinelSet(t, SentinelSetOptions{Sentinel: SentinelOptions{MasterName: "m", DownAfter: time.Second, FailoverTimeout: 5 * time.Second}})
	m, err := set.Master()
	require.NoError(t, err)
	require.Equal(t, set.Primary, m)
	_, err = m.Query("SET", "k", "v")
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		v, err := set.Replicas[0].Query("GET", "k")
		return err == nil && v == "v"
	}, 5*time.Second, 10*time.Millisecond)
	set.Primary.Pause()
	got, took, err := set.WaitPromoted(set.Primary, 30*time.Second)
	require.NoError(t, err)
	require.Equal(t, set.Replicas[0], got)
	t.Logf("promoted in %v", took)
	set.Primary.Resume()
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

// A port FreePort found free may be taken before the server binds it (by
// another test's process): the server starts again on another.
func TestAServerWhosePortWasTakenStartsOnAnother(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	go func() { // whoever took it hangs up on the helper's PING
		for {
			c, err := taken.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	first := true
	pickPort = func() (int, error) {
		if first {
			first = false
			return taken.Addr().(*net.TCPAddr).Port, nil
		}
		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })
	s := Start(t)
	require.NotEqual(t, taken.Addr().String(), s.Addr)
	v, err := s.Query("PING")
	require.NoError(t, err)
	require.Equal(t, "PONG", v)
}

// A port FreePort found free may be taken by another redis-server, which
// answers the helper's PING before this one fails to bind: the helper
// tells it by its process id, and starts this one on another port.
func TestAServerWhosePortAnotherRedisTookStartsOnAnother(t *testing.T) {
	other := Start(t)
	_, port, err := net.SplitHostPort(other.Addr)
	require.NoError(t, err)
	first := true
	pickPort = func() (int, error) {
		if first {
			first = false
			return strconv.Atoi(port)
		}
		return freePort()
	}
	t.Cleanup(func() { pickPort = freePort })
	s := Start(t)
	require.NotEqual(t, other.Addr, s.Addr)
	mine, err := s.Info("server")
	require.NoError(t, err)
	theirs, err := other.Info("server")
	require.NoError(t, err)
	require.NotEqual(t, theirs["process_id"], mine["process_id"])
}

// replicaOf is the one replica master replicates to, as its INFO says.
func replicaOf(t *testing.T, c *Cluster, master *Server) *Server {
	t.Helper()
	var found *Server
	require.Eventually(t, func() bool {
		info, err := master.Info("replication")
		if err != nil || info["connected_slaves"] != "1" {
			return false
		}
		var ip, port string
		for _, kv := range strings.Split(info["slave0"], ",") {
			k, v, _ := strings.Cut(kv, "=")
			switch k {
			case "ip":
				ip = v
			case "port":
				port = v
			}
		}
		addr := net.JoinHostPort(ip, port)
		for _, n := range c.Nodes {
			if n.Addr == addr || c.byAddr[addr] == n {
				found = n
				return true
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "the master %s has one replica online", master.Addr)
	return found
}

func addrsOf(servers []*Server) (out []string) {
	for _, s := range servers {
		out = append(out, s.Addr)
	}
	return out
}
