package memclient

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// ErrNoMeta is returned by LeaseGet when the servers do not speak the meta
// protocol (they answered ERROR): use the classic commands instead.
var ErrNoMeta = errors.New("memclient: server does not support meta commands")

// metaPool holds the connections to one server: the idle ones of the
// pipelines (GetMulti, DeleteIfUnchanged) and the lanes that carry the
// coalesced single-key requests (see do).
type metaPool struct {
	addr net.Addr

	mu    sync.Mutex
	idle  []*metaConn
	lanes [maxLanes]lane
	queue []*request // requests waiting for a lane: every lane is busy
}

// metaConn is one connection of a metaPool, used by one request (or one
// batch of them) at a time.
type metaConn struct {
	nc   net.Conn
	rd   *bufio.Reader
	buf  []byte // request being written
	pool *metaPool
	lane *lane  // the lane the connection belongs to, if any
	seq  uint64 // the last opaque token sent on a lane's connection
}

// conn returns an idle or new connection to the server of key.
func (c *Client) conn(key string) (*metaConn, error) {
	c.gm()
	addr, err := c.sel.PickServer(key)
	if err != nil {
		return nil, err
	}
	return c.connTo(addr)
}

// pool returns the pool of the server at addr.
func (c *Client) pool(addr net.Addr) *metaPool {
	v, ok := c.pools.Load(addr.String())
	if !ok {
		v, _ = c.pools.LoadOrStore(addr.String(), &metaPool{addr: addr})
	}
	return v.(*metaPool)
}

// connTo returns an idle or new connection to the server at addr.
func (c *Client) connTo(addr net.Addr) (*metaConn, error) {
	c.gm()
	p := c.pool(addr)
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		mc := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return mc, nil
	}
	p.mu.Unlock()
	return c.dialConn(p, 4096)
}

// dialConn opens a new connection to the server of p, reading through a
// buffer of bufSize bytes.
func (c *Client) dialConn(p *metaPool, bufSize int) (*metaConn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.Timeout())
	defer cancel()
	var nc net.Conn
	var err error
	if c.mc.DialContext != nil {
		nc, err = c.mc.DialContext(ctx, p.addr.Network(), p.addr.String())
	} else {
		var d net.Dialer
		nc, err = d.DialContext(ctx, p.addr.Network(), p.addr.String())
	}
	if err != nil {
		return nil, err
	}
	return &metaConn{nc: nc, rd: bufio.NewReaderSize(nc, bufSize), buf: make([]byte, 0, 256), pool: p}, nil
}

// put returns a healthy connection to its pool, or closes it.
func (c *Client) put(mc *metaConn) {
	p := mc.pool
	p.mu.Lock()
	if len(p.idle) < max(c.mc.MaxIdleConns, memcache.DefaultMaxIdleConns) {
		p.idle = append(p.idle, mc)
		mc = nil
	}
	p.mu.Unlock()
	if mc != nil {
		mc.nc.Close()
	}
}

// roundTrip sends mc.buf and reads the response line (see readLine).
func (c *Client) roundTrip(mc *metaConn) ([]byte, error) {
	err := mc.nc.SetDeadline(time.Now().Add(c.Timeout()))
	if err == nil {
		_, err = mc.nc.Write(mc.buf)
	}
	if err != nil {
		return nil, mc.fail(err)
	}
	return mc.readLine()
}

// readLine reads a response line, without "\r\n"; it is valid until the
// next read from mc. On failure mc is closed and must not be used again.
func (mc *metaConn) readLine() ([]byte, error) {
	line, err := mc.rd.ReadSlice('\n')
	if err == nil && !bytes.HasSuffix(line, crlf) {
		err = fmt.Errorf("memclient: malformed response %q", line)
	}
	if err != nil {
		return nil, mc.fail(err)
	}
	return line[:len(line)-2], nil
}

// appendValue reads a value of n bytes and its "\r\n" from mc and
// appends the value to dst. On failure mc is closed.
func (mc *metaConn) appendValue(dst []byte, n int) ([]byte, error) {
	start := len(dst)
	dst = append(dst, make([]byte, n+2)...)
	if _, err := io.ReadFull(mc.rd, dst[start:]); err != nil {
		return nil, mc.fail(err)
	}
	if !bytes.HasSuffix(dst, crlf) {
		return nil, mc.fail(errors.New("memclient: malformed value"))
	}
	return dst[:len(dst)-2], nil
}

// fail closes mc after err and returns err. Unless err is a timeout, the
// connection was cut (a restart, a reset), and its idle siblings most
// likely were too: they are closed as well.
func (mc *metaConn) fail(err error) error {
	mc.nc.Close()
	if !isTimeout(err) {
		mc.pool.closeIdle()
	}
	return err
}

