package memclient

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// The meta-protocol half of Client, against a real memcached.

func metaClient(t *testing.T, addr string) *Client {
	t.Helper()
	mc, err := New(Config{Servers: []string{addr}, MaxIdleConns: 4, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

func mustLease(t *testing.T, mc *Client, key string) *Lease {
	t.Helper()
	it, l, err := mc.LeaseGet(key, 3)
	if err != nil || l == nil {
		t.Fatalf("LeaseGet(%s) of a missing key: lease %v, %v; want the lease", key, l, err)
	}
	if len(it.Value) != 0 || it.Flags != 0 {
		t.Fatalf("LeaseGet(%s): placeholder %q flags %d, want empty with flags 0", key, it.Value, it.Flags)
	}
	return l
}

func TestClientLease(t *testing.T) {
	mp := repotest.StartMemcached(t)
	mc := metaClient(t, mp.Addr())

	l := mustLease(t, mc, "k")
	// Everyone else sees the placeholder as a lease, through mg and get.
	it, l2, err := mc.LeaseGet("k", 3)
	if err != nil || l2 != nil {
		t.Fatalf("second LeaseGet: lease %v, %v; want none", l2, err)
	}
	if len(it.Value) != 0 || it.Flags != 0 {
		t.Fatalf("second LeaseGet saw %q flags %d, not a lease", it.Value, it.Flags)
	}
	if it, err := mc.Get("k"); err != nil || len(it.Value) != 0 || it.Flags != 0 {
		t.Fatalf("get of the placeholder: %+v %v", it, err)
	}
	if err := l.Fill([]byte("v1"), 7, 60); err != nil {
		t.Fatalf("fill: %v", err)
	}
	if it, err := mc.Get("k"); err != nil || string(it.Value) != "v1" || it.Flags != 7 {
		t.Fatalf("after fill: %+v %v", it, err)
	}
	if it, l, err := mc.LeaseGet("k", 3); err != nil || l != nil || string(it.Value) != "v1" || it.Flags != 7 {
		t.Fatalf("LeaseGet of a hit: %+v lease %v, %v", it, l, err)
	}
	if err := l.Fill([]byte("again"), 7, 60); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("second fill with a used lease: %v, want ErrCacheMiss", err)
	}

	// A write between lease and fill wins.
	l = mustLease(t, mc, "written")
	if err := mc.Set(&memcache.Item{Key: "written", Value: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	if err := l.Fill([]byte("old"), 0, 60); !errors.Is(err, memcache.ErrCASConflict) {
		t.Fatalf("fill after a write: %v, want ErrCASConflict", err)
	}
	if it, err := mc.Get("written"); err != nil || string(it.Value) != "new" {
		t.Fatalf("after the lost fill: %+v %v", it, err)
	}

	// A delete between lease and fill wins.
	l = mustLease(t, mc, "deleted")
	if err := mc.Delete("deleted"); err != nil {
		t.Fatal(err)
	}
	if err := l.Fill([]byte("old"), 0, 60); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("fill after a delete: %v, want ErrCacheMiss", err)
	}
	if _, err := mc.Get("deleted"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("after the lost fill: %v, want a miss", err)
	}

	// release deletes only an unchanged placeholder.
	l = mustLease(t, mc, "released")
	l.Release()
	if _, err := mc.Get("released"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("after release: %v, want a miss", err)
	}
	l = mustLease(t, mc, "kept")
	if err := mc.Set(&memcache.Item{Key: "kept", Value: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	l.Release()
	if it, err := mc.Get("kept"); err != nil || string(it.Value) != "new" {
		t.Fatalf("release after a write: %+v %v, want the write kept", it, err)
	}
}

// CAS ids restart with memcached. A fill must not reach a restarted server,
// where its CAS id can name another client's newer item.
func TestClientFillAfterRestart(t *testing.T) {
	mp := repotest.StartMemcached(t)
	mc := metaClient(t, mp.Addr())
	other := metaClient(t, mp.Addr())

	l := mustLease(t, mc, "k") // the first item of a new server
	if err := mp.Restart(); err != nil {
		t.Fatal(err)
	}
	theirs := mustLease(t, other, "k") // the first item again
	if theirs.cas != l.cas {
		t.Fatalf("CAS ids %d and %d: the test needs them equal", l.cas, theirs.cas)
	}
	if err := l.Fill([]byte("stale"), 0, 60); err == nil || errors.Is(err, memcache.ErrCASConflict) || errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("fill across a restart: %v, want a transport error", err)
	}
	if it, err := other.Get("k"); err != nil || len(it.Value) != 0 {
		t.Fatalf("after the fill across a restart the key holds %+v, %v; want the other lease", it, err)
	}
	if err := theirs.Fill([]byte("fresh"), 0, 60); err != nil {
		t.Fatalf("the new lease's fill: %v", err)
	}
	// The client recovers: the cut connections are gone.
	if it, l, err := mc.LeaseGet("k", 3); err != nil || l != nil || string(it.Value) != "fresh" {
		t.Fatalf("LeaseGet after the restart: %+v lease %v, %v", it, l, err)
	}
	// Close drops the idle connections; the client still works after it.
	if err := mc.Close(); err != nil {
		t.Fatal(err)
	}
	if it, _, err := mc.LeaseGet("k", 3); err != nil || string(it.Value) != "fresh" {
		t.Fatalf("LeaseGet after Close: %+v, %v", it, err)
	}
}

// fakeServer answers every request line with reply.
func fakeServer(t *testing.T, reply string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				rd := bufio.NewReader(c)
				for {
					if _, err := rd.ReadString('\n'); err != nil {
						return
					}
					if _, err := c.Write([]byte(reply)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func TestClientBadReplies(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  func(error) bool
	}{
		{"ERROR\r\n", func(err error) bool { return errors.Is(err, ErrNoMeta) }},
		{"SERVER_ERROR out of memory\r\n", func(err error) bool { return errors.Is(err, memcache.ErrServerError) }},
		{"CLIENT_ERROR bad command line format\r\n", func(err error) bool { return err != nil && strings.Contains(err.Error(), "client error") }},
		{"VA x c1\r\n", func(err error) bool { return err != nil }},
		{"VA 5 c1 f0 W\r\nab", func(err error) bool { return err != nil }},     // value cut short
		{"VA 2 c1 f0\r\nabcd\r\n", func(err error) bool { return err != nil }}, // value longer than said
		{"HD\n", func(err error) bool { return err != nil }},
	} {
		mc := metaClient(t, fakeServer(t, tc.reply))
		mc.mc.Timeout = 200 * time.Millisecond
		it, l, err := mc.LeaseGet("k", 3)
		if !tc.want(err) || it != nil || l != nil {
			t.Errorf("reply %q: %+v lease %v, %v", tc.reply, it, l, err)
		}
		if got := mc.noMeta.Load(); got != (tc.reply == "ERROR\r\n") {
			t.Errorf("reply %q: noMeta %v", tc.reply, got)
		}
	}
}

// getMulti answers as gomemcache's GetMulti does: the same items, values
// and flags, misses left out, duplicates and several servers included.
func TestClientGetMulti(t *testing.T) {
	a, b := repotest.StartMemcached(t), repotest.StartMemcached(t)
	mc := metaClient(t, a.Addr())
	both, err := New(Config{Servers: []string{a.Addr(), b.Addr()}, MaxIdleConns: 4, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []*Client{mc, both} {
		var keys []string
		for i := range 60 {
			key := "gm-" + strconv.Itoa(i)
			keys = append(keys, key)
			var value []byte
			switch i % 3 {
			case 0:
				continue // a miss
			case 1:
				value = []byte("VA 3 f1 k" + key + "\r\nMN\r\n") // looks like protocol
			case 2: // empty
			}
			if err := c.Set(&memcache.Item{Key: key, Value: value, Flags: uint32(i)}); err != nil {
				t.Fatal(err)
			}
		}
		keys = append(keys, keys[1], keys[2], "gm-absent")
		if groups, err := c.byServer(keys); err != nil || (c == both) != (len(groups) == 2) {
			t.Fatalf("keys split over %d servers (%v)", len(groups), err)
		}
		got, err := c.getMulti(keys)
		if err != nil {
			t.Fatal(err)
		}
		want, err := c.gm().GetMulti(keys) // gomemcache's own
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) || len(got) != 40 {
			t.Fatalf("getMulti found %d keys, GetMulti %d, want 40", len(got), len(want))
		}
		for k, w := range want {
			g := got[k]
			if g == nil || g.Key != k || string(g.Value) != string(w.Value) || g.Flags != w.Flags {
				t.Fatalf("key %s: getMulti %+v, GetMulti %+v", k, g, w)
			}
		}
		if _, err := c.getMulti(nil); err != nil {
			t.Fatalf("getMulti of no keys: %v", err)
		}
	}
	// The connection is left clean: a lease read after a pipeline works.
	if it, _, err := mc.LeaseGet("gm-1", 3); err != nil || it.Flags != 1 {
		t.Fatalf("LeaseGet after getMulti: %+v, %v", it, err)
	}
}

func TestClientGetMultiBadReplies(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  func(error) bool
	}{
		{"ERROR\r\n", func(err error) bool { return errors.Is(err, ErrNoMeta) }},
		{"VA 1 f0 kother\r\nx\r\nMN\r\n", func(err error) bool { return err != nil }}, // a key not asked for
		{"VA 1 f0\r\nx\r\nMN\r\n", func(err error) bool { return err != nil }},        // no key
		{"VA 9 f0 kk\r\nx\r\n", func(err error) bool { return err != nil }},           // value cut short
	} {
		mc := metaClient(t, fakeServer(t, tc.reply))
		mc.mc.Timeout = 200 * time.Millisecond
		if items, err := mc.getMulti([]string{"k"}); !tc.want(err) {
			t.Errorf("reply %q: %v, %v", tc.reply, items, err)
		}
	}
}

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

// onlySecond is a ServerSelector that puts every key on its second server.
type onlySecond struct{ memcache.ServerList }

func (s *onlySecond) PickServer(string) (net.Addr, error) {
	var addrs []net.Addr
	_ = s.Each(func(a net.Addr) error { addrs = append(addrs, a); return nil })
	return addrs[1], nil
}

// Config.Selector places every request, classic and meta, where it says.
func TestClientSelector(t *testing.T) {
	a, b := repotest.StartMemcached(t), repotest.StartMemcached(t)
	sel := &onlySecond{}
	if err := sel.SetServers(a.Addr(), b.Addr()); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Selector: sel, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	onB, err := New(Config{Servers: []string{b.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	onA, err := New(Config{Servers: []string{a.Addr()}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l := mustLease(t, c, "sel-k") // taken on b
	if _, err := onB.Get("sel-k"); err != nil {
		t.Fatalf("the lease is not on the selected server: %v", err)
	}
	if err := l.Fill([]byte("v"), 0, 60); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(&memcache.Item{Key: "sel-j", Value: []byte("w")}); err != nil {
		t.Fatal(err)
	}
	got, err := c.GetMulti([]string{"sel-k", "sel-j"})
	if err != nil || len(got) != 2 || string(got["sel-k"].Value) != "v" {
		t.Fatalf("GetMulti over the selector: %v %v", got, err)
	}
	if _, err := onA.Get("sel-j"); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("a key reached the other server: %v", err)
	}
}

// DeleteIfUnchanged deletes what is still as read, keeps what changed
// meanwhile and names it, and counts a key already gone as deleted, over
// one or two servers.
func TestClientDeleteIfUnchanged(t *testing.T) {
	a, b := repotest.StartMemcached(t), repotest.StartMemcached(t)
	for _, servers := range [][]string{{a.Addr()}, {a.Addr(), b.Addr()}} {
		c, err := New(Config{Servers: servers, Timeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for i := range 30 {
			k := fmt.Sprintf("du-%d-%d", len(servers), i)
			keys = append(keys, k)
			if err := c.Set(&memcache.Item{Key: k, Value: []byte("v")}); err != nil {
				t.Fatal(err)
			}
		}
		got, err := c.GetMulti(keys)
		if err != nil || len(got) != len(keys) {
			t.Fatalf("GetMulti: %d items, %v", len(got), err)
		}
		var items []*memcache.Item
		for _, k := range keys {
			if got[k].CasID == 0 {
				t.Fatalf("GetMulti gave %s no CAS id", k)
			}
			items = append(items, got[k])
		}
		if err := c.Set(&memcache.Item{Key: keys[3], Value: []byte("newer")}); err != nil { // changed after the read
			t.Fatal(err)
		}
		if err := c.Delete(keys[7]); err != nil { // gone after the read
			t.Fatal(err)
		}
		changed, err := c.DeleteIfUnchanged(items)
		if err != nil || len(changed) != 1 || changed[0] != keys[3] {
			t.Fatalf("DeleteIfUnchanged: changed %v, %v; want [%s]", changed, err, keys[3])
		}
		for i, k := range keys {
			it, err := c.Get(k)
			if i == 3 {
				if err != nil || string(it.Value) != "newer" {
					t.Fatalf("the changed key: %+v %v", it, err)
				}
				continue
			}
			if !errors.Is(err, memcache.ErrCacheMiss) {
				t.Fatalf("key %s after DeleteIfUnchanged: %v", k, err)
			}
		}
	}
}
