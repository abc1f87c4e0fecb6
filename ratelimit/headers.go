package ratelimit

import (
	"strconv"
	"time"
)

// Header is one response header.
type Header struct{ Key, Value string }

// AppendHeaders appends to dst the rate-limit headers (docs/rate-limiting.md)
// for r and
// returns the extended slice:
//
//	RateLimit-Policy: "<name>";q=<N>;w=<window seconds>
//	RateLimit: "<name>";r=<remaining>;t=<seconds until reset>
//	X-RateLimit-Limit: <N>
//	X-RateLimit-Remaining: <remaining>
//	X-RateLimit-Reset: <seconds until reset>
//	Retry-After: <seconds>            (denied only)
//
// Durations are whole seconds rounded up, so that a client waiting that long
// is never early; Retry-After is at least 1. r.Limit's rate-limit headers are
// left out when it is no limit (a check without limits, or decided by the
// "allow" fallback). The name is an sf-string: '"' and '\' are escaped, and
// bytes a header may not carry there (controls, non-ASCII) become '?'. The
// values share one allocation.
func AppendHeaders(dst []Header, r Result) []Header {
	if r.Limit.Rate.Enforced() {
		// Every value is written into one buffer that becomes one string;
		// the values are substrings of it (one allocation, not five).
		var buf [192]byte
		b := appendSFString(buf[:0], r.Limit.Name)
		name := len(b)
		b = append(b, ";q="...)
		b = strconv.AppendInt(b, r.Limit.Rate.N, 10)
		b = append(b, ";w="...)
		b = strconv.AppendInt(b, seconds(r.Limit.Rate.Window, 1), 10)
		policy := len(b)
		b = append(b, b[:name]...)
		b = append(b, ";r="...)
		remainingAt := len(b)
		b = strconv.AppendInt(b, max(r.Remaining, 0), 10)
		remainingEnd := len(b)
		b = append(b, ";t="...)
		resetAt := len(b)
		b = strconv.AppendInt(b, seconds(r.Reset, 0), 10)
		current := len(b)
		b = strconv.AppendInt(b, r.Limit.Rate.N, 10)
		limit := len(b)
		s := string(b)

		dst = append(dst,
			Header{"RateLimit-Policy", s[:policy]},
			Header{"RateLimit", s[policy:current]},
			Header{"X-RateLimit-Limit", s[current:limit]},
			Header{"X-RateLimit-Remaining", s[remainingAt:remainingEnd]},
			Header{"X-RateLimit-Reset", s[resetAt:current]},
		)
	}
	if !r.Allowed {
		dst = append(dst, Header{"Retry-After", strconv.FormatInt(seconds(r.RetryAfter, 1), 10)})
	}
	return dst
}

// seconds is d in whole seconds rounded up, at least least.
func seconds(d time.Duration, least int64) int64 {
	s := int64(d / time.Second)
	if d%time.Second > 0 {
		s++
	}
	return max(s, least)
}

// appendSFString appends s quoted as a structured-field string (RFC 9651 §3.3.3).
func appendSFString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c > 0x7e:
			b = append(b, '?')
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}
