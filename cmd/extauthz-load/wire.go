package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/extauthz/extauthz/authz"
)

// The load tool must spend as little CPU as it can: it shares the machine
// with the server it measures. So it does not build and marshal a
// CheckRequest per request, nor unmarshal a CheckResponse. Requests are
// pre-encoded templates with the key's bytes overwritten in place (keys of
// one format all have the same length), and responses are read with a few
// protowire steps that find only the status code and the x-authz-code
// header. Both travel through rawCodec, a gRPC codec for bytes.

const checkMethod = "/envoy.service.auth.v3.Authorization/Check"

// rawCodec sends a *[]byte as it is and parses a response into a
// *checkResult or a *rateLimitResult. Its name is "proto", so the server
// sees ordinary application/grpc+proto calls.
type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot send %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	var err error
	switch r := v.(type) {
	case *checkResult:
		*r, err = parseCheckResponse(data)
	case *rateLimitResult:
		*r, err = parseRateLimitResponse(data)
	default:
		return fmt.Errorf("rawCodec: cannot receive into %T", v)
	}
	return err
}

// reply is a decoded response, as the workers count it.
type reply interface{ decision() string }

// requestShape says what a CheckRequest carries besides the key.
type requestShape struct {
	Method, Path string
	Header       string // the header the key travels in, e.g. x-api-key
	// Minimal sends only method, path, host, peer and the key header (what
	// the server's own tests send); otherwise the request carries what Envoy
	// sends for a typical HTTP/1.1 request through a listener with
	// use_remote_address: pseudo-headers, user agent, request id, and so on.
	Minimal bool
}

// requestTemplate is an encoded CheckRequest whose key header value sits at
// keyOff (keyLen bytes) and whose client address (peer, and X-Forwarded-For)
// sits at ipOffs (clientIPLen bytes each).
type requestTemplate struct {
	buf    []byte
	keyOff int
	keyLen int
	ipOffs []int
}

// newTemplate encodes a CheckRequest of shape s whose key is keyLen bytes
// long, and finds where the key's and the client address's bytes are.
func newTemplate(s requestShape, keyLen int) (requestTemplate, error) {
	// '~' and '^' are in no key alphabet nor address: each placeholder is
	// found only where it was put.
	keyHolder := strings.Repeat("~", keyLen)
	ipHolder := strings.Repeat("^", clientIPLen)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(buildRequest(s, keyHolder, ipHolder))
	if err != nil {
		return requestTemplate{}, err
	}
	t := requestTemplate{buf: b, keyOff: bytes.Index(b, []byte(keyHolder)), keyLen: keyLen}
	if t.keyOff < 0 || bytes.Count(b, []byte(keyHolder)) != 1 {
		return requestTemplate{}, fmt.Errorf("template for %s %s: key placeholder not found exactly once", s.Method, s.Path)
	}
	for off := 0; ; {
		i := bytes.Index(b[off:], []byte(ipHolder))
		if i < 0 {
			break
		}
		t.ipOffs = append(t.ipOffs, off+i)
		off += i + clientIPLen
	}
	if len(t.ipOffs) == 0 {
		return requestTemplate{}, fmt.Errorf("template for %s %s: no client address placeholder", s.Method, s.Path)
	}
	return t, nil
}

// appendRequest appends the request with key (of the template's length)
// from client address ip (clientIPLen bytes) to dst.
func (t *requestTemplate) appendRequest(dst, key, ip []byte) []byte {
	dst = append(dst[:0], t.buf...)
	copy(dst[t.keyOff:t.keyOff+t.keyLen], key)
	for _, off := range t.ipOffs {
		copy(dst[off:off+clientIPLen], ip)
	}
	return dst
}

// clientIPLen is the length of every client address clientIP writes.
const clientIPLen = len("10.100.100.100")

// clientIP writes the address of client i (0 ≤ i < 10^6) into b: 10.1xx.1yy.1zz,
// always clientIPLen bytes, so that it fits the template in place.
func clientIP(b *[clientIPLen]byte, i int) {
	copy(b[:], "10.100.100.100")
	for _, pos := range []int{12, 8, 4} { // the two low digits of each octet, last octet first
		d := i % 100
		b[pos], b[pos+1] = byte('0'+d/10), byte('0'+d%10)
		i /= 100
	}
}

