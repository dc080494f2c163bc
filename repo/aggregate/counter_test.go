package aggregate_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/aggregate"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// privateCache starts a private memcached (args as for
// repotest.StartMemcached) and returns it with a client.
func privateCache(t testing.TB, args ...string) (*repotest.MemcachedProcess, *memclient.Client) {
	t.Helper()
	mp := repotest.StartMemcached(t, args...)
	return mp, newClient(t, mp.Addr())
}

func newClient(t testing.TB, addr string) *memclient.Client {
	t.Helper()
	mc, err := cacheClient(64, time.Second, addr)
	if err != nil {
		t.Fatal(err)
	}
	return mc
}

func newCounter(t testing.TB, db repo.DB, mc repo.Cache, o *repo.Options) *aggregate.Counter {
	t.Helper()
	c, err := aggregate.NewCounter(db, mc, aggregate.CounterConfig{Cache: aggCache(o), Repairer: o.Repairer})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dbCounter(t testing.TB, e *env, name string) int64 {
	t.Helper()
	var v int64
	err := e.Pool.QueryRow(context.Background(), `SELECT value FROM counters WHERE name = $1`, name).Scan(&v)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
	return v
}

func TestCounterBasic(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := newCounter(t, e.Pool, e.MC, e.Opts(nil))

	// Adds on a key that is not cached leave it uncached (write-through
	// never Adds: that could install an older version after an eviction).
	if v, err := c.Add(ctx, "visitors", 42); err != nil || v != 42 {
		t.Fatalf("Add(42) = %d, %v", v, err)
	}
	if _, ok, _ := c.Cached("visitors"); ok {
		t.Fatalf("Add of an uncached counter cached it")
	}
	if v, err := c.Get(ctx, "visitors"); err != nil || v != 42 { // fills
		t.Fatalf("Get = %d, %v; want 42", v, err)
	}
	steps := []struct {
		delta, want int64
	}{{1, 43}, {1, 44}, {-50, -6}, {6, 0}, {44, 44}}
	for _, s := range steps {
		got, err := c.Add(ctx, "visitors", s.delta)
		if err != nil || got != s.want {
			t.Fatalf("Add(%d) = %d, %v; want %d", s.delta, got, err, s.want)
		}
		if v, ok, err := c.Cached("visitors"); err != nil || !ok || v != s.want {
			t.Fatalf("after Add(%d): cached %d, %v, %v; want %d", s.delta, v, ok, err, s.want)
		}
	}
	before := c.Stats()
	if v, err := c.Get(ctx, "visitors"); err != nil || v != 44 {
		t.Fatalf("Get = %d, %v; want 44", v, err)
	}
	if st := c.Stats(); st.DBReads != before.DBReads || st.Hits != before.Hits+1 {
		t.Errorf("Get after Add was not a cache hit: %+v -> %+v", before, st)
	}
	if got := dbCounter(t, e, "visitors"); got != 44 {
		t.Errorf("database value = %d, want 44", got)
	}

	// A miss fills the cache from the database.
	if err := e.MC.Delete(c.Key("visitors")); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "visitors"); err != nil || v != 44 {
		t.Fatalf("Get after eviction = %d, %v; want 44", v, err)
	}
	if v, ok, err := c.Cached("visitors"); err != nil || !ok || v != 44 {
		t.Fatalf("Cached after fill = %d, %v, %v; want 44, true", v, ok, err)
	}
	// A counter created by Add after a cached "0" replaces it.
	if _, err := c.Get(ctx, "new"); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Add(ctx, "new", 7); err != nil || v != 7 {
		t.Fatalf("Add(new) = %d, %v", v, err)
	}
	if v, ok, _ := c.Cached("new"); !ok || v != 7 {
		t.Fatalf("Cached(new) = %d, %v; want 7", v, ok)
	}

	for _, f := range []func() error{
		func() error { _, err := c.Add(ctx, "", 1); return err },
		func() error { _, err := c.Get(ctx, ""); return err },
	} {
		err := f()
		var op *repo.OpError
		if !errors.Is(err, repo.ErrInvalidArgument) || !errors.As(err, &op) {
			t.Errorf("empty name: err = %v, want an *OpError wrapping ErrInvalidArgument", err)
		}
	}
}

