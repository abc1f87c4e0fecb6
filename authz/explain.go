package authz

// List returns the routes in match order (for printing; they must not be
// changed).
func (rt *Routes) List() []*Route {
	return append([]*Route(nil), rt.routes...)
}
