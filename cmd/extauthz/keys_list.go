package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newListCmd is "keys list": live keys (--all: revoked and expired too),
// never a secret or a hash.
func newListCmd() *cobra.Command {
	var (
		owner       string
		all, asJSON bool
	)
	c := &cobra.Command{
		Use:   "list [--owner O] [--all] [--json]",
		Short: "List keys (never a secret or a hash)",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if c.Flags().Changed("owner") {
				// --owner "" (an unset variable) would list every owner's
				// keys, and a malformed owner none: both are mistakes.
				if err := keystore.ValidateOwner(owner); err != nil {
					return flagError(c, err)
				}
			}
			return withManager(c, keysAction{}, func(ctx context.Context, m *keystore.Manager) error {
				return listKeys(ctx, m, c.OutOrStdout(), owner, all, asJSON)
			})
		},
	}
	c.Flags().StringVar(&owner, "owner", "", "only this owner's keys")
	c.Flags().BoolVar(&all, "all", false, "include revoked and expired keys")
	c.Flags().BoolVar(&asJSON, "json", false, "print one JSON array")
	return c
}

// listKeys prints every page; --json prints one array.
func listKeys(ctx context.Context, m *keystore.Manager, w io.Writer, owner string, all, asJSON bool) error {
	now := time.Now()
	var keys []*keystore.Key
	opts := keystore.ListOptions{Owner: owner, IncludeRevoked: all, Now: now, Limit: 1000}
	for {
		page, next, err := m.Store.List(ctx, opts)
		if err != nil {
			return err
		}
		for _, k := range page {
			keys = append(keys, keystore.RedactLabels(k, m.Format.LabelHoldsKey))
		}
		if next == "" {
			break
		}
		opts.After = next
	}
	if asJSON {
		if keys == nil {
			keys = []*keystore.Key{}
		}
		return writeJSON(w, keys)
	}
	ew := &errWriter{w: w}
	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tOWNER\tPERMISSIONS\tSTATUS\tCREATED\tEXPIRES\tLAST USED")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", shown(k.ID), shown(k.Name), shown(k.Owner), shown(strings.Join(k.Permissions, ",")),
			listedStatus(k, now), k.CreatedAt.UTC().Format(time.RFC3339), fmtTime(k.ExpiresAt, "never"), fmtTime(k.LastUsedAt, "never"))
	}
	tw.Flush()
	fmt.Fprintf(ew, "%d key(s)\n", len(keys))
	return ew.err
}

// listedStatus is a key's status as the table shows it: a live key rotated
// away is "grace", working until its EXPIRES (the end of its grace
// period), so that it is not taken for the line's newest key.
func listedStatus(k *keystore.Key, now time.Time) string {
	if st := k.StatusAt(now); st != keystore.Live || k.RotatedTo == "" {
		return st.String()
	}
	return "grace"
}
