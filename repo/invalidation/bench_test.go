package invalidation_test

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
)

// BenchmarkWALApply measures the invalidator applying one committed UPDATE
// of 100,000 cached rows, from the commit to its confirmation (PostgreSQL's
// decoding and streaming included) (every row cached, so each change deletes a key)
// against two raw baselines in the same run: the same keys deleted by one
// pipeline of quiet meta deletes ("md <key> q", then "mn") written straight
// to memcached's socket, the fastest a client can delete them; and the keys
// read and deleted with memclient's pipelines directly (GetMulti, then
// DeleteIfUnchanged), the two round trips per server the invalidator makes
// per batch to keep entries newer than the change.
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
	var walRate, rawRate, checkedRate float64
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

		// A raw pipelined delete of the same keys.
		fill()
		start = time.Now()
		rawDelete(b, e.MCAddr, keys)
		rawRate = rows / time.Since(start).Seconds()
		if _, err := e.MC.Get(keys[rows-1]); err != memcache.ErrCacheMiss {
			b.Fatalf("key %s after the raw delete: %v", keys[rows-1], err)
		}

		// memclient's read-then-delete-if-unchanged over the same keys.
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
		checkedRate = rows / time.Since(start).Seconds()
	}
	b.ReportMetric(walRate, "rows/s")
	b.ReportMetric(rawRate, "raw-rows/s")
	b.ReportMetric(checkedRate, "checked-rows/s")
	testenv.Summaryf("wal-bench: rows_per_s=%.0f raw_delete_rows_per_s=%.0f ratio=%.2f raw_get_delete_if_unchanged_rows_per_s=%.0f goal_rows_per_s=50000\n",
		walRate, rawRate, walRate/rawRate, checkedRate)
}

// rawDelete deletes keys from the memcached at addr in one pipeline of
// quiet meta deletes: only failures answer, and "mn" ends the pipeline. A
// miss (EN) is fine; any other answer fails the benchmark.
func rawDelete(b *testing.B, addr string, keys []string) {
	b.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	go func() {
		w := bufio.NewWriterSize(nc, 64<<10)
		for _, k := range keys {
			w.WriteString("md ")
			w.WriteString(k)
			w.WriteString(" q\r\n")
		}
		w.WriteString("mn\r\n")
		_ = w.Flush() // a failed write shows as a missing MN below
	}()
	r := bufio.NewReader(nc)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			b.Fatalf("raw delete: %v", err)
		}
		switch {
		case bytes.Equal(line, []byte("MN\r\n")):
			return
		case bytes.HasPrefix(line, []byte("EN")):
		default:
			b.Fatalf("raw delete: %q", line)
		}
	}
}
