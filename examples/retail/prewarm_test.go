package main

import (
	"context"
	"io"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// switchRun is what one migration from three nodes to four measured.
type switchRun struct {
	misses, dbReads uint64 // of the reads right after the switch
	moved           int    // stock rows whose key the fourth node takes
	// retail cache add-node's counts (with the pre-warm).
	listed, moving, copied, present, raced, vanished int
	copyRate                                         float64
	writes, writesDuringCopy                         int64 // stock updates through a write-both instance
	checkedMoved                                     int   // moved rows whose read after the switch was compared with the database
	stale                                            int   // rows read after the switch that were not the database's
}

// The misses and database reads right after a switch from three memcached
// nodes to four, with and without a pre-warm, through the sequence a user
// runs (examples/README.md): 10,000 stock rows are cached by an instance
// on the three nodes; instances move to MEMCACHED_PHASE=write-both, retail
// cache sweep runs, then (with the pre-warm) retail cache add-node while
// two writers update 64 rows (half of them moving) through a write-both
// instance; then the instances step to fallback and new-reads, and an
// instance of the switched phase reads every row once. "The switch" is
// new-reads, the first phase whose reads have only the new ring (the
// rollout passes fallback without reads of these rows): without the
// pre-warm the rows the fourth node takes (about a quarter) miss and are
// read from Postgres; with it almost none are (those written after their
// copy, whose write deleted the copy). The same reads in fallback, which
// answers a miss from the old ring, are measured too. Every row read after
// the switch must be the database's (no stale copy).
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
	var runs [4]switchRun // without, with: reads in new-reads; then in fallback
	for i, c := range []struct {
		prewarm bool
		readIn  string
	}{{false, "new-reads"}, {true, "new-reads"}, {false, "fallback"}, {true, "fallback"}} {
		if i > 0 {
			for _, p := range procs { // the same ring again, empty
				if err := p.Restart(); err != nil {
					t.Fatal(err)
				}
			}
		}
		runs[i] = migrateStock(t, pool, url, keys, addrs, c.prewarm, c.readIn)
		t.Logf("prewarm=%v reads in %s: %+v", c.prewarm, c.readIn, runs[i])
	}
	without, with, fbWithout, fbWith := runs[0], runs[1], runs[2], runs[3]
	n := float64(len(keys))
	repotest.Summaryf("prewarm: moved_keys=%d copied=%d db_reads_after_switch=%d (without prewarm: %d)\n",
		with.moved, with.copied, with.dbReads, without.dbReads)
	repotest.Summaryf("prewarm-detail: keys=%d switch=new-reads miss_rate=%.3f (without prewarm: %.3f) listed=%d moving=%d present=%d raced=%d vanished=%d copy_rate_keys_per_s=%.0f writes_during_copy=%d stale=%d of %d moved rows read; reads in fallback instead: misses=%d db_reads=%d (without prewarm: misses=%d db_reads=%d)\n",
		len(keys), float64(with.misses)/n, float64(without.misses)/n, with.listed, with.moving, with.present, with.raced, with.vanished,
		with.copyRate, with.writesDuringCopy, with.stale, with.checkedMoved, fbWith.misses, fbWith.dbReads, fbWithout.misses, fbWithout.dbReads)
	if r := float64(without.misses) / n; r < 0.15 || r > 0.35 || without.misses != uint64(without.moved) {
		t.Errorf("miss rate without pre-warm %.3f (%d misses, %d keys moved), want about 0.25, every moved key",
			r, without.misses, without.moved)
	}
	if r := float64(with.misses) / n; r > 0.005 || with.misses*20 > without.misses {
		t.Errorf("miss rate with pre-warm %.3f (%d misses, %d without), want near 0", r, with.misses, without.misses)
	}
	if with.dbReads*20 > without.dbReads || with.copied < with.moved*9/10 || with.moving < with.moved {
		t.Errorf("with pre-warm: %d database reads (%d without), copied %d of %d moving, %d stock rows moved",
			with.dbReads, without.dbReads, with.copied, with.moving, with.moved)
	}
	if with.writesDuringCopy == 0 {
		t.Errorf("no write ran during the pre-warm: %+v", with)
	}
	if fbWithout.misses != uint64(fbWithout.moved) || fbWithout.dbReads*20 > without.dbReads || fbWith.dbReads*20 > without.dbReads {
		t.Errorf("in fallback: %d misses of %d moved keys, %d database reads without pre-warm and %d with; %d after the switch without",
			fbWithout.misses, fbWithout.moved, fbWithout.dbReads, fbWith.dbReads, without.dbReads)
	}
}

// retailInstance is a service instance (newApp) on the database url with
// the environment kv (MEMCACHED_ADDR, MEMCACHED_NEW_ADDR, MEMCACHED_PHASE),
// without a near-cache.
func retailInstance(t *testing.T, url string, kv ...string) *app {
	t.Helper()
	env := map[string]string{envDatabaseURL: url, envDBMaxConns: "8", envNearMaxAge: "0"}
	for i := 0; i < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), 8)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// addNodeCounts reads retail cache add-node's counts.
var addNodeCounts = regexp.MustCompile(`add-node: listed=(\d+) moving=(\d+) copied=(\d+) present=(\d+) raced=(\d+) vanished=(\d+) elapsed=\S+ rate=(\d+) keys/s`)

