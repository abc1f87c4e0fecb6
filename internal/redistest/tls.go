package redistest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// ServerName is the DNS name in every server certificate the helper makes
// (besides the address 127.0.0.1), for tests that verify a name other than
// the address they dial.
const ServerName = "redis.test"

// TLSFiles are PEM files of a throwaway certificate authority, a server
// certificate it signed (for 127.0.0.1 and ServerName, usable as a client
// certificate too, as Redis Cluster nodes present it to each other) and a
// client certificate it signed.
type TLSFiles struct {
	CA                    string
	ServerCert, ServerKey string
	ClientCert, ClientKey string
	caPool                *x509.CertPool
	clientPair            tls.Certificate
	serverPair            tls.Certificate
}

// NewTLSFiles makes a CA and the certificates it signs, in dir.
func NewTLSFiles(tb testing.TB, dir string) *TLSFiles {
	tb.Helper()
	dir = filepath.Join(dir, "tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		tb.Fatalf("tls dir: %v", err)
	}
	caKey := newKey(tb)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "redistest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		tb.Fatalf("make CA: %v", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	f := &TLSFiles{
		CA:         filepath.Join(dir, "ca.crt"),
		ServerCert: filepath.Join(dir, "server.crt"),
		ServerKey:  filepath.Join(dir, "server.key"),
		ClientCert: filepath.Join(dir, "client.crt"),
		ClientKey:  filepath.Join(dir, "client.key"),
		caPool:     x509.NewCertPool(),
	}
	f.caPool.AddCert(ca)
	writePEM(tb, f.CA, "CERTIFICATE", caDER)
	f.serverPair = signed(tb, ca, caKey, 2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: ServerName},
		DNSNames:    []string{ServerName},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, f.ServerCert, f.ServerKey)
	f.clientPair = signed(tb, ca, caKey, 3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "extauthz"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, f.ClientCert, f.ClientKey)
	return f
}

// ServerConfig is a TLS server configuration that presents the server
// certificate (for ServerName and 127.0.0.1).
func (f *TLSFiles) ServerConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{f.serverPair}, MinVersion: tls.VersionTLS12}
}

// ClientConfig is a TLS client configuration that trusts the CA and
// presents the client certificate.
func (f *TLSFiles) ClientConfig() *tls.Config {
	return &tls.Config{RootCAs: f.caPool, Certificates: []tls.Certificate{f.clientPair}, MinVersion: tls.VersionTLS12}
}

func newKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("generate key: %v", err)
	}
	return k
}

// signed makes a leaf certificate from tmpl, signed by ca, and writes it and
// its key as PEM files.
func signed(tb testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64, tmpl *x509.Certificate, certFile, keyFile string) tls.Certificate {
	tb.Helper()
	key := newKey(tb)
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		tb.Fatalf("sign %s: %v", tmpl.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		tb.Fatalf("encode key: %v", err)
	}
	writePEM(tb, certFile, "CERTIFICATE", der)
	writePEM(tb, keyFile, "PRIVATE KEY", keyDER)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		tb.Fatalf("load %s: %v", certFile, err)
	}
	return pair
}

func writePEM(tb testing.TB, file, kind string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		tb.Fatalf("write %s: %v", file, err)
	}
}
