package sqlite

import (
	"bufio"
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/internal/testproc"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/storetest"
	"github.com/extauthz/extauthz/ratelimit"
)

// childDBEnv, when set, makes the test binary a child process of
// TestProcessesShareTheKeyLimitAndChanges instead of running tests.
const childDBEnv = "EXTAUTHZ_SQLITE_TEST_CHILD_DB"

func TestMain(m *testing.M) {
	if path := os.Getenv(childDBEnv); path != "" {
		os.Exit(childCreates(path))
	}
	if arg := os.Getenv(fullEnv); arg != "" {
		os.Exit(childOnAFullDisk(arg))
	}
	testproc.NoRaceExitSleep()
	goleak.VerifyTestMain(m)
}

// childCreates tries 10 concurrent creates for owner "shared" with a limit
// of 5 and prints "created <hash>" or "limit" for each.
func childCreates(path string) int {
	s, err := Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer s.Close()
	var mu sync.Mutex
	var wg sync.WaitGroup
	failed := false
	for i := range 10 {
		wg.Go(func() {
			line, err := childCreate(s, i)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				failed = true
				return
			}
			fmt.Println(line)
		})
	}
	wg.Wait()
	if failed {
		return 1
	}
	return 0
}

func childCreate(s *Store, i int) (string, error) {
	now := time.Now().UTC()
	id, err := keystore.NewID(now)
	if err != nil {
		return "", err
	}
	h := hasher.Hash(fmt.Sprintf("child %d %d %s", os.Getpid(), i, id))
	err = s.Create(context.Background(), &keystore.Key{ID: id, Name: "child", Owner: "shared", CreatedAt: now}, h, 5)
	switch {
	case errors.Is(err, keystore.ErrKeyLimit):
		return "limit", nil
	case err != nil:
		return "", err
	}
	return "created " + h.String(), nil
}

func TestStoreConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) func() (keystore.Store, error) {
		path := filepath.Join(t.TempDir(), "extauthz.db")
		return func() (keystore.Store, error) { return Open(path) }
	})
}

// openTest opens a Store on path, closed when the test ends.
func openTest(t testing.TB, path string) *Store {
	t.Helper()
	s, err := Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

var hasher = keystore.NewHasher(nil)

// testKey returns a live key of owner "alice" created now, and its hash.
func testKey(t testing.TB) (*keystore.Key, keystore.Hash) {
	t.Helper()
	now := time.Now().UTC()
	id, err := keystore.NewID(now)
	require.NoError(t, err)
	return &keystore.Key{ID: id, Name: "test", Owner: "alice", Permissions: []string{"read:users"}, CreatedAt: now},
		hasher.Hash("secret of " + id)
}

func TestOpenCreatesAPrivateDirectoryAndFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "nested", "extauthz.db")
	s := openTest(t, path)
	k, h := testKey(t)
	require.NoError(t, s.Create(t.Context(), k, h, 0))

	for p, want := range map[string]os.FileMode{
		filepath.Dir(path):               0o700,
		filepath.Dir(filepath.Dir(path)): 0o700,
		path:                             0o600,
		path + "-wal":                    0o600,
		path + "-shm":                    0o600,
	} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, want, fi.Mode().Perm(), p)
	}
}

func TestOpenMakesAnExistingDatabaseAndItsLogsPrivate(t *testing.T) {
	path, k, h := closedStoreWithAKey(t)
	// As an older version, a copy or a loose umask might have left them.
	require.NoError(t, os.Chmod(path, 0o644))
	for _, log := range []string{path + "-wal", path + "-shm"} {
		require.NoError(t, os.WriteFile(log, nil, 0o666))
		require.NoError(t, os.Chmod(log, 0o666))
	}

	s := openTest(t, path)
	got, err := s.Lookup(t.Context(), h)
	require.NoError(t, err, "the tightened database still works")
	require.Equal(t, k.ID, got.ID)
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), p)
	}
}

func TestOpenSetsThePragmasOnEveryConnection(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "x.db"))
	// Hold several connections at once, so the pool has to open more than one.
	ctx := t.Context()
	var conns []*sql.Conn
	for range 3 {
		c, err := s.db.Conn(ctx)
		require.NoError(t, err)
		conns = append(conns, c)
	}
	for i, c := range conns {
		for pragma, want := range map[string]string{
			"journal_mode":       "wal",
			"synchronous":        "2", // FULL
			"busy_timeout":       "5000",
			"foreign_keys":       "1",
			"journal_size_limit": strconv.Itoa(walSizeLimit),
			"user_version":       strconv.Itoa(schemaVersion),
		} {
			var got string
			require.NoError(t, c.QueryRowContext(ctx, "PRAGMA "+pragma).Scan(&got))
			require.Equal(t, want, got, "connection %d: PRAGMA %s", i, pragma)
		}
		require.NoError(t, c.Close())
	}
}

