package config

import (
	"strings"
	"testing"
)

// A context selector's key and value are strings Envoy sends as
// written in its own config. A value YAML reads as a number is refused
// ("want string, got number"), and a key read as a boolean is refused, but
// a key YAML reads as a number was silently turned into another string:
// 0x10 became "16", 1e3 "1000", +12 "12", 1.10 "1.1". Envoy sends
// {"1.10": ...}, which no selector then named, so the request fell
// through to the host or the default policy (unselected: default) instead
// of the policy the file reads as selecting it. Such a key is refused
// unless quoted, anywhere in the file.
func TestAContextKeyReadAsANumberIsRefused(t *testing.T) {
	for _, key := range []string{"0x10", "1e3", "+12", "1.10", "0o17"} {
		t.Run(key, func(t *testing.T) {
			_, err := Parse([]byte("policies: [{name: payroll, match: {context: {" + key + ": payroll}}, routes: [{path: /x, permissions: [p]}]}]\n"))
			if err == nil || !strings.Contains(err.Error(), "reads as a number") {
				t.Errorf("context key %s: %v; want it refused as a number", key, err)
			}
			cfg, err := Parse([]byte("policies: [{name: payroll, match: {context: {\"" + key + "\": payroll}}, routes: [{path: /x, permissions: [p]}]}]\n"))
			if err != nil {
				t.Fatal(err)
			}
			if got := cfg.Policies[0].Match.Context; got[key] != "payroll" {
				t.Errorf("quoted, the key %s was read as %q", key, got)
			}
		})
	}
}

// The same with a tag written on the key: !!int 0x10 named "16", !!float
// 1.10 "1.1", and !!binary turned base64 into other text; a key tagged
// !!str is what it shows.
func TestATaggedContextKeyIsRefused(t *testing.T) {
	for _, key := range []string{"!!int 0x10", "!!float 1.10", "!!int 0o17", "!!binary cGF5cm9sbA==", "!!bool yes", "!!int 12"} {
		t.Run(key, func(t *testing.T) {
			cfg, err := Parse([]byte("policies: [{name: payroll, match: {context: {" + key + ": payroll}}, routes: [{path: /x, permissions: [p]}]}]\n"))
			if err == nil {
				t.Errorf("context key %s accepted and read as %q: the selector names a key the file does not show", key, cfg.Policies[0].Match.Context)
			}
		})
	}
	cfg, err := Parse([]byte("policies: [{name: payroll, match: {context: {!!str 0x10: payroll}}, routes: [{path: /x, permissions: [p]}]}]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Policies[0].Match.Context["0x10"]; got != "payroll" {
		t.Errorf("!!str 0x10 read as %q", cfg.Policies[0].Match.Context)
	}
}

// The refusal of number keys skipped every key that is not a scalar node,
// and an alias (*a) is an alias node: an alias to an anchored number
// (xff_trusted_hops: &a 0x1) used as a context key was turned into that
// number's text, "1", just as the untagged key 0x1 was. A key that is an
// alias is refused.
func TestAnAliasedNumberAsAContextKeyIsRefused(t *testing.T) {
	for _, doc := range []string{
		"http_mode: {xff_trusted_hops: &a 0x1}\npolicies: [{name: payroll, match: {context: {*a: payroll}}, routes: [{path: /x, permissions: [p]}]}]\n",
		"http_mode: {xff_trusted_hops: &a !!int 0x1}\npolicies: [{name: payroll, match: {context: {*a: payroll}}, routes: [{path: /x, permissions: [p]}]}]\n",
	} {
		cfg, err := Parse([]byte(doc))
		if err == nil {
			t.Errorf("context key *a (anchored to 0x1) accepted and read as %q: the selector names a key the file does not show\n%s",
				cfg.Policies[0].Match.Context, doc)
		}
	}
}

// A header source named with "_" or "." (x_api_key, x.api.key) was taken,
// and its other spellings (x-api-key among them), which CGI, WSGI, PHP and
// Rack read as the same header, went to the upstream unchecked: extauthz
// reads a request's "_" and "." as "-", never a source's. Such a name is
// refused, at the top level and in a policy.
func TestAHeaderSourceNamedWithUnderscoreOrDotIsRefused(t *testing.T) {
	for _, name := range []string{"x_api_key", "x.api.key", "x-api_key", "x-api.key"} {
		for _, doc := range []string{
			"sources: [{header: " + name + "}]\n",
			"policies: [{name: p, match: {context: {policy: p}}, sources: [{header: " + name + "}], routes: [{path: /x, permissions: [r]}]}]\n",
		} {
			if _, err := Parse([]byte(doc)); err == nil || !strings.Contains(err.Error(), "write a header name with") {
				t.Errorf("%s: %v; want it refused", strings.TrimSpace(doc), err)
			}
		}
	}
	if _, err := Parse([]byte("sources: [{header: x-api-key}]\n")); err != nil {
		t.Errorf("x-api-key: %v", err)
	}
}
