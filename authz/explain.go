package authz

// Match runs the decision's first two steps on req under p, with no key:
// the canonical method and path (step 1) and the route (step 2). It is how
// an operator asks what the table makes of a request (extauthz config
// explain), through the very steps Decide runs. On return d holds the
// normalised method and path and the route, or the denial of those steps
// (400 bad_request, 403 no_route); it reports whether the request goes on
// to the key steps (or, on a public route, is allowed).
func (p *Policy) Match(req *Request, d *Decision) bool {
	d.policy = p
	return normalize(p, req, d) && route(p, d)
}

// List returns the routes in match order (for printing; they must not be
// changed).
func (rt *Routes) List() []*Route {
	return append([]*Route(nil), rt.routes...)
}
