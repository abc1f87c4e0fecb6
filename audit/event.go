// Package audit records what extauthz decided and what operators changed
// (docs/operations.md, "Audit events"): the Event record, its JSON form,
// the Sink interface that outputs implement, and the Logger, a bounded
// non-blocking queue that keeps audit writes off the decision path.
//
// It is not a general-purpose logger and it writes no credential: an Event
// has no field meant for a key, an Authorization header, a cookie or a query
// string, and a request field that holds a key all the same (pasted into a
// path or a user agent) is redacted (Options.HoldsKey). The Redis stream
// sink and the stream reader live in audit/redis.
package audit

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/extauthz/extauthz/internal/visible"
)

// Type is what an Event records; its value is the JSON field "event".
type Type string

// The event types, one per kind of thing audited.
const (
	TypeDecision   Type = "decision"    // one Check answered, allow or deny
	TypeKeyCreated Type = "key.created" // a key was created
	TypeKeyUpdated Type = "key.updated" // a key's metadata changed
	TypeKeyRevoked Type = "key.revoked" // a key was revoked
	TypeKeyRotated Type = "key.rotated" // KeyID is the new key, RotatedFrom the old one
	TypeKeyLeaked  Type = "key.leaked"  // a key was reported as leaked
	// TypeAdminAuthFailed is a request to the admin API refused for its
	// credential: none, an unknown, revoked or expired key, a key from an
	// address its allowlist does not hold, a key without the keys:*
	// permission the call needs, or one asking for a change beyond what it
	// may make (granting what it lacks, loosening its own key, another
	// owner's keys), or a change refused as a conflict (status 409: past
	// keys.max_per_owner, a retired key's new life, a rotation pending),
	// or a known key over its rate limit (status 429, code rate_limited).
	// KeyID is set when the key is known; the request fields (RequestID to
	// UserAgent, Status, Code) say what was asked and the answer, and Route
	// the API route asked for ("/v1/keys/{id}"), in place of the path (a
	// pasted key may stand where an id goes).
	TypeAdminAuthFailed Type = "admin.auth_failed"
	// TypeAdminRead is a read of keys through the admin API answered (a
	// list of keys, one key's record): what a stolen keys:read key does
	// first. KeyID is the caller's key; Method, Route (never the raw path),
	// ClientIP, RequestID, UserAgent and Status say what was asked and the
	// answer.
	TypeAdminRead Type = "admin.read"
)

// SchemaVersion is the "schema" of every event: the version of the format
// this package writes. Fields are only ever added within a version; a field
// renamed or removed, or a meaning changed, raises it. (Events written
// before the field existed have none.)
const SchemaVersion = 1

// OutcomeUnknown is Event.Outcome of a key change that may or may not be
// in effect.
const OutcomeUnknown = "unknown"

// Values of Event.Decision.
const (
	Allow = "allow"
	Deny  = "deny"
)

// MaxFieldLen caps the length in bytes of every string field of an Event,
// truncation mark included. Several fields (user_agent, path, host,
// request_id) come straight from client headers; the cap keeps one huge
// header from costing megabytes per queued event, or per log line.
const MaxFieldLen = 512

// truncationMark ends a field that was cut to MaxFieldLen.
const truncationMark = "...[truncated]"

