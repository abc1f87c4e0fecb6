package redis

import (
	"bytes"
	"fmt"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// hostileReplies are replies past the bounds, each of which go-redis would
// have allocated, recursed or buffered on before reading what it declares.
// Without the bounds the first ones end the test process out of memory.
var hostileReplies = []struct{ name, reply string }{
	{"a string of 2 GiB", "$2147483647\r\n"},
	{"an array of 2^31 elements (32 GiB of slots)", "*2147483647\r\n"},
	{"a string of 1 GiB", "$1073741824\r\n"},
	{"an array of 100M elements", "*100000000\r\n"},
	{"a map of 100M entries", "%100000000\r\n"},
	{"a set of 100M elements", "~100000000\r\n"},
	{"a verbatim string of 1 GiB", "=1073741824\r\n"},
	{"a blob error of 1 GiB", "!1073741824\r\n"},
	{"an attribute of 100M entries", "|100000000\r\n"},
	{"a string of one byte over 4 MiB", "$4194305\r\n"},
	// In an attribute, which go-redis reads through whatever the command.
	{"strings of 4 MiB, 17 in one reply (68 MiB)", "|1\r\n$4194304\r\n" + strings.Repeat("x", 4194304) + "\r\n*16\r\n" +
		strings.Repeat("$4194304\r\n"+strings.Repeat("x", 4194304)+"\r\n", 15) + "$4194304\r\n"},
	{"arrays of 100k elements nested 10,000 deep", strings.Repeat("*100000\r\n", 10000)},
	{"arrays of one element nested a million deep", strings.Repeat("*1\r\n", 1000000)},
	{"a line of 1 MiB without its end", "+" + strings.Repeat("a", 1<<20)},
	{"a length with a sign in its middle", "$1-1\r\n"},
	{"a length of -2", "*-2\r\n"},
	{"a streamed string (RESP3 '?')", "$?\r\n;4\r\nabcd\r\n;0\r\n"},
	{"a value of no RESP type", "x\r\n"},
}

// TestRepliesPastTheBoundsFailTheCallNotTheProcess puts a proxy in front of
// Redis (a broken proxy, a man in the middle of a plaintext link, or a
// compromised server) that answers one command with a reply past the
// bounds, on every kind of connection a client from Dial makes: to a
// standalone server by URL, by address and over TLS, to a Sentinel and the
// primary it names, and to a Cluster's seed node. The call must fail with the scanner's
// error, having allocated little, and the next call, on a new connection,
// must work.
func TestRepliesPastTheBoundsFailTheCallNotTheProcess(t *testing.T) {
	type rig struct {
		opts Options
		rw   *redistest.Rewriter
		// hostile says which command gets the hostile reply, and probe
		// makes the client send one: on a fresh client, for the Cluster's
		// and the Sentinel's own commands.
		hostile func(cmd []string) bool
		probe   func(t *testing.T, c goredis.UniversalClient) error
	}
	isGetProbe := func(cmd []string) bool { return strings.EqualFold(cmd[0], "GET") && len(cmd) == 2 && cmd[1] == "probe" }
	getProbe := func(t *testing.T, c goredis.UniversalClient) error {
		got, err := c.Get(t.Context(), "probe").Result()
		if err == nil && got != "value" {
			t.Errorf("GET probe = %q", got)
		}
		return err
	}
	// withProbe is a Redis holding the key the probes read.
	withProbe := func(t *testing.T) *redistest.Server {
		srv := redistest.Start(t)
		_, err := srv.Do("SET", "probe", "value")
		require.NoError(t, err)
		return srv
	}
	dialClient := func(t *testing.T, o Options) goredis.UniversalClient {
		// Long enough that a loaded machine reads to the bound (tens of
		// MiB through TLS, under the race detector) before the timeout
		// ends the call: the bound must be what refuses the reply.
		o.Timeout = 10 * time.Second
		return dial(t, o)
	}
	topologies := []struct {
		name string
		// fresh: each case needs a client of its own, as the command that
		// gets the hostile reply is one a client sends before its first
		// call (the Cluster's slot map, the Sentinel's primary).
		fresh bool
		start func(t *testing.T) rig
	}{
		{"standalone by URL", false, func(t *testing.T) rig {
			srv := withProbe(t)
			rw := redistest.StartRewriter(t, srv.Addr)
			return rig{Options{URL: "redis://" + rw.Addr() + "/0"}, rw, isGetProbe, getProbe}
		}},
		{"standalone by address", false, func(t *testing.T) rig {
			srv := withProbe(t)
			rw := redistest.StartRewriter(t, srv.Addr)
			return rig{Options{Addrs: []string{rw.Addr()}}, rw, isGetProbe, getProbe}
		}},
		{"standalone over TLS (the scanner reads inside it)", false, func(t *testing.T) rig {
			srv := withProbe(t)
			certs := redistest.NewTLSFiles(t, t.TempDir())
			rw := redistest.StartRewriterTLS(t, srv.Addr, certs.ServerConfig())
			return rig{Options{URL: "rediss://" + rw.Addr() + "/0", TLS: TLSOptions{CAFile: certs.CA}}, rw, isGetProbe, getProbe}
		}},
		{"the primary a Sentinel names", false, func(t *testing.T) rig {
			primary := withProbe(t)
			rw := redistest.StartRewriter(t, primary.Addr)
			sentinel := redistest.StartSentinel(t, primary, redistest.SentinelOptions{MasterName: "m", PrimaryAddr: rw.Addr()})
			return rig{Options{Addrs: []string{sentinel.Addr}, MasterName: "m"}, rw, isGetProbe, getProbe}
		}},
		{"a Sentinel", true, func(t *testing.T) rig {
			primary := withProbe(t)
			sentinel := redistest.StartSentinel(t, primary, redistest.SentinelOptions{MasterName: "m"})
			rw := redistest.StartRewriter(t, sentinel.Addr)
			isSentinel := func(cmd []string) bool { return strings.EqualFold(cmd[0], "SENTINEL") }
			return rig{Options{Addrs: []string{rw.Addr()}, MasterName: "m"}, rw, isSentinel, getProbe}
		}},
		{"a Cluster's seed node", true, func(t *testing.T) rig {
			// A node timeout well past any stall of a busy test machine: no
			// failover here, only a seed node that answers badly.
			c := redistest.StartClusterOf(t, redistest.ClusterOptions{Masters: 3, NodeTimeout: 20 * time.Second})
			rw := redistest.StartRewriter(t, c.Addrs()[0])
			isCluster := func(cmd []string) bool { return strings.EqualFold(cmd[0], "CLUSTER") }
			return rig{Options{Addrs: []string{rw.Addr()}, Cluster: true}, rw, isCluster, func(t *testing.T, c goredis.UniversalClient) error {
				return c.Set(t.Context(), "probe", "value", 0).Err()
			}}
		}},
	}
	for _, topo := range topologies {
		t.Run(topo.name, func(t *testing.T) {
			r := topo.start(t)
			shared := dialClient(t, r.opts)
			require.NoError(t, r.probe(t, shared), "the call works with Redis's own replies")
			for _, tc := range hostileReplies {
				t.Run(tc.name, func(t *testing.T) {
					client := shared
					if topo.fresh {
						client = dialClient(t, r.opts)
					}
					hostile := []byte(tc.reply) // made before the allocations counted
					r.rw.Set(func(cmd []string, reply []byte) []byte {
						if r.hostile(cmd) {
							return hostile
						}
						return reply
					})
					var before, after runtime.MemStats
					runtime.ReadMemStats(&before)
					err := r.probe(t, client)
					runtime.ReadMemStats(&after)
					r.rw.Set(nil)
					require.Error(t, err)
					assert.Contains(t, err.Error(), "reply refused", "refused by the bounds, not by what followed")
					allocated := after.TotalAlloc - before.TotalAlloc
					assert.Less(t, allocated, uint64(64<<20), "the call allocated %d MiB", allocated>>20)
					// Within a few tries: under the race detector on two busy
					// cores a test Cluster's node can miss a beat, and its
					// client then waits out a try on CLUSTERDOWN.
					deadline := time.Now().Add(10 * time.Second)
					err = r.probe(t, client)
					for err != nil && time.Now().Before(deadline) {
						time.Sleep(10 * time.Millisecond)
						err = r.probe(t, client)
					}
					assert.NoError(t, err, "the next call, on a new connection, works")
				})
			}
		})
	}
}

// TestRepliesWithinTheBoundsPassUnchanged reads, through a client from
// Dial, replies of every shape at or near the bounds from a real Redis: a
// string of 4 MiB, sixteen of them in one MGET (64 MiB), and that MGET
// twice in one pipeline (each reply has its own bounds, not the
// connection), a list of 200,000 elements, a hash of 100,000 fields (a
// RESP3 map of 200,000 elements), a script's table nested 30 deep and a
// stream entry.
func TestRepliesWithinTheBoundsPassUnchanged(t *testing.T) {
	srv := redistest.Start(t)
	c := dial(t, Options{URL: srv.URL(0), Timeout: 30 * time.Second})
	ctx := t.Context()

	big := bytes.Repeat([]byte("0123456789abcdef"), maxReplyString/16)
	require.NoError(t, c.Set(ctx, "big", big, 0).Err())
	got, err := c.Get(ctx, "big").Bytes()
	require.NoError(t, err)
	require.True(t, bytes.Equal(big, got), "the 4 MiB string came back changed (%d bytes)", len(got))

	const n = 200000
	for i := 0; i < n; i += 10000 {
		vals := make([]any, 10000)
		for j := range vals {
			vals[j] = strconv.Itoa(i + j)
		}
		require.NoError(t, c.RPush(ctx, "list", vals...).Err())
		fields := make([]any, 0, len(vals))
		for j := range vals[:5000] {
			fields = append(fields, "f"+strconv.Itoa(i/2+j), j)
		}
		require.NoError(t, c.HSet(ctx, "hash", fields...).Err())
	}
	list, err := c.LRange(ctx, "list", 0, -1).Result()
	require.NoError(t, err)
	require.Len(t, list, n)
	assert.Equal(t, strconv.Itoa(n-1), list[n-1])
	hash, err := c.HGetAll(ctx, "hash").Result()
	require.NoError(t, err)
	require.Len(t, hash, n/2)

	nested, err := c.Eval(ctx, "local t = {1} for i = 2, 30 do t = {t} end return t", nil).Result()
	require.NoError(t, err)
	depth := 0
	for v := nested; ; depth++ {
		a, ok := v.([]any)
		if !ok {
			assert.Equal(t, int64(1), v)
			break
		}
		require.Len(t, a, 1)
		v = a[0]
	}
	assert.Equal(t, 30, depth)

	require.NoError(t, c.XAdd(ctx, &goredis.XAddArgs{Stream: "s", ID: "1-1", Values: []string{"h", "v"}}).Err())
	streams, err := c.XRead(ctx, &goredis.XReadArgs{Streams: []string{"s", "0"}, Count: 10, Block: -1}).Result()
	require.NoError(t, err)
	require.Len(t, streams, 1)
	assert.Equal(t, map[string]any{"h": "v"}, streams[0].Messages[0].Values)

	sixteen := make([]string, maxReplyBytes/maxReplyString)
	for i := range sixteen {
		sixteen[i] = "big"
	}
	cmds, err := c.Pipelined(ctx, func(p goredis.Pipeliner) error {
		for range 2 {
			p.MGet(ctx, sixteen...)
		}
		return nil
	})
	require.NoError(t, err)
	for _, cmd := range cmds {
		vals, err := cmd.(*goredis.SliceCmd).Result()
		require.NoError(t, err)
		require.Len(t, vals, len(sixteen))
		for _, v := range vals {
			require.Len(t, v, len(big))
		}
	}
}

// replyStream is RESP2 and RESP3 replies of every type, one after another.
const replyStream = "+OK\r\n-ERR no\r\n:42\r\n:-7\r\n_\r\n,3.14\r\n#t\r\n(12345678901234567890\r\n" +
	"$5\r\nhe\r\nl\r\n$0\r\n\r\n$-1\r\n*-1\r\n!3\r\nerr\r\n=7\r\ntxt:abc\r\n" +
	"*0\r\n*3\r\n:1\r\n*2\r\n$1\r\na\r\n_\r\n%1\r\n+k\r\n~2\r\n:1\r\n:2\r\n" +
	"%2\r\n$1\r\nk\r\n*1\r\n:1\r\n+k2\r\n%0\r\n" +
	"|1\r\n+ttl\r\n:3\r\n$2\r\nhi\r\n" + // an attribute, then the value it annotates
	"*2\r\n|1\r\n+a\r\n:1\r\n:5\r\n:6\r\n" + // an attribute inside an array is no element
	"|0\r\n:7\r\n>2\r\n+message\r\n$1\r\nx\r\n"

// TestReplyScannerFollowsRepliesInAnyPieces feeds a stream of every reply
// type whole, a byte at a time, and split at every place: the scanner must
// accept it each time and end between replies with nothing counted; and it
// must refuse each hostile reply however it is split.
func TestReplyScannerFollowsRepliesInAnyPieces(t *testing.T) {
	atRest := func(t *testing.T, s *replyScanner) {
		t.Helper()
		assert.Equal(t, uint8(atType), s.state)
		assert.Zero(t, s.depth, "aggregates left open")
		assert.Zero(t, s.elements+s.bytes, "counts of a reply left over")
	}
	var whole replyScanner
	require.NoError(t, whole.feed([]byte(replyStream)))
	atRest(t, &whole)
	var bytewise replyScanner
	for i := range len(replyStream) {
		require.NoError(t, bytewise.feed([]byte{replyStream[i]}), "at byte %d", i)
	}
	atRest(t, &bytewise)
	for i := range len(replyStream) {
		var s replyScanner
		require.NoError(t, s.feed([]byte(replyStream[:i])))
		require.NoError(t, s.feed([]byte(replyStream[i:])))
		atRest(t, &s)
	}
	for _, tc := range hostileReplies {
		var s replyScanner
		reply := []byte(tc.reply)
		var err error
		for len(reply) > 0 && err == nil {
			k := min(len(reply), 7)
			err = s.feed(reply[:k])
			reply = reply[k:]
		}
		assert.ErrorContains(t, err, "reply refused", tc.name)
	}
}

// FuzzReplyScanner: whatever the bytes, the scanner never panics, and it
// reaches the same verdict fed whole or in two pieces.
func FuzzReplyScanner(f *testing.F) {
	f.Add([]byte(replyStream), 17)
	for _, tc := range hostileReplies {
		if len(tc.reply) < 64 {
			f.Add([]byte(tc.reply), 3)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, split int) {
		var whole, parts replyScanner
		errWhole := whole.feed(data)
		if split < 0 || split > len(data) {
			split = len(data) / 2
		}
		errParts := parts.feed(data[:split])
		if errParts == nil {
			errParts = parts.feed(data[split:])
		}
		if (errWhole == nil) != (errParts == nil) {
			t.Fatalf("fed whole: %v; in two pieces at %d: %v", errWhole, split, errParts)
		}
		if errWhole == nil {
			assert.Equal(t, whole.state, parts.state)
			assert.Equal(t, whole.depth, parts.depth)
			assert.Equal(t, whole.elements, parts.elements)
			assert.Equal(t, whole.bytes, parts.bytes)
		}
	})
}

// BenchmarkReplyScanner is what the scan adds to reading a reply: a rate
// limiter's batch of 16 checks (an array of 32 integers) and a key record
// (a string of 300 bytes).
func BenchmarkReplyScanner(b *testing.B) {
	batch := []byte("*32\r\n" + strings.Repeat(":1\r\n:123456\r\n", 16))
	record := []byte("$300\r\n" + strings.Repeat("r", 300) + "\r\n")
	for _, bc := range []struct {
		name  string
		reply []byte
	}{{"batch of 16", batch}, {"key record", record}} {
		b.Run(bc.name, func(b *testing.B) {
			var s replyScanner
			b.SetBytes(int64(len(bc.reply)))
			for b.Loop() {
				if err := s.feed(bc.reply); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestALateReplyNeverAnswersTheNextCall delays Redis's reply to one call
// past the call's timeout, then makes more calls at once, over plaintext
// and over TLS. go-redis checks a pooled plaintext connection for unread
// bytes before reusing it, but cannot look inside TLS; were a connection
// whose call timed out put back in the pool, the next call on it would
// read the late reply as its own (a key record of another key, a rate
// limit's counts for another check). Each later call must get its own
// value: the connection of a call that timed out is dropped, not reused.
func TestALateReplyNeverAnswersTheNextCall(t *testing.T) {
	for _, useTLS := range []bool{false, true} {
		t.Run(map[bool]string{false: "plaintext", true: "TLS"}[useTLS], func(t *testing.T) {
			srv := redistest.Start(t)
			for _, k := range []string{"late", "a", "b", "c"} {
				_, err := srv.Do("SET", k, "value of "+k)
				require.NoError(t, err)
			}
			// A timeout that a new connection's dial and TLS handshake fit
			// in under the race detector on two busy cores.
			o := Options{Timeout: 500 * time.Millisecond, PoolSize: 1}
			var rw *redistest.Rewriter
			if useTLS {
				certs := redistest.NewTLSFiles(t, t.TempDir())
				rw = redistest.StartRewriterTLS(t, srv.Addr, certs.ServerConfig())
				o.URL, o.TLS = "rediss://"+rw.Addr()+"/0", TLSOptions{CAFile: certs.CA}
			} else {
				rw = redistest.StartRewriter(t, srv.Addr)
				o.URL = "redis://" + rw.Addr() + "/0"
			}
			c := dial(t, o)
			ctx := t.Context()
			require.NoError(t, c.Ping(ctx).Err(), "the pool's one connection is open before the late reply")
			rw.Set(func(cmd []string, reply []byte) []byte {
				if strings.EqualFold(cmd[0], "GET") && cmd[1] == "late" {
					time.Sleep(time.Second)
				}
				return reply
			})
			for range 2 {
				require.Error(t, c.Get(ctx, "late").Err(), "the late reply comes after the timeout")
				for _, k := range []string{"a", "b", "c"} {
					got, err := c.Get(ctx, k).Result()
					require.NoError(t, err)
					require.Equal(t, "value of "+k, got, "a call read a reply that was not its own")
				}
			}
		})
	}
}

// TestAPageOfTheLargestKeysFitsTheBounds lists, in one page of the most a
// list call may ask for (1,000), keys as large as a key may be: a name of
// 128 bytes, 64 permissions of 128, 32 policies, 16 metadata entries of
// 64 and 256, 100 allowlist entries. That page is read with one MGET, the
// largest reply extauthz asks Redis for; it must pass the bounds with room
// to spare.
func TestAPageOfTheLargestKeysFitsTheBounds(t *testing.T) {
	srv := redistest.Start(t)
	c := dial(t, Options{URL: srv.URL(0), Timeout: 30 * time.Second})
	s := New(c, testPrefix)
	t.Cleanup(func() { _ = s.Close() })
	const page = 1000
	fill := func(prefix string, n int) string { return prefix + strings.Repeat("x", n-len(prefix)) }
	for i := range page {
		k, h, _ := newKey(t, "owner")
		k.Name = fill(fmt.Sprintf("key %d ", i), 128)
		k.Permissions = make([]string, 64)
		for j := range k.Permissions {
			k.Permissions[j] = fill(fmt.Sprintf("p%d:", j), 128)
		}
		k.Policies = make([]string, 32)
		for j := range k.Policies {
			k.Policies[j] = fill(fmt.Sprintf("policy-%d-", j), 63)
		}
		k.Meta = map[string]string{}
		for j := range 16 {
			k.Meta[fill(fmt.Sprintf("m%d", j), 64)] = fill("v", 256)
		}
		for j := range 100 {
			k.IPAllowlist = append(k.IPAllowlist, netip.MustParsePrefix(fmt.Sprintf("2001:db8:%x::/48", j)))
		}
		require.NoError(t, s.Create(t.Context(), k, h, 0))
	}
	records, err := c.Keys(t.Context(), testPrefix+"{keys}:h:*").Result()
	require.NoError(t, err)
	require.Len(t, records, page)
	size, err := c.StrLen(t.Context(), records[0]).Result()
	require.NoError(t, err)
	t.Logf("a record of the largest key: %d bytes; a page of %d: %.1f MiB of strings against the bound of %d MiB",
		size, page, float64(size*page)/(1<<20), maxReplyBytes>>20)
	assert.Less(t, size*page, int64(maxReplyBytes)/2, "a page of the largest keys is within half the bound")

	keys, _, err := s.List(t.Context(), keystore.ListOptions{Owner: "owner", Limit: page, Now: time.Now()})
	require.NoError(t, err)
	require.Len(t, keys, page)
	assert.Len(t, keys[0].Permissions, 64)
}
