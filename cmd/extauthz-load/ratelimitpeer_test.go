package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	ratelimitv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/extauthz/extauthz/keystore"
)

func keyIDs(t *testing.T, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		var err error
		if ids[i], err = keystore.NewID(time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

func TestShouldRateLimitRequestsCarryOneDescriptorWithThePickedKeyID(t *testing.T) {
	ids := keyIDs(t, 20)
	paths, err := ParsePaths("GET /api/users", "x-api-key", false)
	if err != nil {
		t.Fatal(err)
	}
	tr := &Traffic{Keys: KeySet{Valid: newKeyList(ids)}, Mix: Mix{1}, Paths: paths, Clients: 10, RateLimit: &peerDescriptor}
	if tr.method() != "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" {
		t.Fatalf("the peer's traffic calls %s", tr.method())
	}
	if _, ok := tr.newReply().(*rateLimitResult); !ok {
		t.Fatalf("the peer's answers are decoded as %T", tr.newReply())
	}
	p := newPicker(tr, 3)
	seen := map[string]bool{}
	for range 400 {
		_, raw, err := p.next()
		if err != nil {
			t.Fatal(err)
		}
		var req ratelimitv3.RateLimitRequest
		if err := proto.Unmarshal(*raw, &req); err != nil {
			t.Fatalf("the request does not decode: %v", err)
		}
		if req.GetDomain() != "extauthz" || len(req.GetDescriptors()) != 1 || req.GetHitsAddend() != 0 {
			t.Fatalf("request %v: want domain extauthz, one descriptor, one hit", &req)
		}
		e := req.GetDescriptors()[0].GetEntries()
		if len(e) != 1 || e[0].GetKey() != "api_key" || !slices.Contains(ids, e[0].GetValue()) {
			t.Fatalf("descriptor entries %v: want api_key = one of the key ids", e)
		}
		seen[e[0].GetValue()] = true
	}
	if len(seen) != len(ids) {
		t.Errorf("400 requests over 20 ids used only %d of them", len(seen))
	}
}

func TestParseRateLimitResponseNamesTheAnswerLikeACheck(t *testing.T) {
	limit := &ratelimitv3.RateLimitResponse_RateLimit{RequestsPerUnit: 3999, Unit: ratelimitv3.RateLimitResponse_RateLimit_SECOND}
	for _, tc := range []struct {
		name string
		resp *ratelimitv3.RateLimitResponse
		want string
	}{
		{"under the limit", &ratelimitv3.RateLimitResponse{
			OverallCode: ratelimitv3.RateLimitResponse_OK,
			Statuses:    []*ratelimitv3.RateLimitResponse_DescriptorStatus{{Code: ratelimitv3.RateLimitResponse_OK, CurrentLimit: limit, LimitRemaining: 3998}},
		}, "allow"},
		{"over the limit", &ratelimitv3.RateLimitResponse{
			OverallCode: ratelimitv3.RateLimitResponse_OVER_LIMIT,
			Statuses:    []*ratelimitv3.RateLimitResponse_DescriptorStatus{{Code: ratelimitv3.RateLimitResponse_OVER_LIMIT, CurrentLimit: limit}},
		}, "rate_limited"},
		{"no overall code", &ratelimitv3.RateLimitResponse{}, "overall_code_0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.resp)
			if err != nil {
				t.Fatal(err)
			}
			var r rateLimitResult
			if err := (rawCodec{}).Unmarshal(b, &r); err != nil {
				t.Fatal(err)
			}
			if r.decision() != tc.want {
				t.Fatalf("decision %q, want %q", r.decision(), tc.want)
			}
		})
	}
	if _, err := parseRateLimitResponse([]byte{0x08}); err == nil {
		t.Error("a truncated response parsed")
	}
}

func TestThePeerConfigHasOneDescriptorPerKeyID(t *testing.T) {
	ids := keyIDs(t, 3)
	var cfg struct {
		Domain      string
		Descriptors []struct {
			Key, Value string
			RateLimit  struct {
				Unit            string
				RequestsPerUnit int `json:"requests_per_unit"`
			} `json:"rate_limit"`
		}
	}
	if err := yaml.Unmarshal([]byte(rateLimitConfig(peerDescriptor, ids, 3999)), &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.Domain != "extauthz" || len(cfg.Descriptors) != len(ids) {
		t.Fatalf("config %+v: want domain extauthz and %d descriptors", cfg, len(ids))
	}
	for i, d := range cfg.Descriptors {
		if d.Key != "api_key" || d.Value != ids[i] || d.RateLimit.Unit != "second" || d.RateLimit.RequestsPerUnit != 3999 {
			t.Errorf("descriptor %d = %+v, want api_key = %s at 3999/second", i, d, ids[i])
		}
	}
}

func TestFindRateLimitLooksWhereGoInstallPutsIt(t *testing.T) {
	gopath := t.TempDir()
	t.Setenv("GOPATH", gopath)
	t.Setenv("GOBIN", "")
	t.Setenv("GOFLAGS", "")
	if _, err := findRateLimit(""); !errors.Is(err, errNoRateLimit) {
		t.Fatalf("with no service_cmd anywhere: %v, want errNoRateLimit", err)
	}
	if !strings.Contains(errNoRateLimit.Error(), "go install github.com/envoyproxy/ratelimit/src/service_cmd@latest") {
		t.Errorf("the error does not say how to install it: %v", errNoRateLimit)
	}
	bin := filepath.Join(gopath, "bin", "service_cmd")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findRateLimit(""); err != nil || got != bin {
		t.Fatalf("findRateLimit = %q, %v; want %s", got, err, bin)
	}
	gobin := t.TempDir()
	t.Setenv("GOBIN", gobin)
	if err := os.WriteFile(filepath.Join(gobin, "service_cmd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findRateLimit(""); err != nil || got != filepath.Join(gobin, "service_cmd") {
		t.Fatalf("with GOBIN set: findRateLimit = %q, %v; want GOBIN's", got, err)
	}
	if _, err := findRateLimit(filepath.Join(gopath, "nowhere")); err == nil || errors.Is(err, errNoRateLimit) {
		t.Fatalf("a missing --ratelimit path: %v, want an error naming it", err)
	}
}
