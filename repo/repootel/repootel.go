// Package repootel reports cachedrepo's operations and events to
// OpenTelemetry: a span per operation, a span event per Event on the
// current span, and metrics.
//
// It is a module of its own, so that programs which do not import it do not
// get OpenTelemetry in their module graph. Wire it through the Hooks of a
// Store, Query, Counter, Leaderboard or Repairer:
//
//	h, err := repootel.Hooks() // otel.GetTracerProvider(), otel.GetMeterProvider()
//	if err != nil { ... }
//	store, err := repo.New(pool, cache, users, &repo.Options{Hooks: h})
//
// (or QueryConfig.Hooks, aggregate's configs' Hooks). The Hooks are safe for
// concurrent use; their attribute sets are made once per label combination.
//
// Spans are named "cachedrepo." + the op ("cachedrepo.get",
// "cachedrepo.get many") and carry the attributes cachedrepo.table and
// cachedrepo.op. An operation's error is recorded on its span (RecordError
// and status Error) unless it is a missing row (see WithNotFound). Each
// Event is a span event named after its kind ("hit", "lease_wait") with
// cachedrepo.table, cachedrepo.step, cachedrepo.duration (seconds),
// cachedrepo.error where they are set, and cachedrepo.key with WithKeys.
//
// The metrics:
//
//	cachedrepo.events                  counter {event}; kind, table, op, step
//	cachedrepo.operation.duration      histogram s; table, op, error (bool; false for a missing row)
//	cachedrepo.fill.duration           histogram s; table, op  (Fill events' Duration)
//	cachedrepo.lease_wait.duration     histogram s; table, op  (LeaseWait events' Duration)
package repootel

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the tracer and meter.
const ScopeName = "github.com/cachedrepo/cachedrepo/repo/repootel"

// DefaultBuckets returns the histograms' explicit bucket boundaries, in
// seconds (a new slice on each call).
func DefaultBuckets() []float64 {
	return []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
}

// Option configures Hooks.
type Option func(*config)

type config struct {
	tp       trace.TracerProvider
	mp       metric.MeterProvider
	keys     bool
	notFound func(error) bool
}

// WithTracerProvider sets the TracerProvider; the default is
// otel.GetTracerProvider().
func WithTracerProvider(tp trace.TracerProvider) Option { return func(c *config) { c.tp = tp } }

// WithMeterProvider sets the MeterProvider; the default is
// otel.GetMeterProvider().
func WithMeterProvider(mp metric.MeterProvider) Option { return func(c *config) { c.mp = mp } }

// WithKeys adds each Event's cache key to its span event (attribute
// cachedrepo.key). By default keys are left out: they may hold personal data.
func WithKeys() Option { return func(c *config) { c.keys = true } }

// WithNotFound sets how a missing row is recognised: such an error is not a
// span error and counts as error=false. The default is
// errors.Is(err, pgx.ErrNoRows), which repo's not-found errors satisfy;
// nil keeps it.
func WithNotFound(isNotFound func(error) bool) Option {
	return func(c *config) {
		if isNotFound != nil {
			c.notFound = isNotFound
		}
	}
}

// Hooks returns observe.Hooks that trace and measure through OpenTelemetry.
// The instruments are made here; the error is that of making them. The
// Hooks are safe for concurrent use.
func Hooks(opts ...Option) (observe.Hooks, error) {
	c := config{notFound: func(err error) bool { return errors.Is(err, pgx.ErrNoRows) }}
	for _, o := range opts {
		o(&c)
	}
	if c.tp == nil {
		c.tp = otel.GetTracerProvider()
	}
	if c.mp == nil {
		c.mp = otel.GetMeterProvider()
	}
	m := c.mp.Meter(ScopeName)
	hist := func(name, desc string) (metric.Float64Histogram, error) {
		return m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(DefaultBuckets()...))
	}
	events, err1 := m.Int64Counter("cachedrepo.events", metric.WithUnit("{event}"),
		metric.WithDescription("Cache events (hits, misses, fills, lease waits, errors, breaker changes)."))
	opDur, err2 := hist("cachedrepo.operation.duration", "Duration of cachedrepo operations.")
	fill, err3 := hist("cachedrepo.fill.duration", "Duration of database loads that filled a cache key.")
	wait, err4 := hist("cachedrepo.lease_wait.duration", "Time readers waited for another filler's lease.")
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return observe.Hooks{}, err
	}
	a := &adapter{tracer: c.tp.Tracer(ScopeName), keys: c.keys, notFound: c.notFound,
		events: events, opDur: opDur, fill: fill, wait: wait}
	return observe.Hooks{Event: a.event, OpStart: a.opStart, OpEnd: a.opEnd}, nil
}

