package admin

import (
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/ratelimit"
)

// Two rules keep the admin API from being a way out of a key's own
// restrictions (its permissions, IP allowlist, expiry, rate limit and
// policies) and its metadata:
//
//   - No key loosens its own restrictions (selfLoosening): a caller
//     changing itself, or the later keys of its line of rotations, may
//     narrow them, never widen or drop them. Otherwise a stolen key limited
//     to one address and an hour would simply lift both, and a key in its
//     grace period would undo a narrowing of its successor.
//   - A key a keys:write caller creates, changes or rotates stays within
//     the caller's own restrictions (exceedsCaller). Otherwise a limited
//     writer would mint itself an unlimited child that outlives it. For a
//     change, the whole resulting key must fit, not only the fields sent:
//     keeping a key that exceeds the caller alive (a new name, a new
//     expiry) is acting with more than the caller has. For a rotation, the
//     old key's restrictions, which the new key inherits, must fit: the
//     caller receives the new secret.
//
// keys:admin callers are bound by the first rule only: they may grant
// anything to other keys.
//
// "Within" means, per restriction:
//
//   - permissions: a subset (for other keys also never admin or
//     keys:admin, see canGrant);
//   - ip_allowlist: every entry lies inside some entry of the bound, and
//     an empty list (any address) fits only an empty bound;
//   - expires_at: no later than the bound, and "never" fits only a bound
//     that never expires;
//   - policies: a key scoped to policies stays scoped within them (a
//     subset); an empty list (every policy) fits only an empty bound;
//   - meta: exactly the bound's. Metadata means whatever the upstream makes
//     of it (a plan, a tenant, a sandbox flag), so extauthz cannot tell an
//     entry that grants from one that restricts: adding, changing or
//     dropping any could be a way out. A keys:write caller's keys carry its
//     own metadata (a create that gives none inherits it), only keys:admin
//     gives others, and no key changes its own;
//   - rate_limit: never more requests in any span of time (rateWithin:
//     1000/h is slower than 100/m but bursts ten times higher, and 59/59s
//     is slower than 60/m and bursts lower, but makes 118 in a minute;
//     neither fits). "none" fits only "none". A key without a rate of its own has, under each policy,
//     that policy's default (its rate_limit.default, else the top-level
//     one) as it stands when the request is made, and a named policy may
//     have a looser default than the top-level one: the rate must fit
//     under every policy both keys are valid under, and under the
//     top-level default, by which the admin API counts. Under a bound
//     with a rate of its own, which is one count under every policy, a key
//     on the defaults must also fit with all its counts together
//     (defaultsBeyond): each policy with a default of its own counts it
//     apart, so one policy at a time it may fit while together it makes
//     several times the bound. Two keys that both have the default always
//     fit each other, as they move together when a default changes.

// restriction names the field of the first restriction of k that goes
// beyond bound, or "" when k fits within it; defaults are every policy's
// default rate (defaultRates).
func restriction(k, bound *keystore.Key, defaults []policyRate) string {
	_, rateBeyond := rateBeyond(k, bound, defaults)
	if _, beyond := defaultsBeyond(k, bound, defaults); beyond {
		rateBeyond = true
	}
	switch {
	case !allowlistWithin(k.IPAllowlist, bound.IPAllowlist):
		return "ip_allowlist"
	case !expiryWithin(k.ExpiresAt, bound.ExpiresAt):
		return "expires_at"
	case rateBeyond:
		return "rate_limit"
	case !policiesWithin(k.Policies, bound.Policies):
		return "policies"
	case !maps.Equal(k.Meta, bound.Meta):
		return "meta"
	}
	return ""
}

// selfLoosening refuses a change a key makes to itself that loosens any of
// its restrictions; the message names the first one.
func (s *server) selfLoosening(before, after *keystore.Key) error {
	for _, p := range after.Permissions {
		if !slices.Contains(before.Permissions, p) {
			return permissionDenied("permissions: a key may not give itself a permission it lacks (" + s.mentionLabel(p) + ")")
		}
	}
	switch field := restriction(after, before, s.defaultRates()); field {
	case "":
	case "meta":
		return permissionDenied("meta: a key may not change its own metadata")
	default:
		return permissionDenied(field + ": a key may not loosen its own restrictions (it may only narrow them)")
	}
	return nil
}

