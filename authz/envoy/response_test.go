package envoy

import (
	"context"
	"fmt"
	"hash/maphash"
	"testing"
	"unicode/utf8"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
)

// Two keys whose IDs share a set of the identity memo both keep their
// entry, whichever is used; a third takes the place of the one made first,
// and a record refetched from the store takes its predecessor's place
// without pushing the other key out.
func TestTheIdentityMemoKeepsTwoKeysToASet(t *testing.T) {
	m := newIdentityMemo()
	setOf := func(id string) uint64 { return maphash.String(m.seed, id) % identitySets }
	var keys []*keystore.Key
	for i := 0; len(keys) < 3; i++ {
		id := fmt.Sprintf("key_%d", i)
		if len(keys) == 0 || setOf(id) == setOf(keys[0].ID) {
			keys = append(keys, &keystore.Key{ID: id, Name: "n", Owner: "o"})
		}
	}
	a, b := m.entry(keys[0]), m.entry(keys[1])
	for range 3 {
		assert.Same(t, a, m.entry(keys[0]))
		assert.Same(t, b, m.entry(keys[1]))
	}

	refetched := &keystore.Key{ID: keys[0].ID, Name: "renamed", Owner: "o"}
	a2 := m.entry(refetched)
	assert.NotSame(t, a, a2)
	assert.Same(t, a2, m.entry(refetched))
	assert.Same(t, b, m.entry(keys[1]), "the refetched record took its predecessor's place, not the other key's")
	set := &m.sets[setOf(keys[0].ID)]
	for i := range set {
		assert.NotSame(t, keys[0], set[i].Load().key, "the predecessor is no longer kept")
	}

	c := m.entry(keys[2]) // the third: b was made before a2
	assert.Same(t, c, m.entry(keys[2]))
	assert.Same(t, a2, m.entry(refetched))
	assert.NotSame(t, b, m.entry(keys[1]), "made again")
}

// wantResponse is the CheckResponse of d for req as messages, built the
// plain way from the decision's parts: what the written bytes must decode
// to.
func wantResponse(req *authz.Request, d *authz.Decision) *authv3.CheckResponse {
	options := func(hs []authz.Header) []*corev3.HeaderValueOption {
		var opts []*corev3.HeaderValueOption
		for _, h := range hs {
			opts = append(opts, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: h.Key, Value: h.Value},
				AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
			})
		}
		return opts
	}
	var keyPart []byte
	if d.Key != nil {
		keyPart = keyMetadata(d.Key)
	}
	var md authv3.CheckResponse
	if err := proto.Unmarshal(dynamicMetadata(d, keyPart), &md); err != nil {
		panic(err)
	}
	resp := &authv3.CheckResponse{DynamicMetadata: md.DynamicMetadata}
	if !d.Allowed() {
		resp.Status = &rpcstatus.Status{Code: int32(grpcCode(d.Code)), Message: d.Message}
		resp.HttpResponse = &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(d.Code.HTTPStatus())},
			Headers: options(d.ResponseHeaders(nil)),
			Body:    d.Body(),
		}}
		return resp
	}
	ok := &authv3.OkHttpResponse{}
	resp.Status = &rpcstatus.Status{}
	resp.HttpResponse = &authv3.CheckResponse_OkResponse{OkResponse: ok}
	var headers []authz.Header
	if d.Identified() {
		headers = authz.AppendIdentityHeaders(nil, d.Key)
		headers = d.MetaHeaders(headers, false)
	}
	remove, queries, cookies := presentSources(d, nil)
	ok.QueryParametersToRemove = queries
	if len(cookies) > 0 {
		if rest := authz.CookieWithout(req.Headers.Get("cookie"), d.Policy.HoldsKey, cookies...); rest != "" && utf8.ValidString(rest) {
			headers = append(headers, authz.Header{Key: "cookie", Value: rest})
		} else {
			remove = append(remove, "cookie")
		}
	}
	ok.Headers = options(headers)
	ok.HeadersToRemove = req.AppendSpoofed(remove, d, false)
	ok.ResponseHeadersToAdd = options(d.ResponseHeaders(nil))
	return resp
}

