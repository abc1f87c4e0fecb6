package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	rlconfigv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/common/ratelimit/v3"
	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// The ratelimit scenario measures the closest peer doing the job of
// redis-even's limiter: envoyproxy/ratelimit, the service behind Envoy's
// global rate limit filter, counting one fixed window per key id in a
// redis-server started like the other scenarios'. It answers
// envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit; the load tool
// sends each call one descriptor, api_key = a key id, as an Envoy rate limit
// action keyed on the caller's key would. The peer is not a dependency of
// this module: its binary, service_cmd, is built apart (rateLimitInstall)
// and found by findRateLimit.

const (
	shouldRateLimitMethod = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

	// rateLimitInstall builds the peer's binary into $(go env GOPATH)/bin
	// (from /tmp, so that it touches no go.mod).
	rateLimitInstall = "cd /tmp && go install github.com/envoyproxy/ratelimit/src/service_cmd@latest"

	// peerLimit is each key id's limit in the peer's config, per second in
	// a fixed window: redis-even-lease's, which no run reaches (a few checks
	// per key and second). The peer's cost does not depend on it.
	peerLimit = 3999
)

// peerDescriptor is the descriptor the peer is asked about.
var peerDescriptor = descriptorShape{Domain: "extauthz", Key: "api_key"}

// descriptorShape is the domain and descriptor entry key of a
// ShouldRateLimit call; the entry's value is the key id.
type descriptorShape struct{ Domain, Key string }

// newRateLimitTemplate encodes a RateLimitRequest of shape s whose one
// descriptor's value is valueLen bytes long, and finds where the value is
// (a requestTemplate without client addresses: the call carries none).
func newRateLimitTemplate(s descriptorShape, valueLen int) (requestTemplate, error) {
	holder := strings.Repeat("~", valueLen)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(buildRateLimitRequest(s, holder))
	if err != nil {
		return requestTemplate{}, err
	}
	t := requestTemplate{buf: b, keyOff: bytes.Index(b, []byte(holder)), keyLen: valueLen}
	if t.keyOff < 0 || bytes.Count(b, []byte(holder)) != 1 {
		return requestTemplate{}, fmt.Errorf("ShouldRateLimit template for %s: value placeholder not found exactly once", s.Domain)
	}
	return t, nil
}

// buildRateLimitRequest is what Envoy's rate limit filter sends for one
// descriptor (hits_addend unset: one hit).
func buildRateLimitRequest(s descriptorShape, value string) *ratelimitv3.RateLimitRequest {
	return &ratelimitv3.RateLimitRequest{
		Domain: s.Domain,
		Descriptors: []*rlconfigv3.RateLimitDescriptor{{
			Entries: []*rlconfigv3.RateLimitDescriptor_Entry{{Key: s.Key, Value: value}},
		}},
	}
}

// rateLimitResult is what the load tool reads of a RateLimitResponse: its
// overall_code (ratelimitv3.RateLimitResponse_Code).
type rateLimitResult struct{ code int32 }

// fieldOverallCode is RateLimitResponse.overall_code.
const fieldOverallCode = 1

func parseRateLimitResponse(b []byte) (rateLimitResult, error) {
	var r rateLimitResult
	err := eachVarint(b, fieldOverallCode, func(x uint64) { r.code = int32(x) })
	return r, err
}

// decision names the answer like the ext_authz scenarios' ("allow",
// "rate_limited"), so that the tables line up.
func (r rateLimitResult) decision() string {
	switch ratelimitv3.RateLimitResponse_Code(r.code) {
	case ratelimitv3.RateLimitResponse_OK:
		return "allow"
	case ratelimitv3.RateLimitResponse_OVER_LIMIT:
		return "rate_limited"
	}
	return "overall_code_" + strconv.Itoa(int(r.code))
}

// errNoRateLimit says the peer's binary is missing and how to get it.
var errNoRateLimit = errors.New("envoyproxy/ratelimit's service_cmd was not found in $GOBIN or $(go env GOPATH)/bin; build it with `" + rateLimitInstall + "`, or pass --ratelimit PATH")

// findRateLimit returns the peer's binary: path when given (it must
// exist), else service_cmd in $GOBIN or $(go env GOPATH)/bin, where go
// install puts it. It fails with errNoRateLimit when there is none.
func findRateLimit(path string) (string, error) {
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return "", fmt.Errorf("--ratelimit %s: %w", path, err)
		}
		return filepath.Abs(path)
	}
	var dirs []string
	if gobin := os.Getenv("GOBIN"); gobin != "" {
		dirs = append(dirs, gobin)
	}
	if out, err := exec.Command("go", "env", "GOBIN", "GOPATH").Output(); err == nil {
		lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n") // GOBIN's line may be empty
		if len(lines) == 2 {
			if gobin := strings.TrimSpace(lines[0]); gobin != "" {
				dirs = append(dirs, gobin)
			}
			for _, p := range filepath.SplitList(strings.TrimSpace(lines[1])) {
				dirs = append(dirs, filepath.Join(p, "bin"))
			}
		}
	} else if home, err := os.UserHomeDir(); err == nil {
		dirs = append(dirs, filepath.Join(home, "go", "bin")) // go's default GOPATH
	}
	for _, d := range dirs {
		p := filepath.Join(d, "service_cmd")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
			return p, nil
		}
	}
	return "", errNoRateLimit
}

