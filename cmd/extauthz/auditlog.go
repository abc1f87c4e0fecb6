package main

import (
	"context"
	"io"
	"log/slog"
	"time"

	"github.com/extauthz/extauthz/admin"
	"github.com/extauthz/extauthz/audit"
	auditredis "github.com/extauthz/extauthz/audit/redis"
	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/keystore"
)

// newAuditLogger returns the configured audit sink behind a non-blocking
// queue: the Redis stream, w (stdout for the server, stderr for the CLI,
// whose stdout is the command's own output), or nowhere.
func newAuditLogger(cfg *config.Config, be *backend, w io.Writer, logger *slog.Logger) *audit.Logger {
	var sink audit.Sink
	switch cfg.Audit.Sink {
	case "redis":
		sink = auditredis.NewSink(be.redis, cfg.Store.Redis.Prefix, cfg.Audit.StreamCap)
	case "none":
		return nil // a nil Logger drops at Record: no queue, no goroutine woken per decision
	default:
		sink = audit.NewWriterSink(w)
	}
	return audit.New(sink, audit.Options{QueueSize: cfg.Audit.QueueSize, Log: logger, HoldsKey: cfg.Keys.Format.MayHoldKey, LabelHoldsKey: cfg.Keys.Format.LabelHoldsKey})
}

// auditChanges makes m's key changes audit events, those whose outcome
// nobody can tell included (outcome "unknown").
func auditChanges(m *keystore.Manager, l *audit.Logger) {
	m.OnChange = recordChanges(l, "")
	m.OnUnsure = recordChanges(l, audit.OutcomeUnknown)
}

// recordChanges makes key changes audit events with outcome; one made
// through the admin API says where the call came from.
func recordChanges(l *audit.Logger, outcome string) func(ctx context.Context, kind string, k *keystore.Key, actor string) {
	return func(ctx context.Context, kind string, k *keystore.Key, actor string) {
		e := audit.Event{
			Type: audit.Type(kind), KeyID: k.ID, KeyName: k.Name, Owner: k.Owner,
			Actor: actor, RotatedFrom: k.RotatedFrom, Outcome: outcome,
		}
		if c, ok := admin.CallFrom(ctx); ok {
			e.ClientIP, e.Method, e.Route, e.RequestID, e.UserAgent = c.ClientIP, c.Method, c.Route, c.RequestID, c.UserAgent
		}
		l.Record(e)
	}
}

// closeAudit flushes queued events, waiting at most a few seconds; an
// error says some were left unwritten. Closing twice is harmless.
func closeAudit(l *audit.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return l.Close(ctx)
}
