package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/cachekeys"
)

// This file holds the compare-and-swap helpers for values that live in the
// cache only (CASValue, CacheCounter) and the lease-guarded load shared by
// the aggregates (Counter.Get, Leaderboard.Top).

// casBackoff returns the jittered pause before CAS retry try (0-based):
// uniformly in [d/2, 3d/2) with d = 100µs doubling up to 6.4ms, so that
// writers that collided once spread out instead of colliding again.
func casBackoff(try int) time.Duration {
	d := 100 * time.Microsecond << min(try, 6)
	return d/2 + rand.N(d)
}

// CASValue replaces the value of the cache-only key with
// modify(current, found), atomically with respect to every other writer of
// key that uses CAS: it reads the item with gets, calls modify, and writes
// the result with CompareAndSwap, or with Add when the key is missing
// (modify then receives nil, false). When another writer got in between, it
// backs off (jittered) and starts over, at most opts.CASRetries times
// (default 16); after that it returns an *OpError wrapping
// ErrRetriesExhausted and the key keeps whatever the other writers stored.
// If modify returns an error, CASValue returns it (wrapped) and writes
// nothing. On success it returns the value it stored.
//
// The value is stored as is (no envelope) with expiration opts.TTL less up
// to opts.Jitter, so other memcached clients can read it. The key must be
// a valid memcached key (see cachekeys.Valid). Values in the cache only are
// lost when memcached restarts or evicts them; keep anything that must
// survive in the database (see Counter). gomemcache has no context: ctx is
// checked between round trips and each round trip is bounded by the client
// timeout. CASValue is safe for concurrent use; modify may be called more
// than once and must not have side effects.
func CASValue(ctx context.Context, cache Cache, key string, opts *Options, modify func(current []byte, found bool) ([]byte, error)) ([]byte, error) {
	if cache == nil || modify == nil {
		return nil, &OpError{Op: "cas", Key: key, Err: fmt.Errorf("%w: CASValue needs a Cache and a modify function", ErrInvalidArgument)}
	}
	if err := cachekeys.Valid(key); err != nil {
		return nil, &OpError{Op: "cas", Key: key, Err: fmt.Errorf("%w: %w", ErrInvalidArgument, err)}
	}
	c := core{cache: cache, opt: opts.withDefaults()}
	v, err := c.casLoop(ctx, key, modify)
	if err != nil {
		return nil, &OpError{Op: "cas", Key: key, Err: err}
	}
	return v, nil
}

// casLoop is CASValue without the argument checks and error wrapping.
func (s *core) casLoop(ctx context.Context, key string, modify func([]byte, bool) ([]byte, error)) ([]byte, error) {
	for try := 0; try < s.opt.CASRetries; try++ {
		if try > 0 {
			if err := sleep(ctx, casBackoff(try-1)); err != nil {
				return nil, err
			}
		} else if err := ctx.Err(); err != nil {
			return nil, err
		}
		it, err := s.cache.Get(key)
		found := err == nil
		if err != nil && !isMiss(err) {
			return nil, err
		}
		var cur []byte
		if found {
			cur = it.Value
		}
		next, err := modify(cur, found)
		if err != nil {
			return nil, err
		}
		exp := s.expiry(s.opt.TTL, true)
		if found {
			it.Value, it.Expiration = next, exp
			err = s.cache.CompareAndSwap(it)
		} else {
			err = s.cache.Add(&memcache.Item{Key: key, Value: next, Expiration: exp})
		}
		if err == nil {
			return next, nil
		}
		if !isLost(err) {
			return nil, err
		}
		s.stats.casConflicts.Add(1)
	}
	return nil, ErrRetriesExhausted
}

// CacheCounter is a set of named counters kept in memcached only, as
// memcached's decimal counters: the increment-with-Add-on-miss and gets/cas
// loops of the source articles. Increments are atomic and none is lost while
// the value stays in the cache, but a memcached restart or an eviction
// resets a counter to zero: use it for rate limits, presence counts and
// other values that may be lost. Use Counter when the count must be exact
// and durable. A CacheCounter is safe for concurrent use.
type CacheCounter struct {
	core
	keys cachekeys.Builder
}

// NewCacheCounter returns a CacheCounter over cache; opts may be nil (its
// Namespace, TTL, Jitter and CASRetries apply). Keys are
// "<namespace>:cc:1:0:<name>".
func NewCacheCounter(cache Cache, opts *Options) (*CacheCounter, error) {
	if cache == nil {
		return nil, errors.New("repo: NewCacheCounter needs a Cache")
	}
	o := opts.withDefaults()
	kb, err := cachekeys.New(o.Namespace, "cc", "1")
	if err != nil {
		return nil, fmt.Errorf("repo: cache counter: %w", err)
	}
	return &CacheCounter{core: core{cache: cache, opt: o}, keys: kb}, nil
}

// Key returns the cache key of the counter name.
func (c *CacheCounter) Key(name string) string { return c.keys.Key(name) }

func (c *CacheCounter) opErr(op, name string, err error) error {
	return &OpError{Op: op, Table: "cache counter", Key: name, Err: err}
}

