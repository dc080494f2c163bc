package main

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// switchRun is what one switch from three nodes to four measured.
type switchRun struct {
	misses, dbReads uint64
	moved           int // stock rows whose key the fourth node takes
	copyRate        float64
}

// The misses and database reads right after a switch from three memcached
// nodes to four, with and without a pre-warm: 10,000 stock rows are cached
// over three nodes (ketama), then read once each through a store over the
// four-node ring. Without the pre-warm the keys the fourth node takes (about
// a quarter) miss and are read from Postgres; with it almost none are.
func TestPrewarmBeforeSwitch(t *testing.T) {
	ctx := context.Background()
	url := repotest.NewDatabase(t)
	if err := migrations.Up(url); err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := seed(ctx, pool, dataset{Categories: 1, Products: 100, Stores: 100}, 2, io.Discard); err != nil {
		t.Fatal(err)
	}
	rows, _ := pool.Query(ctx, `SELECT article_number, uom, store_code FROM stock`)
	keys, err := pgx.CollectRows(rows, pgx.RowToStructByPos[StockKey])
	if err != nil {
		t.Fatal(err)
	}
	addrs, procs := startNodes(t, 4)
	without := switchNodes(t, pool, keys, addrs, false)
	for _, p := range procs { // the same ring again, empty
		if err := p.Restart(); err != nil {
			t.Fatal(err)
		}
	}
	with := switchNodes(t, pool, keys, addrs, true)
	n := float64(len(keys))
	repotest.Summaryf("prewarm: keys=%d moved=%d miss_rate_without=%.3f miss_rate_with=%.3f db_reads_without=%d db_reads_with=%d copy_rate_keys_per_s=%.0f\n",
		len(keys), with.moved, float64(without.misses)/n, float64(with.misses)/n, without.dbReads, with.dbReads, with.copyRate)
	if r := float64(without.misses) / n; r < 0.15 || r > 0.35 || without.misses != uint64(without.moved) {
		t.Errorf("miss rate without pre-warm %.3f (%d misses, %d keys moved), want about 0.25, every moved key",
			r, without.misses, without.moved)
	}
	if r := float64(with.misses) / n; r > 0.005 || with.misses*20 > without.misses {
		t.Errorf("miss rate with pre-warm %.3f (%d misses, %d without), want near 0", r, with.misses, without.misses)
	}
}

// switchNodes caches every stock row of keys over the first three of the
// empty nodes addrs, then (after a Prewarm to the four-node ring if prewarm)
// reads each once through a store over the four nodes and returns that
// store's misses and database reads.
func switchNodes(t *testing.T, pool *pgxpool.Pool, keys []StockKey, addrs []string, prewarm bool) switchRun {
	t.Helper()
	ctx := context.Background()
	opts := &repo.Options{Namespace: "retail", TTL: time.Hour}
	three := ketamaClient(t, addrs[:3])
	before, err := newCatalog(pool, three, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(keys); i += 500 {
		if _, err := before.stock.GetMany(ctx, keys[i:min(i+500, len(keys))]); err != nil {
			t.Fatal(err)
		}
	}
	if st := before.stock.Stats(); st.Fills != uint64(len(keys)) {
		t.Fatalf("caching over three nodes: %+v, want %d fills", st, len(keys))
	}
	four := ketamaClient(t, addrs)
	var run switchRun
	if prewarm {
		st, err := memclient.Prewarm(ctx, three, four, memclient.PrewarmConfig{Prefix: "retail:", Concurrency: 8})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("prewarm: %+v", st)
		run.copyRate = st.Rate()
	}
	after, err := newCatalog(pool, four, opts)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		a, err1 := three.Server(after.stock.Key(k))
		b, err2 := four.Server(after.stock.Key(k))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		if a.String() != b.String() {
			run.moved++
		}
	}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < len(keys); i += 8 {
				if _, err := after.stock.Get(ctx, keys[i]); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	st := after.stock.Stats()
	run.misses, run.dbReads = st.Misses, st.DBReads
	return run
}
