package deploytest

import (
	"encoding/json"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper-cased: FROM, RUN, COPY, ...
	args string
}

// stage is a FROM and what follows it.
type stage struct {
	image, name string
	insts       []instruction
}

// parseDockerfile splits a Dockerfile into stages of instructions. It handles
// what this repository uses (comments, `\` continuations, exec and shell forms);
// heredocs and a custom escape character are refused rather than misread.
func parseDockerfile(src string) ([]stage, error) {
	var insts []instruction
	var cur *instruction
	for i, raw := range strings.Split(src, "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "#") {
			if strings.HasPrefix(strings.ToLower(strings.ReplaceAll(line, " ", "")), "#escape=") {
				return nil, fmt.Errorf("line %d: the escape directive is not supported here", i+1)
			}
			continue // comments may sit inside a continued instruction, too
		}
		if line == "" && cur == nil {
			continue
		}
		cont := strings.HasSuffix(line, "\\")
		line = strings.TrimSuffix(line, "\\")
		if cur == nil {
			cmd, args, _ := strings.Cut(line, " ")
			cur = &instruction{line: i + 1, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		} else {
			cur.args += " " + strings.TrimSpace(line)
		}
		if strings.Contains(cur.args, "<<") && (cur.cmd == "RUN" || cur.cmd == "COPY") {
			return nil, fmt.Errorf("line %d: heredocs are not supported here", cur.line)
		}
		if !cont {
			cur.args = strings.TrimSpace(cur.args)
			insts = append(insts, *cur)
			cur = nil
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("line %d: the file ends inside a continued instruction", cur.line)
	}
	var stages []stage
	for _, in := range insts {
		if in.cmd == "FROM" {
			words := strings.Fields(in.args)
			words = slices.DeleteFunc(words, func(w string) bool { return strings.HasPrefix(w, "--") })
			if len(words) == 0 {
				return nil, fmt.Errorf("line %d: FROM without an image", in.line)
			}
			s := stage{image: words[0]}
			if len(words) == 3 && strings.EqualFold(words[1], "AS") {
				s.name = words[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				continue // ARGs before the first FROM are global
			}
			return nil, fmt.Errorf("line %d: %s before FROM", in.line, in.cmd)
		}
		stages[len(stages)-1].insts = append(stages[len(stages)-1].insts, in)
	}
	return stages, nil
}

// execForm decodes a JSON-array instruction argument; shell form is an error,
// since it needs a shell the final image does not have.
func execForm(args string) ([]string, error) {
	var words []string
	if err := json.Unmarshal([]byte(args), &words); err != nil {
		return nil, fmt.Errorf("%q is not exec (JSON) form", args)
	}
	return words, nil
}

// flags splits "--a=b --c d rest" into the leading --flags and the rest.
func flags(args string) (map[string]string, []string) {
	fl := map[string]string{}
	words := strings.Fields(args)
	for len(words) > 0 && strings.HasPrefix(words[0], "--") {
		k, v, _ := strings.Cut(strings.TrimPrefix(words[0], "--"), "=")
		fl[k] = v
		words = words[1:]
	}
	return fl, words
}

var nonRootFinalBase = regexp.MustCompile(`^gcr\.io/distroless/static-debian1[2-9]:nonroot$`)

// dockerfileProblems checks the Dockerfile against the deployment contract.
// ignore is the .dockerignore matcher; exists reports whether a context path is
// in the repository.
func dockerfileProblems(src string, ignore *patternmatcher.PatternMatcher, exists func(string) bool) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	stages, err := parseDockerfile(src)
	if err != nil {
		return []string{err.Error()}
	}
	if len(stages) < 2 {
		return []string{"not a multi-stage build"}
	}
	final := stages[len(stages)-1]
	byName := map[string]int{}
	for i, s := range stages {
		if s.name != "" {
			byName[s.name] = i
		}
	}

	// The build: a golang:1.26 stage running a static, trimmed go build.
	var built bool
	for i, s := range stages[:len(stages)-1] {
		if !strings.HasPrefix(s.image, "golang:1.26") {
			continue
		}
		cgoOffByEnv := false
		for _, in := range s.insts {
			if in.cmd == "ENV" && regexp.MustCompile(`\bCGO_ENABLED=0\b`).MatchString(in.args) {
				cgoOffByEnv = true
			}
			if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
				continue
			}
			built = true
			if !cgoOffByEnv && !regexp.MustCompile(`\bCGO_ENABLED=0\s`).MatchString(in.args) {
				bad("stage %d: go build without CGO_ENABLED=0: the binary would need libc, which distroless/static lacks", i)
			}
			for _, want := range []string{"-trimpath", "./cmd/extauthz", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}"} {
				if !strings.Contains(in.args, want) {
					bad("stage %d: go build lacks %s", i, want)
				}
			}
			if !regexp.MustCompile(`-ldflags[= ]"[^"]*-s -w`).MatchString(in.args) {
				bad("stage %d: go build lacks -ldflags \"-s -w ...\"", i)
			}
		}
	}
	if !built {
		bad("no golang:1.26 stage runs go build")
	}
	// The stamps come from build arguments, with defaults that say so.
	for _, arg := range []string{"VERSION", "COMMIT"} {
		declared := false
		for _, s := range stages[:len(stages)-1] {
			for _, in := range s.insts {
				declared = declared || in.cmd == "ARG" && strings.HasPrefix(in.args, arg+"=")
			}
		}
		if !declared {
			bad("no build stage declares ARG %s=<default>: `docker build --build-arg %s=...` would stamp nothing", arg, arg)
		}
	}

	// The final stage: distroless nonroot, an explicit non-root USER, no RUN.
	if !nonRootFinalBase.MatchString(final.image) {
		bad("final stage is %q, want gcr.io/distroless/static-debian12:nonroot", final.image)
	}
	var user, healthcheck, entrypoint, cmd, expose string
	env := map[string]string{}
	copied := map[string]bool{} // destinations in the final image
	for _, in := range final.insts {
		switch in.cmd {
		case "USER":
			user = in.args
		case "HEALTHCHECK":
			healthcheck = in.args
		case "ENTRYPOINT":
			entrypoint = in.args
		case "CMD":
			cmd = in.args
		case "EXPOSE":
			expose += " " + in.args
		case "ENV":
			k, v, _ := strings.Cut(in.args, "=")
			env[strings.TrimSpace(k)] = strings.TrimSpace(v)
		case "RUN":
			bad("line %d: RUN in the final stage: distroless has no shell", in.line)
		case "COPY", "ADD":
			fl, words := flags(in.args)
			if len(words) < 2 {
				bad("line %d: %s needs a source and a destination", in.line, in.cmd)
				continue
			}
			dst := words[len(words)-1]
			for _, src := range words[:len(words)-1] {
				if strings.HasSuffix(dst, "/") {
					copied[path.Join(dst, path.Base(src))] = true
				} else {
					copied[dst] = true
				}
			}
			if from, ok := fl["from"]; ok {
				if _, ok := byName[from]; !ok {
					bad("line %d: COPY --from=%s names no earlier stage", in.line, from)
				}
			}
		}
	}
	// Every stage's COPY from the build context must find its files there.
	for _, s := range stages {
		for _, in := range s.insts {
			if in.cmd != "COPY" && in.cmd != "ADD" {
				continue
			}
			fl, words := flags(in.args)
			if _, ok := fl["from"]; ok || len(words) < 2 {
				continue
			}
			for _, src := range words[:len(words)-1] {
				checkContextPath(src, ignore, exists, func(msg string) { bad("line %d: %s", in.line, msg) })
			}
		}
	}
	// Numbers, both: Kubernetes' runAsNonRoot can only tell a numeric user
	// from root, and a USER with no group runs in group 0.
	uid, gid, _ := strings.Cut(user, ":")
	if uid == "" || uid == "root" || uid == "0" {
		bad("final stage: USER is %q; set an explicit non-root user", user)
	} else if !regexp.MustCompile(`^[1-9][0-9]*$`).MatchString(uid) || !regexp.MustCompile(`^[1-9][0-9]*$`).MatchString(gid) {
		bad("final stage: USER is %q; want UID:GID, both numbers and neither 0", user)
	}
	for _, port := range []string{"9001", "9002", "9003"} {
		if !slices.Contains(strings.Fields(expose), port) {
			bad("final stage: EXPOSE lacks %s", port)
		}
	}
	if words := execAfterFlags(healthcheck, "CMD"); len(words) < 2 || words[0] != "/extauthz" || words[1] != "healthcheck" {
		bad("HEALTHCHECK must be CMD [\"/extauthz\", \"healthcheck\"] (no curl in distroless), got %q", healthcheck)
	}
	ep, err := execForm(entrypoint)
	if err != nil || !slices.Equal(ep, []string{"/extauthz"}) {
		bad("ENTRYPOINT must be [\"/extauthz\"], got %q", entrypoint)
	} else if !copied["/extauthz"] {
		bad("ENTRYPOINT /extauthz is not copied into the final stage")
	}
	c, err := execForm(cmd)
	if err != nil || len(c) != 3 || c[0] != "serve" || c[1] != "--config" {
		bad("CMD must be [\"serve\", \"--config\", FILE], got %q", cmd)
	} else {
		if !copied[c[2]] {
			bad("CMD serves %s, which the image does not contain", c[2])
		}
		if env["EXTAUTHZ_CONFIG"] != c[2] {
			bad("ENV EXTAUTHZ_CONFIG is %q, CMD serves %s: `healthcheck` would read another config", env["EXTAUTHZ_CONFIG"], c[2])
		}
	}
	return problems
}

