package keystore

import (
	"context"
	"errors"
)

// ErrWriterChanged: the key a change is made by (WithWriter) is no longer
// the record its authority was checked against when the change was to be
// written (revoked, narrowed, purged, or restricted by a newer version),
// so the store made no change.
var ErrWriterChanged = errors.New("the key making the change changed while the change was being made")

type writerKey struct{}

// WithWriter returns ctx saying that the changes made with it are made by
// the key whose record is writer, as read when the change was authorized.
// Create, CreateOnce, Update and Rotate then make their change only if
// that record is still the stored one (but for last_used_at), in the same
// atomic step as the write, and return an error wrapping ErrWriterChanged
// otherwise. Without it, a writer revoked while its request was between
// that read and the write would still make its change after its
// revocation was answered.
func WithWriter(ctx context.Context, writer *Key) context.Context {
	return context.WithValue(ctx, writerKey{}, writer.Clone())
}

// WriterOf returns the writer WithWriter gave ctx, or nil.
func WriterOf(ctx context.Context) *Key {
	w, _ := ctx.Value(writerKey{}).(*Key)
	return w
}

// StillWriter reports whether stored, the writer's record as the store holds
// it in the step that writes (nil if it is gone), is the record writer's
// authority was checked against: the same but for last_used_at, which any
// server writes behind at any time. A record that requires what this
// version cannot enforce is not (a store reads it with that error).
func StillWriter(writer, stored *Key) bool {
	return stored != nil && sameRecord(writer, stored)
}
