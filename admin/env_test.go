package admin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/redis"
	"github.com/extauthz/extauthz/keystore/sqlite"
	"github.com/extauthz/extauthz/ratelimit"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(statusCoverage{m}, redistest.LeakOptions()...)
}

// backend opens a fresh Store of one kind for a test, and says how to make
// it stop answering.
type backend struct {
	name string
	open func(t testing.TB) (store keystore.Store, breakStore func())
}

var backends = []backend{
	{"sqlite", func(t testing.TB) (keystore.Store, func()) {
		s, err := sqlite.Open(filepath.Join(t.TempDir(), "keys.db"))
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		return s, func() { _ = s.Close() }
	}},
	{"redis", func(t testing.TB) (keystore.Store, func()) { return openRedis(t, redistest.Start(t)) }},
}

// openRedis is the Redis store on srv, and the way to break it.
func openRedis(t testing.TB, srv *redistest.Server) (keystore.Store, func()) {
	c, err := redis.Dial(redis.Options{URL: srv.URL(0)})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	s := redis.New(c, "admintest:")
	t.Cleanup(func() { _ = s.Close() })
	return s, srv.Stop
}

// forEachBackend runs test once per backend, each with its own env.
func forEachBackend(t *testing.T, o envOptions, test func(t *testing.T, e *env)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, newEnv(t, b, o)) })
	}
}

// clock is the one clock of an env: real time plus an offset tests move.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

// change is one Manager.OnChange call.
type change struct {
	kind, keyID, owner, actor, rotatedFrom string
}

// recorder collects audit changes, leak reports and log output.
type recorder struct {
	mu       sync.Mutex
	failures []AuthFailure
	changes  []change
	unsure   []change // Manager.OnUnsure calls
	leaked   []*keystore.Key
	answers  []string // "route code", as told to OnAnswer
	logs     bytes.Buffer
}

func (r *recorder) onAnswer(route, code string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers = append(r.answers, route+" "+code)
}

// Answers returns the answers told to OnAnswer since the last call.
func (r *recorder) Answers() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.answers
	r.answers = nil
	return a
}

func (r *recorder) onChange(_ context.Context, kind string, k *keystore.Key, actor string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.changes = append(r.changes, change{kind, k.ID, k.Owner, actor, k.RotatedFrom})
}

func (r *recorder) onUnsure(_ context.Context, kind string, k *keystore.Key, actor string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unsure = append(r.unsure, change{kind, k.ID, k.Owner, actor, k.RotatedFrom})
}

// Unsure returns the changes whose outcome could not be told.
func (r *recorder) Unsure() []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.unsure)
}

func (r *recorder) onAuthFailure(f AuthFailure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failures = append(r.failures, f)
}

// AuthFailures returns the failures recorded since the last call.
func (r *recorder) AuthFailures() []AuthFailure {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.failures
	r.failures = nil
	return f
}

func (r *recorder) onLeak(k *keystore.Key) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leaked = append(r.leaked, k.Clone())
}

func (r *recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logs.Write(p)
}

func (r *recorder) Changes() []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.changes)
}

func (r *recorder) Leaked() []*keystore.Key {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.leaked)
}

func (r *recorder) Logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logs.String()
}

type envOptions struct {
	maxPerOwner  int
	maxBodyBytes int64
	leakBytes    int64
	noLeaks      bool
	// readStore, if set, wraps the store the API reads through (Options.Store).
	readStore func(keystore.Store) keystore.Store
	// writeStore, if set, wraps the store the Manager writes through.
	writeStore func(keystore.Store) keystore.Store
	// adminRate is Options.RateLimit; "" means the config's default.
	adminRate string
	// policies are named policies besides the default one.
	policies []authz.PolicySpec
}

// env is one admin API over real HTTP on a real store, with a root key
// (keys:admin, owner default) made through the Manager as `keys create`
// would bootstrap it.
type env struct {
	t          testing.TB
	url        string
	store      keystore.Store
	manager    *keystore.Manager
	cache      *keystore.Cache
	clock      *clock
	rec        *recorder
	breakStore func()
	github     *ecdsa.PrivateKey
	rootID     string
	root       string // the root key's secret
	opts       Options
}

const githubKeyID = "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a"

