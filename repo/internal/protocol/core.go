package protocol

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/singleflight"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Cache is the memcached client the protocol calls.
type Cache = memclient.Cache

// leaseReader is the optional interface of a Cache whose reads can take a
// key's lease when they miss (memclient.Client's meta protocol). The
// protocol detects it, as pgx detects optional tracer interfaces.
type leaseReader interface {
	LeaseGet(key string, ttl int32) (*memcache.Item, *memclient.Lease, error)
}

// earlyReader is the optional interface of a Cache whose lease-taking reads
// can also win the early refresh of a hit close to expiry (memclient's
// LeaseGetEarly).
type earlyReader interface {
	LeaseGetEarly(key string, ttl, early int32) (*memcache.Item, *memclient.Lease, error)
}

// Execer is the part of a database handle that records lost keys.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Recovery replays what writes could not do to the cache while it failed
// (the outbox). Replay asks for a replay of everything recorded so far; the
// channel receives its outcome once. It must not block.
type Recovery interface {
	Replay() <-chan error
}

// Core is the part of the cache protocol that does not depend on the row
// type: the breaker-guarded cache, stats, events, expiry, leases, fills,
// versioned writes and the CAS loop. A Store, Query, Counter or Leaderboard
// owns one. Safe for concurrent use.
type Core struct {
	Cache Cache // every call reports to the breaker
	Opt   Config

	raw   Cache // Cache without the breaker
	Stats Counters

	br       *breaker     // the breaker of a cache that cannot place keys
	nodes    *nodes       // the breakers per server of one that can
	open     atomic.Int32 // breakers open now
	failing  atomic.Int32 // breakers with failures counted
	rec      Recovery     // may be nil
	meta     leaseReader  // nil if the cache cannot take leases in reads
	early    earlyReader  // nil if it cannot win early refreshes, or none is configured
	observed bool         // some hook is set

	// lost, if set, records a key whose deletion failed in the outbox, so
	// the Repairer deletes it later (Counter and Leaderboard, whose writes
	// do not record their keys as they commit).
	lost func(ctx context.Context, key string)

	// handoff holds the leases reads took, by key, for the load that
	// fills them.
	handMu  sync.Mutex
	handoff map[string]*memclient.Lease // guarded by handMu

	group singleflight.Group

	dirty     dirtyKeys
	dirtyCap  int // maxDirty; tests lower it
	repairAll func(context.Context) error
}

// Counters are the live counters behind observe.Stats.
type Counters struct {
	Hits, Misses, Fills, DBReads, LeaseWaits, CASConflicts, CacheErrors atomic.Uint64
	Rebuilds, Drops                                                     atomic.Uint64
}

// New returns a Core over cache with the configuration cfg (defaults
// applied). rec, if not nil, must have replayed the outbox before the
// breaker closes again.
func New(cache Cache, cfg Config, rec Recovery) *Core {
	c := &Core{Opt: cfg.WithDefaults(), dirtyCap: maxDirty, rec: rec, raw: cache}
	h := &c.Opt.Hooks
	c.observed = h.Event != nil || h.OpStart != nil || h.OpEnd != nil
	c.br = c.newBreaker(c.Opt.Namespace + ":probe")
	if s, ok := cache.(serverOf); ok {
		c.nodes = &nodes{of: s}
	}
	c.Cache = guarded{Cache: cache, c: c}
	if m, ok := cache.(leaseReader); ok {
		c.meta = m
	}
	if e, ok := cache.(earlyReader); ok && c.Opt.EarlyRefresh > 0 {
		c.early = e
	}
	return c
}

// RecordLost makes the core record keys whose deletion failed in the outbox
// table (quoted) on db, so the Repairer deletes them later.
func (c *Core) RecordLost(db Execer, outboxIdent string) {
	sql := "INSERT INTO " + outboxIdent + " (cache_key) VALUES ($1)"
	c.lost = func(ctx context.Context, key string) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := db.Exec(ctx, sql, key); err != nil {
			c.CacheErr(ctx, observe.StepOutbox, key, err)
		}
	}
}

// Snapshot returns the counters' current values.
func (c *Core) Snapshot() observe.Stats {
	s := &c.Stats
	return observe.Stats{Hits: s.Hits.Load(), Misses: s.Misses.Load(), Fills: s.Fills.Load(),
		DBReads: s.DBReads.Load(), LeaseWaits: s.LeaseWaits.Load(),
		CASConflicts: s.CASConflicts.Load(), CacheErrors: s.CacheErrors.Load(),
		Rebuilds: s.Rebuilds.Load(), Drops: s.Drops.Load()}
}

