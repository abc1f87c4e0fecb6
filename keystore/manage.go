package keystore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/extauthz/extauthz/internal/visible"
)

// FieldError is bad input for one field: the CLI prints it, the admin API
// answers 400 with it.
type FieldError struct {
	Field   string
	Message string
}

// Error is "<field>: <message>".
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
	// who made it: an admin key's id, or "cli"; ctx is the one the change
	// was made with, which may say more (the admin API's request).
	OnChange func(ctx context.Context, kind string, k *Key, actor string)
	// OnUnsure, if set, is told about every change that may have been
	// made though nobody can tell: the store's answer to its write was
	// lost (ErrUnavailable) and the read that would tell whether the write
	// was made failed too. k is the record as the write would leave it.
	// The change may be in effect, so it must not go unaudited; the caller
	// hears the store's error. Its arguments are those of OnChange.
	OnUnsure func(ctx context.Context, kind string, k *Key, actor string)

	pepperOK atomic.Bool // CheckPepper found the store's mark this process's
}

// PepperMarker is a store that keeps a mark of the pepper its keys are
// hashed with: the hash of a fixed text, made as a key's hash is. Every
// process sharing the store must hash with one pepper (a key hashed under
// one matches under no other), and the mark is how a process with another
// one (a secret mistyped, cut, or with a line ending its file kept) is
// told so, before it makes a key the others cannot find.
type PepperMarker interface {
	// MarkPepper stores mark as the store's pepper mark unless it holds
	// one already, atomically, and returns the mark it holds after: mark,
	// when it stored it.
	MarkPepper(ctx context.Context, mark Hash) (Hash, error)
}

// pepperText is the fixed text whose hash is the pepper mark. Hashing it
// tells the pepper apart as well as a key's hash does, and no better: like
// any key hash in the store, the mark lets whoever reads the store test a
// guess at the pepper, which a long random pepper makes useless.
const pepperText = "extauthz pepper mark v1"

// CheckPepper compares the store's pepper mark with this process's pepper,
// storing it when the store has none yet (a new store, or one made by a
// version before the mark): ErrPepperMismatch when they differ, nil for a
// store that keeps no mark. Once the two are found equal it does not ask
// the store again.
func (m *Manager) CheckPepper(ctx context.Context) error {
	pm, ok := m.Store.(PepperMarker)
	if !ok || m.pepperOK.Load() {
		return nil
	}
	mark := m.Hasher.Hash(pepperText)
	held, err := pm.MarkPepper(ctx, mark)
	switch {
	case err != nil:
		return err
	case held != mark:
		return fmt.Errorf("%w: give it the pepper every other process of this store uses (a pepper cannot be changed for keys already made)", ErrPepperMismatch)
	}
	m.pepperOK.Store(true)
	return nil
}

