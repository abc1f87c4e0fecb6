package admin

import (
	"bytes"
	"container/list"
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
	"net/url"
	"slices"
	"sync"
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

// DefaultLeakBufferedBytes bounds the report buffers held at once when
// LeakOptions.MaxBufferedBytes is 0: eight full reports.
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
	// MaxBufferedBytes bounds the buffers that the reports being read or
	// handled hold together. A buffer starts small and doubles as bytes
	// come, so a client is given room for what it sent, at most twice
	// that. A report whose buffer does not fit makes room by cutting off
	// the reports still reading their bodies that began before it, oldest
	// first; when that is not enough it is answered 503 and its
	// connection closed, as is a report cut off. 0 means
	// DefaultLeakBufferedBytes. Shared by every handler made with these
	// options.
	MaxBufferedBytes int64

	bodies       leakBodies
	unknownNoted atomic.Int64 // when a report signed by an unknown key was last logged, in Unix nanoseconds
}

// leakBodies counts the buffers of the reports in flight, in bytes,
// against LeakOptions.MaxBufferedBytes.
//
// What it promises: the buffers counted never pass the bound, and a report
// is refused for want of room only when every report still reading its
// body began after it. Why that keeps GitHub's report in: GitHub sends a
// report in one go, so when it begins, every body already being read is
// older, and is cut off before it is refused. To keep it out, clients
// would have to fill the whole bound with bodies begun after it, in the
// moment it takes to arrive; bodies begun earlier and left to stall only
// hold room until someone needs it. A report whose body is read keeps its
// buffer until it is answered, and is never cut: only GitHub's pass the
// signature check, and any other is refused at once.
//
// Why the bound holds while readers are cut: a buffer is counted before it
// is made; a report cut off keeps its buffer counted (leaving) until its
// handler ends and lets the buffer go, and the report that needed the room
// waits for that. So a crowd of senders cutting each other off holds no
// more than the bound in buffers (and the garbage of the ones outgrown).
type leakBodies struct {
	mu      sync.Mutex
	held    int64     // bytes counted, those of reports cut off included
	leaving int64     // of held, the bytes of reports cut off, until they end
	reading list.List // of *bodyShare, by when they began
	freed   chan struct{}
}

// bodyShare is one report's share of leakBodies.
type bodyShare struct {
	held    int64
	reading *list.Element // in leakBodies.reading; nil before it takes anything, and once read
	cut     func()        // fails its pending read at once
	dropped bool          // cut off: it may take nothing more
}

// take counts n more bytes of b's body, cutting off older readers to make
// room and waiting for them to end, and reports whether they fit; bytes
// that do not fit are not counted, and a body that was cut off takes
// nothing more. done ends a wait. Readers are cut under the lock, so that
// each is cut while its handler still runs (it releases its share, under
// the lock, before it returns).
func (lb *leakBodies) take(b *bodyShare, n, most int64, done <-chan struct{}) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for {
		switch {
		case b.dropped:
			return false
		case lb.held+n <= most:
			lb.held += n
			b.held += n
			if b.reading == nil {
				b.reading = lb.reading.PushBack(b)
			}
			return true
		case lb.held-lb.leaving+n > most: // what is leaving will not make room: cut the oldest
			front := lb.reading.Front()
			if front == nil || front == b.reading {
				return false
			}
			old := lb.reading.Remove(front).(*bodyShare)
			old.reading, old.dropped = nil, true
			lb.leaving += old.held
			old.cut()
			lb.wake() // it may be waiting in take itself
		default: // wait for the readers cut off to end
			freed := lb.freedChan()
			lb.mu.Unlock()
			select {
			case <-freed:
			case <-done:
				lb.mu.Lock()
				return false
			}
			lb.mu.Lock()
		}
	}
}

// freedChan is closed the next time bytes are released or a reader is cut.
func (lb *leakBodies) freedChan() chan struct{} {
	if lb.freed == nil {
		lb.freed = make(chan struct{})
	}
	return lb.freed
}

func (lb *leakBodies) wake() {
	if lb.freed != nil {
		close(lb.freed)
		lb.freed = nil
	}
}

// read marks b's body as read in full, no longer to be cut off, and
// reports whether it still may go on (false: it was cut off meanwhile).
func (lb *leakBodies) read(b *bodyShare) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if b.reading != nil {
		lb.reading.Remove(b.reading)
		b.reading = nil
	}
	return !b.dropped
}

// cutOff reports whether b was cut off to make room.
func (lb *leakBodies) cutOff(b *bodyShare) bool {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return b.dropped
}

