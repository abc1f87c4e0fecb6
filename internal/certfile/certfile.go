// Package certfile serves a TLS certificate and key from files that are
// renewed in place (cert-manager, a Kubernetes Secret volume, certbot): it
// reads them again when either file has changed, and keeps the last pair
// that loaded while a renewal is half written. The key store's Redis client
// presents its client certificate through it, and every listener of the
// server its certificate.
//
// It is not a certificate manager: it neither requests nor renews
// certificates, only notices that someone did.
package certfile

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Pair is a certificate and its key, read from CertFile and KeyFile and
// read again on the first use after either file changed. Field is the
// config path errors name ("tls", "store.redis.tls").
type Pair struct {
	field, certFile, keyFile string
	// Logger, when set, is told of each pair that replaces the one in
	// use, and of each change of the files that does not load (the pair
	// in use then stays): a renewal that failed must not pass in silence
	// until the old certificate expires.
	Logger *slog.Logger

	mu    sync.Mutex
	stamp [2]os.FileInfo // of the files the pair in cert was read from
	cert  *tls.Certificate
	// failed is the files as they were when they last did not load, at
	// failedAt, with err; said is the last error logged.
	failed   [2]os.FileInfo
	failedAt time.Time
	err      error
	said     string
}

// retryFailed is how often files that did not load are read again while
// they look unchanged: a fix that leaves the size and time as they were
// (a chmod, a directory made readable) is seen within it, and a
// handshake, which anyone who reaches the port can start, does not cost a
// read and parse of both files while a renewal is broken.
const retryFailed = time.Second

// Load reads the pair for the first time; the error names field and the
// files.
func Load(field, certFile, keyFile string) (*Pair, error) {
	p := &Pair{field: field, certFile: certFile, keyFile: keyFile}
	if _, err := p.Current(); err != nil {
		return nil, err
	}
	return p, nil
}

// Current returns the pair, read again if either file changed since it was
// last read. When the files do not load (missing, a new certificate next
// to the old key while a renewal is being written, or a certificate that is
// not valid now, expired or not yet begun, in place of one that is), it
// returns the last pair that loaded, with the error; once nothing ever
// loaded, nil and the error.
func (p *Pair) Current() (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var now [2]os.FileInfo
	var err error
	if now[0], err = os.Stat(p.certFile); err != nil {
		return p.cert, p.fail(now, fmt.Errorf("%s.cert_file: %w", p.field, err))
	}
	if now[1], err = os.Stat(p.keyFile); err != nil {
		return p.cert, p.fail(now, fmt.Errorf("%s.key_file: %w", p.field, err))
	}
	if p.cert != nil && unchanged(p.stamp[0], now[0]) && unchanged(p.stamp[1], now[1]) {
		return p.cert, nil
	}
	if p.err != nil && unchanged(p.failed[0], now[0]) && unchanged(p.failed[1], now[1]) && time.Since(p.failedAt) < retryFailed {
		return p.cert, p.err
	}
	pair, err := tls.LoadX509KeyPair(p.certFile, p.keyFile)
	if err != nil {
		return p.cert, p.fail(now, fmt.Errorf("%s: cert_file %s and key_file %s: %v", p.field, p.certFile, p.keyFile, err))
	}
	// A certificate that is not valid now (a backup restored, a clock
	// wrong where it was issued) does not replace one that is; once the
	// one in use has expired too, the new one is no worse.
	if p.cert != nil && ValidNow(p.cert.Leaf) == nil {
		if err := ValidNow(pair.Leaf); err != nil {
			return p.cert, p.fail(now, fmt.Errorf("%s: cert_file %s: %v", p.field, p.certFile, err))
		}
	}
	replaced := p.cert != nil
	p.cert, p.stamp = &pair, now
	p.err, p.said = nil, ""
	if replaced && p.Logger != nil {
		p.Logger.Info("certificate files reloaded", "field", p.field, "cert_file", p.certFile, "not_after", pair.Leaf.NotAfter)
		WarnWritable(p.Logger, p.field+".cert_file", p.certFile, now[0])
		WarnWritable(p.Logger, p.field+".key_file", p.keyFile, now[1])
		WarnReadable(p.Logger, p.field+".key_file", p.keyFile, now[1])
	}
	return p.cert, nil
}

// fail notes that the files as they are in now did not load, with err, and
// logs it when it is news: not again for every handshake while the files
// stay as they are.
func (p *Pair) fail(now [2]os.FileInfo, err error) error {
	p.failed, p.failedAt, p.err = now, time.Now(), err
	if p.cert != nil && p.Logger != nil && err.Error() != p.said {
		p.said = err.Error()
		p.Logger.Error("certificate files changed but do not load; the pair in use stays until they do",
			"field", p.field, "err", err, "in_use_not_after", p.cert.Leaf.NotAfter)
	}
	return err
}

