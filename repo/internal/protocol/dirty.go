package protocol

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// maxDirty bounds the keys a Core remembers as dirty.
const maxDirty = 4096

// dirtyKeys are the keys this process failed to invalidate (a write-through
// or delete that did not reach memcached, as in a one-way partition where
// reads still do): until one of this process's own deletes of a key
// succeeds, it never serves that key from the cache. If more than maxDirty
// keys are dirty, the core overflows: it reads nothing from the cache until
// it has made every entry of its table unreachable (RepairAll, a write that
// must reach memcached, tried once per BreakerCooldown).
type dirtyKeys struct {
	n        atomic.Int32
	mu       sync.Mutex
	m        map[string]struct{} // guarded by mu
	overflow atomic.Bool
	next     atomic.Int64 // unix nanos of the next RepairAll attempt
}

// SetRepairAll sets what the core does when its dirty keys overflow: make
// every entry of its table unreachable (a Store's or aggregate's
// InvalidateAll). Without it, keys beyond maxDirty are not remembered.
func (c *Core) SetRepairAll(f func(context.Context) error) { c.repairAll = f }

// markDirty remembers key as dirty.
func (c *Core) markDirty(key string) {
	d := &c.dirty
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]struct{}{}
	}
	if _, ok := d.m[key]; ok {
		return
	}
	if len(d.m) >= c.dirtyCap {
		if c.repairAll != nil {
			d.overflow.Store(true)
		}
		return
	}
	d.m[key] = struct{}{}
	d.n.Add(1)
}

// Clean reports whether key may be read from the cache: it is not dirty, or
// this call's delete of it succeeded (then it is clean again). While the
// dirty keys overflow, no key is clean until RepairAll succeeds.
func (c *Core) Clean(ctx context.Context, key string) bool {
	d := &c.dirty
	if d.overflow.Load() && !c.repairOverflow(ctx) {
		return false
	}
	if d.n.Load() == 0 {
		return true
	}
	d.mu.Lock()
	_, dirty := d.m[key]
	d.mu.Unlock()
	if !dirty {
		return true
	}
	if err := c.Cache.Delete(key); err != nil && !IsMiss(err) {
		return false
	}
	d.mu.Lock()
	if _, ok := d.m[key]; ok {
		delete(d.m, key)
		d.n.Add(-1)
	}
	d.mu.Unlock()
	return true
}

// repairOverflow tries RepairAll, at most once per BreakerCooldown, and
// reports whether the overflow is over.
func (c *Core) repairOverflow(ctx context.Context) bool {
	d := &c.dirty
	now := time.Now().UnixNano()
	next := d.next.Load()
	if now < next || !d.next.CompareAndSwap(next, now+int64(c.Opt.BreakerCooldown)) {
		return false
	}
	if err := c.repairAll(ctx); err != nil {
		return false
	}
	d.mu.Lock()
	d.m = nil
	d.n.Store(0)
	d.overflow.Store(false)
	d.mu.Unlock()
	return true
}

// ForgetDirty turns the record of dirty keys off: the core serves keys it
// failed to invalidate. Only tests call it, as the control of the one-way
// partition checker.
func (c *Core) ForgetDirty() {
	c.dirtyCap = 0
	c.repairAll = nil
}
