package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// MEMCACHED_ADDR is a ketama ring with weights and names; MEMCACHED_NEW_ADDR
// and MEMCACHED_PHASE describe a migration, and bad or incomplete values
// fail with a message naming the variable. It needs no servers.
func TestConfigMemcached(t *testing.T) {
	base := func(kv ...string) func(string) string {
		env := map[string]string{envDatabaseURL: "postgres://x"}
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return func(k string) string { return env[k] }
	}

	spec := "127.0.0.1:11211:3 a, 127.0.0.2:11211 ,127.0.0.3:11311:1,"
	cfg, err := loadConfig(base(envMemcachedAddr, spec))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"127.0.0.1:11211:3 a", "127.0.0.2:11211", "127.0.0.3:11311:1"}; !slices.Equal(cfg.MemcachedAddrs, want) {
		t.Fatalf("MEMCACHED_ADDR %q: %q, want %q", spec, cfg.MemcachedAddrs, want)
	}
	if cfg.MemcachedNewAddrs != nil || cfg.MemcachedPhase != 0 {
		t.Fatalf("no migration configured, got %q in %v", cfg.MemcachedNewAddrs, cfg.MemcachedPhase)
	}
	// The service's client places keys as a ketama ring over the weighted,
	// named servers does.
	from, to, m, err := newMemcache(cfg, 1, time.Second)
	if err != nil || to != nil || m != nil {
		t.Fatalf("newMemcache: %v, %v, %v", to, m, err)
	}
	defer from.Close()
	servers, _ := memclient.ParseServers(strings.Join(cfg.MemcachedAddrs, ","))
	ring, err := memclient.NewKetama(servers)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for i := range 1000 {
		k := fmt.Sprintf("retail:k:%d", i)
		got, err1 := from.Server(k)
		want, err2 := ring.PickServer(k)
		if err1 != nil || err2 != nil || got.String() != want.String() {
			t.Fatalf("%s: the service's client picks %v (%v), the ring %v (%v)", k, got, err1, want, err2)
		}
		counts[got.String()]++
	}
	if counts["127.0.0.1:11211"] < 2*counts["127.0.0.2:11211"] {
		t.Errorf("keys per server %v: the weight 3 server should hold about 3 times the others'", counts)
	}

	newSpec := "127.0.0.1:11211:3 a,127.0.0.2:11211,127.0.0.3:11311,127.0.0.4:11211"
	for _, c := range []struct {
		phase string
		want  memclient.Phase
	}{
		{"old", memclient.PhaseOld}, {"write-both", memclient.PhaseWriteBoth}, {"Write-Both", memclient.PhaseWriteBoth},
		{"fallback", memclient.PhaseFallback}, {"new-reads", memclient.PhaseNewReads}, {"new", memclient.PhaseNew},
	} {
		cfg, err := loadConfig(base(envMemcachedAddr, spec, envMemcachedNewAddr, newSpec, envMemcachedPhase, c.phase))
		if err != nil {
			t.Fatalf("phase %s: %v", c.phase, err)
		}
		if cfg.MemcachedPhase != c.want || len(cfg.MemcachedNewAddrs) != 4 {
			t.Fatalf("phase %s: %v over %q", c.phase, cfg.MemcachedPhase, cfg.MemcachedNewAddrs)
		}
		from, to, m, err := newMemcache(cfg, 1, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if m.Phase() != c.want || m.Old() != from || m.New() != to {
			t.Fatalf("phase %s: the migration is in %v over %p and %p", c.phase, m.Phase(), m.Old(), m.New())
		}
		from.Close()
		to.Close()
	}

	for _, c := range []struct {
		env  []string
		want string
	}{
		{[]string{envMemcachedAddr, " , "}, "MEMCACHED_ADDR lists no address"},
		{[]string{envMemcachedAddr, "127.0.0.1:11211:0"}, `the weight "0" is not a positive integer`},
		{[]string{envMemcachedAddr, "127.0.0.1"}, `MEMCACHED_ADDR="127.0.0.1": memclient: server "127.0.0.1": want host:port`},
		{[]string{envMemcachedNewAddr, "a:1:x", envMemcachedPhase, "old"}, `MEMCACHED_NEW_ADDR="a:1:x"`},
		{[]string{envMemcachedNewAddr, ",", envMemcachedPhase, "old"}, "MEMCACHED_NEW_ADDR lists no address"},
		{[]string{envMemcachedNewAddr, newSpec, envMemcachedPhase, "writeboth"}, `MEMCACHED_PHASE="writeboth": want old, write-both, fallback, new-reads or new`},
		{[]string{envMemcachedPhase, "fallback"}, "MEMCACHED_PHASE=fallback needs MEMCACHED_NEW_ADDR"},
		{[]string{envMemcachedPhase, "nope"}, `MEMCACHED_PHASE="nope": want old`},
		{[]string{envMemcachedNewAddr, newSpec}, "MEMCACHED_NEW_ADDR is set but MEMCACHED_PHASE is not"},
	} {
		_, err := loadConfig(base(c.env...))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want an error with %q", c.env, err, c.want)
		}
	}
}

