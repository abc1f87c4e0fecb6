package main

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"sync"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/certfile"
)

// listenerTLS is the TLS every listener serves when the config's tls is
// set: the certificate and key of tls.cert_file and tls.key_file, read
// again on the first handshake after either changed (the last pair that
// loaded is kept while a renewal is half written); with tls.client_ca_file,
// mutual TLS: a client must present a certificate one of those CAs signed
// (the bundle is read again when it changes, too). TLS 1.2 at least.
type listenerTLS struct {
	pair *certfile.Pair
	ca   *certfile.CAPool // nil: no client certificate asked for
}

// newListenerTLS loads the files of c, or returns nil when TLS is off.
// Errors name the config field.
func newListenerTLS(c config.TLS, logger *slog.Logger) (*listenerTLS, error) {
	if !c.Enabled() {
		return nil, nil
	}
	pair, err := certfile.Load("tls", c.CertFile, c.KeyFile)
	if err != nil {
		return nil, err
	}
	pair.Logger = logger
	if cert, _ := pair.Current(); certfile.ValidNow(cert.Leaf) != nil {
		// Served all the same, as a proxy would: refusing to start would
		// take the probes down too, and a renewal is picked up as it comes.
		logger.Warn("tls.cert_file is not valid now; clients that verify it refuse it until it is renewed",
			"cert_file", c.CertFile, "err", certfile.ValidNow(cert.Leaf))
	}
	certfile.WarnWritable(logger, "tls.cert_file", c.CertFile, nil)
	certfile.WarnWritable(logger, "tls.key_file", c.KeyFile, nil)
	certfile.WarnReadable(logger, "tls.key_file", c.KeyFile, nil)
	t := &listenerTLS{pair: pair}
	if c.ClientCAFile != "" {
		if t.ca, err = certfile.LoadCAPool("tls.client_ca_file", c.ClientCAFile); err != nil {
			return nil, err
		}
		t.ca.Logger = logger
		certfile.WarnWritable(logger, "tls.client_ca_file", c.ClientCAFile, nil)
	}
	return t, nil
}

// config is the tls.Config of one listener, offering protos by ALPN
// ("h2" for gRPC; "http/1.1" alone for HTTP: httpLimits); nil when TLS is
// off.
func (t *listenerTLS) config(protos ...string) *tls.Config {
	if t == nil {
		return nil
	}
	base := &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: t.pair.GetCertificate, NextProtos: protos}
	if t.ca == nil {
		return base
	}
	m := &mutualTLS{ca: t.ca, base: base.Clone()}
	m.base.ClientAuth = tls.RequireAndVerifyClientCert
	base.ClientAuth = tls.RequireAndVerifyClientCert
	base.GetConfigForClient = m.forClient
	return base
}

// mutualTLS gives each handshake the configuration with the client CA
// bundle in force, made again only when the bundle changed.
type mutualTLS struct {
	ca   *certfile.CAPool
	base *tls.Config

	mu   sync.Mutex
	pool *x509.CertPool
	cfg  *tls.Config
}

func (m *mutualTLS) forClient(*tls.ClientHelloInfo) (*tls.Config, error) {
	pool, err := m.ca.Current()
	if pool == nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if pool != m.pool {
		cfg := m.base.Clone()
		cfg.ClientCAs = pool
		m.pool, m.cfg = pool, cfg
	}
	return m.cfg, nil
}

// describeTLS says, for the start-up log line, how the listeners speak.
func describeTLS(c config.TLS) string {
	switch {
	case !c.Enabled():
		return "off"
	case c.ClientCAFile != "":
		return "mutual (client certificates required)"
	}
	return "on"
}
