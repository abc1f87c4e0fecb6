// Package authz is the decision of extauthz: given one HTTP request's
// attributes, find and check its API key and answer allow or deny, in the
// numbered steps of Decide (docs/decision.md tells them). The decision is
// pure logic over small interfaces (a key lookup, a rate limiter, a clock):
// the canonical request, the route table, the key sources and the lookup
// guard live here, and so does what a response must say (codes, headers,
// the JSON body, what to strip), in no protocol's terms.
//
// It is not an adapter: the Envoy gRPC service is authz/envoy, the HTTP
// (forward-auth) endpoint authz/forwardauth; they turn requests into
// Requests and Decisions into responses. It knows nothing of Redis, SQLite,
// protobuf, gRPC or net/http, and does not read the config file.
package authz

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// KeyLookup finds a key record by hash: keystore.Cache in production.
type KeyLookup interface {
	// Cached answers from memory alone, without the store: with
	// keystore.CacheAnswered the key or error is the answer; otherwise the
	// state says whether the store has confirmed the hash before.
	Cached(h keystore.Hash) (*keystore.Key, keystore.CacheState, error)
	// Lookup answers from the cache or, failing that, the store.
	Lookup(ctx context.Context, h keystore.Hash) (*keystore.Key, error)
}

// Decision is the outcome of one check.
type Decision struct {
	Code    Code   // "" = allow
	Message string // human message for a denial; never contains a key
	Method  string // normalised method ("" when step 1 failed)
	Path    string // normalised path, without query
	Route   *Route // nil when none matched
	Key     *keystore.Key
	// Present has bit i set when key source i carried a value, whether or
	// not it was the one used: every present credential is removed before the
	// request goes upstream.
	Present  uint64
	ClientIP netip.Addr
	// RateLimit is set when a limit applied (allowed or not).
	RateLimit    ratelimit.Result
	HasRateLimit bool

	// limits is step 9's scratch space: the limits go to the Limiter
	// interface, so a local array would be moved to the heap on every check.
	limits [2]ratelimit.Limit
	// policy is the policy the decision was made under: the adapters read
	// the sources from it, never from a policy a reload swapped in since.
	policy *Policy
	// storeAsked is when step 5 went past the cache to the store (zero when
	// the cache answered): the check's time for the store runs from then.
	storeAsked time.Time
}

// Allowed reports whether the request may proceed.
func (d Decision) Allowed() bool { return d.Code == "" }

// Policy is the part of the configuration the decision reads; it is swapped
// whole on reload.
type Policy struct {
	Routes       *Routes
	paths        pathRules
	Authenticate bool // unmatched routes need only a valid key
	Sources      []Source
	Format       keystore.Format
	XFFHops      int
	DefaultRate  ratelimit.Rate
	// FailRate bounds the lookups of unknown keys that find nothing per
	// client address block, FailTotalRate per process (see lookupGuard);
	// zero = unlimited.
	FailRate      ratelimit.Rate
	FailTotalRate ratelimit.Rate
}

// PolicyOptions are the decision's settings, from which NewPolicy compiles a
// Policy. They are the decision's own types: cmd/extauthz fills them from
// the config file.
type PolicyOptions struct {
	// Routes is the route table; the first route whose pattern matches
	// the path claims it (see Routes).
	Routes []RouteSpec
	// Paths are the opt-in path readings; the zero value is strict.
	Paths Paths
	// Authenticate makes a request no route matches need only a valid key;
	// otherwise it is 403 no_route.
	Authenticate bool
	// Sources are where the key may come from, tried in order (at most 64).
	Sources []Source
	// Format is the key format (NewFormat); the zero Format is refused.
	Format keystore.Format
	// XFFHops is how many X-Forwarded-For hops are trusted for the client
	// address (0: the peer).
	XFFHops int
	// DefaultRate is the limit of keys without one of their own; zero = none.
	DefaultRate ratelimit.Rate
	// FailRate bounds the lookups of unknown keys that find nothing per
	// client address block, FailTotalRate per process (see lookupGuard);
	// zero = unlimited.
	FailRate, FailTotalRate ratelimit.Rate
}

