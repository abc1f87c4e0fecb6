package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// newHealthcheckCmd is "extauthz healthcheck": exit 0 when the local HTTP
// listener's /healthz answers 200. It exists for Docker's HEALTHCHECK in an
// image that has no curl.
func newHealthcheckCmd() *cobra.Command {
	var clientCert, clientKey string
	c := &cobra.Command{
		Use:   "healthcheck [--config FILE] [--client-cert FILE --client-key FILE]",
		Short: "Exit 0 if the local server's /healthz answers 200",
		Long: `Ask the HTTP listener of the config (listen.http, on this host) for /healthz, and
exit 0 when it answers 200, 1 otherwise: the probe of the Docker image's
HEALTHCHECK, which has no curl.

With tls set, it speaks TLS to the listener without verifying the certificate
(it checks that this host's own server answers, and sends nothing secret). With
tls.client_ca_file (mutual TLS) it must present a client certificate the CA
signed: --client-cert and --client-key, else the server's own tls.cert_file and
tls.key_file, which then need the clientAuth extended key usage and the client
CA's signature.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if (clientCert == "") != (clientKey == "") {
				return usageErrorf(c, "give --client-cert and --client-key together")
			}
			cfg, _, err := loadConfig(c)
			if err != nil {
				return err
			}
			host, port, err := net.SplitHostPort(string(cfg.Listen.HTTP))
			if err != nil {
				return errors.New("healthcheck needs listen.http")
			}
			if host == "" || host == "0.0.0.0" || host == "::" {
				host = "127.0.0.1"
			}
			client := &http.Client{}
			scheme := "http"
			if cfg.TLS.Enabled() {
				scheme = "https"
				// #nosec G402 -- a liveness probe of this host's own listener: it
				// sends nothing secret and reads only the status.
				tc := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
				if cfg.TLS.ClientCAFile != "" {
					cert, key := cfg.TLS.CertFile, cfg.TLS.KeyFile
					if clientCert != "" {
						cert, key = clientCert, clientKey
					}
					pair, err := tls.LoadX509KeyPair(cert, key)
					if err != nil {
						return fmt.Errorf("healthcheck: client certificate for mutual TLS: %w", err)
					}
					tc.Certificates = []tls.Certificate{pair}
				}
				client.Transport = &http.Transport{TLSClientConfig: tc}
			}
			ctx, cancel := context.WithTimeout(c.Context(), 3*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+net.JoinHostPort(host, port)+"/healthz", nil)
			if err != nil {
				return err
			}
			resp, err := client.Do(req)
			if err != nil {
				return fmt.Errorf("healthcheck: %w", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
			}
			return nil
		},
	}
	addConfigFlag(c.Flags())
	c.Flags().StringVar(&clientCert, "client-cert", "", "client certificate (PEM) for mutual TLS (default: tls.cert_file)")
	c.Flags().StringVar(&clientKey, "client-key", "", "its private key (default: tls.key_file)")
	return c
}
