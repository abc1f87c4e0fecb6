package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/extauthz/extauthz/internal/faultproxy"
)

// Cluster is a Redis Cluster started for a test: each node a Server of its
// own, all stopped when the test ends. Its methods find which node serves
// what as the nodes themselves see it now (after a failover or a slot
// migration), and drive the events a Cluster lives through: a failover, a
// slot moving between masters.
type Cluster struct {
	// Nodes are every node, masters and replicas, in the order they were
	// started; which is which is the Cluster's business (Master, Replicas).
	Nodes []*Server
	// TLS holds the certificates every node presents and trusts, when the
	// cluster serves TLS (nodes talk TLS to each other too); nil otherwise.
	TLS *TLSFiles

	opts    ClusterOptions
	node    Options // how each node runs, its certificates filled in
	cliBin  string
	proxies map[*Server]*faultproxy.Proxy
	byAddr  map[string]*Server // by the address clients are told (the proxy's, when proxied)
}

// ClusterOptions say how StartClusterOf runs a Cluster.
type ClusterOptions struct {
	// Masters is the number of masters (Redis Cluster needs at least 3).
	Masters int
	// Replicas is the number of replicas of each master.
	Replicas int
	// NodeTimeout is cluster-node-timeout: how long a master may not answer
	// before the others count it failed and one of its replicas takes over.
	// Default 5 s.
	NodeTimeout time.Duration
	// Proxied puts each node behind a fault proxy of its own
	// (internal/faultproxy) and has it announce the proxy's port, so that
	// clients, which learn the nodes from the Cluster, reach each node only
	// through its proxy (Cluster.Proxy). The cluster bus, between the nodes,
	// stays direct; replication goes through the proxy.
	Proxied bool
	// Node is how each node runs (TLS, a launcher, more arguments).
	Node Options
}

// StartCluster starts masters cluster-enabled redis-servers on free ports
// (Redis Cluster needs at least 3), joins them with `redis-cli --cluster
// create`, and waits until every node reports cluster_state:ok. Like Start,
// it fails the test when redis-server or redis-cli is missing.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	return StartClusterOf(tb, ClusterOptions{Masters: masters})
}

// StartClusterWith starts a Cluster of masters whose nodes run as opts say.
// With opts.TLS the nodes share one set of certificates and also talk TLS
// on the cluster bus. With opts.Password the helper sets the cluster up as
// opts.User, who must be allowed to (the cluster commands, INFO).
func StartClusterWith(tb testing.TB, masters int, opts Options) *Cluster {
	tb.Helper()
	return StartClusterOf(tb, ClusterOptions{Masters: masters, Node: opts})
}