func newEnv(t testing.TB, b backend, o envOptions) *env {
	t.Helper()
	store, breakStore := b.open(t)
	e := &env{t: t, store: store, breakStore: breakStore, clock: &clock{}, rec: &recorder{}}

	// The decision's settings of the default configuration.
	format := authztest.Format
	policy, err := authz.Compile(authz.Options{
		Sources:       authztest.Sources(),
		Format:        format,
		DefaultRate:   ratelimit.Rate{N: 1000, Window: time.Hour},
		FailRate:      ratelimit.Rate{N: 100, Window: time.Minute},
		FailTotalRate: ratelimit.Rate{N: 1000, Window: time.Second},
		Policies:      o.policies,
	})
	require.NoError(t, err)
	hasher := keystore.NewHasher([]byte("test pepper"))
	e.cache = keystore.NewCache(store, keystore.CacheOptions{Now: e.clock.Now})
	ctx, cancel := context.WithCancel(context.Background())
	watching := make(chan struct{})
	go func() { defer close(watching); e.cache.Watch(ctx) }()
	t.Cleanup(func() { cancel(); <-watching })

	writes := store
	if o.writeStore != nil {
		writes = o.writeStore(store)
	}
	e.manager = &keystore.Manager{
		Store: writes, Hasher: hasher, Format: format, MaxPerOwner: o.maxPerOwner,
		Now: e.clock.Now, OnChange: e.rec.onChange, OnUnsure: e.rec.onUnsure,
	}
	e.github, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	opts := Options{
		Authz:         authz.NewAuthorizer(policy, e.cache, hasher, nil, e.clock.Now),
		Manager:       e.manager,
		Now:           e.clock.Now,
		Logger:        slog.New(slog.NewTextHandler(e.rec, &slog.HandlerOptions{Level: slog.LevelDebug})),
		MaxBodyBytes:  o.maxBodyBytes,
		Limiter:       ratelimit.NewLocal(e.clock.Now, 0),
		RateLimit:     ratelimit.Rate{N: 600, Window: time.Minute}, // the default admin.rate_limit
		OnAuthFailure: e.rec.onAuthFailure,
		OnAnswer:      e.rec.onAnswer,
	}
	if o.adminRate != "" {
		opts.RateLimit, err = ratelimit.ParseRate(o.adminRate)
		require.NoError(t, err)
	}
	if o.readStore != nil {
		opts.Store = o.readStore(store)
	}
	if !o.noLeaks {
		opts.Leaks = &LeakOptions{
			PublicKeys:   map[string]*ecdsa.PublicKey{githubKeyID: &e.github.PublicKey},
			OnLeak:       e.rec.onLeak,
			MaxBodyBytes: o.leakBytes,
		}
	}
	e.opts = opts
	srv := httptest.NewServer(recordStatuses(New(opts)))
	t.Cleanup(srv.Close)
	e.url = srv.URL

	e.waitForWatch()
	e.root, e.rootID = e.create(keystore.Spec{Name: "root", Permissions: []string{"keys:admin"}})
	return e
}

// waitForWatch returns once the cache hears about store changes, so that
// no test depends on how fast Watch subscribes.
func (e *env) waitForWatch() {
	e.t.Helper()
	secret, id := e.create(keystore.Spec{Name: "canary", Owner: "zz-canary", Permissions: []string{"none"}})
	h := e.manager.Hasher.Hash(secret)
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		_, err := e.cache.Lookup(context.Background(), h)
		require.NoError(e.t, err)
		name := fmt.Sprintf("canary %d", i)
		_, err = e.manager.Update(context.Background(), id, keystore.Patch{Name: &name}, nil, "test")
		require.NoError(e.t, err)
		for wait := time.Now().Add(200 * time.Millisecond); time.Now().Before(wait); time.Sleep(5 * time.Millisecond) {
			if _, state, _ := e.cache.Cached(h); state != keystore.CacheAnswered { // the change reached the cache
				_, err := e.manager.Revoke(context.Background(), id, "test")
				require.NoError(e.t, err)
				return
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the cache never heard of a change through Watch")
		}
	}
}

// create makes a key through the Manager directly, as the CLI would.
func (e *env) create(spec keystore.Spec) (secret, id string) {
	e.t.Helper()
	secret, k, err := e.manager.Create(context.Background(), spec, "cli")
	require.NoError(e.t, err)
	return secret, k.ID
}

// response is one answer, read whole.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %s", r.status, r.body) }

// obj decodes a JSON object answer.
func (r response) obj(t testing.TB) map[string]any {
	t.Helper()
	var v map[string]any
	require.NoError(t, json.Unmarshal(r.body, &v), "body: %s", r.body)
	return v
}

// str is a string field of a JSON object answer.
func (r response) str(t testing.TB, field string) string {
	t.Helper()
	s, _ := r.obj(t)[field].(string)
	return s
}

// code is the code of an error answer, checked against x-authz-code.
func (r response) code(t testing.TB) string {
	t.Helper()
	c := r.str(t, "code")
	require.Equal(t, c, r.header.Get("x-authz-code"), "x-authz-code must repeat the body's code")
	return c
}

// send sends one request. body is nil, a string (sent as is) or a value
// (sent as JSON); every non-nil body is labelled application/json unless
// hdr says otherwise. key "" sends no key.
func (e *env) send(method, path, key string, body any, hdr ...string) response {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		require.NoError(e.t, err)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.url+path, rd)
	require.NoError(e.t, err)
	if body != nil || method == "POST" || method == "PATCH" {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" {
		req.Header.Set("x-api-key", key)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	return e.do(req)
}

