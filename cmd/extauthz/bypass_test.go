package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// bypassRoutes is the table every attempt is made against. unmatched:
// authenticate is the laxest setting: there, any request that slips past
// the route it belongs to lands on "any valid key", so each fall-through
// the suite looks for would show.
const bypassRoutes = `
routes:
  - {path: "/public/**", public: true}
  - {path: /files/public, public: true}
  - {path: "/files/{name}", permissions: [read:files]}
  - {path: "/static/**", public: true}
  - {path: /api/users, methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [GET], permissions: [read:users]}
  - {path: "/api/users/{id}", methods: [DELETE], permissions: [delete:users]}
  - {path: "/api/reports/**", permissions: [read:reports]}
  - {path: "/api/admin/**", permissions: [admin:all]}
  - {path: "/keys/**", permissions: [admin:all]}
  - {path: "/docs/", public: true}
  - {path: "/v1/things:list", permissions: [list:things]}
unmatched: authenticate
rate_limit: {default: none}
`

// The path readings a server of the suite runs with.
const (
	strictPaths  = ""
	servletPaths = "paths: {matrix_params: servlet}\n"
	foldingPaths = "paths: {case_insensitive: true}\n"
)

// The transports an attempt is made over: Envoy's gRPC Check, and the
// HTTP listener in each of its three conventions.
const (
	viaGRPC       = "grpc"
	viaPath       = "http path"
	viaXOriginal  = "http x-original"
	viaXForwarded = "http x-forwarded"
)

var allTransports = []string{viaGRPC, viaPath, viaXOriginal, viaXForwarded}

// upstream is what an allowed request may carry on to the upstream.
type upstream struct {
	key     string   // the key whose identity the upstream gets; "" = a public route (identity emptied)
	removed []string // header names (lower-case) that must be removed before the upstream
	// query and cookie are what gRPC mode removes; no HTTP-mode proxy can
	// remove either, so over HTTP such a request is 400 instead.
	query  []string // query parameters removed
	cookie *string  // the cookie header rewritten without the credential; "" = removed whole
}

// attempt is one request an attacker makes, and who may pass.
type attempt struct {
	name    string
	paths   string // strictPaths, servletPaths or foldingPaths
	method  string
	path    string
	headers [][2]string // as the client sends them, in order; "{reader}" and the like are keys
	via     []string    // transports; nil = all
	status  int
	code    string    // the deny code; "" = allowed
	allow   *upstream // for allows: what the upstream sees
}

func pass(key string, removed ...string) *upstream { return &upstream{key: key, removed: removed} }

func hdr(kv ...string) [][2]string {
	var out [][2]string
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, [2]string{kv[i], kv[i+1]})
	}
	return out
}

