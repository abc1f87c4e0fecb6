// Package sqlite is the embedded key store: a keystore.Store kept in one
// SQLite file in WAL mode, for a single node. Several processes (the CLI and
// the servers) may share the file: every write is one BEGIN IMMEDIATE
// transaction, and every change is appended to a change log in the same
// transaction, which Watch polls, so a change made by any process reaches
// every other within the poll interval.
//
// It is not for several nodes: SQLite's locking is not reliable over network
// file systems. Use the Redis store there.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

const (
	// schemaVersion is the PRAGMA user_version this code writes and reads.
	schemaVersion = 6

	// busyTimeout is how long a writer waits for another process's write
	// transaction before giving up.
	busyTimeout = 5 * time.Second

	// pollInterval is how often Watch reads the change log; well inside the
	// one second in which changes must reach every server (docs/keys.md).
	pollInterval = 200 * time.Millisecond

	// The change log keeps at most keepChanges rows and none older than
	// keepChangesFor: a watcher further behind than that has been asleep,
	// and is told to forget everything.
	keepChanges    = 10_000
	keepChangesFor = time.Hour

	// walSizeLimit is what the -wal is cut back to once it starts again
	// from its beginning: about the 1,000 pages after which SQLite copies
	// it into the database, so that a -wal grown past that (while a
	// reader held an old snapshot, or checkpoints failed on a full disk)
	// gives the space back.
	walSizeLimit = 4 << 20
)

// Store is a keystore.Store on one SQLite file. Build it with Open; it is
// safe for concurrent use, and other Stores, in this process or others, may
// share its file.
type Store struct {
	path string // as given to Open, for error messages
	abs  string // the absolute path
	db   *sql.DB

	// writeSlot queues this process's writers (one at a time holds it), so
	// that they do not spin in SQLite's busy handler against each other;
	// busy_timeout still covers the writers of other processes. A channel,
	// not a mutex, so that a writer gives up waiting at its deadline.
	writeSlot chan struct{}

	lookup *sql.Stmt
	get    *sql.Stmt

	// files are the database, its -wal and its -shm as they were once
	// open, under the paths filePaths names (nil: not there then). pin is a
	// connection held for as long as the Store is open, so that SQLite
	// never deletes the -wal and -shm while it is: a file at one of those
	// paths that is not the one opened, or none, means someone removed or
	// replaced it, and lost then holds the error every call returns.
	// migrated does so once a newer version has migrated the file
	// (checkSchema).
	files    [3]os.FileInfo
	pin      *sql.Conn
	lost     atomic.Pointer[error]
	migrated atomic.Pointer[error]

	closeOnce sync.Once
	closed    chan struct{} // closed by Close, which ends every Watch

	// log is told when a Watch cannot read the change log (LogTo); nil: not.
	log *slog.Logger

	// Change-log settings; fields so that tests can shrink them.
	pollInterval   time.Duration
	keepChanges    int64
	keepChangesFor time.Duration
	now            func() time.Time // stamps change-log rows
	afterRead      func()           // tests: runs after each poll's read of the change log
}

var _ keystore.Store = (*Store)(nil)

// LogTo makes the Store's Watch tell log when it cannot read the change log,
// and when it reads it again. Call it before Watch.
func (s *Store) LogTo(log *slog.Logger) { s.log = log }

