package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	goredis "github.com/redis/go-redis/v9"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/extauthz/extauthz/config"
	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
	"github.com/extauthz/extauthz/keystore/sqlite"
)

// backend is the configured key store, and the Redis client behind it
// (nil for the embedded store) for the limiter and the audit sink to share.
type backend struct {
	store keystore.Store
	redis goredis.UniversalClient
}

// openBackend opens the store the config names. It does not wait for Redis:
// a server must start (and serve cached keys, and say it is not ready) while
// Redis is still coming up.
// log (nil for none) hears of the Redis change feed's failures.
func openBackend(cfg *config.Config, log *slog.Logger) (*backend, error) {
	switch cfg.Store.Backend {
	case "redis":
		r := cfg.Store.Redis
		opts := redisstore.Options{
			Username:         r.Username,
			Password:         r.Password,
			SentinelUsername: r.SentinelUsername,
			SentinelPassword: r.SentinelPassword,
			TLS: redisstore.TLSOptions{
				Enabled: r.TLS.Enabled, CAFile: r.TLS.CAFile, CertFile: r.TLS.CertFile,
				KeyFile: r.TLS.KeyFile, ServerName: r.TLS.ServerName, Logger: log,
			},
			Timeout:  time.Duration(r.Timeout),
			PoolSize: r.PoolSize,
		}
		if len(r.Addrs) > 0 {
			opts.Addrs, opts.MasterName = r.Addrs, r.MasterName
		} else {
			opts.URL = r.URL
		}
		client, err := redisstore.Dial(opts)
		if err != nil {
			if strings.HasPrefix(err.Error(), "store.redis") { // Dial's own errors name the field
				return nil, err
			}
			return nil, fmt.Errorf("store.redis: %w", err)
		}
		if err := redisstore.CheckPrefix(r.Prefix); err != nil {
			client.Close()
			return nil, fmt.Errorf("store.redis.prefix: %w", err)
		}
		confirm := redisstore.ConfirmChanges(redisstore.Confirm{Replicas: r.ConfirmReplicas, Timeout: time.Duration(r.ConfirmTimeout)})
		return &backend{store: redisstore.New(client, r.Prefix, confirm, redisstore.LogTo(log)), redis: client}, nil
	default:
		st, err := sqlite.Open(cfg.Store.Path)
		if err != nil {
			return nil, err
		}
		st.LogTo(log)
		return &backend{store: st}, nil
	}
}

// checkConfirmingReplicas warns, once Redis answers, when the primary of
// the key records has fewer replicas acknowledging its writes than
// store.redis.confirm_replicas asks to confirm each change: every
// revocation would then wait its whole timeout and answer 503 unconfirmed.
// The check is Redis's WAIT, which the shipped ACL grants (INFO is not).
func (s *server) checkConfirmingReplicas(ctx context.Context) {
	r := s.cfg.Store.Redis
	st, ok := s.be.store.(*redisstore.Store)
	if !ok || r.ConfirmReplicas == 0 {
		return
	}
	for {
		callCtx, cancel := context.WithTimeout(ctx, time.Duration(r.ConfirmTimeout)+time.Duration(r.Timeout))
		have, err := st.ConfirmingReplicas(callCtx)
		cancel()
		if err == nil {
			if have < r.ConfirmReplicas {
				s.logger.Warn("store.redis.confirm_replicas asks for more replicas than acknowledge the primary's writes: every change to a key will wait confirm_timeout and answer 503 unconfirmed (a create or a rotation: 201 with an unconfirmed note) until they do",
					"confirm_replicas", r.ConfirmReplicas, "acknowledging", have, "confirm_timeout", time.Duration(r.ConfirmTimeout).String())
			} else {
				s.logger.Info("changes to keys are confirmed by the primary's replicas", "confirm_replicas", r.ConfirmReplicas)
			}
			return
		}
		if !sleep(ctx, 2*time.Second) {
			return
		}
	}
}

// checkPepper compares, once the store answers, the store's pepper mark with
// this server's pepper (keystore.Manager.CheckPepper), storing it when the
// store has none. When they differ, every key of the store is unknown here
// and would be answered 401: the server then says so in the log, goes
// NOT_SERVING on gRPC health and unready on /readyz, so that a rollout with a
// mistyped pepper stops at its first replica instead of refusing every
// caller, and the admin API makes no key (503).
func (s *server) checkPepper(ctx context.Context) {
	for {
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.notePepper(s.manager.CheckPepper(callCtx))
		cancel()
		if err == nil || s.pepperWrong.Load() {
			return
		}
		if ctx.Err() == nil {
			s.logger.Debug("the key store's pepper mark is not checked yet", "err", err)
		}
		if !sleep(ctx, 2*time.Second) {
			return
		}
	}
}

// notePepper acts on what a check of the store's pepper mark found, and
// returns it: a mismatch, found first here or by /readyz, makes the server
// unready and NOT_SERVING for good, and is logged once.
func (s *server) notePepper(err error) error {
	if errors.Is(err, keystore.ErrPepperMismatch) && s.pepperWrong.CompareAndSwap(false, true) {
		s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
		s.health.SetServingStatus(authv3.Authorization_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
		s.logger.Error("the hashing pepper differs from the one the key store's keys were hashed with: no key of the store matches here, so every key is answered 401; this server reports itself not ready and makes no keys. "+
			"Give it the pepper the store's other servers use (hashing.pepper_env); a pepper cannot be changed for keys already made",
			"pepper_env", config.EnvRef(s.cfg.Hashing.PepperEnv), "store", describeStore(s.cfg))
	}
	return err
}

// sleep waits d, and reports false if ctx ends first.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// redisLog routes go-redis's own messages ("failed to dial ...", which
// name addresses, never secrets) into the service's structured log instead of
// its default plain standard-error logger.
type redisLog struct{ logger *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	// The text as the message: a "msg" attribute would repeat the JSON
	// handler's own key.
	l.logger.WarnContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}

func (b *backend) Close() error {
	err := b.store.Close()
	if b.redis != nil {
		if cerr := b.redis.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

// manager returns the key lifecycle over b with the config's key settings.
func (b *backend) manager(cfg *config.Config) *keystore.Manager {
	return &keystore.Manager{
		Store:       b.store,
		Hasher:      keystore.NewHasher(cfg.Hashing.Pepper),
		Format:      cfg.Keys.Format,
		MaxPerOwner: cfg.Keys.MaxPerOwner,
	}
}

// ping waits up to d for the store to answer.
func (b *backend) ping(ctx context.Context, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return b.store.Ping(ctx)
}
