package deploytest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

const (
	extauthzConfigTarget = "/etc/extauthz/config.yaml"
	envoyConfigTarget    = "/etc/envoy/envoy.yaml"
)

// wantComposeServices are the services the demo walkthrough names.
var wantComposeServices = []string{"billing", "create-demo-key", "envoy", "extauthz", "redis", "upstream"}

// composeHardened are the services that run as they would in production,
// Envoy, which faces the clients, first among them: a read-only root, no
// capabilities, no new privileges, no root and none of the host's
// namespaces, as Kubernetes runs them (k8s/). The echo backends stand in for
// the user's own apps.
var composeHardened = []string{"create-demo-key", "envoy", "extauthz", "redis"}

// composeHardening checks one service of composeHardened. A service built
// from the repository's Dockerfile may leave its user to the image, whose
// USER dockerfile_test checks; one from another image names a user, as
// most (Envoy's and Redis's among them) start as root.
func composeHardening(name string, s types.ServiceConfig, bad func(string, ...any)) {
	if !s.ReadOnly {
		bad("service %s: read_only is not set: a process taken over could rewrite its own image", name)
	}
	if !slices.Contains(s.CapDrop, "ALL") || len(s.CapAdd) > 0 {
		bad("service %s: cap_drop must be [ALL] and cap_add empty", name)
	}
	if !slices.Contains(s.SecurityOpt, "no-new-privileges:true") && !slices.Contains(s.SecurityOpt, "no-new-privileges") {
		bad("service %s: security_opt lacks no-new-privileges:true", name)
	}
	if s.Privileged || s.NetworkMode == "host" || s.Pid == "host" || s.Ipc == "host" || s.UserNSMode == "host" {
		bad("service %s: privileged, or shares a namespace of the host", name)
	}
	user, group, _ := strings.Cut(s.User, ":")
	if user == "0" || user == "root" || (user == "" && s.Build == nil) {
		bad("service %s: runs as root (user %q): name a user, as the image's entrypoint would otherwise start as root", name, s.User)
	} else if s.User != "" && (group == "" || group == "0" || group == "root") {
		bad("service %s: user %q: name a group other than 0 too (user:group), or the process runs in the root group", name, s.User)
	}
}

// backends are the compose services Envoy forwards to, each an Envoy cluster
// of its own name.
var backends = []string{"upstream", "billing"}

// loadCompose loads docker-compose.yml the way `docker compose` does (schema
// validation, interpolation, path resolution), with env as the only
// environment, so ${VAR:-default} resolves to the file's defaults.
func loadCompose(t *testing.T, env ...string) *types.Project {
	t.Helper()
	p, err := loadComposeFile(t, filepath.Join(repoRoot, "docker-compose.yml"), env...)
	if err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	return p
}

