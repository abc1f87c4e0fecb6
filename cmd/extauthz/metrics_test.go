package main

import (
	"context"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// scrape reads the families of a /metrics page.
func scrape(t testing.TB, client *http.Client, url string) map[string]*dto.MetricFamily {
	t.Helper()
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	require.NoError(t, err)
	return fams
}

// sample sums the series of family name whose labels include want (pairs
// of name and value); ok is false when none does.
func sample(fams map[string]*dto.MetricFamily, name string, want ...string) (sum float64, ok bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
series:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(want); i += 2 {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool { return l.GetName() == want[i] && l.GetValue() == want[i+1] }) {
				continue series
			}
		}
		ok = true
		switch {
		case m.GetCounter() != nil:
			sum += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			sum += m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		case m.GetUntyped() != nil:
			sum += m.GetUntyped().GetValue()
		}
	}
	return sum, ok
}

func TestMetricsCountDecisionsByPolicyAndRoute(t *testing.T) {
	ts := startServer(t, storeYAML(t, "embedded")+testRoutes+"rate_limit: {default: 10/h}\nmetrics: {grpc: true}\n")
	key, _ := ts.create(t, keystore.Spec{Name: "m", Permissions: []string{"read:users", "delete:users", "read:reports"}})
	for range 3 {
		ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
	}
	ts.check(t, "GET", "/api/users", nil)
	ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": "sk_nope"})
	for range 2 { // the route's 2/m: the second leaves 0 of 2
		ts.check(t, "DELETE", "/api/users/1", map[string]string{"x-api-key": key})
	}
	ts.check(t, "GET", "/nowhere", map[string]string{"x-api-key": key})
	ts.check(t, "GET", "/a/../../b", nil)
	ts.check(t, "GET", "/healthz", nil)
	for range 5 { // the key's 10/h: its checks 6 to 10 leave 4, 3, 2, 1 and 0 of 10
		ts.check(t, "GET", "/api/reports/x", map[string]string{"x-api-key": key})
	}

	fams := scrape(t, nil, ts.httpURL+"/metrics")
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"extauthz_decisions_total", []string{"policy", "default", "route", "/api/users", "code", "allow"}, 3},
		{"extauthz_decisions_total", []string{"route", "/api/users", "code", "missing_key"}, 1},
		{"extauthz_decisions_total", []string{"route", "/api/users", "code", "invalid_key"}, 1},
		{"extauthz_decisions_total", []string{"route", "/api/users/{id}", "code", "allow"}, 2},
		{"extauthz_decisions_total", []string{"route", "(unmatched)", "code", "no_route"}, 1},
		{"extauthz_decisions_total", []string{"route", "(none)", "code", "bad_request"}, 1},
		{"extauthz_decisions_total", []string{"route", "/healthz", "code", "allow"}, 1},
		{"extauthz_ratelimit_near_limit_total", []string{"policy", "default", "route", "/api/users/{id}"}, 1},
		{"extauthz_ratelimit_near_limit_total", []string{"route", "/api/reports/**"}, 2},
		{"extauthz_check_duration_seconds", nil, 15},
		{"extauthz_build_info", []string{"version", "dev", "goversion", runtime.Version()}, 1},
		{"grpc_server_handled_total", []string{"grpc_service", "envoy.service.auth.v3.Authorization", "grpc_method", "Check", "grpc_code", "OK"}, 15},
	} {
		got, ok := sample(fams, tc.name, tc.labels...)
		assert.True(t, ok, "%s%v: no such series", tc.name, tc.labels)
		assert.Equal(t, tc.want, got, "%s%v", tc.name, tc.labels)
	}
	for _, m := range fams["extauthz_decisions_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			assert.NotContains(t, l.GetValue(), "nowhere", "a route label is a configured pattern, never a path a client sent")
		}
	}
	loaded, ok := sample(fams, "extauthz_config_last_reload_success_timestamp_seconds")
	require.True(t, ok)
	assert.Greater(t, loaded, float64(1.7e9))
}

