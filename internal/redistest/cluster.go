package redistest

import (
	"context"
	"fmt"
	"os"
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
	// TLS holds the certificates every node presents and trusts, when the
	// cluster serves TLS (nodes talk TLS to each other too); nil otherwise.
	TLS *TLSFiles

	opts Options
}

// StartCluster starts masters cluster-enabled redis-servers on free ports
// (Redis Cluster needs at least 3), joins them with `redis-cli --cluster
// create`, and waits until every node reports cluster_state:ok. Like Start,
// it fails the test when redis-server or redis-cli is missing.
func StartCluster(tb testing.TB, masters int) *Cluster {
	tb.Helper()
	return StartClusterWith(tb, masters, Options{})
}

// StartClusterWith starts a Cluster whose nodes run as opts say. With
// opts.TLS the nodes share one set of certificates and also talk TLS on the
// cluster bus. With opts.Password the helper sets the cluster up as
// opts.User, who must be allowed to (the cluster commands, INFO).
func StartClusterWith(tb testing.TB, masters int, opts Options) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("StartCluster(%d): Redis Cluster needs at least 3 masters", masters)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli not found on PATH (install the redis-tools package): %v", err)
	}
	c := &Cluster{opts: opts}
	if opts.TLS && opts.Certs == nil {
		opts.Certs = NewTLSFiles(tb, tb.TempDir())
	}
	c.TLS = opts.Certs
	for range masters {
		// The cluster bus port is chosen explicitly: the default, port+10000,
		// is not known to be free and may not even exist (> 65535).
		node := opts
		node.Args = append([]string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", "nodes.conf",
			"--cluster-port", strconv.Itoa(FreePort(tb)),
			"--cluster-node-timeout", "5000",
		}, opts.Args...)
		if opts.TLS {
			node.Args = append(node.Args, "--tls-cluster", "yes")
		}
		c.Nodes = append(c.Nodes, StartWith(tb, node))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := c.cli(ctx, cli, args...).CombinedOutput(); err != nil || strings.Contains(string(out), "[ERR]") {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		if err := c.waitClusterOK(ctx, cli, n); err != nil {
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

// cli is a redis-cli command with the cluster's TLS and login flags; the
// password goes through the environment, not the command line.
func (c *Cluster) cli(ctx context.Context, bin string, args ...string) *exec.Cmd {
	var pre []string
	if c.TLS != nil {
		pre = append(pre, "--tls", "--cacert", c.TLS.CA, "--cert", c.TLS.ServerCert, "--key", c.TLS.ServerKey)
	}
	if c.opts.User != "" {
		pre = append(pre, "--user", c.opts.User)
	}
	cmd := exec.CommandContext(ctx, bin, append(pre, args...)...)
	cmd.Env = os.Environ()
	if c.opts.Password != "" {
		cmd.Env = append(cmd.Env, "REDISCLI_AUTH="+c.opts.Password)
	}
	return cmd
}

// waitClusterOK polls CLUSTER INFO on n until it says cluster_state:ok.
func (c *Cluster) waitClusterOK(ctx context.Context, cli string, n *Server) error {
	var last string
	for {
		out, err := c.cli(ctx, cli, "-h", "127.0.0.1", "-p", strconv.Itoa(n.port), "cluster", "info").Output()
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
