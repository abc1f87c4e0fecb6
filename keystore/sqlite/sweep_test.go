package sqlite

import (
	"database/sql"

	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/extauthz/extauthz/keystore"
)

// fillDead stores n dead keys of owner in one transaction: every other one
// revoked, the rest expired at exp.
func fillDead(t *testing.T, s *Store, owner string, n int, now, exp time.Time) {
	t.Helper()
	err := s.write(t.Context(), func(tx *sql.Tx) error {
		for i := range n {
			id, err := keystore.NewID(now)
			require.NoError(t, err)
			k := &keystore.Key{ID: id, Name: "dead", Owner: owner, Permissions: []string{"x"}, CreatedAt: now}
			if i%2 == 0 {
				k.RevokedAt = &now
			} else {
				k.ExpiresAt = &exp
			}
			r, err := encode(k)
			require.NoError(t, err)
			if err := insert(t.Context(), tx, r, hasher.Hash("dead "+id)); err != nil {
				return err
			}
		}
		return nil
	})
	require.NoError(t, err)
}

// queryPlan returns SQLite's plan for query, one step per line.
func queryPlan(t *testing.T, s *Store, query string, args ...any) string {
	t.Helper()
	rows, err := s.db.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+query, args...)
	require.NoError(t, err)
	defer rows.Close()
	var steps []string
	for rows.Next() {
		var id, parent, unused int
		var detail string
		require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
		steps = append(steps, detail)
	}
	require.NoError(t, rows.Err())
	return strings.Join(steps, "\n")
}

// Listing live keys reads the partial indexes of listed rows, in id order,
// and stops at the page: so its cost is the page, whatever else the table
// holds, once Sweep has unlisted the expired keys (revoked ones never are
// listed). The plan and the index contents together prove it.
func TestListingLiveKeysReadsOnlyListedRows(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
	now := time.Now().UTC()
	fillDead(t, s, "alice", 4000, now, now.Add(time.Minute))
	var live []string
	for i := range 6 {
		k, h := testKey(t)
		k.Owner = []string{"alice", "bob"}[i%2]
		require.NoError(t, s.Create(t.Context(), k, h, 0))
		live = append(live, k.ID)
	}
	later := now.Add(time.Hour)
	for {
		res, err := s.Sweep(t.Context(), keystore.SweepOptions{Now: later, Batch: 1000})
		require.NoError(t, err)
		if !res.More {
			break
		}
	}

	var listed int
	require.NoError(t, s.db.QueryRowContext(t.Context(), `SELECT count(*) FROM keys WHERE listed = 1`).Scan(&listed))
	require.Equal(t, len(live), listed, "only the live keys are listed after a sweep")

	for _, tc := range []struct {
		name, owner, index string
	}{
		{"one owner's page walks the listed keys of that owner in id order", "alice", "keys_listed_by_owner"},
		{"every owner's page walks the listed keys in id order", "", "keys_listed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			query, args, err := listQuery(keystore.ListOptions{Owner: tc.owner, Now: later}, 2)
			require.NoError(t, err)
			plan := queryPlan(t, s, query, args...)
			t.Logf("plan: %s", plan)
			require.Contains(t, plan, "USING INDEX "+tc.index+" ", "plan:\n%s", plan)
			require.NotContains(t, plan, "TEMP B-TREE", "no sort: the index gives id order (plan:\n%s)", plan)
			page, _, err := s.List(t.Context(), keystore.ListOptions{Owner: tc.owner, Now: later, Limit: 100})
			require.NoError(t, err)
			for _, k := range page {
				require.Contains(t, live, k.ID)
			}
		})
	}
	t.Run("the owner's count for the key limit walks the listed keys of the owner", func(t *testing.T) {
		plan := queryPlan(t, s, `SELECT count(*) FROM keys
			WHERE listed = 1 AND owner = ? AND revoked_at IS NULL AND rotated_to = '' AND (expires_at IS NULL OR expires_at > ?)`, "alice", 0)
		require.Contains(t, plan, "USING INDEX keys_listed_by_owner ", "plan:\n%s", plan)
	})
	t.Run("the sweep finds expired keys and dead ones by index", func(t *testing.T) {
		plan := queryPlan(t, s, `SELECT id FROM keys WHERE listed = 1 AND expires_at IS NOT NULL AND expires_at <= ? ORDER BY expires_at LIMIT ?`, 0, 1)
		require.Contains(t, plan, "USING INDEX keys_listed_by_expiry ", "plan:\n%s", plan)
		plan = queryPlan(t, s, `SELECT id FROM keys WHERE ends_at IS NOT NULL AND ends_at < ? ORDER BY ends_at LIMIT ?`, 0, 1)
		require.Contains(t, plan, "USING INDEX keys_by_end ", "plan:\n%s", plan)
	})
}

