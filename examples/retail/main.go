// Command retail is the example service of cachedrepo: a retail catalogue
// (categories, products, 170 stores, stock keyed by article number + unit of
// measure + store code), a visitors counter and a game leaderboard, served
// over HTTP from PostgreSQL through memcached.
//
// Usage:
//
//	retail migrate                 apply the schema (golang-migrate, embedded)
//	retail seed [-scale 1]         load the catalogue with COPY (1 = 1,870,000 stock rows)
//	retail warm [-raw]             fill the cache from the database before traffic
//	retail serve                   run the HTTP API (graceful shutdown on SIGINT/SIGTERM)
//	retail load [-compare]         run the load test (and the report with -compare)
//	retail invalidator             keep the cache in line with changes made by SQL (the WAL invalidator)
//	retail cache add-node          pre-warm MEMCACHED_NEW_ADDR's new node (MEMCACHED_PHASE=write-both)
//	retail cache sweep             delete stale entries of moving keys from MEMCACHED_NEW_ADDR
//	retail healthcheck             exit 0 if the service at HTTP_ADDR is healthy
//
// Configuration comes from the environment (see config.go): DATABASE_URL,
// MEMCACHED_ADDR, MEMCACHED_NEW_ADDR and MEMCACHED_PHASE (a migration to
// another server list), HTTP_ADDR, CACHE=on|off, CACHE_NAMESPACE, CACHE_TTL,
// DB_MAX_CONNS, MIGRATE_ON_START, NEAR_CACHE_MAX_AGE.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/cachedrepo/cachedrepo/migrations"
)

