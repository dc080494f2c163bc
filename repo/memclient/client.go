// Package memclient is the memcached client of cachedrepo: gomemcache's
// client (every classic command, through the same server selection) plus
// the requests of memcached's meta protocol (1.6 and later) that let the
// cache protocol take a key's lease in the read that misses and read many
// keys in one pipeline per server.
//
// A Client is built from a Config whose fields state their defaults:
//
//	mc, err := memclient.New(memclient.Config{Servers: []string{"127.0.0.1:11211"}})
//
// Server selection is pluggable (Config.Selector takes any
// memcache.ServerSelector); by default it is a Ketama ring, the consistent
// hashing of twemproxy and libmemcached, so adding a server to n moves only
// about 1/(n+1) of the keys. The zero Client is a client over no servers:
// every call fails with memcache.ErrNoServers, none panics.
//
// # The meta requests
//
// LeaseGet reads with "mg <key> v c f N<ttl>": a hit answers as a get does,
// and a miss creates an empty placeholder (the key's lease) and tells the one
// reader that created it, which gets a *Lease. The holder replaces the
// placeholder with Lease.Fill ("ms ... C<cas>") or deletes it with
// Lease.Release ("md ... C<cas>"), on the same connection that took the
// lease: CAS ids restart when memcached does, and a new connection may reach
// a restarted server where the same id names a newer item. So a miss costs
// two round trips (read, fill), as a plain Get and Set do. LeaseGetEarly
// adds memcached's early recache ("R<early>"): of the reads of a hot key
// whose TTL runs out within early seconds, one gets a refresh lease on the
// value it read.
//
// GetMulti reads its keys with one pipeline of quiet mg requests per server
// (servers in parallel), ended by "mn": misses send nothing, and the values
// of the hits share one buffer. AddMulti and CompareAndSwapMulti store many
// items the same way (quiet "ms" requests in add or CAS mode, each answer
// of a refusal naming its request by an opaque token), with one outcome per
// item; DeleteIfUnchanged deletes many keys if they still hold what was
// read, and DeleteMulti deletes many unconditionally.
//
// Against a server without the meta protocol, the first meta request fails
// with ErrNoMeta and the client uses the classic commands from then on:
// LeaseGet keeps returning ErrNoMeta (callers fall back to an Add lease), and
// GetMulti and Delete use gomemcache's.
//
// # Coalescing
//
// The single-key meta requests (LeaseGet, LeaseGetEarly, Delete, and a
// lease's Fill and Release) of concurrent callers leave for their server
// together. Each server has two lanes, each a connection that carries one
// batch of requests at a time. A caller that finds a lane idle sends its
// request at once, alone: without contention nothing waits, and there is no
// timer. Otherwise it queues, and when a lane's round trip ends, the lane's
// next batch (the requests queued, in order, up to 512 of them and 64 KiB)
// leaves on it as one pipeline, written by the caller of one of them. Each
// request carries an opaque token ("O<n>") that its answer must echo. Two
// identical reads queued for the same batch are sent once and share the
// answer, but not a lease: only the caller whose request was sent gets it,
// and the other sees the placeholder, as a read just after it would. A
// caller never shares a request that was sent before it called, so a read
// that begins after a write returned sees that write or a later one. A
// connection that fails (a cut, a timeout, an answer out of step) fails
// every request of its batch with the error, and is closed. A request may
// wait for one round trip in flight before its own, each bounded by
// Config.Timeout.
//
// Leases under coalescing: a lease is bound to the connection whose batch
// took it, and its Fill and Release wait for that connection's lane and
// leave on that connection, or, once it has closed, fail without being
// sent. A lane's connection is never replaced while it works: only a
// failure (or Close, for an idle lane) closes it, for good, and the lane
// then dials a new one, to which no earlier lease moves. One TCP connection
// reaches one server process (a restarted memcached resets it), so a
// lease's CAS id reaches only the process that issued it, as when the
// lease held a connection of its own; sharing the connection with other
// requests changes what else it carries, never where it leads.
//
// # A fleet
//
// Client.Server names the server of a key, so the cache protocol keeps a
// breaker per server: while one node is down only its keys are read from
// the database. A dead node is never ejected from the ring by itself (its
// keys would come back stale when it returns): changing the server list is
// a Migration, an old and a new ring in one of five phases that app
// instances step through one at a time (see Phase), with Sweep and Prewarm
// (which lists each server's keys with Client.Keys, memcached's
// "lru_crawler metadump") preparing the new ring before reads move to it.
// The same mechanism moves a whole pool to new servers: pymemcache's
// FallbackClient, without its stale sets.
//
// gomemcache has no context: each round trip is bounded by Config.Timeout.
// A Client is safe for concurrent use.
package memclient

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// Config configures New. Exactly one of Servers and Selector is required.
type Config struct {
	// Servers are the memcached servers, each "host:port" or
	// "host:port:weight" (or a Unix socket path), whose keys a Ketama ring
	// places as twemproxy's "distribution: ketama" with "hash: md5" does
	// (see NewKetama and ParseServers). Ignored when Selector is set.
	Servers []string

	// Selector picks the server of each key, for both the classic and the
	// meta requests. Default: a Ketama over Servers.
	Selector memcache.ServerSelector

	// Timeout bounds each round trip (connect, write, read). Default 250ms.
	Timeout time.Duration

	// MaxIdleConns is how many idle connections are kept per server, for
	// each of the classic and the meta pools. Set it to the number of
	// goroutines that use the cache at once: with fewer, a busy service
	// opens a new TCP connection every few hundred requests (gomemcache's
	// own default is 2). Default 64. The coalesced meta requests (see the
	// package documentation) use two connections per server whatever it
	// is.
	MaxIdleConns int

	// DialContext, if set, opens connections instead of net.Dialer.
	DialContext func(ctx context.Context, network, address string) (net.Conn, error)
}

