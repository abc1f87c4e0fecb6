package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/internal/loglimit"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// tlsServer is a server whose every listener speaks TLS with the
// certificate files in dir (tls.crt, tls.key), made from certs.
type tlsServer struct {
	*testServer
	grpcAddr, httpAddr, adminAddr string
	certFile, keyFile             string
}

func startTLSServer(t *testing.T, certs *redistest.TLSFiles, clientCA bool) *tlsServer {
	t.Helper()
	return startTLSServerOn(t, certs, clientCA, "127.0.0.1:0")
}

// startTLSServerOn is startTLSServer with the HTTP listener on httpAddr
// (for a healthcheck, which reads the address from the config).
func startTLSServerOn(t *testing.T, certs *redistest.TLSFiles, clientCA bool, httpAddr string) *tlsServer {
	t.Helper()
	dir := t.TempDir()
	ts := &tlsServer{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key")}
	installPair(t, certs.ServerCert, certs.ServerKey, ts.certFile, ts.keyFile)
	tlsYAML := fmt.Sprintf("tls: {cert_file: %q, key_file: %q}\n", ts.certFile, ts.keyFile)
	if clientCA {
		tlsYAML = fmt.Sprintf("tls: {cert_file: %q, key_file: %q, client_ca_file: %q}\n", ts.certFile, ts.keyFile, certs.CA)
	}
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: %q, admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%s%s",
		httpAddr, filepath.Join(dir, "k.db"), testRoutes, tlsYAML))
	ts.testServer = startServerFile(t, path)
	ts.grpcAddr, ts.httpAddr, ts.adminAddr = ts.srv.grpcLn.Addr().String(), ts.srv.httpLn.Addr().String(), ts.srv.adminLn.Addr().String()
	return ts
}

// installPair copies a certificate and key into place as a Secret volume
// renews them: each written aside, then renamed over the old one.
func installPair(t *testing.T, certFrom, keyFrom, certTo, keyTo string) {
	t.Helper()
	for from, to := range map[string]string{certFrom: certTo, keyFrom: keyTo} {
		data, err := os.ReadFile(from)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(to+".new", data, 0o600))
		require.NoError(t, os.Rename(to+".new", to))
	}
}

// clientTLS trusts the CA of certs and, with withCert, presents its client
// certificate.
func clientTLS(certs *redistest.TLSFiles, withCert bool) *tls.Config {
	c := certs.ClientConfig()
	if !withCert {
		c.Certificates = nil
	}
	return c
}

func grpcCheck(t *testing.T, addr string, creds credentials.TransportCredentials, key string) (*authv3.CheckResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	require.NoError(t, err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return authv3.NewAuthorizationClient(conn).Check(ctx, checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": key}))
}

func httpsGet(t *testing.T, c *tls.Config, url, key string) (int, error) {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: c}, Timeout: 5 * time.Second}
	req, err := http.NewRequest("GET", url, nil)
	require.NoError(t, err)
	req.Header.Set("x-api-key", key)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// Every listener serves TLS when tls is set: gRPC checks, HTTP-mode
// decisions and the admin API, over real TLS connections; none of them
// still answers in plain text.
func TestEveryListenerServesTLS(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	ts := startTLSServer(t, certs, false)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	admin, _ := ts.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:admin"}})
	c := clientTLS(certs, false)

	resp, err := grpcCheck(t, ts.grpcAddr, credentials.NewTLS(c), key)
	require.NoError(t, err)
	assert.Equal(t, int32(codes.OK), resp.GetStatus().GetCode(), "a gRPC check over TLS")

	status, err := httpsGet(t, c, "https://"+ts.httpAddr+"/authz/api/users", key)
	require.NoError(t, err)
	assert.Equal(t, 200, status, "an HTTP-mode decision over TLS")
	status, err = httpsGet(t, c, "https://"+ts.adminAddr+"/v1/keys", admin)
	require.NoError(t, err)
	assert.Equal(t, 200, status, "the admin API over TLS")

	_, err = grpcCheck(t, ts.grpcAddr, insecure.NewCredentials(), key)
	assert.Error(t, err, "no plain-text gRPC")
	for _, addr := range []string{ts.httpAddr, ts.adminAddr} {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err == nil {
			assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "plain HTTP gets the TLS listener's refusal")
			resp.Body.Close()
		}
	}
	// TLS 1.1 is refused.
	old := c.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	_, err = httpsGet(t, old, "https://"+ts.httpAddr+"/healthz", "")
	assert.Error(t, err, "TLS below 1.2")
}

