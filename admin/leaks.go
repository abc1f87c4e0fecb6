package admin

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/keystore"
)

// LeakActor is the actor of the revocations that leak reports cause.
const LeakActor = "github-secret-scanning"

// DefaultLeakBodyBytes bounds a leak report when LeakOptions.MaxBodyBytes
// is 0. GitHub batches matches into one report; a match is a few hundred
// bytes, so this is thousands of them.
const DefaultLeakBodyBytes = 1 << 20

// DefaultLeakBodyTimeout bounds the reading of a report's body when
// LeakOptions.BodyTimeout is 0: GitHub sends a report in one go, so only a
// client that trickles its body comes near it.
const DefaultLeakBodyTimeout = 10 * time.Second

// DefaultLeakBufferedBytes bounds the bytes of report bodies held at once
// when LeakOptions.MaxBufferedBytes is 0: eight full reports.
const DefaultLeakBufferedBytes = 8 * DefaultLeakBodyBytes

// LeakOptions enables the GitHub secret-scanning partner endpoint: GitHub
// finds one of our keys in a public repository, gist or package and posts
// it here; a live key is revoked at once.
type LeakOptions struct {
	// PublicKeys are GitHub's secret-scanning signing keys by their
	// key_identifier. GitHub publishes them at
	// https://api.github.com/meta/public_keys/secret_scanning; fetching and
	// refreshing that list is the operator's job (ParseGitHubPublicKeys
	// reads the document), not this package's.
	PublicKeys map[string]*ecdsa.PublicKey
	// OnLeak, if set, is told about every reported token that is one of our
	// keys (after its revocation, if it was live), to record the key.leaked
	// audit event: Manager.OnChange knows only the four kinds of change.
	OnLeak func(k *keystore.Key)
	// MaxBodyBytes bounds a report (413 above); 0 means DefaultLeakBodyBytes.
	MaxBodyBytes int64
	// BodyTimeout bounds the reading of a report's body, whatever the
	// listener allows; 0 means DefaultLeakBodyTimeout.
	BodyTimeout time.Duration
	// MaxBufferedBytes bounds the body bytes that every report being read
	// or handled holds together, counted as they arrive: a report whose
	// next bytes would pass it is answered 503 and its connection closed.
	// 0 means DefaultLeakBufferedBytes. Shared by every handler made with
	// these options.
	MaxBufferedBytes int64

	buffered atomic.Int64 // body bytes held by the reports in flight
}

// hold counts n more bytes of a report's body against MaxBufferedBytes,
// and reports whether they fit; bytes that do not are not counted.
func (lo *LeakOptions) hold(n int64) bool {
	most := lo.MaxBufferedBytes
	if most <= 0 {
		most = DefaultLeakBufferedBytes
	}
	if lo.buffered.Add(n) > most {
		lo.buffered.Add(-n)
		return false
	}
	return true
}

// release gives back n bytes counted by hold.
func (lo *LeakOptions) release(n int64) { lo.buffered.Add(-n) }

var errLeaksBusy = &apiError{http.StatusServiceUnavailable, codeUnavailable, "too many leak reports in progress; retry shortly"}

// leakReport is one match in GitHub's report.
type leakReport struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

// leakLabel is our feedback on one match, in GitHub's format.
type leakLabel struct {
	// TokenHash is the hex SHA-256 of the token. GitHub accepts the token
	// back either raw ("token_raw") or hashed ("token_hash"); the hash tells
	// GitHub just as well which match we mean, without a key in the
	// response, where any proxy or debug log could pick it up.
	TokenHash string `json:"token_hash"`
	TokenType string `json:"token_type"`
	Label     string `json:"label"`
}

const (
	truePositive  = "true_positive"
	falsePositive = "false_positive"
)

