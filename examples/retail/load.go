package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// loadOptions are the flags of retail load.
type loadOptions struct {
	URL      string
	Compare  bool
	Duration time.Duration
	Warmup   time.Duration
	Clients  int
	Skew     float64
	WritePct float64
	Out      string
	WarmJSON string
	Seed     uint64
	Rounds   int
}

func (o *loadOptions) register(fs *flag.FlagSet) {
	fs.StringVar(&o.URL, "url", "", "base URL of a running service (without -compare); default http://HTTP_ADDR")
	fs.BoolVar(&o.Compare, "compare", false, "start the service twice, with CACHE=on then CACHE=off, load each, and write the report")
	fs.DurationVar(&o.Duration, "duration", 20*time.Second, "measured duration of each run")
	fs.DurationVar(&o.Warmup, "warmup", 3*time.Second, "unmeasured load before each run's measurement")
	fs.IntVar(&o.Clients, "clients", 64, "concurrent clients (HTTP keep-alive connections)")
	fs.Float64Var(&o.Skew, "zipf", 1.1, "Zipf exponent s (> 1) of the product, article and player popularity")
	fs.Float64Var(&o.WritePct, "writes", 5, "percentage of requests that write (stock updates, visits, scores)")
	fs.StringVar(&o.Out, "out", "report", "directory for report.md, report.svg and results.json (-compare)")
	fs.StringVar(&o.WarmJSON, "warm-results", "", "JSON written by warm -out, to include in the report")
	fs.Uint64Var(&o.Seed, "seed", 1, "random seed of the request sequence")
	fs.IntVar(&o.Rounds, "rounds", 1, "with -compare: alternate on/off this many times and report each mode's median run (for noisy machines)")
}

// op is one kind of request of the mix.
type op struct {
	name   string
	weight float64 // share of requests, summing to 1 over the mix
	write  bool
}

// The request mix: about 95% reads across the endpoints and 5% writes
// (stock updates, visits, score submissions); weights are per mille and
// rescaled by -writes.
var baseMix = []struct {
	name  string
	perM  float64
	write bool
}{
	{"product", 400, false},
	{"category", 100, false},
	{"stock", 300, false},
	{"stock_across", 50, false},
	{"visits", 40, false},
	{"top", 40, false},
	{"rank", 20, false},
	{"update_stock", 30, true},
	{"visit", 15, true},
	{"score", 5, true},
}

// mix returns the request mix with writePct percent of writes.
func mix(writePct float64) ([]op, error) {
	if writePct < 0 || writePct > 100 {
		return nil, fmt.Errorf("-writes %v: want a percentage", writePct)
	}
	var r, w float64
	for _, m := range baseMix {
		if m.write {
			w += m.perM
		} else {
			r += m.perM
		}
	}
	ops := make([]op, len(baseMix))
	for i, m := range baseMix {
		share := m.perM / r * (1 - writePct/100)
		if m.write {
			share = m.perM / w * writePct / 100
		}
		ops[i] = op{name: m.name, weight: share, write: m.write}
	}
	return ops, nil
}

// keyspace is what the clients pick keys from, read from the database.
type keyspace struct {
	products   []productKey // by id order
	categories []int64
	stores     []string
	players    int
	board      string
}

type productKey struct {
	id      int64
	article string
	uom     string
}

// Leaderboard the load uses; seed fills it with leaderboardPlayers players.
const (
	loadBoard          = "global"
	leaderboardPlayers = 10000
)

