package repo_test

import (
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/internal/codec"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// benchGoroutinesPerCPU makes RunParallel use 32 goroutines on these 2-core
// machines, the concurrency the raw baselines in DESIGN.md were measured at.
const benchGoroutinesPerCPU = 16

// benchEnv seeds n products and returns the env and a store over them.
func benchEnv(b *testing.B, n int) (*env, *repo.Store[Product, int64]) {
	b.Helper()
	e := newEnv(b)
	e.Exec(b, `INSERT INTO products (id, article_number, name, category_id, price_cents)
		SELECT i, 'A' || i, 'product number ' || i, 1 + i % 2, i * 10 FROM generate_series(1, $1) i`, n)
	e.Exec(b, `ANALYZE products`)
	return e, e.products(b, nil)
}

// BenchmarkGetHit compares Store.Get of a cached row with the raw work it
// wraps: a gomemcache Get of the same encoded row plus the same decode.
func BenchmarkGetHit(b *testing.B) {
	const rows = 1000
	e, s, cd, rawKeys := hitRows(b, rows)
	b.Run("raw", func(b *testing.B) { rawGetHit(b, e, cd, rawKeys) })
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		before := s.Stats()
		var n atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := n.Add(1)%rows + 1
				p, err := s.Get(ctx, id)
				if err != nil || p.ID != id {
					b.Fatal(err)
				}
			}
		})
		if d := s.Stats().DBReads - before.DBReads; d != 0 {
			b.Fatalf("%d database reads during a hit benchmark", d)
		}
	})
}

// rawGetHit is the raw row of the hit benchmarks: a gomemcache Get of an
// encoded row (rawKeys of hitRows) plus its decode, over the same goroutines.
func rawGetHit(b *testing.B, e *env, cd *codec.Codec[Product], rawKeys []string) {
	b.ReportAllocs()
	rows := int64(len(rawKeys) - 1)
	var n atomic.Int64
	b.SetParallelism(benchGoroutinesPerCPU)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := n.Add(1)%rows + 1
			it, err := e.MC.Get(rawKeys[id])
			if err != nil {
				b.Fatal(err)
			}
			var p Product
			if err := cd.Decode(it.Value, &p); err != nil || p.ID != id {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkGetManyHit compares GetMany of 100 cached rows with a raw GetMulti
// of the same 100 keys plus decoding each value.
func BenchmarkGetManyHit(b *testing.B) {
	const rows, batch = 1000, 100
	e, s := benchEnv(b, rows)
	cd, err := codec.For[Product]()
	if err != nil {
		b.Fatal(err)
	}
	ids := make([]int64, rows)
	rawKeys := make([]string, rows)
	for i := range ids {
		ids[i] = int64(i + 1)
		rawKeys[i] = fmt.Sprintf("%s:raw:%d", e.NS, i+1)
	}
	for i := 0; i < rows; i += batch {
		m, err := s.GetMany(ctx, ids[i:i+batch])
		if err != nil || len(m) != batch {
			b.Fatal(err)
		}
		for j := i; j < i+batch; j++ {
			p := m[ids[j]]
			if err := e.MC.Set(&memcache.Item{Key: rawKeys[j], Value: cd.Append(nil, &p)}); err != nil {
				b.Fatal(err)
			}
		}
	}
	// The baseline is gomemcache's own GetMulti (memclient's GetMulti is the
	// pipeline the store uses), with the same pool size and timeout.
	raw := memcache.New(e.MCAddr)
	raw.MaxIdleConns, raw.Timeout = 64, time.Second
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		var n atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				off := int(n.Add(1)%(rows/batch)) * batch
				items, err := raw.GetMulti(rawKeys[off : off+batch])
				if err != nil || len(items) != batch {
					b.Fatal(err)
				}
				out := make(map[int64]Product, batch)
				for _, it := range items {
					var p Product
					if err := cd.Decode(it.Value, &p); err != nil {
						b.Fatal(err)
					}
					out[p.ID] = p
				}
			}
		})
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		before := s.Stats()
		var n atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				off := int(n.Add(1)%(rows/batch)) * batch
				m, err := s.GetMany(ctx, ids[off:off+batch])
				if err != nil || len(m) != batch {
					b.Fatal(err)
				}
			}
		})
		if d := s.Stats().DBReads - before.DBReads; d != 0 {
			b.Fatalf("%d database reads during a hit benchmark", d)
		}
	})
}

