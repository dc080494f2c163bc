package repo_test

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/aggregate"
)

// The library's names tried everywhere at once: a Counter, a Leaderboard
// and a CacheCounter each holding values named like the library's own keys
// ("generation", "lease", "g", "probe"), Stores with rows keyed by those
// names on tables named like the library's key prefixes (the CacheCounter's
// "cc", the breaker probe's "probe", and "q.names" beside a Query named
// "names"), and the Query's results for those names. No two of them share
// a memcached key, by their Key methods and by what memcached holds: every
// value the test stored is its own item, the only other items being one
// generation per table and the Query's results. InvalidateAll moves every
// generation-keyed value to new keys (and nothing else), each table's
// generation counts its bumps, increments stay exact, and no cache error is
// reported. (TestLibraryKeysApartFromRowKeys tries the names as row keys of
// one Store.)
func TestLibraryNamesAcrossKinds(t *testing.T) {
	e := newEnv(t)
	names := []string{"generation", "lease", "g", "probe"}
	tables := []string{"cc", "probe", "q.names"}
	e.Exec(t, `CREATE SCHEMA q`)
	stores := map[string]*repo.Store[Note, string]{}
	for _, tb := range tables {
		e.Exec(t, `CREATE TABLE `+tb+` (id text PRIMARY KEY, body text NOT NULL)`)
		for _, n := range names {
			e.Exec(t, `INSERT INTO `+tb+` (id, body) VALUES ($1, $2)`, n, tb+" "+n)
		}
		s, err := repo.New(e.Pool, e.MC, repo.Table[Note, string]{Name: tb, Key: []string{"id"}, Columns: []string{"id", "body"}}, e.Opts(nil))
		if err != nil {
			t.Fatal(err)
		}
		stores[tb] = s
	}
	cache := aggregate.CacheConfig{Namespace: e.NS}
	counter, err := aggregate.NewCounter(e.Pool, e.MC, aggregate.CounterConfig{Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	board, err := aggregate.NewLeaderboard(e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := aggregate.NewCacheCounter(e.MC, cache)
	if err != nil {
		t.Fatal(err)
	}
	query, err := repo.NewQuery(e.MC, repo.QueryConfig[string, string]{Name: "names", TTL: time.Hour, Namespace: e.NS,
		Load: func(_ context.Context, n string) (string, error) { return "query " + n, nil }})
	if err != nil {
		t.Fatal(err)
	}

	// The keys the Key methods give, by owner; the Query has no Key method,
	// and neither has a generation.
	owned := func() map[string]string {
		t.Helper()
		keys := map[string]string{}
		own := func(owner, key string) {
			if o, ok := keys[key]; ok {
				t.Fatalf("%s and %s share the key %q", o, owner, key)
			}
			keys[key] = owner
		}
		for _, n := range names {
			own("counter "+n, counter.Key(n))
			own("board "+n, board.Key(n))
			own("cache counter "+n, cc.Key(n))
			for _, tb := range tables {
				own("store "+tb+" row "+n, stores[tb].Key(n))
			}
		}
		return keys
	}
	// What memcached holds under the test's namespace.
	held := func() map[string]bool {
		t.Helper()
		keys := map[string]bool{}
		err := e.MC.Keys(ctx, e.MCAddr, func(key string, _ int64) error {
			if strings.HasPrefix(key, e.NS+":") {
				keys[key] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return keys
	}
	// Writes and reads of every value, each checked.
	value := map[string]int64{}
	touch := func(round int) {
		t.Helper()
		for i, n := range names {
			delta := int64(i + 1)
			if round > 0 {
				delta = 1
			}
			value[n] += delta
			if got, err := counter.Add(ctx, n, delta); err != nil || got != value[n] {
				t.Fatalf("round %d: counter %q Add: %d %v, want %d", round, n, got, err, value[n])
			}
			if got, err := cc.Increment(ctx, n, delta); err != nil || got != value[n] {
				t.Fatalf("round %d: cache counter %q Increment: %d %v, want %d", round, n, got, err, value[n])
			}
			if err := board.Submit(ctx, n, "p", value[n]); err != nil {
				t.Fatal(err)
			}
		}
		for _, n := range names {
			if got, err := counter.Get(ctx, n); err != nil || got != value[n] {
				t.Fatalf("round %d: counter %q: %d %v, want %d", round, n, got, err, value[n])
			}
			if got, err := cc.Get(ctx, n); err != nil || got != value[n] {
				t.Fatalf("round %d: cache counter %q: %d %v, want %d", round, n, got, err, value[n])
			}
			if top, err := board.Top(ctx, n, 3); err != nil || len(top) != 1 || top[0].Player != "p" || top[0].Score != value[n] {
				t.Fatalf("round %d: board %q: %+v %v, want p at %d", round, n, top, err, value[n])
			}
			if got, err := query.Get(ctx, n); err != nil || got != "query "+n {
				t.Fatalf("round %d: query %q: %q %v", round, n, got, err)
			}
			for _, tb := range tables {
				if got, err := stores[tb].Get(ctx, n); err != nil || got.Body != tb+" "+n {
					t.Fatalf("round %d: store %s row %q: %+v %v", round, tb, n, got, err)
				}
			}
		}
	}

	touch(0)
	keys, mc := owned(), held()
	for k, o := range keys {
		if !mc[k] {
			t.Fatalf("the key %q of %s is not in memcached", k, o)
		}
	}
	// The rest: one generation per table (a decimal number, 0 before any
	// bump) and the Query's results.
	var gens, rest []string
	for k := range mc {
		if _, ok := keys[k]; ok {
			continue
		}
		if it, err := e.MC.Get(k); err == nil && string(it.Value) == "0" {
			gens = append(gens, k)
		} else {
			rest = append(rest, k)
		}
	}
	perTable := len(tables) + 2 // the stores', the counters' and the scores'
	if len(gens) != perTable || len(rest) != len(names) {
		t.Fatalf("memcached holds %d keys: %d of the Key methods, generations %q (want %d), others %q (want the %d query results)",
			len(mc), len(keys), gens, perTable, rest, len(names))
	}
	for _, k := range rest {
		if !strings.HasPrefix(k, e.NS+":q.names:c") {
			t.Fatalf("%q is neither a generation nor a query result", k)
		}
	}

	for round := 1; round <= 2; round++ {
		for _, s := range stores {
			if err := s.InvalidateAll(ctx); err != nil {
				t.Fatalf("round %d: store InvalidateAll: %v", round, err)
			}
		}
		if err := counter.InvalidateAll(ctx); err != nil {
			t.Fatalf("round %d: counter InvalidateAll: %v", round, err)
		}
		if err := board.InvalidateAll(ctx); err != nil {
			t.Fatalf("round %d: board InvalidateAll: %v", round, err)
		}
		touch(round)
		now, mcNow := owned(), held()
		// New in memcached: exactly the keys that changed with the
		// generations (every one but the CacheCounter's).
		var moved, appeared []string
		for k, o := range now {
			if _, ok := keys[k]; !ok {
				moved = append(moved, k)
			} else if !strings.HasPrefix(o, "cache counter ") {
				t.Fatalf("round %d: InvalidateAll left the key %q of %s", round, k, o)
			}
		}
		for k := range mcNow {
			if !mc[k] {
				appeared = append(appeared, k)
			}
		}
		slices.Sort(moved)
		slices.Sort(appeared)
		if want := len(names) * (len(tables) + 2); len(moved) != want || !slices.Equal(moved, appeared) {
			t.Fatalf("round %d: keys moved %q (want %d), new in memcached %q", round, moved, want, appeared)
		}
		for _, k := range gens {
			if it, err := e.MC.Get(k); err != nil || string(it.Value) != strconv.Itoa(round) {
				t.Fatalf("round %d: generation %q: %v %v, want %d", round, k, it, err, round)
			}
		}
		keys, mc = now, mcNow
	}
	stats := map[string]uint64{"counter": counter.Stats().CacheErrors, "board": board.Stats().CacheErrors,
		"cache counter": cc.Stats().CacheErrors, "query": query.Stats().CacheErrors}
	for tb, s := range stores {
		stats["store "+tb] = s.Stats().CacheErrors
	}
	for _, who := range slices.Sorted(maps.Keys(stats)) {
		if stats[who] != 0 {
			t.Errorf("%s: %d cache errors", who, stats[who])
		}
	}
	t.Logf("%d keys apart in memcached", len(mc))
}
