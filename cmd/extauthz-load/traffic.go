package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"

	"github.com/extauthz/extauthz/keystore"
)

// kind is what a request's key is meant to be.
type kind int

const (
	kindValid       kind = iota // a live key with the route's permissions: allow
	kindBadChecksum             // a valid key with a checksum digit changed: invalid_key, no store lookup
	kindUnknown                 // well-formed, checksum right, never created: invalid_key after a store miss
	kindLimited                 // a live key with a tiny rate limit: rate_limited after its first request
	numKinds
)

var kindNames = [numKinds]string{"valid", "bad_checksum", "unknown", "limited"}

func (k kind) String() string { return kindNames[k] }

// Mix is the share of each kind of key in the traffic. Shares are relative
// weights: they need not add up to 1.
type Mix [numKinds]float64

// ParseMix reads "valid=0.9,bad_checksum=0.04,unknown=0.03,limited=0.03";
// kinds left out get 0.
func ParseMix(s string) (Mix, error) {
	var m Mix
	total := 0.0
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		if !ok {
			return m, fmt.Errorf("mix %q: want kind=share, e.g. valid=0.9", part)
		}
		k := -1
		for i, n := range kindNames {
			if n == strings.TrimSpace(name) {
				k = i
			}
		}
		if k < 0 {
			return m, fmt.Errorf("mix %q: unknown kind %q (valid, bad_checksum, unknown, limited)", s, name)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || f < 0 {
			return m, fmt.Errorf("mix %q: share of %s must be a non-negative number", s, name)
		}
		m[k] = f
		total += f
	}
	if total == 0 {
		return m, fmt.Errorf("mix %q: all shares are zero", s)
	}
	return m, nil
}

func (m Mix) String() string {
	var parts []string
	for k, f := range m {
		if f > 0 {
			parts = append(parts, fmt.Sprintf("%s=%g", kind(k), f))
		}
	}
	return strings.Join(parts, ",")
}

// KeySet is the keys the traffic is made of.
type KeySet struct {
	Valid   keyList // keys that pass the routes' permissions, with no effective limit
	Limited keyList // keys whose rate limit runs out at once
	Unknown keyList // well-formed keys no store has
}

// keyList holds keys back to back in one byte slice. A million keys are
// then two objects for this process's garbage collector rather than a
// million, whose marking would stall the load tool and show up as latency
// it blames on the server.
type keyList struct {
	data []byte
	ends []uint32 // key i is data[ends[i-1]:ends[i]]
}

func newKeyList(keys []string) keyList {
	n := 0
	for _, k := range keys {
		n += len(k)
	}
	l := keyList{data: make([]byte, 0, n), ends: make([]uint32, 0, len(keys))}
	for _, k := range keys {
		l.data = append(l.data, k...)
		l.ends = append(l.ends, uint32(len(l.data)))
	}
	return l
}

// Len is the number of keys.
func (l keyList) Len() int { return len(l.ends) }

// At returns key i; the bytes must not be modified.
func (l keyList) At(i int) []byte {
	start := uint32(0)
	if i > 0 {
		start = l.ends[i-1]
	}
	return l.data[start:l.ends[i]:l.ends[i]]
}

// Strings returns the keys as strings.
func (l keyList) Strings() []string {
	out := make([]string, l.Len())
	for i := range out {
		out[i] = string(l.At(i))
	}
	return out
}

// Traffic describes the requests a run sends.
type Traffic struct {
	Keys  KeySet
	Mix   Mix
	Zipf  float64 // > 1: valid keys are picked by Zipf with this exponent; otherwise uniformly
	Paths []requestShape
	// Clients is the number of client addresses requests come from,
	// uniformly (at least 1). It matters: the server limits invalid keys
	// per client address (rate_limit.failed_attempts).
	Clients int
	// RateLimit, when set, makes every request a ShouldRateLimit call of
	// the rate limit service (the peer scenario) whose descriptor value is
	// a valid key (there a key id), instead of a Check carrying the key.
	RateLimit *descriptorShape
}

// method is the gRPC method the traffic calls.
func (t *Traffic) method() string {
	if t.RateLimit != nil {
		return shouldRateLimitMethod
	}
	return checkMethod
}

// newReply is where a worker decodes the responses to the traffic's calls.
func (t *Traffic) newReply() reply {
	if t.RateLimit != nil {
		return &rateLimitResult{}
	}
	return &checkResult{}
}

// ParsePaths reads "GET /api/users,GET /api/reports/2026" (method and path,
// comma-separated).
func ParsePaths(s, header string, minimal bool) ([]requestShape, error) {
	var out []requestShape
	for part := range strings.SplitSeq(s, ",") {
		f := strings.Fields(part)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 || !strings.HasPrefix(f[1], "/") {
			return nil, fmt.Errorf("path %q: want METHOD /path", strings.TrimSpace(part))
		}
		out = append(out, requestShape{Method: strings.ToUpper(f[0]), Path: f[1], Header: header, Minimal: minimal})
	}
	if len(out) == 0 {
		return nil, errors.New("no paths")
	}
	return out, nil
}

// check reports what the traffic lacks: a kind in the mix without keys.
func (t *Traffic) check() error {
	have := [numKinds]int{t.Keys.Valid.Len(), t.Keys.Valid.Len(), t.Keys.Unknown.Len(), t.Keys.Limited.Len()}
	for k, f := range t.Mix {
		if f > 0 && have[k] == 0 {
			return fmt.Errorf("the mix sends %s keys but there are none", kind(k))
		}
	}
	if len(t.Paths) == 0 {
		return errors.New("no paths")
	}
	return nil
}

