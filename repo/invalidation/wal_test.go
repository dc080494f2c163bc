package invalidation_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/aggregate"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
)

type product struct {
	ID            int64     `db:"id"`
	ArticleNumber string    `db:"article_number"`
	Name          string    `db:"name"`
	CategoryID    int64     `db:"category_id"`
	PriceCents    int64     `db:"price_cents"`
	UpdatedAt     time.Time `db:"updated_at"`
	Version       int64     `db:"version"`
}

type stockKey struct{ ArticleNumber, UOM, StoreCode string }

type stock struct {
	ArticleNumber string    `db:"article_number"`
	UOM           string    `db:"uom"`
	StoreCode     string    `db:"store_code"`
	Quantity      int32     `db:"quantity"`
	UpdatedAt     time.Time `db:"updated_at"`
	Version       int64     `db:"version"`
}

// walRig is a test's stores, aggregates and a running WAL invalidator.
type walRig struct {
	e        *testenv.Env
	products *repo.Store[product, int64]
	stock    *repo.Store[stock, stockKey]
	counter  *aggregate.Counter
	board    *aggregate.Leaderboard
	wal      *invalidation.WAL
	stop     func()
	markerAt []int64               // row versions of the marker changes committed by applied
	log      *applyLog             // the changes applied (nil in benchmarks)
	targets  []invalidation.Target // the invalidator's (recording in log)
}

// applyLog records every change the invalidator applied, by table, key and
// row version.
type applyLog struct {
	mu   sync.Mutex
	seen map[string]bool
}

// loggedTarget is a Target whose applied changes are recorded in log.
type loggedTarget struct {
	invalidation.Target
	log *applyLog
}

func changeID(table string, key []string, version int64) string {
	return fmt.Sprintf("%s|%q|%d", table, key, version)
}

// wrap returns ts, each recording its applied changes in l.
func (l *applyLog) wrap(ts []invalidation.Target) []invalidation.Target {
	out := make([]invalidation.Target, len(ts))
	for i, t := range ts {
		out[i] = loggedTarget{Target: t, log: l}
	}
	return out
}

// WALApply applies cs and records them once they were applied.
func (t loggedTarget) WALApply(ctx context.Context, cs []invalidation.Change) error {
	if err := t.Target.WALApply(ctx, cs); err != nil {
		return err
	}
	table, _, _ := t.WALTable()
	t.log.mu.Lock()
	defer t.log.mu.Unlock()
	for _, c := range cs {
		t.log.seen[changeID(table, c.Key, c.Version)] = true
	}
	return nil
}

// missing returns how many of the changes want were never applied.
func (l *applyLog) missing(want []string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, id := range want {
		if !l.seen[id] {
			n++
		}
	}
	return n
}

// slotName is a replication slot name of the test's own: slots are
// per server, not per database.
func slotName(e *testenv.Env) string {
	return "t_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToLower(e.NS))
}

// newWALRig returns a rig whose invalidator records every change it
// applied (walRig.log).
func newWALRig(t *testing.T, cfg invalidation.WALConfig) *walRig {
	return newWALRigOn(t, testenv.New(t), cfg, true)
}

// newWALRigB is newWALRig for benchmarks, without the record.
func newWALRigB(b *testing.B) *walRig {
	return newWALRigOn(b, testenv.New(b), invalidation.WALConfig{}, false)
}

