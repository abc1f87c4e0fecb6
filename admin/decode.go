package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/extauthz/extauthz/keystore"
)

// maxFuture bounds expires_at, ttl and grace: far enough for any real key,
// near enough that every store can hold the instant (SQLite keeps unix
// nanoseconds, which end in 2262).
const maxFuture = 100 * 365 * 24 * time.Hour

// readJSONBody reads the body of a POST or PATCH: it must say it is JSON
// (a browser form or a no-cors fetch cannot, so no other site can make an
// admin's browser change keys) and be at most s.maxBody bytes.
func (s *server) readJSONBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return nil, &apiError{http.StatusUnsupportedMediaType, codeUnsupportedMedia, "send the body as JSON with Content-Type: application/json"}
	}
	return readBody(w, r, s.maxBody)
}

// readBody reads at most limit bytes of body: more is 413, before anything
// is parsed.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errTooLarge
	}
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return nil, errTooLarge
	case err != nil:
		return nil, badRequest("body", "could not be read")
	}
	return b, nil
}

// object holds the top-level fields of a JSON object, each kept raw until
// it is read with the type its field wants, so that every error can name
// its field. Field names match exactly (encoding/json alone would also take
// "NAME" for "name"), and a field given twice is an error, not "last wins".
type object map[string]json.RawMessage