func TestStoreKeepsTimesAsUnixNanosecondsAndOnlyTheHash(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "x.db"))
	k, h := testKey(t)
	k.CreatedAt = time.Date(2026, 3, 4, 5, 6, 7, 891011121, time.FixedZone("X", 3600))
	require.NoError(t, s.Create(t.Context(), k, h, 0))

	var created int64
	var createdType string
	var stored []byte
	require.NoError(t, s.db.QueryRow(`SELECT created_at, typeof(created_at), hash FROM keys WHERE id = ?`, k.ID).
		Scan(&created, &createdType, &stored))
	require.Equal(t, "integer", createdType)
	require.Equal(t, k.CreatedAt.UnixNano(), created)
	require.Equal(t, h[:], stored)
}

// Rate limits as the keys table has always held them, TEXT as written ("" =
// the default), load as typed values and are written back unchanged: a row
// an earlier version wrote reads as it did then.
func TestRateLimitsStoredByEarlierVersionsLoad(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "x.db"))
	def := ratelimit.Rate{N: 7, Window: time.Hour}
	for _, tt := range []struct {
		stored string
		rate   ratelimit.Rate
	}{
		{"", def},
		{"none", ratelimit.Rate{}},
		{"100/m", ratelimit.Rate{N: 100, Window: time.Minute}},
		{" 100/10m", ratelimit.Rate{N: 100, Window: 10 * time.Minute}},
		{"10/fortnight", def}, // no longer parses: the default, as the decision always read it
	} {
		k, h := testKey(t)
		require.NoError(t, s.Create(t.Context(), k, h, 0))
		_, err := s.db.Exec(`UPDATE keys SET rate_limit = ? WHERE id = ?`, tt.stored, k.ID)
		require.NoError(t, err)

		for _, read := range []func() (*keystore.Key, error){
			func() (*keystore.Key, error) { return s.Get(t.Context(), k.ID) },
			func() (*keystore.Key, error) { return s.Lookup(t.Context(), h) },
		} {
			got, err := read()
			require.NoError(t, err, "%q", tt.stored)
			assert.Equal(t, tt.stored, got.RateLimit.String())
			assert.Equal(t, tt.rate, got.RateLimit.Or(def), "%q", tt.stored)
		}
		_, err = s.Update(t.Context(), k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Name = "renamed"; return nil })
		require.NoError(t, err)
		var after string
		require.NoError(t, s.db.QueryRow(`SELECT rate_limit FROM keys WHERE id = ?`, k.ID).Scan(&after))
		assert.Equal(t, tt.stored, after, "a write keeps the text as it was")
	}
}

// A file written by the version before keys had policies and metadata
// (schema 2) is migrated when opened: its keys load as valid under every
// policy, with no metadata, and take both from then on.
func TestAFileFromBeforePoliciesIsMigrated(t *testing.T) {
	k, h := testKey(t)
	s := openOld(t, 2, k, h, "")
	got, err := s.Lookup(t.Context(), h)
	require.NoError(t, err)
	assert.Equal(t, []string{"read:users"}, got.Permissions)
	assert.Empty(t, got.Policies)
	assert.Empty(t, got.Meta)
	assert.True(t, got.ValidUnder("billing"))

	got, err = s.Update(t.Context(), k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
		k.Policies, k.Meta = []string{"billing"}, map[string]string{"plan": "gold"}
		return nil
	})
	require.NoError(t, err)
	assert.Equal(t, []string{"billing"}, got.Policies, "Update returns the key as stored")
	got, err = s.Lookup(t.Context(), h)
	require.NoError(t, err)
	assert.Equal(t, []string{"billing"}, got.Policies)
	assert.Equal(t, map[string]string{"plan": "gold"}, got.Meta)
}

func TestAKeySurvivesARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	s, err := Open(path)
	require.NoError(t, err)
	k, h := testKey(t)
	require.NoError(t, s.Create(t.Context(), k, h, 0))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "a second Close does nothing")

	got, err := openTest(t, path).Lookup(t.Context(), h)
	require.NoError(t, err)
	require.Equal(t, k.ID, got.ID)
}

