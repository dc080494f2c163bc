package repootel_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/cachedrepo/cachedrepo/repo/repootel"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

type env struct {
	hooks  observe.Hooks
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
}

func newEnv(t *testing.T, opts ...repootel.Option) *env {
	t.Helper()
	e := &env{spans: tracetest.NewSpanRecorder(), reader: sdkmetric.NewManualReader()}
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(e.spans))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(e.reader))
	h, err := repootel.Hooks(append([]repootel.Option{repootel.WithTracerProvider(tp), repootel.WithMeterProvider(mp)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	e.hooks = h
	return e
}

// op runs one operation through the hooks: start, events, end.
func (e *env) op(op observe.Op, table string, d time.Duration, err error, events ...observe.Event) {
	ctx := e.hooks.OpStart(context.Background(), op, table)
	for _, ev := range events {
		ev.Op, ev.Table = op, table
		e.hooks.Event(ctx, ev)
	}
	e.hooks.OpEnd(ctx, op, table, d, err)
}

func (e *env) metrics(t *testing.T) map[string]metricdata.Aggregation {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := e.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]metricdata.Aggregation{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != repootel.ScopeName {
			t.Errorf("scope %q", sm.Scope.Name)
		}
		for _, m := range sm.Metrics {
			out[m.Name] = m.Data
		}
	}
	return out
}

func setKey(kv ...attribute.KeyValue) attribute.Distinct {
	s := attribute.NewSet(kv...)
	return s.Equivalent()
}

func eventSet(kind, table, op, step string) attribute.Distinct {
	return setKey(attribute.String("kind", kind), attribute.String("table", table), attribute.String("op", op), attribute.String("step", step))
}

func TestSpans(t *testing.T) {
	e := newEnv(t)
	boom := errors.New("boom")
	e.op(observe.OpGet, "users", time.Millisecond, nil,
		observe.Event{Kind: observe.Miss, Key: "u:1"},
		observe.Event{Kind: observe.Fill, Key: "u:1", Duration: 2 * time.Millisecond})
	e.op(observe.OpGetMany, "users", time.Millisecond, fmt.Errorf("repo: get: %w", pgx.ErrNoRows),
		observe.Event{Kind: observe.Hit, Key: "u:2"})
	e.op(observe.OpUpdate, "users", time.Millisecond, boom,
		observe.Event{Kind: observe.CacheError, Key: "u:3", Step: observe.StepWrite, Err: boom})

	spans := e.spans.Ended()
	if len(spans) != 3 {
		t.Fatalf("%d spans, want 3", len(spans))
	}
	want := []struct {
		name   string
		op     string
		status codes.Code
		events []string
		errs   int // exception events from RecordError
	}{
		{"cachedrepo.get", "get", codes.Unset, []string{"miss", "fill"}, 0},
		{"cachedrepo.get many", "get many", codes.Unset, []string{"hit"}, 0},
		{"cachedrepo.update", "update", codes.Error, []string{"cache_error", "exception"}, 1},
	}
	for i, w := range want {
		s := spans[i]
		if s.Name() != w.name || s.Status().Code != w.status {
			t.Errorf("span %d: %q %v, want %q %v", i, s.Name(), s.Status().Code, w.name, w.status)
		}
		attrs := attribute.NewSet(s.Attributes()...)
		if v, _ := attrs.Value("cachedrepo.table"); v.AsString() != "users" {
			t.Errorf("span %d table %q", i, v.AsString())
		}
		if v, _ := attrs.Value("cachedrepo.op"); v.AsString() != w.op {
			t.Errorf("span %d op %q", i, v.AsString())
		}
		var names []string
		for _, ev := range s.Events() {
			names = append(names, ev.Name)
			for _, kv := range ev.Attributes {
				if kv.Key == "cachedrepo.key" {
					t.Errorf("span %d event %s has a key without WithKeys", i, ev.Name)
				}
			}
		}
		if fmt.Sprint(names) != fmt.Sprint(w.events) {
			t.Errorf("span %d events %v, want %v", i, names, w.events)
		}
	}
	if st := spans[2].Status(); st.Description != "boom" {
		t.Errorf("status description %q", st.Description)
	}
	ev := attribute.NewSet(spans[2].Events()[0].Attributes...)
	if v, _ := ev.Value("cachedrepo.step"); v.AsString() != "write" {
		t.Errorf("step %q", v.AsString())
	}
	if v, _ := ev.Value("cachedrepo.error"); v.AsString() != "boom" {
		t.Errorf("error %q", v.AsString())
	}
	fill := attribute.NewSet(spans[0].Events()[1].Attributes...)
	if v, _ := fill.Value("cachedrepo.duration"); v.AsFloat64() != 0.002 {
		t.Errorf("fill duration %v", v.AsFloat64())
	}
}

func TestKeysAndNotFoundOptions(t *testing.T) {
	special := errors.New("gone")
	e := newEnv(t, repootel.WithKeys(), repootel.WithNotFound(func(err error) bool { return errors.Is(err, special) }))
	e.op(observe.OpGet, "users", time.Millisecond, special, observe.Event{Kind: observe.Hit, Key: "u:1"})
	e.op(observe.OpGet, "users", time.Millisecond, pgx.ErrNoRows)
	spans := e.spans.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans", len(spans))
	}
	if c := spans[0].Status().Code; c != codes.Unset {
		t.Errorf("custom not found: status %v", c)
	}
	if c := spans[1].Status().Code; c != codes.Error {
		t.Errorf("pgx.ErrNoRows with a custom IsNotFound: status %v", c)
	}
	attrs := attribute.NewSet(spans[0].Events()[0].Attributes...)
	if v, _ := attrs.Value("cachedrepo.key"); v.AsString() != "u:1" {
		t.Errorf("key %q", v.AsString())
	}
}

