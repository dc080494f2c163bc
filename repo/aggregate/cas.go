package aggregate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// This file holds the compare-and-swap helpers for values that live in the
// cache only (CASValue, CacheCounter).

// CASValue replaces the value of the cache-only key with
// modify(current, found), atomically with respect to every other writer of
// key that uses CAS: it reads the item with gets, calls modify, and writes
// the result with CompareAndSwap, or with Add when the key is missing
// (modify then receives nil, false). When another writer got in between, it
// backs off (jittered) and starts over, at most cfg.CASRetries times
// (default 16); after that it returns a *repo.OpError wrapping
// repo.ErrRetriesExhausted and the key keeps whatever the other writers stored.
// If modify returns an error, CASValue returns it (wrapped) and writes
// nothing. On success it returns the value it stored.
//
// The value is stored as is (no envelope) with expiration cfg.TTL less up
// to cfg.Jitter, so other memcached clients can read it. The key must be
// a valid memcached key (see cachekeys.Valid). Values in the cache only are
// lost when memcached restarts or evicts them; keep anything that must
// survive in the database (see Counter). gomemcache has no context: ctx is
// checked between round trips and each round trip is bounded by the client
// timeout. CASValue is safe for concurrent use; modify may be called more
// than once and must not have side effects.
func CASValue(ctx context.Context, cache repo.Cache, key string, cfg CacheConfig, modify func(current []byte, found bool) ([]byte, error)) ([]byte, error) {
	if cache == nil || modify == nil {
		return nil, &repo.OpError{Op: observe.OpCASValue, Key: key, Err: fmt.Errorf("%w: CASValue needs a Cache and a modify function", repo.ErrInvalidArgument)}
	}
	if err := cachekeys.Valid(key); err != nil {
		return nil, &repo.OpError{Op: observe.OpCASValue, Key: key, Err: fmt.Errorf("%w: %w", repo.ErrInvalidArgument, err)}
	}
	v, err := protocol.New(cache, cfg.protocol("cas"), nil).CASLoop(ctx, key, modify)
	if err != nil {
		return nil, &repo.OpError{Op: observe.OpCASValue, Key: key, Err: err}
	}
	return v, nil
}

// CacheCounter is a set of named counters kept in memcached only, as
// memcached's decimal counters: the increment-with-Add-on-miss and gets/cas
// loops of the source articles. Increments are atomic and none is lost while
// the value stays in the cache, but a memcached restart or an eviction
// resets a counter to zero: use it for rate limits, presence counts and
// other values that may be lost. Use Counter when the count must be exact
// and durable. A CacheCounter is safe for concurrent use.
type CacheCounter struct {
	core *protocol.Core
	keys cachekeys.Builder
}

// NewCacheCounter returns a CacheCounter over cache (cfg's lease fields do
// not apply). Keys are "<namespace>:cc:1:0:<name>".
func NewCacheCounter(cache repo.Cache, cfg CacheConfig) (*CacheCounter, error) {
	if cache == nil {
		return nil, errors.New("aggregate: NewCacheCounter needs a Cache")
	}
	core := protocol.New(cache, cfg.protocol("cache counter"), nil)
	kb, err := cachekeys.New(core.Opt.Namespace, "cc", "1")
	if err != nil {
		return nil, fmt.Errorf("aggregate: cache counter: %w", err)
	}
	return &CacheCounter{core: core, keys: kb}, nil
}

// Stats returns a snapshot of the counter's counters.
func (c *CacheCounter) Stats() observe.Stats { return c.core.Snapshot() }

// Key returns the cache key of the counter name: the supported way to
// inspect or delete it by hand.
func (c *CacheCounter) Key(name string) string { return c.keys.Key(name) }

func (c *CacheCounter) opErr(op observe.Op, name string, err error) error {
	return &repo.OpError{Op: op, Table: "cache counter", Key: name, Err: err}
}

// Increment adds delta (which may be negative) to the counter name and
// returns the new value. A missing counter starts at zero. A non-negative
// delta on a non-negative value is one memcached incr; on a miss the value
// is created with Add, and if another writer created it first, incr is
// tried again. A negative delta, or a counter below zero, goes through the
// gets/cas loop of CASValue. Either way the attempts are bounded by
// CacheConfig.CASRetries: when they run out Increment returns an error wrapping
// repo.ErrRetriesExhausted, and the increment was not applied.
// It is safe for concurrent use.
func (c *CacheCounter) Increment(ctx context.Context, name string, delta int64) (_ int64, err error) {
	ctx, end := c.core.Begin(ctx, observe.OpCacheIncrement)
	defer func() { end(err) }()
	if name == "" {
		return 0, c.opErr(observe.OpCacheIncrement, name, fmt.Errorf("%w: empty counter name", repo.ErrInvalidArgument))
	}
	key := c.Key(name)
	if delta >= 0 {
		var n int64
		useCAS := false // the value is not a non-negative decimal (e.g. negative)
		err := c.core.Retry(ctx, false, func() (bool, error) {
			v, err := c.core.Cache.Increment(key, uint64(delta))
			switch {
			case err == nil && v > math.MaxInt64:
				return true, fmt.Errorf("counter overflow: %d", v)
			case err == nil:
				n = int64(v)
				return true, nil
			case isClientError(err):
				useCAS = true
				return true, nil
			case !protocol.IsMiss(err):
				return true, err
			}
			err = c.core.Cache.Add(&memcache.Item{Key: key, Value: strconv.AppendInt(nil, delta, 10), Expiration: c.core.Expiry(c.core.Opt.TTL, true)})
			if err == nil {
				n = delta
				return true, nil
			}
			if !protocol.IsLost(err) {
				return true, err
			}
			c.core.CASConflict(ctx, key) // created meanwhile: incr again
			return false, nil
		})
		if err != nil {
			return 0, c.opErr(observe.OpCacheIncrement, name, err)
		}
		if !useCAS {
			return n, nil
		}
	}
	var n int64
	_, err = c.core.CASLoop(ctx, key, func(cur []byte, found bool) ([]byte, error) {
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
		return 0, c.opErr(observe.OpCacheIncrement, name, err)
	}
	return n, nil
}

// Get returns the value of the counter name, zero if it is not in the
// cache. It is safe for concurrent use.
func (c *CacheCounter) Get(ctx context.Context, name string) (_ int64, err error) {
	ctx, end := c.core.Begin(ctx, observe.OpCacheCounter)
	defer func() { end(err) }()
	if name == "" {
		return 0, c.opErr(observe.OpCacheCounter, name, fmt.Errorf("%w: empty counter name", repo.ErrInvalidArgument))
	}
	if err := ctx.Err(); err != nil {
		return 0, c.opErr(observe.OpCacheCounter, name, err)
	}
	it, err := c.core.Cache.Get(c.Key(name))
	if protocol.IsMiss(err) {
		return 0, nil
	}
	if err != nil {
		return 0, c.opErr(observe.OpCacheCounter, name, err)
	}
	n, err := parseCount(it.Value)
	if err != nil {
		return 0, c.opErr(observe.OpCacheCounter, name, err)
	}
	return n, nil
}

// parseCount reads a memcached counter: decimal, possibly space-padded
// (memcached may pad a value whose decr shortened it).
func parseCount(b []byte) (int64, error) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: not a counter: %q", repo.ErrCorrupt, b)
	}
	return n, nil
}

// isClientError reports whether err is memcached's CLIENT_ERROR reply, as
// gomemcache reports it (incr on a value that is not a non-negative decimal).
func isClientError(err error) bool {
	return err != nil && bytes.HasPrefix([]byte(err.Error()), []byte("memcache: client error"))
}
