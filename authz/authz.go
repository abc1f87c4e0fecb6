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
	// Code is the decision: "" = allow, else the denial's code. In shadow
	// mode it is what the decision would have been, and the request is
	// allowed all the same (see Allowed).
	Code    Code
	Message string // human message for a denial; never contains a key
	// Policy is the policy the request was decided by (nil when none was
	// selected: a no_policy denial, or a decision Decide did not make).
	Policy *Policy
	// Shadow is set when the policy or route runs in shadow mode: the
	// decision is recorded (Code), not enforced.
	Shadow bool
	Method string // normalised method ("" when step 2 failed)
	Path   string // normalised path, without query
	// rawPath is Path with the percent-encodings of !$&'()*+,=:@ kept as
	// sent, when the request had any ("" otherwise): a router that
	// matches the raw path reads them so (route).
	rawPath string
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

	// limits is step 11's scratch space: the limits go to the Limiter
	// interface, so a local array would be moved to the heap on every check.
	limits [2]ratelimit.Limit
	// selector is what chose Policy.
	selector Selector
	// storeAsked is when step 6 went past the cache to the store (zero when
	// the cache answered): the check's time for the store runs from then.
	storeAsked time.Time
}

// Allowed reports whether the request may proceed: the decision allowed
// it, or it was made in shadow mode.
func (d Decision) Allowed() bool { return d.Code == "" || d.Shadow }

// Identified reports whether the upstream learns who is calling: the
// decision allowed the request (not only in shadow mode) with a key.
// Identity headers and forwarded metadata are set then and only then.
func (d *Decision) Identified() bool { return d.Code == "" && d.Key != nil }

// PolicyName is the name of the policy the request was decided by, ""
// when none was selected.
func (d *Decision) PolicyName() string {
	if d.Policy == nil {
		return ""
	}
	return d.Policy.Name
}

// RoutePattern is the pattern of the route that decided the request, ""
// when none matched.
func (d *Decision) RoutePattern() string {
	if d.Route == nil {
		return ""
	}
	return d.Route.Pattern
}

// Mode is the mode the decision was made in: ModeShadow or ModeEnforce.
func (d *Decision) Mode() Mode {
	if d.Shadow {
		return ModeShadow
	}
	return ModeEnforce
}

// SelectedBy is what chose the decision's policy.
func (d *Decision) SelectedBy() Selector { return d.selector }

// Authorizer makes decisions. Its fields are set once; the PolicySet can be
// swapped at any time with SetPolicies.
type Authorizer struct {
	keys     KeyLookup
	hasher   *keystore.Hasher
	limiter  ratelimit.Limiter // nil = no rate limiting
	guard    *lookupGuard
	now      func() time.Time
	policies atomic.Pointer[PolicySet]
	// storeTime bounds what one check waits on the stores in all (0 = each
	// store call on its own bound); see SetStoreTime.
	storeTime time.Duration
}

