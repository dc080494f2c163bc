package protocol

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Foreign is what Leased's use function returns for an item written by
// another row type (another release): Leased deletes it and tries again.
var Foreign any = foreign{}

type foreign struct{}

// A lease is a key's lease held by this caller, taken by Core.take.
type lease interface {
	// fill replaces the lease with value if it is still there and
	// unchanged, and otherwise settles the key as Core.settle does: it
	// returns the value or "not found" someone else cached meanwhile,
	// which the caller must answer with, or nil.
	fill(ctx context.Context, value []byte, flags uint32, exp int32, began time.Time) *memcache.Item
	// release deletes the lease if it is still there and unchanged.
	release()
}

// tokenLease is a lease taken with the classic commands: an Add of a lease
// envelope holding a random token.
type tokenLease struct {
	c     *Core
	key   string
	token uint64
}

func (l tokenLease) fill(ctx context.Context, value []byte, flags uint32, exp int32, began time.Time) *memcache.Item {
	return l.c.swapLease(ctx, l.key, l.token, value, flags, exp, began)
}

func (l tokenLease) release() { l.c.releaseLease(l.key, l.token) }

// metaFill adapts a *memclient.Lease to lease: a fill that lost reads what
// the key holds instead.
type metaFill struct {
	c *Core
	l *memclient.Lease
}

func (m metaFill) fill(ctx context.Context, value []byte, flags uint32, exp int32, began time.Time) *memcache.Item {
	err := m.l.Fill(value, flags, exp)
	m.c.record(m.l.Key(), err)
	switch {
	case err == nil:
		m.c.filled(ctx, m.l.Key(), began)
		return nil
	case IsMiss(err): // deleted by a write (or evicted): nothing to settle
		return nil
	case !IsLost(err):
		m.c.CacheErr(ctx, observe.StepFill, m.l.Key(), err)
		return nil
	}
	m.c.CASConflict(ctx, m.l.Key())
	return m.c.swapLease(ctx, m.l.Key(), 0, nil, 0, 0, began)
}

func (m metaFill) release() { m.l.Release() }

// filled counts a fill that landed; began is when its database read began.
func (c *Core) filled(ctx context.Context, key string, began time.Time) {
	c.Stats.Fills.Add(1)
	if c.Opt.Hooks.Event != nil {
		c.Emit(ctx, observe.Event{Kind: observe.Fill, Key: key, Duration: time.Since(began)})
	}
}

// swapLease replaces our lease on key with value, if it is still ours, and
// otherwise settles the key as settle does.
func (c *Core) swapLease(ctx context.Context, key string, token uint64, value []byte, flags uint32, exp int32, began time.Time) *memcache.Item {
	it, err := c.Cache.Get(key)
	if err != nil {
		if !IsMiss(err) {
			c.CacheErr(ctx, observe.StepFill, key, err)
		}
		return nil
	}
	return c.Settle(ctx, key, token, it, value, flags, exp, began)
}

// Settle ends a read that went to the database: it, read from the cache
// after that read (nil on a miss), is what the key holds now. If it is our
// lease (token, 0 for none), the read's value replaces it by CAS. If another
// reader or writer put a value or "not found" there, that is returned: the
// caller must answer with it, not with its own read, which may be ahead of
// what the cache shows (a write whose cache update has not run yet), and
// readers must never see the newer state and then the older one. If it is
// another reader's lease, that lease is deleted: its holder may have read
// before us, and its fill must not land after we answered. began is when
// the database read began, for the Fill event.
func (c *Core) Settle(ctx context.Context, key string, token uint64, it *memcache.Item, value []byte, flags uint32, exp int32, began time.Time) *memcache.Item {
	return c.settle(ctx, key, token, it, value, flags, exp, began, 0)
}

// settle is Settle from its try'th attempt.
func (c *Core) settle(ctx context.Context, key string, token uint64, it *memcache.Item, value []byte, flags uint32, exp int32, began time.Time, try int) *memcache.Item {
	for ; it != nil; try++ {
		if token == 0 || !ownLease(it, token) {
			if k, _, _, ok := OpenEnvelope(it.Flags, it.Value); ok && k != KindLease {
				return it
			}
			c.Invalidate(ctx, key)
			return nil
		}
		it.Value, it.Flags, it.Expiration = value, flags, exp
		err := c.Cache.CompareAndSwap(it)
		switch {
		case err == nil:
			c.filled(ctx, key, began)
			return nil
		case !IsLost(err):
			c.CacheErr(ctx, observe.StepFill, key, err)
			return nil
		}
		c.CASConflict(ctx, key)
		if try == 2 {
			c.Invalidate(ctx, key)
			return nil
		}
		if it, err = c.Cache.Get(key); err != nil {
			if !IsMiss(err) {
				c.CacheErr(ctx, observe.StepFill, key, err)
			}
			return nil
		}
	}
	return nil
}

