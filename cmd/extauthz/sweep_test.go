package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/syncbuf"
	"github.com/extauthz/extauthz/keystore"
)

func TestTheServerPurgesKeysDeadLongerThanTheRetention(t *testing.T) {
	for _, backend := range []string{"embedded", "redis"} {
		t.Run(backend, func(t *testing.T) {
			logs := &syncbuf.Buffer{}
			path := writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: off}\naudit: {sink: none}\n"+
				"keys: {retention: 1h}\n"+storeYAML(t, backend))
			ts := startServerOut(t, path, serverOutput{logs: logs, audit: &syncbuf.Buffer{}}, func(s *server) { s.sweepEvery = 20 * time.Millisecond })

			// Keys made and revoked as if hours ago, through a manager whose
			// clock is set back.
			now := time.Now()
			past := &keystore.Manager{Store: ts.mgr.Store, Hasher: ts.mgr.Hasher, Format: ts.mgr.Format, MaxPerOwner: ts.mgr.MaxPerOwner}
			at := now.Add(-3 * time.Hour)
			past.Now = func() time.Time { return at }
			_, longDead, err := past.Create(context.Background(), keystore.Spec{Name: "long dead", Permissions: []string{"x"}}, "test")
			require.NoError(t, err)
			at = now.Add(-2 * time.Hour)
			_, err = past.Revoke(context.Background(), longDead.ID, "test")
			require.NoError(t, err)
			_, recentlyDead := ts.create(t, keystore.Spec{Name: "recently dead", Permissions: []string{"x"}})
			_, err = ts.mgr.Revoke(context.Background(), recentlyDead.ID, "test")
			require.NoError(t, err)
			_, live := ts.create(t, keystore.Spec{Name: "live", Permissions: []string{"x"}})

			require.Eventually(t, func() bool {
				_, err := ts.mgr.Store.Get(context.Background(), longDead.ID)
				return err != nil
			}, 5*time.Second, 20*time.Millisecond, "the key dead for 2h is purged with a retention of 1h")
			_, err = ts.mgr.Store.Get(context.Background(), longDead.ID)
			require.ErrorIs(t, err, keystore.ErrNotFound)
			for _, k := range []*keystore.Key{recentlyDead, live} {
				_, err := ts.mgr.Store.Get(context.Background(), k.ID)
				assert.NoError(t, err, "%s is kept", k.Name)
			}
			require.Eventually(t, func() bool { return strings.Contains(logs.String(), `"dead_purged":1`) }, time.Second, 10*time.Millisecond,
				"the sweep says what it purged: %s", logs.String())
		})
	}
}

func TestReplicasShareEachKeysAdminRateLimit(t *testing.T) {
	store := storeYAML(t, "redis")
	var urls []string
	var first *testServer
	for range 2 {
		ts := startServerFile(t, writeConfig(t, "listen: {grpc: \"127.0.0.1:0\", http: \"127.0.0.1:0\", admin: \"127.0.0.1:0\"}\n"+
			"audit: {sink: none}\nadmin: {rate_limit: 3/m}\n"+store))
		if first == nil {
			first = ts
		}
		urls = append(urls, ts.adminURL)
	}
	secret, _ := first.create(t, keystore.Spec{Name: "ops", Permissions: []string{"keys:read"}})
	get := func(url string) *http.Response {
		req, err := http.NewRequest("GET", url+"/v1/keys", nil)
		require.NoError(t, err)
		req.Header.Set("x-api-key", secret)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}
	for i, url := range []string{urls[0], urls[1], urls[0]} {
		assert.Equal(t, http.StatusOK, get(url).StatusCode, "request %d", i+1)
	}
	resp := get(urls[1])
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "the fourth request, whichever replica gets it")
	assert.Equal(t, "rate_limited", resp.Header.Get("x-authz-code"))
	assert.NotEmpty(t, resp.Header.Get("Retry-After"))
	assert.Equal(t, `"admin";q=3;w=60`, resp.Header.Get("RateLimit-Policy"))
}
