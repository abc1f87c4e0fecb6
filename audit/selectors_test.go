package audit

import (
	"strings"
	"testing"
	"time"
)

// A client's user agent or request id holding a variation selector
// (U+FE00-FE0F, U+E0100-E01EF: nothing drawn after a letter) is written
// escaped, so that "curl\ufe0f/8" cannot show as curl/8 in audit tail or a
// log viewer.
func TestVariationSelectorsInClientFieldsAreEscaped(t *testing.T) {
	e := Event{Time: time.Unix(0, 0), Type: TypeDecision, UserAgent: "curl\ufe0f/8", RequestID: "req\U000E0101-1"}
	line := string(e.AppendJSON(nil))
	for _, want := range []string{`curl\ufe0f/8`, `req\udb40\udd01-1`} {
		if !strings.Contains(line, want) {
			t.Errorf("want %s in the line, escaped; got %+q", want, line)
		}
	}
}
