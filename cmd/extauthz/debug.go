package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"strconv"
	"time"

	"github.com/extauthz/extauthz/config"
)

// maxProfileFor is the longest a debug request may record or wait
// (?seconds= of a CPU profile, a trace or a named profile's delta):
// net/http/pprof takes any duration and extends the write deadline to
// match, so one request could otherwise hold the CPU profiler for good.
const maxProfileFor = 60 * time.Second

// debugLimits are the debug listener's: requests without a body, each
// answered within Write, which net/http/pprof extends by what a profile
// records (at most maxProfileFor).
var debugLimits = httpLimits{
	ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 10 * time.Second,
	Idle: 2 * time.Minute, MaxHeaderBytes: 16 << 10,
}

// debugHandler serves Go's runtime profiles under /debug/pprof/, as
// net/http/pprof does, for go tool pprof and continuous profilers: the index,
// profile (CPU, ?seconds=, 30 by default), trace, symbol, and the named
// profiles (heap, allocs, goroutine, threadcreate, block, mutex). Not the
// process's command line (cmdline), and nothing else. The listener asks
// for no credential: a profile names the server's code and where its memory
// and time go, but a goroutine dump (debug=2) also prints raw words of
// function arguments, so it belongs on loopback (listenerWarnings).
//
// Importing net/http/pprof also registers these on http.DefaultServeMux;
// no listener of the server serves that mux (TestTheDebugListener asks the
// others for /debug/pprof/).
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/{$}", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", boundSeconds(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/trace", boundSeconds(pprof.Trace))
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", boundBody(pprof.Symbol))
	mux.HandleFunc("GET /debug/pprof/cmdline", http.NotFound)
	mux.HandleFunc("GET /debug/pprof/{profile}", boundSeconds(pprof.Index)) // a named profile; an unknown name is 404
	return mux
}

// boundSeconds answers 400 to a request whose ?seconds= is not a number of
// at most maxProfileFor's seconds, and passes the others to h.
func boundSeconds(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if v := r.URL.Query().Get("seconds"); v != "" {
			sec, err := strconv.ParseFloat(v, 64)
			if err != nil || !(sec <= maxProfileFor.Seconds()) { // NaN too
				http.Error(w, fmt.Sprintf("seconds: want a number of at most %d", int(maxProfileFor.Seconds())), http.StatusBadRequest)
				return
			}
		}
		h(w, r)
	}
}

// maxSymbolBody bounds the body of POST /debug/pprof/symbol: net/http/pprof
// reads it whole and buffers an answer line (the address and its
// function's name, several times the bytes of the address) per address
// before writing any, so the body alone decides how much memory the answer
// takes. go tool pprof posts one address per location of a profile: tens
// of kilobytes.
const maxSymbolBody = 1 << 20

// boundBody answers 413 past maxSymbolBody bytes of body, before h
// buffers anything for them.
func boundBody(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > maxSymbolBody {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSymbolBody))
		if err != nil {
			http.Error(w, "request body too large", http.StatusRequestEntityTooLarge)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		h(w, r)
	}
}

// listenerWarnings say why a listener is risky where it listens, for config
// check and for serve to log as it starts (an operator who never runs the
// check, under the chart or compose, is told too): the admin API off
// loopback without TLS takes admin keys in clear, and anyone who reaches
// the debug listener may read the server's profiles and keep a CPU profile
// running (a few percent of its CPU).
func listenerWarnings(cfg *config.Config) []string {
	var out []string
	if a := cfg.Listen.Admin; a.Enabled() && !cfg.TLS.Enabled() && !loopbackAddr(string(a)) {
		out = append(out, fmt.Sprintf("listen.admin %q is reachable off this host and tls is off: admin keys would cross the network in clear; "+
			"listen on 127.0.0.1 or set tls.cert_file and tls.key_file", a))
	}
	if a := cfg.Listen.Debug; a.Enabled() && !loopbackAddr(string(a)) {
		out = append(out, fmt.Sprintf("listen.debug %q is reachable off this host and asks for no credential: anyone who reaches it can read the server's profiles "+
			"and keep a CPU profile running; listen on 127.0.0.1 (kubectl port-forward reaches it there)", a))
	}
	return out
}