// With tls.client_ca_file, a client without a certificate the CA signed
// gets no answer from any listener; one with it does.
func TestMutualTLSRefusesAClientWithoutACertificate(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	other := redistest.NewTLSFiles(t, t.TempDir()) // a certificate another CA signed
	ts := startTLSServer(t, certs, true)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	stranger := clientTLS(certs, false)
	stranger.Certificates = other.ClientConfig().Certificates

	for _, tc := range []struct {
		name string
		c    *tls.Config
		ok   bool
	}{
		{"no client certificate", clientTLS(certs, false), false},
		{"a certificate another CA signed", stranger, false},
		{"a certificate the client CA signed", clientTLS(certs, true), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := grpcCheck(t, ts.grpcAddr, credentials.NewTLS(tc.c), key)
			if tc.ok {
				require.NoError(t, err)
				assert.Equal(t, int32(codes.OK), resp.GetStatus().GetCode())
			} else {
				assert.Error(t, err, "gRPC")
			}
			for _, url := range []string{"https://" + ts.httpAddr + "/authz/api/users", "https://" + ts.adminAddr + "/v1/keys"} {
				status, err := httpsGet(t, tc.c, url, key)
				if tc.ok {
					require.NoError(t, err, url)
					assert.NotZero(t, status)
				} else {
					assert.Error(t, err, url)
				}
			}
		})
	}
}

// A renewed certificate is served from the next handshake on, without a
// restart; while a renewal is half written the pair in use stays.
func TestARenewedCertificateIsServedWithoutARestart(t *testing.T) {
	a := redistest.NewTLSFiles(t, t.TempDir())
	b := redistest.NewTLSFiles(t, t.TempDir())
	ts := startTLSServer(t, a, false)
	trustBoth := x509.NewCertPool()
	for _, ca := range []string{a.CA, b.CA} {
		pem, err := os.ReadFile(ca)
		require.NoError(t, err)
		require.True(t, trustBoth.AppendCertsFromPEM(pem))
	}
	served := func(addr string) []byte {
		t.Helper()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: trustBoth, NextProtos: []string{"h2", "http/1.1"}})
		require.NoError(t, err)
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	pemDER := func(file string) []byte {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(file, strings.Replace(file, ".crt", ".key", 1))
		require.NoError(t, err)
		return pair.Certificate[0]
	}
	for _, addr := range []string{ts.grpcAddr, ts.httpAddr, ts.adminAddr} {
		assert.Equal(t, pemDER(a.ServerCert), served(addr))
	}

	// Half-way: b's certificate beside a's key. The pair in use stays.
	data, err := os.ReadFile(b.ServerCert)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(ts.certFile, data, 0o600))
	assert.Equal(t, pemDER(a.ServerCert), served(ts.httpAddr), "a half-written renewal replaced the pair in use")

	installPair(t, b.ServerCert, b.ServerKey, ts.certFile, ts.keyFile)
	for _, addr := range []string{ts.grpcAddr, ts.httpAddr, ts.adminAddr} {
		assert.Equal(t, pemDER(b.ServerCert), served(addr), "the renewed certificate, on %s", addr)
	}
	// And a real check over the renewed certificate.
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	resp, err := grpcCheck(t, ts.grpcAddr, credentials.NewTLS(&tls.Config{RootCAs: trustBoth}), key)
	require.NoError(t, err)
	assert.Equal(t, int32(codes.OK), resp.GetStatus().GetCode())
}