// loadComposeFile loads a compose file with the repository as the project
// directory, so relative paths resolve as they do for the real file.
func loadComposeFile(t *testing.T, file string, env ...string) (*types.Project, error) {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	opts, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithWorkingDirectory(root),
		cli.WithEnv(env),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

// TestComposeLoaderIsStrict: compose-go validates against the Compose schema, so
// a misspelt attribute fails to load, as it would for `docker compose`.
func TestComposeLoaderIsStrict(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(repoRoot, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{
		"    read_only: true\n":                "    readonly: true\n",
		"    depends_on:\n":                    "    depends-on:\n",
		"        condition: service_healthy\n": "        condition: healthy\n",
	} {
		if !strings.Contains(string(good), from) {
			t.Fatalf("docker-compose.yml no longer contains %q; update this case", from)
		}
		file := filepath.Join(t.TempDir(), "docker-compose.yml")
		if err := os.WriteFile(file, []byte(strings.Replace(string(good), from, to, 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := loadComposeFile(t, file); err == nil {
			t.Errorf("a compose file with %q loaded without error", strings.TrimSpace(to))
		}
	}
}

func TestComposeMatchesEnvoyAndExtauthzConfigs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		env   []string
		envoy string
	}{
		{"gRPC mode (default)", nil, "envoy/envoy.yaml"},
		{"HTTP mode", []string{"ENVOY_CONFIG=./envoy/envoy-http.yaml"}, "envoy/envoy-http.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := loadCompose(t, tc.env...)
			if got := bindSource(p.Services["envoy"], envoyConfigTarget); !strings.HasSuffix(got, filepath.FromSlash(tc.envoy)) {
				t.Fatalf("envoy mounts %q, want %s", got, tc.envoy)
			}
			for _, problem := range composeProblems(t, p) {
				t.Error(problem)
			}
		})
	}
}

// TestComposeProblemsAreCaught breaks a loaded project in the ways that would
// break the demo, and expects composeProblems to say so.
func TestComposeProblemsAreCaught(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(p *types.Project)
		wantErr string
	}{
		{"Envoy with a writable root", func(p *types.Project) {
			setService(p, "envoy", func(s *types.ServiceConfig) { s.ReadOnly = false })
		}, "service envoy: read_only"},
		{"Envoy keeping its capabilities", func(p *types.Project) {
			setService(p, "envoy", func(s *types.ServiceConfig) { s.CapDrop = nil })
		}, "service envoy: cap_drop"},
		{"Envoy as root", func(p *types.Project) {
			setService(p, "envoy", func(s *types.ServiceConfig) { s.User = "" })
		}, "service envoy: runs as root"},
		{"extauthz killed 10 s after docker compose stop", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { s.StopGracePeriod = nil })
		}, "stop_grace_period <nil> is shorter"},
		{"Redis without a memory limit", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.MemLimit = 0 })
		}, "redis: no memory limit"},
		{"Redis's maxmemory at its memory limit", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Command = append(s.Command, "--maxmemory", "1gb") })
		}, "three quarters"},
		{"extauthz without a memory limit", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { s.MemLimit = 0 })
		}, "extauthz: no memory limit"},
		{"extauthz's GOMEMLIMIT at its memory limit", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { s.Environment["GOMEMLIMIT"] = ptr("512MiB") })
		}, "keep it at 80–95%"},
		{"Redis in the root group", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.User = "999" })
		}, "service redis: user \"999\": name a group"},
		{"Redis gaining privileges", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.SecurityOpt = nil })
		}, "service redis: security_opt"},
		{"extauthz on the host's network", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { s.NetworkMode = "host" })
		}, "service extauthz: privileged"},
		{"Redis without AOF", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Command = append(s.Command, "--appendonly", "no") })
		}, "appendonly is not yes"},
		{"Redis evicting keys", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Command = append(s.Command, "--maxmemory-policy", "allkeys-lru") })
		}, "maxmemory-policy allkeys-lru"},
		{"Redis started without the shipped script", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Command = types.ShellCommand{"redis-server", "--appendonly", "yes"} })
		}, "the ACL would not be rendered"},
		{"Redis running files other than the proved ones", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { bindOrVolume(*s, "/etc/redis").Source = "/tmp/redis" })
		}, "the files the Go tests prove"},
		{"Redis without a password", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Environment["REDIS_PASSWORD"] = ptr("") })
		}, "REDIS_PASSWORD is empty"},
		{"the server with another Redis password", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { s.Environment["REDIS_PASSWORD"] = ptr("another-password-16+") })
		}, "not the password Redis was started with"},
		{"a Redis healthcheck as the default user", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.HealthCheck.Test = types.HealthCheckTest{"CMD", "redis-cli", "ping"} })
		}, "does not log in"},
		{"the rendered ACL on disk", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Tmpfs = nil })
		}, "is not a tmpfs"},
		{"the upstream on Redis's network", func(p *types.Project) {
			setService(p, "upstream", func(s *types.ServiceConfig) { s.Networks["store"] = nil })
		}, "upstream shares network [store] with redis"},
		{"Envoy on Redis's network", func(p *types.Project) {
			setService(p, "envoy", func(s *types.ServiceConfig) { s.Networks["store"] = nil })
		}, "envoy shares network [store] with redis"},
		{"the billing backend on Redis's network", func(p *types.Project) {
			setService(p, "billing", func(s *types.ServiceConfig) { s.Networks["store"] = nil })
		}, "billing shares network [store] with redis"},
		{"the billing backend on another port than Envoy's billing cluster", func(p *types.Project) {
			setService(p, "billing", func(s *types.ServiceConfig) { s.Environment["HTTP_PORT"] = ptr("8080") })
		}, "envoy cluster billing"},
		{"the two backends on one network", func(p *types.Project) {
			setService(p, "upstream", func(s *types.ServiceConfig) {
				for n := range p.Services["billing"].Networks {
					s.Networks[n] = nil
				}
			})
		}, "upstream shares network"},
		{"the upstream next to extauthz", func(p *types.Project) {
			setService(p, "upstream", func(s *types.ServiceConfig) { s.Networks["edge"] = nil })
		}, "upstream shares network [edge] with extauthz"},
		{"a service on the default network", func(p *types.Project) {
			setService(p, "upstream", func(s *types.ServiceConfig) { s.Networks = nil })
		}, "on the default network"},
		{"Redis's network open to the outside", func(p *types.Project) {
			n := p.Networks["store"]
			n.Internal = false
			p.Networks["store"] = n
		}, "not internal"},
		{"extauthz cut off from Redis", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { delete(s.Networks, "store") })
		}, "extauthz shares no network with redis"},
		{"the echo backend on another port than Envoy's upstream cluster", func(p *types.Project) {
			setService(p, "upstream", func(s *types.ServiceConfig) { s.Environment["HTTP_PORT"] = ptr("8080") })
		}, "upstream"},
		{"the key creator with another pepper than the server", func(p *types.Project) {
			setService(p, "create-demo-key", func(s *types.ServiceConfig) { s.Environment["EXTAUTHZ_PEPPER"] = ptr("other") })
		}, "EXTAUTHZ_PEPPER"},
		{"the admin API published on every interface", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) { s.Ports[0].HostIP = "" })
		}, "admin"},
		{"a service renamed away from the hostname the configs use", func(p *types.Project) {
			s := p.Services["upstream"]
			delete(p.Services, "upstream")
			s.Name = "backend"
			p.Services["backend"] = s
			setService(p, "envoy", func(s *types.ServiceConfig) { delete(s.DependsOn, "upstream") })
		}, `"upstream"`},
		{"waiting for a healthy service that has no healthcheck", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.HealthCheck = nil })
		}, "no healthcheck"},
		{"an image without a pinned tag", func(p *types.Project) {
			setService(p, "redis", func(s *types.ServiceConfig) { s.Image = "redis" })
		}, "pinned"},
		{"the server healthcheck not using the binary", func(p *types.Project) {
			setService(p, "extauthz", func(s *types.ServiceConfig) {
				s.HealthCheck.Test = types.HealthCheckTest{"CMD", "curl", "-f", "http://localhost:9002/healthz"}
			})
		}, "healthcheck"},
		{"the key creator not printing JSON", func(p *types.Project) {
			setService(p, "create-demo-key", func(s *types.ServiceConfig) {
				s.Command = types.ShellCommand{"keys", "create", "--name", "demo", "--perm", "read:users"}
			})
		}, "--json"},
		{"the Envoy admin published", func(p *types.Project) {
			setService(p, "envoy", func(s *types.ServiceConfig) {
				s.Ports = append(s.Ports, types.ServicePortConfig{Target: 9901, Published: "9901", Protocol: "tcp"})
			})
		}, "9901"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := loadCompose(t)
			if problems := composeProblems(t, p); len(problems) > 0 {
				t.Fatalf("the unmutated compose file has problems: %v", problems)
			}
			tt.mutate(p)
			problems := composeProblems(t, p)
			if !slices.ContainsFunc(problems, func(s string) bool { return strings.Contains(s, tt.wantErr) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantErr, problems)
			}
		})
	}
}