// countStartsAfresh refuses a change that could start a key's count
// afresh under a policy that counts a key on the defaults apart (one with a
// default of its own). A rate of its own is counted in the top-level
// default's count, under every policy; on the defaults the key is counted
// in such a policy's own count. So under that policy, moving the key
// between a rate of its own and the defaults moves it to another count,
// and so does making it valid there again after it moved while scoped
// away (scoped to other policies, moved, then scoped back: each step
// harmless alone). Moved back and forth at the same rate, by itself or by
// a keys:write caller, it would make its limit twice in every window.
// Only a keys:admin caller may make either change to another key, as it
// may grant any rate.
func (s *server) countStartsAfresh(before, after *keystore.Key) error {
	moved := before.RateLimit.Own() != after.RateLimit.Own()
	for _, p := range s.defaultRates() {
		if !p.apart {
			continue
		}
		switch {
		case moved && (before.ValidUnder(p.name) || after.ValidUnder(p.name)):
			return permissionDenied("rate_limit: policy " + strconv.Quote(p.name) + " counts a key without a rate of its own apart, so moving this key " +
				"between a rate of its own and the defaults would start its count there afresh; only a keys:admin caller may, for another key " +
				"(or create a key with the rate it needs)")
		case !before.ValidUnder(p.name) && after.ValidUnder(p.name):
			return permissionDenied("policies: policy " + strconv.Quote(p.name) + " counts a key without a rate of its own apart, and this key may " +
				"have moved between a rate of its own and the defaults while it was not valid under it, so its count there could start afresh; " +
				"only a keys:admin caller may make another key valid under it again (or create a key scoped as it needs)")
		}
	}
	return nil
}

// exceedsCaller refuses a key that goes beyond a keys:write caller's own
// restrictions; the message names the first field, and the caller's own
// bound (the caller's own record, never a secret).
func (s *server) exceedsCaller(c *caller, k *keystore.Key) error {
	if c.admin {
		return nil
	}
	if err := s.canGrant(c, k.Permissions); err != nil {
		return err
	}
	defaults := s.defaultRates()
	switch restriction(k, c.key, defaults) {
	case "ip_allowlist":
		return permissionDenied("ip_allowlist: a keys:write caller's keys must be limited to addresses within its own ip_allowlist")
	case "expires_at":
		return permissionDenied("expires_at: a keys:write caller's keys must expire no later than the caller itself (" +
			c.key.ExpiresAt.UTC().Format(time.RFC3339) + ")")
	case "rate_limit":
		if apart, beyond := defaultsBeyond(k, c.key, defaults); beyond {
			// A new key may be given a rate of its own; an existing one
			// may not move to one (countStartsAfresh), but may be scoped
			// away from those policies.
			advice := "give the key a rate_limit of its own"
			if k.ID != "" {
				advice = "scope the key away from those policies, or have a keys:admin caller give it a rate of its own"
			}
			return permissionDenied("rate_limit: a keys:write caller's keys may not have a higher rate limit than the caller itself (" +
				c.key.RateLimit.String() + "); a key without a rate of its own is counted by the configured default and, apart from it, by the default of each policy that sets one (" +
				strings.Join(apart, ", ") + "), and together those let through more: " + advice)
		}
		p, _ := rateBeyond(k, c.key, defaults)
		under := ""
		if p.name != authz.DefaultPolicy && c.key.RateLimit.Own() {
			// The key's rate is the default of a named policy.
			under = " under policy " + strconv.Quote(p.name) + ", whose default for a key without a rate of its own is " + p.rate.String()
		}
		return permissionDenied("rate_limit: a keys:write caller's keys may not have a higher rate limit than the caller itself (" +
			describeRate(c.key.RateLimit, p) + ")" + under)
	case "policies":
		return permissionDenied("policies: a keys:write caller scoped to policies [" + strings.Join(c.key.Policies, ", ") +
			"] may only give keys scoped within them")
	case "meta":
		return permissionDenied("meta: a keys:write caller's keys carry exactly its own metadata; only keys:admin gives other metadata")
	}
	return nil
}

// describeRate names the caller's rate limit own as it applies under the
// policy p, where a key's rate went beyond it.
func describeRate(own keystore.RateLimit, p policyRate) string {
	switch {
	case own.Own():
		return own.String()
	case p.name == authz.DefaultPolicy:
		return p.rate.String() + ", the configured default"
	}
	return p.rate.String() + ", the default of policy " + strconv.Quote(p.name)
}

// policyRate is one policy's default rate: that of a key without a rate of
// its own, under the policy.
type policyRate struct {
	name string
	rate ratelimit.Rate
	// apart: the policy counts such a key apart from every other policy
	// (authz.Policy.CountsDefaultApart).
	apart bool
}

// defaultRates returns the default rate of every policy in force.
func (s *server) defaultRates() []policyRate {
	ps := s.authz.Policies().Policies()
	out := make([]policyRate, len(ps))
	for i, p := range ps {
		out[i] = policyRate{p.Name, p.DefaultRate, p.CountsDefaultApart()}
	}
	return out
}

