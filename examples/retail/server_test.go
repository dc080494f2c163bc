package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/migrations"
	"github.com/cachedrepo/cachedrepo/repo/repotest"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func TestMain(m *testing.M) { os.Exit(repotest.Run(m)) }

// testDataset is small: 30 products in 2 categories, 3 stores.
var testDataset = dataset{Categories: 2, Products: 30, Stores: 3}

// newTestApp migrates and seeds a fresh database and returns the service
// over it and the shared memcached (own namespace), cache on or off, and
// without the near-cache, so that reads exercise memcached (see
// TestNearCacheInService for it).
func newTestApp(t *testing.T, cache bool, kv ...string) *app {
	t.Helper()
	ctx := context.Background()
	dbURL := repotest.NewDatabase(t)
	if err := migrations.Up(dbURL); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		envDatabaseURL: dbURL, envMemcachedAddr: repotest.Memcached(t),
		envCacheNamespace: repotest.Namespace(t), envDBMaxConns: "8", envCache: "on", envNearMaxAge: "0",
	}
	if !cache {
		env[envCache] = "off"
	}
	for i := 0; i+1 < len(kv); i += 2 {
		env[kv[i]] = kv[i+1]
	}
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := newApp(ctx, cfg, log, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.close)
	if err := seed(ctx, a.pool, testDataset, 2, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := a.agg.seed(ctx, a.pool, io.Discard); err != nil {
		t.Fatal(err)
	}
	return a
}

type call struct {
	method, path, body string
	code               int
	contains           string // in the response body
}

