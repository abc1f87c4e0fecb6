package keystore

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// audit.Logger.Record runs LabelHoldsKey on the key name and owner of every
// decision and is documented not to allocate (but to copy a field longer
// than MaxFieldLen). Once labels were read base64-decoded too, any name
// with a run of 65 or more base64 characters ('_' and '-' among them, so
// most long snake- or kebab-case names) was decoded at four alignments into
// fresh buffers and strings on every call (6 allocations); it is decoded on
// the stack now.
func TestLabelHoldsKeyOnALongPlainNameDoesNotAllocate(t *testing.T) {
	f, err := NewFormat("sk")
	require.NoError(t, err)
	name := "payments_reconciliation_worker_for_eu_central_1_production_cluster_a_blue" // 74 bytes, a valid name
	require.NoError(t, ValidateName(name))
	require.False(t, f.LabelHoldsKey(name))
	if allocs := testing.AllocsPerRun(100, func() { f.LabelHoldsKey(name) }); allocs != 0 {
		t.Errorf("LabelHoldsKey(%q) allocates %v times per call ; the audit logger runs it on every decision", name, allocs)
	}
}
