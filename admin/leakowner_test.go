package admin

import (
	"context"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/authz/authztest"
	"github.com/extauthz/extauthz/keystore"
)

// A key whose owner holds another key (a record made before labels were
// refused so, or written into the store by hand, which the audit logger
// redacts with LabelHoldsKey for that very reason) is reported leaked by
// GitHub. The log line "GitHub reported a leaked API key" must not write
// the owner as it is.
func TestTheLeakLogWritesNoKeyHeldInTheOwner(t *testing.T) {
	e := newEnv(t, backends[0], envOptions{})
	other, err := authztest.Format.Generate()
	require.NoError(t, err)
	leaked, err := authztest.Format.Generate()
	require.NoError(t, err)
	id, err := keystore.NewID(e.clock.Now())
	require.NoError(t, err)
	k := &keystore.Key{ID: id, Name: "legacy", Owner: "team " + other, Permissions: []string{"x"}, CreatedAt: e.clock.Now()}
	require.NoError(t, e.store.Create(context.Background(), k, e.manager.Hasher.Hash(leaked), 0))
	require.True(t, authztest.Format.LabelHoldsKey(k.Owner), "the audit logger would redact this owner")

	r := e.report(leakBody(leaked))
	require.Equal(t, http.StatusOK, r.status, "%s", r)
	logs := e.rec.Logs()
	require.Contains(t, logs, "GitHub reported a leaked API key")
	require.NotContains(t, logs, other[3:len(other)-6], "the leak log line writes a key held in the owner")
}