func TestTwoStoresOnOneFileSeeEachOthersWritesAndChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	a, b := openTest(t, path), openTest(t, path)
	ctx := t.Context()

	events := make(chan keystore.Hash, 16)
	watchCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- a.Watch(watchCtx, func(h keystore.Hash) { events <- h }) }()
	defer func() {
		stop()
		require.NoError(t, <-done, "Watch returns nil when its context is done")
	}()
	// Watch starts from the log's head when it runs, and then says "forget
	// everything": what changed before is unknown to it.
	select {
	case got := <-events:
		require.True(t, got.IsZero(), "the first report is forget-everything")
	case <-time.After(time.Second):
		t.Fatal("a's Watch did not say forget-everything as it started")
	}

	k, h := testKey(t)
	require.NoError(t, b.Create(ctx, k, h, 0))
	got, err := a.Lookup(ctx, h)
	require.NoError(t, err, "a sees b's write")
	require.Equal(t, k.ID, got.ID)
	select {
	case got := <-events:
		require.Equal(t, h, got)
	case <-time.After(time.Second):
		t.Fatal("a's Watch did not report b's create within 1s")
	}

	_, err = a.Update(ctx, k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Name = "renamed by a"; return nil })
	require.NoError(t, err)
	got, err = b.Get(ctx, k.ID)
	require.NoError(t, err, "b sees a's write")
	require.Equal(t, "renamed by a", got.Name)
}

func TestProcessesShareTheKeyLimitAndChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	s := openTest(t, path) // creates the schema before the children race
	events := make(chan keystore.Hash, 64)
	watchCtx, stop := context.WithCancel(t.Context())
	done := make(chan error)
	go func() {
		done <- s.Watch(watchCtx, func(h keystore.Hash) {
			select {
			case events <- h:
			default:
			}
		})
	}()
	defer func() { stop(); <-done }()
	time.Sleep(2 * s.pollInterval)

	children := make([]*exec.Cmd, 2)
	outputs := make([]*bytes.Buffer, len(children))
	for i := range children {
		outputs[i] = new(bytes.Buffer)
		children[i] = exec.CommandContext(t.Context(), os.Args[0], "-test.run=^$")
		children[i].Env = append(os.Environ(), childDBEnv+"="+path)
		children[i].Stdout = outputs[i]
		children[i].Stderr = os.Stderr
		require.NoError(t, children[i].Start())
	}
	var created []keystore.Hash
	limited := 0
	for i, c := range children {
		require.NoError(t, c.Wait(), "child %d", i)
		sc := bufio.NewScanner(outputs[i])
		for sc.Scan() {
			hex, ok := strings.CutPrefix(sc.Text(), "created ")
			if !ok {
				require.Equal(t, "limit", sc.Text())
				limited++
				continue
			}
			h, err := keystore.ParseHash(hex)
			require.NoError(t, err)
			created = append(created, h)
		}
	}
	require.Len(t, created, 5, "two processes together stop at maxPerOwner")
	require.Equal(t, 15, limited)

	want := map[keystore.Hash]bool{}
	for _, h := range created {
		want[h] = true
	}
	deadline := time.After(time.Second)
	for len(want) > 0 {
		select {
		case h := <-events:
			delete(want, h)
		case <-deadline:
			t.Fatalf("Watch in this process did not see %d of the children's creates within 1s", len(want))
		}
	}
}

