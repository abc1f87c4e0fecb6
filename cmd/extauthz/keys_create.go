package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newCreateCmd is "keys create": a new key, printed once (with --json, the
// flat record and "key").
func newCreateCmd() *cobra.Command {
	var (
		name, owner string
		asJSON      bool
		ttl         time.Duration
		perms       listFlag
		rate        rateFlag
		ips         cidrFlag
		policies    listFlag
		meta        metaFlag
	)
	c := &cobra.Command{
		Use:   "create --name N --perm P [--perm P...] [flags]",
		Short: "Create a key; it is printed once",
		Long: `Create a key. The key is printed once, here and never again: only its hash is
stored. It needs the server's hashing pepper (the variable hashing.pepper_env
names), or the key would never match.`,
		Example: `  extauthz keys create --config extauthz.yaml --name billing --perm read:invoices --rate 100/m
  extauthz keys create --config extauthz.yaml --name ops --perm keys:admin --ip 127.0.0.1/32 --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name", "perm"); err != nil {
				return err
			}
			if ttl < 0 {
				return usageErrorf(c, "--ttl must be positive")
			}
			if err := meta.check(c); err != nil {
				return err
			}
			spec := keystore.Spec{Name: name, Owner: owner, Permissions: perms, RateLimit: rate.rate, IPAllowlist: ips.prefixes,
				Policies: policies, Meta: meta.entries}
			if ttl > 0 {
				exp := time.Now().UTC().Add(ttl)
				spec.ExpiresAt = &exp
			}
			return withManager(c, keysAction{hashes: true, writes: true}, func(ctx context.Context, m *keystore.Manager) error {
				secret, k, err := m.Create(ctx, spec, "cli")
				unconfirmed := ""
				switch {
				case err == nil:
				case secret != "" && errors.Is(err, keystore.ErrUnconfirmed):
					// In effect, and the secret exists nowhere else: show
					// it, and the warning, and succeed (as rotate does).
					unconfirmed = err.Error()
				default:
					return flagError(c, describe(err, m))
				}
				if err := printNewKey(c.OutOrStdout(), asJSON, keystore.Created{Key: k, Secret: secret, Unconfirmed: unconfirmed}, ""); err != nil {
					return err
				}
				if unconfirmed != "" {
					fmt.Fprintf(c.ErrOrStderr(), "warning: create %s: %s\n", k.ID, unconfirmed)
				}
				return nil
			})
		},
	}
	fs := c.Flags()
	fs.StringVar(&name, "name", "", "key name (required)")
	fs.Var(&perms, "perm", "permission the key grants (required; repeatable, or comma-separated)")
	fs.StringVar(&owner, "owner", "", `owner (default "default")`)
	fs.Var(&rate, "rate", "rate limit, e.g. 100/m, or none (default: rate_limit.default of the config)")
	fs.DurationVar(&ttl, "ttl", 0, "expire after this long, e.g. 24h (default: never)")
	fs.Var(&ips, "ip", "allowed client CIDR or address (repeatable; default: any)")
	fs.Var(&policies, "policy", "a policy the key is valid under (repeatable; default: every policy)")
	fs.Var(&meta, "meta", "a metadata entry name=value (repeatable)")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object: the key record and \"key\"")
	return c
}

// printNewKey prints a created or rotated key. The secret appears here and
// nowhere else, ever.
func printNewKey(w io.Writer, asJSON bool, created keystore.Created, note string) error {
	if asJSON {
		return writeJSON(w, created)
	}
	printKey(w, created.Key, time.Now())
	fmt.Fprintf(w, "\nkey: %s\n\nThis is the only time the key is shown: store it now.\n", created.Secret)
	if note != "" {
		fmt.Fprintln(w, note)
	}
	return nil
}