const usage = `usage: retail <command> [flags]

commands:
  migrate       apply the schema migrations to DATABASE_URL
  seed          replace the catalogue with generated data (COPY); -scale 1 is 1,870,000 stock rows
  warm          fill memcached from the database in batches; -raw also measures plain Sets
  serve         run the HTTP API on HTTP_ADDR
  load          run the load generator; -compare runs it with CACHE=on and CACHE=off and writes a report
  invalidator   tail PostgreSQL's WAL and apply changes made behind the stores' backs to memcached
  cache         cache operations: add-node copies to the node MEMCACHED_NEW_ADDR adds the keys it will own
                (instances in MEMCACHED_PHASE=write-both; -node host:port, optional, is checked against the list);
                sweep deletes from MEMCACHED_NEW_ADDR the stale entries of keys a migration moves
  healthcheck   GET /healthz of the service on HTTP_ADDR (for container healthchecks)

Run 'retail <command> -h' for the flags of a command. Configuration is read
from DATABASE_URL, MEMCACHED_ADDR, MEMCACHED_NEW_ADDR, MEMCACHED_PHASE,
HTTP_ADDR, CACHE (on|off), CACHE_NAMESPACE, CACHE_TTL, DB_MAX_CONNS,
MIGRATE_ON_START and NEAR_CACHE_MAX_AGE.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], environ, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "retail:", err)
		}
		os.Exit(1)
	}
}

// run dispatches a subcommand; it is main without the process around it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("retail "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	switch cmd {
	case "migrate":
		if err := fs.Parse(args); err != nil {
			return err
		}
		cfg, err := loadConfig(getenv)
		if err != nil {
			return err
		}
		if err := migrations.Up(cfg.DatabaseURL); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "migrate: schema up to date")
		return nil
	case "seed":
		scale := fs.Float64("scale", 1, "fraction of the full workload (11,000 products x 170 stores); 0.1 for a quick demo")
		workers := fs.Int("workers", 2, "parallel COPY connections for the stock rows")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return runSeed(ctx, getenv, log, *scale, *workers, stdout)
	case "warm":
		batch := fs.Int("batch", 500, "rows per page (one SELECT, then one Store.Warm call)")
		workers := fs.Int("workers", 16, "concurrent Store.Warm calls (and raw Sets)")
		raw := fs.Bool("raw", false, "also measure a raw parallel gomemcache Set of as many values of the same size")
		out := fs.String("out", "", "write the results as JSON to this file")
		if err := fs.Parse(args); err != nil {
			return err
		}
		return runWarm(ctx, getenv, log, *batch, *workers, *raw, *out, stdout)
	case "serve":
		cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the service to this file until it stops")
		memProfile := fs.String("memprofile", "", "write a heap profile (allocations since start) to this file when the service stops")
		if err := fs.Parse(args); err != nil {
			return err
		}
		if *memProfile != "" {
			defer func() {
				if f, err := os.Create(*memProfile); err == nil {
					_ = pprof.Lookup("allocs").WriteTo(f, 0)
					f.Close()
				}
			}()
		}
		cfg, err := loadConfig(getenv)
		if err != nil {
			return err
		}
		if *cpuProfile != "" {
			f, err := os.Create(*cpuProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
		}
		return serve(ctx, cfg, log, nil)
	case "load":
		var o loadOptions
		o.register(fs)
		if err := fs.Parse(args); err != nil {
			return err
		}
		return runLoad(ctx, getenv, log, o, stdout, stderr)
	case "invalidator":
		slot := fs.String("slot", "retail_invalidator", "the logical replication slot (one invalidator holds it; others wait)")
		interval := fs.Duration("interval", 10*time.Second, "how often to log the invalidator's figures")
		if err := fs.Parse(args); err != nil {
			return err
		}
		cfg, err := loadConfig(getenv)
		if err != nil {
			return err
		}
		return runInvalidator(ctx, cfg, log, *slot, *interval, stdout)
	case "cache":
		return runCache(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		if err := fs.Parse(args); err != nil {
			return err
		}
		cfg, err := loadConfig(func(k string) string {
			if k == envDatabaseURL { // not needed to ask the service
				return "unused"
			}
			return getenv(k)
		})
		if err != nil {
			return err
		}
		return healthcheck(ctx, cfg.HTTPAddr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// serve runs the HTTP API until ctx ends, then shuts down gracefully:
// in-flight requests get up to 10s to finish. If ready is not nil, the
// listener's address is sent on it once the service accepts connections.
func serve(ctx context.Context, cfg config, log *slog.Logger, ready chan<- string) error {
	if cfg.MigrateOnStart {
		if err := migrations.Up(cfg.DatabaseURL); err != nil {
			return err
		}
	}
	a, err := newApp(ctx, cfg, log, int(cfg.DBMaxConns)*2)
	if err != nil {
		return err
	}
	defer a.close()
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("%s: %w", envHTTPAddr, err)
	}
	srv := &http.Server{
		Handler:           a.handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	cache := "on"
	if !cfg.Cache {
		cache = "off"
	}
	attrs := []any{"addr", ln.Addr().String(), "cache", cache, "memcached", cfg.MemcachedAddrs, "db_max_conns", cfg.DBMaxConns}
	if a.mig != nil {
		attrs = append(attrs, "memcached_new", cfg.MemcachedNewAddrs, "memcached_phase", a.mig.Phase().String())
	}
	log.Info("serving", attrs...)
	if ready != nil {
		ready <- ln.Addr().String()
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// healthcheck asks the service on addr for /healthz.
func healthcheck(ctx context.Context, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s=%q: %w", envHTTPAddr, addr, err)
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(host, port)+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("unhealthy: %s %s", resp.Status, body)
	}
	return nil
}

// runSeed loads the data set of the given scale and makes cached rows from
// any earlier seed unreachable.
func runSeed(ctx context.Context, getenv func(string) string, log *slog.Logger, scale float64, workers int, out io.Writer) error {
	d, err := datasetFor(scale)
	if err != nil {
		return err
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	cfg.DBMaxConns = int32(max(4, workers+1))
	a, err := newApp(ctx, cfg, log, 4)
	if err != nil {
		return err
	}
	defer a.close()
	if err := seed(ctx, a.pool, d, workers, out); err != nil {
		return err
	}
	if err := a.agg.seed(ctx, a.pool, out); err != nil {
		return err
	}
	if cfg.Cache {
		// The rows changed behind the stores' backs: start a new key
		// generation so no process serves a row cached before the seed.
		if err := a.cat.invalidateAll(ctx); err != nil {
			return fmt.Errorf("seed: loaded, but the cache still holds the old catalogue: %w", err)
		}
		fmt.Fprintln(out, "seed: cached catalogue invalidated (new key generation)")
	}
	return nil
}

// warmReport is what warm -out writes, read back by load -compare's report.
type warmReport struct {
	Tables     []warmResult `json:"tables"`
	Rows       int64        `json:"rows"`
	Seconds    float64      `json:"seconds"`
	RowsPerSec float64      `json:"rows_per_sec"`
	// Raw* are the plain-Set baseline, when measured.
	RawSets       int64   `json:"raw_sets,omitempty"`
	RawSetsPerSec float64 `json:"raw_sets_per_sec,omitempty"`
	RawValueBytes int     `json:"raw_value_bytes,omitempty"`
	RawKeyBytes   int     `json:"raw_key_bytes,omitempty"`
	Ratio         float64 `json:"ratio,omitempty"` // stock rows/s over raw Sets/s
	StockPerSec   float64 `json:"stock_rows_per_sec"`
	Workers       int     `json:"workers"`
	Batch         int     `json:"batch"`
}

func runWarm(ctx context.Context, getenv func(string) string, log *slog.Logger, batch, workers int, raw bool, outFile string, out io.Writer) error {
	if batch < 1 || workers < 1 {
		return errors.New("warm: -batch and -workers must be positive")
	}
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if !cfg.Cache {
		return fmt.Errorf("warm: %s=off: there is no cache to warm", envCache)
	}
	cfg.DBMaxConns = int32(workers + 2)
	a, err := newApp(ctx, cfg, log, workers*2)
	if err != nil {
		return err
	}
	defer a.close()

	rep := warmReport{Workers: workers, Batch: batch}
	var stockKey StockKey
	var stockRows int64
	if raw {
		// The baseline first: its values expire after a minute and, being
		// older, are the first evicted if memory runs short during the warm-up.
		if err := a.pool.QueryRow(ctx, `SELECT count(*) FROM stock`).Scan(&stockRows); err != nil {
			return err
		}
		if err := a.pool.QueryRow(ctx, `SELECT article_number, uom, store_code FROM stock LIMIT 1`).Scan(
			&stockKey.ArticleNumber, &stockKey.UOM, &stockKey.StoreCode); err != nil {
			return fmt.Errorf("warm -raw: no stock rows to size the values by (seed first): %w", err)
		}
		// Size the baseline's values like a cached stock row: read one
		// through the store, then look at its item.
		if _, err := a.cat.stock.Get(ctx, stockKey); err != nil {
			return err
		}
		it, err := a.cache.Get(a.cat.stock.Key(stockKey))
		if err != nil {
			return fmt.Errorf("warm -raw: reading a cached stock row back: %w", err)
		}
		rep.RawKeyBytes, rep.RawValueBytes = len(it.Key), len(it.Value)
		r, err := rawSetRate(ctx, out, a.cache, stockRows, rep.RawKeyBytes, rep.RawValueBytes, workers)
		if err != nil {
			return err
		}
		rep.RawSets, rep.RawSetsPerSec = r.Rows, r.Rate()
		// Start the warm-up from an empty catalogue cache, as after a
		// catalogue rebuild.
		if err := a.cat.invalidateAll(ctx); err != nil {
			return err
		}
	}
	results, err := warmAll(ctx, a, out, batch, workers)
	if err != nil {
		return err
	}
	rep.Tables = results
	var secs float64
	for _, r := range results {
		rep.Rows += r.Rows
		secs += r.Elapsed.Seconds()
		if r.Table == "stock" {
			rep.StockPerSec = r.Rate()
		}
	}
	rep.Seconds, rep.RowsPerSec = secs, float64(rep.Rows)/max(secs, 1e-9)
	fmt.Fprintf(out, "warm: %s rows in %.1fs: %s rows/s (stock: %s rows/s, %d workers x %d rows per Warm call)\n",
		thousands(rep.Rows), secs, thousands(int64(rep.RowsPerSec)), thousands(int64(rep.StockPerSec)), workers, batch)
	if raw {
		rep.Ratio = rep.StockPerSec / rep.RawSetsPerSec
		fmt.Fprintf(out, "warm: raw parallel Set of %s values of %d bytes: %s sets/s; warm-up/raw = %.2f\n",
			thousands(rep.RawSets), rep.RawValueBytes, thousands(int64(rep.RawSetsPerSec)), rep.Ratio)
	}
	if outFile != "" {
		if err := os.MkdirAll(filepath.Dir(outFile), 0o755); err != nil {
			return err
		}
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(outFile, append(b, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}
