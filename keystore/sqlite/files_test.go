package sqlite

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"modernc.org/sqlite"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// A running server's store whose files are removed or replaced under it
// (an rm -rf of the data directory, a backup moved over the live file, a
// cleanup of the -wal and -shm files) stops answering from them: otherwise
// it goes on serving the file it has open while the CLI writes to the one now
// at the path, so a revocation the CLI reports done never reaches it, and a
// key it creates itself is written to a file nobody will open again. Within a
// poll it is unavailable (readiness fails, cached keys are served up to
// cache.max_stale), its Watch ends with an error naming the file, and it
// writes nothing more.
func TestAStoreWhoseFilesAreRemovedOrReplacedStopsUsingThem(t *testing.T) {
	for _, tt := range []struct {
		name   string
		tamper func(t *testing.T, path string)
		names  string // the file the errors name
	}{
		{"the database removed", func(t *testing.T, path string) {
			require.NoError(t, os.Remove(path))
		}, ""},
		{"the database and its -wal and -shm removed, and a new store made at the path", func(t *testing.T, path string) {
			for _, p := range []string{path, path + "-wal", path + "-shm"} {
				require.NoError(t, os.Remove(p))
			}
			fresh := openTest(t, path)
			k, h := testKey(t)
			require.NoError(t, fresh.Create(t.Context(), k, h, 0))
		}, ""},
		{"another store moved over the database", func(t *testing.T, path string) {
			other := filepath.Join(t.TempDir(), "backup.db")
			require.NoError(t, openTest(t, other).Close())
			require.NoError(t, os.Rename(other, path))
		}, ""},
		{"the -wal removed", func(t *testing.T, path string) {
			require.NoError(t, os.Remove(path+"-wal"))
		}, "-wal"},
		{"the -shm removed and made again by another process", func(t *testing.T, path string) {
			require.NoError(t, os.Remove(path+"-shm"))
			_ = openTest(t, path)
		}, "-shm"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "extauthz.db")
			s := openTest(t, path)
			s.pollInterval = 20 * time.Millisecond
			ctx := t.Context()
			k, h := testKey(t)
			require.NoError(t, s.Create(ctx, k, h, 0))

			watchErr := make(chan error, 1)
			watchCtx, stop := context.WithCancel(ctx)
			defer stop()
			go func() { watchErr <- s.Watch(watchCtx, func(keystore.Hash) {}) }()

			tt.tamper(t, path)

			select {
			case err := <-watchErr:
				require.ErrorIs(t, err, keystore.ErrUnavailable)
				require.ErrorContains(t, err, path+tt.names+" was removed or replaced")
			case <-time.After(2 * time.Second):
				t.Fatal("Watch went on reading a file no longer at its path")
			}
			err := s.Ping(ctx)
			require.ErrorIs(t, err, keystore.ErrUnavailable, "Ping (readiness) fails")
			require.ErrorContains(t, err, "restart")
			_, err = s.Lookup(ctx, h)
			require.ErrorIs(t, err, keystore.ErrUnavailable, "lookups fail, so cached keys last only cache.max_stale")
			require.NotErrorIs(t, err, keystore.ErrNotFound)
			_, err = s.Get(ctx, k.ID)
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			_, _, err = s.List(ctx, keystore.ListOptions{})
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			k2, h2 := testKey(t)
			require.ErrorIs(t, s.Create(ctx, k2, h2, 0), keystore.ErrUnavailable, "a create is refused, not written where nobody looks")
			_, err = s.Update(ctx, k.ID, keystore.OwnerLimit{}, func(k *keystore.Key) error { k.Name = "x"; return nil })
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			require.ErrorIs(t, s.TouchLastUsed(ctx, map[string]time.Time{k.ID: time.Now()}), keystore.ErrUnavailable)
			_, err = s.Sweep(ctx, keystore.SweepOptions{Now: time.Now()})
			require.ErrorIs(t, err, keystore.ErrUnavailable)
		})
	}
}