// TestCounterConcurrent: several instances x 32 goroutines increment a few
// counters while memcached restarts; every increment must be in the
// database, and the cache must equal the database afterwards.
func TestCounterConcurrent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mp, _ := privateCache(t)
	const instances, goroutines, perGoroutine = 3, 32, 24
	names := []string{"visitors", "signups", "orders", "errors"}
	counters := make([]*aggregate.Counter, instances)
	hooks := make([]*hookLog, instances)
	for i := range counters {
		hooks[i] = &hookLog{}
		counters[i] = newCounter(t, e.Pool, newClient(t, mp.Addr()), e.Opts(hooks[i]))
	}
	total := instances * goroutines * perGoroutine
	var made atomic.Int64
	want := make([]atomic.Int64, len(names))
	restarted := make(chan error, 1)
	go func() {
		for made.Load() < int64(total/3) {
			time.Sleep(time.Millisecond)
		}
		restarted <- mp.Restart()
	}()
	var wg sync.WaitGroup
	for i := range instances {
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := counters[i]
				for j := range perGoroutine {
					k := rand.IntN(len(names))
					if _, err := c.Add(ctx, names[k], 1); err != nil {
						t.Error(err)
						return
					}
					want[k].Add(1)
					made.Add(1)
					if j%2 == 0 {
						if _, err := c.Get(ctx, names[rand.IntN(len(names))]); err != nil {
							t.Error(err)
							return
						}
					}
				}
			}()
		}
	}
	wg.Wait()
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		return
	}
	var dbTotal, cacheTotal, present int64
	for k, name := range names {
		db := dbCounter(t, e, name)
		if db != want[k].Load() {
			t.Errorf("%s: database = %d, increments made = %d", name, db, want[k].Load())
		}
		dbTotal += db
		if checkCachedCounter(t, counters[0], name, db) {
			present++
		}
		v, _, _ := counters[0].Cached(name)
		cacheTotal += v
		for i, c := range counters {
			if got, err := c.Get(ctx, name); err != nil || got != db {
				t.Errorf("instance %d: Get(%s) = %d, %v; want %d", i, name, got, err, db)
			}
		}
	}
	var conflicts, cacheErrs uint64
	for i, c := range counters {
		st := c.Stats()
		conflicts += st.CASConflicts
		cacheErrs += st.CacheErrors
		for _, ev := range hooks[i].All() {
			if errors.Is(ev.Err, memcache.ErrCacheMiss) {
				t.Errorf("hook saw a cache miss as an error: %v", ev)
			}
		}
	}
	if dbTotal != int64(total) || cacheTotal != dbTotal {
		t.Errorf("increments=%d db=%d cache=%d", total, dbTotal, cacheTotal)
	}
	t.Logf("present before refill %d/%d, cas_conflicts=%d cache_errors=%d", present, len(names), conflicts, cacheErrs)
	testenv.Summaryf("counter: increments=%d db=%d cache=%d\n", total, dbTotal, cacheTotal)
}

// TestCounterMixedDeltas: concurrent positive and negative deltas sum
// exactly, in the database and in the cache.
func TestCounterMixedDeltas(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	c := newCounter(t, e.Pool, e.MC, e.Opts(nil))
	var want atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				d := int64((g*31+j*7)%11 - 6)
				if _, err := c.Add(ctx, "balance", d); err != nil {
					t.Error(err)
					return
				}
				want.Add(d)
			}
		}()
	}
	wg.Wait()
	db := dbCounter(t, e, "balance")
	if db != want.Load() {
		t.Fatalf("database = %d, want %d", db, want.Load())
	}
	checkCachedCounter(t, c, "balance", db)
}

// checkCachedCounter checks that the cache holds nothing but want for name:
// the key is absent (a write-through gave up and deleted it; a Get then
// fills it with want) or holds want. It reports whether it was present.
func checkCachedCounter(t *testing.T, c *aggregate.Counter, name string, want int64) bool {
	t.Helper()
	v, ok, err := c.Cached(name)
	if err != nil {
		t.Fatal(err)
	}
	if ok && v != want {
		t.Errorf("%s: cache holds %d, database %d", name, v, want)
	}
	if !ok {
		if got, err := c.Get(context.Background(), name); err != nil || got != want {
			t.Errorf("%s: Get = %d, %v; want %d", name, got, err, want)
		}
		if v, ok2, _ := c.Cached(name); !ok2 || v != want {
			t.Errorf("%s: after Get the cache holds %d (present %v), want %d", name, v, ok2, want)
		}
	}
	return ok
}