// extauthz healthcheck (the image's HEALTHCHECK) works when the listeners
// speak TLS, and under mutual TLS with a client certificate: its own flags,
// or the server's certificate when the client CA signed it for client use.
func TestHealthcheckSpeaksTLS(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	for _, mutual := range []bool{false, true} {
		t.Run(fmt.Sprintf("mutual=%v", mutual), func(t *testing.T) {
			ts := startTLSServerOn(t, certs, mutual, fmt.Sprintf("127.0.0.1:%d", redistest.FreePort(t)))
			_, errOut, code := cliRun(t, "healthcheck", "--config", ts.cfgPath)
			assert.Equal(t, 0, code, errOut)
			_, errOut, code = cliRun(t, "healthcheck", "--config", ts.cfgPath, "--client-cert", certs.ClientCert, "--client-key", certs.ClientKey)
			assert.Equal(t, 0, code, errOut)
			if mutual {
				other := redistest.NewTLSFiles(t, t.TempDir())
				_, errOut, code = cliRun(t, "healthcheck", "--config", ts.cfgPath, "--client-cert", other.ClientCert, "--client-key", other.ClientKey)
				assert.Equal(t, 1, code, "a certificate the client CA did not sign: %s", errOut)
			}
		})
	}
}

// A certificate that does not load stops the server from starting, with
// the field named.
func TestTLSFilesThatDoNotLoadStopTheStart(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	dir := t.TempDir()
	for _, tc := range []struct{ tls, want string }{
		{fmt.Sprintf("{cert_file: %q, key_file: %q}", filepath.Join(dir, "none.crt"), certs.ServerKey), "tls.cert_file: "},
		{fmt.Sprintf("{cert_file: %q, key_file: %q}", certs.ServerCert, certs.ClientKey), "tls: cert_file"},
		{fmt.Sprintf("{cert_file: %q, key_file: %q, client_ca_file: %q}", certs.ServerCert, certs.ServerKey, certs.ServerKey), "tls.client_ca_file"},
	} {
		path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\nstore: {path: %q}\ntls: %s\n", filepath.Join(dir, "k.db"), tc.tls))
		_, errOut, code := cliRun(t, "serve", "--config", path)
		assert.Equal(t, 1, code)
		assert.Contains(t, errOut, tc.want)
	}
}

// A TLS handshake that fails on the HTTP or admin listener is logged, and
// Go's message quotes what the client offered: its application protocols,
// up to 64 KiB of them, any bytes the client likes, a pasted key too. The
// log line never carries a key (a message holding one is redacted whole),
// and stays short whatever the client sent.
func TestAFailedHandshakeLogsNoKeyAndAShortLine(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	dir := t.TempDir()
	tlsYAML := fmt.Sprintf("tls: {cert_file: %q, key_file: %q}\n", certs.ServerCert, certs.ServerKey)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%s%s",
		filepath.Join(dir, "k.db"), testRoutes, tlsYAML))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})

	var long []string
	for i := range 200 {
		long = append(long, fmt.Sprintf("%03d", i)+strings.Repeat("p", 250))
	}
	for _, protos := range [][]string{append([]string{key}, long...), long} {
		for _, addr := range []string{ts.srv.httpLn.Addr().String(), ts.srv.adminLn.Addr().String()} {
			c := clientTLS(certs, false)
			c.NextProtos = protos
			conn, err := tls.Dial("tcp", addr, c)
			if err == nil {
				conn.Close()
			}
			require.Error(t, err, "the server accepts none of the protocols offered")
		}
	}
	require.Eventually(t, func() bool { return strings.Count(logs.String(), `"level":"WARN"`) >= 4 }, 5*time.Second, 10*time.Millisecond)
	out := logs.String()
	assert.NotContains(t, out, key)
	assert.NotContains(t, out, key[3:20])
	assert.Equal(t, 2, strings.Count(out, audit.RedactedMark), "the messages that held the key")
	assert.Equal(t, 2, strings.Count(out, "TLS handshake error from 127.0.0.1:"), "the others still say what failed")
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		assert.LessOrEqual(t, len(line), 1024, "a log line of %d bytes: %.200s...", len(line), line)
	}
}

