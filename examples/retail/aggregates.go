package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/aggregate"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// errUnavailable is answered with 501; kept for endpoints a build may leave
// out.
var errUnavailable = errors.New("not available in this build")

// entry is one leaderboard row as the API returns it.
type entry struct {
	Player string `json:"player"`
	Score  int64  `json:"score"`
	Rank   int64  `json:"rank"`
}

// Leaderboard sizes: Top serves up to topSize entries from the cache.
const topSize = 100

// rankTTL is how old the other players' scores may be in the rank of a
// player below the cached top list (aggregate.LeaderboardConfig.RankTTL):
// the board is ranked against a snapshot of it kept that long, instead of
// counting the players ahead in Postgres on each call (milliseconds); the
// player's own score is read at once.
const rankTTL = 5 * time.Second

// aggregates holds the visitors counter and the game leaderboard, both
// kept in the cache with CAS loops by the library (tables counters and
// scores, migrations.Library).
type aggregates struct {
	cache    repo.Cache
	counter  *aggregate.Counter
	scores   *aggregate.Leaderboard
	maxTopIn int
}

// newAggregates builds the counter and the leaderboard; ranks below the top
// list are ranked against a snapshot (rankTTL) only with the cache on, so
// that the no-cache service counts them in Postgres, as it would without the
// library.
func newAggregates(db repo.DB, cache repo.Cache, opts *repo.Options, cached bool) (*aggregates, error) {
	c, err := aggregate.NewCounter(db, cache, aggregate.CounterConfig{Cache: aggregate.CacheConfig{Namespace: opts.Namespace, TTL: opts.TTL, Hooks: opts.Hooks}})
	if err != nil {
		return nil, err
	}
	var rt time.Duration
	if cached {
		rt = rankTTL
	}
	lb, err := aggregate.NewLeaderboard(db, cache, aggregate.LeaderboardConfig{Size: topSize, RankTTL: rt, Cache: aggregate.CacheConfig{Namespace: opts.Namespace, TTL: opts.TTL, Hooks: opts.Hooks}})
	if err != nil {
		return nil, err
	}
	return &aggregates{cache: cache, counter: c, scores: lb, maxTopIn: lb.Size()}, nil
}

func (a *aggregates) visit(ctx context.Context) (int64, error) {
	return a.counter.Add(ctx, visitorsCounter, 1)
}

func (a *aggregates) visits(ctx context.Context) (int64, error) {
	return a.counter.Get(ctx, visitorsCounter)
}

func (a *aggregates) submit(ctx context.Context, board, player string, score int64) error {
	return a.scores.Submit(ctx, board, player, score)
}

func (a *aggregates) top(ctx context.Context, board string, n int) ([]entry, error) {
	if n > a.maxTopIn {
		return nil, badf("n=%d: at most %d", n, a.maxTopIn)
	}
	es, err := a.scores.Top(ctx, board, n)
	if err != nil {
		return nil, err
	}
	out := make([]entry, len(es))
	for i, e := range es {
		out[i] = entry(e)
	}
	return out, nil
}

func (a *aggregates) rank(ctx context.Context, board, player string) (entry, error) {
	e, err := a.scores.Rank(ctx, board, player)
	return entry(e), err
}

func (a *aggregates) stats() map[string]observe.Stats {
	return map[string]observe.Stats{"counter": a.counter.Stats(), "leaderboard": a.scores.Stats()}
}

// seed resets the visitors counter to 42 (the article's example: two visits
// later it reads 44) and fills the load test's board with
// leaderboardPlayers players. It writes the tables directly and then
// deletes the cached counter and list, which the next read rebuilds.
func (a *aggregates) seed(ctx context.Context, pool *pgxpool.Pool, out io.Writer) error {
	if _, err := pool.Exec(ctx, `INSERT INTO counters (name, value) VALUES ($1, 42)
		ON CONFLICT (name) DO UPDATE SET value = 42, version = DEFAULT`, visitorsCounter); err != nil {
		return fmt.Errorf("seeding the visitors counter: %w", err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM scores WHERE board = $1`, loadBoard); err != nil {
		return fmt.Errorf("emptying board %s: %w", loadBoard, err)
	}
	i := 0
	if _, err := pool.CopyFrom(ctx, pgx.Identifier{"scores"}, []string{"board", "player", "score"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if i == leaderboardPlayers {
				return nil, nil
			}
			i++
			return []any{loadBoard, playerName(uint64(i - 1)), int64(quantity(int64(i), 7)) * 1000}, nil
		})); err != nil {
		return fmt.Errorf("seeding board %s: %w", loadBoard, err)
	}
	// Like the catalogue's tables after their copy: planner statistics and a
	// visibility map from the start, not after autovacuum's first round
	// (until then Rank's lookup of a player could read the whole board).
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) scores, counters`); err != nil {
		return fmt.Errorf("vacuum analyze: %w", err)
	}
	// Both aggregates changed behind the library's back: drop their cached
	// state so the next read loads it from the tables. A failed delete is
	// reported; the values expire by their TTL anyway.
	if err := a.dropCached(ctx); err != nil {
		fmt.Fprintf(out, "seed: warning: %v\n", err)
	}
	fmt.Fprintf(out, "seed: visitors counter = 42, board %q with %d players\n", loadBoard, leaderboardPlayers)
	return nil
}

// dropCached brings the cache in line after seed's direct writes: a counter
// Add of 0 bumps the row version and writes the value through; the board's
// cached list is deleted, to be rebuilt under a lease by the next Top.
func (a *aggregates) dropCached(ctx context.Context) error {
	if _, err := a.counter.Add(ctx, visitorsCounter, 0); err != nil {
		return fmt.Errorf("refreshing the cached counter: %w", err)
	}
	if err := a.cache.Delete(a.scores.Key(loadBoard)); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
		return fmt.Errorf("deleting the cached top list of %s: %w", loadBoard, err)
	}
	return nil
}
