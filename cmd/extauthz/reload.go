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
	t := time.NewTicker(s.reloadEvery)
	defer t.Stop()
	w := s.newWatch()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			w.reload("SIGHUP")
		case <-t.C:
			w.poll()
		}
	}
}

// A configWatch decides when a changed file is loaded.
//
// A changed file is loaded only once it has stayed the same from one poll to
// the next, and only if it did not change while it was read. A file written
// in place (an editor saving over it, `cat >`, a copy) can be caught halfway
// by a poll, and YAML cut short is often still valid: a route whose list of
// permissions was cut off would be enforced as written, more open than
// intended. Waiting one poll keeps out a write that pauses for less than the
// poll interval; a file renamed over the config (what a Kubernetes ConfigMap
// volume does, and `mv` of a finished file) is whole from the start and only
// waits that one poll.
type configWatch struct {
	s      *server
	loaded stamp // the file in force, as it was when read
	seen   stamp // the file at the last poll
}

func (s *server) newWatch() *configWatch {
	st := fileStamp(s.cfgPath)
	return &configWatch{s: s, loaded: st, seen: st}
}

// poll looks at the file once, and loads it when it changed and then stayed
// the same since the previous poll.
func (w *configWatch) poll() {
	st := fileStamp(w.s.cfgPath)
	if st == w.loaded || st != w.seen {
		w.seen = st // unchanged, or changed since the last poll: maybe still being written
		return
	}
	w.apply(w.s.reload("file changed", &st))
}

// reload loads the file now: SIGHUP does not wait for it to settle, the
// operator says it is ready.
func (w *configWatch) reload(why string) { w.apply(w.s.reload(why, nil)) }

// apply notes what a reload read. A file that does not load is said once,
// not at every poll; one that moved while it was read is loaded once it
// settles.
func (w *configWatch) apply(read stamp, moved bool) {
	w.seen = read
	if !moved {
		w.loaded = read
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
//
// expect, when not nil, is the stamp the file was seen to settle at: a file
// that no longer has it, or that changed while it was read, is not applied
// (moved), and the stamp it has is returned for the watch to wait on.
// Otherwise the stamp returned is the file's as it was read.
func (s *server) reload(why string, expect *stamp) (read stamp, moved bool) {
	before := fileStamp(s.cfgPath)
	if expect != nil && before != *expect {
		return before, true
	}
	cfg, err := config.Load(s.cfgPath)
	after := fileStamp(s.cfgPath)
	if after != before {
		s.logger.Warn("config file changed while it was read; it loads once it settles", "trigger", why)
		return after, true
	}
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
		return after, false
	}
	s.reloads.WithLabelValues("ok").Inc()
	s.lastLoad.SetToCurrentTime()
	if !reflect.DeepEqual(cfg.Listen, s.cfg.Listen) || !reflect.DeepEqual(cfg.Store, s.cfg.Store) ||
		!reflect.DeepEqual(cfg.Hashing, s.cfg.Hashing) || !reflect.DeepEqual(cfg.Cache, s.cfg.Cache) ||
		cfg.Audit != s.cfg.Audit || cfg.RateLimit.OnStoreError != s.cfg.RateLimit.OnStoreError {
		s.logger.Warn("config reloaded, but listen, store, hashing, cache, audit and on_store_error changes need a restart", "trigger", why)
	}
	s.logger.Info("config reloaded", "trigger", why, "routes", len(cfg.Routes), "policies", len(cfg.Policies)+1)
	return after, false
}
