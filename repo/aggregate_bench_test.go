package repo_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
)

// aggregatePool returns a pool of 32 connections on e's database, so that
// 32 goroutines are not limited by pgxpool's default of 4.
func aggregatePool(b *testing.B, e *env) *pgxpool.Pool {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = 32
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// BenchmarkCounterAdd: 32 goroutines increment one hot counter. raw is the
// bare UPDATE ... RETURNING that Counter.Add runs; store is Counter.Add (the
// same UPDATE, then the versioned write-through to a cached counter).
func BenchmarkCounterAdd(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b)
	pool := aggregatePool(b, e)
	c := newCounter(b, pool, e.mc, e.opts(nil))
	if _, err := c.Add(ctx, "hot", 1); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Get(ctx, "hot"); err != nil { // cached, so Add's write-through CASes
		b.Fatal(err)
	}
	const update = `UPDATE counters SET value = value + $2, version = DEFAULT WHERE name = $1 RETURNING value, version`
	b.Run("raw", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			var v, ver int64
			for pb.Next() {
				if err := pool.QueryRow(ctx, update, "hot", 1).Scan(&v, &ver); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		before := c.Stats()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := c.Add(ctx, "hot", 1); err != nil {
					b.Fatal(err)
				}
			}
		})
		st := c.Stats()
		b.ReportMetric(float64(st.CASConflicts-before.CASConflicts)/float64(b.N), "conflicts/op")
		b.ReportMetric(float64(st.CacheErrors-before.CacheErrors)/float64(b.N), "cache-errors/op")
	})
}

// BenchmarkLeaderboardTop: the top 100 of a board of 1,000,000 scores.
// db is the indexed ORDER BY score DESC, player LIMIT 100; cached is
// Leaderboard.Top(100) with the list in the cache.
func BenchmarkLeaderboardTop(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b)
	pool := aggregatePool(b, e)
	e.exec(b, `INSERT INTO scores (board, player, score)
		SELECT 'big', 'player' || i, (i::bigint * 7919) % 1000003 FROM generate_series(1, 1000000) i`)
	e.exec(b, `ANALYZE scores`)
	lb := newLeaderboard(b, pool, e.mc, repo.LeaderboardConfig{}, e.opts(nil))
	if _, err := lb.Top(ctx, "big", 100); err != nil { // builds the cached list
		b.Fatal(err)
	}
	b.Run("db", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rows, err := pool.Query(ctx, `SELECT player, score FROM scores WHERE board = $1 ORDER BY score DESC, player LIMIT 100`, "big")
				if err != nil {
					b.Fatal(err)
				}
				out := make([]repo.Entry, 0, 100)
				for rows.Next() {
					en := repo.Entry{Rank: int64(len(out)) + 1}
					if err := rows.Scan(&en.Player, &en.Score); err != nil {
						b.Fatal(err)
					}
					out = append(out, en)
				}
				if rows.Err() != nil || len(out) != 100 {
					b.Fatal(rows.Err(), len(out))
				}
			}
		})
	})
	b.Run("cached", func(b *testing.B) {
		b.ReportAllocs()
		before := lb.Stats()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				top, err := lb.Top(ctx, "big", 100)
				if err != nil || len(top) != 100 {
					b.Fatal(err, len(top))
				}
			}
		})
		if st := lb.Stats(); st.DBReads != before.DBReads {
			b.Errorf("cached Top read the database %d times", st.DBReads-before.DBReads)
		}
	})
	// local: LocalTTL = 100ms, the list is reused in process between reads.
	local := newLeaderboard(b, pool, e.mc, repo.LeaderboardConfig{LocalTTL: 100 * time.Millisecond}, e.opts(nil))
	b.Run("local", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				top, err := local.Top(ctx, "big", 100)
				if err != nil || len(top) != 100 {
					b.Fatal(err, len(top))
				}
			}
		})
	})
}

// BenchmarkLeaderboardSubmit: 32 goroutines submit random scores of random
// players on one board, with the list cached. raw is the bare upsert;
// store is Submit (the upsert, then the list's gets/modify/CAS). Each op
// is followed, one time in 50, by a Top, which rebuilds a dropped list.
func BenchmarkLeaderboardSubmit(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b)
	pool := aggregatePool(b, e)
	for _, players := range []int{1000, 100000} {
		board := "b" + strconv.Itoa(players)
		e.exec(b, `INSERT INTO scores (board, player, score)
			SELECT $1, 'player' || i, (i::bigint * 7919) % 1000003 FROM generate_series(1, $2) i`, board, players)
	}
	e.exec(b, `ANALYZE scores`)
	lb := newLeaderboard(b, pool, e.mc, repo.LeaderboardConfig{}, e.opts(nil))
	for _, players := range []int{1000, 100000} {
		board := "b" + strconv.Itoa(players)
		name := "players=" + strconv.Itoa(players)
		b.Run(name+"/raw", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(benchGoroutinesPerCPU)
			b.RunParallel(func(pb *testing.PB) {
				var v int64
				for pb.Next() {
					p := "player" + strconv.Itoa(1+rand.IntN(players))
					err := pool.QueryRow(ctx, `INSERT INTO scores AS s (board, player, score) VALUES ($1, $2, $3)
						ON CONFLICT (board, player) DO UPDATE SET score = EXCLUDED.score, version = DEFAULT RETURNING version`,
						board, p, rand.Int64N(1000003)).Scan(&v)
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		})
		b.Run(name+"/store", func(b *testing.B) {
			if _, err := lb.Top(ctx, board, 100); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			before := lb.Stats()
			b.SetParallelism(benchGoroutinesPerCPU)
			b.RunParallel(func(pb *testing.PB) {
				for i := 0; pb.Next(); i++ {
					p := "player" + strconv.Itoa(1+rand.IntN(players))
					if err := lb.Submit(ctx, board, p, rand.Int64N(1000003)); err != nil {
						b.Fatal(err)
					}
					if i%50 == 49 {
						if _, err := lb.Top(ctx, board, 100); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
			st := lb.Stats()
			n := float64(b.N)
			b.ReportMetric(float64(st.CASConflicts-before.CASConflicts)/n, "conflicts/op")
			b.ReportMetric(float64(st.Drops-before.Drops)/n, "drops/op")
			b.ReportMetric(float64(st.Rebuilds-before.Rebuilds)/n, "rebuilds/op")
		})
	}
}
