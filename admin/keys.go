package admin

import (
	"context"
	"errors"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// DefaultGrace is how long a rotated key keeps working when the rotate
// request names no grace; the CLI's --grace has the same default.
const DefaultGrace = 24 * time.Hour

// List page sizes: 100 by default, at most 1000 (docs/keys.md).
const (
	defaultLimit = 100
	maxLimit     = 1000
)

// keyList is the answer to GET /v1/keys.
type keyList struct {
	Keys       []*keystore.Key `json:"keys"`
	NextCursor string          `json:"next_cursor,omitempty"`
}

var createFields = []string{"name", "permissions", "owner", "rate_limit", "ip_allowlist", "expires_at", "ttl", "policies", "meta"}

// createKey is POST /v1/keys.
func (s *server) createKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	body, err := s.readJSONBody(w, r)
	if err != nil {
		return err
	}
	o, err := s.decodeObject(body, false, createFields...)
	if err != nil {
		return err
	}
	spec, err := s.createSpec(o)
	if err != nil {
		return err
	}
	if !c.admin {
		// The new key's owner is the caller's: naming another is asking
		// for more than keys:write gives, hence 403 rather than 400.
		if spec.Owner != "" && spec.Owner != c.owner {
			return permissionDenied("creating keys for another owner needs keys:admin")
		}
		spec.Owner = c.owner
		if !o.given("meta") {
			// A keys:write caller's keys carry its own metadata (bounds.go).
			spec.Meta = maps.Clone(c.key.Meta)
		}
	}
	// The new key stays within a keys:write caller's own permissions and
	// restrictions (bounds.go).
	asked := &keystore.Key{Permissions: spec.Permissions, RateLimit: spec.RateLimit, IPAllowlist: spec.IPAllowlist, ExpiresAt: spec.ExpiresAt,
		Policies: spec.Policies, Meta: spec.Meta}
	if err := s.exceedsCaller(c, asked); err != nil {
		return err
	}
	// An idempotency key is the owner's that the key will have: an admin's
	// create that names none makes a key of the default owner, and shares
	// its idempotency keys with that owner's writers.
	owner := spec.Owner
	if owner == "" {
		owner = keystore.DefaultOwner
	}
	if spec.Once, err = once(r, body, owner); err != nil {
		return err
	}
	secret, k, err := s.manager.Create(r.Context(), spec, c.actor())
	if err := earlierCreate(w, err); err != nil {
		return err
	}
	return s.writeNewKey(w, secret, k, err, "create", unconfirmedCreate)
}

// writeNewKey answers a create or a rotation (what) that returned secret, k
// and err: 201 with the key and its secret. One stored but not confirmed by
// the store's replicas is in effect, its secret exists nowhere else and it
// cannot be repeated, so it is a success too, with the unconfirmed note;
// any other error is returned.
func (s *server) writeNewKey(w http.ResponseWriter, secret string, k *keystore.Key, err error, what, note string) error {
	created := keystore.Created{Key: s.shown(k), Secret: secret}
	switch {
	case err == nil:
	case secret != "" && errors.Is(err, keystore.ErrUnconfirmed):
		attrs := []any{"id", k.ID, "err", err}
		if k.RotatedFrom != "" {
			attrs = append(attrs, "rotated_from", k.RotatedFrom)
		}
		s.log.Warn("admin API: a "+what+" is stored but not confirmed by the store's replicas", attrs...)
		created.Unconfirmed = note
	default:
		return err
	}
	w.Header().Set("Location", "/v1/keys/"+k.ID)
	writeJSON(w, http.StatusCreated, created)
	return nil
}

// createSpec reads a create body; null fields are as good as absent.
func (s *server) createSpec(o object) (keystore.Spec, error) {
	var spec keystore.Spec
	var err error
	if !o.given("name") {
		return spec, badRequest("name", "required")
	}
	if spec.Name, err = o.name(); err != nil {
		return spec, err
	}
	if !o.given("permissions") {
		return spec, badRequest("permissions", "required")
	}
	if spec.Permissions, err = o.permissions(); err != nil {
		return spec, err
	}
	if o.given("owner") {
		if spec.Owner, err = o.str("owner"); err != nil {
			return spec, err
		}
		if err := keystore.ValidateOwner(spec.Owner); err != nil {
			return spec, err
		}
	}
	if o.given("rate_limit") {
		if spec.RateLimit, err = o.rateLimit(); err != nil {
			return spec, err
		}
	}
	if o.given("ip_allowlist") {
		if spec.IPAllowlist, err = o.ipAllowlist(); err != nil {
			return spec, err
		}
	}
	if o.given("policies") {
		if spec.Policies, err = o.policies(); err != nil {
			return spec, err
		}
	}
	if o.given("meta") {
		if spec.Meta, err = o.meta(false); err != nil {
			return spec, err
		}
	}
	now := s.now().UTC()
	switch {
	case o.given("ttl") && o.given("expires_at"):
		return spec, badRequest("ttl", "give ttl or expires_at, not both")
	case o.given("ttl"):
		ttl, err := o.duration("ttl")
		if err != nil {
			return spec, err
		}
		if ttl == 0 {
			return spec, badRequest("ttl", "must be positive (leave it out for a key that does not expire)")
		}
		exp := now.Add(ttl)
		spec.ExpiresAt = &exp
	case o.given("expires_at"):
		exp, err := o.expiresAt(now)
		if err != nil {
			return spec, err
		}
		spec.ExpiresAt = &exp
	}
	return spec, spec.Validate(now)
}

