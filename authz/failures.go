package authz

import (
	"net/netip"
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/extauthz/extauthz/ratelimit"
)

// lookupGuard bounds the store lookups that unknown keys cause, without
// ever turning away a key the cache knows.
//
// What costs the store is a well-formed key that no cache entry answers:
// each such key is a round trip, and a flood of random ones is a flood of
// round trips (the negative cache only absorbs repeats). What the guard
// must not do is what a per-address failure counter in front of the whole
// check does: lock out valid keys because someone else sent bad ones from
// the same address — the ingress gateway's, in a mesh, for every client —
// or from an address they named in X-Forwarded-For. So:
//
//   - Malformed keys (wrong format or checksum) are rejected before
//     hashing and cost nothing; they are never counted.
//   - A key the cache answers (a live entry, or a fresh "not found") never
//     reaches the guard, nor does the refresh of a key whose entry has
//     expired: the store confirmed that hash before (and has not said
//     since that it has none), so asking again is not a guess. Only a lookup of a hash this process has never seen
//     found passes through it.
//   - Such a lookup takes one token from its address block's bucket and
//     one from the process's; a lookup that finds the key (or that the
//     store did not answer) gives both back. Tokens therefore measure
//     lookups that found nothing.
//
// The signal is the client's address block: an IPv4 address, or an IPv6
// /64, the smallest block a client is routinely given (an IPv6 address that
// stands for an IPv4 client counts as that IPv4 address: AddressBlock). Per block, so that one guesser cannot use up
// everyone's share; but a block's budget can be spent by anyone who can
// send from it or name it (a shared gateway, X-Forwarded-For), and one
// client may own many blocks, which is why the process-wide budget bounds
// the total whatever the addresses. The key's shape says nothing here: a
// random key is shaped exactly as a real one.
//
// The promise, for a block's rate N/W (rate_limit.failed_attempts) and the
// process's M/V (rate_limit.failed_attempts_total): over any interval of
// length T, the lookups that find no key number at most N + N·T/W per
// block and M + M·T/V in all, plus those in flight when the interval
// ends. Why: a bucket holds at most N tokens, gains N/W of one per unit of
// time, and every lookup that finds nothing keeps the token it took; so
// those lookups cannot outnumber the N the bucket held at the start plus
// what it gained since. A block whose bucket is empty has its unknown keys
// answered 429 (with Retry-After: when the next token arrives); an empty
// process bucket answers 503, as an unreachable store does. Keys that are
// cached — every key in use — keep passing either way.
//
// Blocks are kept in an LRU of maxGuardBlocks: a block evicted and back
// starts with a full bucket, which the process budget covers.
type lookupGuard struct {
	mu     sync.Mutex
	blocks *simplelru.LRU[netip.Addr, *tokenBucket]
	total  tokenBucket
}

// maxGuardBlocks is how many address blocks the guard remembers.
const maxGuardBlocks = 65536

func newLookupGuard() *lookupGuard {
	blocks, _ := simplelru.NewLRU[netip.Addr, *tokenBucket](maxGuardBlocks, nil) // error only for size ≤ 0
	return &lookupGuard{blocks: blocks}
}

// guardVerdict is the guard's answer to one lookup.
type guardVerdict uint8

const (
	lookupAdmitted guardVerdict = iota
	blockExhausted              // the address block's budget: 429
	totalExhausted              // the process's budget: 503
)

// admit takes a token for one lookup of an unknown hash from ip's block
// and from the process. When it refuses, wait is how long until the
// exhausted budget has a token again. An admitted lookup that finds its key
// must be given back with refund.
func (g *lookupGuard) admit(ip netip.Addr, perBlock, total ratelimit.Rate, now time.Time) (v guardVerdict, wait time.Duration) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var b *tokenBucket
	if !perBlock.IsZero() {
		block := AddressBlock(ip)
		var ok bool
		if b, ok = g.blocks.Get(block); !ok {
			b = &tokenBucket{}
			g.blocks.Add(block, b)
		}
		if wait, ok := b.take(perBlock, now); !ok {
			return blockExhausted, wait
		}
	}
	if !total.IsZero() {
		if wait, ok := g.total.take(total, now); !ok {
			if b != nil {
				b.give(perBlock)
			}
			return totalExhausted, wait
		}
	}
	return lookupAdmitted, 0
}

