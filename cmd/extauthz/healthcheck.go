package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"time"
)

// healthcheckCmd is "extauthz healthcheck": exit 0 when the local HTTP
// listener's /healthz answers 200. It exists for Docker's HEALTHCHECK in an
// image that has no curl.
func healthcheckCmd(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	cfg, _, err := loadConfig(fs, args)
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
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: /healthz answered %s", resp.Status)
	}
	return nil
}
