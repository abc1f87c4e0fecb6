package authz

import (
	"strings"
	"testing"

	"github.com/extauthz/extauthz/keystore"
)

// FuzzNormalizePath checks the invariants route matching relies on, for
// every path reading: a normalised path is absolute, has no empty, "." or
// ".." segment, no ";", no control, non-ASCII or must-encode byte, no
// encoded separator, ";" or double encoding, only upper-case escapes, and
// is its own normal form.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{"/", "/api/users", "//a//b", "/a/./b/../c", "/%2e%2e/x", "/a%2Fb", "/a%5c", "/%7euser", "/a?b=c", "/a#f", "/a/%00", "/\\x", "/a/..%2f", "/%", "/%zz",
		"/a;b/..;/c", "/%c3%a9", "/\u017f", "/%25%34%31", "/a b", "/a//../b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, rules := range []pathRules{{}, {servlet: true}, {foldCase: true}} {
			p, err := rules.normalize(raw)
			if err != nil {
				continue
			}
			if p == "" || p[0] != '/' {
				t.Fatalf("%+v: %q → %q: not absolute", rules, raw, p)
			}
			for _, bad := range []string{"//", "/./", "/../", "\\", "%2F", "%2f", "%5C", "%5c", "%3B", "?", "#", ";"} {
				if strings.Contains(p, bad) {
					t.Fatalf("%+v: %q → %q contains %q", rules, raw, p, bad)
				}
			}
			if strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..") {
				t.Fatalf("%+v: %q → %q ends in a dot segment", rules, raw, p)
			}
			for i := 0; i < len(p); i++ {
				if c := p[i]; c < 0x20 || c >= 0x7f || mustEncode(c) {
					t.Fatalf("%+v: %q → %q has the byte %#x raw", rules, raw, p, c)
				}
				if p[i] == '%' && (isLowerHex(p[i+1]) || isLowerHex(p[i+2]) || rawInPath(byte(unhex(p[i+1])<<4|unhex(p[i+2])))) {
					t.Fatalf("%+v: %q → %q has the escape %s, not in canonical form", rules, raw, p, p[i:i+3])
				}
			}
			again, err := rules.normalize(p)
			if err != nil || again != p {
				t.Fatalf("%+v: %q → %q → %q, %v: not a fixed point", rules, raw, p, again, err)
			}
		}
	})
}

// testFormat is a key format with the default prefix, for tests that need
// a policy and no keys.
func testFormat() keystore.Format {
	f, err := keystore.NewFormat("sk")
	if err != nil {
		panic(err)
	}
	return f
}