// migrateStock caches every stock row of keys over the first three of the
// empty nodes addrs, migrates to the four as examples/README.md says
// (write-both, sweep, the pre-warm with writers if prewarm, fallback, and
// new-reads unless readIn is fallback), then reads each row once through an
// instance in readIn and returns its misses and database reads. Every row
// read must be the database's.
func migrateStock(t *testing.T, pool *pgxpool.Pool, url string, keys []StockKey, addrs []string, prewarm bool, readIn string) switchRun {
	t.Helper()
	ctx := context.Background()
	three, four := strings.Join(addrs[:3], ","), strings.Join(addrs, ",")
	before := retailInstance(t, url, envMemcachedAddr, three)
	defer before.close()
	for i := 0; i < len(keys); i += 500 {
		if _, err := before.cat.stock.GetMany(ctx, keys[i:min(i+500, len(keys))]); err != nil {
			t.Fatal(err)
		}
	}
	if st := before.cat.stock.Stats(); st.Fills != uint64(len(keys)) {
		t.Fatalf("caching over three nodes: %+v, want %d fills", st, len(keys))
	}
	var res switchRun
	oldRing, newRing := ketamaClient(t, addrs[:3]), ketamaClient(t, addrs)
	moves := make([]bool, len(keys))
	var written []StockKey // 32 rows that move, 32 that stay, spread over the keys
	var movingWritten, stayingWritten int
	for i, k := range keys {
		a, err1 := oldRing.Server(before.cat.stock.Key(k))
		b, err2 := newRing.Server(before.cat.stock.Key(k))
		if err1 != nil || err2 != nil {
			t.Fatal(err1, err2)
		}
		moves[i] = a.String() != b.String()
		if moves[i] {
			res.moved++
		}
		switch {
		case i%7 != 0:
		case moves[i] && movingWritten < 32:
			movingWritten++
			written = append(written, k)
		case !moves[i] && stayingWritten < 32:
			stayingWritten++
			written = append(written, k)
		}
	}

	// Every instance runs write-both; then the sweep, and the pre-warm
	// while writers write.
	env := map[string]string{envMemcachedAddr: three, envMemcachedNewAddr: four, envMemcachedPhase: "write-both"}
	getenv := func(k string) string { return env[k] }
	writeBoth := retailInstance(t, url, envMemcachedAddr, three, envMemcachedNewAddr, four, envMemcachedPhase, "write-both")
	defer writeBoth.close()
	var out strings.Builder
	if err := run(ctx, []string{"cache", "sweep"}, getenv, &out, io.Discard); err != nil || !strings.Contains(out.String(), "sweep: deleted=0 ") {
		t.Fatalf("sweep: %v\n%s", err, out.String())
	}
	stop := make(chan struct{})
	var copying atomic.Bool
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Go(func() { // each writer its own rows: no two writes of a row at once
			for i := w; ; i += 2 {
				select {
				case <-stop:
					return
				default:
				}
				k := written[i%len(written)]
				if _, err := writeBoth.cat.stock.Update(ctx, k, func(s *Stock) error { s.Quantity++; return nil }); err != nil {
					t.Errorf("update %v: %v", k, err)
					return
				}
				atomic.AddInt64(&res.writes, 1)
				if copying.Load() {
					atomic.AddInt64(&res.writesDuringCopy, 1)
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	if prewarm {
		copying.Store(true)
		out.Reset()
		err := run(ctx, []string{"cache", "add-node", "-node", addrs[3]}, getenv, &out, io.Discard)
		copying.Store(false)
		if err != nil {
			t.Fatalf("add-node: %v\n%s", err, out.String())
		}
		m := addNodeCounts.FindStringSubmatch(out.String())
		if m == nil {
			t.Fatalf("add-node's counts: %s", out.String())
		}
		n := make([]int, len(m)-1)
		for i, s := range m[1:] {
			n[i], _ = strconv.Atoi(s)
		}
		res.listed, res.moving, res.copied, res.present, res.raced, res.vanished = n[0], n[1], n[2], n[3], n[4], n[5]
		res.copyRate = float64(n[6])
	} else {
		time.Sleep(250 * time.Millisecond)
	}
	close(stop)
	wg.Wait()

	// The next phases, each once every instance runs the one before.
	reader := retailInstance(t, url, envMemcachedAddr, three, envMemcachedNewAddr, four, envMemcachedPhase, "fallback")
	defer reader.close()
	if readIn != "fallback" {
		reader = retailInstance(t, url, envMemcachedAddr, three, envMemcachedNewAddr, four, envMemcachedPhase, readIn)
		defer reader.close()
	}
	got := make([]Stock, len(keys))
	var rg sync.WaitGroup
	for w := range 8 {
		rg.Go(func() {
			for i := w; i < len(keys); i += 8 {
				s, err := reader.cat.stock.Get(ctx, keys[i])
				if err != nil {
					t.Error(err)
					return
				}
				got[i] = s
			}
		})
	}
	rg.Wait()
	st := reader.cat.stock.Stats()
	res.misses, res.dbReads = st.Misses, st.DBReads

	// What was read is what the database holds (the writers are done).
	rows, _ := pool.Query(ctx, `SELECT article_number, uom, store_code, quantity, version FROM stock`)
	db := map[StockKey][2]int64{}
	var k StockKey
	var q, v int64
	if _, err := pgx.ForEachRow(rows, []any{&k.ArticleNumber, &k.UOM, &k.StoreCode, &q, &v}, func() error {
		db[k] = [2]int64{q, v}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stale := 0
	for i, k := range keys {
		if want := db[k]; int64(got[i].Quantity) != want[0] || got[i].Version != want[1] {
			if stale++; stale <= 5 {
				t.Errorf("%s: %v (moves: %v) read quantity %d version %d after the switch, the database has %d version %d",
					readIn, k, moves[i], got[i].Quantity, got[i].Version, want[0], want[1])
			}
		}
		if moves[i] {
			res.checkedMoved++
		}
	}
	if res.stale = stale; stale > 0 {
		t.Errorf("%s (prewarm %v): %d stale rows of %d", readIn, prewarm, stale, len(keys))
	}
	return res
}
