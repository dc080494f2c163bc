package repo

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// core is the part of the cache protocol that does not depend on the row
// type: counters, hooks, expiry, and the lease operations. Store and Query
// embed it.
type core struct {
	cache Cache // guarded by br
	br    *breaker
	opt   Options
	stats counters

	// lost, if set, records a key whose deletion failed in the outbox, so
	// the Repairer deletes it later (Counter and Leaderboard, whose writes
	// do not record their keys as they commit).
	lost func(key string)

	// meta, if set, serves Store reads over memcached's meta protocol (see
	// CacheClient); handoff holds the leases its reads took, by key, for
	// the load that fills them.
	meta    *CacheClient
	handMu  sync.Mutex
	handoff map[string]*metaLease // guarded by handMu
}

func newCore(cache Cache, o Options) core {
	br := newBreaker(o.BreakerFailures, o.BreakerCooldown, func() error {
		_, err := retryRead(func() (*memcache.Item, error) { return cache.Get(o.Namespace + ":probe") }, nil)
		return err
	})
	return core{cache: guarded{Cache: cache, b: br}, br: br, opt: o}
}

// Stats are counters of what a Store did since it was created.
type Stats struct {
	Hits         uint64 // reads answered by the cache (rows and cached "not found")
	Misses       uint64 // keys not usable in the cache (absent, leased, corrupt)
	Fills        uint64 // values the store put in the cache after a database read
	DBReads      uint64 // database queries made to serve reads
	LeaseWaits   uint64 // polls made while another filler held a key's lease
	CASConflicts uint64 // compare-and-swap (or Add) attempts lost to a concurrent change
	CacheErrors  uint64 // cache steps that failed (also reported to Hooks.CacheError)

	// Aggregates (Counter, Leaderboard) only.
	Rebuilds uint64 // cached aggregates recomputed from the database after a miss
	Drops    uint64 // cached aggregates deleted because they could no longer be proven right
}

type counters struct {
	hits, misses, fills, dbReads, leaseWaits, casConflicts, cacheErrors atomic.Uint64
	rebuilds, drops                                                     atomic.Uint64
}

// Stats returns a snapshot of the store's counters.
func (s *core) Stats() Stats {
	c := &s.stats
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Fills: c.fills.Load(),
		DBReads: c.dbReads.Load(), LeaseWaits: c.leaseWaits.Load(),
		CASConflicts: c.casConflicts.Load(), CacheErrors: c.cacheErrors.Load(),
		Rebuilds: c.rebuilds.Load(), Drops: c.drops.Load()}
}

func (s *core) cacheErr(op, key string, err error) {
	s.stats.cacheErrors.Add(1)
	if h := s.opt.Hooks.CacheError; h != nil {
		h(op, key, err)
	}
}

func isMiss(err error) bool { return errors.Is(err, memcache.ErrCacheMiss) }

// expiry converts a TTL to memcached's relative seconds, shortened by jitter.
func (s *core) expiry(ttl time.Duration, jitter bool) int32 {
	if jitter && s.opt.Jitter > 0 {
		ttl -= time.Duration(rand.Float64() * s.opt.Jitter * float64(ttl))
	}
	sec := int64(ttl / time.Second)
	if sec < 1 {
		sec = 1
	}
	if sec > 30*24*3600 { // memcached reads larger values as absolute times
		sec = 30 * 24 * 3600
	}
	return int32(sec)
}

// isLost reports whether a conditional write (Add, CAS) lost to a concurrent
// change rather than failed.
func isLost(err error) bool {
	return errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrNotStored) || isMiss(err)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *core) leaseItem(key string, token uint64) *memcache.Item {
	b := beginEnvelope(make([]byte, 0, 16), 0)
	b = finishEnvelope(strconv.AppendUint(b, token, 36))
	return &memcache.Item{Key: key, Value: b, Flags: flagsOf(kindLease), Expiration: s.expiry(s.opt.LeaseTTL, false)}
}

func ownLease(it *memcache.Item, token uint64) bool {
	k, _, payload, ok := openEnvelope(it.Flags, it.Value)
	return ok && k == kindLease && string(payload) == strconv.FormatUint(token, 36)
}

