package protocol

import (
	"context"
	"errors"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
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
	return c.onPrimary([]string{key}, func(cache Cache) error { return c.deleteOlder(ctx, cache, key, version) })
}

// deleteOlder is DeleteOlder on cache (the core's Cache, or in a migration
// its primary ring's, guarded).
func (c *Core) deleteOlder(ctx context.Context, cache Cache, key string, version int64) error {
	if version <= 0 {
		if err := cache.Delete(key); err != nil && !IsMiss(err) {
			return err
		}
		return nil
	}
	var failed error
	err := c.Retry(context.WithoutCancel(ctx), false, func() (bool, error) {
		it, err := cache.Get(key)
		if IsMiss(err) {
			return true, nil
		}
		if err != nil {
			return true, err
		}
		if current(it, version) {
			return true, nil
		}
		it.Expiration = -1 // a CAS that expires the item at once: a conditional delete
		err = cache.CompareAndSwap(it)
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
		if err := cache.Delete(key); err != nil && !IsMiss(err) {
			return err
		}
		return nil
	}
	if failed != nil {
		return failed
	}
	return err
}

// current reports whether it caches a state as new as a change of row
// version version, or newer: a row or tombstone of that version or later (not
// a lease, not a "not found" without a version, not corrupt bytes).
func current(it *memcache.Item, version int64) bool {
	k, ver, _, ok := OpenEnvelope(it.Flags, it.Value)
	return ok && k != KindLease && ver >= version && !(k == KindAbsent && ver == 0)
}

// pipeliner is the optional interface of a Cache that sends many
// conditional deletes in one pipeline per server (memclient.Client).
type pipeliner interface {
	DeleteIfUnchanged(items []*memcache.Item) (changed []string, err error)
}

// DeleteOlderMany is DeleteOlder for many keys (versions[i] for keys[i];
// a key listed twice should be listed once, with the newest version, or 0
// if any change of it was a delete). Over a pipelining cache it costs two
// round trips per server for all of them, a read and the deletes, plus one
// DeleteOlder for each key that changed between the two; elsewhere one
// DeleteOlder per key.
func (c *Core) DeleteOlderMany(ctx context.Context, keys []string, versions []int64) error {
	return c.onPrimary(keys, func(cache Cache) error { return c.deleteOlderMany(ctx, cache, keys, versions) })
}

func (c *Core) deleteOlderMany(ctx context.Context, cache Cache, keys []string, versions []int64) error {
	p, ok := cache.(guarded).Cache.(pipeliner)
	if !ok || len(keys) < 2 {
		for i, k := range keys {
			if err := c.deleteOlder(ctx, cache, k, versions[i]); err != nil {
				return err
			}
		}
		return nil
	}
	items, err := cache.(guarded).Cache.GetMulti(keys)
	c.recordMany(keys, err)
	if err != nil {
		return err
	}
	var doomed []*memcache.Item
	for i, k := range keys {
		it := items[k]
		if it == nil {
			continue
		}
		if versions[i] > 0 && current(it, versions[i]) {
			continue
		}
		doomed = append(doomed, it)
	}
	if len(doomed) == 0 {
		return nil
	}
	changed, err := p.DeleteIfUnchanged(doomed)
	if err != nil {
		dk := make([]string, len(doomed))
		for i, it := range doomed {
			dk[i] = it.Key
		}
		c.recordMany(dk, err)
	}
	if errors.Is(err, memclient.ErrNoMeta) {
		changed, err = nil, nil
		for _, it := range doomed {
			changed = append(changed, it.Key)
		}
	}
	if err != nil {
		return err
	}
	if len(changed) == 0 {
		return nil
	}
	version := make(map[string]int64, len(keys))
	for i, k := range keys {
		version[k] = versions[i]
	}
	for _, k := range changed { // written meanwhile: look again, one by one
		c.CASConflict(ctx, k)
		if err := c.deleteOlder(ctx, cache, k, version[k]); err != nil {
			return err
		}
	}
	return nil
}
