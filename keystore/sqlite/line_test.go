package sqlite

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// A line of rotations made within one millisecond, longer than the
// Manager walks key by key, is found in the order it was made: an id's
// time is whole milliseconds, so within one its random part must not
// decide which key is newer.
func TestALineMadeInOneMillisecondIsToldInTheOrderItWasMade(t *testing.T) {
	// 24 rotations: more than the Manager walks one by one, each in grace,
	// a microsecond apart, so that a millisecond holds them all.
	m, s, line := rotatedLine(t, time.Microsecond, 24)
	for _, i := range []int{0, 3, 12, 24} {
		assertLineAround(t, m, s, line, i)
	}
}

// LiveLine of a key in the middle of a line longer than the steps it
// follows back one by one (the key a keys revoke or a leak report names)
// lists the owner's keys to find the earlier ones, and must not count the
// keys after it among them: each would be named twice, as later and as
// earlier.
func TestTheMiddleKeyOfALongLineIsToldItsEarlierAndLaterKeysApart(t *testing.T) {
	m, s, line := rotatedLine(t, 2*time.Millisecond, 20)
	assertLineAround(t, m, s, line, 18) // 18 keys before it (more than lineSteps), 2 after
}

// rotatedLine makes a key and rotates it the given number of times, each
// with an hour's grace, on a clock that moves step at each reading; it
// returns the line oldest first.
func rotatedLine(t *testing.T, step time.Duration, rotations int) (*keystore.Manager, *Store, []*keystore.Key) {
	t.Helper()
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Millisecond)
	m := &keystore.Manager{Store: s, Hasher: hasher, Format: f, Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(step)
		return now
	}}
	_, k, err := m.Create(t.Context(), keystore.Spec{Name: "line", Permissions: []string{"x"}}, "test")
	require.NoError(t, err)
	line := []*keystore.Key{k}
	for range rotations {
		_, k, err = m.Rotate(t.Context(), k.ID, time.Hour, "test", nil)
		require.NoError(t, err)
		line = append(line, k)
	}
	return m, s, line
}

// assertLineAround checks LiveLine of line[i]: the keys after it, oldest
// first, and the keys before it, newest first, each once.
func assertLineAround(t *testing.T, m *keystore.Manager, s *Store, line []*keystore.Key, i int) {
	t.Helper()
	ids := func(keys []*keystore.Key) (out []string) {
		for _, k := range keys {
			out = append(out, k.ID)
		}
		return out
	}
	k, err := s.Get(t.Context(), line[i].ID)
	require.NoError(t, err)
	later, earlier, err := m.LiveLine(t.Context(), k)
	require.NoError(t, err)
	var wantEarlier []string
	for j := i - 1; j >= 0; j-- {
		wantEarlier = append(wantEarlier, line[j].ID)
	}
	assert.Equal(t, ids(line[i+1:]), ids(later), "the keys after key %d", i)
	assert.Equal(t, wantEarlier, ids(earlier), "the keys before key %d", i)
}
