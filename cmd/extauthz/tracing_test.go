package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

// otlpCollector is an OTLP/gRPC trace collector in the test process: it
// keeps every span it is sent, with its resource's attributes.
type otlpCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	addr string

	mu        sync.Mutex
	spans     []*tracepb.Span
	resources [][]*commonpb.KeyValue
}

func startCollector(t *testing.T) *otlpCollector {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := &otlpCollector{addr: ln.Addr().String()}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return c
}

func (c *otlpCollector) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		c.resources = append(c.resources, rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			c.spans = append(c.spans, ss.GetSpans()...)
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}

// received returns the spans so far, by trace id (hex), and by the trace
// id of each span they link to, as "link:" and that id.
func (c *otlpCollector) received() map[string]*tracepb.Span {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]*tracepb.Span{}
	for _, s := range c.spans {
		out[hex.EncodeToString(s.GetTraceId())] = s
		for _, l := range s.GetLinks() {
			out["link:"+hex.EncodeToString(l.GetTraceId())] = s
		}
	}
	return out
}

func attrs(s *tracepb.Span) map[string]string {
	m := map[string]string{}
	for _, kv := range s.GetAttributes() {
		v := kv.GetValue()
		switch {
		case v.GetStringValue() != "":
			m[kv.GetKey()] = v.GetStringValue()
		default:
			m[kv.GetKey()] = fmt.Sprint(v.GetIntValue())
		}
	}
	return m
}

// traceparent is a W3C traceparent for trace n, and its trace and parent
// span ids.
func traceparent(n int) (header, traceID, spanID string) {
	traceID = fmt.Sprintf("%032x", 0xabc000+n)
	spanID = fmt.Sprintf("%016x", 0xdef000+n)
	return "00-" + traceID + "-" + spanID + "-01", traceID, spanID
}

// startTracedServer points the OTLP environment at a collector in this
// process and starts a server with HTTP mode and the admin API.
func startTracedServer(t *testing.T) (*testServer, *otlpCollector) {
	t.Helper()
	col := startCollector(t)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+col.addr)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
	t.Setenv("OTEL_SERVICE_NAME", "")
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		filepath.Join(t.TempDir(), "k.db"), testRoutes))
	return startServerFile(t, path), col
}