// bypassAttempts are the classes of bypass found in review, each with its
// variants and encodings. Every row asserts who may pass.
func bypassAttempts() []attempt {
	deny := func(name, paths, method, path string, h [][2]string, status int, code string, via ...string) attempt {
		return attempt{name: name, paths: paths, method: method, path: path, headers: h, status: status, code: code, via: via}
	}
	allow := func(name, paths, method, path string, h [][2]string, up *upstream, via ...string) attempt {
		return attempt{name: name, paths: paths, method: method, path: path, headers: h, status: 200, allow: up, via: via}
	}
	reader := hdr("x-api-key", "{reader}")
	users := hdr("x-api-key", "{users}")
	cookieRest := "a=1"
	noCookie := ""
	return []attempt{
		// Dot segments with ;params, in every encoding.
		deny("..; out of a public prefix", strictPaths, "GET", "/public/..;/api/admin/x", nil, 400, "bad_request"),
		deny("%2e%2e; out of a public prefix", strictPaths, "GET", "/public/%2e%2e;/api/admin/x", nil, 400, "bad_request"),
		deny("%2E%2E;x=1 out of a public prefix", strictPaths, "GET", "/public/%2E%2E;x=1/api/admin/x", nil, 400, "bad_request"),
		deny(".%2e; out of a public prefix", strictPaths, "GET", "/public/.%2e;/api/admin/x", nil, 400, "bad_request"),
		deny("%2E.; out of a public prefix", strictPaths, "GET", "/public/%2E.;/api/admin/x", nil, 400, "bad_request"),
		deny("..;a=b out of a public prefix", strictPaths, "GET", "/public/..;a=b/api/admin/x", nil, 400, "bad_request"),
		deny("/.;/ in a public prefix", strictPaths, "GET", "/public/.;/x", nil, 400, "bad_request"),
		deny("..; out of a reader's prefix", strictPaths, "GET", "/api/reports/..;/admin/x", reader, 400, "bad_request"),
		deny("..; from the root", strictPaths, "GET", "/..;/api/admin/x", nil, 400, "bad_request"),
		deny("a jsessionid parameter", strictPaths, "GET", "/public/x;jsessionid=1", nil, 400, "bad_request"),
		deny("an encoded semicolon", strictPaths, "GET", "/public/..%3B/api/admin/x", nil, 400, "bad_request"),
		deny("a double-encoded dot-dot", strictPaths, "GET", "/public/%252e%252e/api/admin/x", nil, 400, "bad_request"),
		deny("an overlong UTF-8 dot-dot", strictPaths, "GET", "/public/%c0%ae%c0%ae/api/admin/x", nil, 400, "bad_request"),
		deny("an encoded slash", strictPaths, "GET", "/public/..%2f..%2fapi/admin/x", nil, 400, "bad_request"),
		deny("an encoded backslash", strictPaths, "GET", "/public/..%5capi/admin/x", nil, 400, "bad_request"),
		deny("a raw backslash", strictPaths, "GET", "/public\\..\\api/admin/x", nil, 400, "bad_request", viaGRPC, viaXOriginal, viaXForwarded),
		deny("a raw dot-dot (Express and Flask take it literally)", strictPaths, "GET", "/api/admin/../../public/x", nil, 400, "bad_request"),
		deny("a raw dot-dot into a stricter route", strictPaths, "GET", "/public/../api/admin/x", nil, 400, "bad_request"),
		deny("a raw dot segment", strictPaths, "GET", "/public/./x", nil, 400, "bad_request"),
		deny("%2e%2e: Go's ServeMux takes it as a name", strictPaths, "GET", "/public/%2e%2e/api/admin/x", nil, 400, "bad_request"),
		deny(".%2e out of an admin prefix into a public one", strictPaths, "GET", "/api/admin/x/.%2e/.%2e/.%2e/public/x", nil, 400, "bad_request"),
		deny("%2E. out of a public prefix", strictPaths, "GET", "/public/%2E./api/admin/x", reader, 400, "bad_request"),
		deny("an encoded single dot", strictPaths, "GET", "/public/%2e/x", nil, 400, "bad_request"),
		deny("climbing above the root", strictPaths, "GET", "/public/../../api/admin/x", nil, 400, "bad_request"),

		// Encodings a router that matches the raw path (Express) reads
		// as other names than the decoded ones.
		deny("an encoded letter of the public file", strictPaths, "GET", "/files/%70ublic", nil, 400, "bad_request"),
		deny("an encoded letter of the admin prefix", strictPaths, "GET", "/api/%61dmin/x", reader, 400, "bad_request"),
		deny("an encoded digit", strictPaths, "GET", "/public/v%31", nil, 400, "bad_request"),
		deny("an encoded tilde", strictPaths, "GET", "/public/%7Eme", nil, 400, "bad_request"),
		deny("an encoded sub-delimiter of a literal", strictPaths, "GET", "/v1/things%3Alist", hdr("x-api-key", "{admin}"), 400, "bad_request"),
		allow("an encoded sub-delimiter a wildcard takes either way", strictPaths, "GET", "/files/a%3Ab", hdr("x-api-key", "{files}"), pass("files", "x-api-key")),

		// Double slashes.
		deny("// (upstreams merge it or not)", strictPaths, "GET", "//public//x", nil, 400, "bad_request"),
		deny("// then .. resolves differently per upstream", strictPaths, "GET", "/api/admin//../../public/x", nil, 400, "bad_request"),
		deny("//.. from a public prefix", strictPaths, "GET", "/public//../api/admin/x", nil, 400, "bad_request"),

		// Case and Unicode.
		// Express, koa-router and ASP.NET Core route case-insensitively by
		// default, so a path whose case picks its route is 400 whatever
		// paths.case_insensitive says.
		deny("upper case that picks the public file for a case-blind router", strictPaths, "GET", "/files/PUBLIC", nil, 400, "bad_request"),
		deny("upper case that reaches the admin prefix for one", strictPaths, "GET", "/API/admin/x", reader, 400, "bad_request"),
		deny("a lower-case path that a folded pattern would take", strictPaths, "GET", "/v1/THINGS:list", reader, 400, "bad_request"),
		allow("upper case that changes no route", strictPaths, "GET", "/files/Report", hdr("x-api-key", "{files}"), pass("files", "x-api-key")),
		deny("a ;param on a public literal", strictPaths, "GET", "/files/public;x", nil, 400, "bad_request"),
		deny("an upper-case public prefix is neither public nor another route", strictPaths, "GET", "/Public/x", nil, 400, "bad_request"),
		deny("raw long s (U+017F) is not s", strictPaths, "GET", "/\u017ftatic/x", nil, 400, "bad_request", viaGRPC, viaXOriginal, viaXForwarded),
		deny("encoded long s is not s", strictPaths, "GET", "/%C5%BFtatic/x", nil, 401, "missing_key"),
		deny("the Kelvin sign is not K", strictPaths, "GET", "/%E2%84%AAeys/x", nil, 401, "missing_key"),
		deny("a fullwidth s is not s", strictPaths, "GET", "/%EF%BD%93tatic/x", nil, 401, "missing_key"),
		deny("a dotted capital I is not i", strictPaths, "GET", "/f%C4%B0les/public", nil, 401, "missing_key"),
		deny("folding: upper case that picks the public route", foldingPaths, "GET", "/files/PUBLIC", nil, 400, "bad_request"),
		deny("folding: upper case that reaches the admin prefix", foldingPaths, "GET", "/API/admin/x", reader, 400, "bad_request"),
		deny("folding: the Kelvin sign", foldingPaths, "GET", "/%E2%84%AAeys/x", reader, 400, "bad_request"),
		deny("folding: long s", foldingPaths, "GET", "/%C5%BFtatic/x", nil, 400, "bad_request"),
		deny("folding: a fullwidth letter", foldingPaths, "GET", "/%EF%BD%93tatic/x", nil, 400, "bad_request"),
		allow("folding: a case that changes no route", foldingPaths, "GET", "/files/Report", hdr("x-api-key", "{files}"), pass("files", "x-api-key")),

		// Trailing slashes.
		deny("a trailing slash that changes the route", strictPaths, "GET", "/api/users/", users, 400, "bad_request"),
		deny("a trailing slash on a public literal", strictPaths, "GET", "/files/public/", nil, 400, "bad_request"),
		allow("a pattern with a slash takes both spellings", strictPaths, "GET", "/docs", nil, pass("")),
		allow("** takes a trailing slash", strictPaths, "GET", "/api/reports/", reader, pass("reader", "x-api-key")),

		// A raw "#": a request has no fragment, and Go's net/http reads it
		// as part of the path (nginx passes it on as written).
		deny("a raw # after a public path", strictPaths, "GET", "/healthz#/x", nil, 400, "bad_request", viaGRPC, viaXOriginal, viaXForwarded),
		deny("a raw # in the query hiding an override", strictPaths, "GET", "/api/users/7?a=1#&_method=DELETE", users, 400, "bad_request", viaGRPC, viaXOriginal, viaXForwarded),

		// Format suffixes: Rails and Spring MVC (before 5.3) serve
		// /api/admin.json as /api/admin.
		deny("a format suffix on an admin prefix", strictPaths, "GET", "/api/admin.json", reader, 400, "bad_request"),
		deny("a format suffix on a GET-only literal", strictPaths, "GET", "/api/users.json", reader, 400, "bad_request"),
		deny("a format suffix and a trailing slash", strictPaths, "GET", "/api/admin.json/", reader, 400, "bad_request"),
		deny("two extensions", strictPaths, "GET", "/api/admin.tar.gz", reader, 400, "bad_request"),
		deny("an encoded dot", strictPaths, "GET", "/api/admin%2Ejson", reader, 400, "bad_request"),
		deny("a format suffix under servlet readings", servletPaths, "GET", "/keys.json", reader, 400, "bad_request"),
		// White space at a segment's edge, which Spring MVC before 4.3 trims.
		deny("a trailing space out of the admin prefix", strictPaths, "GET", "/api/admin%20/x", reader, 400, "bad_request"),
		deny("a space-only segment dropped by a trimming upstream", strictPaths, "GET", "/api/%20/admin/x", reader, 400, "bad_request"),
		deny("a trailing no-break space", strictPaths, "GET", "/api/admin%C2%A0/x", reader, 400, "bad_request"),
		deny("a trailing space under servlet readings", servletPaths, "GET", "/api/admin%20;x=1/y", reader, 400, "bad_request"),
		deny("a format suffix in another case", foldingPaths, "GET", "/API/Admin.json", reader, 400, "bad_request"),
		allow("an extension that changes no route", strictPaths, "GET", "/files/report.pdf", hdr("x-api-key", "{files}"), pass("files", "x-api-key")),
		allow("an extension under **", strictPaths, "GET", "/api/reports/q1.csv", reader, pass("reader", "x-api-key")),
		allow("a leading dot is no extension", strictPaths, "GET", "/public/.env", nil, pass("")),

		// PHP front controllers: behind Caddy's php_fastcgi or nginx's
		// fastcgi_split_path_info, Symfony and Laravel serve
		// /index.php/api/admin/x as /api/admin/x.
		deny("a front controller's path info", strictPaths, "GET", "/index.php/api/admin/x", reader, 400, "bad_request"),
		deny("a script under a public prefix", strictPaths, "GET", "/public/index.php/api/admin/x", nil, 400, "bad_request"),
		deny("a script name in capitals", strictPaths, "GET", "/INDEX.PHP/keys/x", reader, 400, "bad_request"),
		deny("two scripts, split at the last", strictPaths, "GET", "/public/a.php/public/b.php/keys/x", nil, 400, "bad_request"),
		deny("an encoded dot in the script name", strictPaths, "GET", "/public/index%2Ephp/keys/x", nil, 400, "bad_request"),
		deny("a script's path info in another case", foldingPaths, "GET", "/public/index.php/KEYS/x", nil, 400, "bad_request"),
		allow("a script whose path info gets the same route", strictPaths, "GET", "/public/x.php/public/y", nil, pass("")),
		allow("a last segment ending in .php", strictPaths, "GET", "/public/x.php", nil, pass("")),

		// Methods.
		allow("HEAD takes the GET route", strictPaths, "HEAD", "/api/users", users, pass("users", "x-api-key")),
		deny("HEAD needs the GET route's permission", strictPaths, "HEAD", "/api/users", reader, 403, "permission_denied"),
		deny("OPTIONS does not fall through to any valid key", strictPaths, "OPTIONS", "/api/users", reader, 403, "no_route"),
		deny("POST does not fall through", strictPaths, "POST", "/api/users", reader, 403, "no_route"),
		deny("an unknown method does not fall through", strictPaths, "FOO", "/api/users", reader, 403, "no_route"),
		deny("PATCH on a GET and DELETE pattern", strictPaths, "PATCH", "/api/users/7", reader, 403, "no_route"),
		deny("HEAD on a per-method pattern needs GET's permission", strictPaths, "HEAD", "/api/users/7", reader, 403, "permission_denied"),
		deny("DELETE goes to the DELETE route of the pattern", strictPaths, "DELETE", "/api/users/7", users, 403, "permission_denied"),
		deny("a lower-case method", strictPaths, "get", "/api/users", users, 400, "bad_request"),
		deny("a mixed-case method", strictPaths, "Get", "/api/users", users, 400, "bad_request"),
		allow("a route without methods takes any token", strictPaths, "M-SEARCH", "/public/x", nil, pass("")),

		// Method overrides: Symfony and Laravel serve a POST with
		// X-HTTP-Method-Override: DELETE as a DELETE, by default.
		deny("X-HTTP-Method-Override names another method", strictPaths, "POST", "/api/users/7", hdr("x-api-key", "{users}", "X-HTTP-Method-Override", "DELETE"), 400, "bad_request"),
		deny("X-HTTP-Method names another method", strictPaths, "POST", "/api/users/7", hdr("x-api-key", "{users}", "X-HTTP-Method", "DELETE"), 400, "bad_request"),
		deny("X-Method-Override names another method", strictPaths, "POST", "/api/users/7", hdr("x-api-key", "{users}", "X-Method-Override", "DELETE"), 400, "bad_request"),
		deny("x_http_method_override (PHP's HTTP_X_HTTP_METHOD_OVERRIDE)", strictPaths, "POST", "/api/users/7", hdr("x-api-key", "{users}", "x_http_method_override", "DELETE"), 400, "bad_request"),
		deny("X-HTTP-METHOD-OVERRIDE in lower case names DELETE", strictPaths, "POST", "/api/users/7", hdr("x-api-key", "{users}", "X-HTTP-METHOD-OVERRIDE", "delete"), 400, "bad_request"),
		deny("an override on a GET that has a route", strictPaths, "GET", "/api/users/7", hdr("x-api-key", "{users}", "x-http-method-override", "DELETE"), 400, "bad_request"),
		deny("an override on a public route", strictPaths, "POST", "/public/x", hdr("X-HTTP-Method-Override", "DELETE"), 400, "bad_request"),
		deny("_method in the query", strictPaths, "POST", "/api/users/7?_method=DELETE", hdr("x-api-key", "{users}"), 400, "bad_request"),
		deny("_METHOD in the query", strictPaths, "POST", "/api/users/7?a=1&_METHOD=delete", hdr("x-api-key", "{users}"), 400, "bad_request"),
		deny("%5Fmethod in the query", strictPaths, "POST", "/api/users/7?%5Fmethod=DELETE", hdr("x-api-key", "{users}"), 400, "bad_request"),
		deny(".method in the query (PHP's _method)", strictPaths, "POST", "/api/users/7?.method=DELETE", hdr("x-api-key", "{users}"), 400, "bad_request"),
		deny("_method%00 in the query (PHP cuts a name at its NUL)", strictPaths, "POST", "/api/users/7?_method%00x=DELETE", hdr("x-api-key", "{users}"), 400, "bad_request"),
		deny("_method behind a ; in the query", strictPaths, "POST", "/api/users/7?a=1;_method=DELETE", hdr("x-api-key", "{users}"), 400, "bad_request"),
		deny("_method encoded in the value", strictPaths, "POST", "/api/users/7?_method=DEL%45TE", hdr("x-api-key", "{users}"), 400, "bad_request"),
		allow("an override that names the request's own method", strictPaths, "GET", "/api/users/7?_method=get", hdr("x-api-key", "{users}", "X-HTTP-Method-Override", "GET"), pass("users", "x-api-key")),
		allow("an empty override names none", strictPaths, "GET", "/api/users/7?_method=", hdr("x-api-key", "{users}"), pass("users", "x-api-key")),
		// Target overrides: IIS's X-Original-URL, which Symfony and Zend
		// served in place of the path until 2018 (CVE-2018-14773).
		deny("X-Original-URL names another path", strictPaths, "GET", "/public/x", hdr("X-Original-URL", "/api/admin/x"), 400, "bad_request"),
		deny("X-Rewrite-URL names another path", strictPaths, "GET", "/public/x", hdr("X-Rewrite-URL", "/api/admin/x"), 400, "bad_request"),
		deny("x_original_url (PHP's HTTP_X_ORIGINAL_URL)", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "x_original_url", "/api/admin/x"), 400, "bad_request"),
		deny("X-ORIGINAL-URL naming the path with another query", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "X-ORIGINAL-URL", "/api/reports/x?a=1"), 400, "bad_request"),
		allow("X-Original-URL naming the request's own target", strictPaths, "GET", "/api/reports/x?a=1", hdr("x-api-key", "{reader}", "X-Original-URL", "/api/reports/x?a=1"), pass("reader", "x-api-key")),
		allow("a parameter named method is not an override", strictPaths, "GET", "/api/users/7?method=DELETE", hdr("x-api-key", "{users}"), pass("users", "x-api-key")),

		// Credential names in the query.
		deny("api%5Fkey in the query", strictPaths, "GET", "/public/x?api%5Fkey={reader}", nil, 400, "bad_request"),
		deny("%61pi_key in the query", strictPaths, "GET", "/public/x?%61pi_key={reader}", nil, 400, "bad_request"),
		deny("api+key in the query", strictPaths, "GET", "/public/x?api+key={reader}", nil, 400, "bad_request"),
		deny("api.key in the query (PHP's api_key)", strictPaths, "GET", "/public/x?api.key={reader}", nil, 400, "bad_request"),
		deny("api[key in the query (PHP's api_key)", strictPaths, "GET", "/public/x?api[key={reader}", nil, 400, "bad_request", viaGRPC, viaXOriginal, viaXForwarded),
		deny("API_KEY in the query (ASP.NET's api_key)", strictPaths, "GET", "/public/x?API_KEY={reader}", nil, 400, "bad_request"),
		deny("api_key behind a ; in the query", strictPaths, "GET", "/public/x?x=1;api_key={reader}", nil, 400, "bad_request"),
		deny("api%5Fkey beside a good credential", strictPaths, "GET", "/api/reports/x?api%5Fkey={admin}", reader, 400, "bad_request"),
		deny("+api_key in the query (PHP drops leading spaces)", strictPaths, "GET", "/public/x?+api_key={reader}", nil, 400, "bad_request"),
		deny("%20api_key beside a good credential", strictPaths, "GET", "/api/reports/x?%20api_key={admin}", reader, 400, "bad_request"),
		deny("%20%20api.key in the query", strictPaths, "GET", "/public/x?%20%20api.key={reader}", nil, 400, "bad_request"),
		deny("api_key%00x in the query (PHP cuts a name at its NUL)", strictPaths, "GET", "/public/x?api_key%00x={reader}", nil, 400, "bad_request"),
		deny("api_key%00 beside a good credential", strictPaths, "GET", "/api/reports/x?api_key%00={admin}", reader, 400, "bad_request"),
		deny("api_key%5B%5D in the query (PHP, Rack and qs: an array under api_key)", strictPaths, "GET", "/public/x?api_key%5B%5D={reader}", nil, 400, "bad_request"),
		deny("api_key[0] in the query", strictPaths, "GET", "/public/x?api_key[0]={reader}", nil, 400, "bad_request", viaGRPC, viaXOriginal, viaXForwarded),
		deny("api.key%5Bx%5D beside a good credential", strictPaths, "GET", "/api/reports/x?api.key%5Bx%5D={admin}", reader, 400, "bad_request"),
		allow("api_key%5B without a ] is another name (PHP's api_key_)", strictPaths, "GET", "/public/x?api_key%5B={reader}", nil, pass("")),
		allow("two api_key parameters: both go", strictPaths, "GET", "/public/x?api_key={reader}&api_key={admin}", nil, &upstream{query: []string{"api_key"}}),
		allow("a query credential is stripped", strictPaths, "GET", "/api/reports/x?page=2&api_key={reader}", nil, &upstream{key: "reader", query: []string{"api_key"}}),

		// Credential names in cookies.
		deny("api%5Fkey as a cookie", strictPaths, "GET", "/public/x", hdr("cookie", "api%5Fkey={reader}"), 400, "bad_request"),
		deny("API_KEY as a cookie", strictPaths, "GET", "/public/x", hdr("cookie", "a=1; API_KEY={reader}"), 400, "bad_request"),
		deny("api.key as a cookie", strictPaths, "GET", "/public/x", hdr("cookie", "api.key={reader}"), 400, "bad_request"),
		deny("api_key%00 as a cookie (PHP before 8.1.11 decoded cookie names)", strictPaths, "GET", "/public/x", hdr("cookie", "api_key%00={reader}"), 400, "bad_request"),
		deny("api_key[] as a cookie (PHP: an array under api_key)", strictPaths, "GET", "/public/x", hdr("cookie", "a=1; api_key[]={reader}"), 400, "bad_request"),
		allow("a cookie in a second Cookie line is found and cut", strictPaths, "GET", "/api/reports/x",
			hdr("cookie", "a=1", "cookie", "api_key={reader}"), &upstream{key: "reader", cookie: &cookieRest}),
		allow("a cookie after a comma on a public route is cut", strictPaths, "GET", "/public/x",
			hdr("cookie", "a=1,api_key={reader}"), &upstream{cookie: &cookieRest}, viaGRPC),
		allow("two api_key cookies: both go", strictPaths, "GET", "/public/x",
			hdr("cookie", "api_key={reader}; api_key={admin}"), &upstream{cookie: &noCookie}),
		allow("a space before a cookie's = (Go, Node and Python trim it)", strictPaths, "GET", "/api/reports/x",
			hdr("cookie", "a=1; api_key ={reader}"), &upstream{key: "reader", cookie: &cookieRest}),
		allow("a tab before a cookie's =", strictPaths, "GET", "/api/reports/x",
			hdr("cookie", "api_key\t={reader}"), &upstream{key: "reader", cookie: &noCookie}),
		allow("a spaced cookie beside a header credential goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "cookie", "api_key ={admin}"), &upstream{key: "reader", removed: []string{"x-api-key"}, cookie: &noCookie}),
		deny("an empty api_key cookie before a comma (net/http reads \",{admin}\")", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "cookie", "api_key=,{admin}"), 400, "bad_request"),
		allow("a unit separator after a cookie's name", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "cookie", "a=1; api_key\x1f={admin}"), &upstream{key: "reader", removed: []string{"x-api-key"}, cookie: &cookieRest}, viaGRPC),
		deny("%20api_key as a cookie", strictPaths, "GET", "/public/x", hdr("cookie", "%20api_key={reader}"), 400, "bad_request"),

		// Bearer and the white space after it.
		allow("Bearer and a tab", strictPaths, "GET", "/api/reports/x", hdr("authorization", "Bearer\t{reader}"), pass("reader", "authorization")),
		allow("Bearer and a vertical tab (Python's split)", strictPaths, "GET", "/api/reports/x", hdr("authorization", "Bearer\v{reader}"), pass("reader", "authorization"), viaGRPC),
		allow("Bearer and a unit separator (Python's str.split)", strictPaths, "GET", "/api/reports/x", hdr("authorization", "Bearer\x1f{reader}"), pass("reader", "authorization"), viaGRPC),
		allow("Bearer and a raw NBSP byte (str.split on a Latin-1 header)", strictPaths, "GET", "/api/reports/x", hdr("authorization", "Bearer\xa0{reader}"), pass("reader", "authorization"), viaPath, viaXOriginal, viaXForwarded),
		allow("Bearer and a UTF-8 NBSP (Go's strings.Fields)", strictPaths, "GET", "/api/reports/x", hdr("authorization", "Bearer\u00a0{reader}"), pass("reader", "authorization")),
		allow("Bearer, NBSP and a key beside a header credential goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Bearer\xa0{admin}"), pass("reader", "x-api-key", "authorization"), viaPath, viaXOriginal, viaXForwarded),
		allow("Bearer, an em space and a key beside a header credential goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Bearer\u2003{admin}"), pass("reader", "x-api-key", "authorization")),
		allow("Bearer and a tab beside a header credential goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Bearer\t{admin}"), pass("reader", "x-api-key", "authorization")),
		// A header's lines are one value, joined with ",": a Bearer key on a
		// later line than another scheme's still reaches the upstream with it.
		allow("a Bearer key on a later Authorization line, beside a header credential, goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Basic Zm9vOmJhcg==", "authorization", "Bearer {admin}"), pass("reader", "x-api-key", "authorization")),
		allow("a Bearer key after an empty Bearer line, on a public route, goes", strictPaths, "GET", "/public/x",
			hdr("authorization", "Bearer", "authorization", "Bearer {reader}"), pass("", "authorization")),
		deny("a Bearer key on a later Authorization line is an invalid key", strictPaths, "GET", "/api/reports/x",
			hdr("authorization", "Basic Zm9vOmJhcg==", "authorization", "Bearer {reader}"), 401, "invalid_key"),
		// A key under another scheme is no credential, but the upstream
		// must not get it: one may read "Token <key>", or take an API key
		// as the Basic user ({basic:name} is base64 of "<key>:").
		allow("a key under another scheme, beside a header credential, goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Token {admin}"), pass("reader", "x-api-key", "authorization")),
		allow("a key as Basic credentials, beside a header credential, goes", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Basic {basic:admin}"), pass("reader", "x-api-key", "authorization")),
		allow("a key as Basic credentials, on a public route, goes", strictPaths, "GET", "/public/x",
			hdr("authorization", "Basic {basic:reader}"), pass("", "authorization")),
		deny("a key as Basic credentials is not read as the key", strictPaths, "GET", "/api/reports/x",
			hdr("authorization", "Basic {basic:reader}"), 401, "missing_key"),
		// Envoy shows extauthz a byte that is not UTF-8 as "!" and passes the
		// byte itself upstream: "Bearer!" may be "Bearer\xa0" there.
		allow("Bearer and the ! Envoy puts for a raw byte, beside a header credential", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "Bearer!{admin}"), pass("reader", "x-api-key", "authorization")),
		// Before the scheme too: str.split(None, 1) and strings.Fields drop
		// the white space a value starts with, so "\xa0Bearer <key>" is
		// ("Bearer", key) to the upstream.
		allow("a raw NBSP before Bearer, beside a header credential", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "\xa0Bearer {admin}"), pass("reader", "x-api-key", "authorization"), viaPath, viaXOriginal, viaXForwarded),
		allow("a unit separator before Bearer, beside a header credential", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "\x1fBearer {admin}"), pass("reader", "x-api-key", "authorization"), viaGRPC),
		allow("the ! Envoy puts for a raw byte before Bearer, beside a header credential", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "authorization", "!Bearer {admin}"), pass("reader", "x-api-key", "authorization")),
		allow("a cookie name after the ! Envoy puts for a raw byte", strictPaths, "GET", "/api/reports/x",
			hdr("x-api-key", "{reader}", "cookie", "a=1; !api_key={admin}"), &upstream{key: "reader", removed: []string{"x-api-key"}, cookie: &cookieRest}, viaGRPC),

		// Identity headers in every spelling.
		allow("x_authz_owner is removed", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "x_authz_owner", "root"), pass("reader", "x-api-key", "x_authz_owner")),
		allow("X-AUTHZ-OWNER is overwritten", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "X-AUTHZ-OWNER", "root"), pass("reader", "x-api-key")),
		allow("x-authz_owner is removed", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "x-authz_owner", "root"), pass("reader", "x-api-key", "x-authz_owner")),
		allow("X_Authz-Key_Id is removed", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "X_Authz-Key_Id", "key_admin"), pass("reader", "x-api-key", "x_authz-key_id")),
		allow("x-authz-admin is removed", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "x-authz-admin", "true"), pass("reader", "x-api-key", "x-authz-admin")),
		allow("a public route removes x-authz-owner", strictPaths, "GET", "/public/x", hdr("x-authz-owner", "root"), pass("", "x-authz-owner")),
		allow("a public route removes x_authz_key_id", strictPaths, "GET", "/public/x", hdr("x_authz_key_id", "key_admin"), pass("", "x_authz_key_id")),
		allow("a public route strips a credential sent anyway", strictPaths, "GET", "/public/x", hdr("authorization", "Bearer {reader}", "x-authz-permissions", "admin"), pass("", "authorization", "x-authz-permissions")),
		deny("x_api_key spells the credential header otherwise", strictPaths, "GET", "/public/x", hdr("x_api_key", "{reader}"), 400, "bad_request"),
		deny("X-API_KEY spells it otherwise too", strictPaths, "GET", "/api/reports/x", hdr("x-api-key", "{reader}", "X-API_KEY", "{admin}"), 400, "bad_request"),

		// HTTP-mode conventions: one place only.
		deny("path mode ignores a client X-Forwarded-Uri", strictPaths, "GET", "/api/admin/x", hdr("X-Forwarded-Uri", "/public/x", "X-Original-URI", "/public/x"), 401, "missing_key", viaPath),
		deny("x-original ignores a client X-Forwarded-Uri", strictPaths, "GET", "/api/admin/x", hdr("X-Forwarded-Uri", "/public/x", "X-Forwarded-Method", "GET"), 401, "missing_key", viaXOriginal),
		deny("x-forwarded ignores a client X-Original-URI", strictPaths, "GET", "/api/admin/x", hdr("X-Original-URI", "/public/x", "X-Original-Method", "GET"), 401, "missing_key", viaXForwarded),
		deny("x-original without its headers", strictPaths, "", "", nil, 400, "bad_request", viaXOriginal),
		deny("x-forwarded without its headers", strictPaths, "", "", nil, 400, "bad_request", viaXForwarded),

		// Too many headers.
		deny("600 headers", strictPaths, "GET", "/public/x", manyHeaders(600), 400, "bad_request"),

		// The servlet reading: ;params cut and // merged, as a servlet
		// container does; a dot segment in any spelling is 400, since the
		// container resolves it and Spring MVC's path patterns (matching
		// the request URI) take it as a name: "/api/admin/x/..;/..;/..;/public/x"
		// was decided as /public/x, and Spring served /api/admin/**.
		deny("servlet: ..; climbing out of a protected prefix", servletPaths, "GET", "/api/admin/x/..;/..;/..;/public/x", nil, 400, "bad_request"),
		deny("servlet: ..; out of /keys", servletPaths, "GET", "/keys/x/..;/..;/public/x", nil, 400, "bad_request"),
		deny("servlet: %2e%2e; climbing out", servletPaths, "GET", "/api/admin/x/%2e%2e;/%2e%2e;/%2e%2e;/public/x", nil, 400, "bad_request"),
		deny("servlet: .%2e;x climbing out", servletPaths, "GET", "/api/admin/x/.%2e;x/.%2e/.%2e/public/x", nil, 400, "bad_request"),
		deny("servlet: ..; climbing into the admin prefix", servletPaths, "GET", "/public/..;/api/admin/x", nil, 400, "bad_request"),
		deny("servlet: %2e%2e;x climbing in", servletPaths, "GET", "/public/%2e%2e;x/api/admin/x", reader, 400, "bad_request"),
		deny("servlet: ..; out of a reader's prefix", servletPaths, "GET", "/api/reports/..;/admin/x", reader, 400, "bad_request"),
		deny("servlet: /.;/", servletPaths, "GET", "/.;/api/admin/x", reader, 400, "bad_request"),
		deny("servlet: a raw dot-dot", servletPaths, "GET", "/public/../api/admin/x", nil, 400, "bad_request"),
		deny("servlet: a raw dot", servletPaths, "GET", "/public/./x", nil, 400, "bad_request"),
		deny("servlet: // merges", servletPaths, "GET", "//api//admin//x", reader, 403, "permission_denied"),
		deny("servlet: // then .. is 400", servletPaths, "GET", "/api/admin//../../public/x", nil, 400, "bad_request"),
		deny("servlet: %2e%2e", servletPaths, "GET", "/public/%2e%2e/api/admin/x", reader, 400, "bad_request"),
		deny("servlet: an encoded semicolon is still 400", servletPaths, "GET", "/public/..%3B/api/admin/x", nil, 400, "bad_request"),
		allow("servlet: a jsessionid parameter", servletPaths, "GET", "/api/users;jsessionid=1", users, pass("users", "x-api-key")),
		allow("servlet: params on a public path", servletPaths, "GET", "/public/x;a=b", nil, pass("")),
	}
}

