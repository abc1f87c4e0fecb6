package authz

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/ratelimit"
)

// Route is one compiled entry of the route table.
type Route struct {
	Pattern     string
	Methods     []string // empty = every method
	Permissions []string
	Public      bool
	RateLimit   ratelimit.Rate // zero = no per-route limit
	segs        []segment
	rest        bool // the pattern ends in "**"
}

type segKind uint8

const (
	segLiteral segKind = iota
	segOne             // {name} or *
)

type segment struct {
	kind segKind
	lit  string
}

// Routes is a compiled route table: the first route whose pattern and
// methods match wins.
type Routes struct {
	routes []*Route
}

// CompileRoutes checks and compiles the configured routes.
func CompileRoutes(specs []config.Route) (*Routes, error) {
	rt := &Routes{}
	for i, s := range specs {
		r, err := compileRoute(s)
		if err != nil {
			return nil, fmt.Errorf("routes[%d] %q: %w", i, s.Path, err)
		}
		rt.routes = append(rt.routes, r)
	}
	return rt, nil
}

func compileRoute(s config.Route) (*Route, error) {
	if !strings.HasPrefix(s.Path, "/") {
		return nil, fmt.Errorf("path must start with /")
	}
	norm, err := NormalizePath(s.Path)
	if err != nil || norm != s.Path && norm+"/" != s.Path {
		return nil, fmt.Errorf("path must be in normal form (no //, ., .., percent-escapes of letters)")
	}
	r := &Route{Pattern: s.Path, Methods: s.Methods, Permissions: s.Permissions, Public: s.Public}
	if s.RateLimit != nil {
		r.RateLimit = *s.RateLimit
	}
	parts := strings.Split(strings.Trim(s.Path, "/"), "/")
	if parts[0] == "" {
		parts = nil // "/"
	}
	for i, p := range parts {
		switch {
		case p == "**":
			if i != len(parts)-1 {
				return nil, fmt.Errorf("** may only be the last segment")
			}
			r.rest = true
		case p == "*" || len(p) > 2 && p[0] == '{' && p[len(p)-1] == '}':
			r.segs = append(r.segs, segment{kind: segOne})
		case strings.ContainsAny(p, "{}*"):
			return nil, fmt.Errorf("segment %q: use {name} or * for a whole segment, ** for the rest", p)
		default:
			r.segs = append(r.segs, segment{kind: segLiteral, lit: p})
		}
	}
	return r, nil
}

// Match returns the first route matching method and the normalised path.
func (rt *Routes) Match(method, path string) *Route {
	for _, r := range rt.routes {
		if r.matchPath(path) && (len(r.Methods) == 0 || slices.Contains(r.Methods, method)) {
			return r
		}
	}
	return nil
}

// matchPath matches segment by segment without splitting the path, so it
// does not allocate. Literal segments compare case-insensitively and ignore
// ";params", and a trailing slash is ignored: every spelling an upstream might
// treat as the same resource meets the same rule, so "/API/Admin/" cannot
// slip past the rule for "/api/admin" into a laxer one.
func (r *Route) matchPath(path string) bool {
	rest := strings.TrimSuffix(path, "/")
	for _, s := range r.segs {
		if len(rest) < 2 || rest[0] != '/' {
			return false
		}
		rest = rest[1:]
		end := strings.IndexByte(rest, '/')
		if end < 0 {
			end = len(rest)
		}
		seg := rest[:end]
		rest = rest[end:]
		if s.kind == segLiteral {
			if p := strings.IndexByte(seg, ';'); p >= 0 {
				seg = seg[:p]
			}
			if !strings.EqualFold(seg, s.lit) {
				return false
			}
		}
	}
	return rest == "" || r.rest
}

// Len is the number of routes.
func (rt *Routes) Len() int { return len(rt.routes) }

// Print writes the compiled table, one route a line, in match order.
func (rt *Routes) Print(w io.Writer, unmatched string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tPATH\tMETHODS\tACCESS\tRATE LIMIT")
	for i, r := range rt.routes {
		methods := "*"
		if len(r.Methods) > 0 {
			methods = strings.Join(r.Methods, ",")
		}
		access := "public"
		if !r.Public {
			access = "any valid key"
			if len(r.Permissions) > 0 {
				access = strings.Join(r.Permissions, " + ")
			}
		}
		limit := "-"
		if !r.RateLimit.IsZero() {
			limit = r.RateLimit.String() + " per key"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", i+1, r.Pattern, methods, access, limit)
	}
	other := "403 no_route"
	if unmatched == "authenticate" {
		other = "any valid key"
	}
	fmt.Fprintf(tw, "-\t(anything else)\t*\t%s\t-\n", other)
	return tw.Flush()
}