// With OTEL_EXPORTER_OTLP_ENDPOINT set, each check (gRPC and HTTP mode) and
// each admin call is a span in the collector, in the trace of the
// traceparent it came with, a child of the span that sent it, naming the
// policy, route, code and key id.
func TestEveryCheckIsASpanJoinedToItsTrace(t *testing.T) {
	ts, col := startTracedServer(t)
	key, k := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users", "keys:read"}})

	// 1: a gRPC check whose call carries Envoy's traceparent in its metadata.
	tp1, trace1, parent1 := traceparent(1)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", tp1)
	resp, err := ts.client.Check(ctx, checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": key}))
	require.NoError(t, err)
	require.NotNil(t, resp.GetOkResponse())
	// 2: no metadata; the request being authorized carries the client's.
	tp2, trace2, parent2 := traceparent(2)
	resp, err = ts.client.Check(context.Background(), checkReq("DELETE", "/api/users/7", "10.1.2.3", map[string]string{"x-api-key": key, "traceparent": tp2}))
	require.NoError(t, err)
	require.Nil(t, resp.GetOkResponse())
	// 3: HTTP mode, the proxy's auth request carrying it.
	tp3, trace3, parent3 := traceparent(3)
	status, _, _ := get(t, ts.httpURL+"/authz/nowhere", map[string]string{"x-api-key": key, "traceparent": tp3})
	require.Equal(t, 403, status)
	// 4: an admin call.
	tp4, trace4, parent4 := traceparent(4)
	status, _, _ = get(t, ts.adminURL+"/v1/keys/"+k.ID, map[string]string{"x-api-key": key, "traceparent": tp4})
	require.Equal(t, 200, status)
	// 5: a check refused before routing.
	tp5, trace5, parent5 := traceparent(5)
	status, _, _ = get(t, ts.httpURL+"/authz/a/%2e%2e/b", map[string]string{"traceparent": tp5})
	require.Equal(t, 400, status)

	var spans map[string]*tracepb.Span
	require.Eventually(t, func() bool { spans = col.received(); return len(spans) >= 8 }, 10*time.Second, 20*time.Millisecond)
	for _, tc := range []struct {
		name, trace, parent string
		linked              bool // a trace of its own, linked to the sender's
		want                map[string]string
	}{
		{"a gRPC check", trace1, parent1, false, map[string]string{"extauthz.policy": "default", "extauthz.route": "/api/users", "extauthz.code": "allow",
			"extauthz.key_id": k.ID, "http.response.status_code": "200"}},
		{"a gRPC check with the client's traceparent", trace2, parent2, true, map[string]string{"extauthz.route": "/api/users/{id}", "extauthz.code": "permission_denied",
			"extauthz.key_id": k.ID, "http.response.status_code": "403"}},
		{"an HTTP-mode check", trace3, parent3, true, map[string]string{"extauthz.route": "(unmatched)", "extauthz.code": "no_route"}},
		{"an admin call", trace4, parent4, true, map[string]string{"extauthz.key_id": k.ID, "http.request.method": "GET", "http.response.status_code": "200"}},
		{"a check refused before routing", trace5, parent5, true, map[string]string{"extauthz.route": "(none)", "extauthz.code": "bad_request"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.linked {
				s := spans["link:"+tc.trace]
				require.NotNil(t, s, "no span linked to trace %s", tc.trace)
				assert.NotEqual(t, tc.trace, hex.EncodeToString(s.GetTraceId()), "the span is in the client's trace")
				assert.Empty(t, s.GetParentSpanId(), "the span has a parent")
				require.Len(t, s.GetLinks(), 1)
				assert.Equal(t, tc.parent, hex.EncodeToString(s.GetLinks()[0].GetSpanId()), "the link is to the sender's span")
				assert.Empty(t, s.GetLinks()[0].GetTraceState())
				got := attrs(s)
				for k, v := range tc.want {
					assert.Equal(t, v, got[k], k)
				}
				return
			}
			s := spans[tc.trace]
			require.NotNil(t, s, "no span in trace %s", tc.trace)
			assert.Equal(t, tc.parent, hex.EncodeToString(s.GetParentSpanId()), "the span's parent is the sender's span")
			assert.Equal(t, tracepb.Span_SPAN_KIND_SERVER, s.GetKind())
			got := attrs(s)
			for k, v := range tc.want {
				assert.Equal(t, v, got[k], k)
			}
		})
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	var service string
	for _, kv := range col.resources[0] {
		if kv.GetKey() == "service.name" {
			service = kv.GetValue().GetStringValue()
		}
	}
	assert.Equal(t, "extauthz", service)
}

// No span or resource attribute carries a secret or anything the client
// wrote: the key (header, query, cookie, bearer), other header values, the
// path and its query.
func TestNoSecretInAnySpan(t *testing.T) {
	ts, col := startTracedServer(t)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	const ua, custom = "agent-7f3c-distinctive", "custom-value-91ab"
	sends := []map[string]string{
		{"x-api-key": key},
		{"authorization": "Bearer " + key},
		{"cookie": "session=1; api_key=" + key},
		{"x-api-key": key + "x"},
	}
	for i, h := range sends {
		tp, _, _ := traceparent(100 + i)
		h["traceparent"], h["user-agent"], h["x-custom"] = tp, ua, custom
		_, err := ts.client.Check(context.Background(), checkReq("GET", "/api/users?page=2&q="+custom, "10.1.2.3", h))
		require.NoError(t, err)
		status, _, _ := get(t, ts.httpURL+"/authz/api/users?api_key="+key, map[string]string{"traceparent": tp, "user-agent": ua, "x-custom": custom})
		require.NotZero(t, status)
	}
	req, err := http.NewRequest("GET", ts.adminURL+"/v1/keys?api_key="+key, nil)
	require.NoError(t, err)
	req.Header.Set("x-api-key", key)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()

	require.Eventually(t, func() bool { col.mu.Lock(); defer col.mu.Unlock(); return len(col.spans) >= 2*len(sends)+1 }, 10*time.Second, 20*time.Millisecond)
	ts.stop() // flush
	col.mu.Lock()
	defer col.mu.Unlock()
	var all []*commonpb.KeyValue
	for _, s := range col.spans {
		all = append(all, s.GetAttributes()...)
		assert.NotContains(t, s.GetName(), key)
	}
	for _, r := range col.resources {
		all = append(all, r...)
	}
	require.NotEmpty(t, all)
	for _, kv := range all {
		v := kv.GetValue().String()
		for _, secret := range []string{key, key[3:20], ua, custom, "page=2", "api_key"} {
			assert.False(t, strings.Contains(v, secret), "attribute %s carries %q", kv.GetKey(), secret)
		}
	}
}

// A span's trace_state is a header a client wrote too: tracestate, which
// rides with the traceparent a span is joined to, of the request being
// authorized, of Envoy's call (whose tracer passes the client's on) or of
// an admin call. None reaches the collector, whatever it holds: a pasted
// key fits its grammar, and each of its 32 entries may be 256 bytes.
func TestNoSpanCarriesTheClientsTraceState(t *testing.T) {
	ts, col := startTracedServer(t)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users", "keys:read"}})
	state := "vendor=" + key + ",other=custom-value-91ab"

	tp1, trace1, _ := traceparent(201)
	_, err := ts.client.Check(context.Background(), checkReq("GET", "/api/users", "10.1.2.3",
		map[string]string{"x-api-key": key, "traceparent": tp1, "tracestate": state}))
	require.NoError(t, err)
	tp2, trace2, _ := traceparent(202)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", tp2, "tracestate", state)
	_, err = ts.client.Check(ctx, checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": key}))
	require.NoError(t, err)
	tp3, trace3, _ := traceparent(203)
	status, _, _ := get(t, ts.httpURL+"/authz/api/users", map[string]string{"x-api-key": key, "traceparent": tp3, "tracestate": state})
	require.Equal(t, 200, status)
	tp4, trace4, _ := traceparent(204)
	status, _, _ = get(t, ts.adminURL+"/v1/keys", map[string]string{"x-api-key": key, "traceparent": tp4, "tracestate": state})
	require.Equal(t, 200, status)

	var spans map[string]*tracepb.Span
	require.Eventually(t, func() bool { spans = col.received(); return len(spans) >= 6 }, 10*time.Second, 20*time.Millisecond)
	// The request's own traceparent and an admin caller's are links (1, 3,
	// 4), Envoy's a parent (2).
	for i, trace := range []string{"link:" + trace1, trace2, "link:" + trace3, "link:" + trace4} {
		s := spans[trace]
		require.NotNil(t, s, "no span in or linked to trace %d", i+1)
		assert.Empty(t, s.GetTraceState(), "span %d (%s)", i+1, s.GetName())
		for _, l := range s.GetLinks() {
			assert.Empty(t, l.GetTraceState(), "span %d (%s)'s link", i+1, s.GetName())
		}
	}
}

// What is traced is the operator's to choose (OTEL_TRACES_SAMPLER), never
// a client's: the traceparent of the request being authorized is the
// client's to write, sampled flag and trace id alike, so it is a link of a
// span that starts a trace of its own, never its parent, whose flag the
// parent-based samplers follow and whose id a ratio sampler judges. A
// client could otherwise have every check of its traced (several
// microseconds each, and a span at the collector) at a 0% sampling, or keep
// its checks out of traces. The same holds for the admin listener, which
// anyone who reaches it may call. Envoy's own traceparent, in the call's
// metadata, is still followed.
func TestAClientDoesNotChooseWhatIsTraced(t *testing.T) {
	for _, sampler := range []string{"parentbased_traceidratio", "traceidratio"} {
		t.Run(sampler, func(t *testing.T) {
			t.Setenv("OTEL_TRACES_SAMPLER", sampler)
			t.Setenv("OTEL_TRACES_SAMPLER_ARG", "0")
			ts, col := startTracedServer(t)
			key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
			// Sampled, and an id a ratio sampler takes at any ratio above 0
			// (its last 8 bytes, read as a number, are below the bound).
			const forced = "00-7f3c9a1e5b2d4c6f0000000000000000-00f067aa0ba902b7-01"
			for range 20 {
				_, err := ts.client.Check(context.Background(), checkReq("GET", "/api/users", "10.1.2.3",
					map[string]string{"x-api-key": key, "traceparent": forced}))
				require.NoError(t, err)
				status, _, _ := get(t, ts.httpURL+"/authz/api/users", map[string]string{"x-api-key": key, "traceparent": forced})
				require.Equal(t, 200, status)
				// The admin listener too, whose span starts before the
				// caller's key is read: a caller with no key, and one
				// whose key may not list keys.
				status, _, _ = get(t, ts.adminURL+"/v1/keys", map[string]string{"traceparent": forced})
				require.Equal(t, 401, status)
				status, _, _ = get(t, ts.adminURL+"/v1/keys", map[string]string{"x-api-key": key, "traceparent": forced})
				require.Equal(t, 403, status)
			}
			// A marker that is traced: Envoy's sampled span, followed by the
			// parent-based sampler; at a ratio of 0 alone, nothing is.
			tp, trace, _ := traceparent(301)
			ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", tp)
			_, err := ts.client.Check(ctx, checkReq("GET", "/api/users", "10.1.2.3", map[string]string{"x-api-key": key}))
			require.NoError(t, err)
			if sampler == "parentbased_traceidratio" {
				require.Eventually(t, func() bool { return col.received()[trace] != nil }, 10*time.Second, 20*time.Millisecond,
					"Envoy's sampled traceparent is no longer followed")
			} else {
				time.Sleep(300 * time.Millisecond) // 15 of the exporter's schedule delays
			}
			spans := col.received()
			assert.Nil(t, spans["link:7f3c9a1e5b2d4c6f0000000000000000"], "a check was traced because its client asked")
			assert.Nil(t, spans["7f3c9a1e5b2d4c6f0000000000000000"], "a check was traced because its client asked")
			want := 0
			if sampler == "parentbased_traceidratio" {
				want = 1
			}
			assert.Len(t, spans, want, "spans at a sampling ratio of 0")
		})
	}
}

// The OTLP headers variables hold the collector's credential. Written
// wrongly ("authorization: Bearer ...", a stray %), the exporter would
// drop the entry and log it whole on standard error, outside the server's
// log and its care; instead the server refuses to start, naming the
// variable and the entry but never its text.
func TestAMalformedOTLPHeadersVariableIsRefusedUnshown(t *testing.T) {
	const secret = "s3cret-7f3c-token"
	path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+storeYAML(t, "embedded")+testRoutes)
	for _, tc := range []struct{ name, value string }{
		{"OTEL_EXPORTER_OTLP_HEADERS", "authorization: Bearer " + secret},
		{"OTEL_EXPORTER_OTLP_HEADERS", "x-team=ok,x-key=" + secret + "%zz"},
		{"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "Bearer " + secret},
	} {
		t.Run(tc.value, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "serve", "--config", path)
			cmd.Env = append(os.Environ(), "EXTAUTHZ_TEST_AS_MAIN=1", "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:1", tc.name+"="+tc.value)
			out, err := cmd.CombinedOutput()
			assert.NotContains(t, string(out), secret)
			require.Error(t, err, "the server refuses to start")
			require.NoError(t, ctx.Err(), "the server started:\n%s", out)
			assert.Contains(t, string(out), tc.name)
		})
	}
}

// The switch: off unless the environment asks, and a request it cannot
// serve is an error rather than silently no traces.
func TestTracingIsOnOnlyWhenTheEnvironmentAsks(t *testing.T) {
	for _, tc := range []struct {
		env     map[string]string
		on      bool
		wantErr string
	}{
		{nil, false, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, true, ""},
		{map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, true, ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, true, ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, false, ""},
		{map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, false, ""},
		{map[string]string{"OTEL_SERVICE_NAME": "x"}, false, ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, false, `OTEL_TRACES_EXPORTER="zipkin"`},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, false, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, true, ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0ken, x-team = a,"}, true, ""},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_HEADERS": "x-team=a,authorization:Bearer t0ken"}, false, "OTEL_EXPORTER_OTLP_HEADERS: entry 2 has no '='"},
		{map[string]string{"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://u:p@h%zz:4317"}, false, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: not a url"},
	} {
		t.Run(fmt.Sprint(tc.env), func(t *testing.T) {
			on, err := tracingWanted(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.on, on)
		})
	}
}

