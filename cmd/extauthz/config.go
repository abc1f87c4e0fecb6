package main

import (
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/extauthz/extauthz/authz"
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
	policies, err := newPolicies(cfg)
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
	for _, p := range policies.Policies() {
		where := ""
		if policies.Named() {
			where = "policy " + p.Name + ": "
		}
		for _, w := range p.Routes.Warnings() {
			fmt.Fprintf(stderr, "warning: %s%s\n", where, w)
		}
	}
	fmt.Fprintf(stdout, "config %s: ok\n%sstore: %s\n\n", src, warning, describeStore(cfg))
	if !policies.Named() {
		return policies.Default.Routes.Print(stdout, cfg.Unmatched)
	}
	return printPolicies(stdout, policies)
}

// printPolicies writes each policy: what selects it, its mode and forwarded
// metadata, then its route table.
func printPolicies(w io.Writer, set *authz.PolicySet) error {
	fmt.Fprintf(w, "Policies are selected by Envoy's context_extensions, then the destination principal, then the host;\n")
	if set.DenyUnselected {
		fmt.Fprintf(w, "a request none selects is 403 no_policy (unselected: deny). HTTP mode: the auth path names the policy.\n")
	} else {
		fmt.Fprintf(w, "a request none selects gets policy default. HTTP mode: the auth path names the policy.\n")
	}
	for _, p := range set.Policies() {
		fmt.Fprintf(w, "\n== policy %s", p.Name)
		var sel []string
		if len(p.Match.Context) > 0 {
			var kv []string
			for _, k := range slices.Sorted(maps.Keys(p.Match.Context)) {
				kv = append(kv, k+"="+p.Match.Context[k])
			}
			sel = append(sel, "context "+strings.Join(kv, ","))
		}
		if len(p.Match.Principals) > 0 {
			sel = append(sel, "principals "+strings.Join(p.Match.Principals, " "))
		}
		if len(p.Match.Hosts) > 0 {
			sel = append(sel, "hosts "+strings.Join(p.Match.Hosts, " "))
		}
		switch {
		case p == set.Default:
			fmt.Fprintf(w, " (the top-level settings)")
		case len(sel) == 0:
			fmt.Fprintf(w, " (selected only by an HTTP-mode auth path)")
		default:
			fmt.Fprintf(w, ": %s", strings.Join(sel, "; "))
		}
		mode := "enforce"
		if p.Shadow {
			mode = "shadow (decisions are audited and counted, every request is allowed)"
		}
		fmt.Fprintf(w, "\nmode: %s", mode)
		if len(p.ForwardMeta) > 0 {
			fmt.Fprintf(w, "; forwards metadata %s", strings.Join(p.ForwardMeta, ", "))
		}
		fmt.Fprintf(w, "\n\n")
		unmatched := "deny"
		if p.Authenticate {
			unmatched = "authenticate"
		}
		if err := p.Routes.Print(w, unmatched); err != nil {
			return err
		}
	}
	return nil
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
