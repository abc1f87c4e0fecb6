package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// TestTheDocsStandAlone holds the repository's documentation to what a
// reader of the repository has: every relative link in the Markdown pages
// leads to a file (and a heading) that exists, and no file cites the
// working contract and the source guide the project was built from, which
// live outside the repository.
func TestTheDocsStandAlone(t *testing.T) {
	root := filepath.Join("..", "..")
	pages, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil || len(pages) == 0 {
		t.Fatalf("docs/*.md: %v (%d pages)", err, len(pages))
	}
	for _, p := range []string{"README.md", "cmd/extauthz-load/README.md", "deploy/proxies/README.md", "deploy/proxies/envoy-http-service.md"} {
		pages = append(pages, filepath.Join(root, p))
	}

	t.Run("every relative link leads somewhere", func(t *testing.T) {
		link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
		for _, page := range pages {
			text, err := os.ReadFile(page)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range link.FindAllSubmatch(text, -1) {
				target := string(m[1])
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, anchor, _ := strings.Cut(target, "#")
				path := page
				if file != "" {
					path = filepath.Join(filepath.Dir(page), file)
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("%s links to %s, which does not exist", rel(root, page), target)
					continue
				}
				if anchor != "" && !hasHeading(t, path, anchor) {
					t.Errorf("%s links to %s, which has no heading #%s", rel(root, page), rel(root, path), anchor)
				}
			}
		}
	})

	t.Run("no file cites a document the repository lacks", func(t *testing.T) {
		// Spelt in two halves, so that this file does not cite them either.
		cites := regexp.MustCompile(`\b` + "SP" + `EC\b|\bthe ` + "gui" + `de\b`)
		err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() {
				switch d.Name() {
				case ".git", "bin", "data", "bench":
					return filepath.SkipDir
				}
				return nil
			}
			if d.Type()&fs.ModeSymlink != 0 {
				return nil // its target is walked where it lives (the chart's files/redis is k8s/base/redis)
			}
			b, err := os.ReadFile(path)
			if err != nil || bytes.IndexByte(b, 0) >= 0 { // unreadable, or not text
				return err
			}
			if loc := cites.FindIndex(b); loc != nil {
				line := bytes.Count(b[:loc[0]], []byte("\n")) + 1
				t.Errorf("%s:%d cites %q, which a reader of the repository does not have", rel(root, path), line, b[loc[0]:loc[1]])
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// hasHeading reports whether the Markdown file at path has a heading whose
// anchor, as GitHub makes it, is anchor.
func hasHeading(t *testing.T, path, anchor string) bool {
	t.Helper()
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(text), "\n") {
		if title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " "); ok && strings.HasPrefix(line, "#") && slug(title) == anchor {
			return true
		}
	}
	return false
}

// slug is a heading's anchor as GitHub makes it: lower case, punctuation
// dropped, spaces as hyphens.
func slug(title string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(title)) {
		switch {
		case r == ' ' || r == '-':
			b.WriteRune('-')
		case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_':
			b.WriteRune(r)
		}
	}
	return b.String()
}

func rel(root, path string) string {
	if r, err := filepath.Rel(root, path); err == nil {
		return r
	}
	return path
}
