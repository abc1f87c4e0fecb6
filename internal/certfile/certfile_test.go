package certfile

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
)

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, data, 0o600))
}

func TestAPairKeepsTheLastPairThatLoaded(t *testing.T) {
	dir := t.TempDir()
	a := redistest.NewTLSFiles(t, filepath.Join(dir, "a"))
	cert, key := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	copyFile(t, a.ClientCert, cert)
	copyFile(t, a.ClientKey, key)
	p, err := Load("tls", cert, key)
	require.NoError(t, err)
	first, err := p.GetCertificate(nil)
	require.NoError(t, err)

	// Half-way through a renewal: a new certificate beside the old key.
	b := redistest.NewTLSFiles(t, filepath.Join(dir, "b"))
	copyFile(t, b.ClientCert, cert)
	got, err := p.GetClientCertificate(nil)
	require.NoError(t, err)
	require.Same(t, first, got, "a mismatched pair replaced the one in use")
	_, err = p.Current()
	require.ErrorContains(t, err, "tls: cert_file "+cert+" and key_file "+key)

	copyFile(t, b.ClientKey, key)
	got, err = p.GetCertificate(nil)
	require.NoError(t, err)
	require.NotSame(t, first, got, "the completed renewal was not loaded")
	require.NotEqual(t, first.Certificate[0], got.Certificate[0])

	// The files gone: the pair in use stays, and the error names the field.
	require.NoError(t, os.Remove(cert))
	kept, err := p.GetCertificate(nil)
	require.NoError(t, err)
	require.Same(t, got, kept)
	_, err = p.Current()
	require.ErrorContains(t, err, "tls.cert_file: ")
}

func TestLoadNamesTheFieldAndTheFiles(t *testing.T) {
	dir := t.TempDir()
	a := redistest.NewTLSFiles(t, dir)
	_, err := Load("tls", filepath.Join(dir, "missing.crt"), a.ServerKey)
	require.ErrorContains(t, err, "tls.cert_file: ")
	_, err = Load("tls", a.ServerCert, a.ClientKey)
	require.ErrorContains(t, err, "tls: cert_file "+a.ServerCert+" and key_file "+a.ClientKey+": ")
	_, err = LoadCAPool("tls.client_ca_file", a.ServerKey)
	require.ErrorContains(t, err, "tls.client_ca_file "+a.ServerKey+": no PEM certificate in it")
}

func TestACAPoolIsReadAgainWhenItChanges(t *testing.T) {
	dir := t.TempDir()
	a := redistest.NewTLSFiles(t, filepath.Join(dir, "a"))
	b := redistest.NewTLSFiles(t, filepath.Join(dir, "b"))
	ca := filepath.Join(dir, "ca.crt")
	copyFile(t, a.CA, ca)
	c, err := LoadCAPool("tls.client_ca_file", ca)
	require.NoError(t, err)
	first, err := c.Current()
	require.NoError(t, err)
	same, err := c.Current()
	require.NoError(t, err)
	require.Same(t, first, same, "an unchanged file is not read again")

	time.Sleep(10 * time.Millisecond) // a modification time the file system tells apart
	copyFile(t, b.CA, ca)
	second, err := c.Current()
	require.NoError(t, err)
	require.NotSame(t, first, second)
	require.False(t, first.Equal(second))
}
