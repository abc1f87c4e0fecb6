package config

import (
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"
)

// Two listeners serve cannot both open are refused however their addresses
// are spelt: Listen.clash compared hosts and ports as written, so a name,
// an IPv4-mapped or long-form IPv6 literal, or a port with a leading zero
// passed, and serve then failed at its second bind with "address already
// in use". Addresses serve can open together are accepted, any free port
// (0, however spelt) among them.
func TestListenersThatShareAPortAreRefusedHoweverSpelt(t *testing.T) {
	for _, tc := range []struct {
		http, admin string
		clash       bool
	}{
		{"127.0.0.1:9100", "localhost:9100", true},
		{"127.0.0.1:9100", "[::ffff:127.0.0.1]:9100", true},
		{"127.0.0.1:9100", "[0::0]:9100", true},
		{"[::]:9100", "127.0.0.1:9100", true},
		{"0.0.0.0:9100", "[::1]:9100", true},
		{"[::1]:9100", "[0:0:0:0:0:0:0:1]:9100", true},
		{"127.0.0.1:9100", "127.0.0.1:09100", true},
		{"127.0.0.1:00", "127.0.0.1:00", false},
		{"127.0.0.1:0", "127.0.0.1:0", false},
		{"127.0.0.1:9100", "[::1]:9100", false},
		{"127.0.0.1:9100", "127.0.0.2:9100", false},
		{"127.0.0.1:9100", "127.0.0.1:9101", false},
	} {
		t.Run(tc.http+" "+tc.admin, func(t *testing.T) {
			_, err := Parse([]byte(fmt.Sprintf("listen: {grpc: off, http: %q, admin: %q}\n", tc.http, tc.admin)))
			if tc.clash {
				require.ErrorContains(t, err, "listen.admin: the same port as listen.http")
			} else {
				require.NoError(t, err)
			}
		})
	}
}