// StartClusterOf starts a Cluster as co says and waits until every node
// reports cluster_state:ok and every master has its replicas in sync.
func StartClusterOf(tb testing.TB, co ClusterOptions) *Cluster {
	tb.Helper()
	if co.Masters < 3 {
		tb.Fatalf("StartCluster(%d): Redis Cluster needs at least 3 masters", co.Masters)
	}
	if co.NodeTimeout <= 0 {
		co.NodeTimeout = 5 * time.Second
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli not found on PATH (install the redis-tools package): %v", err)
	}
	c := &Cluster{opts: co, cliBin: cli, proxies: map[*Server]*faultproxy.Proxy{}, byAddr: map[string]*Server{}}
	opts := co.Node
	if opts.TLS && opts.Certs == nil {
		opts.Certs = NewTLSFiles(tb, tb.TempDir())
	}
	c.TLS = opts.Certs
	c.node = opts
	for range co.Masters * (1 + co.Replicas) {
		c.startNode(tb)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"--cluster", "create"}
	for _, n := range c.Nodes {
		args = append(args, n.Addr)
	}
	args = append(args, "--cluster-replicas", strconv.Itoa(co.Replicas), "--cluster-yes")
	if out, err := c.cli(ctx, args...).CombinedOutput(); err != nil || strings.Contains(string(out), "[ERR]") {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	if err := c.WaitHealthy(time.Minute); err != nil {
		tb.Fatal(err)
	}
	return c
}

// startNode starts one cluster-enabled node as the Cluster's nodes run
// (behind a fault proxy of its own when the Cluster is Proxied), adds it to
// Nodes and returns it with its cluster bus port.
func (c *Cluster) startNode(tb testing.TB) (*Server, int) {
	tb.Helper()
	for attempt := 1; ; attempt++ {
		s, bus, err := c.tryNode(tb)
		if err == nil {
			return s, bus
		}
		if !portTaken(err) || attempt == portAttempts {
			tb.Fatal(err)
		}
	}
}

// tryNode is one try of startNode, on ports free a moment ago; it returns
// why the node did not start.
func (c *Cluster) tryNode(tb testing.TB) (*Server, int, error) {
	tb.Helper()
	opts, co := c.node, c.opts
	// The cluster bus port is chosen explicitly: the default, port+10000,
	// is not known to be free and may not even exist (> 65535).
	node, bus := opts, FreePort(tb)
	node.Port = FreePort(tb)
	node.Args = []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-port", strconv.Itoa(bus),
		"--cluster-node-timeout", strconv.FormatInt(co.NodeTimeout.Milliseconds(), 10),
		// A master waits 5 s by default for more replicas before it
		// streams its data to a new one.
		"--repl-diskless-sync-delay", "0",
	}
	if opts.TLS {
		node.Args = append(node.Args, "--tls-cluster", "yes", "--tls-replication", "yes")
	}
	var proxy *faultproxy.Proxy
	if co.Proxied {
		proxy = faultproxy.Start(tb, net.JoinHostPort("127.0.0.1", strconv.Itoa(node.Port)))
		_, port, _ := net.SplitHostPort(proxy.Addr())
		node.Args = append(node.Args,
			"--cluster-announce-ip", "127.0.0.1",
			"--cluster-announce-port", port,
			"--cluster-announce-tls-port", port,
			"--cluster-announce-bus-port", strconv.Itoa(bus))
	}
	node.Args = append(node.Args, opts.Args...)
	s, err := tryStart(tb, node)
	if err != nil {
		if proxy != nil {
			proxy.Close()
		}
		return nil, 0, err
	}
	c.Nodes = append(c.Nodes, s)
	c.byAddr[s.Addr] = s
	if proxy != nil {
		c.proxies[s] = proxy
		c.byAddr[proxy.Addr()] = s
	}
	return s, bus, nil
}