// Settlement is one key of SettleMany: Settle's arguments.
type Settlement struct {
	Key   string
	Token uint64         // our lease, 0 for none
	It    *memcache.Item // what the key holds now, nil on a miss
	Value []byte
	Flags uint32
	Exp   int32
}

// multiStorer is the optional interface of a Cache that pipelines adds and
// CAS stores (memclient.Client).
type multiStorer interface {
	AddMulti(items []*memcache.Item) ([]error, error)
	CompareAndSwapMulti(items []*memcache.Item) ([]error, error)
}

// SettleMany is Settle for each of ss, whose database read began at began,
// returning each one's result in order. Over a cache that pipelines CAS
// stores (memclient.Client), the fills of our own leases leave together,
// one pipeline per server; a fill that lost goes on as Settle's does (a
// fresh read, up to its tries), and everything else settles one by one.
func (c *Core) SettleMany(ctx context.Context, ss []Settlement, began time.Time) []*memcache.Item {
	var cas func([]*memcache.Item) ([]error, error)
	if ms, ok := c.raw.(multiStorer); ok {
		cas = ms.CompareAndSwapMulti
	}
	return c.settleMany(ctx, ss, began, cas)
}

// settleMany is SettleMany with the fills of our own leases sent by cas
// (nil: each key settles alone).
func (c *Core) settleMany(ctx context.Context, ss []Settlement, began time.Time, cas func([]*memcache.Item) ([]error, error)) []*memcache.Item {
	out := make([]*memcache.Item, len(ss))
	done := make([]bool, len(ss))
	if cas != nil {
		var batch []int
		var items []*memcache.Item
		for i, s := range ss {
			if s.Token != 0 && s.It != nil && ownLease(s.It, s.Token) {
				it := *s.It
				it.Value, it.Flags, it.Expiration = s.Value, s.Flags, s.Exp
				batch, items = append(batch, i), append(items, &it)
			}
		}
		var outs []error
		if len(batch) > 0 {
			outs, _ = cas(items) // nil without the meta protocol: each settles alone
		}
		if outs != nil {
			for j, i := range batch {
				s, o := ss[i], outs[j]
				done[i] = true
				switch {
				case o == nil:
					c.record(s.Key, nil)
					c.filled(ctx, s.Key, began)
				case IsLost(o): // as Settle's first try
					c.record(s.Key, nil)
					c.CASConflict(ctx, s.Key)
					it, err := c.Cache.Get(s.Key)
					switch {
					case err == nil:
						out[i] = c.settle(ctx, s.Key, s.Token, it, s.Value, s.Flags, s.Exp, began, 1)
					case !IsMiss(err):
						c.CacheErr(ctx, observe.StepFill, s.Key, err)
					}
				default:
					c.record(s.Key, o)
					c.CacheErr(ctx, observe.StepFill, s.Key, o)
				}
			}
		}
	}
	for i, s := range ss {
		if !done[i] {
			out[i] = c.Settle(ctx, s.Key, s.Token, s.It, s.Value, s.Flags, s.Exp, began)
		}
	}
	return out
}

// AddLeases is AddLease for each of keys: tokens[i] is keys[i]'s lease, 0
// if the key held something. Over a cache that pipelines adds
// (memclient.Client) they leave together, one pipeline per server, else
// one Add at a time. err is the first failure: a key whose lease may or may
// not have been taken has token 0, and over the classic path the keys after
// it were not tried.
func (c *Core) AddLeases(keys []string) (tokens []uint64, err error) {
	if ms, ok := c.raw.(multiStorer); ok && len(keys) > 1 {
		tokens, _, err = c.leasesOn(ms.AddMulti, keys, c.record, c.recordMany)
		if !errors.Is(err, memclient.ErrNoMeta) {
			return tokens, err
		}
	}
	tokens = make([]uint64, len(keys))
	for i, k := range keys {
		if tokens[i], err = c.AddLease(k); err != nil {
			return tokens, err
		}
	}
	return tokens, nil
}

// AddMany is Add for each of items over a cache that pipelines adds
// (memclient.Client, memclient.Migration): one pipeline per server, each
// outcome (outs[i] for items[i], as AddMulti's) reported to the breakers as
// the guarded Cache's Add would. ok is false, with nothing sent, over any
// other cache: add the items one by one.
func (c *Core) AddMany(items []*memcache.Item) (outs []error, ok bool) {
	ms, multi := c.raw.(multiStorer)
	if !multi || len(items) == 0 {
		return nil, false
	}
	outs, err := ms.AddMulti(items)
	if outs == nil {
		if errors.Is(err, memclient.ErrNoMeta) {
			return nil, false
		}
		keys := make([]string, len(items))
		outs = make([]error, len(items))
		for i, it := range items {
			keys[i], outs[i] = it.Key, err
		}
		c.recordMany(keys, err)
		return outs, true
	}
	for i, o := range outs {
		if errors.Is(o, memcache.ErrNotStored) {
			o = nil // the server answered
		}
		c.record(items[i].Key, o)
	}
	return outs, true
}