// listQuery are the query parameters of GET /v1/keys.
var listQuery = []string{"owner", "include_revoked", "limit", "cursor"}

// checkQuery refuses a query that is malformed, names a parameter rt does
// not take (a configured api_key parameter is the caller's credential, and
// taken everywhere), or gives one of rt's twice. A parameter passed over
// would be a setting the caller believes it made: ?grace=0s on a rotation,
// sent to cut a leaked key off at once, would leave it the default grace.
func (s *server) checkQuery(r *http.Request, rt route) error {
	if r.URL.RawQuery == "" {
		return nil
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return badRequest("query", "malformed query string")
	}
	for name, vs := range q {
		switch {
		case slices.Contains(rt.query, name):
			if len(vs) > 1 {
				return badRequest(name, "given more than once")
			}
		case s.isQuerySource(name):
		case len(rt.query) == 0:
			return badRequest("query", "unknown parameter "+s.mention(name)+"; this route takes no query parameters (a change's settings go in its JSON body)")
		default:
			return badRequest("query", "unknown parameter "+s.mention(name)+"; known: "+strings.Join(rt.query, ", "))
		}
	}
	return nil
}

// checkNoBody refuses a body sent to a route that reads none (GET, HEAD,
// DELETE), for the reason checkQuery refuses an unknown parameter: a body
// passed over would be settings the caller believes it made. GET /v1/keys
// with {"owner": "team-a"} would list every owner's keys, and a script
// that revokes what it lists would revoke them all.
func checkNoBody(r *http.Request, rt route) error {
	if rt.Method != "GET" && rt.Method != "DELETE" || r.ContentLength == 0 {
		return nil
	}
	return badRequest("body", "this route takes no body (GET /v1/keys takes its settings in the query string)")
}

// listKeys is GET /v1/keys; checkQuery has checked its query.
func (s *server) listKeys(w http.ResponseWriter, r *http.Request, c *caller) error {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return badRequest("query", "malformed query string")
	}
	opts := keystore.ListOptions{Owner: q.Get("owner"), Now: s.now(), Limit: defaultLimit, After: q.Get("cursor")}
	if q.Has("owner") {
		// An empty owner is what ?owner=$TEAM sends with TEAM unset: listing
		// every owner's keys for it would answer another question than the
		// one asked.
		if opts.Owner == "" {
			return badRequest("owner", "empty; leave the parameter out to list every owner's keys")
		}
		if err := keystore.ValidateOwner(opts.Owner); err != nil {
			return err
		}
	}
	if !c.admin {
		if opts.Owner != "" && opts.Owner != c.owner {
			return permissionDenied("listing another owner's keys needs keys:admin")
		}
		opts.Owner = c.owner
	}
	if q.Has("include_revoked") {
		switch q.Get("include_revoked") {
		case "true":
			opts.IncludeRevoked = true
		case "false":
		default:
			return badRequest("include_revoked", "want true or false")
		}
	}
	if q.Has("limit") {
		v := q.Get("limit")
		n, err := strconv.Atoi(v)
		// Digits only, as the number is written back: no sign, no leading zero.
		if err != nil || n < 1 || n > maxLimit || v != strconv.Itoa(n) {
			return badRequest("limit", "want a whole number from 1 to 1000")
		}
		opts.Limit = n
	}
	if opts.After != "" && !keystore.ValidID(opts.After) {
		return badRequest("cursor", "not a next_cursor from a previous page")
	}
	keys, next, err := s.store.List(r.Context(), opts)
	if err != nil {
		return err
	}
	if keys == nil {
		keys = []*keystore.Key{}
	}
	for i, k := range keys {
		keys[i] = s.shown(k)
	}
	writeJSON(w, http.StatusOK, keyList{Keys: keys, NextCursor: next})
	return nil
}

