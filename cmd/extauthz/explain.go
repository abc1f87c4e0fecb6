package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/authz"
)

// explanation is what config explain reports for one request; --json
// prints it.
type explanation struct {
	Policy       string            `json:"policy"`
	PolicyReason string            `json:"policy_reason"`
	Method       string            `json:"method"`
	Path         string            `json:"path"` // the normalised path ("" when step 1 refused it)
	Mode         string            `json:"mode"` // enforce, or shadow: decided and recorded, but allowed
	Host         string            `json:"host,omitempty"`
	Principal    string            `json:"principal,omitempty"`
	Context      map[string]string `json:"context,omitempty"`
	Route        *routeReport      `json:"route"` // null: no route matched
	// Outcome is what the request gets before any key is looked at:
	// "deny" (Status and Code say how), "allow" (a public route), or
	// "key" (a valid key holding Permissions, within RateLimits, is
	// allowed; the key steps decide).
	Outcome     string      `json:"outcome"`
	Status      int         `json:"status"`
	Code        authz.Code  `json:"code,omitempty"`
	Message     string      `json:"message,omitempty"`
	Permissions []string    `json:"permissions"`
	RateLimits  []limitNote `json:"rate_limits"`
}

// limitNote is one rate limit that applies to a request.
type limitNote struct {
	Name string `json:"name"` // "key", or the route's pattern
	Rate string `json:"rate"`
	Note string `json:"note"`
}

