package main

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/extauthz/extauthz/audit"
	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/keystore"
)

// pinSink records, for each event it is handed, the fields that still
// point into the bytes of msg.
type pinSink struct {
	msg    string
	mu     sync.Mutex
	events int
	pinned []string
}

func (s *pinSink) Write(_ context.Context, events []audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lo := uintptr(unsafe.Pointer(unsafe.StringData(s.msg)))
	hi := lo + uintptr(len(s.msg))
	for _, e := range events {
		s.events++
		for name, f := range map[string]string{
			"request_id": e.RequestID, "method": e.Method, "path": e.Path, "host": e.Host, "user_agent": e.UserAgent,
			"key_id": e.KeyID, "key_name": e.KeyName, "owner": e.Owner, "code": e.Code, "decision": e.Decision,
		} {
			if p := uintptr(unsafe.Pointer(unsafe.StringData(f))); f != "" && p >= lo && p < hi {
				s.pinned = append(s.pinned, name)
			}
		}
	}
	return nil
}

// The gRPC server decodes a CheckRequest without copying its strings: the
// method, path, host and headers are views of one copy of the whole
// message (up to 1 MiB). An audit event waiting in the queue must own
// copies of what it keeps, short fields included, or each queued event
// would pin a message's worth of memory. This drives the server's own
// observer through a real decision on such views, allowed and denied.
func TestAQueuedAuditEventPinsNoPartOfTheReceivedMessage(t *testing.T) {
	cfg, err := config.Parse([]byte("routes: [{path: /api/users, permissions: [read:users]}]\nrate_limit: {default: none}\n"))
	require.NoError(t, err)
	policy, err := newPolicies(cfg)
	require.NoError(t, err)
	hasher := keystore.NewHasher(nil)
	key := "legacy-key-for-audit-test-0001"
	store := map[keystore.Hash]*keystore.Key{hasher.Hash(key): {ID: "key_1", Name: "svc", Owner: "acme", Permissions: []string{"read:users"}}}
	a := authz.NewAuthorizer(policy, lookupFunc(func(h keystore.Hash) (*keystore.Key, error) {
		if k, ok := store[h]; ok {
			return k, nil
		}
		return nil, keystore.ErrNotFound
	}), hasher, nil, nil)

	// One buffer as the wire decoder leaves it, every request string a view.
	msg := "GET" + "/api/users" + "api.example.com" + "req-42" + "curl/8.5" + strings.Repeat("x", 64<<10)
	view := func(s string) string {
		i := strings.Index(msg, s)
		require.GreaterOrEqual(t, i, 0)
		return msg[i : i+len(s)]
	}
	sink := &pinSink{msg: msg}
	logger := audit.New(sink, audit.Options{})
	obs := newObserver(prometheus.NewRegistry(), logger)

	for _, withKey := range []bool{true, false} {
		h := authz.HeaderMap{"x-request-id": view("req-42"), "user-agent": view("curl/8.5")}
		if withKey {
			h["x-api-key"] = key
		}
		req := authz.Request{Method: view("GET"), Path: view("/api/users"), Host: view("api.example.com"), Headers: h, Peer: "10.0.0.1", XFFTrustedHops: -1}
		var d authz.Decision
		a.Decide(context.Background(), &req, &d)
		require.Equal(t, withKey, d.Allowed(), d.Message)
		require.True(t, within(d.Path, msg), "the decision's path is a view, as on the wire path")
		obs.Observe(&req, &d, time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(t, logger.Close(ctx))
	assert.Equal(t, 2, sink.events)
	assert.Empty(t, sink.pinned, "event fields still pointing into the received message")
}

func within(s, big string) bool {
	p := uintptr(unsafe.Pointer(unsafe.StringData(s)))
	lo := uintptr(unsafe.Pointer(unsafe.StringData(big)))
	return s != "" && p >= lo && p < lo+uintptr(len(big))
}

// lookupFunc is an authz.KeyLookup over a function.
type lookupFunc func(keystore.Hash) (*keystore.Key, error)

func (f lookupFunc) Lookup(_ context.Context, h keystore.Hash) (*keystore.Key, error) { return f(h) }

// Cached knows nothing: every lookup goes to the function.
func (f lookupFunc) Cached(keystore.Hash) (*keystore.Key, keystore.CacheState, error) {
	return nil, keystore.CacheUnknown, nil
}

// BenchmarkObserve is what the server's observer adds to a check: the
// decision counters (by policy, route and code), the near-limit check and
// the latency histogram, with the audit sink off.
func BenchmarkObserve(b *testing.B) {
	cfg, err := config.Parse([]byte(testRoutes))
	require.NoError(b, err)
	policies, err := newPolicies(cfg)
	require.NoError(b, err)
	obs := newObserver(prometheus.NewRegistry(), nil)
	obs.setPolicies(policies)
	req := authz.Request{Method: "GET", Path: "/api/users", Headers: authz.HeaderMap{}, XFFTrustedHops: -1}
	d := authz.Decision{Policy: policies.Default}
	e := policies.Explain(&req)
	require.Empty(b, e.Code)
	d.Method, d.Path, d.Route = e.Method, e.Path, e.Route
	b.ReportAllocs()
	for b.Loop() {
		obs.Observe(&req, &d, time.Millisecond)
	}
}

// BenchmarkGRPCServerMetrics is what the grpc-ecosystem provider's
// interceptor adds to one unary call (metrics.grpc).
func BenchmarkGRPCServerMetrics(b *testing.B) {
	m := newGRPCMetrics(true)
	intercept := m.UnaryServerInterceptor()
	info := &grpc.UnaryServerInfo{FullMethod: "/envoy.service.auth.v3.Authorization/Check"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_, _ = intercept(ctx, nil, info, handler)
	}
}
