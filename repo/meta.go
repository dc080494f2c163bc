package repo

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// CacheClient is the memcached client for stores: a *memcache.Client (all
// of whose methods it has) plus three requests of memcached's meta protocol
// (1.6 and later) that make a miss as cheap as plain cache-aside.
//
// A Store whose cache is a *CacheClient reads with "mg <key> v c f N<ttl>":
// a hit answers as a get does, and a miss creates an empty placeholder (the
// key's lease) and tells the one reader that created it. That reader reads
// the database and replaces the placeholder with "ms ... C<cas>" on the
// same connection, or deletes it with "md ... C<cas>". So a miss costs two
// memcached round trips, as a plain Get and Set do, instead of the four of
// Get, lease Add, gets and CompareAndSwap. The fill goes out on the
// connection that took the lease because CAS ids restart when memcached
// does: a new connection may reach a restarted server, where the same CAS
// id can name a newer item.
//
// Against a server without the meta protocol, the first meta request fails
// with ERROR and the client uses the classic commands from then on.
type CacheClient struct {
	*memcache.Client
	sel memcache.ServerSelector

	noMeta atomic.Bool
	pools  sync.Map // server address -> *metaPool
}

// NewCacheClient returns a CacheClient configured for use with stores:
// MaxIdleConns is set to maxConcurrency (gomemcache's default of 2 makes a
// busy service open a new TCP connection every few hundred requests) and the
// per-call Timeout to timeout (default 250ms when zero). It returns an error
// if a server address does not resolve.
func NewCacheClient(maxConcurrency int, timeout time.Duration, servers ...string) (*CacheClient, error) {
	var sl memcache.ServerList
	if err := sl.SetServers(servers...); err != nil {
		return nil, err
	}
	c := memcache.NewFromSelector(&sl)
	if maxConcurrency < 2 {
		maxConcurrency = 2
	}
	c.MaxIdleConns = maxConcurrency
	if timeout <= 0 {
		timeout = 250 * time.Millisecond
	}
	c.Timeout = timeout
	return &CacheClient{Client: c, sel: &sl}, nil
}

// Close closes the client's idle connections, those of the embedded
// *memcache.Client included. Like gomemcache's, a client used after Close
// opens new ones.
func (c *CacheClient) Close() error {
	c.pools.Range(func(_, v any) bool {
		v.(*metaPool).closeIdle()
		return true
	})
	return c.Client.Close()
}

// errNoMeta means the server does not speak the meta protocol.
var errNoMeta = errors.New("memcache: server does not support meta commands")

// metaPool holds idle connections to one server.
type metaPool struct {
	mu   sync.Mutex
	idle []*metaConn
}

// metaConn is one connection of a metaPool, used by one request (or one
// lease) at a time.
type metaConn struct {
	nc   net.Conn
	rd   *bufio.Reader
	buf  []byte // request being written
	pool *metaPool
}

func (c *CacheClient) timeout() time.Duration {
	if c.Client.Timeout > 0 {
		return c.Client.Timeout
	}
	return memcache.DefaultTimeout
}

// conn returns an idle or new connection to the server of key.
func (c *CacheClient) conn(key string) (*metaConn, error) {
	addr, err := c.sel.PickServer(key)
	if err != nil {
		return nil, err
	}
	v, ok := c.pools.Load(addr.String())
	if !ok {
		v, _ = c.pools.LoadOrStore(addr.String(), &metaPool{})
	}
	p := v.(*metaPool)
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		mc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return mc, nil
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	var nc net.Conn
	if c.Client.DialContext != nil {
		nc, err = c.Client.DialContext(ctx, addr.Network(), addr.String())
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, addr.Network(), addr.String())
	}
	if err != nil {
		return nil, err
	}
	return &metaConn{nc: nc, rd: bufio.NewReaderSize(nc, 4096), buf: make([]byte, 0, 256), pool: p}, nil
}

