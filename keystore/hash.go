package keystore

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"sync"
)

// Hash is what a store keeps instead of a key: HMAC-SHA256(pepper, key), or
// SHA-256(key) when no pepper is configured. A fixed-size array so it can be a
// map key without allocating.
type Hash [sha256.Size]byte

// IsZero reports whether h is the zero Hash (Store.Watch's "forget everything").
func (h Hash) IsZero() bool { return h == Hash{} }

// String returns h in lowercase hex, the form backends store.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// ParseHash parses the hex form of a Hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	if hex.DecodedLen(len(s)) != len(h) {
		return h, hex.ErrLength
	}
	_, err := hex.Decode(h[:], []byte(s))
	return h, err
}

// Hasher turns keys into Hashes. The zero value hashes with plain SHA-256.
// Safe for concurrent use.
type Hasher struct {
	pool *sync.Pool // of *hmacState (HMAC with the pepper); nil without one
}

// hmacState is a keyed HMAC with scratch space, pooled so that hashing a
// key allocates nothing.
type hmacState struct {
	mac hash.Hash
	in  []byte
	sum [sha256.Size]byte
}

// NewHasher returns a Hasher that uses HMAC-SHA256 with pepper, or SHA-256
// when pepper is empty. The pepper makes a stolen database useless for
// offline guessing of low-entropy imported keys.
func NewHasher(pepper []byte) *Hasher {
	if len(pepper) == 0 {
		return &Hasher{}
	}
	p := append([]byte(nil), pepper...)
	return &Hasher{pool: &sync.Pool{New: func() any {
		st := &hmacState{mac: hmac.New(sha256.New, p), in: make([]byte, 0, 256)}
		st.mac.Reset() // the first Reset keeps the keyed state, which makes the others cheap
		return st
	}}}
}

// Hash returns the hash of key.
func (hs *Hasher) Hash(key string) Hash {
	if hs == nil || hs.pool == nil {
		return sha256.Sum256([]byte(key))
	}
	st := hs.pool.Get().(*hmacState)
	h := st.hash(key)
	hs.pool.Put(st)
	return h
}

// hash returns the HMAC of key, and leaves no byte of it in st: a pooled
// state outlives the call, and the package holds no plaintext beyond the
// call that checks it.
func (st *hmacState) hash(key string) Hash {
	st.in = append(st.in[:0], key...)
	st.mac.Write(st.in)
	h := Hash(st.mac.Sum(st.sum[:0]))
	clear(st.in)
	st.mac.Reset() // the digest's block buffer holds the key's last bytes
	if cap(st.in) > 1024 {
		st.in = make([]byte, 0, 256) // don't keep a huge buffer for one odd key
	}
	return h
}
