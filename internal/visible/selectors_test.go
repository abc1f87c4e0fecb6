package visible

import (
	"strings"
	"testing"
)

// The variation selectors U+FE00-FE0F and U+E0100-E01EF are marks
// (category Mn) that draw nothing of their own: "admin\ufe0f" draws as
// "admin". Rune is false for them, so every writer escapes them.
func TestVariationSelectorsDoNotDrawThemselves(t *testing.T) {
	for _, r := range []rune{0xFE00, 0xFE0E, 0xFE0F, 0xE0100, 0xE01EF} {
		if Rune(r) {
			t.Errorf("Rune(U+%04X) = true; a variation selector after a letter draws nothing (%q shows as %q)", r, "admin"+string(r), "admin")
		}
	}
	got := string(EscapeJSON(nil, []byte(`{"user_agent":"curl`+"\ufe0f"+`/8"}`)))
	if !strings.Contains(got, `\ufe0f`) {
		t.Errorf("EscapeJSON left U+FE0F raw: %+q", got)
	}
	if q := Quote("admin\U000E0100"); !strings.Contains(q, `\U000e0100`) && !strings.Contains(q, `\udb40`) {
		t.Errorf("Quote left U+E0100 raw: %+q", q)
	}
}

// Escape leaves what draws, line breaks and tabs as they are and writes the
// rest as Go escapes, unquoted.
func TestEscapeWritesWhatDoesNotDrawAsGoEscapes(t *testing.T) {
	for in, want := range map[string]string{
		"plain text, line\n\tnext":      "plain text, line\n\tnext",
		"key_\x1b]8;;https://e/\x1b\\x": `key_\x1b]8;;https://e/\x1b\x`,
		"pay\u202eroll \u009b2J":        `pay\u202eroll \u009b2J`,
		"admin\U000e0100 love ❤\ufe0f":  `admin\U000e0100 love ❤\ufe0f`,
	} {
		if got := Escape(in); got != want {
			t.Errorf("Escape(%+q) = %s, want %s", in, got, want)
		}
	}
}
