package ratelimit

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/extauthz/extauthz/internal/redistest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, redistest.LeakOptions()...) }

// t0 is a start time on a whole second, so sub-windows of every test rate
// start on it.
var t0 = time.Unix(1_700_000_000, 0)

// fakeClock is the injected clock of the tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// assertNoIntervalOverN fails unless every closed interval of length w holds
// at most n of the sorted times: the (n+1)th allowed after any allowed one
// must come more than w later.
func assertNoIntervalOverN(t *testing.T, times []time.Time, n int, w time.Duration) {
	t.Helper()
	for i := 0; i+n < len(times); i++ {
		if d := times[i+n].Sub(times[i]); d <= w {
			t.Fatalf("%d allowed within %v (from %v to %v); the limit is %d per %v",
				n+1, d, times[i].Sub(t0), times[i+n].Sub(t0), n, w)
		}
	}
}
