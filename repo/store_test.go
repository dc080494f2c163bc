package repo_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

var ctx = context.Background()

func TestGetMissFillsThenHits(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	e.insertProduct(t, 1, "hammer", 1299)

	for i, want := range []observe.Stats{{Misses: 1, Fills: 1, DBReads: 1}, {Hits: 1, Misses: 1, Fills: 1, DBReads: 1}} {
		p, err := s.Get(ctx, 1)
		if err != nil {
			t.Fatalf("get %d: %v", i, err)
		}
		if p.ID != 1 || p.Name != "hammer" || p.PriceCents != 1299 || p.Version == 0 {
			t.Fatalf("get %d: got %+v", i, p)
		}
		if got := s.Stats(); got != want {
			t.Fatalf("after get %d: stats %+v, want %+v", i, got, want)
		}
	}
	// The cached value is exactly the database row.
	var dbUpdated time.Time
	if err := e.Pool.QueryRow(ctx, `SELECT updated_at FROM products WHERE id = 1`).Scan(&dbUpdated); err != nil {
		t.Fatal(err)
	}
	p, _ := s.Get(ctx, 1)
	if !p.UpdatedAt.Equal(dbUpdated) {
		t.Fatalf("updated_at: cache %v, db %v", p.UpdatedAt, dbUpdated)
	}
}

func TestNotFoundIsCachedAndMatchesPgxErrNoRows(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	for i := 0; i < 2; i++ {
		_, err := s.Get(ctx, 404)
		if !errors.Is(err, repo.ErrNotFound) || !errors.Is(err, pgx.ErrNoRows) {
			t.Fatalf("get %d: err %v, want ErrNotFound and pgx.ErrNoRows", i, err)
		}
		var oe *repo.OpError
		if !errors.As(err, &oe) || oe.Op != "get" || oe.Table != "products" || oe.Key != "404" {
			t.Fatalf("get %d: error %#v does not name op, table and key", i, err)
		}
		if errors.Is(err, memcache.ErrCacheMiss) {
			t.Fatalf("memcache.ErrCacheMiss leaked: %v", err)
		}
	}
	if got := s.Stats().DBReads; got != 1 {
		t.Fatalf("db reads %d, want 1 (the second miss is served by the negative entry)", got)
	}
	// Inserting the row replaces the negative entry at once.
	if _, err := s.Insert(ctx, Product{ID: 404, ArticleNumber: "A404", Name: "found", CategoryID: 1, PriceCents: 1}); err != nil {
		t.Fatal(err)
	}
	p, err := s.Get(ctx, 404)
	if err != nil || p.Name != "found" {
		t.Fatalf("after insert: %+v, %v", p, err)
	}
}

