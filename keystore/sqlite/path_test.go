package sqlite

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// store.path must name the store's file itself. Through a symbolic link,
// SQLite keeps its -wal, -shm and -journal beside the file the link points
// to, where the checks of them (a planted or removed -wal, their modes) do
// not look; a link to nothing was made again and again, each try leaving a
// temporary store behind, and Open never returned. Each is refused at
// once, and nothing is made or changed.
func TestAStorePathThatIsNoRegularFileIsRefused(t *testing.T) {
	made := t.TempDir()
	store := filepath.Join(made, "real.db")
	s, err := Open(store)
	require.NoError(t, err)
	require.NoError(t, s.Close())
	before, err := os.ReadFile(store)
	require.NoError(t, err)

	for _, tc := range []struct {
		name string
		make func(path string) error
	}{
		{"a symbolic link to a store", func(p string) error { return os.Symlink(store, p) }},
		{"a symbolic link to nothing", func(p string) error { return os.Symlink(filepath.Join(t.TempDir(), "later.db"), p) }},
		{"a symbolic link to a link", func(p string) error {
			mid := filepath.Join(t.TempDir(), "mid.db")
			if err := os.Symlink(store, mid); err != nil {
				return err
			}
			return os.Symlink(mid, p)
		}},
		{"a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"a named pipe", func(p string) error { return syscall.Mkfifo(p, 0o600) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "extauthz.db")
			require.NoError(t, tc.make(path))
			done := make(chan error, 1)
			go func() {
				s, err := Open(path)
				if err == nil {
					_ = s.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				require.ErrorIs(t, err, errNotAFile)
				assert.Contains(t, err.Error(), path)
			case <-time.After(10 * time.Second):
				t.Fatal("Open did not return")
			}
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Len(t, entries, 1, "something was made beside the path")
			after, err := os.ReadFile(store)
			require.NoError(t, err)
			assert.Equal(t, before, after, "the store behind the link was changed")
		})
	}
}