// AddMaster starts one more node, as the others run, and joins it to the
// Cluster as a master that serves no slot: a master new to the Cluster, as
// one added for a resharding is until the first slot moves to it. A
// client's slot map (CLUSTER SLOTS) does not list it. It has no replica of
// its own (so WaitHealthy on a Cluster started with replicas does not
// finish after it). It waits until every node that is up knows it and reports
// cluster_state:ok (the new one too: it learns the slots' owners by gossip).
func (c *Cluster) AddMaster(tb testing.TB) *Server {
	tb.Helper()
	s, bus := c.startNode(tb)
	id, err := s.clusterID()
	if err != nil {
		tb.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(s.Addr)
	if _, err := c.Nodes[0].Query("CLUSTER", "MEET", host, port, strconv.Itoa(bus)); err != nil {
		tb.Fatalf("CLUSTER MEET %s: %v", s.Addr, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		known := 0
		for _, n := range c.Nodes {
			if !n.Up() {
				known++
				continue
			}
			nodes, err := n.QueryString("CLUSTER", "NODES")
			info, ierr := n.QueryString("CLUSTER", "INFO")
			if err == nil && ierr == nil && troubled(nodes) == "" && strings.Contains(nodes, id) &&
				strings.Contains(info, "cluster_state:ok") {
				known++
			}
		}
		if known == len(c.Nodes) {
			return s
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%d of the %d nodes know the new master %s after a minute", known, len(c.Nodes), s.Addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Addrs returns the address clients are to use for each node (the proxy's,
// when proxied): the seed list of a cluster client.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = c.clientAddr(n)
	}
	return addrs
}

func (c *Cluster) clientAddr(n *Server) string {
	if p := c.proxies[n]; p != nil {
		return p.Addr()
	}
	return n.Addr
}

// Proxy returns the fault proxy in front of n (nil unless the Cluster is
// Proxied).
func (c *Cluster) Proxy(n *Server) *faultproxy.Proxy { return c.proxies[n] }

// cli is a redis-cli command with the cluster's TLS and login flags; the
// password goes through the environment, not the command line.
func (c *Cluster) cli(ctx context.Context, args ...string) *exec.Cmd {
	var pre []string
	if c.TLS != nil {
		pre = append(pre, "--tls", "--cacert", c.TLS.CA, "--cert", c.TLS.ServerCert, "--key", c.TLS.ServerKey)
	}
	if c.opts.Node.User != "" {
		pre = append(pre, "--user", c.opts.Node.User)
	}
	cmd := exec.CommandContext(ctx, c.cliBin, append(pre, args...)...)
	cmd.Env = os.Environ()
	if c.opts.Node.Password != "" {
		cmd.Env = append(cmd.Env, "REDISCLI_AUTH="+c.opts.Node.Password)
	}
	return cmd
}

// WaitHealthy waits until every node that is up reports cluster_state:ok,
// sees no node failing, and every master has as many replicas in sync as
// the Cluster was started with (fewer while a node is down).
func (c *Cluster) WaitHealthy(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var why error
	for {
		if why = c.healthy(); why == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis cluster not healthy after %v: %w", timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *Cluster) healthy() error {
	up := 0
	var unaware error // a node that does not list every replica yet
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		up++
		info, err := n.QueryString("CLUSTER", "INFO")
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Addr, err)
		}
		if !strings.Contains(info, "cluster_state:ok") {
			return fmt.Errorf("node %s: not cluster_state:ok", n.Addr)
		}
		nodes, err := n.QueryString("CLUSTER", "NODES")
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Addr, err)
		}
		if flag := troubled(nodes); flag != "" {
			return fmt.Errorf("node %s sees a node %s:\n%s", n.Addr, flag, nodes)
		}
		// Gossip lags the replication link, and Replicas and Master ask any
		// node: every node must list every replica as one.
		known := 0
		for _, l := range parseNodes(nodes) {
			if l.of != "" {
				known++
			}
		}
		if want := c.opts.Masters * c.opts.Replicas; known < want && unaware == nil {
			unaware = fmt.Errorf("node %s knows %d replicas, want %d", n.Addr, known, want)
		}
	}
	if up == len(c.Nodes) {
		for _, m := range c.Masters() {
			repl, err := m.Info("replication")
			if err != nil {
				return fmt.Errorf("node %s: %w", m.Addr, err)
			}
			if n, _ := strconv.Atoi(repl["connected_slaves"]); n < c.opts.Replicas {
				return fmt.Errorf("master %s has %d replicas connected, want %d", m.Addr, n, c.opts.Replicas)
			}
			for i := range c.opts.Replicas {
				if !strings.Contains(repl[fmt.Sprintf("slave%d", i)], "state=online") {
					return fmt.Errorf("master %s: replica %d not online: %s", m.Addr, i, repl[fmt.Sprintf("slave%d", i)])
				}
			}
		}
		if unaware != nil {
			return unaware
		}
	}
	return nil
}

// troubled returns the first flag in a CLUSTER NODES listing that says a
// node is failing or not yet known ("" when none does).
func troubled(nodes string) string {
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		for _, flag := range strings.Split(f[2], ",") {
			switch flag {
			case "fail", "fail?", "handshake", "noaddr":
				return flag
			}
		}
	}
	return ""
}

// Slot returns the hash slot of key.
func (c *Cluster) Slot(key string) int {
	n, err := c.ask("CLUSTER", "KEYSLOT", key)
	if err != nil {
		c.Nodes[0].tb.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	return int(n.(int64))
}

// ask sends a command to the first node that is up and answers.
func (c *Cluster) ask(args ...string) (any, error) {
	err := errors.New("no node is up")
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		var v any
		if v, err = n.Query(args...); err == nil {
			return v, nil
		}
	}
	return nil, err
}