// give gives back n bytes of b's share (a buffer it no longer uses).
func (lb *leakBodies) give(b *bodyShare, n int64) {
	if n == 0 {
		return
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.held -= n
	b.held -= n
	if b.dropped {
		lb.leaving -= n
	}
	lb.wake()
}

// release gives back b's share once its report is answered.
func (lb *leakBodies) release(b *bodyShare) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	if b.reading != nil {
		lb.reading.Remove(b.reading)
		b.reading = nil
	}
	lb.held -= b.held
	if b.dropped {
		lb.leaving -= b.held
	}
	b.held = 0
	lb.wake()
}

// heldBytes is what the buffers of the reports in flight take.
func (lb *leakBodies) heldBytes() int64 {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return lb.held
}

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
// so a report's body must arrive within BodyTimeout, and the buffers held
// at once are bounded (MaxBufferedBytes), by what the clients sent rather
// than by the reports begun; reports left to stall are cut off to make
// room for newer ones (leakBodies), so that stalled clients cannot keep
// GitHub's report out.
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
	bodyDeadline := time.Now().Add(timeout)
	_ = rc.SetReadDeadline(bodyDeadline)
	if deadline, ok := r.Context().Deadline(); ok { // the route's timeout, longer than the listener's write timeout
		_ = rc.SetWriteDeadline(deadline.Add(time.Second))
	}
	share := &bodyShare{cut: func() {
		_ = rc.SetReadDeadline(time.Now())
		// A report sent with Expect: 100-continue to a client that reads
		// nothing back blocks in net/http's write of "100 Continue" on its
		// first read, which a read deadline does not end; this does, and
		// still leaves a cut report that is reading the time to be told 503.
		_ = rc.SetWriteDeadline(time.Now().Add(cutWriteGrace))
	}}
	defer s.leaks.bodies.release(share)
	// A wait for room counts in the body's time, as a read does.
	reading, cancel := context.WithDeadline(r.Context(), bodyDeadline)
	defer cancel()
	body, err := s.leaks.readBody(w, r.WithContext(reading), limit, share)
	if err != nil {
		refuseBody(w, rc)
		return err
	}
	if err := s.leaks.verify(r.Header, body); err != nil {
		if err == errUnknownGitHubKey {
			s.noteUnknownGitHubKey(r.Header.Get("Github-Public-Key-Identifier"))
		}
		return err
	}
	var reports []leakReport
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&reports); err != nil || !onlySpaceAfter(dec) {
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
// above it), into a buffer counted in share (leakBodies) before it is
// made: 503 when it does not fit, or when the body is cut off to make room
// for a newer one. The buffer starts small and doubles as bytes come, so
// a client is given room only for what it sent, and at most twice that.
func (lo *LeakOptions) readBody(w http.ResponseWriter, r *http.Request, limit int64, share *bodyShare) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, errTooLarge
	}
	most := lo.MaxBufferedBytes
	if most <= 0 {
		most = DefaultLeakBufferedBytes
	}
	var b []byte
	// grow makes b room for size bytes: the new buffer is counted before
	// it is made, the old one no longer once its bytes are copied.
	grow := func(size int64) bool {
		if !lo.bodies.take(share, size, most, r.Context().Done()) {
			return false
		}
		next := make([]byte, len(b), size)
		copy(next, b)
		lo.bodies.give(share, int64(cap(b)))
		b = next
		return true
	}
	// Never sized by Content-Length: a client that declares a large body
	// and sends none of it is given nothing more.
	if !grow(min(512, limit)) {
		return nil, errLeaksBusy
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	for {
		var n int
		var err error
		switch {
		case len(b) < cap(b):
			n, err = rd.Read(b[len(b):cap(b)])
			b = b[:len(b)+n]
		case int64(cap(b)) < limit:
			if !grow(min(2*int64(cap(b)), limit)) {
				return nil, errLeaksBusy
			}
			continue
		default: // limit bytes read: one more is too many
			var more [1]byte
			if n, err = rd.Read(more[:]); n > 0 {
				return nil, errTooLarge
			}
		}
		var tooLarge *http.MaxBytesError
		switch {
		case err == io.EOF:
			if !lo.bodies.read(share) {
				return nil, errLeaksBusy
			}
			return b, nil
		case errors.As(err, &tooLarge):
			return nil, errTooLarge
		case err != nil:
			if lo.bodies.cutOff(share) {
				return nil, errLeaksBusy
			}
			return nil, badRequest("body", "could not be read")
		}
	}
}

// cutWriteGrace is how long a report cut off to make room has to write its
// 503 (leakBodies).
const cutWriteGrace = 100 * time.Millisecond

