package protocol

import (
	"context"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// migrating is the optional interface of a Cache that moves between two
// rings of servers (memclient.Migration): Invalidating runs a change of
// keys with the deletes of those keys on the other ring that the phase calls
// for, and Fallback names the ring a miss may be answered from.
type migrating interface {
	Invalidating(keys []string, change func(primary *memclient.Client) error) error
	Fallback(key string) *memclient.Client
}

// onPrimary runs change, a change of keys' entries, on the core's cache
// (guarded by the breakers) or, in a migration, on the ring that is primary
// in the phase of this call (guarded too) together with the deletes of keys
// on the other ring that the phase calls for: there they are deleted,
// whatever they hold, since only the primary ring's entries are compared
// with the change. The phase is read once, so a phase switch during the
// call does not split it between two phases.
func (c *Core) onPrimary(keys []string, change func(cache Cache) error) error {
	if m, ok := c.raw.(migrating); ok {
		return m.Invalidating(keys, func(p *memclient.Client) error { return change(guarded{Cache: p, c: c}) })
	}
	return change(c.Cache)
}

// Fallback returns the cache a miss of key may be answered from (the old
// ring, in a migration's PhaseFallback), or nil.
func (c *Core) Fallback(key string) *memclient.Client {
	if m, ok := c.raw.(migrating); ok {
		return m.Fallback(key)
	}
	return nil
}

// FillFrom fills the lease l with the bytes of it as they are: an entry
// copied from the fallback ring, or a row read again for an early refresh.
// A fill that lost (a writer replaced or deleted the lease) leaves the key to
// that writer; a failed one is reported.
func (c *Core) FillFrom(ctx context.Context, l *memclient.Lease, it *memcache.Item, exp int32) {
	began := time.Now()
	err := l.Fill(it.Value, it.Flags, exp)
	c.record(l.Key(), err)
	switch {
	case err == nil:
		c.filled(ctx, l.Key(), began)
	case !IsLost(err):
		c.CacheErr(ctx, observe.StepFill, l.Key(), err)
	}
}