// The metrics table of docs/operations.md lists every metric a running
// server exports (beyond the Go runtime's and the process's), with its type
// and labels, and nothing else: the list cannot drift from the registry.
func TestTheMetricsListIsTheRegistry(t *testing.T) {
	// The Redis limiter adds its replicas gauge; 12 checks of a key limited to
	// 10/h come near the limit (the near-limit series are made on first use,
	// as are the admin API's by its first answer).
	ts := startServerFile(t, writeConfig(t, `listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", admin: "127.0.0.1:0"}`+"\naudit: {sink: none}\n"+
		storeYAML(t, "redis")+testRoutes+"rate_limit: {default: 10/h}\nmetrics: {grpc: true}\n"))
	key, _ := ts.create(t, keystore.Spec{Name: "m", Permissions: []string{"read:users"}})
	for range 12 {
		ts.check(t, "GET", "/api/users", map[string]string{"x-api-key": key})
	}
	_, err := ts.client.Check(context.Background(), checkReq("GET", "/api/users/9", "10.0.0.1", nil))
	require.NoError(t, err)
	require.Equal(t, 401, adminStatus(t, ts, "GET", "/v1/keys", "", ""))
	fams := scrape(t, nil, ts.httpURL+"/metrics")

	doc, err := os.ReadFile("../../docs/operations.md")
	require.NoError(t, err)
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| (counter|gauge|histogram) \\|([^|]*)\\|")
	documented := map[string]bool{}
	for _, m := range row.FindAllStringSubmatch(string(doc), -1) {
		name, typ, labels := m[1], m[2], strings.TrimSpace(m[3])
		documented[name] = true
		f := fams[name]
		if !assert.NotNil(t, f, "docs/operations.md lists %s, which the server does not export", name) {
			continue
		}
		assert.Equal(t, strings.ToUpper(typ), f.GetType().String(), "%s: type", name)
		var want []string
		for _, l := range regexp.MustCompile("`([a-z_]+)`").FindAllStringSubmatch(labels, -1) {
			want = append(want, l[1])
		}
		var got []string
		if len(f.GetMetric()) > 0 {
			for _, l := range f.GetMetric()[0].GetLabel() {
				got = append(got, l.GetName())
			}
		}
		slices.Sort(want)
		slices.Sort(got)
		assert.Equal(t, want, got, "%s: labels", name)
	}
	for name := range fams {
		if strings.HasPrefix(name, "go_") || strings.HasPrefix(name, "process_") {
			continue
		}
		assert.True(t, documented[name], "%s is exported but not in the metrics table of docs/operations.md", name)
	}
}

// The admin API's answers are counted by route pattern and code, on
// /metrics, over real HTTP: a path with a secret pasted into it is counted
// by its pattern, never by the path.
func TestMetricsCountAdminAnswersByRouteAndCode(t *testing.T) {
	ts := startServerFile(t, writeConfig(t, `listen: {grpc: "127.0.0.1:0", http: "127.0.0.1:0", admin: "127.0.0.1:0"}`+"\naudit: {sink: none}\n"+
		storeYAML(t, "embedded")+testRoutes))
	root, _ := ts.create(t, keystore.Spec{Name: "root", Permissions: []string{"keys:admin"}})
	require.Equal(t, 201, adminStatus(t, ts, "POST", "/v1/keys", root, `{"name": "a", "permissions": ["none"]}`))
	require.Equal(t, 201, adminStatus(t, ts, "POST", "/v1/keys", root, `{"name": "b", "permissions": ["none"]}`))
	require.Equal(t, 401, adminStatus(t, ts, "GET", "/v1/keys", "", ""))
	require.Equal(t, 404, adminStatus(t, ts, "DELETE", "/v1/keys/sk_pasted", root, ""))

	fams := scrape(t, nil, ts.httpURL+"/metrics")
	for _, tt := range []struct {
		route, code string
		want        float64
	}{
		{"POST /v1/keys", "ok", 2},
		{"GET /v1/keys", "missing_key", 1},
		{"DELETE /v1/keys/{id}", "not_found", 1},
	} {
		n, ok := sample(fams, "extauthz_admin_requests_total", "route", tt.route, "code", tt.code)
		assert.True(t, ok, "%s %s", tt.route, tt.code)
		assert.Equal(t, tt.want, n, "%s %s", tt.route, tt.code)
	}
	for _, m := range fams["extauthz_admin_requests_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			assert.NotContains(t, l.GetValue(), "sk_", "a label holds a path")
		}
	}
}
