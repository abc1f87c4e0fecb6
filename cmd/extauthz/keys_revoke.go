package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newRevokeCmd is "keys revoke ID": revoke a key (revoking it again changes
// nothing).
func newRevokeCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "revoke ID [--json]",
		Short: "Revoke a key (idempotent); every server refuses it within a second",
		RunE: func(c *cobra.Command, args []string) error {
			id, err := oneID(c, args)
			if err != nil {
				return err
			}
			return withManager(c, keysAction{writes: true}, func(ctx context.Context, m *keystore.Manager) error {
				k, err := m.Revoke(ctx, id, "cli")
				if err != nil {
					return describeID(err, id)
				}
				if asJSON {
					return writeJSON(c.OutOrStdout(), k)
				}
				fmt.Fprintf(c.OutOrStdout(), "revoked %s (%s) at %s\n", k.ID, shown(k.Name), k.RevokedAt.Format(time.RFC3339))
				return nil
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the revoked key's record as JSON")
	return c
}