// onlySpaceAfter reports whether nothing but white space follows the value
// dec decoded. (dec.More is false before a ']' or '}' too, which would let
// a stray one follow the array.)
func onlySpaceAfter(dec *json.Decoder) bool {
	_, err := dec.Token()
	return err == io.EOF
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
	case errors.Is(err, keystore.ErrNeedsNewer) && k != nil:
		// A newer version restricted the key in a way this one cannot
		// read: it cannot decide a check by the record, but it can revoke
		// the key (a revocation keeps what it does not know).
	case err != nil:
		return "", err
	}
	// Revoked whatever its state: an expired key would work again once
	// someone moved its expiry, and revoking a revoked key again is a no-op
	// that asks the replicas once more to confirm it (store.redis.
	// confirm_replicas), for a report that failed on that and came again.
	wasRevoked := k.RevokedAt != nil
	switch k, err = s.manager.Revoke(ctx, k.ID, LeakActor); {
	case errors.Is(err, keystore.ErrNotFound):
		// Deleted since the lookup (a key dead past keys.retention): its
		// secret matches nothing any more, as the next report would find.
		// Not an error, which would fail the rest of the report.
		return falsePositive, nil
	case err != nil:
		return "", err
	}
	format := s.authz.Policies().Format
	owner := k.Owner
	if format.LabelHoldsKey(owner) {
		// A record made before labels were checked, or by hand: its
		// owner must not repeat another secret in the log.
		owner = "(a value shaped like an API key, not shown)"
	}
	s.log.Warn("GitHub reported a leaked API key", "key_id", k.ID, "owner", owner,
		"revoked_now", !wasRevoked, "found_at", reported(format, rep.URL), "source", reported(format, rep.Source),
		"still_live", s.liveLine(ctx, k))
	if s.leaks.OnLeak != nil {
		s.leaks.OnLeak(k)
	}
	return truePositive, nil
}

// liveLine names the keys of k's line of rotations that still work now
// that k is revoked (keystore.Manager.LiveLine), for the leak's log line:
// only k is revoked, as its successor may be the one its owner made
// because of the leak, but whoever found k may have rotated it first, if
// it could rotate itself. It says so when it could not look.
func (s *server) liveLine(ctx context.Context, k *keystore.Key) []string {
	later, earlier, err := s.manager.LiveLine(ctx, k)
	if err != nil {
		return []string{"unknown: " + err.Error()}
	}
	ids := make([]string, 0, len(later)+len(earlier))
	for _, e := range slices.Concat(later, earlier) {
		ids = append(ids, e.ID)
	}
	return ids
}

// reported is a GitHub-supplied string as a log line may hold it: left out
// when it may hold a key of ours (a file or gist named after the secret it
// leaks has the key in its URL, and a key never reaches a log, revoked or
// not), else cut to 512 bytes. It is read as everything written out is
// (Format.MayHoldKey: a key with one character mistyped or a space where
// it was wrapped still gives away all but that character), and percent-
// decoded too, as a URL may spell the key's "_" %5F. The key is looked for
// in the whole string, before the cut could leave a piece of it the check
// no longer recognises.
func reported(f keystore.Format, v string) string {
	decoded, err := url.PathUnescape(v)
	if f.MayHoldKey(v) || err == nil && decoded != v && f.MayHoldKey(decoded) {
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
		return errUnknownGitHubKey
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

var errUnknownGitHubKey = badSignature("unknown GitHub public key identifier")

// unknownKeyEvery is how often at most a report signed by a key the keys
// file does not hold is logged: anyone can send one, but after GitHub
// starts signing with a new key, every real report is such a one, and
// refused as forged until the file is saved again and the server
// restarted. Without a word in the log, leaked keys would quietly stay
// live.
const unknownKeyEvery = time.Minute

// noteUnknownGitHubKey logs, at most once per unknownKeyEvery, a report
// signed by key identifier id, which the keys file does not hold. The
// identifier is logged only in the shape of GitHub's (64 lowercase hex
// digits): anything else is the sender's text.
func (s *server) noteUnknownGitHubKey(id string) {
	now := s.now().UnixNano()
	last := s.leaks.unknownNoted.Load()
	if last != 0 && now-last < int64(unknownKeyEvery) || !s.leaks.unknownNoted.CompareAndSwap(last, now) {
		return
	}
	if !isGitHubKeyID(id) {
		id = "(not the shape of a GitHub key identifier)"
	}
	s.log.Warn("a leak report was signed by a GitHub key that leaks.github_keys_file does not hold, and refused as forged (401): "+
		"if GitHub added a signing key, save https://api.github.com/meta/public_keys/secret_scanning to the file again and restart "+
		"(anyone can send such a report, so this is logged at most once a minute)", "key_identifier", id)
}

// isGitHubKeyID reports whether id has the shape of GitHub's key
// identifiers: a SHA-256 in lowercase hex.
func isGitHubKeyID(id string) bool {
	if len(id) != 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
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
