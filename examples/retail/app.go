package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

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
	mc      *memclient.Client // nil when CACHE=off
	cache   repo.Cache        // mc, or offCache{} when CACHE=off
	queries *queryCounter
	cat     *catalog
	agg     *aggregates
	metrics *metrics
	prom    *repoprom.Collector // the library's hooks as Prometheus metrics
}

// newApp connects to Postgres (pool of cfg.DBMaxConns, with the query
// counter as tracer) and, unless caching is off, builds a memcached client
// sized for concurrency goroutines.
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
		if a.mc, err = memclient.New(memclient.Config{Servers: cfg.MemcachedAddrs, MaxIdleConns: concurrency, Timeout: 500 * time.Millisecond}); err != nil {
			a.pool.Close()
			return nil, fmt.Errorf("%s: %w", envMemcachedAddr, err)
		}
		a.cache = a.mc
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
	if a.cat, err = newCatalog(a.pool, a.cache, opts); err != nil {
		a.close()
		return nil, err
	}
	if a.agg, err = newAggregates(a.pool, a.cache, opts); err != nil {
		a.close()
		return nil, err
	}
	a.metrics = newMetrics(a.queries, a.stats, a.prom)
	return a, nil
}

// stats gathers the observe.Stats of every store, query and aggregate.
func (a *app) stats() map[string]observe.Stats {
	m := a.cat.stats()
	for k, v := range a.agg.stats() {
		m[k] = v
	}
	return m
}

// ping checks Postgres and, unless caching is off, memcached.
func (a *app) ping(ctx context.Context) error {
	if err := a.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if a.mc != nil {
		if err := a.mc.Ping(); err != nil {
			return fmt.Errorf("memcached: %w", err)
		}
	}
	return nil
}

// close releases the pool and the cache client's connections.
func (a *app) close() {
	if a.mc != nil {
		_ = a.mc.Close()
	}
	a.pool.Close()
}