// The service's stores over a memclient.Migration from three memcached
// nodes to four, rolled out as examples/README.md says: instances built by
// newApp from MEMCACHED_ADDR, MEMCACHED_NEW_ADDR and MEMCACHED_PHASE, each
// phase next to the one before it (and the plain four-node ring after
// new). In each pair the two instances take turns updating and reading a
// stock row whose key moves to the fourth node and one whose key stays,
// each row first cached where both read it, and every read returns the last
// write (a write that missed the other's ring would leave it stale); a
// second read is a hit.
func TestStoresOverMigration(t *testing.T) {
	ctx := context.Background()
	dbURL := repotest.NewDatabase(t)
	if err := migrations.Up(dbURL); err != nil {
		t.Fatal(err)
	}
	addrs, _ := startNodes(t, 4)
	three, four := strings.Join(addrs[:3], ","), strings.Join(addrs, ",")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	instance := func(kv ...string) *app {
		t.Helper()
		// No near-cache: the test reads each write back from another
		// instance at once, which a near-cache allows to lag by a NOTIFY.
		env := map[string]string{envDatabaseURL: dbURL, envMemcachedAddr: three, envDBMaxConns: "4", envNearMaxAge: "0"}
		for i := 0; i < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		cfg, err := loadConfig(func(k string) string { return env[k] })
		if err != nil {
			t.Fatal(err)
		}
		a, err := newApp(ctx, cfg, log, 4)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.close)
		if (a.mig != nil) != (env[envMemcachedNewAddr] != "") || (a.mig != nil && a.cache != a.mig) {
			t.Fatalf("%v: the stores' cache is %T", env, a.cache)
		}
		return a
	}
	prev := instance() // before the migration
	if err := seed(ctx, prev.pool, testDataset, 2, io.Discard); err != nil {
		t.Fatal(err)
	}
	// A stock row whose key the fourth node takes, and one whose key stays.
	oldRing, newRing := ketamaClient(t, addrs[:3]), ketamaClient(t, addrs)
	var moving, staying *StockKey
	for p := int64(1); p <= int64(testDataset.Products) && (moving == nil || staying == nil); p++ {
		k := StockKey{articleNumber(p), uomOf(p), storeCode(1)}
		a, _ := oldRing.Server(prev.cat.stock.Key(k))
		b, _ := newRing.Server(prev.cat.stock.Key(k))
		switch {
		case b.String() == addrs[3] && moving == nil:
			moving = &k
		case a.String() == b.String() && staying == nil:
			staying = &k
		}
	}
	if moving == nil || staying == nil {
		t.Fatalf("no stock key moves (%v) or stays (%v) among %d products", moving, staying, testDataset.Products)
	}

	quantity := int32(1000)
	steps := []string{"write-both", "fallback", "new-reads", "new", "four nodes"}
	for _, step := range steps {
		var cur *app
		if step == "four nodes" { // the end: MEMCACHED_ADDR names the four, the others unset
			cur = instance(envMemcachedAddr, four)
		} else {
			cur = instance(envMemcachedNewAddr, four, envMemcachedPhase, step)
		}
		for _, k := range []StockKey{*moving, *staying} {
			for _, turn := range []struct{ writer, reader *app }{{prev, cur}, {cur, prev}, {cur, cur}} {
				for _, a := range []*app{turn.writer, turn.reader} { // cached where each reads
					if _, err := a.cat.stock.Get(ctx, k); err != nil {
						t.Fatal(err)
					}
				}
				quantity++
				if _, err := turn.writer.cat.stock.Update(ctx, k, func(s *Stock) error { s.Quantity = quantity; return nil }); err != nil {
					t.Fatalf("%s: update %v: %v", step, k, err)
				}
				for read := range 2 {
					hits := turn.reader.cat.stock.Stats().Hits
					s, err := turn.reader.cat.stock.Get(ctx, k)
					if err != nil || s.Quantity != quantity {
						t.Fatalf("%s: read %d of %v after a write of %d: %d, %v", step, read+1, k, quantity, s.Quantity, err)
					}
					if read == 1 && turn.reader.cat.stock.Stats().Hits == hits {
						t.Errorf("%s: the second read of %v missed the cache", step, k)
					}
				}
			}
		}
		prev = cur
	}
}