// buildRequest is the CheckRequest of shape s carrying key, from client ip.
func buildRequest(s requestShape, key, ip string) *authv3.CheckRequest {
	const host = "api.example.com"
	peer := func(ip string, port uint32) *authv3.AttributeContext_Peer {
		return &authv3.AttributeContext_Peer{Address: &corev3.Address{Address: &corev3.Address_SocketAddress{
			SocketAddress: &corev3.SocketAddress{Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}},
		}}}
	}
	headers := map[string]string{s.Header: key}
	http := &authv3.AttributeContext_HttpRequest{Method: s.Method, Path: s.Path, Host: host, Headers: headers}
	attrs := &authv3.AttributeContext{Source: peer(ip, 40000), Request: &authv3.AttributeContext_Request{Http: http}}
	if !s.Minimal {
		for k, v := range map[string]string{
			":authority": host, ":method": s.Method, ":path": s.Path, ":scheme": "https",
			"accept": "application/json", "accept-encoding": "gzip, deflate, br",
			"user-agent":                     "Mozilla/5.0 (X11; Linux x86_64) extauthz-load/1",
			"x-forwarded-for":                ip,
			"x-forwarded-proto":              "https",
			"x-request-id":                   "6f1c9a2e-3b7d-4e8f-9a0b-1c2d3e4f5a6b",
			"x-envoy-expected-rq-timeout-ms": "15000",
		} {
			headers[k] = v
		}
		http.Id = "12345678901234567890"
		http.Scheme = "https"
		http.Protocol = "HTTP/1.1"
		attrs.Destination = peer("10.0.0.10", 8080)
		attrs.Request.Time = timestamppb.Now()
	}
	return &authv3.CheckRequest{Attributes: attrs}
}

// checkResult is what the load tool reads of a CheckResponse.
type checkResult struct {
	code      int32  // google.rpc.Code of CheckResponse.status; 0 = allow
	authzCode string // x-authz-code of a denial ("" when absent)
}

// decision is the name a result is counted under: "allow", the deny code,
// or "status_<n>" for a denial without x-authz-code.
func (r checkResult) decision() string {
	switch {
	case r.code == 0:
		return "allow"
	case r.authzCode != "":
		return r.authzCode
	}
	return fmt.Sprintf("status_%d", r.code)
}

// Field numbers of the messages parseCheckResponse walks.
const (
	fieldResponseStatus = 1 // CheckResponse.status (google.rpc.Status)
	fieldResponseDenied = 2 // CheckResponse.denied_response
	fieldStatusCode     = 1 // google.rpc.Status.code
	fieldDeniedHeaders  = 2 // DeniedHttpResponse.headers (HeaderValueOption)
	fieldOptionHeader   = 1 // HeaderValueOption.header (HeaderValue)
	fieldHeaderKey      = 1 // HeaderValue.key
	fieldHeaderValue    = 2 // HeaderValue.value
)

// parseCheckResponse reads the status code and, for a denial, the
// x-authz-code header of an encoded CheckResponse.
func parseCheckResponse(b []byte) (checkResult, error) {
	var r checkResult
	err := eachField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case fieldResponseStatus:
			return eachVarint(v, fieldStatusCode, func(x uint64) { r.code = int32(x) })
		case fieldResponseDenied:
			return eachField(v, func(num protowire.Number, opt []byte) error {
				if num != fieldDeniedHeaders {
					return nil
				}
				return eachField(opt, func(num protowire.Number, hv []byte) error {
					if num != fieldOptionHeader {
						return nil
					}
					var key, value []byte
					err := eachField(hv, func(num protowire.Number, s []byte) error {
						switch num {
						case fieldHeaderKey:
							key = s
						case fieldHeaderValue:
							value = s
						}
						return nil
					})
					if err == nil && string(key) == "x-authz-code" {
						r.authzCode = internCode(value)
					}
					return err
				})
			})
		}
		return nil
	})
	return r, err
}

var errBadWire = errors.New("malformed protobuf")

// eachField calls fn with the number and bytes of every length-delimited
// field of the message b, skipping the others.
func eachField(b []byte, fn func(protowire.Number, []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBadWire
		}
		b = b[n:]
		if typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return errBadWire
			}
			if err := fn(num, v); err != nil {
				return err
			}
			b = b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return errBadWire
		}
		b = b[n:]
	}
	return nil
}

// eachVarint calls fn with the value of every varint field want of b.
func eachVarint(b []byte, want protowire.Number, fn func(uint64)) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return errBadWire
		}
		b = b[n:]
		if num == want && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return errBadWire
			}
			fn(v)
			b = b[n:]
			continue
		}
		if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
			return errBadWire
		}
		b = b[n:]
	}
	return nil
}

// knownCodes are the decision's deny codes, interned: counting them
// allocates nothing.
var knownCodes = map[string]string{}

func init() {
	for _, c := range authz.Codes() {
		knownCodes[string(c)] = string(c)
	}
}

func internCode(b []byte) string {
	if c, ok := knownCodes[string(b)]; ok {
		return c
	}
	return string(b)
}
