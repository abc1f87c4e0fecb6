package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// createCmd is "keys create": a new key, printed once (with --json, the
// flat record and "key").
func createCmd(fs *flag.FlagSet, stdout io.Writer, asJSON *bool) func(context.Context, *keystore.Manager, []string) error {
	name := fs.String("name", "", "key name (required)")
	owner := fs.String("owner", "", "owner (default \"default\")")
	rate := fs.String("rate", "", "rate limit, e.g. 100/m, or none (default: the configured default)")
	ttl := fs.Duration("ttl", 0, "expire after this long, e.g. 24h (default: never)")
	var perms, ips, policies listFlag
	var meta metaFlag
	fs.Var(&perms, "perm", "permission (repeatable, or comma-separated)")
	fs.Var(&ips, "ip", "allowed client CIDR or address (repeatable)")
	fs.Var(&policies, "policy", "a policy the key is valid under (repeatable; default: every policy)")
	fs.Var(&meta, "meta", "a metadata entry name=value (repeatable)")
	return func(ctx context.Context, m *keystore.Manager, pos []string) error {
		if err := noArgs(pos); err != nil {
			return err
		}
		if len(perms) == 0 {
			return fmt.Errorf("%w: --perm is required (a key without permissions can only pass routes with none)", errUsage)
		}
		if err := meta.check(); err != nil {
			return err
		}
		spec := keystore.Spec{Name: *name, Owner: *owner, Permissions: perms, Policies: policies, Meta: meta.entries}
		var err error
		if spec.RateLimit, err = keystore.ParseRateLimit(*rate); err != nil {
			return err
		}
		if *ttl < 0 {
			return &keystore.FieldError{Field: "ttl", Message: "must be positive"}
		}
		if *ttl > 0 {
			exp := time.Now().UTC().Add(*ttl)
			spec.ExpiresAt = &exp
		}
		if spec.IPAllowlist, err = keystore.ParseCIDRs(ips); err != nil {
			return &keystore.FieldError{Field: "ip", Message: err.Error()}
		}
		secret, k, err := m.Create(ctx, spec, "cli")
		if err != nil {
			return describe(err, m)
		}
		return printNewKey(stdout, *asJSON, secret, k, "")
	}
}

// printNewKey prints a created or rotated key. The secret appears here and
// nowhere else, ever.
func printNewKey(w io.Writer, asJSON bool, secret string, k *keystore.Key, note string) error {
	if asJSON {
		return writeJSON(w, keystore.Created{Key: k, Secret: secret})
	}
	printKey(w, k, time.Now())
	fmt.Fprintf(w, "\nkey: %s\n\nThis is the only time the key is shown: store it now.\n", secret)
	if note != "" {
		fmt.Fprintln(w, note)
	}
	return nil
}
