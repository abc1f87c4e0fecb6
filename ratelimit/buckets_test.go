package ratelimit

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// A window packs exactly when it has at most two groups, each small enough,
// and unpacks to itself; repacked after a check, it packs as pack would.
func TestPackedWindowUnpacksToItself(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	packed := 0
	for round := range 20000 {
		sub := 1 + rng.Int64N(2_000_000)
		now := rng.Int64N(1<<52) - 1<<51 // heads on both sides of 0
		w := window{sub: sub, head: floorDiv(now, sub)}
		for range rng.IntN(6) {
			now += rng.Int64N(4 * sub)
			w.advance(now)
			for range 1 + rng.IntN(3) {
				w.add(now, sub*SubWindows)
			}
			if rng.IntN(20) == 0 {
				w.count[ring(w.head)] += 1 << countBits // a group too large to pack
			}
		}
		groups, large := 0, false
		for r := range slots {
			if w.count[r] != 0 {
				groups++
				large = large || w.count[r] >= 1<<countBits
			}
		}
		g, ok := w.pack()
		require.Equal(t, groups <= compactGroups && !large, ok, "round %d: %+v", round, w)
		if !ok {
			continue
		}
		packed++
		var u window
		u.unpack(w.sub, w.head, g)
		require.Equal(t, w, u, "round %d", round)

		// What a check does to it after: repack reads only the groups
		// that can be there, and must find what pack finds.
		now += rng.Int64N(3 * sub)
		u.advance(now)
		if rng.IntN(2) == 0 {
			u.add(now, sub*SubWindows)
		}
		want, wantOK := u.pack()
		got, gotOK := u.repack(g)
		require.Equal(t, wantOK, gotOK, "round %d", round)
		if wantOK {
			var a, b window
			a.unpack(u.sub, u.head, want)
			b.unpack(u.sub, u.head, got)
			require.Equal(t, a, b, "round %d", round)
			require.Equal(t, u, b, "round %d", round)
		}
	}
	require.Greater(t, packed, 5000)
	require.Less(t, subMicros(windowMicros(maxWindow)), int64(1)<<subBits, "the longest sub-window fits a compact window's meta")
}

// refLimiter is the local limiter as it was before buckets were packed: a
// ring per bucket and scope in a map. Local must decide as it does.
type refLimiter map[[2]string]*window

func (ref refLimiter) check(now int64, limits []Limit) Result {
	p := NewPicker()
	var ws []*window
	var helds []int64
	for i := range limits {
		lim := &limits[i]
		if !lim.Rate.Enforced() {
			continue
		}
		wUs := windowMicros(lim.Rate.Window)
		sub := subMicros(wUs)
		w := ref[[2]string{lim.Bucket, lim.Scope}]
		if w == nil {
			w = &window{}
			ref[[2]string{lim.Bucket, lim.Scope}] = w
		}
		if w.sub != sub {
			w.carry(sub, wUs, now)
		}
		w.advance(now)
		held := w.counted(now, wUs)
		ws, helds = append(ws, w), append(helds, held)
		if held >= lim.Rate.N {
			p.Exhausted(lim, FromMicros(w.wait(now, wUs, lim.Rate.N, held)))
		}
	}
	if p.Denied() {
		return p.Result()
	}
	k := 0
	for i := range limits {
		lim := &limits[i]
		if !lim.Rate.Enforced() {
			continue
		}
		reset := ws[k].add(now, windowMicros(lim.Rate.Window))
		p.Allowed(lim, lim.Rate.N-helds[k]-1, FromMicros(reset))
		k++
	}
	return p.Result()
}