// newWALRigOn is newWALRig over e.
func newWALRigOn(t testing.TB, e *testenv.Env, cfg invalidation.WALConfig, record bool) *walRig {
	t.Helper()
	r := &walRig{e: e}
	var err error
	o := e.Opts(nil)
	if r.products, err = repo.New(e.Pool, e.MC, repo.Table[product, int64]{Name: "products", Key: []string{"id"},
		Columns: []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at", "version"}, Version: "version"}, o); err != nil {
		t.Fatal(err)
	}
	if r.stock, err = repo.New(e.Pool, e.MC, repo.Table[stock, stockKey]{Name: "public.stock", Key: []string{"article_number", "uom", "store_code"},
		Columns: []string{"article_number", "uom", "store_code", "quantity", "updated_at", "version"}, Version: "version"}, o); err != nil {
		t.Fatal(err)
	}
	cache := aggregate.CacheConfig{Namespace: e.NS}
	if r.counter, err = aggregate.NewCounter(e.Pool, e.MC, aggregate.CounterConfig{Cache: cache}); err != nil {
		t.Fatal(err)
	}
	if r.board, err = aggregate.NewLeaderboard(e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Cache: cache}); err != nil {
		t.Fatal(err)
	}
	cfg.ConnString = e.URL
	cfg.Slot = slotName(e)
	cfg.Targets = []invalidation.Target{r.products, r.stock, r.counter, r.board}
	if record {
		r.log = &applyLog{seen: map[string]bool{}}
		cfg.Targets = r.log.wrap(cfg.Targets)
	}
	r.targets = cfg.Targets
	if cfg.StatusInterval == 0 {
		cfg.StatusInterval = 100 * time.Millisecond
	}
	if cfg.RetryInterval == 0 {
		cfg.RetryInterval = 100 * time.Millisecond
	}
	if r.wal, err = invalidation.NewWAL(cfg); err != nil {
		t.Fatal(err)
	}
	r.stop = r.run(t, r.wal)
	t.Cleanup(func() {
		r.stop()
		dropSlot(t, e, cfg.Slot)
	})
	waitFor(t, "the invalidator to hold its slot", func() bool { return r.wal.Stats().Holding })
	return r
}

// run starts w and returns a function that stops it and waits for it.
func (r *walRig) run(t testing.TB, w *invalidation.WAL) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("WAL.Run returned %v, want context.Canceled", err)
			}
		})
	}
}

func dropSlot(t testing.TB, e *testenv.Env, slot string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := e.Pool.Exec(context.Background(), `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1`, slot)
		if err == nil || time.Now().After(deadline) {
			if err != nil {
				t.Errorf("dropping slot %s: %v", slot, err)
			}
			return
		}
		time.Sleep(50 * time.Millisecond) // the walsender may still hold it for a moment
	}
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// applied waits until the invalidator has applied every change committed so
// far: it commits a marker change to a target table (counters) and waits
// for the invalidator to confirm a position past it (it confirms commits in
// order, and only after their cache step).
func (r *walRig) applied(t *testing.T) { r.appliedB(t) }

// appliedB is applied for any testing.TB.
func (r *walRig) appliedB(t testing.TB) {
	t.Helper()
	// The insert position read inside the marker's transaction is past every
	// earlier commit and before the marker's own commit record.
	var lsn string
	var version int64
	err := r.e.Pool.QueryRow(context.Background(), `WITH m AS (INSERT INTO counters (name) VALUES ('wal-marker')
		ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING version)
		SELECT pg_current_wal_insert_lsn()::text, version FROM m`).Scan(&lsn, &version)
	if err != nil {
		t.Fatal(err)
	}
	r.markerAt = append(r.markerAt, version)
	waitFor(t, "the invalidator to pass "+lsn, func() bool {
		var done bool
		err := r.e.Pool.QueryRow(context.Background(), `SELECT $1::pg_lsn < $2::pg_lsn`, lsn, r.wal.Stats().ConfirmedLSN).Scan(&done)
		return err == nil && done
	})
}

