package main

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// queryCounter is a pgx.QueryTracer that counts the statements sent to
// Postgres: all of them, and the reads among them (SELECTs not taking row
// locks). Set it as the pool's ConnConfig.Tracer. It is safe for concurrent
// use.
type queryCounter struct {
	all   atomic.Uint64
	reads atomic.Uint64
}

var _ pgx.QueryTracer = (*queryCounter)(nil)

// TraceQueryStart counts one statement.
func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	q.all.Add(1)
	if isRead(data.SQL) {
		q.reads.Add(1)
	}
	return ctx
}

// TraceQueryEnd does nothing.
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// isRead reports whether sql is a plain read: a SELECT, but not one that
// locks rows (FOR UPDATE) or sends the near-cache's invalidations
// (pg_notify), which are parts of writes.
func isRead(sql string) bool {
	s := strings.TrimSpace(sql)
	if len(s) < 6 || !strings.EqualFold(s[:6], "select") {
		return false
	}
	u := strings.ToUpper(s)
	return !strings.Contains(u, "FOR UPDATE") && !strings.Contains(u, "PG_NOTIFY(")
}

// Metric names shared by the service (/metrics) and the load generator,
// which reads them before and after a run.
const (
	metricDBQueries     = "retail_db_queries_total"
	metricDBReadQueries = "retail_db_read_queries_total"
	metricCacheHits     = "cachedrepo_cache_hits_total"
	metricCacheMisses   = "cachedrepo_cache_misses_total"
	metricCacheFills    = "cachedrepo_cache_fills_total"
	metricLeaseWaits    = "cachedrepo_lease_waits_total"
	metricCASConflicts  = "cachedrepo_cas_conflicts_total"
	metricCacheErrors   = "cachedrepo_cache_errors_total"
	metricStoreDBReads  = "cachedrepo_db_reads_total"
	metricHTTPRequests  = "retail_http_requests_total"
	metricHTTPDuration  = "retail_http_request_duration_seconds"
	metricHTTPErrors    = "retail_http_errors_total"
	metricNearHits      = "retail_near_cache_hits_total"
)

// metrics holds the service's Prometheus registry (its own, not the global
// default) and the instruments the handlers update.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec   // by route and status code
	duration *prometheus.HistogramVec // by route
	errors   *prometheus.CounterVec   // 5xx answers by route
}

// statsSource returns the observe.Stats of every cached store, query and
// aggregate by name; the collector reads it at each scrape.
type statsSource func() map[string]observe.Stats

// newMetrics registers the service's metrics: HTTP counters, the query
// counter q, the stores' cache counters read from stats at scrape time, and
// the library's events and operation latencies from its hooks (hooks, a
// repoprom.Collector).
func newMetrics(q *queryCounter, stats statsSource, hooks prometheus.Collector) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricHTTPRequests, Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: metricHTTPDuration, Help: "HTTP request latency, by route.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1},
		}, []string{"route"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: metricHTTPErrors, Help: "HTTP requests that failed with a server error, by route.",
		}, []string{"route"}),
	}
	m.reg.MustRegister(m.requests, m.duration, m.errors,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: metricDBQueries, Help: "Statements sent to PostgreSQL (BEGIN and COMMIT included).",
		}, func() float64 { return float64(q.all.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: metricDBReadQueries, Help: "SELECT statements without FOR UPDATE sent to PostgreSQL.",
		}, func() float64 { return float64(q.reads.Load()) }),
		&statsCollector{stats: stats},
		hooks,
		prometheus.NewGoCollector(),
		prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}),
	)
	return m
}

// statsCollector exports observe.Stats of each store as counters labelled by
// store name.
type statsCollector struct{ stats statsSource }

var statsDescs = []struct {
	desc *prometheus.Desc
	get  func(observe.Stats) uint64
}{
	{prometheus.NewDesc(metricCacheHits, "Reads answered by the cache.", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.Hits }},
	{prometheus.NewDesc(metricCacheMisses, "Keys not usable in the cache.", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.Misses }},
	{prometheus.NewDesc(metricCacheFills, "Values put in the cache after a database read.", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.Fills }},
	{prometheus.NewDesc(metricStoreDBReads, "Database queries made by the store to serve reads.", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.DBReads }},
	{prometheus.NewDesc(metricLeaseWaits, "Polls made while another filler held a key's lease.", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.LeaseWaits }},
	{prometheus.NewDesc(metricCASConflicts, "Compare-and-swap attempts lost to a concurrent change.", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.CASConflicts }},
	{prometheus.NewDesc(metricCacheErrors, "Cache steps that failed (served from the database instead).", []string{"store"}, nil), func(s observe.Stats) uint64 { return s.CacheErrors }},
}

// Describe sends the descriptors of the store counters.
func (c *statsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range statsDescs {
		ch <- d.desc
	}
}

// Collect reads every store's stats and sends them.
func (c *statsCollector) Collect(ch chan<- prometheus.Metric) {
	for name, st := range c.stats() {
		for _, d := range statsDescs {
			ch <- prometheus.MustNewConstMetric(d.desc, prometheus.CounterValue, float64(d.get(st)), name)
		}
	}
}