// Nothing that a store does to its own files, nor another process opening,
// writing and closing the same store, reads as a replacement.
func TestAStoreKeepsItsFilesWhileOthersComeAndGo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	s := openTest(t, path)
	ctx := t.Context()
	for range 3 {
		other, err := Open(path)
		require.NoError(t, err)
		k, h := testKey(t)
		require.NoError(t, other.Create(ctx, k, h, 0))
		require.NoError(t, other.Close())
		require.NoError(t, s.Ping(ctx))
		_, err = s.Lookup(ctx, h)
		require.NoError(t, err)
	}
	// Every connection of s's pool closed and opened again.
	s.db.SetMaxIdleConns(0)
	require.NoError(t, s.Ping(ctx))
	s.db.SetMaxIdleConns(4)
	k, h := testKey(t)
	require.NoError(t, s.Create(ctx, k, h, 0))
	require.NoError(t, s.Ping(ctx))
}

// The -wal grows while a reader holds an old snapshot (a backup of a large
// store, an operator's open sqlite3 shell, checkpoints failing on a full
// disk), since no change can be copied back into the database meanwhile.
// Once they can, the -wal is cut back to walSizeLimit: a server has the
// store open for good, so the -wal is never removed, and without a limit
// it would keep the largest size it ever had.
func TestTheWALShrinksBackAfterAReaderHeldItOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "extauthz.db")
	s := openTest(t, path)
	ctx := t.Context()
	walSize := func() int64 {
		fi, err := os.Stat(path + "-wal")
		require.NoError(t, err)
		return fi.Size()
	}

	reader, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer reader.Close()
	conn, err := reader.Conn(ctx)
	require.NoError(t, err)
	_, err = conn.ExecContext(ctx, `BEGIN`)
	require.NoError(t, err)
	var n int
	require.NoError(t, conn.QueryRowContext(ctx, `SELECT count(*) FROM keys`).Scan(&n))
	for walSize() < 2*walSizeLimit {
		k, h := testKey(t)
		require.NoError(t, s.Create(ctx, k, h, 0))
	}
	_, err = conn.ExecContext(ctx, `COMMIT`)
	require.NoError(t, err)
	require.NoError(t, conn.Close())

	// The first change after the reader left copies the -wal back (the
	// checkpoint every 1,000 pages), the next starts the -wal again and
	// cuts it.
	for range 3 {
		k, h := testKey(t)
		require.NoError(t, s.Create(ctx, k, h, 0))
	}
	require.LessOrEqual(t, walSize(), int64(walSizeLimit))
}

// A backup restored into the running store through SQLite (sqlite3's
// .restore, the backup API) takes the change log back to the backup's, so
// the changes made after it are numbered again from where the backup's log
// ended, below the position a watcher has reached. The watcher reads that
// as a log it may have missed changes of, and forgets everything: a
// revocation made after the restore reaches it at once, not once the new
// numbers pass its old position.
func TestWatchForgetsEverythingWhenABackupIsRestoredUnderIt(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.db")
	server, cli := openTest(t, path), openTest(t, path)
	server.pollInterval = 20 * time.Millisecond
	var logged syncbuf.Buffer
	server.LogTo(slog.New(slog.NewJSONHandler(&logged, nil)))
	ctx := t.Context()
	k, h := testKey(t)
	require.NoError(t, cli.Create(ctx, k, h, 0))
	backup := filepath.Join(dir, "backup.db")
	_, err := cli.db.ExecContext(ctx, `VACUUM INTO ?`, backup)
	require.NoError(t, err)

	events := make(chan keystore.Hash, 64)
	watchCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- server.Watch(watchCtx, func(h keystore.Hash) { events <- h }) }()
	defer func() {
		stop()
		require.NoError(t, <-done)
	}()
	next := func() keystore.Hash {
		t.Helper()
		select {
		case got := <-events:
			return got
		case <-time.After(2 * time.Second):
			t.Fatal("no change reported within 2s")
			return keystore.Hash{}
		}
	}
	require.True(t, next().IsZero(), "Watch starts by forgetting everything")
	for range 5 { // the log moves past the backup's
		k2, h2 := testKey(t)
		require.NoError(t, cli.Create(ctx, k2, h2, 0))
		require.Equal(t, h2, next())
	}
	require.Empty(t, logged.String(), "changes that move the log on are not a restore")

	restore(t, cli, backup)
	require.True(t, next().IsZero(), "the restore itself is seen")
	// A key revoked after the backup is live again: the operator is told.
	require.Contains(t, logged.String(), "went back, as when a backup is restored into it")
	require.Contains(t, logged.String(), "a key revoked after the backup was made is live again")
	require.Contains(t, logged.String(), path)

	_, err = (&keystore.Manager{Store: cli, Hasher: hasher}).Revoke(ctx, k.ID, "test")
	require.NoError(t, err)
	got := next()
	require.True(t, got == h || got.IsZero(), "the revocation after the restore reaches the watcher, or it forgets everything")
}