func TestWatchForgetsEverythingWhenItsPositionWasTrimmed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	writer, reader := openTest(t, path), openTest(t, path)
	writer.keepChanges = 2
	ctx := t.Context()

	pos, err := reader.changeHead(ctx)
	require.NoError(t, err)
	var hashes []keystore.Hash
	for range 4 {
		k, h := testKey(t)
		require.NoError(t, writer.Create(ctx, k, h, 0))
		hashes = append(hashes, h)
	}

	var got []keystore.Hash
	pos, err = reader.readChanges(ctx, pos, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	// The first two changes are gone: forget everything, then the rest.
	require.Equal(t, []keystore.Hash{{}, hashes[2], hashes[3]}, got)

	got = nil
	_, err = reader.readChanges(ctx, pos, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	require.Empty(t, got, "a reader that caught up gets nothing more")
}

func TestTheChangeLogForgetsOldChanges(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "extauthz.db"))
	ctx := t.Context()
	clock := time.Now()
	s.now = func() time.Time { return clock }

	pos, err := s.changeHead(ctx)
	require.NoError(t, err)
	k1, _ := testKey(t)
	k1h := hasher.Hash("first")
	require.NoError(t, s.Create(ctx, k1, k1h, 0))
	var got []keystore.Hash
	// A second watcher sees the first change: when it is trimmed away by
	// the next, an hour later, that watcher has missed nothing.
	seen, err := s.readChanges(ctx, pos, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	require.Equal(t, []keystore.Hash{k1h}, got)
	clock = clock.Add(keepChangesFor + time.Second)
	k2, k2h := testKey(t)
	require.NoError(t, s.Create(ctx, k2, k2h, 0))

	var rows int
	require.NoError(t, s.db.QueryRow(`SELECT count(*) FROM changes`).Scan(&rows))
	require.Equal(t, 1, rows, "only the change of the last hour is kept")

	got = nil
	_, err = s.readChanges(ctx, pos, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	require.Equal(t, []keystore.Hash{{}, k2h}, got)
	got = nil
	_, err = s.readChanges(ctx, seen, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	require.Equal(t, []keystore.Hash{k2h}, got, "a watcher whose last change was trimmed gets the next only, not an order to forget everything")

	head, err := s.changeHead(ctx)
	require.NoError(t, err)
	got = nil
	_, err = s.readChanges(ctx, head, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	require.Empty(t, got, "a Watch starting now starts after the last change")
}

func TestWatchReturnsWhenTheStoreIsClosed(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "extauthz.db"))
	require.NoError(t, err)
	done := make(chan error)
	go func() { done <- s.Watch(context.Background(), func(keystore.Hash) {}) }()
	require.NoError(t, s.Close())
	select {
	case err := <-done:
		require.Error(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("Watch went on after Close")
	}
}

func TestOpenRefuses(t *testing.T) {
	dir := t.TempDir()
	blocked := filepath.Join(dir, "file", "x.db")
	require.NoError(t, os.WriteFile(filepath.Join(dir, "file"), nil, 0o600))

	tests := []struct {
		name        string
		path        string
		wantInError string
		unavailable bool
	}{
		{"an empty path", "", "no path", false},
		{"a path with a question mark", filepath.Join(dir, "a?b.db"), "a?b.db", false},
		{"a path below a regular file", blocked, blocked, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(tt.path)
			require.Error(t, err)
			require.Nil(t, s)
			require.Contains(t, err.Error(), tt.wantInError)
			require.Equal(t, tt.unavailable, errors.Is(err, keystore.ErrUnavailable), "wraps ErrUnavailable: %v", err)
		})
	}
}

// A file the store did not make (a config naming another application's
// database, or anything else) is refused, and left exactly as it was: its
// bytes, its mode (0644 here, which a store file would be tightened from),
// its journal mode, and no -wal, -shm or -journal file beside it.
func TestOpenRefusesAFileItDidNotMakeAndLeavesItAsItWas(t *testing.T) {
	dir := t.TempDir()
	sqliteFile := func(name string, stmts ...string) string {
		path := filepath.Join(dir, name)
		db, err := sql.Open("sqlite", path)
		require.NoError(t, err)
		for _, st := range stmts {
			_, err := db.Exec(st)
			require.NoError(t, err)
		}
		require.NoError(t, db.Close())
		return path
	}
	garbage := filepath.Join(dir, "garbage.db")
	require.NoError(t, os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 100)), 0o600))
	newer := filepath.Join(dir, "newer.db")
	s := openTest(t, newer)
	_, err := s.db.Exec(`PRAGMA user_version = 99`)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	emptied := filepath.Join(dir, "emptied.db")
	s = openTest(t, emptied)
	k, h := testKey(t)
	require.NoError(t, s.Create(t.Context(), k, h, 0))
	require.NoError(t, s.Close())
	require.NoError(t, os.Truncate(emptied, 0))

	tests := []struct {
		name        string
		path        string
		wantInError string
		unavailable bool
	}{
		{"a file that is not a database", garbage, "file is not a database", true},
		{"another application's database", sqliteFile("notes.db", `CREATE TABLE notes (body TEXT)`, `INSERT INTO notes VALUES ('mine')`),
			"not an extauthz key store", false},
		{"another application's database with a schema version of its own",
			sqliteFile("versioned.db", `CREATE TABLE notes (body TEXT)`, `PRAGMA user_version = 2`), "not an extauthz key store", false},
		{"a database with a table named keys of its own",
			sqliteFile("lookalike.db", `CREATE TABLE keys (k TEXT)`, `PRAGMA user_version = 4`), "not an extauthz key store", false},
		{"a schema newer than this code", newer, "schema version 99", false},
		{"a store truncated to nothing", emptied, "the file is empty", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.NoError(t, os.Chmod(tt.path, 0o644))
			before, err := os.ReadFile(tt.path)
			require.NoError(t, err)

			s, err := Open(tt.path)
			require.Error(t, err)
			require.Nil(t, s)
			require.Contains(t, err.Error(), tt.wantInError)
			require.Contains(t, err.Error(), tt.path)
			require.Equal(t, tt.unavailable, errors.Is(err, keystore.ErrUnavailable), "wraps ErrUnavailable: %v", err)

			after, err := os.ReadFile(tt.path)
			require.NoError(t, err)
			require.True(t, bytes.Equal(before, after), "the file's bytes changed")
			fi, err := os.Stat(tt.path)
			require.NoError(t, err)
			require.Equal(t, os.FileMode(0o644), fi.Mode().Perm(), "the file's mode changed")
			for _, side := range []string{"-wal", "-shm", "-journal"} {
				require.NoFileExists(t, tt.path+side)
			}
		})
	}
}

