package admin

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/redis"
)

// lostReplies is a Redis store whose next script call (a change's write),
// once armed, reaches Redis but whose reply comes back later than the
// client waits: the write is made, and the store reports it unavailable.
// It is a hook on the store's client, so that the reads a change makes
// before its write (the record, the writer's) go over a healthy link.
type lostReplies struct {
	keystore.Store
	proxy *faultproxy.Proxy
	armed atomic.Bool
	// cut, when set, cuts the link after the write instead of healing it,
	// so that the read that would tell whether it was made fails too.
	cut atomic.Bool
}

// slowLink is the delay each way: the write arrives within the client's
// read timeout (linkTimeout), its reply after it.
const (
	slowLink    = 600 * time.Millisecond
	linkTimeout = 900 * time.Millisecond
)

func (l *lostReplies) DialHook(next goredis.DialHook) goredis.DialHook { return next }

func (l *lostReplies) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// ProcessHook slows the link down for the write it was armed for, and
// heals (or cuts) it once the call has given up. A change's write is a
// script of seven keys or more; the change stream's poll, which the
// cache's watch sends meanwhile, is a script of one.
func (l *lostReplies) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook {
	return func(ctx context.Context, cmd goredis.Cmder) error {
		if isWrite(cmd) && l.armed.Swap(false) {
			l.proxy.SetDelay(slowLink)
			if l.cut.Load() {
				defer l.proxy.Drop()
			} else {
				defer l.proxy.Heal()
			}
		}
		return next(ctx, cmd)
	}
}

func isWrite(cmd goredis.Cmder) bool {
	args := cmd.Args()
	if n := cmd.Name(); (n != "evalsha" && n != "eval") || len(args) < 3 {
		return false
	}
	keys, _ := args[2].(int)
	return keys >= 7
}

// lossyRedis is a backend of Redis behind a fault proxy whose store, a
// lostReplies, it puts in *slow when it opens.
func lossyRedis(name string, slow **lostReplies) backend {
	return backend{name, func(t testing.TB) (keystore.Store, func()) {
		srv := redistest.Start(t)
		p := faultproxy.Start(t, srv.Addr)
		c, err := redis.Dial(redis.Options{URL: "redis://" + p.Addr() + "/0", ReadTimeout: linkTimeout})
		require.NoError(t, err)
		t.Cleanup(func() { _ = c.Close() })
		s := redis.New(c, "admintest:")
		t.Cleanup(func() { _ = s.Close() })
		*slow = &lostReplies{Store: s, proxy: p}
		c.AddHook(*slow)
		return *slow, srv.Stop
	}}
}

// loadScripts has the root make, change and rotate a key through the API,
// so that Redis knows the scripts of a key's changes: a script Redis does
// not know yet is sent twice (EVALSHA, then EVAL), and the lost reply must
// be the write's.
func loadScripts(e *env) {
	e.t.Helper()
	_, id := e.newKey(e.root, map[string]any{"name": "warm-up", "permissions": []string{"x"}})
	r := e.send("PATCH", "/v1/keys/"+id, e.root, `{"name": "warmed up"}`)
	require.Equal(e.t, http.StatusOK, r.status, "%s", r)
	r = e.send("POST", "/v1/keys/"+id+"/rotate", e.root, nil)
	require.Equal(e.t, http.StatusCreated, r.status, "%s", r)
}