// opKey is the context key under which Begin records the operation.
type opKey struct{}

// Begin starts operation op: it calls Hooks.OpStart and returns the context
// to use and a function to call with the operation's error when it ends
// (which calls Hooks.OpEnd). Without hooks it costs nothing.
func (c *Core) Begin(ctx context.Context, op observe.Op) (context.Context, func(error)) {
	if !c.observed {
		return ctx, noEnd
	}
	return c.begin(ctx, op)
}

func (c *Core) begin(ctx context.Context, op observe.Op) (context.Context, func(error)) {
	h := &c.Opt.Hooks
	if h.Event != nil {
		ctx = context.WithValue(ctx, opKey{}, op)
	}
	if h.OpStart != nil {
		ctx = h.OpStart(ctx, op, c.Opt.Name)
	}
	if h.OpEnd == nil {
		return ctx, func(error) {}
	}
	start := time.Now()
	return ctx, func(err error) { h.OpEnd(ctx, op, c.Opt.Name, time.Since(start), err) }
}

func noEnd(error) {}

// Emit sends e to Hooks.Event, if set, filling in the table and operation.
func (c *Core) Emit(ctx context.Context, e observe.Event) {
	if h := c.Opt.Hooks.Event; h != nil {
		e.Table = c.Opt.Name
		if e.Op == "" {
			e.Op, _ = ctx.Value(opKey{}).(observe.Op)
		}
		h(ctx, e)
	}
}

// Hit counts a read the cache answered.
func (c *Core) Hit(ctx context.Context, key string) {
	c.Stats.Hits.Add(1)
	if c.Opt.Hooks.Event != nil {
		c.emitKey(ctx, observe.Hit, key)
	}
}

// Miss counts a key that held nothing usable.
func (c *Core) Miss(ctx context.Context, key string) {
	c.Stats.Misses.Add(1)
	if c.Opt.Hooks.Event != nil {
		c.emitKey(ctx, observe.Miss, key)
	}
}

// DBRead counts a database query made to serve a read.
func (c *Core) DBRead() { c.Stats.DBReads.Add(1) }

// CASConflict counts a conditional write lost to a concurrent change.
func (c *Core) CASConflict(ctx context.Context, key string) {
	c.Stats.CASConflicts.Add(1)
	if c.Opt.Hooks.Event != nil {
		c.emitKey(ctx, observe.CASConflict, key)
	}
}

// CacheErr reports a cache step that failed while the operation went on.
func (c *Core) CacheErr(ctx context.Context, step observe.Step, key string, err error) {
	c.Stats.CacheErrors.Add(1)
	if c.Opt.Hooks.Event != nil {
		c.Emit(ctx, observe.Event{Kind: observe.CacheError, Step: step, Key: key, Err: err})
	}
}

// emitKey is Emit of an event of kind about key, out of line so that the
// callers above stay inlinable.
//
//go:noinline
func (c *Core) emitKey(ctx context.Context, kind observe.Kind, key string) {
	c.Emit(ctx, observe.Event{Kind: kind, Key: key})
}

func (c *Core) breakerEvent(open bool, err error) {
	k := observe.BreakerClose
	if open {
		k = observe.BreakerOpen
		c.open.Add(1)
	} else {
		c.open.Add(-1)
	}
	c.Emit(context.Background(), observe.Event{Kind: k, Err: err})
}

// AllowRead reports whether a read of key may use the cache now (see
// breaker; over a fleet, the breaker of key's server).
func (c *Core) AllowRead(key string) bool { return c.settled() || c.breakerOf(key).allowRead() }

// Trip opens the breaker of key's server at once: a read of key gave up on
// the cache after err.
func (c *Core) Trip(key string, err error) { c.breakerOf(key).trip(err) }

// Closed reports whether the breaker of key's server is closed (reads use
// the cache).
func (c *Core) Closed(key string) bool { return c.settled() || !c.breakerOf(key).open.Load() }

// Cheap reports whether a cache request for key costs little now (its
// breaker is closed, or it opened on a fast failure rather than a timeout).
func (c *Core) Cheap(key string) bool { return c.settled() || c.breakerOf(key).cheap() }

