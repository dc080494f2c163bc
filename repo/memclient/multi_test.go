package memclient

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// AddMulti and CompareAndSwapMulti answer, item by item, what Add and
// CompareAndSwap would: on one server and on two, across more items than
// one pipeline carries, with values that look like the protocol, and a
// malformed key failing alone.
func TestStoreMulti(t *testing.T) {
	noLeak(t)
	a, b := repotest.StartMemcached(t), repotest.StartMemcached(t)
	one := metaClient(t, a.Addr())
	both, err := New(Config{Servers: []string{a.Addr(), b.Addr()}, MaxIdleConns: 4, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer both.Close()
	for ci, c := range []*Client{one, both} {
		p := "c" + strconv.Itoa(ci) + "-"
		const n = 1200 // more than pipelineKeys
		var adds []*memcache.Item
		for i := range n {
			key := p + strconv.Itoa(i)
			if i%3 == 0 { // held already: the add must not replace it
				if err := c.Set(&memcache.Item{Key: key, Value: []byte("held")}); err != nil {
					t.Fatal(err)
				}
			}
			adds = append(adds, &memcache.Item{Key: key, Value: []byte("NS O" + strconv.Itoa(i) + "\r\nMN\r\n"), Flags: uint32(i), Expiration: 60})
		}
		adds = append(adds, &memcache.Item{Key: "bad key", Value: []byte("x")})
		outs, err := c.AddMulti(adds)
		if err != nil {
			t.Fatal(err)
		}
		for i, it := range adds[:n] {
			want := error(nil)
			if i%3 == 0 {
				want = memcache.ErrNotStored
			}
			if !errors.Is(outs[i], want) && outs[i] != want {
				t.Fatalf("client %d: add of %s: %v, want %v", ci, it.Key, outs[i], want)
			}
		}
		if !errors.Is(outs[n], memcache.ErrMalformedKey) {
			t.Fatalf("client %d: add of a malformed key: %v", ci, outs[n])
		}
		keys := make([]string, n)
		for i := range keys {
			keys[i] = adds[i].Key
		}
		got, err := c.GetMulti(keys)
		if err != nil {
			t.Fatal(err)
		}
		for i, key := range keys {
			it := got[key]
			want := string(adds[i].Value)
			if i%3 == 0 {
				want = "held"
			}
			if it == nil || string(it.Value) != want || i%3 != 0 && it.Flags != uint32(i) {
				t.Fatalf("client %d: %s after AddMulti: %+v, want %q", ci, key, it, want)
			}
		}

		// Swaps: unchanged keys take the new value, a key set or deleted
		// since it was read refuses it.
		var swaps []*memcache.Item
		for i, key := range keys {
			it := got[key]
			switch i % 4 {
			case 1:
				if err := c.Set(&memcache.Item{Key: key, Value: []byte("changed")}); err != nil {
					t.Fatal(err)
				}
			case 2:
				if err := c.Delete(key); err != nil {
					t.Fatal(err)
				}
			}
			swaps = append(swaps, &memcache.Item{Key: key, Value: []byte("swapped"), Flags: 7, Expiration: 60, CasID: it.CasID})
		}
		outs, err = c.CompareAndSwapMulti(swaps)
		if err != nil {
			t.Fatal(err)
		}
		after, err := c.GetMulti(keys)
		if err != nil {
			t.Fatal(err)
		}
		for i, key := range keys {
			want, value := error(nil), "swapped"
			switch i % 4 {
			case 1:
				want, value = memcache.ErrCASConflict, "changed"
			case 2:
				want, value = memcache.ErrCacheMiss, ""
			}
			if outs[i] != want {
				t.Fatalf("client %d: swap of %s: %v, want %v", ci, key, outs[i], want)
			}
			if it := after[key]; value == "" && it != nil || value != "" && (it == nil || string(it.Value) != value) {
				t.Fatalf("client %d: %s after the swaps: %+v, want %q", ci, key, it, value)
			}
		}
	}
}

// A server that is down fails each of its items with its ServerError (the
// item may or may not be stored), and only its own: the other server's
// items are stored.
func TestStoreMultiServerDown(t *testing.T) {
	noLeak(t)
	a, b := repotest.StartMemcached(t), repotest.StartMemcached(t)
	c, err := New(Config{Servers: []string{a.Addr(), b.Addr()}, MaxIdleConns: 4, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	var items []*memcache.Item
	for i := range 100 {
		items = append(items, &memcache.Item{Key: "down-" + strconv.Itoa(i), Value: []byte("v"), Expiration: 60})
	}
	outs, err := c.AddMulti(items)
	if err == nil {
		t.Fatal("AddMulti with a server down: no error")
	}
	onA, onB := 0, 0
	for i, it := range items {
		addr, _ := c.Server(it.Key)
		var se *ServerError
		switch {
		case addr.String() == b.Addr():
			onB++
			if !errors.As(outs[i], &se) || se.Addr.String() != b.Addr() {
				t.Fatalf("%s, on the stopped server: %v, want its ServerError", it.Key, outs[i])
			}
		default:
			onA++
			if outs[i] != nil {
				t.Fatalf("%s, on the running server: %v", it.Key, outs[i])
			}
			if got, err := c.Get(it.Key); err != nil || string(got.Value) != "v" {
				t.Fatalf("%s after AddMulti: %+v, %v", it.Key, got, err)
			}
		}
	}
	if onA == 0 || onB == 0 {
		t.Fatalf("%d keys on the running server and %d on the stopped one: the test needs both", onA, onB)
	}
}
