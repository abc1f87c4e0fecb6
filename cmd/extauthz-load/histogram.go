package main

import (
	"math"
	"math/bits"
	"time"
)

// Histogram counts durations in log-linear buckets, in the manner of
// HdrHistogram: exact below 256 ns, then 128 buckets per power of two, so a
// reported percentile is never more than 1/128 (0.8%) above the true value
// and never below it. It records in constant time without allocating, and
// one per worker is merged at the end, so recording takes no lock. The zero
// value is ready to use.
type Histogram struct {
	counts   [histBuckets]uint64
	n        uint64
	sum      float64 // ns, for the mean
	min, max int64
}

const (
	subBits     = 7
	subCount    = 1 << subBits // buckets per power of two
	linearLimit = 2 * subCount // values below this have a bucket each
	// A value below 2^63 has at most 63-subBits-1 doublings past linearLimit.
	histBuckets = linearLimit + (63-subBits-1)*subCount
)

// bucketOf returns the bucket of v nanoseconds (negative counts as 0).
func bucketOf(v int64) int {
	if v < linearLimit {
		return int(max(v, 0))
	}
	u := uint64(v)
	shift := bits.Len64(u) - 1 - subBits // ≥ 1
	return linearLimit + (shift-1)*subCount + int(u>>shift) - subCount
}

// bucketHigh returns the largest value that falls in bucket i.
func bucketHigh(i int) int64 {
	if i < linearLimit {
		return int64(i)
	}
	shift := (i-linearLimit)/subCount + 1
	sub := uint64((i-linearLimit)%subCount + subCount)
	return int64((sub+1)<<shift - 1)
}

// Record counts one duration.
func (h *Histogram) Record(d time.Duration) {
	v := int64(d)
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	if v > h.max {
		h.max = v
	}
	h.n++
	h.sum += float64(v)
}

// Merge adds o's counts to h.
func (h *Histogram) Merge(o *Histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Count returns how many durations were recorded.
func (h *Histogram) Count() uint64 { return h.n }

// Max returns the largest duration recorded, exactly.
func (h *Histogram) Max() time.Duration { return time.Duration(h.max) }

// Mean returns the mean duration.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile returns the smallest recorded-bucket bound at or below which a
// fraction q (0 < q ≤ 1) of the durations lie: the value at rank ⌈q·n⌉,
// rounded up to its bucket's top (and never above the exact maximum).
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		if seen += c; seen >= rank {
			return time.Duration(min(bucketHigh(i), h.max))
		}
	}
	return time.Duration(h.max)
}
