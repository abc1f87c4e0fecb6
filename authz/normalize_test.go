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
		{name: "a fragment is dropped", in: "/api/users#frag", want: "/api/users"},
		{name: "double slashes merge", in: "//api//users", want: "/api/users"},
		{name: "dot segments resolve", in: "/api/./users", want: "/api/users"},
		{name: "dot-dot climbs out of a public prefix", in: "/public/../api/users", want: "/api/users"},
		{name: "encoded dots are decoded and then resolved", in: "/public/%2e%2e/api/users", want: "/api/users"},
		{name: "mixed-case encoded dots too", in: "/public/%2E%2e/api/users", want: "/api/users"},
		{name: "an encoded unreserved letter is decoded", in: "/api/%75sers", want: "/api/users"},
		{name: "other escapes stay, with upper-case hex", in: "/api/a%2fb%20c", bad: true},
		{name: "a space escape stays encoded", in: "/api/a%20c/%41", want: "/api/a%20c/A"},
		{name: "a trailing slash is kept", in: "/api/users/", want: "/api/users/"},
		{name: "a trailing dot segment keeps the slash", in: "/api/users/.", want: "/api/users/"},
		{name: "the root stays the root", in: "/", want: "/"},
		{name: "the root with dots stays the root", in: "/a/..", want: "/"},
		{name: "escaping the root is an error", in: "/../etc/passwd", bad: true},
		{name: "escaping the root with encoded dots is an error", in: "/%2e%2e/etc", bad: true},
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

func TestNormalizedPathsAreFixedPoints(t *testing.T) {
	for _, in := range []string{"/a/./b/../c//d/", "/%7euser/x", "/a%20b", "/x/%2e/y"} {
		once, err := NormalizePath(in)
		assert.NoError(t, err)
		twice, err := NormalizePath(once)
		assert.NoError(t, err)
		assert.Equal(t, once, twice, in)
	}
}

func TestNormalizeMethod(t *testing.T) {
	for in, want := range map[string]string{"get": "GET", "GET": "GET", "Delete": "DELETE", "M-SEARCH": "M-SEARCH"} {
		got, ok := normalizeMethod(in)
		assert.True(t, ok, in)
		assert.Equal(t, want, got)
	}
	for _, bad := range []string{"", "GE T", "GET\n", "G/ET", strings.Repeat("A", 40)} {
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
