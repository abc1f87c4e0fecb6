package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// noteFails is standard output that takes everything until the line
// rotate adds after the secret, "The old key ... stops working at ...",
// and fails that write (a disk filling up, a reader gone) and every later
// one.
type noteFails struct {
	bytes.Buffer
	failed bool
}

func (w *noteFails) Write(p []byte) (int, error) {
	if w.failed || bytes.Contains(p, []byte("stops working at")) {
		w.failed = true
		return 0, syscall.ENOSPC
	}
	return w.Buffer.Write(p)
}

// keys rotate's table form ends with the note of when the old key stops
// working, which was written with its error ignored: when that write
// failed, the command exited 0, and the operator or script that keeps the
// output had no word of the deadline after which every client still on the
// old key is refused. It exits 1 now, the error naming the deadline, and
// not as a rotation whose secret was lost (it was printed).
func TestKeysRotateNoteThatCannotBeWrittenIsAFailure(t *testing.T) {
	db := filepath.Join(t.TempDir(), "k.db")
	path := writeConfig(t, fmt.Sprintf("store: {path: %q}\naudit: {sink: none}\n", db))
	out, errOut, code := cliRun(t, "keys", "create", "--config", path, "--name", "a", "--perm", "read", "--json")
	require.Equal(t, 0, code, errOut)
	var made struct{ ID string }
	require.NoError(t, json.Unmarshal([]byte(out), &made))

	var stdout noteFails
	var stderr bytes.Buffer
	code = run(context.Background(), []string{"keys", "rotate", made.ID, "--config", path, "--grace", "1h"}, &stdout, &stderr)
	require.True(t, stdout.failed, "the note was written: %s", stdout.String())
	require.Contains(t, stdout.String(), "key: sk_", "the secret itself was printed")
	assert.Equal(t, 1, code, "the note of when the old key stops working was never written (ENOSPC): %s", stderr.String())
	assert.Contains(t, stderr.String(), "stops working at")
	assert.NotContains(t, stderr.String(), "could not be printed", "the secret was printed")
}
