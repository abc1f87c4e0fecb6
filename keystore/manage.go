package keystore

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/extauthz/extauthz/ratelimit"
)

// FieldError is bad input for one field: the CLI prints it, the admin API
// answers 400 with it.
type FieldError struct {
	Field   string
	Message string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Message }

// Change kinds passed to Manager.OnChange (the audit event names).
const (
	ChangeCreated = "key.created"
	ChangeUpdated = "key.updated"
	ChangeRevoked = "key.revoked"
	ChangeRotated = "key.rotated"
)

// Manager is the key lifecycle shared by the CLI and the admin API:
// validation, generation, creation, rotation and revocation, each reported
// to OnChange.
type Manager struct {
	Store       Store
	Hasher      *Hasher
	Format      Format
	MaxPerOwner int
	Now         func() time.Time
	// OnChange, if set, is told about every change (for audit). actor is
	// who made it: an admin key's id, or "cli".
	OnChange func(kind string, k *Key, actor string)
}

// Spec is what a caller may choose about a new key or change in one.
type Spec struct {
	Name        string
	Owner       string // "" = DefaultOwner
	Permissions []string
	RateLimit   string // "" = the configured default, "none", or a rate
	IPAllowlist []netip.Prefix
	ExpiresAt   *time.Time
}

func (m *Manager) now() time.Time {
	if m.Now != nil {
		return m.Now().UTC()
	}
	return time.Now().UTC()
}

// Validate checks a Spec, naming the first bad field.
func (s *Spec) Validate(now time.Time) error {
	if err := ValidateName(s.Name); err != nil {
		return err
	}
	if s.Owner != "" {
		if err := ValidateOwner(s.Owner); err != nil {
			return err
		}
	}
	if err := ValidatePermissions(s.Permissions); err != nil {
		return err
	}
	if s.RateLimit != "" {
		if _, err := ratelimit.ParseRate(s.RateLimit); err != nil {
			return &FieldError{"rate_limit", err.Error()}
		}
	}
	if len(s.IPAllowlist) > 100 {
		return &FieldError{"ip_allowlist", "at most 100 entries"}
	}
	for _, p := range s.IPAllowlist {
		if !p.IsValid() {
			return &FieldError{"ip_allowlist", "invalid prefix"}
		}
	}
	if s.ExpiresAt != nil && !s.ExpiresAt.After(now) {
		return &FieldError{"expires_at", "must be in the future"}
	}
	if s.ExpiresAt != nil && s.ExpiresAt.Sub(now) > MaxLifetime {
		return &FieldError{"expires_at", "must be within 100 years"}
	}
	return nil
}

// MaxLifetime bounds expiry and grace periods: far-future times are
// mistakes, and the embedded store's times end in 2262.
const MaxLifetime = 100 * 365 * 24 * time.Hour

// ValidateName checks a key name: 1–128 printable characters.
func ValidateName(name string) error {
	if name == "" || len(name) > 128 {
		return &FieldError{"name", "required, at most 128 bytes"}
	}
	if !printable(name) {
		return &FieldError{"name", "must be printable UTF-8 without control characters"}
	}
	return nil
}

// ValidateOwner checks an owner: 1–64 of [A-Za-z0-9_.@:-].
func ValidateOwner(owner string) error {
	if owner == "" || len(owner) > 64 || strings.Trim(owner, "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_.@:-") != "" {
		return &FieldError{"owner", "1 to 64 characters of letters, digits and _ . @ : -"}
	}
	return nil
}

