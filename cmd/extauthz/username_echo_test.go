package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A Redis password written where store.redis.username goes — as
// "user:password" the way a url's userinfo holds it, or alone with
// password_env's variable unset — is never printed by config check (nor by
// serve's start-up error, which reads the same config and dials the same way).
func TestConfigCheckNeverPrintsAPasswordWrittenAsTheRedisUsername(t *testing.T) {
	const secret = "Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a"
	for _, redis := range []string{
		`{url: "redis://127.0.0.1:6379/0", username: "extauthz:` + secret + `", password_env: REVIEW_UNSET_PASSWORD}`,
		`{addrs: ["127.0.0.1:6379"], username: "` + secret + `", password_env: REVIEW_UNSET_PASSWORD}`,
	} {
		path := writeConfig(t, "development: true\nhashing: {pepper_env: REVIEW_UNSET_PEPPER}\nstore: {backend: redis, redis: "+redis+"}\n"+testRoutes)
		for _, args := range [][]string{{"config", "check", "--config", path}, {"serve", "--config", path}} {
			var out, errb bytes.Buffer
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // serve must not run: it fails on the config before
			code := run(ctx, args, &out, &errb)
			t.Logf("%v: exit %d: %s%s", args[:2], code, out.String(), errb.String())
			assert.NotContains(t, out.String()+errb.String(), "Zq8kR2pL", "%v prints the password written as the username", args[:2])
		}
	}
}