// NewPolicy compiles o into a Policy. The error names what is wrong.
func NewPolicy(o PolicyOptions) (*Policy, error) {
	routes, err := CompileRoutes(o.Routes, o.Paths)
	if err != nil {
		return nil, err
	}
	if o.Format.Prefix() == "" {
		return nil, errors.New("key format: none given (make one with keystore.NewFormat)")
	}
	if len(o.Sources) > 64 {
		return nil, fmt.Errorf("sources: at most 64")
	}
	return &Policy{
		Routes:        routes,
		paths:         newPathRules(o.Paths),
		Authenticate:  o.Authenticate,
		Sources:       slices.Clone(o.Sources),
		Format:        o.Format,
		XFFHops:       o.XFFHops,
		DefaultRate:   o.DefaultRate,
		FailRate:      o.FailRate,
		FailTotalRate: o.FailTotalRate,
	}, nil
}

// Authorizer makes decisions. Its fields are set once; the Policy can be
// swapped at any time with SetPolicy.
type Authorizer struct {
	keys    KeyLookup
	hasher  *keystore.Hasher
	limiter ratelimit.Limiter // nil = no rate limiting
	guard   *lookupGuard
	now     func() time.Time
	policy  atomic.Pointer[Policy]
	// storeTime bounds what one check waits on the stores in all (0 = each
	// store call on its own bound); see SetStoreTime.
	storeTime time.Duration
}

// NewAuthorizer returns an Authorizer. limiter may be nil; now nil means time.Now.
func NewAuthorizer(p *Policy, keys KeyLookup, hasher *keystore.Hasher, limiter ratelimit.Limiter, now func() time.Time) *Authorizer {
	if now == nil {
		now = time.Now
	}
	a := &Authorizer{keys: keys, hasher: hasher, limiter: limiter, guard: newLookupGuard(), now: now}
	a.policy.Store(p)
	return a
}

// SetStoreTime bounds the time one check waits on its stores in all, to d
// and a tenth: a check whose key lookup missed the cache and went to the
// store leaves the rate limiter what is left of d, but never less than d/10,
// and past that the limiter decides as when its store fails
// (ratelimit.WithStoreDeadline). Without it a lookup and a rate-limit call
// could each wait out a timeout of their own. The tenth is for the check
// whose lookup waited out d on a failed node while its rate limit lives on
// a healthy one (another Cluster master): that master answers within it,
// and the count stays shared rather than local. Call it before the first
// decision.
func (a *Authorizer) SetStoreTime(d time.Duration) { a.storeTime = d }

// SetPolicy swaps the policy (hot reload); checks in flight finish on the old one.
func (a *Authorizer) SetPolicy(p *Policy) { a.policy.Store(p) }

// Policy returns the policy in force.
func (a *Authorizer) Policy() *Policy { return a.policy.Load() }

// Decide runs the steps of the decision in order and returns at the first
// failure. d must be zeroed by the caller (it is passed in so that adapters
// can keep it on the stack).
func (a *Authorizer) Decide(ctx context.Context, req *Request, d *Decision) {
	p := a.policy.Load()
	d.policy = p
	now := a.now()

	// 1. Normalise method, path and client IP.
	if !normalize(p, req, d) {
		return
	}
	// 2. Route.
	if !route(p, d) {
		return
	}
	// 3. Find the key (every present source is noted, so all are stripped).
	key, found, ok := findKey(p, req, d)
	if !ok || d.Route != nil && d.Route.Public {
		return
	}
	// 3–7. Present, well-formed, known, live, from an allowed address.
	if !a.checkKey(ctx, p, key, found, now, d) {
		return
	}
	// 8. Permissions.
	if missing, ok := missingPermission(d.Key.Permissions, d.Route); !ok {
		d.Deny(CodePermissionDenied, "missing permission \""+missing+"\"")
		return
	}
	// 9. Rate limits.
	a.rateLimit(ctx, p, d)
}

// Authenticate runs only the key steps (1, 3–7): who is calling, with no
// route, permission or rate limit. It is how the admin API knows its caller.
func (a *Authorizer) Authenticate(ctx context.Context, req *Request, d *Decision) {
	p := a.policy.Load()
	d.policy = p
	if !normalize(p, req, d) {
		return
	}
	if key, found, ok := findKey(p, req, d); ok {
		a.checkKey(ctx, p, key, found, a.now(), d)
	}
}

