package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// The layers of extauthz point inward: the backends (Redis, SQLite) and the
// protocols (gRPC, Envoy's protos, HTTP) are adapters in subpackages of
// their own, and the domain packages link none of them. This test is here
// because this is the one package that wires every layer together; it asks
// the go command for each domain package's whole dependency graph (what a
// program importing it links), so an indirect import breaks it as surely as
// a direct one.
//
// TestDependenciesPointInward fails when a domain package's dependencies
// include one it must not have.
func TestDependenciesPointInward(t *testing.T) {
	const module = "github.com/extauthz/extauthz/"
	backends := []string{"github.com/redis/go-redis/", "modernc.org/sqlite"}
	for _, rule := range []struct {
		pkg       string
		forbidden []string
		why       string
	}{
		{"authz", backends, "the decision works over small interfaces; the stores and limiters behind them are adapters"},
		{"keystore", backends, "the key model; its backends are keystore/redis and keystore/sqlite"},
		{"config", backends, "the config file is read without a store"},
		{"ratelimit", backends, "the limiter contract and the local limiter; Redis is ratelimit/redis"},
		{"audit", backends, "audit events and the queue; the Redis stream is audit/redis"},
	} {
		t.Run(rule.pkg+" links no backend", func(t *testing.T) {
			for _, dep := range goListDeps(t, module+rule.pkg) {
				checkDep(t, rule.pkg, dep, rule.forbidden, rule.why)
			}
		})
	}
	// The decision is no protocol's: authz/envoy and authz/forwardauth are
	// its adapters.
	t.Run("authz speaks no protocol", func(t *testing.T) {
		for _, dep := range goListDeps(t, module+"authz") {
			checkDep(t, "authz", dep, []string{"google.golang.org/protobuf", "google.golang.org/grpc", "github.com/envoyproxy/go-control-plane", "net/http"},
				"the gRPC and HTTP adapters are authz/envoy and authz/forwardauth")
		}
	})
	// The domain does not read the config file: cmd/extauthz translates the
	// config into the decision's and the admin API's own types.
	for _, pkg := range []string{"authz", "admin"} {
		t.Run(pkg+" does not read the config file", func(t *testing.T) {
			for _, dep := range goListDeps(t, module+pkg) {
				checkDep(t, pkg, dep, []string{module + "config"}, "cmd/extauthz translates the config into its own types")
			}
		})
	}
}

// checkDep fails t when dep, a dependency of pkg, is or lies below one of
// forbidden.
func checkDep(t *testing.T, pkg, dep string, forbidden []string, why string) {
	t.Helper()
	for _, f := range forbidden {
		f = strings.TrimSuffix(f, "/")
		if dep == f || strings.HasPrefix(dep, f+"/") {
			t.Errorf("%s depends on %s: %s", pkg, dep, why)
		}
	}
}

// goListDeps returns the import paths of every package pkg depends on,
// directly or not (tests excluded), as `go list -deps` reports them.
func goListDeps(t *testing.T, pkg string) []string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is not on PATH: %v", err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command(goBin, "list", "-deps", "-json=ImportPath", pkg)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, stderr.String())
	}
	var deps []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p struct{ ImportPath string }
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list -deps %s: reading its output: %v", pkg, err)
		}
		if p.ImportPath != pkg {
			deps = append(deps, p.ImportPath)
		}
	}
	if len(deps) == 0 {
		t.Fatalf("go list -deps %s listed nothing", pkg)
	}
	return deps
}
