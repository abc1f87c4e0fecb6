package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
	"github.com/extauthz/extauthz/keystore/redis"
)

// heldWrites, once armed, holds the next write (create, update or rotate)
// until the test lets it go: the time a request spends between the API's
// second read of its caller and the store's write, stretched so that the
// test can change the caller within it.
type heldWrites struct {
	keystore.Store
	armed   atomic.Bool
	reached chan struct{}
	release chan struct{}
}

func (h *heldWrites) hold(context.Context) {
	if h.armed.Swap(false) {
		h.reached <- struct{}{}
		<-h.release
	}
}

func (h *heldWrites) Create(ctx context.Context, k *keystore.Key, hash keystore.Hash, maxPerOwner int) error {
	h.hold(ctx)
	return h.Store.Create(ctx, k, hash, maxPerOwner)
}

func (h *heldWrites) Update(ctx context.Context, id string, limit keystore.OwnerLimit, fn func(*keystore.Key) error) (*keystore.Key, error) {
	h.hold(ctx)
	return h.Store.Update(ctx, id, limit, fn)
}

func (h *heldWrites) Rotate(ctx context.Context, id string, next *keystore.Key, hash keystore.Hash, graceEnd time.Time) (*keystore.Key, error) {
	h.hold(ctx)
	return h.Store.Rotate(ctx, id, next, hash, graceEnd)
}

// A writer revoked, or stripped of keys:write, while its change is in
// flight (past the API's read of it, before the store's write) makes no
// change: its create, revocation or rotation is answered as it would be
// now (401 revoked_key, 403 permission_denied), audited as refused, and
// nothing is stored. A writer changed in a way that still allows the call
// (renamed) hears 409 key_changed and may send it again. On both stores.
func TestAWriterChangedWhileItsChangeIsInFlightChangesNothing(t *testing.T) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			held := &heldWrites{reached: make(chan struct{}), release: make(chan struct{})}
			e := newEnv(t, b, envOptions{
				writeStore: func(s keystore.Store) keystore.Store { held.Store = s; return held },
				readStore:  func(s keystore.Store) keystore.Store { return s },
			})
			for _, tc := range []struct {
				name   string
				change map[string]any // PATCH of the writer, by root
				status int
				code   string
			}{
				{"revoked", nil, http.StatusUnauthorized, "revoked_key"},
				{"narrowed", map[string]any{"permissions": []string{"keys:read"}}, http.StatusForbidden, "permission_denied"},
				{"renamed", map[string]any{"name": "renamed"}, http.StatusConflict, "key_changed"},
			} {
				t.Run(tc.name, func(t *testing.T) {
					for _, call := range []struct{ name, method, path string }{
						{"create", "POST", "/v1/keys"},
						{"revoke", "DELETE", "/v1/keys/"},
						{"rotate", "POST", "/v1/keys/"},
					} {
						writer, writerID := e.newKey(e.root, map[string]any{"name": "writer", "owner": "acme", "permissions": []string{"keys:write", "read:x"}})
						_, victim := e.newKey(e.root, map[string]any{"name": "victim", "owner": "acme", "permissions": []string{"read:x"}})
						path, body := call.path, any(map[string]any{"name": "minted", "permissions": []string{"read:x"}})
						switch call.name {
						case "revoke":
							path, body = path+victim, nil
						case "rotate":
							path, body = path+victim+"/rotate", nil
						}
						held.armed.Store(true)
						answered := make(chan response, 1)
						go func() { answered <- e.send(call.method, path, writer, body) }()
						<-held.reached // the writer was read again and found allowed

						if tc.change == nil {
							r := e.send("DELETE", "/v1/keys/"+writerID, e.root, nil)
							require.Equal(t, http.StatusOK, r.status, "%s", r)
						} else {
							r := e.send("PATCH", "/v1/keys/"+writerID, e.root, tc.change)
							require.Equal(t, http.StatusOK, r.status, "%s", r)
						}
						changes := len(e.rec.Changes()) // the root's change among them
						e.rec.AuthFailures()
						held.release <- struct{}{}
						r := <-answered

						require.Equal(t, tc.status, r.status, "%s by a writer %s meanwhile: %s", call.name, tc.name, r)
						assert.Equal(t, tc.code, r.code(t))
						assert.Len(t, e.rec.Changes(), changes, "%s by a writer %s meanwhile: nothing changed", call.name, tc.name)
						failures := e.rec.AuthFailures()
						require.Len(t, failures, 1, "the refusal is audited")
						assert.Equal(t, writerID, failures[0].KeyID)
						assert.Equal(t, tc.status, failures[0].Status)
						v, err := e.store.Get(t.Context(), victim)
						require.NoError(t, err)
						assert.Nil(t, v.RevokedAt, "the victim is not revoked")
						assert.Empty(t, v.RotatedTo, "the victim is not rotated")
						keys, _, err := e.store.List(t.Context(), keystore.ListOptions{Owner: "acme", Limit: 1000})
						require.NoError(t, err)
						for _, k := range keys {
							assert.NotEqual(t, "minted", k.Name, "no key was made")
						}
					}
				})
			}
		})
	}
}

