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
	"golang.org/x/sync/errgroup"

	"github.com/cachedrepo/cachedrepo/repo"
)

// warmResult is what one table's warm-up did.
type warmResult struct {
	Table   string
	Rows    int64
	Elapsed time.Duration
}

// Rate is rows per second.
func (r warmResult) Rate() float64 { return float64(r.Rows) / max(r.Elapsed.Seconds(), 1e-9) }

// warmTable fills the cache with every row of one table before traffic
// arrives (the article's "rebuild the cache when the catalogue rebuild
// completes"). One goroutine pages through the table's keys in key order
// (keyset pagination: WHERE key > last ORDER BY key LIMIT batch, an
// index-only scan); workers goroutines call store.GetMany on each page,
// which reads the misses with one query per page and fills them under
// leases. So warm-up uses the store's own fill path: it never overwrites a
// value a concurrent write put in the cache, and it may run while the
// service is serving.
func warmTable[T any, K comparable](ctx context.Context, out io.Writer, name string, store *repo.Store[T, K],
	total int64, page func(ctx context.Context, after *K, n int) ([]K, error), batch, workers int) (warmResult, error) {
	bar := newProgress(out, name, total)
	g, gctx := errgroup.WithContext(ctx)
	pages := make(chan []K, workers)
	g.Go(func() error {
		defer close(pages)
		var after *K
		for {
			keys, err := page(gctx, after, batch)
			if err != nil {
				return fmt.Errorf("paging %s keys: %w", name, err)
			}
			if len(keys) == 0 {
				return nil
			}
			select {
			case pages <- keys:
			case <-gctx.Done():
				return gctx.Err()
			}
			after = &keys[len(keys)-1]
		}
	})
	for w := 0; w < workers; w++ {
		g.Go(func() error {
			for keys := range pages {
				if _, err := store.GetMany(gctx, keys); err != nil {
					return err
				}
				bar.Add(int64(len(keys)))
			}
			return nil
		})
	}
	err := g.Wait()
	n, el := bar.finish()
	return warmResult{Table: name, Rows: n, Elapsed: el}, err
}

// warmAll warms every catalogue table, stock last (it is 99% of the rows).
func warmAll(ctx context.Context, a *app, out io.Writer, batch, workers int) ([]warmResult, error) {
	count := func(table string) (int64, error) {
		var n int64
		err := a.pool.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n)
		return n, err
	}
	int64Pager := func(table, col string) func(context.Context, *int64, int) ([]int64, error) {
		sql := fmt.Sprintf(`SELECT %[2]s FROM %[1]s WHERE %[2]s > $1 ORDER BY %[2]s LIMIT $2`, table, col)
		return func(ctx context.Context, after *int64, n int) ([]int64, error) {
			var last int64 = -1 << 63
			if after != nil {
				last = *after
			}
			rows, _ := a.pool.Query(ctx, sql, last, n)
			return pgx.CollectRows(rows, pgx.RowTo[int64])
		}
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
		return warmTable(ctx, out, "categories", a.cat.categories, total, int64Pager("categories", "id"), batch, workers)
	}); err != nil {
		return results, err
	}
	if err := run("stores", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "stores", a.cat.shops, total, func(ctx context.Context, after *string, n int) ([]string, error) {
			last := ""
			if after != nil {
				last = *after
			}
			rows, _ := a.pool.Query(ctx, `SELECT code FROM stores WHERE code > $1 ORDER BY code LIMIT $2`, last, n)
			return pgx.CollectRows(rows, pgx.RowTo[string])
		}, batch, workers)
	}); err != nil {
		return results, err
	}
	if err := run("products", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "products", a.cat.products, total, int64Pager("products", "id"), batch, workers)
	}); err != nil {
		return results, err
	}
	if err := run("stock", func(total int64) (warmResult, error) {
		return warmTable(ctx, out, "stock", a.cat.stock, total, func(ctx context.Context, after *StockKey, n int) ([]StockKey, error) {
			var last StockKey
			if after != nil {
				last = *after
			}
			rows, _ := a.pool.Query(ctx, `SELECT article_number, uom, store_code FROM stock
				WHERE (article_number, uom, store_code) > ($1, $2, $3)
				ORDER BY article_number, uom, store_code LIMIT $4`, last.ArticleNumber, last.UOM, last.StoreCode, n)
			return pgx.CollectRows(rows, func(row pgx.CollectableRow) (StockKey, error) {
				var k StockKey
				err := row.Scan(&k.ArticleNumber, &k.UOM, &k.StoreCode)
				return k, err
			})
		}, batch, workers)
	}); err != nil {
		return results, err
	}
	return results, nil
}

// rawSetRate measures the baseline the warm-up is compared with: workers
// goroutines doing plain gomemcache Sets of n values of valueSize bytes
// under keys of keySize bytes, on the same client and server. The values
// expire after a minute and live in their own key prefix.
func rawSetRate(ctx context.Context, out io.Writer, mc *memcache.Client, n int64, keySize, valueSize, workers int) (warmResult, error) {
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
