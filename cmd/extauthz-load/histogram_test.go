package main

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestBucketsCoverEveryValueInOrder(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 255, 256, 257, 258, 511, 512, 519, 520, 1 << 20, 1<<20 + 12345, 1 << 40, 1<<63 - 1} {
		i := bucketOf(v)
		if i < prev {
			t.Errorf("bucketOf(%d) = %d, before the previous value's bucket %d", v, i, prev)
		}
		prev = i
		if i < 0 || i >= histBuckets {
			t.Fatalf("bucketOf(%d) = %d, outside [0, %d)", v, i, histBuckets)
		}
		if hi := bucketHigh(i); hi < v {
			t.Errorf("bucketHigh(bucketOf(%d)) = %d, below the value", v, hi)
		}
		if i > 0 {
			if lo := bucketHigh(i-1) + 1; lo > v {
				t.Errorf("bucket %d starts at %d, after the value %d it holds", i, lo, v)
			}
		}
	}
}

func TestBucketsAreWithinOnePartIn128(t *testing.T) {
	for i := linearLimit; i < histBuckets-1; i++ {
		lo, hi := bucketHigh(i-1)+1, bucketHigh(i)
		if float64(hi-lo+1) > float64(lo)/128+1 {
			t.Fatalf("bucket %d is [%d, %d]: wider than 1/128 of its low end", i, lo, hi)
		}
	}
}

func TestQuantilesMatchSortedSamples(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h Histogram
	var samples []int64
	for range 100000 {
		// Log-uniform from 10µs to 100ms, like a latency distribution with a tail.
		v := int64(10e3 * math.Pow(10, 4*r.Float64()))
		samples = append(samples, v)
		h.Record(time.Duration(v))
	}
	slices.Sort(samples)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
		exact := samples[int(q*float64(len(samples)))-1]
		got := int64(h.Quantile(q))
		if got < exact || float64(got-exact) > float64(exact)/128+1 {
			t.Errorf("p%g = %d, want %d rounded up by at most 1/128", 100*q, got, exact)
		}
	}
	if h.Max() != time.Duration(samples[len(samples)-1]) {
		t.Errorf("max = %v, want %v", h.Max(), time.Duration(samples[len(samples)-1]))
	}
}

func TestMergeIsTheSameAsRecordingEverythingInOne(t *testing.T) {
	var a, b, all Histogram
	for i := range 1000 {
		d := time.Duration(i*i) * time.Microsecond
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var m Histogram
	m.Merge(&a)
	m.Merge(&b)
	m.Merge(&Histogram{})
	if m.Count() != all.Count() || m.Max() != all.Max() || m.Mean() != all.Mean() {
		t.Fatalf("merged count/max/mean %d/%v/%v, want %d/%v/%v", m.Count(), m.Max(), m.Mean(), all.Count(), all.Max(), all.Mean())
	}
	for _, q := range []float64{0.01, 0.5, 0.99, 0.999} {
		if m.Quantile(q) != all.Quantile(q) {
			t.Errorf("merged p%g = %v, want %v", 100*q, m.Quantile(q), all.Quantile(q))
		}
	}
}

func TestAnEmptyHistogramSaysZero(t *testing.T) {
	var h Histogram
	if h.Quantile(0.99) != 0 || h.Mean() != 0 || h.Max() != 0 {
		t.Fatal("an empty histogram reported a latency")
	}
}

func TestOneSampleIsEveryQuantile(t *testing.T) {
	var h Histogram
	h.Record(1234567 * time.Nanosecond)
	for _, q := range []float64{0.001, 0.5, 1} {
		if got := h.Quantile(q); got != 1234567 {
			t.Errorf("p%g of one sample = %d, want the sample (capped at the exact max)", 100*q, got)
		}
	}
}
