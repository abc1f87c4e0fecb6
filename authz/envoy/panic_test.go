package envoy

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
)

// panickyKeys panics with the hash it was given in the message, as a bug
// formatting its input might.
type panickyKeys struct{ secret string }

func (p panickyKeys) Cached(keystore.Hash) (*keystore.Key, keystore.CacheState, error) {
	return nil, keystore.CacheUnknown, nil
}

func (p panickyKeys) Lookup(context.Context, keystore.Hash) (*keystore.Key, error) {
	panic(fmt.Sprintf("boom while handling %s", p.secret))
}

func TestAPanicInCheckIsA503AndLogsNoKey(t *testing.T) {
	f := authztest.New(t, nil)
	f.Rebuild(panickyKeys{secret: f.Good}, nil)
	var logs bytes.Buffer
	s := &CheckServer{Authz: f.Authz, Logger: slog.New(slog.NewJSONHandler(&logs, nil))}
	in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Method: "GET", Path: "/api/users", Headers: map[string]string{"x-api-key": f.Good},
	}}}}
	resp, err := s.Check(context.Background(), in)
	require.NoError(t, err)
	assert.Equal(t, int32(codes.Unavailable), resp.GetStatus().GetCode())
	assert.EqualValues(t, 503, resp.GetDeniedResponse().GetStatus().GetCode())
	assert.Contains(t, logs.String(), "panic recovered")
	assert.Contains(t, logs.String(), "panicky", "the stack names the culprit")
	assert.NotContains(t, logs.String(), f.Good)
}

// observed records the decisions it is told of.
type observed struct{ decisions []authz.Decision }

func (o *observed) Observe(_ *authz.Request, d *authz.Decision, _ time.Duration) {
	o.decisions = append(o.decisions, *d)
}

// A check that panics is still a decision the Observer hears of (and so
// the audit): a 503, with the client address and the path it had read.
// Someone who found an input that crashes a check is attributed for each
// try, not only a stack trace in the log.
func TestAPanicInCheckIsObserved(t *testing.T) {
	f := authztest.New(t, nil)
	f.Rebuild(panickyKeys{secret: f.Good}, nil)
	var obs observed
	s := &CheckServer{Authz: f.Authz, Observer: &obs, Logger: slog.New(slog.DiscardHandler)}
	in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: "203.0.113.9"}}}},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Method: "GET", Path: "/api/users", Headers: map[string]string{"x-api-key": f.Good},
		}}}}
	_, err := s.Check(context.Background(), in)
	require.NoError(t, err)
	require.Len(t, obs.decisions, 1, "the panicked check is observed")
	d := obs.decisions[0]
	assert.Equal(t, authz.CodeUnavailable, d.Code)
	assert.Equal(t, "203.0.113.9", d.ClientIP.String())
	assert.Equal(t, "/api/users", d.Path)
}

// spans records the decisions the spans it starts end with.
type spans struct{ ended []authz.Decision }

func (s *spans) Start(ctx context.Context, _ *authz.Request) (context.Context, func(*authz.Decision)) {
	return ctx, func(d *authz.Decision) { s.ended = append(s.ended, *d) }
}

// The span of a check that panics ends, as the 503 it is answered with:
// left open, the trace would show the check as never answered, and the
// span's memory would be held until the exporter gave up on it.
func TestAPanickedChecksSpanEnds(t *testing.T) {
	f := authztest.New(t, nil)
	f.Rebuild(panickyKeys{secret: f.Good}, nil)
	var sp spans
	s := &CheckServer{Authz: f.Authz, Tracer: &sp, Logger: slog.New(slog.DiscardHandler)}
	in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
		Method: "GET", Path: "/api/users", Headers: map[string]string{"x-api-key": f.Good},
	}}}}
	resp, err := s.Check(context.Background(), in)
	require.NoError(t, err)
	assert.Equal(t, int32(codes.Unavailable), resp.GetStatus().GetCode())
	require.Len(t, sp.ended, 1, "the span ends")
	assert.Equal(t, authz.CodeUnavailable, sp.ended[0].Code)
	assert.Equal(t, "/api/users", sp.ended[0].Path)
}