func loadKeyspace(ctx context.Context, db *pgxpool.Pool) (*keyspace, error) {
	ks := &keyspace{players: leaderboardPlayers, board: loadBoard}
	rows, _ := db.Query(ctx, `SELECT p.id, p.article_number, s.uom FROM products p
		JOIN LATERAL (SELECT uom FROM stock WHERE stock.article_number = p.article_number LIMIT 1) s ON true
		ORDER BY p.id`)
	var err error
	if ks.products, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (productKey, error) {
		var k productKey
		err := r.Scan(&k.id, &k.article, &k.uom)
		return k, err
	}); err != nil {
		return nil, fmt.Errorf("reading product keys: %w", err)
	}
	rows, _ = db.Query(ctx, `SELECT id FROM categories ORDER BY id`)
	if ks.categories, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return nil, fmt.Errorf("reading category ids: %w", err)
	}
	rows, _ = db.Query(ctx, `SELECT code FROM stores ORDER BY code`)
	if ks.stores, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		return nil, fmt.Errorf("reading store codes: %w", err)
	}
	if len(ks.products) == 0 || len(ks.categories) == 0 || len(ks.stores) == 0 {
		return nil, errors.New("the catalogue is empty: run retail seed first")
	}
	return ks, nil
}

// sample is one measured request.
type sample struct {
	op      uint8
	status  int // 0: transport error
	latency time.Duration
}

// runResult is what one run measured.
type runResult struct {
	Label              string             `json:"label"`
	Cache              bool               `json:"cache"`
	Seconds            float64            `json:"seconds"`
	Clients            int                `json:"clients"`
	Requests           int64              `json:"requests"`
	Reads              int64              `json:"reads"`
	ServerErrors       int64              `json:"server_errors"` // 5xx and transport errors
	ClientErrors       int64              `json:"client_errors"` // 4xx
	Throughput         float64            `json:"throughput"`
	P50ms              float64            `json:"p50_ms"`
	P90ms              float64            `json:"p90_ms"`
	P99ms              float64            `json:"p99_ms"`
	MaxMs              float64            `json:"max_ms"`
	HitRatio           float64            `json:"hit_ratio"`       // near-cache and memcached hits of all cache lookups
	NearShare          float64            `json:"near_hit_share"`  // near-cache hits of all cache lookups
	NearHits           float64            `json:"near_cache_hits"` // near-cache hits
	DBQueries          float64            `json:"db_queries"`
	DBReadQueries      float64            `json:"db_read_queries"`
	QueriesPerRequest  float64            `json:"db_queries_per_request"`
	ReadQueriesPerRead float64            `json:"db_read_queries_per_read"`
	Hits               float64            `json:"cache_hits"`
	Misses             float64            `json:"cache_misses"`
	Fills              float64            `json:"cache_fills"`
	LeaseWaits         float64            `json:"lease_waits"`
	CASConflicts       float64            `json:"cas_conflicts"`
	CacheErrors        float64            `json:"cache_errors"`
	Ops                map[string]opStats `json:"ops"`
	Staleness          *stalenessResult   `json:"near_cache_staleness,omitempty"` // cache on, near-cache on
}

type opStats struct {
	Count int64   `json:"count"`
	P50ms float64 `json:"p50_ms"`
	P99ms float64 `json:"p99_ms"`
}

