package main

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	goredis "github.com/redis/go-redis/v9"

	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// The route label of a decision that matched no route, and of one refused
// before routing (400 at step 1). Route labels are otherwise the patterns
// of the config, so the label's values are bounded by the config, never by
// the paths clients send.
const (
	routeUnmatched = "(unmatched)"
	routeNone      = "(none)"
)

// nearLimitShare is when an allowed check counts as near its limit: the
// limit its headers describe (the one with the least remaining) has at
// most this share of its requests left.
const nearLimitShare = 0.10

// observer turns every decision into metrics and an audit event. Neither
// blocks: counters are atomic and the audit queue drops when full.
//
// The decision counters are by policy, route and code. Their children are
// found without building a label string per check: the route table in
// force is mapped once (setPolicies) to a labels entry per route, whose
// counters are made on first use and kept.
type observer struct {
	decisions *prometheus.CounterVec // policy, route, code, mode
	nearLimit *prometheus.CounterVec // policy, route
	latency   prometheus.Histogram
	audit     *audit.Logger
	codes     map[authz.Code]int // index into labels.byCode; allow is 0
	table     atomic.Pointer[routeTable]
}

// routeTable is the labels entry of each route of the policies in force,
// and of each policy's "(unmatched)" and "(none)".
type routeTable struct {
	byRoute   map[*authz.Route]*labels
	unmatched map[string]*labels // by policy name
	none      map[string]*labels
}

// labels holds the counters of one policy and route label.
type labels struct {
	policy, route string
	byCode        [2][]atomic.Pointer[prometheus.Counter] // [0] enforce, [1] shadow; by code index

	near atomic.Pointer[prometheus.Counter]
}

// policyOf is the policy label of d: the name of the policy it was decided
// under, or "(none)" when no policy was selected (403 no_policy, or a 400
// before selection). It is the one place the metrics and the trace read it.
func policyOf(d *authz.Decision) string {
	if name := d.PolicyName(); name != "" {
		return name
	}
	return routeNone
}

func newObserver(reg *prometheus.Registry, auditLog *audit.Logger) *observer {
	o := &observer{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "extauthz_decisions_total",
			Help: "Decisions by policy, route (the configured pattern, (unmatched) or (none) before routing), outcome (allow, or the deny code) and mode: enforce, or shadow, where the outcome is what it would have been and the request was allowed.",
		}, []string{"policy", "route", "code", "mode"}),
		nearLimit: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "extauthz_ratelimit_near_limit_total",
			Help: "Allowed checks that left their tightest rate limit with at most 10% of its requests, by policy and route.",
		}, []string{"policy", "route"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "extauthz_check_duration_seconds", Help: "Time to decide one check, from request to response.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3},
		}),
		audit: auditLog,
		codes: map[authz.Code]int{"": 0},
	}
	for i, c := range authz.Codes() {
		o.codes[c] = i + 1
	}
	o.table.Store(o.newTable(nil))
	reg.MustRegister(o.decisions, o.nearLimit, o.latency)
	return o
}

// setPolicies maps the routes of every policy of set, in force from now
// on, to their counters. Checks still deciding under the policies before
// find their routes by label instead (labelsOf).
func (o *observer) setPolicies(set *authz.PolicySet) {
	o.table.Store(o.newTable(set))
}

func (o *observer) newTable(set *authz.PolicySet) *routeTable {
	t := &routeTable{byRoute: map[*authz.Route]*labels{}, unmatched: map[string]*labels{}, none: map[string]*labels{}}
	t.none[routeNone] = o.newLabels(routeNone, routeNone)
	if set == nil {
		return t
	}
	for _, p := range set.Policies() {
		t.unmatched[p.Name] = o.newLabels(p.Name, routeUnmatched)
		t.none[p.Name] = o.newLabels(p.Name, routeNone)
		for _, r := range p.Routes.List() {
			t.byRoute[r] = o.newLabels(p.Name, r.Pattern)
		}
	}
	return t
}

func (o *observer) newLabels(policy, route string) *labels {
	return &labels{policy: policy, route: route, byCode: [2][]atomic.Pointer[prometheus.Counter]{
		make([]atomic.Pointer[prometheus.Counter], len(o.codes)), make([]atomic.Pointer[prometheus.Counter], len(o.codes))}}
}