// Increment adds delta (which may be negative) to the counter name and
// returns the new value. A missing counter starts at zero. A non-negative
// delta on a non-negative value is one memcached incr; on a miss the value
// is created with Add, and if another writer created it first, incr is
// tried again. A negative delta, or a counter below zero, goes through the
// gets/cas loop of CASValue. Either way the attempts are bounded by
// Options.CASRetries: when they run out Increment returns an error wrapping
// ErrRetriesExhausted, and the increment was not applied.
// It is safe for concurrent use.
func (c *CacheCounter) Increment(ctx context.Context, name string, delta int64) (int64, error) {
	if name == "" {
		return 0, c.opErr("increment", name, fmt.Errorf("%w: empty counter name", ErrInvalidArgument))
	}
	key := c.Key(name)
	if delta >= 0 {
		try := 0
		for ; try < c.opt.CASRetries; try++ {
			if err := ctx.Err(); err != nil {
				return 0, c.opErr("increment", name, err)
			}
			n, err := c.cache.Increment(key, uint64(delta))
			if err == nil {
				if n > math.MaxInt64 {
					return 0, c.opErr("increment", name, fmt.Errorf("counter overflow: %d", n))
				}
				return int64(n), nil
			}
			if !isMiss(err) {
				if isClientError(err) {
					break // not a non-negative decimal (e.g. negative): use CAS
				}
				return 0, c.opErr("increment", name, err)
			}
			err = c.cache.Add(&memcache.Item{Key: key, Value: strconv.AppendInt(nil, delta, 10), Expiration: c.expiry(c.opt.TTL, true)})
			if err == nil {
				return delta, nil
			}
			if !isLost(err) {
				return 0, c.opErr("increment", name, err)
			}
			c.stats.casConflicts.Add(1) // created meanwhile: incr again
		}
		if try == c.opt.CASRetries {
			return 0, c.opErr("increment", name, ErrRetriesExhausted)
		}
	}
	var n int64
	_, err := c.casLoop(ctx, key, func(cur []byte, found bool) ([]byte, error) {
		v := int64(0)
		if found {
			var err error
			if v, err = parseCount(cur); err != nil {
				return nil, err
			}
		}
		if (delta > 0 && v > math.MaxInt64-delta) || (delta < 0 && v < math.MinInt64-delta) {
			return nil, fmt.Errorf("counter overflow: %d + %d", v, delta)
		}
		n = v + delta
		return strconv.AppendInt(nil, n, 10), nil
	})
	if err != nil {
		return 0, c.opErr("increment", name, err)
	}
	return n, nil
}

// Get returns the value of the counter name, zero if it is not in the
// cache. It is safe for concurrent use.
func (c *CacheCounter) Get(ctx context.Context, name string) (int64, error) {
	if name == "" {
		return 0, c.opErr("get", name, fmt.Errorf("%w: empty counter name", ErrInvalidArgument))
	}
	if err := ctx.Err(); err != nil {
		return 0, c.opErr("get", name, err)
	}
	it, err := c.cache.Get(c.Key(name))
	if isMiss(err) {
		return 0, nil
	}
	if err != nil {
		return 0, c.opErr("get", name, err)
	}
	n, err := parseCount(it.Value)
	if err != nil {
		return 0, c.opErr("get", name, err)
	}
	return n, nil
}

// parseCount reads a memcached counter: decimal, possibly space-padded
// (memcached may pad a value whose decr shortened it).
func parseCount(b []byte) (int64, error) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: not a counter: %q", ErrCorrupt, b)
	}
	return n, nil
}

// isClientError reports whether err is memcached's CLIENT_ERROR reply, as
// gomemcache reports it (incr on a value that is not a non-negative decimal).
func isClientError(err error) bool {
	return err != nil && bytes.HasPrefix([]byte(err.Error()), []byte("memcache: client error"))
}

// leased loads the value of key after a miss, under the lease protocol: the
// first caller takes the key's lease (core.take), runs load and swaps the
// result in only if the lease is still its own (any writer that replaced or
// deleted it meanwhile makes the fill fail); if someone else's value is
// there by then, it answers with that instead (see settle). Others poll with
// jittered backoff for up to LeaseWait and use the value they find (use
// decodes an item that is not a lease, given when the read began, and
// reports false for a corrupt one); then they run load themselves, without
// caching, and delete the slow holder's lease (see settle). load returns the
// caller's result and the envelope to cache (nil: cache nothing).
func (s *core) leased(ctx context.Context, key string,
	use func(it *memcache.Item, at time.Time) (any, bool),
	load func(context.Context) (result any, value []byte, flags uint32, exp int32, err error),
) (any, error) {
	deadline := time.Now().Add(s.opt.LeaseWait)
	backoff := time.Millisecond
	poll := false
	for attempt := 0; ; attempt++ {
		at := time.Now()
		l, it, err := s.take(key, poll)
		poll = false
		switch {
		case err != nil:
			s.cacheErr("lease", key, err)
			r, _, _, _, err := load(ctx)
			return r, err
		case l != nil:
			r, value, flags, exp, err := load(ctx)
			if err != nil || value == nil {
				l.release()
				return r, err
			}
			at := time.Now()
			if it := l.fill(value, flags, exp); it != nil {
				if r2, ok := use(it, at); ok {
					return r2, nil
				}
			}
			return r, nil
		case it == nil: // released, or filled and evicted: try the lease again
		default:
			k, _, _, ok := openEnvelope(it.Flags, it.Value)
			if !ok || k != kindLease {
				if r, ok := use(it, at); ok {
					return r, nil
				}
				s.cacheErr("decode", key, ErrCorrupt)
				s.invalidate(key)
				break
			}
			// someone else's lease
			if time.Now().After(deadline) || attempt > 64 {
				// The holder is slow or dead: read, then delete its lease.
				r, _, _, _, err := load(ctx)
				if err == nil {
					s.invalidate(key)
				}
				return r, err
			}
			s.stats.leaseWaits.Add(1)
			if err := sleep(ctx, backoff/2+rand.N(backoff)); err != nil {
				return nil, err
			}
			backoff = min(backoff*2, 32*time.Millisecond)
			poll = true
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}