// The virtual hosts of the Envoy config and the policies of the extauthz
// config must agree: each names a policy the config has, once.
func TestEnvoyVirtualHostsNameThePoliciesOfTheConfig(t *testing.T) {
	cfg, err := parseExtauthzConfig([]byte(readRepoFile(t, "deploy/compose/extauthz.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Policies) < 2 {
		t.Fatalf("the compose config has %d named policies; the demo shows two", len(cfg.Policies))
	}
	ef := loadEnvoyFile(t, "envoy/envoy.yaml")
	if problems := vhostPolicyProblems(ef, cfg); len(problems) > 0 {
		t.Fatalf("envoy/envoy.yaml: %v", problems)
	}
	if len(ef.vhostContext) < 2 {
		t.Fatalf("envoy/envoy.yaml has %d virtual hosts; the demo shows two on two policies", len(ef.vhostContext))
	}
	http := loadEnvoyFile(t, "envoy/envoy-http.yaml")
	if problems := authPathProblems(http.httpAuthz.pathPrefix, cfg); len(problems) > 0 {
		t.Fatalf("envoy/envoy-http.yaml: %v", problems)
	}

	for _, tt := range []struct {
		name   string
		vhosts map[string]map[string]string
		want   string
	}{
		{"a virtual host naming a policy the config lacks", map[string]map[string]string{"a": {"policy": "payroll"}}, "select no policy"},
		{"a virtual host naming none under unselected: deny", map[string]map[string]string{"a": nil}, "names no policy"},
		{"two virtual hosts on one policy", map[string]map[string]string{"a": {"policy": "users"}, "b": {"policy": "users"}}, "both select policy users"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			problems := vhostPolicyProblems(&envoyFile{vhostContext: tt.vhosts}, cfg)
			if !slices.ContainsFunc(problems, func(s string) bool { return strings.Contains(s, tt.want) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.want, problems)
			}
		})
	}
	for _, bad := range []string{"/authz", "/authz/_policy/payroll", "/other/_policy/users"} {
		if len(authPathProblems(bad, cfg)) == 0 {
			t.Errorf("the auth path %q passes", bad)
		}
	}
}

func setService(p *types.Project, name string, f func(*types.ServiceConfig)) {
	s := p.Services[name]
	f(&s)
	p.Services[name] = s
}

func ptr[T any](v T) *T { return &v }

// composeProblems cross-checks the compose project against the files it mounts.
func composeProblems(t *testing.T, p *types.Project) []string {
	t.Helper()
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	var names []string
	for n := range p.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	if !slices.Equal(names, wantComposeServices) {
		bad("services are %v, want %v", names, wantComposeServices)
	}
	isService := func(host string) bool { _, ok := p.Services[host]; return ok }

	for name, s := range p.Services {
		if s.Build == nil && !pinnedImage(s.Image) {
			bad("service %s: image %q is not pinned to a tag", name, s.Image)
		}
		for dep, d := range s.DependsOn {
			target, ok := p.Services[dep]
			if !ok {
				bad("service %s depends on %q, which does not exist", name, dep)
				continue
			}
			if d.Condition == types.ServiceConditionHealthy && (target.HealthCheck == nil || len(target.HealthCheck.Test) == 0 || target.HealthCheck.Disable) {
				bad("service %s waits for %s to be healthy, but %s has no healthcheck", name, dep, dep)
			}
		}
	}

	for _, name := range composeHardened {
		if s, ok := p.Services[name]; ok {
			composeHardening(name, s, bad)
		}
	}

	// extauthz: built here, configured by the mounted file.
	ext := p.Services["extauthz"]
	if ext.Build == nil || filepath.Clean(ext.Build.Context) != filepath.Clean(p.WorkingDir) {
		bad("extauthz must be built from the repository root")
	} else if _, err := os.Stat(filepath.Join(ext.Build.Context, orDefault(ext.Build.Dockerfile, "Dockerfile"))); err != nil {
		bad("extauthz: %v", err)
	}
	cfgPath := bindSource(ext, extauthzConfigTarget)
	if cfgPath == "" {
		bad("extauthz does not mount a config at %s", extauthzConfigTarget)
		return problems
	}
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		bad("extauthz config: %v", err)
		return problems
	}
	cfg, err := parseExtauthzConfig(data)
	if err != nil {
		bad("%s: %v", cfgPath, err)
		return problems
	}
	if err := noSecretsInConfig(cfg); err != nil {
		bad("%s: %v", cfgPath, err)
	}
	if got := envValue(ext, "EXTAUTHZ_CONFIG"); got != extauthzConfigTarget {
		bad("extauthz: EXTAUTHZ_CONFIG is %q, want the mounted %s (healthcheck reads it)", got, extauthzConfigTarget)
	}
	if !slices.Equal(ext.Command, types.ShellCommand{"serve", "--config", extauthzConfigTarget}) {
		bad("extauthz: command %q does not serve the mounted config", ext.Command)
	}
	if hc := ext.HealthCheck; hc == nil || !slices.Equal(hc.Test, types.HealthCheckTest{"CMD", "/extauthz", "healthcheck"}) {
		bad("extauthz: the healthcheck must run the binary's own `healthcheck` (no curl in the image)")
	}
	// docker compose stop kills after 10 s unless told otherwise; the
	// server's stop takes longer (checkGraceOutlastsStop).
	stop := serverStopBound + defaultRedisTimeout
	if d, err := time.ParseDuration(cfg.Store.Redis.Timeout); err == nil {
		stop = serverStopBound + d
	}
	if ext.StopGracePeriod == nil || time.Duration(*ext.StopGracePeriod) < stop {
		bad("extauthz: stop_grace_period %v is shorter than the server's stop (up to %v): docker compose stop would kill it before its audit events are written", ext.StopGracePeriod, stop)
	}
	// As in Kubernetes (checkGoMemLimit): a memory limit, and GOMEMLIMIT at
	// 80–95% of it.
	if limit := composeMemLimit(ext); limit == 0 {
		bad("extauthz: no memory limit (mem_limit)")
	} else if mib, ok := memLimitMiB(envValue(ext, "GOMEMLIMIT")); !ok {
		bad("extauthz: GOMEMLIMIT %q is not N MiB", envValue(ext, "GOMEMLIMIT"))
	} else if pct := (mib << 20) * 100 / limit; pct < 80 || pct > 95 {
		bad("extauthz: GOMEMLIMIT %s is %d%% of the memory limit %d; keep it at 80–95%%", envValue(ext, "GOMEMLIMIT"), pct, limit)
	}
	for _, env := range []string{cfg.Hashing.PepperEnv, cfg.Store.Redis.PasswordEnv} {
		if _, ok := ext.Environment[env]; env != "" && !ok {
			bad("extauthz: the config reads $%s, which the service does not set", env)
		}
	}
	_, adminPort := hostPort(t, cfg.adminListen())
	for _, port := range ext.Ports {
		if int(port.Target) == adminPort && !isLoopback(port.HostIP) {
			bad("extauthz: the admin port %d is published on %q; publish it on 127.0.0.1 only", adminPort, orDefault(port.HostIP, "every interface"))
		}
	}

	// Redis: the host and port of store.redis.url, running the shipped files.
	if cfg.Store.Backend != "redis" {
		bad("extauthz config: store.backend is %q; the compose demo runs Redis", cfg.Store.Backend)
	}
	problems = append(problems, composeRedisProblems(t, p, cfg)...)
	problems = append(problems, composeNetworkProblems(p)...)

	// Envoy: the mounted config's clusters must be these services and ports.
	envoy := p.Services["envoy"]
	envoyPath := bindSource(envoy, envoyConfigTarget)
	if envoyPath == "" {
		bad("envoy does not mount a config at %s", envoyConfigTarget)
		return problems
	}
	data, err = os.ReadFile(envoyPath)
	if err != nil {
		bad("envoy config: %v", err)
		return problems
	}
	ef := parseEnvoyFile(t, data)
	if !regexp.MustCompile(`^envoyproxy/envoy:v1\.3[0-9]`).MatchString(envoy.Image) {
		bad("envoy: image %q is not an official envoyproxy/envoy v1.3x", envoy.Image)
	}
	for cluster, eps := range ef.clusters {
		for _, e := range eps {
			if !isService(e.host) {
				bad("envoy cluster %s sends to %q, which is not a compose service", cluster, e.host)
			}
		}
	}
	wantAuthzPort := cfg.grpcListen()
	if ef.httpAuthz != nil {
		wantAuthzPort = cfg.httpListen()
		problems = append(problems, authPathProblems(ef.httpAuthz.pathPrefix, cfg)...)
		problems = append(problems, unstrippableSourceProblems(cfg)...)
	} else {
		problems = append(problems, vhostPolicyProblems(ef, cfg)...)
	}
	_, authzPort := hostPort(t, wantAuthzPort)
	for _, e := range ef.authzEndpoints(t) {
		if e.host != "extauthz" || e.port != authzPort {
			bad("envoy sends ext_authz to %s, extauthz listens on extauthz:%d", e, authzPort)
		}
	}
	for _, b := range backends {
		port := envValue(p.Services[b], "HTTP_PORT")
		for _, e := range ef.clusters[b] {
			if e.host != b || strconv.Itoa(e.port) != port {
				bad("envoy cluster %s sends to %s, the %s service listens on %s:%s", b, e, b, b, port)
			}
		}
		if b == "upstream" && len(ef.clusters[b]) == 0 {
			bad("envoy has no cluster named upstream")
		}
	}
	for _, port := range envoy.Ports {
		if port.Target == 9901 {
			bad("envoy: the admin port 9901 is published; it has no authentication")
		} else if !slices.Contains(ef.listenPorts, int(port.Target)) {
			bad("envoy: port %d is published but no listener uses it", port.Target)
		}
	}
	if d, ok := envoy.DependsOn["extauthz"]; !ok || d.Condition != types.ServiceConditionHealthy {
		bad("envoy must wait for extauthz to be healthy (it fails closed with 503 until then)")
	}

	// create-demo-key: same image, config and secrets as the server, one shot.
	ck := p.Services["create-demo-key"]
	if ck.Image != ext.Image || ck.Image == "" {
		bad("create-demo-key runs image %q, extauthz %q: they must be the same", ck.Image, ext.Image)
	}
	if len(ck.Command) < 2 || ck.Command[0] != "keys" || ck.Command[1] != "create" {
		bad("create-demo-key: command %q is not `keys create`", ck.Command)
	}
	for flag, want := range map[string]string{"--name": "demo", "--perm": "read:users"} {
		if got := flagValue(ck.Command, flag, ""); got != want {
			bad("create-demo-key: %s is %q, want %q", flag, got, want)
		}
	}
	if !slices.Contains(ck.Command, "--json") {
		bad("create-demo-key: no --json, so the walkthrough can't read the key")
	}
	for _, env := range []string{"EXTAUTHZ_CONFIG", "EXTAUTHZ_PEPPER", "REDIS_PASSWORD"} {
		if envValue(ck, env) != envValue(ext, env) {
			bad("create-demo-key: %s differs from the server's: the key would not be found", env)
		}
	}
	if bindSource(ck, extauthzConfigTarget) != cfgPath {
		bad("create-demo-key mounts another config than the server")
	}
	if d, ok := ck.DependsOn["redis"]; !ok || d.Condition != types.ServiceConditionHealthy {
		bad("create-demo-key must wait for redis to be healthy")
	}
	if ck.Restart != "" && ck.Restart != types.RestartPolicyNo {
		bad("create-demo-key restarts (%q): every restart would make another key", ck.Restart)
	}
	return problems
}

