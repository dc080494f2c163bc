package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/cachedrepo/cachedrepo/repo/invalidation"
)

// targets returns every cached table of the app, for the WAL invalidator.
func (a *app) targets() []invalidation.Target {
	c := a.cat
	return []invalidation.Target{c.categories, c.products, c.sqlcProducts, c.shops, c.stock, a.agg.counter, a.agg.scores}
}

// runInvalidator runs the WAL invalidator (retail invalidator) until ctx
// ends, logging its figures every interval.
func runInvalidator(ctx context.Context, cfg config, log *slog.Logger, slot string, interval time.Duration, out io.Writer) error {
	if !cfg.Cache {
		return errors.New("invalidator: CACHE=off: there is no cache to keep in line")
	}
	a, err := newApp(ctx, cfg, log, 8)
	if err != nil {
		return err
	}
	defer a.close()
	w, err := invalidation.NewWAL(invalidation.WALConfig{ConnString: cfg.DatabaseURL, Slot: slot, Targets: a.targets()})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	log.Info("invalidator started", "slot", slot)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case err := <-done:
			if errors.Is(err, context.Canceled) {
				err = nil
			}
			st := w.Stats()
			fmt.Fprintf(out, "invalidator: transactions=%d changes=%d ignored=%d truncates=%d lag_p50_ms=%.1f lag_p99_ms=%.1f\n",
				st.Transactions, st.Changes, st.Ignored, st.Truncates, ms(st.LagP50), ms(st.LagP99))
			return err
		case <-t.C:
			st := w.Stats()
			slot, err := w.SlotStatus(ctx)
			log.Info("invalidator", "holding", st.Holding, "transactions", st.Transactions, "changes", st.Changes,
				"lag_p50_ms", ms(st.LagP50), "lag_p99_ms", ms(st.LagP99), "confirmed", st.ConfirmedLSN,
				"retained_wal_bytes", slot.RetainedWAL, "wal_status", slot.WALStatus, "slot_err", err)
		}
	}
}