// labelsOf is the labels entry of d's policy and route.
func (o *observer) labelsOf(d *authz.Decision) *labels {
	t := o.table.Load()
	var l *labels
	switch {
	case d.Route != nil:
		l = t.byRoute[d.Route]
	case d.Method == "":
		l = t.none[policyOf(d)]
	default:
		l = t.unmatched[policyOf(d)]
	}
	if l == nil {
		// A route or policy a reload has replaced since.
		l = o.newLabels(policyOf(d), routeLabel(d))
	}
	return l
}

// routeLabel is the route label of d: the configured pattern, "(unmatched)"
// or "(none)".
func routeLabel(d *authz.Decision) string {
	switch {
	case d.Route != nil:
		return d.Route.Pattern
	case d.Method == "":
		return routeNone
	}
	return routeUnmatched
}

// counter returns the counter in p, made from vec with values on first use.
func counter(p *atomic.Pointer[prometheus.Counter], vec *prometheus.CounterVec, values ...string) prometheus.Counter {
	if c := p.Load(); c != nil {
		return *c
	}
	c := vec.WithLabelValues(values...)
	p.Store(&c)
	return c
}

// Observe implements authz.Observer.
func (o *observer) Observe(req *authz.Request, d *authz.Decision, latency time.Duration) {
	l := o.labelsOf(d)
	if i, ok := o.codes[d.Code]; ok {
		code := string(d.Code)
		if d.Code == "" {
			code = "allow"
		}
		mode := 0
		if d.Shadow {
			mode = 1
		}
		counter(&l.byCode[mode][i], o.decisions, l.policy, l.route, code, d.Mode().String()).Inc()
	}
	if d.Allowed() && d.HasRateLimit && nearLimit(d) {
		counter(&l.near, o.nearLimit, l.policy, l.route).Inc()
	}
	o.latency.Observe(latency.Seconds())
	ev := audit.Event{
		Type:      audit.TypeDecision,
		RequestID: req.Headers.Get("x-request-id"),
		Method:    d.Method,
		Path:      d.Path, // normalised, without query: never the raw path, which may carry ?api_key=
		Host:      req.Host,
		ClientIP:  d.ClientIP,
		UserAgent: req.Headers.Get("user-agent"),
		Decision:  audit.Allow,
		Status:    d.Code.HTTPStatus(),
		Code:      string(d.Code),
		LatencyUS: latency.Microseconds(),
		Policy:    d.PolicyName(),
		Route:     d.RoutePattern(),
		Mode:      d.Mode().String(),
	}
	if d.Code != "" { // in shadow mode too: what the decision was, not what was done
		ev.Decision = audit.Deny
	}
	if d.Route != nil {
		ev.Permissions = d.Route.Permissions
	}
	if d.Key != nil {
		ev.KeyID, ev.KeyName, ev.Owner = d.Key.ID, d.Key.Name, d.Key.Owner
	}
	o.audit.Record(ev)
}

// nearLimit reports whether an allowed check left the limit its headers
// describe with at most nearLimitShare of its requests.
func nearLimit(d *authz.Decision) bool {
	n := d.RateLimit.Limit.Rate.N
	return n > 0 && float64(d.RateLimit.Remaining) <= nearLimitShare*float64(n)
}

// registerRedisPool exports what the Redis client's connection pool holds
// and how often a call had to wait for one of its connections, read at
// scrape time (a Cluster's nodes together), so that store.redis.pool_size
// can be chosen from what the pool does: waits that keep rising mean every
// connection was in use when a call came.
func registerRedisPool(reg *prometheus.Registry, client goredis.UniversalClient) {
	for state, f := range map[string]func(*goredis.PoolStats) float64{
		"in_use": func(p *goredis.PoolStats) float64 { return float64(p.TotalConns) - float64(p.IdleConns) },
		"idle":   func(p *goredis.PoolStats) float64 { return float64(p.IdleConns) },
	} {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "extauthz_redis_connections",
			Help:        "Connections the Redis client holds open, in use or idle (at most store.redis.pool_size to each node).",
			ConstLabels: prometheus.Labels{"state": state}}, func() float64 { return f(client.PoolStats()) }))
	}
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "extauthz_redis_pool_waits_total",
		Help: "Redis calls that found every pooled connection in use and waited for one."},
		func() float64 { return float64(client.PoolStats().WaitCount) }))
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "extauthz_redis_pool_wait_seconds_total",
		Help: "Time Redis calls spent waiting for a pooled connection."},
		func() float64 { return float64(client.PoolStats().WaitDurationNs) / 1e9 }))
}

