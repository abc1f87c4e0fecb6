// Package ratelimit counts requests against limits of the form "N per W":
// a fresh bucket may burst up to N at once, and no interval of length W holds
// more than N allowed requests. It holds the Limiter contract, the algorithm
// (window.go, its promise and its proof above the code), the in-process
// implementation (Local), and AppendHeaders, which renders a Result as the
// HTTP rate-limit headers.
//
// It does not know about keys or routes: callers name the buckets. It is not
// a Redis client: the limiter shared by every replica through Redis is in
// ratelimit/redis, and ratelimit/limitertest is the suite both pass.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Rate is N requests per Window. The zero Rate means "no limit".
type Rate struct {
	N      int64
	Window time.Duration
}

// IsZero reports whether r is "no limit".
func (r Rate) IsZero() bool { return r.N == 0 }

// String returns r in the form ParseRate reads: "100/m", "5/10s", or "none".
func (r Rate) String() string {
	if r.IsZero() {
		return "none"
	}
	switch r.Window {
	case time.Second:
		return fmt.Sprintf("%d/s", r.N)
	case time.Minute:
		return fmt.Sprintf("%d/m", r.N)
	case time.Hour:
		return fmt.Sprintf("%d/h", r.N)
	case 24 * time.Hour:
		return fmt.Sprintf("%d/d", r.N)
	}
	return fmt.Sprintf("%d/%s", r.N, r.Window)
}