// Spec is what a caller may choose about a new key or change in one.
type Spec struct {
	Name        string
	Owner       string // "" = DefaultOwner
	Permissions []string
	RateLimit   RateLimit // unset = the configured default
	IPAllowlist []netip.Prefix
	ExpiresAt   *time.Time
	Policies    []string          // empty = every policy
	Meta        map[string]string // see ValidateMeta
	// Once, if set, makes the create idempotent (see Once); only Create
	// reads it.
	Once *Once
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
	if s.RateLimit.IsSet() && !s.RateLimit.ok {
		// A stored text that no longer parses is refused, so that a
		// change never writes it back: the error says why.
		if _, err := ParseRateLimit(s.RateLimit.String()); err != nil {
			return err
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
	if err := ValidatePolicies(s.Policies); err != nil {
		return err
	}
	if s.Once != nil {
		if err := ValidateIdempotencyKey(s.Once.Key); err != nil {
			return err
		}
	}
	return ValidateMeta(s.Meta)
}

// MaxLifetime bounds expiry and grace periods: far-future times are
// mistakes, and the embedded store's times end in 2262.
const MaxLifetime = 100 * 365 * 24 * time.Hour

// ValidateName checks a key name: 1–128 bytes of visible UTF-8 text (see
// CheckText), with no space at either end and no two in a row: "billing",
// "billing " and "bill  ing" draw alike in keys list's table, in a log
// line and in x-authz-key-name, and a name is how an operator tells which
// key is which.
func ValidateName(name string) error {
	if name == "" || len(name) > 128 {
		return &FieldError{"name", "required, at most 128 bytes"}
	}
	if name[0] == ' ' || name[len(name)-1] == ' ' || strings.Contains(name, "  ") {
		return &FieldError{"name", "must not begin or end with a space, nor hold two in a row"}
	}
	return CheckText("name", name)
}

// CheckText refuses text that would not read as what it is: invalid UTF-8,
// or a character that is not a visible letter, mark, number, punctuation or
// symbol, or the plain space. That rules out control characters (C0, DEL,
// C1: a terminal obeys them), bidirectional controls (U+202A–U+202E,
// U+2066–U+2069, U+200E, U+200F, U+061C: "abc\u202Efdp.exe" shows as
// "abcexe.pdf"), zero-width and other format characters (U+200B–U+200D,
// U+2060, U+FEFF, U+00AD, tag characters), line and paragraph separators,
// spaces other than U+0020, private-use, unassigned and non-characters, and
// the letters that draw nothing (Hangul fillers, U+034F, U+2800...). Names
// and permissions reach `keys list`, audit lines and upstream headers, where
// any of these would let one label pass for another. The error names field
// and the first offending character by code point, never the text.
func CheckText(field, s string) error {
	if !utf8.ValidString(s) {
		return &FieldError{field, "must be valid UTF-8"}
	}
	prev := rune(-1)
	for i, r := range s {
		// A text or emoji presentation selector may follow what has a
		// text and an emoji form: a symbol, punctuation or a digit
		// ("love ❤\ufe0f", "‼\ufe0f", the keycap "1\ufe0f\u20e3"), and
		// ℹ; after a letter or a mark, and every other variation
		// selector anywhere, it draws nothing ("admin\ufe0f").
		presents := (r == 0xFE0E || r == 0xFE0F) && prev >= 0 &&
			(unicode.In(prev, unicode.S, unicode.P, unicode.Nd) || prev == 0x2139)
		if !visible.Rune(r) && !presents {
			return &FieldError{field, fmt.Sprintf(
				"must not contain control, bidirectional, invisible or formatting characters (U+%04X at byte %d)", r, i)}
		}
		prev = r
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
// bytes of visible text (CheckText) without commas or spaces (they travel
// comma-joined in x-authz-permissions). The error names the index of the
// first bad one, never its text.
func ValidatePermissions(perms []string) error {
	if len(perms) > 64 {
		return &FieldError{"permissions", "at most 64"}
	}
	for i, p := range perms {
		field := fmt.Sprintf("permissions[%d]", i)
		if p == "" || len(p) > 128 {
			return &FieldError{field, "non-empty, at most 128 bytes"}
		}
		if strings.ContainsAny(p, ", ") {
			return &FieldError{field, "must not contain a comma or a space"}
		}
		if err := CheckText(field, p); err != nil {
			return err
		}
	}
	return nil
}

// refusePastedKeys rejects a name, owner, permission or metadata entry
// that holds a key of the configured format anywhere, or most of one
// (Format.LabelHoldsKey: a key with its checksum mistyped or cut, or its
// "_" typed as "-", fails ContainsKey yet carries all of its secret but a
// character or two): someone pasted a secret where a label goes, and a
// label travels to logs, audit events, Envoy's metadata and upstream
// headers (the owner as x-authz-owner), on every request the key makes.
func (m *Manager) refusePastedKeys(name, owner string, perms []string, meta map[string]string) error {
	looksLikeKey := m.Format.LabelHoldsKey
	if looksLikeKey(name) {
		return &FieldError{"name", "contains an API key, or most of one; never put a key in a name"}
	}
	if looksLikeKey(owner) {
		return &FieldError{"owner", "contains an API key, or most of one; never put a key in an owner"}
	}
	for _, p := range perms {
		if looksLikeKey(p) {
			return &FieldError{"permissions", "a permission contains an API key, or most of one; never put a key in a permission"}
		}
	}
	// The upstream gets them joined (x-authz-permissions): a key cut in
	// two permissions is one there, but for a comma.
	if len(perms) > 1 && looksLikeKey(strings.Join(perms, ",")) {
		return &FieldError{"permissions", "the permissions together contain an API key, or most of one; never put a key in a permission"}
	}
	for k, v := range meta {
		if looksLikeKey(k) || looksLikeKey(v) {
			return &FieldError{"meta", "an entry contains an API key, or most of one; never put a key in metadata"}
		}
	}
	return nil
}

// RedactedLabel stands in the place of a key's name or owner, or a
// metadata value, that holds an API key (RedactLabels).
const RedactedLabel = "[redacted: held an API key]"

// RedactLabels returns k as it may be served: k itself when none of its
// labels holds a key (holds is Format.LabelHoldsKey), else a copy in
// which a name, owner or metadata value that does reads RedactedLabel, and
// a permission or metadata entry whose name does is left out (so is a
// permission that completes one when joined to those before it, as
// x-authz-permissions joins them). Keys made
// through a Manager never hold one (refusePastedKeys), but a record made
// before labels were refused so, or written into the store by hand, would
// repeat the secret to every upstream (x-authz-key-name, x-authz-owner,
// x-authz-permissions, x-authz-meta-*) and into Envoy's dynamic metadata
// on every request the key makes. What the copy loses only narrows the
// key: a permission left out grants nothing, and RedactedLabel is no
// owner's name (owners are letters, digits and _ . @ : -). The id, the
// times and the rate limit are kept: they are not labels.
func RedactLabels(k *Key, holds func(string) bool) *Key {
	if k == nil || holds == nil || !labelsHoldKey(k, holds) {
		return k
	}
	c := *k
	if holds(c.Name) {
		c.Name = RedactedLabel
	}
	if holds(c.Owner) {
		c.Owner = RedactedLabel
	}
	// Each permission is kept unless, joined to those kept before it as
	// x-authz-permissions joins them, it makes a key.
	c.Permissions = make([]string, 0, len(k.Permissions))
	for _, p := range k.Permissions {
		if !holds(p) && !holds(strings.Join(append(c.Permissions, p), ",")) {
			c.Permissions = append(c.Permissions, p)
		}
	}
	if k.Meta != nil {
		c.Meta = make(map[string]string, len(k.Meta))
		for name, v := range k.Meta {
			switch {
			case holds(name):
			case holds(v):
				c.Meta[name] = RedactedLabel
			default:
				c.Meta[name] = v
			}
		}
	}
	return &c
}

// labelsHoldKey reports whether any of k's labels holds a key.
func labelsHoldKey(k *Key, holds func(string) bool) bool {
	if holds(k.Name) || holds(k.Owner) || holds(strings.Join(k.Permissions, ",")) {
		return true
	}
	for name, v := range k.Meta {
		if holds(name) || holds(v) {
			return true
		}
	}
	return false
}

// Create makes a new key from spec and returns its plaintext (shown once)
// and its record. A create stored but not confirmed by the store's
// replicas (ErrUnconfirmed) is in effect: like an unconfirmed rotation, it
// is audited, and its secret and key come with the error for the caller to
// show along with the warning.
func (m *Manager) Create(ctx context.Context, spec Spec, actor string) (string, *Key, error) {
	now := m.now()
	if err := spec.Validate(now); err != nil {
		return "", nil, err
	}
	if err := m.refusePastedKeys(spec.Name, spec.Owner, spec.Permissions, spec.Meta); err != nil {
		return "", nil, err
	}
	if err := m.CheckPepper(ctx); err != nil {
		return "", nil, err
	}
	secret, k, h, err := m.newKey(now, spec)
	if err != nil {
		return "", nil, err
	}
	err = m.storeCreate(ctx, spec, k, h)
	if landed(err, ErrExists) {
		switch _, made, known := m.recheck(ctx, k.ID, func(got *Key) bool { return sameRecord(got, k) }); {
		case made:
			err = m.readBack(ChangeCreated) // its answer lost
		case !known:
			m.unsure(ctx, ChangeCreated, k, actor)
		}
	}
	if !stored(k, err) {
		return "", nil, err
	}
	m.changed(ctx, ChangeCreated, k, actor)
	return secret, k, err
}

// landed reports whether err, from a write, may hide a write that was made:
// the store could not answer (a reply lost after the write reached it), or
// answered a retry of it, which found the write made and refused it again
// (one of also). Such a write is in effect, and must be answered and
// audited as made, never lost behind an error; recheck tells.
func landed(err error, also ...error) bool {
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	for _, e := range also {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// recheck reads id again, with a context of its own (the caller's may be
// what ran out), and returns it if it is there and made is true of it
// (ok). known is false when the read failed, other than for a key not
// found: then whether the write was made cannot be told.
func (m *Manager) recheck(ctx context.Context, id string, made func(*Key) bool) (k *Key, ok, known bool) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), recheckTimeout)
	defer cancel()
	k, err := m.Store.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, false, true
	case err != nil:
		return nil, false, false
	case !made(k):
		return nil, false, true
	}
	return k, true, true
}

// unsure tells OnUnsure of a change of kind to k whose write may have been
// made, though neither its answer nor a read-back could say.
func (m *Manager) unsure(ctx context.Context, kind string, k *Key, actor string) {
	if m.OnUnsure != nil {
		m.OnUnsure(ctx, kind, k, actor)
	}
}

// sameRecord reports whether a and b are the same record but for
// last_used_at, which any server writes behind at any time.
func sameRecord(a, b *Key) bool {
	plain := func(k *Key) []byte {
		c := k.Canonical()
		c.LastUsedAt = nil
		j, _ := json.Marshal(c) // a record always encodes
		return j
	}
	return bytes.Equal(plain(a), plain(b))
}

// Canonical returns a copy of k in the one form every store reads a record
// back in: an empty list or map as none, every time in UTC (without a
// monotonic reading), so that two reads of one record compare equal.
func (k *Key) Canonical() *Key {
	c := k.Clone()
	if len(c.Permissions) == 0 {
		c.Permissions = nil
	}
	if len(c.IPAllowlist) == 0 {
		c.IPAllowlist = nil
	}
	if len(c.Policies) == 0 {
		c.Policies = nil
	}
	if len(c.Meta) == 0 {
		c.Meta = nil
	}
	c.CreatedAt = c.CreatedAt.UTC()
	for _, t := range []**time.Time{&c.ExpiresAt, &c.LastUsedAt, &c.RevokedAt} {
		if *t != nil {
			u := (*t).UTC()
			*t = &u
		}
	}
	return c
}

// CheckedGetter is a Store whose records may require what this version
// cannot enforce (CheckRequires): the Redis store.
type CheckedGetter interface {
	// GetForCheck is Get for a key about to act, as a check's key does (the
	// caller of an admin API change): a record that requires what this
	// version cannot enforce comes with an error wrapping ErrNeedsNewer and
	// the key as far as this version reads it, as from Lookup. Get itself
	// answers such a record without error, for it to be shown and changed.
	GetForCheck(ctx context.Context, id string) (*Key, error)
}

// ReadBackConfirmer is a Store that waits for its replicas to confirm each
// change (ErrUnconfirmed otherwise).
type ReadBackConfirmer interface {
	// UnconfirmedReadBack is the error a change of kind (ChangeCreated,
	// ...) found made by a read-back is answered with: one wrapping
	// ErrUnconfirmed, as the answer lost was the write's and the replicas
	// were never asked; nil when the store does not confirm changes.
	UnconfirmedReadBack(kind string) error
}

// readBack is the error a change of kind, found made by recheck after its
// answer was lost, is answered with: none, unless the store waits for its
// replicas (ReadBackConfirmer), when a failover could still undo it and
// the caller must hear so, as of any change they did not confirm.
func (m *Manager) readBack(kind string) error {
	if c, ok := m.Store.(ReadBackConfirmer); ok {
		return c.UnconfirmedReadBack(kind)
	}
	return nil
}

// recheckTimeout bounds the read that tells whether a write whose answer
// was lost was made.
const recheckTimeout = 2 * time.Second

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
		Policies: slices.Clone(spec.Policies), Meta: maps.Clone(spec.Meta),
	}
	return secret, k, m.Hasher.Hash(secret), nil
}

