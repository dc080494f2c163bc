package memclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// Prewarm and Keys against real memcached processes: an old ring of two
// servers and a new ring with a third.

// prewarmRig is the servers and the clients of an old and a new ring.
type prewarmRig struct {
	procs    []*repotest.MemcachedProcess
	old, new *Client
}

// newPrewarmRig starts three servers; the old ring has the first two, the
// new one all three.
func newPrewarmRig(t *testing.T) *prewarmRig {
	t.Helper()
	r := &prewarmRig{}
	var addrs []string
	for range 3 {
		p := repotest.StartMemcached(t)
		r.procs = append(r.procs, p)
		addrs = append(addrs, p.Addr())
	}
	r.old = ringClient(t, addrs[:2]...)
	r.new = ringClient(t, addrs...)
	return r
}

func ringClient(t *testing.T, addrs ...string) *Client {
	t.Helper()
	var servers []Server
	for _, a := range addrs {
		servers = append(servers, Server{Addr: a})
	}
	k, err := NewKetama(servers)
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Selector: k, MaxIdleConns: 16, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// moves reports whether key has another owner in the new ring.
func (r *prewarmRig) moves(t *testing.T, key string) bool {
	t.Helper()
	a, err := r.old.sel.PickServer(key)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.new.sel.PickServer(key)
	if err != nil {
		t.Fatal(err)
	}
	return a.String() != b.String()
}

// fill stores n keys "<prefix><i>" through the old ring, with flags i%7
// and, for two keys in three, a TTL of 1000+i seconds (the others never
// expire), and returns them.
func (r *prewarmRig) fill(t *testing.T, prefix string, n int) []string {
	t.Helper()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%s%d", prefix, i)
		exp := int32(0)
		if i%3 != 0 {
			exp = int32(1000 + i)
		}
		it := &memcache.Item{Key: keys[i], Value: []byte("value of " + keys[i]), Flags: uint32(i % 7), Expiration: exp}
		if err := r.old.Set(it); err != nil {
			t.Fatal(err)
		}
	}
	return keys
}