// A failed handshake is a log line, and anyone who can open a connection
// can fail one: without a bound, each connection opened and closed at
// once (no byte sent) would cost the log a line, at whatever rate the
// client connects. A listener writes a few such lines a minute, and the
// first line after says how many it left out.
func TestAFloodOfFailedHandshakesIsAFewLogLines(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	tlsYAML := fmt.Sprintf("tls: {cert_file: %q, key_file: %q}\n", certs.ServerCert, certs.ServerKey)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		filepath.Join(t.TempDir(), "k.db"), tlsYAML))
	var logs syncbuf.Buffer
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	const conns = 100
	for _, addr := range []string{ts.srv.httpLn.Addr().String(), ts.srv.adminLn.Addr().String()} {
		for range conns {
			conn, err := net.Dial("tcp", addr)
			require.NoError(t, err)
			conn.Close()
		}
	}
	// The server has read every connection once a request on each listener
	// is answered after them.
	_, err := httpsGet(t, clientTLS(certs, false), "https://"+ts.srv.httpLn.Addr().String()+"/healthz", "")
	require.NoError(t, err)
	_, err = httpsGet(t, clientTLS(certs, false), "https://"+ts.srv.adminLn.Addr().String()+"/v1/keys", "")
	require.NoError(t, err)
	time.Sleep(200 * time.Millisecond)
	n := strings.Count(logs.String(), "TLS handshake error")
	assert.Positive(t, n, "a failed handshake is still logged")
	assert.LessOrEqual(t, n, 2*listenerLogBurst, "%d connections closed unspoken made %d log lines", 2*conns, n)
}

// The lines a listener leaves out are counted, and the first it writes
// once its minute is over says how many.
func TestAListenersLogSaysHowManyLinesItLeftOut(t *testing.T) {
	var logs syncbuf.Buffer
	now := time.Unix(1000, 0)
	w := &limitedLogWriter{logger: slog.New(slog.NewJSONHandler(&logs, nil)), limit: loglimit.New(listenerLogBurst, listenerLogEvery, func() time.Time { return now })}
	l := log.New(w, "", 0)
	for i := range listenerLogBurst + 5 {
		l.Printf("http: TLS handshake error from 10.0.0.%d:1234: EOF", i)
	}
	assert.Equal(t, listenerLogBurst, strings.Count(logs.String(), "TLS handshake error"))
	now = now.Add(listenerLogEvery)
	l.Printf("http: TLS handshake error from 10.0.0.99:1234: EOF")
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, listenerLogBurst+1)
	assert.Contains(t, lines[listenerLogBurst], `"messages_left_out":5`)
	assert.NotContains(t, lines[0], "messages_left_out")
}

