package ratelimit

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestAppendHeaders(t *testing.T) {
	perMinute := Rate{N: 100, Window: time.Minute}
	route := Limit{Name: "/api/users/{id}", Bucket: "k", Scope: "/api/users/{id}", Rate: Rate{N: 10, Window: 10 * time.Minute}}
	for _, tc := range []struct {
		name string
		res  Result
		want []Header
	}{
		{
			name: "allowed: the limit with the least remaining, reset rounded up",
			res:  Result{Allowed: true, Limit: Limit{Name: "key", Bucket: "k", Rate: perMinute}, Remaining: 42, Reset: 59200 * time.Millisecond},
			want: []Header{
				{"RateLimit-Policy", `"key";q=100;w=60`},
				{"RateLimit", `"key";r=42;t=60`},
				{"X-RateLimit-Limit", "100"},
				{"X-RateLimit-Remaining", "42"},
				{"X-RateLimit-Reset", "60"},
			},
		},
		{
			name: "denied: Retry-After in whole seconds, rounded up",
			res:  Result{Limit: route, Reset: 1500 * time.Millisecond, RetryAfter: 1500 * time.Millisecond},
			want: []Header{
				{"RateLimit-Policy", `"/api/users/{id}";q=10;w=600`},
				{"RateLimit", `"/api/users/{id}";r=0;t=2`},
				{"X-RateLimit-Limit", "10"},
				{"X-RateLimit-Remaining", "0"},
				{"X-RateLimit-Reset", "2"},
				{"Retry-After", "2"},
			},
		},
		{
			name: "denied a moment before capacity frees: Retry-After is still at least 1",
			res:  Result{Limit: route, Reset: time.Microsecond, RetryAfter: time.Microsecond},
			want: []Header{
				{"RateLimit-Policy", `"/api/users/{id}";q=10;w=600`},
				{"RateLimit", `"/api/users/{id}";r=0;t=1`},
				{"X-RateLimit-Limit", "10"},
				{"X-RateLimit-Remaining", "0"},
				{"X-RateLimit-Reset", "1"},
				{"Retry-After", "1"},
			},
		},
		{
			name: "whole seconds stay whole",
			res:  Result{Limit: Limit{Name: "key", Rate: Rate{N: 5000, Window: 24 * time.Hour}}, Reset: 3 * time.Second, RetryAfter: 3 * time.Second},
			want: []Header{
				{"RateLimit-Policy", `"key";q=5000;w=86400`},
				{"RateLimit", `"key";r=0;t=3`},
				{"X-RateLimit-Limit", "5000"},
				{"X-RateLimit-Remaining", "0"},
				{"X-RateLimit-Reset", "3"},
				{"Retry-After", "3"},
			},
		},
		{
			name: "the name is an sf-string: quotes and backslashes escaped, controls and non-ASCII replaced",
			res:  Result{Allowed: true, Limit: Limit{Name: "a\"b\\c\r\nd\x00é", Rate: Rate{N: 1, Window: 1500 * time.Millisecond}}, Remaining: -3, Reset: 0},
			want: []Header{
				{"RateLimit-Policy", `"a\"b\\c??d???";q=1;w=2`},
				{"RateLimit", `"a\"b\\c??d???";r=0;t=0`},
				{"X-RateLimit-Limit", "1"},
				{"X-RateLimit-Remaining", "0"},
				{"X-RateLimit-Reset", "0"},
			},
		},
		{
			name: "a name longer than the stack buffer",
			res:  Result{Allowed: true, Limit: Limit{Name: "/" + strings.Repeat("seg/", 60) + "**", Rate: Rate{N: 123456, Window: time.Hour}}, Remaining: 99999, Reset: time.Hour},
			want: []Header{
				{"RateLimit-Policy", `"/` + strings.Repeat("seg/", 60) + `**";q=123456;w=3600`},
				{"RateLimit", `"/` + strings.Repeat("seg/", 60) + `**";r=99999;t=3600`},
				{"X-RateLimit-Limit", "123456"},
				{"X-RateLimit-Remaining", "99999"},
				{"X-RateLimit-Reset", "3600"},
			},
		},
		{
			name: "allowed without a limit: no headers",
			res:  Result{Allowed: true},
		},
		{
			name: "denied without a limit (the zero Result): only Retry-After",
			res:  Result{},
			want: []Header{{"Retry-After", "1"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendHeaders(nil, tc.res)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestAppendHeadersAppends(t *testing.T) {
	dst := []Header{{"x-authz-code", "rate_limited"}}
	got := AppendHeaders(dst, Result{Limit: Limit{Name: "key", Rate: Rate{N: 1, Window: time.Second}}, RetryAfter: time.Second})
	assert.Equal(t, Header{"x-authz-code", "rate_limited"}, got[0])
	assert.Equal(t, Header{"Retry-After", "1"}, got[len(got)-1])
	assert.Len(t, got, 7)
}

func TestAppendHeadersAllocatesOnce(t *testing.T) {
	res := Result{Limit: Limit{Name: "/api/reports/**", Rate: Rate{N: 1000, Window: time.Hour}}, Reset: 1234 * time.Second, RetryAfter: 1234 * time.Second}
	dst := make([]Header, 0, 8)
	allocs := testing.AllocsPerRun(100, func() { _ = AppendHeaders(dst[:0], res) })
	// One string holds the five rate-limit values; Retry-After is its own.
	assert.LessOrEqual(t, allocs, 2.0)
}
