package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
	"unicode"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/internal/loglimit"
)

// Tracing is on when the standard OpenTelemetry environment asks for it,
// and off otherwise, with nothing on the check path but a nil check:
//
//   - OTEL_SDK_DISABLED=true, or OTEL_TRACES_EXPORTER=none: off;
//   - OTEL_TRACES_EXPORTER=otlp: on;
//   - OTEL_TRACES_EXPORTER unset: on when OTEL_EXPORTER_OTLP_ENDPOINT or
//     OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set, else off;
//   - any other exporter, or an OTLP protocol other than grpc, is an error
//     at start (it would otherwise be silently ignored), and so is a
//     headers variable or an endpoint the exporter could not read
//     (checkOTLPSecrets).
//
// Spans go over OTLP/gRPC; the exporter reads the rest of its settings
// (endpoint, OTEL_EXPORTER_OTLP_INSECURE, headers, certificates, timeout)
// from the same variables, the batch processor its own (OTEL_BSP_*), the
// sampler OTEL_TRACES_SAMPLER (default: parentbased_always_on), and the
// resource OTEL_SERVICE_NAME (default extauthz) and OTEL_RESOURCE_ATTRIBUTES.
// The incoming trace context is W3C traceparent.

// tracing is the trace pipeline of a server; a nil *tracing is off.
type tracing struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
	prop     propagation.TraceContext
}

// tracingWanted reads the switch above from getenv.
func tracingWanted(getenv func(string) string) (bool, error) {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return false, nil
	}
	switch exp := strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER")); exp {
	case "none":
		return false, nil
	case "":
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return false, nil
		}
	case "otlp":
	default:
		return false, fmt.Errorf("OTEL_TRACES_EXPORTER=%q: extauthz exports traces over otlp only (or none)", exp)
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		if p := getenv(name); p != "" && p != "grpc" {
			return false, fmt.Errorf("%s=%q: extauthz exports OTLP over grpc only", name, p)
		}
		if getenv(name) != "" {
			break // the traces-specific one wins
		}
	}
	if err := checkOTLPSecrets(getenv); err != nil {
		return false, err
	}
	return true, nil
}

// checkOTLPSecrets refuses the OTLP variables that may hold the collector's
// credential (its headers, a url with a login) when the exporter could not
// read them, naming the variable and never its text. The exporter would
// drop what it cannot read, and log the text whole through OpenTelemetry's
// own logger, on standard error and outside this server's log: the
// credential of a header written "authorization: Bearer ..." (no '='), or
// with a stray %, in clear, while the spans went out without it.
func checkOTLPSecrets(getenv func(string) string) error {
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"} {
		if v := getenv(name); v != "" {
			if _, err := url.Parse(v); err != nil {
				return fmt.Errorf("%s: not a url (its text is not shown: it may hold a login)", name)
			}
		}
	}
	for _, name := range []string{"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS"} {
		v := getenv(name)
		if v == "" {
			continue
		}
		for i, entry := range strings.Split(v, ",") {
			if strings.TrimSpace(entry) == "" {
				continue // a stray comma: the exporter skips it, and it holds nothing
			}
			key, value, ok := strings.Cut(entry, "=")
			_, err := url.PathUnescape(value)
			switch {
			case !ok:
				return fmt.Errorf("%s: entry %d has no '=': want name=value[,name=value...] (its text is not shown: it may hold a credential)", name, i+1)
			case !validOTLPHeaderName(strings.TrimSpace(key)):
				return fmt.Errorf("%s: entry %d: the name before '=' is not a header name (its text is not shown: it may hold a credential)", name, i+1)
			case err != nil:
				return fmt.Errorf("%s: entry %d: the value has a '%%' that is not a percent-encoding (write %%25 for a literal %%; its text is not shown)", name, i+1)
			}
		}
	}
	return nil
}

// validOTLPHeaderName is the exporter's own test of a header name: an
// HTTP token.
func validOTLPHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c > unicode.MaxASCII || !unicode.IsLetter(c) && !unicode.IsDigit(c) && !strings.ContainsRune("!#$%&'*+-.^_`|~", c) {
			return false
		}
	}
	return true
}

// newTracing starts the trace pipeline when the environment asks for it,
// else returns nil. OpenTelemetry's own errors go to logger from then on
// (otelErrors).
func newTracing(ctx context.Context, logger *slog.Logger, holdsKey func(string) bool) (*tracing, error) {
	on, err := tracingWanted(os.Getenv)
	if err != nil || !on {
		return nil, err
	}
	otel.SetErrorHandler(otelErrors(logger, holdsKey))
	exp, err := otlptracegrpc.New(ctx) // does not wait for the collector
	if err != nil {
		return nil, fmt.Errorf("OTLP trace exporter: %w", err)
	}
	b := currentBuild()
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "extauthz"), attribute.String("service.version", b.Version)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES override the above
		resource.WithTelemetrySDK(),
	)
	if err != nil {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	return &tracing{provider: tp, tracer: tp.Tracer("github.com/extauthz/extauthz")}, nil
}

// otelErrors is OpenTelemetry's error handler (the process has one): its
// errors as warnings of logger, a few a minute, as an HTTP listener's own
// are. Its default writes each on standard error through Go's standard
// logger, plain text among the JSON lines, with the collector's answer
// unescaped; and a failed export is one, so that a collector that refuses
// every export at once (an expired credential) made a line of every batch
// of spans, as many as the checks anyone sends make, for as long as it
// lasted.
func otelErrors(logger *slog.Logger, holdsKey func(string) bool) otel.ErrorHandler {
	w := &limitedLogWriter{logger: logger, holdsKey: holdsKey, limit: loglimit.New(listenerLogBurst, listenerLogEvery, nil)}
	return otel.ErrorHandlerFunc(func(err error) { w.Write([]byte("opentelemetry: " + err.Error())) })
}

