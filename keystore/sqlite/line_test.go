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
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	var mu sync.Mutex
	now := time.Now().UTC().Truncate(time.Millisecond)
	m := &keystore.Manager{Store: s, Hasher: hasher, Format: f, Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(time.Microsecond) // a millisecond holds them all
		return now
	}}
	ctx := t.Context()
	_, k, err := m.Create(ctx, keystore.Spec{Name: "line", Permissions: []string{"x"}}, "test")
	require.NoError(t, err)
	line := []*keystore.Key{k}
	for range 24 { // more than the Manager walks one by one, each in grace
		_, k, err = m.Rotate(ctx, k.ID, time.Hour, "test", nil)
		require.NoError(t, err)
		line = append(line, k)
	}
	ids := func(keys []*keystore.Key) (out []string) {
		for _, k := range keys {
			out = append(out, k.ID)
		}
		return out
	}
	for _, i := range []int{0, 3, 12, 24} {
		k, err := s.Get(ctx, line[i].ID)
		require.NoError(t, err)
		later, earlier, err := m.LiveLine(ctx, k)
		require.NoError(t, err)
		want := ids(line[i+1:]) // oldest first
		var wantEarlier []string
		for j := i - 1; j >= 0; j-- { // newest first
			wantEarlier = append(wantEarlier, line[j].ID)
		}
		assert.Equal(t, want, ids(later), "the keys after key %d", i)
		assert.Equal(t, wantEarlier, ids(earlier), "the keys before key %d", i)
	}
}

// LiveLine of a key in the middle of a line longer than the steps it
// follows back one by one (the key a keys revoke or a leak report names)
// lists the owner's keys to find the earlier ones, and must not count the
// keys after it among them: each would be named twice, as later and as
// earlier.
func TestTheMiddleKeyOfALongLineIsToldItsEarlierAndLaterKeysApart(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
	f, err := keystore.NewFormat("sk")
	require.NoError(t, err)
	now := time.Now().UTC()
	m := &keystore.Manager{Store: s, Hasher: hasher, Format: f, Now: func() time.Time {
		now = now.Add(2 * time.Millisecond)
		return now
	}}
	ctx := t.Context()
	_, k, err := m.Create(ctx, keystore.Spec{Name: "line", Permissions: []string{"x"}}, "test")
	require.NoError(t, err)
	line := []*keystore.Key{k}
	for range 20 {
		_, k, err = m.Rotate(ctx, k.ID, time.Hour, "test", nil)
		require.NoError(t, err)
		line = append(line, k)
	}
	ids := func(keys []*keystore.Key) (out []string) {
		for _, k := range keys {
			out = append(out, k.ID)
		}
		return out
	}
	const i = 18 // 18 keys before it (more than lineSteps), 2 after
	mid, err := s.Get(ctx, line[i].ID)
	require.NoError(t, err)
	later, earlier, err := m.LiveLine(ctx, mid)
	require.NoError(t, err)
	var wantEarlier []string
	for j := i - 1; j >= 0; j-- {
		wantEarlier = append(wantEarlier, line[j].ID)
	}
	assert.Equal(t, ids(line[i+1:]), ids(later), "later")
	assert.Equal(t, wantEarlier, ids(earlier), "earlier: key %s (after key %d) is reported as an earlier key", line[i+1].ID, i)
}
