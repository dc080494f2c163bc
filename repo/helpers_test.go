package repo_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

// Product is a row of the products table of the migrations package.
type Product struct {
	ID            int64     `db:"id"`
	ArticleNumber string    `db:"article_number"`
	Name          string    `db:"name"`
	CategoryID    int64     `db:"category_id"`
	PriceCents    int64     `db:"price_cents"`
	UpdatedAt     time.Time `db:"updated_at"`
	Version       int64     `db:"version"`
}

var productTable = repo.Table[Product, int64]{
	Name:    "products",
	Key:     []string{"id"},
	Columns: []string{"id", "article_number", "name", "category_id", "price_cents", "updated_at", "version"},
	Version: "version",
}

// StockKey is the composite key of the stock table.
type StockKey struct {
	ArticleNumber string
	UOM           string
	StoreCode     string
}

// Stock is a row of the stock table.
type Stock struct {
	ArticleNumber string    `db:"article_number"`
	UOM           string    `db:"uom"`
	StoreCode     string    `db:"store_code"`
	Quantity      int32     `db:"quantity"`
	UpdatedAt     time.Time `db:"updated_at"`
	Version       int64     `db:"version"`
}

var stockTable = repo.Table[Stock, StockKey]{
	Name:    "stock",
	Key:     []string{"article_number", "uom", "store_code"},
	Columns: []string{"article_number", "uom", "store_code", "quantity", "updated_at", "version"},
	Version: "version",
}

// env is one test's servers (see testenv.Env).
type env struct{ *testenv.Env }

func newEnv(t testing.TB) *env { return &env{testenv.New(t)} }

// hookLog collects CacheError events (see testenv.HookLog).
type hookLog = testenv.HookLog

var (
	cacheClient  = testenv.CacheClient
	mustRepairer = testenv.MustRepairer
	aggCache     = testenv.AggCache
	withCache    = testenv.WithCache
)

func (e *env) products(t testing.TB, o *repo.Options) *repo.Store[Product, int64] {
	t.Helper()
	if o == nil {
		o = e.Opts(nil)
	}
	s, err := repo.New(e.Pool, e.MC, productTable, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *env) insertProduct(t testing.TB, id int64, name string, price int64) {
	t.Helper()
	e.Exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES ($1, $2, $3, 1, $4)`,
		id, "A"+name, name, price)
}

// hookDB wraps a DB and calls after (if set) once each Query has run, before
// its rows are read, so tests can hold a reader between its database read
// (the snapshot is taken) and its cache fill.
type hookDB struct {
	repo.Beginner
	after func(sql string)
}

func (h *hookDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := h.Beginner.Query(ctx, sql, args...)
	if h.after != nil {
		h.after(sql)
	}
	return rows, err
}

func startPrivateMemcached(t testing.TB, args ...string) *repotest.MemcachedProcess {
	t.Helper()
	return repotest.StartMemcached(t, args...)
}