// shown is k as the API shows it: a label that holds a key (a record
// written by hand, or before labels were refused so) redacted, as it is
// served (keystore.RedactLabels).
func (s *server) shown(k *keystore.Key) *keystore.Key {
	return keystore.RedactLabels(k, s.authz.Policies().Format.LabelHoldsKey)
}

// isQuerySource reports whether name is a configured query-parameter key
// source (api_key): the caller's credential, not an unknown parameter.
func (s *server) isQuerySource(name string) bool {
	for _, src := range s.authz.Policies().Default.Sources {
		if src.Kind() == authz.SourceQuery && src.Name() == name {
			return true
		}
	}
	return false
}

// showKey is GET /v1/keys/{id}.
func (s *server) showKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	k, err := s.visibleKey(r.Context(), r.PathValue("id"), c)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.shown(k))
	return nil
}

// visibleKey returns the key id if the caller may see it. A malformed id,
// an unknown one and another owner's are all 404, so ids do not leak
// (another owner's is audited: errNotYours).
func (s *server) visibleKey(ctx context.Context, id string, c *caller) (*keystore.Key, error) {
	if !keystore.ValidID(id) {
		return nil, errNotFound
	}
	k, err := s.store.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := c.reach(k); err != nil {
		return nil, err
	}
	return k, nil
}

var patchFields = []string{"name", "permissions", "rate_limit", "ip_allowlist", "expires_at", "policies", "meta"}

// updateKey is PATCH /v1/keys/{id}. Absent fields stay; null returns
// rate_limit to the configured default, ip_allowlist to "any address",
// expires_at to "never", policies to "every policy" and meta to none, and
// meta merges entry by entry, null deleting one (JSON Merge Patch's
// meaning); name and permissions cannot be null. A revoked or rotated-away
// key never changes (409), bringing an expired key back counts against
// max_per_owner (409), and no key loosens its own restrictions (403).
func (s *server) updateKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	body, err := s.readJSONBody(w, r)
	if err != nil {
		return err
	}
	o, err := s.decodeObject(body, false, patchFields...)
	if err != nil {
		return err
	}
	p, err := s.patch(o)
	if err != nil {
		return err
	}
	k, err := s.visibleKey(r.Context(), r.PathValue("id"), c)
	if err != nil {
		return err
	}
	// A keys:write caller may only leave a key with permissions and
	// restrictions it could give: setting them is granting them, and
	// keeping a more powerful key alive (expiry, allowlist) is acting with
	// its power. Any caller changing itself may only narrow itself, and
	// its line of rotations is itself: a key in its grace period that
	// loosened its successor (undoing an operator's narrowing of it) would
	// outlive its own grace period in it.
	check := func(before, after *keystore.Key) error {
		if err := c.reach(after); err != nil {
			return err
		}
		self := after.ID == c.key.ID || after.RateBucket() == c.key.RateBucket()
		if self {
			if err := s.selfLoosening(before, after); err != nil {
				return err
			}
		}
		if self || !c.admin {
			if err := s.countStartsAfresh(before, after); err != nil {
				return err
			}
		}
		return s.exceedsCaller(c, after)
	}
	k, err = s.manager.Update(r.Context(), k.ID, p, check, c.actor())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.shown(k))
	return nil
}

func (s *server) patch(o object) (keystore.Patch, error) {
	var p keystore.Patch
	if len(o) == 0 {
		return p, badRequest("body", "nothing to change: give at least one of name, permissions, rate_limit, ip_allowlist, expires_at, policies, meta")
	}
	for _, f := range []string{"name", "permissions"} {
		if o.isNull(f) {
			return p, badRequest(f, "cannot be null")
		}
	}
	if o.given("name") {
		name, err := o.name()
		if err != nil {
			return p, err
		}
		p.Name = &name
	}
	if o.given("permissions") {
		perms, err := o.permissions()
		if err != nil {
			return p, err
		}
		p.Permissions = &perms
	}
	if _, ok := o["rate_limit"]; ok {
		var rate keystore.RateLimit // null: the configured default
		if o.given("rate_limit") {
			var err error
			if rate, err = o.rateLimit(); err != nil {
				return p, err
			}
		}
		p.RateLimit = &rate
	}
	if _, ok := o["ip_allowlist"]; ok {
		allow := []netip.Prefix{} // null: any address
		if o.given("ip_allowlist") {
			var err error
			if allow, err = o.ipAllowlist(); err != nil {
				return p, err
			}
		}
		p.IPAllowlist = &allow
	}
	if _, ok := o["expires_at"]; ok {
		var exp *time.Time // null: never
		if o.given("expires_at") {
			t, err := o.expiresAt(s.now())
			if err != nil {
				return p, err
			}
			exp = &t
		}
		p.ExpiresAt = &exp
	}
	if _, ok := o["policies"]; ok {
		policies := []string{} // null: every policy
		if o.given("policies") {
			var err error
			if policies, err = o.policies(); err != nil {
				return p, err
			}
		}
		p.Policies = &policies
	}
	if _, ok := o["meta"]; ok {
		if !o.given("meta") {
			p.Meta = &map[string]string{} // null: no metadata
		} else {
			changes, err := o.meta(true)
			if err != nil {
				return p, err
			}
			p.MetaChanges = changes
		}
	}
	return p, nil
}