// Rotate makes a new key with the old one's metadata; the old one keeps
// working until now+grace (grace 0: it stops now). check, when not nil, is
// run on the very record the new key copies (the admin API's check that a
// writer could grant it): its error aborts the rotation. The store refuses a
// copy of a record that changed meanwhile (ErrChanged), and Rotate then
// reads, checks and copies again, a few times. A rotation stored but not
// confirmed by the store's replicas (ErrUnconfirmed) is in effect: it is
// audited, and its secret and key come with the error, for the caller to
// show (there is no other chance) along with the warning.
func (m *Manager) Rotate(ctx context.Context, id string, grace time.Duration, actor string, check func(old *Key) error) (string, *Key, error) {
	if grace < 0 || grace > MaxLifetime {
		return "", nil, &FieldError{"grace", "must be from 0 to 100 years"}
	}
	if err := m.CheckPepper(ctx); err != nil {
		return "", nil, err
	}
	for range rotateAttempts - 1 {
		secret, k, err := m.rotateOnce(ctx, id, grace, actor, check)
		if !errors.Is(err, ErrChanged) {
			return secret, k, err
		}
	}
	return m.rotateOnce(ctx, id, grace, actor, check)
}

// rotateAttempts bounds how often Rotate copies a key that keeps changing.
const rotateAttempts = 3