// manyHeaders returns n distinct headers.
func manyHeaders(n int) [][2]string {
	out := make([][2]string, n)
	for i := range out {
		out[i] = [2]string{fmt.Sprintf("x-pad-%d", i), "v"}
	}
	return out
}

// bypassFixture is, for each path reading, one server per HTTP-mode
// convention on one shared store, and the keys of the suite.
type bypassFixture struct {
	servers map[string]map[string]*testServer // paths → transport → server
	keys    map[string]string                 // name → secret
	ids     map[string]string                 // name → key id
}

func newBypassFixture(t *testing.T) *bypassFixture {
	t.Helper()
	f := &bypassFixture{servers: map[string]map[string]*testServer{}, keys: map[string]string{}, ids: map[string]string{}}
	db := fmt.Sprintf("store: {backend: embedded, path: %q}\n", filepath.Join(t.TempDir(), "bypass.db"))
	for _, paths := range []string{strictPaths, servletPaths, foldingPaths} {
		f.servers[paths] = map[string]*testServer{}
		for original, via := range map[string]string{"path": viaPath, "x-original": viaXOriginal, "x-forwarded": viaXForwarded} {
			ts := startServer(t, db+bypassRoutes+paths+"http_mode: {original: "+original+"}\n")
			f.servers[paths][via] = ts
			if original == "path" {
				f.servers[paths][viaGRPC] = ts
			}
		}
	}
	ts := f.servers[strictPaths][viaGRPC]
	for name, perms := range map[string][]string{
		"reader": {"read:reports"}, "users": {"read:users"}, "files": {"read:files"}, "admin": {"admin:all", "delete:users", "read:users"},
	} {
		secret, k := ts.create(t, keystore.Spec{Name: name, Permissions: perms})
		f.keys[name], f.ids[name] = secret, k.ID
	}
	return f
}

