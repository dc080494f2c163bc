package repo_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

// The examples run against real servers from repotest: a fresh database with
// the migrations applied and a key namespace of their own. A program gets
// the same three things from its configuration instead:
//
//	pool, err := pgxpool.New(ctx, os.Getenv("DATABASE_URL"))
//	mc, err := memclient.New(memclient.Config{Servers: []string{"127.0.0.1:11211"}})
//	namespace := "shop"
//
// Examples cannot be skipped: when the servers are missing the example
// prints why, and fails because its output differs.

// ExampleStore_Get reads one row: the first Get misses and fills the cache,
// the second is served by memcached.
func ExampleStore_Get() {
	pool, mc, ns, done, err := exampleServers("ExampleStore_Get")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	ctx := context.Background()

	// One Store per table, created once and shared by the whole program.
	products, err := repo.New(pool, mc, productTable, &repo.Options{Namespace: ns, TTL: time.Hour})
	if err != nil {
		fmt.Println(err)
		return
	}

	p, err := products.Get(ctx, 1) // a miss: one SELECT, then the row is cached
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Name, p.PriceCents)

	p, err = products.Get(ctx, 1) // a hit: one memcached round trip, no SQL
	fmt.Println(p.Name, err)

	_, err = products.Get(ctx, 404) // "not found" is cached too, for NegativeTTL
	fmt.Println(errors.Is(err, repo.ErrNotFound))

	st := products.Stats()
	fmt.Printf("hits=%d misses=%d db_reads=%d\n", st.Hits, st.Misses, st.DBReads)
	// Output:
	// hammer 1299
	// hammer <nil>
	// true
	// hits=1 misses=2 db_reads=2
}

// ExampleStore_GetMany reads several rows with one GetMulti, plus one
// SELECT ... WHERE id = ANY($1) for the keys the cache did not have.
func ExampleStore_GetMany() {
	pool, mc, ns, done, err := exampleServers("ExampleStore_GetMany")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	ctx := context.Background()

	products, err := repo.New(pool, mc, productTable, &repo.Options{Namespace: ns})
	if err != nil {
		fmt.Println(err)
		return
	}

	// Rows that do not exist are absent from the map; that is not an error.
	got, err := products.GetMany(ctx, []int64{3, 1, 404, 2})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, id := range slices.Sorted(maps.Keys(got)) {
		fmt.Println(id, got[id].Name)
	}

	// All four keys are cached now, 404 as "not found": no more SQL.
	got, err = products.GetMany(ctx, []int64{1, 2, 3, 404})
	st := products.Stats()
	fmt.Printf("rows=%d err=%v db_reads=%d hits=%d\n", len(got), err, st.DBReads, st.Hits)
	// Output:
	// 1 hammer
	// 2 saw
	// 3 spade
	// rows=3 err=<nil> db_reads=1 hits=4
}

// ExampleStore_Update changes a row in a read-modify-write transaction and
// writes the result through to the cache.
func ExampleStore_Update() {
	pool, mc, ns, done, err := exampleServers("ExampleStore_Update")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer done()
	ctx := context.Background()

	products, err := repo.New(pool, mc, productTable, &repo.Options{Namespace: ns})
	if err != nil {
		fmt.Println(err)
		return
	}
	before, err := products.Get(ctx, 1) // now cached
	if err != nil {
		fmt.Println(err)
		return
	}

	// The row is read under a lock, changed and written back in one
	// transaction; after the commit the new row goes through to the cache.
	after, err := products.Update(ctx, 1, func(p *Product) error {
		p.PriceCents -= 300
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(before.PriceCents, "->", after.PriceCents, "version grew:", after.Version > before.Version)

	p, err := products.Get(ctx, 1) // a hit that already sees the new price
	fmt.Println(p.PriceCents, err, "db_reads:", products.Stats().DBReads)

	// An error from mutate rolls the transaction back.
	_, err = products.Update(ctx, 1, func(p *Product) error {
		if p.PriceCents < 1000 {
			return errors.New("price floor")
		}
		p.PriceCents = 1
		return nil
	})
	fmt.Println(err)
	// Output:
	// 1299 -> 999 version grew: true
	// 999 <nil> db_reads: 1
	// repo: update products[1]: price floor
}

// exampleServers returns what the examples need: a pool on a fresh database
// with the migrations applied and three products, a memcached client, a key
// namespace, and a function that closes the pool and drops the database.
func exampleServers(name string) (*pgxpool.Pool, *memclient.Client, string, func(), error) {
	sc, err := exampleScratch(name)
	if err != nil {
		return nil, nil, "", nil, err
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, sc.DatabaseURL)
	if err != nil {
		_ = sc.Close()
		return nil, nil, "", nil, err
	}
	done := func() {
		pool.Close()
		_ = sc.Close()
	}
	mc, err := cacheClient(8, time.Second, sc.Memcached)
	if err != nil {
		done()
		return nil, nil, "", nil, fmt.Errorf("%s: %w", name, err)
	}
	return pool, mc, sc.Namespace, done, nil
}

// exampleScratch returns a fresh database with the migrations applied and
// three products, and the memcached server and namespace to use.
func exampleScratch(name string) (*repotest.Scratch, error) {
	sc, err := repotest.NewScratch(name)
	if err != nil {
		return nil, err
	}
	err = migrations.Up(sc.DatabaseURL)
	if err == nil {
		var pool *pgxpool.Pool
		if pool, err = pgxpool.New(context.Background(), sc.DatabaseURL); err == nil {
			_, err = pool.Exec(context.Background(), `
				INSERT INTO categories (id, name) VALUES (1, 'tools');
				INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES
					(1, 'A1', 'hammer', 1, 1299), (2, 'A2', 'saw', 1, 2450), (3, 'A3', 'spade', 1, 1875)`)
			pool.Close()
		}
	}
	if err != nil {
		_ = sc.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return sc, nil
}
