package repo_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/aggregate"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
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

// env is one test's servers: a fresh migrated database, a pool, a memcached
// client and a key namespace of its own.
type env struct {
	url   string
	pool  *pgxpool.Pool
	mc    *memclient.Client
	ns    string
	mcAdr string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	url := repotest.NewDatabase(t)
	if err := migrations.Up(url); err != nil {
		t.Fatalf("migrations.Up: %v", err)
	}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	addr := repotest.Memcached(t)
	mc, err := cacheClient(64, time.Second, addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{url: url, pool: pool, mc: mc, ns: repotest.Namespace(t), mcAdr: addr}
	e.exec(t, `INSERT INTO categories (id, name) VALUES (1, 'tools'), (2, 'garden')`)
	e.exec(t, `INSERT INTO stores (code, name, city) VALUES ('S001', 'North', 'Leeds'), ('S002', 'South', 'Bath')`)
	return e
}

func (e *env) exec(t testing.TB, sql string, args ...any) pgconn.CommandTag {
	t.Helper()
	tag, err := e.pool.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag
}

// cacheClient returns a memcached client for servers with n idle
// connections per server and the given round-trip timeout.
func cacheClient(n int, timeout time.Duration, servers ...string) (*memclient.Client, error) {
	return memclient.New(memclient.Config{Servers: servers, MaxIdleConns: n, Timeout: timeout})
}

// mustRepairer returns a Repairer of the outbox in db for cache.
func mustRepairer(db invalidation.DB, cache repo.Cache, cfg invalidation.RepairerConfig) *invalidation.Repairer {
	r, err := invalidation.NewRepairer(db, cache, cfg)
	if err != nil {
		panic(err)
	}
	return r
}

// aggCache returns the aggregate configuration of the same fields of o.
func aggCache(o *repo.Options) aggregate.CacheConfig {
	if o == nil {
		return aggregate.CacheConfig{}
	}
	return aggregate.CacheConfig{Namespace: o.Namespace, TTL: o.TTL, Jitter: o.Jitter, LeaseTTL: o.LeaseTTL,
		LeaseWait: o.LeaseWait, MaxItemSize: o.MaxItemSize, CASRetries: o.CASRetries,
		BreakerFailures: o.BreakerFailures, BreakerCooldown: o.BreakerCooldown, Hooks: o.Hooks}
}

// withCache returns cfg with the cache and outbox settings of o.
func withCache(cfg aggregate.LeaderboardConfig, o *repo.Options) aggregate.LeaderboardConfig {
	cfg.Cache = aggCache(o)
	if o != nil {
		cfg.Repairer = o.Repairer
	}
	return cfg
}

// hookLog collects the CacheError events reported to Hooks.Event: the
// step, key and cause of each.
type hookLog struct {
	mu     sync.Mutex
	events []hookEvent
}

type hookEvent struct {
	op, key string
	err     error
}

func (h *hookLog) hook(_ context.Context, e observe.Event) {
	if e.Kind != observe.CacheError {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, hookEvent{string(e.Step), e.Key, e.Err})
}

func (h *hookLog) all() []hookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]hookEvent(nil), h.events...)
}

func (e *env) opts(h *hookLog) *repo.Options {
	o := &repo.Options{Namespace: e.ns}
	if h != nil {
		o.Hooks.Event = h.hook
	}
	return o
}

func (e *env) products(t testing.TB, o *repo.Options) *repo.Store[Product, int64] {
	t.Helper()
	if o == nil {
		o = e.opts(nil)
	}
	s, err := repo.New(e.pool, e.mc, productTable, o)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *env) insertProduct(t testing.TB, id int64, name string, price int64) {
	t.Helper()
	e.exec(t, `INSERT INTO products (id, article_number, name, category_id, price_cents) VALUES ($1, $2, $3, 1, $4)`,
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