// do sends req as it is and checks an error answer as send does.
func (e *env) do(req *http.Request) response {
	e.t.Helper()
	resp, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(e.t, err)
	r := response{status: resp.StatusCode, header: resp.Header, body: b}
	if r.status >= 400 && req.Method != "HEAD" {
		// Every error is JSON {"error", "code"}, whatever produced it.
		require.Equal(e.t, "application/json", resp.Header.Get("Content-Type"), "error answer %s", r)
		var eb map[string]any
		require.NoError(e.t, json.Unmarshal(b, &eb), "error answer %s", r)
		require.NotEmpty(e.t, eb["error"], "error answer %s", r)
		require.NotEmpty(e.t, eb["code"], "error answer %s", r)
		// The code is one the document's Error schema lists, and the
		// x-authz-code header says the same.
		code, _ := eb["code"].(string)
		require.Contains(e.t, documentedErrorCodes(e.t), code, "error answer %s: a code the OpenAPI document's Error schema does not list", r)
		require.Equal(e.t, code, resp.Header.Get("x-authz-code"), "error answer %s: x-authz-code", r)
	}
	return r
}

// documentedErrorCodes is the enum of the OpenAPI document's Error.code.
func documentedErrorCodes(t testing.TB) []string {
	t.Helper()
	var d struct {
		Components struct {
			Schemas struct {
				Error struct {
					Properties struct {
						Code struct {
							Enum []string `json:"enum"`
						} `json:"code"`
					} `json:"properties"`
				} `json:"Error"`
			} `json:"schemas"`
		} `json:"components"`
	}
	require.NoError(t, json.Unmarshal(openAPIDocument, &d))
	require.NotEmpty(t, d.Components.Schemas.Error.Properties.Code.Enum, "the Error schema lists its codes")
	return d.Components.Schemas.Error.Properties.Code.Enum
}

// newKey creates a key through the API as caller and returns its secret and id.
func (e *env) newKey(caller string, body map[string]any) (secret, id string) {
	e.t.Helper()
	r := e.send("POST", "/v1/keys", caller, body)
	require.Equal(e.t, http.StatusCreated, r.status, "%s", r)
	return r.str(e.t, "key"), r.str(e.t, "id")
}

// eventually retries cond every 10 ms for up to a second (docs/keys.md: changes
// reach every server's cache within 1 s).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 1s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Status coverage: every response status the OpenAPI document promises for
// a route must be produced by some test through that route. The recorder
// wraps every env's handler; the check runs after a full, passing run.

var seen = struct {
	sync.Mutex
	m map[string]map[int]bool // route pattern → statuses answered
}{m: map[string]map[int]bool{}}

func recordStatuses(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &answerWriter{ResponseWriter: w} // as OnAnswer's
		h.ServeHTTP(sw, r)
		if r.Pattern == "" || r.Pattern == "/" || sw.status == 0 { // 404 and 405 outside the routes; a client gone before its answer
			return
		}
		seen.Lock()
		defer seen.Unlock()
		if seen.m[r.Pattern] == nil {
			seen.m[r.Pattern] = map[int]bool{}
		}
		seen.m[r.Pattern][sw.status] = true
	})
}

type statusCoverage struct{ m *testing.M }

func (c statusCoverage) Run() int {
	code := c.m.Run()
	if code != 0 || testing.Short() || flagSet("test.run") || flagSet("test.skip") {
		return code // a partial run cannot know
	}
	doc, err := parseOpenAPI(openAPIDocument)
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: status coverage:", err)
		return 1
	}
	var missing, undocumented []string
	seen.Lock()
	defer seen.Unlock()
	documented := map[string][]int{}
	for _, op := range doc {
		documented[op.pattern()] = op.statuses
		for _, status := range op.statuses {
			if !seen.m[op.pattern()][status] {
				missing = append(missing, fmt.Sprintf("%s %d", op.pattern(), status))
			}
		}
	}
	// And the other way: every status a test saw through a route is one
	// its document names (500 falls under "default").
	for pattern, statuses := range seen.m {
		for status := range statuses {
			if status != http.StatusInternalServerError && !slices.Contains(documented[pattern], status) {
				undocumented = append(undocumented, fmt.Sprintf("%s %d", pattern, status))
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		fmt.Fprintf(os.Stderr, "FAIL: the OpenAPI document promises responses no test produced:\n\t%s\n", strings.Join(missing, "\n\t"))
	}
	if len(undocumented) > 0 {
		slices.Sort(undocumented)
		fmt.Fprintf(os.Stderr, "FAIL: tests produced responses the OpenAPI document does not name:\n\t%s\n", strings.Join(undocumented, "\n\t"))
	}
	if len(missing)+len(undocumented) > 0 {
		return 1
	}
	return code
}

func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() != ""
}
