package aggregate_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bradfitz/gomemcache/memcache"

	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/aggregate"
	"github.com/cachedrepo/cachedrepo/repo/internal/testenv"
)

func newLeaderboard(t testing.TB, db repo.DB, mc repo.Cache, cfg aggregate.LeaderboardConfig, o *repo.Options) *aggregate.Leaderboard {
	t.Helper()
	lb, err := aggregate.NewLeaderboard(db, mc, withCache(cfg, o))
	if err != nil {
		t.Fatal(err)
	}
	return lb
}

// dbTop is the reference: ORDER BY score DESC, player LIMIT n.
func dbTop(t testing.TB, e *env, board string, n int) []aggregate.Entry {
	t.Helper()
	rows, err := e.Pool.Query(context.Background(),
		`SELECT player, score FROM scores WHERE board = $1 ORDER BY score DESC, player LIMIT $2`, board, n)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := []aggregate.Entry{}
	for rows.Next() {
		en := aggregate.Entry{Rank: int64(len(out)) + 1}
		if err := rows.Scan(&en.Player, &en.Score); err != nil {
			t.Fatal(err)
		}
		out = append(out, en)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sameEntries(a, b []aggregate.Entry) bool {
	return len(a) == len(b) && (len(a) == 0 || reflect.DeepEqual(a, b))
}

// checkBoard checks that board's cached list (if any) and Top(n) equal the
// database; it reports whether a list was cached before Top.
func checkBoard(t *testing.T, e *env, lb *aggregate.Leaderboard, board string, n int) bool {
	t.Helper()
	want := dbTop(t, e, board, n)
	cached, ok, err := lb.Cached(board, n)
	if err != nil {
		t.Fatal(err)
	}
	if ok && !sameEntries(cached, want) {
		t.Errorf("%s: cached list\n got %v\nwant %v", board, cached, want)
	}
	got, err := lb.Top(context.Background(), board, n)
	if err != nil {
		t.Fatal(err)
	}
	if !sameEntries(got, want) {
		t.Errorf("%s: Top(%d)\n got %v\nwant %v", board, n, got, want)
	}
	return ok
}

func TestLeaderboardBasic(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	lb := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: 1}, e.Opts(nil))
	const b = "game"
	steps := []struct {
		player string
		score  int64
		remove bool
	}{
		{"alice", 50, false}, {"bob", 70, false}, {"carol", 60, false}, {"dave", 60, false}, // tie: carol before dave
		{"erin", 10, false}, {"frank", 90, false}, {"bob", 20, false}, // bob drops out of the list
		{"erin", 95, false}, {"frank", 0, true}, {"gina", 60, false}, {"alice", -5, false},
		{"carol", 5, true}, {"dave", 61, false}, {"bob", 100, false},
	}
	for i, s := range steps {
		var err error
		if s.remove {
			err = lb.Remove(ctx, b, s.player)
		} else {
			err = lb.Submit(ctx, b, s.player, s.score)
		}
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		checkBoard(t, e, lb, b, 3)
	}
	want := dbTop(t, e, b, 100)
	for _, w := range want {
		got, err := lb.Rank(ctx, b, w.Player)
		if err != nil || got != w {
			t.Errorf("Rank(%s) = %v, %v; want %v", w.Player, got, err, w)
		}
	}
	if _, err := lb.Rank(ctx, b, "nobody"); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("Rank(nobody): %v, want ErrNotFound", err)
	}
	if err := lb.Remove(ctx, b, "nobody"); !errors.Is(err, repo.ErrNotFound) {
		t.Errorf("Remove(nobody): %v, want ErrNotFound", err)
	}
	if got, err := lb.Top(ctx, "empty", 3); err != nil || len(got) != 0 {
		t.Errorf("Top(empty) = %v, %v", got, err)
	}
	for name, err := range map[string]error{
		"n < 0":        func() error { _, err := lb.Top(ctx, b, -1); return err }(),
		"n > Size":     func() error { _, err := lb.Top(ctx, b, 4); return err }(),
		"empty board":  func() error { _, err := lb.Top(ctx, "", 1); return err }(),
		"empty player": lb.Submit(ctx, b, "", 1),
		"remove empty": lb.Remove(ctx, "", "x"),
		"rank empty":   func() error { _, err := lb.Rank(ctx, b, ""); return err }(),
	} {
		var op *repo.OpError
		if !errors.Is(err, repo.ErrInvalidArgument) || !errors.As(err, &op) {
			t.Errorf("%s: err = %v, want an *OpError wrapping ErrInvalidArgument", name, err)
		}
	}
	st := lb.Stats()
	t.Logf("stats: %+v", st)
}

