package repo_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
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
