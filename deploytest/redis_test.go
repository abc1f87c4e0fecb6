package deploytest

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// The Redis every deployment runs: start.sh renders users.acl and starts
// redis-server with redis.conf. Kubernetes ships the directory as the
// ConfigMap redis-config, compose mounts it, and keystore/redis/acl_test.go
// starts a real redis-server from it and proves the ACL.
const shippedRedisDir = "k8s/base/redis"

var shippedRedisFiles = []string{"start.sh", "redis.conf", "users.acl"}

// The two users of users.acl.
const (
	redisUser        = "extauthz"
	redisDefaultUser = "default"
	passwordHolder   = "#EXTAUTHZ_PASSWORD_SHA256" // replaced by start.sh
	unknowableHolder = "#NO_PASSWORD_MATCHES"      // replaced by a random hash
)

// aclUser is one `user` line of an ACL file.
type aclUser struct {
	name  string
	rules []string
}

func (u aclUser) has(rule string) bool { return slices.Contains(u.rules, rule) }

// keyPatterns are the user's ~pattern rules, without the ~.
func (u aclUser) keyPatterns() []string {
	var out []string
	for _, r := range u.rules {
		if p, ok := strings.CutPrefix(r, "~"); ok {
			out = append(out, p)
		} else if p, ok := strings.CutPrefix(r, "%RW~"); ok {
			out = append(out, p)
		}
	}
	return out
}

// parseACL reads an ACL file: nothing but `user <name> <rules>` lines (Redis
// refuses anything else, comments included).
func parseACL(text string) (map[string]aclUser, error) {
	users := map[string]aclUser{}
	for i, line := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "user" {
			return nil, fmt.Errorf("users.acl:%d: %q is not a `user` line", i+1, line)
		}
		if _, dup := users[f[1]]; dup {
			return nil, fmt.Errorf("users.acl:%d: user %s twice", i+1, f[1])
		}
		users[f[1]] = aclUser{name: f[1], rules: f[2:]}
	}
	return users, nil
}

// redisConf reads redis.conf directives (the last one of a name wins, as in
// Redis), lower-cased names, values unquoted.
func redisConf(text string) map[string]string {
	conf := map[string]string{}
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, value, _ := strings.Cut(line, " ")
		conf[strings.ToLower(name)] = strings.Trim(strings.TrimSpace(value), `"`)
	}
	return conf
}

// redisSetting is what a server started with conf and then args runs with:
// Redis applies its arguments in order, so the last of a name wins.
func redisSetting(conf map[string]string, args []string, name, def string) string {
	return lastFlagValue(args, "--"+name, orDefault(conf[name], def))
}

// lastFlagValue is the value of the last flag of that name in args.
func lastFlagValue(args []string, flag, def string) string {
	for i := len(args) - 2; i >= 0; i-- {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return def
}

// redisBytes reads a redis.conf memory size: 1000 or 1k (1000), 1kb (1024),
// m, mb, g, gb likewise.
func redisBytes(v string) (int64, error) {
	v = strings.ToLower(strings.TrimSpace(v))
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"kb", 1 << 10}, {"mb", 1 << 20}, {"gb", 1 << 30}, {"k", 1e3}, {"m", 1e6}, {"g", 1e9}} {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("memory size %q", v)
	}
	return n * mult, nil
}

// shippedRedis reads the shipped files.
func shippedRedis(t *testing.T) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, f := range shippedRedisFiles {
		files[f] = readRepoFile(t, filepath.Join(shippedRedisDir, f))
	}
	return files
}