// NewAuthorizer returns an Authorizer. limiter may be nil; now nil means time.Now.
func NewAuthorizer(set *PolicySet, keys KeyLookup, hasher *keystore.Hasher, limiter ratelimit.Limiter, now func() time.Time) *Authorizer {
	if now == nil {
		now = time.Now
	}
	a := &Authorizer{keys: keys, hasher: hasher, limiter: limiter, guard: newLookupGuard(), now: now}
	a.policies.Store(set)
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

// SetPolicies swaps every policy at once (hot reload): one pointer, so a
// check decides wholly under the set it started with, the old or the new.
func (a *Authorizer) SetPolicies(set *PolicySet) { a.policies.Store(set) }

// Policies returns the policy set in force.
func (a *Authorizer) Policies() *PolicySet { return a.policies.Load() }

// Decide runs the steps of the decision in order and returns at the first
// failure, under the policy set in force. d must be zeroed by the caller (it
// is passed in so that adapters can keep it on the stack).
func (a *Authorizer) Decide(ctx context.Context, req *Request, d *Decision) {
	a.DecideUnder(ctx, a.policies.Load(), req, d)
}

// DecideUnder is Decide under set, for an adapter that read req by set
// already (HTTP mode parses the policy's name out of the auth path only when
// set has named policies): reading the request by one set and deciding it
// by another, across a reload, would decide a path cut for one config under
// the other's default policy.
func (a *Authorizer) DecideUnder(ctx context.Context, set *PolicySet, req *Request, d *Decision) {
	now := a.now()
	// The client address first, so that every decision is attributed to
	// whoever sent it, those refused at steps 1 and 2 too: unknown hosts
	// and malformed paths are what a prober sends.
	d.ClientIP = set.ClientIP(req)

	// 1. Select the policy (and its mode): the auth path in HTTP mode, else
	// Envoy's context extensions, the destination principal, the host.
	if !set.selectPolicy(req, d) {
		return
	}
	// 2. Normalise method and path.
	if !normalize(set, req, d) {
		enforceUnread(d)
		noteShadowed(req, d)
		return
	}
	// 3. Route (and the route's own mode, if it has one).
	if !route(d) {
		noteShadowed(req, d)
		return
	}
	// 4. Find the key (every present source is noted, so all are stripped).
	key, found, ok := findKey(d.Policy, req, d)
	if !ok || d.Route != nil && d.Route.Public {
		return
	}
	// 4–8. Present, well-formed, known, live, from an allowed address.
	if !a.checkKey(ctx, set, key, found, now, d) {
		return
	}
	// 9. The key's policies.
	if !d.Key.ValidUnder(d.Policy.Name) {
		d.Deny(CodePolicyNotAllowed, "API key is not valid under policy \""+d.Policy.Name+"\"")
		return
	}
	// 10. Permissions.
	if missing, ok := missingPermission(d.Key.Permissions, d.Route); !ok {
		d.Deny(CodePermissionDenied, "missing permission \""+missing+"\"")
		return
	}
	// 11. Rate limits.
	a.rateLimit(ctx, d)
}

// Authenticate runs only the key steps (2, 4–8) under the default policy:
// who is calling, with no policy selection, route, scope, permission or
// rate limit. It is how the admin API knows its caller.
func (a *Authorizer) Authenticate(ctx context.Context, req *Request, d *Decision) {
	set := a.policies.Load()
	d.Policy = set.Default
	d.ClientIP = set.ClientIP(req)
	if !normalize(set, req, d) {
		return
	}
	if key, found, ok := findKey(d.Policy, req, d); ok {
		a.checkKey(ctx, set, key, found, a.now(), d)
	}
}

// checkKey runs steps 4 (missing) to 8 on the credential found.
func (a *Authorizer) checkKey(ctx context.Context, set *PolicySet, key string, found bool, now time.Time, d *Decision) bool {
	if !found {
		d.Deny(CodeMissingKey, "")
		return false
	}
	// 5. Format, without the store. A malformed key costs nothing more, so
	// it is not counted against anyone.
	if set.Format.Check(key) != nil {
		d.Deny(CodeInvalidKey, "")
		return false
	}
	// 6. Hash and look up (cache, then store); 12. store unreachable.
	if !a.lookup(ctx, set, key, now, d) {
		return false
	}
	if !d.storeAsked.IsZero() {
		// The lookup waited on the store (up to its timeout, then perhaps
		// a stale record): a key whose expiry or grace end passed
		// meanwhile is expired now, not when the check began.
		now = a.now()
	}
	// 7. Revoked or expired.
	switch d.Key.StatusAt(now) {
	case keystore.Revoked:
		d.Deny(CodeRevokedKey, "")
		return false
	case keystore.Expired:
		d.Deny(CodeExpiredKey, "")
		return false
	}
	// 8. The key's IP allowlist.
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

// Sources are the key sources of the policy d was decided under, then
// every other policy's (nil when none was selected): the credentials an
// adapter removes before the request goes upstream are those of d.Present
// among them. Reading them from d, not from the Authorizer, keeps a reload
// between the decision and the response from naming other sources.
func (d *Decision) Sources() []Source {
	if d.Policy == nil {
		return nil
	}
	return d.Policy.strip
}

// credentialOutsideHeaders reports whether d noted a credential in the
// query or a cookie (Present): a source of the policy's own that carried
// any value, or another policy's that carried a key.
func (d *Decision) credentialOutsideHeaders() bool {
	for i, s := range d.Sources() {
		if d.Present&(1<<i) != 0 && s.kind != SourceHeader {
			return true
		}
	}
	return false
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

// ClientIP is the client address a decision of req reads: the peer, or
// the trusted X-Forwarded-For hop. An adapter that answers a request
// without deciding it (one it could not read) names its client with it.
func (a *Authorizer) ClientIP(req *Request) netip.Addr {
	return a.policies.Load().ClientIP(req)
}

// ClientIP is Authorizer.ClientIP under set, for an adapter that reads and
// decides a request by one set (DecideUnder).
func (set *PolicySet) ClientIP(req *Request) netip.Addr {
	hops := set.XFFHops
	if req.XFFTrustedHops >= 0 {
		hops = req.XFFTrustedHops
	}
	return clientIP(req, hops)
}

// normalize is step 2: the method and path in their one canonical form
// (the client address is read before step 1), or the 400.
func normalize(set *PolicySet, req *Request, d *Decision) bool {
	if req.Malformed != "" {
		// Not even in shadow mode: the adapter stopped reading the request
		// at a limit, so the credentials and client x-authz-* headers past
		// it could not be named for removal, and would reach the upstream.
		d.Shadow = false
		d.Deny(CodeBadRequest, "malformed request: "+req.Malformed)
		return false
	}
	method, ok := normalizeMethod(req.Method)
	if !ok {
		d.Deny(CodeBadRequest, "malformed request: the method must be an upper-case token")
		return false
	}
	switch overridden(req, method) {
	case overridesMethod:
		d.Deny(CodeBadRequest, "malformed request: a method override (X-HTTP-Method-Override, X-HTTP-Method, X-Method-Override or a _method parameter) names another method than the request's")
		return false
	case overridesTarget:
		d.Deny(CodeBadRequest, "malformed request: X-Original-URL or X-Rewrite-URL names another target than the request's")
		return false
	}
	path, err := set.paths.normalize(req.Path)
	if err != nil {
		d.Deny(CodeBadRequest, "malformed request: "+err.Error())
		return false
	}
	d.Method, d.Path = method, path
	if !set.paths.servlet {
		d.rawPath = keptSubDelims(req.Path)
	}
	return true
}

// route is step 3: the route of the selected policy that decides the
// request (Routes.match), or the denial. A route with a mode of its own
// overrides the policy's.
func route(d *Decision) bool {
	p := d.Policy
	r, k := p.Routes.match(d.Method, d.Path)
	if decided := k == matchRoute || k == matchNone || k == matchWrongMethod; decided && d.rawPath != "" && p.Routes.differs(d.Method, d.rawPath, r, k) {
		// Express and koa-router match a literal against the raw path
		// and decode only what a wildcard captures: for them
		// "/v1/things%3Alist" is not "/v1/things:list". Such escapes
		// cannot be refused outright (encodeURIComponent writes them),
		// but they must not pick the route.
		k = matchEncodingVaries
	}
	switch k {
	case matchRoute:
		d.Route = r
		if r.Mode != ModeInherit {
			d.Shadow = r.Mode == ModeShadow
		}
		return true
	case matchNone:
		if p.Authenticate {
			return true
		}
		d.Deny(CodeNoRoute, "")
	case matchWrongMethod:
		d.Deny(CodeNoRoute, "no route allows "+d.Method+" on this path")
	case matchSlashVaries:
		refuseVariant(d, "malformed request: the path gets another route without its trailing slash")
	case matchCaseVaries:
		refuseVariant(d, "malformed request: the letter case of the path decides its route")
	case matchFormatVaries:
		refuseVariant(d, "malformed request: the path gets another route without its extension, as frameworks that read it as a format serve it")
	case matchScriptVaries:
		refuseVariant(d, "malformed request: the path gets another route read as a PHP script's path info (/index.php/x is served as /x)")
	case matchEncodingVaries:
		refuseVariant(d, "malformed request: the path gets another route with its percent-encodings read as written, as routers that match the raw path (Express) read it")
	}
	return false
}

// refuseVariant is the 400 of a path whose other spellings get other
// routes: an upstream may serve it as any of them.
func refuseVariant(d *Decision, msg string) {
	enforceUnread(d)
	d.Deny(CodeBadRequest, msg)
}

// enforceUnread answers a refusal of a path no route could be said to
// decide (steps 2 and 3: not canonical, or another spelling of it gets
// another route) in enforce mode when the policy is shadow but a route of
// it enforces: the upstream may serve the path as that route, which
// shadowing the refusal would let through.
func enforceUnread(d *Decision) {
	if d.Policy != nil && d.Policy.enforcesRoute {
		d.Shadow = false
	}
}

// findKey returns the value of the first present source of p and marks
// every present source in d.Present (notePresent). A request that names a
// credential in a spelling some upstream reads as a source's, but the proxy
// does not strip (Source.lookup, headerAliasesSource), is denied 400 and ok
// is false.
func findKey(p *Policy, req *Request, d *Decision) (key string, found, ok bool) {
	key, found, ambiguous := notePresent(p, req, d)
	if ambiguous != "" {
		// Not even in shadow mode: the proxy strips credentials by their
		// exact name, so a key under another spelling would reach the
		// upstream whatever this answer names for removal.
		d.Shadow = false
		d.Deny(CodeBadRequest, ambiguous)
		return "", false, false
	}
	if req.HeadersOnly && d.credentialOutsideHeaders() {
		// Nor here: allowed, the credential would reach the upstream
		// just the same.
		d.Shadow = false
		d.Deny(CodeBadRequest, msgCredentialOutsideHeaders)
		return "", false, false
	}
	return key, found, true
}

// msgCredentialOutsideHeaders is the 400 of a request with a credential in
// the query or a cookie from an adapter whose proxy can remove only
// headers (Request.HeadersOnly). None of the proxies that call an HTTP
// auth service (Envoy's http_service, nginx, Traefik, Caddy) can take a
// query parameter or one cookie off the request it forwards, where over
// gRPC Envoy does.
const msgCredentialOutsideHeaders = "a credential was sent in the query or a cookie, which the proxy in front cannot remove before the request goes upstream: send it in a header"

// notePresent returns the value of the first present source of p and marks
// every present source in d.Present, p's own and, never read, the other
// policies' (Policy.strip); ambiguous is the message of the 400 a credential
// spelt two ways gets ("" for none). Every source is marked even then: a
// decision in shadow mode that is allowed must still strip all it was
// sent.
func notePresent(p *Policy, req *Request, d *Decision) (key string, found bool, ambiguous string) {
	for i, s := range p.Sources {
		v, present, twice := s.lookup(req)
		if twice && ambiguous == "" {
			ambiguous = "malformed request: a " + s.Kind().String() + " name reads as the credential's but is spelt differently"
		}
		if !present {
			if p.otherSchemeHoldsKey(s, req) {
				d.Present |= 1 << i
			}
			continue
		}
		d.Present |= 1 << i
		if !found {
			key, found = v, true
		}
	}
	if ambiguous == "" && headerAliasesSource(req, p.Sources) {
		ambiguous = "malformed request: a header name reads as the credential header's but is spelt differently"
	}
	// Other policies' sources: never read, only noted, so that a key sent
	// where another service takes it is removed too. Only a key: the same
	// name may carry what this policy's upstream takes for itself (its
	// users' own Bearer tokens, a cookie of its own), which is no key of
	// ours and must still reach it.
	var keyIn keyInRequest
	for i := len(p.Sources); i < len(p.strip); i++ {
		s := p.strip[i]
		holds := p.HoldsKey // a query or cookie value, as its readers decode it
		if s.kind == SourceHeader {
			holds = p.format.ContainsKey // no header reader decodes a value
		}
		if s.anyValue(req, holds) || p.otherSchemeHoldsKey(s, req) || p.headerHoldsKey(s, req) {
			d.Present |= 1 << i
		} else if s.kind == SourceCookie && keyIn.holds(p, SourceCookie, req) && s.anyValue(req, anyCookie) {
			// The cookies hold a key of ours, but not in this cookie's
			// value as it is split here, at ";" and ",": a reader that
			// reads on (api_key=theirs,<key> to Go's net/http and Node;
			// a quoted api_key="theirs; <key>" to Python's SimpleCookie)
			// takes it for this cookie's. It goes, and the pieces that
			// hold the key with it (CookieWithout).
			d.Present |= 1 << i
		}
		// A key under a spelling of another service's name that the proxy
		// does not strip (api%5Fkey for api_key) would reach this upstream
		// whatever the answer names: refused, as for this policy's own
		// names, but only when the request holds a key of ours, since the
		// name is no credential here.
		if ambiguous == "" && (p.spellingHoldsKey(s, req, &keyIn) || p.aliasHoldsKey(s, req)) {
			ambiguous = "malformed request: a " + s.Kind().String() + " name reads as another service's credential's but is spelt differently, and the request holds a key"
		}
	}
	return key, found, ambiguous
}

// anyCookie is true of any value: Source.anyValue with it reports whether
// a cookie of the source's name is present.
func anyCookie(string) bool { return true }

// noteShadowed marks the credentials of a request that steps 2 or 3
// refused in shadow mode (a path that is not canonical, no route): it is
// allowed all the same, so what it carries must be stripped all the same,
// though no step read it. One that carries a credential spelt so that the
// proxy cannot strip it is not allowed: its refusal is enforced, as
// findKey enforces the 400 of such a spelling.
func noteShadowed(req *Request, d *Decision) {
	if d.Shadow {
		if _, _, ambiguous := notePresent(d.Policy, req, d); ambiguous != "" || req.HeadersOnly && d.credentialOutsideHeaders() {
			d.Shadow = false
		}
	}
}

// lookup finds the key's record. The cache answers most checks; a key it
// has never seen found must pass the lookup guard before it may cost a
// store round trip (see lookupGuard), while the refresh of a key whose
// entry expired or was invalidated never waits on the guard.
func (a *Authorizer) lookup(ctx context.Context, set *PolicySet, key string, now time.Time, d *Decision) bool {
	h := a.hasher.Hash(key)
	k, state, err := a.keys.Cached(h)
	switch state {
	case keystore.CacheAnswered:
	case keystore.CacheExpired:
		d.storeAsked = time.Now()
		k, err = a.keys.Lookup(ctx, h)
	default:
		if !a.admitLookup(set, now, d) {
			return false
		}
		d.storeAsked = time.Now()
		// A lookup that found its key, or that the store did not answer,
		// is given back; one that found nothing, one whose client left
		// while the store was asked (a reset costs the store its lookup
		// all the same), or one of a key this version refuses (never
		// cached, so every check of it asks the store again) stays counted.
		if k, err = a.keys.Lookup(ctx, h); !errors.Is(err, keystore.ErrNotFound) && !errors.Is(err, keystore.ErrCallerLeft) && !errors.Is(err, keystore.ErrNeedsNewer) {
			a.guard.refund(d.ClientIP, set.FailRate, set.FailTotalRate)
		}
	}
	switch {
	case err == nil:
		d.Key = k
		return true
	case errors.Is(err, keystore.ErrNotFound):
		d.Deny(CodeInvalidKey, "")
	case errors.Is(err, keystore.ErrNeedsNewer):
		// The record restricts the key in a way this version cannot read
		// (rolling upgrade, rollback): refuse rather than decide by less.
		// The key is known, as a revoked one is: its audit event names it.
		d.Key = k
		d.Deny(CodeUnavailable, NeedsNewerMessage)
	default:
		d.Deny(CodeUnavailable, "")
	}
	return false
}

// NeedsNewerMessage is the answer to a key whose record requires what this
// version cannot enforce (keystore.ErrNeedsNewer), wherever the key acts.
const NeedsNewerMessage = "this key needs a newer version of extauthz to be checked; retry shortly"

// admitLookup asks the guard for one store lookup of an unknown key, and
// answers the check when it refuses.
func (a *Authorizer) admitLookup(set *PolicySet, now time.Time, d *Decision) bool {
	if set.FailRate.IsZero() && set.FailTotalRate.IsZero() {
		return true
	}
	switch verdict, wait := a.guard.admit(d.ClientIP, set.FailRate, set.FailTotalRate, now); verdict {
	case blockExhausted:
		d.RateLimit = ratelimit.Result{Limit: ratelimit.Limit{Name: failedAttempts, Rate: set.FailRate}, Reset: wait, RetryAfter: wait}
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

// rateLimit applies the key's limit (its own, else the policy's default)
// and the route's per-key limit together.
func (a *Authorizer) rateLimit(ctx context.Context, d *Decision) {
	if a.limiter == nil {
		return
	}
	limits := d.limits[:0]
	keyRate, keyScope := d.Key.RateLimit.Or(d.Policy.DefaultRate), ""
	if !d.Key.RateLimit.Own() {
		// The policy's default: counted per default rate (Policy.keyScope).
		keyScope = d.Policy.keyScope
	}
	if !keyRate.IsZero() {
		limits = append(limits, ratelimit.Limit{Name: "key", Bucket: d.Key.RateBucket(), Scope: keyScope, Rate: keyRate})
	}
	if d.Route != nil && !d.Route.RateLimit.IsZero() {
		// Counted per route, not per pattern: GET and DELETE on one pattern
		// are two routes with two limits.
		limits = append(limits, ratelimit.Limit{Name: d.Route.Pattern, Bucket: d.Key.RateBucket(), Scope: d.Route.scope, Rate: d.Route.RateLimit})
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
