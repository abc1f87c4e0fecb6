// Package testproc holds what tests that run their own binary as a child
// process share.
package testproc

import (
	"os"
	"strings"
)

// NoRaceExitSleep makes the child processes a test binary starts from now
// on exit as soon as they are done when they are built with the race
// detector. By default its runtime sleeps a second at every exit
// (GORACE's atexit_sleep_ms, a grace period for other threads' reports),
// and the command-line tests start hundreds of processes: without it that
// second was most of their time in CI. A race a child finds is still
// reported, and still exits it with status 66, before it exits. An
// atexit_sleep_ms already set in GORACE is left as it is.
func NoRaceExitSleep() {
	v := os.Getenv("GORACE")
	if strings.Contains(v, "atexit_sleep_ms") {
		return
	}
	os.Setenv("GORACE", strings.TrimSpace(v+" atexit_sleep_ms=0"))
}