// slotOwners returns, as the first node up that answers sees it, the
// master of slot and its replicas.
func (c *Cluster) slotOwners(slot int) (master *Server, replicas []*Server, err error) {
	v, err := c.ask("CLUSTER", "NODES")
	if err != nil {
		return nil, nil, err
	}
	text, _ := v.(string)
	lines := parseNodes(text)
	var masterID string
	for _, l := range lines {
		if l.master && l.serves(slot) {
			masterID = l.id
			if master = c.byAddr[l.addr]; master == nil {
				return nil, nil, fmt.Errorf("slot %d: node %s is not one of this cluster's", slot, l.addr)
			}
		}
	}
	if master == nil {
		return nil, nil, fmt.Errorf("slot %d is served by no node", slot)
	}
	for _, l := range lines {
		if l.of == masterID {
			if r := c.byAddr[l.addr]; r != nil {
				replicas = append(replicas, r)
			}
		}
	}
	return master, replicas, nil
}

// nodeLine is one line of CLUSTER NODES.
type nodeLine struct {
	id, addr string // addr without the bus port
	master   bool
	of       string // the master's id, for a replica
	slots    [][2]int
}

func (l nodeLine) serves(slot int) bool {
	for _, r := range l.slots {
		if slot >= r[0] && slot <= r[1] {
			return true
		}
	}
	return false
}

func parseNodes(text string) []nodeLine {
	var out []nodeLine
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		l := nodeLine{id: f[0], addr: addr, master: slices.Contains(strings.Split(f[2], ","), "master")}
		if f[3] != "-" {
			l.of = f[3]
		}
		for _, r := range f[8:] {
			if strings.HasPrefix(r, "[") {
				continue // a slot being imported or migrated
			}
			lo, hi, isRange := strings.Cut(r, "-")
			a, err1 := strconv.Atoi(lo)
			b, err2 := a, error(nil)
			if isRange {
				b, err2 = strconv.Atoi(hi)
			}
			if err1 == nil && err2 == nil {
				l.slots = append(l.slots, [2]int{a, b})
			}
		}
		out = append(out, l)
	}
	return out
}

// Master returns the node that serves slot now, as the nodes see it.
func (c *Cluster) Master(slot int) *Server {
	m, _, err := c.slotOwners(slot)
	if err != nil {
		c.Nodes[0].tb.Fatalf("master of slot %d: %v", slot, err)
	}
	return m
}

// Replicas returns the replicas of the master of slot.
func (c *Cluster) Replicas(slot int) []*Server {
	_, r, err := c.slotOwners(slot)
	if err != nil {
		c.Nodes[0].tb.Fatalf("replicas of slot %d: %v", slot, err)
	}
	return r
}

// Masters returns the nodes that serve slots now.
func (c *Cluster) Masters() []*Server {
	var out []*Server
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		if repl, err := n.Info("replication"); err == nil && repl["role"] == "master" {
			out = append(out, n)
		}
	}
	return out
}

