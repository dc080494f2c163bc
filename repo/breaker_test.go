package repo_test

import (
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
)

// While the cache is partitioned away, reads stop paying the client timeout
// once the breaker opens; writes still commit and leave their keys in the
// outbox; when the partition heals, the breaker's probe replays the outbox
// before any read trusts the cache, so the node's old items are never served.
func TestBreakerSkipsADeadCacheAndRecoversWithoutStaleReads(t *testing.T) {
	e := newEnv(t)
	mp := startPrivateMemcached(t)
	px := newProxy(t, mp.Addr())
	const timeout = 300 * time.Millisecond
	mc, err := cacheClient(8, timeout, px.Addr())
	if err != nil {
		t.Fatal(err)
	}
	var h hookLog
	o := e.Opts(&h)
	o.Repairer = mustRepairer(e.Pool, mc, invalidation.RepairerConfig{})
	o.BreakerCooldown = 200 * time.Millisecond
	s, err := repo.New(e.Pool, mc, productTable, o)
	if err != nil {
		t.Fatal(err)
	}
	e.insertProduct(t, 1, "before", 100)
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "before" {
		t.Fatalf("warm: %+v %v", p, err)
	}

	px.Partition()
	var slow int
	start := time.Now()
	for i := 0; i < 20; i++ {
		t0 := time.Now()
		p, err := s.Get(ctx, 1)
		if err != nil || p.Name != "before" {
			t.Fatalf("read %d during the partition: %+v %v", i, p, err)
		}
		if time.Since(t0) >= timeout {
			slow++
		}
	}
	// Only the reads before the breaker opened (3 failures) pay the timeout.
	if slow > 3 {
		t.Fatalf("%d of 20 reads paid the %v timeout during the partition (in %v)", slow, timeout, time.Since(start))
	}
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.Name = "during"; return nil }); err != nil {
		t.Fatalf("write during the partition: %v", err)
	}
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "during" {
		t.Fatalf("read after a write during the partition: %+v %v", p, err)
	}
	if n := outboxRows(t, e); n != 1 {
		t.Fatalf("%d outbox rows, want 1", n)
	}

	px.Heal()
	// The node kept its item from before the partition: the stale row.
	direct, _ := cacheClient(2, time.Second, mp.Addr())
	if _, err := direct.Get(s.Key(1)); err != nil {
		t.Fatalf("the healed node lost its old item (%v): this test needs it stale", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for outboxRows(t, e) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the breaker never replayed the outbox after the partition healed")
		}
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "during" {
			t.Fatalf("stale read while recovering: %+v %v", p, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := 0; i < 5; i++ {
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "during" {
			t.Fatalf("read after recovery: %+v %v", p, err)
		}
	}
	if st := s.Stats(); st.Hits == 0 {
		t.Fatalf("the cache is not used again after recovery: %+v", st)
	}
}