// put returns a healthy connection to its pool, or closes it.
func (c *CacheClient) put(mc *metaConn) {
	p := mc.pool
	p.mu.Lock()
	if len(p.idle) < max(c.Client.MaxIdleConns, memcache.DefaultMaxIdleConns) {
		p.idle = append(p.idle, mc)
		mc = nil
	}
	p.mu.Unlock()
	if mc != nil {
		mc.nc.Close()
	}
}

// roundTrip sends mc.buf and reads the response line (without "\r\n";
// valid until the next read from mc). On a transport or protocol failure the
// connection is closed and must not be used again.
func (c *CacheClient) roundTrip(mc *metaConn) (line []byte, err error) {
	if err = mc.nc.SetDeadline(time.Now().Add(c.timeout())); err == nil {
		if _, err = mc.nc.Write(mc.buf); err == nil {
			line, err = mc.rd.ReadSlice('\n')
			if err == nil && !bytes.HasSuffix(line, crlf) {
				err = fmt.Errorf("memcache: malformed response %q", line)
			}
		}
	}
	if err != nil {
		mc.nc.Close()
		if !isTimeout(err) {
			// The connection was cut (a restart, a reset): its idle
			// siblings most likely were too.
			mc.pool.closeIdle()
		}
		return nil, err
	}
	return line[:len(line)-2], nil
}

func (p *metaPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	for _, mc := range idle {
		mc.nc.Close()
	}
}

// readValue reads a value of n bytes and its "\r\n" from mc, closing mc
// on failure.
func readValue(mc *metaConn, n int) ([]byte, error) {
	v := make([]byte, n+2)
	if _, err := io.ReadFull(mc.rd, v); err != nil {
		mc.nc.Close()
		return nil, err
	}
	if !bytes.HasSuffix(v, crlf) {
		mc.nc.Close()
		return nil, errors.New("memcache: malformed value")
	}
	return v[:n], nil
}

var crlf = []byte("\r\n")

