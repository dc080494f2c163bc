package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
)

// The full-scale workload of the source article: 11,000 products in 170
// stores, one stock row per product and store (1,870,000 rows).
const (
	fullProducts        = 11000
	fullStores          = 170
	productsPerCategory = 100
)

// dataset is the size of what seed loads.
type dataset struct {
	Categories, Products, Stores int
}

// StockRows is the number of stock rows: one per product and store.
func (d dataset) StockRows() int64 { return int64(d.Products) * int64(d.Stores) }

// datasetFor scales the number of products (and categories) by scale; the
// stores stay 170, so stock across stores always reads 170 rows.
func datasetFor(scale float64) (dataset, error) {
	if !(scale > 0 && scale <= 100) {
		return dataset{}, fmt.Errorf("scale %v: want a number in (0, 100]", scale)
	}
	p := max(1, int(math.Round(fullProducts*scale)))
	return dataset{Products: p, Stores: fullStores, Categories: (p + productsPerCategory - 1) / productsPerCategory}, nil
}

// The deterministic data every seed produces, used by the load generator to
// build its keys too.
var (
	uoms   = [...]string{"EA", "EA", "EA", "KG", "PK", "L"}
	cities = [...]string{"Amsterdam", "Berlin", "Lisbon", "Madrid", "Oslo", "Paris", "Prague", "Rome", "Vienna", "Warsaw"}
	kinds  = [...]string{"Coffee", "Tea", "Rice", "Pasta", "Olive oil", "Soap", "Batteries", "Candles", "Socks", "Flour", "Honey", "Salt"}
	adjs   = [...]string{"Organic", "Classic", "Premium", "Everyday", "Family", "Eco", "Mini", "Large"}
)

func articleNumber(productID int64) string { return fmt.Sprintf("A%07d", productID) }
func uomOf(productID int64) string         { return uoms[productID%int64(len(uoms))] }
func storeCode(i int) string               { return fmt.Sprintf("S%03d", i) }

// quantity is a stable pseudo-random stock level for a product in a store.
func quantity(productID int64, store int) int32 {
	h := uint64(productID)*0x9E3779B97F4A7C15 ^ uint64(store)*0xC2B2AE3D27D4EB4F
	h ^= h >> 29
	return int32(h % 500)
}

// seed replaces the catalogue (categories, products, stores, stock) with a
// generated one of size d, using COPY (pgx CopyFrom) with workers parallel
// connections for the stock rows and a progress bar on out. The rows' version
// sequences are not reset: versions keep growing, so the cache's versioned
// write-through can never mistake a new row for an older one. Cached rows
// are made unreachable with InvalidateAll afterwards (see runSeed).
func seed(ctx context.Context, pool *pgxpool.Pool, d dataset, workers int, out io.Writer) error {
	start := time.Now()
	if _, err := pool.Exec(ctx, `TRUNCATE stock, products, stores, categories`); err != nil {
		return fmt.Errorf("emptying the catalogue: %w", err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)

	copyRows := func(table string, cols []string, n int, row func(i int) []any) error {
		i := 0
		_, err := pool.CopyFrom(ctx, pgx.Identifier{table}, cols, pgx.CopyFromFunc(func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			i++
			return row(i), nil
		}))
		if err != nil {
			return fmt.Errorf("copying %s: %w", table, err)
		}
		return nil
	}
	if err := copyRows("categories", []string{"id", "name"}, d.Categories, func(i int) []any {
		return []any{int64(i), fmt.Sprintf("%s %d", kinds[i%len(kinds)], i)}
	}); err != nil {
		return err
	}
	if err := copyRows("stores", []string{"code", "name", "city"}, d.Stores, func(i int) []any {
		city := cities[i%len(cities)]
		return []any{storeCode(i), fmt.Sprintf("%s #%d", city, i), city}
	}); err != nil {
		return err
	}
	if err := copyRows("products", []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at"}, d.Products, func(i int) []any {
		id := int64(i)
		return []any{id, articleNumber(id), fmt.Sprintf("%s %s %d", adjs[i%len(adjs)], kinds[(i/len(adjs))%len(kinds)], i),
			int64((i-1)%d.Categories + 1), int64(99 + (i*7919)%10000), now}
	}); err != nil {
		return err
	}
	fmt.Fprintf(out, "seed: %d categories, %d stores, %d products\n", d.Categories, d.Stores, d.Products)

	// Stock: products split into contiguous ranges, one COPY per worker.
	workers = max(1, min(workers, d.Products))
	bar := newProgress(out, "stock", d.StockRows())
	g, gctx := errgroup.WithContext(ctx)
	per := (d.Products + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*per+1, min((w+1)*per, d.Products)
		if lo > hi {
			break
		}
		g.Go(func() error {
			p, s := int64(lo), 1
			_, err := pool.CopyFrom(gctx, pgx.Identifier{"stock"},
				[]string{"article_number", "uom", "store_code", "quantity", "updated_at"},
				pgx.CopyFromFunc(func() ([]any, error) {
					if p > int64(hi) {
						return nil, nil
					}
					row := []any{articleNumber(p), uomOf(p), storeCode(s), quantity(p, s), now}
					if s++; s > d.Stores {
						s, p = 1, p+1
					}
					bar.Add(1)
					return row, nil
				}))
			return err
		})
	}
	err := g.Wait()
	n, el := bar.finish()
	if err != nil {
		return fmt.Errorf("copying stock: %w", err)
	}
	fmt.Fprintf(out, "seed: %s stock rows in %v (%s rows/s)\n", thousands(n), el.Round(time.Millisecond), thousands(int64(float64(n)/el.Seconds())))
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) categories, stores, products, stock`); err != nil {
		return fmt.Errorf("vacuum analyze: %w", err)
	}
	fmt.Fprintf(out, "seed: done in %v\n", time.Since(start).Round(time.Millisecond))
	return nil
}
