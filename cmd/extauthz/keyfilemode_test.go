package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
)

// Whoever reads the TLS private key can pose as the server: to Envoy, and
// to the admin API's callers with their keys. A key file every user may
// read (0644, as a careless cp leaves it) is warned of at start; one only
// its owner and group read (Kubernetes gives a Secret's files to the Pod's
// fsGroup) is not.
func TestAKeyFileEveryUserMayReadIsWarnedOf(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	for _, tc := range []struct {
		mode os.FileMode
		warn bool
	}{{0o644, true}, {0o604, true}, {0o640, false}, {0o600, false}} {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			dir := t.TempDir()
			// Folders others may pass through, as /etc/ssl's are: in one
			// they may not (t.TempDir's 0700) no key is reachable.
			for _, d := range []string{filepath.Dir(dir), dir} {
				require.NoError(t, os.Chmod(d, 0o755))
			}
			certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
			installPair(t, certs.ServerCert, certs.ServerKey, certFile, keyFile)
			require.NoError(t, os.Chmod(keyFile, tc.mode))
			var logs syncbuf.Buffer
			path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%stls: {cert_file: %q, key_file: %q}\n",
				filepath.Join(dir, "k.db"), testRoutes, certFile, keyFile))
			startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
			if tc.warn {
				assert.Contains(t, logs.String(), "tls.key_file is readable by every user", lastLines(logs.String(), 6))
			} else {
				assert.NotContains(t, logs.String(), "readable by every user")
			}
		})
	}
}