// restore writes the database at backup into s's file through SQLite's
// backup API, as sqlite3's .restore does.
func restore(t *testing.T, s *Store, backup string) {
	t.Helper()
	conn, err := s.db.Conn(t.Context())
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.Raw(func(dc any) error {
		r, err := dc.(interface {
			NewRestore(string) (*sqlite.Backup, error)
		}).NewRestore(backup)
		if err != nil {
			return err
		}
		if _, err := r.Step(-1); err != nil {
			r.Finish()
			return err
		}
		return r.Finish()
	}))
}

// Changes made after a restore, before a watcher's next poll, are numbered
// again from the end of the backup's log; more of them than the backup was
// behind take the log's end past the watcher's position again. The
// watcher must still see that the log was rewritten under it, and forget
// everything: otherwise it skips the changes numbered up to its position
// (a revocation among them reaches it only when its cache entry expires),
// and never learns of the restore.
func TestWatchForgetsEverythingWhenARestoredLogPassesItsPosition(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "extauthz.db")
	server, cli := openTest(t, path), openTest(t, path)
	ctx := t.Context()
	create := func() keystore.Hash {
		k, h := testKey(t)
		require.NoError(t, cli.Create(ctx, k, h, 0))
		return h
	}
	create()
	backup := filepath.Join(dir, "backup.db")
	_, err := cli.db.ExecContext(ctx, `VACUUM INTO ?`, backup)
	require.NoError(t, err)
	pos, err := server.changeHead(ctx)
	require.NoError(t, err)
	create()
	create()
	pos, err = server.readChanges(ctx, pos, func(keystore.Hash) {})
	require.NoError(t, err)

	restore(t, cli, backup)
	var made []keystore.Hash
	for range 3 { // numbered 2 to 4: past the watcher's 3
		made = append(made, create())
	}

	var got []keystore.Hash
	_, err = server.readChanges(ctx, pos, func(h keystore.Hash) { got = append(got, h) })
	require.NoError(t, err)
	require.NotEmpty(t, got)
	require.True(t, got[0].IsZero(), "the watcher forgets everything first; got %v after making %v", got, made)
}

// A -wal, -shm or -journal beside the database that its owner did not make
// (planted in a directory others can write to) is refused before SQLite
// reads it, and left where it is.
func TestOpenRefusesACompanionFileItsOwnerDidNotMake(t *testing.T) {
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		t.Run("a symbolic link as "+suffix, func(t *testing.T) {
			path := newClosedStore(t)
			target := filepath.Join(t.TempDir(), "elsewhere")
			require.NoError(t, os.WriteFile(target, nil, 0o600))
			require.NoError(t, os.Symlink(target, path+suffix))
			_, err := Open(path)
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			require.ErrorContains(t, err, suffix+" is a symbolic link")
		})
		t.Run("another user's "+suffix, func(t *testing.T) {
			if os.Geteuid() != 0 {
				t.Skip("giving a file to another user takes root (CI runs as root)")
			}
			path := newClosedStore(t)
			require.NoError(t, os.WriteFile(path+suffix, []byte("planted"), 0o666))
			require.NoError(t, os.Chown(path+suffix, 12345, 12345))
			_, err := Open(path)
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			require.ErrorContains(t, err, suffix+" belongs to user 12345")
			got, err := os.ReadFile(path + suffix)
			require.NoError(t, err)
			require.Equal(t, "planted", string(got), "the file is left as it was")
		})
	}
	t.Run("the store's own files are accepted", func(t *testing.T) {
		path := newClosedStore(t)
		s, err := Open(path) // makes a -wal and -shm of its own
		require.NoError(t, err)
		t.Cleanup(func() { _ = s.Close() })
		other, err := Open(path) // finds them there
		require.NoError(t, err)
		require.NoError(t, other.Close())
	})
}

// newClosedStore makes a key store and closes it, and returns its path.
func newClosedStore(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.db")
	s, err := Open(path)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	return path
}

