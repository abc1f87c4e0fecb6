package admin

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
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
