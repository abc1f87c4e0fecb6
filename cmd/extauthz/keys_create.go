package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/keystore"
)

// newCreateCmd is "keys create": a new key, printed once (with --json, the
// flat record and "key").
func newCreateCmd() *cobra.Command {
	var (
		name, owner string
		asJSON      bool
		ttl         time.Duration
		perms       listFlag
		rate        rateFlag
		ips         cidrFlag
		policies    listFlag
		meta        metaFlag
	)
	c := &cobra.Command{
		Use:   "create --name N --perm P [--perm P...] [flags]",
		Short: "Create a key; it is printed once",
		Long: `Create a key. The key is printed once, here and never again: only its hash is
stored. It needs the server's hashing pepper (the variable hashing.pepper_env
names), or the key would never match.`,
		Example: `  extauthz keys create --config extauthz.yaml --name billing --perm read:invoices --rate 100/m
  extauthz keys create --config extauthz.yaml --name ops --perm keys:admin --ip 127.0.0.1/32 --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "name", "perm"); err != nil {
				return err
			}
			if c.Flags().Changed("ttl") && ttl <= 0 {
				// --ttl 0 (an unset variable, a computed 0) is a mistake,
				// never "does not expire", which is leaving --ttl out.
				return usageErrorf(c, "--ttl must be positive (leave it out for a key that does not expire)")
			}
			if c.Flags().Changed("owner") {
				// --owner "" (an unset variable) would file the key under
				// owner default, with the bootstrap admin key.
				if err := keystore.ValidateOwner(owner); err != nil {
					return flagError(c, err)
				}
			}
			if err := meta.check(c); err != nil {
				return err
			}
			if err := privateSecretOutput(c); err != nil {
				return err
			}
			spec := keystore.Spec{Name: name, Owner: owner, Permissions: perms, RateLimit: rate.rate, IPAllowlist: ips.prefixes,
				Policies: policies, Meta: meta.entries}
			if ttl > 0 {
				exp := time.Now().UTC().Add(ttl)
				spec.ExpiresAt = &exp
			}
			ignoreBrokenPipe()
			return withManager(c, keysAction{hashes: true, writes: true}, func(ctx context.Context, m *keystore.Manager) error {
				secret, k, err := m.Create(ctx, spec, "cli")
				if err != nil && !unconfirmedOnly(secret, err) {
					return flagError(c, describe(err, m))
				}
				if perr := printNewKey(c, asJSON, secret, k, err, "", "create "+k.ID); perr != nil {
					// Nobody holds the secret, or someone holds part of
					// it: the key can only ever be a liability (and
					// count against keys.max_per_owner).
					if _, rerr := m.Revoke(ctx, k.ID, "cli"); rerr != nil && !errors.Is(rerr, keystore.ErrUnconfirmed) {
						return fmt.Errorf("create %s: the key was made, but its secret could not be printed (%v) and is shown nowhere else; "+
							"revoking it failed too (%v): revoke it with extauthz keys revoke %s", k.ID, perr, rerr, k.ID)
					}
					return fmt.Errorf("create %s: the key was made, but its secret could not be printed (%v) and is shown nowhere else, "+
						"so the key has been revoked; create another", k.ID, perr)
				}
				return nil
			})
		},
	}
	fs := c.Flags()
	fs.StringVar(&name, "name", "", "key name (required)")
	fs.Var(&perms, "perm", "permission the key grants (required; repeatable, or comma-separated)")
	fs.StringVar(&owner, "owner", "", `owner (default "default")`)
	fs.Var(&rate, "rate", "rate limit, e.g. 100/m, or none (default: rate_limit.default of the config)")
	fs.DurationVar(&ttl, "ttl", 0, "expire after this long, e.g. 24h (default: never)")
	fs.Var(&ips, "ip", "allowed client CIDR or address (repeatable; default: any)")
	fs.Var(&policies, "policy", "a policy the key is valid under (repeatable; default: every policy)")
	fs.Var(&meta, "meta", "a metadata entry name=value (repeatable)")
	fs.BoolVar(&asJSON, "json", false, "print one JSON object: the key record and \"key\"")
	return c
}

// unconfirmedOnly reports whether err, from a create or a rotation that
// handed out secret, says only that the store's replicas did not confirm
// it: the key is in effect and its secret exists nowhere else, so it is
// shown, with the warning, as a success.
func unconfirmedOnly(secret string, err error) bool {
	return secret != "" && errors.Is(err, keystore.ErrUnconfirmed)
}

// printNewKey prints a created or rotated key, k with secret and note. The
// secret appears here and nowhere else, ever; the error is that of writing
// it, which the caller must not pass over. err, when not nil, is the
// replicas' unconfirmedOnly warning: it goes with the key (its unconfirmed
// field) and to stderr, prefixed with what.
func printNewKey(c *cobra.Command, asJSON bool, secret string, k *keystore.Key, err error, note, what string) error {
	created := keystore.Created{Key: k, Secret: secret}
	if err != nil {
		created.Unconfirmed = err.Error()
		defer fmt.Fprintf(c.ErrOrStderr(), "warning: %s: %s\n", what, created.Unconfirmed)
	}
	w := c.OutOrStdout()
	if asJSON {
		return writeJSON(w, created)
	}
	if err := printKey(w, created.Key, time.Now()); err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "\nkey: %s\n\nThis is the only time the key is shown: store it now.\n", created.Secret); err != nil {
		return err
	}
	if note != "" {
		if _, err := fmt.Fprintln(w, note); err != nil {
			// The secret is out: not the error that makes the caller
			// take the key back, but a failure all the same.
			return &noteLost{note: note, err: err}
		}
	}
	return nil
}

// noteLost is printNewKey's failure to write its note after the secret:
// the key stands, and the error says what the note said.
type noteLost struct {
	note string
	err  error
}

func (e *noteLost) Error() string {
	return fmt.Sprintf("the new key was printed, but not the note after it (%v): %s", e.err, e.note)
}

func (e *noteLost) Unwrap() error { return e.err }

// privateSecretOutput makes sure that the secret create or rotate is about
// to print lands nowhere other users of the host can read. Standard output
// redirected to a file (`> key.json`) gets the shell's umask, 022 on most
// systems: a file every user may read, and the admin API trusts the host's
// own address. Such a file is refused and no key is made. Making it private
// instead (chmod) would not do: a mode is checked when a file is opened,
// so whoever opened it while it was readable (between the shell making it
// and this process starting, or at any time before, for a file being
// overwritten) keeps reading what is written to it. A private file of
// another user (root writing into it) is refused too: its owner reads it.
// What stays out of reach is a file that was readable before and was made
// private since: a descriptor opened then still reads, and nothing here
// can tell; write a key to a new file. Terminals, pipes and sockets are
// left as they are.
func privateSecretOutput(c *cobra.Command) error {
	f, ok := c.OutOrStdout().(*os.File)
	if !ok {
		return nil
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return nil
	}
	how := "remove the file and write the key to a new one only you can read, e.g. rm -f key.json; (umask 077; extauthz " +
		strings.TrimPrefix(c.CommandPath(), c.Root().Name()+" ") + " ... > key.json)"
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("standard output is a file other users may read (mode %04o), and whoever opened it already would read the key "+
			"whatever its mode became; no key was made: %s", perm, how)
	}
	if ownedByAnother(fi) {
		// Private, but another user's (root writing into it): theirs to read.
		return fmt.Errorf("standard output is a file another user owns, who can read it; no key was made: %s", how)
	}
	return nil
}

// ignoreBrokenPipe makes a write to a pipe whose reader is gone fail
// rather than end the process. create and rotate print a secret that
// exists nowhere else, after the key is made: killed by SIGPIPE there,
// they would leave a key nobody holds without a word. With the write's
// error they can say so, and act on it.
func ignoreBrokenPipe() { signal.Ignore(syscall.SIGPIPE) }