func (f *bypassFixture) expand(s string) string {
	for name, key := range f.keys {
		s = strings.ReplaceAll(s, "{"+name+"}", key)
		s = strings.ReplaceAll(s, "{basic:"+name+"}", base64.StdEncoding.EncodeToString([]byte(key+":")))
	}
	return s
}

// TestBypassAttempts makes every attempt of bypassAttempts over a real gRPC
// connection and over real HTTP in each convention, and checks who passes:
// the status and code of a denial; for an allow, the identity the upstream
// gets and every header, query parameter and cookie removed on the way.
func TestBypassAttempts(t *testing.T) {
	f := newBypassFixture(t)
	n := 0
	for _, a := range bypassAttempts() {
		via := a.via
		if via == nil {
			via = allTransports
		}
		for _, transport := range via {
			n++
			t.Run(a.name+"/"+transport, func(t *testing.T) {
				ts := f.servers[a.paths][transport]
				if transport == viaGRPC {
					f.checkGRPC(t, ts, a)
				} else {
					f.checkHTTP(t, ts, transport, a)
				}
			})
		}
	}
	t.Logf("%d attempts, %d requests", len(bypassAttempts()), n)
	require.GreaterOrEqual(t, len(bypassAttempts()), 60)
}

// checkGRPC sends a as Envoy would: header names lower-cased, a repeated
// header's lines joined with a comma.
func (f *bypassFixture) checkGRPC(t *testing.T, ts *testServer, a attempt) {
	headers := map[string]string{}
	for _, h := range a.headers {
		name := strings.ToLower(h[0])
		if prev, ok := headers[name]; ok {
			headers[name] = prev + "," + f.expand(h[1])
		} else {
			headers[name] = f.expand(h[1])
		}
	}
	resp, err := ts.client.Check(context.Background(), checkReq(a.method, f.expand(a.path), "10.1.2.3", headers))
	require.NoError(t, err, "a decision is never an RPC error")
	for _, k := range f.keys {
		require.NotContains(t, resp.String(), k, "no response carries a key")
	}
	if a.allow == nil {
		code, status := denial(t, resp)
		assert.Equal(t, a.code, code, resp.GetStatus().GetMessage())
		assert.Equal(t, a.status, status)
		return
	}
	ok := resp.GetOkResponse()
	require.NotNil(t, ok, "want an allow, got %s", resp.GetStatus().GetMessage())
	set := headerMap(ok.GetHeaders())
	if a.allow.key != "" {
		assert.Equal(t, f.ids[a.allow.key], set["x-authz-key-id"])
		assert.Equal(t, a.allow.key, set["x-authz-key-name"])
	} else {
		assert.NotContains(t, set, "x-authz-key-id", "a public route sets no identity")
	}
	removed := ok.GetHeadersToRemove()
	lower := make([]string, len(removed))
	for i, r := range removed {
		lower[i] = strings.ToLower(r)
		assert.False(t, a.allow.key != "" && isIdentityName(r), "removing %s would remove the identity just set", r)
	}
	for _, want := range a.allow.removed {
		assert.Contains(t, lower, want)
	}
	assert.ElementsMatch(t, a.allow.query, ok.GetQueryParametersToRemove())
	if a.allow.cookie != nil {
		if *a.allow.cookie == "" {
			assert.Contains(t, lower, "cookie")
			assert.NotContains(t, set, "cookie")
		} else {
			assert.Equal(t, *a.allow.cookie, set["cookie"])
		}
	}
}

