package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newRotateCmd is "keys rotate ID": a new key with the old one's metadata;
// the old one keeps working for the grace period.
func newRotateCmd() *cobra.Command {
	var (
		grace  time.Duration
		asJSON bool
	)
	c := &cobra.Command{
		Use:   "rotate ID [--grace 24h] [--json]",
		Short: "Replace a key with a new one; the old one works for the grace period",
		Long: `Create a new key (a new id) with the old key's metadata, printed once. The old key
answers expired_key after the grace period (0 = at once). Like create, it needs
the server's hashing pepper.`,
		RunE: func(c *cobra.Command, args []string) error {
			id, err := oneID(c, args)
			if err != nil {
				return err
			}
			if grace < 0 || grace > keystore.MaxLifetime {
				return usageErrorf(c, "--grace must be from 0 to 100 years")
			}
			if err := privateSecretOutput(c); err != nil {
				return err
			}
			ignoreBrokenPipe()
			return withManager(c, keysAction{hashes: true, writes: true}, func(ctx context.Context, m *keystore.Manager) error {
				secret, k, err := m.Rotate(ctx, id, grace, "cli", nil)
				switch {
				case err == nil || unconfirmedOnly(secret, err):
				case errors.Is(err, keystore.ErrNotLive):
					if cur, gerr := m.Store.Get(ctx, id); gerr == nil && cur.RotatedTo != "" {
						// A rotation repeated because its output was lost: the
						// new key exists, and its secret was shown only then.
						return fmt.Errorf("rotate %s: the key was already rotated, to %s, whose key that rotation printed; "+
							"rotate %s if that key is lost", id, shown(cur.RotatedTo), shown(cur.RotatedTo))
					}
					return fmt.Errorf("rotate %s: the key is revoked or expired; create a new key instead", id)
				default:
					return describeID(err, id)
				}
				// The old key keeps its own expiry when that comes first;
				// the new key carries the same.
				end := time.Now().UTC().Add(grace)
				if k.ExpiresAt != nil && k.ExpiresAt.Before(end) {
					end = k.ExpiresAt.UTC()
				}
				ends := end.Format(time.RFC3339)
				note := fmt.Sprintf("The old key %s stops working at %s.", id, ends)
				if perr := printNewKey(c, asJSON, secret, keystore.RedactLabels(k, m.Format.LabelHoldsKey), err, note, "rotate "+id); perr != nil {
					if nl := (*noteLost)(nil); errors.As(perr, &nl) {
						return fmt.Errorf("rotate %s: %w", id, perr) // the secret was printed
					}
					// The rotation stands (the old key's end is set), so the
					// way out is to rotate the new key, which nobody uses.
					return fmt.Errorf("rotate %s: the new key %s was made, but its secret could not be printed (%v) and is shown nowhere else; "+
						"the old key stops working at %s: run extauthz keys rotate %s --grace 0 for a key you can store", id, k.ID, perr, ends, k.ID)
				}
				return nil
			})
		},
	}
	c.Flags().DurationVar(&grace, "grace", 24*time.Hour, "how long the old key keeps working (0 = stop now)")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON object: the new key record, \"key\" and \"rotated_from\"")
	return c
}
