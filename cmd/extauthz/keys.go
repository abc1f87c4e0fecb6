package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/keystore"
)

// keysCmd is "extauthz keys <create|list|show|update|revoke|rotate>". It
// acts on the configured store directly, whether or not a server runs on
// it; running servers see the change within a second through the store's
// change feed.
func keysCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return fmt.Errorf("%w: keys takes create, list, show, update, revoke or rotate", errUsage)
	}
	sub, args := args[0], args[1:]
	fs := flag.NewFlagSet("keys "+sub, flag.ContinueOnError)
	path := configFlag(fs)
	asJSON := fs.Bool("json", false, "print JSON")

	var run func(ctx context.Context, m *keystore.Manager, pos []string) error
	switch sub {
	case "create":
		name := fs.String("name", "", "key name (required)")
		owner := fs.String("owner", "", "owner (default \"default\")")
		rate := fs.String("rate", "", "rate limit, e.g. 100/m, or none (default: the configured default)")
		ttl := fs.Duration("ttl", 0, "expire after this long, e.g. 24h (default: never)")
		var perms, ips listFlag
		fs.Var(&perms, "perm", "permission (repeatable, or comma-separated)")
		fs.Var(&ips, "ip", "allowed client CIDR or address (repeatable)")
		run = func(ctx context.Context, m *keystore.Manager, pos []string) error {
			if err := noArgs(pos); err != nil {
				return err
			}
			if len(perms) == 0 {
				return fmt.Errorf("%w: --perm is required (a key without permissions can only pass routes with none)", errUsage)
			}
			spec := keystore.Spec{Name: *name, Owner: *owner, Permissions: perms}
			var err error
			if spec.RateLimit, err = keystore.ParseRateLimit(*rate); err != nil {
				return err
			}
			if *ttl < 0 {
				return &keystore.FieldError{Field: "ttl", Message: "must be positive"}
			}
			if *ttl > 0 {
				exp := time.Now().UTC().Add(*ttl)
				spec.ExpiresAt = &exp
			}
			if spec.IPAllowlist, err = keystore.ParseCIDRs(ips); err != nil {
				return &keystore.FieldError{Field: "ip", Message: err.Error()}
			}
			secret, k, err := m.Create(ctx, spec, "cli")
			if err != nil {
				return describe(err, m)
			}
			return printNewKey(stdout, *asJSON, secret, k, "")
		}
	case "list":
		owner := fs.String("owner", "", "only this owner's keys")
		all := fs.Bool("all", false, "include revoked and expired keys")
		run = func(ctx context.Context, m *keystore.Manager, pos []string) error {
			if err := noArgs(pos); err != nil {
				return err
			}
			return listKeys(ctx, m, stdout, *owner, *all, *asJSON)
		}
	case "show":
		run = func(ctx context.Context, m *keystore.Manager, pos []string) error {
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
	case "update":
		run = updateCmd(fs, stdout, asJSON)
	case "revoke":
		run = func(ctx context.Context, m *keystore.Manager, pos []string) error {
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
	case "rotate":
		grace := fs.Duration("grace", 24*time.Hour, "how long the old key keeps working (0 = stop now)")
		run = func(ctx context.Context, m *keystore.Manager, pos []string) error {
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
	default:
		return fmt.Errorf("%w: unknown keys subcommand %q", errUsage, sub)
	}

	pos, err := parseFlags(fs, args)
	if err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	// create and rotate hash a new key: without the server's pepper it would
	// never match. list, show and revoke hash nothing, and must work for an
	// operator who holds the store but not the pepper (an urgent revoke).
	if sub == "create" || sub == "rotate" {
		if err := requirePepper(cfg, func(msg string) { fmt.Fprintln(stderr, "extauthz: warning: "+msg) }); err != nil {
			return fmt.Errorf("keys %s: %w", sub, err)
		}
	}
	be, err := openBackend(cfg)
	if err != nil {
		return err
	}
	defer be.Close()
	m := be.manager(cfg)
	auditLog := newAuditLogger(cfg, be, stderr, slog.New(slog.NewTextHandler(stderr, nil)))
	defer closeAudit(auditLog)
	m.OnChange = recordChanges(auditLog)
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return run(ctx, m, pos)
}

func noArgs(pos []string) error {
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, pos[0])
	}
	return nil
}

