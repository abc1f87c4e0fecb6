package main

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/keystore"
)

func TestParseMix(t *testing.T) {
	m, err := ParseMix("valid=0.9, bad_checksum=0.04,unknown=0.03,limited=0.03")
	if err != nil {
		t.Fatal(err)
	}
	if m != (Mix{0.9, 0.04, 0.03, 0.03}) {
		t.Fatalf("got %v", m)
	}
	for _, bad := range []string{"", "valid=0", "valid", "valid=-1", "stolen=0.5", "valid=x"} {
		if _, err := ParseMix(bad); err == nil {
			t.Errorf("ParseMix(%q) did not fail", bad)
		}
	}
}

func testTraffic(t *testing.T, n int, zipf float64, mix Mix) *Traffic {
	t.Helper()
	valid, err := unknownKeys("sk", n)
	if err != nil {
		t.Fatal(err)
	}
	paths, err := ParsePaths("GET /api/users, GET /api/reports/2026", "x-api-key", false)
	if err != nil {
		t.Fatal(err)
	}
	keys := KeySet{Valid: newKeyList(valid), Limited: newKeyList(valid[:2]), Unknown: newKeyList(valid[:3])}
	return &Traffic{Keys: keys, Mix: mix, Zipf: zipf, Paths: paths, Clients: 50}
}

func TestTheMixDecidesTheShareOfEachKind(t *testing.T) {
	p := newPicker(testTraffic(t, 10, 0, Mix{0.7, 0.1, 0.2, 0}), 1)
	var got [numKinds]int
	const n = 100000
	for range n {
		got[p.kind()]++
	}
	for k, want := range []float64{0.7, 0.1, 0.2, 0} {
		if share := float64(got[k]) / n; share < want-0.01 || share > want+0.01 {
			t.Errorf("%s: %.3f of requests, want %.2f", kind(k), share, want)
		}
	}
}

func TestZipfPicksTheFirstKeysMostAndStaysInRange(t *testing.T) {
	const keys = 1000
	p := newPicker(testTraffic(t, keys, 1.1, Mix{1}), 7)
	hits := make([]int, keys)
	const n = 200000
	for range n {
		i := p.validIndex()
		if i < 0 || i >= keys {
			t.Fatalf("picked key %d of %d", i, keys)
		}
		hits[i]++
	}
	// P(k) ∝ (1+k)^-1.1: key 0 gets 2^1.1 ≈ 2.14 times key 1's share,
	// and the top 1% of keys well over a third of the traffic.
	if r := float64(hits[0]) / float64(hits[1]); r < 1.9 || r > 2.4 {
		t.Errorf("key 0 picked %.2f times as often as key 1, want about 2.14", r)
	}
	top := 0
	for _, h := range hits[:keys/100] {
		top += h
	}
	if share := float64(top) / n; share < 0.35 {
		t.Errorf("the hottest 1%% of keys got %.2f of the traffic; Zipf should give them more than a third", share)
	}
}

func TestUniformPicksEveryKeyAboutEqually(t *testing.T) {
	const keys = 10
	p := newPicker(testTraffic(t, keys, 0, Mix{1}), 3)
	hits := make([]int, keys)
	for range 100000 {
		hits[p.validIndex()]++
	}
	if lo, hi := slices.Min(hits), slices.Max(hits); float64(hi-lo) > 0.1*float64(lo) {
		t.Errorf("uniform picks range from %d to %d per key", lo, hi)
	}
}