// A renewal that does not load keeps the certificate in use, and says so
// in the log once per change of the files, not at every handshake: an
// expired certificate or one not valid yet (a backup restored, a wrong
// clock where it was made), a certificate beside another's key, a file cut
// off halfway, one that cannot be read. A renewal that loads is served and
// logged.
func TestARenewalThatDoesNotLoadKeepsTheCertificateAndSaysSo(t *testing.T) {
	a := redistest.NewTLSFiles(t, t.TempDir())
	b := redistest.NewTLSFiles(t, t.TempDir())
	dir := t.TempDir()
	logs := &syncbuf.Buffer{}
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	installPair(t, a.ServerCert, a.ServerKey, certFile, keyFile)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%stls: {cert_file: %q, key_file: %q}\n",
		filepath.Join(dir, "k.db"), testRoutes, certFile, keyFile))
	ts := startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard})
	served := func() []byte {
		t.Helper()
		// #nosec G402 -- the test compares the certificate served, whatever it is.
		conn, err := tls.Dial("tcp", ts.srv.httpLn.Addr().String(), &tls.Config{InsecureSkipVerify: true})
		require.NoError(t, err)
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	der := func(certFile, keyFile string) []byte {
		t.Helper()
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		require.NoError(t, err)
		return pair.Certificate[0]
	}
	inUse := der(a.ServerCert, a.ServerKey)
	require.Equal(t, inUse, served())
	refusals := func() int { return strings.Count(logs.String(), "certificate files changed but do not load") }

	expired, expiredKey := selfSigned(t, t.TempDir(), time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	early, earlyKey := selfSigned(t, t.TempDir(), time.Now().Add(time.Hour), time.Now().Add(48*time.Hour))
	cut := filepath.Join(t.TempDir(), "cut.crt")
	whole, err := os.ReadFile(b.ServerCert)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(cut, whole[:len(whole)/2], 0o600))
	for i, tc := range []struct {
		name    string
		install func()
		want    string
	}{
		{"expired", func() { installPair(t, expired, expiredKey, certFile, keyFile) }, "the certificate expired at"},
		{"not valid yet", func() { installPair(t, early, earlyKey, certFile, keyFile) }, "the certificate is not valid before"},
		{"another's key", func() { installPair(t, b.ServerCert, a.ServerKey, certFile, keyFile) }, "private key does not match public key"},
		{"cut off", func() { installPair(t, cut, b.ServerKey, certFile, keyFile) }, "failed to find any PEM data in certificate input"},
		{"unreadable", func() { require.NoError(t, os.Mkdir(certFile, 0o700)) }, "is a directory"},
	} {
		tc.install()
		for range 5 {
			assert.Equal(t, inUse, served(), "%s: the pair in use was replaced", tc.name)
		}
		assert.Equal(t, i+1, refusals(), "%s: said once, not at every handshake:\n%s", tc.name, logs.String())
		assert.Contains(t, logs.String(), tc.want, tc.name)
		require.NoError(t, os.RemoveAll(certFile)) // for the next case's rename

	}

	installPair(t, b.ServerCert, b.ServerKey, certFile, keyFile)
	assert.Equal(t, der(b.ServerCert, b.ServerKey), served(), "a renewal that loads is served")
	assert.Contains(t, logs.String(), "certificate files reloaded")
}

// selfSigned writes a self-signed certificate valid from notBefore to
// notAfter, and its key, into dir.
func selfSigned(t *testing.T, dir string, notBefore, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	certFile, keyFile = filepath.Join(dir, "self.crt"), filepath.Join(dir, "self.key")
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600))
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certFile, keyFile
}

// copyCA copies the CA of certs to a file of the given mode, for a test to
// rewrite, and returns its path.
func copyCA(t *testing.T, certs *redistest.TLSFiles, mode os.FileMode) string {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "client-ca.crt")
	data, err := os.ReadFile(certs.CA)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(caFile, data, 0o600))
	require.NoError(t, os.Chmod(caFile, mode)) // past the umask
	return caFile
}

// startMTLSWithCAFile starts a server under mutual TLS whose client CA
// bundle is caFile (a copy the test may rewrite), with its log in logs.
func startMTLSWithCAFile(t *testing.T, certs *redistest.TLSFiles, caFile string, logs io.Writer) *testServer {
	t.Helper()
	dir := t.TempDir()
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%stls: {cert_file: %q, key_file: %q, client_ca_file: %q}\n",
		filepath.Join(dir, "k.db"), testRoutes, certs.ServerCert, certs.ServerKey, caFile))
	return startServerOut(t, path, serverOutput{logs: logs, audit: io.Discard})
}