func TestWritesGoThroughToTheCache(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	now := time.Now().Truncate(time.Microsecond)
	ins, err := s.Insert(ctx, Product{ID: 7, ArticleNumber: "A7", Name: "saw", CategoryID: 1, PriceCents: 2500, UpdatedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	if ins.Version == 0 || !ins.UpdatedAt.Equal(now) {
		t.Fatalf("insert did not return the stored row: %+v", ins)
	}
	mustGet := func(want Product) {
		t.Helper()
		reads := s.Stats().DBReads
		got, err := s.Get(ctx, want.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.Name != want.Name || got.PriceCents != want.PriceCents || got.Version != want.Version {
			t.Fatalf("get: got %+v, want %+v", got, want)
		}
		if s.Stats().DBReads != reads {
			t.Fatalf("get went to the database: the write did not go through to the cache")
		}
	}
	// Write-through keeps cached copies current but never creates them (an
	// Add could resurrect an older version after an eviction): the first
	// read fills, and from then on every write goes through to the cache.
	if _, err := s.Get(ctx, 7); err != nil {
		t.Fatal(err)
	}
	mustGet(ins)

	upd, err := s.Update(ctx, 7, func(p *Product) error { p.PriceCents = 2000; p.Name = "saw (sale)"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if upd.Version <= ins.Version || upd.PriceCents != 2000 {
		t.Fatalf("update: got %+v (insert version %d)", upd, ins.Version)
	}
	mustGet(upd)

	ups, err := s.Upsert(ctx, Product{ID: 7, ArticleNumber: "A7", Name: "saw v2", CategoryID: 2, PriceCents: 2100})
	if err != nil {
		t.Fatal(err)
	}
	if ups.Version <= upd.Version || ups.CategoryID != 2 {
		t.Fatalf("upsert: got %+v", ups)
	}
	mustGet(ups)

	if err := s.Delete(ctx, 7); err != nil {
		t.Fatal(err)
	}
	reads := s.Stats().DBReads
	if _, err := s.Get(ctx, 7); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	if s.Stats().DBReads != reads {
		t.Fatal("get after delete read the database: no tombstone")
	}
	// Re-insert: a new, higher version replaces the tombstone.
	again, err := s.Insert(ctx, Product{ID: 7, ArticleNumber: "A7", Name: "saw again", CategoryID: 1, PriceCents: 1})
	if err != nil {
		t.Fatal(err)
	}
	if again.Version <= ups.Version {
		t.Fatalf("re-insert version %d not above %d", again.Version, ups.Version)
	}
	mustGet(again)

	// A delete that finds no row deletes the key (another deleter may not
	// have reached the cache yet); the next read fills "not found".
	if err := s.Delete(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, 7); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("second delete: %v, want ErrNotFound", err)
	}
	if _, err := e.MC.Get(s.Key(7)); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("after a delete that found nothing, the key is still cached (%v)", err)
	}
}

func TestUpdateErrors(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	e.insertProduct(t, 1, "drill", 5000)
	before, _ := s.Get(ctx, 1)

	boom := errors.New("boom")
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.PriceCents = 1; return boom }); !errors.Is(err, boom) {
		t.Fatalf("mutate error: got %v", err)
	}
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.ID = 2; return nil }); !errors.Is(err, repo.ErrKeyChanged) {
		t.Fatalf("key change: got %v", err)
	}
	if _, err := s.Update(ctx, 99, func(p *Product) error { return nil }); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing row: got %v", err)
	}
	// A constraint violation is returned, and nothing changed anywhere.
	if _, err := s.Update(ctx, 1, func(p *Product) error { p.PriceCents = -5; return nil }); err == nil {
		t.Fatal("check constraint violation not returned")
	}
	var price int64
	if err := e.Pool.QueryRow(ctx, `SELECT price_cents FROM products WHERE id = 1`).Scan(&price); err != nil || price != 5000 {
		t.Fatalf("db price %d (%v), want 5000", price, err)
	}
	after, err := s.Get(ctx, 1)
	if err != nil || !sameProduct(after, before) {
		t.Fatalf("cache changed by failed updates: %+v vs %+v (%v)", after, before, err)
	}
}