// unstrippableSourceProblems: behind an HTTP-mode proxy (Envoy's
// http_service here) nothing can take a query or cookie credential off the
// request: an HTTP auth answer has no query_parameters_to_remove and no cookie
// rewrite, so a key sent as ?api_key= or in a cookie is allowed and then
// handed to the upstream as it came. Every source of the config, the default
// policy's and each named policy's, must be a header.
func unstrippableSourceProblems(cfg *extauthzConfig) []string {
	var problems []string
	check := func(where, query, cookie string) {
		switch {
		case query != "":
			problems = append(problems, fmt.Sprintf("%s: source {query: %s} in HTTP mode: the proxy cannot remove it, so the upstream gets the key", where, query))
		case cookie != "":
			problems = append(problems, fmt.Sprintf("%s: source {cookie: %s} in HTTP mode: the proxy cannot remove it, so the upstream gets the key", where, cookie))
		}
	}
	for i, s := range cfg.Sources {
		check(fmt.Sprintf("sources[%d]", i), s.Query, s.Cookie)
	}
	for _, p := range cfg.Policies {
		for i, s := range p.Sources {
			check(fmt.Sprintf("policy %s: sources[%d]", p.Name, i), s.Query, s.Cookie)
		}
	}
	return problems
}

// vhostPolicyProblems: with named policies, each of Envoy's virtual hosts
// names one in its context_extensions that the extauthz config defines, and
// no two name the same (two services on one policy is a copy-paste slip);
// under unselected: deny a virtual host naming none would answer every
// request 403 no_policy.
func vhostPolicyProblems(ef *envoyFile, cfg *extauthzConfig) []string {
	var problems []string
	if len(cfg.Policies) == 0 {
		return nil
	}
	seen := map[string]string{}
	for vh, ext := range ef.vhostContext {
		if len(ext) == 0 {
			if cfg.Unselected == "deny" {
				problems = append(problems, fmt.Sprintf("envoy virtual host %s names no policy in context_extensions; under unselected: deny it answers 403 no_policy", vh))
			}
			continue
		}
		name := cfg.policyByContext(ext)
		if name == "" {
			problems = append(problems, fmt.Sprintf("envoy virtual host %s sets context_extensions %v, which select no policy of the extauthz config (403 no_policy)", vh, ext))
			continue
		}
		if other, dup := seen[name]; dup {
			problems = append(problems, fmt.Sprintf("envoy virtual hosts %s and %s both select policy %s", other, vh, name))
		}
		seen[name] = vh
	}
	return problems
}

