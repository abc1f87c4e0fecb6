package main

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

func header(k, v string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: k, Value: v}}
}

func TestParseCheckResponseFindsTheDecision(t *testing.T) {
	for _, tc := range []struct {
		name string
		resp *authv3.CheckResponse
		want string
	}{
		{"an allow with identity headers", &authv3.CheckResponse{
			Status: &rpcstatus.Status{},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers:         []*corev3.HeaderValueOption{header("x-authz-key-id", "key_1"), header("x-authz-code", "spoofed")},
				HeadersToRemove: []string{"x-api-key"},
			}},
		}, "allow"},
		{"an allow with no status at all", &authv3.CheckResponse{}, "allow"},
		{"a 429", &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: 8, Message: "rate limited"},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Status:  &typev3.HttpStatus{Code: 429},
				Headers: []*corev3.HeaderValueOption{header("content-type", "application/json"), header("retry-after", "3"), header("x-authz-code", "rate_limited")},
				Body:    `{"error":"rate limited","code":"rate_limited"}`,
			}},
		}, "rate_limited"},
		{"a denial with a code this tool does not know", &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: 7},
			HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
				Headers: []*corev3.HeaderValueOption{header("x-authz-code", "new_code")},
			}},
		}, "new_code"},
		{"a denial without x-authz-code", &authv3.CheckResponse{Status: &rpcstatus.Status{Code: 16}}, "status_16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.resp)
			if err != nil {
				t.Fatal(err)
			}
			r, err := parseCheckResponse(b)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.decision(); got != tc.want {
				t.Fatalf("decision %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseCheckResponseRejectsGarbage(t *testing.T) {
	if _, err := parseCheckResponse([]byte{0x0a, 0x05, 0x08}); err == nil {
		t.Fatal("a truncated message parsed")
	}
}

func TestParseMetricsReadsUnlabelledCounters(t *testing.T) {
	text := `# HELP extauthz_cache_hits_total Key lookups answered by the cache.
# TYPE extauthz_cache_hits_total counter
extauthz_cache_hits_total 1.234567e+06
extauthz_cache_misses_total 89
extauthz_decisions_total{code="allow"} 5
`
	m, err := parseMetrics(strings.NewReader(text), "extauthz_cache_hits_total", "extauthz_cache_misses_total")
	if err != nil {
		t.Fatal(err)
	}
	if m["extauthz_cache_hits_total"] != 1234567 || m["extauthz_cache_misses_total"] != 89 {
		t.Fatalf("got %v", m)
	}
}

func TestCountersSayHowManyRateLimitedChecksALeaseAnswered(t *testing.T) {
	read := func(text string) counters {
		m, err := parseMetrics(strings.NewReader(text), counterMetrics...)
		if err != nil {
			t.Fatal(err)
		}
		return countersOf(m)
	}
	before := read("extauthz_ratelimit_allowed_total 100\nextauthz_ratelimit_limited_total 0\nextauthz_ratelimit_leased_total 50\nextauthz_ratelimit_redis_calls_total 30\nextauthz_cache_hits_total 7\n")
	after := read("extauthz_ratelimit_allowed_total 1090\nextauthz_ratelimit_limited_total 10\nextauthz_ratelimit_leased_total 950\nextauthz_ratelimit_redis_calls_total 70\nextauthz_cache_hits_total 1007\n")
	d := after.sub(before)
	if d != (counters{Hits: 1000, RateLimited: 1000, Leased: 900, Calls: 40}) {
		t.Fatalf("delta %+v", d)
	}
	if got, want := d.leaseLine(), "  rate limit: 1000 checks, 900 answered from a lease = 90.00% without a Redis call; 40 script calls = 2.5 checks a call\n"; got != want {
		t.Fatalf("leaseLine() = %q, want %q", got, want)
	}
	d.Calls = 0 // a server without the counter (or the local limiter)
	if got, want := d.leaseLine(), "  rate limit: 1000 checks, 900 answered from a lease = 90.00% without a Redis call\n"; got != want {
		t.Fatalf("leaseLine() without calls = %q, want %q", got, want)
	}
	if (counters{Hits: 5}).leaseLine() != "" {
		t.Fatal("a phase without rate limiting has no lease line")
	}
}
