package keystore

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs([]string{"10.0.0.0/8", "192.168.1.7", "2001:db8::/32", "::1"})
	require.NoError(t, err)
	want := []string{"10.0.0.0/8", "192.168.1.7/32", "2001:db8::/32", "::1/128"}
	for i, p := range got {
		assert.Equal(t, want[i], p.String())
	}
	for _, bad := range []string{"10.0.0.1/8", "300.1.1.1", "fe80::1%eth0", "nope"} {
		_, err := ParseCIDRs([]string{bad})
		assert.Error(t, err, bad)
	}
}

func TestParseCIDRsReadsIPv4MappedEntriesAsIPv4(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"::ffff:10.0.0.1", "10.0.0.1/32"},
		{"::ffff:10.0.0.1/128", "10.0.0.1/32"},
		{"::ffff:10.0.0.0/104", "10.0.0.0/8"},
		{"::FFFF:0a00:0/104", "10.0.0.0/8"},
		{"0:0:0:0:0:ffff:192.168.0.0/112", "192.168.0.0/16"},
		{"::ffff:0.0.0.0/96", "0.0.0.0/0"},
		// Not within ::ffff:0:0/96: IPv6 networks, matched by IPv6 clients.
		{"::/0", "::/0"},
		{"::/64", "::/64"},
		{"::10.0.0.0/104", "::a00:0/104"},
		{"64:ff9b::10.0.0.0/104", "64:ff9b::a00:0/104"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseCIDRs([]string{tc.in})
			require.NoError(t, err)
			require.Len(t, got, 1)
			assert.Equal(t, tc.want, got[0].String())
		})
	}
	for _, tc := range []struct{ in, suggest string }{
		{"::ffff:10.0.0.1/104", "10.0.0.0/8"},
		{"::ffff:10.0.0.0/96", "0.0.0.0/0"},
	} {
		t.Run(tc.in+" has host bits set", func(t *testing.T) {
			_, err := ParseCIDRs([]string{tc.in})
			require.Error(t, err)
			assert.Contains(t, err.Error(), "did you mean "+tc.suggest+"?", "the suggestion is the IPv4 network")
		})
	}
}
