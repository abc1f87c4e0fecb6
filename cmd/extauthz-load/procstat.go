package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The CPU a process used comes from /proc/<pid>/stat: utime + stime, in
// clock ticks, summed over all its threads. Read before and after a run, the
// difference divided by the checks answered is the CPU one check costs,
// everything included: gRPC, HTTP/2, the decision, the garbage collector.

// cpuTicks returns utime+stime of pid from /proc/<pid>/stat.
func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	u, s, err := parseStat(b)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return u + s, nil
}

// parseStat returns utime and stime (fields 14 and 15) of a /proc/<pid>/stat
// line. The command name (field 2) is in parentheses and may itself contain
// spaces and parentheses, so fields are counted from the last ')'.
func parseStat(b []byte) (utime, stime uint64, err error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, 0, fmt.Errorf("no ')' after the command name")
	}
	f := strings.Fields(string(b[end+1:]))
	// f[0] is field 3 (state), so field n is f[n-3].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	if utime, err = strconv.ParseUint(f[11], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("utime: %w", err)
	}
	if stime, err = strconv.ParseUint(f[12], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("stime: %w", err)
	}
	return utime, stime, nil
}

// sysIO returns how many read and write system calls pid has made: syscr
// and syscw of /proc/<pid>/io, which count read(2) and write(2) and their
// vector forms on any file, so a Go server's socket reads and writes
// (gRPC's frames, Redis's commands and replies) whatever their size. How
// many a check costs shows how well each side gathers its traffic, which a
// noisy machine's CPU figures cannot.
func sysIO(pid int) (reads, writes uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/io", pid))
	if err != nil {
		return 0, 0, err
	}
	return parseIO(b)
}

// parseIO reads syscr and syscw from a /proc/<pid>/io text.
func parseIO(b []byte) (reads, writes uint64, err error) {
	return parseCounts(b, "syscr", "syscw")
}

// parseCounts reads the counts named first and second from a /proc text of
// "name: value" lines (/proc/<pid>/io, /proc/<pid>/task/<tid>/status); both
// must be there.
func parseCounts(b []byte, first, second string) (a, c uint64, err error) {
	var haveA, haveC bool
	for line := range strings.Lines(string(b)) {
		name, value, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || name != first && name != second {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(value), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w", name, err)
		}
		if name == first {
			a, haveA = n, true
		} else {
			c, haveC = n, true
		}
	}
	if !haveA || !haveC {
		return 0, 0, fmt.Errorf("no %s and %s lines", first, second)
	}
	return a, c, nil
}

// ctxSwitches returns how many times pid's threads were switched out:
// voluntary_ctxt_switches (the thread slept: waiting on a futex, on the
// network poller) and nonvoluntary_ctxt_switches (the kernel preempted it),
// summed over /proc/<pid>/task. A thread that exited takes its counts with
// it; a Go server's threads seldom exit. Each voluntary switch is a wake-up
// paid later, which is what handing work between goroutines costs a
// process beyond its system calls.
func ctxSwitches(pid int) (voluntary, involuntary uint64, err error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/status")
		if errors.Is(err, fs.ErrNotExist) {
			continue // the thread exited meanwhile
		}
		if err != nil {
			return 0, 0, err
		}
		v, i, err := parseSwitches(b)
		if err != nil {
			return 0, 0, fmt.Errorf("%s/%s/status: %w", dir, t.Name(), err)
		}
		voluntary, involuntary = voluntary+v, involuntary+i
	}
	return voluntary, involuntary, nil
}

// parseSwitches reads voluntary_ctxt_switches and nonvoluntary_ctxt_switches
// from a /proc/<pid>/task/<tid>/status text.
func parseSwitches(b []byte) (voluntary, involuntary uint64, err error) {
	return parseCounts(b, "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")
}

// sysCounts are what show how a process gathers its work, which a noisy
// machine's CPU figures cannot: its read and write system calls (sysIO) and
// its threads' context switches (ctxSwitches).
type sysCounts struct {
	Reads, Writes          uint64
	Voluntary, Involuntary uint64
}