// TestLeaderboardComplete: a board with fewer players than Size+Slack is
// cached whole and stays complete as players join, until it overflows.
func TestLeaderboardComplete(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	lb := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: 2}, e.Opts(nil))
	const b = "small"
	if err := lb.Submit(ctx, b, "p1", 10); err != nil {
		t.Fatal(err)
	}
	checkBoard(t, e, lb, b, 3) // builds a complete list of one
	for i := 2; i <= 9; i++ {
		if err := lb.Submit(ctx, b, "p"+strconv.Itoa(i), int64(i*7%10)); err != nil {
			t.Fatal(err)
		}
		if !checkBoard(t, e, lb, b, 3) {
			t.Errorf("after p%d joined, the list was not cached", i)
		}
		// Low scorers join a complete list: every player's rank is cached.
		if i <= 5 {
			got, err := lb.Rank(ctx, b, "p"+strconv.Itoa(i))
			if err != nil || got.Player != "p"+strconv.Itoa(i) {
				t.Errorf("Rank(p%d) = %v, %v", i, got, err)
			}
		}
	}
	if st := lb.Stats(); st.Rebuilds != 1 || st.Drops != 0 {
		t.Errorf("rebuilds = %d, drops = %d; want 1 and 0", st.Rebuilds, st.Drops)
	}
}

// TestLeaderboardDropOut: players falling below the list shrink it; once
// it is shorter than Size it is deleted and rebuilt.
func TestLeaderboardDropOut(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	lb := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: 2}, e.Opts(nil))
	const b = "drop"
	for i := 1; i <= 20; i++ {
		if err := lb.Submit(ctx, b, fmt.Sprintf("p%02d", i), int64(100+i)); err != nil {
			t.Fatal(err)
		}
	}
	checkBoard(t, e, lb, b, 3)
	for i := 20; i >= 15; i-- { // the leaders fall to the bottom one by one
		if err := lb.Submit(ctx, b, fmt.Sprintf("p%02d", i), int64(i)); err != nil {
			t.Fatal(err)
		}
		present := checkBoard(t, e, lb, b, 3)
		if i > 18 && !present {
			t.Errorf("after p%02d fell out, the list (still >= Size) was dropped", i)
		}
	}
	if st := lb.Stats(); st.Drops == 0 || st.Rebuilds < 2 {
		t.Errorf("drops = %d, rebuilds = %d; want a drop and a rebuild", st.Drops, st.Rebuilds)
	}
}

