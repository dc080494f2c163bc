package repo_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
)

// A hot key read by 16 goroutines for longer than its TTL never expires:
// one read in the last EarlyRefresh of its life wins the refresh, answers
// at once and puts the row back for another TTL, so there is no miss after
// the first and the database sees one read per refresh. Without early
// refresh the key expires and misses again.
func TestEarlyRefresh(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "hot", 100)
	run := func(early time.Duration) (misses, dbReads uint64, fails int64) {
		o := e.Opts(nil)
		o.Namespace += "-" + early.String()
		o.TTL, o.Jitter, o.EarlyRefresh = 4*time.Second, -1, early
		s := e.products(t, o)
		if _, err := s.Get(ctx, 1); err != nil {
			t.Fatal(err)
		}
		var failed atomic.Int64
		var wg sync.WaitGroup
		deadline := time.Now().Add(6 * time.Second) // past the first TTL
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(deadline) {
					if p, err := s.Get(ctx, 1); err != nil || p.Name != "hot" {
						failed.Add(1)
					}
					time.Sleep(time.Millisecond)
				}
			}()
		}
		wg.Wait()
		st := s.Stats()
		return st.Misses, st.DBReads, failed.Load()
	}
	// A refresh puts the row back for 4s; the next is won once less than
	// 3s is left (memcached counts whole seconds): about one a second, and
	// never a herd of the 16 readers' thousands of reads.
	misses, reads, fails := run(3 * time.Second)
	t.Logf("early refresh 3s, TTL 4s, 16 readers for 6s: %d misses, %d database reads", misses, reads)
	if fails != 0 || misses != 1 || reads < 2 || reads > 1+12 {
		t.Fatalf("with early refresh: %d failed reads, %d misses (want the first only), %d database reads (want the first and at most two refreshes a second)", fails, misses, reads)
	}
	misses, reads, fails = run(-1)
	t.Logf("without: %d misses, %d database reads", misses, reads)
	if fails != 0 || misses < 2 {
		t.Fatalf("control without early refresh: %d failed reads, %d misses; want the key to expire and miss again", fails, misses)
	}
}

// The Query helper refreshes a hot result the same way: 16 readers of one
// query for 6s with TTL 4s see one miss, and Load runs once per refresh.
func TestEarlyRefreshQuery(t *testing.T) {
	e := newEnv(t)
	var loads atomic.Int64
	q, err := repo.NewQuery(e.MC, repo.QueryConfig[int, string]{Name: "hot", Namespace: e.NS, TTL: 4 * time.Second, Jitter: -1,
		EarlyRefresh: 3 * time.Second,
		Load:         func(context.Context, int) (string, error) { loads.Add(1); return "result", nil }})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := q.Get(ctx, 1); err != nil { // the first miss
		t.Fatal(err)
	}
	var failed atomic.Int64
	var wg sync.WaitGroup
	deadline := time.Now().Add(6 * time.Second)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				if v, err := q.Get(ctx, 1); err != nil || v != "result" {
					failed.Add(1)
				}
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	st := q.Stats()
	t.Logf("query: %d misses, %d loads", st.Misses, loads.Load())
	if failed.Load() != 0 || st.Misses != 1 || loads.Load() < 2 || loads.Load() > 1+12 {
		t.Fatalf("%d failed reads, %d misses (want 1), %d loads (want the first and at most two refreshes a second)", failed.Load(), st.Misses, loads.Load())
	}
}

// A tombstone (or cached "not found") lives NegativeTTL, shorter than the
// early refresh window of a long TTL: its hits win refreshes, which must
// leave it alone, so that a later insert's write-through still finds the
// deleted row's version there.
func TestEarlyRefreshLeavesTombstones(t *testing.T) {
	e := newEnv(t)
	o := e.Opts(nil)
	o.EarlyRefresh = time.Minute // longer than NegativeTTL (30s): every tombstone hit wins
	s := e.products(t, o)
	e.insertProduct(t, 1, "one", 100)
	if _, err := s.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := s.Get(ctx, 1); !errors.Is(err, repo.ErrNotFound) {
			t.Fatalf("after delete: %v", err)
		}
	}
	time.Sleep(100 * time.Millisecond) // any refresh would have landed
	p, err := s.Insert(ctx, Product{ID: 1, ArticleNumber: "A1", Name: "again", CategoryID: 1})
	if err != nil {
		t.Fatal(err)
	}
	reads := s.Stats().DBReads
	if got, err := s.Get(ctx, 1); err != nil || got.Name != "again" || got.Version != p.Version {
		t.Fatalf("after re-insert: %+v %v", got, err)
	}
	if s.Stats().DBReads != reads {
		t.Fatal("the re-insert did not go through to the cache: a refresh replaced the tombstone")
	}
}
