package envoy_test

import (
	"os"
	"strings"
	"testing"
)

// Each shipped Envoy config tells the operator which extauthz setting to
// raise with Envoy's xff_num_trusted_hops when a load balancer sits in
// front. Envoy's ext_authz sends the TCP peer as attributes.source.address
// whatever xff_num_trusted_hops says, so behind a balancer extauthz must
// count X-Forwarded-For hops itself: over gRPC with
// client_ip.xff_trusted_hops, in HTTP mode with http_mode.xff_trusted_hops.
// Advice that named the other mode's setting left the one in force at its
// old value: over gRPC every client was then the balancer's address, and a
// key allowlisted to the balancer's network passed for every client.
func TestTheXFFAdviceNamesTheSettingThisModeReads(t *testing.T) {
	for _, c := range shippedConfigs {
		t.Run(c.path, func(t *testing.T) {
			data, err := os.ReadFile(c.path)
			must(t, err)
			// The comment blocks that end at xff_num_trusted_hops, with
			// use_remote_address's before it.
			lines := strings.Split(string(data), "\n")
			end := -1
			for i, l := range lines {
				if strings.HasPrefix(strings.TrimSpace(l), "xff_num_trusted_hops:") {
					end = i
					break
				}
			}
			if end < 0 {
				t.Fatal("no xff_num_trusted_hops")
			}
			start := end - 1
			for start > 0 && (strings.HasPrefix(strings.TrimSpace(lines[start]), "#") || strings.HasPrefix(strings.TrimSpace(lines[start]), "use_remote_address")) {
				start--
			}
			block := strings.Join(lines[start:end], "\n")
			want, wrong := "client_ip.xff_trusted_hops", "http_mode.xff_trusted_hops"
			if c.mode == httpMode {
				want, wrong = wrong, want
			}
			if strings.Contains(block, wrong) || !strings.Contains(block, want) {
				t.Errorf("the X-Forwarded-For advice must name %s, the setting this mode reads, and not %s:\n%s", want, wrong, block)
			}
		})
	}
}