// Changes made behind the stores' backs (plain SQL) reach the cache: an
// update, a delete, an insert over a cached "not found", a key change, a
// composite key, a counter and a score changed by SQL, a TRUNCATE, and
// changes to a table that is no target (ignored).
func TestWALBehindTheBack(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	e := r.e
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (1, 'A1', 'one', 1, 100), (2, 'A2', 'two', 1, 200)`)
	e.Exec(t, `INSERT INTO stock (article_number, uom, store_code, quantity) VALUES ('A1', 'EA', 'S001', 5)`)
	sk := stockKey{"A1", "EA", "S001"}
	if _, err := r.counter.Add(ctx, "visitors", 42); err != nil {
		t.Fatal(err)
	}
	if err := r.board.Submit(ctx, "b", "p1", 10); err != nil {
		t.Fatal(err)
	}
	// Everything cached, including a "not found" for product 3.
	read := func() (p1, p2 product, p3err error, s stock, n int64, top []aggregate.Entry) {
		t.Helper()
		var err error
		if p1, err = r.products.Get(ctx, 1); err != nil {
			t.Fatal(err)
		}
		p2, _ = r.products.Get(ctx, 2)
		_, p3err = r.products.Get(ctx, 3)
		if s, err = r.stock.Get(ctx, sk); err != nil {
			t.Fatal(err)
		}
		if n, err = r.counter.Get(ctx, "visitors"); err != nil {
			t.Fatal(err)
		}
		if top, err = r.board.Top(ctx, "b", 3); err != nil {
			t.Fatal(err)
		}
		return
	}
	read()
	before := r.products.Stats()

	// A table in the publication that is no target: its changes are
	// ignored, and counted.
	e.Exec(t, `ALTER PUBLICATION cachedrepo ADD TABLE categories`)
	e.Exec(t, `UPDATE products SET name = 'renamed' WHERE id = 1`) // no version = DEFAULT: the trigger bumps it
	e.Exec(t, `DELETE FROM products WHERE id = 2`)
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (3, 'A3', 'three', 1, 300)`)
	e.Exec(t, `UPDATE stock SET quantity = 9 WHERE article_number = 'A1'`)
	e.Exec(t, `UPDATE counters SET value = 100 WHERE name = 'visitors'`)
	e.Exec(t, `UPDATE scores SET score = 99 WHERE board = 'b'`)
	e.Exec(t, `UPDATE categories SET name = 'tools!' WHERE id = 1`) // not a target
	r.applied(t)

	p1, p2, p3err, s, n, top := read()
	if p1.Name != "renamed" || p2.ID != 0 || p3err != nil || s.Quantity != 9 || n != 100 || len(top) != 1 || top[0].Score != 99 {
		t.Fatalf("after the invalidator: p1 %q, p2 %+v, p3 %v, stock %d, counter %d, top %+v", p1.Name, p2, p3err, s.Quantity, n, top)
	}
	if after := r.products.Stats(); after.DBReads-before.DBReads != 3 {
		t.Errorf("products read the database %d times after the changes, want 3 (the changed keys only)", after.DBReads-before.DBReads)
	}

	// A key change: the old key is gone, the new one is read afresh.
	e.Exec(t, `UPDATE products SET id = 10 WHERE id = 1`)
	r.applied(t)
	if _, err := r.products.Get(ctx, 1); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("old key after a key change: %v", err)
	}
	if p, err := r.products.Get(ctx, 10); err != nil || p.Name != "renamed" {
		t.Fatalf("new key after a key change: %+v %v", p, err)
	}

	// TRUNCATE: the table's generation.
	if _, err := r.stock.Get(ctx, sk); err != nil {
		t.Fatal(err)
	}
	e.Exec(t, `TRUNCATE stock`)
	r.applied(t)
	if _, err := r.stock.Get(ctx, sk); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("after TRUNCATE: %v", err)
	}
	st := r.wal.Stats()
	if st.Ignored == 0 || st.Truncates != 1 || st.Changes < 7 {
		t.Fatalf("stats %+v: want ignored changes, one truncate, at least 7 changes", st)
	}
	testenv.Summaryf("wal-faults: behind-back changes=%d ignored=%d truncates=%d lag_p50_ms=%.1f lag_p99_ms=%.1f\n",
		st.Changes, st.Ignored, st.Truncates, ms(st.LagP50), ms(st.LagP99))
}

// load is plain-SQL writers and store readers on the products 1..keys.
type load struct {
	r    *walRig
	keys int
	mu   sync.Mutex
	want []string // every committed change, by key and row version
}

