package audit

import (
	"context"
	"io"
	"sync"
)

// WriterSink writes events as JSON lines (one object per line) to an
// io.Writer: the server's standard output, the CLI's standard error.
type WriterSink struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

// NewWriterSink returns a Sink that writes to w.
func NewWriterSink(w io.Writer) *WriterSink { return &WriterSink{w: w} }

// Write encodes the batch into a reused buffer and hands it to the writer
// in one Write call, so lines from concurrent callers never interleave
// (given a writer that does not split writes). ctx is not consulted: an
// io.Writer cannot be interrupted.
func (s *WriterSink) Write(_ context.Context, events []Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.buf[:0]
	for i := range events {
		b = append(events[i].AppendJSON(b), '\n')
	}
	_, err := s.w.Write(b)
	if cap(b) <= maxKeptBuffer {
		s.buf = b
	}
	return err
}

// maxKeptBuffer is the largest encoding buffer a sink keeps between batches;
// an unusually large batch should not pin its buffer for good.
const maxKeptBuffer = 1 << 20

// Discard is the "none" sink: it accepts every event and writes nothing.
var Discard Sink = discard{}

type discard struct{}

func (discard) Write(context.Context, []Event) error { return nil }
