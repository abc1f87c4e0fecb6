package audit

import (
	"context"
	"testing"

	"github.com/extauthz/extauthz/keystore"
)

// blockingSink holds the Logger's writer in its first Write until release
// is closed, so that nothing but Record runs while allocations are counted.
type blockingSink struct{ entered, release chan struct{} }

func (s *blockingSink) Write(ctx context.Context, _ []Event) error {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	<-s.release
	return nil
}

// Record is documented to "not allocate, except to copy a field longer than
// MaxFieldLen", with keystore.Format.LabelHoldsKey as its LabelHoldsKey (as
// the server wires it) too: it allocated on every decision of a key whose
// (valid, 74-byte) name holds a long run of base64 characters.
func TestRecordOfALongKeyNameDoesNotAllocate(t *testing.T) {
	f, err := keystore.NewFormat("sk")
	if err != nil {
		t.Fatal(err)
	}
	sink := &blockingSink{entered: make(chan struct{}, 1), release: make(chan struct{})}
	l := New(sink, Options{QueueSize: 1 << 12, BatchSize: 1, HoldsKey: f.MayHoldKey, LabelHoldsKey: f.LabelHoldsKey})
	defer func() { close(sink.release); l.Close(context.Background()) }()
	l.Record(Event{Decision: "allow"})
	<-sink.entered // the writer is parked; the queue takes the rest
	e := Event{Decision: "allow", KeyID: "key_1", KeyName: "payments_reconciliation_worker_for_eu_central_1_production_cluster_a_blue", Owner: "team"}
	if allocs := testing.AllocsPerRun(100, func() { l.Record(e) }); allocs != 0 {
		t.Errorf("Record allocates %v times per event for a key name of 74 bytes", allocs)
	}
}
