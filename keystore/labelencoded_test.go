package keystore

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"
)

// LabelHoldsKey, the one reading of a key's name, owner,
// permissions and metadata (refused at create and update, redacted in the
// cache, the admin API, the CLI and the audit logger's key_name/owner/actor),
// read a key across any run of other bytes, but not a key
// written as its readers decode it, which MayHoldKey (the reading of request
// fields in the same audit events) does: the Basic credentials of the key
// ("Basic " + base64("<key>:"), an Authorization header pasted as a name),
// the key in base64, or the key percent-encoded (copied out of a URL). Such
// a name was accepted, went to the upstream in x-authz-key-name on every
// request the key made and into every audit event about the key, whole.
func TestAKeyEncodedInALabelIsRefused(t *testing.T) {
	f := mustFormat(t, "sk")
	secret, err := f.Generate()
	if err != nil {
		t.Fatal(err)
	}
	var pct strings.Builder
	for i := 0; i < len(secret); i++ {
		fmt.Fprintf(&pct, "%%%02X", secret[i])
	}
	m := &Manager{Format: f}
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte(secret+":"))
	b64 := base64.StdEncoding.EncodeToString([]byte(secret))
	for _, tt := range []struct {
		what string
		spec Spec
	}{
		{"basic credentials as a name", Spec{Name: basic, Permissions: []string{"read"}}},
		{"base64 as a name", Spec{Name: b64, Permissions: []string{"read"}}},
		{"percent-encoded as a metadata value", Spec{Name: "svc", Permissions: []string{"read"}, Meta: map[string]string{"callback": pct.String()}}},
	} {
		if err := tt.spec.Validate(time.Now()); err != nil {
			t.Fatalf("%s: %v", tt.what, err)
		}
		if err := m.refusePastedKeys(tt.spec.Name, tt.spec.Owner, tt.spec.Permissions, tt.spec.Meta); err == nil {
			t.Errorf("%s: a label holding a whole key (MayHoldKey reads it: %v) is accepted at create, and is served and audited as it is",
				tt.what, f.MayHoldKey(tt.spec.Name) || f.MayHoldKey(tt.spec.Meta["callback"]))
		}
	}
}