// githubLeaks is POST /v1/leaks/github. The signature is checked over the
// raw body before anything is parsed; then each token is checked for our
// format (no store call for anything else), hashed and looked up.
//
// Anyone can reach it, and it must buffer a body to check its signature:
// so a report's body must arrive within BodyTimeout, and the bodies held
// at once are bounded by the bytes that have come (MaxBufferedBytes), not
// by the reports begun: clients that open reports and stall hold no more
// than they sent, and cannot keep GitHub's report out by their number.
func (s *server) githubLeaks(w http.ResponseWriter, r *http.Request, _ *caller) error {
	rc := http.NewResponseController(w)
	limit := s.leaks.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultLeakBodyBytes
	}
	timeout := s.leaks.BodyTimeout
	if timeout <= 0 {
		timeout = DefaultLeakBodyTimeout
	}
	// A listener that cannot set deadlines (ErrNotSupported) keeps its own.
	_ = rc.SetReadDeadline(time.Now().Add(timeout))
	if deadline, ok := r.Context().Deadline(); ok { // the route's timeout, longer than the listener's write timeout
		_ = rc.SetWriteDeadline(deadline.Add(time.Second))
	}
	body, held, err := s.leaks.readBody(w, r, limit)
	defer s.leaks.release(held)
	if err != nil {
		refuseBody(w, rc)
		return err
	}
	if err := s.leaks.verify(r.Header, body); err != nil {
		return err
	}
	var reports []leakReport
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&reports); err != nil || dec.More() {
		return badRequest("body", "want a JSON array of {token, type, url, source}")
	}
	format := s.authz.Policies().Format
	hasher := s.manager.Hasher
	labels := make([]leakLabel, 0, len(reports))
	seen := map[keystore.Hash]string{} // one report may name a token twice
	for _, rep := range reports {
		label := falsePositive
		if format.Check(rep.Token) == nil {
			h := hasher.Hash(rep.Token)
			var ok bool
			if label, ok = seen[h]; !ok {
				if label, err = s.leaked(r.Context(), h, rep); err != nil {
					return err
				}
				seen[h] = label
			}
		}
		sum := sha256.Sum256([]byte(rep.Token))
		labels = append(labels, leakLabel{TokenHash: hex.EncodeToString(sum[:]), TokenType: rep.Type, Label: label})
	}
	writeJSON(w, http.StatusOK, labels)
	return nil
}

// readBody reads at most limit bytes of r's body as readBody does (413
// above it), counting each piece against MaxBufferedBytes as it arrives:
// 503 when one does not fit. held is what it counted, to release once the
// body is no longer needed, whatever the error. The buffer grows as
// io.ReadAll's does, so it takes at most about twice the bytes counted.
func (lo *LeakOptions) readBody(w http.ResponseWriter, r *http.Request, limit int64) (body []byte, held int64, err error) {
	if r.ContentLength > limit {
		return nil, 0, errTooLarge
	}
	// Never sized by Content-Length: a client that declares a large body
	// and sends none of it is given nothing.
	rd := http.MaxBytesReader(w, r.Body, limit)
	b := make([]byte, 0, 512)
	for {
		n, err := rd.Read(b[len(b):cap(b)])
		if n > 0 {
			if !lo.hold(int64(n)) {
				return nil, held, errLeaksBusy
			}
			held += int64(n)
			b = b[:len(b)+n]
		}
		var tooLarge *http.MaxBytesError
		switch {
		case err == io.EOF:
			return b, held, nil
		case errors.As(err, &tooLarge):
			return nil, held, errTooLarge
		case err != nil:
			return nil, held, badRequest("body", "could not be read")
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow, as io.ReadAll does
		}
	}
}

// refuseBody makes sure nothing more of r's body is read: the connection
// is closed after the answer, and a read still pending fails at once
// (net/http would otherwise try to drain a small remainder after the
// handler returns, waiting on a client that trickles it).
func refuseBody(w http.ResponseWriter, rc *http.ResponseController) {
	w.Header().Set("Connection", "close")
	_ = rc.SetReadDeadline(time.Now())
}

