package main

import (
	"fmt"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

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

// TestAChangeOfAnUnreadableFormStillReachesTheCache revokes cached keys
// as another writer would (a newer version, whose change entries this one
// may not read, or one whose entry was damaged): a key's record is
// rewritten in Redis and the change stream gets an entry that names no key
// this version can read. The server must forget what it cached rather than
// skip the entry: skipped, the revoked key stayed allowed until its cache
// entry expired (here an hour).
func TestAChangeOfAnUnreadableFormStillReachesTheCache(t *testing.T) {
	r := redistest.Start(t)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"u:\"}}\n", r.URL(0))+
		"cache: {ttl: 1h}\n"+testRoutes)
	cases := []struct {
		name  string
		entry func(hexHash string) []string // the entry's fields and values
	}{
		{"a hash that is not hex", func(string) []string { return []string{"h", "not a hash"} }},
		{"an empty hash", func(string) []string { return []string{"h", ""} }},
		{"a hash one byte long", func(h string) []string { return []string{"h", h + "00"} }},
		{"a hash one byte short", func(h string) []string { return []string{"h", h[:len(h)-2]} }},
		{"the zero hash", func(h string) []string { return []string{"h", strings.Repeat("0", len(h))} }},
		{"the hash under another field", func(h string) []string { return []string{"hash", h} }},
		{"the hash with a field of another kind", func(h string) []string { return []string{"v", "2", "hs", h} }},
	}
	check := func(key string) string { return checkCode(t, ts, key) }
	// revoke rewrites the record of the key id as revoked, and adds entry
	// (of the record's hash hex) to the change stream.
	revoke := func(t *testing.T, id string, entry func(string) []string) {
		hexHash, err := r.QueryString("GET", "u:{keys}:id:"+id)
		require.NoError(t, err)
		record := "u:{keys}:h:" + hexHash
		raw, err := r.QueryString("GET", record)
		require.NoError(t, err)
		revoked := strings.Replace(raw, `"revoked_at":null`, `"revoked_at":"2020-01-01T00:00:00Z"`, 1)
		require.NotEqual(t, raw, revoked, "the record %s names revoked_at", raw)
		_, err = r.Query("SET", record, revoked)
		require.NoError(t, err)
		_, err = r.Query(append([]string{"XADD", "u:{keys}:changes", "*"}, entry(hexHash)...)...)
		require.NoError(t, err)
	}
	refused := func(t *testing.T, key string) {
		var code string
		require.Eventually(t, func() bool { code = check(key); return code != "" }, 3*time.Second, 20*time.Millisecond,
			"the revoked key is refused once the change is read, not when its cache entry expires")
		assert.Equal(t, "revoked_key", code)
	}

	// Every case's key is made first, then one more revoked with the form
	// this version writes: once that reaches the cache, so have the
	// creates before it, which would otherwise make the cache forget a key
	// of a case after its record was rewritten.
	keys := make([]string, len(cases))
	ids := make([]string, len(cases))
	for i := range cases {
		var k *keystore.Key
		keys[i], k = ts.create(t, keystore.Spec{Name: "unread", Permissions: []string{"read:users"}})
		ids[i] = k.ID
	}
	control, k := ts.create(t, keystore.Spec{Name: "control", Permissions: []string{"read:users"}})
	require.Empty(t, check(control))
	revoke(t, k.ID, func(h string) []string { return []string{"h", h} })
	refused(t, control)

	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.Empty(t, check(keys[i]), "allowed before it is revoked")
			require.Empty(t, check(keys[i]), "allowed before it is revoked")
			revoke(t, ids[i], tc.entry)
			refused(t, keys[i])
		})
	}
}

