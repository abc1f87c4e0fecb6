package main

import (
	"context"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/extauthz/extauthz/ratelimit"
)

// The gRPC listener serves reflection (grpc.reflection.v1 and v1alpha) for
// grpcurl and ghz, which send a few messages when they start. Each answer
// costs the server about twenty Checks: grpc-go builds and marshals the
// descriptor of the file asked for and walks every file it imports (some
// 45 KB for the Authorization service), for a request of a few dozen
// bytes. Left alone, anyone who reaches the port could ask as often as
// they like, on as many streams and connections, at a cost per byte far
// beyond the largest Check's. So reflection messages are counted against
// reflectionRate over the whole server; past it, the message ends its
// stream with RESOURCE_EXHAUSTED (try again in a second). At the rate,
// reflection costs at most a few percent of a core.

// reflectionRate is how many reflection messages the gRPC listener answers,
// all callers together.
var reflectionRate = ratelimit.Rate{N: 20, Window: time.Second}

// reflectionPrefix begins the full method name of every reflection call,
// whichever version.
const reflectionPrefix = "/grpc.reflection."

// reflectionBudget counts the reflection messages of one gRPC server.
type reflectionBudget struct {
	limiter *ratelimit.Local
	limits  []ratelimit.Limit
}

func newReflectionBudget() *reflectionBudget {
	return &reflectionBudget{
		limiter: ratelimit.NewLocal(nil, 1),
		limits:  []ratelimit.Limit{{Name: "reflection", Bucket: "reflection", Rate: reflectionRate}},
	}
}

// interceptor is the stream interceptor that counts each message of a
// reflection call as it arrives; every other call passes untouched.
func (b *reflectionBudget) interceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if !strings.HasPrefix(info.FullMethod, reflectionPrefix) {
		return handler(srv, ss)
	}
	return handler(srv, budgetedStream{ss, b})
}

// budgetedStream is a reflection call's stream: a message past the budget
// is not answered.
type budgetedStream struct {
	grpc.ServerStream
	budget *reflectionBudget
}

func (s budgetedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	r, err := s.budget.limiter.Allow(context.Background(), s.budget.limits)
	if err != nil || !r.Allowed {
		return status.Errorf(codes.ResourceExhausted, "reflection: more than %s requests to this server; try again shortly", reflectionRate)
	}
	return nil
}
