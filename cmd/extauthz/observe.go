package main

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// observer turns every decision into metrics and an audit event. Neither
// blocks: counters are atomic and the audit queue drops when full.
type observer struct {
	// decisions are the counters by code, [0] in enforce mode, [1] in
	// shadow mode.
	decisions [2]map[authz.Code]prometheus.Counter
	latency   prometheus.Histogram
	audit     *audit.Logger
}

func newObserver(reg *prometheus.Registry, auditLog *audit.Logger) *observer {
	byCode := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "extauthz_decisions_total",
		Help: "Decisions by outcome (allow, or the deny code) and mode: enforce, or shadow, where the outcome is what it would have been and the request was allowed.",
	}, []string{"code", "mode"})
	o := &observer{
		decisions: [2]map[authz.Code]prometheus.Counter{{}, {}},
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "extauthz_check_duration_seconds", Help: "Time to decide one check, from request to response.",
			Buckets: []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3},
		}),
		audit: auditLog,
	}
	// Every outcome, allow ("") first, has its counters made up front, so
	// the hot path does no label lookup.
	for _, c := range append([]authz.Code{""}, authz.Codes()...) {
		label := string(c)
		if c == "" {
			label = "allow"
		}
		for i, mode := range []authz.Mode{authz.ModeEnforce, authz.ModeShadow} {
			o.decisions[i][c] = byCode.WithLabelValues(label, mode.String())
		}
	}
	reg.MustRegister(byCode, o.latency)
	return o
}

// Observe implements authz.Observer.
func (o *observer) Observe(req *authz.Request, d *authz.Decision, latency time.Duration) {
	mode := 0
	if d.Shadow {
		mode = 1
	}
	if c, ok := o.decisions[mode][d.Code]; ok {
		c.Inc()
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
	if d.Key != nil {
		ev.KeyID, ev.KeyName, ev.Owner = d.Key.ID, d.Key.Name, d.Key.Owner
	}
	o.audit.Record(ev)
}

// registerStats exports the counters the cache, the limiter and the audit
// queue keep themselves, read at scrape time.
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
	counter("extauthz_store_errors_total", "Key store lookups that failed (unreachable, timeout).", func() float64 { return float64(cache.Stats().StoreFailures) })
	gauge("extauthz_cache_entries", "Keys in the cache, changed ones not yet looked up again included.", func() float64 { return float64(cache.Stats().Entries) })
	gauge("extauthz_cache_negative_entries", "Unknown hashes in the negative cache.", func() float64 { return float64(cache.Stats().NegativeEntries) })
	counter("extauthz_ratelimit_allowed_total", "Rate-limit checks allowed.", func() float64 { return float64(lim.Stats().Allowed) })
	counter("extauthz_ratelimit_limited_total", "Rate-limit checks denied (429).", func() float64 { return float64(lim.Stats().Limited) })
	counter("extauthz_ratelimit_fallback_total", "Rate-limit checks decided by on_store_error because Redis was unreachable.", func() float64 { return float64(lim.Stats().Fallback) })
	counter("extauthz_ratelimit_leased_total", "Rate-limit checks allowed from a lease of the shared count, without a Redis call (large limits only).", func() float64 { return float64(lim.Stats().Leased) })
	counter("extauthz_ratelimit_store_errors_total", "Rate-limit Redis calls that failed or timed out.", func() float64 { return float64(lim.Stats().StoreErrors) })
	if r, ok := lim.(interface{ Replicas() int }); ok {
		gauge("extauthz_ratelimit_replicas", "Replicas alive at the last heartbeat (each limits to N/replicas when Redis is down).", func() float64 { return float64(r.Replicas()) })
	}
	counter("extauthz_audit_dropped_total", "Audit events dropped because the queue was full.", func() float64 { return float64(auditLog.Dropped()) })
	counter("extauthz_audit_written_total", "Audit events written to the sink.", func() float64 { return float64(auditLog.Written()) })
	counter("extauthz_audit_failed_total", "Audit events lost to sink errors.", func() float64 { return float64(auditLog.Failed()) })
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}
