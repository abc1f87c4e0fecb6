package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// The identity headers are always set, so a client's own of those names is
// not removed: a stored name (a record written by hand) of nothing but
// bytes a header cannot carry, or of blanks only (a tab survives the
// sanitiser), was written as an empty or blank x-authz-key-name, which a
// proxy may drop and every HTTP reader trims to nothing (RFC 9110 §5.5),
// and the client's then stood. It is written as "(unprintable)" now.
func TestAStoredBlankNameIsStillAValue(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	for _, name := range []string{"\x01\x02", "\t", "\t\x01", " \t "} {
		secret := storeByHand(t, ts, &keystore.Key{Name: name, Owner: "team", Permissions: []string{"read:users"}})
		resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret, "x-authz-key-name": "admin-console"})
		ok := resp.GetOkResponse()
		require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
		got := headerMap(ok.GetHeaders())["x-authz-key-name"]
		assert.Equal(t, "(unprintable)", got, "stored name %q written as x-authz-key-name %q", name, got)
	}
}

// A forwarded metadata entry whose value is blank as a header carries it
// (nothing but bytes a header cannot carry, in a record written by hand; a
// tab and such a byte; one space, which keys create takes) was written as
// an empty or blank x-authz-meta-note, and counted as set, so the client's
// own x-authz-meta-note was not removed: a proxy that drops the blank value
// passes the client's on. A blank value counts as none now.
func TestABlankForwardedEntryLeavesNoClientHeader(t *testing.T) {
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nforward_meta: [note]\n"+
		storeYAML(t, "embedded")+testRoutes)
	ts := startServerFile(t, path)
	for _, tc := range []struct {
		name, value string
		byHand      bool
	}{
		{"control bytes, by hand", "\x01\x02\x7f", true},
		{"a tab and a control byte, by hand", "\t\x01", true},
		{"one space, created", " ", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var secret string
			if tc.byHand {
				secret = storeByHand(t, ts, &keystore.Key{Name: "legacy", Owner: "team", Permissions: []string{"read:users"},
					Meta: map[string]string{"note": tc.value}})
			} else {
				secret, _ = ts.create(t, keystore.Spec{Name: "svc", Owner: "team", Permissions: []string{"read:users"}, Meta: map[string]string{"note": tc.value}})
			}
			resp := ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": secret, "x-authz-meta-note": "tier=admin"})
			ok := resp.GetOkResponse()
			require.NotNil(t, ok, "%v", resp.GetDeniedResponse())
			got, set := headerMap(ok.GetHeaders())["x-authz-meta-note"]
			removed := slices.Contains(ok.GetHeadersToRemove(), "x-authz-meta-note")
			assert.True(t, removed || (set && strings.Trim(got, " \t") != ""),
				"x-authz-meta-note written as %q (set=%v), the client's removed=%v: a proxy that drops the blank value passes the client's \"tier=admin\" on", got, set, removed)
		})
	}
}
