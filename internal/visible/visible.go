// Package visible tells the characters that draw themselves from those that
// do not, and writes the others escaped where text reaches a person: a
// terminal running the CLI, a log viewer, `audit tail`.
//
// Text a client or a key holder wrote (a user agent, a request id, a key's
// name) ends up in front of an operator. A character that does not draw
// itself there either acts on the terminal (C0 and C1 controls: ESC and
// U+009B start escape sequences that recolour, move the cursor, write the
// clipboard or make links), rearranges the line (the bidirectional
// overrides: "\u202e1.0 resu" shows as "user 0.1"), or hides (zero-width
// characters, the invisible tag characters, fillers that draw nothing), so
// that one label reads as another. Rune says which characters draw
// themselves; keystore refuses any other in a label, and the outputs escape
// them.
package visible

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Rune reports whether r draws itself: a letter, mark, number, punctuation
// or symbol that draws something, or the plain space. It is false for
// control characters (C0, DEL, C1), bidirectional controls, zero-width and
// other format characters (U+200B–U+200D, U+2060, U+FEFF, U+00AD, the tag
// characters), line and paragraph separators, spaces other than U+0020,
// private-use, unassigned and non-characters, the letters that draw
// nothing (Hangul fillers, U+034F, U+2800...) and the variation selectors.
func Rune(r rune) bool {
	switch {
	case r == ' ':
		return true
	case r < 0x20 || r == 0x7f:
		return false
	case r < 0x7f:
		return true
	case invisibleGraphic[r], VariationSelector(r):
		return false
	case r >= 0xFDD0 && r <= 0xFDEF, r&0xFFFE == 0xFFFE: // non-characters
		return false
	}
	return unicode.In(r, unicode.L, unicode.M, unicode.N, unicode.P, unicode.S)
}

// VariationSelector reports whether r is one of the variation selectors
// U+FE00–U+FE0F and U+E0100–U+E01EF. They are marks (category Mn) that
// draw nothing of their own: after a letter, "admin\ufe0f" draws as
// "admin". U+FE0E and U+FE0F choose the text or emoji form of a symbol
// ("❤\ufe0f"), which a label may keep (keystore.CheckText); written out,
// each is escaped.
func VariationSelector(r rune) bool {
	return r >= 0xFE00 && r <= 0xFE0F || r >= 0xE0100 && r <= 0xE01EF
}

// invisibleGraphic are letters, marks and symbols that draw nothing, the
// usual ingredients of a name that looks empty or like another.
var invisibleGraphic = map[rune]bool{
	0x034F: true, // combining grapheme joiner
	0x115F: true, // Hangul choseong filler
	0x1160: true, // Hangul jungseong filler
	0x17B4: true, // Khmer vowel inherent aq
	0x17B5: true, // Khmer vowel inherent aa
	0x180B: true, // Mongolian free variation selectors
	0x180C: true,
	0x180D: true,
	0x180F: true,
	0x2800: true, // braille pattern blank
	0x3164: true, // Hangul filler
	0xFFA0: true, // halfwidth Hangul filler
}

const hexDigits = "0123456789abcdef"

// AppendJSONEscape appends to b the JSON escape of r, which is not ASCII
// or is DEL: \uXXXX, or a UTF-16 surrogate pair of them above U+FFFF.
func AppendJSONEscape(b []byte, r rune) []byte {
	if r > 0xFFFF {
		hi, lo := utf16.EncodeRune(r)
		return AppendJSONEscape(AppendJSONEscape(b, hi), lo)
	}
	return append(b, '\\', 'u', hexDigits[r>>12&0xF], hexDigits[r>>8&0xF], hexDigits[r>>4&0xF], hexDigits[r&0xF])
}

// EscapeJSON appends src, a JSON text, to dst with every character that
// does not draw itself (Rune) and that JSON allows raw (DEL, and every such
// character past ASCII) written as a \u escape, and each byte that is not
// UTF-8 as \ufffd. Outside its strings a JSON text is ASCII without DEL,
// so only string contents change, and a JSON reader reads the same values.
// encoding/json leaves these characters raw, C1 controls and bidirectional
// overrides among them; output meant for a terminal goes through this.
func EscapeJSON(dst, src []byte) []byte {
	start := 0
	for i := 0; i < len(src); {
		c := src[i]
		if c < utf8.RuneSelf && c != 0x7f {
			i++
			continue
		}
		r, size := utf8.DecodeRune(src[i:])
		if r != utf8.RuneError || size != 1 {
			if Rune(r) {
				i += size
				continue
			}
		} else {
			r = utf8.RuneError
		}
		dst = append(dst, src[start:i]...)
		dst = AppendJSONEscape(dst, r)
		i += size
		start = i
	}
	return append(dst, src[start:]...)
}

// Quote returns s as a double-quoted Go string literal whose every
// character draws itself: strconv.Quote's escapes (controls, invalid
// UTF-8, format characters), and further \u escapes for what strconv
// leaves raw though it draws nothing (the fillers of Rune).
func Quote(s string) string {
	q := strconv.Quote(s)
	for _, r := range q {
		if r >= utf8.RuneSelf && !Rune(r) {
			return quoteAll(q)
		}
	}
	return q
}

func quoteAll(q string) string {
	b := make([]byte, 0, len(q)+16)
	for _, r := range q {
		if r >= utf8.RuneSelf && !Rune(r) {
			b = appendGoEscape(b, r)
			continue
		}
		b = utf8.AppendRune(b, r)
	}
	return string(b)
}

// Escape returns s, unquoted, with every character that does not draw
// itself but line breaks and tabs written as its Go escape (\x1b, \u202e,
// \U000e0100): for a message made of text others wrote, such as an error
// naming what a stored record holds, printed to a terminal.
func Escape(s string) string {
	keep := func(r rune) bool { return r == '\n' || r == '\t' || Rune(r) }
	if !strings.ContainsFunc(s, func(r rune) bool { return !keep(r) }) {
		return s
	}
	b := make([]byte, 0, len(s)+16)
	for _, r := range s {
		if keep(r) {
			b = utf8.AppendRune(b, r)
			continue
		}
		b = appendGoEscape(b, r)
	}
	return string(b)
}

// appendGoEscape appends r as Go writes it escaped: \xXX below U+0080,
// \uXXXX up to U+FFFF, \UXXXXXXXX above.
func appendGoEscape(b []byte, r rune) []byte {
	switch {
	case r < utf8.RuneSelf:
		return append(b, '\\', 'x', hexDigits[r>>4], hexDigits[r&0xF])
	case r > 0xFFFF:
		b = append(b, '\\', 'U')
		for shift := 28; shift >= 0; shift -= 4 {
			b = append(b, hexDigits[r>>shift&0xF])
		}
		return b
	}
	return AppendJSONEscape(b, r) // \uXXXX, as Go spells it too
}
