package admin

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/faultproxy"
	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/redis"
)

// lostReplies is a Redis store whose next write, once armed, reaches Redis
// but whose reply comes back later than the client waits: the write is
// made, and the store reports it unavailable.
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

// slow, when armed, slows the link down and returns what heals it, for
// after the write; otherwise it does nothing.
func (l *lostReplies) slow() func() {
	if !l.armed.Swap(false) {
		return func() {}
	}
	l.proxy.SetDelay(slowLink)
	if l.cut.Load() {
		return l.proxy.Drop
	}
	return l.proxy.Heal
}

func (l *lostReplies) Create(ctx context.Context, k *keystore.Key, h keystore.Hash, maxPerOwner int) error {
	defer l.slow()()
	return l.Store.Create(ctx, k, h, maxPerOwner)
}

func (l *lostReplies) Update(ctx context.Context, id string, limit keystore.OwnerLimit, fn func(*keystore.Key) error) (*keystore.Key, error) {
	heal := func() {}
	defer func() { heal() }()
	return l.Store.Update(ctx, id, limit, func(k *keystore.Key) error {
		err := fn(k)
		if err == nil {
			heal = l.slow() // after the read, before the write
		}
		return err
	})
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
		return *slow, srv.Stop
	}}
}

// A change whose write reached the store but whose answer was lost (a
// reply later than the client's timeout) is a change made all the same:
// it must be audited, and answered as made, not left out of the audit
// behind a 503 while it is in effect. (A rotation is handled alike, but
// the store reads the old key over the same link just before it writes,
// so this link cannot lose only the write's answer.)
func TestAChangeWhoseReplyWasLostIsStillAudited(t *testing.T) {
	var slow *lostReplies
	b := lossyRedis("redis behind a slow link", &slow)
	e := newEnv(t, b, envOptions{})
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
	for _, c := range e.rec.Changes() {
		assert.NotEqual(t, e.rootID, c.actor, "no change of unknown outcome is audited as made: %+v", c)
	}
}
