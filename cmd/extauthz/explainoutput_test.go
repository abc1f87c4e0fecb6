package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// config explain's table form wrote its lines without checking them: with
// standard output on a full disk it printed nothing and exited 0, where its
// --json form (and config check, keys list, show, ...) exit 1.
func TestConfigExplainOutputThatCannotBeWrittenIsAFailure(t *testing.T) {
	db := filepath.Join(t.TempDir(), "k.db")
	path := writeConfig(t, fmt.Sprintf("development: true\nstore: {path: %q}\naudit: {sink: none}\n", db))
	full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
	require.NoError(t, err)
	defer full.Close()
	for _, args := range [][]string{
		{"config", "explain", "--method", "GET", "--path", "/x", "--json"},
		{"config", "explain", "--method", "GET", "--path", "/x"},
	} {
		cmd := exec.Command(os.Args[0], append(args, "--config", path)...)
		cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1")
		var errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = full, &errb
		code := 0
		if err := cmd.Run(); err != nil {
			var exit *exec.ExitError
			require.True(t, errors.As(err, &exit), "%v", err)
			code = exit.ExitCode()
		}
		assert.Equal(t, 1, code, "%v wrote nothing (ENOSPC) yet exited %d: %s", args, code, errb.String())
	}
}
