package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// revokeCmd is "keys revoke ID": revoke a key (revoking it again changes
// nothing).
func revokeCmd(_ *flag.FlagSet, stdout io.Writer, asJSON *bool) func(context.Context, *keystore.Manager, []string) error {
	return func(ctx context.Context, m *keystore.Manager, pos []string) error {
		id, err := oneID(pos)
		if err != nil {
			return err
		}
		k, err := m.Revoke(ctx, id, "cli")
		if err != nil {
			return describeID(err, id)
		}
		if *asJSON {
			return writeJSON(stdout, k)
		}
		fmt.Fprintf(stdout, "revoked %s (%s) at %s\n", k.ID, shown(k.Name), k.RevokedAt.Format(time.RFC3339))
		return nil
	}
}
