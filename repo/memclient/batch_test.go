package memclient

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// Coalescing, against a real memcached: reads and writes of many
// goroutines at once, and batches held in flight by a pausing proxy.

// noLeak fails t if the goroutines started during the test outlive it
// (the client starts none of its own).
func noLeak(t *testing.T) {
	t.Helper()
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Errorf("%d goroutines before the test, %d after:\n%s", before, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// pauser is a TCP proxy in front of a server that, while paused, holds
// what clients send (or, with replies set, what the server answers), so
// their requests stay in flight.
type pauser struct {
	ln      net.Listener
	target  string
	replies bool

	mu     sync.Mutex
	cond   *sync.Cond
	paused bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newPauser(t *testing.T, target string, replies bool) *pauser {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &pauser{ln: ln, target: target, replies: replies}
	p.cond = sync.NewCond(&p.mu)
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		ln.Close()
		p.Resume()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *pauser) Addr() string { return p.ln.Addr().String() }

// Pause holds what clients send from now on.
func (p *pauser) Pause() {
	p.mu.Lock()
	p.paused = true
	p.mu.Unlock()
}

// Resume forwards what was held, and what follows.
func (p *pauser) Resume() {
	p.mu.Lock()
	p.paused = false
	p.cond.Broadcast()
	p.mu.Unlock()
}

func (p *pauser) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pump(s, c, !p.replies)
		go p.pump(c, s, p.replies)
	}
}

// pump copies src to dst, holding the bytes while paused if hold is set,
// and closes both when either ends.
func (p *pauser) pump(dst, src net.Conn, hold bool) {
	defer p.wg.Done()
	defer src.Close()
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		p.mu.Lock()
		for hold && p.paused {
			p.cond.Wait()
		}
		p.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// rig starts a memcached and a client of it, and checks that the test
// leaks no goroutine.
func rig(t *testing.T) *Client {
	t.Helper()
	noLeak(t)
	mp := repotest.StartMemcached(t)
	c := metaClient(t, mp.Addr())
	t.Cleanup(func() { c.Close() })
	return c
}

// heldRig starts a memcached, a pausing proxy in front of it (holding
// replies if set, else requests) and a client through the proxy, and
// checks that the test leaks no goroutine.
func heldRig(t *testing.T, replies bool) (*repotest.MemcachedProcess, *pauser, *Client) {
	t.Helper()
	noLeak(t)
	mp := repotest.StartMemcached(t)
	px := newPauser(t, mp.Addr(), replies)
	c := metaClient(t, px.Addr())
	t.Cleanup(func() { c.Close() })
	return mp, px, c
}

// cmdGets returns the server's count of get requests (meta ones included).
func cmdGets(t *testing.T, addr string) int {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(time.Second))
	if _, err := nc.Write([]byte("stats\r\n")); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(nc)
	n := -1
	for sc.Scan() && sc.Text() != "END" {
		if v, ok := strings.CutPrefix(sc.Text(), "STAT cmd_get "); ok {
			n, _ = strconv.Atoi(v)
		}
	}
	if n < 0 {
		t.Fatalf("stats of %s: no cmd_get (%v)", addr, sc.Err())
	}
	return n
}

// waitFor polls cond, under p's lock, until it holds.
func waitFor(t *testing.T, p *metaPool, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		p.mu.Lock()
		ok := cond()
		p.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: timed out", what)
		}
	}
}

// heldLanes makes c's lanes to the server behind px busy with a LeaseGet
// each (of held-0, held-1, ...), held by the paused proxy; the reads end
// once the proxy resumes, and wait waits for them.
func heldLanes(t *testing.T, c *Client, px *pauser) (p *metaPool, wait func() []error) {
	t.Helper()
	addr, err := c.Server("any")
	if err != nil {
		t.Fatal(err)
	}
	p = c.pool(addr)
	px.Pause()
	var wg sync.WaitGroup
	errs := make([]error, maxLanes)
	for i := range maxLanes {
		wg.Go(func() {
			_, l, err := c.LeaseGet("held-"+strconv.Itoa(i)+"-"+strconv.FormatInt(time.Now().UnixNano(), 36), 2)
			if l != nil {
				l.Release()
			}
			errs[i] = err
		})
		waitFor(t, p, "a busy lane", func() bool { return busyLanes(p) == i+1 })
	}
	return p, func() []error { wg.Wait(); return errs }
}