// Packing windows, keeping names in records and scopes in lists change what
// a bucket costs, never a decision: on random traffic over many buckets
// (names short, key-id long, longer than a record holds and alike in their
// first 24 bytes; up to five scopes, so more than four limits too; rates that
// change; some buckets busy enough to keep rings), Local answers as
// refLimiter, check for check.
func TestLocalDecidesAsRingsInAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var names []string
	for i := range 2000 {
		switch i % 3 {
		case 0:
			names = append(names, fmt.Sprint("k", i))
		case 1:
			names = append(names, fmt.Sprintf("key_%020d", i))
		default:
			names = append(names, strings.Repeat("x", 24)+fmt.Sprint(i))
		}
	}
	scopes := []string{"", "/a", "/b", "GET /c", "POST /d"}
	now := time.Unix(1_700_000_000, 0).UnixMicro()
	l := NewLocal(nil, 1<<20)
	ref := refLimiter{}
	for step := range 60000 {
		name, busy := names[rng.IntN(len(names))], false
		if rng.IntN(2) == 0 {
			name, busy = names[rng.IntN(3)], true // their windows stay rings
		}
		var limits []Limit
		for i, scope := range scopes {
			if i == 0 && rng.IntN(4) == 0 || i > 0 && rng.IntN(3) != 0 {
				continue
			}
			// Bucket and scope fix the rate but for now and then, so that
			// counts build up, and rates change.
			r := rand.New(rand.NewPCG(uint64(len(name)+int(name[len(name)-1])), uint64(i+step/20000)))
			rate := Rate{N: 1 + r.Int64N(5), Window: time.Duration(1+r.IntN(3000)) * time.Millisecond}
			if busy {
				rate.N = 20 + r.Int64N(200)
			}
			limits = append(limits, Limit{Name: scope, Bucket: name, Scope: scope, Rate: rate})
		}
		if len(limits) == 0 {
			continue
		}
		switch rng.IntN(200) {
		case 0:
			now += rng.Int64N(5e6) // idle past whole windows
		case 1:
			now -= rng.Int64N(1e5) // a clock going back
		default:
			now += rng.Int64N(2000)
		}
		want := ref.check(now, limits)
		got := l.check(now, limits, len(limits))
		require.Equal(t, want, got, "step %d at %d: %+v", step, now, limits)
	}
	require.Equal(t, len(names), l.Len())
	for i := range l.shards {
		checkTable(t, &l.shards[i].t)
	}
}

// Evicting buckets with every kind of window (compact, ringed, listed with
// scopes) gives back everything they held.
func TestLocalEvictionFreesWhatBucketsHeld(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	l := NewLocal(nil, 4*localShards)
	now := time.Unix(1_700_000_000, 0).UnixMicro()
	for i := range 20000 {
		name := fmt.Sprint("bucket-", rng.IntN(3000))
		if i%5 == 0 {
			name += strings.Repeat("-long", 6)
		}
		limits := []Limit{{Bucket: name, Rate: Rate{N: 1000, Window: time.Hour}}}
		for _, scope := range []string{"/a", "/b"} {
			if rng.IntN(2) == 0 {
				limits = append(limits, Limit{Bucket: name, Scope: scope + fmt.Sprint(rng.IntN(3)), Rate: Rate{N: 1000, Window: time.Minute}})
			}
		}
		for range rng.IntN(4) {
			now += rng.Int64N(4e6) // spread requests over sub-windows: some rings
			l.check(now, limits, len(limits))
		}
	}
	require.LessOrEqual(t, l.Len(), 4*localShards)
	require.Positive(t, l.Stats().Evicted)
	for i := range l.shards {
		checkTable(t, &l.shards[i].t)
	}
}

// checkTable walks everything t's buckets hold and requires the pools and
// the scopes to account for exactly that, and the index to find every bucket.
func checkTable(t *testing.T, tb *bucketTable) {
	t.Helper()
	rings, lists, longs := 0, 0, 0
	refs := map[uint32]uint32{}
	held := 0
	for _, c := range tb.index {
		if c == 0 {
			continue
		}
		held++
		rec := c&slotMask - 1
		h := tb.hashOf(rec)
		if tb.records.at(rec).win.nameLen() == longName {
			longs++
			got, ok := tb.find(tb.long[rec], h)
			require.True(t, ok)
			require.Equal(t, rec, got)
		} else {
			r := tb.records.at(rec)
			got, ok := tb.find(string(r.name[:r.win.nameLen()]), h)
			require.True(t, ok)
			require.Equal(t, rec, got)
		}
		r := tb.records.at(rec)
		if r.win.form() != formList {
			require.NotEqual(t, uint64(formNone), r.win.form())
			if r.win.form() == formFull {
				rings++
			}
			continue
		}
		for e := r.win.first(); e != endOfList; e = tb.scoped.at(e).next - 1 {
			sw := tb.scoped.at(e)
			lists++
			require.NotEqual(t, uint64(formNone), sw.win.form())
			if sw.win.form() == formFull {
				rings++
			}
			if sw.scope != 0 {
				refs[sw.scope]++
			}
		}
	}
	require.Equal(t, tb.n, held)
	require.Equal(t, held, int(tb.records.n)-len(tb.records.free), "records in use")
	require.Equal(t, rings, int(tb.windows.n)-len(tb.windows.free), "rings in use")
	require.Equal(t, lists, int(tb.scoped.n)-len(tb.scoped.free), "scoped windows in use")
	require.Len(t, tb.long, longs)
	require.Len(t, tb.scopes.ids, len(refs))
	for id, n := range refs {
		require.Equal(t, n, tb.scopes.refs[id-1], "references to scope %q", tb.scopes.names[id-1])
	}
}
