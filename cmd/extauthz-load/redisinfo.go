package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Redis's own CPU time comes from its INFO cpu section: used_cpu_sys +
// used_cpu_user are getrusage of the whole redis-server process (every
// thread), in seconds to the microsecond, where /proc/<pid>/stat counts
// clock ticks of 10 ms. Read before and after a phase, the difference
// divided by the checks answered is what one check cost Redis, the figure
// that says how many checks one Redis can take.

// redisQuerier is a redis-server to ask (a redistest.Server).
type redisQuerier interface {
	QueryString(args ...string) (string, error)
}

// redisCPU returns the CPU time redis-server has used since it started.
func redisCPU(r redisQuerier) (time.Duration, error) {
	text, err := r.QueryString("INFO", "cpu")
	if err != nil {
		return 0, fmt.Errorf("redis INFO cpu: %w", err)
	}
	return parseInfoCPU(text)
}

// parseInfoCPU adds used_cpu_sys and used_cpu_user of an INFO cpu reply
// ("# CPU\r\nused_cpu_sys:1.234567\r\n...").
func parseInfoCPU(text string) (time.Duration, error) {
	var total time.Duration
	found := 0
	for line := range strings.Lines(text) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || (name != "used_cpu_sys" && name != "used_cpu_user") {
			continue
		}
		s, err := strconv.ParseFloat(value, 64)
		if err != nil || !(s >= 0) || math.IsInf(s, 0) {
			return 0, fmt.Errorf("redis INFO cpu: %s: %q is not a number of seconds", name, value)
		}
		total += time.Duration(math.Round(s*1e6)) * time.Microsecond
		found++
	}
	if found != 2 {
		return 0, fmt.Errorf("redis INFO cpu: no used_cpu_sys and used_cpu_user in %q", text)
	}
	return total, nil
}