// TestCounterStaleFill: a reader that read the database before an Add must
// not put its older value in the cache.
func TestCounterStaleFill(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hdb := &testenv.ScanHookDB{Beginner: e.Pool}
	reader := newCounter(t, hdb, e.MC, e.Opts(nil))
	writer := newCounter(t, e.Pool, e.MC, e.Opts(nil))
	if _, err := writer.Add(ctx, "visitors", 42); err != nil {
		t.Fatal(err)
	}
	if err := e.MC.Delete(writer.Key("visitors")); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatal(err)
	}
	read, release := make(chan struct{}), make(chan struct{})
	f := func(sql string) {
		if strings.HasPrefix(sql, "SELECT") {
			close(read)
			<-release
		}
	}
	hdb.After.Store(&f)
	got := make(chan int64, 1)
	go func() {
		v, err := reader.Get(ctx, "visitors")
		if err != nil {
			t.Error(err)
		}
		got <- v
	}()
	<-read
	hdb.After.Store(nil)
	if v, err := writer.Add(ctx, "visitors", 1); err != nil || v != 43 {
		t.Fatalf("Add = %d, %v", v, err)
	}
	close(release)
	if v := <-got; v != 42 {
		t.Errorf("reader got %d, want the 42 it read", v)
	}
	// The Add deleted the reader's lease, so the fill of 42 was dropped.
	checkCachedCounter(t, writer, "visitors", 43)
}

// TestCounterCacheOnly: the cache-only counter's increment-with-Add-on-miss
// and CAS paths are exact under concurrency.
func TestCounterCacheOnly(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	cc, err := aggregate.NewCacheCounter(e.MC, aggCache(e.Opts(nil)))
	if err != nil {
		t.Fatal(err)
	}
	var want, failed atomic.Int64
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 25 {
				d := int64(1)
				if (g+j)%5 == 0 {
					d = -2
				}
				if _, err := cc.Increment(ctx, "hits", d); err != nil {
					if !errors.Is(err, repo.ErrRetriesExhausted) {
						t.Error(err)
						return
					}
					failed.Add(1) // not applied
					continue
				}
				want.Add(d)
			}
		}()
	}
	wg.Wait()
	if got, err := cc.Get(ctx, "hits"); err != nil || got != want.Load() {
		t.Fatalf("Get = %d, %v; want %d", got, err, want.Load())
	}
	t.Logf("cache-only counter: %d increments applied, %d refused with ErrRetriesExhausted, cas_conflicts=%d",
		32*25-failed.Load(), failed.Load(), cc.Stats().CASConflicts)
	// Below zero, incr is refused by memcached: the CAS path takes over.
	if _, err := cc.Increment(ctx, "neg", -5); err != nil {
		t.Fatal(err)
	}
	if v, err := cc.Increment(ctx, "neg", 3); err != nil || v != -2 {
		t.Fatalf("Increment(neg, 3) = %d, %v; want -2", v, err)
	}
	if v, err := cc.Get(ctx, "missing"); err != nil || v != 0 {
		t.Fatalf("Get(missing) = %d, %v", v, err)
	}
	if _, err := cc.Increment(ctx, "", 1); !errors.Is(err, repo.ErrInvalidArgument) {
		t.Fatalf("empty name: %v", err)
	}
}

