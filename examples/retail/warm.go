package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/cachedrepo/cachedrepo/repo"
)

// warmResult is what one table's warm-up did.
type warmResult struct {
	Table   string
	Rows    int64 // rows read and handed to Store.Warm
	Stored  int64 // rows Warm left in the cache (the others were cached already, or too large)
	Elapsed time.Duration
}

// Rate is rows per second.
func (r warmResult) Rate() float64 { return float64(r.Rows) / max(r.Elapsed.Seconds(), 1e-9) }

// warmTable fills the cache with every row of one table before traffic
// arrives (the article's "rebuild the cache when the catalogue rebuild
// completes"). One goroutine pages through the table's rows in key order
// (keyset pagination: WHERE key > last ORDER BY key LIMIT batch, one query
// per page reading whole rows); workers goroutines hand each page to
// store.Warm, which Adds every row (one memcached round trip each, never
// replacing a value, tombstone or lease already there) and then reads the
// page's versions again in one query (a range scan, the page being in key
// order), deleting any row a concurrent write changed meanwhile. So the
// warm-up may run while the service serves and writes.
func warmTable[T any, K comparable](ctx context.Context, out io.Writer, name string, store *repo.Store[T, K],
	total int64, page func(ctx context.Context, after *T, n int) ([]T, error), batch, workers int) (warmResult, error) {
	bar := newProgress(out, name, total)
	g, gctx := errgroup.WithContext(ctx)
	pages := make(chan []T, workers)
	g.Go(func() error {
		defer close(pages)
		var after *T
		for {
			rows, err := page(gctx, after, batch)
			if err != nil {
				return fmt.Errorf("paging %s rows: %w", name, err)
			}
			if len(rows) == 0 {
				return nil
			}
			select {
			case pages <- rows:
			case <-gctx.Done():
				return gctx.Err()
			}
			last := rows[len(rows)-1]
			after = &last
		}
	})
	var stored atomic.Int64
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			for rows := range pages {
				n, err := store.Warm(gctx, rows)
				stored.Add(int64(n))
				if err != nil {
					return err
				}
				bar.Add(int64(len(rows)))
			}
			return nil
		})
	}
	err := g.Wait()
	n, el := bar.finish()
	return warmResult{Table: name, Rows: n, Stored: stored.Load(), Elapsed: el}, err
}

// keysetPager returns a page function over table's rows in key order: the
// columns cols (the store's Table.Columns, in the order of T's fields, since
// rows are scanned by position), ordered by the key columns, after the key
// of *after (from the start when nil).
func keysetPager[T any](pool *pgxpool.Pool, table string, cols, key []string, keyOf func(*T) []any) func(context.Context, *T, int) ([]T, error) {
	q := func(names []string) string {
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = pgx.Identifier{n}.Sanitize()
		}
		return strings.Join(out, ", ")
	}
	ph := make([]string, len(key))
	for i := range key {
		ph[i] = "$" + strconv.Itoa(i+1)
	}
	from := fmt.Sprintf("SELECT %s FROM %s", q(cols), pgx.Identifier{table}.Sanitize())
	order := " ORDER BY " + q(key)
	first := from + order + " LIMIT $1"
	next := fmt.Sprintf("%s WHERE (%s) > (%s)%s LIMIT $%d", from, q(key), strings.Join(ph, ", "), order, len(key)+1)
	return func(ctx context.Context, after *T, n int) ([]T, error) {
		var rows pgx.Rows
		if after == nil {
			rows, _ = pool.Query(ctx, first, n)
		} else {
			rows, _ = pool.Query(ctx, next, append(keyOf(after), n)...)
		}
		return pgx.CollectRows(rows, pgx.RowToStructByPos[T])
	}
}

// warmAll warms every catalogue table, stock last (it is 99% of the rows).
// The column lists are those of the stores' tables (catalog.go), which are
// also the row types' field orders.
func warmAll(ctx context.Context, a *app, out io.Writer, batch, workers int) ([]warmResult, error) {
	count := func(table string) (int64, error) {
		var n int64
		err := a.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n)
		return n, err
	}
	var results []warmResult
	run := func(table string, f func(total int64) (warmResult, error)) error {
		total, err := count(table)
		if err != nil {
			return fmt.Errorf("counting %s: %w", table, err)
		}
		r, err := f(total)
		if err != nil {
			return fmt.Errorf("warming %s: %w", table, err)
		}
		results = append(results, r)
		return nil
	}
	if err := run("categories", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "categories", a.cat.categories, total,
			keysetPager(a.pool, "categories", []string{"id", "name", "version"}, []string{"id"},
				func(c *Category) []any { return []any{c.ID} }), batch, workers)
	}); err != nil {
		return results, err
	}
	if err := run("stores", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "stores", a.cat.shops, total,
			keysetPager(a.pool, "stores", []string{"code", "name", "city", "version"}, []string{"code"},
				func(s *Shop) []any { return []any{s.Code} }), batch, workers)
	}); err != nil {
		return results, err
	}
	if err := run("products", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "products", a.cat.products, total,
			keysetPager(a.pool, "products", []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at", "version"},
				[]string{"id"}, func(p *Product) []any { return []any{p.ID} }), batch, workers)
	}); err != nil {
		return results, err
	}
	if err := run("stock", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "stock", a.cat.stock, total,
			keysetPager(a.pool, "stock", []string{"article_number", "uom", "store_code", "quantity", "updated_at", "version"},
				[]string{"article_number", "uom", "store_code"},
				func(s *Stock) []any { return []any{s.ArticleNumber, s.UOM, s.StoreCode} }), batch, workers)
	}); err != nil {
		return results, err
	}
	return results, nil
}

// rawSetRate measures the baseline the warm-up is compared with: workers
// goroutines doing plain gomemcache Sets of n values of valueSize bytes
// under keys of keySize bytes, on the same client and server. The values
// expire after a minute and live in their own key prefix.
func rawSetRate(ctx context.Context, out io.Writer, mc repo.Cache, n int64, keySize, valueSize, workers int) (warmResult, error) {
	prefix := "retail-rawset-" + strconv.FormatInt(time.Now().UnixNano(), 36) + ":"
	pad := max(0, keySize-len(prefix)-10)
	prefix += strings.Repeat("x", pad)
	value := make([]byte, valueSize)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	bar := newProgress(out, "raw Set", n)
	var next atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			for {
				if err := gctx.Err(); err != nil {
					return err
				}
				i := next.Add(1) - 1
				if i >= n {
					return nil
				}
				key := prefix + strconv.FormatInt(i, 10)
				if err := mc.Set(&memcache.Item{Key: key, Value: value, Expiration: 60}); err != nil {
					return fmt.Errorf("raw set %s: %w", key, err)
				}
				bar.Add(1)
			}
		})
	}
	err := g.Wait()
	done, el := bar.finish()
	return warmResult{Table: "raw Set", Rows: done, Elapsed: el}, err
}
