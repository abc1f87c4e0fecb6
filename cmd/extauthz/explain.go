package main

import (
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
)

// explanation is what config explain reports for one request; --json
// prints it.
type explanation struct {
	Policy       string            `json:"policy"`
	PolicyReason string            `json:"policy_reason"`
	Method       string            `json:"method"`
	Path         string            `json:"path"` // the normalised path ("" when step 1 refused it)
	Host         string            `json:"host,omitempty"`
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
		method, path, host string
		context            listFlag
		asJSON             bool
	)
	c := &cobra.Command{
		Use:   "explain --method M --path P [--host H] [--context k=v...] [--json]",
		Short: "Show which policy, route, permissions and limits apply to a request",
		Long: `Run the first steps of the decision on a request, with no key: the canonical path
(or why the request is refused 400), the policy and the route that decide it,
the permissions a key needs there and the rate limits that count, or the answer
it gets whatever the key (public, 403 no_route).

--context k=v are Envoy's context_extensions, as a route of Envoy's config would
set them; --host is the request's host.`,
		Example: `  extauthz config explain --config extauthz.yaml --method DELETE --path /api/users/7
  extauthz config explain --method GET --path '/api/../admin' --json`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := requireFlags(c, "method", "path"); err != nil {
				return err
			}
			ctx := map[string]string{}
			for _, kv := range context {
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
			policies, err := compilePolicies(cfg)
			if err != nil {
				return err
			}
			ex := explain(policies, cfg, method, path, host, ctx)
			if asJSON {
				return writeJSON(c.OutOrStdout(), ex)
			}
			printExplanation(c.OutOrStdout(), ex)
			return nil
		},
	}
	fs := c.Flags()
	fs.StringVar(&method, "method", "", "the request's method, e.g. GET (required)")
	fs.StringVar(&path, "path", "", "the request's path as the client sent it, query included (required)")
	fs.StringVar(&host, "host", "", "the request's host")
	fs.Var(&context, "context", "an Envoy context_extensions entry, key=value (repeatable)")
	fs.BoolVar(&asJSON, "json", false, "print the explanation as JSON")
	return c
}

// compiledPolicies are the config's policies, compiled, for explain to
// choose from.
type compiledPolicies struct {
	def *authz.Policy
}

// compilePolicies compiles the config's policies.
func compilePolicies(cfg *config.Config) (*compiledPolicies, error) {
	p, err := newPolicy(cfg)
	if err != nil {
		return nil, err
	}
	return &compiledPolicies{def: p}, nil
}

// selectPolicy is the policy a request is decided under, and why. A config
// has one policy, the default; choosing among named ones (by Envoy's
// context_extensions, the destination, the host) slots in here.
func (ps *compiledPolicies) selectPolicy(_ *authz.Request, _ map[string]string) (name, why string, p *authz.Policy) {
	return "default", "the config has one policy", ps.def
}

// explain runs steps 1 and 2 of the decision on the request, under the
// policy it selects.
func explain(ps *compiledPolicies, cfg *config.Config, method, path, host string, ctx map[string]string) explanation {
	req := authz.Request{Method: method, Path: path, Host: host, Headers: authz.HeaderMap{}, XFFTrustedHops: -1}
	name, why, p := ps.selectPolicy(&req, ctx)
	ex := explanation{Policy: name, PolicyReason: why, Method: method, Host: host, Permissions: []string{}, RateLimits: []limitNote{}}
	if len(ctx) > 0 {
		ex.Context = ctx
	}
	var d authz.Decision
	ok := p.Match(&req, &d)
	ex.Path = d.Path
	if d.Method != "" {
		ex.Method = d.Method
	}
	if d.Route != nil {
		i := slices.Index(p.Routes.List(), d.Route)
		rr := reportRoute(i, d.Route)
		ex.Route = &rr
	}
	switch {
	case !ok:
		ex.Outcome, ex.Status, ex.Code, ex.Message = "deny", d.Code.HTTPStatus(), d.Code, d.Message
		if d.Code == authz.CodeNoRoute && d.Message == "no route allows this request" {
			ex.Message += " (unmatched: deny)"
		}
		return ex
	case d.Route != nil && d.Route.Public:
		ex.Outcome, ex.Status, ex.Message = "allow", 200, "public route: allowed without a key lookup; any credential sent is still stripped"
		return ex
	}
	ex.Outcome, ex.Status = "key", 0
	ex.Message = "a valid key with the permissions below, within the rate limits below, is allowed; the key steps decide (401, 403, 429)"
	if d.Route == nil {
		ex.Message = "no route matches; unmatched: authenticate lets any valid key through, within its rate limit"
	} else {
		ex.Permissions = append(ex.Permissions, d.Route.Permissions...)
	}
	def := "none"
	if !p.DefaultRate.IsZero() {
		def = p.DefaultRate.String()
	}
	ex.RateLimits = append(ex.RateLimits, limitNote{Name: "key", Rate: def,
		Note: "the key's own rate_limit if it has one, else rate_limit.default; counted over all the key's requests"})
	if d.Route != nil && !d.Route.RateLimit.IsZero() {
		ex.RateLimits = append(ex.RateLimits, limitNote{Name: d.Route.Pattern, Rate: d.Route.RateLimit.String(),
			Note: "per key, on this route only"})
	}
	return ex
}

// printExplanation writes ex for a person.
func printExplanation(w io.Writer, ex explanation) {
	fmt.Fprintf(w, "policy:  %s (%s)\n", ex.Policy, ex.PolicyReason)
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
		fmt.Fprintf(w, "route:   #%d %s (%s), routes[%d] of the file\n", r.Index+1, r.Path, methods, r.Index)
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
