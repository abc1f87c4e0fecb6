package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A keys command whose output could not be written has failed: an operator
// who runs `keys list > inventory.txt` (or `keys show ID > record.txt`) on a
// full disk was told, by exit status 0, that the file held the listing.
// The --json forms failed already; the table forms (update's and revoke's
// too, as their --json forms do, and config explain's) now fail as well.
func TestKeysOutputThatCannotBeWrittenIsAFailure(t *testing.T) {
	db := filepath.Join(t.TempDir(), "k.db")
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\naudit: {sink: none}\n", db))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "a", "--perm", "read", "--json")
	require.Equal(t, 0, code, errOut)
	var made struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &made))

	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	require.NoError(t, err)
	defer full.Close()
	runFull := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(os.Args[0], append(args, "--config", path)...)
		cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = full, &errb
		err := cmd.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return errb.String(), exit.ExitCode()
		}
		require.NoError(t, err)
		return errb.String(), 0
	}
	for _, args := range [][]string{
		{"keys", "list", "--json"},
		{"keys", "list"},
		{"keys", "show", made.ID},
		{"keys", "update", made.ID, "--name", "b"},
		{"keys", "revoke", made.ID},
		{"config", "explain", "--method", "GET", "--path", "/x", "--json"},
		{"config", "explain", "--method", "GET", "--path", "/x"},
	} {
		errOut, code := runFull(args...)
		assert.Equal(t, 1, code, "%v wrote nothing (ENOSPC) yet exited %d: %s", args, code, errOut)
	}
}
