package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// TestTwoReplicasShareOneCount sends one key's checks to two servers on one
// Redis, concurrently: together they allow exactly the key's N.
func TestTwoReplicasShareOneCount(t *testing.T) {
	r := redistest.Start(t)
	yaml := fmt.Sprintf("store: {backend: redis, redis: {url: %q}}\n%s", r.URL(0), testRoutes)
	a, b := startServer(t, yaml), startServer(t, yaml)
	key, _ := a.create(t, keystore.Spec{Name: "shared", Permissions: []string{"read:users"}, RateLimit: "25/m"})

	var allowed, limited atomic.Int64
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep := []*testServer{a, b}[w%2]
			for range 10 {
				resp, err := rep.client.Check(context.Background(), checkReq("GET", "/api/users", "10.0.0.1", map[string]string{"x-api-key": key}))
				if !assert.NoError(t, err) {
					return
				}
				if resp.GetOkResponse() != nil {
					allowed.Add(1)
					continue
				}
				hs := headerMap(resp.GetDeniedResponse().GetHeaders())
				assert.Equal(t, "rate_limited", hs["x-authz-code"])
				n, err := strconv.Atoi(hs["retry-after"])
				assert.NoError(t, err)
				assert.GreaterOrEqual(t, n, 1)
				limited.Add(1)
			}
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 25, allowed.Load(), "exactly N across both replicas")
	assert.EqualValues(t, 55, limited.Load())

	// The last allowed response said how many were left: none.
	resp := a.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
	require.NotNil(t, resp.GetDeniedResponse())
	hs := headerMap(resp.GetDeniedResponse().GetHeaders())
	assert.Equal(t, `"key";q=25;w=60`, hs["ratelimit-policy"])
	assert.Equal(t, "0", hs["x-ratelimit-remaining"])
}
