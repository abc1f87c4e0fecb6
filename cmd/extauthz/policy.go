package main

import (
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/forwardauth"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/ratelimit"
)

// newPolicy compiles the decision's part of cfg: the config file's settings
// turned into authz's own types, which is all the decision ever reads.
func newPolicy(cfg *config.Config) (*authz.Policy, error) {
	o := authz.PolicyOptions{
		Paths: authz.Paths{
			Servlet:         cfg.Paths.MatrixParams == config.MatrixServlet,
			CaseInsensitive: cfg.Paths.CaseInsensitive,
		},
		Authenticate:  cfg.Unmatched == "authenticate",
		Format:        cfg.Keys.Format,
		XFFHops:       cfg.ClientIP.XFFTrustedHops,
		DefaultRate:   rateOf(cfg.RateLimit.Default),
		FailRate:      rateOf(cfg.RateLimit.FailedAttempts),
		FailTotalRate: rateOf(cfg.RateLimit.FailedAttemptsTotal),
	}
	for _, r := range cfg.Routes {
		o.Routes = append(o.Routes, authz.RouteSpec{
			Path: r.Path, Methods: r.Methods, Permissions: r.Permissions, Public: r.Public, RateLimit: rateOf(r.RateLimit),
		})
	}
	for _, s := range cfg.Sources {
		switch {
		case s.Header != "":
			o.Sources = append(o.Sources, authz.HeaderSource(s.Header, s.Scheme))
		case s.Query != "":
			o.Sources = append(o.Sources, authz.QuerySource(s.Query))
		case s.Cookie != "":
			o.Sources = append(o.Sources, authz.CookieSource(s.Cookie))
		}
	}
	return authz.NewPolicy(o)
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
	return forwardauth.Mode{Prefix: cfg.HTTPMode.Prefix, Original: cfg.HTTPMode.Original, XFFHops: *cfg.HTTPMode.XFFTrustedHops}
}