// newConfigExplainCmd is "extauthz config explain": which policy, route,
// permissions and limits apply to a method, path and host.
func newConfigExplainCmd() *cobra.Command {
	var (
		method, path, host, principal string
		context                       pairsFlag
		asJSON                        bool
	)
	c := &cobra.Command{
		Use:   "explain --method M --path P [--host H] [--context k=v...] [--json]",
		Short: "Show which policy, route, permissions and limits apply to a request",
		Long: `Run the first steps of the decision on a request, with no key: the canonical path
(or why the request is refused 400), the policy and the route that decide it,
the permissions a key needs there and the rate limits that count, or the answer
it gets whatever the key (public, 403 no_route).

--context k=v are Envoy's context_extensions, as a route of Envoy's config would
set them; --principal is the destination principal Envoy reports; --host is the
request's host. They select the policy as they would for a real request.`,
		Example: `  extauthz config explain --config extauthz.yaml --method DELETE --path /api/users/7
  extauthz config explain --method GET --path '/api/../admin' --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "method", "path"); err != nil {
				return err
			}
			ctx := map[string]string{}
			for _, kv := range context.listFlag {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return usageErrorf(c, "--context: want key=value, got %q", kv)
				}
				ctx[k] = v
			}
			cfg, _, err := loadConfig(c)
			if err != nil {
				return err
			}
			policies, err := newPolicies(cfg)
			if err != nil {
				return err
			}
			ex := explain(policies, method, path, host, principal, ctx)
			if asJSON {
				return writeJSON(c.OutOrStdout(), ex)
			}
			ew := &errWriter{w: c.OutOrStdout()}
			printExplanation(ew, ex)
			return ew.err
		},
	}
	fs := c.Flags()
	fs.StringVar(&method, "method", "", "the request's method, e.g. GET (required)")
	fs.StringVar(&path, "path", "", "the request's path as the client sent it, query included (required)")
	fs.StringVar(&host, "host", "", "the request's host")
	fs.StringVar(&principal, "principal", "", "the destination principal Envoy reports (Istio: the workload's SPIFFE id)")
	fs.Var(&context, "context", "an Envoy context_extensions entry, key=value (repeatable)")
	fs.BoolVar(&asJSON, "json", false, "print the explanation as JSON")
	return c
}

// explain runs the steps of the decision that need no key (select the
// policy, normalise, route) on the request, as Decide would, and says what
// a key would then need.
func explain(set *authz.PolicySet, method, path, host, principal string, ctx map[string]string) explanation {
	req := authz.Request{Method: method, Path: path, Host: host, Headers: authz.HeaderMap{}, XFFTrustedHops: -1,
		DestinationPrincipal: principal}
	for _, k := range slices.Sorted(maps.Keys(ctx)) {
		req.ContextExtensions = append(req.ContextExtensions, authz.Header{Key: k, Value: ctx[k]})
	}
	e := set.Explain(&req)
	ex := explanation{Method: method, Host: host, Principal: principal, Permissions: []string{}, RateLimits: []limitNote{}}
	if len(ctx) > 0 {
		ex.Context = ctx
	}
	if e.Policy != nil {
		ex.Policy = e.Policy.Name
		ex.PolicyReason = "selected by " + e.SelectedBy.String()
		if !set.Named() {
			ex.PolicyReason = "the config has one policy"
		}
	} else {
		ex.PolicyReason = "no policy selects the request"
	}
	if e.Shadow {
		ex.Mode = "shadow"
	} else {
		ex.Mode = "enforce"
	}
	ex.Path = e.Path
	if e.Method != "" {
		ex.Method = e.Method
	}
	if e.Route != nil {
		i := slices.Index(e.Policy.Routes.List(), e.Route)
		rr := reportRoute(e.Policy.Name, i, e.Route)
		ex.Route = &rr
	}
	switch {
	case e.Code != "":
		ex.Outcome, ex.Status, ex.Code, ex.Message = "deny", e.Code.HTTPStatus(), e.Code, e.Message
		if e.Code == authz.CodeNoRoute && e.Message == "no route allows this request" {
			ex.Message += " (unmatched: deny)"
		}
		return ex
	case e.Route != nil && e.Route.Public:
		ex.Outcome, ex.Status, ex.Message = "allow", 200, "public route: allowed without a key lookup; any credential sent is still stripped"
		return ex
	}
	p := e.Policy
	ex.Outcome, ex.Status = "key", 0
	ex.Message = "a valid key with the permissions below, within the rate limits below, is allowed; the key steps decide (401, 403, 429)"
	if e.Route == nil {
		ex.Message = "no route matches; unmatched: authenticate lets any valid key through, within its rate limit"
	} else {
		ex.Permissions = append(ex.Permissions, e.Route.Permissions...)
	}
	if set.Named() {
		ex.Message += "; the key must be valid under policy " + p.Name + " (its policies empty or naming it)"
	}
	def := "none"
	if !p.DefaultRate.IsZero() {
		def = p.DefaultRate.String()
	}
	ex.RateLimits = append(ex.RateLimits, limitNote{Name: "key", Rate: def,
		Note: "the key's own rate_limit if it has one, else the policy's default; counted over all the key's requests"})
	if e.Route != nil && !e.Route.RateLimit.IsZero() {
		ex.RateLimits = append(ex.RateLimits, limitNote{Name: e.Route.Pattern, Rate: e.Route.RateLimit.String(),
			Note: "per key, on this route only"})
	}
	return ex
}

// printExplanation writes ex for a person (to an errWriter: the caller
// reports its first failed write).
func printExplanation(w io.Writer, ex explanation) {
	policy := ex.Policy
	if policy == "" {
		policy = "(none)"
	}
	fmt.Fprintf(w, "policy:  %s (%s), mode %s\n", policy, ex.PolicyReason, ex.Mode)
	req := ex.Method + " " + ex.Path
	if ex.Path == "" {
		req = ex.Method + " (refused before it could be normalised)"
	}
	if ex.Host != "" {
		req += " (host " + ex.Host + ")"
	}
	fmt.Fprintf(w, "request: %s\n", req)
	switch r := ex.Route; {
	case r != nil:
		methods := "every method"
		if len(r.Methods) > 0 {
			methods = strings.Join(r.Methods, ",")
		}
		where := "the file's top-level routes"
		if r.Policy != "default" {
			where = "policy " + r.Policy + "'s routes"
		}
		fmt.Fprintf(w, "route:   #%d %s (%s), routes[%d] of %s\n", r.Index+1, r.Path, methods, r.Index, where)
	default:
		fmt.Fprintln(w, "route:   (none)")
	}
	switch ex.Outcome {
	case "deny":
		fmt.Fprintf(w, "outcome: %d %s: %s\n", ex.Status, ex.Code, ex.Message)
		return
	case "allow":
		fmt.Fprintf(w, "outcome: 200: %s\n", ex.Message)
		return
	}
	fmt.Fprintf(w, "outcome: %s\n", ex.Message)
	fmt.Fprintln(w, "permissions (all required; admin grants all but keys:*):")
	printList(w, ex.Permissions)
	fmt.Fprintln(w, "rate limits (checked together; a denied request consumes neither):")
	var lines []string
	for _, l := range ex.RateLimits {
		lines = append(lines, fmt.Sprintf("%s: %s (%s)", l.Name, l.Rate, l.Note))
	}
	printList(w, lines)
}
