package repo_test

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/internal/codec"
	"github.com/cachedrepo/cachedrepo/repo"
)

// BenchmarkGetHitParallel compares Store.Get of cached rows with the raw work
// it wraps (a gomemcache Get of the same encoded row, by a client with an
// idle connection for every goroutine, plus the same decode) at 1, 32 and
// 256 goroutines, each its own sub-benchmark with the rows raw and store:
// memclient coalesces concurrent LeaseGets into one pipeline per round trip,
// gomemcache sends one request per round trip. Run the rows of one
// concurrency as separate processes, alternating, to compare them:
//
//	go test -count 1 -run '^$' -bench 'BenchmarkGetHitParallel/256/raw' ./repo/
//
// One goroutine's time is one round trip, which a loaded machine stretches
// by more than the difference between the rows; 1/interleaved alternates a
// raw and a store read in one goroutine and reports both and their ratio.
func BenchmarkGetHitParallel(b *testing.B) {
	const rows = 1000
	e, s, cd, rawKeys := hitRows(b, rows)
	rawGet := func(raw *memcache.Client, i int64) error {
		id := i%rows + 1
		it, err := raw.Get(rawKeys[id])
		if err != nil {
			return err
		}
		var p Product
		if err := cd.Decode(it.Value, &p); err != nil || p.ID != id {
			return fmt.Errorf("decoding row %d: %v (id %d)", id, err, p.ID)
		}
		return nil
	}
	storeGet := func(i int64) error {
		id := i%rows + 1
		p, err := s.Get(ctx, id)
		if err != nil || p.ID != id {
			return fmt.Errorf("Get(%d): %v (id %d)", id, err, p.ID)
		}
		return nil
	}
	newRaw := func(g int) *memcache.Client {
		raw := memcache.New(e.MCAddr)
		raw.MaxIdleConns, raw.Timeout = max(g, 64), time.Second
		return raw
	}
	for _, g := range []int{1, 32, 256} {
		b.Run(strconv.Itoa(g), func(b *testing.B) {
			b.Run("raw", func(b *testing.B) {
				raw := newRaw(g)
				defer raw.Close()
				b.ReportAllocs()
				goroutines(b, g, func(i int64) error { return rawGet(raw, i) })
			})
			b.Run("store", func(b *testing.B) {
				b.ReportAllocs()
				before := s.Stats()
				goroutines(b, g, storeGet)
				if d := s.Stats().DBReads - before.DBReads; d != 0 {
					b.Fatalf("%d database reads during a hit benchmark", d)
				}
			})
			if g > 1 {
				return
			}
			b.Run("interleaved", func(b *testing.B) {
				raw := newRaw(g)
				defer raw.Close()
				var rawTime, storeTime time.Duration
				for i := range int64(b.N) {
					t0 := time.Now()
					if err := rawGet(raw, i); err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if err := storeGet(i); err != nil {
						b.Fatal(err)
					}
					rawTime += t1.Sub(t0)
					storeTime += time.Since(t1)
				}
				b.ReportMetric(float64(rawTime.Nanoseconds())/float64(b.N), "raw-ns/op")
				b.ReportMetric(float64(storeTime.Nanoseconds())/float64(b.N), "store-ns/op")
				b.ReportMetric(float64(storeTime)/float64(rawTime), "store/raw")
			})
		})
	}
}

// hitRows seeds n products, caches each through the store, and stores its
// encoded row under a raw key too (rawKeys[id], ids from 1) for the raw
// baselines: the setup of BenchmarkGetHit.
func hitRows(b *testing.B, n int) (*env, *repo.Store[Product, int64], *codec.Codec[Product], []string) {
	b.Helper()
	e, s := benchEnv(b, n)
	cd, err := codec.For[Product]()
	if err != nil {
		b.Fatal(err)
	}
	rawKeys := make([]string, n+1)
	for id := int64(1); id <= int64(n); id++ {
		p, err := s.Get(ctx, id) // fills the store's cache
		if err != nil {
			b.Fatal(err)
		}
		rawKeys[id] = fmt.Sprintf("%s:raw:%d", e.NS, id)
		if err := e.MC.Set(&memcache.Item{Key: rawKeys[id], Value: cd.Append(nil, &p)}); err != nil {
			b.Fatal(err)
		}
	}
	return e, s, cd, rawKeys
}

// goroutines runs op b.N times over g goroutines, each op given the next
// number from 0, and fails b with the first error.
func goroutines(b *testing.B, g int, op func(i int64) error) {
	b.Helper()
	var n atomic.Int64
	var first atomic.Pointer[error]
	var wg sync.WaitGroup
	b.ResetTimer()
	for range g {
		wg.Go(func() {
			for i := n.Add(1) - 1; i < int64(b.N); i = n.Add(1) - 1 {
				if err := op(i); err != nil {
					first.CompareAndSwap(nil, &err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	if err := first.Load(); err != nil {
		b.Fatal(*err)
	}
}
