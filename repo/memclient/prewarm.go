package memclient

// Pre-warming a new server before it joins: Keys lists what one server
// holds, and Prewarm copies the keys that a new ring gives to another server
// to that owner, through its lease.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"golang.org/x/sync/errgroup"

	"github.com/cachedrepo/cachedrepo/cachekeys"
)

// errCrawlerBusy and errBadClass are what a metadump that did not run
// answered: another crawl runs, or the server has no hash walk.
var (
	errCrawlerBusy = errors.New("the LRU crawler is busy")
	errBadClass    = errors.New("metadump mode not supported")
)

// Keys calls fn with every key the server at addr ("host:port", or a path
// for a Unix socket) holds and its expiry (a unix time, -1 for never), as
// memcached's "lru_crawler metadump hash" lists them ("metadump all" on
// servers without the hash walk). While another crawl runs the server
// answers BUSY: Keys tries again, waiting 10ms, then twice as long each time
// up to 1s, until ctx ends. A server that refuses the dump (started with -X,
// or with the crawler disabled) gives an error quoting its answer; fn's error
// stops the listing and is returned.
//
// fn should be quick: the server's crawler waits while it runs (and a hash
// walk holds off the growth of the server's hash table), so collect the keys
// and act on them afterwards. Each read of the listing is bounded by the
// client's Timeout; a key the server holds under a binary name is listed as
// those bytes.
func (c *Client) Keys(ctx context.Context, addr string, fn func(key string, exp int64) error) error {
	mode := "hash"
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		err := c.metadump(ctx, addr, mode, fn)
		if errors.Is(err, errBadClass) && mode == "hash" {
			mode = "all"
			continue
		}
		if !errors.Is(err, errCrawlerBusy) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w; gave up waiting: %w", err, ctx.Err())
		case <-t.C:
		}
	}
}

// metadump runs one "lru_crawler metadump <mode>" on a connection of its
// own and calls fn for each line.
func (c *Client) metadump(ctx context.Context, addr, mode string, fn func(string, int64) error) error {
	nc, err := c.dial(ctx, addr)
	if err == nil {
		stop := context.AfterFunc(ctx, func() { nc.Close() })
		err = c.readDump(nc, mode, fn)
		stop()
		nc.Close()
	}
	if ctxErr := ctx.Err(); err != nil && ctxErr != nil {
		err = ctxErr // the connection was closed, or not opened, by the cancel
	}
	if err != nil {
		return fmt.Errorf("memclient: listing the keys of %s: %w", addr, err)
	}
	return nil
}

// readDump sends the metadump request on nc and reads its answer.
func (c *Client) readDump(nc net.Conn, mode string, fn func(string, int64) error) error {
	_ = nc.SetDeadline(time.Now().Add(c.Timeout()))
	if _, err := io.WriteString(nc, "lru_crawler metadump "+mode+"\r\n"); err != nil {
		return err
	}
	rd := bufio.NewReaderSize(nc, 64<<10)
	for {
		if rd.Buffered() == 0 {
			_ = nc.SetReadDeadline(time.Now().Add(c.Timeout()))
		}
		line, err := rd.ReadSlice('\n')
		if err != nil {
			return err
		}
		// Item lines end in "\n" only, the others in "\r\n".
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r"))
		s := string(line)
		switch {
		case strings.HasPrefix(s, "key="):
			key, exp, err := parseDumpLine(s)
			if err != nil {
				return fmt.Errorf("malformed metadump line %q: %w", s, err)
			}
			if err := fn(key, exp); err != nil {
				return err
			}
		case s == "OK": // newer servers start the dump with it
		case s == "END", strings.HasPrefix(s, "NOTSTARTED"): // NOTSTARTED: nothing to crawl
			return nil
		case strings.HasPrefix(s, "BUSY"), strings.HasPrefix(s, "ERROR locked"):
			return fmt.Errorf("%w: it answered %q", errCrawlerBusy, s)
		case strings.HasPrefix(s, "BADCLASS"):
			return errBadClass
		default:
			return fmt.Errorf("the server refuses lru_crawler metadump: it answered %q", s)
		}
	}
}

