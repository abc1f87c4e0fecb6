package main

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// metricsEvery is the least time between two gathers of the metrics.
const metricsEvery = 250 * time.Millisecond

// metricsPage is /metrics, shared. Anyone who reaches the HTTP listener may
// ask for it, with no key, and one page costs about 1.4 ms of CPU (reading
// the runtime's and the process's statistics is most of it, encoding 30 KB
// of text the rest): hundreds of decisions' worth for one request, so that
// a single connection asking in a loop keeps a core busy. So one gather
// runs at a time, at most one per metricsEvery; a request waits for the
// first gather begun after it came, never answered from an older one, and
// the requests that came meanwhile share it, and share its page in each
// format: a Prometheus scrape sees its counters fresh, and a flood costs a
// few gathers a second however many ask.
type metricsPage struct {
	reg   prometheus.Gatherer
	every time.Duration
	// render encodes the last gather (gathered) for one request's format.
	render http.Handler

	mu       sync.Mutex
	started  time.Time // when the last gather began
	gathered []*dto.MetricFamily
	err      error
	pages    map[pageKey]*renderedPage // of the last gather
}

// pageKey is what a page's bytes depend on: the format negotiated from the
// request's Accept (one of a few), and whether it is gzipped. The request's
// header text is never a key: a client would make a page per spelling.
type pageKey struct {
	format expfmt.Format
	gzip   bool
}

// renderedPage is one encoded answer.
type renderedPage struct {
	status int
	header http.Header
	body   []byte
}

func newMetricsPage(reg prometheus.Gatherer) *metricsPage {
	m := &metricsPage{reg: reg, every: metricsEvery, pages: map[pageKey]*renderedPage{}}
	m.render = promhttp.HandlerFor(prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return m.gathered, m.err }),
		promhttp.HandlerOpts{OfferedCompressions: []promhttp.Compression{promhttp.Identity, promhttp.Gzip}})
	return m
}

func (m *metricsPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	came := time.Now()
	key := pageKey{format: expfmt.NegotiateAccept(r.Header, expfmt.DefaultAcceptedFormats()...), gzip: acceptsGzip(r.Header.Values("Accept-Encoding"))}
	p := m.page(came, key, r.Header.Values("Accept"))
	h := w.Header()
	for name, vs := range p.header {
		h[name] = vs
	}
	w.WriteHeader(p.status)
	w.Write(p.body)
}

// page returns the page for key of the first gather begun at or after
// came, gathering when there is none yet; accept is the Accept header key
// was negotiated from.
func (m *metricsPage) page(came time.Time, key pageKey, accept []string) *renderedPage {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started.Before(came) {
		if wait := m.every - time.Since(m.started); wait > 0 {
			// Under the lock: the requests that come meanwhile wait too,
			// and share the gather that follows.
			time.Sleep(wait)
		}
		m.started = time.Now()
		m.gathered, m.err = m.reg.Gather()
		clear(m.pages)
	}
	p := m.pages[key]
	if p == nil {
		enc := "identity"
		if key.gzip {
			enc = "gzip"
		}
		rec := &pageRecorder{header: http.Header{}}
		m.render.ServeHTTP(rec, &http.Request{Method: http.MethodGet, Header: http.Header{"Accept": accept, "Accept-Encoding": {enc}}})
		p = &renderedPage{status: rec.status, header: rec.header, body: rec.body.Bytes()}
		if p.status == 0 {
			p.status = http.StatusOK
		}
		m.pages[key] = p
	}
	return p
}

// acceptsGzip reports whether an Accept-Encoding header names gzip (or
// "*") with a weight above 0.
func acceptsGzip(values []string) bool {
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			name, params, _ := strings.Cut(part, ";")
			if name = strings.TrimSpace(name); !strings.EqualFold(name, "gzip") && name != "*" {
				continue
			}
			if q, ok := strings.CutPrefix(strings.TrimSpace(params), "q="); ok {
				if f, err := strconv.ParseFloat(strings.TrimSpace(q), 64); err != nil || f <= 0 {
					continue
				}
			}
			return true
		}
	}
	return false
}

// pageRecorder keeps what a handler answers.
type pageRecorder struct {
	status int
	header http.Header
	body   bytes.Buffer
}

func (p *pageRecorder) Header() http.Header { return p.header }

func (p *pageRecorder) WriteHeader(status int) {
	if p.status == 0 {
		p.status = status
	}
}

func (p *pageRecorder) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return p.body.Write(b)
}
