package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseStatCountsFieldsFromTheLastParenthesis(t *testing.T) {
	// A command name may hold spaces and parentheses; utime is field 14,
	// stime field 15.
	line := "4242 (extauthz (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 731 269 0 0 20 0 9 0 12345 1234567 890 18446744073709551615\n"
	u, s, err := parseStat([]byte(line))
	if err != nil || u != 731 || s != 269 {
		t.Fatalf("parseStat = %d, %d, %v; want 731, 269", u, s, err)
	}
	for _, bad := range []string{"", "12 (x) S 1 2", "12 (x) S 1 2 3 4 5 6 7 8 9 10 u s 1"} {
		if _, _, err := parseStat([]byte(bad)); err == nil {
			t.Errorf("parseStat(%q) did not fail", bad)
		}
	}
}

func TestParseVmRSS(t *testing.T) {
	status := "Name:\textauthz\nVmPeak:\t  900000 kB\nVmRSS:\t   33064 kB\nRssAnon:\t   20000 kB\n"
	if kib, err := parseVmRSS([]byte(status)); err != nil || kib != 33064 {
		t.Fatalf("parseVmRSS = %d, %v; want 33064", kib, err)
	}
	if _, err := parseVmRSS([]byte("Name:\tkthreadd\n")); err == nil {
		t.Fatal("a status without VmRSS gave no error")
	}
}

// The two counts of /proc/<pid>/io and of a thread's status, read by one
// parser: both must be there, and a count must be a number.
func TestParseIOAndSwitches(t *testing.T) {
	for _, tc := range []struct {
		name         string
		parse        func([]byte) (uint64, uint64, error)
		in           string
		want1, want2 uint64
		missing, bad string
	}{
		{"io", parseIO,
			"rchar: 4096\nwchar: 512\nsyscr: 17\nsyscw: 9\nread_bytes: 0\nwrite_bytes: 0\ncancelled_write_bytes: 0\n", 17, 9,
			"rchar: 1\nsyscr: 2\n", "syscr: x\nsyscw: 1\n"},
		{"switches", parseSwitches,
			"Name:\textauthz\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t1234\nnonvoluntary_ctxt_switches:\t56\n", 1234, 56,
			"voluntary_ctxt_switches:\t3\n", "voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t1\n"},
	} {
		a, b, err := tc.parse([]byte(tc.in))
		if err != nil || a != tc.want1 || b != tc.want2 {
			t.Errorf("%s: got %d, %d, %v; want %d, %d", tc.name, a, b, err, tc.want1, tc.want2)
		}
		if _, _, err := tc.parse([]byte(tc.missing)); err == nil {
			t.Errorf("%s: a text without its second count gave no error", tc.name)
		}
		if _, _, err := tc.parse([]byte(tc.bad)); err == nil {
			t.Errorf("%s: a bad count gave no error", tc.name)
		}
	}
}

func TestACountThatWentDownIsNotWrappedAround(t *testing.T) {
	if got := since(5, 9); got != 0 {
		t.Errorf("since(5, 9) = %d, want 0", got)
	}
	if got := since(9, 5); got != 4 {
		t.Errorf("since(9, 5) = %d, want 4", got)
	}
}

// A thread that sleeps and is woken again is switched out: this process's
// own counts, summed over its threads, see every one of those sleeps.
func TestThisProcessContextSwitchesAreCounted(t *testing.T) {
	m := startSys(os.Getpid())
	for range 20 {
		time.Sleep(time.Millisecond)
	}
	c, ok := m.stop()
	if !ok || c.Voluntary < 10 {
		t.Errorf("after 20 sleeps: %d voluntary switches (measured: %v)", c.Voluntary, ok)
	}
}

// Writing to a pipe is a write system call this process's own counts see.
func TestThisProcessSystemCallsAreCounted(t *testing.T) {
	m := startSys(os.Getpid())
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	defer pw.Close()
	for range 10 {
		if _, err := pw.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
	}
	var b [16]byte
	if _, err := pr.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	c, ok := m.stop()
	if !ok || c.Writes < 10 || c.Reads < 1 {
		t.Errorf("after 10 writes and a read: %d reads, %d writes (measured: %v)", c.Reads, c.Writes, ok)
	}
}

func TestThisProcessCPUAndRSSAreReadable(t *testing.T) {
	m := startCPU(os.Getpid())
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	d, err := m.stop()
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > 5*time.Second {
		t.Errorf("50ms of spinning measured as %v of CPU", d)
	}
	if kib, err := rssKiB(os.Getpid()); err != nil || kib <= 0 {
		t.Errorf("rssKiB(self) = %d, %v", kib, err)
	}
	if ticksPerSecond() <= 0 {
		t.Error("no clock tick")
	}
}

func TestParseMachineBusyLeavesOutIdleAndIOWait(t *testing.T) {
	busy, err := parseMachineBusy([]byte("cpu  100 2 30 5000 70 4 5 6 0 0\ncpu0 50 1 15 2500 35 2 2 3 0 0\n"))
	if err != nil || busy != 100+2+30+4+5+6 {
		t.Fatalf("busy = %d, %v; want 147", busy, err)
	}
	if _, err := parseMachineBusy([]byte("intr 1 2 3\n")); err == nil {
		t.Fatal("a file without the cpu line parsed")
	}
}

// --profile refuses a server built without its symbol table, whose profile
// would name none of its functions, and takes one built with it.
func TestProfileNeedsASymbolTable(t *testing.T) {
	dir := t.TempDir()
	src := "package main\n\nfunc main() {}\n"
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module stripped\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	build := func(name string, flags ...string) string {
		bin := filepath.Join(dir, name)
		cmd := exec.Command("go", append(append([]string{"build"}, flags...), "-o", bin, ".")...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build: %v\n%s", err, out)
		}
		return bin
	}
	if err := profilable(build("plain")); err != nil {
		t.Errorf("a binary built as make load builds it: %v", err)
	}
	if err := profilable(build("stripped", "-ldflags", "-s -w")); err == nil || !strings.Contains(err.Error(), "no symbol table") {
		t.Errorf("a stripped binary: %v", err)
	}
	if err := profilable(filepath.Join(dir, "main.go")); err == nil {
		t.Error("a file that is not a binary gave no error")
	}
}
