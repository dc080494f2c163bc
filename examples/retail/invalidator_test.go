package main

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// retail invalidator keeps the catalogue in line with a change made by SQL:
// a product renamed behind the service's back is served renamed within the
// invalidator's lag, by the plain and by the sqlc-typed store.
func TestInvalidatorCommand(t *testing.T) {
	a := newTestApp(t, true)
	ctx, cancel := context.WithCancel(context.Background())
	slot := "t_" + strings.NewReplacer("-", "_", ".", "_").Replace(strings.ToLower(a.cfg.Namespace))
	done := make(chan error, 1)
	var out strings.Builder
	go func() {
		done <- runInvalidator(ctx, a.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), slot, time.Hour, &out)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("invalidator: %v", err)
		}
		for range 50 {
			if _, err := a.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot($1)`, slot); err == nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	// Wait until the invalidator streams: its slot is active.
	deadline := time.Now().Add(10 * time.Second)
	for {
		var active bool
		err := a.pool.QueryRow(ctx, `SELECT active FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&active)
		if err == nil && active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the invalidator never took its slot: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // its first InvalidateAll (a new slot) is done
	ctx0 := context.Background()
	if _, err := a.cat.products.Get(ctx0, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := a.cat.sqlcProducts.Get(ctx0, 3); err != nil {
		t.Fatal(err)
	}
	if _, err := a.pool.Exec(ctx0, `UPDATE products SET name = 'renamed by SQL' WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		p, err1 := a.cat.products.Get(ctx0, 3)
		q, err2 := a.cat.sqlcProducts.Get(ctx0, 3)
		if err1 == nil && err2 == nil && p.Name == "renamed by SQL" && q.Name == "renamed by SQL" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not renamed in the cache: %q %v, %q %v", p.Name, err1, q.Name, err2)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