// registerStats exports the counters the cache, the limiter and the audit
// queue keep themselves, read at scrape time, and what the binary is.
func registerStats(reg *prometheus.Registry, cache *keystore.Cache, lim limiter, auditLog *audit.Logger) {
	counter := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	counter("extauthz_cache_hits_total", "Key lookups answered by the cache.", func() float64 { return float64(cache.Stats().Hits) })
	counter("extauthz_cache_misses_total", "Key lookups that went to the store.", func() float64 { return float64(cache.Stats().Misses) })
	counter("extauthz_cache_stale_total", "Expired cache entries served because the store was unreachable.", func() float64 { return float64(cache.Stats().Stale) })
	counter("extauthz_cache_refreshes_total", "Key lookups started in the background for a key in use whose cache entry was in the last quarter of its TTL, so that its checks need not wait for it.", func() float64 { return float64(cache.Stats().Refreshes) })
	counter("extauthz_store_errors_total", "Key store lookups that failed (unreachable, timeout).", func() float64 { return float64(cache.Stats().StoreFailures) })
	gauge("extauthz_cache_entries", "Keys in the cache, changed ones not yet looked up again included.", func() float64 { return float64(cache.Stats().Entries) })
	gauge("extauthz_cache_negative_entries", "Unknown hashes in the negative cache.", func() float64 { return float64(cache.Stats().NegativeEntries) })
	counter("extauthz_ratelimit_allowed_total", "Rate-limit checks allowed.", func() float64 { return float64(lim.Stats().Allowed) })
	counter("extauthz_ratelimit_limited_total", "Rate-limit checks denied (429).", func() float64 { return float64(lim.Stats().Limited) })
	counter("extauthz_ratelimit_fallback_total", "Rate-limit checks decided by on_store_error because Redis was unreachable.", func() float64 { return float64(lim.Stats().Fallback) })
	counter("extauthz_ratelimit_leased_total", "Rate-limit checks allowed from a lease of the shared count, without a Redis call (limits of 200 or more).", func() float64 { return float64(lim.Stats().Leased) })
	counter("extauthz_ratelimit_redis_calls_total", "Calls of the rate-limit script in Redis: one per batch of checks sent together, one per check on a Cluster. The rate-limited checks not answered from a lease, over this, is about the mean batch size.", func() float64 { return float64(lim.Stats().Calls) })
	counter("extauthz_ratelimit_evicted_total", "Idle or nearly idle keys dropped from the in-process rate-limit counts to keep them within their bound (the embedded store's counts, or the Redis limiter's fallback).", func() float64 { return float64(lim.Stats().Evicted) })
	counter("extauthz_ratelimit_store_errors_total", "Rate-limit Redis calls that failed or timed out.", func() float64 { return float64(lim.Stats().StoreErrors) })
	if r, ok := lim.(interface{ Replicas() int }); ok {
		gauge("extauthz_ratelimit_replicas", "Replicas alive at the last heartbeat (each limits to N/replicas when Redis is down).", func() float64 { return float64(r.Replicas()) })
	}
	counter("extauthz_audit_dropped_total", "Audit events dropped because the queue was full.", func() float64 { return float64(auditLog.Dropped()) })
	counter("extauthz_audit_dropped_changes_total", "Key changes, and admin calls of authenticated key holders, among the audit events dropped: their own queue was full.", func() float64 { return float64(auditLog.DroppedChanges()) })
	counter("extauthz_audit_written_total", "Audit events written to the sink.", func() float64 { return float64(auditLog.Written()) })
	counter("extauthz_audit_failed_total", "Audit events lost to sink errors.", func() float64 { return float64(auditLog.Failed()) })
	counter("extauthz_audit_failed_changes_total", "Key changes, and admin calls of authenticated key holders, among the audit events lost to sink errors.", func() float64 { return float64(auditLog.FailedChanges()) })
	b := currentBuild()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "extauthz_build_info", Help: "Always 1: the version, commit and Go version of the running binary."},
		[]string{"version", "commit", "goversion"})
	build.WithLabelValues(b.Version, b.Commit, b.GoVersion).Set(1)
	reg.MustRegister(build)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}
