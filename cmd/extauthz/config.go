package main

import (
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
)

// newConfigCmd is "extauthz config": check and explain the config.
func newConfigCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "config <command>",
		Short: "Validate the config, or explain what it decides for a request",
		Args:  cobra.ArbitraryArgs,
		RunE:  groupRun,
	}
	addConfigFlag(c.PersistentFlags())
	c.AddCommand(newConfigCheckCmd(), newConfigExplainCmd())
	return c
}

// checkReport is what config check finds; --json prints it.
type checkReport struct {
	OK       bool          `json:"ok"`
	Config   string        `json:"config"`
	Store    string        `json:"store,omitempty"`
	Warnings []string      `json:"warnings"`
	Errors   []string      `json:"errors"`
	Routes   []routeReport `json:"routes"`
}

// routeReport is one compiled route, as config check and explain print it.
type routeReport struct {
	Policy      string   `json:"policy"` // "default": the top-level routes
	Index       int      `json:"index"`  // routes[index] of the policy
	Path        string   `json:"path"`
	Methods     []string `json:"methods"` // empty: every method
	Permissions []string `json:"permissions"`
	Public      bool     `json:"public"`
	RateLimit   string   `json:"rate_limit,omitempty"` // per key on this route
}

func reportRoute(policy string, i int, r *authz.Route) routeReport {
	rr := routeReport{Policy: policy, Index: i, Path: r.Pattern, Methods: r.Methods, Permissions: r.Permissions, Public: r.Public}
	if rr.Methods == nil {
		rr.Methods = []string{}
	}
	if rr.Permissions == nil {
		rr.Permissions = []string{}
	}
	if !r.RateLimit.IsZero() {
		rr.RateLimit = r.RateLimit.String()
	}
	return rr
}