// TestCounterCASValue: the gets/cas loop returns ErrRetriesExhausted when
// every attempt loses, and modify's error as is.
func TestCounterCASValue(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	key := e.NS + ":casvalue"
	o := e.Opts(nil)
	o.CASRetries = 4
	v, err := aggregate.CASValue(ctx, e.MC, key, aggCache(o), func(cur []byte, found bool) ([]byte, error) {
		if found {
			t.Errorf("found %q in a fresh key", cur)
		}
		return []byte("a"), nil
	})
	if err != nil || string(v) != "a" {
		t.Fatalf("CASValue on a miss = %q, %v", v, err)
	}
	calls := 0
	_, err = aggregate.CASValue(ctx, e.MC, key, aggCache(o), func(cur []byte, found bool) ([]byte, error) {
		calls++
		// Another writer changes the key between our gets and our cas.
		if err := e.MC.Set(&memcache.Item{Key: key, Value: []byte(fmt.Sprint("other", calls))}); err != nil {
			t.Error(err)
		}
		return append(cur, 'x'), nil
	})
	if !errors.Is(err, repo.ErrRetriesExhausted) || calls != 4 {
		t.Fatalf("always-conflicting CASValue: err = %v after %d calls; want ErrRetriesExhausted after 4", err, calls)
	}
	boom := errors.New("boom")
	if _, err := aggregate.CASValue(ctx, e.MC, key, aggCache(o), func([]byte, bool) ([]byte, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("modify error: %v", err)
	}
	if _, err := aggregate.CASValue(ctx, e.MC, "bad key", aggCache(o), func(c []byte, _ bool) ([]byte, error) { return c, nil }); !errors.Is(err, repo.ErrInvalidArgument) {
		t.Fatalf("invalid key: %v", err)
	}
	v, err = aggregate.CASValue(ctx, e.MC, key, aggCache(o), func(cur []byte, found bool) ([]byte, error) {
		return append(append([]byte(nil), cur...), '!'), nil
	})
	if err != nil || string(v) != "other4!" {
		t.Fatalf("CASValue = %q, %v; want other4!", v, err)
	}
}

// TestCounterOutbox: with a Repairer, an Add whose cache step cannot
// reach memcached records the key; once memcached is back holding its old
// item (a partition, not a restart), the Repairer deletes it and the next
// Get reads the database.
func TestCounterOutbox(t *testing.T) {
	e := newEnv(t)
	mp := startPrivateMemcached(t)
	mc, err := cacheClient(8, 200*time.Millisecond, mp.Addr())
	if err != nil {
		t.Fatal(err)
	}
	o := e.Opts(nil)
	o.Repairer = mustRepairer(e.Pool, mc, invalidation.RepairerConfig{})
	c := newCounter(t, e.Pool, mc, o)
	if _, err := c.Add(ctx, "visitors", 42); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "visitors"); err != nil || v != 42 {
		t.Fatalf("Get: %d %v", v, err)
	}
	old, err := mc.Get(c.Key("visitors"))
	if err != nil {
		t.Fatal(err)
	}
	if n := outboxRows(t, e); n != 0 {
		t.Fatalf("%d outbox rows after Adds that reached the cache", n)
	}
	if err := mp.Stop(); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Add(ctx, "visitors", 1); err != nil || v != 43 {
		t.Fatalf("Add with the cache down: %d %v", v, err)
	}
	if n := outboxRows(t, e); n != 1 {
		t.Fatalf("%d outbox rows after an Add the cache missed, want 1", n)
	}
	if err := mp.Start(); err != nil {
		t.Fatal(err)
	}
	old.CasID = 0
	if err := mc.Set(old); err != nil { // the partitioned node kept 42
		t.Fatal(err)
	}
	r := mustRepairer(e.Pool, mc, invalidation.RepairerConfig{})
	if n, err := r.RunOnce(ctx, 0); err != nil || n != 1 {
		t.Fatalf("repair: %d rows, %v", n, err)
	}
	if v, err := c.Get(ctx, "visitors"); err != nil || v != 43 {
		t.Fatalf("Get after the repair: %d %v, want 43", v, err)
	}
}

// counterRow is a row of the counters table, for a Store over it.
type counterRow struct {
	Name    string `db:"name"`
	Value   int64  `db:"value"`
	Version int64  `db:"version"`
}

// A Store and a Counter over the same table share the table's generation:
// the Store's InvalidateAll (as after a bulk change behind both) drops the
// Counter's cached value too, within the Counter's generation refresh.
func TestCounterSharesTheTableGeneration(t *testing.T) {
	e := newEnv(t)
	c := newCounter(t, e.Pool, e.MC, e.Opts(nil))
	s, err := repo.New(e.Pool, e.MC, repo.Table[counterRow, string]{
		Name: "counters", Key: []string{"name"}, Columns: []string{"name", "value", "version"}, Version: "version",
	}, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Add(ctx, "shared", 5); err != nil {
		t.Fatal(err)
	}
	if v, err := c.Get(ctx, "shared"); err != nil || v != 5 { // cached now
		t.Fatalf("Get = %d, %v; want 5", v, err)
	}
	e.Exec(t, `UPDATE counters SET value = 7, version = DEFAULT WHERE name = 'shared'`) // behind both
	if v, err := c.Get(ctx, "shared"); err != nil || v != 5 {
		t.Fatalf("Get before InvalidateAll = %d, %v; want the cached 5", v, err)
	}
	if err := s.InvalidateAll(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	deadline := start.Add(5 * time.Second) // the refresh is 1 s
	for {
		v, err := c.Get(ctx, "shared")
		if err != nil {
			t.Fatal(err)
		}
		if v == 7 {
			t.Logf("the Counter saw the new generation %v after InvalidateAll", time.Since(start))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Get 5 s after the Store's InvalidateAll = %d, want 7", v)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