// retail cache sweep deletes from the new ring the entries of the service's
// moving keys that an earlier server list left on their new server, and
// nothing else; without a migration in write-both it refuses.
func TestCacheSweep(t *testing.T) {
	addrs, _ := startNodes(t, 4)
	newRing, node4 := ketamaClient(t, addrs), ketamaClient(t, addrs[3:])
	set := func(c *memclient.Client, k string) {
		t.Helper()
		if err := c.Set(&memcache.Item{Key: k, Value: []byte("stale"), Expiration: 3600}); err != nil {
			t.Fatal(err)
		}
	}
	// Left on the fourth node from an earlier time in the ring: the
	// service's keys and another application's.
	var stale, kept []string
	for i := range 600 {
		k, other := fmt.Sprintf("shop:stock:r1:0:%d", i), fmt.Sprintf("other:%d", i)
		set(node4, k)
		set(node4, other)
		if at, _ := newRing.Server(k); at.String() == addrs[3] {
			stale = append(stale, k)
		}
		if at, _ := newRing.Server(other); at.String() == addrs[3] {
			kept = append(kept, other)
		}
	}
	// Keys that stay on their server, written through the new ring.
	oldRing := ketamaClient(t, addrs[:3])
	for i := range 200 {
		k := fmt.Sprintf("shop:products:r1:0:%d", i)
		a, _ := oldRing.Server(k)
		if b, _ := newRing.Server(k); a.String() == b.String() {
			set(newRing, k)
			kept = append(kept, k)
		}
	}
	env := map[string]string{
		envMemcachedAddr: strings.Join(addrs[:3], ","), envMemcachedNewAddr: strings.Join(addrs, ","),
		envMemcachedPhase: "write-both", envCacheNamespace: "shop",
	}
	getenv := func(k string) string { return env[k] }
	var out, errOut strings.Builder
	if err := run(context.Background(), []string{"cache", "sweep"}, getenv, &out, &errOut); err != nil {
		t.Fatalf("sweep: %v\n%s", err, errOut.String())
	}
	t.Logf("stdout:\n%s", out.String())
	m := regexp.MustCompile(`sweep: deleted=(\d+) prefix=shop: `).FindStringSubmatch(out.String())
	if m == nil || m[1] != strconv.Itoa(len(stale)) || len(stale) < 50 {
		t.Fatalf("sweep printed %q, want deleted=%d", out.String(), len(stale))
	}
	for _, k := range stale {
		if _, err := node4.Get(k); err != memcache.ErrCacheMiss {
			t.Fatalf("%s is still on the fourth node: %v", k, err)
		}
	}
	for _, k := range kept {
		if _, err := newRing.Get(k); err != nil {
			t.Fatalf("%s was swept: %v", k, err)
		}
	}

	for _, c := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{map[string]string{envMemcachedNewAddr: "", envMemcachedPhase: ""}, nil, "MEMCACHED_NEW_ADDR is not set"},
		{map[string]string{envMemcachedPhase: "fallback"}, nil, "MEMCACHED_PHASE=fallback: run the sweep once every instance runs MEMCACHED_PHASE=write-both"},
		{map[string]string{envMemcachedPhase: ""}, nil, "MEMCACHED_PHASE is not"},
		{map[string]string{envMemcachedAddr: "x"}, nil, `MEMCACHED_ADDR="x"`},
		{nil, []string{"extra"}, "unexpected arguments"},
	} {
		bad := maps.Clone(env)
		maps.Copy(bad, c.env)
		err := run(context.Background(), append([]string{"cache", "sweep"}, c.args...), func(k string) string { return bad[k] }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sweep with %v %q: %v, want an error with %q", c.env, c.args, err, c.want)
		}
	}
}
