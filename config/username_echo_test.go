package config

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// store.redis.username is refused when it holds ':' or '@', which is what
// a login written there looks like ("user:password", as in a url's
// userinfo, or "user:password@host"): the refusal names the field and
// never quotes it, or config check's output and serve's start-up error
// would print the password.
func TestALoginWrittenWhereTheUsernameGoesIsNeverEchoed(t *testing.T) {
	const secret = "Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a"
	for _, text := range []string{
		"store: {backend: redis, redis: {username: \"extauthz:" + secret + "\", password_env: REDIS_PASSWORD}}",
		"store: {backend: redis, redis: {addrs: [\"redis:6379\"], username: \"extauthz:" + secret + "@redis\", password_env: REDIS_PASSWORD}}",
	} {
		_, err := Parse([]byte(text))
		require.Error(t, err, text)
		assert.Contains(t, err.Error(), "store.redis.username")
		assert.NotContains(t, err.Error(), "Zq8kR2pL", "the error quotes the password written into the username")
	}
}