// mtlsAccepted reports whether a TLS 1.3 client presenting c's certificate
// gets an answer from the HTTP listener (under TLS 1.3 the server refuses a
// client certificate after the client's Finished, so a request is needed).
func mtlsAccepted(t *testing.T, addr string, c *tls.Config) bool {
	t.Helper()
	_, err := httpsGet(t, c, "https://"+addr+"/healthz", "")
	return err == nil
}

// An operator retires a client CA by writing a new bundle. When the new
// bundle does not load (cut off, DER instead of PEM, a directory), the old
// bundle stays in force, as documented, and the holder of a certificate of
// the CA meant to be gone keeps access: that must be logged, as a server
// certificate's renewal that does not load is, and a reload that does.
func TestAClientCABundleThatDoesNotLoadIsLogged(t *testing.T) {
	old := redistest.NewTLSFiles(t, t.TempDir()) // the CA being retired
	next := redistest.NewTLSFiles(t, t.TempDir())
	caFile := copyCA(t, old, 0o600)
	var logs syncbuf.Buffer
	ts := startMTLSWithCAFile(t, old, caFile, &logs)
	addr := ts.srv.httpLn.Addr().String()
	require.True(t, mtlsAccepted(t, addr, clientTLS(old, true)))

	// The new bundle, written cut off (a copy interrupted, a full disk).
	nextPEM, err := os.ReadFile(next.CA)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, os.WriteFile(caFile+".new", nextPEM[:len(nextPEM)/2], 0o600))
	require.NoError(t, os.Rename(caFile+".new", caFile))

	assert.True(t, mtlsAccepted(t, addr, clientTLS(old, true)), "the bundle in use stays")
	assert.True(t, mtlsAccepted(t, addr, clientTLS(old, true)))
	assert.Equal(t, 1, strings.Count(logs.String(), "the client CA bundle changed but does not load"),
		"logged once for the change, not for every handshake:\n%s", lastLines(logs.String(), 5))
	assert.Contains(t, logs.String(), "tls.client_ca_file")

	// The bundle written whole: the new CA in force, the retired one out.
	time.Sleep(10 * time.Millisecond)
	require.NoError(t, os.WriteFile(caFile+".new", nextPEM, 0o600))
	require.NoError(t, os.Rename(caFile+".new", caFile))
	assert.False(t, mtlsAccepted(t, addr, clientTLS(old, true)), "the retired CA is out")
	c := clientTLS(old, true) // the server's certificate is still old's
	c.Certificates = next.ClientConfig().Certificates
	assert.True(t, mtlsAccepted(t, addr, c), "the new CA is in")
	assert.Contains(t, logs.String(), "client CA bundle reloaded")
}

// tls.client_ca_file is read again on every change, and whoever can write
// it can add a CA of their own and pass mutual TLS on every listener (the
// admin API included): a bundle every user of the host may write is warned
// of, as such a config file is.
func TestAClientCABundleEveryUserMayWriteIsWarnedOf(t *testing.T) {
	certs := redistest.NewTLSFiles(t, t.TempDir())
	intruder := redistest.NewTLSFiles(t, t.TempDir())
	caFile := copyCA(t, certs, 0o666)
	var logs syncbuf.Buffer
	ts := startMTLSWithCAFile(t, certs, caFile, &logs)
	addr := ts.srv.httpLn.Addr().String()
	require.False(t, mtlsAccepted(t, addr, clientTLS(intruder, true)))

	// Another local user appends their CA (the file is 0666).
	extra, err := os.ReadFile(intruder.CA)
	require.NoError(t, err)
	time.Sleep(10 * time.Millisecond)
	f, err := os.OpenFile(caFile, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	_, err = f.Write(extra)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	c := clientTLS(certs, true)
	c.Certificates = intruder.ClientConfig().Certificates
	require.True(t, mtlsAccepted(t, addr, c), "what the warning is about: the intruder's own certificate passes")

	assert.Contains(t, logs.String(), "tls.client_ca_file is writable by every user",
		"tls.client_ca_file is mode 0666:\n%s", lastLines(logs.String(), 5))
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
