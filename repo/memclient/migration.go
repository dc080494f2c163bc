package memclient

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// Phase is a step of a Migration from an old server list (ring A) to a new
// one (ring B): adding or removing a node, or moving a whole pool to new
// servers. A rollout changes app instances one at a time, so instances in
// two adjacent phases run side by side, and every pair of adjacent phases is
// safe together; skipping a phase is not (see Migration).
type Phase int32

// The phases, in the order a migration takes them.
const (
	// PhaseOld reads and writes A only: before the migration.
	PhaseOld Phase = iota + 1
	// PhaseWriteBoth reads A; every change also deletes the key on its B
	// owner (after A's step). Safe next to PhaseOld: every read is from A,
	// which every writer updates.
	PhaseWriteBoth
	// PhaseFallback reads B, and a miss on B whose lease this reader took
	// is answered from A, copied to B through that lease (pymemcache's
	// FallbackClient, with no stale set); changes delete the key on A first,
	// then update B. Safe next to PhaseWriteBoth: writers of both phases
	// reach both owners, A before B, so a copy from A either sees the change
	// or loses its lease to it. Pre-warm (Prewarm) runs in this phase or in
	// PhaseWriteBoth.
	PhaseFallback
	// PhaseNewReads reads B only; changes still reach A first, then B. Safe
	// next to PhaseFallback: both write both, so the A its readers fall
	// back to stays current.
	PhaseNewReads
	// PhaseNew reads and writes B only. Safe next to PhaseNewReads: neither
	// reads A. Then A is retired.
	PhaseNew
)

var phaseNames = [...]string{PhaseOld: "old", PhaseWriteBoth: "write-both", PhaseFallback: "fallback", PhaseNewReads: "new-reads", PhaseNew: "new"}

// String returns the phase's name: old, write-both, fallback, new-reads,
// new.
func (p Phase) String() string {
	if p < PhaseOld || p > PhaseNew {
		return fmt.Sprintf("Phase(%d)", int32(p))
	}
	return phaseNames[p]
}

