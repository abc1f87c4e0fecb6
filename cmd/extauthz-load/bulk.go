package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/extauthz/extauthz/keystore"
	redisstore "github.com/extauthz/extauthz/keystore/redis"
)

// bulkInsert creates n keys in the Redis store at redisURL/prefix as fast
// as it can, and returns their secrets. It is what `keys create` does
// (generate, hash, Store.Create), without a process per key: the records are
// written through keystore/redis's own Create, so the layout is the one the
// server reads, from many goroutines at once (Redis gets them pipelined over
// the pool's connections).
func bulkInsert(ctx context.Context, redisURL, prefix string, pepper []byte, spec keystore.Spec, n, workers int, progress io.Writer) ([]string, error) {
	client, err := redisstore.Dial(redisstore.Options{URL: redisURL, PoolSize: workers, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second})
	if err != nil {
		return nil, err
	}
	defer client.Close()
	store := redisstore.New(client, prefix)
	defer store.Close()
	format, err := keystore.NewFormat("sk")
	if err != nil {
		return nil, err
	}
	hasher := keystore.NewHasher(pepper)
	if spec.Permissions == nil {
		spec.Permissions = []string{}
	}

	keys := make([]string, n)
	var next, done atomic.Int64
	var wg sync.WaitGroup
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	for range max(workers, 1) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				secret, err := insertOne(ctx, store, format, hasher, spec, i)
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("insert key %d: %w", i, err); cancel() })
					return
				}
				keys[i] = secret
				if d := done.Add(1); progress != nil && d%100000 == 0 && int(d) < n {
					el := time.Since(start)
					fmt.Fprintf(progress, "  inserted %d/%d keys in %s (%.0f/s)\n", d, n, el.Round(time.Second), float64(d)/el.Seconds())
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if progress != nil {
		el := time.Since(start)
		fmt.Fprintf(progress, "  inserted %d keys in %s (%.0f/s)\n", n, el.Round(time.Millisecond), float64(n)/el.Seconds())
	}
	return keys, nil
}

// insertOne generates, hashes and stores key number i, retrying when the
// id or the secret collides (as likely as a cosmic ray, but cheap to handle).
func insertOne(ctx context.Context, store *redisstore.Store, format keystore.Format, hasher *keystore.Hasher, spec keystore.Spec, i int) (string, error) {
	for range 3 {
		secret, err := format.Generate()
		if err != nil {
			return "", err
		}
		now := time.Now().UTC()
		id, err := keystore.NewID(now)
		if err != nil {
			return "", err
		}
		k := &keystore.Key{
			ID: id, Name: "load-" + strconv.Itoa(i),
			// Spread over owners like a real tenant population: no per-owner
			// set holds all million ids.
			Owner:       "load-" + strconv.Itoa(i%1000),
			Permissions: spec.Permissions, RateLimit: spec.RateLimit,
			IPAllowlist: []netip.Prefix{}, CreatedAt: now,
		}
		err = store.Create(ctx, k, hasher.Hash(secret), 0)
		if errors.Is(err, keystore.ErrExists) {
			continue
		}
		return secret, err
	}
	return "", errors.New("three collisions in a row")
}