// loadRun drives one run of the mix against baseURL: clients goroutines,
// each with its own keep-alive connection and random source, for warmup
// (not measured) and then duration (measured). Latencies are kept as
// samples, so the percentiles are exact. The service's /metrics is read at
// the start and end of the measured window for the cache and database
// counters.
func loadRun(ctx context.Context, baseURL string, ks *keyspace, o loadOptions, label string) (runResult, error) {
	ops, err := mix(o.WritePct)
	if err != nil {
		return runResult{}, err
	}
	if o.Skew <= 1 {
		return runResult{}, fmt.Errorf("-zipf %v: want s > 1", o.Skew)
	}
	if o.Clients < 1 || o.Duration <= 0 {
		return runResult{}, errors.New("-clients and -duration must be positive")
	}
	cum := make([]float64, len(ops))
	var c float64
	for i, op := range ops {
		c += op.weight
		cum[i] = c
	}
	// Popularity ranks map to a fixed random permutation of the keys, so the
	// hot products are spread over the key space.
	perm := rand.New(rand.NewPCG(o.Seed, 0x5eed)).Perm(len(ks.products))
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: o.Clients, MaxIdleConnsPerHost: o.Clients, IdleConnTimeout: time.Minute,
			DisableCompression: true,
			DialContext:        (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		},
	}
	defer client.CloseIdleConnections()

	runCtx, cancel := context.WithTimeout(ctx, o.Warmup+o.Duration)
	defer cancel()
	start := time.Now()
	mStart, mEnd := start.Add(o.Warmup), start.Add(o.Warmup+o.Duration)

	var before, after map[string]float64
	var scrapeErr error
	var scrapes sync.WaitGroup
	scrapes.Add(1)
	go func() {
		defer scrapes.Done()
		scrape := func(at time.Time) map[string]float64 {
			select {
			case <-time.After(time.Until(at)):
			case <-ctx.Done():
				return nil
			}
			m, err := scrapeMetrics(context.WithoutCancel(ctx), client, baseURL)
			if err != nil && scrapeErr == nil {
				scrapeErr = err
			}
			return m
		}
		before = scrape(mStart)
		after = scrape(mEnd)
	}()

	results := make([][]sample, o.Clients)
	var wg sync.WaitGroup
	for ci := 0; ci < o.Clients; ci++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(o.Seed, uint64(ci)+1))
			zProd := rand.NewZipf(r, o.Skew, 1, uint64(len(ks.products)-1))
			zCat := rand.NewZipf(r, o.Skew, 1, uint64(max(1, len(ks.categories)-1)))
			zStore := rand.NewZipf(r, o.Skew, 4, uint64(len(ks.stores)-1))
			zPlayer := rand.NewZipf(r, o.Skew, 1, uint64(ks.players-1))
			hc := newConn(strings.TrimPrefix(baseURL, "http://"))
			defer hc.close()
			var body bytes.Buffer
			for runCtx.Err() == nil {
				x := r.Float64()
				oi, _ := slices.BinarySearch(cum, x)
				oi = min(oi, len(ops)-1)
				p := ks.products[perm[zProd.Uint64()]]
				method, path := http.MethodGet, ""
				body.Reset()
				switch ops[oi].name {
				case "product":
					path = "/products/" + strconv.FormatInt(p.id, 10)
				case "category":
					path = "/categories/" + strconv.FormatInt(ks.categories[min(int(zCat.Uint64()), len(ks.categories)-1)], 10) + "/products?limit=20"
				case "stock":
					path = "/stock/" + p.article + "/" + p.uom + "/" + ks.stores[zStore.Uint64()]
				case "stock_across":
					path = "/stock/" + p.article + "/" + p.uom
				case "visits":
					path = "/visits"
				case "top":
					path = "/boards/" + ks.board + "/top?n=10"
				case "rank":
					path = "/boards/" + ks.board + "/players/" + playerName(zPlayer.Uint64()) + "/rank"
				case "update_stock":
					method, path = http.MethodPost, "/stock/"+p.article+"/"+p.uom+"/"+ks.stores[zStore.Uint64()]
					fmt.Fprintf(&body, `{"quantity":%d}`, r.IntN(500))
				case "visit":
					method, path = http.MethodPost, "/visits"
				case "score":
					method, path = http.MethodPost, "/boards/"+ks.board+"/scores"
					fmt.Fprintf(&body, `{"player":%q,"score":%d}`, playerName(zPlayer.Uint64()), r.IntN(1_000_000))
				}
				t0 := time.Now()
				var b []byte
				if method == http.MethodPost {
					b = body.Bytes()
				}
				status := hc.do(runCtx, method, path, b)
				t1 := time.Now()
				if runCtx.Err() != nil && status == 0 {
					break // the run ended mid-request
				}
				if t0.After(mStart) && t1.Before(mEnd) {
					results[ci] = append(results[ci], sample{op: uint8(oi), status: status, latency: t1.Sub(t0)})
				}
			}
		}()
	}
	wg.Wait()
	scrapes.Wait()
	if scrapeErr != nil {
		return runResult{}, fmt.Errorf("reading %s/metrics: %w", baseURL, scrapeErr)
	}
	if before == nil || after == nil {
		return runResult{}, ctx.Err()
	}

	res := runResult{Label: label, Seconds: o.Duration.Seconds(), Clients: o.Clients, Ops: map[string]opStats{}}
	var all []time.Duration
	perOp := make([][]time.Duration, len(ops))
	for _, rs := range results {
		for _, s := range rs {
			res.Requests++
			if !ops[s.op].write {
				res.Reads++
			}
			switch {
			case s.status == 0 || s.status >= 500:
				res.ServerErrors++
			case s.status >= 400:
				res.ClientErrors++
			}
			all = append(all, s.latency)
			perOp[s.op] = append(perOp[s.op], s.latency)
		}
	}
	if res.Requests == 0 {
		return res, errors.New("no request completed in the measured window")
	}
	slices.Sort(all)
	res.Throughput = float64(res.Requests) / o.Duration.Seconds()
	res.P50ms, res.P90ms, res.P99ms = ms(percentile(all, 50)), ms(percentile(all, 90)), ms(percentile(all, 99))
	res.MaxMs = ms(all[len(all)-1])
	for i, l := range perOp {
		if len(l) == 0 {
			continue
		}
		slices.Sort(l)
		res.Ops[ops[i].name] = opStats{Count: int64(len(l)), P50ms: ms(percentile(l, 50)), P99ms: ms(percentile(l, 99))}
	}
	d := func(name string) float64 { return after[name] - before[name] }
	res.Cache = after["cache_on"] == 1
	res.DBQueries, res.DBReadQueries = d(metricDBQueries), d(metricDBReadQueries)
	res.Hits, res.Misses, res.Fills = d(metricCacheHits), d(metricCacheMisses), d(metricCacheFills)
	res.LeaseWaits, res.CASConflicts, res.CacheErrors = d(metricLeaseWaits), d(metricCASConflicts), d(metricCacheErrors)
	res.QueriesPerRequest = res.DBQueries / float64(res.Requests)
	res.ReadQueriesPerRead = res.DBReadQueries / float64(max(res.Reads, 1))
	res.NearHits = d(metricNearHits)
	if n := res.NearHits + res.Hits + res.Misses; n > 0 {
		res.HitRatio = (res.NearHits + res.Hits) / n
		res.NearShare = res.NearHits / n
	}
	return res, nil
}

