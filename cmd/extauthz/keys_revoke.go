package main

import (
	"context"
	"fmt"
	"io"
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
				defer stillLive(ctx, c.ErrOrStderr(), m, k)
				k = keystore.RedactLabels(k, m.Format.LabelHoldsKey)
				if asJSON {
					return writeJSON(c.OutOrStdout(), k)
				}
				_, err = fmt.Fprintf(c.OutOrStdout(), "revoked %s (%s) at %s\n", shown(k.ID), shown(k.Name), k.RevokedAt.Format(time.RFC3339))
				return err
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the revoked key's record as JSON")
	return c
}

// stillLive names on w the keys of k's line of rotations that still work
// after k was revoked (keystore.Manager.LiveLine): a revocation stops one
// key, and a line is cut off only when each of its live keys is revoked.
// An operator who took "revoked" for the whole line would leave them
// working. It is told after the revocation, and a failure to look tells
// nothing.
func stillLive(ctx context.Context, w io.Writer, m *keystore.Manager, k *keystore.Key) {
	later, earlier, err := m.LiveLine(ctx, k)
	if err != nil {
		return
	}
	for _, s := range later {
		fmt.Fprintf(w, "note: %s, a later key of the same line of rotations, still works (%s); revoke it too if whoever held %s could have rotated it\n",
			shown(s.ID), worksUntil(s), shown(k.ID))
	}
	for _, e := range earlier {
		fmt.Fprintf(w, "note: %s, an earlier key of the same line of rotations, still works in its grace period (%s); revoke it too to cut the line off now\n",
			shown(e.ID), worksUntil(e))
	}
}

// worksUntil says how long the live key k works: until its expiry, or for good.
func worksUntil(k *keystore.Key) string {
	if k.ExpiresAt == nil {
		return "it does not expire"
	}
	return "until " + k.ExpiresAt.UTC().Format(time.RFC3339)
}