func (m *Manager) rotateOnce(ctx context.Context, id string, grace time.Duration, actor string, check func(old *Key) error) (string, *Key, error) {
	now := m.now()
	old, err := m.Store.Get(ctx, id)
	if err != nil {
		return "", nil, err
	}
	if check != nil { // first: its caller may not even see the key
		if err := check(old); err != nil {
			return "", nil, err
		}
	}
	if old.StatusAt(now) != Live {
		return "", nil, ErrNotLive
	}
	secret, k, h, err := m.newKey(now, Spec{
		Name: old.Name, Owner: old.Owner, Permissions: old.Permissions,
		RateLimit: old.RateLimit, IPAllowlist: old.IPAllowlist, ExpiresAt: old.ExpiresAt,
		Policies: old.Policies, Meta: old.Meta,
	})
	if err != nil {
		return "", nil, err
	}
	k.RotatedFrom, k.Lineage = old.ID, old.RateBucket()
	rotated, err := m.Store.Rotate(ctx, id, k, h, now.Add(grace))
	if landed(err, ErrNotLive) {
		switch _, made, known := m.recheck(ctx, k.ID, func(got *Key) bool { return sameRecord(got, k) }); {
		case made:
			// Its answer lost (or a retry found the old key rotated
			// already, by this very call): the secret exists nowhere
			// else, and must be shown.
			rotated, err = old, m.readBack(ChangeRotated)
		case !known:
			m.unsure(ctx, ChangeRotated, k, actor)
		}
	}
	if !stored(rotated, err) {
		return "", nil, err
	}
	m.changed(ctx, ChangeRotated, k, actor)
	return secret, k, err
}