// The method of an admin call is the client's to write: any token goes
// (a pasted key, or a fresh word per request). Its span is named, and its
// http.request.method set, from the known methods only, others being
// _OTHER (as OpenTelemetry's HTTP conventions have it), so that no client
// puts a secret in a span or makes a span name per request.
func TestAnAdminCallsMethodIsNotTakenAsWritten(t *testing.T) {
	ts, col := startTracedServer(t)
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})
	methods := []string{key, "PROBE1", "PROBE2", "GET"}
	for _, m := range methods {
		req, err := http.NewRequest(m, ts.adminURL+"/v1/keys", nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
	}
	require.Eventually(t, func() bool { col.mu.Lock(); defer col.mu.Unlock(); return len(col.spans) >= len(methods) }, 10*time.Second, 20*time.Millisecond)
	ts.stop() // flush
	col.mu.Lock()
	defer col.mu.Unlock()
	names := map[string]bool{}
	for _, s := range col.spans {
		names[s.GetName()] = true
		for _, m := range methods[:3] {
			assert.NotContains(t, s.GetName(), m)
			for k, v := range attrs(s) {
				assert.NotContains(t, v, m, "attribute %s", k)
			}
		}
	}
	assert.Equal(t, map[string]bool{"extauthz.admin GET": true, "extauthz.admin _OTHER": true}, names)
}

