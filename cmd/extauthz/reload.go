package main

import (
	"context"
	"os"
	"os/signal"
	"reflect"
	"syscall"
	"time"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
)

// watchConfig reloads the config on SIGHUP and when the file changes, until
// ctx is done.
func (s *server) watchConfig(ctx context.Context) {
	if s.cfgPath == "" {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	last := fileStamp(s.cfgPath)
	t := time.NewTicker(s.reloadEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			last = fileStamp(s.cfgPath)
			s.reload("SIGHUP")
		case <-t.C:
			if st := fileStamp(s.cfgPath); st != last {
				last = st
				s.reload("file changed")
			}
		}
	}
}

type stamp struct {
	mod  time.Time
	size int64
}

func fileStamp(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}
	}
	return stamp{fi.ModTime(), fi.Size()}
}

// reload swaps in the policies (routes, sources, limits, selectors, modes)
// and HTTP mode of the file atomically: every policy in one pointer, so a
// check decides wholly under the old set or wholly under the new, and
// checks in flight finish on the old one. A file that does
// not load keeps the old config, and says why. Settings that need a restart
// (listeners, store, cache size, hashing) are reported, not applied.
func (s *server) reload(why string) {
	cfg, err := config.Load(s.cfgPath)
	if err == nil {
		var policies *authz.PolicySet
		if policies, err = newPolicies(cfg); err == nil {
			s.obs.setPolicies(policies)
			s.authz.SetPolicies(policies)
			s.httpMode.SetMode(httpMode(cfg))
		}
	}
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		s.logger.Error("config reload failed; keeping the running config", "trigger", why, "err", err)
		return
	}
	s.reloads.WithLabelValues("ok").Inc()
	s.lastLoad.SetToCurrentTime()
	if !reflect.DeepEqual(cfg.Listen, s.cfg.Listen) || !reflect.DeepEqual(cfg.Store, s.cfg.Store) ||
		!reflect.DeepEqual(cfg.Hashing, s.cfg.Hashing) || !reflect.DeepEqual(cfg.Cache, s.cfg.Cache) ||
		cfg.Audit != s.cfg.Audit || cfg.RateLimit.OnStoreError != s.cfg.RateLimit.OnStoreError {
		s.logger.Warn("config reloaded, but listen, store, hashing, cache, audit and on_store_error changes need a restart", "trigger", why)
	}
	s.logger.Info("config reloaded", "trigger", why, "routes", len(cfg.Routes), "policies", len(cfg.Policies)+1)
}