// queryHook runs before every query but the first, as another process
// could act between two statements.
type queryHook struct {
	db      *sql.DB
	queries int
	between func()
}

func (q *queryHook) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if q.queries++; q.queries > 1 && q.between != nil {
		q.between()
		q.between = nil
	}
	return q.db.QueryRowContext(ctx, query, args...)
}

// A process reading a file as another makes it a key store in place (a
// database with no tables, or one an older extauthz is migrating) must not
// take it for another application's database. Here the other process
// migrates the file right after the first statement of the check.
func TestAFileMadeAKeyStoreMeanwhileIsNotRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer db.Close()
	other, err := sql.Open("sqlite", dsnOf(path))
	require.NoError(t, err)
	defer other.Close()
	q := &queryHook{db: db, between: func() { require.NoError(t, migrate(t.Context(), other)) }}

	v, err := schemaOf(t.Context(), q)
	require.NoError(t, err)
	require.Contains(t, []int{0, schemaVersion}, v)
	require.NoError(t, migrate(t.Context(), other)) // as it goes on, if the check was one statement
	s := openTest(t, path)
	require.NoError(t, s.Ping(t.Context()))
}

func TestAClosedStoreIsUnavailable(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "extauthz.db"))
	require.NoError(t, err)
	k, h := testKey(t)
	require.NoError(t, s.Create(t.Context(), k, h, 0))
	require.NoError(t, s.Close())

	_, err = s.Lookup(t.Context(), h)
	require.ErrorIs(t, err, keystore.ErrUnavailable)
	require.NotErrorIs(t, err, keystore.ErrNotFound)
	require.ErrorIs(t, s.Ping(t.Context()), keystore.ErrUnavailable)
	require.ErrorIs(t, s.Create(t.Context(), k, hasher.Hash("other"), 0), keystore.ErrUnavailable)
}

func TestACancelledLookupIsUnavailable(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "extauthz.db"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := s.Lookup(ctx, hasher.Hash("whatever"))
	require.ErrorIs(t, err, keystore.ErrUnavailable, "the store did not answer; that is not ErrNotFound")
}

func TestWritesRefuseBadRecords(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "extauthz.db"))
	ctx := t.Context()
	stored, storedHash := testKey(t)
	require.NoError(t, s.Create(ctx, stored, storedHash, 0))
	farFuture := time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)

	tests := []struct {
		name        string
		call        func() error
		wantInError string
	}{
		{"Create of a nil key", func() error { return s.Create(ctx, nil, hasher.Hash("x"), 0) }, "nil key"},
		{"Create without an id", func() error {
			k, h := testKey(t)
			k.ID = ""
			return s.Create(ctx, k, h, 0)
		}, "no id"},
		{"Create without created_at", func() error {
			k, h := testKey(t)
			k.CreatedAt = time.Time{}
			return s.Create(ctx, k, h, 0)
		}, "no created_at"},
		{"Create with an expiry past 2262", func() error {
			k, h := testKey(t)
			k.ExpiresAt = &farFuture
			return s.Create(ctx, k, h, 0)
		}, "expires_at: time 3000-01-01T00:00:00Z is outside"},
		{"Update that changes the owner", func() error {
			_, err := s.Update(ctx, stored.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Owner = "mallory"; return nil })
			return err
		}, "cannot change"},
		{"Update that changes the id", func() error {
			_, err := s.Update(ctx, stored.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.ID += "x"; return nil })
			return err
		}, "cannot change"},
		{"Update to an expiry past 2262", func() error {
			_, err := s.Update(ctx, stored.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.ExpiresAt = &farFuture; return nil })
			return err
		}, "outside the years"},
		{"Rotate to a nil key", func() error {
			_, err := s.Rotate(ctx, stored.ID, nil, hasher.Hash("x"), time.Now())
			return err
		}, "nil new key"},
		{"Rotate to a key of another owner", func() error {
			next, h := testKey(t)
			next.Owner, next.RotatedFrom = "mallory", stored.ID
			_, err := s.Rotate(ctx, stored.ID, next, h, time.Now())
			return err
		}, `owner "mallory"`},
		{"Rotate with a grace period past 2262", func() error {
			next, h := testKey(t)
			next.RotatedFrom = stored.ID
			_, err := s.Rotate(ctx, stored.ID, next, h, farFuture)
			return err
		}, "grace period"},
		{"TouchLastUsed with a zero time", func() error {
			return s.TouchLastUsed(ctx, map[string]time.Time{stored.ID: {}})
		}, "outside the years"},
		{"List live keys as of 3000", func() error {
			_, _, err := s.List(ctx, keystore.ListOptions{Now: farFuture})
			return err
		}, "outside the years"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			require.Error(t, err)
			require.Contains(t, err.Error(), tt.wantInError)
			require.NotErrorIs(t, err, keystore.ErrUnavailable)
		})
	}
	got, err := s.Get(ctx, stored.ID)
	require.NoError(t, err)
	require.Equal(t, stored.Owner, got.Owner)
	require.Nil(t, got.ExpiresAt)
	require.Nil(t, got.LastUsedAt)
	require.Empty(t, got.RotatedTo)
}