func busyLanes(p *metaPool) int {
	n := 0
	for i := range p.lanes {
		if p.lanes[i].busy {
			n++
		}
	}
	return n
}

// Reads queued while every lane is busy leave in one batch: identical ones
// are sent once and share the answer, and only one caller gets the lease.
func TestCoalesceIdenticalReads(t *testing.T) {
	mp, px, c := heldRig(t, false)
	if err := c.Set(&memcache.Item{Key: "warm", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	gets := cmdGets(t, mp.Addr())

	p, held := heldLanes(t, c, px)
	const readers = 100
	type result struct {
		it  *memcache.Item
		l   *Lease
		err error
	}
	res := make([]result, readers)
	var wg sync.WaitGroup
	for i := range readers {
		key := "hot"
		if i%10 == 9 {
			key = "other-" + strconv.Itoa(i)
		}
		wg.Go(func() {
			it, l, err := c.LeaseGet(key, 5)
			res[i] = result{it, l, err}
		})
	}
	waitFor(t, p, "the queued reads", func() bool { return len(p.queue) == readers })
	px.Resume()
	wg.Wait()
	for i, err := range held() {
		if err != nil {
			t.Fatalf("held read %d: %v", i, err)
		}
	}
	// The held reads, then one batch: hot once, and the 10 others.
	if got, want := cmdGets(t, mp.Addr())-gets, maxLanes+1+readers/10; got != want {
		t.Errorf("the server saw %d gets, want %d", got, want)
	}
	won := 0
	for i, r := range res {
		if r.err != nil {
			t.Fatalf("read %d: %v", i, r.err)
		}
		if len(r.it.Value) != 0 || r.it.Flags != 0 {
			t.Fatalf("read %d of a missing key: %q flags %d", i, r.it.Value, r.it.Flags)
		}
		if r.l == nil {
			if i%10 == 9 {
				t.Fatalf("read %d, alone on its key, got no lease", i)
			}
			continue
		}
		if i%10 != 9 {
			won++
		}
		if err := r.l.Fill([]byte("filled"), 1, 60); err != nil {
			t.Fatalf("fill of read %d: %v", i, err)
		}
	}
	if won != 1 {
		t.Fatalf("%d readers of the hot key won its lease, want 1", won)
	}
	if it, err := c.Get("hot"); err != nil || string(it.Value) != "filled" {
		t.Fatalf("after the fill: %+v, %v", it, err)
	}
}

// A caller never shares a request sent before it called: a read queued
// behind identical reads in flight, answered before a write but not yet
// received, is sent on its own, and sees the write.
func TestCoalesceNotWithSentRequests(t *testing.T) {
	mp, px, c := heldRig(t, true)
	direct := metaClient(t, mp.Addr()) // the writer, not held by the proxy
	defer direct.Close()
	if err := direct.Set(&memcache.Item{Key: "k", Value: []byte("old")}); err != nil {
		t.Fatal(err)
	}
	addr, _ := c.Server("k")
	p := c.pool(addr)
	px.Pause()
	var wg sync.WaitGroup
	var first, second *memcache.Item
	for i := range maxLanes {
		wg.Go(func() {
			it, _, err := c.LeaseGet("k", 5)
			if err != nil {
				t.Error(err)
			}
			if i == 0 {
				first = it
			}
		})
		waitFor(t, p, "a busy lane", func() bool { return busyLanes(p) == i+1 })
	}
	// A busy lane has not necessarily reached the server yet: wait until
	// memcached has answered every read in flight (the proxy holds the
	// answers), so the write below comes after them.
	for deadline := time.Now().Add(5 * time.Second); cmdGets(t, mp.Addr()) < maxLanes; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the reads in flight never reached the server")
		}
	}
	if err := direct.Set(&memcache.Item{Key: "k", Value: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() {
		it, _, err := c.LeaseGet("k", 5)
		if err != nil {
			t.Error(err)
		}
		second = it
	})
	waitFor(t, p, "the queued read", func() bool { return len(p.queue) == 1 })
	px.Resume()
	wg.Wait()
	if first == nil || second == nil {
		t.Fatal("a read failed")
	}
	if string(first.Value) != "old" {
		t.Fatalf("the read in flight saw %q; the test needs it answered before the write", first.Value)
	}
	if string(second.Value) != "new" {
		t.Fatalf("a read that began after a write returned saw %q", second.Value)
	}
}

// Many goroutines read (LeaseGet) the same and different keys while others
// set and delete them through the client: every read sees the state of a
// write that returned before the read began, or of a later one that began
// before the read returned.
func TestCoalescedReadsAndWrites(t *testing.T) {
	c := rig(t)
	const keys, readers = 8, 64
	// Key k's writer runs ops 1, 2, ...: op n deletes the key if n%3 == 0,
	// else sets it to "v<n>". begun and acked are the last op begun and
	// returned; op 0 is the initial state, a missing key.
	var begun, acked [keys]atomic.Int64
	stop := make(chan struct{})
	var writers, wg sync.WaitGroup
	for k := range keys {
		writers.Go(func() {
			key := "rw-" + strconv.Itoa(k)
			for n := int64(1); ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				begun[k].Store(n)
				var err error
				if n%3 == 0 {
					err = c.Delete(key)
					if errors.Is(err, memcache.ErrCacheMiss) {
						err = nil
					}
				} else {
					err = c.Set(&memcache.Item{Key: key, Value: []byte("v" + strconv.FormatInt(n, 10)), Expiration: 60})
				}
				if err != nil {
					t.Errorf("write %d of %s: %v", n, key, err)
					return
				}
				acked[k].Store(n)
				time.Sleep(time.Duration(n%5) * 100 * time.Microsecond)
			}
		})
	}
	var reads, stale, empties atomic.Int64
	deadline := time.Now().Add(2 * time.Second)
	for i := range readers {
		wg.Go(func() {
			for j := 0; time.Now().Before(deadline); j++ {
				k := (i + j) % keys
				if j%2 == 0 {
					k = 0 // the hot key
				}
				key := "rw-" + strconv.Itoa(k)
				floor := acked[k].Load()
				it, l, err := c.LeaseGet(key, 2)
				ceil := begun[k].Load()
				if err != nil {
					t.Errorf("LeaseGet(%s): %v", key, err)
					return
				}
				reads.Add(1)
				var m int64 // the op whose state the read saw
				if len(it.Value) == 0 {
					empties.Add(1)
					m = ceil - ceil%3 // the last delete begun
				} else {
					m, err = strconv.ParseInt(strings.TrimPrefix(string(it.Value), "v"), 10, 64)
					if err != nil || m > ceil {
						t.Errorf("read %s: %q (ops begun %d)", key, it.Value, ceil)
					}
				}
				if m < floor {
					stale.Add(1)
					t.Errorf("read %s: the state of op %d after op %d returned", key, m, floor)
				}
				if l != nil {
					l.Release()
				}
			}
		})
	}
	wg.Wait()
	close(stop)
	writers.Wait()
	t.Logf("reads=%d empty=%d stale=%d", reads.Load(), empties.Load(), stale.Load())
	if reads.Load() < readers {
		t.Fatalf("only %d reads", reads.Load())
	}
}