// newLoad inserts the products 1..keys.
func (r *walRig) newLoad(t *testing.T, keys int) *load {
	t.Helper()
	l := &load{r: r, keys: keys}
	for i := 1; i <= keys; i++ {
		var v int64
		if err := r.e.Pool.QueryRow(context.Background(), `INSERT INTO products (id, article_number, name, category_id, price_cents)
			VALUES ($1, $2, 'p', 1, 0) RETURNING version`, i, fmt.Sprint("A", i)).Scan(&v); err != nil {
			t.Fatal(err)
		}
		l.committed(i, v)
	}
	return l
}

func (l *load) committed(id int, version int64) {
	l.mu.Lock()
	l.want = append(l.want, changeID("products", []string{fmt.Sprint(id)}, version))
	l.mu.Unlock()
}

// run runs 4 writers (UPDATEs in plain SQL, behind the store's back) and 4
// readers (Store.Get, filling the cache) until ctx ends. A write that
// fails (the server restarting, say) is not counted and is tried again.
func (l *load) run(ctx context.Context) {
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				id := 1 + (w*7+n)%l.keys
				var v int64
				if err := l.r.e.Pool.QueryRow(ctx, `UPDATE products SET price_cents = price_cents + 1 WHERE id = $1 RETURNING version`, id).Scan(&v); err == nil {
					l.committed(id, v)
				} else {
					time.Sleep(5 * time.Millisecond)
				}
			}
		}()
	}
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ctx.Err() == nil; n++ {
				_, _ = l.r.products.Get(ctx, int64(1+n%l.keys))
			}
		}()
	}
	wg.Wait()
}

