package repo_test

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
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// hookCache wraps a Cache and counts Adds; afterAdd (if set) runs once each
// Add has returned, before the caller sees its result. Tests reset the
// counts after e.store, whose first Key may Add the key generation.
type hookCache struct {
	repo.Cache
	adds, stored atomic.Int64
	afterAdd     func(key string, err error)
	// lostReply (if set) names a key whose Add is applied but reported as
	// a timeout, as when the server's reply is lost.
	lostReply string
}

var errTimeout = errors.New("memcache: fake i/o timeout")

func (h *hookCache) Add(it *memcache.Item) error {
	err := h.Cache.Add(it)
	h.adds.Add(1)
	if err == nil {
		h.stored.Add(1)
	}
	if h.afterAdd != nil {
		h.afterAdd(it.Key, err)
	}
	if it.Key == h.lostReply {
		return errTimeout
	}
	return err
}

func (h *hookCache) reset() { h.adds.Store(0); h.stored.Store(0) }

// countingDB wraps a DB and counts statements sent by Query and QueryRow.
type countingDB struct {
	repo.Beginner
	n atomic.Int64
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n.Add(1)
	return c.Beginner.Query(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n.Add(1)
	return c.Beginner.QueryRow(ctx, sql, args...)
}

func countDB(db repo.Beginner) (*countingDB, *atomic.Int64) {
	c := &countingDB{Beginner: db}
	return c, &c.n
}

const productCols = `id, article_number, name, category_id, price_cents, updated_at, version`

// readProducts reads products the way a warm-up would, in id order.
func (e *env) readProducts(where string, args ...any) ([]Product, error) {
	rows, _ := e.Pool.Query(ctx, `SELECT `+productCols+` FROM products `+where+` ORDER BY id`, args...)
	return pgx.CollectRows(rows, pgx.RowToStructByName[Product])
}

func (e *env) productRows(t testing.TB, where string, args ...any) []Product {
	t.Helper()
	ps, err := e.readProducts(where, args...)
	if err != nil {
		t.Fatal(err)
	}
	return ps
}

func (e *env) store(t testing.TB, db repo.DB, cache repo.Cache, table repo.Table[Product, int64], o *repo.Options) *repo.Store[Product, int64] {
	t.Helper()
	if o == nil {
		o = e.Opts(nil)
	}
	s, err := repo.New(db, cache, table, o)
	if err != nil {
		t.Fatal(err)
	}
	s.Key(0) // reads (or creates) the key generation now, not during a test's hooks
	return s
}

// warmThenHits warms every row of a table, checks that the cache then holds
// exactly the bytes a fill stores, and that Gets are hits with no query.
// Warm must make chunks verifying queries and lookups catalog queries.
func warmThenHits[T any, K comparable](t *testing.T, e *env, table repo.Table[T, K], sel string, keyOf func(T) K, chunks, lookups int64) {
	wantQueries := chunks + lookups
	db, queries := countDB(e.Pool)
	s, err := repo.New(db, e.MC, table, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	r, _ := e.Pool.Query(ctx, sel)
	rows, err := pgx.CollectRows(r, pgx.RowToStructByName[T])
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Warm(ctx, rows)
	if err != nil || n != len(rows) {
		t.Fatalf("Warm: stored %d of %d, %v", n, len(rows), err)
	}
	if q := queries.Load(); q != wantQueries {
		t.Fatalf("Warm made %d queries, want %d", q, wantQueries)
	}
	if got, want := s.Stats(), (observe.Stats{Fills: uint64(len(rows)), DBReads: uint64(chunks)}); got != want {
		t.Fatalf("stats after Warm: %+v, want %+v", got, want)
	}

	// A fill in another namespace stores the same bytes and flags.
	o := e.Opts(nil)
	o.Namespace = e.NS + "-ref"
	ref, err := repo.New(e.Pool, e.MC, table, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, row := range rows {
		k := keyOf(row)
		if _, err := ref.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
		warm, err := e.MC.Get(s.Key(k))
		if err != nil {
			t.Fatalf("warmed key %v: %v", k, err)
		}
		fill, err := e.MC.Get(ref.Key(k))
		if err != nil {
			t.Fatal(err)
		}
		if string(warm.Value) != string(fill.Value) || warm.Flags != fill.Flags {
			t.Fatalf("key %v: warmed item %x/%d, a fill stores %x/%d", k, warm.Value, warm.Flags, fill.Value, fill.Flags)
		}
		if _, err := s.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if q := queries.Load(); q != wantQueries {
		t.Fatalf("%d queries after the Gets, want still %d", q, wantQueries)
	}
	if st := s.Stats(); st.Hits != uint64(len(rows)) || st.Misses != 0 {
		t.Fatalf("stats after Gets: %+v, want %d hits and no misses", st, len(rows))
	}

	// Warming again adds nothing and so verifies nothing.
	if n, err := s.Warm(ctx, rows); err != nil || n != 0 {
		t.Fatalf("second Warm: stored %d, %v; want 0", n, err)
	}
	if q := queries.Load(); q != wantQueries {
		t.Fatalf("second Warm queried the database (%d queries in all)", q)
	}
}

func TestWarmFillsRowsThatGetServesAsHits(t *testing.T) {
	t.Run("products", func(t *testing.T) {
		e := newEnv(t)
		e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents)
			SELECT i, 'A' || i, 'product ' || i, 1 + i % 2, i FROM generate_series(1, 2500) i`)
		warmThenHits(t, e, productTable, `SELECT `+productCols+` FROM products ORDER BY id`,
			func(p Product) int64 { return p.ID }, 3, 0)
	})
	t.Run("stock", func(t *testing.T) {
		// Rows in key order: one range query, needing no key types.
		e := newEnv(t)
		e.Exec(t, `INSERT INTO stock (article_number, uom, store_code, quantity)
			SELECT 'A' || i, u, s, i FROM generate_series(1, 20) i, unnest(ARRAY['EA', 'KG']) u, unnest(ARRAY['S001', 'S002']) s`)
		warmThenHits(t, e, stockTable, `SELECT article_number, uom, store_code, quantity, updated_at, version FROM stock ORDER BY 1, 2, 3`,
			func(s Stock) StockKey { return StockKey{s.ArticleNumber, s.UOM, s.StoreCode} }, 1, 0)
	})
}

// Rows the range query cannot vouch for are verified by key, in a second
// query: rows out of key order, and rows spread over a range holding more
// rows than the range query reads.
func TestWarmRowsOutOfKeyOrder(t *testing.T) {
	cases := []struct {
		name        string
		ids         []int64
		wantQueries int64
	}{
		{"in key order", []int64{1, 2, 3, 4, 5}, 1},
		{"reversed", []int64{5, 4, 3, 2, 1}, 2},
		{"shuffled", []int64{2, 5, 1, 4, 3}, 2},                // the range 2..3 vouches for 2 and 3 only
		{"sparse over a dense range", []int64{1, 100, 299}, 2}, // the range query reads 22 rows
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents)
				SELECT i, 'A' || i, 'p' || i, 1, i FROM generate_series(1, 300) i`)
			all := e.productRows(t, "")
			rows := make([]Product, len(tc.ids))
			for i, id := range tc.ids {
				rows[i] = all[id-1]
			}
			db, queries := countDB(e.Pool)
			s := e.store(t, db, e.MC, productTable, nil)
			if n, err := s.Warm(ctx, rows); err != nil || n != len(rows) {
				t.Fatalf("Warm: stored %d, %v; want %d", n, err, len(rows))
			}
			if q := queries.Load(); q != tc.wantQueries {
				t.Fatalf("%d queries, want %d", q, tc.wantQueries)
			}
			for _, r := range rows {
				if p, err := s.Get(ctx, r.ID); err != nil || !sameProduct(p, r) {
					t.Fatalf("Get %d: %+v %v", r.ID, p, err)
				}
			}
			if q := queries.Load(); q != tc.wantQueries {
				t.Fatalf("Gets went to the database: %d queries in all", q)
			}
		})
	}
}

// Warm skips keys that hold anything: a newer value written through by an
// Update, a tombstone, another reader's lease.
func TestWarmNeverReplacesWhatIsCached(t *testing.T) {
	t.Run("newer value", func(t *testing.T) {
		e := newEnv(t)
		e.insertProduct(t, 1, "old", 100)
		old := e.productRows(t, "")
		db, queries := countDB(e.Pool)
		s := e.store(t, db, e.MC, productTable, nil)
		if _, err := s.Get(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Update(ctx, 1, func(p *Product) error { p.Name = "new"; return nil }); err != nil {
			t.Fatal(err)
		}
		before, err := e.MC.Get(s.Key(1))
		if err != nil {
			t.Fatal(err)
		}
		q := queries.Load()
		if n, err := s.Warm(ctx, old); err != nil || n != 0 {
			t.Fatalf("Warm over a newer value: stored %d, %v", n, err)
		}
		after, err := e.MC.Get(s.Key(1))
		if err != nil || after.CasID != before.CasID || string(after.Value) != string(before.Value) {
			t.Fatalf("Warm changed the cached item: cas %d -> %d, %v", before.CasID, after.CasID, err)
		}
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "new" {
			t.Fatalf("Get: %+v %v, want the updated row", p, err)
		}
		if d := queries.Load() - q; d != 0 {
			t.Fatalf("%d queries during Warm and Get, want 0", d)
		}
	})
	t.Run("tombstone", func(t *testing.T) {
		e := newEnv(t)
		e.insertProduct(t, 1, "old", 100)
		old := e.productRows(t, "")
		db, queries := countDB(e.Pool)
		s := e.store(t, db, e.MC, productTable, nil)
		if _, err := s.Get(ctx, 1); err != nil {
			t.Fatal(err)
		}
		if err := s.Delete(ctx, 1); err != nil {
			t.Fatal(err)
		}
		q := queries.Load()
		if n, err := s.Warm(ctx, old); err != nil || n != 0 {
			t.Fatalf("Warm over a tombstone: stored %d, %v", n, err)
		}
		if p, err := s.Get(ctx, 1); !errors.Is(err, repo.ErrNotFound) {
			t.Fatalf("Get after Warm of a deleted row: %+v %v", p, err)
		}
		if d := queries.Load() - q; d != 0 {
			t.Fatalf("%d queries during Warm and Get, want 0 (the tombstone answers)", d)
		}
	})
	t.Run("lease", func(t *testing.T) {
		e := newEnv(t)
		e.insertProduct(t, 1, "row", 100)
		rows := e.productRows(t, "")
		var (
			once      sync.Once
			warmed    int
			warmErr   error
			heldFlags uint32
			heldLen   = -1
		)
		db := &hookDB{Beginner: e.Pool}
		s := e.store(t, db, e.MC, productTable, nil)
		// While Get holds the lease (its SELECT has run), Warm the key.
		db.after = func(string) {
			once.Do(func() {
				warmed, warmErr = s.Warm(ctx, rows)
				if it, err := e.MC.Get(s.Key(1)); err == nil {
					heldFlags, heldLen = it.Flags, len(it.Value)
				}
			})
		}
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "row" {
			t.Fatalf("Get: %+v %v", p, err)
		}
		if warmErr != nil || warmed != 0 {
			t.Fatalf("Warm over a lease: stored %d, %v", warmed, warmErr)
		}
		// The store reads over a memclient.Client: its lease is mg's empty
		// placeholder with flags 0.
		if heldFlags != 0 || heldLen != 0 {
			t.Fatalf("after Warm the key held flags %#x and %d bytes, want the lease (an empty placeholder)", heldFlags, heldLen)
		}
		if st := s.Stats(); st.Fills != 1 {
			t.Fatalf("the lease holder's fill did not land: %+v", st)
		}
	})
}

// The race Warm's verifying read closes: a write commits after the caller
// read the rows Warm gets, at each point relative to Warm's Add and its
// verifying read. Afterwards Get must return the database's row.
func TestWarmLeavesNoStaleRow(t *testing.T) {
	unversioned := productTable
	unversioned.Version = ""
	cases := []struct {
		name       string
		table      repo.Table[Product, int64]
		write      string // "update" or "delete"
		when       string // "before add", "after add", "after verify"
		wantStored int    // what Warm reports
		wantAdded  int64  // Adds that stored the old row
	}{
		// The write's cache step found a miss and left it; Warm's Add then
		// stores the old row, and the verifying read deletes it.
		{"update before the add", productTable, "update", "before add", 0, 1},
		{"delete before the add", productTable, "delete", "before add", 0, 1},
		{"unversioned update before the add", unversioned, "update", "before add", 0, 1},
		{"unversioned delete before the add", unversioned, "delete", "before add", 0, 1},
		// The write's cache step replaces Warm's item; the verifying read
		// sees the write and deletes the key (a lost entry, not a stale one).
		{"update between add and verify", productTable, "update", "after add", 0, 1},
		{"unversioned update between add and verify", unversioned, "update", "after add", 0, 1},
		// The verifying read did not see the write, whose cache step then
		// finds Warm's item and replaces or deletes it.
		{"update after the verifying read", productTable, "update", "after verify", 1, 1},
		{"delete after the verifying read", productTable, "delete", "after verify", 1, 1},
		{"unversioned update after the verifying read", unversioned, "update", "after verify", 1, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.insertProduct(t, 1, "old", 100)
			e.insertProduct(t, 2, "other", 200)
			old := e.productRows(t, "")
			writer := e.store(t, e.Pool, e.MC, tc.table, nil)
			var once sync.Once
			write := func() {
				once.Do(func() {
					var err error
					if tc.write == "update" {
						_, err = writer.Update(ctx, 1, func(p *Product) error { p.Name = "new"; return nil })
					} else {
						err = writer.Delete(ctx, 1)
					}
					if err != nil {
						t.Error(err)
					}
				})
			}
			db := &hookDB{Beginner: e.Pool}
			mc := &hookCache{Cache: e.MC}
			s := e.store(t, db, mc, tc.table, nil)
			key1 := s.Key(1)
			mc.reset()
			switch tc.when {
			case "before add":
				write()
			case "after add":
				mc.afterAdd = func(key string, err error) {
					if key == key1 && err == nil {
						write()
					}
				}
			case "after verify":
				db.after = func(string) { write() }
			}
			n, err := s.Warm(ctx, old[:1])
			if err != nil || n != tc.wantStored {
				t.Fatalf("Warm: stored %d, %v; want %d", n, err, tc.wantStored)
			}
			if got := mc.stored.Load(); got != tc.wantAdded {
				t.Fatalf("%d Adds stored the old row, want %d", got, tc.wantAdded)
			}
			db.after = nil
			p, err := s.Get(ctx, 1)
			switch tc.write {
			case "update":
				if err != nil || p.Name != "new" {
					t.Fatalf("Get after the race: %+v %v, want the updated row", p, err)
				}
			case "delete":
				if !errors.Is(err, repo.ErrNotFound) {
					t.Fatalf("Get after the race: %+v %v, want ErrNotFound", p, err)
				}
			}
			if p, err := s.Get(ctx, 2); err != nil || p.Name != "other" {
				t.Fatalf("untouched row: %+v %v", p, err)
			}
		})
	}
}

// The race with a composite key, over both verifying queries.
func TestWarmLeavesNoStaleRowCompositeKey(t *testing.T) {
	for _, keyTypes := range [][]string{nil, {"text", "text", "text"}} {
		t.Run(fmt.Sprint("key types ", keyTypes), func(t *testing.T) {
			e := newEnv(t)
			e.Exec(t, `INSERT INTO stock (article_number, uom, store_code, quantity)
				SELECT 'A' || i, 'EA', s, i FROM generate_series(1, 3) i, unnest(ARRAY['S001', 'S002']) s`)
			r, _ := e.Pool.Query(ctx, `SELECT article_number, uom, store_code, quantity, updated_at, version FROM stock ORDER BY 1, 2, 3`)
			old, err := pgx.CollectRows(r, pgx.RowToStructByName[Stock])
			if err != nil {
				t.Fatal(err)
			}
			table := stockTable
			table.KeyTypes = keyTypes
			db, queries := countDB(e.Pool)
			s, err := repo.New(db, e.MC, table, e.Opts(nil))
			if err != nil {
				t.Fatal(err)
			}
			changed, gone := StockKey{"A2", "EA", "S001"}, StockKey{"A3", "EA", "S002"}
			if _, err := s.Update(ctx, changed, func(r *Stock) error { r.Quantity = 99; return nil }); err != nil {
				t.Fatal(err)
			}
			if err := s.Delete(ctx, gone); err != nil {
				t.Fatal(err)
			}
			q := queries.Load()
			n, err := s.Warm(ctx, old)
			if err != nil || n != len(old)-2 {
				t.Fatalf("Warm: stored %d, %v; want %d", n, err, len(old)-2)
			}
			// The range query, then the two changed rows by key: versions
			// alone with KeyTypes; else whole rows, after looking up the
			// three key columns' types.
			wantQueries := int64(2)
			if keyTypes == nil {
				wantQueries = 5
			}
			if d := queries.Load() - q; d != wantQueries {
				t.Fatalf("Warm made %d queries, want %d", d, wantQueries)
			}
			for _, o := range old {
				k := StockKey{o.ArticleNumber, o.UOM, o.StoreCode}
				got, err := s.Get(ctx, k)
				switch k {
				case changed:
					if err != nil || got.Quantity != 99 {
						t.Fatalf("updated row %v: %+v %v", k, got, err)
					}
				case gone:
					if !errors.Is(err, repo.ErrNotFound) {
						t.Fatalf("deleted row %v: %+v %v", k, got, err)
					}
				default:
					if err != nil || got.Quantity != o.Quantity || got.Version != o.Version {
						t.Fatalf("row %v: %+v %v, want %+v", k, got, err, o)
					}
				}
			}
			if st := s.Stats(); st.Hits != uint64(len(old)-2) {
				t.Fatalf("stats %+v: want %d hits (the warmed rows)", st, len(old)-2)
			}
		})
	}
}

func TestWarmSkipsAndReportsTooLargeRows(t *testing.T) {
	e := newEnv(t)
	var h hookLog
	o := e.Opts(&h)
	o.MaxItemSize = 100
	s := e.store(t, e.Pool, e.MC, productTable, o)
	e.insertProduct(t, 1, "small", 100)
	e.insertProduct(t, 2, strings.Repeat("x", 200), 200)
	e.insertProduct(t, 3, "small too", 300)
	n, err := s.Warm(ctx, e.productRows(t, ""))
	if err != nil || n != 2 {
		t.Fatalf("Warm: stored %d, %v; want 2 and no error", n, err)
	}
	ev := h.All()
	if len(ev) != 1 || ev[0].Op != "encode" || ev[0].Key != s.Key(2) || !errors.Is(ev[0].Err, repo.ErrTooLarge) {
		t.Fatalf("hook events %+v, want one ErrTooLarge for %s", ev, s.Key(2))
	}
	for id, want := range map[int64]bool{1: true, 2: false, 3: true} {
		_, err := e.MC.Get(s.Key(id))
		if got := err == nil; got != want {
			t.Errorf("key of row %d cached: %v (%v), want %v", id, got, err, want)
		}
	}
	if p, err := s.Get(ctx, 2); err != nil || len(p.Name) != 200 {
		t.Fatalf("too-large row is still served: %v", err)
	}
}

func TestWarmCancelledContext(t *testing.T) {
	for _, when := range []string{"before", "during"} {
		t.Run(when, func(t *testing.T) {
			e := newEnv(t)
			for id := int64(1); id <= 5; id++ {
				e.insertProduct(t, id, fmt.Sprint("p", id), id)
			}
			rows := e.productRows(t, "")
			db, queries := countDB(e.Pool)
			mc := &hookCache{Cache: e.MC}
			s := e.store(t, db, mc, productTable, nil)
			mc.reset()
			cctx, cancel := context.WithCancel(ctx)
			wantAdds := int64(0)
			if when == "before" {
				cancel()
			} else {
				wantAdds = 2
				mc.afterAdd = func(string, error) {
					if mc.adds.Load() == 2 {
						cancel()
					}
				}
			}
			defer cancel()
			n, err := s.Warm(cctx, rows)
			var oe *repo.OpError
			if n != 0 || !errors.Is(err, context.Canceled) || !errors.As(err, &oe) || oe.Op != "warm" {
				t.Fatalf("Warm: stored %d, %v; want 0 and a warm error wrapping context.Canceled", n, err)
			}
			if got := mc.adds.Load(); got != wantAdds {
				t.Fatalf("%d Adds, want %d", got, wantAdds)
			}
			if q := queries.Load(); q != 0 {
				t.Fatalf("%d queries, want 0", q)
			}
			for id := int64(1); id <= 5; id++ { // what was added could not be verified: deleted
				if _, err := e.MC.Get(s.Key(id)); !errors.Is(err, memcache.ErrCacheMiss) {
					t.Fatalf("key of row %d after a cancelled Warm: %v, want a miss", id, err)
				}
			}
		})
	}
}

func TestWarmCacheUnreachable(t *testing.T) {
	t.Run("no server", func(t *testing.T) {
		e := newEnv(t)
		for id := int64(1); id <= 5; id++ {
			e.insertProduct(t, id, fmt.Sprint("p", id), id)
		}
		var h hookLog
		dead, err := cacheClient(8, 100*time.Millisecond, "127.0.0.1:1") // nothing listens on port 1
		if err != nil {
			t.Fatal(err)
		}
		db, queries := countDB(e.Pool)
		mc := &hookCache{Cache: dead}
		s := e.store(t, db, mc, productTable, e.Opts(&h))
		for i := 0; i < 3; i++ { // reads fall back to the database and open the breaker
			if p, err := s.Get(ctx, 1); err != nil || p.Name != "p1" {
				t.Fatalf("Get with the cache down: %+v %v", p, err)
			}
		}
		mc.reset()
		q := queries.Load()
		n, err := s.Warm(ctx, e.productRows(t, ""))
		var oe *repo.OpError
		if n != 0 || err == nil || !errors.As(err, &oe) || oe.Op != "warm" || !strings.Contains(err.Error(), "cache unavailable") {
			t.Fatalf("Warm: stored %d, %v; want 0 and a warm error naming the unavailable cache", n, err)
		}
		if got := mc.adds.Load(); got != 0 {
			t.Fatalf("%d Adds, want none: the breaker is open", got)
		}
		if d := queries.Load() - q; d != 0 {
			t.Fatalf("%d queries, want 0", d)
		}
		for _, ev := range h.All() {
			if ev.Op == "fill" {
				t.Fatalf("hook event %+v: Warm tried the cache", ev)
			}
		}
	})
	t.Run("server dies", func(t *testing.T) {
		e := newEnv(t)
		for id := int64(1); id <= 10; id++ {
			e.insertProduct(t, id, fmt.Sprint("p", id), id)
		}
		p := startPrivateMemcached(t)
		client, err := cacheClient(8, 200*time.Millisecond, p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		var h hookLog
		db, queries := countDB(e.Pool)
		mc := &hookCache{Cache: client}
		s := e.store(t, db, mc, productTable, e.Opts(&h))
		mc.reset()
		mc.afterAdd = func(string, error) {
			if mc.adds.Load() == 2 {
				if err := p.Stop(); err != nil {
					t.Error(err)
				}
			}
		}
		n, err := s.Warm(ctx, e.productRows(t, ""))
		if err == nil || !strings.Contains(err.Error(), "cache unavailable") {
			t.Fatalf("Warm: %v, want an error naming the unavailable cache", err)
		}
		if n != 2 {
			t.Fatalf("Warm reported %d rows stored, want the 2 added (and verified) before the server died", n)
		}
		if got := mc.adds.Load(); got != 5 {
			t.Fatalf("%d Adds, want 5: Warm stops at the third consecutive failure (Options.BreakerFailures)", got)
		}
		if q := queries.Load(); q != 1 {
			t.Fatalf("%d queries, want 1: what was added is still verified", q)
		}
		ev := h.All()
		if len(ev) != 3 {
			t.Fatalf("hook events %+v, want fill failures for rows 3, 4 and 5", ev)
		}
		for i, x := range ev {
			if x.Op != "fill" || x.Key != s.Key(int64(3+i)) {
				t.Fatalf("hook event %d: %+v, want a fill failure for row %d", i, x, 3+i)
			}
		}
	})
}

// An Add the server applied but whose reply was lost (a timeout) is
// reported and not counted, but verified like any other.
func TestWarmVerifiesAddsThatFailedInTransit(t *testing.T) {
	for _, write := range []bool{false, true} {
		t.Run(fmt.Sprint("write before the add: ", write), func(t *testing.T) {
			e := newEnv(t)
			for id := int64(1); id <= 3; id++ {
				e.insertProduct(t, id, fmt.Sprint("p", id), id)
			}
			old := e.productRows(t, "")
			var h hookLog
			db, queries := countDB(e.Pool)
			mc := &hookCache{Cache: e.MC}
			s := e.store(t, db, mc, productTable, e.Opts(&h))
			mc.lostReply = s.Key(2)
			if write {
				if _, err := s.Update(ctx, 2, func(p *Product) error { p.Name = "new"; return nil }); err != nil {
					t.Fatal(err)
				}
			}
			q := queries.Load()
			n, err := s.Warm(ctx, old)
			if err != nil || n != 2 {
				t.Fatalf("Warm: stored %d, %v; want 2 and no error (one failure is not an outage)", n, err)
			}
			wantQueries := int64(1) // the range query vouches for all three
			if write {
				wantQueries = 2 // and row 2, changed, is read again by key
			}
			if ev := h.All(); len(ev) != 1 || ev[0].Op != "fill" || ev[0].Key != s.Key(2) || !errors.Is(ev[0].Err, errTimeout) {
				t.Fatalf("hook events %+v, want the one timeout", ev)
			}
			if d := queries.Load() - q; d != wantQueries {
				t.Fatalf("%d queries, want %d", d, wantQueries)
			}
			p, err := s.Get(ctx, 2)
			want := "p2"
			if write {
				want = "new"
			}
			if err != nil || p.Name != want {
				t.Fatalf("Get of the row whose Add timed out: %+v %v, want %q", p, err, want)
			}
		})
	}
}

// Warmers and writers on the same rows: after quiescence every row read
// through the store equals the database's.
func TestWarmWhileWriting(t *testing.T) {
	e := newEnv(t)
	const rows = 40
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents)
		SELECT i, 'A' || i, 'p' || i, 1, 0 FROM generate_series(1, $1) i`, rows)
	s := e.products(t, nil) // one store warms and writes: it shares one key generation
	for round := 0; round < 5; round++ {
		if err := s.InvalidateAll(ctx); err != nil {
			t.Fatal(err)
		}
		stale := e.productRows(t, "") // read before any of this round's writes
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 60; i++ {
					id := rand.Int64N(rows) + 1
					if _, err := s.Update(ctx, id, func(p *Product) error { p.PriceCents++; return nil }); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 6; i++ {
					batch := stale
					if i%2 == 1 {
						var err error
						if batch, err = e.readProducts(""); err != nil {
							t.Error(err)
							return
						}
					}
					if _, err := s.Warm(ctx, batch); err != nil {
						t.Error(err)
						return
					}
					for j := 0; j < rows/4; j++ { // evictions, so later Warms add again
						_ = e.MC.Delete(s.Key(rand.Int64N(rows) + 1))
					}
				}
			}()
		}
		wg.Wait()
		want := e.productRows(t, "")
		for _, w := range want {
			got, err := s.Get(ctx, w.ID)
			if err != nil || !sameProduct(got, w) {
				t.Fatalf("round %d: row %d through the store %+v (%v), database %+v", round, w.ID, got, err, w)
			}
		}
	}
}

// BenchmarkWarm compares warming pages of 500 rows in key order three ways:
// raw, plain parallel Sets of the same envelopes (no protocol at all); warm,
// Store.Warm (an Add per row, one verifying range query per page); getmany,
// a cold Store.GetMany (a lease Add per row, one query, a GetMulti and a CAS
// per row). rows/s is the figure to compare, within one run.
func BenchmarkWarm(b *testing.B) {
	const rows, batch = 20000, 500
	e, _ := benchEnv(b, rows)
	all := e.productRows(b, "")
	ids := make([]int64, rows)
	for i := range ids {
		ids[i] = int64(i + 1)
	}
	round := 0
	// fresh returns enough stores in fresh namespaces for n batches, so that
	// every batch goes to empty keys.
	fresh := func(b *testing.B, n int) []*repo.Store[Product, int64] {
		round++
		stores := make([]*repo.Store[Product, int64], n*batch/rows+1)
		for i := range stores {
			o := e.Opts(nil)
			o.Namespace = fmt.Sprintf("%s-w%d-%d", e.NS, round, i)
			stores[i] = e.products(b, o)
		}
		return stores
	}
	run := func(b *testing.B, op func(s *repo.Store[Product, int64], off int) error) {
		b.ReportAllocs()
		stores := fresh(b, b.N)
		var n atomic.Int64
		start := time.Now()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c := int(n.Add(1) - 1)
				if err := op(stores[c*batch/rows], c*batch%rows); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.ReportMetric(float64(b.N*batch)/time.Since(start).Seconds(), "rows/s")
	}
	b.Run("raw", func(b *testing.B) {
		// The very bytes Warm stores: warm once, read the items back.
		s := fresh(b, 1)[0]
		if _, err := s.Warm(ctx, all); err != nil {
			b.Fatal(err)
		}
		values := make([][]byte, rows+1)
		for _, id := range ids {
			it, err := e.MC.Get(s.Key(id))
			if err != nil {
				b.Fatal(err)
			}
			values[id] = it.Value
		}
		b.ResetTimer()
		run(b, func(s *repo.Store[Product, int64], off int) error {
			for _, id := range ids[off : off+batch] {
				if err := e.MC.Set(&memcache.Item{Key: s.Key(id), Value: values[id], Expiration: 60}); err != nil {
					return err
				}
			}
			return nil
		})
	})
	b.Run("warm", func(b *testing.B) {
		run(b, func(s *repo.Store[Product, int64], off int) error {
			n, err := s.Warm(ctx, all[off:off+batch])
			if err == nil && n != batch {
				err = fmt.Errorf("warmed %d of %d", n, batch)
			}
			return err
		})
	})
	b.Run("getmany", func(b *testing.B) {
		run(b, func(s *repo.Store[Product, int64], off int) error {
			m, err := s.GetMany(ctx, ids[off:off+batch])
			if err == nil && len(m) != batch {
				err = fmt.Errorf("got %d of %d", len(m), batch)
			}
			return err
		})
	})
}