// TestLeaderboardStaleUpdate: a Submit whose cache step is delayed past a
// newer Submit of the same player (whose score left the player outside the
// list) must not leave its older score in the list.
func TestLeaderboardStaleUpdate(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hdb := &testenv.ScanHookDB{Beginner: e.Pool}
	cfg := aggregate.LeaderboardConfig{Size: 2, Slack: -1}
	slow := newLeaderboard(t, hdb, e.MC, cfg, e.Opts(nil))
	fast := newLeaderboard(t, e.Pool, e.MC, cfg, e.Opts(nil))
	const b = "stale"
	for p, s := range map[string]int64{"p1": 100, "p2": 90, "p3": 80} {
		if err := fast.Submit(ctx, b, p, s); err != nil {
			t.Fatal(err)
		}
	}
	checkBoard(t, e, fast, b, 2) // cached: [p1 p2], incomplete

	committed, release := make(chan struct{}), make(chan struct{})
	f := func(sql string) {
		if strings.HasPrefix(sql, "INSERT") {
			close(committed)
			<-release
		}
	}
	hdb.After.Store(&f)
	done := make(chan error, 1)
	go func() { done <- slow.Submit(ctx, b, "x", 95) }()
	<-committed
	hdb.After.Store(nil)
	if err := fast.Submit(ctx, b, "x", 10); err != nil { // below the list: no change to it
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if checkBoard(t, e, fast, b, 2) {
		t.Errorf("the list holding the stale score was not dropped")
	}
	if st := slow.Stats(); st.Drops != 1 {
		t.Errorf("drops = %d, want 1", st.Drops)
	}
}

// TestLeaderboardRebuildRace: a rebuild that read the table before a
// Submit committed must not install its list.
func TestLeaderboardRebuildRace(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hdb := &testenv.ScanHookDB{Beginner: e.Pool}
	cfg := aggregate.LeaderboardConfig{Size: 2, Slack: 1}
	reader := newLeaderboard(t, hdb, e.MC, cfg, e.Opts(nil))
	writer := newLeaderboard(t, e.Pool, e.MC, cfg, e.Opts(nil))
	const b = "race"
	for i := 1; i <= 5; i++ {
		if err := writer.Submit(ctx, b, "p"+strconv.Itoa(i), int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	read, release := make(chan struct{}), make(chan struct{})
	f := func(sql string) {
		if strings.HasPrefix(sql, "SELECT player") {
			close(read)
			<-release
		}
	}
	hdb.After.Store(&f)
	done := make(chan []aggregate.Entry, 1)
	go func() {
		got, err := reader.Top(ctx, b, 2)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	<-read // the rebuild holds the lease and has read the table
	hdb.After.Store(nil)
	if err := writer.Submit(ctx, b, "p1", 1000); err != nil {
		t.Fatal(err)
	}
	close(release)
	if got := <-done; len(got) != 2 || got[0].Player != "p5" {
		t.Errorf("the racing Top returned %v, want what it read (p5 first)", got)
	}
	if _, ok, _ := writer.Cached(b, 2); ok {
		t.Errorf("the rebuild installed a list read before the Submit")
	}
	checkBoard(t, e, writer, b, 2)
}

// lbGetHookCache calls after (if set) once each Get has returned.
type lbGetHookCache struct {
	repo.Cache
	after atomic.Pointer[func(key string)]
}

func (h *lbGetHookCache) Get(key string) (*memcache.Item, error) {
	it, err := h.Cache.Get(key)
	if f := h.after.Load(); f != nil {
		(*f)(key)
	}
	return it, err
}

// TestLeaderboardLocalTTLRace: with LocalTTL, a Top that read the list
// before this process's Submit finished, and stores its copy after, must
// not make a later Top miss the Submit.
func TestLeaderboardLocalTTLRace(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	hc := &lbGetHookCache{Cache: e.MC}
	lb := newLeaderboard(t, e.Pool, hc, aggregate.LeaderboardConfig{Size: 3, LocalTTL: time.Hour}, e.Opts(nil))
	const b = "localrace"
	for i := 1; i <= 5; i++ {
		if err := lb.Submit(ctx, b, "p"+strconv.Itoa(i), int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	checkBoard(t, e, lb, b, 3)                         // cached, and kept locally
	if err := lb.Submit(ctx, b, "p4", 4); err != nil { // a no-op Submit: forgets the local copy
		t.Fatal(err)
	}
	read, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	f := func(string) {
		once.Do(func() {
			close(read)
			<-release
		})
	}
	hc.after.Store(&f)
	done := make(chan []aggregate.Entry, 1)
	go func() {
		got, err := lb.Top(ctx, b, 3)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	<-read // the Top has the old list from memcached
	hc.after.Store(nil)
	if err := lb.Submit(ctx, b, "p1", 100); err != nil {
		t.Fatal(err)
	}
	close(release)
	if got := <-done; len(got) != 3 || got[0].Player != "p5" {
		t.Errorf("the racing Top returned %v, want the list it read (p5 first)", got)
	}
	got, err := lb.Top(ctx, b, 3)
	if err != nil || len(got) != 3 || got[0].Player != "p1" {
		t.Errorf("Top after this process's Submit = %v, %v; want p1 first", got, err)
	}
}

// TestLeaderboardAppendTop: Top's slice is the caller's (lists are shared
// between calls, so changing it must not change later answers), AppendTop
// appends, and with LocalTTL a hit into a buffer with room allocates
// nothing.
func TestLeaderboardAppendTop(t *testing.T) {
	for _, ttl := range []time.Duration{0, time.Hour} {
		t.Run("LocalTTL="+ttl.String(), func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t)
			lb := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, LocalTTL: ttl}, e.Opts(nil))
			const b = "append"
			for i := 1; i <= 5; i++ {
				if err := lb.Submit(ctx, b, "p"+strconv.Itoa(i), int64(i)); err != nil {
					t.Fatal(err)
				}
			}
			want := dbTop(t, e, b, 3)
			for range 2 { // a rebuilt list, then a cached (or kept) one
				got, err := lb.Top(ctx, b, 3)
				if err != nil || !sameEntries(got, want) {
					t.Fatalf("Top = %v, %v; want %v", got, err, want)
				}
				got[0] = aggregate.Entry{Player: "changed by the caller"}
			}
			head := aggregate.Entry{Player: "head"}
			got, err := lb.AppendTop(ctx, []aggregate.Entry{head}, b, 2)
			if err != nil || !sameEntries(got, append([]aggregate.Entry{head}, want[:2]...)) {
				t.Errorf("AppendTop = %v, %v; want head then %v", got, err, want[:2])
			}
			if ttl > 0 {
				buf := make([]aggregate.Entry, 0, 3)
				allocs := testing.AllocsPerRun(100, func() {
					buf, err = lb.AppendTop(ctx, buf[:0], b, 3)
				})
				if err != nil || !sameEntries(buf, want) || allocs != 0 {
					t.Errorf("AppendTop within LocalTTL: %v, %v, %v allocs; want %v, 0 allocs", buf, err, allocs, want)
				}
			}
		})
	}
}

// memcachedStat returns one counter of memcached's "stats".
func memcachedStat(t testing.TB, addr, name string) int64 {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Write([]byte("stats\r\n")); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 1 && f[0] == "END" {
			break
		}
		if len(f) == 3 && f[1] == name {
			n, _ := strconv.ParseInt(f[2], 10, 64)
			return n
		}
	}
	return 0
}

// fillUntilEvicting sets 400-byte values until memcached at addr reports
// an eviction, and fails the test if a bound is reached first.
func fillUntilEvicting(t testing.TB, mc repo.Cache, addr, prefix string) {
	t.Helper()
	val := make([]byte, 400)
	for n := 0; n < 200_000; n++ {
		if err := mc.Set(&memcache.Item{Key: fmt.Sprintf("%s:%d", prefix, n), Value: val}); err != nil {
			t.Fatalf("filling the cache: %v", err)
		}
		if n%1000 == 999 && memcachedStat(t, addr, "evictions") > 0 {
			return
		}
	}
	t.Fatalf("memcached at %s evicted nothing after 200,000 sets", addr)
}

// TestLeaderboardConcurrent: several instances submit (increases,
// decreases, removals) and read on a few boards while a filler forces
// evictions, lists are deleted by hand and memcached restarts; after
// quiescence every cached list and Top(N) equal the database.
func TestLeaderboardConcurrent(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	mp, filler := privateCache(t, "-m", "2")
	const (
		instances, goroutines, ops = 3, 8, 60
		boards, players, size      = 4, 40, 10
	)
	cfg := aggregate.LeaderboardConfig{Size: size, Slack: 3}
	lbs := make([]*aggregate.Leaderboard, instances)
	hooks := make([]*hookLog, instances)
	for i := range lbs {
		hooks[i] = &hookLog{}
		lbs[i] = newLeaderboard(t, e.Pool, newClient(t, mp.Addr()), cfg, e.Opts(hooks[i]))
	}
	boardName := func(i int) string { return "board" + strconv.Itoa(i) }

	// Fill the tiny cache until it evicts, so the run below starts under
	// eviction pressure whatever the machine's speed.
	fillUntilEvicting(t, filler, mp.Addr(), e.NS+":prefill")

	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { // evictions: keep the tiny cache full, and now and then delete a list
		defer bg.Done()
		val := make([]byte, 400)
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = filler.Set(&memcache.Item{Key: fmt.Sprintf("%s:filler:%d", e.NS, n), Value: val})
			if n%500 == 0 {
				_ = filler.Delete(lbs[0].Key(boardName(rand.IntN(boards))))
			}
			if n%256 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()

	var submits, removes, done atomic.Int64
	restarted := make(chan error, 1)
	var evictedBefore int64
	go func() {
		for done.Load() < instances*goroutines*ops/2 {
			time.Sleep(time.Millisecond)
		}
		evictedBefore = memcachedStat(t, mp.Addr(), "evictions")
		restarted <- mp.Restart()
	}()
	var wg sync.WaitGroup
	for i := range lbs {
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				lb := lbs[i]
				for range ops {
					b := boardName(rand.IntN(boards))
					p := "p" + strconv.Itoa(rand.IntN(players))
					var err error
					switch r := rand.IntN(10); {
					case r < 6:
						err = lb.Submit(ctx, b, p, rand.Int64N(1000))
						submits.Add(1)
					case r < 7:
						err = lb.Remove(ctx, b, p)
						if errors.Is(err, repo.ErrNotFound) {
							err = nil
						}
						removes.Add(1)
					case r < 9:
						_, err = lb.Top(ctx, b, size)
					default:
						_, err = lb.Rank(ctx, b, p)
						if errors.Is(err, repo.ErrNotFound) {
							err = nil
						}
					}
					if err != nil {
						t.Error(err)
						return
					}
					done.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	close(stop)
	bg.Wait()
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if t.Failed() {
		return
	}
	evictions := evictedBefore + memcachedStat(t, mp.Addr(), "evictions")
	topEqual, present := true, 0
	for i := range boards {
		b := boardName(i)
		for _, lb := range lbs {
			if checkBoard(t, e, lb, b, size) {
				present++
			}
		}
		topEqual = topEqual && !t.Failed()
	}
	var conflicts, rebuilds, drops uint64
	for i, lb := range lbs {
		st := lb.Stats()
		conflicts += st.CASConflicts
		rebuilds += st.Rebuilds
		drops += st.Drops
		for _, ev := range hooks[i].All() {
			if errors.Is(ev.Err, memcache.ErrCacheMiss) {
				t.Errorf("hook saw a cache miss as an error: %v", ev)
			}
		}
	}
	if evictions == 0 {
		t.Errorf("no evictions: the filler did not fill the cache")
	}
	t.Logf("removes=%d drops=%d evictions=%d lists_present_at_check=%d/%d",
		removes.Load(), drops, evictions, present, boards*instances)
	testenv.Summaryf("leaderboard: submits=%d boards=%d top_equal=%v cas_conflicts=%d rebuilds=%d\n",
		submits.Load(), boards, topEqual, conflicts, rebuilds)
}

// TestLeaderboardLocalTTL: with LocalTTL, Top answers from this process's
// copy, which this process's own Submits forget.
func TestLeaderboardLocalTTL(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t)
	cfg := aggregate.LeaderboardConfig{Size: 3, LocalTTL: time.Hour}
	lb := newLeaderboard(t, e.Pool, e.MC, cfg, e.Opts(nil))
	other := newLeaderboard(t, e.Pool, e.MC, cfg, e.Opts(nil))
	const b = "local"
	for i := 1; i <= 5; i++ {
		if err := lb.Submit(ctx, b, "p"+strconv.Itoa(i), int64(i)); err != nil {
			t.Fatal(err)
		}
	}
	checkBoard(t, e, lb, b, 3)
	before := lb.Stats()
	for range 10 {
		if _, err := lb.Top(ctx, b, 3); err != nil {
			t.Fatal(err)
		}
	}
	if err := lb.Submit(ctx, b, "p1", 100); err != nil { // own change: seen at once
		t.Fatal(err)
	}
	checkBoard(t, e, lb, b, 3)
	if err := other.Submit(ctx, b, "p2", 200); err != nil { // another process's: not yet
		t.Fatal(err)
	}
	got, err := lb.Top(ctx, b, 3)
	if err != nil || got[0].Player != "p1" {
		t.Errorf("Top within LocalTTL = %v, %v; want the local copy (p1 first)", got, err)
	}
	if st := lb.Stats(); st.Hits < before.Hits+10 {
		t.Errorf("hits %d -> %d", before.Hits, st.Hits)
	}
}

// TestLeaderboardResubmitAfterConcurrentRemoveIsNewer: a Submit that waits
// on a player's row while another transaction bumps and then deletes it
// ends up inserting the row anew; its version must be above the deleted
// row's, or a cached list could order the removal after the new score.
func TestLeaderboardResubmitAfterConcurrentRemoveIsNewer(t *testing.T) {
	e := newEnv(t)
	lb := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 10}, e.Opts(nil))
	if err := lb.Submit(ctx, "b", "p1", 10); err != nil {
		t.Fatal(err)
	}
	tx := e.LockRows(t, `SELECT 1 FROM scores WHERE board = 'b' AND player = 'p1' FOR UPDATE`)
	done := make(chan error, 1)
	go func() { done <- lb.Submit(ctx, "b", "p1", 50) }() // waits for the lock
	e.WaitForLockWait(t)
	var deleted int64
	if _, err := tx.Exec(ctx, `UPDATE scores SET score = 11, version = DEFAULT WHERE board = 'b' AND player = 'p1'`); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, `DELETE FROM scores WHERE board = 'b' AND player = 'p1' RETURNING version`).Scan(&deleted); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var score, version int64
	if err := e.Pool.QueryRow(ctx, `SELECT score, version FROM scores WHERE board = 'b' AND player = 'p1'`).Scan(&score, &version); err != nil {
		t.Fatal(err)
	}
	if score != 50 || version <= deleted {
		t.Fatalf("re-inserted row: score %d version %d; the deleted row had version %d", score, version, deleted)
	}
}

// Rank of a player below the cached list counts the players ahead in the
// database (or a RankTTL snapshot's) with the right answer for ties: on
// 10,000 scores of one board (5,000 distinct scores), it agrees with rank()
// over the whole board.
func TestRankBelowTheList(t *testing.T) {
	e := newEnv(t)
	e.Exec(t, `INSERT INTO scores (board, player, score)
		SELECT b, 'p' || i, (i * 7919) % 5000 FROM generate_series(1, 10000) i, unnest(ARRAY['big', 'other']) b`)
	lb := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 10}, e.Opts(nil))
	snap := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 10, RankTTL: time.Hour}, e.Opts(nil))
	for _, player := range []string{"p1", "p5000", "p6789", "p9999", "p631", "p5631"} {
		var want aggregate.Entry
		if err := e.Pool.QueryRow(ctx, `SELECT player, score, r FROM (SELECT player, score,
			rank() OVER (ORDER BY score DESC, player) r FROM scores WHERE board = 'big') x WHERE player = $1`, player).
			Scan(&want.Player, &want.Score, &want.Rank); err != nil {
			t.Fatal(err)
		}
		if want.Rank <= 10 {
			t.Fatalf("%s ranks %d, inside the cached list: the test needs players below it", player, want.Rank)
		}
		got, err := lb.Rank(ctx, "big", player)
		if err != nil || got != want {
			t.Fatalf("Rank(%s) = %+v, %v; want %+v", player, got, err, want)
		}
		if got, err := snap.Rank(ctx, "big", player); err != nil || got != want {
			t.Fatalf("Rank(%s) from a RankTTL snapshot = %+v, %v; want %+v", player, got, err, want)
		}
	}

	// The player's own row is found through the primary key, not by reading
	// the board's whole rank index, in the generic plan a prepared
	// statement ends up with too, and before the table was analyzed (right
	// after a bulk load the planner chose the rank index).
	conn, err := e.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	for _, q := range []string{`SET plan_cache_mode = force_generic_plan`, `PREPARE rank_below AS ` + aggregate.RankSQL(lb)} {
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var plan []struct {
		Plan struct {
			NodeType  string `json:"Node Type"`
			IndexName string `json:"Index Name"`
		}
	}
	if err := conn.QueryRow(ctx, `EXPLAIN (FORMAT JSON) EXECUTE rank_below('big', 'p1')`).Scan(&plan); err != nil {
		t.Fatal(err)
	}
	if len(plan) != 1 || plan[0].Plan.IndexName != "scores_pkey" {
		t.Fatalf("rank's lookup of the player's row: %+v, want a scan of scores_pkey", plan)
	}
}