// closeIdle closes the pool's idle connections, those of idle lanes too
// (the leases taken on them are lost).
func (p *metaPool) closeIdle() {
	p.mu.Lock()
	idle := p.idle
	p.idle = nil
	for i := range p.lanes {
		if ln := &p.lanes[i]; !ln.busy && ln.conn != nil {
			idle = append(idle, ln.conn)
			ln.conn = nil
		}
	}
	p.mu.Unlock()
	for _, mc := range idle {
		mc.nc.Close()
	}
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
		return ErrNoMeta
	case bytes.HasPrefix(line, []byte("SERVER_ERROR")):
		return fmt.Errorf("%w: %s", memcache.ErrServerError, line[min(len(line), 13):])
	case bytes.HasPrefix(line, []byte("CLIENT_ERROR")):
		return fmt.Errorf("memclient: client error: %s", line[min(len(line), 13):])
	}
	return fmt.Errorf("memclient: unexpected response %q", line)
}

// Lease is the right to write a key once, taken by LeaseGet or
// LeaseGetEarly. It is one of two kinds, told apart by Refresh:
//
//   - A miss lease (Refresh reports false): the read found the key missing
//     and created an empty placeholder (no value, flags 0), which others
//     read as the key's lease. Fill replaces it; Release deletes it, so
//     that waiters need not sit out its TTL.
//   - A refresh lease (Refresh reports true; LeaseGetEarly only): the read
//     hit a value whose remaining TTL was under its early seconds, and
//     memcached made it the one read that may refresh the value. The
//     caller answers with the value it read; Fill replaces it if it is
//     still unchanged (a writer that changed or deleted it meanwhile
//     wins); Release gives the refresh up, sends nothing and leaves the
//     value.
//
// Fill and Release are compare-and-swaps on the CAS id the read returned,
// sent on the connection that carried the read and on no other: CAS ids
// restart when memcached does, and a new connection may reach a restarted
// server where the same id names a newer item. Once that connection has
// closed, they fail (Release silently) without being sent. A Lease is used
// once, by one goroutine.
type Lease struct {
	c       *Client
	key     string
	cas     uint64
	conn    *metaConn // nil once used
	refresh bool
}

// LeaseGet reads key, creating a placeholder that lives ttl seconds if it
// is missing. It returns the item (a placeholder is empty with flags 0)
// and, if this call created the placeholder, the (miss) lease on it. The
// read is coalesced with concurrent ones to the same server (see the
// package documentation); a failed read is not retried, and after a
// connection was cut the idle connections to that server are closed too.
// Against servers without the meta protocol it returns ErrNoMeta; for a key
// the protocol cannot carry, memcache.ErrMalformedKey.
func (c *Client) LeaseGet(key string, ttl int32) (*memcache.Item, *Lease, error) {
	return c.leaseGet(reqLease, key, ttl, 0)
}

// LeaseGetEarly is LeaseGet that also recaches hot keys early, with
// memcached's own mechanism ("mg <key> v c f t N<ttl> R<early>"): when a
// hit's remaining TTL is below early seconds, memcached makes exactly one
// read of that item the winner, and LeaseGetEarly returns it, with the
// value, a refresh lease (Lease.Refresh reports true). The other reads of
// the item, before and after, get the value and no lease, until a write
// replaces it; so does a hit with more TTL left, or one that never expires.
// A miss takes a miss lease as LeaseGet does. early <= 0 never wins a
// refresh. A hit whose value is empty with flags 0 reads as a placeholder,
// so its win is a miss lease.
//
// A caller holding a refresh lease answers with the value at once; it may
// read the source and Fill the lease with the fresh value, or Release it
// to give the refresh up. The item's Expiration is its remaining TTL, as an
// expiration for a store request (0: it never expires).
//
// A read that wins a refresh lease and neither fills nor is followed by a
// write leaves the key as it is: no other read wins its refresh, and it
// expires at its TTL, after which the next read takes a miss lease.
func (c *Client) LeaseGetEarly(key string, ttl, early int32) (*memcache.Item, *Lease, error) {
	return c.leaseGet(reqEarly, key, ttl, early)
}