// TestAnOversizedRedisReplyIsAStoreFailure answers the server's Redis
// calls, through a proxy, with replies that declare more than they send:
// a key record's GET with a string of 1 GiB, the rate limiter's script with
// an array of 100M counts. go-redis allocated what such a header declared
// before reading on (up to 2^31 elements or bytes: the process out of
// memory from a 13-byte header). Each check must be decided as Redis failing
// (on_store_error: deny, 503) without the allocation, and the
// server must answer normally once Redis's own replies are back.
func TestAnOversizedRedisReplyIsAStoreFailure(t *testing.T) {
	r := redistest.Start(t)
	rw := redistest.StartRewriter(t, r.Addr)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"o:\"}}\n", "redis://"+rw.Addr()+"/0")+
		testRoutes+"rate_limit: {default: 100/m, on_store_error: deny}\n")
	check := func(key string) string { return checkCode(t, ts, key) }
	for _, tc := range []struct {
		name, reply string
		hostile     func(cmd []string) bool
	}{
		{"a key record of 1 GiB", "$1073741824\r\n", func(cmd []string) bool {
			return strings.EqualFold(cmd[0], "GET") && strings.Contains(cmd[1], "{keys}:h:")
		}},
		{"a rate-limit reply of 100M counts", "*100000000\r\n", isAllowCall},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A new key each time: its first check looks its record up.
			key, _ := ts.create(t, keystore.Spec{Name: "oversized", Permissions: []string{"read:users"}})
			var seen atomic.Int64
			hostile := []byte(tc.reply)
			rw.Set(func(cmd []string, reply []byte) []byte {
				if !tc.hostile(cmd) {
					return reply
				}
				seen.Add(1)
				return hostile
			})
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			code := check(key)
			runtime.ReadMemStats(&after)
			rw.Set(nil)
			require.Positive(t, seen.Load(), "the call went through the proxy")
			assert.Equal(t, "unavailable", code, "decided as a Redis failure (on_store_error: deny)")
			allocated := after.TotalAlloc - before.TotalAlloc
			assert.Less(t, allocated, uint64(64<<20), "the check allocated %d MiB", allocated>>20)
			require.Eventually(t, func() bool { return check(key) == "" }, 5*time.Second, 20*time.Millisecond,
				"allowed again with Redis's own replies")
		})
	}
}

// A key record Redis returns that does not decode (damaged, written by
// hand without a change-stream entry, or a reply rewritten on a plaintext
// link) is an answer the check cannot be decided by: 503, never the entry
// the cache held before. The cache read the decode error as neither found,
// absent nor unavailable, and fell through to serving its stale entry for
// up to cache.max_stale: the check was allowed.
func TestAKeyRecordThatDoesNotDecodeIsNotAnsweredFromTheStaleCache(t *testing.T) {
	t.Parallel() // mostly waits (see TestMain)
	r := redistest.Start(t)
	rw := redistest.StartRewriter(t, r.Addr)
	ts := startServer(t, fmt.Sprintf("store: {backend: redis, redis: {url: %q, prefix: \"m:\"}}\n", "redis://"+rw.Addr()+"/0")+
		"cache: {ttl: 1s, max_stale: 1h}\n"+testRoutes)
	for _, tc := range []struct{ name, record string }{
		{"a record whose id is a number", `{"id":7}`},
		{"a record whose revoked_at is not a time", `{"id":"x","revoked_at":"yesterday"}`},
		{"a record cut short", `{"id":"key_`},
		{"no key record at all", `null`},
		{"a record without an id, owner or creation time", `{"permissions":["read:users"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, _ := ts.create(t, keystore.Spec{Name: "malformed", Permissions: []string{"read:users"}})
			// The create's own change reaches the cache first: it would
			// bury an entry filled before it.
			time.Sleep(300 * time.Millisecond)
			require.Empty(t, checkCode(t, ts, key), "allowed while the record is sound")
			bulk := []byte(fmt.Sprintf("$%d\r\n%s\r\n", len(tc.record), tc.record))
			rw.Set(func(cmd []string, reply []byte) []byte {
				if strings.EqualFold(cmd[0], "GET") && strings.Contains(cmd[1], "{keys}:h:") {
					return bulk
				}
				return reply
			})
			defer rw.Set(nil)
			time.Sleep(1200 * time.Millisecond) // past cache.ttl: the next check asks Redis
			assert.Equal(t, "unavailable", checkCode(t, ts, key))
		})
	}
}