// checkKey runs steps 3 (missing) to 7 on the credential found.
func (a *Authorizer) checkKey(ctx context.Context, p *Policy, key string, found bool, now time.Time, d *Decision) bool {
	if !found {
		d.Deny(CodeMissingKey, "")
		return false
	}
	// 4. Format, without the store. A malformed key costs nothing more, so
	// it is not counted against anyone.
	if p.Format.Check(key) != nil {
		d.Deny(CodeInvalidKey, "")
		return false
	}
	// 5. Hash and look up (cache, then store); 10. store unreachable.
	if !a.lookup(ctx, p, key, now, d) {
		return false
	}
	// 6. Revoked or expired.
	switch d.Key.StatusAt(now) {
	case keystore.Revoked:
		d.Deny(CodeRevokedKey, "")
		return false
	case keystore.Expired:
		d.Deny(CodeExpiredKey, "")
		return false
	}
	// 7. The key's IP allowlist.
	if !ipAllowed(d.Key.IPAllowlist, d.ClientIP) {
		d.Deny(CodeIPNotAllowed, "")
		return false
	}
	return true
}

// Deny records a denial with code c and message (c's own message when
// empty; never a key). Decide denies through it, and so does an adapter
// that answers a request it could not hand to Decide (a malformed original
// request, a recovered panic).
func (d *Decision) Deny(c Code, message string) {
	d.Code = c
	if message == "" {
		message = c.defaultMessage()
	}
	d.Message = message
}

// Sources are the key sources of the policy d was decided under (nil when
// Decide did not run): the credentials an adapter removes before the
// request goes upstream are those of d.Present among them. Reading them
// from d, not from the Authorizer, keeps a reload between the decision and
// the response from naming other sources.
func (d *Decision) Sources() []Source {
	if d.policy == nil {
		return nil
	}
	return d.policy.Sources
}

// Observer is told about every decision after it is made (metrics, audit).
// It must not block.
type Observer interface {
	Observe(req *Request, d *Decision, latency time.Duration)
}

// LogPanic logs a recovered panic without its value: the value is whatever
// was being formatted when it happened, which may be a key or a header. The
// type and the stack (whose argument words are numbers, not string
// contents) are enough to find the bug.
func LogPanic(logger *slog.Logger, where string, r any) {
	if logger == nil {
		logger = slog.Default()
	}
	logger.Error("panic recovered", "in", where, "type", fmt.Sprintf("%T", r), "stack", string(debug.Stack()))
}

// normalize is step 1: the canonical method and path, and the client IP.
func normalize(p *Policy, req *Request, d *Decision) bool {
	if req.Malformed != "" {
		d.Deny(CodeBadRequest, "malformed request: "+req.Malformed)
		return false
	}
	method, ok := normalizeMethod(req.Method)
	if !ok {
		d.Deny(CodeBadRequest, "malformed request: the method must be an upper-case token")
		return false
	}
	path, err := p.paths.normalize(req.Path)
	if err != nil {
		d.Deny(CodeBadRequest, "malformed request: "+err.Error())
		return false
	}
	d.Method, d.Path = method, path
	hops := p.XFFHops
	if req.XFFTrustedHops >= 0 {
		hops = req.XFFTrustedHops
	}
	d.ClientIP = clientIP(req, hops)
	return true
}

// route is step 2: the route that decides the request (Routes.match), or
// the denial.
func route(p *Policy, d *Decision) bool {
	r, k := p.Routes.match(d.Method, d.Path)
	switch k {
	case matchRoute:
		d.Route = r
		return true
	case matchNone:
		if p.Authenticate {
			return true
		}
		d.Deny(CodeNoRoute, "")
	case matchWrongMethod:
		d.Deny(CodeNoRoute, "no route allows "+d.Method+" on this path")
	case matchSlashVaries:
		d.Deny(CodeBadRequest, "malformed request: the path gets another route without its trailing slash")
	case matchCaseVaries:
		d.Deny(CodeBadRequest, "malformed request: the letter case of the path decides its route")
	}
	return false
}

// findKey returns the value of the first present source and marks every
// present source in d.Present. A request that names a credential in a
// spelling some upstream reads as a source's, but the proxy does not strip
// (Source.lookup, headerAliasesSource), is denied 400 and ok is false.
func findKey(p *Policy, req *Request, d *Decision) (key string, found, ok bool) {
	for i, s := range p.Sources {
		v, present, ambiguous := s.lookup(req)
		if ambiguous {
			d.Deny(CodeBadRequest, "malformed request: a "+s.Kind().String()+" name reads as the credential's but is spelt differently")
			return "", false, false
		}
		if !present {
			continue
		}
		d.Present |= 1 << i
		if !found {
			key, found = v, true
		}
	}
	if headerAliasesSource(req, p.Sources) {
		d.Deny(CodeBadRequest, "malformed request: a header name reads as the credential header's but is spelt differently")
		return "", false, false
	}
	return key, found, true
}

