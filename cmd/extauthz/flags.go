package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/keystore"
)

// addConfigFlag registers --config on fs.
func addConfigFlag(fs *pflag.FlagSet) {
	fs.String("config", "", "config file (default $EXTAUTHZ_CONFIG)")
}

// configPath is --config, else $EXTAUTHZ_CONFIG; "" when neither is set.
func configPath(c *cobra.Command) string {
	if f := c.Flags().Lookup("config"); f != nil && f.Changed {
		return f.Value.String()
	}
	return os.Getenv("EXTAUTHZ_CONFIG")
}

// loadConfig loads the config of c (built-in defaults when no file is named).
func loadConfig(c *cobra.Command) (*config.Config, string, error) {
	path := configPath(c)
	cfg, err := config.Load(path)
	return cfg, path, err
}

// requireFlags is a usage error naming the first of names that was not
// given.
func requireFlags(c *cobra.Command, names ...string) error {
	for _, n := range names {
		if f := c.Flags().Lookup(n); f != nil && !f.Changed {
			return usageErrorf(c, "--%s is required", n)
		}
	}
	return nil
}

// flagOfField names the flag that sets a key record field, for errors the
// key manager reports by field ("permissions[0]: ..." is --perm's).
var flagOfField = map[string]string{
	"name": "--name", "owner": "--owner", "permissions": "--perm", "rate_limit": "--rate",
	"ip_allowlist": "--ip", "expires_at": "--ttl/--expires-at", "policies": "--policy", "meta": "--meta",
}

// flagError turns the key manager's complaint about a field given on the
// command line into a usage error naming the flag; any other error is
// returned as it is.
func flagError(c *cobra.Command, err error) error {
	var fe *keystore.FieldError
	if !errors.As(err, &fe) {
		return err
	}
	field, _, _ := strings.Cut(fe.Field, "[")
	if flag, ok := flagOfField[field]; ok {
		return usageErrorf(c, "%s: %s", flag, fe.Message)
	}
	return err
}

// listFlag is a repeatable flag (--perm a --perm b), also taking commas.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Type() string   { return "list" }

// Set adds the comma-separated names of v. A value without any ("", " , ")
// is refused: it is an unset variable in a script, and an empty --policy
// list would widen a key to every policy (that is --any-policy), an empty
// --perm list strip every permission.
func (l *listFlag) Set(v string) error {
	n := len(*l)
	for p := range strings.SplitSeq(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	if len(*l) == n {
		return errors.New("no names (give one or more, comma-separated)")
	}
	return nil
}

// pairsFlag is a repeatable flag of key=value entries (--context k=v),
// also taking commas: a listFlag whose empty value is refused as having no
// entries (the value's shape is checked where the entries are read).
type pairsFlag struct{ listFlag }

func (p *pairsFlag) Type() string { return "key=value" }

func (p *pairsFlag) Set(v string) error {
	if err := p.listFlag.Set(v); err != nil {
		return errors.New("no entries (give one or more key=value, comma-separated)")
	}
	return nil
}

// rateFlag is a key's rate limit ("100/m", "none"; with allowDefault also
// "default", the configured default), parsed when the flag is, so that a
// bad one is a usage error naming the flag.
type rateFlag struct {
	rate         keystore.RateLimit
	allowDefault bool
}

func (r *rateFlag) String() string { return r.rate.String() }
func (r *rateFlag) Type() string   { return "rate" }

func (r *rateFlag) Set(v string) error {
	v = strings.TrimSpace(v)
	if v == "" {
		// An unset variable, not "default": that would drop the key's own
		// rate for a default that may be looser, or none.
		if r.allowDefault {
			return errors.New("empty (give a rate like 100/m, none, or default)")
		}
		return errors.New("empty (give a rate like 100/m, or none; leave --rate out for the default)")
	}
	if r.allowDefault && v == "default" {
		r.rate = keystore.RateLimit{}
		return nil
	}
	rate, err := keystore.ParseRateLimit(v)
	if fe := (*keystore.FieldError)(nil); errors.As(err, &fe) {
		return errors.New(fe.Message)
	}
	r.rate = rate
	return err
}

// cidrFlag is a repeatable list of client CIDRs or addresses (also taking
// commas), each parsed when given.
type cidrFlag struct{ prefixes []netip.Prefix }

func (f *cidrFlag) String() string {
	parts := make([]string, len(f.prefixes))
	for i, p := range f.prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

func (f *cidrFlag) Type() string { return "cidr" }

func (f *cidrFlag) Set(v string) error {
	var list listFlag
	if err := list.Set(v); err != nil {
		// An unset variable, not --any-ip: an empty --ip list would let
		// the key in from every address.
		return errors.New("no addresses (give one or more CIDRs or addresses, comma-separated)")
	}
	ps, err := keystore.ParseCIDRs(list)
	if err != nil {
		return err
	}
	f.prefixes = append(f.prefixes, ps...)
	return nil
}

// timeFlag is an RFC 3339 time.
type timeFlag struct{ t time.Time }

func (f *timeFlag) String() string {
	if f.t.IsZero() {
		return ""
	}
	return f.t.Format(time.RFC3339)
}

func (f *timeFlag) Type() string { return "time" }

func (f *timeFlag) Set(v string) error {
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return fmt.Errorf(`want an RFC 3339 time like "2030-01-02T15:04:05Z"`)
	}
	f.t = t.UTC()
	return nil
}