// Moving keys land on their new owner with the same value, flags and
// (within a few seconds) TTL, and the others keep theirs; keys that stay,
// and keys without the prefix, are not touched; a second run finds every
// key present.
func TestPrewarmCopiesMovingKeys(t *testing.T) {
	r := newPrewarmRig(t)
	keys := r.fill(t, "k:", 3000)
	others := r.fill(t, "other:", 300)
	before, err := r.old.GetMulti(append(append([]string(nil), keys...), others...))
	if err != nil {
		t.Fatal(err)
	}
	var progress []PrewarmProgress
	st, err := Prewarm(context.Background(), r.old, r.new, PrewarmConfig{
		Prefix: "k:", Concurrency: 4, Progress: func(p PrewarmProgress) { progress = append(progress, p) },
	})
	if err != nil {
		t.Fatal(err)
	}
	moving := 0
	for _, k := range keys {
		if r.moves(t, k) {
			moving++
		}
	}
	want := PrewarmStats{Listed: len(keys), Moving: moving, Copied: moving, Elapsed: st.Elapsed, CopyTime: st.CopyTime}
	if st != want {
		t.Fatalf("stats %+v, want %+v", st, want)
	}
	if st.CopyTime <= 0 || st.CopyTime > st.Elapsed || st.Rate() <= 0 {
		t.Fatalf("copy time %v of %v, rate %.0f keys/s", st.CopyTime, st.Elapsed, st.Rate())
	}
	if moving < len(keys)/6 || moving > len(keys)/2 {
		t.Fatalf("%d of %d keys move to a third server; want about a third", moving, len(keys))
	}
	if n := len(progress); n == 0 || !progress[n-1].Copying || progress[n-1].PrewarmStats != st {
		t.Fatalf("last progress %+v, want the final stats %+v", progress[max(n-1, 0)], st)
	}
	for i, k := range keys {
		it, ttl, err := r.new.getWithTTL(k)
		if err != nil {
			t.Fatalf("%s (moves %v) on its new owner: %v", k, r.moves(t, k), err)
		}
		if string(it.Value) != "value of "+k || it.Flags != uint32(i%7) {
			t.Fatalf("%s on its new owner: %q flags %d", k, it.Value, it.Flags)
		}
		switch wantTTL := int64(1000 + i); {
		case i%3 == 0 && ttl != -1:
			t.Fatalf("%s: TTL %d on its new owner, want none", k, ttl)
		case i%3 != 0 && (ttl > wantTTL || ttl < wantTTL-5):
			t.Fatalf("%s: TTL %d on its new owner, want about %d", k, ttl, wantTTL)
		}
	}
	// The keys that stay are the items they were (same CAS ids); the
	// others' moving keys were not copied.
	after, err := r.new.GetMulti(append(append([]string(nil), keys...), others...))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range append(append([]string(nil), keys...), others...) {
		moves := r.moves(t, k)
		switch it, ok := after[k]; {
		case !moves && (!ok || it.CasID != before[k].CasID):
			t.Fatalf("%s does not move but changed: %+v, before %+v", k, it, before[k])
		case moves && strings.HasPrefix(k, "other:") && ok:
			t.Fatalf("%s has no prefix k: but was copied", k)
		}
	}
	again, err := Prewarm(context.Background(), r.old, r.new, PrewarmConfig{Prefix: "k:"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Present != moving || again.Copied != 0 {
		t.Fatalf("second run: %+v, want all %d present", again, moving)
	}
}

// Keys lists what a server holds, with expiry times; a key the new ring
// owns but the old ring's server does not (an orphan) is not copied.
func TestKeys(t *testing.T) {
	r := newPrewarmRig(t)
	addr := r.procs[0].Addr()
	direct := ringClient(t, addr)
	for _, k := range []string{"100%", "plain"} { // "100%" is listed URL-encoded
		if err := direct.Set(&memcache.Item{Key: k, Value: []byte("v"), Expiration: 600}); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]int64{}
	err := direct.Keys(context.Background(), addr, func(k string, exp int64) error { got[k] = exp; return nil })
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().Unix()
	if len(got) != 2 || got["100%"] < now+590 || got["plain"] > now+610 {
		t.Fatalf("Keys: %v, want 100%% and plain expiring in 600s", got)
	}
	if err := direct.Set(&memcache.Item{Key: "forever", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	err = direct.Keys(context.Background(), addr, func(k string, exp int64) error {
		if k == "forever" && exp != -1 {
			t.Errorf("forever expires at %d, want -1", exp)
		}
		return stop
	})
	if !errors.Is(err, stop) {
		t.Fatalf("Keys with a failing fn: %v, want its error", err)
	}

	// Orphans: keys the first server holds that the old ring places on the
	// second are not the old ring's, and are not copied.
	for i := range 200 {
		if err := direct.Set(&memcache.Item{Key: fmt.Sprintf("o%d", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	st, err := Prewarm(context.Background(), r.old, r.new, PrewarmConfig{Prefix: "o"})
	if err != nil {
		t.Fatal(err)
	}
	if st.Listed != 200 || st.Moving >= 200 || st.Moving == 0 {
		t.Fatalf("orphans: %+v, want 200 listed, only the first server's own moving keys copied", st)
	}
}

// A writer whose write reaches the new owner between the copy's lease and
// its fill wins: the copy's older value never replaces it.
func TestPrewarmLosesToWriter(t *testing.T) {
	r := newPrewarmRig(t)
	keys := r.fill(t, "k:", 300)
	var deleted, replaced string
	for _, k := range keys {
		if r.moves(t, k) {
			if deleted == "" {
				deleted = k
			} else if replaced == "" {
				replaced = k
			}
		}
	}
	var holds atomic.Int32
	hook := func(key string) {
		if key != deleted && key != replaced {
			return
		}
		holds.Add(1)
		// The copy has read the old value and holds the lease: a write
		// reaches the old owner, then the new one, where it finds the
		// placeholder.
		if err := r.old.Set(&memcache.Item{Key: key, Value: []byte("newer")}); err != nil {
			t.Error(err)
		}
		ph, err := r.new.Get(key)
		if err != nil || len(ph.Value) != 0 {
			t.Errorf("%s on its new owner during the copy: %+v %v, want the lease", key, ph, err)
			return
		}
		if key == deleted { // a write-both writer: deletes the placeholder
			if ch, err := r.new.DeleteIfUnchanged([]*memcache.Item{ph}); err != nil || len(ch) != 0 {
				t.Errorf("deleting the placeholder: %v %v", ch, err)
			}
			return
		}
		if err := r.new.Set(&memcache.Item{Key: key, Value: []byte("newer")}); err != nil {
			t.Error(err)
		}
	}
	st, err := prewarm(context.Background(), r.old, r.new, PrewarmConfig{Prefix: "k:"}, hook)
	if err != nil {
		t.Fatal(err)
	}
	if holds.Load() != 2 || st.Raced != 2 || st.Copied != st.Moving-2 {
		t.Fatalf("stats %+v after %d held copies, want 2 raced", st, holds.Load())
	}
	if it, err := r.new.Get(deleted); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("%s after the write deleted the placeholder: %+v %v, want a miss", deleted, it, err)
	}
	if it, err := r.new.Get(replaced); err != nil || string(it.Value) != "newer" {
		t.Fatalf("%s after the write replaced the placeholder: %+v %v, want newer", replaced, it, err)
	}
}

// writeBoth is a writer of the write-both phase: it writes the old owner,
// then deletes the key on the new one.
func writeBoth(old, new *Client, key string, value []byte) error {
	if err := old.Set(&memcache.Item{Key: key, Value: value, Flags: 1}); err != nil {
		return err
	}
	if err := new.Delete(key); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
		return err
	}
	return nil
}

// Writers in the write-both phase run all through the copy: afterwards the
// new owner of every key holds its last write or nothing, never an older
// value.
func TestPrewarmWithWriters(t *testing.T) {
	r := newPrewarmRig(t)
	keys := r.fill(t, "k:", 2000)
	last := make([]atomic.Int64, len(keys))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for n := int64(1); ctx.Err() == nil; n++ {
				for i := w; i < len(keys); i += 4 {
					if err := writeBoth(r.old, r.new, keys[i], fmt.Appendf(nil, "v%d", n)); err != nil {
						t.Error(err)
						return
					}
					last[i].Store(n)
				}
			}
		})
	}
	st, err := Prewarm(ctx, r.old, r.new, PrewarmConfig{Prefix: "k:", Concurrency: 8})
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats with writers: %+v", st)
	if st.Done() != st.Moving {
		t.Fatalf("stats %+v: not every moving key dealt with", st)
	}
	got, err := r.new.GetMulti(keys)
	if err != nil {
		t.Fatal(err)
	}
	stale := 0
	for i, k := range keys {
		if it, ok := got[k]; ok && r.moves(t, k) && string(it.Value) != fmt.Sprintf("v%d", last[i].Load()) {
			stale++
			t.Errorf("%s on its new owner: %q, last write v%d", k, it.Value, last[i].Load())
		}
	}
	if stale > 0 {
		t.Fatalf("%d stale copies", stale)
	}
}

// A source server that is down stops Prewarm with an error naming it; one
// that refuses metadump is named with its answer.
func TestPrewarmDeadOrRefusingSource(t *testing.T) {
	r := newPrewarmRig(t)
	r.fill(t, "k:", 100)
	if err := r.procs[1].Stop(); err != nil {
		t.Fatal(err)
	}
	_, err := Prewarm(context.Background(), r.old, r.new, PrewarmConfig{})
	if err == nil || !strings.Contains(err.Error(), "listing the keys of "+r.procs[1].Addr()) {
		t.Fatalf("Prewarm with a dead source: %v, want an error naming %s", err, r.procs[1].Addr())
	}
	t.Logf("dead source: %v", err)

	refusing := repotest.StartMemcached(t, "-X")
	c := ringClient(t, refusing.Addr())
	err = c.Keys(context.Background(), refusing.Addr(), func(string, int64) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "refuses lru_crawler metadump") || !strings.Contains(err.Error(), "metadump not allowed") {
		t.Fatalf("Keys of a server started with -X: %v", err)
	}
	t.Logf("refusing source: %v", err)
}

// While another crawl runs, metadump answers BUSY: Keys waits for it,
// within its context.
func TestKeysWaitsForBusyCrawler(t *testing.T) {
	p := repotest.StartMemcached(t)
	c := ringClient(t, p.Addr())
	for i := range 3000 {
		if err := c.Set(&memcache.Item{Key: fmt.Sprintf("k%d", i), Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
	}
	// A crawl that sleeps 1s every 1,000 items keeps the crawler busy.
	admin := func(cmd string) {
		t.Helper()
		nc, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		fmt.Fprintf(nc, "%s\r\n", cmd)
		line, err := bufio.NewReader(nc).ReadString('\n')
		if err != nil || line != "OK\r\n" {
			t.Fatalf("%s: %q %v", cmd, line, err)
		}
	}
	admin("lru_crawler sleep 1000000")
	admin("lru_crawler crawl all")
	// 800ms: well inside the crawl's 2s or more, and time enough to dial
	// and ask on a loaded machine (with 200ms a run's dial timed out first).
	ctx, cancel := context.WithTimeout(context.Background(), 800*time.Millisecond)
	defer cancel()
	err := c.Keys(ctx, p.Addr(), func(string, int64) error { return nil })
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errCrawlerBusy) {
		t.Fatalf("Keys during a crawl: %v, want busy until the deadline", err)
	}
	t.Logf("busy: %v", err)
	admin("lru_crawler sleep 0")
	n := 0
	start := time.Now()
	if err := c.Keys(context.Background(), p.Addr(), func(string, int64) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != 3000 {
		t.Fatalf("Keys after the crawl: %d keys, want 3000", n)
	}
	t.Logf("listed after waiting %v", time.Since(start))
}

// Cancelling the context stops Prewarm between keys.
func TestPrewarmCancel(t *testing.T) {
	r := newPrewarmRig(t)
	r.fill(t, "k:", 2000)
	ctx, cancel := context.WithCancel(context.Background())
	var fills atomic.Int32
	st, err := prewarm(ctx, r.old, r.new, PrewarmConfig{Concurrency: 2}, func(string) {
		if fills.Add(1) == 10 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Prewarm cancelled: %v, want context.Canceled", err)
	}
	if st.Done() > 20 || st.Moving < 100 {
		t.Fatalf("stats after the cancel: %+v, want it stopped after about 10 copies", st)
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := Prewarm(ctx, r.old, r.new, PrewarmConfig{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Prewarm with a cancelled context: %v", err)
	}
}
