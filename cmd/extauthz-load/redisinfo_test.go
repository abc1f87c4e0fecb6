package main

import (
	"context"
	"testing"
	"time"

	"github.com/extauthz/extauthz/internal/redistest"
	"github.com/extauthz/extauthz/keystore"
)

// What redis-server 7 answers INFO cpu with: the main thread's and the
// children's times are parts of, or apart from, the process's; only
// used_cpu_sys and used_cpu_user are its whole.
const infoCPUReply = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:0.731204\r\nused_cpu_sys_children:0.004000\r\nused_cpu_user_children:0.001000\r\nused_cpu_sys_main_thread:1.100000\r\nused_cpu_user_main_thread:0.700000\r\n"

func TestParseInfoCPUAddsSystemAndUserTime(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       time.Duration
	}{
		{"a redis 7 reply, children and main thread left out", infoCPUReply, 1981204 * time.Microsecond},
		{"a reply with plain newlines and the fields in another order", "used_cpu_user:2\nused_cpu_sys:0.000001\n", 2*time.Second + time.Microsecond},
		{"a server that has used no CPU yet", "# CPU\r\nused_cpu_sys:0.000000\r\nused_cpu_user:0.000000\r\n", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseInfoCPU(tc.text)
			if err != nil || got != tc.want {
				t.Fatalf("parseInfoCPU = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestParseInfoCPURejectsWhatIsNotTheCPUSection(t *testing.T) {
	for _, text := range []string{
		"",
		"# Server\r\nredis_version:7.2.4\r\n",
		"used_cpu_sys:1.5\r\n", // user time missing
		"used_cpu_sys:1.5\r\nused_cpu_user:soon\r\n",
		"used_cpu_sys:-1\r\nused_cpu_user:1\r\n",
		"used_cpu_sys:NaN\r\nused_cpu_user:1\r\n",
	} {
		if d, err := parseInfoCPU(text); err == nil {
			t.Errorf("parseInfoCPU(%q) = %v, want an error", text, d)
		}
	}
}

// A real redis-server's CPU grows with the work it is given, to the
// microsecond, and the reading itself is cheap enough not to show.
func TestRedisCPUGrowsWithTheWorkRedisDoes(t *testing.T) {
	srv := redistest.Start(t)
	before, err := redisCPU(srv)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bulkInsert(context.Background(), srv.URL(0), "test:", []byte("pepper"), keystore.Spec{}, 2000, 8, nil); err != nil {
		t.Fatal(err)
	}
	after, err := redisCPU(srv)
	if err != nil {
		t.Fatal(err)
	}
	if after <= before || after-before > 30*time.Second {
		t.Fatalf("redis-server CPU went from %v to %v over 2000 key inserts", before, after)
	}
}
