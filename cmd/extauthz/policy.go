package main

import (
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/forwardauth"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/ratelimit"
)

// newPolicies compiles the decision's part of cfg: the config file's
// settings turned into authz's own types, which is all the decision ever
// reads. The top-level routes, unmatched, sources, rate_limit.default, mode
// and forward_meta are the default policy; each entry of policies is a
// named one, with the top-level sources and default rate where it gives
// none of its own.
func newPolicies(cfg *config.Config) (*authz.PolicySet, error) {
	sources := sourcesOf(cfg.Sources)
	o := authz.Options{
		Routes:         routesOf(cfg.Routes),
		Authenticate:   cfg.Unmatched == "authenticate",
		Sources:        sources,
		DefaultRate:    rateOf(cfg.RateLimit.Default),
		Mode:           modeOf(cfg.Mode),
		ForwardMeta:    cfg.ForwardMeta,
		DenyUnselected: cfg.Unselected == config.UnselectedDeny,
		Paths: authz.Paths{
			Servlet:         cfg.Paths.MatrixParams == config.MatrixServlet,
			CaseInsensitive: cfg.Paths.CaseInsensitive,
		},
		Format:        cfg.Keys.Format,
		XFFHops:       cfg.ClientIP.XFFTrustedHops,
		FailRate:      rateOf(cfg.RateLimit.FailedAttempts),
		FailTotalRate: rateOf(cfg.RateLimit.FailedAttemptsTotal),
	}
	for _, p := range cfg.Policies {
		spec := authz.PolicySpec{
			Name: p.Name,
			Match: authz.Match{
				Context: p.Match.Context, Principals: p.Match.Principals, Hosts: p.Match.Hosts,
			},
			Routes:       routesOf(p.Routes),
			Authenticate: p.Unmatched == "authenticate",
			Sources:      sources,
			DefaultRate:  o.DefaultRate,
			Mode:         modeOf(p.Mode),
			ForwardMeta:  p.ForwardMeta,
		}
		if p.Sources != nil {
			spec.Sources = sourcesOf(p.Sources)
		}
		if p.RateLimit.Default != nil {
			spec.DefaultRate, spec.OwnDefaultRate = *p.RateLimit.Default, true
		}
		o.Policies = append(o.Policies, spec)
	}
	return authz.Compile(o)
}

func routesOf(routes []config.Route) []authz.RouteSpec {
	var out []authz.RouteSpec
	for _, r := range routes {
		out = append(out, authz.RouteSpec{
			Path: r.Path, Methods: r.Methods, Permissions: r.Permissions, Public: r.Public,
			RateLimit: rateOf(r.RateLimit), Mode: modeOf(r.Mode),
		})
	}
	return out
}

func sourcesOf(sources []config.Source) []authz.Source {
	var out []authz.Source
	for _, s := range sources {
		switch {
		case s.Header != "":
			out = append(out, authz.HeaderSource(s.Header, s.Scheme))
		case s.Query != "":
			out = append(out, authz.QuerySource(s.Query))
		case s.Cookie != "":
			out = append(out, authz.CookieSource(s.Cookie))
		}
	}
	return out
}

// modeOf is a configured mode ("" = inherit: a route's default).
func modeOf(m config.Mode) authz.Mode {
	switch m {
	case config.ModeEnforce:
		return authz.ModeEnforce
	case config.ModeShadow:
		return authz.ModeShadow
	}
	return authz.ModeInherit
}

// rateOf is a configured rate, nil (unset) being no limit.
func rateOf(r *ratelimit.Rate) ratelimit.Rate {
	if r == nil {
		return ratelimit.Rate{}
	}
	return *r
}

// httpMode is the HTTP listener's way of reading the original request, from
// cfg's http_mode.
func httpMode(cfg *config.Config) forwardauth.Mode {
	return forwardauth.Mode{
		Prefix: cfg.HTTPMode.Prefix, Original: cfg.HTTPMode.Original, XFFHops: *cfg.HTTPMode.XFFTrustedHops,
		PassQueryAndCookieKeys: cfg.HTTPMode.QueryAndCookieKeys == config.QueryAndCookieKeysPass,
	}
}