func BenchmarkLookup(b *testing.B) {
	s := openTest(b, filepath.Join(b.TempDir(), "extauthz.db"))
	ctx := context.Background()
	const n = 1000
	hashes := make([]keystore.Hash, n)
	for i := range n {
		k, h := testKey(b)
		require.NoError(b, s.Create(ctx, k, h, 0))
		hashes[i] = h
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		if _, err := s.Lookup(ctx, hashes[i%n]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// A file written before keys carried their line of rotations (schema 3) is
// migrated when opened: its keys, rotated ones included, count in their own
// rate-limit buckets, and a rotation from then on passes its line on.
func TestAFileFromBeforeLineagesIsMigrated(t *testing.T) {
	k, h := testKey(t)
	s := openOld(t, 3, k, h, "key_before")
	got, err := s.Lookup(t.Context(), h)
	require.NoError(t, err)
	assert.Equal(t, "key_before", got.RotatedFrom)
	assert.Empty(t, got.Lineage)
	assert.Equal(t, k.ID, got.RateBucket())

	m := &keystore.Manager{Store: s, Hasher: hasher}
	_, next, err := m.Rotate(t.Context(), k.ID, 0, "test", nil)
	require.NoError(t, err)
	stored, err := s.Get(t.Context(), next.ID)
	require.NoError(t, err)
	assert.Equal(t, k.ID, stored.Lineage, "the rotation passes the line on")
	assert.Equal(t, k.ID, stored.RateBucket())
}

// A file written before the pepper's mark (schema 4) is migrated when
// opened, and marked by the first process to ask: its keys stay as they
// were, and a process with another pepper is told so from then on.
func TestAFileFromBeforeThePepperMarkIsMigrated(t *testing.T) {
	k, h := testKey(t)
	s := openOld(t, 4, k, h, "")
	m := &keystore.Manager{Store: s, Hasher: hasher}
	require.NoError(t, m.CheckPepper(t.Context()), "the first to ask marks the store")
	got, err := s.Lookup(t.Context(), h)
	require.NoError(t, err)
	assert.Equal(t, k.ID, got.ID)
	other := &keystore.Manager{Store: s, Hasher: keystore.NewHasher([]byte("another pepper"))}
	require.ErrorIs(t, other.CheckPepper(t.Context()), keystore.ErrPepperMismatch)
}

// openOld writes a store file at schema version, the way that version did,
// holding k (permissions read:users, rotated from rotatedFrom), and opens
// it, which migrates it to schemaVersion.
func openOld(t *testing.T, version int, k *keystore.Key, h keystore.Hash, rotatedFrom string) *Store {
	t.Helper()
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	for _, m := range migrations[:version] {
		_, err := db.Exec(m)
		require.NoError(t, err)
	}
	_, err = db.Exec(`INSERT INTO keys (id, hash, name, owner, permissions, rate_limit, ip_allowlist, created_at, rotated_from, rotated_to)
		VALUES (?, ?, ?, ?, '["read:users"]', '', '[]', ?, ?, '')`, k.ID, h[:], k.Name, k.Owner, k.CreatedAt.UnixNano(), rotatedFrom)
	require.NoError(t, err)
	_, err = db.Exec(`PRAGMA user_version = ` + strconv.Itoa(version))
	require.NoError(t, err)
	require.NoError(t, db.Close())
	s := openTest(t, path)
	var v int
	require.NoError(t, s.db.QueryRow(`PRAGMA user_version`).Scan(&v))
	require.Equal(t, schemaVersion, v, "migrated")
	return s
}

// staleFirstGet hands out, on its first Get, the key as it was before its
// last change: the read of a rotation that raced an admin's change.
type staleFirstGet struct {
	keystore.Store
	stale *keystore.Key
	used  bool
}

func (s *staleFirstGet) Get(ctx context.Context, id string) (*keystore.Key, error) {
	if !s.used {
		s.used = true
		return s.stale.Clone(), nil
	}
	return s.Store.Get(ctx, id)
}

// A rotation copies the key as it is stored, and runs its caller's check on
// that record: a copy of an earlier read is refused by the store, and the
// rotation reads, checks and copies again.
func TestARotationCopiesAndChecksTheKeyAsItIsNow(t *testing.T) {
	errTooWide := errors.New("the caller could not grant admin")
	noAdmin := func(old *keystore.Key) error {
		if slices.Contains(old.Permissions, "admin") {
			return errTooWide
		}
		return nil
	}
	for _, tt := range []struct {
		name  string
		check func(*keystore.Key) error
	}{{"with a check that the change fails", noAdmin}, {"without a check", nil}} {
		t.Run(tt.name, func(t *testing.T) {
			s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
			k, h := testKey(t)
			require.NoError(t, s.Create(t.Context(), k, h, 0))
			stale := k.Clone()
			widened, err := s.Update(t.Context(), k.ID, keystore.OwnerLimit{}, func(cur *keystore.Key) error {
				cur.Permissions = append(cur.Permissions, "admin")
				return nil
			})
			require.NoError(t, err)

			m := &keystore.Manager{Store: &staleFirstGet{Store: s, stale: stale}, Hasher: hasher}
			_, next, err := m.Rotate(t.Context(), k.ID, time.Hour, "test", tt.check)
			cur, getErr := s.Get(t.Context(), k.ID)
			require.NoError(t, getErr)
			if tt.check != nil {
				require.ErrorIs(t, err, errTooWide, "the check ran on the key as it is now")
				assert.Empty(t, cur.RotatedTo, "nothing was rotated")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, widened.Permissions, next.Permissions, "the new key copies the key as it is now")
			assert.Equal(t, next.ID, cur.RotatedTo)
		})
	}
}

// TestTouchLastUsedLetsOtherWritersInBetweenItsBatches: the last use of
// many keys is written a batch per transaction, and a revocation made in
// this process or in another (a second store on the file, as the CLI is)
// gets in between two batches instead of waiting for the whole update.
func TestTouchLastUsedLetsOtherWritersInBetweenItsBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys.db")
	s := openTest(t, path)
	other := openTest(t, path)
	ctx := context.Background()
	used := map[string]time.Time{}
	at := time.Now().UTC().Truncate(time.Millisecond)
	for range 7 {
		k, h := testKey(t)
		require.NoError(t, s.Create(ctx, k, h, 0))
		used[k.ID] = at
	}
	victim, h := testKey(t)
	require.NoError(t, s.Create(ctx, victim, h, 0))

	defer func(n int) { touchBatch, touchedBatch = n, nil }(touchBatch)
	touchBatch = 2
	batches := 0
	touchedBatch = func() {
		batches++
		if batches != 1 {
			return
		}
		// Between the first two batches: a write through this store (its
		// writers' queue) and one through another (the file's lock), each
		// bounded so that a lock still held fails the test instead of
		// hanging it.
		for _, w := range []*Store{s, other} {
			done := make(chan error, 1)
			go func() {
				wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				defer cancel()
				_, err := w.Update(wctx, victim.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error {
					k.Name = "renamed"
					return nil
				})
				done <- err
			}()
			select {
			case err := <-done:
				assert.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("a write waited for the whole last-use update")
			}
		}
	}
	require.NoError(t, s.TouchLastUsed(ctx, used))
	assert.Equal(t, 4, batches, "7 keys in batches of 2")
	for id := range used {
		k, err := s.Get(ctx, id)
		require.NoError(t, err)
		require.NotNil(t, k.LastUsedAt, id)
		assert.True(t, k.LastUsedAt.Equal(at), "%s: %v", id, k.LastUsedAt)
	}
	k, err := other.Get(ctx, victim.ID)
	require.NoError(t, err)
	assert.Equal(t, "renamed", k.Name)
}

// A Watch that cannot read the change log (here: its table renamed away by
// another connection, as a damaged or tampered file would fail) goes on
// polling and loses nothing, but says so: once, not at every poll, since
// until it reads again a revocation reaches this process's cache late. Once
// it reads again it says that too, and the change made meanwhile arrives.
func TestAWatchThatCannotReadTheChangeLogSaysSo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	s := openTest(t, path)
	s.pollInterval = 10 * time.Millisecond
	var logged syncbuf.Buffer
	s.LogTo(slog.New(slog.NewJSONHandler(&logged, nil)))

	events := make(chan keystore.Hash, 16)
	watchCtx, stop := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- s.Watch(watchCtx, func(h keystore.Hash) { events <- h }) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
	}()
	select {
	case h := <-events:
		require.True(t, h.IsZero(), "the first report is forget-everything")
	case <-time.After(2 * time.Second):
		t.Fatal("the Watch did not start")
	}

	other, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer other.Close()
	_, err = other.Exec(`ALTER TABLE changes RENAME TO changes_away`)
	require.NoError(t, err)
	time.Sleep(30 * s.pollInterval)
	lines := strings.Count(logged.String(), "the change log cannot be read")
	assert.Equal(t, 1, lines, "failed reads are logged once, not at every poll:\n%s", logged.String())

	_, err = other.Exec(`ALTER TABLE changes_away RENAME TO changes`)
	require.NoError(t, err)
	k, h := testKey(t)
	require.NoError(t, s.Create(t.Context(), k, h, 0))
	select {
	case got := <-events:
		assert.Equal(t, h, got, "the change made once the log could be read")
	case <-time.After(2 * time.Second):
		t.Fatal("no change reported after the change log could be read again")
	}
	// Said once the poll that read the change is done, just after it.
	assert.Eventually(t, func() bool { return strings.Contains(logged.String(), "reading the change log again") }, 2*time.Second, 5*time.Millisecond,
		"no word that the change log reads again:\n%s", logged.String())
}

