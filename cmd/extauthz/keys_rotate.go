package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// rotateCmd is "keys rotate ID": a new key with the old one's metadata;
// the old one keeps working for the grace period.
func rotateCmd(fs *flag.FlagSet, stdout io.Writer, asJSON *bool) func(context.Context, *keystore.Manager, []string) error {
	grace := fs.Duration("grace", 24*time.Hour, "how long the old key keeps working (0 = stop now)")
	return func(ctx context.Context, m *keystore.Manager, pos []string) error {
		id, err := oneID(pos)
		if err != nil {
			return err
		}
		secret, k, err := m.Rotate(ctx, id, *grace, "cli")
		if err != nil {
			if errors.Is(err, keystore.ErrNotLive) {
				return fmt.Errorf("rotate %s: the key is revoked or expired; create a new key instead", id)
			}
			return describeID(err, id)
		}
		note := fmt.Sprintf("The old key %s stops working at %s.", id, time.Now().UTC().Add(*grace).Format(time.RFC3339))
		return printNewKey(stdout, *asJSON, secret, k, note)
	}
}