// WaitPromoted waits until a node other than old serves slot, as every node
// that is up sees it, and returns that node and how long it waited.
func (c *Cluster) WaitPromoted(slot int, old *Server, timeout time.Duration) (*Server, time.Duration, error) {
	start := time.Now()
	for {
		m, _, err := c.slotOwners(slot)
		if err == nil && m != old && c.agree(slot, m) {
			return m, time.Since(start), nil
		}
		if time.Since(start) > timeout {
			return nil, time.Since(start), fmt.Errorf("slot %d still on %s after %v (last error: %v)", slot, old.Addr, timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// agree reports whether every node that is up names m as the master of slot.
func (c *Cluster) agree(slot int, m *Server) bool {
	id, err := m.clusterID()
	if err != nil {
		return false
	}
	for _, n := range c.Nodes {
		if !n.Up() {
			continue
		}
		nodes, err := n.QueryString("CLUSTER", "NODES")
		if err != nil || !ownsSlot(nodes, id, slot) {
			return false
		}
	}
	return true
}

// ownsSlot reports whether, in a CLUSTER NODES listing, the node id is a
// master serving slot.
func ownsSlot(nodes, id string, slot int) bool {
	for _, l := range parseNodes(nodes) {
		if l.id == id && l.master && l.serves(slot) {
			return true
		}
	}
	return false
}

// clusterID is the node's Cluster id.
func (s *Server) clusterID() (string, error) {
	return s.QueryString("CLUSTER", "MYID")
}

// Migration is a slot being moved from one master to another, as
// `redis-cli --cluster reshard` moves it: the target imports, the source
// migrates, the keys move a batch at a time with MIGRATE, then every master
// is told the new owner. In between, a client asking the source for a key
// that already moved is sent on with ASK; once it is finished, with MOVED.
type Migration struct {
	c              *Cluster
	slot           int
	from, to       *Server
	fromID, toID   string
	moved, batches int
}

// StartMigration marks slot as moving from its master to the master to.
func (c *Cluster) StartMigration(slot int, to *Server) (*Migration, error) {
	from := c.Master(slot)
	if from == to {
		return nil, fmt.Errorf("slot %d is on %s already", slot, to.Addr)
	}
	m := &Migration{c: c, slot: slot, from: from, to: to}
	var err error
	if m.fromID, err = from.clusterID(); err != nil {
		return nil, err
	}
	if m.toID, err = to.clusterID(); err != nil {
		return nil, err
	}
	s := strconv.Itoa(slot)
	if _, err := to.Query("CLUSTER", "SETSLOT", s, "IMPORTING", m.fromID); err != nil {
		return nil, fmt.Errorf("slot %d importing on %s: %w", slot, to.Addr, err)
	}
	if _, err := from.Query("CLUSTER", "SETSLOT", s, "MIGRATING", m.toID); err != nil {
		return nil, fmt.Errorf("slot %d migrating on %s: %w", slot, from.Addr, err)
	}
	return m, nil
}

// Move migrates up to n keys of the slot and reports how many keys are
// left on the source.
func (m *Migration) Move(n int) (left int, err error) {
	s := strconv.Itoa(m.slot)
	v, err := m.from.Query("CLUSTER", "GETKEYSINSLOT", s, strconv.Itoa(n))
	if err != nil {
		return 0, fmt.Errorf("keys of slot %d: %w", m.slot, err)
	}
	keys, _ := v.([]any)
	if len(keys) > 0 {
		host, port, _ := net.SplitHostPort(m.to.Addr)
		args := []string{"MIGRATE", host, port, "", "0", "5000"}
		if m.c.opts.Node.Password != "" {
			args = append(args, "AUTH2", orDefault(m.c.opts.Node.User, "default"), m.c.opts.Node.Password)
		}
		args = append(args, "KEYS")
		for _, k := range keys {
			args = append(args, k.(string))
		}
		if _, err := m.from.Query(args...); err != nil {
			return 0, fmt.Errorf("migrate %d keys of slot %d: %w", len(keys), m.slot, err)
		}
		m.moved += len(keys)
		m.batches++
	}
	count, err := m.from.Query("CLUSTER", "COUNTKEYSINSLOT", s)
	if err != nil {
		return 0, err
	}
	return int(count.(int64)), nil
}

// Finish moves the keys left and gives the slot to the target, telling the
// target first, then the source, then every other master. It returns how
// many keys moved in all.
func (m *Migration) Finish() (int, error) {
	for {
		left, err := m.Move(100)
		if err != nil {
			return m.moved, err
		}
		if left == 0 {
			break
		}
	}
	s := strconv.Itoa(m.slot)
	order := []*Server{m.to, m.from}
	for _, n := range m.c.Masters() {
		if n != m.to && n != m.from {
			order = append(order, n)
		}
	}
	for _, n := range order {
		if _, err := n.Query("CLUSTER", "SETSLOT", s, "NODE", m.toID); err != nil {
			return m.moved, fmt.Errorf("slot %d to %s on %s: %w", m.slot, m.to.Addr, n.Addr, err)
		}
	}
	return m.moved, nil
}