// decodeObject reads body as one JSON object whose fields are all in known.
// An empty body is an empty object when emptyOK.
func (s *server) decodeObject(body []byte, emptyOK bool, known ...string) (object, error) {
	if emptyOK && len(bytes.TrimSpace(body)) == 0 {
		return object{}, nil
	}
	o := object{}
	err := eachMember(body, "", func(name string, raw json.RawMessage) error {
		if !slices.Contains(known, name) {
			return badRequest("body", "unknown field "+s.mention(name)+"; known fields: "+strings.Join(known, ", "))
		}
		o[name] = raw
		return nil
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// eachMember calls fn with each name and value (white space trimmed) of
// the JSON object in body, in order, and stops at fn's first error. A name
// given twice is an error (its field is prefix+name), never "last wins":
// two readers of the same body must not see different values.
func eachMember(body []byte, prefix string, fn func(name string, raw json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	tok, err := dec.Token()
	if err != nil {
		return syntaxError(err, "want a JSON object")
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return badRequest("body", "want a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return syntaxError(err, "")
		}
		name, _ := tok.(string) // inside an object every token here is a name
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return syntaxError(err, "")
		}
		if err := fn(name, bytes.TrimSpace(raw)); err != nil {
			return err
		}
		if seen[name] {
			return badRequest(prefix+name, "given more than once")
		}
		seen[name] = true
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return syntaxError(err, "")
	}
	if _, err := dec.Token(); err != io.EOF {
		return badRequest("body", "unexpected data after the JSON object")
	}
	return nil
}

// syntaxError describes malformed JSON by position. encoding/json's
// messages quote at most one character of the input, never a value.
func syntaxError(err error, fallback string) *apiError {
	var se *json.SyntaxError
	switch {
	case errors.As(err, &se):
		return badRequest("body", fmt.Sprintf("malformed JSON at byte %d: %s", se.Offset, se.Error()))
	case errors.Is(err, io.EOF) && fallback != "":
		return badRequest("body", fallback)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("body", "malformed JSON: unexpected end")
	}
	return badRequest("body", "malformed JSON")
}

// given reports whether field is present and not null.
func (o object) given(field string) bool {
	raw, ok := o[field]
	return ok && string(raw) != "null"
}

// isNull reports whether field is present as null.
func (o object) isNull(field string) bool {
	raw, ok := o[field]
	return ok && string(raw) == "null"
}

// kind names the JSON type of raw for "want X, got Y" messages.
func kind(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '"':
		return "a string"
	case '[':
		return "an array"
	case '{':
		return "an object"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

func (o object) str(field string) (string, error) {
	return stringAt(field, o[field])
}

func stringAt(field string, raw json.RawMessage) (string, error) {
	var v string
	if len(raw) == 0 || raw[0] != '"' || json.Unmarshal(raw, &v) != nil {
		return "", badRequest(field, "want a string, got "+kind(raw))
	}
	if !utf8.Valid(raw) || loneSurrogate(raw) {
		// encoding/json reads either as U+FFFD: the key would carry other
		// text than was sent. The CLI refuses it too (keystore.CheckText).
		return "", badRequest(field, "must be valid UTF-8")
	}
	return v, nil
}

// loneSurrogate reports whether the JSON string raw, well formed, escapes
// half of a UTF-16 surrogate pair without the other half ("\ud800"), which
// stands for no character.
func loneSurrogate(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++ // the escaped character: a "\\" escapes no escape
		if raw[i] != 'u' {
			continue
		}
		r := escapedRune(raw[i+1:])
		i += 4
		switch {
		case utf16.IsSurrogate(r) && r >= 0xDC00: // a low half first
			return true
		case utf16.IsSurrogate(r):
			if len(raw) < i+7 || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return true
			}
			if low := escapedRune(raw[i+3:]); low < 0xDC00 || low > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

// escapedRune is the code unit of the four hex digits a \u escape of a
// well-formed JSON string starts b with.
func escapedRune(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= 'a':
			c -= 'a' - 10
		case c >= 'A':
			c -= 'A' - 10
		default:
			c -= '0'
		}
		r = r<<4 | rune(c)
	}
	return r
}

func (o object) strs(field string) ([]string, error) {
	raw := o[field]
	var items []json.RawMessage
	if len(raw) == 0 || raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
		return nil, badRequest(field, "want an array of strings, got "+kind(raw))
	}
	out := make([]string, len(items))
	for i, it := range items {
		v, err := stringAt(fmt.Sprintf("%s[%d]", field, i), bytes.TrimSpace(it))
		if err != nil {
			return nil, err
		}
		out[i] = v
	}
	return out, nil
}

func (o object) name() (string, error) {
	v, err := o.str("name")
	if err != nil {
		return "", err
	}
	return v, keystore.ValidateName(v)
}

// permissions reads the permission list: at least one, each valid (the
// error names the index of a bad one instead of quoting it).
func (o object) permissions() ([]string, error) {
	perms, err := o.strs("permissions")
	if err != nil {
		return nil, err
	}
	if len(perms) == 0 {
		return nil, badRequest("permissions", "at least one (a key without permissions passes only routes that need none)")
	}
	return perms, keystore.ValidatePermissions(perms)
}

func (o object) rateLimit() (keystore.RateLimit, error) {
	v, err := o.str("rate_limit")
	if err != nil {
		return keystore.RateLimit{}, err
	}
	v = strings.TrimSpace(v)
	r, perr := keystore.ParseRateLimit(v)
	if perr != nil || v == "" {
		// ParseRateLimit's message quotes the value; this one does not.
		return keystore.RateLimit{}, badRequest("rate_limit", `want a rate like "100/m" (N/s, N/m, N/h, N/d or N/<duration> from 1s to 366 days) or "none"`)
	}
	return r, nil
}

func (o object) ipAllowlist() ([]netip.Prefix, error) {
	list, err := o.strs("ip_allowlist")
	if err != nil {
		return nil, err
	}
	if len(list) > 100 {
		return nil, badRequest("ip_allowlist", "at most 100 entries")
	}
	out := make([]netip.Prefix, 0, len(list))
	for i, v := range list {
		p, err := keystore.ParseCIDRs([]string{v})
		if err != nil {
			msg := "want a CIDR like 10.0.0.0/8 or 2001:db8::/32, or an address"
			if _, perr := netip.ParsePrefix(strings.TrimSpace(v)); perr == nil {
				msg = err.Error() // host bits set: it quotes an address, never a secret
			}
			return nil, badRequest(fmt.Sprintf("ip_allowlist[%d]", i), msg)
		}
		out = append(out, p...)
	}
	return out, nil
}

// policies reads the policies a key is valid under ([] = every policy).
func (o object) policies() ([]string, error) {
	list, err := o.strs("policies")
	if err != nil {
		return nil, err
	}
	return list, keystore.ValidatePolicies(list)
}

// meta reads a metadata object: names to strings, or (nullOK, a PATCH)
// to null, which deletes the entry; a deletion is "" in the map. The
// entries' bounds are checked on the resulting record (keystore.ValidateMeta).
// Errors name the entry, never quote a value.
func (o object) meta(nullOK bool) (map[string]string, error) {
	raw := o["meta"]
	if len(raw) == 0 || raw[0] != '{' || !json.Valid(raw) {
		return nil, badRequest("meta", "want an object of strings, got "+kind(raw))
	}
	out := map[string]string{}
	err := eachMember(raw, "meta.", func(name string, v json.RawMessage) error {
		if err := keystore.ValidateMetaName("meta", name); err != nil {
			return err
		}
		if _, dup := out[name]; !dup && len(out) == keystore.MaxMetaEntries {
			return badRequest("meta", fmt.Sprintf("at most %d entries", keystore.MaxMetaEntries))
		}
		if nullOK && string(v) == "null" {
			out[name] = ""
			return nil
		}
		s, err := stringAt("meta."+name, v)
		if err != nil {
			return err
		}
		if s == "" {
			return badRequest("meta."+name, "values are 1 to 256 bytes (delete an entry with null)")
		}
		out[name] = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (o object) expiresAt(now time.Time) (time.Time, error) {
	v, err := o.str("expires_at")
	if err != nil {
		return time.Time{}, err
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, badRequest("expires_at", `want an RFC 3339 time like "2030-01-02T15:04:05Z"`)
	}
	if t.Sub(now) > maxFuture {
		return time.Time{}, badRequest("expires_at", "at most 100 years from now")
	}
	return t.UTC(), nil
}

// duration reads a Go duration string (ttl, grace) from 0 to maxFuture.
func (o object) duration(field string) (time.Duration, error) {
	v, err := o.str(field)
	if err != nil {
		return 0, err
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, badRequest(field, `want a Go duration like "24h", "90m" or "30s"`)
	}
	switch {
	case d < 0:
		return 0, badRequest(field, "must not be negative")
	case d > maxFuture:
		return 0, badRequest(field, "at most 100 years")
	}
	return d, nil
}