// Open opens the key store in the SQLite file at path, creating the file
// (mode 0600) and its directory (0700) if needed, and the schema if the file
// is new. Errors name path; those that mean the file cannot be used wrap
// keystore.ErrUnavailable.
func Open(path string) (*Store, error) {
	if path == "" {
		return nil, errors.New("open sqlite key store: no path given")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// The driver reads what follows a '?' as connection parameters. An
	// absolute path also keeps names like ":memory:" or "file:x" from
	// meaning anything but a file.
	if strings.ContainsRune(abs, '?') {
		return nil, fmt.Errorf("open %s: the path must not contain '?'", path)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o700); err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", path, keystore.ErrUnavailable, err)
	}
	switch err := ensureStoreFile(abs); {
	case errors.Is(err, errNotAStore), errors.Is(err, errNotAFile):
		return nil, fmt.Errorf("open %s: %w", path, err)
	case err != nil:
		return nil, fmt.Errorf("open %s: %w: %w", path, keystore.ErrUnavailable, err)
	}
	if err := checkCompanions(abs); err != nil {
		return nil, fmt.Errorf("open %s: %w: %w", path, keystore.ErrUnavailable, err)
	}

	db, err := sql.Open("sqlite", dsnOf(abs))
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	// Each connection has its own page cache; a bounded pool keeps a burst
	// of lookups from opening hundreds. One more for pin.
	conns := max(4, runtime.GOMAXPROCS(0)) + 1
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)

	s := &Store{
		path:           path,
		abs:            abs,
		db:             db,
		closed:         make(chan struct{}),
		writeSlot:      make(chan struct{}, 1),
		pollInterval:   pollInterval,
		keepChanges:    keepChanges,
		keepChangesFor: keepChangesFor,
		now:            time.Now,
	}
	if err := s.setUp(context.Background()); err != nil {
		s.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return s, nil
}

// dsnOf is the data source name of the database at abs. Every connection
// of the pool gets these settings. synchronous=FULL: a key is on disk once
// Create returns. _txlock=immediate: every read-write transaction takes the
// write lock at BEGIN, so that a check and the write that depends on it
// (maxPerOwner) are atomic across processes. journal_size_limit: see
// walSizeLimit. WAL is not among them: it is a setting of the file, written
// once the file is known to be a key store (setUp), so that another
// application's database named by mistake is left as it was.
func dsnOf(abs string) string {
	return abs + "?_txlock=immediate" +
		fmt.Sprintf("&_pragma=busy_timeout(%d)", busyTimeout.Milliseconds()) +
		"&_pragma=synchronous(FULL)" +
		"&_pragma=foreign_keys(ON)" +
		fmt.Sprintf("&_pragma=journal_size_limit(%d)", walSizeLimit)
}

// ensureStoreFile makes a new key store at abs if nothing is there, and
// refuses an empty file.
//
// A store is made whole under a name of its own beside abs and then linked
// to abs, which fails if another process got there first (its store is then
// used, and this one removed). So a file at abs always holds a schema from
// the moment it appears, and an empty one can only be damage: a store
// truncated, or a file put there by hand. Opening such a file as a new store
// would start over with no keys, answering every key as unknown while the
// operator looks for the cause, and writing new keys where the old ones
// should be restored; it is refused instead. A database with no tables that
// is not 0 bytes long (one whose page size was set, say) is still made a
// store in place, as before.
//
// On a file system without hard links the store is made in place, as
// extauthz did before: there, two processes making the same new store at
// once may see the file empty, and one of them is refused until it retries.
func ensureStoreFile(abs string) error {
	fi, err := os.Lstat(abs)
	switch {
	case err == nil && fi.Mode()&fs.ModeSymlink != 0:
		// SQLite follows the link and keeps its -wal, -shm and -journal
		// beside the file it points to, where the checks of them (a
		// planted or removed -wal, their modes) would not look; a link
		// to nothing would be made again and again.
		return fmt.Errorf("%w: it is a symbolic link; name the file itself in store.path", errNotAFile)
	case err == nil && !fi.Mode().IsRegular():
		return fmt.Errorf("%w: it is a %s", errNotAFile, fi.Mode().Type())
	case err == nil && fi.Size() == 0:
		return fmt.Errorf("%w: the file is empty, and a key store never is, so it may have been truncated; "+
			"restore it from a backup, or remove it to start a new store with no keys", errNotAStore)
	case err == nil:
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(abs), "."+filepath.Base(abs)+".new-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file private (0600); SQLite gives the -wal and
	// -shm files the same mode.
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := makeSchema(tmp.Name()); err != nil {
		return fmt.Errorf("make a new key store: %w", err)
	}
	switch err := os.Link(tmp.Name(), abs); {
	case errors.Is(err, fs.ErrExist):
		return ensureStoreFile(abs) // another process made it meanwhile
	case err != nil:
		return makeInPlace(abs)
	}
	return syncDir(filepath.Dir(abs))
}

// makeSchema writes the schema into the new, empty database file at path,
// in its rollback-journal mode, so that every page is in the file itself
// once it returns.
func makeSchema(path string) error {
	db, err := sql.Open("sqlite", dsnOf(path))
	if err != nil {
		return err
	}
	err = migrate(context.Background(), db)
	if cerr := db.Close(); err == nil {
		err = dbErr(cerr)
	}
	os.Remove(path + "-journal") // left only by a failed write
	return err
}

// makeInPlace makes a new store at abs where a file cannot be linked:
// created empty (only if nothing is there yet), then its schema written in
// one transaction (makeSchema).
func makeInPlace(abs string) error {
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return ensureStoreFile(abs)
	}
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return makeSchema(abs)
}