// IsMiss reports whether err is memcached's "not found".
func IsMiss(err error) bool { return errors.Is(err, memcache.ErrCacheMiss) }

// IsLost reports whether a conditional write (Add, CAS) lost to a concurrent
// change rather than failed.
func IsLost(err error) bool {
	return errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrNotStored) || IsMiss(err)
}

// Expiry converts a TTL to memcached's expiration, shortened by up to
// Jitter of it. Up to 30 days that is relative seconds (at least 1);
// beyond, memcached reads the number as an absolute Unix time, so a longer
// TTL is sent as one (memcached's clock is taken to be ours).
func (c *Core) Expiry(ttl time.Duration, jitter bool) int32 {
	if jitter && c.Opt.Jitter > 0 {
		ttl -= time.Duration(rand.Float64() * c.Opt.Jitter * float64(ttl))
	}
	if ttl > MaxRelativeTTL {
		return int32(min(time.Now().Add(ttl).Unix(), math.MaxInt32))
	}
	return int32(max(int64(ttl/time.Second), 1))
}

// Sleep waits d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Invalidate deletes key, reporting failures other than a miss (and
// recording the key in the outbox, where the core does that, and as dirty:
// see Clean). It reports whether the key is gone.
func (c *Core) Invalidate(ctx context.Context, key string) bool {
	if err := c.Cache.Delete(key); err != nil && !IsMiss(err) {
		c.notInvalidated(ctx, observe.StepDelete, key, err)
		return false
	}
	return true
}

// notInvalidated reports that step failed to invalidate key with err, and
// remembers the key as dirty (see Clean) and, where the core does that, in
// the outbox.
func (c *Core) notInvalidated(ctx context.Context, step observe.Step, key string, err error) {
	c.CacheErr(ctx, step, key, err)
	c.markDirty(key)
	if c.lost != nil {
		c.lost(ctx, key)
	}
}

// Get reads key: over a lease-taking cache, taking the key's lease on a miss
// (the returned *memclient.Lease, which the caller must hand to a load with
// HandOff); else with a plain get. With EarlyRefresh, a hit may come with a
// refresh lease (Lease.Refresh): the caller answers with the item and may
// refresh it through the lease (see Store's refresh). A lease-taking read that fails is not
// retried: the caller trips the breaker, so the outbox is replayed before the
// cache is trusted again (a cut connection may hide an outage during which
// writes could not update the cache), and the client has already dropped the
// connections cut with it.
func (c *Core) Get(key string) (*memcache.Item, *memclient.Lease, error) {
	if c.meta != nil {
		it, l, err := c.metaGet(key, true)
		if !errors.Is(err, memclient.ErrNoMeta) {
			return it, l, err
		}
	}
	it, err := c.Cache.Get(key)
	return it, nil, err
}

// metaGet is Get's lease-taking read; early asks for the early refresh too
// (with EarlyRefresh), for a caller that will make it if it wins.
func (c *Core) metaGet(key string, early bool) (it *memcache.Item, l *memclient.Lease, err error) {
	if early && c.early != nil {
		it, l, err = c.early.LeaseGetEarly(key, c.Expiry(c.Opt.LeaseTTL, false), int32(c.Opt.EarlyRefresh/time.Second))
	} else {
		it, l, err = c.meta.LeaseGet(key, c.Expiry(c.Opt.LeaseTTL, false))
	}
	c.record(key, err)
	return it, l, err
}

// GetMulti reads keys as GetMulti does. Over a lease-taking cache (whose
// GetMulti is one pipeline per server) a failure is not retried, as in Get.
func (c *Core) GetMulti(keys []string) (map[string]*memcache.Item, error) {
	if c.meta != nil {
		items, err := c.raw.GetMulti(keys)
		c.recordMany(keys, err)
		return items, err
	}
	return c.Cache.GetMulti(keys)
}

// HandOff passes the lease a Get took for key to whichever load of key runs
// in this process (the Get's own, or one already under way that would
// otherwise wait for that lease). done releases it if no load used it.
func (c *Core) HandOff(key string, l *memclient.Lease) (done func()) {
	c.handMu.Lock()
	if c.handoff == nil {
		c.handoff = map[string]*memclient.Lease{}
	}
	old := c.handoff[key]
	c.handoff[key] = l
	c.handMu.Unlock()
	if old != nil {
		old.Release()
	}
	return func() {
		if c.handed(key, l) != nil {
			l.Release()
		}
	}
}