func TestAFileOfTheFirstSchemaIsMigrated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite", path)
	require.NoError(t, err)
	_, err = db.Exec(migrations[0] + `PRAGMA user_version = 1;`)
	require.NoError(t, err)
	now := time.Now().UTC()
	ids := map[string]string{}
	for _, kind := range []string{"live", "revoked", "expired"} {
		id, err := keystore.NewID(now)
		require.NoError(t, err)
		ids[kind] = id
		var revoked, expires any
		switch kind {
		case "revoked":
			revoked = now.UnixNano()
		case "expired":
			expires = now.Add(-time.Minute).UnixNano()
		}
		_, err = db.Exec(`INSERT INTO keys (id, hash, name, owner, permissions, rate_limit, ip_allowlist,
			created_at, expires_at, revoked_at, rotated_from, rotated_to) VALUES (?, ?, 'k', 'alice', '["x"]', '', '[]', ?, ?, ?, '', '')`,
			id, func() []byte { h := hasher.Hash(kind); return h[:] }(), now.UnixNano(), expires, revoked)
		require.NoError(t, err)
	}
	require.NoError(t, db.Close())

	s := openTest(t, path)
	var v int
	require.NoError(t, s.db.QueryRow(`PRAGMA user_version`).Scan(&v))
	require.Equal(t, schemaVersion, v)
	for kind, want := range map[string]int{"live": 1, "revoked": 0, "expired": 1} {
		var listed int
		require.NoError(t, s.db.QueryRow(`SELECT listed FROM keys WHERE id = ?`, ids[kind]).Scan(&listed))
		require.Equal(t, want, listed, "%s key listed", kind)
	}
	page, _, err := s.List(t.Context(), keystore.ListOptions{Now: now})
	require.NoError(t, err)
	require.Equal(t, []string{ids["live"]}, idsOf(page))

	res, err := s.Sweep(t.Context(), keystore.SweepOptions{Now: now, PurgeBefore: now.Add(time.Second)})
	require.NoError(t, err)
	require.Equal(t, keystore.SweepResult{Unlisted: 1, Purged: 2}, res)
	all, _, err := s.List(t.Context(), keystore.ListOptions{Now: now, IncludeRevoked: true})
	require.NoError(t, err)
	require.Equal(t, []string{ids["live"]}, idsOf(all))
}

func idsOf(keys []*keystore.Key) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k.ID
	}
	return out
}

func TestSweepForgetsIdempotencyKeysPastTheirTime(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "k.db"))
	now := time.Now().UTC()
	for i, life := range []time.Duration{time.Minute, time.Minute, 2 * time.Hour} {
		k, h := testKey(t)
		once := keystore.OnceRecord{Token: keystore.OnceToken("alice", string(rune('a'+i))), Request: hasher.Hash("r"), Until: now.Add(life)}
		require.NoError(t, s.CreateOnce(t.Context(), k, h, 0, once))
	}
	rows := func() (n int) {
		require.NoError(t, s.db.QueryRowContext(t.Context(), `SELECT count(*) FROM once`).Scan(&n))
		return n
	}
	require.Equal(t, 3, rows())
	_, err := s.Sweep(t.Context(), keystore.SweepOptions{Now: now.Add(time.Hour), Batch: 1})
	require.NoError(t, err)
	require.Equal(t, 2, rows(), "a sweep forgets at most a batch")
	_, err = s.Sweep(t.Context(), keystore.SweepOptions{Now: now.Add(time.Hour)})
	require.NoError(t, err)
	require.Equal(t, 1, rows(), "the one still in its time is kept")
}
