package sqlite

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// fullEnv, when set to "open PATH" or "write PATH KEYID", makes the test
// binary a child of the full-disk tests: it runs with a file size limit,
// so that growing any file fails as on a full disk (EFBIG rather than
// ENOSPC, to the same effect: the write does not happen).
const fullEnv = "EXTAUTHZ_SQLITE_TEST_FULL"

// childOnAFullDisk does what fullEnv says and prints one line per step.
// "write": with no room at all, a revocation, a rotation, an update and a
// create of KEYID's owner; then, with room for a few, creates until one
// fails; then a read of KEYID.
func childOnAFullDisk(arg string) int {
	f := strings.Fields(arg)
	ctx := context.Background()
	limit := func(n uint64) {
		// Only the soft limit, so that it can be raised again.
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: math.MaxUint64}); err != nil {
			fmt.Println("setrlimit:", err)
			os.Exit(1)
		}
	}
	if f[0] == "open" {
		limit(16 << 10) // below the 32 KiB of the -shm
		s, err := Open(f[1])
		if err == nil {
			s.Close()
		}
		fmt.Printf("open: %v\n", err)
		return 0
	}
	s, err := Open(f[1])
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	defer s.Close()
	create := func() (string, error) {
		now := time.Now().UTC()
		id, _ := keystore.NewID(now)
		return id, s.Create(ctx, &keystore.Key{ID: id, Name: "n", Owner: "alice", Permissions: []string{"read"}, CreatedAt: now},
			hasher.Hash("full "+id), 0)
	}
	m := &keystore.Manager{Store: s, Hasher: hasher}
	limit(0) // the -wal is empty: no change fits
	_, err = m.Revoke(ctx, f[2], "test")
	fmt.Printf("revoke: %v\n", err)
	_, _, err = m.Rotate(ctx, f[2], time.Hour, "test", nil)
	fmt.Printf("rotate: %v\n", err)
	renamed := "renamed"
	_, err = m.Update(ctx, f[2], keystore.Patch{Name: &renamed}, nil, "test")
	fmt.Printf("update: %v\n", err)
	id, err := create()
	fmt.Printf("create %s: %v\n", id, err)

	limit(128 << 10) // room for a few creates
	for {
		id, err := create()
		if err != nil {
			fmt.Printf("create %s: %v\n", id, err)
			break
		}
		fmt.Printf("created %s\n", id)
	}
	_, err = s.Get(ctx, f[2])
	fmt.Printf("get: %v\n", err)
	return 0
}

// closedStoreWithAKey makes a store file holding one key, k with hash h,
// and closes it.
func closedStoreWithAKey(t *testing.T) (path string, k *keystore.Key, h keystore.Hash) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "extauthz.db")
	s := openTest(t, path)
	k, h = testKey(t)
	require.NoError(t, s.Create(t.Context(), k, h, 0))
	require.NoError(t, s.Close())
	return path, k, h
}

func runFullChild(t *testing.T, arg string) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fullEnv+"="+arg)
	out, err := cmd.Output()
	require.NoError(t, err, "child: %s", out)
	var lines []string
	for sc := bufio.NewScanner(bytes.NewReader(out)); sc.Scan(); {
		lines = append(lines, sc.Text())
	}
	return lines
}

// On a full disk every change fails, saying so, and leaves the store as it
// was: no key half created, revoked or rotated, and every create that
// reported success is there afterwards. Reads go on.
func TestAFullDiskFailsChangesCleanly(t *testing.T) {
	path, k, _ := closedStoreWithAKey(t)
	lines := runFullChild(t, "write "+path+" "+k.ID)
	var created, failed []string
	for _, l := range lines {
		step, res, _ := strings.Cut(l, ": ")
		switch f := strings.Fields(step); {
		case f[0] == "created":
			created = append(created, f[1])
		case f[0] == "get":
			require.Equal(t, "<nil>", res, "reads go on")
		default:
			if f[0] == "create" {
				failed = append(failed, f[1])
			}
			require.Contains(t, res, keystore.ErrUnavailable.Error(), "%s fails as the store being unavailable: %q", step, lines)
		}
	}
	require.NotEmpty(t, created, "the creates with room fit: %q", lines)
	require.Len(t, failed, 2, "%q", lines)

	s := openTest(t, path)
	ctx := t.Context()
	for _, id := range created {
		_, err := s.Get(ctx, id)
		require.NoError(t, err, "a create that succeeded is there")
	}
	for _, id := range failed {
		_, err := s.Get(ctx, id)
		require.ErrorIs(t, err, keystore.ErrNotFound, "a failed create left nothing")
	}
	got, err := s.Get(ctx, k.ID)
	require.NoError(t, err)
	require.Nil(t, got.RevokedAt, "the failed revocation left nothing")
	require.Empty(t, got.RotatedTo, "the failed rotation left nothing")
	require.Nil(t, got.ExpiresAt)
	require.Equal(t, k.Name, got.Name, "the failed update left nothing")
	all, _, err := s.List(ctx, keystore.ListOptions{IncludeRevoked: true, Limit: 1000})
	require.NoError(t, err)
	require.Len(t, all, 1+len(created), "no other key was made")

	// With the files' room back, changes work again.
	_, err = (&keystore.Manager{Store: s, Hasher: hasher}).Revoke(ctx, k.ID, "test")
	require.NoError(t, err)
}

// A store that cannot even be opened for lack of room (a server restarted
// on a full disk: SQLite needs 32 KiB for the -shm before it reads
// anything) says that the file system may be full, rather than only "disk
// I/O error".
func TestAStoreThatCannotGrowItsSharedMemoryFileSaysWhy(t *testing.T) {
	path, _, _ := closedStoreWithAKey(t)
	require.NoFileExists(t, path+"-shm", "the last to close the store removes its -shm")

	lines := runFullChild(t, "open "+path)
	require.Len(t, lines, 1)
	require.Contains(t, lines[0], keystore.ErrUnavailable.Error())
	require.Contains(t, lines[0], path)
	require.Contains(t, lines[0], "the -shm file beside the database could not be grown: is the file system full?")
}
