package audit

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// The field table of docs/operations.md's "Audit events" is what a reader
// of the audit trail parses against: it names exactly the fields an event
// is written with, and its event row exactly the types there are, so that a
// field or a type added, renamed or removed in the code without the table
// fails here.
func TestTheAuditEventsTableIsTheEvent(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Audit events\n")
	if !ok {
		t.Fatal("docs/operations.md has no Audit events section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	row := regexp.MustCompile("(?m)^\\| ((?:`[a-z_]+`(?:, )?)+) \\| (.*) \\|$")
	name := regexp.MustCompile("`([a-z_.]+)`")
	var named, types []string
	for _, m := range row.FindAllStringSubmatch(section, -1) {
		for _, n := range name.FindAllStringSubmatch(m[1], -1) {
			named = append(named, n[1])
		}
		if m[1] == "`event`" {
			for _, n := range name.FindAllStringSubmatch(m[2], -1) {
				if !strings.Contains(n[1], ":") { // `keys:read` is a permission
					types = append(types, n[1])
				}
			}
		}
	}
	if len(named) == 0 || len(types) == 0 {
		t.Fatalf("the Audit events table has %d fields and %d event types; the pattern no longer finds them", len(named), len(types))
	}

	// What AppendJSON writes: "schema", then the Event's JSON fields. The
	// key, for key.rotated, is named beside rotated_from in running text.
	written := []string{"schema"}
	e := reflect.TypeFor[Event]()
	for i := range e.NumField() {
		if tag, _, _ := strings.Cut(e.Field(i).Tag.Get("json"), ","); tag != "-" {
			written = append(written, tag)
		}
	}
	for _, f := range written {
		if !slices.Contains(named, f) && !strings.Contains(section, "`"+f+"`") {
			t.Errorf("audit events have the field %q, which docs/operations.md's Audit events do not name", f)
		}
	}
	for _, f := range named {
		if !slices.Contains(written, f) {
			t.Errorf("docs/operations.md's Audit events table names the field %q, which no event has", f)
		}
	}

	declared := eventTypes(t)
	slices.Sort(declared)
	slices.Sort(types)
	if !slices.Equal(declared, types) {
		t.Errorf("docs/operations.md's event row lists the types %q; the code has %q", types, declared)
	}
}

// eventTypes are the values of the constants of type Type that event.go
// declares: every kind of event there is.
func eventTypes(t *testing.T) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "event.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			v := s.(*ast.ValueSpec)
			if id, ok := v.Type.(*ast.Ident); !ok || id.Name != "Type" {
				continue
			}
			for _, val := range v.Values {
				if lit, ok := val.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					types = append(types, strings.Trim(lit.Value, `"`))
				}
			}
		}
	}
	if len(types) < 5 {
		t.Fatalf("event.go declares %d event types; the parse no longer finds them", len(types))
	}
	return types
}
