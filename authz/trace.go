package authz

import "context"

// Tracer makes a trace span of each check. The adapters call Start before
// the decision, with the request, and the function it returns after it,
// with the decision; a nil Tracer is no tracing, at the cost of one nil
// check. The span belongs to the implementation (cmd/extauthz: OpenTelemetry),
// which must put no secret in it: a Request's headers hold the credential.
type Tracer interface {
	Start(ctx context.Context, req *Request) (context.Context, func(d *Decision))
}

// EndPanicked ends, with d as a 503 (CodeUnavailable), the span of a check
// that panicked (end is the function Tracer.Start returned; nil is none):
// without it the span would never end, and the trace would show the check
// as never answered. A panic of end itself is not passed on.
func EndPanicked(end func(*Decision), d Decision) {
	if end == nil {
		return
	}
	defer func() { _ = recover() }()
	p := Panicked(d)
	end(&p)
}

// Panicked is the decision a check that panicked is answered, audited and
// traced as: a 503 (CodeUnavailable), with what d, the decision it was
// making, had read (the client, the method and path, the policy, the route
// and the key), so that whoever found an input that crashes a check is
// attributed for each try.
func Panicked(d Decision) Decision {
	p := Decision{ClientIP: d.ClientIP, Method: d.Method, Path: d.Path, Policy: d.Policy, Route: d.Route, Key: d.Key}
	p.Deny(CodeUnavailable, "")
	return p
}