// leaseGet is LeaseGet (kind reqLease) and LeaseGetEarly (reqEarly).
func (c *Client) leaseGet(kind reqKind, key string, ttl, early int32) (*memcache.Item, *Lease, error) {
	if c.noMeta.Load() {
		return nil, nil, ErrNoMeta
	}
	p, err := c.poolOf(key)
	if err != nil {
		return nil, nil, err
	}
	r := c.newRequest()
	r.kind, r.key, r.ttl, r.early = kind, key, ttl, early
	c.do(p, r)
	it, won, via, err := r.item, r.won, r.via, r.err
	c.freeRequest(r)
	if err != nil || !won || it.CasID == 0 {
		return it, nil, err
	}
	placeholder := len(it.Value) == 0 && it.Flags == 0
	if !placeholder && kind != reqEarly {
		// W also marks a stale or expiring item when other clients use
		// those features: only a placeholder is LeaseGet's lease.
		return it, nil, nil
	}
	return it, &Lease{c: c, key: key, cas: it.CasID, conn: via, refresh: !placeholder}, nil
}

// Key returns the leased key.
func (l *Lease) Key() string { return l.key }

// Refresh reports whether l is a refresh lease, on a hit's value (see
// LeaseGetEarly), rather than a miss lease, on an empty placeholder.
func (l *Lease) Refresh() bool { return l.refresh }

// Fill replaces the leased item (a placeholder, or the value of a refresh
// lease) with value if it is still there and unchanged: nil if it was
// stored, memcache.ErrCASConflict if the key changed, memcache.ErrCacheMiss
// if it is gone or the lease was used already; another error if the lease's
// connection failed or had closed. The lease is used up.
func (l *Lease) Fill(value []byte, flags uint32, exp int32) error {
	mc := l.conn
	l.conn = nil
	if mc == nil {
		return memcache.ErrCacheMiss
	}
	r := l.c.newRequest()
	r.kind, r.key, r.cas, r.pin = reqFill, l.key, l.cas, mc
	r.value, r.flags, r.ttl = value, flags, exp
	l.c.do(mc.pool, r)
	err := r.err
	l.c.freeRequest(r)
	return err
}

// Release gives the lease up. A miss lease's placeholder is deleted if it
// is still there and unchanged, so that waiters need not sit out its TTL; a
// refresh lease sends nothing and leaves the value. The lease is used up.
func (l *Lease) Release() {
	mc := l.conn
	l.conn = nil
	if mc == nil || l.refresh {
		return
	}
	r := l.c.newRequest()
	r.kind, r.key, r.cas, r.pin = reqRelease, l.key, l.cas, mc
	l.c.do(mc.pool, r)
	l.c.freeRequest(r)
}

// metaDelete deletes key with "md <key>", coalesced with concurrent
// requests to its server: memcache.ErrCacheMiss if it was missing.
func (c *Client) metaDelete(key string) error {
	p, err := c.poolOf(key)
	if err != nil {
		return err
	}
	r := c.newRequest()
	r.kind, r.key = reqDelete, key
	c.do(p, r)
	err = r.err
	c.freeRequest(r)
	return err
}

// getMulti reads keys as memcache.Client.GetMulti does, with one pipeline
// of quiet mg requests per server (misses send nothing; "mn" ends the
// pipeline), the servers in parallel. It takes no leases.
func (c *Client) getMulti(keys []string) (map[string]*memcache.Item, error) {
	if c.noMeta.Load() {
		return nil, ErrNoMeta
	}
	c.gm()
	out := make(map[string]*memcache.Item, len(keys))
	groups, err := c.byServer(keys)
	if err != nil {
		return nil, err
	}
	if len(groups) == 1 {
		return out, c.serverErr(groups[0][0], c.getChunks(groups[0], out))
	}
	res := make([]map[string]*memcache.Item, len(groups))
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		res[i] = make(map[string]*memcache.Item, len(g))
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.serverErr(g[0], c.getChunks(g, res[i])) }()
	}
	wg.Wait()
	for _, m := range res {
		for k, it := range m {
			out[k] = it
		}
	}
	return out, errors.Join(errs...)
}

// byServer splits keys by the server they live on, keeping their order.
func (c *Client) byServer(keys []string) ([][]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	addrs := make([]string, len(keys))
	same := true
	for i, k := range keys {
		a, err := c.sel.PickServer(k)
		if err != nil {
			return nil, err
		}
		addrs[i] = a.String()
		same = same && addrs[i] == addrs[0]
	}
	if same {
		return [][]string{keys}, nil
	}
	var groups [][]string
	index := map[string]int{}
	for i, k := range keys {
		g, ok := index[addrs[i]]
		if !ok {
			g = len(groups)
			index[addrs[i]] = g
			groups = append(groups, nil)
		}
		groups[g] = append(groups[g], k)
	}
	return groups, nil
}

// pipelineKeys bounds one pipeline's requests: a client that writes a long
// pipeline before it reads could fill both sockets' buffers with the
// server's answers and wait forever.
const pipelineKeys = 512

