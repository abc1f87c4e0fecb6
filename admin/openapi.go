package admin

import (
	_ "embed"
	"net/http"
)

// openAPIDocument is the hand-written OpenAPI 3 description of this API.
// A test checks that it documents exactly the routes of the route table.
//
//go:embed openapi.json
var openAPIDocument []byte

// OpenAPI returns the OpenAPI 3 document of the admin API.
func OpenAPI() []byte { return append([]byte(nil), openAPIDocument...) }

// openAPI is GET /v1/openapi.json. It needs keys:read like every other
// read: the admin listener serves nothing to a caller without a key (the
// leak endpoint excepted, which GitHub signs), so that probing it teaches
// an attacker nothing, and the document is in the repository for anyone
// who needs it without a key.
func (s *server) openAPI(w http.ResponseWriter, _ *http.Request, _ *caller) error {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(openAPIDocument) //nolint:errcheck // the client is gone
	return nil
}