// resetAfterWrite, once armed, lets the next change script (EVALSHA of
// seven keys or more) reach Redis and run, then resets the connection
// before its reply is read: the reply is lost, as on a connection a
// network blip or a proxy closes mid-answer. go-redis retries the command
// (DefaultMaxRetries) on a fresh connection, which gets its answer.
type resetAfterWrite struct {
	armed atomic.Bool
	lost  atomic.Int32
}

type resetConn struct {
	net.Conn
	h    *resetAfterWrite
	lose atomic.Bool
}

func (c *resetConn) Write(b []byte) (int, error) {
	if isChangeScript(b) && c.h.armed.Swap(false) {
		c.lose.Store(true)
	}
	return c.Conn.Write(b)
}

func (c *resetConn) Read(b []byte) (int, error) {
	if c.lose.Swap(false) {
		// The script ran: its reply arrives. It is lost with the connection.
		if _, err := c.Conn.Read(b); err != nil {
			return 0, err
		}
		c.h.lost.Add(1)
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	return c.Conn.Read(b)
}

// isChangeScript reports whether b, a RESP command, is EVALSHA or EVAL of
// seven keys or more (a change's write, as isWrite tells one).
func isChangeScript(b []byte) bool {
	parts := strings.Split(string(b), "\r\n")
	if len(parts) < 7 {
		return false
	}
	if n := strings.ToLower(parts[2]); n != "evalsha" && n != "eval" {
		return false
	}
	keys, err := strconv.Atoi(parts[6])
	return err == nil && keys >= 7
}

func (h *resetAfterWrite) DialHook(next goredis.DialHook) goredis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &resetConn{Conn: c, h: h}, nil
	}
}

func (h *resetAfterWrite) ProcessHook(next goredis.ProcessHook) goredis.ProcessHook { return next }

func (h *resetAfterWrite) ProcessPipelineHook(next goredis.ProcessPipelineHook) goredis.ProcessPipelineHook {
	return next
}

