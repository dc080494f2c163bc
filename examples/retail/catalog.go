package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/examples/retail/catalogdb"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Category is a row of the categories table.
type Category struct {
	ID      int64  `db:"id" json:"id"`
	Name    string `db:"name" json:"name"`
	Version int64  `db:"version" json:"version"`
}

// Product is a row of the products table.
type Product struct {
	ID            int64     `db:"id" json:"id"`
	ArticleNumber string    `db:"article_number" json:"article_number"`
	Name          string    `db:"name" json:"name"`
	CategoryID    int64     `db:"category_id" json:"category_id"`
	PriceCents    int64     `db:"price_cents" json:"price_cents"`
	UpdatedAt     time.Time `db:"updated_at" json:"updated_at"`
	Version       int64     `db:"version" json:"version"`
}

// Shop is a row of the stores table (named Shop so as not to read like a
// repo.Store).
type Shop struct {
	Code    string `db:"code" json:"code"`
	Name    string `db:"name" json:"name"`
	City    string `db:"city" json:"city"`
	Version int64  `db:"version" json:"version"`
}

// Stock is a row of the stock table: the quantity of one article, in one
// unit of measure, in one store.
type Stock struct {
	ArticleNumber string    `db:"article_number" json:"article_number"`
	UOM           string    `db:"uom" json:"uom"`
	StoreCode     string    `db:"store_code" json:"store_code"`
	Quantity      int32     `db:"quantity" json:"quantity"`
	UpdatedAt     time.Time `db:"updated_at" json:"updated_at"`
	Version       int64     `db:"version" json:"version"`
}

// StockKey is the stock table's composite primary key, its fields in the
// order of Table.Key.
type StockKey struct {
	ArticleNumber string
	UOM           string
	StoreCode     string
}

// catalog is the cached repository of the example: one repo.Store per table
// and short-TTL cached queries for the listings. Every field is safe for
// concurrent use.
type catalog struct {
	categories *repo.Store[Category, int64]
	products   *repo.Store[Product, int64]
	shops      *repo.Store[Shop, string]
	stock      *repo.Store[Stock, StockKey]

	// sqlcProducts is the products table over sqlc's generated code (sqlc.go).
	sqlcProducts *repo.Store[catalogdb.Product, int64]

	// categoryPage caches the product ids of one category page (args:
	// category id, limit) for a few seconds; the products themselves come
	// from the products store, so a price change shows at once.
	categoryPage *repo.Query[categoryPageArgs, []int64]
	// storeCodes caches the list of store codes, for stock across stores.
	storeCodes *repo.Query[struct{}, []string]
}

// listTTL is how long a cached listing lives: the article's "just set a
// short TTL of a few seconds" for lists that change with inserts.
const listTTL = 5 * time.Second

// newCatalog builds the stores over db and cache with opts.
func newCatalog(db repo.DB, cache repo.Cache, opts *repo.Options) (*catalog, error) {
	c := &catalog{}
	var err error
	if c.categories, err = repo.New(db, cache, repo.Table[Category, int64]{
		Name: "categories", Key: []string{"id"}, Columns: []string{"id", "name", "version"}, Version: "version",
	}, opts); err != nil {
		return nil, err
	}
	if c.products, err = repo.New(db, cache, repo.Table[Product, int64]{
		Name: "products", Key: []string{"id"},
		Columns: []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at", "version"},
		Version: "version",
	}, opts); err != nil {
		return nil, err
	}
	if c.sqlcProducts, err = repo.New(db, cache, sqlcProductsTable, opts); err != nil {
		return nil, err
	}
	if c.shops, err = repo.New(db, cache, repo.Table[Shop, string]{
		Name: "stores", Key: []string{"code"}, Columns: []string{"code", "name", "city", "version"}, Version: "version",
	}, opts); err != nil {
		return nil, err
	}
	if c.stock, err = repo.New(db, cache, repo.Table[Stock, StockKey]{
		Name:     "stock",
		Key:      []string{"article_number", "uom", "store_code"},
		Columns:  []string{"article_number", "uom", "store_code", "quantity", "updated_at", "version"},
		Version:  "version",
		KeyTypes: []string{"text", "text", "text"},
	}, opts); err != nil {
		return nil, err
	}
	if c.categoryPage, err = repo.NewQuery(cache, repo.QueryConfig[categoryPageArgs, []int64]{
		Name: "category-page", TTL: listTTL, Namespace: opts.Namespace, Hooks: opts.Hooks,
		Load: func(ctx context.Context, a categoryPageArgs) ([]int64, error) {
			rows, _ := db.Query(ctx, `SELECT id FROM products WHERE category_id = $1 ORDER BY id LIMIT $2`, a.Category, a.Limit)
			return pgx.CollectRows(rows, pgx.RowTo[int64])
		}}); err != nil {
		return nil, err
	}
	if c.storeCodes, err = repo.NewQuery(cache, repo.QueryConfig[struct{}, []string]{
		Name: "store-codes", TTL: listTTL, Namespace: opts.Namespace, Hooks: opts.Hooks,
		Load: func(ctx context.Context, _ struct{}) ([]string, error) {
			rows, _ := db.Query(ctx, `SELECT code FROM stores ORDER BY code`)
			return pgx.CollectRows(rows, pgx.RowTo[string])
		}}); err != nil {
		return nil, err
	}
	return c, nil
}

// productsInCategory returns up to limit products of a category, in id
// order: a cached page of ids, then one AppendMany for the rows.
func (c *catalog) productsInCategory(ctx context.Context, categoryID int64, limit int) ([]Product, error) {
	ids, err := c.categoryPage.Get(ctx, categoryPageArgs{Category: categoryID, Limit: limit})
	if err != nil {
		return nil, err
	}
	// A product deleted since the page was cached is skipped.
	return c.products.AppendMany(ctx, make([]Product, 0, len(ids)), ids)
}

// stockAcrossStores returns the stock of one article in every store that
// has a row for it, in store-code order.
func (c *catalog) stockAcrossStores(ctx context.Context, article, uom string) ([]Stock, error) {
	codes, err := c.storeCodes.Get(ctx, struct{}{})
	if err != nil {
		return nil, err
	}
	keys := make([]StockKey, len(codes))
	for i, code := range codes {
		keys[i] = StockKey{article, uom, code}
	}
	return c.stock.AppendMany(ctx, make([]Stock, 0, len(keys)), keys)
}

// stats returns every store's and query's counters by name, for /metrics.
func (c *catalog) stats() map[string]observe.Stats {
	return map[string]observe.Stats{
		"categories":    c.categories.Stats(),
		"products":      c.products.Stats(),
		"stores":        c.shops.Stats(),
		"stock":         c.stock.Stats(),
		"sqlc-products": c.sqlcProducts.Stats(),
		"category-page": c.categoryPage.Stats(),
		"store-codes":   c.storeCodes.Stats(),
	}
}

// invalidateAll makes every cached row of the catalogue unreachable (after a
// bulk load outside the stores, such as seed).
func (c *catalog) invalidateAll(ctx context.Context) error {
	for name, f := range map[string]func(context.Context) error{
		"categories": c.categories.InvalidateAll, "products": c.products.InvalidateAll,
		"stores": c.shops.InvalidateAll, "stock": c.stock.InvalidateAll,
	} {
		if err := f(ctx); err != nil {
			return fmt.Errorf("invalidating %s: %w", name, err)
		}
	}
	return nil
}

// categoryPageArgs are the arguments of the category-page query: its cache
// key is built from them, one part per field.
type categoryPageArgs struct {
	Category int64
	Limit    int
}
