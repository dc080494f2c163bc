package protocol

import (
	"errors"
	"net"
	"sync"

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

// nodes are the breakers of a fleet, one per server address.
type nodes struct {
	of serverOf
	m  sync.Map // net.Addr -> *breaker
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
func (c *Core) newBreaker(probeKey string) *breaker {
	b := newBreaker(c.Opt.BreakerFailures, c.Opt.BreakerCooldown, func() error {
		_, err := retryRead(func() (*memcache.Item, error) { return c.raw.Get(probeKey) }, nil)
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
				if addr, err := c.nodes.of.Server(k); err != nil || addr != se.Addr {
					continue
				}
			}
			if b := c.breakerOf(k); !seen[b] {
				seen[b] = true
				f(b, e)
			}
		}
	}
}