// Revoke revokes id; revoking a revoked key changes nothing and is not an
// error (and not a second audit event).
func (m *Manager) Revoke(ctx context.Context, id, actor string) (*Key, error) {
	// One instant for every try: a try that finds the key revoked at it
	// is a retry of this call's own write (its answer lost), not a key
	// revoked before.
	now := m.now()
	changed := false
	var tried *Key // the record last written, for a write whose answer was lost
	k, err := m.Store.Update(ctx, id, OwnerLimit{}, func(k *Key) error {
		switch {
		case k.RevokedAt == nil:
			k.RevokedAt = &now
			changed = true
		default:
			changed = k.RevokedAt.Equal(now)
		}
		tried = nil
		if changed {
			tried = k
		}
		return nil
	})
	if landed(err) && tried != nil {
		switch got, made, known := m.recheck(ctx, id, func(k *Key) bool { return k.RevokedAt != nil && k.RevokedAt.Equal(now) }); {
		case made:
			k, err, changed = got, m.readBack(ChangeRevoked), true
		case !known:
			m.unsure(ctx, ChangeRevoked, tried, actor)
		}
	}
	if !stored(k, err) {
		return nil, err
	}
	if changed {
		m.changed(ctx, ChangeRevoked, k, actor)
	}
	return k, err
}

// stored reports whether an Update (or a Rotate, or a Create of k) that
// returned k and err stored its change: it succeeded, or it stored the change without the
// replicas' confirmation (ErrUnconfirmed), which is in effect and is
// audited as made while the caller still hears the error.
func stored(k *Key, err error) bool {
	return err == nil || k != nil && errors.Is(err, ErrUnconfirmed)
}

