package main

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// isAllowCall reports whether cmd is a call of the rate limiter's script
// (allow.lua), by the counter keys it names.
func isAllowCall(cmd []string) bool {
	name := strings.ToUpper(cmd[0])
	if name != "EVALSHA" && name != "EVAL" {
		return false
	}
	for _, a := range cmd[1:] {
		if strings.Contains(a, "count:{") {
			return true
		}
	}
	return false
}

// TestARateLimitReplyOfAnotherShapeIsAStoreFailure puts a proxy between
// the server and Redis that replaces the rate limiter's script replies (a
// buggy or compromised Redis, or a man in the middle of a plaintext link)
// with ones the script never gives: of another type, of too few or too many
// values, with nils, a grant out of range, or a denial that names no
// exhausted limit. Each must be decided as Redis failing (here
// on_store_error: deny, 503), never allowed: an all-nil or all-zero reply
// was read as a check that no limit refused, and allowed uncounted.
func TestARateLimitReplyOfAnotherShapeIsAStoreFailure(t *testing.T) {
	r := redistest.Start(t)
	rw := redistest.StartRewriter(t, r.Addr)
	// 100/m: no leases, every check asks the script for one request.
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"h:\"}}\n", "redis://"+rw.Addr()+"/0")+
		testRoutes+"rate_limit: {default: 100/m, on_store_error: deny}\n")
	key, _ := ts.create(t, keystore.Spec{Name: "hostile", Permissions: []string{"read:users"}})
	check := func() string {
		code, _ := denial(t, ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key}))
		return code
	}
	require.Empty(t, check(), "allowed with Redis's own replies")

	for _, tc := range []struct{ name, reply string }{
		{"nil elements", "*4\r\n$-1\r\n$-1\r\n$-1\r\n$-1\r\n"},
		{"zeros: denied, with no limit exhausted", "*4\r\n:0\r\n:0\r\n:0\r\n:0\r\n"},
		{"a negative grant", "*4\r\n:-1\r\n:1000\r\n:0\r\n:0\r\n"},
		{"a grant above what was asked", "*4\r\n:2\r\n:1000\r\n:1\r\n:1000\r\n"},
		{"a huge grant", "*4\r\n:9223372036854775807\r\n:1000\r\n:1\r\n:1000\r\n"},
		{"too few values", "*2\r\n:1\r\n:1000\r\n"},
		{"too many values", "*6\r\n:1\r\n:1000\r\n:1\r\n:1000\r\n:1\r\n:1000\r\n"},
		{"an empty array", "*0\r\n"},
		{"a nil array", "*-1\r\n"},
		{"a nil string", "$-1\r\n"},
		{"a RESP3 null", "_\r\n"},
		{"a string", "+OK\r\n"},
		{"an integer", ":1\r\n"},
		{"strings that are no numbers", "*4\r\n$1\r\nx\r\n$1\r\ny\r\n$1\r\nz\r\n$1\r\nw\r\n"},
		{"nested arrays", "*4\r\n*1\r\n:1\r\n:1000\r\n:1\r\n:1000\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen atomic.Int64
			rw.Set(func(cmd []string, reply []byte) []byte {
				if !isAllowCall(cmd) {
					return reply
				}
				seen.Add(1)
				return []byte(tc.reply)
			})
			code := check()
			rw.Set(nil)
			require.Positive(t, seen.Load(), "the check's script call went through the proxy")
			assert.Equal(t, "unavailable", code, "decided as a Redis failure (on_store_error: deny)")
			// A check Redis answers itself: the breaker's count of failures
			// starts again, so that every case reaches Redis.
			require.Empty(t, check(), "allowed again with Redis's own replies")
		})
	}
}