func TestEventWithoutSpan(t *testing.T) {
	e := newEnv(t)
	e.hooks.Event(context.Background(), observe.Event{Kind: observe.BreakerOpen, Err: errors.New("dial")})
	if n := len(e.spans.Ended()); n != 0 {
		t.Fatalf("%d spans", n)
	}
	sum := e.metrics(t)["cachedrepo.events"].(metricdata.Sum[int64])
	if len(sum.DataPoints) != 1 || sum.DataPoints[0].Value != 1 ||
		sum.DataPoints[0].Attributes.Equivalent() != eventSet("breaker_open", "", "", "") {
		t.Fatalf("points %+v", sum.DataPoints)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	for range 3 {
		e.op(observe.OpGet, "users", 10*time.Millisecond, nil, observe.Event{Kind: observe.Hit})
	}
	e.op(observe.OpGet, "users", 20*time.Millisecond, pgx.ErrNoRows,
		observe.Event{Kind: observe.Miss}, observe.Event{Kind: observe.LeaseWait, Duration: 5 * time.Millisecond},
		observe.Event{Kind: observe.Fill, Duration: 3 * time.Millisecond})
	e.op(observe.OpUpsert, "orders", 30*time.Millisecond, errors.New("conflict"),
		observe.Event{Kind: observe.CacheError, Step: observe.StepWrite, Err: errors.New("timeout")},
		observe.Event{Kind: observe.CacheError, Step: observe.StepWrite, Err: errors.New("timeout")})

	m := e.metrics(t)
	if len(m) != 4 {
		t.Errorf("%d metrics, want 4: %v", len(m), m)
	}
	sum, ok := m["cachedrepo.events"].(metricdata.Sum[int64])
	if !ok || !sum.IsMonotonic {
		t.Fatalf("cachedrepo.events: %T", m["cachedrepo.events"])
	}
	wantEvents := map[attribute.Distinct]int64{
		eventSet("hit", "users", "get", ""):                  3,
		eventSet("miss", "users", "get", ""):                 1,
		eventSet("lease_wait", "users", "get", ""):           1,
		eventSet("fill", "users", "get", ""):                 1,
		eventSet("cache_error", "orders", "upsert", "write"): 2,
	}
	if len(sum.DataPoints) != len(wantEvents) {
		t.Errorf("%d event series, want %d", len(sum.DataPoints), len(wantEvents))
	}
	for _, dp := range sum.DataPoints {
		if w, ok := wantEvents[dp.Attributes.Equivalent()]; !ok || dp.Value != w {
			t.Errorf("events %v = %d, want %d", dp.Attributes.ToSlice(), dp.Value, w)
		}
	}

	type hist struct {
		count uint64
		sum   float64
	}
	checkHist := func(name string, want map[attribute.Distinct]hist) {
		t.Helper()
		h, ok := m[name].(metricdata.Histogram[float64])
		if !ok {
			t.Fatalf("%s: %T", name, m[name])
		}
		if len(h.DataPoints) != len(want) {
			t.Errorf("%s: %d series, want %d", name, len(h.DataPoints), len(want))
		}
		for _, dp := range h.DataPoints {
			w, ok := want[dp.Attributes.Equivalent()]
			if !ok || dp.Count != w.count || fmt.Sprintf("%.6f", dp.Sum) != fmt.Sprintf("%.6f", w.sum) {
				t.Errorf("%s %v: count %d sum %v, want %+v", name, dp.Attributes.ToSlice(), dp.Count, dp.Sum, w)
			}
			if len(dp.Bounds) != len(repootel.DefaultBuckets()) {
				t.Errorf("%s: %d bounds", name, len(dp.Bounds))
			}
		}
	}
	opSet := func(table, op string, failed bool) attribute.Distinct {
		return setKey(attribute.String("table", table), attribute.String("op", op), attribute.Bool("error", failed))
	}
	checkHist("cachedrepo.operation.duration", map[attribute.Distinct]hist{
		opSet("users", "get", false):    {4, 0.050}, // three hits and a not found
		opSet("orders", "upsert", true): {1, 0.030},
	})
	plain := setKey(attribute.String("table", "users"), attribute.String("op", "get"))
	checkHist("cachedrepo.lease_wait.duration", map[attribute.Distinct]hist{plain: {1, 0.005}})
	checkHist("cachedrepo.fill.duration", map[attribute.Distinct]hist{plain: {1, 0.003}})
}

func TestConcurrent(t *testing.T) {
	e := newEnv(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				e.op(observe.OpGet, fmt.Sprintf("t%d", (g+i)%3), time.Microsecond, nil,
					observe.Event{Kind: observe.Kinds()[i%len(observe.Kinds())]})
			}
		})
	}
	wg.Wait()
	if n := len(e.spans.Ended()); n != 800 {
		t.Fatalf("%d spans", n)
	}
	var total int64
	for _, dp := range e.metrics(t)["cachedrepo.events"].(metricdata.Sum[int64]).DataPoints {
		total += dp.Value
	}
	if total != 800 {
		t.Fatalf("%d events counted", total)
	}
}

func TestDefaultsToGlobalProviders(t *testing.T) {
	h, err := repootel.Hooks()
	if err != nil {
		t.Fatal(err)
	}
	ctx := h.OpStart(context.Background(), observe.OpGet, "users")
	h.Event(ctx, observe.Event{Kind: observe.Hit, Op: observe.OpGet, Table: "users"})
	h.OpEnd(ctx, observe.OpGet, "users", time.Millisecond, nil)
}

func BenchmarkHooks(b *testing.B) {
	h, err := repootel.Hooks(repootel.WithTracerProvider(sdktrace.NewTracerProvider()),
		repootel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))))
	if err != nil {
		b.Fatal(err)
	}
	ev := observe.Event{Kind: observe.Hit, Op: observe.OpGet, Table: "users", Key: "u:1"}
	b.ReportAllocs()
	for b.Loop() {
		ctx := h.OpStart(context.Background(), observe.OpGet, "users")
		h.Event(ctx, ev)
		h.OpEnd(ctx, observe.OpGet, "users", time.Millisecond, nil)
	}
}
