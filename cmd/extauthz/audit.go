package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	auditredis "github.com/extauthz/extauthz/audit/redis"
)

// auditCmd is "extauthz audit tail [--key ID] [-f] [-n N]".
func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "tail" {
		return fmt.Errorf("%w: audit takes the subcommand tail", errUsage)
	}
	fs := flag.NewFlagSet("audit tail", flag.ContinueOnError)
	keyID := fs.String("key", "", "only events of this key id")
	follow := fs.Bool("f", false, "keep printing new events")
	n := fs.Int("n", 100, "how many recent events to print first")
	cfg, _, err := loadConfig(fs, args[1:])
	if err != nil {
		return err
	}
	if cfg.Audit.Sink != "redis" {
		return fmt.Errorf("audit tail reads the Redis stream, but audit.sink is %q (with stdout, read the server's output)", cfg.Audit.Sink)
	}
	be, err := openBackend(cfg)
	if err != nil {
		return err
	}
	defer be.Close()
	return auditredis.Tail(ctx, be.redis, cfg.Store.Redis.Prefix, auditredis.TailOptions{KeyID: *keyID, Follow: *follow, Count: *n}, stdout)
}