// handed removes and returns the lease handed off for key, if any (and if
// it is want, when want is not nil).
func (c *Core) handed(key string, want *memclient.Lease) *memclient.Lease {
	c.handMu.Lock()
	defer c.handMu.Unlock()
	l := c.handoff[key]
	if l == nil || (want != nil && l != want) {
		return nil
	}
	delete(c.handoff, key)
	return l
}

// Share runs load once for concurrent callers of key in this process. A
// caller whose ctx ends stops waiting; the shared load goes on for the
// others, bounded by LeaseTTL and not cancelled with the caller that started
// it. If fresh is not nil, a caller only takes a result for which fresh
// reports true, given the time the caller began; otherwise it takes the
// next load (fresh must then hold for a load that began after the call).
func (c *Core) Share(ctx context.Context, key string, load func(ctx context.Context) (any, error), fresh func(r any, called time.Time) bool) (any, error) {
	called := time.Now()
	for {
		ch := c.group.DoChan(key, func() (any, error) {
			lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.Opt.LeaseTTL)
			defer cancel()
			return load(lctx)
		})
		select {
		case r := <-ch:
			if r.Err == nil && fresh != nil && !fresh(r.Val, called) {
				continue
			}
			return r.Val, r.Err
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// newToken returns a lease token; 0 is never one.
func newToken() uint64 { return rand.Uint64() | 1 }

func (c *Core) leaseItem(key string, token uint64) *memcache.Item {
	b := BeginEnvelope(make([]byte, 0, 16), 0)
	b = FinishEnvelope(strconv.AppendUint(b, token, 36))
	return &memcache.Item{Key: key, Value: b, Flags: FlagsOf(KindLease), Expiration: c.Expiry(c.Opt.LeaseTTL, false)}
}

func ownLease(it *memcache.Item, token uint64) bool {
	k, _, payload, ok := OpenEnvelope(it.Flags, it.Value)
	return ok && k == KindLease && string(payload) == strconv.FormatUint(token, 36)
}

// ReadLeased is Read with the lease-taking read of Get, for a Query: a
// miss takes the key's lease in its read (l, which the caller must hand to
// its load with HandOff), and with EarlyRefresh a hit close to expiry may
// come with its refresh lease (l.Refresh(): the caller may refresh the
// value through it, as Store does). Over other caches l is nil.
func (c *Core) ReadLeased(ctx context.Context, key string, open func(*memcache.Item) (any, bool)) (v any, hit, ok bool, l *memclient.Lease) {
	if !c.AllowRead(key) || !c.Clean(ctx, key) {
		return nil, false, false, nil
	}
	it, l, err := c.Get(key)
	if l != nil && !l.Refresh() { // a miss, and the lease is ours
		c.Miss(ctx, key)
		return nil, false, true, l
	}
	v, hit, ok = c.answer(ctx, key, it, err, open)
	if !hit && l != nil {
		l.Release()
		l = nil
	}
	return v, hit, ok, l
}

// Read reads key for a Query or an aggregate, with open decoding a value:
// on a hit it returns the value and true. Otherwise ok tells a miss (true:
// nothing usable, corrupt bytes deleted and reported, a lease left alone;
// load under the lease) from a cache that cannot be used (false: the breaker
// is open, or the read failed and tripped it; read the database).
func (c *Core) Read(ctx context.Context, key string, open func(*memcache.Item) (any, bool)) (v any, hit, ok bool) {
	if !c.AllowRead(key) || !c.Clean(ctx, key) {
		return nil, false, false
	}
	it, err := c.Cache.Get(key)
	return c.answer(ctx, key, it, err, open)
}

// answer turns a read of key (it, err) into Read's results.
func (c *Core) answer(ctx context.Context, key string, it *memcache.Item, err error, open func(*memcache.Item) (any, bool)) (v any, hit, ok bool) {
	switch {
	case err == nil:
		if v, found := open(it); found {
			c.Hit(ctx, key)
			return v, true, true
		}
		if k, _, _, valid := OpenEnvelope(it.Flags, it.Value); !valid || k != KindLease {
			c.CacheErr(ctx, observe.StepDecode, key, ErrCorrupt)
			c.Invalidate(ctx, key)
		}
	case !IsMiss(err):
		c.CacheErr(ctx, observe.StepGet, key, err)
		c.Trip(key, err)
		return nil, false, false
	}
	c.Miss(ctx, key)
	return nil, false, true
}