func readSysCounts(pid int) (c sysCounts, err error) {
	if c.Reads, c.Writes, err = sysIO(pid); err != nil {
		return c, err
	}
	c.Voluntary, c.Involuntary, err = ctxSwitches(pid)
	return c, err
}

// sysMeter counts one process's sysCounts over an interval; pid 0, or a
// /proc/<pid> this process may not read, measures nothing.
type sysMeter struct {
	pid   int
	start sysCounts
	err   error
}

func startSys(pid int) *sysMeter {
	m := &sysMeter{pid: pid}
	if pid > 0 {
		m.start, m.err = readSysCounts(pid)
	}
	return m
}

// stop returns the counts since startSys, and whether they were measured.
func (m *sysMeter) stop() (sysCounts, bool) {
	if m.pid <= 0 || m.err != nil {
		return sysCounts{}, false
	}
	c, err := readSysCounts(m.pid)
	if err != nil {
		return sysCounts{}, false
	}
	return sysCounts{
		Reads:       since(c.Reads, m.start.Reads),
		Writes:      since(c.Writes, m.start.Writes),
		Voluntary:   since(c.Voluntary, m.start.Voluntary),
		Involuntary: since(c.Involuntary, m.start.Involuntary),
	}, true
}

// since is now - then, or 0 when the count went down: a thread that exited
// meanwhile took its context switches with it, which may undercount an
// interval but must not wrap it around to an absurd figure.
func since(now, then uint64) uint64 {
	if now < then {
		return 0
	}
	return now - then
}

// rssKiB returns the resident set size of pid (VmRSS in /proc/<pid>/status).
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	return parseVmRSS(b)
}

// parseVmRSS finds "VmRSS:   1234 kB" in a /proc/<pid>/status text.
func parseVmRSS(b []byte) (int64, error) {
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q: want \"<n> kB\"", strings.TrimSpace(line))
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no VmRSS line (a kernel thread, or a zombie)")
}

var (
	clkTckOnce sync.Once
	clkTck     = 100
)

// ticksPerSecond returns the kernel's USER_HZ (`getconf CLK_TCK`), 100 when
// getconf is missing: Linux has reported 100 on every mainstream
// architecture for decades, whatever the internal HZ.
func ticksPerSecond() int {
	clkTckOnce.Do(func() {
		out, err := exec.Command("getconf", "CLK_TCK").Output()
		if err != nil {
			return
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(out))); err == nil && n > 0 {
			clkTck = n
		}
	})
	return clkTck
}

// ticksToDuration converts clock ticks to time.
func ticksToDuration(ticks uint64) time.Duration {
	return time.Duration(ticks) * time.Second / time.Duration(ticksPerSecond())
}

// cpuMeter measures one process's CPU over an interval; pid 0 measures nothing.
type cpuMeter struct {
	pid   int
	start uint64
	err   error
}

func startCPU(pid int) *cpuMeter {
	m := &cpuMeter{pid: pid}
	if pid > 0 {
		m.start, m.err = cpuTicks(pid)
	}
	return m
}

// stop returns the CPU time used since startCPU (0 and the error, if any read failed).
func (m *cpuMeter) stop() (time.Duration, error) {
	if m.pid <= 0 {
		return 0, nil
	}
	if m.err != nil {
		return 0, m.err
	}
	end, err := cpuTicks(m.pid)
	if err != nil {
		return 0, err
	}
	return ticksToDuration(end - m.start), nil
}

// machineBusyTicks returns the CPU time all processors spent busy (user,
// nice, system, irq, softirq, steal: everything but idle and iowait) since
// boot, from the first line of /proc/stat. What the machine did during a
// run minus what the server, the load tool and Redis did is what everyone
// else did: on a shared machine, the noise in the figures.
func machineBusyTicks() (uint64, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	return parseMachineBusy(b)
}

func parseMachineBusy(b []byte) (uint64, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("/proc/stat: first line %q is not the cpu total", line)
	}
	var busy uint64
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy, nil
}