// refund gives back the tokens of an admitted lookup that found its key
// (or that the store did not answer): only lookups that found nothing count.
func (g *lookupGuard) refund(ip netip.Addr, perBlock, total ratelimit.Rate) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !perBlock.IsZero() {
		if b, ok := g.blocks.Peek(AddressBlock(ip)); ok {
			b.give(perBlock)
		}
	}
	if !total.IsZero() {
		g.total.give(total)
	}
}

// AddressBlock is the block of addresses one client is counted as, by the
// lookup guard and by every other per-client bound: the address itself for
// IPv4 (an IPv4-mapped IPv6 address included), its /64 for IPv6, the
// smallest block one client is routinely given (it may pick any address
// in it). The zero Addr (no usable client address) is one block of its
// own.
//
// Some IPv6 addresses stand for one IPv4 client, whose /64 is not its own:
// they count as that IPv4 address (ipv4Client), so that the client has one
// block in every spelling of its address, and no other client's. An
// address of the local-use NAT64 prefix 64:ff9b:1::/48 is an IPv4 client's
// too, translated (an IPv6-only cluster behind SIIT), but where its IPv4
// address lies depends on the translator's prefix length: it is counted
// alone, since its /64 may hold every IPv4 client on the internet.
func AddressBlock(ip netip.Addr) netip.Addr {
	ip = ip.Unmap().WithZone("")
	if !ip.Is6() {
		return ip
	}
	if v4, ok := ipv4Client(ip); ok {
		return v4
	}
	if nat64Local.Contains(ip) {
		return ip
	}
	p, _ := ip.Prefix(64) // cannot fail for 64 ≤ 128
	return p.Addr()
}

// ipv4Client returns the IPv4 client an IPv6 address stands for, when it
// is of a prefix that carries one in a fixed place:
//
//   - NAT64's well-known 64:ff9b::/96 (RFC 6052): an IPv4 client,
//     translated, in the last 32 bits;
//   - 6to4's 2002::/16 (RFC 3056): a site's /48, named by its IPv4 address
//     in bits 16–47, whose 65,536 /64s would otherwise each be a block;
//   - Teredo's 2001::/32 (RFC 4380): a client behind the Teredo server of
//     bits 32–63, every client of which shares the /64, with its NAT's IPv4
//     address inverted in the last 32 bits.
//
// Replies to each reach that IPv4 address, so a client cannot take on
// another's address this way unless it could send from it.
func ipv4Client(ip netip.Addr) (netip.Addr, bool) {
	b := ip.As16()
	switch {
	case nat64.Contains(ip):
		return netip.AddrFrom4([4]byte(b[12:16])), true
	case sixToFour.Contains(ip):
		return netip.AddrFrom4([4]byte(b[2:6])), true
	case teredo.Contains(ip):
		return netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}), true
	}
	return netip.Addr{}, false
}

// The prefixes of ipv4Client, and the local-use NAT64 prefix (RFC 8215),
// whose translators embed an IPv4 address in a prefix of their own from
// /48 to /96 of it (RFC 6052 §2.2).
var (
	nat64      = netip.MustParsePrefix("64:ff9b::/96")
	nat64Local = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour  = netip.MustParsePrefix("2002::/16")
	teredo     = netip.MustParsePrefix("2001::/32")
)

// tokenBucket holds up to N tokens of a rate N/W and gains N/W of one per
// unit of time. The zero tokenBucket is full.
type tokenBucket struct {
	tokens float64
	at     time.Time // when tokens was last brought up to date; zero = full
}

// take brings the bucket up to now and takes a token if there is a whole
// one; else it reports how long until there is.
func (b *tokenBucket) take(r ratelimit.Rate, now time.Time) (wait time.Duration, ok bool) {
	n := float64(r.N)
	switch {
	case b.at.IsZero():
		b.tokens = n
	case now.After(b.at):
		b.tokens += float64(now.Sub(b.at)) * n / float64(r.Window)
	}
	b.tokens = min(b.tokens, n) // also after a reload lowered N
	if b.at.Before(now) {
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) * float64(r.Window) / n), false
}

// give returns one token.
func (b *tokenBucket) give(r ratelimit.Rate) {
	b.tokens = min(b.tokens+1, float64(r.N))
}

// failedAttempts names the limit in the rate-limit headers of a block
// whose budget is spent.
const failedAttempts = "failed_attempts"