// parseDumpLine parses "key=<URL-encoded key> exp=<unix time|-1> ...".
func parseDumpLine(s string) (key string, exp int64, err error) {
	haveKey, haveExp := false, false
	for f := range strings.FieldsSeq(s) {
		name, v, _ := strings.Cut(f, "=")
		switch name {
		case "key":
			key, err = url.PathUnescape(v)
			haveKey = true
		case "exp":
			exp, err = strconv.ParseInt(v, 10, 64)
			haveExp = true
		}
		if err != nil {
			return "", 0, err
		}
	}
	if !haveKey || key == "" || !haveExp {
		return "", 0, errors.New("no key or exp")
	}
	return key, exp, nil
}

// dial opens a connection to addr, as the client's pools do.
func (c *Client) dial(ctx context.Context, addr string) (net.Conn, error) {
	c.gm()
	network := "tcp"
	if strings.Contains(addr, "/") { // gomemcache's rule for Unix sockets
		network = "unix"
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout())
	defer cancel()
	if c.mc.DialContext != nil {
		return c.mc.DialContext(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

// PrewarmConfig configures Prewarm.
type PrewarmConfig struct {
	// Prefix, if set, limits the copy to keys that start with it (one
	// application's namespace on shared servers).
	Prefix string

	// Concurrency is how many keys are copied at once. Default 8.
	Concurrency int

	// Progress, if set, is called with the counts so far about every 100ms
	// while Prewarm runs, and once more when it ends; never concurrently.
	Progress func(PrewarmProgress)
}

// PrewarmStats are the counts of a Prewarm.
type PrewarmStats struct {
	Listed   int // keys listed by the servers of from (with the Prefix)
	Moving   int // of those, the keys whose owner in to is another server: the ones to copy
	Copied   int // moving keys filled on their new owner
	Present  int // moving keys already on their new owner, or being filled there by another client
	Raced    int // moving keys a write reached on the new owner between the lease and the fill: the write won
	Vanished int // moving keys gone from their old owner (deleted, expired, evicted, or only a lease) before the copy
	Elapsed  time.Duration
	CopyTime time.Duration // the part of Elapsed spent copying, after the listing
}

// Done returns how many moving keys have been dealt with.
func (s PrewarmStats) Done() int { return s.Copied + s.Present + s.Raced + s.Vanished }

// Rate returns the moving keys dealt with per second of CopyTime.
func (s PrewarmStats) Rate() float64 {
	if s.CopyTime <= 0 {
		return 0
	}
	return float64(s.Done()) / s.CopyTime.Seconds()
}

// PrewarmProgress is what PrewarmConfig.Progress is told.
type PrewarmProgress struct {
	PrewarmStats
	// Copying is false while the servers' keys are listed (Moving still
	// grows) and true once they are copied (Moving is the total).
	Copying bool
}

// prewarmLeaseTTL is how long, in seconds, a lease Prewarm takes on a new
// owner lives if Prewarm dies before it fills or releases it.
const prewarmLeaseTTL = 10

// Prewarm copies to the servers of to the keys they will own once to
// replaces from: for every server of from it lists the keys (Keys) that
// server owns in from, keeps those (with cfg.Prefix) that to places on
// another server, and copies each through its new owner's lease: a
// LeaseGet there that hits means the key is already there (Present); a won
// lease is filled with the value, flags and remaining TTL read from the old
// owner ("mg <key> v f t"), or released if the key is gone there (Vanished).
// A fill that finds the placeholder changed or deleted lost to a writer,
// whose own write wins (Raced). It needs the meta protocol on both sides.
//
// Run it while every writer's writes and deletes reach both the old and the
// new owner of a key, the old one first (the write-both and fallback phases
// of a migration): a write that reaches the new owner
// after Prewarm took the lease beats the fill, and one that reached it
// before had reached the old owner too, where Prewarm reads it. A copy made
// while writers still write to from alone may go stale.
// Run Migration.Sweep first: an entry an earlier server list left on a new
// owner counts as Present and stays.
//
// The moving keys (about a share of 1/len(to's servers) of them) are held in
// memory between the listing and the copy. The first failure (a server that
// cannot be listed or does not answer, the end of ctx) stops Prewarm, which
// returns the counts so far with it; running it again copies only what is
// still missing.
func Prewarm(ctx context.Context, from, to *Client, cfg PrewarmConfig) (PrewarmStats, error) {
	return prewarm(ctx, from, to, cfg, nil)
}

// prewarm is Prewarm; beforeFill, if set, is called between a copy's read
// of the old owner and its fill (a test's hook).
func prewarm(ctx context.Context, from, to *Client, cfg PrewarmConfig, beforeFill func(key string)) (PrewarmStats, error) {
	var n prewarmCounts
	start := time.Now()
	stop := n.report(cfg.Progress, start)
	keys, err := movingKeys(ctx, from, to, cfg.Prefix, &n)
	if err == nil {
		n.listTime.Store(int64(time.Since(start)))
		n.copying.Store(true)
		err = copyKeys(ctx, from, to, keys, cfg.Concurrency, &n, beforeFill)
	}
	stop()
	p := n.snapshot(start)
	if cfg.Progress != nil {
		cfg.Progress(p)
	}
	return p.PrewarmStats, err
}

// prewarmCounts are a Prewarm's counts as it runs.
type prewarmCounts struct {
	listed, moving, copied, present, raced, vanished atomic.Int64
	listTime                                         atomic.Int64 // a time.Duration, set before copying
	copying                                          atomic.Bool
}

func (n *prewarmCounts) snapshot(start time.Time) PrewarmProgress {
	p := PrewarmProgress{Copying: n.copying.Load(), PrewarmStats: PrewarmStats{
		Listed: int(n.listed.Load()), Moving: int(n.moving.Load()), Copied: int(n.copied.Load()),
		Present: int(n.present.Load()), Raced: int(n.raced.Load()), Vanished: int(n.vanished.Load()),
		Elapsed: time.Since(start),
	}}
	if p.Copying {
		p.CopyTime = p.Elapsed - time.Duration(n.listTime.Load())
	}
	return p
}

// report calls f with the counts every 100ms until the returned stop is
// called.
func (n *prewarmCounts) report(f func(PrewarmProgress), start time.Time) (stop func()) {
	if f == nil {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				f(n.snapshot(start))
			case <-done:
				return
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// movingKeys lists the keys of every server of from, the servers in
// parallel, and returns those with prefix that the server owns in from and
// to places elsewhere. Keys the text protocol cannot name are skipped.
func movingKeys(ctx context.Context, from, to *Client, prefix string, n *prewarmCounts) ([]string, error) {
	from.gm()
	to.gm()
	g, ctx := errgroup.WithContext(ctx)
	var mu sync.Mutex
	var keys []string
	err := from.sel.Each(func(a net.Addr) error {
		addr := a.String()
		g.Go(func() error {
			var mine []string
			err := from.Keys(ctx, addr, func(key string, _ int64) error {
				if !strings.HasPrefix(key, prefix) || cachekeys.Valid(key) != nil {
					return nil
				}
				n.listed.Add(1)
				oldOwner, err := from.sel.PickServer(key)
				if err != nil || oldOwner.String() != addr {
					return err // an orphan of an earlier ring: from does not read it here
				}
				newOwner, err := to.sel.PickServer(key)
				if err == nil && newOwner.String() != addr {
					mine = append(mine, key)
					n.moving.Add(1)
				}
				return err
			})
			mu.Lock()
			keys = append(keys, mine...)
			mu.Unlock()
			return err
		})
		return nil
	})
	return keys, errors.Join(err, g.Wait())
}

// copyKeys copies keys with workers goroutines (default 8).
func copyKeys(ctx context.Context, from, to *Client, keys []string, workers int, n *prewarmCounts, beforeFill func(string)) error {
	if workers <= 0 {
		workers = 8
	}
	g, ctx := errgroup.WithContext(ctx)
	var next atomic.Int64
	for range workers {
		g.Go(func() error {
			for i := next.Add(1) - 1; i < int64(len(keys)); i = next.Add(1) - 1 {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := copyKey(from, to, keys[i], n, beforeFill); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// copyKey copies key from its owner in from to its owner in to, through the
// new owner's lease, and counts the outcome.
func copyKey(from, to *Client, key string, n *prewarmCounts, beforeFill func(string)) error {
	_, l, err := to.LeaseGet(key, prewarmLeaseTTL)
	if err != nil {
		return fmt.Errorf("memclient: prewarm: taking the lease of %s on its new owner: %w", key, err)
	}
	if l == nil {
		n.present.Add(1)
		return nil
	}
	it, ttl, err := from.getWithTTL(key)
	if errors.Is(err, memcache.ErrCacheMiss) || err == nil && len(it.Value) == 0 && it.Flags == 0 {
		l.Release() // gone, or only a lease (LeaseGet's placeholder) there
		n.vanished.Add(1)
		return nil
	}
	if err != nil {
		l.Release()
		return fmt.Errorf("memclient: prewarm: reading %s from its old owner: %w", key, err)
	}
	if beforeFill != nil {
		beforeFill(key)
	}
	switch err := l.Fill(it.Value, it.Flags, fillExp(ttl)); {
	case err == nil:
		n.copied.Add(1)
	case errors.Is(err, memcache.ErrCASConflict), errors.Is(err, memcache.ErrCacheMiss):
		n.raced.Add(1)
	default:
		return fmt.Errorf("memclient: prewarm: filling %s on its new owner: %w", key, err)
	}
	return nil
}

// fillExp turns a remaining TTL as mg's t flag reports it (-1 for never)
// into an expiration for a store request.
func fillExp(ttl int64) int32 {
	switch {
	case ttl < 0:
		return 0 // never expires
	case ttl == 0:
		return 1 // expires within the second; 0 would mean never
	case ttl > 30*24*3600: // memcached reads such a number as a unix time
		return int32(time.Now().Unix() + ttl)
	}
	return int32(ttl)
}

// getWithTTL reads key with "mg <key> v f t": the item (without CAS id) and
// its remaining TTL in seconds, -1 if it never expires.
func (c *Client) getWithTTL(key string) (*memcache.Item, int64, error) {
	if c.noMeta.Load() {
		return nil, 0, ErrNoMeta
	}
	mc, err := c.conn(key)
	if err != nil {
		return nil, 0, err
	}
	mc.buf = append(mc.buf[:0], "mg "...)
	mc.buf = append(mc.buf, key...)
	mc.buf = append(mc.buf, " v f t\r\n"...)
	line, err := c.roundTrip(mc)
	if err != nil {
		return nil, 0, err
	}
	if bytes.Equal(line, []byte("EN")) {
		c.put(mc)
		return nil, 0, memcache.ErrCacheMiss
	}
	if !bytes.HasPrefix(line, []byte("VA ")) {
		err := replyErr(line)
		switch {
		case errors.Is(err, memcache.ErrServerError) || isClientErr(err):
			c.put(mc) // an answer of one line: the connection is in step
		default: // no meta protocol, or a reply out of step
			if errors.Is(err, ErrNoMeta) {
				c.noMeta.Store(true)
			}
			mc.nc.Close()
		}
		return nil, 0, err
	}
	h, ok := parseVA(line)
	if !ok || !h.hasTTL {
		mc.nc.Close()
		return nil, 0, fmt.Errorf("memclient: malformed response %q", line)
	}
	it := &memcache.Item{Key: key, Flags: h.flags}
	if it.Value, err = mc.appendValue(make([]byte, 0, h.size+2), h.size); err != nil {
		return nil, 0, err
	}
	c.put(mc)
	return it, h.ttl, nil
}