// authPathProblems: an HTTP-mode auth path is http_mode.prefix, and names a
// policy of the config when it has named policies (without one every
// decision is 403 no_policy).
func authPathProblems(pathPrefix string, cfg *extauthzConfig) []string {
	if len(cfg.Policies) == 0 {
		if pathPrefix != cfg.httpPrefix() {
			return []string{fmt.Sprintf("envoy http_service path_prefix %q, extauthz http_mode.prefix %q", pathPrefix, cfg.httpPrefix())}
		}
		return nil
	}
	name, ok := strings.CutPrefix(pathPrefix, cfg.httpPrefix()+"/_policy/")
	if !ok || !cfg.policyNamed(name) {
		return []string{fmt.Sprintf("envoy http_service path_prefix %q names no policy of the extauthz config: want %s/_policy/<name>", pathPrefix, cfg.httpPrefix())}
	}
	return nil
}

// composeRedisProblems: Redis runs k8s/base/redis (start.sh, redis.conf and
// the ACL the Go tests prove) on a named volume, with the password the
// extauthz services log in with, and extauthz logs in as the ACL's user.
func composeRedisProblems(t *testing.T, p *types.Project, cfg *extauthzConfig) []string {
	t.Helper()
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	redis := p.Services["redis"]
	const startScript = "/etc/redis/start.sh"
	if len(redis.Command) < 2 || redis.Command[0] != "sh" || redis.Command[1] != startScript {
		bad("redis: command %q does not run %s: the ACL would not be rendered", redis.Command, startScript)
		return problems
	}
	args := redis.Command[2:]
	dir := bindSource(redis, path.Dir(startScript))
	if want, _ := filepath.Abs(filepath.Join(repoRoot, shippedRedisDir)); dir != want {
		bad("redis: %s is %q, want %s, the files the Go tests prove", path.Dir(startScript), dir, shippedRedisDir)
		return problems
	}
	if v := bindOrVolume(redis, path.Dir(startScript)); !v.ReadOnly {
		bad("redis: %s is mounted writable", path.Dir(startScript))
	}
	conf := redisConf(readRepoFile(t, path.Join(shippedRedisDir, "redis.conf")))
	redisHost, redisPort := urlHostPort(t, cfg.Store.Redis.URL, 6379)
	if _, ok := p.Services[redisHost]; !ok {
		bad("store.redis.url host %q is not a compose service", redisHost)
	}
	if want := redisSetting(conf, args, "port", "6379"); strconv.Itoa(redisPort) != want {
		bad("store.redis.url port %d, Redis listens on %s", redisPort, want)
	}
	if redisSetting(conf, args, "appendonly", "no") != "yes" {
		bad("redis: appendonly is not yes: created keys would not survive a restart")
	}
	if pol := redisSetting(conf, args, "maxmemory-policy", "noeviction"); pol != "noeviction" {
		bad("redis: maxmemory-policy %s: Redis may evict key records", pol)
	}
	// As in Kubernetes (checkRedis): a memory limit, and maxmemory well below
	// it, so that Redis refuses writes rather than take the host's memory.
	if limit := composeMemLimit(redis); limit == 0 {
		bad("redis: no memory limit (mem_limit): with noeviction and no maxmemory it grows until the host runs out")
	} else if mm, err := redisBytes(redisSetting(conf, args, "maxmemory", "0")); err != nil || mm == 0 {
		bad("redis: no maxmemory: at its memory limit Redis would be killed rather than refuse writes")
	} else if mm > limit*3/4 {
		bad("redis: maxmemory %d bytes is over three quarters of the memory limit %d (an AOF rewrite forks)", mm, limit)
	}
	if d := lastFlagValue(args, "--dir", ""); d != "/data" {
		bad("redis: --dir is %q, want /data, the volume", d)
	}
	if v := bindOrVolume(redis, "/data"); v == nil || v.Type != types.VolumeTypeVolume {
		bad("redis: /data must be a named volume")
	} else if _, ok := p.Volumes[v.Source]; !ok {
		bad("redis: volume %q is not declared", v.Source)
	}
	if !slices.ContainsFunc(redis.Tmpfs, func(m string) bool { return strings.HasPrefix(m, "/run/redis:") || m == "/run/redis" }) {
		bad("redis: /run/redis, where start.sh renders the ACL, is not a tmpfs")
	}
	if hc := redis.HealthCheck; hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "--user "+redisUser) {
		bad("redis: the healthcheck does not log in as %s (the default user can do nothing)", redisUser)
	}
	pw := envValue(redis, "REDIS_PASSWORD")
	if len(pw) < 16 {
		bad("redis: REDIS_PASSWORD is empty or shorter than 16 characters: start.sh refuses it")
	}
	for _, name := range []string{"extauthz", "create-demo-key"} {
		if envValue(p.Services[name], cfg.Store.Redis.PasswordEnv) != pw {
			bad("%s: $%s is not the password Redis was started with", name, cfg.Store.Redis.PasswordEnv)
		}
	}
	for _, ps := range configMatchesACL(cfg, readRepoFile(t, path.Join(shippedRedisDir, "users.acl"))) {
		bad("extauthz config: %s", ps)
	}
	return problems
}