// parseDecimal parses an unsigned decimal number of at most 19 digits.
func parseDecimal(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// replyErr maps a response line that is not a success to an error.
// Transport-level consequences (closing the connection) are the caller's.
func replyErr(line []byte) error {
	switch {
	case bytes.Equal(line, []byte("ERROR")):
		return errNoMeta
	case bytes.HasPrefix(line, []byte("SERVER_ERROR")):
		return fmt.Errorf("%w: %s", memcache.ErrServerError, line[min(len(line), 13):])
	case bytes.HasPrefix(line, []byte("CLIENT_ERROR")):
		return fmt.Errorf("memcache: client error: %s", line[min(len(line), 13):])
	}
	return fmt.Errorf("memcache: unexpected response %q", line)
}

// metaLease is a key's lease, taken by this client's mg: the empty
// placeholder with CAS id cas, to be replaced or deleted on conn.
type metaLease struct {
	c    *CacheClient
	key  string
	cas  uint64
	conn *metaConn
}

// leaseGet reads key, creating a placeholder that lives ttl seconds if it is
// missing. It returns the item (a placeholder is empty with flags 0) and,
// if this call created the placeholder, the lease on it.
func (c *CacheClient) leaseGet(key string, ttl int32) (*memcache.Item, *metaLease, error) {
	if c.noMeta.Load() {
		return nil, nil, errNoMeta
	}
	mc, err := c.conn(key)
	if err != nil {
		return nil, nil, err
	}
	mc.buf = append(mc.buf[:0], "mg "...)
	mc.buf = append(mc.buf, key...)
	mc.buf = append(mc.buf, " v c f N"...)
	mc.buf = strconv.AppendInt(mc.buf, int64(ttl), 10)
	mc.buf = append(mc.buf, "\r\n"...)
	line, err := c.roundTrip(mc)
	if err != nil {
		return nil, nil, err
	}
	if !bytes.HasPrefix(line, []byte("VA ")) {
		err := replyErr(line)
		c.put(mc)
		if errors.Is(err, errNoMeta) {
			c.noMeta.Store(true)
		}
		return nil, nil, err
	}
	// "VA <size> c<cas> f<flags> [W] [Z] [X]"
	it := &memcache.Item{Key: key}
	size, cas, won := -1, uint64(0), false
	for i, rest := 0, line[3:]; len(rest) > 0; i++ {
		f := rest
		if j := bytes.IndexByte(rest, ' '); j >= 0 {
			f, rest = rest[:j], rest[j+1:]
		} else {
			rest = nil
		}
		ok := len(f) > 0
		switch {
		case !ok:
		case i == 0:
			var n uint64
			n, ok = parseDecimal(f)
			size = int(min(n, 1<<31))
		case f[0] == 'c':
			cas, ok = parseDecimal(f[1:])
		case f[0] == 'f':
			var fl uint64
			fl, ok = parseDecimal(f[1:])
			ok = ok && fl <= 1<<32-1
			it.Flags = uint32(fl)
		case f[0] == 'W':
			won = true
		}
		if !ok {
			mc.nc.Close()
			return nil, nil, fmt.Errorf("memcache: malformed response %q", line)
		}
	}
	if size < 0 {
		mc.nc.Close()
		return nil, nil, fmt.Errorf("memcache: malformed response %q", line)
	}
	if it.Value, err = readValue(mc, size); err != nil {
		return nil, nil, err
	}
	value := it.Value
	// W also marks a stale or expiring item when other clients use those
	// features; only an empty placeholder is a lease.
	if !won || len(value) != 0 || it.Flags != 0 || cas == 0 {
		c.put(mc)
		return it, nil, nil
	}
	return it, &metaLease{c: c, key: key, cas: cas, conn: mc}, nil
}

// fill replaces the placeholder with value if it is still there and
// unchanged: nil if it was stored, memcache.ErrCASConflict if the key
// changed, memcache.ErrCacheMiss if it is gone. The lease is used up.
func (l *metaLease) fill(value []byte, flags uint32, exp int32) error {
	mc := l.conn
	l.conn = nil
	if mc == nil {
		return memcache.ErrCacheMiss
	}
	mc.buf = append(mc.buf[:0], "ms "...)
	mc.buf = append(mc.buf, l.key...)
	mc.buf = append(mc.buf, ' ')
	mc.buf = strconv.AppendInt(mc.buf, int64(len(value)), 10)
	mc.buf = append(mc.buf, " C"...)
	mc.buf = strconv.AppendUint(mc.buf, l.cas, 10)
	mc.buf = append(mc.buf, " F"...)
	mc.buf = strconv.AppendUint(mc.buf, uint64(flags), 10)
	mc.buf = append(mc.buf, " T"...)
	mc.buf = strconv.AppendInt(mc.buf, int64(exp), 10)
	mc.buf = append(mc.buf, "\r\n"...)
	mc.buf = append(mc.buf, value...)
	mc.buf = append(mc.buf, "\r\n"...)
	return l.c.finish(mc)
}

// release deletes the placeholder if it is still there and unchanged, so
// that waiters need not sit out its TTL. The lease is used up.
func (l *metaLease) release() {
	mc := l.conn
	l.conn = nil
	if mc == nil {
		return
	}
	mc.buf = append(mc.buf[:0], "md "...)
	mc.buf = append(mc.buf, l.key...)
	mc.buf = append(mc.buf, " C"...)
	mc.buf = strconv.AppendUint(mc.buf, l.cas, 10)
	mc.buf = append(mc.buf, "\r\n"...)
	_ = l.c.finish(mc)
}

// finish sends an ms or md request and maps its answer.
func (c *CacheClient) finish(mc *metaConn) error {
	line, err := c.roundTrip(mc)
	if err != nil {
		return err
	}
	switch {
	case bytes.HasPrefix(line, []byte("HD")):
	case bytes.HasPrefix(line, []byte("EX")):
		err = memcache.ErrCASConflict
	case bytes.HasPrefix(line, []byte("NF")):
		err = memcache.ErrCacheMiss
	case bytes.HasPrefix(line, []byte("NS")):
		err = memcache.ErrNotStored
	default:
		err = replyErr(line)
	}
	c.put(mc) // line is no longer used: it is in mc's buffer
	return err
}