// Patch is a partial change to a key: nil fields are left alone.
type Patch struct {
	Name        *string
	Permissions *[]string
	RateLimit   *RateLimit
	IPAllowlist *[]netip.Prefix
	ExpiresAt   **time.Time // set to a nil *time.Time to clear
	Policies    *[]string   // the whole new list; empty = every policy
	// Meta replaces the metadata; MetaChanges then merges into it (or into
	// the current metadata): a name with a value sets that entry, a name
	// with "" deletes it. The merge is made on the record the store holds,
	// in the same atomic step as the rest of the change.
	Meta        *map[string]string
	MetaChanges map[string]string
}

// Update applies p to id. A revoked or rotated-away key is never changed
// (ErrRetired): a change could give it a new life. A change that makes an
// expired key live again counts against MaxPerOwner like a new key
// (ErrKeyLimit), atomically with the store's count. check, if set, sees the
// record before and after the change and may veto it (an admin granting
// permissions it does not hold, a key loosening its own restrictions).
func (m *Manager) Update(ctx context.Context, id string, p Patch, check func(before, after *Key) error, actor string) (*Key, error) {
	now := m.now()
	limit := OwnerLimit{Max: m.MaxPerOwner, At: now}
	var earlier []*Key
	if p.RateLimit != nil {
		var err error
		if earlier, err = m.liveEarlierKeys(ctx, id, now); errors.Is(err, ErrLineTooLong) {
			return nil, &FieldError{Field: "rate_limit", Message: err.Error() + "; revoke the key and create a new one to change its rate limit"}
		} else if err != nil {
			return nil, err
		}
	}
	var tried *Key // the record last written, for a write whose answer was lost
	k, err := m.Store.Update(ctx, id, limit, func(k *Key) error {
		tried = nil
		if k.RevokedAt != nil {
			return fmt.Errorf("key %s was revoked: %w", k.ID, ErrRetired)
		}
		if k.RotatedTo != "" {
			return fmt.Errorf("key %s was rotated to %s: %w", k.ID, k.RotatedTo, ErrRetired)
		}
		before := k.Clone()
		if p.Name != nil {
			k.Name = *p.Name
		}
		if p.Permissions != nil {
			k.Permissions = *p.Permissions
		}
		if p.RateLimit != nil {
			k.RateLimit = *p.RateLimit
			for _, e := range earlier {
				if !oneCount(e.RateLimit, k.RateLimit) {
					return &FieldError{Field: "rate_limit", Message: fmt.Sprintf("key %s, earlier in this key's line of rotations, is live until %s and counts in the same rate limit as %q: a rate over another window, or the default in place of a rate of its own, would count the two keys apart, or carry each other's count over at every check; revoke it first, or keep a rate over the same window",
						e.ID, endsAt(e), rateText(e.RateLimit))}
				}
			}
		}
		if p.IPAllowlist != nil {
			k.IPAllowlist = *p.IPAllowlist
		}
		if p.Policies != nil {
			k.Policies = slices.Clone(*p.Policies)
		}
		if p.Meta != nil {
			k.Meta = maps.Clone(*p.Meta)
		}
		for name, v := range p.MetaChanges {
			if v == "" {
				delete(k.Meta, name)
				continue
			}
			if k.Meta == nil {
				k.Meta = map[string]string{}
			}
			k.Meta[name] = v
		}
		spec := Spec{Name: k.Name, Owner: k.Owner, Permissions: k.Permissions, RateLimit: k.RateLimit, IPAllowlist: k.IPAllowlist,
			Policies: k.Policies, Meta: k.Meta}
		if p.ExpiresAt != nil {
			// Only a new expiry must lie ahead; an expired key may be
			// renamed without reviving it.
			k.ExpiresAt = *p.ExpiresAt
			spec.ExpiresAt = k.ExpiresAt
		}
		if err := spec.Validate(now); err != nil {
			return err
		}
		if err := m.refusePastedKeys(k.Name, k.Owner, k.Permissions, k.Meta); err != nil {
			return err
		}
		if check != nil {
			if err := check(before, k); err != nil {
				return err
			}
		}
		tried = k
		return nil
	})
	if landed(err) && tried != nil {
		switch got, made, known := m.recheck(ctx, id, func(k *Key) bool { return sameRecord(k, tried) }); {
		case made:
			k, err = got, m.readBack(ChangeUpdated)
		case !known:
			m.unsure(ctx, ChangeUpdated, tried, actor)
		}
	}
	if !stored(k, err) {
		return nil, err
	}
	m.changed(ctx, ChangeUpdated, k, actor)
	return k, err
}