// check waits until the invalidator has caught up and returns the keys whose
// cached row differs from the database, and how many committed changes were
// never applied, each under its own key and version (a write whose
// statement failed in transit may still have committed: applied changes may
// exceed want, and do not make up for missing ones). The markers of applied
// count too.
func (l *load) check(t *testing.T) (stale []int, lost int) {
	t.Helper()
	l.r.applied(t)
	for i := 1; i <= l.keys; i++ {
		var want int64
		if err := l.r.e.Pool.QueryRow(context.Background(), `SELECT price_cents FROM products WHERE id = $1`, i).Scan(&want); err != nil {
			t.Fatal(err)
		}
		p, err := l.r.products.Get(context.Background(), int64(i))
		if err != nil {
			t.Fatal(err)
		}
		if p.PriceCents != want {
			stale = append(stale, i)
		}
	}
	l.mu.Lock()
	want := slices.Clone(l.want)
	l.mu.Unlock()
	for _, v := range l.r.markerAt {
		want = append(want, changeID("counters", []string{"wal-marker"}, v))
	}
	return stale, l.r.log.missing(want)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// The store's write-through values survive the invalidator: a write's own
// WAL change is not newer than what the write put in the cache.
func TestWALKeepsWriteThrough(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	r.e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (1, 'A1', 'one', 1, 100)`)
	// The insert's own change must have been applied before the read: it
	// deletes a fill's lease that it finds, as it must (the filler may have
	// read before the insert), and then nothing would be cached to survive.
	r.applied(t)
	if _, err := r.products.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := r.products.Update(ctx, 1, func(p *product) error { p.PriceCents = int64(i); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	r.applied(t)
	before := r.products.Stats()
	if p, err := r.products.Get(ctx, 1); err != nil || p.PriceCents != 4 {
		t.Fatalf("after the updates: %+v %v", p, err)
	}
	if st := r.products.Stats(); st.Hits-before.Hits != 1 || st.DBReads != before.DBReads {
		t.Fatalf("stats %+v then %+v: the write-through value did not survive the invalidator", before, st)
	}
}

// Nothing is lost while the cache is unreachable, nor across a restart of
// the invalidator: a change is confirmed only after its cache step, and the
// slot replays what was not confirmed.
func TestWALConfirmsAfterTheCacheStep(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	e := r.e
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (1, 'A1', 'one', 1, 100)`)
	if _, err := r.products.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	r.applied(t)
	r.stop()

	// A second invalidator over a dead cache takes the slot: it cannot
	// apply the change, so it must not confirm it.
	dead, err := testenv.CacheClient(2, 50*time.Millisecond, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	o := e.Opts(nil)
	deadStore, err := repo.New(e.Pool, dead, repo.Table[product, int64]{Name: "products", Key: []string{"id"},
		Columns: []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at", "version"}, Version: "version"}, o)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: e.URL, Slot: slotName(e), Targets: []invalidation.Target{deadStore},
		StatusInterval: 50 * time.Millisecond, RetryInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop2 := r.run(t, w2)
	waitFor(t, "the second invalidator to hold the slot", func() bool { return w2.Stats().Holding })
	e.Exec(t, `UPDATE products SET name = 'while down' WHERE id = 1`)
	time.Sleep(500 * time.Millisecond)
	if st := w2.Stats(); st.Transactions != 0 || st.Changes != 0 {
		t.Fatalf("an invalidator over a dead cache applied %+v", st)
	}
	stop2()

	// A third, over the real cache, replays the unconfirmed change.
	w3, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: e.URL, Slot: slotName(e), Targets: []invalidation.Target{r.products},
		StatusInterval: 50 * time.Millisecond, RetryInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop3 := r.run(t, w3)
	defer stop3()
	r.wal = w3
	r.applied(t)
	if p, err := r.products.Get(ctx, 1); err != nil || p.Name != "while down" {
		t.Fatalf("after the replay: %+v %v", p, err)
	}
}

// Several invalidators may run: one holds the slot, the others take over
// when it stops.
func TestWALStandbyTakesOver(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	e := r.e
	standby, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: e.URL, Slot: slotName(e),
		Targets:        []invalidation.Target{r.products},
		StatusInterval: 50 * time.Millisecond, RetryInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stopStandby := r.run(t, standby)
	defer stopStandby()
	time.Sleep(300 * time.Millisecond)
	if standby.Stats().Holding {
		t.Fatal("the standby holds the slot while the first invalidator runs")
	}
	r.stop()
	waitFor(t, "the standby to take the slot", func() bool { return standby.Stats().Holding })
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (1, 'A1', 'one', 1, 100)`)
	if _, err := r.products.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	e.Exec(t, `UPDATE products SET name = 'by the standby' WHERE id = 1`)
	r.wal = standby
	r.applied(t)
	if p, err := r.products.Get(ctx, 1); err != nil || p.Name != "by the standby" {
		t.Fatalf("after the standby's step: %+v %v", p, err)
	}
	if st, err := standby.SlotStatus(ctx); err != nil || !st.Exists || !st.Active {
		t.Fatalf("slot status %+v %v", st, err)
	}
}

// The invalidator under load: many plain-SQL writers on a few hot keys while
// readers fill the cache; once the invalidator has caught up, every cached
// key equals the database.
func TestWALUnderLoad(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	const keys = 20
	l := r.newLoad(t, keys)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	l.run(ctx)
	lagged, lost := l.check(t)
	stale := len(lagged)
	st := r.wal.Stats()
	testenv.Summaryf("wal: changes=%d tables=%d stale_after_lag=%d lag_p50_ms=%.1f lag_p99_ms=%.1f lost=%d\n",
		st.Changes, st.Tables, stale, ms(st.LagP50), ms(st.LagP99), lost)
	if stale != 0 || lost != 0 || st.Tables != 2 { // products, and counters for the markers
		t.Fatalf("%d keys stale after the invalidator caught up (%v), %d changes lost, %d tables", stale, lagged, lost, st.Tables)
	}
}

// WAL of activity outside the publication is released: with no change to a
// target table, the invalidator confirms the position the server's
// keepalives report, so the slot's confirmed position passes unrelated
// writes (and the WAL they wrote is not retained). Changes to targets are
// still applied afterwards, and a change held by a dead cache is never
// confirmed past (TestWALConfirmsAfterTheCacheStep).
func TestWALReleasesUnrelatedWAL(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{StatusInterval: 100 * time.Millisecond})
	e := r.e
	e.Exec(t, `CREATE TABLE unrelated (id bigint PRIMARY KEY, payload text)`)
	e.Exec(t, `INSERT INTO unrelated SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g`)
	var lsn string
	if err := e.Pool.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text`).Scan(&lsn); err != nil {
		t.Fatal(err)
	}
	before := r.wal.Stats()
	waitFor(t, "the confirmed position to pass the unrelated writes at "+lsn, func() bool {
		var done bool
		err := e.Pool.QueryRow(ctx, `SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2`, lsn, slotName(e)).Scan(&done)
		return err == nil && done
	})
	if st := r.wal.Stats(); st.Transactions != before.Transactions {
		t.Fatalf("unrelated writes counted as applied transactions: %d -> %d", before.Transactions, st.Transactions)
	}
	st, err := r.wal.SlotStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.RetainedWAL > 1<<20 {
		t.Fatalf("the slot retains %d bytes after 4 MB of unrelated writes", st.RetainedWAL)
	}
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES (7, 'A7', 'seven', 1, 100)`)
	if _, err := r.products.Get(ctx, 7); err != nil {
		t.Fatal(err)
	}
	e.Exec(t, `UPDATE products SET name = 'by sql' WHERE id = 7`)
	r.applied(t)
	if p, err := r.products.Get(ctx, 7); err != nil || p.Name != "by sql" {
		t.Fatalf("a change after the unrelated writes: %+v %v", p, err)
	}
}

// The aggregates' WAL steps use the current key generation: after another
// Counter or Leaderboard instance's InvalidateAll (a new generation, which
// the invalidator's own instances would otherwise see up to a second
// later), a counter and a score changed by SQL still drop the live entries
// that the other instances filled under the new generation.
func TestWALAggregatesReadTheGeneration(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	e := r.e
	cache := aggregate.CacheConfig{Namespace: e.NS}
	counter2, err := aggregate.NewCounter(e.Pool, e.MC, aggregate.CounterConfig{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	board2, err := aggregate.NewLeaderboard(e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.counter.Add(ctx, "visitors", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.board.Submit(ctx, "b", "p1", 10); err != nil {
		t.Fatal(err)
	}
	r.applied(t)
	// The invalidator's instances read the generation now; the other
	// instances bump it and fill their entries under the new one.
	if _, err := r.counter.Get(ctx, "visitors"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.board.Top(ctx, "b", 3); err != nil {
		t.Fatal(err)
	}
	oldCounterKey, oldBoardKey := r.counter.Key("visitors"), r.board.Key("b")
	if err := counter2.InvalidateAll(ctx); err != nil {
		t.Fatal(err)
	}
	if err := board2.InvalidateAll(ctx); err != nil {
		t.Fatal(err)
	}
	if counter2.Key("visitors") == oldCounterKey || board2.Key("b") == oldBoardKey {
		t.Fatal("InvalidateAll did not change the keys")
	}
	if n, err := counter2.Get(ctx, "visitors"); err != nil || n != 1 {
		t.Fatalf("counter before the SQL change: %d %v", n, err)
	}
	if top, err := board2.Top(ctx, "b", 3); err != nil || len(top) != 1 || top[0].Score != 10 {
		t.Fatalf("board before the SQL change: %+v %v", top, err)
	}
	e.Exec(t, `UPDATE counters SET value = 100 WHERE name = 'visitors'`)
	e.Exec(t, `UPDATE scores SET score = 99 WHERE board = 'b'`)
	r.applied(t)
	if n, err := counter2.Get(ctx, "visitors"); err != nil || n != 100 {
		t.Fatalf("counter after the invalidator: %d %v, want 100 (the entry of the new generation stayed)", n, err)
	}
	if top, err := board2.Top(ctx, "b", 3); err != nil || len(top) != 1 || top[0].Score != 99 {
		t.Fatalf("board after the invalidator: %+v %v, want p1 at 99 (the entry of the new generation stayed)", top, err)
	}
}

// switchTo stops the rig's invalidator and runs one over targets on the same
// slot instead (it replays what the first did not confirm).
func (r *walRig) switchTo(t *testing.T, targets ...invalidation.Target) {
	t.Helper()
	r.stop()
	w, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: r.e.URL, Slot: slotName(r.e), Targets: targets,
		StatusInterval: 50 * time.Millisecond, RetryInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	r.wal, r.stop = w, r.run(t, w)
	waitFor(t, "the new invalidator to hold the slot", func() bool { return w.Stats().Holding })
}

type coded struct {
	ID   int64  `db:"id"`
	Code string `db:"code"`
	Name string `db:"name"`
}

// A store keyed on a column outside the table's REPLICA IDENTITY (the
// primary key by default): a DELETE's old row carries only the primary
// key, and an UPDATE may change the store's key without sending the old
// one. Those changes invalidate the whole table (counted as Unkeyed)
// instead of deleting a wrong key, so no deleted or re-keyed row stays
// readable; once the key is the replica identity, changes are keyed again.
func TestWALKeyOutsideReplicaIdentity(t *testing.T) {
	r := newWALRig(t, invalidation.WALConfig{})
	e := r.e
	e.Exec(t, `CREATE TABLE codes (id bigint PRIMARY KEY, code text NOT NULL UNIQUE, name text NOT NULL)`)
	codes, err := repo.New(e.Pool, e.MC, repo.Table[coded, string]{Name: "codes", Key: []string{"code"},
		Columns: []string{"id", "code", "name"}}, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	r.switchTo(t, codes, r.counter)
	e.Exec(t, `INSERT INTO codes VALUES (1, 'c1', 'one'), (2, 'c2', 'two'), (3, 'c3', 'three'), (4, 'c4', 'four')`)
	r.applied(t)
	get := func(code string) (coded, error) {
		t.Helper()
		return codes.Get(ctx, code)
	}
	for _, c := range []string{"c1", "c2", "c3", "c4"} {
		if _, err := get(c); err != nil {
			t.Fatal(err)
		}
	}
	if st := r.wal.Stats(); st.Unkeyed != 0 {
		t.Fatalf("inserts carry every column, yet %d changes were unkeyed", st.Unkeyed)
	}
	inv := r.wal.Stats().Invalidations

	e.Exec(t, `DELETE FROM codes WHERE code = 'c1'`)
	r.applied(t)
	if c, err := get("c1"); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("a deleted row keyed outside the replica identity is still served: %+v %v", c, err)
	}
	e.Exec(t, `UPDATE codes SET code = 'c2x' WHERE code = 'c2'`)
	r.applied(t)
	if c, err := get("c2"); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("the old key of a row re-keyed outside the replica identity is still served: %+v %v", c, err)
	}
	e.Exec(t, `UPDATE codes SET name = 'THREE' WHERE code = 'c3'`)
	r.applied(t)
	if c, err := get("c3"); err != nil || c.Name != "THREE" {
		t.Fatalf("after an update: %+v %v", c, err)
	}
	st := r.wal.Stats()
	if st.Unkeyed != 3 || st.Invalidations != inv+3 {
		t.Fatalf("stats %+v: want 3 unkeyed changes, each batch one InvalidateAll (%d before)", st, inv)
	}

	// The store's key as the replica identity: changes are keyed again.
	e.Exec(t, `ALTER TABLE codes REPLICA IDENTITY USING INDEX codes_code_key`)
	for _, c := range []string{"c3", "c4"} {
		if _, err := get(c); err != nil {
			t.Fatal(err)
		}
	}
	e.Exec(t, `DELETE FROM codes WHERE code = 'c4'`)
	e.Exec(t, `UPDATE codes SET code = 'c3x' WHERE code = 'c3'`)
	r.applied(t)
	for _, c := range []string{"c3", "c4"} {
		if got, err := get(c); !errors.Is(err, repo.ErrNotFound) {
			t.Fatalf("%s under REPLICA IDENTITY USING INDEX: %+v %v", c, got, err)
		}
	}
	if c, err := get("c3x"); err != nil || c.Name != "THREE" {
		t.Fatalf("the new key: %+v %v", c, err)
	}
	if st2 := r.wal.Stats(); st2.Unkeyed != st.Unkeyed || st2.Invalidations != st.Invalidations {
		t.Fatalf("keyed changes invalidated the table: %+v, was %+v", st2, st)
	}
}
