package main

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/authz/forwardauth"
)

// The shipped traefik.yml sends extauthz only the headers in
// authRequestHeaders (and the X-Forwarded-* it sets). Without Cookie among
// them, a key in the default config's api_key cookie was never seen, so
// never refused, and Traefik passed it on to the upstream. Traefik is not
// run here: its ForwardAuth request is made as it makes it, from the file.
func TestTraefikShowsExtauthzTheCookie(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(proxiesDir, "traefik.yml"))
	require.NoError(t, err)
	var f struct {
		HTTP struct {
			Middlewares map[string]struct {
				ForwardAuth *struct {
					AuthRequestHeaders []string `json:"authRequestHeaders"`
				} `json:"forwardAuth"`
			} `json:"middlewares"`
		} `json:"http"`
	}
	require.NoError(t, yaml.Unmarshal(b, &f))
	fa := f.HTTP.Middlewares["extauthz"].ForwardAuth
	require.NotNil(t, fa)

	fx := authztest.New(t, nil) // the default configuration's sources
	s := forwardauth.NewServer(fx.Authz, forwardauth.Mode{Prefix: "/authz", Original: "x-forwarded", XFFHops: 1}, nil)
	srv := httptest.NewServer(s.Handler(http.NotFoundHandler()))
	t.Cleanup(srv.Close)

	// The client's request, as Traefik receives it.
	client := http.Header{}
	client.Set("X-Api-Key", fx.Good)
	client.Set("Cookie", "theme=dark; api_key="+fx.Admin)
	// ForwardAuth's request: the listed headers only, and its own X-Forwarded-*.
	req, err := http.NewRequest("GET", srv.URL+"/authz", nil)
	require.NoError(t, err)
	for _, name := range fa.AuthRequestHeaders {
		for _, v := range client.Values(name) {
			req.Header.Add(name, v)
		}
	}
	req.Header.Set("X-Forwarded-Method", "GET")
	req.Header.Set("X-Forwarded-Uri", "/api/users")
	req.Header.Set("X-Forwarded-For", "10.0.0.7")
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, 400, resp.StatusCode, "a key in the api_key cookie behind the shipped Traefik config")
	assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))
}
