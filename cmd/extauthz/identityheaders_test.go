package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// openRoutes adds a route that takes any valid key (no permissions).
const openRoutes = testRoutes + "  - {path: /open}\n"

// the same class as a name or owner that sanitises to
// nothing is written as "(unprintable)" because "the headers are always
// set, so a client's own of those names is not removed, and an empty value
// that a proxy drops would let the client's through"). A key made through
// the ordinary create path with no permissions (ValidatePermissions takes
// an empty list) was answered with an empty x-authz-permissions, and the
// client's own x-authz-permissions was not removed (setsHeader counted every
// identity header as set). The header is left out now, and the client's removed.
func TestAKeyWithNoPermissionsLeavesNoClientPermissionsHeader(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+openRoutes)
	ts := startServerFile(t, path)
	secret, _ := ts.create(t, keystore.Spec{Name: "noperms", Owner: "team", Permissions: []string{}})
	resp := ts.check(t, "GET", "/open", map[string]string{"x-api-key": secret, "x-authz-permissions": "admin,keys:admin"})
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
	got, set := headerMap(ok.GetHeaders())["x-authz-permissions"]
	removed := slices.Contains(ok.GetHeadersToRemove(), "x-authz-permissions")
	assert.True(t, (set && got != "") || removed,
		"x-authz-permissions set to %q (set=%v) and the client's own is removed=%v: a proxy that drops the empty value passes the client's \"admin,keys:admin\" on", got, set, removed)
}

// name and owner are sanitised "so an operator-chosen key name can
// never split or break the upstream request"; the permissions, joined into
// x-authz-permissions on the same path, are not. A record written by hand
// with a permission holding CR LF is
// answered with those bytes in the header value.
func TestStoredPermissionsAreSanitisedLikeNameAndOwner(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+openRoutes)
	ts := startServerFile(t, path)
	secret := storeByHand(t, ts, &keystore.Key{Name: "legacy", Owner: "team",
		Permissions: []string{"read:users", "x\r\nx-authz-owner:\x01root"}})
	resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret})
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
	got := headerMap(ok.GetHeaders())["x-authz-permissions"]
	assert.False(t, strings.ContainsAny(got, "\r\n\x00\x01\x7f"), "x-authz-permissions %q carries bytes a header value cannot", got)
}
