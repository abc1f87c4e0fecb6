package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"reflect"
	"strings"
	"syscall"
	"time"

	"github.com/extauthz/extauthz/authz"
	"github.com/extauthz/extauthz/config"
)

// watchConfig reloads the config on SIGHUP and when the file changes, until
// ctx is done. Without a file (the built-in defaults) SIGHUP is still
// caught, and said to have nothing to reload: a SIGHUP nobody catches ends
// the process, and a habit of sending it after every config change must
// not take the server down.
func (s *server) watchConfig(ctx context.Context) {
	hup := s.hup
	if hup == nil {
		own := make(chan os.Signal, 1)
		signal.Notify(own, syscall.SIGHUP)
		defer signal.Stop(own)
		hup = own
	}
	if s.cfgPath == "" {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				s.logger.Warn("SIGHUP: no config file to reload; the server runs on the built-in defaults")
			}
		}
	}
	s.warnWritableConfig("start")
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

// newWatch begins a watch of the file the server's config was read from: a
// change since it was read at start (the store opening and the listeners
// binding take time, and a ConfigMap may be updated meanwhile) is loaded at
// the first poll that finds the file settled, like any other.
func (s *server) newWatch() *configWatch {
	return &configWatch{s: s, loaded: s.cfgRead, seen: fileStamp(s.cfgPath)}
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

// stamp is what the watch knows a config file by: which file the path
// names (a symbolic link retargeted, or a file renamed over the config,
// is another file even with the same size and time: build tools and
// package stores often give every file one time), its time and its size.
type stamp struct {
	id   fileID
	mod  time.Time
	size int64
}

// fileID names a file on its device (see fileIDOf).
type fileID struct{ dev, ino uint64 }

func fileStamp(path string) stamp {
	fi, err := os.Stat(path)
	if err != nil {
		return stamp{}
	}
	return stamp{fileIDOf(fi), fi.ModTime(), fi.Size()}
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
	cfg, setsSomething, err := config.LoadSetting(s.cfgPath)
	if err == nil && !setsSomething {
		// A file that sets nothing is the defaults, whose no routes deny
		// every request: never what a running server should swap in, and
		// what a file emptied by mistake (a shell's > on the wrong name,
		// echo > file, a writer that truncates first and failed, a
		// template that rendered only its header comment) reads as.
		err = errors.New("the config file sets nothing but the defaults (empty, blank, only comments or empty sections: emptied by mistake, or a writer that truncated it failed?); as the defaults it has no routes and would deny every request")
	}
	after := fileStamp(s.cfgPath)
	if after != before {
		s.logger.Warn("config file changed while it was read; it loads once it settles", "trigger", why)
		return after, true
	}
	var policies *authz.PolicySet
	if err == nil {
		// The key format (keys.prefix) needs a restart like the rest of
		// keys: the audit log, the listeners' log and the keys in the store
		// all go by the one the server started with. Compiled into the
		// decision alone it would stop the decision knowing the keys in
		// use for keys, and one sent in another policy's source would be
		// let through to that upstream.
		next := *cfg
		next.Keys.Format = s.cfg.Keys.Format
		if policies, err = newPolicies(&next); err == nil {
			s.obs.setPolicies(policies)
			s.authz.SetPolicies(policies)
			s.httpMode.SetConfig(httpMode(cfg), policies)
		}
	}
	if err != nil {
		s.reloads.WithLabelValues("error").Inc()
		s.logger.Error("config reload failed; keeping the running config", "trigger", why, "err", err)
		return after, false
	}
	s.reloads.WithLabelValues("ok").Inc()
	s.lastLoad.SetToCurrentTime()
	if stale := restartOnlyChanges(s.cfg, cfg); len(stale) > 0 {
		s.logger.Warn("config reloaded, but these changes need a restart and are not in effect", "trigger", why, "settings", stale)
	}
	s.logger.Info("config reloaded", "trigger", why, "routes", len(cfg.Routes), "policies", len(cfg.Policies)+1)
	s.warnWritableConfig(why)
	// Said at every reload, not only by config check: a route the reload
	// made unreachable is a protection that is silently gone.
	for _, w := range policyWarnings(cfg, policies) {
		s.logger.Warn(w, "trigger", why)
	}
	return after, false
}

// warnWritableConfig warns when every user of the machine may write the
// config file: the file decides every request, and the watch applies a
// change within seconds, so any local user could make every route public.
// The file holds no secret (those are named by their environment
// variables), so reading it is no harm. A warning, not a refusal: a folder
// shared into a container from Windows or macOS shows every file as 0777,
// whatever the host allows.
func (s *server) warnWritableConfig(why string) {
	fi, err := os.Stat(s.cfgPath)
	if err != nil || fi.Mode().Perm()&0o002 == 0 {
		return
	}
	s.logger.Warn("the config file is writable by every user of this machine, who could rewrite every policy, applied within seconds: chmod o-w it",
		"trigger", why, "file", s.cfgPath, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
}

// reloadedFields are the config's top-level fields a reload applies (the
// decision's: newPolicies and httpMode read nothing else), but for
// rate_limit.on_store_error, which the limiter took at start.
var reloadedFields = map[string]bool{
	"routes": true, "sources": true, "client_ip": true, "rate_limit": true, "unmatched": true, "paths": true,
	"http_mode": true, "mode": true, "forward_meta": true, "policies": true, "unselected": true,
}

// restartOnlyChanges names every setting in which next differs from the
// config the server started with and which a reload does not apply: each
// top-level field but reloadedFields (listen, tls, store, hashing, cache,
// keys, audit, log, leaks, admin, metrics, development, and any field added
// later), and rate_limit.on_store_error. Naming them all matters: a reload
// that turns on mutual TLS or tightens the admin API's limit and says only
// "config reloaded" leaves the operator believing in a protection that is
// not there.
func restartOnlyChanges(running, next *config.Config) []string {
	var stale []string
	a, b := reflect.ValueOf(*running), reflect.ValueOf(*next)
	for i := 0; i < a.NumField(); i++ {
		name, _, _ := strings.Cut(a.Type().Field(i).Tag.Get("json"), ",")
		if reloadedFields[name] {
			continue
		}
		if !reflect.DeepEqual(a.Field(i).Interface(), b.Field(i).Interface()) {
			stale = append(stale, name)
		}
	}
	if running.RateLimit.OnStoreError != next.RateLimit.OnStoreError {
		stale = append(stale, "rate_limit.on_store_error")
	}
	return stale
}
