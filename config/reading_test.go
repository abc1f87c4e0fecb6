package config

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A value may hold a backquote of its own: the decoder's message is cut from
// its first backquote to its last, so that no part of the value shows.
func TestADecoderErrorQuotesNoPartOfAValueWithABackquote(t *testing.T) {
	_, err := Parse([]byte("store: {backend: redis, redis: {url: !!int \"redis://:hunter`2secretTail@h:6379/0\"}}"))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "secretTail", "the message quotes part of the value")
}

// 01 to 07 (and 08, 09, which YAML 1.1 reads as decimal) are the same
// number to both YAML versions, and are taken.
func TestANumberBothVersionsReadAlikeIsTaken(t *testing.T) {
	for _, text := range []string{
		"client_ip: {xff_trusted_hops: 01}\n",
		"client_ip: {xff_trusted_hops: 07}\n",
		"client_ip: {xff_trusted_hops: 09}\n",
	} {
		_, err := Parse([]byte(text))
		assert.NoError(t, err, "%q", text)
	}
}

// A file of empty sections (what a template renders when the values it
// fills them with are empty) comes to the defaults, and sets nothing.
func TestAFileOfEmptySectionsSetsNothing(t *testing.T) {
	def, err := Parse(nil)
	require.NoError(t, err)
	for _, text := range []string{
		"listen: {}\n",
		"# rendered by the chart\nlisten: {}\nstore: {}\ncache: {}\n",
	} {
		path := filepath.Join(t.TempDir(), "extauthz.yaml")
		require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
		cfg, setsSomething, err := LoadSetting(path)
		require.NoError(t, err, "%q", text)
		require.True(t, reflect.DeepEqual(cfg, def), "%q decodes to the defaults", text)
		assert.False(t, setsSomething, "%q sets nothing: it is the defaults, no routes, every request denied", text)
	}
}