// A lease is a key's lease held by this caller, taken by core.take.
type lease interface {
	// fill replaces the lease with value if it is still there and
	// unchanged, and otherwise settles the key as core.settle does: it
	// returns the value or "not found" someone else cached meanwhile,
	// which the caller must answer with, or nil.
	fill(value []byte, flags uint32, exp int32) *memcache.Item
	// release deletes the lease if it is still there and unchanged.
	release()
}

// tokenLease is a lease taken with the classic commands: an Add of a lease
// envelope holding a random token.
type tokenLease struct {
	s     *core
	key   string
	token uint64
}

func (l tokenLease) fill(value []byte, flags uint32, exp int32) *memcache.Item {
	return l.s.swapLease(l.key, l.token, value, flags, exp)
}

func (l tokenLease) release() { l.s.releaseLease(l.key, l.token) }

// swapLease replaces our lease on key with value, if it is still ours, and
// otherwise settles the key as settle does.
func (s *core) swapLease(key string, token uint64, value []byte, flags uint32, exp int32) *memcache.Item {
	it, err := s.cache.Get(key)
	if err != nil {
		if !isMiss(err) {
			s.cacheErr("fill", key, err)
		}
		return nil
	}
	return s.settle(key, token, it, value, flags, exp)
}

// settle ends a read that went to the database: it, read from the cache
// after that read (nil on a miss), is what the key holds now. If it is our
// lease (token, 0 for none), the read's value replaces it by CAS. If another
// reader or writer put a value or "not found" there, that is returned: the
// caller must answer with it, not with its own read, which may be ahead of
// what the cache shows (a write whose cache update has not run yet), and
// readers must never see the newer state and then the older one. If it is
// another reader's lease, that lease is deleted: its holder may have read
// before us, and its fill must not land after we answered.
func (s *core) settle(key string, token uint64, it *memcache.Item, value []byte, flags uint32, exp int32) *memcache.Item {
	for try := 0; it != nil; try++ {
		if token == 0 || !ownLease(it, token) {
			if k, _, _, ok := openEnvelope(it.Flags, it.Value); ok && k != kindLease {
				return it
			}
			s.invalidate(key)
			return nil
		}
		it.Value, it.Flags, it.Expiration = value, flags, exp
		err := s.cache.CompareAndSwap(it)
		switch {
		case err == nil:
			s.stats.fills.Add(1)
			return nil
		case !isLost(err):
			s.cacheErr("fill", key, err)
			return nil
		}
		s.stats.casConflicts.Add(1)
		if try == 2 {
			s.invalidate(key)
			return nil
		}
		if it, err = s.cache.Get(key); err != nil {
			if !isMiss(err) {
				s.cacheErr("fill", key, err)
			}
			return nil
		}
	}
	return nil
}

// metaFill adapts a *metaLease to lease: a fill that lost reads what the
// key holds instead.
type metaFill struct {
	s *core
	l *metaLease
}

func (m metaFill) fill(value []byte, flags uint32, exp int32) *memcache.Item {
	err := m.s.rec(m.l.fill(value, flags, exp))
	switch {
	case err == nil:
		m.s.stats.fills.Add(1)
		return nil
	case isMiss(err): // deleted by a write (or evicted): nothing to settle
		return nil
	case !isLost(err):
		m.s.cacheErr("fill", m.l.key, err)
		return nil
	}
	m.s.stats.casConflicts.Add(1)
	return m.s.swapLease(m.l.key, 0, nil, 0, 0)
}

func (m metaFill) release() { m.l.release() }

// rec reports the outcome of a meta request to the breaker.
func (s *core) rec(err error) error {
	s.br.record(err)
	return err
}

// metaGet reads key with the meta client, taking its lease on a miss (see
// CacheClient). It does not retry a connection that failed: the caller
// trips the breaker, so this store replays the outbox before it trusts the
// cache again (a cut connection may hide an outage during which writes
// could not update the cache), and the client has already dropped the
// connections that were cut with it.
func (s *core) metaGet(key string) (*memcache.Item, *metaLease, error) {
	it, l, err := s.meta.leaseGet(key, s.expiry(s.opt.LeaseTTL, false))
	return it, l, s.rec(err)
}

