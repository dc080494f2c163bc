package protocol

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// serverOf is the optional interface of a Cache that can say which server
// holds a key (memclient.Client). Over such a cache the core keeps one
// breaker per server: while one server of a fleet is down, only its keys
// are read from the database, and the others keep hitting.
type serverOf interface {
	Server(key string) (net.Addr, error)
}

// nodes are the breakers of a fleet, one per server address, and those of
// the servers of a migration's fallback ring (see fallbackBreaker).
type nodes struct {
	of       serverOf
	m        sync.Map // net.Addr -> *breaker
	fallback sync.Map // net.Addr -> *breaker, of the fallback ring's servers
}

// breakerOf returns the breaker of key's server: the core's own where the
// cache cannot place keys.
func (c *Core) breakerOf(key string) *breaker {
	if c.nodes == nil {
		return c.br
	}
	addr, err := c.nodes.of.Server(key)
	if err != nil {
		return c.br
	}
	if b, ok := c.nodes.m.Load(addr); ok {
		return b.(*breaker)
	}
	// The server's first key is its probe: reading it reaches that server
	// and no other.
	b, _ := c.nodes.m.LoadOrStore(addr, c.newBreaker(key))
	return b.(*breaker)
}

// newBreaker returns a breaker whose probe reads probeKey.
func (c *Core) newBreaker(probeKey string) *breaker { return c.newBreakerOn(c.raw, probeKey) }

// newBreakerOn returns a breaker whose probe reads probeKey from cache.
func (c *Core) newBreakerOn(cache Cache, probeKey string) *breaker {
	b := newBreaker(c.Opt.BreakerFailures, c.Opt.BreakerCooldown, func() error {
		_, err := retryRead(func() (*memcache.Item, error) { return cache.Get(probeKey) }, nil)
		return err
	}, c.rec, c.breakerEvent)
	b.failing = &c.failing
	return b
}

// record reports the outcome of a call for key to its server's breaker.
// While no breaker has failures to forget, a success is not worth finding
// the server for.
func (c *Core) record(key string, err error) {
	if err == nil && c.failing.Load() == 0 {
		return
	}
	c.breakerOf(key).record(err)
}

// settled reports whether every breaker of the core is closed, so that a
// read need not find its key's server to know it may use the cache.
func (c *Core) settled() bool { return c.open.Load() == 0 }

// recordMany reports the outcome of a request over keys, which may span
// servers: a *memclient.ServerError counts against its server alone, any
// other failure against every server of keys.
func (c *Core) recordMany(keys []string, err error) {
	c.eachFailed(keys, err, (*breaker).record)
}

// TripMany trips the breakers of the servers that failed a read of keys
// with err (see recordMany), as Trip does for one key.
func (c *Core) TripMany(keys []string, err error) {
	c.eachFailed(keys, err, (*breaker).trip)
}

// eachFailed calls f with each breaker of keys' servers that err names as
// failed, and that server's error.
func (c *Core) eachFailed(keys []string, err error, f func(*breaker, error)) {
	if c.nodes == nil {
		f(c.br, err)
		return
	}
	eachFailedOn(c.nodes.of, c.breakerOf, keys, err, f)
}