// readsAsIdentity reports whether a header name reads as an x-authz- one:
// any case, "_" for "-".
func readsAsIdentity(name string) bool {
	const prefix = "x-authz-"
	return len(name) > len(prefix) && strings.EqualFold(strings.ReplaceAll(name[:len(prefix)], "_", "-"), prefix)
}

func isIdentityName(name string) bool {
	return slices.Contains([]string{"x-authz-key-id", "x-authz-key-name", "x-authz-owner", "x-authz-permissions"}, strings.ToLower(name))
}

// checkHTTP sends a to the HTTP listener in the transport's convention,
// with the request written byte for byte (names, order and repeated lines
// as given).
func (f *bypassFixture) checkHTTP(t *testing.T, ts *testServer, transport string, a attempt) {
	method, target := "GET", "/authz"
	headers := slices.Clone(a.headers)
	switch transport {
	case viaPath:
		method, target = a.method, "/authz"+f.expand(a.path)
	case viaXOriginal:
		if a.method != "" {
			headers = append(headers, [2]string{"X-Original-Method", a.method}, [2]string{"X-Original-URI", a.path})
		}
	case viaXForwarded:
		if a.method != "" {
			headers = append(headers, [2]string{"X-Forwarded-Method", a.method}, [2]string{"X-Forwarded-Uri", a.path})
		}
	}
	for i := range headers {
		headers[i][1] = f.expand(headers[i][1])
	}
	resp := rawHTTP(t, strings.TrimPrefix(ts.httpURL, "http://"), method, target, headers)
	for _, k := range f.keys {
		for name, vs := range resp.Header {
			require.NotContains(t, strings.Join(vs, " "), k, "header %s carries a key", name)
		}
	}
	if transport == viaXOriginal && slices.ContainsFunc(a.headers, func(h [2]string) bool { return readsAsIdentity(h[0]) }) {
		// nginx removes only the names its config lists: refused.
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))
		return
	}
	if a.allow != nil && (len(a.allow.query) > 0 || a.allow.cookie != nil) {
		// The credential is in the query or a cookie, which the proxy
		// cannot remove (http_mode.query_and_cookie_keys: refuse).
		assert.Equal(t, http.StatusBadRequest, resp.StatusCode)
		assert.Equal(t, "bad_request", resp.Header.Get("X-Authz-Code"))
		return
	}
	assert.Equal(t, a.status, resp.StatusCode)
	if a.allow == nil {
		assert.Equal(t, a.code, resp.Header.Get("X-Authz-Code"))
		return
	}
	if a.allow.key != "" {
		assert.Equal(t, f.ids[a.allow.key], resp.Header.Get("X-Authz-Key-Id"))
	} else {
		// Present and empty: a proxy that copies it overwrites the client's.
		for _, name := range []string{"X-Authz-Key-Id", "X-Authz-Key-Name", "X-Authz-Owner", "X-Authz-Permissions"} {
			assert.Equal(t, []string{""}, resp.Header.Values(name), name)
		}
	}
	var named []string
	for _, n := range strings.Split(resp.Header.Get("X-Envoy-Auth-Headers-To-Remove"), ",") {
		if n = strings.TrimSpace(n); n != "" {
			named = append(named, n)
		}
	}
	for _, want := range a.allow.removed {
		assert.Contains(t, named, want)
	}
	for _, n := range named {
		assert.False(t, a.allow.key != "" && isIdentityName(n), "naming %s would remove the identity just set", n)
	}
}

