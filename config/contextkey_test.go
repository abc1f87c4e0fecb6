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