func doCall(t *testing.T, base string, c call) string {
	t.Helper()
	req, err := http.NewRequest(c.method, base+c.path, strings.NewReader(c.body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != c.code {
		t.Errorf("%s %s %s: status %d, want %d (body %s)", c.method, c.path, c.body, resp.StatusCode, c.code, b)
	}
	if !strings.Contains(string(b), c.contains) {
		t.Errorf("%s %s: body %s does not contain %s", c.method, c.path, b, c.contains)
	}
	if ct := resp.Header.Get("Content-Type"); c.path != "/metrics" && ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", c.method, c.path, ct)
	}
	return string(b)
}

// TestEndpoints calls every endpoint, with good and bad input, with the cache
// on and off: the answers must be the same.
func TestEndpoints(t *testing.T) {
	for _, cache := range []bool{true, false} {
		name := map[bool]string{true: "cache-on", false: "cache-off"}[cache]
		t.Run(name, func(t *testing.T) {
			a := newTestApp(t, cache)
			srv := httptest.NewServer(a.handler())
			defer srv.Close()
			art, uom := articleNumber(7), uomOf(7)
			calls := []call{
				{"GET", "/healthz", "", 200, `"status":"ok"`},
				{"GET", "/products/7", "", 200, `"article_number":"` + art + `"`},
				{"GET", "/products/7", "", 200, `"id":7`}, // a hit the second time
				{"GET", "/products/999999", "", 404, `"error":"not found"`},
				{"GET", "/products/abc", "", 400, `"error":"id \"abc\"`},
				{"GET", "/products/-1", "", 400, `want a positive integer`},
				{"GET", "/categories/1/products?limit=5", "", 200, `"products":[{"id":1,`},
				{"GET", "/categories/1/products?limit=0", "", 400, `limit`},
				{"GET", "/categories/1/products?limit=x", "", 400, `limit`},
				{"GET", "/categories/99/products", "", 404, `not found`},
				{"GET", "/stock/" + art + "/" + uom + "/S002", "", 200, `"store_code":"S002"`},
				{"GET", "/stock/" + art + "/" + uom + "/S999", "", 404, `not found`},
				{"GET", "/stock/" + art + "/" + uom, "", 200, `"store_code":"S003"`},
				{"GET", "/stock/NOPE/EA", "", 404, `not found`},
				{"GET", "/stock/" + strings.Repeat("x", 65) + "/EA", "", 400, `want 1 to 64 bytes`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"quantity": 17}`, 200, `"quantity":17`},
				{"GET", "/stock/" + art + "/" + uom + "/S002", "", 200, `"quantity":17`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"delta": -2}`, 200, `"quantity":15`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"delta": -100}`, 409, `would fall to -85`},
				{"GET", "/stock/" + art + "/" + uom + "/S002", "", 200, `"quantity":15`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"delta": 1, "quantity": 2}`, 400, `exactly one`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{}`, 400, `exactly one`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"quantity": -1}`, 400, `must not be negative`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"quantity": "5"}`, 400, `request body`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"quantity": 5`, 400, `request body`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"quantity": 5} {}`, 400, `unexpected data`},
				{"POST", "/stock/" + art + "/" + uom + "/S002", `{"qty": 5}`, 400, `unknown field`},
				{"POST", "/stock/" + art + "/" + uom + "/S999", `{"quantity": 5}`, 404, `not found`},
				{"GET", "/visits", "", 200, `{"visitors":42}`},
				{"POST", "/visits", "", 200, `{"visitors":43}`},
				{"POST", "/visits", "", 200, `{"visitors":44}`},
				{"GET", "/visits", "", 200, `{"visitors":44}`},
				{"GET", "/boards/global/top?n=3", "", 200, `"rank":3`},
				{"POST", "/boards/global/scores", `{"player":"zed","score":999999999}`, 200, `"player":"zed"`},
				{"GET", "/boards/global/top?n=1", "", 200, `[{"player":"zed","score":999999999,"rank":1}]`},
				{"GET", "/boards/global/players/zed/rank", "", 200, `"rank":1`},
				{"GET", "/boards/global/players/nobody/rank", "", 404, `not found`},
				{"GET", "/boards/empty/top", "", 200, `"top":[]`},
				{"GET", "/boards/global/top?n=101", "", 400, `n=`},
				{"POST", "/boards/global/scores", `{"player":"","score":1}`, 400, `player`},
				{"POST", "/boards/global/scores", `{"player":"p"}`, 400, `is missing`},
				{"POST", "/boards/global/scores", `not json`, 400, `request body`},
				{"GET", "/nope", "", 404, ``},
			}
			for _, c := range calls {
				if c.path == "/nope" {
					continue // the mux's plain-text 404
				}
				doCall(t, srv.URL, c)
			}
			// Metrics show the cache and database counters.
			resp, err := http.Get(srv.URL + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			for _, m := range []string{metricDBQueries, metricDBReadQueries, metricCacheHits, metricCacheMisses, metricCacheFills,
				metricLeaseWaits, metricCASConflicts, metricCacheErrors, metricHTTPRequests, metricHTTPDuration} {
				if !strings.Contains(string(b), m) {
					t.Errorf("/metrics lacks %s", m)
				}
			}
			// The library's hooks, through repoprom: every op's latency, and
			// hits only with the cache on.
			if !strings.Contains(string(b), `cachedrepo_operation_duration_seconds_count{op="get",outcome="ok",table="products"}`) {
				t.Errorf("/metrics lacks the hooks' operation latencies")
			}
			if hooksHit := strings.Contains(string(b), `cachedrepo_events_total{kind="hit",op="get",step="",table="products"}`); hooksHit != cache {
				t.Errorf("/metrics: cache %v, but the hooks' product hits are there: %v", cache, hooksHit)
			}
			hit0 := strings.Contains(string(b), `cachedrepo_cache_hits_total{store="products"} 0`+"\n")
			if cache == hit0 {
				t.Errorf("/metrics: cache %v, but products hits are zero: %v", cache, hit0)
			}
		})
	}
}

// TestWarmThenServeFromCache warms the catalogue and checks that reads then
// cost no database query.
func TestWarmThenServeFromCache(t *testing.T) {
	a := newTestApp(t, true)
	ctx := context.Background()
	if err := a.cat.invalidateAll(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := warmAll(ctx, a, io.Discard, 7, 3)
	if err != nil {
		t.Fatal(err)
	}
	var stock int64
	for _, r := range res {
		if r.Table == "stock" {
			stock = r.Rows
		}
	}
	if stock != testDataset.StockRows() {
		t.Fatalf("warmed %d stock rows, want %d", stock, testDataset.StockRows())
	}
	before := a.queries.reads.Load()
	for p := int64(1); p <= int64(testDataset.Products); p++ {
		if _, err := a.cat.products.Get(ctx, p); err != nil {
			t.Fatal(err)
		}
		if _, err := a.cat.stock.Get(ctx, StockKey{articleNumber(p), uomOf(p), storeCode(1 + int(p)%testDataset.Stores)}); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.queries.reads.Load() - before; n != 0 {
		t.Errorf("%d database reads after warm-up, want 0", n)
	}
	r, err := rawSetRate(ctx, io.Discard, a.mc, 100, 40, 30, 4)
	if err != nil || r.Rows != 100 {
		t.Errorf("rawSetRate: %d rows, %v", r.Rows, err)
	}
}

// TestLoadAndReport runs the load generator briefly against the service and
// writes the report.
func TestLoadAndReport(t *testing.T) {
	a := newTestApp(t, true)
	srv := httptest.NewServer(a.handler())
	defer srv.Close()
	ctx := context.Background()
	ks, err := loadKeyspace(ctx, a.pool)
	if err != nil {
		t.Fatal(err)
	}
	o := loadOptions{Duration: 700 * time.Millisecond, Warmup: 200 * time.Millisecond, Clients: 4, Skew: 1.1, WritePct: 5, Seed: 1}
	res, err := loadRun(ctx, srv.URL, ks, o, "cache on")
	if err != nil {
		t.Fatal(err)
	}
	if res.Requests == 0 || res.ServerErrors != 0 || !res.Cache || res.HitRatio <= 0 {
		t.Errorf("run: %d requests, %d server errors, cache %v, hit ratio %v", res.Requests, res.ServerErrors, res.Cache, res.HitRatio)
	}
	if res.P50ms <= 0 || res.P99ms < res.P50ms {
		t.Errorf("percentiles p50 %v p99 %v", res.P50ms, res.P99ms)
	}
	dir := t.TempDir()
	probe := res
	probe.Staleness = &stalenessResult{Probes: 3, Reads: 9, StaleReads: 2, P99Ms: 4, MaxMs: 5, BoundMs: 5000}
	rep := report{On: res, Off: res, Probe: &probe, Options: o, Keys: ks, When: time.Now(), Warm: &warmReport{Rows: 10, RawSetsPerSec: 10, Ratio: 1}}
	paths, err := rep.write(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 3 {
		t.Fatalf("paths %v", paths)
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, want := range []string{"| throughput (req/s)", "p99 latency", "cache hit ratio", "report.svg", "## Warm-up",
		"near-cache staleness p99/max (ms)  |    4.0 / 5.0", "Near-cache staleness: in a run of its own"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	svg, _ := os.ReadFile(filepath.Join(dir, "report.svg"))
	if !strings.HasPrefix(string(svg), "<svg") || !strings.Contains(string(svg), "</svg>") {
		t.Errorf("report.svg is not an SVG document")
	}
	var js map[string]json.RawMessage
	b, _ := os.ReadFile(filepath.Join(dir, "results.json"))
	if err := json.Unmarshal(b, &js); err != nil || js["cache_on"] == nil {
		t.Errorf("results.json: %v", err)
	}
}

func TestConfig(t *testing.T) {
	cases := []struct {
		env     map[string]string
		wantErr string
	}{
		{map[string]string{}, "DATABASE_URL is not set"},
		{map[string]string{envDatabaseURL: "postgres://x", envCache: "maybe"}, "want on or off"},
		{map[string]string{envDatabaseURL: "postgres://x", envCacheTTL: "-1s"}, "positive duration"},
		{map[string]string{envDatabaseURL: "postgres://x", envDBMaxConns: "0"}, "positive integer"},
		{map[string]string{envDatabaseURL: "postgres://x", envMigrateOnStart: "yes please"}, "true or false"},
		{map[string]string{envDatabaseURL: "postgres://x", envMemcachedAddr: " , "}, "lists no address"},
		{map[string]string{envDatabaseURL: "postgres://x", envCache: "OFF", envMemcachedAddr: "a:1, b:2"}, ""},
	}
	for _, c := range cases {
		cfg, err := loadConfig(func(k string) string { return c.env[k] })
		if c.wantErr == "" {
			if err != nil {
				t.Errorf("%v: %v", c.env, err)
			} else if cfg.Cache || len(cfg.MemcachedAddrs) != 2 {
				t.Errorf("%v: got %+v", c.env, cfg)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantErr) {
			t.Errorf("%v: error %v, want %q", c.env, err, c.wantErr)
		}
	}
}

func TestMixAndHelpers(t *testing.T) {
	ops, err := mix(5)
	if err != nil {
		t.Fatal(err)
	}
	var sum, writes float64
	for _, o := range ops {
		sum += o.weight
		if o.write {
			writes += o.weight
		}
	}
	if sum < 0.9999 || sum > 1.0001 || writes < 0.0499 || writes > 0.0501 {
		t.Errorf("mix: sum %v, writes %v", sum, writes)
	}
	if _, err := mix(101); err == nil {
		t.Error("mix(101): no error")
	}
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1870000: "1,870,000", -12345: "-12,345"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
	if _, err := datasetFor(0); err == nil {
		t.Error("datasetFor(0): no error")
	}
	if d, _ := datasetFor(1); d.StockRows() != 1870000 || d.Products != 11000 || d.Stores != 170 {
		t.Errorf("full scale: %+v", d)
	}
}

// With the near-cache on (the default), the catalogue's repeated reads are
// answered in process and counted on /metrics; a write is read back at once.
func TestNearCacheInService(t *testing.T) {
	a := newTestApp(t, true, envNearMaxAge, "1s")
	if a.near == nil || !a.near.Listening() {
		t.Fatal("no listening near-cache with NEAR_CACHE_MAX_AGE=1s")
	}
	ctx := context.Background()
	for range 3 {
		if _, err := a.cat.products.Get(ctx, 3); err != nil {
			t.Fatal(err)
		}
	}
	if h := a.near.Hits(); h != 2 {
		t.Fatalf("%d near-cache hits of 3 reads of one product, want 2", h)
	}
	if _, err := a.cat.products.Update(ctx, 3, func(p *Product) error { p.Name = "renamed"; return nil }); err != nil {
		t.Fatal(err)
	}
	if p, err := a.cat.products.Get(ctx, 3); err != nil || p.Name != "renamed" {
		t.Fatalf("after a write: %+v %v", p, err)
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), metricNearHits+" 2") {
		t.Fatalf("/metrics lacks %s 2", metricNearHits)
	}
}

// The read-query count leaves out the statements of writes: row locks and
// the near-cache's NOTIFY.
func TestIsRead(t *testing.T) {
	for sql, want := range map[string]bool{
		`SELECT "id" FROM "products" WHERE "id" = $1`: true,
		"  select 1": true,
		`SELECT "quantity" FROM "stock" WHERE "article_number" = $1 FOR UPDATE`: false,
		"SELECT pg_notify($1, k) FROM unnest($2::text[]) k":                     false,
		`UPDATE "stock" SET "quantity" = $1`:                                    false,
		"begin":                                                                 false,
	} {
		if got := isRead(sql); got != want {
			t.Errorf("isRead(%q) = %v, want %v", sql, got, want)
		}
	}
}

// sibling returns another instance of a's service (its own pool and
// near-cache) over a's database and memcached, with env's overrides.
func sibling(t *testing.T, a *app, kv ...string) *app {
	t.Helper()
	cfg := a.cfg
	for i := 0; i+1 < len(kv); i += 2 {
		switch kv[i] {
		case envCacheNamespace:
			cfg.Namespace = kv[i+1]
		default:
			t.Fatalf("sibling: %s is not supported", kv[i])
		}
	}
	b, err := newApp(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.close)
	return b
}

// The demo's staleness probe measures what it says: between two instances
// of the service over one database and memcached, every probed write is
// seen by the other instance well within the bound (its NOTIFY arrives);
// and against an instance that is never told (another cache namespace, so
// another NOTIFY channel and other memcached keys), it reports the stale
// reads past the bound.
func TestStalenessProbe(t *testing.T) {
	a := newTestApp(t, true, envNearMaxAge, "5s")
	b := sibling(t, a)
	blind := sibling(t, a, envCacheNamespace, repotest.Namespace(t)+"_other")
	sa, sb, sblind := httptest.NewServer(a.handler()), httptest.NewServer(b.handler()), httptest.NewServer(blind.handler())
	defer sa.Close()
	defer sb.Close()
	defer sblind.Close()
	ks, err := loadKeyspace(context.Background(), a.pool)
	if err != nil {
		t.Fatal(err)
	}
	run := func(other string, bound, d time.Duration) stalenessResult {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		return probeStaleness(ctx, sa.URL, other, ks, bound, 1)
	}
	res := run(sb.URL, 5*time.Second, 1500*time.Millisecond)
	if res.Probes < 10 || res.Reads < res.Probes || res.Errors != 0 || res.BeyondBound != 0 || res.MaxMs >= res.BoundMs {
		t.Fatalf("two instances told by NOTIFY: %+v; want 10 or more probes, no error, nothing past the bound", res)
	}
	t.Logf("told: %+v", res)
	res = run(sblind.URL, 100*time.Millisecond, 1500*time.Millisecond)
	if res.Probes < 1 || res.StaleReads == 0 || res.BeyondBound == 0 || res.MaxMs <= res.BoundMs {
		t.Fatalf("an instance never told: %+v; want stale reads past the bound", res)
	}
	t.Logf("never told: %+v", res)
}
