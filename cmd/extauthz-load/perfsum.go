package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// perf's own reports answer "which leaf functions burn CPU"; what a reader
// of this tool wants to know is "what share of the server's CPU does the
// decision, the gRPC stack, the garbage collector, the audit queue take".
// perfSummary reads `perf script -F comm,ip,sym` (one call stack per
// sample) and counts, for every function, the samples it is on the stack
// of (inclusive, each sample once) and at the top of (self).

type perfSummary struct {
	samples   int
	inclusive map[string]int
	self      map[string]int
	landmark  []int // samples with a frame of landmarks[i] on the stack
	// perCheck, when set, is the CPU µs one sample stands for divided by
	// the checks answered while recording: samples × perCheck = µs/check.
	perCheck float64
}

func parsePerfScript(r io.Reader) (*perfSummary, error) {
	s := &perfSummary{inclusive: map[string]int{}, self: map[string]int{}, landmark: make([]int, len(landmarks))}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var stack []string
	flush := func() {
		if len(stack) == 0 {
			return
		}
		s.samples++
		s.self[stack[0]]++
		seen := make(map[string]bool, len(stack))
		for _, f := range stack {
			if !seen[f] {
				seen[f] = true
				s.inclusive[f]++
			}
		}
		for i, l := range landmarks {
			if slices.ContainsFunc(stack, func(f string) bool { return strings.HasPrefix(f, l.prefix) }) {
				s.landmark[i]++
			}
		}
		stack = stack[:0]
	}
	for sc.Scan() {
		line := sc.Text()
		if line == "" || (line[0] != ' ' && line[0] != '\t') {
			flush() // a blank line or the next sample's header
			continue
		}
		// "\t          9f83f1 google.golang.org/grpc/...(*controlBuffer).get"
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		stack = append(stack, strings.Join(f[1:], " "))
	}
	flush()
	return s, sc.Err()
}

// landmarks are the parts of a check worth a line each, by function name
// prefix; a sample counts once per landmark however many matching frames
// it has.
var landmarks = []struct{ name, prefix string }{
	{"gRPC: one RPC, start to end (handleStream)", "google.golang.org/grpc.(*Server).handleStream"},
	{"  receive and decode the CheckRequest (RecvMsg)", "google.golang.org/grpc.(*serverStream).RecvMsg"},
	{"    of which proto.Unmarshal", "google.golang.org/protobuf/proto.Unmarshal"},
	{"    of which extauthz's wire decoder", "github.com/extauthz/extauthz/authz/envoy.(*checkState).decode"},
	{"  extauthz Check (the handler)", "github.com/extauthz/extauthz/authz/envoy.(*CheckServer).check"},
	{"    RequestFromCheck", "github.com/extauthz/extauthz/authz/envoy.RequestFromCheck"},
	{"    Decide (the decision's steps)", "github.com/extauthz/extauthz/authz.(*Authorizer).Decide"},
	{"      normalize", "github.com/extauthz/extauthz/authz.(*Authorizer).normalize"},
	{"      route match", "github.com/extauthz/extauthz/authz.(*Routes).match"},
	{"      findKey", "github.com/extauthz/extauthz/authz.findKey"},
	{"      failed-attempts guard", "github.com/extauthz/extauthz/authz.(*lookupGuard)"},
	{"      format check (CRC-32)", "github.com/extauthz/extauthz/keystore.Format.Check"},
	{"      hash (HMAC-SHA256)", "github.com/extauthz/extauthz/keystore.(*Hasher).Hash"},
	{"      cache lookup", "github.com/extauthz/extauthz/keystore.(*Cache).Lookup"},
	{"      rate limit (authz side)", "github.com/extauthz/extauthz/authz.(*Authorizer).rateLimit"},
	{"    response writing", "github.com/extauthz/extauthz/authz/envoy.(*CheckServer).appendResponse"},
	{"    observer (metrics + audit event)", "main.(*observer).Observe"},
	{"  encode and send the CheckResponse (SendMsg)", "google.golang.org/grpc.(*serverStream).SendMsg"},
	{"gRPC reader: frames, HPACK (HandleStreams)", "google.golang.org/grpc/internal/transport.(*http2Server).HandleStreams"},
	{"gRPC writer goroutine (loopyWriter)", "google.golang.org/grpc/internal/transport.(*loopyWriter).run"},
	{"audit package (queue, writer goroutine)", "github.com/extauthz/extauthz/audit."},
	{"ratelimit package (all)", "github.com/extauthz/extauthz/ratelimit."},
	{"go-redis (all)", "github.com/redis/go-redis/"},
	{"prometheus client (all)", "github.com/prometheus/"},
	{"allocation (mallocgc, inclusive)", "runtime.mallocgc"},
	{"GC background mark workers", "runtime.gcBgMarkWorker"},
	{"GC background sweeper", "runtime.bgsweep"},
	{"goroutine stack growth (morestack)", "runtime.morestack"},
	{"scheduler (runtime.schedule)", "runtime.schedule"},
	{"sysmon", "runtime.sysmon"},
	{"kernel, via system calls", "entry_SYSCALL_64"},
	{"time.Now", "time.Now"},
}

// write prints the landmarks, the extauthz functions, and the top self
// costs, as percentages of all samples.
func (s *perfSummary) write(w io.Writer, top int) {
	if s.samples == 0 {
		fmt.Fprintln(w, "no samples")
		return
	}
	pct := func(n int) float64 { return 100 * float64(n) / float64(s.samples) }
	fmt.Fprintf(w, "%d samples\n\nwhere the CPU goes (inclusive: %% of samples with the function on the stack", s.samples)
	if s.perCheck > 0 {
		fmt.Fprint(w, "; µs per check")
	}
	fmt.Fprintln(w, ")")
	for i, l := range landmarks {
		n := s.landmark[i]
		if n == 0 {
			continue
		}
		if s.perCheck > 0 {
			fmt.Fprintf(w, "  %5.1f%%  %6.2f µs  %s\n", pct(n), float64(n)*s.perCheck, l.name)
		} else {
			fmt.Fprintf(w, "  %5.1f%%  %s\n", pct(n), l.name)
		}
	}
	fmt.Fprintln(w, "\nextauthz's own functions (inclusive ≥ 0.3%)")
	ours := slices.Collect(func(yield func(string) bool) {
		for f := range s.inclusive {
			if strings.HasPrefix(f, "github.com/extauthz/") || strings.HasPrefix(f, "main.") {
				if pct(s.inclusive[f]) >= 0.3 && !yield(f) {
					return
				}
			}
		}
	})
	slices.SortFunc(ours, func(a, b string) int { return cmp.Or(cmp.Compare(s.inclusive[b], s.inclusive[a]), cmp.Compare(a, b)) })
	for _, f := range ours {
		fmt.Fprintf(w, "  %5.1f%%  (self %4.1f%%)  %s\n", pct(s.inclusive[f]), pct(s.self[f]), f)
	}
	fmt.Fprintf(w, "\ntop %d by self time\n", top)
	byself := slices.SortedFunc(maps.Keys(s.self), func(a, b string) int { return cmp.Or(cmp.Compare(s.self[b], s.self[a]), cmp.Compare(a, b)) })
	for _, f := range byself[:min(top, len(byself))] {
		fmt.Fprintf(w, "  %5.1f%%  %s\n", pct(s.self[f]), f)
	}
}
