package keystore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"
)

// Once makes a create safe to send again: a client whose answer was lost
// (a timeout, a dropped connection) repeats its request with the same
// idempotency key, and instead of a second key, whose secret the lost
// answer would have been the only copy of, it hears which key the first
// request made. The secret itself cannot be repeated: it is stored
// nowhere. Idempotency keys are the owner's: two owners may use the same.
type Once struct {
	// Key is the client's idempotency key (ValidateIdempotencyKey).
	Key string
	// Request identifies what the request asked for, so that the key used
	// again for another request is refused rather than taken as a repeat.
	Request Hash
}

// OnceWindow is how long a create's idempotency key is remembered: a
// request repeated later makes a new key.
const OnceWindow = 24 * time.Hour

// maxIdempotencyKeyLen bounds an idempotency key, in bytes.
const maxIdempotencyKeyLen = 255

// ValidateIdempotencyKey accepts 1 to 255 printable ASCII characters
// (spaces inside included): what clients send (UUIDs, request ids), and
// nothing that could be read two ways.
func ValidateIdempotencyKey(key string) error {
	if key == "" || len(key) > maxIdempotencyKeyLen {
		return &FieldError{"Idempotency-Key", fmt.Sprintf("must be 1 to %d characters", maxIdempotencyKeyLen)}
	}
	for i := range len(key) {
		if c := key[i]; c < 0x20 || c > 0x7e {
			return &FieldError{"Idempotency-Key", "must be printable ASCII"}
		}
	}
	if key[0] == ' ' || key[len(key)-1] == ' ' {
		return &FieldError{"Idempotency-Key", "must not begin or end with a space"}
	}
	return nil
}

// OnceRecord is what a store keeps of a create's idempotency key: the key
// itself only as a hash, with its owner in it.
type OnceRecord struct {
	Token   Hash      // OnceToken of the owner and the idempotency key
	Request Hash      // Once.Request
	Until   time.Time // when the store may forget it
}

// OnceToken names an owner's idempotency key in a store.
func OnceToken(owner, key string) Hash {
	return Hash(sha256.Sum256([]byte("extauthz idempotency key v1\x00" + owner + "\x00" + key)))
}

// OnceCreator is a Store that can make a create idempotent.
type OnceCreator interface {
	// CreateOnce is Create that keeps once with the key, in the same
	// atomic step, until once.Until. When the store holds once.Token
	// already (and not past its Until) it stores nothing and returns an
	// *EarlierCreate, or an error wrapping ErrExists when the record
	// names k itself (a retry of this very write, whose answer was lost).
	CreateOnce(ctx context.Context, k *Key, h Hash, maxPerOwner int, once OnceRecord) error
}

// ErrIdempotencyKeyUsed is wrapped by *EarlierCreate.
var ErrIdempotencyKeyUsed = errors.New("the idempotency key was used by an earlier create")

// EarlierCreate is the answer to a create whose idempotency key an earlier
// create of the same owner used, within OnceWindow.
type EarlierCreate struct {
	ID          string // the key the earlier create made
	SameRequest bool   // the earlier create asked for the same (Once.Request)
}

func (e *EarlierCreate) Error() string {
	if e.SameRequest {
		return fmt.Sprintf("%v: it made key %s", ErrIdempotencyKeyUsed, e.ID)
	}
	return fmt.Sprintf("%v, for another request", ErrIdempotencyKeyUsed)
}

func (e *EarlierCreate) Unwrap() error { return ErrIdempotencyKeyUsed }

// EarlierCreateOf is what a store answers when once's token names key id
// already: ErrExists when id is k's own (see OnceCreator). An id that is not
// one (a record damaged, or written by something else) is an error, never
// passed on to a client's Location.
func EarlierCreateOf(k *Key, once OnceRecord, id string, request Hash) error {
	if !ValidID(id) {
		return fmt.Errorf("create %s: the idempotency key's record names no key id", k.ID)
	}
	if id == k.ID {
		return fmt.Errorf("create %s: its idempotency key names it: %w", k.ID, ErrExists)
	}
	return &EarlierCreate{ID: id, SameRequest: request == once.Request}
}

// storeCreate is the store's create of k, idempotent when spec asked: the
// idempotency key is kept for OnceWindow from k's creation.
func (m *Manager) storeCreate(ctx context.Context, spec Spec, k *Key, h Hash) error {
	if spec.Once == nil {
		return m.Store.Create(ctx, k, h, m.MaxPerOwner)
	}
	oc, ok := m.Store.(OnceCreator)
	if !ok {
		return errors.New("this key store cannot make a create idempotent")
	}
	once := OnceRecord{Token: OnceToken(k.Owner, spec.Once.Key), Request: spec.Once.Request, Until: k.CreatedAt.Add(OnceWindow)}
	return oc.CreateOnce(ctx, k, h, m.MaxPerOwner, once)
}