// A newer extauthz (its keys command, run after an upgrade before the
// servers are restarted) migrates the file past the schema this process
// knows, and may then store in a column of its own a restriction this
// process cannot read. A process that opens such a file refuses it; one
// that had it open before must not go on deciding keys by the columns it
// knows. Whichever of its calls first reads the new version (a lookup or a
// get of a key the newer version stored, a write, Ping, the Watch's poll)
// says so, and from then on every call does.
func TestAStoreMigratedByANewerVersionWhileOpenStopsAnswering(t *testing.T) {
	for _, tt := range []struct {
		name  string
		first func(ctx context.Context, s *Store, id string, h keystore.Hash) error
	}{
		{"a lookup of a key it stored", func(ctx context.Context, s *Store, _ string, h keystore.Hash) error {
			_, err := s.Lookup(ctx, h)
			return err
		}},
		{"a get of a key it stored", func(ctx context.Context, s *Store, id string, _ keystore.Hash) error {
			_, err := s.Get(ctx, id)
			return err
		}},
		{"a write", func(ctx context.Context, s *Store, _ string, _ keystore.Hash) error {
			k, h := testKey(t)
			return s.Create(ctx, k, h, 0)
		}},
		{"a ping", func(ctx context.Context, s *Store, _ string, _ keystore.Hash) error {
			return s.Ping(ctx)
		}},
		{"the watch", func(ctx context.Context, s *Store, _ string, _ keystore.Hash) error {
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			return s.Watch(ctx, func(keystore.Hash) {})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "extauthz.db")
			s := openTest(t, path)
			s.pollInterval = 20 * time.Millisecond
			ctx := t.Context()
			old, oldHash := testKey(t)
			require.NoError(t, s.Create(ctx, old, oldHash, 0))

			k, h := migrateToNewer(t, path)
			err := tt.first(ctx, s, k.ID, h)
			require.ErrorIs(t, err, keystore.ErrUnavailable)
			require.ErrorContains(t, err, fmt.Sprintf("migrated to schema version %d by a newer extauthz", schemaVersion+1))
			require.ErrorContains(t, err, "restart it with the newer version")

			_, err = s.Lookup(ctx, oldHash)
			require.ErrorIs(t, err, keystore.ErrUnavailable, "a key it stored before is not answered from then on either")
			require.ErrorIs(t, s.Ping(ctx), keystore.ErrUnavailable, "nor is the store ready")
		})
	}
}

// migrateToNewer does to the store file at path what a newer version's
// migration could: a column of its own, a key it restricts by it, and the
// version. It returns that key and its hash.
func migrateToNewer(t *testing.T, path string) (*keystore.Key, keystore.Hash) {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	defer db.Close()
	_, err = db.Exec(`ALTER TABLE keys ADD COLUMN bound_to TEXT NOT NULL DEFAULT ''`)
	require.NoError(t, err)
	_, err = db.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion+1))
	require.NoError(t, err)
	k, h := testKey(t)
	_, err = db.Exec(`INSERT INTO keys (id, hash, name, owner, permissions, rate_limit, ip_allowlist, created_at, rotated_from, rotated_to, bound_to)
		VALUES (?, ?, 'bound', 'alice', '["read:users"]', '', '[]', ?, '', '', 'spiffe://only/this')`, k.ID, h[:], k.CreatedAt.UnixNano())
	require.NoError(t, err)
	return k, h
}

// The command of a newer version that migrates the file may also revoke a
// key: the Watch of a process that had the file open passes that
// revocation on before it stops, so the key's cache entry goes. So it does
// when the migration commits between its read of the log and its look at
// the schema version (which once stopped it with the revocation unread).
func TestAWatchPassesOnTheChangesUpToANewerVersionsMigration(t *testing.T) {
	for _, between := range []bool{false, true} {
		t.Run(fmt.Sprintf("committed between the read and the version check: %v", between), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "extauthz.db")
			s := openTest(t, path)
			s.pollInterval = 20 * time.Millisecond
			ctx := t.Context()
			k, h := testKey(t)
			require.NoError(t, s.Create(ctx, k, h, 0))

			// One transaction, as a command that migrates and then revokes
			// commits both before the next poll.
			db, err := sql.Open("sqlite", path)
			require.NoError(t, err)
			defer db.Close()
			migrateAndRevoke := func() {
				_, err := db.Exec(fmt.Sprintf(`BEGIN IMMEDIATE;
					ALTER TABLE keys ADD COLUMN bound_to TEXT NOT NULL DEFAULT '';
					PRAGMA user_version = %d;
					UPDATE keys SET revoked_at = %d, listed = 0 WHERE id = '%s';
					INSERT INTO changes (hash, at) VALUES (x'%s', %d);
					COMMIT`, schemaVersion+1, time.Now().UnixNano(), k.ID, h.String(), time.Now().UnixNano()))
				require.NoError(t, err)
			}
			seen := make(chan keystore.Hash, 16)
			if between {
				var once sync.Once
				s.afterRead = func() { once.Do(migrateAndRevoke) }
			}
			watchErr := make(chan error, 1)
			go func() { watchErr <- s.Watch(ctx, func(h keystore.Hash) { seen <- h }) }()
			require.Equal(t, keystore.Hash{}, <-seen, "the watch has found the log's end")
			if !between {
				migrateAndRevoke()
			}

			select {
			case err := <-watchErr:
				require.ErrorIs(t, err, keystore.ErrUnavailable)
				require.ErrorContains(t, err, "by a newer extauthz")
			case <-time.After(2 * time.Second):
				t.Fatal("the watch went on reading a file a newer version migrated")
			}
			require.Len(t, seen, 1)
			require.Equal(t, h, <-seen, "the revocation reached the caller")
		})
	}
}