// get reads key: over the meta client if there is one, taking its lease on
// a miss (see metaGet), else through the guarded Cache.
func (s *core) get(key string) (*memcache.Item, *metaLease, error) {
	if s.meta != nil {
		it, l, err := s.metaGet(key)
		if !errors.Is(err, errNoMeta) {
			return it, l, err
		}
	}
	it, err := s.cache.Get(key)
	return it, nil, err
}

// getMulti reads keys as GetMulti does: over the meta client if there is
// one (a pipeline of mg requests, taking no leases), else through the
// guarded Cache. A failed meta read is not retried (see metaGet).
func (s *core) getMulti(keys []string) (map[string]*memcache.Item, error) {
	if s.meta != nil {
		items, err := s.meta.getMulti(keys)
		if !errors.Is(err, errNoMeta) {
			return items, s.rec(err)
		}
	}
	return s.cache.GetMulti(keys)
}

// take takes key's lease for a load, or returns what the key holds: an
// item (a value or someone else's lease), or nil for nothing (try again).
// poll means the last call found a lease, so the classic path reads before
// it tries an Add. A lease this process's Get took for key (handoff) is
// used first.
func (s *core) take(key string, poll bool) (lease, *memcache.Item, error) {
	if s.meta != nil {
		if l := s.handed(key, nil); l != nil {
			return metaFill{s, l}, nil, nil
		}
		it, l, err := s.metaGet(key)
		if l != nil {
			return metaFill{s, l}, nil, nil
		}
		if !errors.Is(err, errNoMeta) {
			return nil, it, err
		}
	}
	if !poll {
		token := newToken()
		err := s.cache.Add(s.leaseItem(key, token))
		if err == nil {
			return tokenLease{s, key, token}, nil, nil
		}
		if !errors.Is(err, memcache.ErrNotStored) {
			return nil, nil, err
		}
	}
	it, err := s.cache.Get(key)
	if isMiss(err) {
		return nil, nil, nil
	}
	return nil, it, err
}

// handOff passes the lease a Get took for key to whichever load of key runs
// in this process (the Get's own, or one already under way that would
// otherwise wait for that lease). done releases it if no load used it.
func (s *core) handOff(key string, l *metaLease) (done func()) {
	s.handMu.Lock()
	if s.handoff == nil {
		s.handoff = map[string]*metaLease{}
	}
	old := s.handoff[key]
	s.handoff[key] = l
	s.handMu.Unlock()
	if old != nil {
		old.release()
	}
	return func() {
		if s.handed(key, l) != nil {
			l.release()
		}
	}
}

// handed removes and returns the lease handed off for key, if any (and if
// it is want, when want is not nil).
func (s *core) handed(key string, want *metaLease) *metaLease {
	s.handMu.Lock()
	defer s.handMu.Unlock()
	l := s.handoff[key]
	if l == nil || (want != nil && l != want) {
		return nil
	}
	delete(s.handoff, key)
	return l
}

// newToken returns a lease token; 0 is never one.
func newToken() uint64 { return rand.Uint64() | 1 }

// releaseLease frees our lease early (a failed read, an oversize value) so
// waiters do not sit out LeaseTTL. A CAS to an already-expired item is a
// conditional delete: it removes the lease only if it is still ours.
func (s *core) releaseLease(key string, token uint64) {
	it, err := s.cache.Get(key)
	if err != nil || !ownLease(it, token) {
		return
	}
	it.Expiration = -1
	_ = s.cache.CompareAndSwap(it)
}

// invalidate deletes key, reporting failures other than a miss. It reports
// whether the key is gone.
func (s *core) invalidate(key string) bool {
	if err := s.cache.Delete(key); err != nil && !isMiss(err) {
		s.cacheErr("delete", key, err)
		if s.lost != nil {
			s.lost(key)
		}
		return false
	}
	return true
}

// recordLost returns a core.lost that inserts the key into the outbox table
// on db, reporting failures through the hooks.
func (s *core) recordLost(db DB, outbox string) func(key string) {
	sql := "INSERT INTO " + quoteIdent(outbox) + " (cache_key) VALUES ($1)"
	return func(key string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := db.Exec(ctx, sql, key); err != nil {
			s.cacheErr("outbox", key, err)
		}
	}
}
