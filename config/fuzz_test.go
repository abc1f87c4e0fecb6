package config

import "testing"

// FuzzParse: no input panics the loader; whatever loads has passed
// validation (a rate, a prefix, addresses) well enough to use.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "{}", "listen: {grpc: off}", "routes: [{path: /a, permissions: [x], rate_limit: 10/m}]",
		"store: {backend: redis, redis: {addrs: [a:1, b:2]}}", "sources: [{cookie: k}]", "cache: {ttl: 1s}", "- x", "a: [", "rate_limit: {default: none}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse(data)
		if err != nil {
			return
		}
		if cfg.RateLimit.Default == nil || cfg.HTTPMode.XFFTrustedHops == nil || len(cfg.Sources) == 0 {
			t.Fatalf("a loaded config lacks a required value: %+v", cfg)
		}
	})
}