// MarshalText and UnmarshalText make Rate a YAML/JSON string.
func (r Rate) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses the text form of a rate.
func (r *Rate) UnmarshalText(b []byte) error {
	v, err := ParseRate(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

const maxWindow = 366 * 24 * time.Hour

// ParseRate reads "N/unit" (unit s, m, h, d) or "N/<Go duration>" ("100/10m"),
// or "none" (the zero Rate). N is 1 to 1e9; the window is 1s to 366 days.
func ParseRate(s string) (Rate, error) {
	s = strings.TrimSpace(s)
	if s == "none" {
		return Rate{}, nil
	}
	n, w, ok := strings.Cut(s, "/")
	if !ok {
		return Rate{}, fmt.Errorf("rate %q: want N/unit (10/s, 100/m, 1000/h, 5000/d, 100/10m) or none", s)
	}
	count, err := strconv.ParseInt(n, 10, 64)
	if err != nil || count < 1 || count > 1e9 {
		return Rate{}, fmt.Errorf("rate %q: count must be a whole number from 1 to 1000000000", s)
	}
	var window time.Duration
	switch w {
	case "s":
		window = time.Second
	case "m":
		window = time.Minute
	case "h":
		window = time.Hour
	case "d":
		window = 24 * time.Hour
	default:
		if window, err = time.ParseDuration(w); err != nil {
			return Rate{}, fmt.Errorf("rate %q: window must be s, m, h, d or a duration like 10m", s)
		}
	}
	if window < time.Second || window > maxWindow || window%time.Second != 0 {
		return Rate{}, fmt.Errorf("rate %q: window must be whole seconds from 1s to 366 days", s)
	}
	return Rate{N: count, Window: window}, nil
}

// Limit is one rate applied to one bucket.
type Limit struct {
	// Name is what the rate-limit headers call it: "key", or a route's pattern.
	Name string
	// Bucket is who is counted (a key id). All limits of one check share it.
	Bucket string
	// Scope separates limits of the same bucket ("" for the key's own limit,
	// the route pattern for a per-route limit).
	Scope string
	Rate  Rate
}

// Result is the outcome of one check of a set of limits.
type Result struct {
	Allowed bool
	// Limit is the limit the headers describe: when allowed, the one with the
	// least remaining; when denied, the exhausted one with the longest wait.
	Limit     Limit
	Remaining int64 // requests left in Limit's window after this one
	// Reset is, when allowed, how long until Limit would be fully reset
	// (Remaining back to N) if no more requests came; when denied, how long
	// until Limit frees enough for this request (Limit's RetryAfter).
	Reset time.Duration
	// RetryAfter is, when denied, how long until this same request would be
	// allowed (the longest wait among the exhausted limits).
	RetryAfter time.Duration
}

// Limiter checks a set of limits together: the request is allowed only if
// every limit allows it, and a denied request consumes none of them.
//
// A limiter that waits on a store stops waiting at the deadline of a
// context from WithStoreDeadline and decides as it does when the store
// fails; the deadline of any other context is the caller giving up.
type Limiter interface {
	Allow(ctx context.Context, limits []Limit) (Result, error)
}

// ErrStoreTimeSpent is the cause (context.Cause) of a context from
// WithStoreDeadline once its deadline has passed.
var ErrStoreTimeSpent = errors.New("ratelimit: the check's time for the store is spent")

// WithStoreDeadline returns ctx with a deadline at which a check stops
// waiting on the rate-limit store: the part of the check's time for the
// store that an earlier step (a key lookup that missed the cache) left.
func WithStoreDeadline(ctx context.Context, deadline time.Time) (context.Context, context.CancelFunc) {
	return context.WithDeadlineCause(ctx, deadline, ErrStoreTimeSpent)
}

// StoreTimeSpent reports whether ctx is past a WithStoreDeadline deadline
// (not its parent's): what a limiter asks before and after it waits on its
// store. A deadline reached a moment ago may not have ended ctx yet; ctx is
// then about to end, and is waited for.
func StoreTimeSpent(ctx context.Context) bool {
	if ctx.Err() == nil {
		dl, ok := ctx.Deadline()
		if !ok || time.Now().Before(dl) {
			return false
		}
		<-ctx.Done()
	}
	return errors.Is(context.Cause(ctx), ErrStoreTimeSpent)
}

var _ Limiter = (*Local)(nil)

// StoreErrorPolicy is what a limiter whose counts live in a shared store
// decides when the store cannot answer in time (or its circuit breaker is
// open): the config's rate_limit.on_store_error. The zero value is
// PolicyLocal.
type StoreErrorPolicy string

const (
	// PolicyLocal limits each replica locally to its share of N: N divided by
	// the replicas alive at the last heartbeat (at least 1 per replica).
	PolicyLocal StoreErrorPolicy = "local"
	// PolicyAllow allows every request.
	PolicyAllow StoreErrorPolicy = "allow"
	// PolicyDeny answers ErrUnavailable, which the caller maps to 503.
	PolicyDeny StoreErrorPolicy = "deny"
)

// ParseStoreErrorPolicy reads "local", "allow" or "deny"; "" is PolicyLocal.
// It is the one place the policies are checked.
func ParseStoreErrorPolicy(s string) (StoreErrorPolicy, error) {
	switch v := StoreErrorPolicy(s); v {
	case "":
		return PolicyLocal, nil
	case PolicyLocal, PolicyAllow, PolicyDeny:
		return v, nil
	}
	return "", fmt.Errorf("%q: want local, allow or deny", s)
}

// UnmarshalText reads "local", "allow" or "deny" (the config's on_store_error).
func (p *StoreErrorPolicy) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("%q: want local, allow or deny", b)
	}
	v, err := ParseStoreErrorPolicy(string(b))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// ErrUnavailable is returned (wrapped) by a shared limiter with PolicyDeny
// when its store cannot answer: the caller answers 503.
var ErrUnavailable = errors.New("ratelimit: rate-limit store unavailable")

// Stats are a limiter's decision counters since it started, for metrics.
type Stats struct {
	Allowed uint64 // checks allowed (by the shared count or a fallback)
	Limited uint64 // checks denied because a limit was exhausted (429)
	// Fallback counts checks decided by the OnStoreError policy because Redis
	// was unreachable or the circuit breaker was open (some of them are also
	// in Allowed or Limited; the "deny" policy's are only here).
	Fallback    uint64
	StoreErrors uint64 // Redis calls that failed or timed out
	Evicted     uint64 // local counters dropped to bound memory
	// Leased counts the allowed checks answered from a lease, without a
	// Redis call (ratelimit/redis, limits of 200 or more: see its lease.go).
	Leased uint64
	// Calls counts the calls of the shared count's script (ratelimit/redis):
	// one per batch of checks sent together, one per check on a Cluster.
	// The checks that went to Redis over Calls is the batches' mean size.
	Calls uint64
}
