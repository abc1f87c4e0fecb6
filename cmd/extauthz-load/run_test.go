package main

import (
	"context"
	"testing"
	"time"
)

func TestScheduleIsEvenAndStopsBeforeTheEnd(t *testing.T) {
	for _, tc := range []struct {
		rate float64
		d    time.Duration
		want int
	}{
		{5000, time.Second, 5000},
		{5000, 3 * time.Second, 15000},
		{3, time.Second, 3},             // at 0, 1/3 s, 2/3 s
		{3, 1001 * time.Millisecond, 4}, // and 1 s
		{0.5, 10 * time.Second, 5},
		{1000, 0, 0},
	} {
		if got := scheduledCount(tc.rate, tc.d); got != tc.want {
			t.Errorf("scheduledCount(%g/s, %v) = %d, want %d", tc.rate, tc.d, got, tc.want)
		}
	}
	if got := scheduledAt(4999, 5000); got != 999800*time.Microsecond {
		t.Errorf("request 4999 at 5000/s is due at %v, want 999.8ms", got)
	}
	if got := scheduledAt(1, 3); got != 333333333 {
		t.Errorf("request 1 at 3/s is due at %v, want 333.333333ms", got)
	}
}

// A fake clock drives dispatch: the sleeps it asks for pass instantly,
// except that one "send" stalls for 50ms, as when every worker is busy.
func TestDispatchKeepsTheScheduleThroughAStall(t *testing.T) {
	var now time.Duration
	var sent, sentAt []time.Duration
	const rate, total = 1000.0, 200
	dispatch(context.Background(), rate, total,
		func() time.Duration { return now },
		func(d time.Duration) {
			if d <= 0 {
				t.Fatalf("asked to sleep %v", d)
			}
			now += d + 30*time.Microsecond // oversleep, as real timers do
		},
		func(at time.Duration) bool {
			sent = append(sent, at)
			sentAt = append(sentAt, now)
			if len(sent) == 100 {
				now += 50 * time.Millisecond // the workers were all busy
			}
			return true
		})
	if len(sent) != total {
		t.Fatalf("sent %d requests, want %d", len(sent), total)
	}
	for i, at := range sent {
		if want := scheduledAt(i, rate); at != want {
			t.Fatalf("request %d carried due time %v, want %v: the schedule slipped", i, at, want)
		}
		if sentAt[i] < at {
			t.Fatalf("request %d went out at %v, before it was due at %v", i, sentAt[i], at)
		}
	}
	// The ~50 requests that fell due during the stall go out back to back
	// right after it, at one clock reading.
	burst := 0
	for i := 100; i < total && sentAt[i] == sentAt[100]; i++ {
		burst++
	}
	if burst < 45 {
		t.Errorf("only %d requests caught up after the stall, want about 50", burst)
	}
}

func TestDispatchStopsWhenSendFails(t *testing.T) {
	n := 0
	dispatch(context.Background(), 1e6, 1000, func() time.Duration { return time.Hour }, func(time.Duration) {},
		func(time.Duration) bool { n++; return n < 10 })
	if n != 10 {
		t.Fatalf("send called %d times after it said stop at 10", n)
	}
}
