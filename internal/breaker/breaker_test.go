package breaker

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// clock is a settable clock for the breaker.
type clock struct{ t atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.t.Store(time.Unix(1_700_000_000, 0).UnixNano())
	return c
}

func (c *clock) now() time.Time      { return time.Unix(0, c.t.Load()) }
func (c *clock) add(d time.Duration) { c.t.Add(int64(d)) }

// enter asks b for a call that must not be a probe.
func enter(t *testing.T, b *Breaker) bool {
	t.Helper()
	ok, probe := b.Enter()
	require.False(t, probe)
	return ok
}

func TestItOpensAfterThresholdFailuresInARow(t *testing.T) {
	c := newClock()
	b := New(3, time.Second, c.now)
	for i := range 2 {
		require.True(t, enter(t, b), "failure %d", i)
		b.Failure(false)
	}
	require.True(t, enter(t, b))
	b.Success(false)
	assert.False(t, b.Open(), "a success starts the count again")
	for range 2 {
		require.True(t, enter(t, b))
		b.Failure(false)
	}
	assert.False(t, b.Open(), "two failures in a row are under the threshold")
	b.Failure(false)
	assert.True(t, b.Open())
	assert.False(t, enter(t, b), "open: no call goes to the store")
	c.add(time.Second - 1)
	assert.False(t, enter(t, b), "still open until Retry has passed")
}

func TestOneProbeAtATime(t *testing.T) {
	for _, tt := range []struct {
		name     string
		end      func(b *Breaker)
		open     bool // after the probe ends
		probeNow bool // whether the next call, at once, may probe
	}{
		{"a probe that succeeds closes it", func(b *Breaker) { b.Success(true) }, false, false},
		{"a probe that fails keeps it open for another Retry", func(b *Breaker) { b.Failure(true) }, true, false},
		{"an abandoned probe passes its turn on", func(b *Breaker) { b.Abandon(true) }, true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := newClock()
			b := New(1, time.Second, c.now)
			b.Failure(false)
			c.add(time.Second)
			ok, probe := b.Enter()
			require.True(t, ok)
			require.True(t, probe)
			ok, _ = b.Enter()
			require.False(t, ok, "one probe at a time")
			tt.end(b)
			assert.Equal(t, tt.open, b.Open())
			ok, probe = b.Enter()
			switch {
			case !tt.open:
				assert.True(t, ok)
				assert.False(t, probe)
			default:
				assert.Equal(t, tt.probeNow, ok)
				assert.Equal(t, tt.probeNow, probe)
			}
		})
	}
}

func TestAFailureWhileOpenKeepsItOpenFromThatFailure(t *testing.T) {
	c := newClock()
	b := New(1, time.Second, c.now)
	b.Failure(false)
	c.add(600 * time.Millisecond)
	b.Failure(false) // a call that entered before it opened
	c.add(600 * time.Millisecond)
	ok, _ := b.Enter()
	assert.False(t, ok, "Retry counts from the latest failure")
	c.add(400 * time.Millisecond)
	ok, probe := b.Enter()
	assert.True(t, ok)
	assert.True(t, probe)
}

func TestCloseKeepsTheCountOfFailures(t *testing.T) {
	c := newClock()
	b := New(3, time.Second, c.now)
	for range 3 {
		b.Failure(false)
	}
	require.True(t, b.Open())
	b.Close()
	assert.False(t, b.Open())
	assert.True(t, enter(t, b))
	b.Failure(false)
	assert.True(t, b.Open(), "the failures before Close still count")
}

func TestAZeroThresholdIsOne(t *testing.T) {
	b := New(0, time.Second, nil)
	b.Failure(false)
	assert.True(t, b.Open())
}

// Many callers at once: exactly one probe gets through per Retry.
func TestConcurrentCallersGetOneProbe(t *testing.T) {
	c := newClock()
	b := New(1, time.Second, c.now)
	b.Failure(false)
	c.add(time.Second)
	var probes atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 100 {
				if ok, probe := b.Enter(); ok {
					assert.True(t, probe)
					probes.Add(1)
				}
			}
		})
	}
	wg.Wait()
	assert.Equal(t, int64(1), probes.Load())
}
