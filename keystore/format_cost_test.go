package keystore

import (
	"encoding/base64"
	"net/url"
	"strings"
	"testing"
)

// MayHoldKey runs on the decision path, on every client-written audit
// field (path, request id, host, user agent, each up to 1024 bytes). A
// field that holds no key costs no allocation, however dense in the prefix
// (each place the prefix appears is a candidate whose checksum is worked
// out without a copy); a long base64 run, decoded at its four alignments,
// costs a few, whatever it holds.
func TestMayHoldKeyCostsLittleOnAnyField(t *testing.T) {
	f, err := NewFormat("sk")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		s      string
		allocs float64
	}{
		{"sk dense (a base64 run too)", strings.Repeat("sk", 512), 8},
		{"s k spaced", strings.Repeat("s k ", 256), 0},
		{"a browser's user agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", 0},
		{"a request id", "4f1c2d3e-9a8b-4c7d-8e6f-5a4b3c2d1e0f", 0},
		{"a path", "/api/v1/users/12345/orders?page=2&sort=desc", 0},
		{"base64 of sksk…", base64.StdEncoding.EncodeToString([]byte(strings.Repeat("sk", 384))), 8},
		{"1024 letters", strings.Repeat("Ab", 512), 8},
	} {
		allocs := testing.AllocsPerRun(50, func() { f.MayHoldKey(tc.s) })
		if allocs > tc.allocs {
			t.Errorf("%s: MayHoldKey allocates %.0f times per call, want at most %.0f", tc.name, allocs, tc.allocs)
		}
	}
}

// A base64-encoded key is seen wherever its token starts in a run of
// base64 characters ('/', '+', '-' and '_' are some): in a path
// ("/v1/x/<b64>"), after "name=", in either alphabet or both mixed, and
// percent-encoded ("Basic%20<b64>").
func TestABase64KeyInAPathOrAParameterMayHoldAKey(t *testing.T) {
	f, err := NewFormat("sk")
	if err != nil {
		t.Fatal(err)
	}
	key, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	basic := base64.StdEncoding.EncodeToString([]byte(key + ":"))
	raw := base64.RawURLEncoding.EncodeToString([]byte(key))
	for _, s := range []string{
		"/v1/x/" + raw,                      // path, 6 bytes before the token
		"/v1/abcd/" + raw,                   // 9 bytes before
		"/my-app/" + raw,                    // '-' and '/' mixed: neither alphabet
		"auth=" + basic,                     // name=value
		"session=" + raw,                    // name=value
		"Basic%20" + url.QueryEscape(basic), // percent-encoded Basic credentials
		"x=" + url.QueryEscape(basic),       // percent-encoded base64
	} {
		if !f.MayHoldKey(s) {
			t.Errorf("MayHoldKey(%q…) = false: a key base64-encoded in it is written out", s[:min(len(s), 24)])
		}
	}
	// For contrast: seen when the run happens to start on a 4-byte boundary.
	for _, s := range []string{"/v1/xyz/" + raw, "Basic " + basic, basic} {
		if !f.MayHoldKey(s) {
			t.Errorf("contrast case not seen: %q", s[:20])
		}
	}
}
