package protocol

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// CASBackoff returns the jittered pause before CAS retry try (0-based):
// uniformly in [d/2, 3d/2) with d = 100µs doubling up to 6.4ms, so that
// writers that collided once spread out instead of colliding again.
func CASBackoff(try int) time.Duration {
	d := 100 * time.Microsecond << min(try, 6)
	return d/2 + rand.N(d)
}

// Retry runs step until it reports done, at most CASRetries times, pausing
// with CASBackoff between tries when pause is set (CAS conflicts on a hot
// key); ctx is checked before each try. It returns ErrRetriesExhausted when
// the tries run out. step reports a conflict by returning done false.
func (c *Core) Retry(ctx context.Context, pause bool, step func() (done bool, err error)) error {
	for try := 0; try < c.Opt.CASRetries; try++ {
		if try > 0 && pause {
			if err := Sleep(ctx, CASBackoff(try-1)); err != nil {
				return err
			}
		} else if err := ctx.Err(); err != nil {
			return err
		}
		done, err := step()
		if done || err != nil {
			return err
		}
	}
	return ErrRetriesExhausted
}

// CASLoop replaces the value of a cache-only key with modify(current,
// found): gets, modify, CompareAndSwap (Add when missing), retried with
// backoff on conflicts (see Retry). It returns the value stored.
func (c *Core) CASLoop(ctx context.Context, key string, modify func([]byte, bool) ([]byte, error)) ([]byte, error) {
	var next []byte
	err := c.Retry(ctx, true, func() (bool, error) {
		it, err := c.Cache.Get(key)
		found := err == nil
		if err != nil && !IsMiss(err) {
			return false, err
		}
		var cur []byte
		if found {
			cur = it.Value
		}
		if next, err = modify(cur, found); err != nil {
			return false, err
		}
		exp := c.Expiry(c.Opt.TTL, true)
		if found {
			it.Value, it.Expiration = next, exp
			err = c.Cache.CompareAndSwap(it)
		} else {
			err = c.Cache.Add(&memcache.Item{Key: key, Value: next, Expiration: exp})
		}
		if err == nil {
			return true, nil
		}
		if !IsLost(err) {
			return false, err
		}
		c.CASConflict(ctx, key)
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return next, nil
}

// PutVersioned brings one key up to a new state (value or absent, of row
// version version) without ever moving it backwards:
//
//   - a miss stays a miss: nothing cached means nothing stale, and the next
//     read fills under a lease. (An Add here could install an older version
//     after a newer one was evicted.)
//   - a lease is deleted, so the filler's CAS fails: its read may be older
//     or newer than ours, and we cannot tell which.
//   - a cached "not found" from a read has no version to compare, so a new
//     value deletes it and the next read fills under a lease.
//   - a cached state as new as ours or newer is kept.
//   - an older one is replaced by CAS, retried up to CASRetries.
//
// If the loop fails, the key is deleted so no stale value stays, and the
// failure is reported. It reports whether the cache holds nothing older
// than the write.
func (c *Core) PutVersioned(ctx context.Context, key string, value []byte, flags uint32, exp int32, version int64) bool {
	// In a migration the key is also deleted on its other ring's owner,
	// whatever the primary ring's step finds (a miss there writes nothing).
	ok := true
	if err := c.onPrimary([]string{key}, func(cache Cache) error {
		ok = c.putVersioned(ctx, cache, key, value, flags, exp, version)
		return nil
	}); err != nil {
		c.notInvalidated(ctx, observe.StepWrite, key, err)
		return false
	}
	return ok
}

func (c *Core) putVersioned(ctx context.Context, cache Cache, key string, value []byte, flags uint32, exp int32, version int64) bool {
	deleted := Kind(flags&0xff) == KindAbsent
	ok := true
	err := c.Retry(context.WithoutCancel(ctx), false, func() (bool, error) {
		it, err := cache.Get(key)
		if IsMiss(err) {
			return true, nil
		}
		if err != nil {
			c.CacheErr(ctx, observe.StepWrite, key, err)
			ok = c.Invalidate(ctx, key)
			return true, nil
		}
		k, ver, _, valid := OpenEnvelope(it.Flags, it.Value)
		if !valid || k == KindLease || (k == KindAbsent && ver == 0 && !deleted) {
			// A lease, or a read that found no row and cached that without
			// a version: the read may have come after a delete that
			// followed this write, or before this write's insert. Only a
			// fresh read can tell.
			ok = c.Invalidate(ctx, key)
			return true, nil
		}
		if Newer(ver, k == KindAbsent, version, deleted) {
			return true, nil
		}
		it.Value, it.Flags, it.Expiration = value, flags, exp
		err = cache.CompareAndSwap(it)
		switch {
		case err == nil, IsMiss(err), errors.Is(err, memcache.ErrNotStored):
			return true, nil // stored, or evicted meanwhile: nothing stale left
		case IsLost(err):
			c.CASConflict(ctx, key)
			return false, nil
		}
		c.CacheErr(ctx, observe.StepWrite, key, err)
		ok = c.Invalidate(ctx, key)
		return true, nil
	})
	if err != nil {
		c.CacheErr(ctx, observe.StepWrite, key, ErrRetriesExhausted)
		return c.Invalidate(ctx, key)
	}
	return ok
}

// Newer reports whether a cached state (version, deleted) is at least as new
// as an incoming one. A version number belongs to one row state; deleting it
// keeps the number (the tombstone carries the deleted row's version), so at
// equal versions a tombstone is newer than a value.
func Newer(cached int64, cachedDeleted bool, incoming int64, incomingDeleted bool) bool {
	if cached != incoming {
		return cached > incoming
	}
	return cachedDeleted || !incomingDeleted
}