// The bytes a response is written as decode to the messages of the
// decision, for allowed and denied checks, every source a key comes from,
// spoofed identity headers, forwarded metadata, shadow mode and the
// rate-limit headers; and every field is where the protos say.
func TestTheWrittenResponseIsTheProtoOfTheDecision(t *testing.T) {
	f := meshFixture(t)
	billing := f.AddKey(t, &keystore.Key{ID: "key_billing", Name: "billing", Owner: "acme",
		Permissions: []string{"read:invoices", "read:orders"}, Meta: map[string]string{"plan": "gold", "tenant_id": "t-7", "other": "x"}})
	s := &CheckServer{Authz: f.Authz}
	del := meshRequest("/api/users/1", "api.example.com", map[string]string{"x-api-key": f.Perms}, nil, "")
	del.Attributes.Request.Http.Method = "DELETE"
	cases := []struct {
		name    string
		in      *authv3.CheckRequest
		want    string // the denial's code, "" for an allow
		twice   bool   // decide it once before: the second is the case
		shadow  bool
		cookies bool
	}{
		{name: "a key in a header", in: checkRequest(map[string]string{"x-api-key": f.Good})},
		{name: "a bearer token", in: checkRequest(map[string]string{"authorization": "Bearer " + f.Good})},
		{name: "a query parameter", in: meshRequest("/api/users?page=2&api_key="+f.Good, "api.example.com", nil, nil, "")},
		{name: "a cookie among others", in: checkRequest(map[string]string{"cookie": "theme=dark; api_key=" + f.Good + "; lang=en"})},
		{name: "the only cookie", in: checkRequest(map[string]string{"cookie": "api_key=" + f.Good})},
		{name: "spoofed identity headers", in: checkRequest(map[string]string{"x-api-key": f.Good, "x-authz-key-id": "key_admin", "x-authz-owner": "root", "x_authz_permissions": "admin"})},
		{name: "no key", in: checkRequest(map[string]string{}), want: "missing_key"},
		{name: "an unknown key", in: checkRequest(map[string]string{"x-api-key": "sk_live_nope"}), want: "invalid_key"},
		{name: "a path it may not use", in: meshRequest("/api/reports/1", "api.example.com", map[string]string{"x-api-key": f.Good}, nil, ""), want: "permission_denied"},
		{name: "a dot segment", in: meshRequest("/api/../api/users", "api.example.com", map[string]string{"x-api-key": f.Good}, nil, ""), want: "bad_request"},
		{name: "over its route's limit", in: del, twice: true, want: "rate_limited"},
		{name: "a public route", in: meshRequest("/healthz", "api.example.com", nil, nil, "")},
		{name: "forwarded metadata", in: meshRequest("/invoices/1", "billing.example.com", map[string]string{"x-api-key": billing, "x-authz-meta-plan": "free"}, nil, "")},
		{name: "shadow mode, allowed", in: meshRequest("/orders/1", "orders.example.com", map[string]string{"x-api-key": billing}, nil, "")},
		{name: "shadow mode, denied", in: meshRequest("/orders/1", "orders.example.com", map[string]string{"x-api-key": f.Good}, nil, ""), shadow: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := RequestFromCheck(c.in)
			var d authz.Decision
			if c.twice {
				again := RequestFromCheck(c.in)
				f.Authz.Decide(context.Background(), &again, &d)
				d = authz.Decision{}
			}
			f.Authz.Decide(context.Background(), &req, &d)
			if c.shadow {
				require.True(t, d.Shadow && d.Code != "", "decided in shadow mode, and denied")
			} else {
				require.Equal(t, c.want, string(d.Code))
			}
			b, _, err := s.appendResponse(nil, nil, &req, &d)
			require.NoError(t, err)
			var got authv3.CheckResponse
			require.NoError(t, proto.Unmarshal(b, &got))
			want := wantResponse(&req, &d)
			assert.True(t, proto.Equal(want, &got), "written:\n%v\nwant:\n%v", &got, want)
			assert.Empty(t, got.ProtoReflect().GetUnknown(), "no field the protos do not name")
			again, _, err := s.appendResponse(nil, nil, &req, &d)
			require.NoError(t, err)
			assert.Equal(t, b, again, "the memoized parts write the same bytes")
		})
	}
}