type adapter struct {
	tracer   trace.Tracer
	keys     bool
	notFound func(error) bool

	events            metric.Int64Counter
	opDur, fill, wait metric.Float64Histogram

	// Made on first use of each label combination, so that a measurement
	// builds no attribute set and no option slice.
	spanOpts   cache[opKey, spanStart]
	opAttrs    cache[opKey, measure] // operation.duration: table, op, error
	durAttrs   cache[opKey, measure] // fill and lease_wait: table, op
	eventAttrs cache[eventKey, measure]
}

type (
	opKey struct {
		op    observe.Op
		table string
		err   bool
	}
	eventKey struct {
		kind  observe.Kind
		op    observe.Op
		table string
		step  observe.Step
	}
	spanStart struct {
		name string
		opts []trace.SpanStartOption
	}
	measure struct {
		add []metric.AddOption
		rec []metric.RecordOption
	}
)

func newMeasure(kv ...attribute.KeyValue) measure {
	o := metric.WithAttributeSet(attribute.NewSet(kv...))
	return measure{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}}
}

// cache is a concurrent map filled on first use. The label combinations
// are few (tables × ops × kinds × steps), so it is never pruned.
type cache[K comparable, V any] struct {
	mu sync.RWMutex
	m  map[K]V
}

func (c *cache[K, V]) get(k K, build func(K) V) V {
	c.mu.RLock()
	v, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return v
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, ok = c.m[k]; !ok {
		if c.m == nil {
			c.m = map[K]V{}
		}
		v = build(k)
		c.m[k] = v
	}
	return v
}

func buildSpanStart(k opKey) spanStart {
	return spanStart{name: "cachedrepo." + string(k.op), opts: []trace.SpanStartOption{trace.WithAttributes(
		attribute.String("cachedrepo.table", k.table), attribute.String("cachedrepo.op", string(k.op)))}}
}

func buildOpMeasure(k opKey) measure {
	return newMeasure(attribute.String("table", k.table), attribute.String("op", string(k.op)), attribute.Bool("error", k.err))
}

func buildDurMeasure(k opKey) measure {
	return newMeasure(attribute.String("table", k.table), attribute.String("op", string(k.op)))
}

func buildEventMeasure(k eventKey) measure {
	return newMeasure(attribute.String("kind", k.kind.String()), attribute.String("table", k.table),
		attribute.String("op", string(k.op)), attribute.String("step", string(k.step)))
}

func (a *adapter) opStart(ctx context.Context, op observe.Op, table string) context.Context {
	s := a.spanOpts.get(opKey{op: op, table: table}, buildSpanStart)
	ctx, _ = a.tracer.Start(ctx, s.name, s.opts...)
	return ctx
}

// opEnd ends the span opStart put in ctx.
func (a *adapter) opEnd(ctx context.Context, op observe.Op, table string, d time.Duration, err error) {
	failed := err != nil && !a.notFound(err)
	span := trace.SpanFromContext(ctx)
	if failed {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
	a.opDur.Record(ctx, d.Seconds(), a.opAttrs.get(opKey{op, table, failed}, buildOpMeasure).rec...)
}

func (a *adapter) event(ctx context.Context, e observe.Event) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		a.spanEvent(span, e)
	}
	a.events.Add(ctx, 1, a.eventAttrs.get(eventKey{e.Kind, e.Op, e.Table, e.Step}, buildEventMeasure).add...)
	var h metric.Float64Histogram
	switch e.Kind {
	case observe.Fill:
		h = a.fill
	case observe.LeaseWait:
		h = a.wait
	default:
		return
	}
	h.Record(ctx, e.Duration.Seconds(), a.durAttrs.get(opKey{op: e.Op, table: e.Table}, buildDurMeasure).rec...)
}

func (a *adapter) spanEvent(span trace.Span, e observe.Event) {
	attrs := make([]attribute.KeyValue, 0, 5)
	attrs = append(attrs, attribute.String("cachedrepo.table", e.Table))
	if e.Step != "" {
		attrs = append(attrs, attribute.String("cachedrepo.step", string(e.Step)))
	}
	if a.keys && e.Key != "" {
		attrs = append(attrs, attribute.String("cachedrepo.key", e.Key))
	}
	if e.Duration > 0 {
		attrs = append(attrs, attribute.Float64("cachedrepo.duration", e.Duration.Seconds()))
	}
	if e.Err != nil {
		attrs = append(attrs, attribute.String("cachedrepo.error", e.Err.Error()))
	}
	span.AddEvent(e.Kind.String(), trace.WithAttributes(attrs...))
}