func (m *Manager) changed(ctx context.Context, kind string, k *Key, actor string) {
	if m.OnChange != nil {
		m.OnChange(ctx, kind, k, actor)
	}
}

// lineSteps is how many earlier keys of a line of rotations liveEarlierKeys
// reads one by one. Past them it looks among the owner's listed keys
// instead (liveKeysOfLine), a few round trips whatever the line's length:
// a line of rotations made with no grace costs nothing to make, and walking
// a thousand of them, two reads each, at every rotation or rate change of
// the line, would let one writer keep the store busy.
const lineSteps = 16

// maxOwnerScan bounds how many of an owner's listed keys liveKeysOfLine
// looks through; past it the change that needed to know is refused
// (ErrLineTooLong) rather than miss a live key of the line.
const maxOwnerScan = 100000

// LiveLine returns the keys of k's line of rotations, other than k, that
// still work: later, the keys k was rotated to and their successors, oldest
// first, and earlier, the keys before it still in their grace period,
// newest first. Revoking k leaves them working, and a revocation of a
// stolen key is often meant for the whole line: whoever held a key that
// could rotate itself may hold its successor too. Like liveEarlierKeys it
// reads the line's keys one by one for lineSteps of them, then looks among
// the owner's listed keys (as it does past a key already purged).
func (m *Manager) LiveLine(ctx context.Context, k *Key) (later, earlier []*Key, err error) {
	now := m.now()
	for n, next := 0, k.RotatedTo; next != ""; n++ {
		var e *Key
		if n < lineSteps {
			e, err = m.Store.Get(ctx, next)
		}
		if n == lineSteps || errors.Is(err, ErrNotFound) {
			if later, err = m.liveLaterKeys(ctx, k, now); err != nil {
				return nil, nil, err
			}
			break
		}
		if err != nil {
			return nil, nil, err
		}
		if e.StatusAt(now) == Live {
			later = append(later, e)
		}
		next = e.RotatedTo
	}
	if earlier, err = m.liveEarlierKeys(ctx, k.ID, now); err != nil {
		return nil, nil, err
	}
	return later, earlier, nil
}

// liveLaterKeys returns the owner's live keys made after k that count in
// k's bucket (a line keeps its owner and its bucket), oldest first: the
// later keys of k's line, for a line too long to walk or one whose walk
// meets a purged key. Made after k is by creation time: ids sort by it to
// the millisecond only, so the listing starts at the first id of k's
// millisecond.
func (m *Manager) liveLaterKeys(ctx context.Context, k *Key, now time.Time) ([]*Key, error) {
	var live []*Key
	after := "" // an id not of NewID's shape: every key of the owner
	if ValidID(k.ID) {
		after = k.ID[:len(IDPrefix)+idTimeChars] // sorts before every id of its millisecond
	}
	for seen := 0; ; {
		page, next, err := m.Store.List(ctx, ListOptions{Owner: k.Owner, Now: now, Limit: 500, After: after})
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			if newerKey(e, k) > 0 && e.RateBucket() == k.RateBucket() && e.StatusAt(now) == Live {
				live = append(live, e)
			}
		}
		if seen += len(page); next == "" {
			slices.SortFunc(live, newerKey)
			return live, nil
		} else if seen >= maxOwnerScan {
			return nil, fmt.Errorf("%w: the key's owner has over %d live keys to look through for it", ErrLineTooLong, maxOwnerScan)
		}
		after = next
	}
}

// LiveEarlierKeys returns the keys before id in its line of rotations that
// are still live (in their grace period), newest first; see
// liveEarlierKeys.
func (m *Manager) LiveEarlierKeys(ctx context.Context, id string) ([]*Key, error) {
	return m.liveEarlierKeys(ctx, id, m.now())
}