// A change whose write reached the store but whose answer was lost (a
// reply later than the client's timeout) is a change made all the same:
// it must be audited, and answered as made, not left out of the audit
// behind a 503 while it is in effect.
func TestAChangeWhoseReplyWasLostIsStillAudited(t *testing.T) {
	var slow *lostReplies
	b := lossyRedis("redis behind a slow link", &slow)
	e := newEnv(t, b, envOptions{})
	loadScripts(e)
	_, victim := e.create(keystore.Spec{Name: "victim", Permissions: []string{"x"}})
	audited := func(kind, id string) bool {
		for _, c := range e.rec.Changes() {
			if c.kind == kind && c.keyID == id && c.actor == e.rootID {
				return true
			}
		}
		return false
	}

	t.Run("an update", func(t *testing.T) {
		slow.armed.Store(true)
		r := e.send("PATCH", "/v1/keys/"+victim, e.root, `{"name": "renamed"}`)
		assert.Equal(t, "renamed", e.stored(victim).Name, "the write was made")
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.True(t, audited(keystore.ChangeUpdated, victim), "and audited")
	})
	t.Run("a revocation", func(t *testing.T) {
		slow.armed.Store(true)
		r := e.send("DELETE", "/v1/keys/"+victim, e.root, nil)
		assert.NotNil(t, e.stored(victim).RevokedAt, "the write was made")
		require.Equal(t, http.StatusOK, r.status, "%s", r)
		assert.True(t, audited(keystore.ChangeRevoked, victim), "and audited")
	})
	t.Run("a rotation", func(t *testing.T) {
		_, old := e.create(keystore.Spec{Name: "old", Permissions: []string{"x"}})
		slow.armed.Store(true)
		r := e.send("POST", "/v1/keys/"+old+"/rotate", e.root, nil)
		assert.NotEmpty(t, e.stored(old).RotatedTo, "the write was made")
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		assert.NotEmpty(t, r.str(t, "key"), "the new key's secret is answered")
		assert.True(t, audited(keystore.ChangeRotated, r.str(t, "id")), "and audited")
	})
	t.Run("a create", func(t *testing.T) {
		slow.armed.Store(true)
		r := e.send("POST", "/v1/keys", e.root, `{"name": "made", "permissions": ["x"]}`)
		require.Equal(t, http.StatusCreated, r.status, "%s", r)
		id := r.str(t, "id")
		assert.Equal(t, "made", e.stored(id).Name)
		assert.NotEmpty(t, r.str(t, "key"))
		assert.True(t, audited(keystore.ChangeCreated, id), "and audited")
	})
}

// A change whose answer was lost, and whose read-back failed too, may be in
// effect though nobody can tell: it is answered 503, and audited all the
// same as a change of unknown outcome, never left out of the audit.
func TestAChangeWhoseReplyAndReadBackWereLostIsAuditedAsUnknown(t *testing.T) {
	var slow *lostReplies
	b := lossyRedis("redis behind a link that fails", &slow)
	e := newEnv(t, b, envOptions{})
	loadScripts(e)
	warmUp := len(e.rec.Changes())
	slow.cut.Store(true)
	_, victim := e.create(keystore.Spec{Name: "victim", Permissions: []string{"x"}})
	unsure := func(kind, id string) bool {
		for _, c := range e.rec.Unsure() {
			if c.kind == kind && (id == "" || c.keyID == id) && c.actor == e.rootID {
				return true
			}
		}
		return false
	}
	// send sends the request with the link set to lose the write's
	// answer and then fail, and heals it once answered.
	send := func(method, path string, body any) response {
		slow.armed.Store(true)
		defer slow.proxy.Heal()
		return e.send(method, path, e.root, body)
	}

	t.Run("an update", func(t *testing.T) {
		r := send("PATCH", "/v1/keys/"+victim, `{"name": "renamed"}`)
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
		assert.Equal(t, "renamed", e.stored(victim).Name, "the write was made")
		assert.True(t, unsure(keystore.ChangeUpdated, victim), "and audited as of unknown outcome")
	})
	t.Run("a revocation", func(t *testing.T) {
		r := send("DELETE", "/v1/keys/"+victim, nil)
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
		assert.NotNil(t, e.stored(victim).RevokedAt, "the write was made")
		assert.True(t, unsure(keystore.ChangeRevoked, victim), "and audited as of unknown outcome")
	})
	t.Run("a create", func(t *testing.T) {
		r := send("POST", "/v1/keys", `{"name": "made", "permissions": ["x"]}`)
		require.Equal(t, http.StatusServiceUnavailable, r.status, "%s", r)
		assert.True(t, unsure(keystore.ChangeCreated, ""), "audited as of unknown outcome")
	})
	for _, c := range e.rec.Changes()[warmUp:] {
		assert.NotEqual(t, e.rootID, c.actor, "no change of unknown outcome is audited as made: %+v", c)
	}
}
