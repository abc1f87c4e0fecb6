package keystore

import (
	"regexp"
	"testing"
)

// FuzzFormatCheck: Check never panics, never accepts more than 256 bytes,
// and a key it accepts with the prefix has exactly the documented shape.
func FuzzFormatCheck(f *testing.F) {
	fm, _ := NewFormat("sk")
	good, _ := fm.Generate()
	for _, s := range []string{good, good[:20], "sk_", "", "legacy_key-123456", "sk_" + good[3:] + "x", "\x00\xff"} {
		f.Add(s)
	}
	shape := regexp.MustCompile(`^sk_[0-9A-Za-z]{49}$`)
	f.Fuzz(func(t *testing.T, key string) {
		if fm.Check(key) != nil {
			return
		}
		if len(key) > 256 || len(key) < 16 {
			t.Fatalf("accepted a key of %d bytes", len(key))
		}
		if len(key) > 3 && key[:3] == "sk_" && !shape.MatchString(key) {
			t.Fatalf("accepted %q with the prefix but not the shape", key)
		}
	})
}