func TestRequestsCarryThePickedKeyAndPath(t *testing.T) {
	tr := testTraffic(t, 5, 0, Mix{1, 1, 1, 1})
	format, _ := keystore.NewFormat("sk")
	p := newPicker(tr, 11)
	seen := map[kind]bool{}
	clients := map[string]bool{}
	for range 200 {
		k, raw, err := p.next()
		if err != nil {
			t.Fatal(err)
		}
		var req authv3.CheckRequest
		if err := proto.Unmarshal(*raw, &req); err != nil {
			t.Fatalf("the request does not decode: %v", err)
		}
		h := req.GetAttributes().GetRequest().GetHttp()
		key := h.GetHeaders()["x-api-key"]
		peer := req.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress()
		if _, err := netip.ParseAddr(peer); err != nil || h.GetHeaders()["x-forwarded-for"] != peer {
			t.Fatalf("client address %q, x-forwarded-for %q", peer, h.GetHeaders()["x-forwarded-for"])
		}
		clients[peer] = true
		if h.GetHeaders()[":path"] != h.GetPath() || (h.GetPath() != "/api/users" && h.GetPath() != "/api/reports/2026") {
			t.Fatalf("request path %q, :path %q", h.GetPath(), h.GetHeaders()[":path"])
		}
		switch k {
		case kindValid:
			if !slices.Contains(tr.Keys.Valid.Strings(), key) {
				t.Fatalf("a valid request carries %q, not one of the valid keys", key)
			}
		case kindBadChecksum:
			if format.Check(key) == nil {
				t.Fatalf("a bad-checksum key passes the format check")
			}
			if !slices.ContainsFunc(tr.Keys.Valid.Strings(), func(v string) bool { return v[:len(v)-1] == key[:len(key)-1] }) {
				t.Fatalf("a bad-checksum key is not a valid key with its last digit changed")
			}
		case kindUnknown:
			if !slices.Contains(tr.Keys.Unknown.Strings(), key) || format.Check(key) != nil {
				t.Fatalf("an unknown key is not a well-formed one from the pool")
			}
		case kindLimited:
			if !slices.Contains(tr.Keys.Limited.Strings(), key) {
				t.Fatalf("a limited request carries a key that is not limited")
			}
		}
		seen[k] = true
	}
	if len(seen) != int(numKinds) {
		t.Errorf("200 requests of an even mix covered only %v", seen)
	}
	if len(clients) < 40 {
		t.Errorf("200 requests from 50 clients came from only %d addresses", len(clients))
	}
}

func TestTemplatesHandleKeysOfAnyLength(t *testing.T) {
	shape := requestShape{Method: "GET", Path: "/api/users", Header: "authorization", Minimal: true}
	for _, key := range []string{"legacy-key-0123456789", strings.Repeat("k", 200)} {
		tmpl, err := newTemplate(shape, len(key))
		if err != nil {
			t.Fatal(err)
		}
		var req authv3.CheckRequest
		if err := proto.Unmarshal(tmpl.appendRequest(nil, []byte(key), []byte("10.123.145.167")), &req); err != nil {
			t.Fatal(err)
		}
		if got := req.GetAttributes().GetRequest().GetHttp().GetHeaders()["authorization"]; got != key {
			t.Fatalf("header = %q, want %q", got, key)
		}
		if got := req.GetAttributes().GetSource().GetAddress().GetSocketAddress().GetAddress(); got != "10.123.145.167" {
			t.Fatalf("peer = %q", got)
		}
	}
}

func TestKeysFilesInEitherForm(t *testing.T) {
	jsonOut := `{
  "id": "key_0AbCdEfGh012345678901",
  "name": "a",
  "key": "sk_one"
}
{
  "id": "key_0AbCdEfGh012345678902",
  "name": "b",
  "key": "sk_two"
}
`
	keys, err := parseKeys([]byte(jsonOut))
	if err != nil || !slices.Equal(keys, []string{"sk_one", "sk_two"}) {
		t.Fatalf("JSON keys = %v, %v", keys, err)
	}
	keys, err = parseKeys([]byte("# load keys\nsk_one\n\n  sk_two  \n"))
	if err != nil || !slices.Equal(keys, []string{"sk_one", "sk_two"}) {
		t.Fatalf("plain keys = %v, %v", keys, err)
	}
	if _, err := parseKeys([]byte(`{"id": "key_x"}`)); err == nil {
		t.Fatal("a JSON object without a key was accepted")
	}
}

func TestClientAddressesAreDistinctAndOfOneLength(t *testing.T) {
	var b [clientIPLen]byte
	seen := map[string]bool{}
	for _, i := range []int{0, 1, 99, 100, 9999, 10000, 123456, 999999} {
		clientIP(&b, i)
		a, err := netip.ParseAddr(string(b[:]))
		if err != nil || !a.Is4() || seen[a.String()] {
			t.Fatalf("client %d: %q (%v), or a repeat", i, b[:], err)
		}
		seen[a.String()] = true
	}
	clientIP(&b, 123456)
	if string(b[:]) != "10.112.134.156" {
		t.Fatalf("client 123456 is %s, want 10.112.134.156", b[:])
	}
}

func TestKeyListKeepsEveryKey(t *testing.T) {
	keys := []string{"sk_a", "", "legacy-key-0123456789", "sk_b"}
	l := newKeyList(keys)
	if l.Len() != len(keys) || !slices.Equal(l.Strings(), keys) {
		t.Fatalf("got %q", l.Strings())
	}
	if got := newKeyList(nil); got.Len() != 0 {
		t.Fatalf("an empty list has %d keys", got.Len())
	}
}