// refusingCollector answers every export as a collector does whose
// credential for extauthz has expired: at once, and not to be retried.
type refusingCollector struct {
	collectortrace.UnimplementedTraceServiceServer
	calls atomic.Int64
}

func (c *refusingCollector) Export(context.Context, *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	c.calls.Add(1)
	return nil, status.Error(codes.Unauthenticated, "token expired \u202e")
}

// OpenTelemetry's own errors, a failed export above all, are the server's
// log lines, a few a minute, as its listeners' errors are. They went to
// Go's standard logger instead: plain text among the JSON lines, with the
// collector's text unescaped, and one line per failed batch, so that with a
// collector that refuses every export the checks anyone sends made a line
// per batch, for as long as it lasted.
func TestAFailingCollectorIsInTheLogAFewLinesAMinute(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	col := &refusingCollector{}
	srv := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(srv, col)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+ln.Addr().String())
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "20")
	t.Setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1") // an export per check
	t.Setenv("OTEL_SERVICE_NAME", "")
	var logs syncbuf.Buffer
	path := writeConfig(t, fmt.Sprintf("listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\nstore: {path: %q}\n%s",
		filepath.Join(t.TempDir(), "k.db"), testRoutes))
	ts := startServerOut(t, path, serverOutput{logs: &logs, audit: io.Discard})
	key, _ := ts.create(t, keystore.Spec{Name: "reader", Permissions: []string{"read:users"}})

	const checks = 4 * listenerLogBurst
	for range checks {
		require.NotNil(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}).GetOkResponse())
	}
	require.Eventually(t, func() bool { return col.calls.Load() >= checks }, 10*time.Second, 20*time.Millisecond)
	time.Sleep(100 * time.Millisecond) // the last export's error on its way to the log

	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if strings.Contains(line, "Unauthenticated") {
			lines = append(lines, line)
		}
	}
	require.NotEmpty(t, lines, "a failed export is not in the server's log")
	assert.LessOrEqual(t, len(lines), listenerLogBurst, "a line per failed export")
	for _, line := range lines {
		var v map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &v), line)
		assert.Equal(t, "WARN", v["level"])
		assert.NotContains(t, line, "\u202e", "the collector's text is written raw")
	}
}