// Event is one audit record. Fields that do not apply to an event's Type stay
// empty and are left out of its JSON form; the request fields (RequestID to
// UserAgent, Route, Status, Code) apply to TypeDecision and
// TypeAdminAuthFailed, and all but Path, Host, Status and Code to a key
// change made through the admin API (the call that made it);
// Permissions, Decision, LatencyUS, Policy and Mode to TypeDecision only.
//
// The JSON form is what AppendJSON writes; the struct tags let
// encoding/json read it back.
type Event struct {
	// Time is when it happened; Logger.Record sets it when zero. Written in
	// UTC with microseconds: 2006-01-02T15:04:05.000000Z.
	Time        time.Time `json:"time"`
	Type        Type      `json:"event"`
	KeyID       string    `json:"key_id,omitempty"`
	KeyName     string    `json:"key_name,omitempty"`
	Owner       string    `json:"owner,omitempty"`
	Actor       string    `json:"actor,omitempty"`        // for changes: the admin key's id, or "cli"
	RotatedFrom string    `json:"rotated_from,omitempty"` // for TypeKeyRotated: the old key's id
	// Outcome is, for a key change (key.*), OutcomeUnknown when the change
	// may or may not have been made: the store's answer to its write was
	// lost, and so was the read that would have told. Empty for a change
	// made, as every other key change event is.
	Outcome string `json:"outcome,omitempty"`

	RequestID string `json:"request_id,omitempty"` // from x-request-id
	Method    string `json:"method,omitempty"`
	// Path is the normalised request path (the decision's step 1), which has no
	// query string, so query-string credentials never reach the audit log.
	// Anything from a '?' on is cut off all the same.
	Path      string     `json:"path,omitempty"`
	Host      string     `json:"host,omitempty"`
	ClientIP  netip.Addr `json:"client_ip,omitzero"`
	UserAgent string     `json:"user_agent,omitempty"`
	// Route is the pattern of the route that decided the request ("" when
	// none matched), Permissions what it requires of a key.
	Route       string   `json:"route,omitempty"`
	Permissions []string `json:"permissions,omitempty"`
	Decision    string   `json:"decision,omitempty"` // Allow or Deny
	Status      int      `json:"status,omitempty"`   // the HTTP status answered
	Code        string   `json:"code,omitempty"`     // the deny code ("invalid_key", …); empty on allow
	LatencyUS   int64    `json:"latency_us,omitempty"`

	// Policy is the policy the decision was made under ("" when none was
	// selected). Mode is "enforce", or "shadow": the request was allowed
	// whatever Decision and Code say, which are what the decision would
	// have been.
	Policy string `json:"policy,omitempty"`
	Mode   string `json:"mode,omitempty"`

	// KeyHolder marks an admin.* event of a caller the admin API
	// authenticated and counted within its rate limit: a read of keys, or
	// a call refused past that (permission_denied, a conflict). Only the
	// holder of a key can cause one, and no faster than the admin API's
	// rate limit, so it is kept with the key changes (KeptApart), out of
	// reach of a flood of decisions. It is not written: key_id names the
	// caller.
	KeyHolder bool `json:"-"`
}

// timeLayout is RFC 3339 with a fixed six-digit fraction, so that lines sort
// by time as text.
const timeLayout = "2006-01-02T15:04:05.000000Z07:00"

// AppendJSON appends e as one JSON object (no newline) to b and returns the
// extended buffer. Strings are escaped as encoding/json escapes them (invalid
// UTF-8 becomes U+FFFD) except that <, > and & are left alone; every string
// is capped at MaxFieldLen and the path is cut at '?'. It allocates only
// when b has to grow.
func (e *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"schema":`...)
	b = strconv.AppendInt(b, SchemaVersion, 10)
	b = append(b, `,"time":"`...)
	b = e.Time.UTC().AppendFormat(b, timeLayout)
	b = append(b, `","event":`...)
	b = appendString(b, string(e.Type))
	b = appendField(b, `,"key_id":`, e.KeyID)
	b = appendField(b, `,"key_name":`, e.KeyName)
	b = appendField(b, `,"owner":`, e.Owner)
	b = appendField(b, `,"actor":`, e.Actor)
	b = appendField(b, `,"rotated_from":`, e.RotatedFrom)
	b = appendField(b, `,"outcome":`, e.Outcome)
	// Every type: a change made through the admin API names its call.
	b = appendField(b, `,"request_id":`, e.RequestID)
	b = appendField(b, `,"method":`, e.Method)
	if e.Type == TypeDecision || e.Type == TypeAdminAuthFailed {
		b = appendField(b, `,"path":`, cutQuery(e.Path))
		b = appendField(b, `,"host":`, e.Host)
	}
	if e.ClientIP.IsValid() {
		b = append(b, `,"client_ip":"`...)
		b = e.ClientIP.AppendTo(b)
		b = append(b, '"')
	}
	b = appendField(b, `,"user_agent":`, e.UserAgent)
	b = appendField(b, `,"route":`, e.Route)
	if e.Type == TypeDecision {
		if len(e.Permissions) > 0 {
			b = append(b, `,"permissions":[`...)
			for i, p := range e.Permissions {
				if i > 0 {
					b = append(b, ',')
				}
				b = appendString(b, p)
			}
			b = append(b, ']')
		}
		b = appendField(b, `,"decision":`, e.Decision)
	}
	if e.Type == TypeDecision || e.Type == TypeAdminAuthFailed || e.Type == TypeAdminRead {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(e.Status), 10)
		b = appendField(b, `,"code":`, e.Code)
	}
	if e.Type == TypeDecision {
		b = append(b, `,"latency_us":`...)
		b = strconv.AppendInt(b, e.LatencyUS, 10)
		b = appendField(b, `,"policy":`, e.Policy)
		b = appendField(b, `,"mode":`, e.Mode)
	}
	return append(b, '}')
}

// MarshalJSON returns AppendJSON's form, so that encoding/json and the sinks
// agree on what an Event looks like.
func (e Event) MarshalJSON() ([]byte, error) {
	return e.AppendJSON(make([]byte, 0, 256)), nil
}

// appendField appends name and s as a JSON string, or nothing when s is empty.
func appendField(b []byte, name, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, name...), s)
}