func TestCancelledContext(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	e.insertProduct(t, 1, "tape", 300)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Get(cctx, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("get: %v", err)
	}
	if _, err := s.GetMany(cctx, []int64{1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("get many: %v", err)
	}
	if _, err := s.Insert(cctx, Product{ID: 2, ArticleNumber: "A2", Name: "x", CategoryID: 1}); !errors.Is(err, context.Canceled) {
		t.Fatalf("insert: %v", err)
	}
	if _, err := s.Update(cctx, 1, func(p *Product) error { p.PriceCents = 1; return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("update: %v", err)
	}
	var n int
	if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM products WHERE id = 2 OR price_cents = 1`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a cancelled write changed the database: %d rows (%v)", n, err)
	}
	if st := s.Stats(); st.Fills != 0 || st.DBReads != 0 {
		t.Fatalf("cancelled calls touched the database or cache: %+v", st)
	}
}

func TestGetMany(t *testing.T) {
	e := newEnv(t)
	s := e.products(t, nil)
	for i := int64(1); i <= 10; i++ {
		e.insertProduct(t, i, fmt.Sprint("p", i), i*100)
	}
	// Warm half of them.
	for i := int64(1); i <= 5; i++ {
		if _, err := s.Get(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	reads := s.Stats().DBReads
	keys := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 3, 6}
	got, err := s.GetMany(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 10 {
		t.Fatalf("got %d rows, want 10", len(got))
	}
	for i := int64(1); i <= 10; i++ {
		if got[i].PriceCents != i*100 {
			t.Fatalf("row %d: %+v", i, got[i])
		}
	}
	if d := s.Stats().DBReads - reads; d != 1 {
		t.Fatalf("GetMany made %d database queries, want 1", d)
	}
	// Everything, including the missing 11 and 12, is now cached.
	got2, err := s.GetMany(ctx, keys)
	if err != nil || len(got2) != 10 {
		t.Fatalf("second GetMany: %d rows, %v", len(got2), err)
	}
	if d := s.Stats().DBReads - reads; d != 1 {
		t.Fatalf("second GetMany went to the database (%d queries in all)", d)
	}
	if m, err := s.GetMany(ctx, nil); err != nil || len(m) != 0 {
		t.Fatalf("empty GetMany: %v %v", m, err)
	}
}

func TestCompositeKeys(t *testing.T) {
	e := newEnv(t)
	s, err := repo.New(e.Pool, e.MC, stockTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	// Parts that would collide if joined naively.
	rows := []Stock{
		{ArticleNumber: "A:1", UOM: "EA", StoreCode: "S001", Quantity: 5},
		{ArticleNumber: "A", UOM: "1:EA", StoreCode: "S001", Quantity: 6},
		{ArticleNumber: "A 1", UOM: "EA", StoreCode: "S002", Quantity: 7},
		{ArticleNumber: "ÄÖ", UOM: "KG", StoreCode: "S002", Quantity: 8},
	}
	for _, r := range rows {
		if _, err := s.Insert(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	keys := []StockKey{{"A:1", "EA", "S001"}, {"A", "1:EA", "S001"}, {"A 1", "EA", "S002"}, {"ÄÖ", "KG", "S002"}, {"A", "EA", "S001"}}
	seen := map[string]bool{}
	for _, k := range keys {
		key := s.Key(k)
		if seen[key] {
			t.Fatalf("key collision: %q", key)
		}
		seen[key] = true
	}
	// Cold GetMany: all from the database in one query.
	e.MC.DeleteAll()
	s2, _ := repo.New(e.Pool, e.MC, stockTable, e.Opts(nil))
	got, err := s2.GetMany(ctx, keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 4 {
		t.Fatalf("got %d rows, want 4: %+v", len(got), got)
	}
	for i, r := range rows {
		if got[keys[i]].Quantity != r.Quantity {
			t.Fatalf("row %v: got %+v", keys[i], got[keys[i]])
		}
	}
	if st := s2.Stats(); st.DBReads != 1 || st.Fills != 5 {
		t.Fatalf("stats %+v, want 1 db read and 5 fills (4 rows + 1 not found)", st)
	}
	upd, err := s2.Update(ctx, keys[0], func(r *Stock) error { r.Quantity--; return nil })
	if err != nil || upd.Quantity != 4 {
		t.Fatalf("update: %+v %v", upd, err)
	}
	g, err := s2.Get(ctx, keys[0])
	if err != nil || g.Quantity != 4 {
		t.Fatalf("get after update: %+v %v", g, err)
	}
	if _, err := s2.Get(ctx, keys[4]); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("missing composite key: %v", err)
	}
}

func TestCorruptCacheBytesAreAMiss(t *testing.T) {
	e := newEnv(t)
	var h hookLog
	s := e.products(t, e.Opts(&h))
	e.insertProduct(t, 1, "level", 800)
	if _, err := s.Get(ctx, 1); err != nil {
		t.Fatal(err)
	}
	key := s.Key(1)
	good, err := e.MC.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		flags uint32
		value []byte
	}{
		{"truncated", good.Flags, good.Value[:len(good.Value)/2]},
		{"flipped byte", good.Flags, flip(good.Value, len(good.Value)-3)},
		{"empty", good.Flags, nil},
		{"unknown format", good.Flags + 1<<8, good.Value},
		{"unknown kind", good.Flags&^0xff | 9, good.Value},
		{"plain text", 0, []byte("hello")},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if err := e.MC.Set(&memcache.Item{Key: key, Flags: c.flags, Value: c.value}); err != nil {
				t.Fatal(err)
			}
			n := len(h.All())
			p, err := s.Get(ctx, 1)
			if err != nil || p.Name != "level" || p.PriceCents != 800 {
				t.Fatalf("got %+v, %v", p, err)
			}
			ev := h.All()[n:]
			if len(ev) == 0 || !errors.Is(ev[0].Err, repo.ErrCorrupt) || ev[0].Key != key {
				t.Fatalf("corruption not reported: %+v", ev)
			}
			// The bad bytes were replaced by a good fill.
			it, err := e.MC.Get(key)
			if err != nil || it.Flags != good.Flags || string(it.Value) != string(good.Value) {
				t.Fatalf("key not refilled with the row: %+v %v", it, err)
			}
			if p2, err := s.Get(ctx, 1); err != nil || !sameProduct(p2, p) {
				t.Fatalf("refilled value: %+v %v", p2, err)
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	c[i] ^= 0x20
	return c
}

func TestOversizeValuesAreServedNotCached(t *testing.T) {
	e := newEnv(t)
	var h hookLog
	o := e.Opts(&h)
	o.MaxItemSize = 64
	s := e.products(t, o)
	long := strings.Repeat("x", 200)
	ins, err := s.Insert(ctx, Product{ID: 1, ArticleNumber: "A1", Name: long, CategoryID: 1, PriceCents: 1})
	if err != nil || ins.Name != long {
		t.Fatalf("insert: %v", err)
	}
	for i := 0; i < 2; i++ {
		p, err := s.Get(ctx, 1)
		if err != nil || p.Name != long {
			t.Fatalf("get %d: %v", i, err)
		}
	}
	if _, err := e.MC.Get(s.Key(1)); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("oversize value left something in the cache: %v", err)
	}
	var tooLarge int
	for _, ev := range h.All() {
		if errors.Is(ev.Err, repo.ErrTooLarge) {
			tooLarge++
		}
	}
	if tooLarge != 3 { // the insert's write-through and both fills
		t.Fatalf("%d ErrTooLarge reports, want 3: %+v", tooLarge, h.All())
	}
	if st := s.Stats(); st.DBReads != 2 {
		t.Fatalf("db reads %d, want 2", st.DBReads)
	}
}

func TestCacheDownFallsBackToTheDatabase(t *testing.T) {
	e := newEnv(t)
	var h hookLog
	dead, err := cacheClient(8, 100*time.Millisecond, "127.0.0.1:1") // nothing listens on port 1
	if err != nil {
		t.Fatal(err)
	}
	s, err := repo.New(e.Pool, dead, productTable, e.Opts(&h))
	if err != nil {
		t.Fatal(err)
	}
	e.insertProduct(t, 1, "clamp", 450)
	p, err := s.Get(ctx, 1)
	if err != nil || p.Name != "clamp" {
		t.Fatalf("get: %+v %v", p, err)
	}
	got, err := s.GetMany(ctx, []int64{1, 2})
	if err != nil || len(got) != 1 || got[1].Name != "clamp" {
		t.Fatalf("get many: %+v %v", got, err)
	}
	upd, err := s.Update(ctx, 1, func(p *Product) error { p.PriceCents = 500; return nil })
	if err != nil || upd.PriceCents != 500 {
		t.Fatalf("update with the cache down must still commit: %+v %v", upd, err)
	}
	if _, err := s.Insert(ctx, Product{ID: 2, ArticleNumber: "A2", Name: "vise", CategoryID: 1}); err != nil {
		t.Fatalf("insert with the cache down: %v", err)
	}
	if err := s.Delete(ctx, 2); err != nil {
		t.Fatalf("delete with the cache down: %v", err)
	}
	if len(h.All()) == 0 || s.Stats().CacheErrors == 0 {
		t.Fatal("cache failures were not reported")
	}
	if _, err := s.Get(ctx, 2); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("get deleted: %v", err)
	}
}

// A reader that read the row before a write committed must not overwrite the
// write's cache value with its old row (the stale-set race), nor bring back a
// deleted row. The reader is paused after its SELECT ran (its snapshot holds
// the old row) and before its fill.
func TestStaleFillLosesToAWrite(t *testing.T) {
	for _, write := range []string{"update", "delete"} {
		t.Run(write, func(t *testing.T) {
			e := newEnv(t)
			e.insertProduct(t, 1, "old", 100)
			var once sync.Once
			readDone, release := make(chan struct{}), make(chan struct{})
			slow := &hookDB{Beginner: e.Pool}
			slow.after = func(string) { once.Do(func() { close(readDone); <-release }) }
			reader, err := repo.New(slow, e.MC, productTable, e.Opts(nil))
			if err != nil {
				t.Fatal(err)
			}
			writer := e.products(t, nil)

			ch := make(chan error, 1)
			var got Product
			go func() { var err error; got, err = reader.Get(ctx, 1); ch <- err }()
			<-readDone
			if write == "update" {
				if _, err := writer.Update(ctx, 1, func(p *Product) error { p.Name = "new"; return nil }); err != nil {
					t.Fatal(err)
				}
			} else if err := writer.Delete(ctx, 1); err != nil {
				t.Fatal(err)
			}
			close(release)
			if err := <-ch; err != nil || got.Name != "old" {
				t.Fatalf("reader: %+v %v (it read before the write)", got, err)
			}
			if st := reader.Stats(); st.Fills != 0 || st.CASConflicts+st.Misses == 0 {
				t.Fatalf("the stale fill was not dropped: %+v", st)
			}
			p, err := writer.Get(ctx, 1)
			switch write {
			case "update":
				if err != nil || p.Name != "new" {
					t.Fatalf("cache after the race: %+v %v", p, err)
				}
			case "delete":
				if !errors.Is(err, repo.ErrNotFound) {
					t.Fatalf("deleted row came back: %+v %v", p, err)
				}
			}
		})
	}
}

func sameProduct(a, b Product) bool {
	au, bu := a.UpdatedAt, b.UpdatedAt
	a.UpdatedAt, b.UpdatedAt = time.Time{}, time.Time{}
	return a == b && au.Equal(bu)
}
