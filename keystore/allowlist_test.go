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