// eachFailedOn is eachFailed over the servers that of places keys on,
// whose breakers breakerOf returns (nil for none).
func eachFailedOn(of serverOf, breakerOf func(key string) *breaker, keys []string, err error, f func(*breaker, error)) {
	if err == nil {
		return
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	for _, e := range errs {
		var se *memclient.ServerError
		placed := errors.As(e, &se)
		seen := map[*breaker]bool{}
		for _, k := range keys {
			if placed {
				if addr, err := of.Server(k); err != nil || addr != se.Addr {
					continue
				}
			}
			if b := breakerOf(k); b != nil && !seen[b] {
				seen[b] = true
				f(b, e)
			}
		}
	}
}

// The fallback ring's breakers. In a migration's fallback phase a miss on
// the new ring reads the old one (fb), whose servers need breakers of
// their own: a node of the old ring that is down would otherwise cost
// every miss of a key that moved off it a full timeout. They are kept
// apart from the primary ring's (a server in both rings has one in each),
// each probing its server through fb, whose ring does not change; like
// every breaker, one closes again only after the outbox has been replayed
// (writes that failed to delete a key on that server meanwhile left
// entries there that nobody may copy to the new ring).

// fallbackBreaker returns the breaker of key's server in fb, or nil where
// the core keeps no breakers per server or fb cannot place key.
func (c *Core) fallbackBreaker(fb *memclient.Client, key string) *breaker {
	if c.nodes == nil {
		return nil
	}
	addr, err := fb.Server(key)
	if err != nil {
		return nil
	}
	if b, ok := c.nodes.fallback.Load(addr); ok {
		return b.(*breaker)
	}
	b, _ := c.nodes.fallback.LoadOrStore(addr, c.newBreakerOn(fb, key))
	return b.(*breaker)
}

// FallbackAllowed reports whether a read of key may try the fallback ring
// fb now: the breaker of key's server there is closed (or its probe and
// the outbox replay just succeeded). A read it refuses is served as if fb
// could not help: from the database, under the new ring's lease.
func (c *Core) FallbackAllowed(fb *memclient.Client, key string) bool {
	return c.settled() || c.fallbackBreaker(fb, key).allowRead()
}

// fallbackDone reports the outcome of a fallback read of key from fb: a
// transport failure trips the breaker of key's server there at once, as a
// failed read of the primary ring does (the reader gives up on it), and a
// success resets a closed breaker's failure count.
func (c *Core) fallbackDone(fb *memclient.Client, key string, err error) {
	switch {
	case IsTransportErr(err):
		if b := c.fallbackBreaker(fb, key); b != nil {
			b.trip(err)
		}
	case c.failing.Load() != 0:
		if b := c.fallbackBreaker(fb, key); b != nil {
			b.record(nil)
		}
	}
}

// fallbackFailed trips the breakers of fb's servers that failed a request
// over keys with err: the *memclient.ServerError's server alone, or every
// server of keys for any other transport failure.
func (c *Core) fallbackFailed(fb *memclient.Client, keys []string, err error) {
	eachFailedOn(fb, func(k string) *breaker { return c.fallbackBreaker(fb, k) }, keys, err, func(b *breaker, e error) {
		if IsTransportErr(e) {
			b.trip(e)
		}
	})
}

// FallbackLeaseGet is fb.LeaseGet of key with the lease TTL (the read of a
// Get's fallback), reported to the breaker of key's server in fb.
func (c *Core) FallbackLeaseGet(fb *memclient.Client, key string) (*memcache.Item, *memclient.Lease, error) {
	it, l, err := fb.LeaseGet(key, c.Expiry(c.Opt.LeaseTTL, false))
	c.fallbackDone(fb, key, err)
	return it, l, err
}

// FallbackGetMulti reads keys from fb (one pipeline per server), tripping
// the breakers of the servers that failed; what the others answered
// stands.
func (c *Core) FallbackGetMulti(fb *memclient.Client, keys []string) (map[string]*memcache.Item, error) {
	items, err := fb.GetMulti(keys)
	c.fallbackFailed(fb, keys, err)
	return items, err
}

// FallbackLeases takes the leases of keys on fb, as AddLeases does on the
// core's cache: one pipeline of adds per server, tokens[i] the lease of
// keys[i] or 0. held[i] reports that keys[i] held something by then (it
// got no token, and the caller must treat it as another reader's lease);
// a key that got neither failed (its server's breaker is tripped) or its
// server has no meta protocol, and fb cannot help with it.
func (c *Core) FallbackLeases(fb *memclient.Client, keys []string) (tokens []uint64, held []bool) {
	tokens, held, _ = c.leasesOn(fb.AddMulti, keys,
		func(key string, err error) { c.fallbackDone(fb, key, err) },
		func(keys []string, err error) { c.fallbackFailed(fb, keys, err) })
	return tokens, held
}

// PrimaryLeases is AddLeases for keys whose misses a migration's fallback
// ring may answer: their leases are taken on the primary ring alone, as a
// Get's lease-taking read takes them, and not with the Migration's Add,
// which first deletes the key on the other ring: the very entry the
// fallback is to read. Over a cache that is not migrating it is AddLeases.
// A key that got no token was held by someone else or failed; err is the
// first failure.
func (c *Core) PrimaryLeases(keys []string) (tokens []uint64, err error) {
	m, ok := c.raw.(migrating)
	if !ok {
		return c.AddLeases(keys)
	}
	tokens = make([]uint64, len(keys))
	_ = m.Invalidating(nil, func(p *memclient.Client) error { // no keys: no deletes, the primary ring alone
		tokens, _, err = c.leasesOn(p.AddMulti, keys, c.record, c.recordMany)
		return nil
	})
	return tokens, err
}

// PrimarySettleMany is SettleMany for the keys of a GetMany whose misses a
// migration's fallback ring may answer: the fills of our own leases land on
// the primary ring alone (one pipeline per server), as a Get's lease fill
// does, and not with the Migration's CompareAndSwap, which first deletes
// the key on the other ring (a request to a server that may be down, and
// the end of the entry instances of the phase before still read). A fill
// that lost, and everything else, settles as SettleMany settles it.
func (c *Core) PrimarySettleMany(ctx context.Context, ss []Settlement, began time.Time) []*memcache.Item {
	m, ok := c.raw.(migrating)
	if !ok {
		return c.SettleMany(ctx, ss, began)
	}
	return c.settleMany(ctx, ss, began, func(items []*memcache.Item) (outs []error, err error) {
		_ = m.Invalidating(nil, func(p *memclient.Client) error { // no keys: the primary ring alone
			outs, err = p.CompareAndSwapMulti(items)
			return nil
		})
		return outs, err
	})
}

// leasesOn adds the leases of keys with add (a client's AddMulti: one
// pipeline per server), reporting each key's outcome with done, nil for a
// key that got its lease or held something (or, if the pipelines failed as
// a whole, failed). held[i] is true for a key that held something; err is
// the first failure.
func (c *Core) leasesOn(add func([]*memcache.Item) ([]error, error), keys []string, done func(string, error), failed func([]string, error)) (tokens []uint64, held []bool, err error) {
	tokens, held = make([]uint64, len(keys)), make([]bool, len(keys))
	items := make([]*memcache.Item, len(keys))
	mine := make([]uint64, len(keys))
	for i, k := range keys {
		mine[i] = newToken()
		items[i] = c.leaseItem(k, mine[i])
	}
	outs, err := add(items)
	if outs == nil {
		failed(keys, err)
		return tokens, held, err
	}
	err = nil
	for i, o := range outs {
		switch {
		case o == nil:
			tokens[i] = mine[i]
		case errors.Is(o, memcache.ErrNotStored):
			held[i], o = true, nil
		case err == nil:
			err = o
		}
		done(keys[i], o)
	}
	return tokens, held, err
}

// FallbackRelease ends a batch of fallback reads from fb once their
// database read and fills are done: it deletes the leases the batch took
// there (keys[i] holding tokens[i], if it still does) and the other
// readers' leases it found (held, as it read them: their holders may have
// read the database before us, and their fills must not land after we
// answered; one that changed meanwhile is deleted whatever it holds now),
// and the keys of drop whatever they hold (keys that held something the
// batch did not read). One pipeline per server each way, except for drop;
// best effort, as a release is.
func (c *Core) FallbackRelease(fb *memclient.Client, keys []string, tokens []uint64, held []*memcache.Item, drop []string) {
	for _, k := range drop {
		_ = fb.Delete(k) // a delete is always safe
	}
	var del []*memcache.Item
	if len(keys) > 0 {
		cur, _ := fb.GetMulti(keys)
		for i, k := range keys {
			if it := cur[k]; it != nil && ownLease(it, tokens[i]) {
				del = append(del, it)
			}
		}
	}
	del = append(del, held...)
	if len(del) == 0 {
		return
	}
	changed, _ := fb.DeleteIfUnchanged(del)
	if len(changed) == 0 || len(held) == 0 {
		return
	}
	isHeld := make(map[string]bool, len(held))
	for _, it := range held {
		isHeld[it.Key] = true
	}
	for _, k := range changed {
		if isHeld[k] {
			_ = fb.Delete(k) // a delete is always safe
		}
	}
}