// rateLimitConfig is the peer's config file: the domain and one
// descriptor per key id, each with its own limit, as its README writes
// them.
func rateLimitConfig(s descriptorShape, ids []string, perSecond int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by extauthz-load\ndomain: %s\ndescriptors:\n", s.Domain)
	for _, id := range ids {
		fmt.Fprintf(&b, "  - key: %s\n    value: %q\n    rate_limit: {unit: second, requests_per_unit: %d}\n", s.Key, id, perSecond)
	}
	return b.String()
}

// RateLimitOptions say how the peer runs.
type RateLimitOptions struct {
	Binary string // service_cmd ("" = findRateLimit's)
	// PipelineWindow is REDIS_PIPELINE_WINDOW: how long its Redis client
	// buffers writes to flush them together. Its README recommends 150–500
	// µs for throughput (the default, 0, flushes every write at once).
	PipelineWindow time.Duration
}

// startRateLimit runs the peer on loopback ports of its own with its
// config in dir/runtime, its counters in the Redis at redisAddr, and
// returns its gRPC address once it says it is healthy. The settings are
// its README's for one Redis over TCP, with stats kept in the process
// (USE_STATSD=false: no statsd to send them to) and the config read once
// (RUNTIME_WATCH_ROOT=false).
func startRateLimit(o RateLimitOptions, dir string, env []string, redisAddr string, ids []string) (*child, string, error) {
	confDir := filepath.Join(dir, "runtime", "ratelimit", "config")
	if err := os.MkdirAll(confDir, 0o700); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(filepath.Join(confDir, "extauthz.yaml"), []byte(rateLimitConfig(peerDescriptor, ids, peerLimit)), 0o600); err != nil {
		return nil, "", err
	}
	ports, err := freePorts(3)
	if err != nil {
		return nil, "", err
	}
	grpcAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	healthURL := "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])) + "/healthcheck"
	env = append(env,
		"USE_STATSD=false", "LOG_LEVEL=warn",
		"REDIS_SOCKET_TYPE=tcp", "REDIS_TYPE=single", "REDIS_URL="+redisAddr,
		"REDIS_PIPELINE_WINDOW="+o.PipelineWindow.String(),
		"RUNTIME_ROOT="+filepath.Join(dir, "runtime"), "RUNTIME_SUBDIRECTORY=ratelimit", "RUNTIME_WATCH_ROOT=false",
		"GRPC_HOST=127.0.0.1", "GRPC_PORT="+strconv.Itoa(ports[0]),
		"HOST=127.0.0.1", "PORT="+strconv.Itoa(ports[1]),
		"DEBUG_HOST=127.0.0.1", "DEBUG_PORT="+strconv.Itoa(ports[2]),
	)
	c, err := startChild("ratelimit", dir, env, nil, o.Binary)
	if err != nil {
		return nil, "", err
	}
	// It serves only once its config is loaded
	// (FORCE_START_WITHOUT_INITIAL_CONFIG is false by default).
	client := http.Client{Timeout: time.Second}
	for deadline := time.Now().Add(30 * time.Second); ; {
		if resp, err := client.Get(healthURL); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			c.stop()
			return nil, "", fmt.Errorf("ratelimit not healthy at %s after 30s:\n%s", healthURL, tail(c.log, 20))
		}
		select {
		case <-c.done:
			return nil, "", fmt.Errorf("ratelimit exited:\n%s", tail(c.log, 20))
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := checkPeerLimit(grpcAddr, ids[0]); err != nil {
		c.stop()
		return nil, "", fmt.Errorf("%w\n%s", err, tail(c.log, 20))
	}
	return c, grpcAddr, nil
}

// checkPeerLimit asks the peer about id once and fails unless the answer
// carries the configured limit: a descriptor the config does not match is
// allowed without a Redis call, which would measure nothing.
func checkPeerLimit(addr, id string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := ratelimitv3.NewRateLimitServiceClient(conn).ShouldRateLimit(ctx, buildRateLimitRequest(peerDescriptor, id))
	if err != nil {
		return fmt.Errorf("ratelimit ShouldRateLimit: %w", err)
	}
	st := resp.GetStatuses()
	if resp.GetOverallCode() != ratelimitv3.RateLimitResponse_OK || len(st) != 1 || st[0].GetCurrentLimit().GetRequestsPerUnit() != peerLimit {
		return fmt.Errorf("ratelimit answered %v for %s=%s, want OK under a limit of %d/s: its config was not applied", resp, peerDescriptor.Key, id, peerLimit)
	}
	return nil
}

// freePorts returns n distinct free loopback ports (all held open until
// each is known, so that none repeats).
func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}
