package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// updateCmd is "keys update ID [flags]": it changes only what its flags
// name. The CLI acts as the operator: it may lift any restriction and bring
// an expired key back, within keys.max_per_owner, but like every change it
// never touches a revoked or rotated-away key.
func updateCmd(fs *flag.FlagSet, stdout io.Writer, asJSON *bool) func(context.Context, *keystore.Manager, []string) error {
	name := fs.String("name", "", "new name")
	rate := fs.String("rate", "", "new rate limit, e.g. 100/m, none, or default (the configured default)")
	ttl := fs.Duration("ttl", 0, "expire this long from now, e.g. 24h")
	expiresAt := fs.String("expires-at", "", "expire at this RFC 3339 time")
	noExpiry := fs.Bool("no-expiry", false, "never expire")
	anyIP := fs.Bool("any-ip", false, "allow any client address (clear the allowlist)")
	anyPolicy := fs.Bool("any-policy", false, "make the key valid under every policy (clear its policies)")
	noMeta := fs.Bool("no-meta", false, "remove all metadata (then --meta sets entries afresh)")
	var perms, ips, policies listFlag
	var meta metaFlag
	fs.Var(&perms, "perm", "the new permissions (repeatable, or comma-separated; replaces them all)")
	fs.Var(&ips, "ip", "the new allowed client CIDRs or addresses (repeatable; replaces the allowlist)")
	fs.Var(&policies, "policy", "the policies the key is valid under (repeatable; replaces them all)")
	fs.Var(&meta, "meta", "set a metadata entry name=value, or delete it with name= (repeatable; the others stay)")
	return func(ctx context.Context, m *keystore.Manager, pos []string) error {
		id, err := oneID(pos)
		if err != nil {
			return err
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		var p keystore.Patch
		if set["name"] {
			p.Name = name
		}
		if set["perm"] {
			p.Permissions = (*[]string)(&perms)
		}
		if set["rate"] {
			r := strings.TrimSpace(*rate)
			if r == "default" {
				r = ""
			}
			rate, err := keystore.ParseRateLimit(r)
			if err != nil {
				return err
			}
			p.RateLimit = &rate
		}
		switch {
		case set["ip"] && *anyIP:
			return fmt.Errorf("%w: give --ip or --any-ip, not both", errUsage)
		case set["ip"]:
			allow, err := keystore.ParseCIDRs(ips)
			if err != nil {
				return &keystore.FieldError{Field: "ip", Message: err.Error()}
			}
			p.IPAllowlist = &allow
		case *anyIP:
			allow := []netip.Prefix{}
			p.IPAllowlist = &allow
		}
		if n := btoi(set["ttl"]) + btoi(set["expires-at"]) + btoi(*noExpiry); n > 1 {
			return fmt.Errorf("%w: give one of --ttl, --expires-at and --no-expiry", errUsage)
		}
		var exp *time.Time
		switch {
		case set["ttl"]:
			if *ttl <= 0 {
				return &keystore.FieldError{Field: "ttl", Message: "must be positive"}
			}
			t := time.Now().UTC().Add(*ttl)
			exp = &t
			p.ExpiresAt = &exp
		case set["expires-at"]:
			t, err := time.Parse(time.RFC3339, *expiresAt)
			if err != nil {
				return &keystore.FieldError{Field: "expires-at", Message: `want an RFC 3339 time like "2030-01-02T15:04:05Z"`}
			}
			t = t.UTC()
			exp = &t
			p.ExpiresAt = &exp
		case *noExpiry:
			p.ExpiresAt = &exp
		}
		switch {
		case set["policy"] && *anyPolicy:
			return fmt.Errorf("%w: give --policy or --any-policy, not both", errUsage)
		case set["policy"]:
			p.Policies = (*[]string)(&policies)
		case *anyPolicy:
			p.Policies = &[]string{}
		}
		if err := meta.check(); err != nil {
			return err
		}
		if *noMeta {
			p.Meta = &map[string]string{}
		}
		p.MetaChanges = meta.entries
		if !set["name"] && !set["perm"] && !set["rate"] && p.IPAllowlist == nil && p.ExpiresAt == nil &&
			p.Policies == nil && p.Meta == nil && p.MetaChanges == nil {
			return fmt.Errorf("%w: nothing to change: give --name, --perm, --rate, --ip, --any-ip, --ttl, --expires-at, --no-expiry, --policy, --any-policy, --meta or --no-meta", errUsage)
		}
		k, err := m.Update(ctx, id, p, nil, "cli")
		if err != nil {
			return describeID(describe(err, m), id)
		}
		if *asJSON {
			return writeJSON(stdout, k)
		}
		printKey(stdout, k, time.Now())
		return nil
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