// Of many concurrent readers of missing keys, exactly one per key gets the
// lease.
func TestCoalesceOneLeasePerKey(t *testing.T) {
	c := rig(t)
	const keys, readers = 16, 256
	var won [keys]atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range readers {
		wg.Go(func() {
			<-start
			it, l, err := c.LeaseGet("one-"+strconv.Itoa(i%keys), 5)
			if err != nil {
				t.Error(err)
				return
			}
			if len(it.Value) != 0 || it.Flags != 0 {
				t.Errorf("a missing key read as %q", it.Value)
			}
			if l != nil {
				won[i%keys].Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	for k := range won {
		if n := won[k].Load(); n != 1 {
			t.Errorf("key %d: %d leases, want 1", k, n)
		}
	}
}

// A server stopped while batches are in flight fails every request of
// them, the queued ones too, and leases taken on the cut connections;
// once it is back the next requests succeed.
func TestCoalesceConnectionCut(t *testing.T) {
	mp, px, c := heldRig(t, false)
	lease := mustLease(t, c, "leased")

	p, held := heldLanes(t, c, px)
	const readers = 40
	errs := make([]error, readers)
	var wg sync.WaitGroup
	for i := range readers {
		wg.Go(func() {
			var err error
			if i%4 == 0 {
				err = c.Delete("cut-" + strconv.Itoa(i))
			} else {
				var l *Lease
				_, l, err = c.LeaseGet("cut-"+strconv.Itoa(i%7), 5)
				if l != nil {
					t.Errorf("read %d got a lease from a stopped server", i)
				}
			}
			errs[i] = err
		})
	}
	waitFor(t, p, "the queued requests", func() bool { return len(p.queue) == readers })
	if err := mp.Stop(); err != nil {
		t.Fatal(err)
	}
	px.Resume()
	wg.Wait()
	for i, err := range append(held(), errs...) {
		if err == nil || errors.Is(err, memcache.ErrCacheMiss) {
			t.Fatalf("request %d to a stopped server: %v, want a connection error", i, err)
		}
	}
	if err := mp.Start(); err != nil {
		t.Fatal(err)
	}
	if err := lease.Fill([]byte("v"), 0, 60); err == nil || errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("fill of a lease whose connection was cut: %v, want a connection error", err)
	}
	for i := range 2 * maxLanes {
		key := "after-" + strconv.Itoa(i)
		it, l, err := c.LeaseGet(key, 5)
		if err != nil || l == nil || len(it.Value) != 0 {
			t.Fatalf("LeaseGet(%s) after the restart: %+v lease %v, %v", key, it, l, err)
		}
		if err := l.Fill([]byte("x"), 0, 60); err != nil {
			t.Fatalf("fill after the restart: %v", err)
		}
		if err := c.Delete(key); err != nil {
			t.Fatalf("Delete(%s) after the restart: %v", key, err)
		}
	}
}

// Fill and Release of a lease go on the connection that took it, pinned
// to its lane, also while that lane is busy with other callers' batches.
func TestCoalescePinnedFill(t *testing.T) {
	c := rig(t)
	const workers = 32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range 50 {
				key := fmt.Sprintf("pin-%d-%d", w, i)
				_, l, err := c.LeaseGet(key, 5)
				if err != nil || l == nil {
					t.Errorf("LeaseGet(%s): lease %v, %v", key, l, err)
					return
				}
				if i%2 == 0 {
					l.Release()
					if _, err := c.Get(key); !errors.Is(err, memcache.ErrCacheMiss) {
						t.Errorf("%s after Release: %v", key, err)
					}
					continue
				}
				if err := l.Fill([]byte(key), 3, 60); err != nil {
					t.Errorf("Fill(%s): %v", key, err)
				}
				if it, _, err := c.LeaseGet(key, 5); err != nil || string(it.Value) != key || it.Flags != 3 {
					t.Errorf("%s after Fill: %+v, %v", key, it, err)
				}
			}
		})
	}
	wg.Wait()
}

