package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// a stored name that sanitises to nothing is written as
// "(unprintable)" so that the always-set x-authz-key-name is never a value
// a proxy drops. A stored name of only a tab (or spaces and tabs) survives
// sanitizeHeaderValue (a tab is kept) and is written as a header value of
// only whitespace, which every HTTP reader trims to the empty value
// (RFC 9110 §5.5: leading and trailing whitespace is not part of the
// value): the same hole, one byte over.
func TestAStoredBlankNameIsStillAValue(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	for _, name := range []string{"\t", "\t\x01", " \t "} {
		secret := storeByHand(t, ts, &keystore.Key{Name: name, Owner: "team", Permissions: []string{"read:users"}})
		resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret, "x-authz-key-name": "admin-console"})
		ok := resp.GetOkResponse()
		require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
		got := headerMap(ok.GetHeaders())["x-authz-key-name"]
		assert.NotEqual(t, "", strings.Trim(got, " \t"), "stored name %q written as x-authz-key-name %q: empty once a reader trims it", name, got)
	}
}

// a forwarded entry whose value sanitises to nothing no
// longer counts as set, so the client's header of that name is removed. A
// value of only a tab, kept by the sanitiser, still counted as set: the
// answer wrote x-authz-meta-note "\t" (empty to any HTTP reader) and the
// client's own x-authz-meta-note was not removed. A blank value counts as
// none now.
func TestABlankForwardedEntryLeavesNoClientHeader(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nforward_meta: [note]\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	secret := storeByHand(t, ts, &keystore.Key{Name: "legacy", Owner: "team", Permissions: []string{"read:users"},
		Meta: map[string]string{"note": "\t\x01"}})
	resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret, "x-authz-meta-note": "tier=admin"})
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
	got, set := headerMap(ok.GetHeaders())["x-authz-meta-note"]
	removed := slices.Contains(ok.GetHeadersToRemove(), "x-authz-meta-note")
	assert.True(t, removed || (set && strings.Trim(got, " \t") != ""),
		"x-authz-meta-note written as %q (set=%v), the client's removed=%v: a proxy that drops the blank value passes the client's \"tier=admin\" on", got, set, removed)
}

// Through the ordinary create path: ValidateMeta takes a
// value of one space (CheckText counts a space as visible), so a key made by
// the admin API or `keys create --meta note=" "` was answered with
// x-authz-meta-note " ", which is the empty value to any HTTP reader, while
// the client's own x-authz-meta-note was not removed.
func TestACreatedSpaceMetaValueLeavesNoClientHeader(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nforward_meta: [note]\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	secret, _ := ts.create(t, keystore.Spec{Name: "svc", Owner: "team", Permissions: []string{"read:users"}, Meta: map[string]string{"note": " "}})
	resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret, "x-authz-meta-note": "tier=admin"})
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
	got, set := headerMap(ok.GetHeaders())["x-authz-meta-note"]
	removed := slices.Contains(ok.GetHeadersToRemove(), "x-authz-meta-note")
	assert.True(t, removed || (set && strings.Trim(got, " \t") != ""),
		"x-authz-meta-note written as %q (set=%v), the client's removed=%v: a proxy that drops the blank value passes the client's \"tier=admin\" on", got, set, removed)
}
