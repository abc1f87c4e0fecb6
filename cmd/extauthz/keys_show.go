package main

import (
	"context"
	"flag"
	"io"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// showCmd is "keys show ID": one key's record.
func showCmd(_ *flag.FlagSet, stdout io.Writer, asJSON *bool) func(context.Context, *keystore.Manager, []string) error {
	return func(ctx context.Context, m *keystore.Manager, pos []string) error {
		id, err := oneID(pos)
		if err != nil {
			return err
		}
		k, err := m.Store.Get(ctx, id)
		if err != nil {
			return describeID(err, id)
		}
		if *asJSON {
			return writeJSON(stdout, k)
		}
		printKey(stdout, k, time.Now())
		return nil
	}
}