// Delete is a meta request: a miss is memcache.ErrCacheMiss, a bad key
// memcache.ErrMalformedKey, as with gomemcache.
func TestClientDelete(t *testing.T) {
	mp := repotest.StartMemcached(t)
	c := metaClient(t, mp.Addr())
	if err := c.Set(&memcache.Item{Key: "d", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("d"); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete("d"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("Delete of a missing key: %v", err)
	}
	for _, key := range []string{"", "a b", "a\r\nmn", strings.Repeat("x", 251)} {
		if err := c.Delete(key); !errors.Is(err, memcache.ErrMalformedKey) {
			t.Errorf("Delete(%q): %v, want ErrMalformedKey", key, err)
		}
		if _, _, err := c.LeaseGet(key, 2); !errors.Is(err, memcache.ErrMalformedKey) {
			t.Errorf("LeaseGet(%q): %v, want ErrMalformedKey", key, err)
		}
	}
}

// LeaseGetEarly: of the reads of a key whose TTL runs out within early
// seconds exactly one wins a refresh lease on the value; its Fill replaces
// the value unless a writer got there first, and giving it up leaves the
// value.
func TestLeaseGetEarly(t *testing.T) {
	c := rig(t)
	set := func(key, value string, exp int32) {
		t.Helper()
		if err := c.Set(&memcache.Item{Key: key, Value: []byte(value), Flags: 5, Expiration: exp}); err != nil {
			t.Fatal(err)
		}
	}
	// win reads key with early=5 from many goroutines at once and returns
	// the one refresh lease.
	win := func(key, want string) *Lease {
		t.Helper()
		const readers = 64
		leases := make(chan *Lease, readers)
		start := make(chan struct{})
		var wg sync.WaitGroup
		for range readers {
			wg.Go(func() {
				<-start
				it, l, err := c.LeaseGetEarly(key, 3, 5)
				if err != nil || string(it.Value) != want || it.Flags != 5 {
					t.Errorf("LeaseGetEarly(%s): %+v, %v; want %q", key, it, err, want)
					return
				}
				if it.Expiration < 1 || it.Expiration > 2 {
					t.Errorf("LeaseGetEarly(%s): Expiration %d, want the remaining TTL (1-2)", key, it.Expiration)
				}
				if l != nil {
					leases <- l
				}
			})
		}
		close(start)
		wg.Wait()
		close(leases)
		var got []*Lease
		for l := range leases {
			got = append(got, l)
		}
		if len(got) != 1 {
			t.Fatalf("%d of %d readers of %s won the refresh, want 1", len(got), readers, key)
		}
		if !got[0].Refresh() || got[0].Key() != key {
			t.Fatalf("the refresh lease: Refresh %v, key %q", got[0].Refresh(), got[0].Key())
		}
		return got[0]
	}

	// The refresh fills: the new value replaces the old, with its TTL.
	set("hot", "old", 2)
	l := win("hot", "old")
	if it, l2, err := c.LeaseGetEarly("hot", 3, 5); err != nil || l2 != nil || string(it.Value) != "old" {
		t.Fatalf("a read after the win: %+v lease %v, %v; want the value, no lease", it, l2, err)
	}
	if err := l.Fill([]byte("new"), 5, 60); err != nil {
		t.Fatalf("the refresh fill: %v", err)
	}
	if it, l2, err := c.LeaseGetEarly("hot", 3, 5); err != nil || l2 != nil || string(it.Value) != "new" || it.Expiration < 59 {
		t.Fatalf("after the refresh: %+v lease %v, %v; want the new value with its TTL, no lease", it, l2, err)
	}

	// A write between the win and the fill wins.
	set("written", "old", 2)
	l = win("written", "old")
	set("written", "writer", 60)
	if err := l.Fill([]byte("refresh"), 5, 60); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("a refresh fill after a write: %v, want ErrCASConflict", err)
	}
	if it, err := c.Get("written"); err != nil || string(it.Value) != "writer" {
		t.Fatalf("after the lost refresh: %+v, %v", it, err)
	}
	// So does a delete.
	set("deleted", "old", 2)
	l = win("deleted", "old")
	if err := c.Delete("deleted"); err != nil {
		t.Fatal(err)
	}
	if err := l.Fill([]byte("refresh"), 5, 60); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("a refresh fill after a delete: %v, want ErrCacheMiss", err)
	}

	// Giving the refresh up leaves the value, and nobody else wins it.
	set("given-up", "old", 2)
	l = win("given-up", "old")
	l.Release()
	if err := l.Fill([]byte("late"), 5, 60); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("a fill after Release: %v, want ErrCacheMiss", err)
	}
	if it, l2, err := c.LeaseGetEarly("given-up", 3, 5); err != nil || l2 != nil || string(it.Value) != "old" {
		t.Fatalf("after giving the refresh up: %+v lease %v, %v; want the value, no lease", it, l2, err)
	}

	// No win while the TTL is longer than early, nor for a key that never
	// expires, nor with early 0.
	set("fresh", "v", 60)
	set("forever", "v", 0)
	set("plain", "v", 2)
	for _, tc := range []struct {
		key   string
		early int32
	}{{"fresh", 5}, {"forever", 5}, {"plain", 0}} {
		if it, l, err := c.LeaseGetEarly(tc.key, 3, tc.early); err != nil || l != nil || string(it.Value) != "v" {
			t.Fatalf("LeaseGetEarly(%s, early %d): %+v lease %v, %v; want the value, no lease", tc.key, tc.early, it, l, err)
		}
	}
	// LeaseGet never hands out a refresh.
	set("lease-get", "v", 2)
	if it, l, err := c.LeaseGet("lease-get", 3); err != nil || l != nil || string(it.Value) != "v" {
		t.Fatalf("LeaseGet of an expiring key: %+v lease %v, %v", it, l, err)
	}

	// A miss takes a miss lease, which Release deletes.
	it, l, err := c.LeaseGetEarly("missing", 3, 5)
	if err != nil || l == nil || l.Refresh() || len(it.Value) != 0 || it.Flags != 0 {
		t.Fatalf("LeaseGetEarly of a missing key: %+v lease %+v, %v; want a miss lease on a placeholder", it, l, err)
	}
	if _, l2, err := c.LeaseGetEarly("missing", 3, 5); err != nil || l2 != nil {
		t.Fatalf("a second read of the placeholder: lease %v, %v; want none", l2, err)
	}
	l.Release()
	if _, err := c.Get("missing"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("after releasing the miss lease: %v, want a miss", err)
	}
}
