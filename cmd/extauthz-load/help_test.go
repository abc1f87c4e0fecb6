package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"regexp"
	"testing"
)

// Every flag of the load tool's help names its value with one word: the
// flag package takes the first `quoted` text of a usage as that name, so a
// command quoted there ("build it with `cd /tmp && go install ...`") stood
// in for it ("-ratelimit cd /tmp && go install ...").
func TestTheHelpNamesEachFlagsValueInOneWord(t *testing.T) {
	out, err := os.CreateTemp(t.TempDir(), "help")
	if err != nil {
		t.Fatal(err)
	}
	stderr := os.Stderr
	os.Stderr = out // where a FlagSet writes its help
	t.Cleanup(func() { os.Stderr = stderr })
	for _, c := range []func() error{
		func() error { return benchCmd(context.Background(), []string{"-h"}, out, out) },
		func() error { return runCmd(context.Background(), []string{"-h"}, out) },
		func() error { return noopServerCmd([]string{"-h"}, out) },
	} {
		if err := c(); !errors.Is(err, flag.ErrHelp) {
			t.Fatalf("-h: %v, want flag.ErrHelp", err)
		}
	}
	os.Stderr = stderr
	help, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	flags := regexp.MustCompile(`(?m)^  -[a-z-]+(.*)$`).FindAllSubmatch(help, -1)
	if len(flags) < 40 {
		t.Fatalf("the help shows %d flags; the pattern no longer finds them:\n%s", len(flags), help)
	}
	for _, f := range flags {
		if !regexp.MustCompile(`^( [A-Za-z]+)?$`).Match(f[1]) {
			t.Errorf("a flag's value is named by more than one word: %q", f[0])
		}
	}
}