// syncDir makes a new name in dir last through a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// checkCompanions refuses a -wal, -shm or -journal beside the database at
// abs that its owner did not make: one that is a symbolic link, or belongs
// to another user. SQLite reads a -wal it finds as part of the database,
// and plays a -journal it finds back over the database (even one in WAL
// mode) as the undo of a write that did not finish, so in a directory
// others can write to, one planted there before a process opens the store
// would add to it, or put in its place, whatever its maker wrote. (Whoever
// writes these files can write the database: the process's own user, or
// root, which SQLite makes give them to the database's owner.)
func checkCompanions(abs string) error {
	db, err := os.Stat(abs)
	if err != nil {
		return err
	}
	owner := ownerOf(db)
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		fi, err := os.Lstat(abs + suffix)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			return fmt.Errorf("%s%s is a symbolic link: remove it (with every extauthz process stopped); keep the store in a directory only extauthz's user can write", abs, suffix)
		case ownerOf(fi) != owner:
			return fmt.Errorf("%s%s belongs to user %d, the database to user %d: another user may have planted it; remove it (with every extauthz process stopped) and keep the store in a directory only extauthz's user can write",
				abs, suffix, ownerOf(fi), owner)
		}
	}
	return nil
}

// setUp makes the file at s.abs a key store of schemaVersion in WAL mode,
// prepares the statements of every lookup and notes which files it opened.
// Nothing in the file or its mode changes before it is known to be a key
// store, or empty: a file that is not is refused as it was.
func (s *Store) setUp(ctx context.Context) error {
	if err := retryBusy(func() error { return migrate(ctx, s.db) }); err != nil {
		return err
	}
	// Preparing reads the columns: a file whose tables only have the names
	// of a key store's is refused here, unchanged.
	var err error
	if s.lookup, err = s.db.Prepare(`SELECT ` + keyColumns + `, ` + userVersion + ` FROM keys WHERE hash = ?`); err == nil {
		s.get, err = s.db.Prepare(`SELECT ` + keyColumns + `, ` + userVersion + ` FROM keys WHERE id = ?`)
	}
	if err != nil {
		return dbErr(err)
	}
	for _, p := range s.filePaths() {
		if err := makePrivate(p); err != nil {
			return err
		}
	}
	err = retryBusy(func() error {
		var mode string
		if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode = WAL`).Scan(&mode); err != nil {
			return dbErr(err)
		}
		if mode != "wal" {
			return fmt.Errorf("%w: the file cannot be put in WAL mode (journal mode %q)", keystore.ErrUnavailable, mode)
		}
		// SQLite makes the -wal and -shm files with the mode of the
		// database, which is private by now.
		return nil
	})
	if err != nil {
		return err
	}
	if s.pin, err = s.db.Conn(ctx); err != nil {
		return dbErr(err)
	}
	// A read opens the -wal and -shm, which the pin then holds.
	var through int64
	if err := s.pin.QueryRowContext(ctx, `SELECT through FROM changes_trimmed`).Scan(&through); err != nil {
		return dbErr(err)
	}
	for i, p := range s.filePaths() {
		fi, err := os.Stat(p)
		switch {
		case err == nil:
			s.files[i] = fi
		case !errors.Is(err, fs.ErrNotExist):
			return fmt.Errorf("%w: %w", keystore.ErrUnavailable, err)
		}
	}
	return nil
}

// filePaths are the paths of the database, its -wal and its -shm.
func (s *Store) filePaths() [3]string {
	return [3]string{s.abs, s.abs + "-wal", s.abs + "-shm"}
}

// checkFiles reports an error wrapping keystore.ErrUnavailable when the
// files at the store's paths are no longer the ones it opened, and from
// then on for good: a process that went on with the files it has open would
// answer from a database the others no longer see, and write where nobody
// will read, while two -wal files for one database corrupt it. An error
// reading a path (not its absence) is reported for this call only.
func (s *Store) checkFiles() error {
	if err := s.lost.Load(); err != nil {
		return *err
	}
	for i, p := range s.filePaths() {
		if s.files[i] == nil {
			continue
		}
		fi, err := os.Stat(p)
		if err == nil && os.SameFile(fi, s.files[i]) {
			continue
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %w", keystore.ErrUnavailable, err)
		}
		lost := fmt.Errorf("%w: %s was removed or replaced while this process had the key store open, so it no longer sees the "+
			"store others change; restart it to open the files now at the path", keystore.ErrUnavailable, p)
		s.lost.CompareAndSwap(nil, &lost)
		return *s.lost.Load()
	}
	return nil
}

// userVersion is the SQL of the file's schema version, as a value.
const userVersion = `(SELECT user_version FROM pragma_user_version)`

// checkSchema reports an error wrapping keystore.ErrUnavailable if v, the
// schema version of the file as just read, is newer than this code's, and
// from then on for good. A newer extauthz (its keys command, run after an
// upgrade before the servers are restarted) migrates the file while this
// process has it open, and may then store restrictions in columns this
// code does not read: a key decided by the columns it knows would be
// decided by less than its record says.
func (s *Store) checkSchema(v int) error {
	if err := s.migrated.Load(); err != nil {
		return *err
	}
	if v <= schemaVersion {
		return nil
	}
	migrated := fmt.Errorf("%w: %s was migrated to schema version %d by a newer extauthz while this process had it open; "+
		"this one knows versions up to %d and cannot enforce what the newer one stores: restart it with the newer version",
		keystore.ErrUnavailable, s.path, v, schemaVersion)
	s.migrated.CompareAndSwap(nil, &migrated)
	return *s.migrated.Load()
}

// lostErr is the error of checkFiles once it found the files replaced, or
// of checkSchema once it found the file migrated by a newer version, else
// nil.
func (s *Store) lostErr() error {
	if err := s.lost.Load(); err != nil {
		return *err
	}
	if err := s.migrated.Load(); err != nil {
		return *err
	}
	return nil
}

// makePrivate takes the group's and others' permissions off the file at p,
// if it exists. A file made by an older version or copied in with a loose
// umask would otherwise go on exposing every key's hash and record to the
// other users of the machine. Tightening rather than refusing: the file is
// ours and the fix is safe, and refusing would stop a working server at an
// upgrade. Only a file whose mode cannot be changed (not ours) is refused.
func makePrivate(p string) error {
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	}
	perm := fi.Mode().Perm()
	if perm&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(p, perm&0o700); err != nil {
		return fmt.Errorf("%s has mode %04o, open to other users, and cannot be made private (chmod 600 it, as its owner): %w", p, perm, err)
	}
	return nil
}

// Close releases the database. Watch calls on this Store return. Calling
// Close again does nothing.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closed)
		for _, st := range []*sql.Stmt{s.lookup, s.get} {
			if st != nil {
				st.Close()
			}
		}
		if s.pin != nil {
			s.pin.Close()
		}
		if cerr := s.db.Close(); cerr != nil {
			err = fmt.Errorf("close %s: %w", s.path, cerr)
		}
	})
	return err
}

// Ping reports whether the file answers a query, and is still the one the
// store opened.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.checkFiles(); err != nil {
		return fmt.Errorf("ping %s: %w", s.path, err)
	}
	var through int64
	var v int
	if err := s.db.QueryRowContext(ctx, `SELECT through, `+userVersion+` FROM changes_trimmed`).Scan(&through, &v); err != nil {
		return fmt.Errorf("ping %s: %w", s.path, dbErr(err))
	}
	if err := s.checkSchema(v); err != nil {
		return fmt.Errorf("ping %s: %w", s.path, err)
	}
	return nil
}
