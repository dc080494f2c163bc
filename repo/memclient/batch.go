package memclient

// Coalescing: the single-key meta requests of concurrent callers (LeaseGet,
// LeaseGetEarly, Delete, and a lease's Fill and Release) leave for their
// server together, one pipeline per round trip. See the package
// documentation.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
)

// maxLanes is how many batches may be in flight to one server at once, each
// on a connection of its own: a few callers still run in parallel, and many
// share each round trip.
const maxLanes = 2

// maxBatchBytes bounds the requests of one batch (a larger request goes
// alone), so that they fit in the sockets' buffers: a client that writes
// more before it reads could block on a server that is blocked on the
// answers the client does not read yet.
const maxBatchBytes = 64 << 10

// errLeaseConn is the error of a lease's Fill or Release after the
// connection that took the lease was closed: it is not sent on another.
var errLeaseConn = fmt.Errorf("memclient: the lease's connection was closed: %w", net.ErrClosed)

// reqKind is what a request asks.
type reqKind uint8

const (
	reqLease   reqKind = iota // mg <key> v c f N<ttl>
	reqEarly                  // mg <key> v c f t N<ttl> R<early>
	reqDelete                 // md <key>
	reqFill                   // ms <key> <size> C<cas> F<flags> T<ttl>
	reqRelease                // md <key> C<cas>
)

// request is one caller's request, waiting for a lane, in flight, or
// answered. Its caller owns it until do queues it, and again once do
// returns.
type request struct {
	kind  reqKind
	key   string
	ttl   int32 // N of a read, T of a fill
	early int32 // R of reqEarly
	cas   uint64
	flags uint32
	value []byte
	pin   *metaConn // for a Fill or Release: the lease's connection

	// The answer.
	item *memcache.Item
	won  bool      // W: the lease is this caller's
	via  *metaConn // the connection of a read that won
	err  error

	token uint64        // O of the request as sent
	same  *request      // an identical read in the same batch, whose answer this shares
	lead  *batch        // handed to this request's caller to send
	done  chan struct{} // receives once: the answer, or a batch to lead
}

// read reports whether r is an mg request.
func (r *request) read() bool { return r.kind == reqLease || r.kind == reqEarly }

// size estimates r's bytes on the wire.
func (r *request) size() int { return len(r.key) + len(r.value) + 64 }

// appendTo appends r, with opaque token tok, to b.
func (r *request) appendTo(b []byte, tok uint64) []byte {
	switch r.kind {
	case reqLease, reqEarly:
		b = append(b, "mg "...)
		b = append(b, r.key...)
		if r.kind == reqEarly {
			b = append(b, " v c f t N"...)
		} else {
			b = append(b, " v c f N"...)
		}
		b = strconv.AppendInt(b, int64(r.ttl), 10)
		if r.kind == reqEarly && r.early > 0 {
			b = append(b, " R"...)
			b = strconv.AppendInt(b, int64(r.early), 10)
		}
	case reqDelete, reqRelease:
		b = append(b, "md "...)
		b = append(b, r.key...)
		if r.kind == reqRelease {
			b = append(b, " C"...)
			b = strconv.AppendUint(b, r.cas, 10)
		}
	case reqFill:
		b = append(b, "ms "...)
		b = append(b, r.key...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(len(r.value)), 10)
		b = append(b, " C"...)
		b = strconv.AppendUint(b, r.cas, 10)
		b = append(b, " F"...)
		b = strconv.AppendUint(b, uint64(r.flags), 10)
		b = append(b, " T"...)
		b = strconv.AppendInt(b, int64(r.ttl), 10)
	}
	b = append(b, " O"...)
	b = strconv.AppendUint(b, tok, 10)
	b = append(b, "\r\n"...)
	if r.kind == reqFill {
		b = append(b, r.value...)
		b = append(b, "\r\n"...)
	}
	return b
}

// lane is one connection of a server's meta requests, carrying one batch
// at a time. Its fields are guarded by the pool's mutex, except that the
// caller sending its batch reads conn.
type lane struct {
	conn  *metaConn            // nil until dialled, and once closed
	busy  bool                 // a batch is in flight
	bound []*request           // requests pinned to conn, waiting for the batch in flight
	seen  map[readKey]*request // take's scratch: the reads of the batch it forms
}

// readKey is what makes two reads identical.
type readKey struct {
	kind       reqKind
	key        string
	ttl, early int32
}

// batch is the requests that leave together on a lane.
type batch struct {
	ln   *lane
	reqs []*request // in order; those with same set are not sent
	sent int        // requests sent
	size int        // their estimated bytes
}

