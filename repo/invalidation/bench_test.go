package invalidation_test

import (
	"context"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
)

// BenchmarkWALApply measures the invalidator applying one committed UPDATE
// of 100,000 cached rows, from the commit to its confirmation (PostgreSQL's
// decoding and streaming included) (every row cached, so each change deletes a key)
// against a raw baseline in the same run: the same keys read and deleted
// with memclient's pipelines directly (GetMulti, then DeleteIfUnchanged),
// the two round trips per server the invalidator makes per batch.
func BenchmarkWALApply(b *testing.B) {
	const rows = 100_000
	r := newWALRigB(b)
	e := r.e
	e.Exec(b, `INSERT INTO products (id, article_number, name, category_id, price_cents)
		SELECT i, 'A' || i, 'p', 1, 0 FROM generate_series(1, $1) AS i`, rows)
	keys := make([]string, rows)
	for i := range keys {
		keys[i] = r.products.Key(int64(i + 1))
	}
	fill := func() {
		b.Helper()
		ctx := context.Background()
		for off := 0; off < rows; off += 1000 {
			ids := make([]int64, 0, 1000)
			for i := off; i < off+1000; i++ {
				ids = append(ids, int64(i+1))
			}
			if _, err := r.products.GetMany(ctx, ids); err != nil {
				b.Fatal(err)
			}
		}
	}
	var walRate, rawRate float64
	for n := 0; n < b.N; n++ {
		// The invalidator.
		r.appliedB(b)
		fill()
		e.Exec(b, `UPDATE products SET price_cents = price_cents + 1`)
		start := time.Now() // committed: from here on it is the invalidator's work
		r.appliedB(b)
		walRate = rows / time.Since(start).Seconds()
		for _, k := range keys[:100] {
			if _, err := e.MC.Get(k); err != memcache.ErrCacheMiss {
				b.Fatalf("key %s after the invalidator: %v", k, err)
			}
		}

		// The raw pipelines over the same keys.
		fill()
		start = time.Now()
		items, err := e.MC.GetMulti(keys)
		if err != nil || len(items) != rows {
			b.Fatalf("GetMulti: %d items, %v", len(items), err)
		}
		list := make([]*memcache.Item, 0, rows)
		for _, it := range items {
			list = append(list, it)
		}
		if changed, err := e.MC.DeleteIfUnchanged(list); err != nil || len(changed) != 0 {
			b.Fatalf("DeleteIfUnchanged: %d changed, %v", len(changed), err)
		}
		rawRate = rows / time.Since(start).Seconds()
	}
	b.ReportMetric(walRate, "rows/s")
	b.ReportMetric(rawRate, "raw-rows/s")
	testenv.Summaryf("wal-bench: rows_per_s=%.0f raw_rows_per_s=%.0f ratio=%.2f\n", walRate, rawRate, walRate/rawRate)
}
