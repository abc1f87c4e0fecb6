package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// A pepper (or Redis password) made the usual way for a secret of letters
// and digits, base32 (head -c 20 /dev/urandom | base32: 32 characters of
// A-Z and 2-7, no padding), is upper case, like a variable's name. Written
// where its variable's name goes (pepper_env: <the pepper>), it names no
// set variable, and no command's message quotes it back: not config check
// (text or JSON), serve or keys create.
func TestAnUpperCasePepperWrittenAsItsVariableIsNotEchoed(t *testing.T) {
	for _, pepper := range []string{
		"JBSWY3DPEHPK3PXPKRUGS4ZANFZSAYJA", // base32 of 20 random bytes
		"9F86D081884C7D659A2FEAA0C55AD015", // upper-case hex
	} {
		store := fmt.Sprintf("store: {path: %q}\nlisten: {grpc: off, http: off, admin: off}\n", filepath.Join(t.TempDir(), "k.db"))
		path := writeConfig(t, store+"hashing: {pepper_env: "+pepper+"}\n")
		for _, args := range [][]string{{"config", "check"}, {"config", "check", "--json"}, {"serve"}, {"keys", "create", "--name", "n", "--perm", "p"}} {
			out, errOut, code := cliRun(t, append(args, "--config", path)...)
			assert.Equal(t, 1, code, errOut)
			assert.NotContains(t, out+errOut, pepper[:12], "%s echoed the pepper: %s", strings.Join(args, " "), out+errOut)
		}
	}
}
