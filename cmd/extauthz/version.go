package main

import (
	"fmt"
	"io"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// versionCmd is "extauthz version": the version it was built as.
func versionCmd(stdout io.Writer) {
	fmt.Fprintln(stdout, "extauthz", version)
}