// A keys:write caller's change of its own key (revoking itself, rotating
// itself, renaming itself) whose reply Redis sent but the connection lost
// is sent again by go-redis, and the second try finds the caller's record
// changed, by the first. That is a lost answer, read back and answered and
// audited as made, as the same loss on a change of another key is: taken
// for the caller changed meanwhile, it was answered "nothing was changed"
// and not audited, and a rotation's new key was live with its secret lost.
func TestAChangeOfTheCallersOwnKeyWhoseReplyWasLostIsAnsweredAsMade(t *testing.T) {
	var h *resetAfterWrite
	b := backend{"redis, a connection reset after a write", func(t testing.TB) (keystore.Store, func()) {
		srv := redistest.Start(t)
		c, err := redis.Dial(redis.Options{URL: srv.URL(0)})
		require.NoError(t, err)
		h = &resetAfterWrite{}
		c.AddHook(h)
		t.Cleanup(func() { _ = c.Close() })
		s := redis.New(c, "admintest:")
		t.Cleanup(func() { _ = s.Close() })
		return s, srv.Stop
	}}
	e := newEnv(t, b, envOptions{})
	loadScripts(e)
	audited := func(kind, id, actor string) bool {
		for _, c := range e.rec.Changes() {
			if c.kind == kind && c.keyID == id && c.actor == actor {
				return true
			}
		}
		return false
	}
	writer := func() (secret, id string) {
		return e.newKey(e.root, map[string]any{"name": "self", "owner": "acme", "permissions": []string{"keys:write", "read:x"}})
	}

	t.Run("a writer revoking itself", func(t *testing.T) {
		secret, id := writer()
		h.armed.Store(true)
		r := e.send("DELETE", "/v1/keys/"+id, secret, nil)
		require.EqualValues(t, 1, h.lost.Swap(0), "the write's reply was lost")
		assert.NotNil(t, e.stored(id).RevokedAt, "the revocation was made")
		assert.Equal(t, http.StatusOK, r.status, "answered as made: %s", r)
		assert.True(t, audited(keystore.ChangeRevoked, id, id), "and audited")
	})
	t.Run("a writer rotating itself", func(t *testing.T) {
		secret, id := writer()
		h.armed.Store(true)
		r := e.send("POST", "/v1/keys/"+id+"/rotate", secret, nil)
		require.EqualValues(t, 1, h.lost.Swap(0), "the write's reply was lost")
		next := e.stored(id).RotatedTo
		assert.NotEmpty(t, next, "the rotation was made")
		if next != "" {
			assert.Nil(t, e.stored(next).RevokedAt, "its new key is live")
			assert.True(t, audited(keystore.ChangeRotated, next, id), "and audited")
		}
		require.Equal(t, http.StatusCreated, r.status, "answered as made, with the new key's secret: %s", r)
		assert.NotEmpty(t, r.str(t, "key"))
	})
	t.Run("a writer renaming itself", func(t *testing.T) {
		secret, id := writer()
		h.armed.Store(true)
		r := e.send("PATCH", "/v1/keys/"+id, secret, `{"name": "renamed"}`)
		require.EqualValues(t, 1, h.lost.Swap(0), "the write's reply was lost")
		assert.Equal(t, "renamed", e.stored(id).Name, "the update was made")
		assert.Equal(t, http.StatusOK, r.status, "answered as made: %s", r)
		assert.True(t, audited(keystore.ChangeUpdated, id, id), "and audited")
	})
	// The same loss on a change of another key is answered as made.
	t.Run("control: the root revoking another key", func(t *testing.T) {
		_, id := writer()
		h.armed.Store(true)
		r := e.send("DELETE", "/v1/keys/"+id, e.root, nil)
		require.EqualValues(t, 1, h.lost.Swap(0), "the write's reply was lost")
		assert.NotNil(t, e.stored(id).RevokedAt, "the revocation was made")
		assert.Equal(t, http.StatusOK, r.status, "answered as made: %s", r)
		assert.True(t, audited(keystore.ChangeRevoked, id, e.rootID), "and audited")
	})
	t.Run("control: the root rotating another key", func(t *testing.T) {
		_, id := writer()
		h.armed.Store(true)
		r := e.send("POST", "/v1/keys/"+id+"/rotate", e.root, nil)
		require.EqualValues(t, 1, h.lost.Swap(0), "the write's reply was lost")
		require.Equal(t, http.StatusCreated, r.status, "answered as made: %s", r)
		assert.Equal(t, r.str(t, "id"), e.stored(id).RotatedTo)
		assert.True(t, audited(keystore.ChangeRotated, r.str(t, "id"), e.rootID), "and audited")
	})
}