// A -journal is no less the store than a -wal: SQLite plays a "hot" one
// back over the database when it opens it, WAL mode or not. One planted by
// another user, holding every page of a store of the planter's, would
// replace the store's keys with the planter's (a keys:admin key among
// them) at the next start. It is refused, and the store is as it was.
func TestOpenRefusesAPlantedRollbackJournal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("giving a file to another user takes root (CI runs as root)")
	}
	path := newClosedStore(t)
	victim, err := Open(path)
	require.NoError(t, err)
	k, h := testKey(t)
	require.NoError(t, victim.Create(t.Context(), k, h, 0))
	require.NoError(t, victim.Close())

	planterPath := filepath.Join(t.TempDir(), "mine.db")
	planter, err := Open(planterPath)
	require.NoError(t, err)
	pk, ph := testKey(t)
	pk.Name, pk.Permissions = "planted", []string{"keys:admin"}
	require.NoError(t, planter.Create(t.Context(), pk, ph, 0))
	require.NoError(t, planter.Close())
	require.NoError(t, os.WriteFile(path+"-journal", hotJournalOf(t, planterPath), 0o666))
	require.NoError(t, os.Chown(path+"-journal", 12345, 12345))

	_, err = Open(path)
	require.ErrorIs(t, err, keystore.ErrUnavailable)
	require.ErrorContains(t, err, "-journal belongs to user 12345")

	// What the check stops: with the journal the store's own user's, SQLite
	// plays it back, and the store is the planter's.
	require.NoError(t, os.Chown(path+"-journal", os.Getuid(), os.Getgid()))
	s, err := Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	_, err = s.Lookup(t.Context(), ph)
	require.NoError(t, err, "the journal was not played back, so this test shows nothing")
	_, err = s.Lookup(t.Context(), h)
	require.ErrorIs(t, err, keystore.ErrNotFound)
}

// hotJournalOf is a rollback journal that SQLite, finding it beside a
// database, plays back by writing every page of the database at src over
// it (the format of sqlite.org/fileformat2.html, "The Rollback Journal").
func hotJournalOf(t *testing.T, src string) []byte {
	t.Helper()
	db, err := os.ReadFile(src)
	require.NoError(t, err)
	pageSize := int(binary.BigEndian.Uint16(db[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	pages := len(db) / pageSize
	const sector, nonce = 512, uint32(0x1234567)
	j := make([]byte, sector)
	copy(j, []byte{0xd9, 0xd5, 0x05, 0xf9, 0x20, 0xa1, 0x63, 0xd7})
	binary.BigEndian.PutUint32(j[8:], uint32(pages))
	binary.BigEndian.PutUint32(j[12:], nonce)
	binary.BigEndian.PutUint32(j[16:], uint32(pages))
	binary.BigEndian.PutUint32(j[20:], sector)
	binary.BigEndian.PutUint32(j[24:], uint32(pageSize))
	for p := range pages {
		page := db[p*pageSize : (p+1)*pageSize]
		j = binary.BigEndian.AppendUint32(j, uint32(p+1))
		j = append(j, page...)
		sum := nonce
		for i := pageSize - 200; i > 0; i -= 200 {
			sum += uint32(page[i])
		}
		j = binary.BigEndian.AppendUint32(j, sum)
	}
	return j
}
