package authz

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzCredentialsAgainstGo holds the cookie and query credential readers to
// Go's own parsers, an upstream that shares no code with them: whatever
// net/http reads as the api_key cookie, or url.ParseQuery as the api_key
// parameter, extauthz either refuses as ambiguous or finds, and then no
// such credential is left for Go to read once it is stripped (CookieWithout
// for cookies; for the query, Envoy removes the parameters of the raw name).
func FuzzCredentialsAgainstGo(f *testing.F) {
	for _, s := range [][2]string{
		{"api_key=k", "api_key=k"},
		{"a=1; api_key =k", "+api_key=k"},
		{"api_key\t=k", "%20api_key=k"},
		{" api_key = k ; b=2", "%61pi_key=k"},
		{`api_key="k"`, "API_KEY=k&api_key="},
		{"a=1,api_key=k", "x=1;api_key=k"},
		{"api_key=; api_key=k", "api_key=&api_key=k"},
	} {
		f.Add(s[0], s[1])
	}
	const name = "api_key"
	fold := foldName(name)
	f.Fuzz(func(t *testing.T, cookie, query string) {
		if _, present, ambiguous := cookieCredential(cookie, name, fold, nil); !ambiguous {
			if goCookie(cookie, name) != "" && !present {
				t.Fatalf("cookie %q: net/http reads %s=%q, extauthz finds none", cookie, name, goCookie(cookie, name))
			}
			if rest := CookieWithout(cookie, nil, name); goCookie(rest, name) != "" {
				t.Fatalf("cookie %q: stripped to %q, net/http still reads %s=%q", cookie, rest, name, goCookie(rest, name))
			}
		}
		if strings.Contains(query, "#") {
			return // a fragment, never sent: the query ends before it
		}
		if _, present, ambiguous := queryCredential("/x?"+query, name, fold, nil); !ambiguous {
			if goParam(query, name) != "" && !present {
				t.Fatalf("query %q: url.ParseQuery reads %s=%q, extauthz finds none", query, name, goParam(query, name))
			}
			var kept []string
			for pair := range strings.SplitSeq(query, "&") {
				if k, _, _ := strings.Cut(pair, "="); k != name {
					kept = append(kept, pair)
				}
			}
			if rest := strings.Join(kept, "&"); goParam(rest, name) != "" {
				t.Fatalf("query %q: stripped of %s to %q, url.ParseQuery still reads %q", query, name, rest, goParam(rest, name))
			}
		}
	})
}

// goCookie is the first non-empty value net/http reads for cookie name.
func goCookie(header, name string) string {
	r := http.Request{Header: http.Header{"Cookie": {header}}}
	for _, c := range r.CookiesNamed(name) {
		if c.Value != "" {
			return c.Value
		}
	}
	return ""
}

// goParam is the first non-empty value url.ParseQuery reads for name
// (pairs it cannot parse are skipped, as a server does).
func goParam(query, name string) string {
	vals, _ := url.ParseQuery(query)
	for _, v := range vals[name] {
		if v != "" {
			return v
		}
	}
	return ""
}
