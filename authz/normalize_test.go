package authz

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		name, in, want string
		bad            bool
	}{
		{name: "a clean path is unchanged", in: "/api/users", want: "/api/users"},
		{name: "the query is dropped", in: "/api/users?api_key=x&a=b", want: "/api/users"},
		{name: "a raw # is an error: nginx passes it on, Go reads it as part of the path", in: "/api/users#frag", bad: true},
		{name: "a raw # in the query is an error too", in: "/api/users?a=1#&_method=DELETE", bad: true},
		{name: "an encoded # is a byte of the path", in: "/api/a%23b", want: "/api/a%23b"},
		{name: "double slashes are an error: upstreams merge them or not", in: "//api//users", bad: true},
		{name: "a dot segment is an error", in: "/api/./users", bad: true},
		{name: "a dot-dot segment is an error: Express, Flask and Rails take it literally", in: "/public/../api/users", bad: true},
		{name: "a name that starts with a dot is a name", in: "/.well-known/x/..a/.b.", want: "/.well-known/x/..a/.b."},
		{name: "an encoded dot-dot is an error: Go's ServeMux takes it literally", in: "/public/%2e%2e/api/users", bad: true},
		{name: "mixed-case encoded dots too", in: "/public/%2E%2e/api/users", bad: true},
		{name: "an encoded dot segment", in: "/public/%2e/api/users", bad: true},
		{name: "an encoded dot inside a name is an error: Express matches the raw path", in: "/files/report%2Epdf", bad: true},
		{name: "an encoded letter is an error: Express's /api/users is not /api/%75sers", in: "/api/%75sers", bad: true},
		{name: "an encoded upper-case letter too", in: "/api/%55sers", bad: true},
		{name: "an encoded digit too", in: "/api/v%31/users", bad: true},
		{name: "an encoded -, _ or ~ too", in: "/api/a%2Db%5Fc%7Ed", bad: true},
		{name: "lower-case hex of one too", in: "/api/%7e", bad: true},
		{name: "other escapes stay, with upper-case hex", in: "/api/a%2fb%20c", bad: true},
		{name: "a space escape stays encoded", in: "/api/a%20c/A", want: "/api/a%20c/A"},
		{name: "a segment that ends in a space is an error: Spring MVC before 4.3 trims it", in: "/api/admin%20", bad: true},
		{name: "one that begins with a space too", in: "/api/%20admin/x", bad: true},
		{name: "one of spaces only: trimmed, then dropped", in: "/api/%20/admin", bad: true},
		{name: "two trailing spaces, lower-case hex", in: "/api/admin%20%20/", bad: true},
		{name: "a trailing space before a slash", in: "/api/admin%20/", bad: true},
		{name: "a trailing space spelt as an unreserved escape run", in: "/api/%61dmin%20", bad: true},
		{name: "an encoded no-break space at the end", in: "/api/admin%C2%A0", bad: true},
		{name: "an encoded ideographic space at the start", in: "/api/%E3%80%80admin", bad: true},
		{name: "an encoded em space at the end", in: "/api/admin%e2%80%83", bad: true},
		{name: "a character that is no space at the end stays", in: "/caf%C3%A9", want: "/caf%C3%A9"},
		{name: "a zero-width space is no white space", in: "/a%E2%80%8B", want: "/a%E2%80%8B"},
		{name: "a byte-order mark at the end is an error: JavaScript's trim removes it", in: "/api/admin%EF%BB%BF", bad: true},
		{name: "a Mongolian vowel separator at the start: older .NET trims it", in: "/api/%E1%A0%8Eadmin/x", bad: true},
		{name: "a byte-order mark inside a name stays", in: "/a%EF%BB%BFb", want: "/a%EF%BB%BFb"},
		{name: "a space between names stays", in: "/files/my%20report/x", want: "/files/my%20report/x"},
		{name: "a trailing slash is kept", in: "/api/users/", want: "/api/users/"},
		{name: "a trailing dot segment is an error", in: "/api/users/.", bad: true},
		{name: "the root stays the root", in: "/", want: "/"},
		{name: "a trailing dot-dot is an error", in: "/a/..", bad: true},
		{name: "escaping the root is an error", in: "/../etc/passwd", bad: true},
		{name: "escaping the root with encoded dots is an error", in: "/%2e%2e/etc", bad: true},
		{name: "three encoded dots are an error: a name to Express, other than ...", in: "/a/%2e%2e%2e/b", bad: true},
		{name: "three raw dots are a name", in: "/a/.../b", want: "/a/.../b"},
		{name: "an encoded slash is an error", in: "/api%2Fusers", bad: true},
		{name: "an encoded lower-case slash is an error", in: "/api%2fusers", bad: true},
		{name: "an encoded backslash is an error", in: "/api%5Cusers", bad: true},
		{name: "a raw backslash is an error", in: "/api\\users", bad: true},
		{name: "a raw NUL is an error", in: "/api\x00", bad: true},
		{name: "an encoded NUL is an error", in: "/api%00", bad: true},
		{name: "a raw newline is an error", in: "/api\n/users", bad: true},
		{name: "an encoded CR is an error", in: "/api%0d", bad: true},
		{name: "DEL is an error", in: "/api\x7f", bad: true},
		{name: "a truncated escape is an error", in: "/api%2", bad: true},
		{name: "a non-hex escape is an error", in: "/api%zz", bad: true},
		{name: "a relative path is an error", in: "api/users", bad: true},
		{name: "the empty path is an error", in: "", bad: true},
		{name: "an absolute URI is an error", in: "http://evil/api", bad: true},
		{name: "an enormous path is an error", in: "/" + strings.Repeat("a", 9000), bad: true},
		{name: "lower-case hex becomes upper-case", in: "/a%7cb", want: "/a%7Cb"},
		{name: "an encoded sub-delimiter is decoded: one spelling per byte", in: "/v1/things%3Alist%21", want: "/v1/things:list!"},
		{name: "encoded dot-dot with a mixed spelling", in: "/a/.%2e/b", bad: true},
		{name: "encoded dot-dot spelt the other way", in: "/a/%2E./b", bad: true},
		{name: "a semicolon is an error by default", in: "/public/..;/api/admin", bad: true},
		{name: "an encoded dot-dot with a semicolon too", in: "/public/%2e%2e;/api/admin", bad: true},
		{name: "a dot with a semicolon too", in: "/.;/api", bad: true},
		{name: "any semicolon", in: "/api/users;jsessionid=1", bad: true},
		{name: "an encoded semicolon is an error", in: "/api/users%3Bx", bad: true},
		{name: "a double encoding is an error", in: "/a/%252e%252e/b", bad: true},
		{name: "a double encoding assembled by decoding is an error", in: "/a/%25%34%31", bad: true},
		{name: "a lone encoded percent is kept", in: "/a/100%25", want: "/a/100%25"},
		{name: "a raw non-ASCII byte is an error", in: "/\u017ftatic/x", bad: true},
		{name: "encoded UTF-8 is kept encoded, never folded", in: "/%c5%bftatic/x", want: "/%C5%BFtatic/x"},
		{name: "an overlong encoded dot is an error", in: "/a/%c0%ae%c0%ae/b", bad: true},
		{name: "a truncated UTF-8 sequence is an error", in: "/a/%c3", bad: true},
		{name: "a raw space is an error", in: "/a b", bad: true},
		{name: "a raw brace is an error", in: "/a/{x}", bad: true},
		{name: "a raw pipe is an error", in: "/a|b", bad: true},
		{name: "an encoded space stays encoded", in: "/a%20b", want: "/a%20b"},
		{name: "a dot-dot after an empty segment is an error", in: "/api/admin//../../public/x", bad: true},
		{name: "so is an encoded one", in: "/a//%2e%2e/b", bad: true},
		{name: "a trailing slash is not an empty segment", in: "/a/b/", want: "/a/b/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizePath(tt.in)
			if tt.bad {
				assert.Error(t, err, "got %q", got)
				return
			}
			assert.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestTheOptInReadings(t *testing.T) {
	servlet := pathRules{servlet: true}
	folding := pathRules{foldCase: true}
	tests := []struct {
		name  string
		rules pathRules
		in    string
		want  string // "" = an error
	}{
		// Every dot segment is 400 under the servlet reading too: the
		// container resolves it for its servlet path, Spring MVC's path
		// patterns match the request URI and take it as a name, so one
		// request reaches two routes.
		{"servlet: ..; is an error", servlet, "/public/..;/api/admin/x", ""},
		{"servlet: climbing out of a protected prefix too", servlet, "/api/admin/x/..;/..;/..;/public/x", ""},
		{"servlet: double slashes merge", servlet, "//api//users", "/api/users"},
		{"servlet: a raw dot segment is an error", servlet, "/api/./users", ""},
		{"servlet: a raw dot-dot too", servlet, "/api/users/../x", ""},
		{"servlet: a trailing dot segment too", servlet, "/api/users/.", ""},
		{"servlet: a trailing dot-dot too", servlet, "/a/..", ""},
		{"servlet: a dot-dot after an empty segment too", servlet, "/api/admin//../../public/x", ""},
		{"servlet: encoded dots with params", servlet, "/public/%2e%2e;x=1/api/admin", ""},
		{"servlet: a dot with a param", servlet, "/a/.;x/b", ""},
		{"servlet: encoded dots", servlet, "/public/%2e%2e/api", ""},
		{"servlet: .%2e", servlet, "/a/b/.%2e/c", ""},
		{"servlet: %2E.;x", servlet, "/a/b/%2E.;x/c", ""},
		{"servlet: climbing above the root", servlet, "/..;x/etc", ""},
		{"servlet: dots within a name are a name", servlet, "/a/..x;y/.b/c..", "/a/..x/.b/c.."},
		{"servlet: an encoded dot within a name", servlet, "/a/index%2Ephp;x", "/a/index.php"},
		{"servlet: params anywhere", servlet, "/api/users;jsessionid=ABC/7;v=2", "/api/users/7"},
		{"servlet: a segment of only params is empty", servlet, "/a/;x/b", "/a/b"},
		{"servlet: params on the last segment keep its slash", servlet, "/a/b;x/", "/a/b/"},
		{"servlet: an encoded semicolon is still an error", servlet, "/a%3Bb", ""},
		{"case folding: ASCII passes as it is", folding, "/API/Users", "/API/Users"},
		{"case folding: an encoded non-ASCII byte is an error", folding, "/%C5%BFtatic", ""},
		{"case folding: so is the Kelvin sign", folding, "/%E2%84%AA", ""},
		{"case folding: a semicolon is still an error", folding, "/a;b", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.rules.normalize(tt.in)
			if tt.want == "" {
				assert.Error(t, err, "got %q", got)
				return
			}
			assert.NoError(t, err)
			assert.Equal(t, tt.want, got)
		})
	}
}

func TestNormalizedPathsAreFixedPoints(t *testing.T) {
	for _, in := range []string{"/a/b/c//d/", "/%7euser/x", "/a%20b", "/x/%2ey", "/%3a%40%c3%a9", "/a/100%25", "/a;x/b;y/c%2e%2e", "//a;x//b/"} {
		once, err := pathRules{servlet: true}.normalize(in)
		assert.NoError(t, err)
		twice, err := pathRules{servlet: true}.normalize(once)
		assert.NoError(t, err)
		assert.Equal(t, once, twice, in)
	}
}

func TestNormalizeMethod(t *testing.T) {
	for _, ok := range []string{"GET", "DELETE", "M-SEARCH", "PROPFIND", "FOO_BAR"} {
		got, valid := normalizeMethod(ok)
		assert.True(t, valid, ok)
		assert.Equal(t, ok, got)
	}
	// A method is case-sensitive: "get" is not GET to every upstream.
	for _, bad := range []string{"", "get", "Delete", "GE T", "GET\n", "G/ET", strings.Repeat("A", 40)} {
		_, ok := normalizeMethod(bad)
		assert.False(t, ok, "%q", bad)
	}
}

func BenchmarkNormalizeCleanPath(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		NormalizePath("/api/users/12345?x=1")
	}
}
