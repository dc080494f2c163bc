package repo_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
)

func TestInTxRunsCacheEffectsOnlyAfterCommit(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	e.insertProduct(t, 1, "cached", 100)
	if _, err := s.Get(ctx, 1); err != nil { // cache the row
		t.Fatal(err)
	}

	// Rolled back: neither the database nor the cache changes.
	boom := errors.New("boom")
	err := repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
		ps := s.In(tx)
		if _, err := ps.Update(ctx, 1, func(p *Product) error { p.Name = "rolled back"; return nil }); err != nil {
			return err
		}
		if p, err := ps.Get(ctx, 1); err != nil || p.Name != "rolled back" {
			t.Errorf("the transaction does not read its own write: %+v %v", p, err)
		}
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "cached" {
			t.Errorf("an uncommitted write reached the cache: %+v %v", p, err)
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("InTx returned %v", err)
	}
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "cached" {
		t.Fatalf("after rollback: %+v %v", p, err)
	}

	// Committed: every write of the transaction reaches the cache after COMMIT.
	err = repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
		ps := s.In(tx)
		if _, err := ps.Update(ctx, 1, func(p *Product) error { p.Name = "committed"; return nil }); err != nil {
			return err
		}
		if _, err := ps.Insert(ctx, Product{ID: 2, ArticleNumber: "A2", Name: "new", CategoryID: 1}); err != nil {
			return err
		}
		return ps.Delete(ctx, 2)
	})
	if err != nil {
		t.Fatal(err)
	}
	reads := s.Stats().DBReads
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "committed" {
		t.Fatalf("after commit: %+v %v", p, err)
	}
	if s.Stats().DBReads != reads {
		t.Fatal("the read after the commit missed the cache: the effects did not run")
	}
	if _, err := s.Get(ctx, 2); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("row inserted and deleted in the transaction: %v", err)
	}
}

func outboxRows(t *testing.T, e *env) int {
	t.Helper()
	var n int
	if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM cachedrepo_outbox`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestOutbox(t *testing.T) {
	e := newEnv(t)
	o := e.Opts(nil)
	o.Repairer = mustRepairer(e.Pool, e.MC, invalidation.RepairerConfig{})
	s := e.products(t, o)
	e.insertProduct(t, 1, "v1", 100)

	// Normal writes leave no outbox rows.
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.Name = "v2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Insert(ctx, Product{ID: 2, ArticleNumber: "A2", Name: "x", CategoryID: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upsert(ctx, Product{ID: 3, ArticleNumber: "A3", Name: "y", CategoryID: 1}); err != nil {
		t.Fatal(err)
	}
	if n := outboxRows(t, e); n != 0 {
		t.Fatalf("%d outbox rows after successful writes", n)
	}
	if p, err := s.Get(ctx, 1); err != nil || p.Name != "v2" {
		t.Fatalf("get: %+v %v", p, err)
	}

	// The cache is unreachable during a write: the commit stands and its key
	// stays in the outbox. Then the cache comes back holding the old row
	// (a partition, not a restart): the Repairer removes it.
	mp := startPrivateMemcached(t)
	mc, _ := cacheClient(8, 200*time.Millisecond, mp.Addr())
	po := *o
	po.Repairer = mustRepairer(e.Pool, mc, invalidation.RepairerConfig{})
	ps, err := repo.New(e.Pool, mc, productTable, &po)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := ps.Get(ctx, 1); err != nil || p.Name != "v2" {
		t.Fatalf("get: %+v %v", p, err)
	}
	stale, err := mc.Get(ps.Key(1))
	if err != nil {
		t.Fatal(err)
	}
	if err := mp.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.Update(ctx, 1, func(p *Product) error { p.Name = "v3"; return nil }); err != nil {
		t.Fatalf("update with the cache down: %v", err)
	}
	if n := outboxRows(t, e); n != 1 {
		t.Fatalf("%d outbox rows after a write the cache missed, want 1", n)
	}
	if err := mp.Start(); err != nil {
		t.Fatal(err)
	}
	stale.CasID = 0
	if err := mc.Set(stale); err != nil { // the partitioned node kept its old item
		t.Fatal(err)
	}
	r := mustRepairer(e.Pool, mc, invalidation.RepairerConfig{})
	if n, err := r.RunOnce(ctx, 0); err != nil || n != 1 {
		t.Fatalf("repair: %d rows, %v", n, err)
	}
	if n := outboxRows(t, e); n != 0 {
		t.Fatalf("%d outbox rows after the repair", n)
	}
	if _, err := mc.Get(ps.Key(1)); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("stale key not deleted: %v", err)
	}
	if p, err := ps.Get(ctx, 1); err != nil || p.Name != "v3" {
		t.Fatalf("get after repair: %+v %v", p, err)
	}

	// A rolled-back transaction leaves no outbox row either.
	_ = repo.InTx(ctx, e.Pool, func(tx *repo.Tx) error {
		if _, err := s.In(tx).Update(ctx, 1, func(p *Product) error { p.Name = "never"; return nil }); err != nil {
			return err
		}
		return errors.New("roll back")
	})
	if n := outboxRows(t, e); n != 0 {
		t.Fatalf("%d outbox rows after a rollback", n)
	}

	// Run stops with its context.
	rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := r.Run(rctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Run: %v", err)
	}
}