// ParsePhase returns the phase named s (as Phase.String names it).
func ParsePhase(s string) (Phase, error) {
	for p := PhaseOld; p <= PhaseNew; p++ {
		if strings.EqualFold(s, phaseNames[p]) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("memclient: unknown migration phase %q (want old, write-both, fallback, new-reads or new)", s)
}

// Migration is a Cache over two rings of servers, old (A) and new (B), in
// one Phase at a time. Used as a Cache it is its primary ring (A in
// PhaseOld and PhaseWriteBoth, B after): reads, leases, adds and CAS go
// there. Every change of a key (Set, Add, CompareAndSwap, Increment,
// Delete, DeleteIfUnchanged, AddMulti, CompareAndSwapMulti) also deletes the
// key on its owner in the other ring in the phases that write both (the
// multi-key ones in one pipeline per server), A before B: a delete is always safe,
// and the order is what makes PhaseWriteBoth and PhaseFallback safe
// together. Where a key has the same server in both rings (most keys, when
// a node is added or removed) that server is reached once. Over a
// Migration, the cache protocol (repo.Store) also answers a PhaseFallback
// miss from A (Fallback), copying the entry to B through B's lease.
//
// To migrate: build the new ring's Client, deploy every instance with a
// Migration in PhaseWriteBoth; once all run it, Sweep (required: B's
// servers may hold entries from an earlier list) and optionally Prewarm
// from A to B; then PhaseFallback, PhaseNewReads and PhaseNew, each only
// after every instance runs the previous one; then use B's Client alone. A
// Migration is safe for concurrent use; SetPhase may be called at any time.
type Migration struct {
	old, new *Client
	phase    atomic.Int32
}

// NewMigration returns a Migration from old to new in phase p.
func NewMigration(old, new *Client, p Phase) (*Migration, error) {
	if old == nil || new == nil {
		return nil, errors.New("memclient: a migration needs both the old and the new client")
	}
	m := &Migration{old: old, new: new}
	return m, m.SetPhase(p)
}

// Phase returns the current phase.
func (m *Migration) Phase() Phase { return Phase(m.phase.Load()) }

// SetPhase moves the migration to phase p. Move one phase at a time, and
// only once every instance runs the previous one.
func (m *Migration) SetPhase(p Phase) error {
	if p < PhaseOld || p > PhaseNew {
		return fmt.Errorf("memclient: unknown migration phase %d", int32(p))
	}
	m.phase.Store(int32(p))
	return nil
}

// Old returns the old ring's client (A).
func (m *Migration) Old() *Client { return m.old }

// New returns the new ring's client (B).
func (m *Migration) New() *Client { return m.new }

// primary returns the ring that reads (and leases, adds, CAS) use.
func (m *Migration) primary() *Client {
	if m.Phase() <= PhaseWriteBoth {
		return m.old
	}
	return m.new
}

// Fallback returns, in PhaseFallback, the old client when key lives on
// another server there than in the new ring (a miss on B may then be a hit
// on A); else nil.
func (m *Migration) Fallback(key string) *Client {
	if m.Phase() != PhaseFallback || sameServer(m.old, m.new, key) {
		return nil
	}
	return m.old
}

// Invalidating runs change, a change of keys on the primary ring (which it
// is given: the phase is read once per call), together
// with the deletes of keys on their owners in the other ring that its phase
// calls for: A's before B's. A key whose owner is the same server in both
// rings is not deleted (change reaches it). Every step runs even if one
// before it failed (a change that failed to reach one ring must still
// reach the other); the error is change's, or else the first failed
// delete's (a miss is not a failure).
func (m *Migration) Invalidating(keys []string, change func(primary *Client) error) error {
	phase := m.Phase() // once: a switch meanwhile must not split the change between two phases
	primary, before, after := m.old, (*Client)(nil), (*Client)(nil)
	switch phase {
	case PhaseWriteBoth:
		after = m.new
	case PhaseFallback, PhaseNewReads:
		primary, before = m.new, m.old
	case PhaseNew:
		primary = m.new
	}
	var errBefore, errAfter error
	if before != nil {
		errBefore = m.deleteOther(before, keys)
	}
	err := change(primary)
	if after != nil {
		errAfter = m.deleteOther(after, keys)
	}
	if err != nil {
		return err
	}
	if errBefore != nil {
		return errBefore
	}
	return errAfter
}

// deleteOther deletes keys on other, except those whose server is the same
// in both rings.
func (m *Migration) deleteOther(other *Client, keys []string) error {
	moved := make([]string, 0, len(keys))
	for _, k := range keys {
		if !sameServer(m.old, m.new, k) {
			moved = append(moved, k)
		}
	}
	if len(moved) > 1 { // one pipeline per server
		if err := other.DeleteMulti(moved); !errors.Is(err, ErrNoMeta) {
			return err
		}
	}
	var errs []error
	for _, k := range moved {
		if err := other.Delete(k); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// sameServer reports whether key lives on the same server in a and b.
func sameServer(a, b *Client, key string) bool {
	x, err1 := a.Server(key)
	y, err2 := b.Server(key)
	return err1 == nil && err2 == nil && x.Network() == y.Network() && x.String() == y.String()
}

func (m *Migration) one(key string, change func(*Client) error) error {
	return m.Invalidating([]string{key}, change)
}

// Get reads key from the primary ring.
func (m *Migration) Get(key string) (*memcache.Item, error) { return m.primary().Get(key) }

// GetMulti reads keys from the primary ring.
func (m *Migration) GetMulti(keys []string) (map[string]*memcache.Item, error) {
	return m.primary().GetMulti(keys)
}

// LeaseGet reads key from the primary ring, taking its lease on a miss
// (Client.LeaseGet).
func (m *Migration) LeaseGet(key string, ttl int32) (*memcache.Item, *Lease, error) {
	return m.primary().LeaseGet(key, ttl)
}

// LeaseGetEarly reads key from the primary ring, taking its lease on a miss
// or, near the end of a hit's TTL, its refresh (Client.LeaseGetEarly).
func (m *Migration) LeaseGetEarly(key string, ttl, early int32) (*memcache.Item, *Lease, error) {
	return m.primary().LeaseGetEarly(key, ttl, early)
}

// Server returns the address of key's server in the primary ring.
func (m *Migration) Server(key string) (net.Addr, error) { return m.primary().Server(key) }

// Timeout returns the primary ring's bound on each round trip.
func (m *Migration) Timeout() time.Duration { return m.primary().Timeout() }

// Add adds it on the primary ring, deleting its key on the other (see
// Migration).
func (m *Migration) Add(it *memcache.Item) error {
	return m.one(it.Key, func(c *Client) error { return c.Add(it) })
}

// AddMulti is Add for each of items (Client.AddMulti): the deletes on the
// other ring and the adds on the primary each leave as one pipeline per
// server. If a delete failed, outs is nil and err says why: the caller
// cannot tell which keys the other ring may still hold.
func (m *Migration) AddMulti(items []*memcache.Item) (outs []error, err error) {
	return m.storeMulti(items, (*Client).AddMulti)
}

// CompareAndSwapMulti is CompareAndSwap for each of items
// (Client.CompareAndSwapMulti), pipelined as AddMulti is.
func (m *Migration) CompareAndSwapMulti(items []*memcache.Item) (outs []error, err error) {
	return m.storeMulti(items, (*Client).CompareAndSwapMulti)
}

func (m *Migration) storeMulti(items []*memcache.Item, store func(*Client, []*memcache.Item) ([]error, error)) (outs []error, err error) {
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.Key
	}
	var storeErr error
	err = m.Invalidating(keys, func(c *Client) error {
		outs, storeErr = store(c, items)
		return storeErr
	})
	if err != nil && err != storeErr {
		return nil, err // a delete on the other ring failed
	}
	return outs, err
}

// Set sets it on the primary ring, deleting its key on the other.
func (m *Migration) Set(it *memcache.Item) error {
	return m.one(it.Key, func(c *Client) error { return c.Set(it) })
}

// CompareAndSwap swaps it on the primary ring, deleting its key on the
// other.
func (m *Migration) CompareAndSwap(it *memcache.Item) error {
	return m.one(it.Key, func(c *Client) error { return c.CompareAndSwap(it) })
}

// Delete deletes key on both rings' owners, in the order of the phase.
func (m *Migration) Delete(key string) error {
	return m.one(key, func(c *Client) error { return c.Delete(key) })
}

// Increment increments key on the primary ring, deleting it on the other.
func (m *Migration) Increment(key string, delta uint64) (n uint64, err error) {
	err = m.one(key, func(c *Client) error {
		n, err = c.Increment(key, delta)
		return err
	})
	return n, err
}

// DeleteIfUnchanged deletes the items' keys on the primary ring if they
// still hold them (Client.DeleteIfUnchanged), and on the other ring
// unconditionally.
func (m *Migration) DeleteIfUnchanged(items []*memcache.Item) (changed []string, err error) {
	keys := make([]string, len(items))
	for i, it := range items {
		keys[i] = it.Key
	}
	err = m.Invalidating(keys, func(p *Client) error {
		changed, err = p.DeleteIfUnchanged(items)
		return err
	})
	return changed, err
}

// Sweep deletes from the new ring every entry of a moving key (one whose
// new server is not its old one) that keys with prefix ("" for all), and
// returns how many it deleted. Such entries are left from an earlier
// server list in which that server held the key (a node removed and added
// back, a key that moved away and back): nobody kept them current, and in
// PhaseFallback they would be read. Run it once every instance is in
// PhaseWriteBoth (from then on nothing but Prewarm puts entries of moving
// keys on the new ring) and before any enters PhaseFallback; Prewarm
// afterwards, if at all.
func (m *Migration) Sweep(ctx context.Context, prefix string) (deleted int, err error) {
	var stale []string
	err = m.new.sel.Each(func(addr net.Addr) error {
		return m.new.Keys(ctx, addr.String(), func(key string, _ int64) error {
			if !strings.HasPrefix(key, prefix) {
				return nil
			}
			at, err := m.new.Server(key)
			if err == nil && at.String() == addr.String() && !sameServer(m.old, m.new, key) {
				stale = append(stale, key)
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("memclient: sweep: %w", err)
	}
	for _, k := range stale {
		if err := ctx.Err(); err != nil {
			return deleted, err
		}
		switch err := m.new.Delete(k); {
		case err == nil:
			deleted++
		case !errors.Is(err, memcache.ErrCacheMiss):
			return deleted, fmt.Errorf("memclient: sweep: %w", err)
		}
	}
	return deleted, nil
}
