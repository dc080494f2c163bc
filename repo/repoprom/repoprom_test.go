package repoprom_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/cachedrepo/cachedrepo/repo/repoprom"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

// feed runs a known mix of operations and events through c's hooks.
func feed(c *repoprom.Collector) {
	h := c.Hooks()
	ctx := context.Background()
	ev := func(kind observe.Kind, op observe.Op, table string, step observe.Step, d time.Duration) {
		h.Event(ctx, observe.Event{Kind: kind, Op: op, Table: table, Key: "k", Step: step, Duration: d})
	}
	for range 3 {
		ev(observe.Hit, observe.OpGet, "users", "", 0)
		h.OpEnd(ctx, observe.OpGet, "users", 10*time.Millisecond, nil)
	}
	ev(observe.Miss, observe.OpGet, "users", "", 0)
	ev(observe.LeaseWait, observe.OpGet, "users", "", 5*time.Millisecond)
	ev(observe.LeaseWait, observe.OpGet, "users", "", 15*time.Millisecond)
	h.OpEnd(ctx, observe.OpGet, "users", 20*time.Millisecond, fmt.Errorf("repo: get users: %w", pgx.ErrNoRows))
	ev(observe.CacheError, observe.OpUpsert, "orders", observe.StepWrite, 0)
	h.OpEnd(ctx, observe.OpUpsert, "orders", 30*time.Millisecond, errors.New("conflict"))
	ev(observe.BreakerOpen, "", "", "", 0)
}

func TestEvents(t *testing.T) {
	c := repoprom.New("")
	feed(c)
	want := `
# HELP cachedrepo_events_total Cache events (hits, misses, fills, lease waits, cache errors, breaker changes).
# TYPE cachedrepo_events_total counter
cachedrepo_events_total{kind="breaker_open",op="",step="",table=""} 1
cachedrepo_events_total{kind="cache_error",op="upsert",step="write",table="orders"} 1
cachedrepo_events_total{kind="hit",op="get",step="",table="users"} 3
cachedrepo_events_total{kind="lease_wait",op="get",step="",table="users"} 2
cachedrepo_events_total{kind="miss",op="get",step="",table="users"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "cachedrepo_events_total"); err != nil {
		t.Fatal(err)
	}
	if n := testutil.CollectAndCount(c); n != 5+3+1 {
		t.Fatalf("%d series, want 9 (5 event, 3 operation, 1 lease wait)", n)
	}
}

type hist struct {
	count uint64
	sum   float64
}

// histograms gathers the histograms of one family by their label values
// joined with ",", in label name order.
func histograms(t *testing.T, reg *prometheus.Registry, name string) map[string]hist {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]hist{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if mf.GetType() != dto.MetricType_HISTOGRAM {
			t.Fatalf("%s is a %v", name, mf.GetType())
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			h := m.GetHistogram()
			if len(h.GetBucket()) != len(repoprom.DefaultBuckets()) {
				t.Errorf("%s: %d buckets", name, len(h.GetBucket()))
			}
			out[strings.Join(labels, ",")] = hist{h.GetSampleCount(), math.Round(h.GetSampleSum()*1e6) / 1e6}
		}
	}
	return out
}

func TestHistograms(t *testing.T) {
	c := repoprom.New("app")
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	feed(c)
	ops := histograms(t, reg, "app_operation_duration_seconds")
	wantOps := map[string]hist{
		"op=get,outcome=ok,table=users":        {3, 0.030},
		"op=get,outcome=not_found,table=users": {1, 0.020},
		"op=upsert,outcome=error,table=orders": {1, 0.030},
	}
	if fmt.Sprint(ops) != fmt.Sprint(wantOps) {
		t.Errorf("operation durations %v, want %v", ops, wantOps)
	}
	waits := histograms(t, reg, "app_lease_wait_seconds")
	if want := map[string]hist{"table=users": {2, 0.020}}; fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("lease waits %v, want %v", waits, want)
	}
}

func TestToFloat64(t *testing.T) {
	c := repoprom.New("")
	h := c.Hooks()
	for range 2 {
		h.Event(context.Background(), observe.Event{Kind: observe.Fill, Op: observe.OpGet, Table: "users", Duration: time.Millisecond})
	}
	if v := testutil.ToFloat64(c); v != 2 { // the one series there is
		t.Fatalf("fills %v, want 2", v)
	}
}

func TestPedanticRegistry(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := repoprom.New("")
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil { // nothing yet
		t.Fatal(err)
	}
	feed(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if got := strings.Join(names, " "); got != "cachedrepo_events_total cachedrepo_lease_wait_seconds cachedrepo_operation_duration_seconds" {
		t.Errorf("families %s", got)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	if err := reg.Register(repoprom.New("")); err == nil {
		t.Error("a second collector of the same namespace registered")
	}
	if err := reg.Register(repoprom.New("other")); err != nil {
		t.Errorf("another namespace: %v", err)
	}
}

func TestConcurrent(t *testing.T) {
	c := repoprom.New("")
	h := c.Hooks()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				table := fmt.Sprintf("t%d", (g+i)%3)
				h.Event(context.Background(), observe.Event{Kind: observe.Hit, Op: observe.OpGet, Table: table})
				h.OpEnd(context.Background(), observe.OpGet, table, time.Microsecond, nil)
			}
		})
	}
	wg.Wait()
	want := `
# HELP cachedrepo_events_total Cache events (hits, misses, fills, lease waits, cache errors, breaker changes).
# TYPE cachedrepo_events_total counter
cachedrepo_events_total{kind="hit",op="get",step="",table="t0"} 267
cachedrepo_events_total{kind="hit",op="get",step="",table="t1"} 267
cachedrepo_events_total{kind="hit",op="get",step="",table="t2"} 266
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "cachedrepo_events_total"); err != nil {
		t.Fatal(err)
	}
}

func TestHooksHaveNoOpStart(t *testing.T) {
	if h := repoprom.New("").Hooks(); h.OpStart != nil || h.Event == nil || h.OpEnd == nil {
		t.Fatalf("hooks %+v", h)
	}
}
