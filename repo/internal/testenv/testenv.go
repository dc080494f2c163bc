// Package testenv is what the tests of repo, repo/aggregate and
// repo/invalidation share: a fresh migrated database and a memcached client
// with a namespace of their own (from repotest), hook recorders and database
// wrappers that stop an operation between its steps. It is imported by
// tests only.
package testenv

import (
	"context"
	"sync"
	"sync/atomic"
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

// Env is one test's servers: a fresh migrated database (the library's tables
// and the catalogue, with two categories and two stores), a pool, a
// memcached client and a key namespace of its own.
type Env struct {
	URL    string
	Pool   *pgxpool.Pool
	MC     *memclient.Client
	NS     string
	MCAddr string
}

// New returns the servers of one test; they are cleaned up with it.
func New(t testing.TB) *Env {
	t.Helper()
	return NewAt(t, repotest.NewDatabase(t))
}

// NewAt is New over the database at url (a server of the test's own): the
// library's migrations and the catalogue's seed rows, with the shared
// memcached.
func NewAt(t testing.TB, url string) *Env {
	t.Helper()
	if err := migrations.Up(url); err != nil {
		t.Fatalf("migrations.Up: %v", err)
	}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	addr := repotest.Memcached(t)
	mc, err := CacheClient(64, time.Second, addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &Env{URL: url, Pool: pool, MC: mc, NS: repotest.Namespace(t), MCAddr: addr}
	e.Exec(t, `INSERT INTO categories (id, name) VALUES (1, 'tools'), (2, 'garden')`)
	e.Exec(t, `INSERT INTO stores (code, name, city) VALUES ('S001', 'North', 'Leeds'), ('S002', 'South', 'Bath')`)
	return e
}

// Exec runs sql on the pool, failing the test on error.
func (e *Env) Exec(t testing.TB, sql string, args ...any) pgconn.CommandTag {
	t.Helper()
	tag, err := e.Pool.Exec(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return tag
}

// Opts returns store options in the test's namespace, reporting to h if it
// is not nil.
func (e *Env) Opts(h *HookLog) *repo.Options {
	o := &repo.Options{Namespace: e.NS}
	if h != nil {
		o.Hooks.Event = h.Hook
	}
	return o
}

// CacheClient returns a memcached client for servers with n idle
// connections per server and the given round-trip timeout.
func CacheClient(n int, timeout time.Duration, servers ...string) (*memclient.Client, error) {
	return memclient.New(memclient.Config{Servers: servers, MaxIdleConns: n, Timeout: timeout})
}

// MustRepairer returns a Repairer of the outbox in db for cache.
func MustRepairer(db invalidation.DB, cache repo.Cache, cfg invalidation.RepairerConfig) *invalidation.Repairer {
	r, err := invalidation.NewRepairer(db, cache, cfg)
	if err != nil {
		panic(err)
	}
	return r
}

// AggCache returns the aggregate configuration of the same fields of o.
func AggCache(o *repo.Options) aggregate.CacheConfig {
	if o == nil {
		return aggregate.CacheConfig{}
	}
	return aggregate.CacheConfig{Namespace: o.Namespace, TTL: o.TTL, Jitter: o.Jitter, LeaseTTL: o.LeaseTTL,
		LeaseWait: o.LeaseWait, MaxItemSize: o.MaxItemSize, CASRetries: o.CASRetries,
		BreakerFailures: o.BreakerFailures, BreakerCooldown: o.BreakerCooldown, Hooks: o.Hooks}
}

// HookLog collects the CacheError events reported to Hooks.Event: the step,
// key and cause of each. It is safe for concurrent use.
type HookLog struct {
	mu     sync.Mutex
	events []HookEvent
}

// HookEvent is one CacheError event.
type HookEvent struct {
	Op, Key string // Op is the event's step
	Err     error
}

// Hook is a Hooks.Event that records CacheError events.
func (h *HookLog) Hook(_ context.Context, e observe.Event) {
	if e.Kind != observe.CacheError {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, HookEvent{string(e.Step), e.Key, e.Err})
}

// All returns the events recorded so far.
func (h *HookLog) All() []HookEvent {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]HookEvent(nil), h.events...)
}

// ScanHookDB wraps a DB and calls After (if set) once a QueryRow's Scan or
// a Query's Close has finished, i.e. once the statement has completed and,
// outside a transaction, committed. Tests use it to stop an operation
// between its database step and its cache step.
type ScanHookDB struct {
	repo.Beginner
	After atomic.Pointer[func(sql string)]
}

func (h *ScanHookDB) hook(sql string) {
	if f := h.After.Load(); f != nil {
		(*f)(sql)
	}
}

// QueryRow runs sql and calls After once its row has been scanned.
func (h *ScanHookDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return hookRow{Row: h.Beginner.QueryRow(ctx, sql, args...), done: func() { h.hook(sql) }}
}

// Query runs sql and calls After once its rows are closed.
func (h *ScanHookDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := h.Beginner.Query(ctx, sql, args...)
	if err != nil {
		return rows, err
	}
	return &hookRows{Rows: rows, done: func() { h.hook(sql) }}, nil
}

type hookRow struct {
	pgx.Row
	done func()
}

func (r hookRow) Scan(dest ...any) error {
	err := r.Row.Scan(dest...)
	r.done()
	return err
}

type hookRows struct {
	pgx.Rows
	done func()
	once sync.Once
}

func (r *hookRows) Close() {
	r.Rows.Close()
	r.once.Do(r.done)
}

// LockRows begins a transaction that runs query (a SELECT ... FOR UPDATE)
// and so holds its rows' locks until the test ends or it is rolled back or
// committed.
func (e *Env) LockRows(t testing.TB, query string, args ...any) pgx.Tx {
	t.Helper()
	tx, err := e.Pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(context.Background(), query, args...); err != nil {
		t.Fatal(err)
	}
	return tx
}

// WaitForLockWait waits until some backend of the test database waits on a
// lock.
func (e *Env) WaitForLockWait(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		var n int
		err := e.Pool.QueryRow(context.Background(),
			`SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatal("no backend started waiting on a lock")
}

// WithCache returns cfg with the cache and outbox settings of o.
func WithCache(cfg aggregate.LeaderboardConfig, o *repo.Options) aggregate.LeaderboardConfig {
	cfg.Cache = AggCache(o)
	if o != nil {
		cfg.Repairer = o.Repairer
	}
	return cfg
}
