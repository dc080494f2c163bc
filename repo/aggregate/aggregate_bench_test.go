package aggregate_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo/aggregate"
)

// aggregatePool returns a pool of 32 connections on e's database, so that
// 32 goroutines are not limited by pgxpool's default of 4.
func aggregatePool(b *testing.B, e *env) *pgxpool.Pool {
	b.Helper()
	cfg, err := pgxpool.ParseConfig(e.URL)
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
	c := newCounter(b, pool, e.MC, e.Opts(nil))
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

// BenchmarkLeaderboardTop: the top 100 of a board of 1,000,000 scores,
// 32 goroutines.
//
//   - db: Top(100) answered by the database, the query a service without
//     the cache runs: SELECT player, score ... ORDER BY score DESC, player
//     LIMIT 100, scanned into Entries. The table is VACUUMed (as autovacuum
//     would have) and checkpointed, so this is an index-only scan of
//     scores_board_rank with no heap fetches (the setup checks the plan
//     with EXPLAIN), and every pooled connection is opened and has run the
//     query (prepared, pages in shared buffers) before timing. It is the
//     database's best case and the baseline of every x-db ratio, so the
//     ratios are not flattered.
//   - db-rebuild: Leaderboard's own rebuild statement (lbTopSQL), exactly:
//     Size+Slack+1 = 121 rows with their versions, an index scan with a
//     heap fetch per row. With the pages in shared buffers it costs about
//     what db does: the per-row work, the protocol and decoding dominate,
//     not the heap fetches. It is what a cache miss costs, not the
//     baseline.
//   - memcached-get: a bare gomemcache Get of the cached list's item, no
//     decode: the floor of any path that asks memcached.
//   - cached: Top(100) with the default options. Every call is one
//     memcached round trip, and the answer is exact: the cached list at
//     some moment during the call. This is the figure to compare with db
//     when every process must see every other process's change at once.
//   - cached-local: Top(100) with LocalTTL = 100ms. Most calls are answered
//     from this process's copy with no round trip, so the answer may miss
//     other processes' changes for up to LocalTTL (see LocalTTL). It is a
//     different consistency contract, so it is a separate row, not the
//     "cached" figure. Top's one allocation (the caller's copy of 100
//     Entries) is most of its cost here.
//   - cached-local-append: the same with AppendTop into a reused buffer,
//     which allocates nothing on a local hit.
//
// Rows after db report x-db: db's ns/op divided by theirs, both from this
// run (the machines are noisy: compare within one run only).
func BenchmarkLeaderboardTop(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b)
	pool := aggregatePool(b, e)
	loadScores(b, pool, `INSERT INTO scores (board, player, score)
		SELECT 'big', 'player' || i, (i::bigint * 7919) % 1000003 FROM generate_series(1, 1000000) i`)
	const topSQL = `SELECT player, score FROM scores WHERE board = $1 ORDER BY score DESC, player LIMIT $2`
	checkIndexPlan(b, pool, topSQL, "big", 100)
	checkIndexPlan(b, pool, lbTopSQL, "big", 121)
	warmPool(b, pool, topSQL, "big", 100)
	warmPool(b, pool, lbTopSQL, "big", 121)
	lb := newLeaderboard(b, pool, e.MC, aggregate.LeaderboardConfig{}, e.Opts(nil))
	if _, err := lb.Top(ctx, "big", 100); err != nil { // builds the cached list
		b.Fatal(err)
	}
	var dbNs float64
	nsPerOp := func(b *testing.B) float64 { return float64(b.Elapsed().Nanoseconds()) / float64(b.N) }
	ratio := func(b *testing.B) {
		if dbNs > 0 {
			b.ReportMetric(dbNs/nsPerOp(b), "x-db")
		}
	}
	b.Run("db", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rows, err := pool.Query(ctx, topSQL, "big", 100)
				if err != nil {
					b.Fatal(err)
				}
				out := make([]aggregate.Entry, 0, 100)
				for rows.Next() {
					en := aggregate.Entry{Rank: int64(len(out)) + 1}
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
		dbNs = nsPerOp(b)
	})
	b.Run("db-rebuild", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rows, err := pool.Query(ctx, lbTopSQL, "big", 121)
				if err != nil {
					b.Fatal(err)
				}
				var n int
				var player string
				var score, version int64
				for rows.Next() {
					if err := rows.Scan(&player, &score, &version); err != nil {
						b.Fatal(err)
					}
					n++
				}
				if rows.Err() != nil || n != 121 {
					b.Fatal(rows.Err(), n)
				}
			}
		})
		ratio(b)
	})
	b.Run("memcached-get", func(b *testing.B) {
		key := lb.Key("big")
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.MC.Get(key); err != nil {
					b.Fatal(err)
				}
			}
		})
		ratio(b)
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
		ratio(b)
		if st := lb.Stats(); st.DBReads != before.DBReads {
			b.Errorf("cached Top read the database %d times", st.DBReads-before.DBReads)
		}
	})
	local := newLeaderboard(b, pool, e.MC, aggregate.LeaderboardConfig{LocalTTL: 100 * time.Millisecond}, e.Opts(nil))
	b.Run("cached-local", func(b *testing.B) {
		b.ReportAllocs()
		before := local.Stats()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				top, err := local.Top(ctx, "big", 100)
				if err != nil || len(top) != 100 {
					b.Fatal(err, len(top))
				}
			}
		})
		ratio(b)
		if st := local.Stats(); st.DBReads != before.DBReads {
			b.Errorf("cached-local Top read the database %d times", st.DBReads-before.DBReads)
		}
	})
	b.Run("cached-local-append", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchGoroutinesPerCPU)
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]aggregate.Entry, 0, 100)
			for pb.Next() {
				var err error
				buf, err = local.AppendTop(ctx, buf[:0], "big", 100)
				if err != nil || len(buf) != 100 {
					b.Fatal(err, len(buf))
				}
			}
		})
		ratio(b)
	})
}