// leaked handles one well-formed token: ours or not, and if ours, revoked.
// A store that cannot answer fails the whole report (503), so that GitHub
// sends it again; revoking is idempotent.
func (s *server) leaked(ctx context.Context, h keystore.Hash, rep leakReport) (string, error) {
	k, err := s.store.Lookup(ctx, h)
	switch {
	case errors.Is(err, keystore.ErrNotFound):
		return falsePositive, nil
	case err != nil:
		return "", err
	}
	// Revoked whatever its state: an expired key would work again once
	// someone moved its expiry, and revoking a revoked key again is a no-op
	// that asks the replicas once more to confirm it (store.redis.
	// confirm_replicas), for a report that failed on that and came again.
	wasRevoked := k.RevokedAt != nil
	if k, err = s.manager.Revoke(ctx, k.ID, LeakActor); err != nil {
		return "", err
	}
	format := s.authz.Policies().Format
	s.log.Warn("GitHub reported a leaked API key", "key_id", k.ID, "owner", k.Owner,
		"revoked_now", !wasRevoked, "found_at", reported(format, rep.URL), "source", reported(format, rep.Source))
	if s.leaks.OnLeak != nil {
		s.leaks.OnLeak(k)
	}
	return truePositive, nil
}

// reported is a GitHub-supplied string as a log line may hold it: left out
// when it holds a key of ours (a file or gist named after the secret it
// leaks has the key in its URL, and a key never reaches a log, revoked or
// not), else cut to 512 bytes. The key is looked for in the whole string,
// before the cut could leave a piece of it the check no longer recognises.
func reported(f keystore.Format, v string) string {
	if f.ContainsKey(v) {
		return "(left out: it holds an API key)"
	}
	if len(v) > 512 {
		return v[:512] + "...[truncated]"
	}
	return v
}

// verify checks GitHub's ECDSA P-256 SHA-256 signature over the raw body.
func (lo *LeakOptions) verify(h http.Header, body []byte) error {
	id, sig64 := h.Get("Github-Public-Key-Identifier"), h.Get("Github-Public-Key-Signature")
	if id == "" || sig64 == "" {
		return badSignature("missing Github-Public-Key-Identifier or Github-Public-Key-Signature")
	}
	pub := lo.PublicKeys[id]
	if pub == nil {
		return badSignature("unknown GitHub public key identifier")
	}
	sig, err := base64.StdEncoding.DecodeString(sig64)
	if err != nil {
		return badSignature("signature is not base64")
	}
	digest := sha256.Sum256(body)
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return badSignature("signature does not match the body")
	}
	return nil
}

func badSignature(msg string) *apiError {
	return &apiError{http.StatusUnauthorized, codeInvalidSignature, msg}
}

// ParseGitHubPublicKeys reads GitHub's list of secret-scanning signing keys
// (the JSON document at
// https://api.github.com/meta/public_keys/secret_scanning) into
// LeakOptions.PublicKeys. Every key must be an ECDSA P-256 public key in
// PEM, and an identifier listed twice must name the same key; the error
// names the first that is not.
func ParseGitHubPublicKeys(doc []byte) (map[string]*ecdsa.PublicKey, error) {
	var list struct {
		PublicKeys []struct {
			KeyIdentifier string `json:"key_identifier"`
			Key           string `json:"key"`
		} `json:"public_keys"`
	}
	if err := json.Unmarshal(doc, &list); err != nil {
		return nil, fmt.Errorf("GitHub public keys: %w", err)
	}
	if len(list.PublicKeys) == 0 {
		return nil, errors.New("GitHub public keys: the document lists none")
	}
	keys := make(map[string]*ecdsa.PublicKey, len(list.PublicKeys))
	for _, k := range list.PublicKeys {
		if k.KeyIdentifier == "" {
			return nil, errors.New("GitHub public keys: a key has no key_identifier")
		}
		block, _ := pem.Decode([]byte(k.Key))
		if block == nil {
			return nil, fmt.Errorf("GitHub public key %s: not PEM", k.KeyIdentifier)
		}
		pub, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("GitHub public key %s: %w", k.KeyIdentifier, err)
		}
		ec, ok := pub.(*ecdsa.PublicKey)
		if !ok || ec.Curve != elliptic.P256() {
			return nil, fmt.Errorf("GitHub public key %s: want an ECDSA P-256 key", k.KeyIdentifier)
		}
		if prev := keys[k.KeyIdentifier]; prev != nil && !prev.Equal(ec) {
			// Which of the two signs for the identifier would be a guess
			// (the last, as a map keeps it; the first, as a reader of
			// the file might think): not a document GitHub publishes.
			return nil, fmt.Errorf("GitHub public key %s: listed twice, with different keys", k.KeyIdentifier)
		}
		keys[k.KeyIdentifier] = ec
	}
	return keys, nil
}
