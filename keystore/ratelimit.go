package keystore

import (
	"encoding/json"

	"github.com/extauthz/extauthz/ratelimit"
)

// RateLimit is a key's own rate limit, as its record holds it: unset (the
// key has the configured default), "none", or a rate such as "100/m". It is
// parsed once, when the record is made or read, and keeps the text as it
// was written, so that every output and both stores show the record exactly
// as before: the JSON form is that text, or null when unset.
//
// The zero value is unset.
type RateLimit struct {
	text string         // as written; "" = unset
	rate ratelimit.Rate // text parsed, when ok
	ok   bool           // text parsed (false: unset, or a stored text that no longer parses)
}

// ParseRateLimit reads a rate limit a caller chose: "" (unset), "none", or
// a rate in ratelimit.ParseRate's form. The error is a *FieldError naming
// rate_limit.
func ParseRateLimit(s string) (RateLimit, error) {
	if s == "" {
		return RateLimit{}, nil
	}
	r, err := ratelimit.ParseRate(s)
	if err != nil {
		return RateLimit{}, &FieldError{"rate_limit", err.Error()}
	}
	return RateLimit{text: s, rate: r, ok: true}, nil
}

// IsSet reports whether the key has a rate limit of its own ("none"
// included).
func (r RateLimit) IsSet() bool { return r.text != "" }

// String is the rate limit as written ("100/m", "none"), or "" when unset.
func (r RateLimit) String() string { return r.text }

// Or is the rate the key is limited to: its own, else def (the configured
// default). A stored text that no longer parses counts as unset: failing
// closed here would lock a key out over a record it cannot fix.
func (r RateLimit) Or(def ratelimit.Rate) ratelimit.Rate {
	if !r.ok {
		return def
	}
	return r.rate
}

// Own reports whether the key's own rate applies: Or then ignores the
// default. (Unset, or a stored text that no longer parses: the default.)
func (r RateLimit) Own() bool { return r.ok }

// MarshalText writes the text as written ("" when unset).
func (r RateLimit) MarshalText() ([]byte, error) { return []byte(r.text), nil }

// UnmarshalText reads a stored rate limit. It never fails: a text written
// by another version that no longer parses is kept as it is, so the record
// still loads and shows what was written, and counts as unset (Or).
func (r *RateLimit) UnmarshalText(b []byte) error {
	if v, err := ParseRateLimit(string(b)); err == nil {
		*r = v
	} else {
		*r = RateLimit{text: string(b)}
	}
	return nil
}

// MarshalJSON writes the text, or null when unset.
func (r RateLimit) MarshalJSON() ([]byte, error) {
	if r.text == "" {
		return []byte("null"), nil
	}
	return json.Marshal(r.text)
}

// UnmarshalJSON reads a string or null (unset), as UnmarshalText does.
func (r *RateLimit) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*r = RateLimit{}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	return r.UnmarshalText([]byte(s))
}