func oneID(pos []string) (string, error) {
	if len(pos) != 1 {
		return "", fmt.Errorf("%w: want exactly one key id", errUsage)
	}
	if !keystore.ValidID(pos[0]) {
		// Never echo it: someone may have pasted a secret where an id goes.
		return "", errors.New("that is not a key id (ids look like key_0Abc...; see keys list)")
	}
	return pos[0], nil
}

func describeID(err error, id string) error {
	if errors.Is(err, keystore.ErrNotFound) {
		return fmt.Errorf("no key with id %s", id)
	}
	return err
}

func describe(err error, m *keystore.Manager) error {
	switch {
	case errors.Is(err, keystore.ErrKeyLimit):
		return fmt.Errorf("the owner already has %d live keys (keys.max_per_owner); revoke one first", m.MaxPerOwner)
	case errors.Is(err, keystore.ErrRetired):
		return fmt.Errorf("%w (revoking it still works); change its successor or create a new key", err)
	}
	return err
}

// updateCmd is "keys update ID [flags]": it changes only what its flags
// name. The CLI acts as the operator: it may lift any restriction and bring
// an expired key back, within keys.max_per_owner, but like every change it
// never touches a revoked or rotated-away key.
func updateCmd(fs *flag.FlagSet, stdout io.Writer, asJSON *bool) func(context.Context, *keystore.Manager, []string) error {
	name := fs.String("name", "", "new name")
	rate := fs.String("rate", "", "new rate limit, e.g. 100/m, none, or default (the configured default)")
	ttl := fs.Duration("ttl", 0, "expire this long from now, e.g. 24h")
	expiresAt := fs.String("expires-at", "", "expire at this RFC 3339 time")
	noExpiry := fs.Bool("no-expiry", false, "never expire")
	anyIP := fs.Bool("any-ip", false, "allow any client address (clear the allowlist)")
	var perms, ips listFlag
	fs.Var(&perms, "perm", "the new permissions (repeatable, or comma-separated; replaces them all)")
	fs.Var(&ips, "ip", "the new allowed client CIDRs or addresses (repeatable; replaces the allowlist)")
	return func(ctx context.Context, m *keystore.Manager, pos []string) error {
		id, err := oneID(pos)
		if err != nil {
			return err
		}
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		var p keystore.Patch
		if set["name"] {
			p.Name = name
		}
		if set["perm"] {
			p.Permissions = (*[]string)(&perms)
		}
		if set["rate"] {
			r := strings.TrimSpace(*rate)
			if r == "default" {
				r = ""
			}
			rate, err := keystore.ParseRateLimit(r)
			if err != nil {
				return err
			}
			p.RateLimit = &rate
		}
		switch {
		case set["ip"] && *anyIP:
			return fmt.Errorf("%w: give --ip or --any-ip, not both", errUsage)
		case set["ip"]:
			allow, err := keystore.ParseCIDRs(ips)
			if err != nil {
				return &keystore.FieldError{Field: "ip", Message: err.Error()}
			}
			p.IPAllowlist = &allow
		case *anyIP:
			allow := []netip.Prefix{}
			p.IPAllowlist = &allow
		}
		if n := btoi(set["ttl"]) + btoi(set["expires-at"]) + btoi(*noExpiry); n > 1 {
			return fmt.Errorf("%w: give one of --ttl, --expires-at and --no-expiry", errUsage)
		}
		var exp *time.Time
		switch {
		case set["ttl"]:
			if *ttl <= 0 {
				return &keystore.FieldError{Field: "ttl", Message: "must be positive"}
			}
			t := time.Now().UTC().Add(*ttl)
			exp = &t
			p.ExpiresAt = &exp
		case set["expires-at"]:
			t, err := time.Parse(time.RFC3339, *expiresAt)
			if err != nil {
				return &keystore.FieldError{Field: "expires-at", Message: `want an RFC 3339 time like "2030-01-02T15:04:05Z"`}
			}
			t = t.UTC()
			exp = &t
			p.ExpiresAt = &exp
		case *noExpiry:
			p.ExpiresAt = &exp
		}
		if p == (keystore.Patch{}) {
			return fmt.Errorf("%w: nothing to change: give --name, --perm, --rate, --ip, --any-ip, --ttl, --expires-at or --no-expiry", errUsage)
		}
		k, err := m.Update(ctx, id, p, nil, "cli")
		if err != nil {
			return describeID(describe(err, m), id)
		}
		if *asJSON {
			return writeJSON(stdout, k)
		}
		printKey(stdout, k, time.Now())
		return nil
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// printNewKey prints a created or rotated key. The secret appears here and
// nowhere else, ever.
func printNewKey(w io.Writer, asJSON bool, secret string, k *keystore.Key, note string) error {
	if asJSON {
		return writeJSON(w, keystore.Created{Key: k, Secret: secret})
	}
	printKey(w, k, time.Now())
	fmt.Fprintf(w, "\nkey: %s\n\nThis is the only time the key is shown: store it now.\n", secret)
	if note != "" {
		fmt.Fprintln(w, note)
	}
	return nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func printKey(w io.Writer, k *keystore.Key, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s:\t%s\n", name, value) }
	row("id", k.ID)
	row("name", shown(k.Name))
	row("owner", shown(k.Owner))
	row("permissions", shown(strings.Join(k.Permissions, ", ")))
	rate := k.RateLimit.String()
	if rate == "" {
		rate = "(default)"
	}
	row("rate limit", rate)
	ips := "(any)"
	if len(k.IPAllowlist) > 0 {
		parts := make([]string, len(k.IPAllowlist))
		for i, p := range k.IPAllowlist {
			parts[i] = p.String()
		}
		ips = strings.Join(parts, ", ")
	}
	row("ip allowlist", ips)
	row("status", k.StatusAt(now).String())
	row("created", k.CreatedAt.Format(time.RFC3339))
	row("expires", fmtTime(k.ExpiresAt, "never"))
	row("last used", fmtTime(k.LastUsedAt, "never"))
	if k.RevokedAt != nil {
		row("revoked", fmtTime(k.RevokedAt, ""))
	}
	if k.RotatedFrom != "" {
		row("rotated from", k.RotatedFrom)
	}
	if k.RotatedTo != "" {
		row("rotated to", k.RotatedTo)
	}
	tw.Flush()
}

// shown is a stored label as the terminal should print it: as it is when it
// is visible text (every name and permission written since they are
// checked), else quoted with its control, bidirectional and invisible
// characters escaped, so that a record written before cannot steer the
// terminal or pass for another.
func shown(label string) string {
	if keystore.CheckText("", label) == nil {
		return label
	}
	return strconv.Quote(label)
}

func fmtTime(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.RFC3339)
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
		keys = append(keys, page...)
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
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tOWNER\tPERMISSIONS\tSTATUS\tCREATED\tEXPIRES\tLAST USED")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", k.ID, shown(k.Name), shown(k.Owner), shown(strings.Join(k.Permissions, ",")),
			k.StatusAt(now), k.CreatedAt.UTC().Format(time.RFC3339), fmtTime(k.ExpiresAt, "never"), fmtTime(k.LastUsedAt, "never"))
	}
	tw.Flush()
	fmt.Fprintf(w, "%d key(s)\n", len(keys))
	return nil
}
