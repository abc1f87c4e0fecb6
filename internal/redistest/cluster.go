package redistest

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Cluster is a Redis Cluster of primaries without replicas, started for a
// test: each node a Server of its own, all stopped when the test ends.
type Cluster struct {
	Nodes []*Server
}

// StartCluster starts masters cluster-enabled redis-servers on free ports
// (Redis Cluster needs at least 3), joins them with `redis-cli --cluster
// create`, and waits until every node reports cluster_state:ok. Like Start,
// it fails the test when redis-server or redis-cli is missing.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("StartCluster(%d): Redis Cluster needs at least 3 masters", masters)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli not found on PATH (install the redis-tools package): %v", err)
	}
	c := &Cluster{}
	for range masters {
		// The cluster bus port is chosen explicitly: the default, port+10000,
		// is not known to be free and may not even exist (> 65535).
		c.Nodes = append(c.Nodes, Start(tb,
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(FreePort(tb)),
			"--cluster-node-timeout", "5000",
		))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		if err := waitClusterOK(ctx, cli, n); err != nil {
			tb.Fatalf("redis cluster node %s: %v", n.Addr, err)
		}
	}
	return c
}

// Addrs returns the nodes' host:port addresses, the seed list for a
// cluster client.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// waitClusterOK polls CLUSTER INFO on n until it says cluster_state:ok.
func waitClusterOK(ctx context.Context, cli string, n *Server) error {
	var last string
	for {
		out, err := exec.CommandContext(ctx, cli, "-h", "127.0.0.1", "-p", strconv.Itoa(n.port), "cluster", "info").Output()
		last = string(out)
		if err == nil && strings.Contains(last, "cluster_state:ok") {
			return nil
		}
		select {
		case <-ctx.Done():
			state := "no answer"
			for _, line := range strings.Split(last, "\n") {
				if strings.HasPrefix(line, "cluster_state:") {
					state = strings.TrimSpace(line)
				}
			}
			return fmt.Errorf("cluster did not reach cluster_state:ok in time (last: %s)", state)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