// execAfterFlags reads `HEALTHCHECK --opt=x CMD [...]` as the exec-form words.
func execAfterFlags(args, keyword string) []string {
	_, words := flags(args)
	if len(words) == 0 || !strings.EqualFold(words[0], keyword) {
		return nil
	}
	rest := strings.TrimSpace(strings.Join(words[1:], " "))
	w, err := execForm(rest)
	if err != nil {
		return nil
	}
	return w
}

// checkContextPath: a COPY source must be in the repository and not excluded by
// .dockerignore; for the whole context, the files the build needs must survive.
func checkContextPath(src string, ignore *patternmatcher.PatternMatcher, exists func(string) bool, bad func(string)) {
	paths := []string{src}
	if src == "." {
		paths = []string{"go.mod", "go.sum", "cmd/extauthz/main.go", "keystore/key.go"}
	} else if !exists(src) {
		bad(fmt.Sprintf("COPY source %s does not exist", src))
		return
	}
	for _, p := range paths {
		if excluded, err := ignore.MatchesOrParentMatches(p); err != nil || excluded {
			bad(fmt.Sprintf(".dockerignore excludes %s, which the build needs", p))
		}
	}
}

func loadDockerignore(t *testing.T, src string) *patternmatcher.PatternMatcher {
	t.Helper()
	patterns, err := ignorefile.ReadAll(strings.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	return pm
}

func repoFileExists(p string) bool {
	_, err := os.Stat(filepath.Join(repoRoot, filepath.FromSlash(p)))
	return err == nil
}

func readRepoFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, filepath.FromSlash(p)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDockerfile(t *testing.T) {
	ignore := loadDockerignore(t, readRepoFile(t, ".dockerignore"))
	for _, p := range dockerfileProblems(readRepoFile(t, "Dockerfile"), ignore, repoFileExists) {
		t.Error(p)
	}
	// What must never reach a build context: VCS history and local databases.
	for _, p := range []string{".git/config", "data/extauthz.db", "extauthz.db", "keystore/x_test.go", ".env"} {
		if ok, _ := ignore.MatchesOrParentMatches(p); !ok {
			t.Errorf(".dockerignore lets %s into the build context", p)
		}
	}
}

// TestImageDefaultConfig: the config baked into the image is a valid extauthz config
// whose embedded store lives in the directory the Dockerfile hands to the
// non-root user, and whose admin API stays on loopback.
func TestImageDefaultConfig(t *testing.T) {
	cfg, err := parseExtauthzConfig([]byte(readRepoFile(t, "deploy/docker/extauthz.yaml")))
	if err != nil {
		t.Fatal(err)
	}
	if err := noSecretsInConfig(cfg); err != nil {
		t.Error(err)
	}
	if cfg.Store.Backend != "embedded" || path.Dir(cfg.Store.Path) != "/var/lib/extauthz" {
		t.Errorf("the image's store is %s at %q, want embedded under /var/lib/extauthz", cfg.Store.Backend, cfg.Store.Path)
	}
	if !strings.Contains(readRepoFile(t, "Dockerfile"), "--chown=65532:65532 /out/var/lib/extauthz /var/lib/extauthz") {
		t.Error("the Dockerfile does not give /var/lib/extauthz to the nonroot user")
	}
	host, _ := hostPort(t, cfg.adminListen())
	if !isLoopback(host) {
		t.Errorf("the image's admin API listens on %q; keep it on loopback by default", cfg.adminListen())
	}
}

func TestDockerfileProblemsAreCaught(t *testing.T) {
	good := readRepoFile(t, "Dockerfile")
	goodIgnore := readRepoFile(t, ".dockerignore")
	if p := dockerfileProblems(good, loadDockerignore(t, goodIgnore), repoFileExists); len(p) > 0 {
		t.Fatalf("the real Dockerfile has problems: %v", p)
	}
	tests := []struct {
		name          string
		from, to      string // replace in the Dockerfile
		ignoreAppend  string // append to .dockerignore
		wantSubstring string
	}{
		{name: "running as root", from: "USER 65532:65532", to: "USER root", wantSubstring: "non-root"},
		{name: "no USER at all", from: "USER 65532:65532", to: "", wantSubstring: "non-root"},
		{name: "a USER in the root group", from: "USER 65532:65532", to: "USER 65532:0", wantSubstring: "neither 0"},
		{name: "a USER without a group", from: "USER 65532:65532", to: "USER 65532", wantSubstring: "UID:GID"},
		{name: "a USER by name", from: "USER 65532:65532", to: "USER nonroot:nonroot", wantSubstring: "both numbers"},
		{name: "a final stage with a shell and root", from: "FROM gcr.io/distroless/static-debian12:nonroot", to: "FROM debian:12", wantSubstring: "final stage is"},
		{name: "cgo left on", from: "CGO_ENABLED=0 GOOS", to: "CGO_ENABLED=1 GOOS", wantSubstring: "CGO_ENABLED=0"},
		{name: "no -trimpath", from: "go build -trimpath ", to: "go build ", wantSubstring: "-trimpath"},
		{name: "the commit not stamped", from: " -X main.commit=${COMMIT}", to: "", wantSubstring: "main.commit"},
		{name: "the commit argument not declared", from: "ARG COMMIT=unknown", to: "", wantSubstring: "ARG COMMIT"},
		{name: "a curl healthcheck", from: `CMD ["/extauthz", "healthcheck"]`, to: `CMD curl -f http://localhost:9002/healthz`, wantSubstring: "HEALTHCHECK"},
		{name: "a shell-form entrypoint", from: `ENTRYPOINT ["/extauthz"]`, to: `ENTRYPOINT /extauthz`, wantSubstring: "ENTRYPOINT"},
		{name: "CMD and EXTAUTHZ_CONFIG disagreeing", from: "ENV EXTAUTHZ_CONFIG=/etc/extauthz/config.yaml", to: "ENV EXTAUTHZ_CONFIG=/config.yaml", wantSubstring: "EXTAUTHZ_CONFIG"},
		{name: "the admin port not exposed", from: "EXPOSE 9001 9002 9003", to: "EXPOSE 9001 9002", wantSubstring: "9003"},
		{name: "copying from a stage that does not exist", from: "--from=build /out/extauthz", to: "--from=builder /out/extauthz", wantSubstring: "--from=builder"},
		{name: "the build context losing go.sum", ignoreAppend: "\ngo.sum\n", wantSubstring: "go.sum"},
		{name: "the build context losing the default config", ignoreAppend: "\ndeploy/docker\n", wantSubstring: "deploy/docker/extauthz.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := good
			if tt.from != "" {
				if !strings.Contains(src, tt.from) {
					t.Fatalf("the Dockerfile no longer contains %q; update this case", tt.from)
				}
				src = strings.Replace(src, tt.from, tt.to, 1)
			}
			problems := dockerfileProblems(src, loadDockerignore(t, goodIgnore+tt.ignoreAppend), repoFileExists)
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tt.wantSubstring) }) {
				t.Fatalf("no problem mentions %q; got %q", tt.wantSubstring, problems)
			}
		})
	}
}