// revokeKey is DELETE /v1/keys/{id}: idempotent, 200 with the record.
// Revoking only ever takes power away, so a keys:write caller may revoke
// any key of its owner, more powerful ones included.
func (s *server) revokeKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	k, err := s.visibleKey(r.Context(), r.PathValue("id"), c)
	if err != nil {
		return err
	}
	if k, err = s.manager.Revoke(r.Context(), k.ID, c.actor()); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.shown(k))
	return nil
}

// rotateKey is POST /v1/keys/{id}/rotate {grace?}: 201 with the new key.
// rotationPending refuses a keys:write caller's rotation of a key whose
// line of rotations still has a live earlier key (409 rotation_pending):
// keys in their grace period do not count against keys.max_per_owner
// while their successor is live, so rotating a line again and again, each
// time with a long grace, would give a writer as many live keys as it liked. One rotation at a time: the
// earlier key must be revoked or past its grace first. keys:admin may
// chain rotations.
func (s *server) rotationPending(ctx context.Context, c *caller, old *keystore.Key) error {
	if c.admin {
		return nil
	}
	live, err := s.manager.LiveEarlierKeys(ctx, old.ID)
	if errors.Is(err, keystore.ErrLineTooLong) {
		return &apiError{http.StatusConflict, codeRotationPending, "cannot tell whether an earlier key of this key's line of rotations is still in its grace period (" +
			err.Error() + "); a keys:admin caller may rotate it, or revoke it and create a new key"}
	}
	if err != nil {
		return err
	}
	if len(live) == 0 {
		return nil
	}
	e := live[0]
	until := "revoked"
	if end := e.EndsAt(); end != nil {
		until = end.UTC().Format(time.RFC3339)
	}
	return &apiError{http.StatusConflict, codeRotationPending, "key " + e.ID + ", earlier in this key's line of rotations, is live until " + until +
		": a keys:write caller rotates a line again only once its earlier keys are revoked or past their grace period"}
}

func (s *server) rotateKey(w http.ResponseWriter, r *http.Request, c *caller) error {
	body, err := s.readJSONBody(w, r)
	if err != nil {
		return err
	}
	o, err := s.decodeObject(body, true, "grace")
	if err != nil {
		return err
	}
	grace := DefaultGrace
	if o.given("grace") {
		if grace, err = o.duration("grace"); err != nil {
			return err
		}
	}
	id := r.PathValue("id")
	if !keystore.ValidID(id) {
		return errNotFound
	}
	// Rotation mints a secret with the old key's permissions and
	// restrictions, for the caller: a keys:write caller may do that only
	// with ones it could give a key of its own making. Checked on the very
	// record the new key copies, so that no change made meanwhile slips
	// into the copy; another owner's key is 404 before anything else.
	secret, k, err := s.manager.Rotate(r.Context(), id, grace, c.actor(), func(old *keystore.Key) error {
		if err := c.reach(old); err != nil {
			return err
		}
		if err := s.exceedsCaller(c, old); err != nil {
			return err
		}
		return s.rotationPending(r.Context(), c, old)
	})
	if errors.Is(err, keystore.ErrNotLive) {
		if ae := s.rotatedAlready(r.Context(), c, id); ae != nil {
			return ae
		}
	}
	return s.writeNewKey(w, secret, k, err, "rotation", unconfirmedRotation)
}

// rotatedAlready is the refusal of a rotation of a key rotated already,
// naming its successor, or nil for a key refused otherwise (revoked,
// expired) or one it cannot read. A client whose rotation timed out and
// who sends it again lands here: the new key's secret was in the answer it
// never got and exists nowhere else, and the only way to a secret it holds
// is to rotate that successor in turn, which it must be able to name.
func (s *server) rotatedAlready(ctx context.Context, c *caller, id string) *apiError {
	old, err := s.store.Get(ctx, id)
	if err != nil || c.reach(old) != nil || old.RotatedTo == "" || old.RevokedAt != nil {
		return nil
	}
	return &apiError{http.StatusConflict, codeNotLive, "the key was rotated already, to " + old.RotatedTo +
		": a key is rotated once; if the answer to that rotation was lost, its secret is lost with it: revoke this key, then rotate " +
		old.RotatedTo + " with \"grace\": \"0s\" for a secret you hold"}
}
