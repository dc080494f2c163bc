//go:build !race

package repoprom_test

import (
	"context"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/observe"
	"github.com/cachedrepo/cachedrepo/repo/repoprom"
)

// TestAllocs: once a series exists, feeding it allocates nothing.
func TestAllocs(t *testing.T) {
	h := repoprom.New("").Hooks()
	ctx := context.Background()
	ev := observe.Event{Kind: observe.LeaseWait, Op: observe.OpGet, Table: "users", Key: "u:1", Duration: time.Millisecond}
	n := testing.AllocsPerRun(1000, func() {
		h.Event(ctx, ev)
		h.OpEnd(ctx, observe.OpGet, "users", time.Millisecond, nil)
	})
	if n != 0 {
		t.Fatalf("%v allocations per operation, want 0", n)
	}
}
