package redis

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// With addrs, a Redis password written where the user name goes (username:
// <the password>, password_env's variable empty or unset) is never quoted
// by the dialer's error, which serve prints at start, as the url form of
// the same slip (redis://SECRET@host) is not (urlOptions).
func TestAPasswordWrittenAsTheUsernameIsNeverEchoed(t *testing.T) {
	const secret = "Zq8kR2pLx9vW4mT7nB3cY6hJ1sD5fG0a"
	_, err := Dial(Options{Addrs: []string{"127.0.0.1:6379"}, Username: secret})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "Zq8kR2pL", "the dialer's error quotes the username")
	_, err = Dial(Options{Addrs: []string{"127.0.0.1:26379"}, MasterName: "m", SentinelUsername: secret})
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "Zq8kR2pL", "the dialer's error quotes the sentinel username")
}
