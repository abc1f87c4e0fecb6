package gcfloor

import (
	"os"
	"runtime"
	"runtime/metrics"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
)

func TestPercent(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		live, floor uint64
		want        int
	}{
		{0, 16 * mib, 100},         // not measured yet
		{4 * mib, 16 * mib, 400},   // a small heap may grow by the floor
		{8 * mib, 16 * mib, 200},   // ...
		{16 * mib, 16 * mib, 100},  // from the floor on, plain GOGC=100
		{600 * mib, 16 * mib, 100}, // a big cache
		{1024, 16 * mib, 400},      // capped: the runtime's minimum goal is then 16 MiB
		{1024, 64 * mib, 1600},     // ...
		{3 * mib, 16 * mib, 400},   // ...
		{6 * mib, 16 * mib, 266},   // rounded down
		{1024, 2 * mib, 100},       // a floor below the runtime's minimum changes nothing
	} {
		assert.Equal(t, tc.want, Percent(tc.live, tc.floor), "live %d floor %d", tc.live, tc.floor)
	}
}

func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func TestStartRaisesGOGCWhileTheHeapIsSmallAndStopRestoresIt(t *testing.T) {
	t.Setenv("GOGC", "")
	// t.Setenv cannot unset; Start only looks whether it is set at all.
	unsetGOGC(t)
	before := gogc()
	runtime.GC() // a live-heap figure to start from
	stop := Start(1<<30, 10*time.Millisecond)
	assert.Eventually(t, func() bool { return gogc() > 100 }, 5*time.Second, 10*time.Millisecond,
		"a test binary's heap is far below 1 GiB: GOGC should be raised")
	stop()
	assert.Equal(t, before, gogc())
}

func TestStartLeavesAnOperatorsGOGCAlone(t *testing.T) {
	t.Setenv("GOGC", "100")
	before := gogc()
	runtime.GC()
	stop := Start(1<<30, time.Millisecond)
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, before, gogc())
	stop()
	assert.Equal(t, before, gogc())
}

// unsetGOGC removes GOGC from the environment for the rest of t (t.Setenv
// before it restores the old value afterwards).
func unsetGOGC(t *testing.T) {
	t.Helper()
	if err := os.Unsetenv("GOGC"); err != nil {
		t.Fatal(err)
	}
}

func TestTheLastStopRestores(t *testing.T) {
	t.Setenv("GOGC", "")
	unsetGOGC(t)
	before := gogc()
	runtime.GC()
	stop1 := Start(1<<30, 10*time.Millisecond)
	stop2 := Start(1<<30, 10*time.Millisecond)
	assert.Eventually(t, func() bool { return gogc() > 100 }, 5*time.Second, 10*time.Millisecond)
	stop1()
	stop1() // twice is once
	time.Sleep(30 * time.Millisecond)
	assert.Greater(t, gogc(), uint64(100), "the second server still runs")
	stop2()
	assert.Equal(t, before, gogc())
}