// picker chooses requests for one worker; each worker has its own (no locks).
type picker struct {
	t       *Traffic
	rng     *rand.Rand
	zipf    *rand.Zipf // nil: uniform
	cum     [numKinds]float64
	tmpl    [][]requestTemplate // per path, by key length (built on demand)
	scratch []byte
	bad     []byte // the bad-checksum key being sent
	ip      [clientIPLen]byte
}

func newPicker(t *Traffic, seed uint64) *picker {
	p := &picker{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	if t.Zipf > 1 && t.Keys.Valid.Len() > 1 {
		p.zipf = rand.NewZipf(p.rng, t.Zipf, 1, uint64(t.Keys.Valid.Len()-1))
	}
	total := 0.0
	for _, f := range t.Mix {
		total += f
	}
	acc := 0.0
	for k, f := range t.Mix {
		acc += f / total
		p.cum[k] = acc
	}
	p.tmpl = make([][]requestTemplate, len(t.Paths))
	return p
}

// kind draws the kind of the next request from the mix.
func (p *picker) kind() kind {
	u := p.rng.Float64()
	for k, c := range p.cum {
		if u < c && p.t.Mix[k] > 0 {
			return kind(k)
		}
	}
	for k := numKinds - 1; k >= 0; k-- { // u rounded past the last boundary
		if p.t.Mix[k] > 0 {
			return k
		}
	}
	return kindValid
}

// validIndex picks a valid key's index: Zipf-distributed (index 0 the
// hottest) or uniform.
func (p *picker) validIndex() int {
	if p.zipf != nil {
		return int(p.zipf.Uint64())
	}
	return p.rng.IntN(p.t.Keys.Valid.Len())
}

// next returns the kind and the encoded request to send; the bytes are
// valid until the next call.
func (p *picker) next() (kind, *[]byte, error) {
	k := p.kind()
	var key []byte
	switch k {
	case kindValid:
		key = p.t.Keys.Valid.At(p.validIndex())
	case kindBadChecksum:
		p.bad = append(p.bad[:0], p.t.Keys.Valid.At(p.validIndex())...)
		corruptChecksum(p.bad)
		key = p.bad
	case kindUnknown:
		key = p.t.Keys.Unknown.At(p.rng.IntN(p.t.Keys.Unknown.Len()))
	case kindLimited:
		key = p.t.Keys.Limited.At(p.rng.IntN(p.t.Keys.Limited.Len()))
	}
	path := 0
	if len(p.t.Paths) > 1 {
		path = p.rng.IntN(len(p.t.Paths))
	}
	t, err := p.template(path, len(key))
	if err != nil {
		return k, nil, err
	}
	clientIP(&p.ip, p.rng.IntN(max(p.t.Clients, 1)))
	p.scratch = t.appendRequest(p.scratch, key, p.ip[:])
	return k, &p.scratch, nil
}

func (p *picker) template(path, keyLen int) (*requestTemplate, error) {
	ts := p.tmpl[path]
	for i := range ts {
		if ts[i].keyLen == keyLen {
			return &ts[i], nil
		}
	}
	var t requestTemplate
	var err error
	if p.t.RateLimit != nil {
		t, err = newRateLimitTemplate(*p.t.RateLimit, keyLen)
	} else {
		t, err = newTemplate(p.t.Paths[path], keyLen)
	}
	if err != nil {
		return nil, err
	}
	p.tmpl[path] = append(ts, t)
	return &p.tmpl[path][len(ts)], nil
}

// corruptChecksum changes the last character of key to another base62
// character: for a key of the configured format the checksum no longer
// matches, so the server rejects it at step 4 without a lookup.
func corruptChecksum(key []byte) {
	if len(key) == 0 {
		return
	}
	last := &key[len(key)-1]
	if *last == '0' {
		*last = '1'
	} else {
		*last = '0'
	}
}

// unknownKeys generates n well-formed keys that no store holds.
func unknownKeys(prefix string, n int) ([]string, error) {
	f, err := keystore.NewFormat(prefix)
	if err != nil {
		return nil, err
	}
	out := make([]string, n)
	for i := range out {
		if out[i], err = f.Generate(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readKeysFile reads keys from path: either the output of one or more
// `extauthz keys create --json` (JSON objects, one after another; their
// "key" fields are read) or plain text, one key per line (blank lines and
// lines starting with # are skipped).
func readKeysFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys, err := parseKeys(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no keys", path)
	}
	return keys, nil
}

func parseKeys(b []byte) ([]string, error) {
	var keys []string
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '{' {
		dec := json.NewDecoder(bytes.NewReader(t))
		for {
			var c struct {
				Key string `json:"key"`
			}
			if err := dec.Decode(&c); errors.Is(err, io.EOF) {
				return keys, nil
			} else if err != nil {
				return nil, fmt.Errorf("key %d: %w", len(keys)+1, err)
			}
			if c.Key == "" {
				return nil, fmt.Errorf("key %d: JSON object without \"key\"", len(keys)+1)
			}
			keys = append(keys, c.Key)
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line != "" && !strings.HasPrefix(line, "#") {
			keys = append(keys, line)
		}
	}
	return keys, sc.Err()
}
