package keystore

import (
	"testing"
)

// A label holding a key's whole random part next to its prefix, with the
// checksum cut off (a key pasted without its last characters), is refused
// when the prefix is in capitals or a space or '.' falls among its first
// characters too: the checksum is a public function of the rest, and such
// a label (sent upstream as x-authz-key-name or x-authz-owner on every
// request the key makes) would give away the whole key.
func TestALabelHoldingAKeyWithItsChecksumCutHoldsAKey(t *testing.T) {
	f, err := NewFormat("sk")
	if err != nil {
		t.Fatal(err)
	}
	key, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	random := key[3 : 3+randomLen]
	// Whoever reads the label rebuilds the key: the checksum is CRC-32 of
	// "sk_" and the random part.
	rebuilt := string(appendChecksum([]byte("sk_"+random), crcString("sk_"+random)))
	if rebuilt != key {
		t.Fatalf("rebuilt %q, want %q", rebuilt, key)
	}
	for _, s := range []string{
		"SK_" + random,                          // prefix in capitals
		"SK-" + random,                          // and the underscore mistyped
		"sk_" + random[:10] + " " + random[10:], // wrapped after 10 characters
		"sk_" + random[:15] + "." + random[15:], // a '.' after 15
	} {
		if !f.MayHoldKey(s) {
			t.Errorf("MayHoldKey(%q) = false", s)
		}
		if !f.LabelHoldsKey(s) {
			t.Errorf("LabelHoldsKey(%q) = false: a name or owner holding the whole secret is accepted", s[:14]+"…")
		}
	}
}
