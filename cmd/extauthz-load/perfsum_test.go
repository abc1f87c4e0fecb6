package main

import (
	"strings"
	"testing"
)

func TestPerfScriptCountsEachFunctionOncePerSample(t *testing.T) {
	script := `extauthz 
	          9f83f1 runtime.mallocgc
	          9f8cb5 github.com/extauthz/extauthz/authz/envoy.(*CheckServer).appendResponse
	          a0fdbc github.com/extauthz/extauthz/authz/envoy.(*CheckServer).check
	          90ec1 runtime.goexit.abi0

extauthz 
	           774a5 runtime.mallocgc
	           6e475 runtime.mallocgc
	           6ea69 github.com/extauthz/extauthz/authz/envoy.(*CheckServer).check

extauthz 
	           90e60 runtime.gcBgMarkWorker
`
	s, err := parsePerfScript(strings.NewReader(script))
	if err != nil {
		t.Fatal(err)
	}
	if s.samples != 3 {
		t.Fatalf("%d samples, want 3", s.samples)
	}
	check := "github.com/extauthz/extauthz/authz/envoy.(*CheckServer).check"
	if s.inclusive[check] != 2 || s.self[check] != 0 {
		t.Errorf("Check: inclusive %d self %d, want 2 and 0", s.inclusive[check], s.self[check])
	}
	if s.inclusive["runtime.mallocgc"] != 2 || s.self["runtime.mallocgc"] != 2 {
		t.Errorf("mallocgc, twice on one stack: inclusive %d self %d, want 2 and 2", s.inclusive["runtime.mallocgc"], s.self["runtime.mallocgc"])
	}
	var out strings.Builder
	s.write(&out, 5)
	for _, want := range []string{"66.7%    extauthz Check (the handler)", "33.3%  GC background mark workers", "(*CheckServer).appendResponse"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}