// add adds r to b, unless b is full. An identical read already in b (when
// dedup is set) is shared instead of sending r.
func (b *batch) add(r *request, dedup bool) bool {
	var k readKey
	if dedup && r.read() {
		k = readKey{r.kind, r.key, r.ttl, r.early}
		if first := b.ln.seen[k]; first != nil {
			r.same = first
			b.reqs = append(b.reqs, r)
			return true
		}
	}
	if b.sent > 0 && (b.sent == pipelineKeys || b.size+r.size() > maxBatchBytes) {
		return false
	}
	if dedup && r.read() {
		if b.ln.seen == nil {
			b.ln.seen = make(map[readKey]*request)
		}
		b.ln.seen[k] = r
	}
	b.sent++
	b.size += r.size()
	b.reqs = append(b.reqs, r)
	return true
}

// fail gives every request of b the error err.
func (b *batch) fail(err error) {
	for _, r := range b.reqs {
		r.item, r.won, r.via, r.err = nil, false, nil, err
	}
}

// newRequest returns a cleared request.
func (c *Client) newRequest() *request {
	if r, _ := c.reqs.Get().(*request); r != nil {
		return r
	}
	return &request{done: make(chan struct{}, 1)}
}

// freeRequest recycles r, which nothing else refers to any more.
func (c *Client) freeRequest(r *request) {
	*r = request{done: r.done}
	c.reqs.Put(r)
}

// do sends r to the server of p and waits for its answer, which it leaves
// in r. If a lane is idle, r leaves at once, alone, on it; otherwise r waits
// until a lane's round trip ends and leaves with that lane's next batch,
// which the caller of one of its requests sends (run). A request pinned to
// a connection waits for that connection's lane, and fails with
// errLeaseConn, unsent, once that connection is closed.
func (c *Client) do(p *metaPool, r *request) {
	p.mu.Lock()
	ln, ok := p.laneFor(r)
	if ln != nil {
		ln.busy = true
	}
	p.mu.Unlock()
	switch {
	case !ok:
		r.err = errLeaseConn
	case ln != nil:
		b := &batch{ln: ln, reqs: make([]*request, 0, 1)}
		b.add(r, false)
		c.run(p, b, r)
	default:
		<-r.done
		if b := r.lead; b != nil {
			r.lead = nil
			c.run(p, b, r)
		}
	}
}

// laneFor returns an idle lane r may use, else queues r and returns nil;
// ok is false if r is pinned to a connection that is gone. An idle lane
// with a connection is preferred.
func (p *metaPool) laneFor(r *request) (ln *lane, ok bool) {
	if r.pin != nil {
		ln := r.pin.lane
		switch {
		case ln.conn != r.pin:
			return nil, false
		case ln.busy:
			ln.bound = append(ln.bound, r)
			return nil, true
		}
		return ln, true
	}
	var free *lane
	for i := range p.lanes {
		l := &p.lanes[i]
		if l.busy {
			continue
		}
		if l.conn != nil {
			return l, true
		}
		if free == nil {
			free = l
		}
	}
	if free == nil {
		p.queue = append(p.queue, r)
	}
	return free, true
}

// run sends b, whose lane is busy, for the caller of self (one of b's
// requests). Then it takes the lane's next batch and hands it to the caller
// of one of its requests to send, so the lane stays busy without waiting for
// a timer, or marks the lane idle; and it wakes b's other callers. If the
// lane's connection failed, it is forgotten, and the requests pinned to it
// fail.
func (c *Client) run(p *metaPool, b *batch, self *request) {
	ln := b.ln
	err := c.send(p, b)
	var lost []*request
	p.mu.Lock()
	if err != nil {
		ln.conn = nil
		lost, ln.bound = ln.bound, nil
	}
	next := p.take(ln)
	p.mu.Unlock()
	for _, r := range lost {
		r.err = errLeaseConn
		r.done <- struct{}{}
	}
	for _, r := range b.reqs {
		if r != self {
			r.done <- struct{}{}
		}
	}
	if next != nil { // woken last, the next leader runs first
		r := next.reqs[0]
		r.lead = next
		r.done <- struct{}{}
	}
}

// take forms the next batch of ln from the requests waiting for it: those
// pinned to its connection first, then the pool's queue, in order, up to
// pipelineKeys requests and maxBatchBytes (at least one). A read identical
// to one already in the batch shares that one's answer. If nothing waits,
// take marks ln idle and returns nil. The pool's mutex is held.
func (p *metaPool) take(ln *lane) *batch {
	waiting := len(ln.bound) + len(p.queue)
	if waiting == 0 {
		ln.busy = false
		return nil
	}
	b := &batch{ln: ln, reqs: make([]*request, 0, min(waiting, pipelineKeys))}
	dedup := waiting > 1
	n := 0
	for n < len(ln.bound) && b.add(ln.bound[n], dedup) {
		n++
	}
	clear(ln.bound[copy(ln.bound, ln.bound[n:]):])
	ln.bound = ln.bound[:len(ln.bound)-n]
	n = 0
	for n < len(p.queue) && b.add(p.queue[n], dedup) {
		n++
	}
	clear(p.queue[copy(p.queue, p.queue[n:]):])
	p.queue = p.queue[:len(p.queue)-n]
	clear(ln.seen)
	return b
}

