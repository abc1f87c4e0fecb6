package keystore

import (
	"fmt"
	"net/netip"
	"strings"
)

// ParseCIDRs reads an IP allowlist: CIDRs or bare addresses (a bare address
// is its own /32 or /128), as a key record holds it. The CLI and the
// admin API read allowlists with it. The error quotes the bad entry.
//
// An IPv4-mapped IPv6 address or network (::ffff:10.0.0.1,
// ::ffff:10.0.0.0/104) is read as its IPv4 form (10.0.0.1/32, 10.0.0.0/8):
// the decision reads a client's mapped address as IPv4, so a mapped
// network kept as written would hold no client's address, and the key would
// be refused from the very addresses it was meant for.
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		s = strings.TrimSpace(s)
		if p, err := netip.ParsePrefix(s); err == nil {
			p = unmapPrefix(p)
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

// unmapPrefix is p in its IPv4 form when it lies within ::ffff:0:0/96 (its
// address is IPv4-mapped and it fixes at least the 96 bits of the mapping);
// any other prefix is p itself. A wider IPv6 network (::/0) stays IPv6: it
// holds the IPv6 clients, and an IPv4 client is read as IPv4.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if !p.Addr().Is4In6() || p.Bits() < 96 {
		return p
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
}