// ValidatePermissions checks a permission list: at most 64 names of 1–128
// printable characters without commas or spaces (they travel comma-joined
// in x-authz-permissions).
func ValidatePermissions(perms []string) error {
	if len(perms) > 64 {
		return &FieldError{"permissions", "at most 64"}
	}
	for _, p := range perms {
		if p == "" || len(p) > 128 || strings.ContainsAny(p, ", \t") || !printable(p) {
			return &FieldError{"permissions", fmt.Sprintf("%q: non-empty, at most 128 bytes, no comma, space or control character", p)}
		}
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// refusePastedKeys rejects a name or permission that is itself a key of
// the configured format: someone pasted a secret where a label goes, and a
// label travels to logs, audit events and upstream headers.
func (m *Manager) refusePastedKeys(name string, perms []string) error {
	looksLikeKey := func(s string) bool {
		for _, word := range strings.FieldsFunc(s, func(r rune) bool { return !isBase62(byte(r)) && r != '_' || r > 127 }) {
			if strings.HasPrefix(word, m.Format.prefix+"_") && m.Format.Check(word) == nil {
				return true
			}
		}
		return false
	}
	if looksLikeKey(name) {
		return &FieldError{"name", "contains an API key; never put a key in a name"}
	}
	for _, p := range perms {
		if looksLikeKey(p) {
			return &FieldError{"permissions", "a permission contains an API key; never put a key in a permission"}
		}
	}
	return nil
}

// Create makes a new key from spec and returns its plaintext (shown once)
// and its record.
func (m *Manager) Create(ctx context.Context, spec Spec, actor string) (string, *Key, error) {
	now := m.now()
	if err := spec.Validate(now); err != nil {
		return "", nil, err
	}
	if err := m.refusePastedKeys(spec.Name, spec.Permissions); err != nil {
		return "", nil, err
	}
	secret, k, h, err := m.newKey(now, spec)
	if err != nil {
		return "", nil, err
	}
	if err := m.Store.Create(ctx, k, h, m.MaxPerOwner); err != nil {
		return "", nil, err
	}
	m.changed(ChangeCreated, k, actor)
	return secret, k, nil
}

func (m *Manager) newKey(now time.Time, spec Spec) (string, *Key, Hash, error) {
	secret, err := m.Format.Generate()
	if err != nil {
		return "", nil, Hash{}, err
	}
	id, err := NewID(now)
	if err != nil {
		return "", nil, Hash{}, err
	}
	owner := spec.Owner
	if owner == "" {
		owner = DefaultOwner
	}
	perms := spec.Permissions
	if perms == nil {
		perms = []string{}
	}
	allow := spec.IPAllowlist
	if allow == nil {
		allow = []netip.Prefix{}
	}
	k := &Key{
		ID: id, Name: spec.Name, Owner: owner, Permissions: perms,
		RateLimit: spec.RateLimit, IPAllowlist: allow, CreatedAt: now, ExpiresAt: spec.ExpiresAt,
	}
	return secret, k, m.Hasher.Hash(secret), nil
}

// Rotate makes a new key with the old one's metadata; the old one keeps
// working until now+grace (grace 0: it stops now).
func (m *Manager) Rotate(ctx context.Context, id string, grace time.Duration, actor string) (string, *Key, error) {
	if grace < 0 || grace > MaxLifetime {
		return "", nil, &FieldError{"grace", "must be from 0 to 100 years"}
	}
	now := m.now()
	old, err := m.Store.Get(ctx, id)
	if err != nil {
		return "", nil, err
	}
	if old.StatusAt(now) != Live {
		return "", nil, ErrNotLive
	}
	secret, k, h, err := m.newKey(now, Spec{
		Name: old.Name, Owner: old.Owner, Permissions: old.Permissions,
		RateLimit: old.RateLimit, IPAllowlist: old.IPAllowlist, ExpiresAt: old.ExpiresAt,
	})
	if err != nil {
		return "", nil, err
	}
	k.RotatedFrom = old.ID
	if _, err := m.Store.Rotate(ctx, id, k, h, now.Add(grace)); err != nil {
		return "", nil, err
	}
	m.changed(ChangeRotated, k, actor)
	return secret, k, nil
}

// Revoke revokes id; revoking a revoked key changes nothing and is not an
// error (and not a second audit event).
func (m *Manager) Revoke(ctx context.Context, id, actor string) (*Key, error) {
	changed := false
	k, err := m.Store.Update(ctx, id, func(k *Key) error {
		if k.RevokedAt == nil {
			now := m.now()
			k.RevokedAt = &now
			changed = true
		} else {
			changed = false
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if changed {
		m.changed(ChangeRevoked, k, actor)
	}
	return k, nil
}

// Patch is a partial change to a key: nil fields are left alone.
type Patch struct {
	Name        *string
	Permissions *[]string
	RateLimit   *string
	IPAllowlist *[]netip.Prefix
	ExpiresAt   **time.Time // set to a nil *time.Time to clear
}

// Update applies p to id. check, if set, may veto the result (e.g. an
// admin granting permissions it does not hold).
func (m *Manager) Update(ctx context.Context, id string, p Patch, check func(*Key) error, actor string) (*Key, error) {
	now := m.now()
	k, err := m.Store.Update(ctx, id, func(k *Key) error {
		if p.Name != nil {
			k.Name = *p.Name
		}
		if p.Permissions != nil {
			k.Permissions = *p.Permissions
		}
		if p.RateLimit != nil {
			k.RateLimit = *p.RateLimit
		}
		if p.IPAllowlist != nil {
			k.IPAllowlist = *p.IPAllowlist
		}
		if p.ExpiresAt != nil {
			k.ExpiresAt = *p.ExpiresAt
		}
		spec := Spec{Name: k.Name, Owner: k.Owner, Permissions: k.Permissions, RateLimit: k.RateLimit, IPAllowlist: k.IPAllowlist}
		if err := spec.Validate(now); err != nil {
			return err
		}
		if err := m.refusePastedKeys(k.Name, k.Permissions); err != nil {
			return err
		}
		if p.ExpiresAt != nil && *p.ExpiresAt != nil && !(*p.ExpiresAt).After(now) {
			return &FieldError{"expires_at", "must be in the future"}
		}
		if check != nil {
			return check(k)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	m.changed(ChangeUpdated, k, actor)
	return k, nil
}

func (m *Manager) changed(kind string, k *Key, actor string) {
	if m.OnChange != nil {
		m.OnChange(kind, k, actor)
	}
}