// scrub bounds e's client-controlled content before it is queued: the path
// loses its query, and a field longer than MaxFieldLen is replaced by a
// truncated copy so the event does not keep a large header's memory alive.
func (e *Event) scrub() {
	p := e.Path
	e.Path = bound(cutQuery(p), len(p))
	e.KeyID = bound(e.KeyID, len(e.KeyID))
	e.KeyName = bound(e.KeyName, len(e.KeyName))
	e.Owner = bound(e.Owner, len(e.Owner))
	e.Actor = bound(e.Actor, len(e.Actor))
	e.RotatedFrom = bound(e.RotatedFrom, len(e.RotatedFrom))
	e.Outcome = bound(e.Outcome, len(e.Outcome))
	e.RequestID = bound(e.RequestID, len(e.RequestID))
	e.Method = bound(e.Method, len(e.Method))
	e.Host = bound(e.Host, len(e.Host))
	e.UserAgent = bound(e.UserAgent, len(e.UserAgent))
	e.Decision = bound(e.Decision, len(e.Decision))
	e.Code = bound(e.Code, len(e.Code))
	e.Policy = bound(e.Policy, len(e.Policy))
	e.Route = bound(e.Route, len(e.Route))
	e.Mode = bound(e.Mode, len(e.Mode))
	e.ownRequestFields()
}

// ownRequestFields copies the fields that come from a request into one new
// string. The caller's strings may share the bytes of a whole decoded
// request (authz/envoy/wire.go), which a queued event must not keep alive.
func (e *Event) ownRequestFields() {
	fs := [...]*string{&e.RequestID, &e.Method, &e.Path, &e.Host, &e.UserAgent}
	n := 0
	for _, f := range fs {
		n += len(*f)
	}
	if n == 0 {
		return
	}
	var b strings.Builder
	b.Grow(n)
	for _, f := range fs {
		b.WriteString(*f)
	}
	all := b.String()
	for _, f := range fs {
		*f, all = all[:len(*f)], all[len(*f):]
	}
}

// bound returns s capped at MaxFieldLen. s is a substring of a string of
// length origLen; when that is over the cap the result is a fresh copy, so
// that it does not pin the original in memory.
func bound(s string, origLen int) string {
	if origLen <= MaxFieldLen {
		return s
	}
	head, cut := truncate(s)
	if !cut {
		return strings.Clone(head)
	}
	return head + truncationMark
}

// truncate returns s if it fits in MaxFieldLen, else its longest prefix that
// leaves room for truncationMark and does not split a UTF-8 sequence.
func truncate(s string) (head string, cut bool) {
	if len(s) <= MaxFieldLen {
		return s, false
	}
	n := MaxFieldLen - len(truncationMark)
	for i := n; i > n-utf8.UTFMax && i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			n = i
			break
		}
	}
	return s[:n], true
}

func cutQuery(path string) string {
	if i := strings.IndexByte(path, '?'); i >= 0 {
		return path[:i]
	}
	return path
}

const hexDigits = "0123456789abcdef"

// escaped reports whether appendString writes r, which JSON allows raw, as
// a \u escape all the same: DEL, and every character past ASCII that does
// not draw itself (visible.Rune). A client writes the user agent, path,
// host and request id of an event, and these characters act on a terminal
// or a log viewer instead of showing: C1 controls (U+009B is a terminal's
// CSI, as ESC [ is, and ESC is escaped as a control character),
// bidirectional marks, embeddings, overrides and isolates (U+202E shows a
// client's "1.0 resu" as "user 0.1"), line and paragraph separators, and
// the characters that hide (zero-width ones, U+FEFF, the soft hyphen, tag
// characters, fillers). Escaped as \uXXXX, they are the same string to a
// JSON reader, and cannot rearrange or hide part of a line shown in a
// terminal (audit tail) or a log viewer so that one field reads as
// another, or one value as another.
func escaped(r rune) bool {
	return r == 0x7f || r >= utf8.RuneSelf && !visible.Rune(r)
}

// appendString appends s as a JSON string, capped like scrub caps it, with
// the escaping of encoding/json's Encoder under SetEscapeHTML(false): quote,
// backslash and control characters escaped, invalid UTF-8 bytes replaced by
// \ufffd, U+2028 and U+2029 escaped; and further the characters of
// escaped, which encoding/json leaves as they are.
func appendString(b []byte, s string) []byte {
	s, cut := truncate(s)
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != 0x7f {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default: // the other C0 controls, and DEL
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case escaped(r):
			b = append(b, s[start:i]...)
			b = visible.AppendJSONEscape(b, r)
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	if cut {
		b = append(b, truncationMark...)
	}
	return append(b, '"')
}
