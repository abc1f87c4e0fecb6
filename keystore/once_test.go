package keystore

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestIdempotencyKeysAreOnePrintableLine(t *testing.T) {
	for _, ok := range []string{"a", strings.Repeat("k", 255), "9f2c3e1a-0b7d-4e55-9a51-7c0f4c1d2e3b", "job 1 of 3", `!"#$%&'()*+,-./:;<=>?@[\]^_{|}~`} {
		assert.NoError(t, ValidateIdempotencyKey(ok), "%q", ok)
	}
	for _, bad := range []string{"", strings.Repeat("k", 256), " a", "a ", "a\tb", "a\nb", "a\x00b", "a\x7fb", "ключ", "a\u200bb"} {
		err := ValidateIdempotencyKey(bad)
		var fe *FieldError
		require.ErrorAs(t, err, &fe, "%q", bad)
		assert.Equal(t, "Idempotency-Key", fe.Field)
	}
}

func TestAnIdempotencyKeyIsItsOwners(t *testing.T) {
	assert.Equal(t, OnceToken("team-a", "k1"), OnceToken("team-a", "k1"))
	assert.NotEqual(t, OnceToken("team-a", "k1"), OnceToken("team-b", "k1"))
	assert.NotEqual(t, OnceToken("team-a", "k1"), OnceToken("team-a", "k2"))
	// The owner ends where the key begins: no owner and key run together.
	assert.NotEqual(t, OnceToken("team-a", "bc"), OnceToken("team-ab", "c"))
}

// createOnlyStore is a Store that can create, but not idempotently.
type createOnlyStore struct {
	Store   // the rest is not called
	created int
}

func (s *createOnlyStore) Create(context.Context, *Key, Hash, int) error {
	s.created++
	return nil
}

func TestAnIdempotentCreateNeedsAStoreThatCanKeepIt(t *testing.T) {
	s := &createOnlyStore{}
	f, err := NewFormat("sk")
	require.NoError(t, err)
	m := &Manager{Store: s, Hasher: NewHasher(nil), Format: f}

	_, _, err = m.Create(t.Context(), Spec{Name: "a", Once: &Once{Key: "k1"}}, "test")
	require.ErrorContains(t, err, "idempotent")
	_, _, err = m.Create(t.Context(), Spec{Name: "a", Once: &Once{Key: " k1"}}, "test")
	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Zero(t, s.created, "a create that cannot be kept to once is not made at all")

	_, _, err = m.Create(t.Context(), Spec{Name: "a"}, "test")
	require.NoError(t, err)
	assert.Equal(t, 1, s.created)
}