// redisFilesProblems checks the shipped Redis files themselves.
func redisFilesProblems(files map[string]string) []string {
	var ps []string
	bad := func(format string, args ...any) { ps = append(ps, fmt.Sprintf(format, args...)) }
	conf := redisConf(files["redis.conf"])
	if conf["appendonly"] != "yes" {
		bad("redis.conf: appendonly is not yes: created keys would not survive a restart")
	}
	if fs := orDefault(conf["appendfsync"], "everysec"); fs != "everysec" && fs != "always" {
		bad("redis.conf: appendfsync %s", fs)
	}
	if conf["maxmemory-policy"] != "noeviction" {
		bad("redis.conf: maxmemory-policy is %q, want noeviction: an evicted record is a valid key turned away, an evicted counter a reset limit", conf["maxmemory-policy"])
	}
	if _, ok := conf["dir"]; ok {
		bad("redis.conf: dir is set; give it on the command line (a dir line fails where the directory does not exist)")
	}
	if _, ok := conf["aclfile"]; ok {
		bad("redis.conf: aclfile is set; start.sh passes the ACL it renders")
	}
	for _, name := range []string{"requirepass", "user"} {
		if _, ok := conf[name]; ok {
			bad("redis.conf: %s is set; users are in users.acl", name)
		}
	}
	users, err := parseACL(files["users.acl"])
	if err != nil {
		bad("%v", err)
		return ps
	}
	if len(users) != 2 {
		bad("users.acl: users %v, want exactly %s and %s", sortedKeys(users), redisDefaultUser, redisUser)
	}
	for _, u := range users {
		if u.has("nopass") || u.has("allkeys") || u.has("~*") || u.has("allchannels") || u.has("&*") || u.has("+@all") || u.has("allcommands") {
			bad("users.acl: user %s has nopass, every key, every channel or every command", u.name)
		}
		for _, r := range u.rules {
			if strings.HasPrefix(r, ">") {
				bad("users.acl: user %s has a plaintext password", u.name)
			}
		}
		if len(u.rules) == 0 || u.rules[0] != "reset" {
			bad("users.acl: user %s does not start from reset, so its rights depend on Redis's defaults", u.name)
		}
	}
	def, ok := users[redisDefaultUser]
	if !ok {
		bad("users.acl: no default user: Redis would create it with nopass and every right")
	} else {
		// Redis replays the AOF's transactions as this user (see start.sh).
		if !def.has(unknowableHolder) || slices.ContainsFunc(def.rules, func(r string) bool { return strings.HasPrefix(r, "#") && r != unknowableHolder }) {
			bad("users.acl: the default user's only password must be %s, which start.sh makes unknowable", unknowableHolder)
		}
		if !def.has("-@dangerous") {
			bad("users.acl: the default user may run @dangerous commands")
		}
	}
	u, ok := users[redisUser]
	if !ok {
		bad("users.acl: no user %s", redisUser)
		return ps
	}
	if !u.has("on") || !u.has(passwordHolder) {
		bad("users.acl: user %s must be on, with the password %s", redisUser, passwordHolder)
	}
	if !u.has("-@all") {
		bad("users.acl: user %s does not start from -@all", redisUser)
	}
	for _, r := range u.rules {
		if strings.HasPrefix(r, "+@") || strings.HasPrefix(r, "&") {
			bad("users.acl: user %s has %s: grant single commands, no categories or channels", redisUser, r)
		}
	}
	if pats := u.keyPatterns(); len(pats) != 1 || !strings.HasSuffix(pats[0], ":*") || strings.ContainsAny(strings.TrimSuffix(pats[0], "*"), "*?[") {
		bad("users.acl: user %s has key patterns %v, want one prefix like ~extauthz:*", redisUser, pats)
	}
	start := files["start.sh"]
	for _, holder := range []string{passwordHolder, unknowableHolder} {
		if !strings.Contains(start, holder) {
			bad("start.sh does not replace %s", holder)
		}
	}
	if !strings.Contains(start, `--aclfile "$acl"`) || !strings.Contains(start, `"$here/redis.conf"`) {
		bad("start.sh does not start redis-server with redis.conf and the ACL it renders")
	}
	return ps
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// configMatchesACL: an extauthz config that logs in as the ACL's user and
// keeps its keys where that user may touch them.
func configMatchesACL(cfg *extauthzConfig, aclText string) []string {
	var ps []string
	users, err := parseACL(aclText)
	if err != nil {
		return []string{err.Error()}
	}
	r := cfg.Store.Redis
	u, ok := users[r.Username]
	if r.Username == "" || !ok || r.Username == redisDefaultUser {
		return []string{fmt.Sprintf("store.redis.username %q is not the ACL's user %s: nobody else can log in", r.Username, redisUser)}
	}
	prefix := orDefault(r.Prefix, "extauthz:")
	if !slices.ContainsFunc(u.keyPatterns(), func(p string) bool { return strings.HasPrefix(prefix, strings.TrimSuffix(p, "*")) }) {
		ps = append(ps, fmt.Sprintf("store.redis.prefix %q is outside the key patterns %v the ACL lets %s touch", prefix, u.keyPatterns(), r.Username))
	}
	if r.PasswordEnv == "" {
		ps = append(ps, "store.redis.password_env is not set: the ACL user needs its password")
	}
	return ps
}

func TestTheShippedRedisFiles(t *testing.T) {
	for _, p := range redisFilesProblems(shippedRedis(t)) {
		t.Error(p)
	}
}

func TestRedisFileProblemsAreCaught(t *testing.T) {
	tests := []struct {
		name, file, from, to, wantErr string
	}{
		{"AOF off", "redis.conf", "appendonly yes", "appendonly no", "appendonly"},
		{"an eviction policy", "redis.conf", "maxmemory-policy noeviction", "maxmemory-policy allkeys-lru", "noeviction"},
		{"a password in redis.conf", "redis.conf", "appendonly yes", "appendonly yes\nrequirepass x", "requirepass"},
		{"the default user with nopass", "users.acl", "user default reset on", "user default reset on nopass", "nopass"},
		{"the default user with a known password", "users.acl", "user default reset on #NO_PASSWORD_MATCHES", "user default reset on #EXTAUTHZ_PASSWORD_SHA256", "only password"},
		{"the default user missing", "users.acl", "user default reset on #NO_PASSWORD_MATCHES ~extauthz:* +@write -@dangerous\n", "", "no default user"},
		{"the default user allowed dangerous commands", "users.acl", " -@dangerous", "", "@dangerous"},
		{"every key", "users.acl", "user extauthz reset on #EXTAUTHZ_PASSWORD_SHA256 ~extauthz:*", "user extauthz reset on #EXTAUTHZ_PASSWORD_SHA256 ~*", "every key"},
		{"a category", "users.acl", " +ping", " +@read", "no categories"},
		{"a plaintext password", "users.acl", "#EXTAUTHZ_PASSWORD_SHA256", ">hunter2", "plaintext"},
		{"a comment, which Redis refuses", "users.acl", "user default", "# users\nuser default", "not a `user` line"},
		{"rights kept from Redis's defaults", "users.acl", "user extauthz reset on", "user extauthz on", "reset"},
		{"a second key pattern", "users.acl", "~extauthz:* -@all", "~extauthz:* ~other:* -@all", "key patterns"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := shippedRedis(t)
			if !strings.Contains(files[tt.file], tt.from) {
				t.Fatalf("%s no longer contains %q; update this case", tt.file, tt.from)
			}
			files[tt.file] = strings.Replace(files[tt.file], tt.from, tt.to, 1)
			ps := redisFilesProblems(files)
			if !slices.ContainsFunc(ps, func(p string) bool { return strings.Contains(p, tt.wantErr) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantErr, ps)
			}
		})
	}
}

// TestTheShippedRedisIsTheOneTheGoTestsProve: keystore/redis/acl_test.go
// starts redis-server from shippedRedisDir, so the ACL deployments run is the
// one whose every command is proved needed and sufficient.
func TestTheShippedRedisIsTheOneTheGoTestsProve(t *testing.T) {
	const testFile = "keystore/redis/acl_test.go"
	m := regexp.MustCompile(`(?m)^const deployedRedis = "([^"]+)"$`).FindStringSubmatch(readRepoFile(t, testFile))
	if m == nil {
		t.Fatalf("%s has no `const deployedRedis = \"...\"`", testFile)
	}
	if got := filepath.ToSlash(filepath.Join(filepath.Dir(testFile), m[1])); got != shippedRedisDir {
		t.Fatalf("%s starts Redis from %s, the deployments run %s", testFile, got, shippedRedisDir)
	}
	info, err := os.Stat(filepath.Join(repoRoot, shippedRedisDir, "start.sh"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode()&0o111 == 0 {
		t.Fatal("start.sh is not executable: the Go tests run it directly")
	}
}
