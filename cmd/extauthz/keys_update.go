package main

import (
	"context"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newUpdateCmd is "keys update ID [flags]": it changes only what its flags
// name. The CLI acts as the operator: it may lift any restriction and bring
// an expired key back, within keys.max_per_owner, but like every change it
// never touches a revoked or rotated-away key.
func newUpdateCmd() *cobra.Command {
	var (
		name                    string
		ttl                     time.Duration
		expiresAt               timeFlag
		noExpiry, anyIP, asJSON bool
		anyPolicy, noMeta       bool
		perms, policies         listFlag
		meta                    metaFlag
		rate                    = rateFlag{allowDefault: true}
		ips                     cidrFlag
	)
	c := &cobra.Command{
		Use:   "update ID [--name N] [--perm P...] [--rate R|default] [--ip CIDR...|--any-ip] [--ttl D|--expires-at T|--no-expiry] [--policy NAME...|--any-policy] [--no-meta] [--meta K=V...] [--json]",
		Short: "Change a key's metadata (never a revoked or rotated-away key)",
		Long: `Change only what the flags name. Bringing an expired key back counts against
keys.max_per_owner; a revoked or rotated-away key never changes again.`,
		Example: `  extauthz keys update key_0Abc... --config extauthz.yaml --perm read:users,write:users --ttl 720h`,
		RunE: func(c *cobra.Command, args []string) error {
			id, err := oneID(c, args)
			if err != nil {
				return err
			}
			set := func(n string) bool { return c.Flags().Changed(n) }
			var p keystore.Patch
			if set("name") {
				p.Name = &name
			}
			if set("perm") {
				p.Permissions = (*[]string)(&perms)
			}
			if set("rate") {
				p.RateLimit = &rate.rate
			}
			switch {
			case set("ip") && anyIP:
				return usageErrorf(c, "give --ip or --any-ip, not both")
			case set("ip"):
				p.IPAllowlist = &ips.prefixes
			case anyIP:
				allow := []netip.Prefix{}
				p.IPAllowlist = &allow
			}
			if n := btoi(set("ttl")) + btoi(set("expires-at")) + btoi(noExpiry); n > 1 {
				return usageErrorf(c, "give one of --ttl, --expires-at and --no-expiry")
			}
			var exp *time.Time
			switch {
			case set("ttl"):
				if ttl <= 0 {
					return usageErrorf(c, "--ttl must be positive")
				}
				t := time.Now().UTC().Add(ttl)
				exp = &t
				p.ExpiresAt = &exp
			case set("expires-at"):
				exp = &expiresAt.t
				p.ExpiresAt = &exp
			case noExpiry:
				p.ExpiresAt = &exp
			}
			switch {
			case set("policy") && anyPolicy:
				return usageErrorf(c, "give --policy or --any-policy, not both")
			case set("policy"):
				p.Policies = (*[]string)(&policies)
			case anyPolicy:
				p.Policies = &[]string{}
			}
			if err := meta.check(c); err != nil {
				return err
			}
			if noMeta {
				p.Meta = &map[string]string{}
			}
			p.MetaChanges = meta.entries
			if p.Name == nil && p.Permissions == nil && p.RateLimit == nil && p.IPAllowlist == nil && p.ExpiresAt == nil &&
				p.Policies == nil && p.Meta == nil && p.MetaChanges == nil {
				return usageErrorf(c, "nothing to change: give --name, --perm, --rate, --ip, --any-ip, --ttl, --expires-at, --no-expiry, --policy, --any-policy, --meta or --no-meta")
			}
			return withManager(c, keysAction{writes: true}, func(ctx context.Context, m *keystore.Manager) error {
				k, err := m.Update(ctx, id, p, nil, "cli")
				if err != nil {
					return flagError(c, describeID(describe(err, m), id))
				}
				k = keystore.RedactLabels(k, m.Format.LabelHoldsKey)
				if asJSON {
					return writeJSON(c.OutOrStdout(), k)
				}
				return printKey(c.OutOrStdout(), k, time.Now())
			})
		},
	}
	fs := c.Flags()
	fs.StringVar(&name, "name", "", "new name")
	fs.Var(&perms, "perm", "the new permissions (repeatable, or comma-separated; replaces them all)")
	fs.Var(&rate, "rate", "new rate limit, e.g. 100/m, none, or default (rate_limit.default of the config)")
	fs.Var(&ips, "ip", "the new allowed client CIDRs or addresses (repeatable; replaces the allowlist)")
	fs.BoolVar(&anyIP, "any-ip", false, "allow any client address (clear the allowlist)")
	fs.DurationVar(&ttl, "ttl", 0, "expire this long from now, e.g. 24h")
	fs.Var(&expiresAt, "expires-at", "expire at this RFC 3339 time")
	fs.BoolVar(&noExpiry, "no-expiry", false, "never expire")
	fs.Var(&policies, "policy", "the policies the key is valid under (repeatable; replaces them all)")
	fs.BoolVar(&anyPolicy, "any-policy", false, "make the key valid under every policy (clear its policies)")
	fs.Var(&meta, "meta", "set a metadata entry name=value, or delete it with name= (repeatable; the others stay)")
	fs.BoolVar(&noMeta, "no-meta", false, "remove all metadata (then --meta sets entries afresh)")
	fs.BoolVar(&asJSON, "json", false, "print the changed key record as JSON")
	return c
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