// send writes b's requests (each first of identical reads) on its lane's
// connection, dialling one if the lane has none, and reads their answers
// into them; identical reads get copies. If the connection fails, every
// request of b gets the error, and send closes the connection and returns
// the error.
func (c *Client) send(p *metaPool, b *batch) error {
	mc := b.ln.conn
	if mc == nil {
		var err error
		if mc, err = c.dialConn(p, 16<<10); err != nil {
			b.fail(err)
			return err
		}
		mc.lane = b.ln
		p.mu.Lock()
		b.ln.conn = mc
		p.mu.Unlock()
	}
	if cap(mc.buf) > maxBatchBytes {
		mc.buf = nil // after a large fill
	}
	mc.buf = mc.buf[:0]
	for _, r := range b.reqs {
		if r.same == nil {
			mc.seq++
			r.token = mc.seq
			mc.buf = r.appendTo(mc.buf, r.token)
		}
	}
	err := mc.nc.SetDeadline(time.Now().Add(c.Timeout()))
	if err == nil {
		_, err = mc.nc.Write(mc.buf)
	}
	if err != nil {
		err = mc.fail(err)
		b.fail(err)
		return err
	}
	for _, r := range b.reqs {
		if r.same != nil {
			continue
		}
		if err := c.answer(mc, r); err != nil {
			b.fail(err)
			return err
		}
	}
	for _, r := range b.reqs {
		if f := r.same; f != nil {
			r.err = f.err
			if f.item != nil {
				it := *f.item
				it.Value = bytes.Clone(f.item.Value)
				r.item = &it
			}
		}
	}
	return nil
}

// answer reads r's answer from mc into r. An error it returns is the
// connection's (a cut, a malformed or unexpected answer, a server without
// the meta protocol): mc is then closed.
func (c *Client) answer(mc *metaConn, r *request) error {
	line, err := mc.readLine()
	if err != nil {
		return err
	}
	if r.read() && bytes.HasPrefix(line, []byte("VA ")) {
		h, ok := parseVA(line)
		if !ok || h.opaque != r.token || (r.kind == reqEarly && !h.hasTTL) {
			mc.nc.Close()
			return fmt.Errorf("memclient: malformed or unexpected response %q", line)
		}
		it := &memcache.Item{Key: r.key, Flags: h.flags, CasID: h.cas}
		if r.kind == reqEarly {
			it.Expiration = fillExp(h.ttl)
		}
		if it.Value, err = mc.appendValue(make([]byte, 0, h.size+2), h.size); err != nil {
			return err
		}
		r.item, r.won = it, h.won
		if h.won {
			r.via = mc
		}
		return nil
	}
	if code, ok := statusCode(line); ok {
		h, ok := parseFlags(line[2:], false)
		if !ok || h.opaque != r.token || r.read() != (code == "EN") {
			mc.nc.Close()
			return fmt.Errorf("memclient: malformed or unexpected response %q", line)
		}
		switch code {
		case "EN", "NF":
			r.err = memcache.ErrCacheMiss
		case "EX":
			r.err = memcache.ErrCASConflict
		case "NS":
			r.err = memcache.ErrNotStored
		}
		return nil
	}
	err = replyErr(line)
	if errors.Is(err, memcache.ErrServerError) {
		r.err = err // memcached skips the request's value: the next answer follows
		return nil
	}
	if errors.Is(err, ErrNoMeta) {
		c.noMeta.Store(true)
	}
	mc.nc.Close() // the answers that follow may not match the requests
	return err
}

// statusCode returns the code of a meta status line ("HD", "EN", "NF",
// "EX", "NS").
func statusCode(line []byte) (string, bool) {
	if len(line) < 2 || len(line) > 2 && line[2] != ' ' {
		return "", false
	}
	switch string(line[:2]) {
	case "HD":
		return "HD", true
	case "EN":
		return "EN", true
	case "NF":
		return "NF", true
	case "EX":
		return "EX", true
	case "NS":
		return "NS", true
	}
	return "", false
}

// legalKey reports whether key can be sent in a meta request, as gomemcache
// decides it for the classic ones; the empty key cannot.
func legalKey(key string) bool {
	if len(key) == 0 || len(key) > 250 {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] <= ' ' || key[i] == 0x7f {
			return false
		}
	}
	return true
}

// poolOf returns the pool of the server of key, for a request of key.
func (c *Client) poolOf(key string) (*metaPool, error) {
	if !legalKey(key) {
		return nil, memcache.ErrMalformedKey
	}
	c.gm()
	addr, err := c.sel.PickServer(key)
	if err != nil {
		return nil, err
	}
	return c.pool(addr), nil
}
