package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/visible"
	"github.com/extauthz/extauthz/keystore"
)

// newKeysCmd is "extauthz keys": the key commands. They act on the
// configured store directly, whether or not a server runs on it; running
// servers see a change within a second through the store's change feed.
func newKeysCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "keys <command>",
		Short: "Create, list, show, update, revoke and rotate API keys",
		Long: `The keys commands act on the store the config names, directly, whether or not a
server runs on it: that is how the first admin key is made. Running servers see a
change within a second.

They need a config: --config FILE or $EXTAUTHZ_CONFIG. Without one they refuse,
rather than act on the built-in default store (./data/extauthz.db, relative to the
current directory), which no server may be reading. A command that changes a key
says on standard error which store it wrote to.`,
		Args: cobra.ArbitraryArgs,
		RunE: groupRun,
	}
	addConfigFlag(c.PersistentFlags())
	c.AddCommand(newCreateCmd(), newListCmd(), newShowCmd(), newUpdateCmd(), newRevokeCmd(), newRotateCmd())
	return c
}

// keysRun is what a keys subcommand does with the key manager.
type keysRun func(ctx context.Context, m *keystore.Manager) error

// keysAction describes a keys subcommand to withManager.
type keysAction struct {
	// hashes: the command hashes a new key, which needs the server's
	// pepper (create, rotate). list, show, update and revoke hash nothing,
	// and must work for an operator who holds the store but not the pepper
	// (an urgent revoke).
	hashes bool
	// writes: the command changes a key; it then says where it wrote.
	writes bool
}

// withManager loads the config, opens the store and runs fn with a key
// manager whose changes are audited (actor "cli").
func withManager(c *cobra.Command, act keysAction, fn keysRun) error {
	path := configPath(c)
	if path == "" {
		return usageErrorf(c, "no config: give --config FILE or set $EXTAUTHZ_CONFIG (the keys commands do not fall back "+
			"to the built-in default store ./data/extauthz.db, relative to the current directory, which no server may be reading)")
	}
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	stderr := c.ErrOrStderr()
	if act.hashes {
		if err := requirePepper(cfg, func(msg string) { fmt.Fprintln(stderr, "warning: "+msg) }); err != nil {
			return err
		}
	}
	warnPublicRedisPassword(cfg, func(msg string) { fmt.Fprintln(stderr, "warning: "+msg) })
	be, err := openBackend(cfg, nil)
	if err != nil {
		return err
	}
	defer be.Close()
	m := be.manager(cfg)
	auditLog := newAuditLogger(cfg, be, stderr, slog.New(slog.NewTextHandler(stderr, nil)))
	defer closeAudit(auditLog)
	auditChanges(m, auditLog)
	ctx, cancel := context.WithTimeout(c.Context(), 30*time.Second)
	defer cancel()
	if err := fn(ctx, m); err != nil {
		return err
	}
	if act.writes {
		fmt.Fprintf(stderr, "wrote to %s, config %s\n", describeStoreAt(cfg), path)
	}
	// The CLI's changes are audited by the CLI alone: one whose event
	// the sink did not take is in effect but nowhere in the trail, which
	// must not read as plain success.
	closeErr := closeAudit(auditLog)
	if closeErr != nil || auditLog.Failed() > 0 || auditLog.Dropped() > 0 {
		return errUnaudited
	}
	return nil
}

// errUnaudited is a change made whose audit event was lost (exit status 3).
var errUnaudited = errors.New("the change was made and is in effect, but its audit event could not be written " +
	"(see the audit warning above): record it in the audit trail by hand")

// oneID is the one key id a command takes.
func oneID(c *cobra.Command, args []string) (string, error) {
	if len(args) != 1 {
		return "", usageErrorf(c, "want exactly one key id (got %d arguments)", len(args))
	}
	if !keystore.ValidID(args[0]) {
		// Never echo it: someone may have pasted a secret where an id goes.
		return "", usageErrorf(c, "that is not a key id (ids look like key_0Abc...; see keys list)")
	}
	return args[0], nil
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
func (m *metaFlag) Type() string   { return "name=value" }

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

// check reports a --meta flag without "=", never quoting it, and a name no
// entry can have: a deletion by such a name (update's --meta Tier=) would
// remove nothing and still report the key changed.
func (m *metaFlag) check(c *cobra.Command) error {
	if m.malformed > 0 {
		return usageErrorf(c, "--meta wants name=value, e.g. --meta plan=gold")
	}
	for _, name := range slices.Sorted(maps.Keys(m.entries)) {
		if err := keystore.ValidateMetaName("meta", name); err != nil {
			return flagError(c, err)
		}
	}
	return nil
}

// writeJSON prints v as indented JSON, for a terminal as much as for a
// program: every character that does not draw itself is a \u escape
// (visible.EscapeJSON), as encoding/json leaves C1 controls, bidirectional
// overrides and zero-width characters raw. A program reads the same values.
func writeJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = w.Write(append(visible.EscapeJSON(nil, b), '\n'))
	return err
}

// printKey prints k as a table of its fields; the error is the first one
// writing it met (a full disk, a closed pipe), which the command must
// report: its output is what a script keeps.
func printKey(w io.Writer, k *keystore.Key, now time.Time) error {
	ew := &errWriter{w: w}
	tw := tabwriter.NewWriter(ew, 0, 4, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s:\t%s\n", name, value) }
	row("id", shown(k.ID))
	row("name", shown(k.Name))
	row("owner", shown(k.Owner))
	row("permissions", shown(strings.Join(k.Permissions, ", ")))
	rate := k.RateLimit.String()
	if rate == "" {
		rate = "(default)"
	}
	row("rate limit", shown(rate))
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
		policies = shown(strings.Join(k.Policies, ", "))
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
		row("rotated from", shown(k.RotatedFrom))
	}
	if k.RotatedTo != "" {
		row("rotated to", shown(k.RotatedTo))
	}
	if k.Lineage != "" {
		row("lineage", shown(k.Lineage)+" (counts in its rate limits)")
	}
	tw.Flush()
	return ew.err
}

// errWriter writes to w until a write fails, then keeps that error (in
// err) and writes nothing more: a table or a listing written line by line
// reports its first failure once, at the end.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

// shown is a stored label as the terminal should print it (a name, an
// owner, permissions, metadata, and what else a record holds as text: its
// id and those it names, its rate limit as written): as it is when it
// is visible text (every name and permission written since they are
// checked) with no variation selector (after a symbol with no second form,
// one draws nothing: "★\ufe0e" would pass for "★"), else quoted with its
// control, bidirectional and invisible
// characters escaped (visible.Quote: fillers that draw nothing too), so
// that a record written before, or straight into the store, cannot steer
// the terminal or pass for another.
func shown(label string) string {
	if keystore.CheckText("", label) == nil && !strings.ContainsFunc(label, visible.VariationSelector) {
		return label
	}
	return visible.Quote(label)
}

func fmtTime(t *time.Time, none string) string {
	if t == nil {
		return none
	}
	return t.UTC().Format(time.RFC3339)
}