// rawHTTP writes one HTTP/1.1 request exactly as given and reads the
// response.
func rawHTTP(t *testing.T, addr, method, target string, headers [][2]string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, conn.SetDeadline(time.Now().Add(10*time.Second)))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-For: 10.1.2.3\r\nConnection: close\r\n", method, target)
	for _, h := range headers {
		fmt.Fprintf(&b, "%s: %s\r\n", h[0], h[1])
	}
	b.WriteString("\r\n")
	_, err = conn.Write([]byte(b.String()))
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: method})
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

// The gRPC listener's caps: past MaxHeaders a CheckRequest is a 400
// CheckResponse (above); past 1 MiB it is refused as a message (an RPC
// error, which Envoy answers with its status_on_error).
func TestTheGRPCListenerRefusesAMessageOverOneMiB(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes)
	req := checkReq("GET", "/healthz", "10.1.2.3", nil)
	req.Attributes.ContextExtensions = map[string]string{"pad": strings.Repeat("p", 1<<20)}
	_, err := ts.client.Check(context.Background(), req)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "larger than max")

	raw := checkReq("GET", "/healthz", "10.1.2.3", nil)
	raw.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{}
	for i := range 600 {
		raw.Attributes.Request.Http.HeaderMap.Headers = append(raw.Attributes.Request.Http.HeaderMap.Headers, &corev3.HeaderValue{Key: "x-same", Value: fmt.Sprint(i)})
	}
	resp, err := ts.client.Check(context.Background(), raw)
	require.NoError(t, err)
	code, status := denial(t, resp)
	assert.Equal(t, "bad_request", code, "600 entries of Envoy's header_map")
	assert.Equal(t, 400, status)
}