// The field numbers the response is written with are the protos'.
func TestTheFieldNumbersAreTheProtos(t *testing.T) {
	number := func(m proto.Message, name string) protowire.Number {
		fd := m.ProtoReflect().Descriptor().Fields().ByName(protoreflect.Name(name))
		require.NotNil(t, fd, name)
		return fd.Number()
	}
	for _, c := range []struct {
		m    proto.Message
		name string
		num  protowire.Number
	}{
		{&authv3.CheckResponse{}, "status", fieldCheckResponseStatus},
		{&authv3.CheckResponse{}, "denied_response", fieldCheckResponseDenied},
		{&authv3.CheckResponse{}, "ok_response", fieldCheckResponseOK},
		{&authv3.CheckResponse{}, "dynamic_metadata", fieldCheckResponseDynamicMetadata},
		{&rpcstatus.Status{}, "code", fieldRPCStatusCode},
		{&rpcstatus.Status{}, "message", fieldRPCStatusMessage},
		{&authv3.DeniedHttpResponse{}, "status", fieldDeniedStatus},
		{&authv3.DeniedHttpResponse{}, "headers", fieldDeniedHeaders},
		{&authv3.DeniedHttpResponse{}, "body", fieldDeniedBody},
		{&typev3.HttpStatus{}, "code", fieldHTTPStatusCode},
		{&authv3.OkHttpResponse{}, "headers", fieldOKHeaders},
		{&authv3.OkHttpResponse{}, "headers_to_remove", fieldOKHeadersToRemove},
		{&authv3.OkHttpResponse{}, "response_headers_to_add", fieldOKResponseHeaders},
		{&authv3.OkHttpResponse{}, "query_parameters_to_remove", fieldOKQueryToRemove},
		{&corev3.HeaderValueOption{}, "header", fieldOptionHeader},
		{&corev3.HeaderValueOption{}, "append_action", fieldOptionAppendAction},
		{&corev3.HeaderValue{}, "key", fieldHeaderKey},
		{&corev3.HeaderValue{}, "value", fieldHeaderValue},
	} {
		assert.Equal(t, number(c.m, c.name), c.num, "%s.%s", c.m.ProtoReflect().Descriptor().FullName(), c.name)
	}
}

// A key record whose text is not UTF-8 (a store's record not written by
// extauthz's checks) cannot be answered: proto3 strings are UTF-8. The
// check is an RPC error, which Envoy treats as the service failing, never
// an allow with the bytes mangled; the Observer (the metrics, the audit)
// hears of it as that failure, with the key, not as the allow the client
// never got.
func TestAKeyRecordThatIsNotUTF8IsAnRPCError(t *testing.T) {
	f := authztest.New(t, nil)
	for name, k := range map[string]*keystore.Key{
		"name":       {ID: "key_n", Name: "n\xff", Permissions: []string{"read:users"}},
		"permission": {ID: "key_p", Name: "p", Permissions: []string{"read:users", "\xfe"}},
		"meta":       {ID: "key_m", Name: "m", Permissions: []string{"read:users"}, Meta: map[string]string{"plan": "\xc0"}},
	} {
		secret := f.AddKey(t, k)
		var obs observed
		s := &CheckServer{Authz: f.Authz, Observer: &obs}
		_, err := s.Check(context.Background(), checkRequest(map[string]string{"x-api-key": secret}))
		assert.Equal(t, codes.Internal, status.Code(err), name)
		if assert.Len(t, obs.decisions, 1, name) {
			d := obs.decisions[0]
			assert.Equal(t, authz.CodeUnavailable, d.Code, name)
			assert.False(t, d.Allowed(), name)
			assert.Equal(t, k.ID, d.Key.ID, name)
		}
	}
}
