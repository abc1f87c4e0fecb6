package admin

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/keystore"
)

// idempotencyHeader makes POST /v1/keys safe to send again (keystore.Once).
const idempotencyHeader = "Idempotency-Key"

// Codes of a create whose idempotency key was used before.
const (
	codeAlreadyCreated      authz.Code = "already_created"
	codeIdempotencyKeyReuse authz.Code = "idempotency_key_reused"
)

// once reads the Idempotency-Key of a create: nil when there is none. The
// value is either a token (a UUID, as most clients send it) or a
// quoted string of structured header fields (RFC 8941), the form the
// header's IETF draft gives; both name the same key. Sent twice, or
// unreadable, it is 400: a create whose retry protection was dropped would
// look protected to its client.
func once(r *http.Request, body []byte, owner string) (*keystore.Once, error) {
	values := r.Header.Values(idempotencyHeader)
	switch len(values) {
	case 0:
		return nil, nil
	case 1:
	default:
		return nil, badRequest(idempotencyHeader, "give it once")
	}
	key, err := unquote(values[0])
	if err != nil {
		return nil, err
	}
	if err := keystore.ValidateIdempotencyKey(key); err != nil {
		return nil, err
	}
	request, err := requestHash(body, owner)
	if err != nil {
		return nil, err
	}
	return &keystore.Once{Key: key, Request: request}, nil
}

// unquote reads v as a structured-field string when it is quoted (only \"
// and \\ escaped), else as it is.
func unquote(v string) (string, error) {
	if !strings.HasPrefix(v, `"`) {
		return v, nil
	}
	var b strings.Builder
	for i := 1; i < len(v); i++ {
		switch c := v[i]; c {
		case '"':
			if i != len(v)-1 {
				return "", badRequest(idempotencyHeader, "text after its closing quote")
			}
			return b.String(), nil
		case '\\':
			i++
			if i == len(v) || v[i] != '"' && v[i] != '\\' {
				return "", badRequest(idempotencyHeader, `only \" and \\ may be escaped`)
			}
			b.WriteByte(v[i])
		default:
			b.WriteByte(c)
		}
	}
	return "", badRequest(idempotencyHeader, "no closing quote")
}

// requestHash identifies what a create body asks for, and for whom: its
// JSON as values (the same fields, in any order or spacing, are the same
// request), with the owner the key would have.
func requestHash(body []byte, owner string) (keystore.Hash, error) {
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber() // 1e2 and 100 stay two requests; nothing is rounded
	var v any
	if err := d.Decode(&v); err != nil {
		return keystore.Hash{}, badRequest("body", "not JSON") // decodeObject read it already
	}
	canon, err := json.Marshal(v) // objects' names in order
	if err != nil {
		return keystore.Hash{}, err
	}
	h := sha256.New()
	h.Write([]byte("extauthz create request v1\x00" + owner + "\x00"))
	h.Write(canon)
	return keystore.Hash(h.Sum(nil)), nil
}

// earlierCreate answers a create whose idempotency key was used before, or
// nil for any other error. A repeat of the same request is told which key
// the first made (in its message and Location): its secret was in the
// answer the client lost and is stored nowhere, so the way to a secret the
// client holds is to rotate that key with grace 0, which also cuts off the
// one nobody holds.
func earlierCreate(w http.ResponseWriter, err error) error {
	var earlier *keystore.EarlierCreate
	if !errors.As(err, &earlier) {
		return nil
	}
	if !earlier.SameRequest {
		return &apiError{http.StatusUnprocessableEntity, codeIdempotencyKeyReuse,
			"this Idempotency-Key was used in the last 24 hours by a create that asked for something else; use a new one for each key"}
	}
	w.Header().Set("Location", "/v1/keys/"+earlier.ID)
	return &apiError{http.StatusConflict, codeAlreadyCreated,
		"this request made key " + earlier.ID + " already; its secret was in that answer and is stored nowhere, so if the answer was lost, rotate " +
			earlier.ID + " with \"grace\": \"0s\" for a secret you hold"}
}