// liveEarlierKeys returns the keys before id in its line of rotations
// (RotatedFrom, back to the line's first key or one deleted) that are still
// live at now: in their grace period, checks of them count in the same
// rate-limit bucket as id's (Key.RateBucket). A rotated-away key never
// changes again, and can only die, so what this finds stays true, or
// becomes stricter than needed, until the change is written.
func (m *Manager) liveEarlierKeys(ctx context.Context, id string, now time.Time) ([]*Key, error) {
	k, err := m.Store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	var live []*Key
	for n, prev := 0, k.RotatedFrom; prev != ""; n++ {
		if n == lineSteps {
			return m.liveKeysOfLine(ctx, k, live, now)
		}
		e, err := m.Store.Get(ctx, prev)
		if errors.Is(err, ErrNotFound) {
			if prev == k.RateBucket() {
				break // the line's first key, deleted after keys.retention: nothing before it
			}
			// A middle key, purged keys.retention after its grace ended,
			// while one before it may still be in a longer grace: the
			// walk cannot reach those, so look for them among the
			// owner's live keys (a line keeps one owner).
			return m.liveKeysOfLine(ctx, k, live, now)
		}
		if err != nil {
			return nil, err
		}
		if e.StatusAt(now) == Live {
			live = append(live, e)
		}
		prev = e.RotatedFrom
	}
	return live, nil
}

// newerKey orders keys by creation: > 0 when a was made after b. Ids alone
// tell it to the millisecond; two keys of one instant go by id.
func newerKey(a, b *Key) int {
	if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
		return c
	}
	return strings.Compare(a.ID, b.ID)
}

// liveKeysOfLine adds to live the owner's live keys made before k that
// count in k's bucket and were rotated away: the earlier keys of k's line.
// (k is the newest of its line when Update and Rotate ask, as they refuse
// a rotated-away key, but LiveLine asks for a key in the middle of a line
// too, whose later keys are rotated away as well.) They come
// back newest first, as the walk finds them: by creation time, not by id,
// whose time is whole milliseconds (two keys of one millisecond sort by
// their random part).
func (m *Manager) liveKeysOfLine(ctx context.Context, k *Key, live []*Key, now time.Time) ([]*Key, error) {
	after := ""
	for seen := 0; ; {
		page, next, err := m.Store.List(ctx, ListOptions{Owner: k.Owner, Now: now, Limit: 500, After: after})
		if err != nil {
			return nil, err
		}
		for _, e := range page {
			if e.ID != k.ID && e.RotatedTo != "" && e.RateBucket() == k.RateBucket() && newerKey(k, e) > 0 && e.StatusAt(now) == Live &&
				!slices.ContainsFunc(live, func(l *Key) bool { return l.ID == e.ID }) {
				live = append(live, e)
			}
		}
		if seen += len(page); next == "" {
			slices.SortFunc(live, func(a, b *Key) int { return newerKey(b, a) })
			return live, nil
		} else if seen >= maxOwnerScan {
			return nil, fmt.Errorf("%w: the key's owner has over %d live keys to look through for it", ErrLineTooLong, maxOwnerScan)
		}
		after = next
	}
}

// oneCount reports whether two keys of one line, limited by a and b, can
// count in one counter: the limiter carries a counter checked with another
// window over to it, as if all its requests were made at the latest, so
// alternating keys whose rates have different windows would hold every
// request until the latest ages out. A key with no limit ("none") counts nothing;
// two keys on the default are on one rate; a rate of its own and the
// default may have different windows.
func oneCount(a, b RateLimit) bool {
	switch {
	case a.Own() && a.rate.IsZero(), b.Own() && b.rate.IsZero():
		return true
	case !a.Own() || !b.Own():
		return a.Own() == b.Own()
	}
	return a.rate.Window == b.rate.Window
}

// rateText is r as a message names it: as written, or "the default".
func rateText(r RateLimit) string {
	if !r.Own() {
		return "the default"
	}
	return r.String()
}

// endsAt is when the live key k stops being live, as a message says it.
func endsAt(k *Key) string {
	if end := k.EndsAt(); end != nil {
		return end.Format(time.RFC3339)
	}
	return "revoked"
}