func playerName(i uint64) string { return "player-" + strconv.FormatUint(i+1, 10) }

// percentile returns the p-th percentile of sorted samples (nearest rank).
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p/100+0.5) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// doRequest sends one request and returns its status (0 on a transport
// error), reading the body fully so the connection is reused.
func doRequest(ctx context.Context, c *http.Client, method, url string, body []byte) int {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// scrapeMetrics reads the service's /metrics and sums each metric of
// interest over its labels. The key "cache_on" is 1 when the service's
// health says the cache is on.
func scrapeMetrics(ctx context.Context, c *http.Client, baseURL string) (map[string]float64, error) {
	want := map[string]bool{metricDBQueries: true, metricDBReadQueries: true, metricCacheHits: true, metricNearHits: true,
		metricCacheMisses: true, metricCacheFills: true, metricLeaseWaits: true, metricCASConflicts: true, metricCacheErrors: true}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, _ := strings.Cut(line, " ")
		if i := strings.IndexByte(name, '{'); i >= 0 {
			// labels may hold spaces: take the value after the closing brace
			j := strings.LastIndexByte(line, '}')
			name, rest = line[:i], strings.TrimSpace(line[j+1:])
		}
		if !want[name] {
			continue
		}
		f, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metric line %q: %w", line, err)
		}
		m[name] += f
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if _, ok := m[metricDBQueries]; !ok {
		return nil, fmt.Errorf("%s missing: is this the retail service?", metricDBQueries)
	}
	// The cache mode, from /healthz.
	hreq, _ := http.NewRequestWithContext(ctx, http.MethodGet, baseURL+"/healthz", nil)
	if hresp, err := c.Do(hreq); err == nil {
		var h struct{ Cache string }
		_ = json.NewDecoder(hresp.Body).Decode(&h)
		hresp.Body.Close()
		if h.Cache == "on" {
			m["cache_on"] = 1
		}
	}
	return m, nil
}

