package keystore

import (
	"encoding/base64"
	"testing"
)

// FuzzHoldsKey: no input makes the readings panic, and each is looser than
// the one before it: ContainsKey, then LabelHoldsKey, then MayHoldKey, but
// for the one reading labels alone get (strippedBody: a random part and its
// checksum with other bytes between them, "0lC2gr...ZF bkv2...0K"), which
// costs a checksum at every offset of a long string: once per cache fill
// for a label, where MayHoldKey runs on request fields at every decision.
func FuzzHoldsKey(f *testing.F) {
	fm, _ := NewFormat("sk")
	key, _ := fm.Generate()
	for _, s := range []string{"", "%", "%5", "%5F", "sk", "SK_", key, " " + key + " ", "\xff\xfe", "a=b==", base64.StdEncoding.EncodeToString([]byte(key)),
		"s\u200bk_" + key[3:], "é" + key + "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		_ = fm.MayHoldKey(s)
		_ = fm.LabelHoldsKey(s)
		_ = fm.ContainsKey(s)
		if fm.ContainsKey(s) && !fm.LabelHoldsKey(s) {
			t.Fatalf("ContainsKey but not LabelHoldsKey: %q", s)
		}
		labelsOnly := fm.strippedBody(s) || fm.strippedBody(PercentDecoded(s))
		if fm.LabelHoldsKey(s) && !fm.MayHoldKey(s) && !labelsOnly {
			t.Fatalf("LabelHoldsKey but not MayHoldKey: %q", s)
		}
	})
}

// The zero Format (no prefix), which a Manager built without one holds,
// reads every string without a panic.
func TestTheZeroFormatReadsWithoutAPanic(t *testing.T) {
	var f Format
	key, err := Format{prefix: "sk"}.Generate()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"", "x", "billing key", key, "SK " + key[3:], base64.StdEncoding.EncodeToString([]byte(key))} {
		f.MayHoldKey(s)
		f.LabelHoldsKey(s)
		f.ContainsKey(s)
	}
}