// Client is a memcached client: see the package documentation. Create it
// with New; the zero Client has no servers.
type Client struct {
	mc  *memcache.Client
	sel memcache.ServerSelector

	init   sync.Once
	noMeta atomic.Bool
	pools  sync.Map  // server address -> *metaPool
	reqs   sync.Pool // recycled *request
}

// New returns a Client for cfg. It fails if cfg names no servers, or if a
// server address does not resolve.
func New(cfg Config) (*Client, error) {
	sel := cfg.Selector
	if sel == nil {
		if len(cfg.Servers) == 0 {
			return nil, errors.New("memclient: Config needs Servers or a Selector")
		}
		k, err := newKetamaOf(cfg.Servers)
		if err != nil {
			return nil, err
		}
		sel = k
	}
	mc := memcache.NewFromSelector(sel)
	mc.Timeout = cfg.Timeout
	if mc.Timeout <= 0 {
		mc.Timeout = 250 * time.Millisecond
	}
	mc.MaxIdleConns = cfg.MaxIdleConns
	if mc.MaxIdleConns <= 0 {
		mc.MaxIdleConns = 64
	}
	mc.DialContext = cfg.DialContext
	return &Client{mc: mc, sel: sel}, nil
}

// gm returns the gomemcache client; the zero Client gets one over no servers.
func (c *Client) gm() *memcache.Client {
	c.init.Do(func() {
		if c.mc == nil {
			c.sel = new(memcache.ServerList)
			c.mc = memcache.NewFromSelector(c.sel)
		}
	})
	return c.mc
}

// Timeout returns the bound on each round trip.
func (c *Client) Timeout() time.Duration {
	if t := c.gm().Timeout; t > 0 {
		return t
	}
	return memcache.DefaultTimeout
}

// Get reads key (gomemcache's Get): memcache.ErrCacheMiss if it is missing.
func (c *Client) Get(key string) (*memcache.Item, error) { return c.gm().Get(key) }

// Set stores it unconditionally.
func (c *Client) Set(it *memcache.Item) error { return c.gm().Set(it) }

// Add stores it only if its key is missing, else memcache.ErrNotStored.
func (c *Client) Add(it *memcache.Item) error { return c.gm().Add(it) }

// Replace stores it only if its key exists, else memcache.ErrNotStored.
func (c *Client) Replace(it *memcache.Item) error { return c.gm().Replace(it) }

// CompareAndSwap stores it only if the key still holds the item it.CAS
// was read as (by Get or GetMulti): memcache.ErrCASConflict if it changed,
// memcache.ErrCacheMiss if it is gone.
func (c *Client) CompareAndSwap(it *memcache.Item) error { return c.gm().CompareAndSwap(it) }

// Delete deletes key: memcache.ErrCacheMiss if it was missing. It is a
// meta request ("md <key>"), coalesced with concurrent ones to the same
// server (see the package documentation); against servers without the
// meta protocol, gomemcache's.
func (c *Client) Delete(key string) error {
	if !c.noMeta.Load() {
		if err := c.metaDelete(key); !errors.Is(err, ErrNoMeta) {
			return err
		}
	}
	return c.gm().Delete(key)
}

// Increment adds delta to the decimal value of key and returns the new
// value: memcache.ErrCacheMiss if the key is missing.
func (c *Client) Increment(key string, delta uint64) (uint64, error) {
	return c.gm().Increment(key, delta)
}

// Decrement subtracts delta from the decimal value of key, stopping at 0,
// and returns the new value: memcache.ErrCacheMiss if the key is missing.
func (c *Client) Decrement(key string, delta uint64) (uint64, error) {
	return c.gm().Decrement(key, delta)
}

// Touch sets a new expiration, in seconds, on key.
func (c *Client) Touch(key string, seconds int32) error { return c.gm().Touch(key, seconds) }

// DeleteAll deletes every item on every server (flush_all). Never call it
// on servers other applications share.
func (c *Client) DeleteAll() error { return c.gm().DeleteAll() }

// Ping checks that every server answers.
func (c *Client) Ping() error { return c.gm().Ping() }

// Close closes the client's idle connections, classic and meta (the
// leases taken on those can no longer be filled or released). Like
// gomemcache's, a client used after Close opens new ones.
func (c *Client) Close() error {
	c.pools.Range(func(_, v any) bool {
		v.(*metaPool).closeIdle()
		return true
	})
	return c.gm().Close()
}

// GetMulti reads keys and returns the hits by key, with their CAS ids,
// as gomemcache's GetMulti does, over one pipeline of quiet mg requests per
// server (see the package documentation). It takes no leases.
func (c *Client) GetMulti(keys []string) (map[string]*memcache.Item, error) {
	items, err := c.getMulti(keys)
	if errors.Is(err, ErrNoMeta) {
		return c.gm().GetMulti(keys)
	}
	return items, err
}

// isTimeout reports whether err is a timeout.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Cache is the part of a memcached client that the cache protocol calls:
// *Client and gomemcache's *memcache.Client both satisfy it. Over a *Client
// the protocol also uses LeaseGet (a miss takes the lease in its read); over
// any other Cache it takes leases with Add and fills with gets and CAS.
// gomemcache has no context: each call is bounded by the client's timeout.
type Cache interface {
	Get(key string) (*memcache.Item, error)
	GetMulti(keys []string) (map[string]*memcache.Item, error)
	Add(item *memcache.Item) error
	Set(item *memcache.Item) error
	CompareAndSwap(item *memcache.Item) error
	Delete(key string) error
	Increment(key string, delta uint64) (uint64, error)
}
