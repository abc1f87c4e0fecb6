package audit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

var when = time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.FixedZone("CET", 3600))

func TestEventJSONHasTheFieldsOfTheSpec(t *testing.T) {
	tests := []struct {
		name string
		e    Event
		want string
	}{{
		name: "a denied decision carries every request field, in UTC with microseconds",
		e: Event{
			Time: when, Type: TypeDecision, KeyID: "key_1", KeyName: "ci", Owner: "team-a",
			RequestID: "req-9", Method: "DELETE", Path: "/api/users/7", Host: "api.example.com",
			ClientIP: netip.MustParseAddr("2001:db8::1"), UserAgent: "curl/8.5.0",
			Route: "/api/users/{id}", Permissions: []string{"delete:users", "audit\"log"},
			Decision: Deny, Status: 403, Code: "permission_denied", LatencyUS: 42,
		},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"decision","key_id":"key_1","key_name":"ci","owner":"team-a",` +
			`"request_id":"req-9","method":"DELETE","path":"/api/users/7","host":"api.example.com","client_ip":"2001:db8::1",` +
			`"user_agent":"curl/8.5.0","route":"/api/users/{id}","permissions":["delete:users","audit\"log"],"decision":"deny","status":403,"code":"permission_denied","latency_us":42}`,
	}, {
		name: "an allowed decision has no code but keeps a zero latency",
		e: Event{
			Time: when.UTC(), Type: TypeDecision, KeyID: "key_1", Method: "GET", Path: "/",
			ClientIP: netip.MustParseAddr("10.0.0.1"), Decision: Allow, Status: 200,
		},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"decision","key_id":"key_1","method":"GET","path":"/",` +
			`"client_ip":"10.0.0.1","decision":"allow","status":200,"latency_us":0}`,
	}, {
		name: "a shadow decision names its policy, route and mode, and what it would have been",
		e: Event{
			Time: when, Type: TypeDecision, KeyID: "key_1", Method: "GET", Path: "/orders/7", Decision: Deny, Status: 403,
			Code: "permission_denied", LatencyUS: 9, Policy: "orders", Route: "/orders/{id}", Mode: "shadow",
		},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"decision","key_id":"key_1","method":"GET","path":"/orders/7",` +
			`"route":"/orders/{id}","decision":"deny","status":403,"code":"permission_denied","latency_us":9,"policy":"orders","mode":"shadow"}`,
	}, {
		name: "a decision without a key names no key",
		e:    Event{Time: when, Type: TypeDecision, Method: "GET", Path: "/x", Decision: Deny, Status: 401, Code: "missing_key", LatencyUS: 3},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"decision","method":"GET","path":"/x","decision":"deny","status":401,"code":"missing_key","latency_us":3}`,
	}, {
		name: "a rotation names the new key and the old one",
		e:    Event{Time: when, Type: TypeKeyRotated, KeyID: "key_new", KeyName: "ci", Owner: "default", Actor: "cli", RotatedFrom: "key_old"},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"key.rotated","key_id":"key_new","key_name":"ci","owner":"default","actor":"cli","rotated_from":"key_old"}`,
	}, {
		name: "a change nobody can tell was made says its outcome is unknown",
		e:    Event{Time: when, Type: TypeKeyUpdated, KeyID: "key_1", Actor: "key_admin", Outcome: OutcomeUnknown},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"key.updated","key_id":"key_1","actor":"key_admin","outcome":"unknown"}`,
	}, {
		name: "a change event leaves out decision fields even when set",
		e: Event{Time: when, Type: TypeKeyRevoked, KeyID: "key_1", Actor: "key_admin", Status: 200, Path: "/v1/keys/x",
			Host: "h", Decision: Allow, Permissions: []string{"p"}, Code: "c"},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"key.revoked","key_id":"key_1","actor":"key_admin"}`,
	}, {
		name: "a change made through the admin API names the call",
		e: Event{Time: when, Type: TypeKeyRevoked, KeyID: "key_1", Actor: "key_admin", Method: "DELETE", Route: "/v1/keys/{id}",
			ClientIP: netip.MustParseAddr("10.0.0.9"), RequestID: "r1", UserAgent: "curl/8.5.0"},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"key.revoked","key_id":"key_1","actor":"key_admin",` +
			`"request_id":"r1","method":"DELETE","client_ip":"10.0.0.9","user_agent":"curl/8.5.0","route":"/v1/keys/{id}"}`,
	}, {
		name: "a failed admin authentication names the key when it is known, and the request",
		e: Event{Time: when, Type: TypeAdminAuthFailed, KeyID: "key_1", Method: "DELETE", Route: "/v1/keys/{id}",
			ClientIP: netip.MustParseAddr("10.0.0.9"), UserAgent: "curl/8.5.0", Status: 403, Code: "permission_denied",
			Permissions: []string{"ignored"}, Decision: Deny, LatencyUS: 5},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"admin.auth_failed","key_id":"key_1","method":"DELETE",` +
			`"client_ip":"10.0.0.9","user_agent":"curl/8.5.0","route":"/v1/keys/{id}","status":403,"code":"permission_denied"}`,
	}, {
		name: "the path loses its query string",
		e:    Event{Time: when, Type: TypeDecision, Path: "/api/users?api_key=sk_secret", Decision: Deny, Status: 401},
		want: `{"schema":1,"time":"2026-03-04T04:06:07.891234Z","event":"decision","path":"/api/users","decision":"deny","status":401,"latency_us":0}`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(tt.e.AppendJSON(nil)); got != tt.want {
				t.Errorf("AppendJSON:\n got %s\nwant %s", got, tt.want)
			}
			marshalled, err := json.Marshal(tt.e)
			if err != nil {
				t.Fatal(err)
			}
			if string(marshalled) != tt.want {
				t.Errorf("json.Marshal disagrees with AppendJSON:\n got %s\nwant %s", marshalled, tt.want)
			}
		})
	}
}

func TestEventTypesAreTheSpecNames(t *testing.T) {
	got := []string{string(TypeDecision), string(TypeKeyCreated), string(TypeKeyUpdated), string(TypeKeyRevoked),
		string(TypeKeyRotated), string(TypeKeyLeaked), Allow, Deny}
	want := "decision key.created key.updated key.revoked key.rotated key.leaked allow deny"
	if strings.Join(got, " ") != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

// trickyStrings are inputs on which a hand-written JSON string encoder
// typically goes wrong.
var trickyStrings = []string{
	"", "plain", `"quoted"`, `back\slash`, "tab\there", "new\nline", "cr\rlf", "\b\f",
	"\x00", "\x01\x1f", "\x7f", "<script>&amp;</script>", "é ü 日本 🎉", "\u2028\u2029",
	"\xff", "a\xffb", "\xc3", "\xc3(", "\xe2\x82", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	"\ufffd", "end\\", `\u0000`, "\"\\\"", strings.Repeat("é", 300),
	"\u202e1.0 resu", "\u0085\u009b31m", "a\u2066b\u2069c\u200e\u200f\u061c", "\u202a\u202b\u202c\u202d",
	"zero\u200bwidth\u200c\u200d\u2060\ufeff", "soft\u00adhyphen", "tag\U000E0041\U000E007F", "fill\u3164er\u115f",
	"nb\u00a0sp", "private\ue000\U000F0000", "\U0001F468\u200d\U0001F469", "del\x7fete",
}

// stdlibString is encoding/json's encoding of s without HTML escaping,
// with the characters that do not draw themselves (escaped) escaped too.
func stdlibString(t testing.TB, s string) string {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	for _, r := range strings.TrimSuffix(buf.String(), "\n") {
		if escaped(r) {
			if r > 0xFFFF {
				hi, lo := utf16.EncodeRune(r)
				fmt.Fprintf(&out, `\u%04x\u%04x`, hi, lo)
				continue
			}
			fmt.Fprintf(&out, `\u%04x`, r)
			continue
		}
		out.WriteRune(r)
	}
	return out.String()
}

// A client's user agent or path with a bidirectional override or a C1
// control cannot rearrange the event's line where it is shown: they are
// written escaped, and read back as sent.
func TestCharactersThatRearrangeALineAreEscaped(t *testing.T) {
	ua := "curl/8.5.0\u202e\" ,\"code\":\"allow\u2066\u009b2J"
	e := Event{Time: when, Type: TypeDecision, UserAgent: ua, Path: "/a\u202eb"}
	line := string(e.AppendJSON(nil))
	for _, r := range line {
		if escaped(r) {
			t.Fatalf("line holds U+%04X unescaped: %q", r, line)
		}
	}
	if !strings.Contains(line, `\u202e`) || !strings.Contains(line, `\u009b`) {
		t.Errorf("line = %s; want the controls as \\u escapes", line)
	}
	var back Event
	if err := json.Unmarshal([]byte(line), &back); err != nil || back.UserAgent != ua || back.Path != "/a\u202eb" {
		t.Errorf("read back as %q, %q (err %v); want what was sent", back.UserAgent, back.Path, err)
	}
}

// What does not draw itself cannot hide in an event either: a zero-width
// character, a soft hyphen, a tag character, a Hangul filler or DEL in a
// user agent or request id is written as a \u escape, so that
// "curl\u200b/8" does not show as "curl/8" in audit tail, and reads back as
// sent.
func TestCharactersThatHideAreEscaped(t *testing.T) {
	ua := "cu\u200brl/8\u00ad.5\U000E0041\u3164\x7f\u2060\ufeff"
	e := Event{Time: when, Type: TypeDecision, UserAgent: ua, RequestID: "r\u200di\u200cd"}
	line := string(e.AppendJSON(nil))
	for _, want := range []string{`cu\u200brl/8\u00ad.5\udb40\udc41\u3164\u007f\u2060\ufeff`, `r\u200di\u200cd`} {
		if !strings.Contains(line, want) {
			t.Errorf("line = %s; want %s in it", line, want)
		}
	}
	for _, r := range line {
		if r == 0x7f || r >= 0x80 {
			t.Fatalf("line holds U+%04X unescaped: %q", r, line)
		}
	}
	var back Event
	if err := json.Unmarshal([]byte(line), &back); err != nil || back.UserAgent != ua || back.RequestID != "r\u200di\u200cd" {
		t.Errorf("read back as %q, %q (err %v); want what was sent", back.UserAgent, back.RequestID, err)
	}
}

func TestAppendStringEscapesLikeEncodingJSON(t *testing.T) {
	for _, s := range trickyStrings {
		if len(s) > MaxFieldLen {
			continue // TestTruncation covers long strings
		}
		if got, want := string(appendString(nil, s)), stdlibString(t, s); got != want {
			t.Errorf("appendString(%q) = %s, encoding/json says %s", s, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range trickyStrings {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		head, cut := truncate(s)
		want := head
		if cut {
			want += truncationMark
		}
		if len(want) > MaxFieldLen || !strings.HasPrefix(s, head) {
			t.Fatalf("truncate(%d bytes) kept %d bytes + mark %v: not a prefix within the cap", len(s), len(head), cut)
		}
		if got := appendString(nil, s); string(got) != stdlibString(t, want) {
			t.Fatalf("appendString(%q) = %s, encoding/json says %s", s, got, stdlibString(t, want))
		}
	})
}

func TestTruncation(t *testing.T) {
	keep := MaxFieldLen - len(truncationMark)
	tests := []struct {
		name, in, want string
	}{
		{"a field at the cap is kept whole", strings.Repeat("a", MaxFieldLen), strings.Repeat("a", MaxFieldLen)},
		{"one byte over the cap is cut and marked", strings.Repeat("a", MaxFieldLen+1), strings.Repeat("a", keep) + truncationMark},
		{"a megabyte is cut and marked", strings.Repeat("b", 1<<20), strings.Repeat("b", keep) + truncationMark},
		{"a cut never splits a UTF-8 sequence", strings.Repeat("a", keep-1) + strings.Repeat("€", 100), strings.Repeat("a", keep-1) + truncationMark},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Event{Type: TypeDecision, UserAgent: tt.in}
			var decoded Event
			if err := json.Unmarshal(e.AppendJSON(nil), &decoded); err != nil {
				t.Fatal(err)
			}
			if decoded.UserAgent != tt.want {
				t.Errorf("encoded user_agent = %q (%d bytes), want %q", decoded.UserAgent, len(decoded.UserAgent), tt.want)
			}
			e.scrub()
			if e.UserAgent != tt.want {
				t.Errorf("scrubbed user_agent = %q (%d bytes), want %q", e.UserAgent, len(e.UserAgent), tt.want)
			}
		})
	}
}

func TestScrubCopiesLongFieldsSoTheyDoNotPinTheHeader(t *testing.T) {
	header := "/api/x?token=" + strings.Repeat("s", 1<<20)
	ua := strings.Repeat("u", 1<<20)
	host := "h.example.com"
	e := Event{Path: header, UserAgent: ua, Host: host}
	e.scrub()

	if e.Path != "/api/x" {
		t.Errorf("path = %q, want /api/x", e.Path)
	}
	if within(e.Path, header) {
		t.Error("the cut path still points into the 1 MiB header")
	}
	if within(e.UserAgent, ua) {
		t.Error("the truncated user agent still points into the 1 MiB header")
	}
	if e.Host != host {
		t.Errorf("host = %q, want %q", e.Host, host)
	}
}

// The gRPC server's strings share the bytes of the whole decoded request
// (authz/envoy/wire.go): a queued event must hold copies of the short request
// fields too, or each one would pin a request's worth of memory.
func TestScrubCopiesRequestFieldsOutOfTheRequestBuffer(t *testing.T) {
	request := "GET/api/users?x=1api.example.comreq-7curl/8.5" + strings.Repeat("h", 64<<10)
	e := Event{
		Type: TypeDecision, Method: request[0:3], Path: request[3:17], Host: request[17:32],
		RequestID: request[32:37], UserAgent: request[37:45], KeyID: "key_1",
	}
	e.scrub()
	want := Event{
		Type: TypeDecision, Method: "GET", Path: "/api/users", Host: "api.example.com",
		RequestID: "req-7", UserAgent: "curl/8.5", KeyID: "key_1",
	}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("scrubbed %+v, want %+v", e, want)
	}
	for name, f := range map[string]string{"method": e.Method, "path": e.Path, "host": e.Host, "request_id": e.RequestID, "user_agent": e.UserAgent} {
		if within(f, request) {
			t.Errorf("%s still points into the request", name)
		}
	}
}

// within reports whether s's bytes lie inside the memory of big.
func within(s, big string) bool {
	if len(s) == 0 {
		return false
	}
	p, lo := uintptr(unsafe.Pointer(unsafe.StringData(s))), uintptr(unsafe.Pointer(unsafe.StringData(big)))
	return p >= lo && p < lo+uintptr(len(big))
}

func TestEncodedEventsAlwaysParseAndRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	var pieces []string
	for _, s := range trickyStrings {
		if len(s) <= 64 { // five pieces stay under MaxFieldLen: no truncation here
			pieces = append(pieces, s)
		}
	}
	pieces = append(pieces, "?", "/", "key_", "sk_")
	randString := func() string {
		var b strings.Builder
		for n := rng.IntN(6); n > 0; n-- {
			b.WriteString(pieces[rng.IntN(len(pieces))])
		}
		return b.String()
	}
	types := []Type{TypeDecision, TypeKeyCreated, TypeKeyUpdated, TypeKeyRevoked, TypeKeyRotated, TypeKeyLeaked}
	var buf []byte
	for i := range 5000 {
		e := Event{
			Time: time.Unix(rng.Int64N(4e9), rng.Int64N(1e9)).In(time.FixedZone("", 3600*(rng.IntN(25)-12))),
			Type: types[rng.IntN(len(types))], KeyID: randString(), KeyName: randString(), Owner: randString(),
			Actor: randString(), RotatedFrom: randString(),
		}
		if e.Type == TypeDecision {
			e.RequestID, e.Method, e.Path, e.Host, e.UserAgent = randString(), randString(), randString(), randString(), randString()
			e.Decision, e.Code = randString(), randString()
			e.Policy, e.Route, e.Mode = randString(), randString(), randString()
			e.Status, e.LatencyUS = rng.IntN(600), rng.Int64N(1e9)
			if rng.IntN(2) == 0 {
				var a [16]byte
				for j := range a {
					a[j] = byte(rng.IntN(256))
				}
				e.ClientIP = netip.AddrFrom16(a).Unmap()
			}
		}
		buf = e.AppendJSON(buf[:0])
		if !json.Valid(buf) || bytes.ContainsAny(buf, "\n\r") {
			t.Fatalf("event %d: not one line of valid JSON: %s", i, buf)
		}

		var got Event
		if err := json.Unmarshal(buf, &got); err != nil {
			t.Fatalf("event %d: %v: %s", i, err, buf)
		}
		want := e
		want.Time = e.Time.UTC().Truncate(time.Microsecond)
		for _, f := range []*string{&want.KeyID, &want.KeyName, &want.Owner, &want.Actor, &want.RotatedFrom,
			&want.RequestID, &want.Method, &want.Path, &want.Host, &want.UserAgent, &want.Decision, &want.Code,
			&want.Policy, &want.Route, &want.Mode} {
			*f = string([]rune(*f)) // what JSON can carry: each invalid byte becomes U+FFFD
		}
		want.Path = cutQuery(want.Path)
		if !got.Time.Equal(want.Time) {
			t.Fatalf("event %d: time %v, want %v", i, got.Time, want.Time)
		}
		got.Time = want.Time
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("event %d does not round-trip:\n got %+v\nwant %+v\njson %s", i, got, want, buf)
		}
	}
}

func TestAppendJSONDoesNotAllocateIntoABigEnoughBuffer(t *testing.T) {
	e := Event{
		Time: when, Type: TypeDecision, KeyID: "key_1", Method: "GET", Path: "/a\"b\x01\xff",
		ClientIP: netip.MustParseAddr("10.1.2.3"), UserAgent: strings.Repeat("x", 2*MaxFieldLen),
		Decision: Deny, Status: 401, Code: "invalid_key",
	}
	buf := make([]byte, 0, 4096)
	if allocs := testing.AllocsPerRun(100, func() { buf = e.AppendJSON(buf[:0]) }); allocs != 0 {
		t.Errorf("AppendJSON allocated %v times", allocs)
	}
	if !utf8.Valid(buf) {
		t.Errorf("output is not UTF-8: %q", buf)
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	e := smallEvent()
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = e.AppendJSON(buf[:0])
	}
	b.SetBytes(int64(len(buf)))
}

func smallEvent() Event {
	return Event{
		Time: when, Type: TypeDecision, KeyID: "key_0Abc1234xyzXYZ012345", KeyName: "ci", Owner: "default",
		RequestID: "3f1c9a9e-8a55-4a0e-9d43-1b1f3c1f2e11", Method: "GET", Path: "/api/users/42", Host: "api.example.com",
		ClientIP: netip.MustParseAddr("203.0.113.7"), UserAgent: "curl/8.5.0", Decision: Allow, Status: 200, LatencyUS: 87,
	}
}
