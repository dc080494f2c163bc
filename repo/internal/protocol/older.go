package protocol

import (
	"context"
	"errors"

	"github.com/bradfitz/gomemcache/memcache"
)

// DeleteOlder removes what key caches if it is older than a committed change
// of row version version (version 0: unknown, remove it whatever it is). A
// cached row or tombstone of that version or newer is kept; anything else (an
// older row, a lease whose filler may have read before the change, a "not
// found" without a version, corrupt bytes) is deleted, by CAS so that a
// newer value written meanwhile is never removed by mistake. It returns an
// error only when the cache could not be reached (the caller must retry: the
// change has not reached the cache).
func (c *Core) DeleteOlder(ctx context.Context, key string, version int64) error {
	if version <= 0 {
		if err := c.Cache.Delete(key); err != nil && !IsMiss(err) {
			return err
		}
		return nil
	}
	var failed error
	err := c.Retry(context.WithoutCancel(ctx), false, func() (bool, error) {
		it, err := c.Cache.Get(key)
		if IsMiss(err) {
			return true, nil
		}
		if err != nil {
			return true, err
		}
		k, ver, _, ok := OpenEnvelope(it.Flags, it.Value)
		if ok && k != KindLease && ver >= version && !(k == KindAbsent && ver == 0) {
			return true, nil // as new as the change, or newer
		}
		it.Expiration = -1 // a CAS that expires the item at once: a conditional delete
		err = c.Cache.CompareAndSwap(it)
		switch {
		case err == nil, IsMiss(err), errors.Is(err, memcache.ErrNotStored):
			return true, nil
		case IsLost(err):
			c.CASConflict(ctx, key) // changed meanwhile: look again
			return false, nil
		}
		failed = err
		return true, err
	})
	if errors.Is(err, ErrRetriesExhausted) {
		// Changing under us all the time: delete it outright.
		if err := c.Cache.Delete(key); err != nil && !IsMiss(err) {
			return err
		}
		return nil
	}
	if failed != nil {
		return failed
	}
	return err
}
