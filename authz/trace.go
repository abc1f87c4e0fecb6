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
