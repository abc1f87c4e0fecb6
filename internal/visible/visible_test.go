package visible

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// The characters that act on a terminal, rearrange a line or hide do not
// draw themselves; letters, marks, digits, punctuation, symbols and the
// plain space do.
func TestRune(t *testing.T) {
	for _, r := range "\x00\x1b\x7f\u0085\u009b\u00a0\u00ad\u034f\u061c\u115f\u200b\u200c\u200d\u200e\u200f\u2028\u2029\u202a\u202e\u2060\u2066\u2069\u2800\u3164\ue000\ufeff\uffa0\ufffe\U000E0001\U000E0041\U000F0000" {
		if Rune(r) {
			t.Errorf("Rune(U+%04X) = true; it draws nothing or acts on the terminal", r)
		}
	}
	for _, r := range " aZ9~é日\u0301🎉\ufffd" {
		if !Rune(r) {
			t.Errorf("Rune(U+%04X) = false; it draws itself", r)
		}
	}
}

// EscapeJSON rewrites the JSON encoding/json writes (which leaves C1
// controls, bidirectional overrides and zero-width characters raw) into
// ASCII that reads back as the same value.
func TestEscapeJSONKeepsTheValueAndShowsEveryInvisibleCharacter(t *testing.T) {
	value := map[string]any{
		"name\u202e": "pay\u202eroll\u009b2J\u200b\ufeff\u00ad\U000E0041\x7f\u3164",
		"plain":      []any{"é日🎉", "a\u0301", 1.5, nil, true},
	}
	raw, err := json.Marshal(value)
	if err != nil {
		t.Fatal(err)
	}
	out := EscapeJSON(nil, raw)
	for _, r := range string(out) {
		if !Rune(r) {
			t.Fatalf("EscapeJSON left U+%04X raw: %s", r, out)
		}
	}
	for _, want := range []string{`pay\u202eroll\u009b2J\u200b\ufeff\u00ad\udb40\udc41\u007f\u3164`, `"name\u202e"`, `"é日🎉"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("EscapeJSON = %s; want %s in it", out, want)
		}
	}
	var back map[string]any
	if err := json.Unmarshal(out, &back); err != nil {
		t.Fatalf("EscapeJSON's output is not JSON: %v: %s", err, out)
	}
	want, _ := json.Marshal(value)
	if got, _ := json.Marshal(back); string(got) != string(want) {
		t.Errorf("read back as %s, want %s", got, want)
	}
	if got := EscapeJSON(nil, []byte("\"a\xffb\"")); string(got) != `"a\ufffdb"` {
		t.Errorf("EscapeJSON of a byte that is no UTF-8 = %s, want \\ufffd in its place", got)
	}
}

// Quote escapes what strconv.Quote escapes, and the fillers it leaves
// raw though they draw nothing; it reads back with strconv.Unquote.
func TestQuote(t *testing.T) {
	for in, want := range map[string]string{
		"payroll":              `"payroll"`,
		"pay\u202eroll\x1b[2J": `"pay\u202eroll\x1b[2J"`,
		"read\u200b":           `"read\u200b"`,
		"a\u3164b\u2800":       `"a\u3164b\u2800"`,
		"日本 é":                 `"日本 é"`,
	} {
		got := Quote(in)
		if got != want {
			t.Errorf("Quote(%q) = %s, want %s", in, got, want)
		}
		if back, err := strconv.Unquote(got); err != nil || back != in {
			t.Errorf("Unquote(%s) = %q, %v; want %q", got, back, err, in)
		}
	}
}