// lookup finds the key's record. The cache answers most checks; a key it
// has never seen found must pass the lookup guard before it may cost a
// store round trip (see lookupGuard), while the refresh of a key whose
// entry expired or was invalidated never waits on the guard.
func (a *Authorizer) lookup(ctx context.Context, p *Policy, key string, now time.Time, d *Decision) bool {
	h := a.hasher.Hash(key)
	k, state, err := a.keys.Cached(h)
	switch state {
	case keystore.CacheAnswered:
	case keystore.CacheExpired:
		d.storeAsked = time.Now()
		k, err = a.keys.Lookup(ctx, h)
	default:
		if !a.admitLookup(p, now, d) {
			return false
		}
		d.storeAsked = time.Now()
		if k, err = a.keys.Lookup(ctx, h); !errors.Is(err, keystore.ErrNotFound) {
			a.guard.refund(d.ClientIP, p.FailRate, p.FailTotalRate)
		}
	}
	switch {
	case err == nil:
		d.Key = k
		return true
	case errors.Is(err, keystore.ErrNotFound):
		d.Deny(CodeInvalidKey, "")
	default:
		d.Deny(CodeUnavailable, "")
	}
	return false
}

// admitLookup asks the guard for one store lookup of an unknown key, and
// answers the check when it refuses.
func (a *Authorizer) admitLookup(p *Policy, now time.Time, d *Decision) bool {
	if p.FailRate.IsZero() && p.FailTotalRate.IsZero() {
		return true
	}
	switch verdict, wait := a.guard.admit(d.ClientIP, p.FailRate, p.FailTotalRate, now); verdict {
	case blockExhausted:
		d.RateLimit = ratelimit.Result{Limit: ratelimit.Limit{Name: failedAttempts, Rate: p.FailRate}, Reset: wait, RetryAfter: wait}
		d.HasRateLimit = true
		d.Deny(CodeRateLimited, "too many unknown API keys from this address; retry later")
		return false
	case totalExhausted:
		d.Deny(CodeUnavailable, "too many unknown API keys are being checked; retry shortly")
		return false
	}
	return true
}

func ipAllowed(allow []netip.Prefix, ip netip.Addr) bool {
	if len(allow) == 0 {
		return true
	}
	if !ip.IsValid() {
		return false
	}
	for _, p := range allow {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// missingPermission returns the first permission the route needs that the
// key lacks. "admin" grants every permission but the keys:* ones: those
// manage keys, and a key holds them only by name (the admin API asks for
// them by name too), so that an application's superuser is not also the
// keeper of everyone's keys.
func missingPermission(have []string, r *Route) (string, bool) {
	if r == nil || len(r.Permissions) == 0 {
		return "", true
	}
	admin := slices.Contains(have, "admin")
	for _, need := range r.Permissions {
		if admin && !strings.HasPrefix(need, "keys:") {
			continue
		}
		if !slices.Contains(have, need) {
			return need, false
		}
	}
	return "", true
}

// rateLimit applies the key's limit and the route's per-key limit together.
func (a *Authorizer) rateLimit(ctx context.Context, p *Policy, d *Decision) {
	if a.limiter == nil {
		return
	}
	limits := d.limits[:0]
	keyRate := d.Key.RateLimit.Or(p.DefaultRate)
	if !keyRate.IsZero() {
		limits = append(limits, ratelimit.Limit{Name: "key", Bucket: d.Key.ID, Rate: keyRate})
	}
	if d.Route != nil && !d.Route.RateLimit.IsZero() {
		// Counted per route, not per pattern: GET and DELETE on one pattern
		// are two routes with two limits.
		limits = append(limits, ratelimit.Limit{Name: d.Route.Pattern, Bucket: d.Key.ID, Scope: d.Route.scope, Rate: d.Route.RateLimit})
	}
	if len(limits) == 0 {
		return
	}
	if a.storeTime > 0 && !d.storeAsked.IsZero() {
		// The lookup went to the store: the limiter gets what is left, and
		// at least a tenth of the store time (see SetStoreTime).
		deadline := d.storeAsked.Add(a.storeTime)
		if floor := time.Now().Add(a.storeTime / 10); deadline.Before(floor) {
			deadline = floor
		}
		var cancel context.CancelFunc
		ctx, cancel = ratelimit.WithStoreDeadline(ctx, deadline)
		defer cancel()
	}
	res, err := a.limiter.Allow(ctx, limits)
	if err != nil {
		d.Deny(CodeUnavailable, "")
		return
	}
	d.RateLimit, d.HasRateLimit = res, true
	if !res.Allowed {
		d.Deny(CodeRateLimited, "")
	}
}