// composeNetworkProblems: each service shares a network with the ones it
// talks to and with no other; Redis's networks are internal.
func composeNetworkProblems(p *types.Project) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	shared := func(a, b string) []string {
		var out []string
		for n := range p.Services[a].Networks {
			if _, ok := p.Services[b].Networks[n]; ok {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out
	}
	for name, s := range p.Services {
		if _, ok := s.Networks["default"]; ok || len(s.Networks) == 0 {
			bad("service %s is on the default network, which every service without networks joins", name)
		}
	}
	talks := [][2]string{{"envoy", "extauthz"}, {"extauthz", "redis"}, {"create-demo-key", "redis"}}
	apart := [][2]string{{"envoy", "redis"}}
	for i, b := range backends {
		talks = append(talks, [2]string{"envoy", b})
		apart = append(apart, [2]string{b, "redis"}, [2]string{b, "extauthz"}, [2]string{b, "create-demo-key"})
		// Each backend is reached through Envoy only: one that shared a
		// network with another could call it directly, with no key and under
		// no policy (the users API, compromised, paying invoices on billing).
		for _, other := range backends[i+1:] {
			apart = append(apart, [2]string{b, other})
		}
	}
	for _, talk := range talks {
		if len(shared(talk[0], talk[1])) == 0 {
			bad("%s shares no network with %s, which it talks to", talk[0], talk[1])
		}
	}
	for _, apart := range apart {
		if n := shared(apart[0], apart[1]); len(n) > 0 {
			bad("%s shares network %v with %s: it could reach it", apart[0], n, apart[1])
		}
	}
	for n := range p.Services["redis"].Networks {
		if !p.Networks[n].Internal {
			bad("redis is on network %s, which is not internal", n)
		}
	}
	return problems
}

// pinnedImage: a tag other than latest, or a digest.
func pinnedImage(image string) bool {
	if strings.Contains(image, "@sha256:") {
		return true
	}
	i := strings.LastIndex(image, ":")
	if i < 0 || strings.Contains(image[i:], "/") {
		return false
	}
	return image[i+1:] != "latest"
}

// composeMemLimit is a service's memory limit in bytes (mem_limit, or
// deploy.resources.limits.memory), 0 when it has none.
func composeMemLimit(s types.ServiceConfig) int64 {
	if s.MemLimit > 0 {
		return int64(s.MemLimit)
	}
	if s.Deploy != nil && s.Deploy.Resources.Limits != nil {
		return int64(s.Deploy.Resources.Limits.MemoryBytes)
	}
	return 0
}

func bindOrVolume(s types.ServiceConfig, target string) *types.ServiceVolumeConfig {
	for i := range s.Volumes {
		if s.Volumes[i].Target == target {
			return &s.Volumes[i]
		}
	}
	return nil
}

// bindSource is the host path bound at target, "" if none.
func bindSource(s types.ServiceConfig, target string) string {
	v := bindOrVolume(s, target)
	if v == nil || v.Type != types.VolumeTypeBind {
		return ""
	}
	return v.Source
}

func envValue(s types.ServiceConfig, name string) string {
	if v := s.Environment[name]; v != nil {
		return *v
	}
	return ""
}

// flagValue returns the word after flag in args, or def.
func flagValue(args []string, flag, def string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return def
}

// urlHostPort reads a redis:// URL's host and port.
func urlHostPort(t *testing.T, raw string, defPort int) (string, int) {
	t.Helper()
	rest := strings.TrimPrefix(strings.TrimPrefix(raw, "rediss://"), "redis://")
	authority, _, _ := strings.Cut(rest, "/")
	if !strings.Contains(authority, ":") {
		return authority, defPort
	}
	return hostPort(t, authority)
}

// TestComposeSecretsFileIsIgnored: docker-compose.yml tells the reader to put
// EXTAUTHZ_PEPPER and REDIS_PASSWORD in a .env file next to it, which is the
// repository's root; git must never offer to commit that file.
func TestComposeSecretsFileIsIgnored(t *testing.T) {
	if !strings.Contains(readRepoFile(t, "docker-compose.yml"), " .env file") {
		t.Fatal("docker-compose.yml no longer names a .env file; update this test")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		t.Skip("no git")
	}
	if err := exec.Command(git, "-C", repoRoot, "rev-parse", "--git-dir").Run(); err != nil {
		t.Skip("not a git checkout")
	}
	for _, name := range []string{".env", "prod.env"} {
		if err := exec.Command(git, "-C", repoRoot, "check-ignore", "-q", "--no-index", name).Run(); err != nil {
			t.Errorf("git does not ignore %s, where the compose demo's secrets go: %v", name, err)
		}
	}
}