// runLoad is retail load: one run against a running service, or with
// -compare the two runs and the report.
func runLoad(ctx context.Context, getenv func(string) string, log *slog.Logger, o loadOptions, stdout, stderr io.Writer) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	ks, err := loadKeyspace(ctx, pool)
	pool.Close()
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "load: %s products, %d categories, %d stores; %d clients, %v (+%v warm-up) per run, zipf s=%.2f, %.0f%% writes\n",
		thousands(int64(len(ks.products))), len(ks.categories), len(ks.stores), o.Clients, o.Duration, o.Warmup, o.Skew, o.WritePct)
	if !o.Compare {
		url := o.URL
		if url == "" {
			url = "http://" + dialAddr(cfg.HTTPAddr)
		}
		res, err := loadRun(ctx, url, ks, o, "run")
		if err != nil {
			return err
		}
		printRun(stdout, res)
		return nil
	}
	if o.URL != "" {
		return errors.New("load: -compare starts its own services; drop -url")
	}
	if o.Rounds < 1 {
		return errors.New("load: -rounds must be at least 1")
	}
	// Rounds alternate on, off, on, off...: on a shared machine, load from
	// elsewhere then hits both modes alike, and each mode's median run (by
	// throughput) is reported.
	byMode := map[string][]runResult{}
	for round := 0; round < o.Rounds; round++ {
		for _, cache := range []string{"on", "off"} {
			res, err := loadService(ctx, getenv, log, cfg, o, ks, cache, false, stderr)
			if err != nil {
				return fmt.Errorf("run with CACHE=%s: %w", cache, err)
			}
			printRun(stdout, res)
			byMode[cache] = append(byMode[cache], res)
		}
	}
	runs := []runResult{medianRun(byMode["on"]), medianRun(byMode["off"])}
	// The near-cache's staleness is measured in a run of its own, under the
	// same load: its probe needs a second instance of the service, which
	// would take CPU from the measured one in a throughput run (the
	// cache-off runs have no such instance).
	var probe *runResult
	if cfg.NearMaxAge > 0 {
		res, err := loadService(ctx, getenv, log, cfg, o, ks, "on", true, stderr)
		if err != nil {
			return fmt.Errorf("staleness run: %w", err)
		}
		res.Label = "staleness"
		printRun(stdout, res)
		probe = &res
	}
	var warm *warmReport
	if o.WarmJSON != "" {
		b, err := os.ReadFile(o.WarmJSON)
		if err != nil {
			return err
		}
		warm = new(warmReport)
		if err := json.Unmarshal(b, warm); err != nil {
			return fmt.Errorf("%s: %w", o.WarmJSON, err)
		}
	}
	rep := report{On: runs[0], Off: runs[1], Probe: probe, Warm: warm, Options: o, Keys: ks, When: time.Now().UTC()}
	paths, err := rep.write(o.Out)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout)
	fmt.Fprint(stdout, rep.summary())
	fmt.Fprintf(stdout, "\nreport: %s\n", strings.Join(paths, ", "))
	return nil
}