// BenchmarkGetMiss shows what a miss costs. Every op is a real miss of a key
// never used before, of the same rows in the same order:
//
//   - raw: the primary-key SELECT alone, the database's share.
//   - plain: naive cache-aside by hand (gomemcache Get, a miss; the same
//     SELECT; encode with the same codec; Set): two memcached round trips.
//   - store: Store.Get of a missing key over a *memclient.Client: mg (a miss
//     that takes the lease), the same SELECT, encode, then the fill's ms
//     with the lease's CAS id: two round trips, plus the in-process
//     singleflight.
//
// The store's keys stay fresh by moving to a new namespace (an empty key
// space) each time the ids wrap.
func BenchmarkGetMiss(b *testing.B) {
	const rows = 50000
	e, _ := benchEnv(b, rows)
	cd, err := codec.For[Product]()
	if err != nil {
		b.Fatal(err)
	}
	sel := "SELECT id, article_number, name, category_id, price_cents, updated_at, version FROM products WHERE id = $1"
	round := 0
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		var n atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				id := n.Add(1)%rows + 1
				r, _ := e.Pool.Query(ctx, sel, id)
				p, err := pgx.CollectOneRow(r, pgx.RowToStructByName[Product])
				if err != nil || p.ID != id {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("plain", func(b *testing.B) {
		b.ReportAllocs()
		round++
		prefix := fmt.Sprintf("%s:plain-%d:products:", e.NS, round)
		var n atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c := n.Add(1) - 1
				id := c%rows + 1
				key := prefix + strconv.FormatInt(c, 10)
				if _, err := e.MC.Get(key); !errors.Is(err, memcache.ErrCacheMiss) {
					b.Fatalf("plain Get of a fresh key: %v, want a miss", err)
				}
				r, _ := e.Pool.Query(ctx, sel, id)
				p, err := pgx.CollectOneRow(r, pgx.RowToStructByName[Product])
				if err != nil || p.ID != id {
					b.Fatal(err)
				}
				it := &memcache.Item{Key: key, Value: cd.Append(make([]byte, 0, 128), &p), Expiration: 3600}
				if err := e.MC.Set(it); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		round++
		stores := make([]*repo.Store[Product, int64], b.N/rows+1)
		for i := range stores {
			o := e.Opts(nil)
			o.Namespace = fmt.Sprintf("%s-%d-%d", e.NS, round, i)
			stores[i] = e.products(b, o)
		}
		var n atomic.Int64
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				c := n.Add(1) - 1
				id := c%rows + 1
				p, err := stores[c/rows].Get(ctx, id)
				if err != nil || p.ID != id {
					b.Fatal(err)
				}
			}
		})
		var st observe.Stats
		for _, s := range stores {
			x := s.Stats()
			st.Hits += x.Hits
			st.LeaseWaits += x.LeaseWaits
			st.Fills += x.Fills
			st.DBReads += x.DBReads
			st.CacheErrors += x.CacheErrors
		}
		// A fill may fail on an overloaded machine (a memcached timeout,
		// reported as a cache error); every op must still be a real miss.
		if st.Hits != 0 || st.LeaseWaits != 0 || st.DBReads != uint64(b.N) || st.Fills+st.CacheErrors < uint64(b.N) {
			b.Fatalf("b.N=%d: %+v, want every op a miss with one read and one fill", b.N, st)
		}
	})
}
