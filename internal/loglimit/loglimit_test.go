package loglimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

// Burst lines a window pass; the rest are counted, and the first line of
// the next window carries the count.
func TestALimiterAdmitsItsBurstAndCountsTheRest(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(3, time.Minute, func() time.Time { return now })
	for range 3 {
		left, ok := l.Admit()
		assert.True(t, ok)
		assert.Zero(t, left)
	}
	for range 5 {
		_, ok := l.Admit()
		assert.False(t, ok)
	}
	now = now.Add(59 * time.Second)
	_, ok := l.Admit()
	assert.False(t, ok, "still the same window")
	now = now.Add(time.Second)
	left, ok := l.Admit()
	assert.True(t, ok)
	assert.Equal(t, 6, left)
	left, ok = l.Admit()
	assert.True(t, ok)
	assert.Zero(t, left)
}