// newConfigCheckCmd is "extauthz config check": validate and print the
// route table. What the file gets wrong is an error (exit 1); what is
// valid but almost certainly a mistake is a warning (exit 0).
func newConfigCheckCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "check [--config FILE] [--json]",
		Short: "Validate the config and print the compiled route table",
		Long: `Validate the config as serve would read it, and print the compiled route table.
Exit 1 with a message naming the field when it is wrong: a misspelt field, a bad
value, a missing hashing pepper outside a development setup.

Warnings (on standard error; the file stays valid): routes that can never decide a
request (a repeated pattern, a route a broader earlier one shadows), a missing
pepper in a development setup, an admin listener reachable off loopback without
TLS, a debug listener reachable off loopback, a query or cookie source with
http_mode.query_and_cookie_keys: pass (no proxy in front of HTTP mode can remove it). --json prints {ok, config, store, warnings, errors, routes} on standard
output instead, with the same exit status.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			rep, policies, cfg := checkConfig(configPath(c))
			if asJSON {
				if err := writeJSON(c.OutOrStdout(), rep); err != nil {
					return err
				}
				if !rep.OK {
					return errReported
				}
				return nil
			}
			for _, w := range rep.Warnings {
				fmt.Fprintf(c.ErrOrStderr(), "warning: %s\n", w)
			}
			if !rep.OK {
				return fmt.Errorf("%s", strings.Join(rep.Errors, "\n"))
			}
			out := c.OutOrStdout()
			fmt.Fprintf(out, "config %s: ok\nstore: %s\n\n", rep.Config, rep.Store)
			if !policies.Named() {
				return policies.Default.Routes.Print(out, cfg.Unmatched)
			}
			return printPolicies(out, policies)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return c
}

// errReported is a failure whose details the command has printed already:
// exit 1 with no further message.
var errReported = reportedError{}

type reportedError struct{}

func (reportedError) Error() string { return "" }

// checkConfig loads and checks the config at path ("" = built-in defaults).
func checkConfig(path string) (checkReport, *authz.PolicySet, *config.Config) {
	rep := checkReport{Config: path, Warnings: []string{}, Errors: []string{}, Routes: []routeReport{}}
	if path == "" {
		rep.Config = "(built-in defaults)"
	}
	cfg, err := config.Load(path)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return rep, nil, nil
	}
	rep.Store = describeStore(cfg)
	policies, err := newPolicies(cfg)
	if err != nil {
		rep.Errors = append(rep.Errors, err.Error())
		return rep, nil, cfg
	}
	for _, p := range policies.Policies() {
		for i, r := range p.Routes.List() {
			rep.Routes = append(rep.Routes, reportRoute(p.Name, i, r))
		}
	}
	// A missing pepper fails the check as it would fail serve; in a declared
	// development setup it is a warning.
	if err := requirePepper(cfg, func(msg string) { rep.Warnings = append(rep.Warnings, msg) }); err != nil {
		rep.Errors = append(rep.Errors, err.Error())
	}
	warnPublicRedisPassword(cfg, func(msg string) { rep.Warnings = append(rep.Warnings, msg) })
	rep.Warnings = append(rep.Warnings, policyWarnings(cfg, policies)...)
	rep.Warnings = append(rep.Warnings, listenerWarnings(cfg)...)
	rep.OK = len(rep.Errors) == 0
	return rep, policies, cfg
}

// policyWarnings are the warnings of the decision's part of cfg, compiled
// into policies: the routes that can never decide a request, and the
// sources the proxy in front cannot strip. The file is valid, but such a
// route is usually a protection the operator believes in and does not
// have (an /api/admin/** after an /api/** that needs less), so serve logs
// them when it starts and at every reload, as config check prints them.
func policyWarnings(cfg *config.Config, policies *authz.PolicySet) []string {
	var out []string
	for _, p := range policies.Policies() {
		where := ""
		if policies.Named() {
			where = "policy " + p.Name + ": "
		}
		for _, w := range p.Routes.Warnings() {
			out = append(out, where+w)
		}
		m := p.Match
		if p.Name != "default" && cfg.Listen.GRPC.Enabled() && len(m.Context) == 0 && len(m.Principals) == 0 && len(m.Hosts) == 0 {
			// Valid for HTTP mode, whose auth path names the policy; over
			// gRPC nothing selects it, and its workload's checks go to the
			// default policy (or 403 no_policy with unselected: deny).
			out = append(out, where+"no match: no gRPC check selects it (only an HTTP mode auth path that names it does), so the requests meant for it are decided as unselected says; give it match.context, match.principals or match.hosts")
		}
	}
	return append(out, unstrippableSourceWarnings(cfg)...)
}

// unstrippableSourceWarnings: with http_mode.query_and_cookie_keys: pass,
// a key sent in a query or cookie source is allowed over HTTP mode, and no
// proxy that calls an HTTP auth service (Envoy's http_service, nginx,
// Traefik, Caddy) can take it off the request it forwards: it reaches the
// upstream, its logs included. With the default, refuse, such a request is
// 400 and nothing is worth a warning.
func unstrippableSourceWarnings(cfg *config.Config) []string {
	if !cfg.Listen.HTTP.Enabled() || cfg.HTTPMode.QueryAndCookieKeys != config.QueryAndCookieKeysPass {
		return nil
	}
	var out []string
	check := func(where string, srcs []config.Source) {
		for i, src := range srcs {
			kind, name := "query", src.Query
			if src.Cookie != "" {
				kind, name = "cookie", src.Cookie
			}
			if name == "" {
				continue
			}
			out = append(out, fmt.Sprintf("%ssources[%d] {%s: %s} with http_mode.query_and_cookie_keys: pass: the proxy in front cannot remove a %s credential, "+
				"so over HTTP mode a key sent there reaches the upstream; accept keys in headers only, or refuse them", where, i, kind, name, kind))
		}
	}
	check("", cfg.Sources)
	for _, p := range cfg.Policies {
		check("policy "+p.Name+": ", p.Sources)
	}
	return out
}

// loopbackAddr reports whether a listen address accepts connections from
// this host only: a loopback IP, or localhost.
func loopbackAddr(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// describeStore names the configured store, never a password: a Redis url
// is named without its user and query (the config refuses a password there,
// but one written where the user name goes reads as a user name).
func describeStore(cfg *config.Config) string {
	if cfg.Store.Backend == "redis" {
		r := cfg.Store.Redis
		switch {
		case r.MasterName != "":
			return fmt.Sprintf("redis sentinel %q via %v, prefix %q", r.MasterName, r.Addrs, r.Prefix)
		case len(r.Addrs) > 0:
			return fmt.Sprintf("redis cluster %v, prefix %q", r.Addrs, r.Prefix)
		}
		return fmt.Sprintf("redis %s, prefix %q", hostOfURL(r.URL), r.Prefix)
	}
	return "embedded store " + cfg.Store.Path
}

// hostOfURL is a Redis url without its user and query.
func hostOfURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(a url that does not parse)"
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment = nil, "", false, ""
	return u.String()
}

// describeStoreAt is describeStore with a relative embedded path resolved
// against the current directory, which is what it is relative to.
func describeStoreAt(cfg *config.Config) string {
	d := describeStore(cfg)
	if cfg.Store.Backend != "redis" && !filepath.IsAbs(cfg.Store.Path) {
		if abs, err := filepath.Abs(cfg.Store.Path); err == nil {
			d += " (" + abs + ")"
		}
	}
	return d
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
		warn(fmt.Sprintf("DEVELOPMENT SETUP, NOT FOR PRODUCTION: no hashing pepper (hashing.pepper_env: %s is empty), so keys are hashed with plain SHA-256 "+
			"and keys made now stop matching once a pepper is set; allowed only because the config says development: true", config.EnvRef(cfg.Hashing.PepperEnv)))
	} else if slices.Contains(publicPeppers, string(cfg.Hashing.Pepper)) {
		warn(fmt.Sprintf("the hashing pepper (%s) is the demo default written in docker-compose.yml, which anyone can read: "+
			"set it to a random secret of your own (openssl rand -base64 32) before keys that matter are made", config.EnvRef(cfg.Hashing.PepperEnv)))
	} else if n := len(cfg.Hashing.Pepper); n < minPepperBytes {
		warn(fmt.Sprintf("the hashing pepper (%s) is %d bytes: a pepper guards the stored hashes only if it cannot be guessed; "+
			"use at least %d random bytes (openssl rand -base64 32), and keep it: keys hashed under one pepper do not match under another",
			config.EnvRef(cfg.Hashing.PepperEnv), n, minPepperBytes))
	}
	// Apart from the others: a short pepper read from a file has its line
	// ending too, and each warning asks for its own fix.
	if p := cfg.Hashing.Pepper; len(bytes.TrimSpace(p)) != len(p) {
		warn(fmt.Sprintf("the hashing pepper (%s) begins or ends with white space, most likely a file's line ending: "+
			"every server and every keys command must get the very same bytes (a Kubernetes Secret made with --from-file keeps "+
			"the file's last newline, $(cat file) drops it), or keys made by one are unknown to the others",
			config.EnvRef(cfg.Hashing.PepperEnv)))
	}
	return nil
}

// publicPeppers are the peppers the repository itself writes down (the
// compose demo's default): a pepper is a secret, so these are none.
var publicPeppers = []string{"demo-only-pepper-not-for-production"}

// warnPublicRedisPassword calls warn when the Redis password is one the
// repository writes down (the compose demo's default). Whoever knows it and
// reaches Redis can rewrite any key record, its permissions included; Redis
// takes it all the same, so a setup copied from the demo would run with it
// and say nothing.
func warnPublicRedisPassword(cfg *config.Config, warn func(msg string)) {
	if cfg.Store.Backend != "redis" || !slices.Contains(publicRedisPasswords, cfg.Store.Redis.Password) {
		return
	}
	warn(fmt.Sprintf("the Redis password (%s) is the demo default written in docker-compose.yml, which anyone can read: "+
		"whoever reaches Redis with it can change every key; set it to a random secret of your own (openssl rand -base64 32) "+
		"in Redis and here", config.EnvRef(cfg.Store.Redis.PasswordEnv)))
}

// publicRedisPasswords are the Redis passwords the repository writes down.
var publicRedisPasswords = []string{"demo-only-redis-password"}

// minPepperBytes is the pepper length below which every command warns:
// 32 bytes of base64 text carry 192 bits.
const minPepperBytes = 32

// printList writes items one a line, indented, or "(none)".
func printList(w io.Writer, items []string) {
	if len(items) == 0 {
		fmt.Fprintln(w, "  (none)")
	}
	for _, s := range items {
		fmt.Fprintln(w, "  "+s)
	}
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
