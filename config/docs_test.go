package config

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/extauthz/extauthz/audit"
)

// readmeConfigBlock is the YAML block of the README's Configuration
// section: the reference an operator copies settings from.
func readmeConfigBlock(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Configuration\n")
	if !ok {
		t.Fatal("README.md has no Configuration section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, block, ok := strings.Cut(section, "```yaml\n")
	if !ok {
		t.Fatal("README.md's Configuration section has no yaml block")
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatal("README.md's Configuration yaml block is not closed")
	}
	return block
}

// fieldPaths lists the config file's fields under t as dotted paths; a
// list of mappings (routes, sources, policies) is one path, and its
// elements' fields are listed apart in elems.
func fieldPaths(prefix string, t reflect.Type, paths, elems *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" {
			continue
		}
		path := join(prefix, name)
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		isText := reflect.PointerTo(ft).Implements(reflect.TypeFor[interface{ UnmarshalText([]byte) error }]()) ||
			reflect.PointerTo(ft).Implements(reflect.TypeFor[interface{ UnmarshalJSON([]byte) error }]())
		switch {
		case ft.Kind() == reflect.Struct && !isText:
			fieldPaths(path, ft, paths, elems)
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			*paths = append(*paths, path)
			fieldPaths(path+"[]", ft.Elem(), elems, elems)
		default:
			*paths = append(*paths, path)
		}
	}
}

// treePaths lists the dotted paths of the mappings in a decoded YAML tree,
// down to the first value that is not a mapping.
func treePaths(prefix string, v any, out map[string]bool) {
	m, ok := v.(map[string]any)
	if !ok {
		out[prefix] = true
		return
	}
	for k, sub := range m {
		treePaths(join(prefix, k), sub, out)
	}
}

// The README's Configuration block is the reference of the config file:
// it must load as written, give exactly the built-in defaults (its example
// routes aside), and name every field the loader accepts, so that an
// operator reading it sees every setting and its real default. A field
// added to Config without a line there, or a default changed on one side
// only, fails here.
func TestTheREADMEConfigBlockIsTheDefaults(t *testing.T) {
	block := readmeConfigBlock(t)

	t.Run("it loads", func(t *testing.T) {
		if _, err := Parse([]byte(block)); err != nil {
			t.Fatalf("the README's Configuration block does not load: %v", err)
		}
	})

	t.Run("it gives the defaults", func(t *testing.T) {
		documented, err := Parse([]byte(block))
		if err != nil {
			t.Fatal(err)
		}
		defaults, err := Parse(nil)
		if err != nil {
			t.Fatal(err)
		}
		documented.Routes = nil // an example table: by default there is none
		want, got := reflect.ValueOf(*defaults), reflect.ValueOf(*documented)
		for i := 0; i < want.NumField(); i++ {
			name := want.Type().Field(i).Tag.Get("json")
			if !sameSetting(want.Field(i), got.Field(i)) {
				t.Errorf("%s: the README says %+v, the default is %+v", name, got.Field(i).Interface(), want.Field(i).Interface())
			}
		}
	})

	t.Run("it names every field", func(t *testing.T) {
		var tree any
		if err := yaml.Unmarshal([]byte(block), &tree); err != nil {
			t.Fatal(err)
		}
		written := map[string]bool{}
		treePaths("", tree, written)
		var paths, elems []string
		fieldPaths("", reflect.TypeFor[Config](), &paths, &elems)
		for _, p := range paths {
			if !written[p] {
				t.Errorf("%s is a config field the README's Configuration block does not show", p)
			}
		}
		// The fields of a list's entries (a route, a source, a policy) are
		// shown by an example entry or named in a comment.
		for _, p := range elems {
			name := p[strings.LastIndexAny(p, ".]")+1:]
			if !regexp.MustCompile(`\b` + name + `\b`).MatchString(block) {
				t.Errorf("%s is a config field the README's Configuration block does not name", p)
			}
		}
		for p := range written {
			if !slices.Contains(paths, p) {
				t.Errorf("the README's Configuration block shows %s, which is not a config field", p)
			}
		}
	})
}

// sameSetting is reflect.DeepEqual but for lists: [] in a file is no
// entries, as a default's nil is.
func sameSetting(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Slice:
		if a.Len() != b.Len() {
			return false
		}
		for i := 0; i < a.Len(); i++ {
			if !sameSetting(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Struct:
		for i := 0; i < a.NumField(); i++ {
			if !a.Type().Field(i).IsExported() { // a value type of another package (keystore.Format)
				return reflect.DeepEqual(a.Interface(), b.Interface())
			}
		}
		for i := 0; i < a.NumField(); i++ {
			if !sameSetting(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Pointer:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return sameSetting(a.Elem(), b.Elem())
	default:
		return reflect.DeepEqual(a.Interface(), b.Interface())
	}
}

// configPath is a setting named in running text the way the docs name
// them: `cache.max_stale`, `store.redis.tls.enabled`, `routes[].mode`.
var configPath = regexp.MustCompile("`((?:listen|tls|store|hashing|cache|keys|client_ip|rate_limit|routes|paths|http_mode|audit|log|leaks|admin|metrics|policies|sources)(?:\\[[0-9]*\\])?(?:\\.[a-z_]+(?:\\[[0-9]*\\])?)+)`")

// Every setting the README and the docs name by its dotted path is one the
// config file has: a setting renamed or removed in the code, and still
// named in the docs, fails here. Within a section about one mapping the
// docs name its settings from there (`tls.ca_file` under Redis), so the
// tail of a full path counts too.
func TestTheSettingsTheDocsNameExist(t *testing.T) {
	var paths, elems []string
	fieldPaths("", reflect.TypeFor[Config](), &paths, &elems)
	known := map[string]bool{}
	for _, p := range append(paths, elems...) {
		// A setting that holds a mapping is named too (store.redis, tls),
		// and so is every tail of a path.
		for i := range p {
			if i == 0 || p[i-1] == '.' {
				for j := i; j <= len(p); j++ {
					if j == len(p) || p[j] == '.' {
						known[p[i:j]] = true
					}
				}
			}
		}
	}
	// Not settings, though spelt like them: the audit events' types, and
	// the source files the README names.
	for _, typ := range []audit.Type{audit.TypeAdminAuthFailed, audit.TypeAdminRead} {
		known[string(typ)] = true
	}
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join("..", "README.md"))
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range configPath.FindAllStringSubmatch(string(b), -1) {
			p := regexp.MustCompile(`\[[0-9]*\]`).ReplaceAllString(m[1], "[]")
			p = strings.TrimSuffix(p, "[]") // an entry of a list of values: the list
			if !known[p] && !strings.HasSuffix(p, ".go") {
				t.Errorf("%s names the setting %s, which the config file does not have", page, m[1])
			}
		}
	}
}

// Every config snippet of the README and the docs loads as written: a
// reader copies them. A snippet is a yaml block whose top-level fields are
// all the config file's (an Envoy or Kubernetes block is not one), and
// that elides nothing ("[...]").
func TestTheConfigSnippetsLoad(t *testing.T) {
	var top []string
	cfg := reflect.TypeFor[Config]()
	for i := 0; i < cfg.NumField(); i++ {
		name, _, _ := strings.Cut(cfg.Field(i).Tag.Get("json"), ",")
		top = append(top, name)
	}
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join("..", "README.md"), filepath.Join("..", "deploy", "proxies", "README.md"))
	block := regexp.MustCompile("(?s)```ya?ml\n(.*?)```")
	snippets := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range block.FindAllStringSubmatch(string(b), -1) {
			text := m[1]
			var tree map[string]any
			if strings.Contains(text, "[...]") || yaml.Unmarshal([]byte(text), &tree) != nil || len(tree) == 0 {
				continue
			}
			ours := true
			for k := range tree {
				ours = ours && slices.Contains(top, k)
			}
			if !ours {
				continue
			}
			snippets++
			if _, err := Parse([]byte(text)); err != nil {
				t.Errorf("a config snippet of %s does not load: %v\n%s", page, err, text)
			}
		}
	}
	if snippets < 5 {
		t.Fatalf("found %d config snippets; the pattern no longer finds them", snippets)
	}
}
