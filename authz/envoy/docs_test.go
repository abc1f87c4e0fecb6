package envoy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/extauthz/extauthz/authz"
)

// The code table of docs/decision.md is authz.Codes(), in its order, each
// code with the HTTP status it answers and the CheckResponse.status Envoy
// gets; and wherever the README or the docs write a status beside a
// decision's code ("403 `no_route`"), it is that code's. A code added, or
// a status changed, without the docs fails here.
func TestTheDocsGiveEveryCodeItsStatus(t *testing.T) {
	root := filepath.Join("..", "..")
	b, err := os.ReadFile(filepath.Join(root, "docs", "decision.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, denials, ok := strings.Cut(string(b), "\n### Denials\n")
	if !ok {
		t.Fatal("docs/decision.md has no Denials section")
	}
	row := regexp.MustCompile("(?m)^\\| ((?:`[a-z_]+`(?:, )?)+) \\| ([0-9]{3}) \\| ([A-Z_]+) \\|")
	name := regexp.MustCompile("`([a-z_]+)`")
	var listed []authz.Code
	for _, m := range row.FindAllStringSubmatch(denials, -1) {
		for _, n := range name.FindAllStringSubmatch(m[1], -1) {
			c := authz.Code(n[1])
			listed = append(listed, c)
			if got := strconv.Itoa(c.HTTPStatus()); got != m[2] {
				t.Errorf("docs/decision.md: %s answers HTTP %s, not %s", c, got, m[2])
			}
			if got := rpcName(grpcCode(c).String()); got != m[3] {
				t.Errorf("docs/decision.md: %s answers CheckResponse.status %s, not %s", c, got, m[3])
			}
		}
	}
	if got, want := strings.Join(codeNames(listed), " "), strings.Join(codeNames(authz.Codes()), " "); got != want {
		t.Errorf("docs/decision.md's code table lists\n\t%s\nand authz.Codes() is\n\t%s", got, want)
	}

	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join(root, "README.md"), filepath.Join(root, "deploy", "proxies", "README.md"))
	beside := regexp.MustCompile("\\b([0-9]{3}) `([a-z_]+)`")
	pairs := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range beside.FindAllStringSubmatch(string(b), -1) {
			c := authz.Code(m[2])
			if !slices.Contains(authz.Codes(), c) {
				continue // one of the admin API's own (admin's tests hold those)
			}
			pairs++
			if got := strconv.Itoa(c.HTTPStatus()); got != m[1] {
				t.Errorf("%s writes %s `%s`; that code answers %s", filepath.Base(page), m[1], c, got)
			}
		}
	}
	if pairs < 10 {
		t.Fatalf("found %d statuses beside a code; the pattern no longer finds them", pairs)
	}
}

func codeNames(cs []authz.Code) []string {
	var s []string
	for _, c := range cs {
		s = append(s, string(c))
	}
	return s
}

// rpcName is a gRPC code's name as google.rpc.Code spells it:
// PermissionDenied is PERMISSION_DENIED.
func rpcName(goName string) string {
	var b strings.Builder
	for i, r := range goName {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}
