package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/config"
)

// freeAddr returns a loopback address no one listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// Two listeners on one address is a config serve cannot start with:
// config check says so (it passed it as ok), naming both.
func TestConfigCheckRefusesTwoListenersOnOneAddress(t *testing.T) {
	addr := freeAddr(t)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: %q, admin: %q}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		addr, addr, filepath.Join(t.TempDir(), "k.db"), testRoutes))
	_, stderr, code := cliRun(t, "config", "check", "--config", path)
	assert.NotZero(t, code)
	assert.Contains(t, stderr, "listen.admin: the same port as listen.http")
}

// A listener that cannot open (its port taken) stops the start with an
// error naming it, and nothing is left listening: the listeners opened
// before it are closed with it (the admin listener was left bound).
func TestAPortTakenLeavesNoListenerOpen(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	adminAddr, httpAddr := freeAddr(t), freeAddr(t)
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: %q, admin: %q, debug: %q}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		httpAddr, adminAddr, taken.Addr().String(), filepath.Join(t.TempDir(), "k.db"), testRoutes))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	err = serve(context.Background(), cfg, path, fileStamp(path), nil, io.Discard, io.Discard)
	require.ErrorContains(t, err, "listen.debug")
	for name, a := range map[string]string{"http": httpAddr, "admin": adminAddr} {
		ln, err := net.Listen("tcp", a)
		if assert.NoError(t, err, "listen.%s %s is still held open after the start failed", name, a) {
			ln.Close()
		}
	}
}
