package envoy

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/extauthz/extauthz/authz"
)

// FuzzWireAndProtoDecideAlike holds the wire decoder to proto.Unmarshal on
// what matters: the decision and the response. The messages are written
// field by field, so that a header or context_extensions name may come
// twice (protobuf's map keeps the last) and fields come in any order.
func FuzzWireAndProtoDecideAlike(f *testing.F) {
	fx := meshFixture(f)
	az := authz.NewAuthorizer(fx.Policies, fx.Keys, fx.Hasher, nil, func() time.Time { return fx.Now })
	s := &CheckServer{Authz: az}
	f.Add("GET", "/api/users", "x-api-key", fx.Good, "x-api-key", "bad", "cookie", "api_key="+fx.Admin, "policy", "billing", "policy", "orders", uint8(0))
	f.Add("POST", "/api/users", "x-http-method-override", "DELETE", "x-http-method-override", "POST", "x-api-key", fx.Perms, "policy", "billing", "tier", "x", uint8(3))
	f.Add("GET", "/invoices/1", "authorization", "Bearer "+fx.Admin, "x_api_key", fx.Good, "x-authz-owner", "me", "policy", "orders", "policy", "billing", uint8(5))
	f.Fuzz(func(t *testing.T, method, path, k1, v1, k2, v2, k3, v3, e1, ev1, e2, ev2 string, shape uint8) {
		str := func(b []byte, num protowire.Number, s string) []byte {
			return protowire.AppendString(protowire.AppendTag(b, num, protowire.BytesType), s)
		}
		msg := func(b []byte, num protowire.Number, m []byte) []byte {
			return protowire.AppendBytes(protowire.AppendTag(b, num, protowire.BytesType), m)
		}
		entry := func(k, v string) []byte { return str(str(nil, 1, k), 2, v) }
		var http []byte
		if shape&1 != 0 {
			http = msg(http, fieldHTTPHeaders, entry(k1, v1))
		}
		http = str(http, fieldHTTPMethod, method)
		http = msg(http, fieldHTTPHeaders, entry(k2, v2))
		http = str(http, fieldHTTPPath, path)
		http = msg(http, fieldHTTPHeaders, entry(k3, v3))
		http = str(http, fieldHTTPHost, "api.example.com")
		if shape&2 != 0 {
			http = msg(http, fieldHTTPHeaders, entry(k1, v1))
		}
		var attrs []byte
		attrs = msg(attrs, fieldAttrContextExtensions, entry(e1, ev1))
		attrs = msg(attrs, fieldAttrRequest, msg(nil, fieldRequestHTTP, http))
		if shape&4 != 0 {
			attrs = msg(attrs, fieldAttrContextExtensions, entry(e2, ev2))
		}
		peer := msg(nil, fieldPeerAddress, msg(nil, fieldAddrSocket, str(nil, fieldSocketAddress, "10.0.0.1")))
		attrs = msg(attrs, fieldAttrSource, peer)
		b := msg(nil, fieldCheckAttributes, attrs)

		var in authv3.CheckRequest
		if proto.Unmarshal(b, &in) != nil {
			return
		}
		st := new(checkState)
		if err := st.decode(append([]byte(nil), b...)); err != nil {
			t.Fatalf("the wire decoder fails on a message proto.Unmarshal reads: %v", err)
		}
		fast := st.req
		slow := RequestFromCheck(&in)
		var df, ds authz.Decision
		az.Decide(context.Background(), &fast, &df)
		az.Decide(context.Background(), &slow, &ds)
		rf, errF := responseOf(s, &fast, &df)
		rs, errS := responseOf(s, &slow, &ds)
		if (errF == nil) != (errS == nil) {
			t.Fatalf("response errors differ: wire %v, proto %v", errF, errS)
		}
		if df.Code == ds.Code && df.Allowed() == ds.Allowed() && proto.Equal(rf, rs) {
			return
		}
		// The wire decoder keeps every entry of a repeated header name, so
		// walks over the entries may see more and refuse more: never less.
		if df.Allowed() && !ds.Allowed() || df.Allowed() && ds.Allowed() {
			t.Fatalf("decisions differ:\nwire  %q allowed=%v %v\nproto %q allowed=%v %v", df.Code, df.Allowed(), rf, ds.Code, ds.Allowed(), rs)
		}
	})
}

// responseOf is the CheckResponse of d, its repeated fields sorted.
func responseOf(s *CheckServer, req *authz.Request, d *authz.Decision) (*authv3.CheckResponse, error) {
	b, _, err := s.appendResponse(nil, nil, req, d)
	if err != nil {
		return nil, err
	}
	var r authv3.CheckResponse
	if err := proto.Unmarshal(b, &r); err != nil {
		return nil, err
	}
	if ok := r.GetOkResponse(); ok != nil {
		slices.Sort(ok.HeadersToRemove)
		slices.Sort(ok.QueryParametersToRemove)
		slices.SortFunc(ok.Headers, func(a, b *corev3.HeaderValueOption) int {
			return strings.Compare(a.GetHeader().GetKey(), b.GetHeader().GetKey())
		})
	}
	return &r, nil
}
