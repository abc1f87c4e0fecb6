package admin

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// TestEveryAnswerIsToldByRouteAndCode: what the metrics count. Labels are
// the route's pattern, never the path, which may hold anything a caller
// pasted into it, and the answer's code.
func TestEveryAnswerIsToldByRouteAndCode(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	secret, id := e.newKey(e.root, map[string]any{"name": "reader", "permissions": []string{"keys:read"}})
	require.Equal(t, []string{"POST /v1/keys ok"}, e.rec.Answers())
	for _, tt := range []struct {
		method, path, key string
		body              any
		status            int
		want              string
	}{
		{"GET", "/v1/keys", e.root, nil, http.StatusOK, "GET /v1/keys ok"},
		{"HEAD", "/v1/keys/" + id, e.root, nil, http.StatusOK, "GET /v1/keys/{id} ok"},
		{"GET", "/v1/keys/" + id, "", nil, http.StatusUnauthorized, "GET /v1/keys/{id} missing_key"},
		{"POST", "/v1/keys", secret, map[string]any{"name": "x", "permissions": []string{"none"}}, http.StatusForbidden, "POST /v1/keys permission_denied"},
		{"POST", "/v1/keys", e.root, map[string]any{"name": ""}, http.StatusBadRequest, "POST /v1/keys bad_request"},
		{"DELETE", "/v1/keys/key_00000000000000000000", e.root, nil, http.StatusNotFound, "DELETE /v1/keys/{id} not_found"},
		{"GET", "/v1/keys/sk_pasted_secret/rotate", e.root, nil, http.StatusMethodNotAllowed, "unmatched method_not_allowed"},
		{"GET", "/v1/nothing", e.root, nil, http.StatusNotFound, "unmatched not_found"},
		{"GET", "/v1//keys", e.root, nil, http.StatusNotFound, "unmatched not_found"},
	} {
		r := e.send(tt.method, tt.path, tt.key, tt.body)
		require.Equal(t, tt.status, r.status, "%s %s: %s", tt.method, tt.path, r)
		assert.Equal(t, []string{tt.want}, e.rec.Answers(), "%s %s", tt.method, tt.path)
	}
}

// heldReads is a store whose reads of one id wait for their caller to go.
type heldReads struct {
	keystore.Store
	id string
}

func (s heldReads) Get(ctx context.Context, id string) (*keystore.Key, error) {
	if id == s.id {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	return s.Store.Get(ctx, id)
}

// A client that leaves before its answer is counted as answered with none.
func TestAnAnswerNobodyWaitedForIsToldAsNone(t *testing.T) {
	held, err := keystore.NewID(time.Now())
	require.NoError(t, err)
	e := newEnv(t, backends[0], envOptions{readStore: func(s keystore.Store) keystore.Store { return heldReads{s, held} }})
	e.rec.Answers()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/keys/"+held, nil)
	require.NoError(t, err)
	req.Header.Set("x-api-key", e.root)
	_, err = http.DefaultClient.Do(req)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Eventually(t, func() bool {
		return slices.Contains(e.rec.Answers(), "GET /v1/keys/{id} none")
	}, 5*time.Second, 10*time.Millisecond)
}