// loadScores runs insert, then VACUUM ANALYZE and CHECKPOINT, leaving the
// table as autovacuum would (statistics current, the visibility map set,
// so an index-only scan needs no heap fetches) and no dirty pages to be
// written while the first sub-benchmark runs (without it, whichever ran
// first was the slowest). The test server runs with
// synchronous_commit=off, and VACUUM does not mark a page all-visible
// while the inserting transaction's commit record is unflushed, so the
// insert commits synchronously.
func loadScores(b *testing.B, pool *pgxpool.Pool, insert string) {
	b.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, insert)
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE scores`); err != nil {
		b.Fatal(err)
	}
	// Write the load's dirty pages out now, not while db is timed.
	if _, err := pool.Exec(ctx, `CHECKPOINT`); err != nil {
		b.Logf("CHECKPOINT: %v (dirty pages may be flushed while db runs)", err)
	}
	var pages, visible int64
	if err := pool.QueryRow(ctx, `SELECT relpages, relallvisible FROM pg_class WHERE relname = 'scores'`).Scan(&pages, &visible); err != nil {
		b.Fatal(err)
	}
	if visible < pages*9/10 {
		b.Logf("after VACUUM only %d of %d pages of scores are all-visible", visible, pages)
	}
	b.Logf("scores: %d pages, %d all-visible", pages, visible)
}

// lbTopSQL is the statement Leaderboard rebuilds a list with (see
// NewLeaderboard), for the default table.
const lbTopSQL = `SELECT player, score, version FROM "scores" WHERE board = $1 ORDER BY score DESC, player LIMIT $2`

// checkIndexPlan fails b unless sql's plan is an index scan of
// scores_board_rank without a sort, or an index-only one without heap
// fetches, and logs the plan (go test -v).
func checkIndexPlan(b *testing.B, pool *pgxpool.Pool, sql string, args ...any) {
	b.Helper()
	rows, err := pool.Query(context.Background(), "EXPLAIN (ANALYZE, BUFFERS) "+sql, args...)
	if err != nil {
		b.Fatal(err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		b.Fatal(err)
	}
	plan := strings.Join(lines, "\n")
	b.Logf("plan of %s:\n%s", sql, plan)
	if !strings.Contains(plan, "Index Scan using scores_board_rank") && !strings.Contains(plan, "Index Only Scan using scores_board_rank") ||
		strings.Contains(plan, "Sort") {
		b.Fatalf("the top query does not use scores_board_rank:\n%s", plan)
	}
	if strings.Contains(plan, "Index Only Scan") && !strings.Contains(plan, "Heap Fetches: 0") {
		b.Fatalf("the index-only scan fetches heap pages (visibility map not set):\n%s", plan)
	}
}

// warmPool opens every connection of pool at once and runs sql on each,
// so the timed loop neither dials nor prepares.
func warmPool(b *testing.B, pool *pgxpool.Pool, sql string, args ...any) {
	b.Helper()
	ctx := context.Background()
	conns := make([]*pgxpool.Conn, pool.Config().MaxConns)
	for i := range conns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		conns[i] = c
	}
	for _, c := range conns {
		rows, err := c.Query(ctx, sql, args...)
		if err != nil {
			b.Fatal(err)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			b.Fatal(err)
		}
		c.Release()
	}
}

// BenchmarkLeaderboardSubmit: 32 goroutines submit random scores of random
// players on one board, with the list cached. raw is the bare upsert;
// store is Submit (the upsert, then the list's gets/modify/CAS). Each op
// is followed, one time in 50, by a Top, which rebuilds a dropped list.
//
// store reports x-raw (raw's ns/op over store's, same run), conflicts/op
// (CAS attempts lost), drops/op and rebuilds/op, and misses/top: the share
// of Tops that found no usable list. On the small board a random score
// enters the list one time in eight or so, and a Submit that finds a
// rebuild's lease deletes it, so under this write rate the list is often
// absent: store then skips the CAS and reads cost a query. misses/top
// says how much of store's figure is that.
func BenchmarkLeaderboardSubmit(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b)
	pool := aggregatePool(b, e)
	loadScores(b, pool, `INSERT INTO scores (board, player, score)
		SELECT 'b' || n, 'player' || i, (i::bigint * 7919) % 1000003
		FROM unnest(ARRAY[1000, 100000]) n, generate_series(1, n) i`)
	const upsert = `INSERT INTO "scores" AS s (board, player, score) VALUES ($1, $2, $3) ON CONFLICT (board, player)` +
		` DO UPDATE SET score = EXCLUDED.score, version = DEFAULT RETURNING version` // Submit's statement
	warmPool(b, pool, `SELECT 1`)
	lb := newLeaderboard(b, pool, e.MC, aggregate.LeaderboardConfig{}, e.Opts(nil))
	for _, players := range []int{1000, 100000} {
		board := "b" + strconv.Itoa(players)
		name := "players=" + strconv.Itoa(players)
		var rawNs float64
		b.Run(name+"/raw", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(benchGoroutinesPerCPU)
			b.RunParallel(func(pb *testing.PB) {
				var v int64
				for pb.Next() {
					p := "player" + strconv.Itoa(1+rand.IntN(players))
					if err := pool.QueryRow(ctx, upsert, board, p, rand.Int64N(1000003)).Scan(&v); err != nil {
						b.Fatal(err)
					}
				}
			})
			rawNs = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
		b.Run(name+"/store", func(b *testing.B) {
			if _, err := lb.Top(ctx, board, 100); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			before := lb.Stats()
			var tops atomic.Int64
			b.SetParallelism(benchGoroutinesPerCPU)
			b.RunParallel(func(pb *testing.PB) {
				for i := 0; pb.Next(); i++ {
					p := "player" + strconv.Itoa(1+rand.IntN(players))
					if err := lb.Submit(ctx, board, p, rand.Int64N(1000003)); err != nil {
						b.Fatal(err)
					}
					if i%50 == 49 {
						tops.Add(1)
						if _, err := lb.Top(ctx, board, 100); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
			st := lb.Stats()
			n := float64(b.N)
			if rawNs > 0 {
				b.ReportMetric(rawNs/(float64(b.Elapsed().Nanoseconds())/n), "x-raw")
			}
			b.ReportMetric(float64(st.CASConflicts-before.CASConflicts)/n, "conflicts/op")
			b.ReportMetric(float64(st.Drops-before.Drops)/n, "drops/op")
			b.ReportMetric(float64(st.Rebuilds-before.Rebuilds)/n, "rebuilds/op")
			if t := tops.Load(); t > 0 {
				b.ReportMetric(float64(st.Misses-before.Misses)/float64(t), "misses/top")
			}
		})
	}
}