// dbRank is the reference rank of player on board: rank() over the whole
// board, ties by player id.
func dbRank(t testing.TB, e *env, board, player string) aggregate.Entry {
	t.Helper()
	var want aggregate.Entry
	if err := e.Pool.QueryRow(ctx, `SELECT player, score, r FROM (SELECT player, score,
		rank() OVER (ORDER BY score DESC, player) r FROM scores WHERE board = $1) x WHERE player = $2`, board, player).
		Scan(&want.Player, &want.Score, &want.Rank); err != nil {
		t.Fatal(err)
	}
	return want
}

// With RankTTL, a rank below the cached list is counted against the board's
// snapshot: one query for the snapshot per RankTTL, then one primary-key
// read of the player's score per Rank. Other players' changes may leave it
// up to RankTTL old; the player's own Submit or Remove, from any process,
// is seen by the next Rank. A player behind a snapshot that does not hold
// the whole board is counted in the database.
func TestLeaderboardRankTTL(t *testing.T) {
	e := newEnv(t)
	const b = "ranked"
	e.Exec(t, `INSERT INTO scores (board, player, score) SELECT 'ranked', 'p' || i, i * 10 FROM generate_series(1, 50) i`)
	var counts, snaps atomic.Int64 // rank queries counting in the database, snapshot reads
	hookDB := &testenv.ScanHookDB{Beginner: e.Pool}
	lb := newLeaderboard(t, hookDB, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: -1, RankTTL: time.Hour}, e.Opts(nil))
	small := newLeaderboard(t, hookDB, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: -1, RankTTL: time.Hour, RankSnapshot: 10}, e.Opts(nil))
	short := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: -1, RankTTL: 50 * time.Millisecond}, e.Opts(nil))
	other := newLeaderboard(t, e.Pool, e.MC, aggregate.LeaderboardConfig{Size: 3, Slack: -1}, e.Opts(nil)) // another process
	after := func(sql string) {
		switch sql {
		case aggregate.RankSQL(lb):
			counts.Add(1)
		case aggregate.TopSQL(lb):
			snaps.Add(1)
		}
	}
	if _, err := lb.Top(ctx, b, 3); err != nil { // the list is built (by the same query as a snapshot)
		t.Fatal(err)
	}
	hookDB.After.Store(&after)

	rank := func(l *aggregate.Leaderboard, player string) aggregate.Entry {
		t.Helper()
		got, err := l.Rank(ctx, b, player)
		if err != nil {
			t.Fatalf("Rank(%s): %v", player, err)
		}
		return got
	}
	want := dbRank(t, e, b, "p10")
	if got := rank(lb, "p10"); got != want || want.Rank != 41 {
		t.Fatalf("Rank(p10) = %+v, want %+v (rank 41)", got, want)
	}
	before := lb.Stats()
	for range 5 {
		if got := rank(lb, "p10"); got != want {
			t.Fatalf("Rank(p10) again = %+v, want %+v", got, want)
		}
	}
	if st := lb.Stats(); st.DBReads != before.DBReads+5 || counts.Load() != 0 || snaps.Load() != 1 {
		t.Fatalf("6 Ranks of p10: %d snapshot reads, %d counts; db reads %d -> %d over the last 5; want 1 snapshot, no count, 1 read each",
			snaps.Load(), counts.Load(), before.DBReads, st.DBReads)
	}

	// Another player passing p10 moves p10's true rank to 42; the snapshot
	// may lag (up to RankTTL), and short's catches up after its RankTTL.
	if got := rank(short, "p10"); got != want {
		t.Fatalf("short's Rank(p10) = %+v, want %+v", got, want)
	}
	if err := other.Submit(ctx, b, "p5", 105); err != nil {
		t.Fatal(err)
	}
	if got := rank(lb, "p10"); got != want {
		t.Fatalf("Rank(p10) after another player's change = %+v, want the snapshot's %+v", got, want)
	}
	time.Sleep(60 * time.Millisecond)
	if got, want := rank(short, "p10"), dbRank(t, e, b, "p10"); got != want || want.Rank != 42 {
		t.Fatalf("Rank(p10) after RankTTL = %+v, want %+v (rank 42)", got, want)
	}

	// p10's own changes, made by another process, are seen at once: up
	// past p5's old and new scores, then down to 12, below p10's own entry
	// in the snapshot.
	for _, c := range []struct {
		score int64
		rank  int64
	}{{255, 26}, {12, 49}} {
		if err := other.Submit(ctx, b, "p10", c.score); err != nil {
			t.Fatal(err)
		}
		if got, want := rank(lb, "p10"), dbRank(t, e, b, "p10"); got != want || want.Rank != c.rank {
			t.Fatalf("Rank(p10) after its Submit of %d = %+v, want %+v (rank %d)", c.score, got, want, c.rank)
		}
	}
	if err := other.Remove(ctx, b, "p10"); err != nil {
		t.Fatal(err)
	}
	if got, err := lb.Rank(ctx, b, "p10"); !errors.Is(err, repo.ErrNotFound) {
		t.Fatalf("Rank(p10) after its Remove = %+v, %v; want ErrNotFound", got, err)
	}
	if counts.Load() != 0 || snaps.Load() != 1 {
		t.Fatalf("lb: %d counts, %d snapshot reads; want none and 1", counts.Load(), snaps.Load())
	}

	// small's snapshot holds p41-p50: p45 is ranked from it, p20 behind it
	// is counted.
	for _, c := range []struct {
		player string
		counts int64
	}{{"p45", 0}, {"p20", 1}} {
		counts.Store(0)
		if got, want := rank(small, c.player), dbRank(t, e, b, c.player); got != want || counts.Load() != c.counts {
			t.Fatalf("small's Rank(%s) = %+v with %d counts, want %+v with %d", c.player, got, counts.Load(), want, c.counts)
		}
	}
}
