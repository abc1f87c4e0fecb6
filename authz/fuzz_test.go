package authz

import (
	"context"
	"strings"
	"testing"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/proto"
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

// FuzzCheck drives the whole gRPC handler with arbitrary attributes: it
// must never panic, never return an RPC error, always produce a response
// that marshals (a non-UTF-8 string in it would fail on the wire), and
// never put a presented credential into it.
func FuzzCheck(f *testing.F) {
	fx := newFixture(f, nil)
	s := &CheckServer{Authz: fx.a}
	f.Add("GET", "/api/users", "x-api-key", fx.good, "a=b; api_key=x", "10.0.0.1")
	f.Add("get", "/healthz/../api/users?api_key="+fx.admin, "authorization", "Bearer "+fx.admin, "", "::1")
	f.Add("DELETE", "/api/users/1", "x-authz-key-id", "spoof", "api_key="+fx.perms, "")
	f.Add("", "", "", "", "", "")
	f.Add("GET", "/a%2Fb", "cookie", "\xff", "\x00", "300.1.1.1")
	f.Fuzz(func(t *testing.T, method, path, name, value, cookie, peer string) {
		headers := map[string]string{}
		if name != "" {
			headers[strings.ToLower(name)] = value
		}
		if cookie != "" {
			headers["cookie"] = cookie
		}
		in := &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
			Source: &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
				SocketAddress: &corev3.SocketAddress{Address: peer},
			}}},
			Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
				Method: method, Path: path, Headers: headers,
			}},
		}}
		resp, err := s.Check(context.Background(), in)
		if err != nil {
			t.Fatalf("RPC error: %v", err)
		}
		if resp.GetStatus() == nil || resp.GetHttpResponse() == nil {
			t.Fatalf("incomplete response: %v", resp)
		}
		if _, err := proto.Marshal(resp); err != nil && utf8Valid(method, path, name, value, cookie, peer) {
			t.Fatalf("response does not marshal: %v", err)
		}
		if resp.GetStatus().GetCode() == 0 {
			for _, o := range resp.GetOkResponse().GetHeaders() {
				if k := o.GetHeader().GetValue(); strings.Contains(k, fx.good) || strings.Contains(k, fx.admin) {
					t.Fatalf("a key reached an upstream header: %s", o.GetHeader().GetKey())
				}
			}
		}
	})
}

// utf8Valid: proto3 refuses non-UTF-8 request strings, so Envoy never sends
// them in headers (raw header bytes come in header_map instead); only the
// responses to requests that could arrive must marshal.
func utf8Valid(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) {
			return false
		}
	}
	return true
}
