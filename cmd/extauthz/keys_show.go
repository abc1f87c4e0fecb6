package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newShowCmd is "keys show ID": one key's record.
func newShowCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "show ID [--json]",
		Short: "Show one key's metadata",
		RunE: func(c *cobra.Command, args []string) error {
			id, err := oneID(c, args)
			if err != nil {
				return err
			}
			return withManager(c, keysAction{}, func(ctx context.Context, m *keystore.Manager) error {
				k, err := m.Store.Get(ctx, id)
				if err != nil {
					return describeID(err, id)
				}
				k = keystore.RedactLabels(k, m.Format.LabelHoldsKey)
				if asJSON {
					return writeJSON(c.OutOrStdout(), k)
				}
				return printKey(c.OutOrStdout(), k, time.Now())
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the key record as JSON")
	return c
}