// defaultsBeyond reports whether k, a key without a rate of its own, lets
// through more requests in some span of time than bound, a key with one,
// counting all of k's counts together; apart names the policies that count
// k apart. bound's rate is one count under every policy. k is counted by
// the top-level default (under every policy that inherits it, and by the
// admin API) and, apart from that, by the default of each policy it is
// valid under that sets its own: compared one policy at a time, each may
// fit under bound's rate while together they make several times it. A span
// T meets ⌈T/W′⌉ of bound's windows, and a count N/W lets through at most
// N·⌈T/W⌉ ≤ N·⌈W′/W⌉·⌈T/W′⌉ when W < W′, N·⌈T/W′⌉ otherwise (rateWithin);
// so the counts together fit when the sum of N·⌈W′/W⌉ (N where W ≥ W′) is
// at most N′. That is rateWithin exactly for one count, and never lets a
// sum through that could outrun bound.
func defaultsBeyond(k, bound *keystore.Key, defaults []policyRate) (apart []string, beyond bool) {
	if k.RateLimit.Own() || !bound.RateLimit.Own() {
		return nil, false
	}
	b := bound.RateLimit.Or(ratelimit.Rate{})
	if b.IsZero() {
		return nil, false // none: anything fits
	}
	bw := int64(b.Window / time.Second)
	var sum int64
	for _, p := range defaults {
		if p.name != authz.DefaultPolicy && !(p.apart && k.ValidUnder(p.name)) {
			continue // counted in the top-level default's count, or not at all
		}
		if p.name != authz.DefaultPolicy {
			apart = append(apart, p.name)
		}
		r := p.rate
		if beyond || r.IsZero() {
			beyond = true
			continue
		}
		// Each term is at most 1e9 × 366 days in seconds, and no more are
		// added once the sum passes N′ (at most 1e9): no overflow.
		n, rw := r.N, int64(r.Window/time.Second)
		if rw < bw {
			n *= (bw + rw - 1) / rw
		}
		if sum += n; sum > b.N {
			beyond = true
		}
	}
	return apart, beyond
}

// rateBeyond returns the first policy, among those both k and bound are
// valid under, where k's rate limit is looser than bound's, and true; or
// false when there is none. A key without a rate of its own has each
// policy's default, and a named policy's may be looser than the top-level
// one, so comparing under the top-level default alone would let a key on
// the default outrun its bound under such a policy. The top-level default
// is always compared, whatever the keys' policies: the admin API, which is
// no policy, counts a key's own requests by it.
func rateBeyond(k, bound *keystore.Key, defaults []policyRate) (policyRate, bool) {
	for _, p := range defaults {
		both := p.name == authz.DefaultPolicy || k.ValidUnder(p.name) && bound.ValidUnder(p.name)
		if both && !rateWithin(k.RateLimit, bound.RateLimit, p.rate) {
			return p, true
		}
	}
	return policyRate{}, false
}

// allowlistWithin reports whether every prefix of list lies inside a prefix
// of bound (an empty list is "any address").
func allowlistWithin(list, bound []netip.Prefix) bool {
	if len(bound) == 0 {
		return true
	}
	if len(list) == 0 {
		return false
	}
	for _, p := range list {
		inside := slices.ContainsFunc(bound, func(b netip.Prefix) bool {
			return b.Bits() <= p.Bits() && b.Contains(p.Masked().Addr())
		})
		if !inside {
			return false
		}
	}
	return true
}

// policiesWithin reports whether a key valid under list stays within bound
// (an empty list is every policy).
func policiesWithin(list, bound []string) bool {
	if len(bound) == 0 {
		return true
	}
	if len(list) == 0 {
		return false
	}
	for _, p := range list {
		if !slices.Contains(bound, p) {
			return false
		}
	}
	return true
}

// expiryWithin reports whether exp comes no later than bound (nil: never).
func expiryWithin(exp, bound *time.Time) bool {
	return bound == nil || exp != nil && !exp.After(*bound)
}

// rateWithin reports whether the rate limit own (a key's rate_limit, unset
// for the default) is no looser than bound's: whether a key limited to own
// can never make more requests than one limited to bound, over any span of
// time. N/W lets through at most N in any W, so at most N·⌈T/W⌉ in a span
// T, and as many when they come at the start of each window. Comparing
// the bursts and the long-run rates is not enough: 59/59s has both below
// 60/m's, and makes 118 requests in a minute (59, and 59 more a second
// before the minute ends). Where own's window is as long as bound's or
// longer, N ≤ N′ is enough; where it is shorter, a span of bound's window
// W′ holds ⌈W′/W⌉ of own's windows, each of which may be full.
func rateWithin(own, bound keystore.RateLimit, defaultRate ratelimit.Rate) bool {
	if !own.IsSet() && !bound.IsSet() {
		return true
	}
	r, b := own.Or(defaultRate), bound.Or(defaultRate)
	switch {
	case b.IsZero():
		return true
	case r.IsZero():
		return false
	}
	// Windows are whole seconds up to 366 days and N ≤ 1e9: the product
	// fits in an int64.
	rw, bw := int64(r.Window/time.Second), int64(b.Window/time.Second)
	if rw >= bw {
		return r.N <= b.N
	}
	return r.N*((bw+rw-1)/rw) <= b.N
}