// ValidNow is nil when leaf is valid at this moment, else says why not.
func ValidNow(leaf *x509.Certificate) error {
	now := time.Now()
	switch {
	case leaf == nil:
		return nil
	case now.After(leaf.NotAfter):
		return fmt.Errorf("the certificate expired at %s", leaf.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(leaf.NotBefore):
		return fmt.Errorf("the certificate is not valid before %s", leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// usable is Current for crypto/tls: the last pair that loaded if any,
// else the error (the handshake then fails).
func (p *Pair) usable() (*tls.Certificate, error) {
	cert, err := p.Current()
	if cert == nil {
		return nil, err
	}
	return cert, nil
}

// GetCertificate is tls.Config.GetCertificate for a server.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.usable() }

// GetClientCertificate is tls.Config.GetClientCertificate for a client.
func (p *Pair) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return p.usable()
}

// unchanged reports whether a file is still the one read before: the same
// file (a Kubernetes Secret volume renews by swapping in a new one), with
// the same size and modification time.
func unchanged(before, now os.FileInfo) bool {
	return before != nil && os.SameFile(before, now) && before.Size() == now.Size() && before.ModTime().Equal(now.ModTime())
}

// CAPool is a PEM bundle of certificate authorities read from a file, and
// read again on the first use after it changed (a bundle that does not load
// then keeps the last one that did).
type CAPool struct {
	field, file string
	// Logger, when set, is told of each bundle that replaces the one in
	// use, and of each change of the file that does not load: the bundle
	// in use then stays, and a CA an operator meant to retire with the
	// change stays trusted, which must not pass in silence.
	Logger *slog.Logger

	mu    sync.Mutex
	stamp os.FileInfo
	pool  *x509.CertPool
	// failed is the file as it was when it last did not load, at
	// failedAt, with err; said is the last error logged.
	failed   os.FileInfo
	failedAt time.Time
	err      error
	said     string
}

// LoadCAPool reads the bundle for the first time; the error names field.
func LoadCAPool(field, file string) (*CAPool, error) {
	c := &CAPool{field: field, file: file}
	if _, err := c.Current(); err != nil {
		return nil, err
	}
	return c, nil
}

// Current returns the pool, read again if the file changed; on an error,
// the last pool that loaded (nil if none ever did) and the error.
func (c *CAPool) Current() (*x509.CertPool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(c.file)
	if err != nil {
		return c.pool, c.fail(fi, fmt.Errorf("%s: %w", c.field, err))
	}
	if c.pool != nil && unchanged(c.stamp, fi) {
		return c.pool, nil
	}
	if c.err != nil && unchanged(c.failed, fi) && time.Since(c.failedAt) < retryFailed {
		return c.pool, c.err
	}
	pem, err := os.ReadFile(c.file)
	if err != nil {
		return c.pool, c.fail(fi, fmt.Errorf("%s: %w", c.field, err))
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return c.pool, c.fail(fi, fmt.Errorf("%s %s: no PEM certificate in it", c.field, c.file))
	}
	replaced := c.pool != nil
	c.pool, c.stamp = pool, fi
	c.err, c.said = nil, ""
	if replaced && c.Logger != nil {
		c.Logger.Info("client CA bundle reloaded", "field", c.field, "file", c.file)
		WarnWritable(c.Logger, c.field, c.file, fi)
	}
	return c.pool, nil
}

// fail notes that the file as it is in fi did not load, with err, and logs
// it when it is news: not again for every handshake while the file stays
// as it is.
func (c *CAPool) fail(fi os.FileInfo, err error) error {
	c.failed, c.failedAt, c.err = fi, time.Now(), err
	if c.pool != nil && c.Logger != nil && err.Error() != c.said {
		c.said = err.Error()
		c.Logger.Error("the client CA bundle changed but does not load; the bundle in use stays until it does, CAs taken out of it included",
			"field", c.field, "err", err)
	}
	return err
}

// WarnWritable logs a warning when every user of the machine may write
// file: whoever can could put a certificate, key or CA of their own in it,
// read again within a second (a CA added to a client CA bundle passes
// mutual TLS on every listener). A warning, not a refusal, as for the
// config file: a folder shared into a container from Windows or macOS
// shows every file as 0777. fi is the file's, nil to stat it.
func WarnWritable(logger *slog.Logger, field, file string, fi os.FileInfo) {
	if fi == nil {
		var err error
		if fi, err = os.Stat(file); err != nil {
			return
		}
	}
	if logger != nil && fi.Mode().Perm()&0o002 != 0 {
		logger.Warn(field+" is writable by every user of this machine, who could put a certificate or CA of their own in it, read again within a second: chmod o-w it",
			"file", file, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
	}
}

// WarnReadable logs a warning when every user of the machine may read
// file, a private key: whoever reads it can pose as the server (to Envoy,
// and to the admin API's callers with their keys). A warning, as for
// WarnWritable. Group read is not warned of: Kubernetes gives a Secret's
// files to the Pod's fsGroup that way (defaultMode 0400 becomes 0440). Nor
// is a file in a folder other users cannot pass through (no o+x on it or
// on a folder above it, symbolic links followed). fi is the file's, nil to
// stat it.
func WarnReadable(logger *slog.Logger, field, file string, fi os.FileInfo) {
	if fi == nil {
		var err error
		if fi, err = os.Stat(file); err != nil {
			return
		}
	}
	if logger == nil || fi.Mode().Perm()&0o004 == 0 || unreachable(file) {
		return
	}
	logger.Warn(field+" is readable by every user of this machine, who could pose as this server with it: chmod o-r it (in Kubernetes, defaultMode: 0400 on the Secret's volume)",
		"file", file, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
}

// unreachable reports whether other users cannot reach file: a folder on
// its path (its links resolved) denies them passage (no o+x).
func unreachable(file string) bool {
	real, err := filepath.EvalSymlinks(file)
	if err != nil {
		return false
	}
	for d := filepath.Dir(real); ; d = filepath.Dir(d) {
		if st, err := os.Stat(d); err == nil && st.Mode().Perm()&0o001 == 0 {
			return true
		}
		if d == filepath.Dir(d) {
			return false
		}
	}
}
