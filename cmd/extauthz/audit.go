package main

import (
	"fmt"

	"github.com/spf13/cobra"

	auditredis "github.com/extauthz/extauthz/audit/redis"
	"github.com/extauthz/extauthz/keystore"
)

// newAuditCmd is "extauthz audit": the audit stream's commands.
func newAuditCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "audit <command>",
		Short: "Read the audit stream (audit.sink: redis)",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRun,
	}
	addConfigFlag(c.PersistentFlags())
	c.AddCommand(newAuditTailCmd())
	return c
}

// newAuditTailCmd is "extauthz audit tail [--key ID] [-f] [-n N]".
func newAuditTailCmd() *cobra.Command {
	var (
		keyID  string
		follow bool
		n      int
	)
	c := &cobra.Command{
		Use:   "tail [--key ID] [-f] [-n N]",
		Short: "Print the recent audit events of the Redis stream, and follow it",
		Long: `Print the most recent events of the audit streams <prefix>audit (decisions, admin
calls refused for their credential or rate limit) and <prefix>audit:keys (key changes, and
the reads and refused escalations of authenticated admin callers), merged by time, one JSON
object a line, oldest first; -f keeps printing new ones. It reads the streams of the
Redis sink (audit.sink: redis); with the stdout sink, read the server's output instead.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if n < 0 {
				return usageErrorf(c, "-n must not be negative")
			}
			// --key "" (an unset variable) would print every key's
			// events: a mistake, as keys list --owner "" is.
			if c.Flags().Changed("key") && !keystore.ValidID(keyID) {
				return usageErrorf(c, "--key: that is not a key id (ids look like key_0Abc...)")
			}
			cfg, _, err := loadConfig(c)
			if err != nil {
				return err
			}
			if cfg.Audit.Sink != "redis" {
				return fmt.Errorf("audit tail reads the Redis stream, but audit.sink is %q (with stdout, read the server's output)", cfg.Audit.Sink)
			}
			be, err := openBackend(cfg, nil)
			if err != nil {
				return err
			}
			defer be.Close()
			return auditredis.Tail(c.Context(), be.redis, cfg.Store.Redis.Prefix, auditredis.TailOptions{KeyID: keyID, Follow: follow, Count: n}, c.OutOrStdout())
		},
	}
	c.Flags().StringVar(&keyID, "key", "", "only the events of this key id")
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	c.Flags().IntVarP(&n, "count", "n", 100, "how many recent events to print first")
	return c
}
