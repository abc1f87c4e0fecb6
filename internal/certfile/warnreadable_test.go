package certfile

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// WarnReadable warned of a key readable by others from the file's own mode
// bits alone: a 0644 key in a folder only its owner may enter (0700, as
// /etc/ssl/private) is readable by no other user. It is warned of only
// where every folder above it lets others pass.
func TestAKeyOthersCannotReachIsNotWarnedOf(t *testing.T) {
	base := t.TempDir()
	// The test's own folders are made 0700; open them for the case that
	// warns.
	for _, d := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		dirMode os.FileMode
		warn    bool
	}{{0o700, false}, {0o750, false}, {0o755, true}, {0o711, true}} {
		dir := filepath.Join(base, tc.dirMode.String())
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, tc.dirMode); err != nil {
			t.Fatal(err)
		}
		key := filepath.Join(dir, "tls.key")
		if err := os.WriteFile(key, []byte("k"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(key, 0o644); err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		WarnReadable(slog.New(slog.NewTextHandler(&buf, nil)), "tls.key_file", key, nil)
		if got := strings.Contains(buf.String(), "readable by every user"); got != tc.warn {
			t.Errorf("a 0644 key in a %04o folder: warned %v, want %v: %s", tc.dirMode, got, tc.warn, strings.TrimSpace(buf.String()))
		}
	}
}
