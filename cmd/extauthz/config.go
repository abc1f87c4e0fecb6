package main

import (
	"flag"
	"fmt"
	"io"

	"github.com/extauthz/extauthz/config"
)

// configCmd is "extauthz config check": validate and print the route
// table. Routes that can never decide a request (duplicates, routes a
// broader earlier one shadows) are warnings on stderr: the file is valid.
func configCmd(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		return fmt.Errorf("%w: config takes the subcommand check", errUsage)
	}
	fs := flag.NewFlagSet("config check", flag.ContinueOnError)
	cfg, path, err := loadConfig(fs, args[1:])
	if err != nil {
		return err
	}
	policy, err := newPolicy(cfg)
	if err != nil {
		return err
	}
	src := path
	if src == "" {
		src = "(built-in defaults)"
	}
	// A missing pepper fails the check as it would fail serve; in a declared
	// development setup it is a warning in the report.
	var warning string
	if err := requirePepper(cfg, func(msg string) { warning = "warning: " + msg + "\n" }); err != nil {
		return err
	}
	for _, w := range policy.Routes.Warnings() {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "config %s: ok\n%sstore: %s\n\n", src, warning, describeStore(cfg))
	return policy.Routes.Print(stdout, cfg.Unmatched)
}

func describeStore(cfg *config.Config) string {
	if cfg.Store.Backend == "redis" {
		r := cfg.Store.Redis
		switch {
		case r.MasterName != "":
			return fmt.Sprintf("redis sentinel %q via %v, prefix %q", r.MasterName, r.Addrs, r.Prefix)
		case len(r.Addrs) > 0:
			return fmt.Sprintf("redis cluster %v, prefix %q", r.Addrs, r.Prefix)
		}
		return fmt.Sprintf("redis %s, prefix %q", r.URL, r.Prefix)
	}
	return "embedded " + cfg.Store.Path
}

// requirePepper refuses to go on without a hashing pepper unless the config
// declares a development setup; there it calls warn with a loud message
// instead. Every command that hashes keys (serve, keys create and rotate)
// and config check go through it.
func requirePepper(cfg *config.Config, warn func(msg string)) error {
	if err := cfg.CheckPepper(); err != nil {
		return err
	}
	if len(cfg.Hashing.Pepper) == 0 {
		warn(fmt.Sprintf("DEVELOPMENT SETUP, NOT FOR PRODUCTION: no hashing pepper ($%s is empty), so keys are hashed with plain SHA-256 "+
			"and keys made now stop matching once a pepper is set; allowed only because the config says development: true", cfg.Hashing.PepperEnv))
	}
	return nil
}
