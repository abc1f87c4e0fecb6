package main

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/internal/visible"
)

// Every value the text log holds, whatever it is made of, comes out with
// every character drawing itself, and reads back as it was logged: bare
// when slog left it bare and it draws, else as a Go string literal. The
// values cover what decides slog's quoting (a space, '=', '"', '\', an
// empty value, bytes that are no UTF-8) each with a filler beside it, and
// in the key too.
func TestTheTextLogReadsBackWithEveryCharacterVisible(t *testing.T) {
	const filler = "\u3164"
	for _, v := range []string{
		"plain", "caf\u00e9", "", filler, "a" + filler + "b", "a b" + filler,
		"a=b" + filler, `say "hi"` + filler, `back\slash` + filler, `\u3164`,
		"bad\xffutf8" + filler, "\u202e" + filler, "tab\t" + filler,
		"\U000E0041" + filler, "\u115f\u1160\uffa0", "end\\",
	} {
		var out bytes.Buffer
		log := newLogger(config.Log{Level: "info", Format: "text"}, &out)
		log.Info("m"+filler, "k"+filler, v, "next", "x")
		line := out.String()
		for _, r := range line {
			if r != '\n' && !visible.Rune(r) {
				t.Fatalf("%q: the line holds U+%04X raw: %q", v, r, line)
			}
		}
		_, rest, ok := strings.Cut(line, `"k\u3164"=`)
		require.True(t, ok, "the key is quoted: %q", line)
		got := rest
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			require.NoError(t, err, line)
			got, err = strconv.Unquote(q)
			require.NoError(t, err)
			rest = rest[len(q):]
		} else {
			got, rest, _ = strings.Cut(rest, " ")
			rest = " " + rest
		}
		assert.Equal(t, v, got, "%q reads back: %q", v, line) // a byte that is no UTF-8 too: strconv's \xff
		assert.True(t, strings.HasPrefix(rest, " next=x"), "the rest of the line is intact: %q", line)
		assert.Contains(t, line, `msg="m\u3164"`)
	}
}