// dialAddr turns a listen address into one to dial.
func dialAddr(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// The environment of `retail load` that pins the service it starts.
const (
	envServiceCPUs  = "RETAIL_SERVICE_CPUS"  // taskset's CPU list for the service, e.g. 0-1; default: not pinned
	envServiceProcs = "RETAIL_SERVICE_PROCS" // the service's GOMAXPROCS; default: Go's
)

// loadService starts this binary's serve with CACHE=cache on a free port,
// waits for it to be healthy, runs the load, and stops it with SIGTERM
// (its graceful shutdown). With probe (for the cache and near-cache on), a
// second instance serves the staleness probe (see probeStaleness)
// meanwhile.
func loadService(ctx context.Context, getenv func(string) string, log *slog.Logger, cfg config, o loadOptions, ks *keyspace, cache string, probe bool, stderr io.Writer) (runResult, error) {
	base, stop, err := startService(ctx, getenv, cache, stderr)
	if err != nil {
		return runResult{}, err
	}
	log.Info("load: service up", "cache", cache, "addr", base)
	var st *stalenessResult
	var probing sync.WaitGroup
	probeCtx, endProbe := context.WithCancel(ctx)
	defer endProbe()
	if probe {
		other, stopOther, err := startService(ctx, getenv, cache, stderr)
		if err != nil {
			_ = stop()
			return runResult{}, fmt.Errorf("starting the staleness probe's instance: %w", err)
		}
		defer func() { _ = stopOther() }()
		st = new(stalenessResult)
		probing.Go(func() { *st = probeStaleness(probeCtx, base, other, ks, cfg.NearMaxAge, o.Seed) })
	}
	res, err := loadRun(ctx, base, ks, o, "cache "+cache)
	endProbe()
	probing.Wait()
	res.Staleness = st
	if serr := stop(); serr != nil && err == nil {
		err = fmt.Errorf("stopping the service: %w", serr)
	}
	return res, err
}

// startService starts this binary's serve with CACHE=cache on a free port
// (pinned as envServiceCPUs says) and waits until it is healthy. It returns
// the service's base URL and the function that stops it with SIGTERM.
func startService(ctx context.Context, getenv func(string) string, cache string, stderr io.Writer) (string, func() error, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	// The load generator runs on GOMAXPROCS=1 (make demo; DEMO_PIN=taskset
	// also pins it) so that it does not starve the service, which gets
	// GOMAXPROCS=envServiceProcs and, if set, the CPUs envServiceCPUs.
	env := append(os.Environ(), envHTTPAddr+"="+addr, envCache+"="+cache, envMigrateOnStart+"=false")
	if procs := getenv(envServiceProcs); procs != "" {
		env = append(env, "GOMAXPROCS="+procs)
	}
	cmd := exec.Command(exe, "serve")
	if cpus := getenv(envServiceCPUs); cpus != "" {
		cmd = exec.Command("taskset", "-c", cpus, exe, "serve")
	}
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = stderr, stderr
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	exited := make(chan struct{}) // closed once the process has exited, with waitErr set
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return waitErr
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("service did not stop within 20s of SIGTERM; killed")
		}
	}
	base := "http://" + addr
	if err := waitHealthy(ctx, base, exited, &waitErr); err != nil {
		_ = stop()
		return "", nil, err
	}
	return base, stop, nil
}

// waitHealthy waits until base answers /healthz, or the process (exited,
// then *waitErr) ends or 30s pass.
func waitHealthy(ctx context.Context, base string, exited <-chan struct{}, waitErr *error) error {
	deadline := time.Now().Add(30 * time.Second)
	c := &http.Client{Timeout: time.Second}
	for {
		if doRequest(ctx, c, http.MethodGet, base+"/healthz", nil) == http.StatusOK {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("service exited during startup: %v", *waitErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("service not healthy within 30s")
		}
	}
}

func printRun(w io.Writer, r runResult) {
	fmt.Fprintf(w, "%-10s %8.0f req/s  p50 %6.2f ms  p99 %6.2f ms  hit ratio %5.1f%% (near-cache %5.1f%%)  db queries/req %.3f (reads/read %.3f)  errors %d\n",
		r.Label, r.Throughput, r.P50ms, r.P99ms, 100*r.HitRatio, 100*r.NearShare, r.QueriesPerRequest, r.ReadQueriesPerRead, r.ServerErrors)
	if st := r.Staleness; st != nil {
		fmt.Fprintf(w, "%-10s near-cache staleness across instances: probes %d, reads %d, stale %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms, past the bound (%.0f ms) %d, errors %d\n",
			"", st.Probes, st.Reads, st.StaleReads, st.P50Ms, st.P99Ms, st.MaxMs, st.BoundMs, st.BeyondBound, st.Errors)
	}
}

// medianRun returns the run of median throughput (the lower middle one for
// an even count).
func medianRun(rs []runResult) runResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b runResult) int { return cmp.Compare(a.Throughput, b.Throughput) })
	return s[(len(s)-1)/2]
}