// This process's writers take turns, but one waiting for its turn gives up
// at its deadline: a change queued behind a long write (a last-use write
// of many keys, a sweep) answers unavailable when its caller's time is up,
// not after the write ahead of it, and changes nothing.
func TestAWriterWaitingForItsTurnGivesUpAtItsDeadline(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "extauthz.db"))
	s.writeSlot <- struct{}{} // a write in progress, for the next 2 s
	released := time.AfterFunc(2*time.Second, func() { <-s.writeSlot })
	defer released.Stop()

	k, h := testKey(t)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Create(ctx, k, h, 0)
	took := time.Since(start)
	require.ErrorIs(t, err, keystore.ErrUnavailable)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Less(t, took, time.Second, "the writer waited past its deadline")
	_, err = s.Get(t.Context(), k.ID)
	assert.ErrorIs(t, err, keystore.ErrNotFound, "a write that gave up changed something")

	require.Eventually(t, func() bool { return s.Create(t.Context(), k, h, 0) == nil }, 5*time.Second, 50*time.Millisecond,
		"writes go on once the writer ahead is done")
}

// Processes opening a brand-new path at once (a server starting and the
// keys create that makes the first admin key) all open one store, and none
// of them sees the file before it is one: each makes a store under a name of
// its own and links it into place, so the file appears whole or not at all.
// Nothing of the losers' stores is left beside it.
func TestStoresOpenedAtOnceOnANewPathAreOneStore(t *testing.T) {
	for round := range 5 {
		dir := t.TempDir()
		path := filepath.Join(dir, "extauthz.db")
		stores := make([]*Store, 8)
		errs := make([]error, len(stores))
		var wg sync.WaitGroup
		for i := range stores {
			wg.Go(func() { stores[i], errs[i] = Open(path) })
		}
		wg.Wait()
		for i, err := range errs {
			require.NoError(t, err, "round %d, opener %d", round, i)
			t.Cleanup(func() { _ = stores[i].Close() })
		}
		k, h := testKey(t)
		require.NoError(t, stores[0].Create(t.Context(), k, h, 0))
		for i, s := range stores {
			got, err := s.Lookup(t.Context(), h)
			require.NoError(t, err, "opener %d does not see the key another made", i)
			require.Equal(t, k.ID, got.ID)
		}
		entries, err := os.ReadDir(dir)
		require.NoError(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		require.ElementsMatch(t, []string{"extauthz.db", "extauthz.db-wal", "extauthz.db-shm"}, names)
	}
}
