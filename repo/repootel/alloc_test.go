//go:build !race

package repootel_test

import (
	"context"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/cachedrepo/cachedrepo/repo/repootel"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/trace/noop"
)

// TestAllocs: with metrics on and tracing off, an operation with a Fill
// event allocates only the context that carries its (no-op) span.
func TestAllocs(t *testing.T) {
	h, err := repootel.Hooks(repootel.WithTracerProvider(noop.NewTracerProvider()),
		repootel.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))))
	if err != nil {
		t.Fatal(err)
	}
	ev := observe.Event{Kind: observe.Fill, Op: observe.OpGet, Table: "users", Key: "u:1", Duration: time.Millisecond}
	n := testing.AllocsPerRun(1000, func() {
		ctx := h.OpStart(context.Background(), observe.OpGet, "users")
		h.Event(ctx, ev)
		h.OpEnd(ctx, observe.OpGet, "users", time.Millisecond, nil)
	})
	if n > 1 {
		t.Fatalf("%v allocations per operation, want at most 1 (context.WithValue)", n)
	}
}
