package keystore

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseCIDRs reads an IP allowlist: CIDRs or bare addresses (a bare address
// is its own /32 or /128), as a key record holds it. The CLI and the
// admin API read allowlists with it. The error quotes the bad entry.
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			if p != p.Masked() {
				return nil, fmt.Errorf("ip %q: host bits set (did you mean %s?)", s, p.Masked())
			}
			out = append(out, p)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			return nil, fmt.Errorf("ip %q: want a CIDR like 10.0.0.0/8 or 2001:db8::/32, or an address", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}