// shutdown sends the spans still queued, waiting at most a few seconds.
func (t *tracing) shutdown() {
	if t == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = t.provider.Shutdown(ctx)
}

// checks is the authz.Tracer of the check path, or nil when off (the
// adapters then skip tracing entirely).
func (t *tracing) checks() authz.Tracer {
	if t == nil {
		return nil
	}
	return checkTracer{t}
}

type checkTracer struct{ t *tracing }

// The attributes of a check's span. They name what the decision used from
// the config and the key's public id; never a header value, the path or
// anything else a client wrote, which could hold a credential.
const (
	attrPolicy = "extauthz.policy"
	attrRoute  = "extauthz.route"
	attrCode   = "extauthz.code"
	attrKeyID  = "extauthz.key_id"
)

// Start opens the span of one check. With a traceparent in the gRPC call's
// metadata (Envoy's own span of the ext_authz call, sent when Envoy traces)
// it is a child of that span, sampled as Envoy chose. Otherwise, when the
// request being authorized carries a traceparent (the client's, or in HTTP
// mode whatever the proxy's auth request passed on, which is the client's
// unless the proxy traces), the span starts a trace of its own and links
// to that one: the client wrote its ids and its sampled flag, and as a
// parent they would be the sampler's input, so that any client could have
// every check of its traced (the flag, or a trace id a ratio sampler
// takes) at several microseconds of CPU each and a span at the collector,
// whatever sampling the operator set, or keep its checks out of traces.
func (c checkTracer) Start(ctx context.Context, req *authz.Request) (context.Context, func(*authz.Decision)) {
	parent := ctx
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("traceparent")) > 0 {
		parent = c.t.prop.Extract(ctx, traceparentOnly(func() string { return md.Get("traceparent")[0] }))
	}
	if !trace.SpanContextFromContext(parent).IsValid() && req.Headers != nil {
		sent := trace.SpanContextFromContext(c.t.prop.Extract(ctx, traceparentOnly(func() string { return req.Headers.Get("traceparent") })))
		if sent.IsValid() {
			opts = append(opts, trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: sent}))
		}
	}
	ctx, span := c.t.tracer.Start(parent, "extauthz.check", opts...)
	return ctx, func(d *authz.Decision) {
		code := string(d.Code)
		if d.Allowed() {
			code = "allow"
		}
		span.SetAttributes(
			attribute.String(attrPolicy, policyOf(d)),
			attribute.String(attrRoute, routeLabel(d)),
			attribute.String(attrCode, code),
			attribute.Int("http.response.status_code", d.Code.HTTPStatus()),
		)
		if d.Key != nil {
			span.SetAttributes(attribute.String(attrKeyID, d.Key.ID))
		}
		if d.Code == authz.CodeUnavailable {
			span.SetStatus(codes.Error, "unavailable")
		}
		span.End()
	}
}

// traceparentOnly is the trace context a span is joined to: the
// traceparent its getter returns, and never a tracestate. A span carries
// the tracestate of its parent to the collector as it came, and that is
// text the client wrote (Envoy's tracer passes the client's on too): any
// printable value, a pasted key fits, in up to 32 entries of 256 bytes.
// The traceparent is ids and flags only, which the propagator parses.
type traceparentOnly func() string

func (f traceparentOnly) Get(key string) string {
	if key == "traceparent" {
		return f()
	}
	return ""
}
func (traceparentOnly) Set(string, string) {}
func (traceparentOnly) Keys() []string     { return nil }

// admin wraps the admin API's handler with a span per call, naming the
// method, the status and (through noteCaller) the calling key's id; nil t
// returns h as it is. The span starts a trace of its own, linked to the
// caller's traceparent, for the reason checks' spans do (checkTracer.Start):
// the span starts before the caller is authenticated, so as its parent the
// traceparent of anyone who reaches the listener, with no key at all, would
// choose what is sampled.
func (t *tracing) admin(h http.Handler) http.Handler {
	if t == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindServer)}
		sent := trace.SpanContextFromContext(t.prop.Extract(r.Context(), traceparentOnly(func() string { return r.Header.Get("traceparent") })))
		if sent.IsValid() {
			opts = append(opts, trace.WithNewRoot(), trace.WithLinks(trace.Link{SpanContext: sent}))
		}
		method := spanMethod(r.Method)
		ctx, span := t.tracer.Start(r.Context(), "extauthz.admin "+method, opts...)
		defer span.End()
		sw := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r.WithContext(ctx))
		span.SetAttributes(attribute.String("http.request.method", method), attribute.Int("http.response.status_code", sw.status))
		if code := sw.Header().Get(authz.HeaderCode); code != "" {
			span.SetAttributes(attribute.String(attrCode, code))
		}
		if sw.status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(sw.status))
		}
	})
}

// spanMethod is an HTTP method as a span names it: one of the known
// methods, else "_OTHER" (OpenTelemetry's HTTP conventions). The method is
// the client's to write, any token at all: taken as written it would put
// whatever the client likes, a pasted key included, into span names and
// attributes, and make a span name per request.
func spanMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return m
	}
	return "_OTHER"
}

// noteCaller names the admin API's authenticated caller on the call's span.
func noteCaller(ctx context.Context, keyID string) {
	trace.SpanFromContext(ctx).SetAttributes(attribute.String(attrKeyID, keyID))
}

// statusRecorder remembers the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
