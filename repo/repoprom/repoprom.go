// Package repoprom exports cachedrepo's events and operation durations as
// Prometheus metrics.
//
// It is a package of its own, so that programs which do not import it do not
// link the Prometheus client. Make a Collector,
// register it, and pass its Hooks to a Store, Query, Counter, Leaderboard
// or Repairer:
//
//	c := repoprom.New("") // namespace "cachedrepo"
//	prometheus.MustRegister(c)
//	store, err := repo.New(pool, cache, users, &repo.Options{Hooks: c.Hooks()})
//
// One Collector serves any number of stores (its series are labelled by
// table). The metrics, with the namespace ns:
//
//	<ns>_events_total{kind,table,op,step}                counter
//	<ns>_operation_duration_seconds{table,op,outcome}    histogram; outcome ok, error or not_found
//	<ns>_lease_wait_seconds{table}                       histogram of LeaseWait events' Duration
//
// kind is observe.Kind's String ("hit", "lease_wait"); step is empty but
// for cache_error events; op is empty for breaker events seen outside an
// operation. An error is not_found when errors.Is(err, pgx.ErrNoRows), as
// repo's not-found errors are.
package repoprom

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultBuckets returns the histograms' bucket boundaries, in seconds
// (a new slice on each call).
func DefaultBuckets() []float64 {
	return []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
}

// Outcomes of an operation, the values of the outcome label.
const (
	OutcomeOK       = "ok"
	OutcomeError    = "error"
	OutcomeNotFound = "not_found"
)

// Collector is a prometheus.Collector of cachedrepo's metrics, fed by the
// observe.Hooks that its Hooks method returns. It is safe for concurrent
// use.
type Collector struct {
	events    *prometheus.CounterVec
	opDur     *prometheus.HistogramVec
	leaseWait *prometheus.HistogramVec

	// The series used so far, so that an event looks up a map instead of
	// hashing label values. The label combinations are few (tables × ops ×
	// kinds × steps), so they are never pruned.
	mu       sync.RWMutex
	counters map[eventKey]prometheus.Counter
	ops      map[opKey]prometheus.Observer
	waits    map[string]prometheus.Observer
}

type eventKey struct {
	kind  observe.Kind
	op    observe.Op
	table string
	step  observe.Step
}

type opKey struct {
	op      observe.Op
	table   string
	outcome string
}

// New returns a Collector whose metric names start with namespace + "_";
// an empty namespace means "cachedrepo".
func New(namespace string) *Collector {
	if namespace == "" {
		namespace = "cachedrepo"
	}
	return &Collector{
		events: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "events_total",
			Help: "Cache events (hits, misses, fills, lease waits, cache errors, breaker changes).",
		}, []string{"kind", "table", "op", "step"}),
		opDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "operation_duration_seconds",
			Help: "Duration of cachedrepo operations.", Buckets: DefaultBuckets(),
		}, []string{"table", "op", "outcome"}),
		leaseWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "lease_wait_seconds",
			Help: "Time readers waited for another filler's lease.", Buckets: DefaultBuckets(),
		}, []string{"table"}),
		counters: map[eventKey]prometheus.Counter{},
		ops:      map[opKey]prometheus.Observer{},
		waits:    map[string]prometheus.Observer{},
	}
}

// Describe sends the descriptors of the three metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	c.events.Describe(ch)
	c.opDur.Describe(ch)
	c.leaseWait.Describe(ch)
}

// Collect sends the current value of every series.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.events.Collect(ch)
	c.opDur.Collect(ch)
	c.leaseWait.Collect(ch)
}

// Hooks returns the observe.Hooks that feed c (Event and OpEnd; OpStart is
// nil).
func (c *Collector) Hooks() observe.Hooks {
	return observe.Hooks{Event: c.event, OpEnd: c.opEnd}
}

func (c *Collector) event(_ context.Context, e observe.Event) {
	get(c, c.counters, eventKey{e.Kind, e.Op, e.Table, e.Step}, func() prometheus.Counter {
		return c.events.WithLabelValues(e.Kind.String(), e.Table, string(e.Op), string(e.Step))
	}).Inc()
	if e.Kind == observe.LeaseWait {
		get(c, c.waits, e.Table, func() prometheus.Observer {
			return c.leaseWait.WithLabelValues(e.Table)
		}).Observe(e.Duration.Seconds())
	}
}

func (c *Collector) opEnd(_ context.Context, op observe.Op, table string, d time.Duration, err error) {
	outcome := OutcomeOK
	if errors.Is(err, pgx.ErrNoRows) {
		outcome = OutcomeNotFound
	} else if err != nil {
		outcome = OutcomeError
	}
	get(c, c.ops, opKey{op, table, outcome}, func() prometheus.Observer {
		return c.opDur.WithLabelValues(table, string(op), outcome)
	}).Observe(d.Seconds())
}

// get returns m[k], making it with child on first use.
func get[K comparable, V any](c *Collector, m map[K]V, k K, child func() V) V {
	c.mu.RLock()
	v, ok := m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok = m[k]; !ok {
		v = child()
		m[k] = v
	}
	return v
}