// getChunks reads keys, all of one server, into out, pipelineKeys at a time.
func (c *Client) getChunks(keys []string, out map[string]*memcache.Item) error {
	var errs []error
	for len(keys) > 0 {
		n := min(len(keys), pipelineKeys)
		if err := c.getPipeline(keys[:n], out); err != nil {
			if !errors.Is(err, memcache.ErrServerError) && !isClientErr(err) {
				return err
			}
			errs = append(errs, err) // an error for some key; the others are read
		}
		keys = keys[n:]
	}
	return errors.Join(errs...)
}

// isClientErr reports whether err is a CLIENT_ERROR answer for one key.
func isClientErr(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "memclient: client error")
}

// getPipeline reads keys, all of one server, into out.
func (c *Client) getPipeline(keys []string, out map[string]*memcache.Item) error {
	mc, err := c.conn(keys[0])
	if err != nil {
		return err
	}
	mc.buf = mc.buf[:0]
	for _, k := range keys {
		mc.buf = append(mc.buf, "mg "...)
		mc.buf = append(mc.buf, k...)
		mc.buf = append(mc.buf, " v c f k q\r\n"...)
	}
	mc.buf = append(mc.buf, "mn\r\n"...)
	line, err := c.roundTrip(mc)
	// The hits, in request order: "VA <size> c<cas> f<flags> k<key>" and the value.
	// Values share one buffer; ends holds each one's end in it.
	items := make([]memcache.Item, 0, len(keys))
	var vals []byte
	var ends []int
	var keyErr error
	next := 0
	for ; err == nil && !bytes.Equal(line, []byte("MN")); line, err = mc.readLine() {
		if !bytes.HasPrefix(line, []byte("VA ")) {
			if e := replyErr(line); errors.Is(e, ErrNoMeta) {
				c.noMeta.Store(true)
				mc.nc.Close()
				return e
			} else if keyErr == nil {
				keyErr = e // an error for one key; the others follow
			}
			continue
		}
		h, ok := parseVA(line)
		for ok && next < len(keys) && keys[next] != string(h.key) {
			next++
		}
		if !ok || h.key == nil || next == len(keys) || len(items) == cap(items) {
			mc.nc.Close()
			return fmt.Errorf("memclient: malformed or unexpected response %q", line)
		}
		items = append(items, memcache.Item{Key: keys[next], Flags: h.flags, CasID: h.cas})
		next++
		if vals, err = mc.appendValue(vals, h.size); err != nil {
			return err
		}
		ends = append(ends, len(vals))
	}
	if err != nil {
		return err // roundTrip or readLine closed the connection
	}
	c.put(mc)
	start := 0
	for i := range items {
		items[i].Value = vals[start:ends[i]:ends[i]]
		start = ends[i]
		out[items[i].Key] = &items[i]
	}
	return keyErr
}

// vaHeader is what a "VA <size> <flags>*" line, or a status line's flags,
// says.
type vaHeader struct {
	size   int
	flags  uint32 // f
	cas    uint64 // c
	key    []byte // k
	won    bool   // W
	opaque uint64 // O
	ttl    int64  // t: remaining seconds, -1 for never
	hasTTL bool
}

// parseVA parses a "VA <size> <flags>*" line, the flags in any order.
func parseVA(line []byte) (h vaHeader, ok bool) { return parseFlags(line[3:], true) }

// parseFlags parses the flags of a meta response line after its code,
// starting with the size of a value if sized is set.
func parseFlags(rest []byte, sized bool) (h vaHeader, ok bool) {
	h.size = -1
	if !sized {
		h.size = 0
		if len(rest) > 0 && rest[0] == ' ' {
			rest = rest[1:]
		}
	}
	for i := 0; len(rest) > 0; i++ {
		f := rest
		if j := bytes.IndexByte(rest, ' '); j >= 0 {
			f, rest = rest[:j], rest[j+1:]
		} else {
			rest = nil
		}
		if len(f) == 0 {
			return h, false
		}
		var n uint64
		ok := true
		switch {
		case i == 0 && sized:
			n, ok = parseDecimal(f)
			ok = ok && n <= 1<<31
			h.size = int(n)
		case f[0] == 'f':
			n, ok = parseDecimal(f[1:])
			ok = ok && n <= 1<<32-1
			h.flags = uint32(n)
		case f[0] == 'c':
			h.cas, ok = parseDecimal(f[1:])
		case f[0] == 'k':
			h.key = f[1:]
		case f[0] == 'W':
			h.won = true
		case f[0] == 'O':
			h.opaque, ok = parseDecimal(f[1:])
		case f[0] == 't':
			h.hasTTL = true
			if string(f[1:]) == "-1" {
				h.ttl = -1
				break
			}
			n, ok = parseDecimal(f[1:])
			ok = ok && n < 1<<62
			h.ttl = int64(n)
		}
		if !ok {
			return h, false
		}
	}
	return h, h.size >= 0
}