// AddLease takes key's lease with the classic commands (an Add), returning
// its token, or 0 if the key holds something.
func (c *Core) AddLease(key string) (token uint64, err error) {
	token = newToken()
	err = c.Cache.Add(c.leaseItem(key, token))
	if errors.Is(err, memcache.ErrNotStored) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	return token, nil
}

// take takes key's lease for a load, or returns what the key holds: an
// item (a value or someone else's lease), or nil for nothing (try again).
// poll means the last call found a lease, so the classic path reads before
// it tries an Add. A lease this process's Get took for key (HandOff) is
// used first.
func (c *Core) take(key string, poll bool) (lease, *memcache.Item, error) {
	if c.meta != nil {
		if l := c.handed(key, nil); l != nil {
			return metaFill{c, l}, nil, nil
		}
		// Not the early read: a poll that won a hit's refresh would have
		// to give the win up, and memcached gives it to nobody else.
		it, l, err := c.metaGet(key, false)
		if l != nil {
			return metaFill{c, l}, nil, nil
		}
		if !errors.Is(err, memclient.ErrNoMeta) {
			return nil, it, err
		}
	}
	if !poll {
		token, err := c.AddLease(key)
		if err != nil {
			return nil, nil, err
		}
		if token != 0 {
			return tokenLease{c, key, token}, nil, nil
		}
	}
	it, err := c.Cache.Get(key)
	if IsMiss(err) {
		return nil, nil, nil
	}
	return nil, it, err
}

// ReleaseLease frees our lease early (a failed read, an oversize value) so
// waiters do not sit out LeaseTTL. A CAS to an already-expired item is a
// conditional delete: it removes the lease only if it is still ours.
func (c *Core) releaseLease(key string, token uint64) {
	it, err := c.Cache.Get(key)
	if err != nil || !ownLease(it, token) {
		return
	}
	it.Expiration = -1
	_ = c.Cache.CompareAndSwap(it)
}

// ReleaseLease is releaseLease for leases taken with AddLease.
func (c *Core) ReleaseLease(key string, token uint64) { c.releaseLease(key, token) }

// Leased loads the value of key after a miss, under the lease protocol: the
// first caller takes the key's lease (take), runs load and swaps the result
// in only if the lease is still its own (any writer that replaced or deleted
// it meanwhile makes the fill fail); if someone else's value is there by
// then, it answers with that instead (see Settle). Others poll with jittered
// backoff for up to LeaseWait and use the value they find (use decodes an
// item that is not a lease, given when the read began, and reports false
// for a corrupt one); then they run load themselves, without caching, and
// delete the slow holder's lease (see Settle). load returns the caller's
// result and the envelope to cache (nil: cache nothing).
func (c *Core) Leased(ctx context.Context, key string,
	use func(it *memcache.Item, at time.Time) (any, bool),
	load func(context.Context) (result any, value []byte, flags uint32, exp int32, err error),
) (any, error) {
	start := time.Now()
	deadline := start.Add(c.Opt.LeaseWait)
	backoff := time.Millisecond
	poll := false
	waited := false
	defer func() {
		if waited && c.Opt.Hooks.Event != nil {
			c.Emit(ctx, observe.Event{Kind: observe.LeaseWait, Key: key, Duration: time.Since(start)})
		}
	}()
	for attempt := 0; ; attempt++ {
		at := time.Now()
		l, it, err := c.take(key, poll)
		poll = false
		switch {
		case err != nil:
			c.CacheErr(ctx, observe.StepLease, key, err)
			r, _, _, _, err := load(ctx)
			return r, err
		case l != nil:
			began := time.Now()
			r, value, flags, exp, err := load(ctx)
			if err != nil || value == nil {
				l.release()
				return r, err
			}
			at := time.Now()
			if it := l.fill(ctx, value, flags, exp, began); it != nil {
				r2, ok := use(it, at)
				if ok && r2 != Foreign {
					return r2, nil
				}
				if ok { // another row type wrote it meanwhile: answer ours, leave nothing to contradict it
					c.Invalidate(ctx, key)
				}
			}
			return r, nil
		case it == nil: // released, or filled and evicted: try the lease again
		default:
			k, _, _, ok := OpenEnvelope(it.Flags, it.Value)
			if !ok || k != KindLease {
				r, ok := use(it, at)
				if ok && r == Foreign {
					// Another row type's entry: delete it, then try the
					// lease again (a delete is always safe).
					c.Invalidate(ctx, key)
					break
				}
				if ok {
					return r, nil
				}
				c.CacheErr(ctx, observe.StepDecode, key, ErrCorrupt)
				c.Invalidate(ctx, key)
				break
			}
			// someone else's lease
			if time.Now().After(deadline) || attempt > 64 {
				// The holder is slow or dead: read, then delete its lease.
				r, _, _, _, err := load(ctx)
				if err == nil {
					c.Invalidate(ctx, key)
				}
				return r, err
			}
			c.Stats.LeaseWaits.Add(1)
			waited = true
			if err := Sleep(ctx, backoff/2+rand.N(backoff)); err != nil {
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
