package repo_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/maypok86/otter/v2"

	"github.com/cachedrepo/cachedrepo/internal/codec"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
)

// BenchmarkGetHitNear compares a near-cache hit (Options.Near) with a raw
// gomemcache Get of the same encoded row plus its decode, over the same
// 1,000 rows and goroutines as BenchmarkGetHit.
func BenchmarkGetHitNear(b *testing.B) {
	const rows = 1000
	e, _, cd, rawKeys := hitRows(b, rows) // rows cached in memcached
	n := runNear(b, e, 2*rows)
	o := e.Opts(nil)
	o.Near = n
	s := e.products(b, o)
	for id := int64(1); id <= rows; id++ {
		if _, err := s.Get(ctx, id); err != nil { // fills the near-cache from memcached
			b.Fatal(err)
		}
	}
	b.Run("raw", func(b *testing.B) { rawGetHit(b, e, cd, rawKeys) })
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		before, hits := s.Stats(), n.Hits()
		var c atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := c.Add(1)%rows + 1
				p, err := s.Get(ctx, id)
				if err != nil || p.ID != id {
					b.Fatal(err)
				}
			}
		})
		if d := s.Stats().Hits - before.Hits; n.Hits()-hits < uint64(b.N)*9/10 {
			b.Fatalf("%d near-cache hits and %d memcached hits of %d reads", n.Hits()-hits, d, b.N)
		}
	})
}

// BenchmarkGetManyMiss: GetMany of 100 keys never cached before, against
// the raw work it wraps: a pipelined GetMulti of the keys (all miss), the
// same "= ANY" SELECT, and 100 plain sets (one round trip each: gomemcache
// has no pipelined set). It reports the
// store's CAS conflicts per op (the goal is 0: a fill with a single caller
// never loses its first CAS).
func BenchmarkGetManyMiss(b *testing.B) {
	const rows, batch = 50000, 100
	e, _ := benchEnv(b, rows)
	cd, err := codec.For[Product]()
	if err != nil {
		b.Fatal(err)
	}
	mc, err := memclient.New(memclient.Config{Servers: []string{e.MCAddr}})
	if err != nil {
		b.Fatal(err)
	}
	sel := "SELECT id, article_number, name, category_id, price_cents, updated_at, version FROM products WHERE id = ANY($1)"
	round := 0
	ids := func(c int64) []int64 {
		out := make([]int64, batch)
		for i := range out {
			out[i] = (c*batch+int64(i))%rows + 1
		}
		return out
	}
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		round++
		var c atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n := c.Add(1) - 1
				keys := make([]string, batch)
				for i, id := range ids(n) {
					keys[i] = fmt.Sprintf("%s:raw-%d-%d:%d", e.NS, round, n, id)
				}
				if items, err := mc.GetMulti(keys); err != nil || len(items) != 0 {
					b.Fatalf("GetMulti of fresh keys: %d items, %v", len(items), err)
				}
				r, _ := e.Pool.Query(ctx, sel, ids(n))
				ps, err := pgx.CollectRows(r, pgx.RowToStructByName[Product])
				if err != nil || len(ps) != batch {
					b.Fatal(len(ps), err)
				}
				for i := range ps {
					if err := mc.Set(&memcache.Item{Key: keys[i], Value: cd.Append(nil, &ps[i]), Expiration: 3600}); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		round++
		var conflicts atomic.Uint64
		var c atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				n := c.Add(1) - 1
				o := e.Opts(nil)
				o.Namespace = fmt.Sprintf("%s-%d-%d", e.NS, round, n) // keys never cached before
				s, err := repo.New(e.Pool, e.MC, productTable, o)
				if err != nil {
					b.Fatal(err)
				}
				m, err := s.GetMany(ctx, ids(n))
				if err != nil || len(m) != batch {
					b.Fatal(len(m), err)
				}
				conflicts.Add(s.Stats().CASConflicts)
			}
		})
		b.ReportMetric(float64(conflicts.Load())/float64(b.N), "cas_conflicts/op")
	})
}

// BenchmarkGetManyNear: GetMany of one article's stock in 170 stores (the
// example's stock_across), every row in the near-cache, against the raw
// work it wraps: 170 lookups of prebuilt keys in an otter cache holding the
// same rows, gathered into a map by key; and the same through AppendMany.
func BenchmarkGetManyNear(b *testing.B) {
	const stores = 170
	e := newEnv(b)
	e.Exec(b, `INSERT INTO stores (code, name, city) SELECT 'B' || lpad(i::text, 3, '0'), 'x', 'y' FROM generate_series(1, $1) i`, stores)
	e.Exec(b, `INSERT INTO stock (article_number, uom, store_code, quantity) SELECT 'A1', 'EA', 'B' || lpad(i::text, 3, '0'), i FROM generate_series(1, $1) i`, stores)
	n := runNear(b, e, 10*stores)
	o := e.Opts(nil)
	o.Near = n
	s, err := repo.New(e.Pool, e.MC, stockTable, o)
	if err != nil {
		b.Fatal(err)
	}
	keys := make([]StockKey, stores)
	for i := range keys {
		keys[i] = StockKey{"A1", "EA", fmt.Sprintf("B%03d", i+1)}
	}
	rows, err := s.GetMany(ctx, keys) // fills the near-cache
	if err != nil || len(rows) != stores {
		b.Fatalf("GetMany: %d rows, %v", len(rows), err)
	}
	raw := otter.Must(&otter.Options[string, Stock]{MaximumSize: 10 * stores})
	rawKeys := make([]string, stores)
	for i, k := range keys {
		rawKeys[i] = s.Key(k)
		raw.Set(rawKeys[i], rows[k])
	}
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			out := make(map[StockKey]Stock, stores)
			for i, key := range rawKeys {
				if v, ok := raw.GetIfPresent(key); ok {
					out[keys[i]] = v
				}
			}
			if len(out) != stores {
				b.Fatal(len(out))
			}
		}
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		hits := n.Hits()
		for b.Loop() {
			out, err := s.GetMany(ctx, keys)
			if err != nil || len(out) != stores {
				b.Fatal(len(out), err)
			}
		}
		if got := n.Hits() - hits; got < uint64(b.N)*stores {
			b.Fatalf("%d near-cache hits for %d GetManys of %d keys", got, b.N, stores)
		}
	})
	// AppendMany into a reused slice: the rows in key order, without a map.
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		var dst []Stock
		for b.Loop() {
			var err error
			if dst, err = s.AppendMany(ctx, dst[:0], keys); err != nil || len(dst) != stores {
				b.Fatal(len(dst), err)
			}
		}
	})
}

// runNear returns a near-cache of size entries (an hour's MaxAge) over e,
// listening, and running until b ends.
func runNear(b *testing.B, e *env, size int) *repo.NearCache {
	b.Helper()
	n, err := repo.NewNearCache(repo.NearConfig{Size: size, MaxAge: time.Hour, Channel: "near_" + e.NS,
		Connect: func(ctx context.Context) (*pgx.Conn, error) { return pgx.Connect(ctx, e.URL) }})
	if err != nil {
		b.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	go func() { _ = n.Run(rctx) }()
	for !n.Listening() {
		time.Sleep(time.Millisecond)
	}
	return n
}