// DeleteIfUnchanged deletes each item's key if it still holds the item as
// read (by its CasID), with one pipeline of quiet "md <key> C<cas> q"
// requests per server, ended by "mn". It returns the keys that changed
// meanwhile (their delete was refused), for the caller to look at again; a
// key already gone counts as deleted. Against servers without the meta
// protocol it returns ErrNoMeta.
func (c *Client) DeleteIfUnchanged(items []*memcache.Item) (changed []string, err error) {
	if c.noMeta.Load() {
		return nil, ErrNoMeta
	}
	keys := make([]string, len(items))
	byKey := make(map[string]*memcache.Item, len(items))
	for i, it := range items {
		keys[i] = it.Key
		byKey[it.Key] = it
	}
	return c.deleteMany(keys, byKey)
}

// DeleteMulti deletes keys, a miss being no failure, over one pipeline of
// quiet md requests per server (servers in parallel). It returns
// ErrNoMeta from a server without the meta protocol.
func (c *Client) DeleteMulti(keys []string) error {
	if c.noMeta.Load() {
		return ErrNoMeta
	}
	_, err := c.deleteMany(keys, nil)
	return err
}

// deleteMany deletes keys in pipelines per server: if byKey holds their
// items, only those still holding them (see DeleteIfUnchanged), else
// unconditionally.
func (c *Client) deleteMany(keys []string, byKey map[string]*memcache.Item) (changed []string, err error) {
	c.gm()
	groups, err := c.byServer(keys)
	if err != nil {
		return nil, err
	}
	res := make([][]string, len(groups))
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := g; len(g) > 0 && errs[i] == nil; g = g[min(len(g), pipelineKeys):] {
				var ch []string
				ch, errs[i] = c.deletePipeline(g[:min(len(g), pipelineKeys)], byKey)
				res[i] = append(res[i], ch...)
			}
			errs[i] = c.serverErr(g[0], errs[i])
		}()
	}
	wg.Wait()
	for _, r := range res {
		changed = append(changed, r...)
	}
	return changed, errors.Join(errs...)
}

// deletePipeline sends the conditional deletes of keys, all of one server.
// Quiet md answers only failures: "EX" (changed) and "NF" (gone) name no
// key, so each request carries its index as the opaque token ("O<i>"),
// which memcached echoes.
func (c *Client) deletePipeline(keys []string, items map[string]*memcache.Item) ([]string, error) {
	mc, err := c.conn(keys[0])
	if err != nil {
		return nil, err
	}
	mc.buf = mc.buf[:0]
	for i, k := range keys {
		mc.buf = append(mc.buf, "md "...)
		mc.buf = append(mc.buf, k...)
		if items != nil {
			mc.buf = append(mc.buf, " C"...)
			mc.buf = strconv.AppendUint(mc.buf, items[k].CasID, 10)
		}
		mc.buf = append(mc.buf, " O"...)
		mc.buf = strconv.AppendInt(mc.buf, int64(i), 10)
		mc.buf = append(mc.buf, " q\r\n"...)
	}
	mc.buf = append(mc.buf, "mn\r\n"...)
	line, err := c.roundTrip(mc)
	var changed []string
	for ; err == nil && !bytes.Equal(line, []byte("MN")); line, err = mc.readLine() {
		switch {
		case bytes.HasPrefix(line, []byte("NF")): // gone already
		case bytes.HasPrefix(line, []byte("EX")):
			i, ok := opaque(line)
			if !ok || i >= len(keys) {
				mc.nc.Close()
				return nil, fmt.Errorf("memclient: malformed response %q", line)
			}
			changed = append(changed, keys[i])
		default:
			e := replyErr(line)
			if errors.Is(e, ErrNoMeta) {
				c.noMeta.Store(true)
			}
			mc.nc.Close()
			return nil, e
		}
	}
	if err != nil {
		return nil, err // roundTrip or readLine closed the connection
	}
	c.put(mc)
	return changed, nil
}

// opaque returns the "O<n>" token of a response line.
func opaque(line []byte) (int, bool) {
	for _, f := range bytes.Fields(line) {
		if len(f) > 1 && f[0] == 'O' {
			n, ok := parseDecimal(f[1:])
			return int(n), ok && n < 1<<31
		}
	}
	return 0, false
}
