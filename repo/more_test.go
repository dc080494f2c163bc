package repo_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Note is a row of a table without a version column: writes delete the key
// and the lease protocol alone guards fills.
type Note struct {
	ID   string `db:"id"`
	Body string `db:"body"`
}

func TestUnversionedTable(t *testing.T) {
	e := newEnv(t)
	// A mixed-case name with a '$' is found only if it is quoted as an
	// identifier (names that are not identifiers, such as `odd "notes"
	// table`, are refused by New: TestNewValidatesTable).
	e.Exec(t, `CREATE TABLE "Odd$Notes" (id text PRIMARY KEY, body text NOT NULL)`)
	s, err := repo.New(e.Pool, e.MC, repo.Table[Note, string]{
		Name: `Odd$Notes`, Key: []string{"id"}, Columns: []string{"id", "body"},
	}, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	id := "a b:c'; DROP TABLE products; --"
	if _, err := s.Insert(ctx, Note{ID: id, Body: "one"}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one", "one"} {
		n, err := s.Get(ctx, id)
		if err != nil || n.Body != want {
			t.Fatalf("get: %+v %v", n, err)
		}
	}
	if _, err := s.Update(ctx, id, func(n *Note) error { n.Body = "two"; return nil }); err != nil {
		t.Fatal(err)
	}
	// The update deleted the key: the next Get reads the new row.
	if _, err := e.MC.Get(s.Key(id)); !errors.Is(err, memcache.ErrCacheMiss) {
		t.Fatalf("key still cached after an unversioned update: %v", err)
	}
	if n, err := s.Get(ctx, id); err != nil || n.Body != "two" {
		t.Fatalf("get after update: %+v %v", n, err)
	}
	if _, err := s.Upsert(ctx, Note{ID: id, Body: "three"}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Get(ctx, id); err != nil || n.Body != "three" {
		t.Fatalf("get after upsert: %+v %v", n, err)
	}
	if err := s.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, id); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("get after delete: %v", err)
	}
	var tables int
	if err := e.Pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'products'`).Scan(&tables); err != nil || tables != 1 {
		t.Fatalf("products table: %d (%v)", tables, err)
	}
}

// Concurrent Gets of one cold key in one process make one database query.
func TestHerdOneProcess(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "popular", 100)
	s := e.products(t, nil)
	const readers = 128
	var wg sync.WaitGroup
	errs := make(chan error, readers)
	start := make(chan struct{})
	for i := 0; i < readers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			p, err := s.Get(ctx, 1)
			if err == nil && p.Name != "popular" {
				err = fmt.Errorf("got %+v", p)
			}
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.DBReads != 1 || st.Fills != 1 {
		t.Fatalf("%d readers: stats %+v, want exactly 1 database read and 1 fill", readers, st)
	}
}

// One caller's cancelled context does not fail the others sharing its load.
func TestSharedLoadSurvivesACancelledCaller(t *testing.T) {
	e := newEnv(t)
	e.insertProduct(t, 1, "shared", 100)
	hold := make(chan struct{})
	slow := &hookDB{Beginner: e.Pool}
	var once sync.Once
	entered := make(chan struct{})
	slow.after = func(string) { once.Do(func() { close(entered); <-hold }) }
	s, err := repo.New(slow, e.MC, productTable, e.Opts(nil))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	first := make(chan error, 1)
	go func() { _, err := s.Get(cctx, 1); first <- err }()
	<-entered
	second := make(chan error, 1)
	var got observe.Stats
	go func() {
		p, err := s.Get(ctx, 1)
		if err == nil && p.Name != "shared" {
			err = fmt.Errorf("got %+v", p)
		}
		second <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the second caller join the shared load
	cancel()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled caller: %v", err)
	}
	close(hold)
	if err := <-second; err != nil {
		t.Fatalf("the other caller failed with the first one's cancellation: %v", err)
	}
	if got = s.Stats(); got.DBReads != 1 || got.Fills != 1 {
		t.Fatalf("stats %+v, want one shared read and fill", got)
	}
}

func TestInvalidateAll(t *testing.T) {
	e := newEnv(t)
	o := e.Opts(nil)
	o.GenerationRefresh = 50 * time.Millisecond
	a, b := e.products(t, o), e.products(t, o)
	e.insertProduct(t, 1, "before", 100)
	for _, s := range []*repo.Store[Product, int64]{a, b} {
		if p, err := s.Get(ctx, 1); err != nil || p.Name != "before" {
			t.Fatalf("warm: %+v %v", p, err)
		}
	}
	// A change made behind the stores' backs...
	e.Exec(t, `UPDATE products SET name = 'after' WHERE id = 1`)
	if p, _ := b.Get(ctx, 1); p.Name != "before" {
		t.Fatalf("expected the cached row before invalidation, got %+v", p)
	}
	oldKey := a.Key(1)
	if err := a.InvalidateAll(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Key(1) == oldKey {
		t.Fatal("InvalidateAll did not change the key")
	}
	if p, err := a.Get(ctx, 1); err != nil || p.Name != "after" {
		t.Fatalf("invalidating store: %+v %v", p, err)
	}
	// The other store sees the new generation within GenerationRefresh.
	time.Sleep(60 * time.Millisecond)
	if p, err := b.Get(ctx, 1); err != nil || p.Name != "after" {
		t.Fatalf("other store after refresh: %+v %v", p, err)
	}
	// A lost generation key (memcached restarted) comes back as 0 for every
	// process alike, so the processes never split between two key spaces.
	if err := e.MC.DeleteAll(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(60 * time.Millisecond)
	if ka, kb := a.Key(1), b.Key(1); ka != kb {
		t.Fatalf("stores disagree on the generation after it was lost: %q vs %q", ka, kb)
	}
}

func TestQuery(t *testing.T) {
	e := newEnv(t)
	for i := int64(1); i <= 5; i++ {
		e.insertProduct(t, i, fmt.Sprint("p", i), i*100)
	}
	type page struct {
		Category int64
		Names    []string
		Total    int64
	}
	var loads atomic.Int64
	const fail = -1 // a category whose load fails
	load := func(ctx context.Context, category int64) (page, error) {
		loads.Add(1)
		if category == fail {
			return page{}, errors.New("no such category")
		}
		var p page
		err := e.Pool.QueryRow(ctx, `SELECT $1::bigint, array_agg(name ORDER BY id), sum(price_cents)::bigint FROM products WHERE category_id = $1`, category).
			Scan(&p.Category, &p.Names, &p.Total)
		return p, err
	}
	q, err := repo.NewQuery(e.MC, repo.QueryConfig[int64, page]{Name: "category-page", TTL: time.Minute, Load: load, Namespace: e.NS})
	if err != nil {
		t.Fatal(err)
	}
	want := page{Category: 1, Names: []string{"p1", "p2", "p3", "p4", "p5"}, Total: 1500}
	var wg sync.WaitGroup
	for i := 0; i < 32; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := q.Get(ctx, 1)
			if err != nil || fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("got %+v, %v", got, err)
			}
		}()
	}
	wg.Wait()
	if n := loads.Load(); n != 1 {
		t.Fatalf("%d loads for 32 concurrent Gets, want 1", n)
	}
	if _, err := q.Get(ctx, fail); err == nil || loads.Load() != 2 {
		t.Fatalf("load error not returned: %v", err)
	}
	if _, err := q.Get(ctx, fail); err == nil || loads.Load() != 3 {
		t.Fatal("a failed load was cached")
	}
	e.Exec(t, `UPDATE products SET name = 'renamed' WHERE id = 1`)
	if got, _ := q.Get(ctx, 1); got.Names[0] != "p1" {
		t.Fatalf("expected the cached page, got %+v", got)
	}
	if err := q.Invalidate(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got, err := q.Get(ctx, 1); err != nil || got.Names[0] != "renamed" {
		t.Fatalf("after invalidate: %+v %v", got, err)
	}
}
