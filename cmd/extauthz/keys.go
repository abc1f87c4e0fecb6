package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
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
		run = createCmd(fs, stdout, asJSON)
	case "list":
		run = listCmd(fs, stdout, asJSON)
	case "show":
		run = showCmd(fs, stdout, asJSON)
	case "update":
		run = updateCmd(fs, stdout, asJSON)
	case "revoke":
		run = revokeCmd(fs, stdout, asJSON)
	case "rotate":
		run = rotateCmd(fs, stdout, asJSON)
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

// metaFlag collects --meta name=value flags: each sets one metadata entry
// (update: an empty value deletes it). Values may hold commas and "=", so
// nothing is split but the first "=". A flag without "=" is counted, not
// refused at once: the flag package would quote the value in its error,
// and a pasted key is the likeliest such value (see check).
type metaFlag struct {
	entries   map[string]string
	malformed int
}

func (m *metaFlag) String() string { return "" }

func (m *metaFlag) Set(v string) error {
	name, value, ok := strings.Cut(v, "=")
	if !ok {
		m.malformed++
		return nil
	}
	if m.entries == nil {
		m.entries = map[string]string{}
	}
	m.entries[strings.TrimSpace(name)] = value
	return nil
}

// check reports a --meta flag without "=", never quoting it.
func (m *metaFlag) check() error {
	if m.malformed > 0 {
		return fmt.Errorf("%w: --meta wants name=value, e.g. --meta plan=gold", errUsage)
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
	policies := "(all)"
	if len(k.Policies) > 0 {
		policies = strings.Join(k.Policies, ", ")
	}
	row("policies", policies)
	if len(k.Meta) > 0 {
		var entries []string
		for _, name := range slices.Sorted(maps.Keys(k.Meta)) {
			entries = append(entries, shown(name)+"="+shown(k.Meta[name]))
		}
		row("meta", strings.Join(entries, ", "))
	}
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
