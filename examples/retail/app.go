package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/cachedrepo/cachedrepo/repo/repoprom"
)

// app is everything a subcommand needs: the pool, the cache client, the
// repositories and the metrics. Build it with newApp and close it with close.
type app struct {
	cfg     config
	log     *slog.Logger
	pool    *pgxpool.Pool
	mc      *memclient.Client    // MEMCACHED_ADDR's ring; nil when CACHE=off
	mcNew   *memclient.Client    // MEMCACHED_NEW_ADDR's ring during a migration, else nil
	mig     *memclient.Migration // from mc to mcNew in MEMCACHED_PHASE, else nil
	cache   repo.Cache           // mig, mc, or offCache{} when CACHE=off
	queries *queryCounter
	cat     *catalog
	agg     *aggregates
	metrics *metrics
	prom    *repoprom.Collector // the library's hooks as Prometheus metrics
	near    *repo.NearCache     // in front of the catalogue, or nil
	nearEnd func()              // stops the near-cache's listener
}

// newApp connects to Postgres (pool of cfg.DBMaxConns, with the query
// counter as tracer) and, unless caching is off, builds a memcached client
// sized for concurrency goroutines: over MEMCACHED_ADDR, or, while
// MEMCACHED_NEW_ADDR is set, a memclient.Migration to that ring in
// MEMCACHED_PHASE, which every store, aggregate and the WAL invalidator then
// use.
func newApp(ctx context.Context, cfg config, log *slog.Logger, concurrency int) (*app, error) {
	pc, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", envDatabaseURL, err)
	}
	pc.MaxConns = cfg.DBMaxConns
	a := &app{cfg: cfg, log: log, queries: &queryCounter{}}
	pc.ConnConfig.Tracer = a.queries
	if a.pool, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		return nil, fmt.Errorf("connecting to Postgres: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := a.pool.Ping(pingCtx); err != nil {
		a.pool.Close()
		return nil, fmt.Errorf("connecting to Postgres: %w", err)
	}
	if cfg.Cache {
		if a.mc, a.mcNew, a.mig, err = newMemcache(cfg, concurrency, 500*time.Millisecond); err != nil {
			a.pool.Close()
			return nil, err
		}
		a.cache = a.mc
		if a.mig != nil {
			a.cache = a.mig
		}
	} else {
		a.cache = offCache{}
	}
	a.prom = repoprom.New("")
	opts := &repo.Options{
		Namespace: cfg.Namespace,
		TTL:       cfg.CacheTTL,
		// Hooks: events and operation latencies on /metrics (repoprom), and
		// failed cache steps in the debug log.
		Hooks: observe.Join(a.prom.Hooks(), observe.Hooks{Event: func(ctx context.Context, e observe.Event) {
			if e.Kind == observe.CacheError && !errors.Is(e.Err, repo.ErrRetriesExhausted) {
				log.Debug("cache step failed; served from Postgres", "op", e.Op, "step", e.Step, "key", e.Key, "err", e.Err)
			}
		}}),
	}
	catOpts := opts
	if cfg.Cache && cfg.NearMaxAge > 0 {
		// The hot catalogue (products, categories, stores) reads through a
		// near-cache, invalidated by every instance's writes (NOTIFY).
		a.near, err = repo.NewNearCache(repo.NearConfig{
			Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, cfg.DatabaseURL) },
			DB:      a.pool, Channel: cfg.Namespace + "_near", MaxAge: cfg.NearMaxAge, Size: 100_000,
		})
		if err != nil {
			a.close()
			return nil, err
		}
		nctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		go func() { defer close(done); _ = a.near.Run(nctx) }()
		a.nearEnd = func() { cancel(); <-done }
		listenCtx, stop := context.WithTimeout(ctx, 10*time.Second)
		defer stop()
		for !a.near.Listening() && listenCtx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
		}
		c := *opts
		c.Near = a.near
		catOpts = &c
	}
	if a.cat, err = newCatalog(a.pool, a.cache, catOpts); err != nil {
		a.close()
		return nil, err
	}
	if a.agg, err = newAggregates(a.pool, a.cache, opts, cfg.Cache); err != nil {
		a.close()
		return nil, err
	}
	a.metrics = newMetrics(a.queries, a.stats, a.prom)
	if a.near != nil {
		a.metrics.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: metricNearHits, Help: "Reads of the catalogue answered by the near-cache (not counted as cache hits).",
		}, func() float64 { return float64(a.near.Hits()) }))
	}
	return a, nil
}

// newMemcache returns the client over cfg's MEMCACHED_ADDR and, when
// MEMCACHED_NEW_ADDR is set, the client over that ring and the Migration
// between them in MEMCACHED_PHASE (else nil and nil); conns idle connections
// per server, timeout per round trip.
func newMemcache(cfg config, conns int, timeout time.Duration) (from, to *memclient.Client, m *memclient.Migration, err error) {
	if from, err = memclient.New(memclient.Config{Servers: cfg.MemcachedAddrs, MaxIdleConns: conns, Timeout: timeout}); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", envMemcachedAddr, err)
	}
	if cfg.MemcachedNewAddrs == nil {
		return from, nil, nil, nil
	}
	if to, err = memclient.New(memclient.Config{Servers: cfg.MemcachedNewAddrs, MaxIdleConns: conns, Timeout: timeout}); err != nil {
		from.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", envMemcachedNewAddr, err)
	}
	if m, err = memclient.NewMigration(from, to, cfg.MemcachedPhase); err != nil {
		from.Close()
		to.Close()
		return nil, nil, nil, fmt.Errorf("%s: %w", envMemcachedPhase, err)
	}
	return from, to, m, nil
}

// stats gathers the observe.Stats of every store, query and aggregate.
func (a *app) stats() map[string]observe.Stats {
	m := a.cat.stats()
	for k, v := range a.agg.stats() {
		m[k] = v
	}
	return m
}

// ping checks Postgres and, unless caching is off, memcached: during a
// migration, the rings its phase reads or writes.
func (a *app) ping(ctx context.Context) error {
	if err := a.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if a.mc != nil && (a.mig == nil || a.mig.Phase() < memclient.PhaseNew) {
		if err := a.mc.Ping(); err != nil {
			return fmt.Errorf("memcached: %w", err)
		}
	}
	if a.mig != nil && a.mig.Phase() > memclient.PhaseOld {
		if err := a.mcNew.Ping(); err != nil {
			return fmt.Errorf("memcached (%s): %w", envMemcachedNewAddr, err)
		}
	}
	return nil
}

// close releases the pool and the cache client's connections.
func (a *app) close() {
	if a.nearEnd != nil {
		a.nearEnd()
	}
	if a.mc != nil {
		_ = a.mc.Close()
	}
	if a.mcNew != nil {
		_ = a.mcNew.Close()
	}
	a.pool.Close()
}
