package aggregate

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/repo"
	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// LeaderboardConfig configures a Leaderboard. The zero value gives the
// documented defaults.
type LeaderboardConfig struct {
	// Table is the scores table, optionally schema-qualified. It needs the
	// columns board (text), player (text COLLATE "C", so that ORDER BY player
	// is byte order, the order of Go strings), score (bigint) and version
	// (bigint with an identity or sequence default), the primary key
	// (board, player) and an index on (board, score DESC, player).
	// Default "scores" (created by migrations.Library).
	Table string

	// Size is the longest top list served from the cache: Top's n may be at
	// most Size. Default 100.
	Size int

	// Slack is how many entries beyond Size the cached list keeps, so that
	// that many players can fall out of it before it must be rebuilt.
	// Default Size/5; negative means none.
	Slack int

	// LocalTTL, if positive, lets Top, AppendTop and Rank answer from the
	// list this process last read from memcached (or rebuilt) for up to
	// LocalTTL after reading it, without a round trip. Default 0: every
	// call reads memcached, so it sees every change whose cache step has
	// finished, whichever process made it.
	//
	// What it trades: a change made by another process (another instance
	// of the service, or another Leaderboard value in this one) is seen by
	// this process's Top and Rank up to LocalTTL after its cache step
	// finished, not at once; that is the staleness bound across processes
	// (measured on the monotonic clock, so a loaded machine does not
	// stretch it). Within one Leaderboard value, a Top or Rank that starts
	// after a Submit or Remove of the same board returned sees it: their
	// cache step invalidates every local copy read before it, including one
	// that a Top running concurrently keeps afterwards. The cached list and
	// its guarantees are unchanged; only what this process serves may lag.
	//
	// Use it for hot boards that many requests read, where scores a few
	// LocalTTLs old are acceptable: a hit is a lookup and a copy of n
	// entries. In BenchmarkLeaderboardTop (a loaded 2-core machine), a hit
	// through AppendTop into a reused buffer took 0.1-0.3 µs and allocated
	// nothing, against 10-15 µs for the memcached round trip; through Top,
	// whose copy of 100 Entries is one allocation, it took 1.3-6 µs, mostly
	// garbage collection of the test's small heap.
	LocalTTL time.Duration

	// RankTTL, if positive, ranks a player below the cached list against a
	// snapshot of the board that this process keeps for up to RankTTL,
	// instead of counting the players ahead in the database on every call
	// (an index range as long as the rank: 3-6 ms at rank 8,000 of a
	// 10,000-player board). The snapshot is the board's first RankSnapshot
	// players, read by one query in the order of the rank index; a Rank
	// then reads the player's own score by the primary key and counts the
	// snapshot's other players ahead of it. A player behind the last entry
	// of a board longer than the snapshot is counted in the database, as
	// without RankTTL. Default 0: every such rank is counted.
	//
	// What it trades: other players' changes, this process's included,
	// reach such a rank up to RankTTL after they commit (the snapshot's
	// age, on the monotonic clock). The player's own score is read at
	// once, so their own Submit or Remove is seen by their next Rank in
	// any process. Memory: about 40 bytes per snapshot entry, for each
	// board ranked in the last RankTTL, up to 64 boards (more share slots).
	RankTTL time.Duration

	// RankSnapshot is how many of a board's first players a RankTTL
	// snapshot holds. Default 10,000.
	RankSnapshot int

	// Repairer, if set, records in its outbox the keys whose deletion from
	// the cache failed, so it deletes them later; the breaker waits for its
	// replay after an outage.
	Repairer *invalidation.Repairer

	// Cache is how the board uses memcached.
	Cache CacheConfig
}

// Entry is one player's place on a board. Rank is 1-based; ties in score
// are broken by player id, ascending (byte order).
type Entry struct {
	Player string
	Score  int64
	Rank   int64
}

// Leaderboard keeps players' scores on many boards in a table and each
// board's top list in the cache.
//
// The cached list of a board holds its first Size+Slack entries in the order
// score DESC, player ASC, each with the version of its scores row, and a
// flag telling whether it holds every player of the board ("complete").
// Every present list is exact: it equals the first entries of
// ORDER BY score DESC, player at some moment. Submit and Remove change the
// row (INSERT ... ON CONFLICT DO UPDATE or DELETE, RETURNING the row
// version), then update the list by gets -> modify -> CompareAndSwap,
// retried with jittered backoff up to CacheConfig.CASRetries times:
//
//   - an entry is only replaced by a newer row version, so an update that
//     reaches the cache late never overwrites a newer score;
//   - a player who falls below the last entry leaves the list (the rest is
//     still exact); if that leaves an incomplete list shorter than Size, it
//     is deleted;
//   - a player not in the list who scores above its last entry (or any
//     player, for a complete list) is inserted; the tail beyond Size+Slack
//     is cut. Because a stale update of a player outside the list cannot be
//     recognised by the list alone, the inserter re-reads the row's version
//     after its CAS and deletes the list if the row changed meanwhile;
//   - when retries run out, the list is corrupt or too large, it is deleted.
//
// A deleted, evicted or lost (memcached restart) list is rebuilt by the next
// Top or Rank under a lease: a placeholder is added, the first Size+Slack+1
// rows are read, and the list replaces the placeholder only if it is still
// the same one. A Submit or Remove that finds a placeholder deletes it, so a
// rebuild that read the table before that change cannot install its list.
// On a board written more often than a rebuild takes, the list is then
// mostly absent and Tops are served by rebuilds (see
// BenchmarkLeaderboardSubmit's misses/top).
//
// Guarantee: once Submits and Removes stop (quiescence) and their cache
// steps have run, every cached list equals ORDER BY score DESC, player over
// the table, so Top(n) equals ... LIMIT n. While they run, Top may briefly
// return a list that misses the latest changes, or in a race (a delayed
// update inserted, then found stale) an earlier score of a player. As for
// Store, a process that dies between its commit and its cache step, or a
// cache that stays unreachable, can leave the list stale until it expires
// (CacheConfig.TTL).
//
// A Leaderboard is safe for concurrent use.
type Leaderboard struct {
	core     *protocol.Core
	db       repo.DB
	table    string
	size     int
	capacity int // Size + Slack
	localTTL time.Duration
	keys     *protocol.Generation // the key builder of the current generation
	seed     maphash.Seed
	memo     [lbSlots]lbSlot // decoded lists by board hash (see lbMemo)
	rankTTL  time.Duration
	rankSnap int
	snaps    [lbSlots]rankSlot // with RankTTL: board snapshots by board hash

	submitSQL, removeSQL, versionSQL, topSQL, rankSQL, scoreSQL string
}

// NewLeaderboard returns a Leaderboard over cfg.Table. It checks the
// configuration and does not touch the database.
func NewLeaderboard(db repo.DB, cache repo.Cache, cfg LeaderboardConfig) (*Leaderboard, error) {
	if db == nil || cache == nil {
		return nil, errors.New("aggregate: NewLeaderboard needs a DB and a Cache")
	}
	if cfg.Table == "" {
		cfg.Table = "scores"
	}
	if err := protocol.CheckIdent(cfg.Table); err != nil {
		return nil, fmt.Errorf("aggregate: leaderboard table: %w", err)
	}
	if cfg.Size == 0 {
		cfg.Size = 100
	}
	if cfg.Size < 0 || cfg.Size > 100000 {
		return nil, fmt.Errorf("aggregate: leaderboard %q: Size %d out of range [1, 100000]", cfg.Table, cfg.Size)
	}
	switch {
	case cfg.Slack == 0:
		cfg.Slack = cfg.Size / 5
	case cfg.Slack < 0:
		cfg.Slack = 0
	case cfg.Slack > 100000:
		return nil, fmt.Errorf("aggregate: leaderboard %q: Slack %d out of range", cfg.Table, cfg.Slack)
	}
	switch {
	case cfg.RankSnapshot == 0:
		cfg.RankSnapshot = 10000
	case cfg.RankSnapshot < 0 || cfg.RankSnapshot > 10_000_000:
		return nil, fmt.Errorf("aggregate: leaderboard %q: RankSnapshot %d out of range [1, 10000000]", cfg.Table, cfg.RankSnapshot)
	}
	core := newCore(cache, cfg.Cache, cfg.Table, db, cfg.Repairer)
	capacity := cfg.Size + cfg.Slack
	keys, err := generation(core, cfg.Table, "lb1-"+strconv.Itoa(cfg.Size)+"-"+strconv.Itoa(capacity))
	if err != nil {
		return nil, fmt.Errorf("aggregate: leaderboard %q: %w", cfg.Table, err)
	}
	t := protocol.QuoteIdent(cfg.Table)
	core.SetRepairAll(func(context.Context) error { return keys.Bump(core) })
	lb := &Leaderboard{
		core:     core,
		db:       db,
		table:    cfg.Table,
		size:     cfg.Size,
		capacity: capacity,
		localTTL: max(cfg.LocalTTL, 0),
		rankTTL:  max(cfg.RankTTL, 0),
		rankSnap: cfg.RankSnapshot,
		keys:     keys,
		seed:     maphash.MakeSeed(),
		// The version of an inserted row is drawn only after locking the
		// player's current row, if any: an insert that waited for a
		// concurrent Remove must be newer than the removed row (see
		// compiled.buildSQL for the same rule in stores).
		submitSQL: "INSERT INTO " + t + " AS s (board, player, score, version) VALUES ($1, $2, $3," +
			" (SELECT nextval(pg_get_serial_sequence(" + protocol.QuoteLiteral(t) + ", 'version')) FROM (SELECT count(*) FROM" +
			" (SELECT 1 FROM " + t + " WHERE board = $1 AND player = $2 FOR UPDATE) AS l) AS w)) ON CONFLICT (board, player)" +
			" DO UPDATE SET score = EXCLUDED.score, version = DEFAULT RETURNING version",
		removeSQL:  "DELETE FROM " + t + " WHERE board = $1 AND player = $2 RETURNING version",
		versionSQL: "SELECT version FROM " + t + " WHERE board = $1 AND player = $2",
		topSQL:     "SELECT player, score, version FROM " + t + " WHERE board = $1 ORDER BY score DESC, player LIMIT $2",
		// The players ahead are counted as two ranges of the (board,
		// score DESC, player) index, which Postgres can read with an
		// index-only scan; one condition with an OR could only be a
		// filter over every row of the board. The player's own row is
		// read with its version, which that index does not hold: else the
		// planner reads the row through it too, index-only but over every
		// entry of the board (player is its last column), which made the
		// lookup cost more than the counts (2.8 ms against 1.7 ms per rank
		// of a 10,000-player board, prepared).
		rankSQL: "SELECT s.score, s.version, 1 + (SELECT count(*) FROM " + t + " o WHERE o.board = s.board AND o.score > s.score)" +
			" + (SELECT count(*) FROM " + t + " o WHERE o.board = s.board AND o.score = s.score AND o.player < s.player)" +
			" FROM " + t + " s WHERE s.board = $1 AND s.player = $2",
		scoreSQL: "SELECT score FROM " + t + " WHERE board = $1 AND player = $2",
	}
	return lb, nil
}

// Stats returns a snapshot of the board's counters.
func (lb *Leaderboard) Stats() observe.Stats { return lb.core.Snapshot() }

// Key returns the cache key of board's list: the supported way to inspect
// or delete it by hand.
func (lb *Leaderboard) Key(board string) string { return lb.keys.Builder(lb.core).Key(board) }

// Size returns the configured Size: the largest n Top accepts.
func (lb *Leaderboard) Size() int { return lb.size }

func (lb *Leaderboard) opErr(op observe.Op, board, player string, err error) error {
	key := board
	if player != "" {
		key = board + "/" + player
	}
	return &repo.OpError{Op: op, Table: lb.table, Key: key, Err: err}
}

func (lb *Leaderboard) check(op observe.Op, board, player string, needPlayer bool) error {
	switch {
	case board == "":
		return lb.opErr(op, board, player, fmt.Errorf("%w: empty board name", repo.ErrInvalidArgument))
	case needPlayer && player == "":
		return lb.opErr(op, board, player, fmt.Errorf("%w: empty player id", repo.ErrInvalidArgument))
	}
	return nil
}

// Submit sets player's score on board (creating the entry, or replacing the
// score, which may go down), commits it, then updates the cached list as the
// type's documentation describes. It returns an error only if the database
// write failed; cache failures are reported to a CacheError event (Hooks.Event) and end
// with the list deleted. The cache step runs whatever ctx says.
func (lb *Leaderboard) Submit(ctx context.Context, board, player string, score int64) (err error) {
	ctx, end := lb.core.Begin(ctx, observe.OpSubmit)
	defer func() { end(err) }()
	if err := lb.check("submit", board, player, true); err != nil {
		return err
	}
	var version int64
	if err := lb.db.QueryRow(ctx, lb.submitSQL, board, player, score).Scan(&version); err != nil {
		return lb.opErr(observe.OpSubmit, board, player, err)
	}
	lb.apply(ctx, board, lbUpdate{e: lbEntry{player: player, score: score, version: version}})
	return nil
}

// Remove deletes player from board and updates the cached list. It returns
// an error wrapping repo.ErrNotFound if the player has no score on the board.
func (lb *Leaderboard) Remove(ctx context.Context, board, player string) (err error) {
	ctx, end := lb.core.Begin(ctx, observe.OpRemove)
	defer func() { end(err) }()
	if err := lb.check("remove", board, player, true); err != nil {
		return err
	}
	var version int64
	err = lb.db.QueryRow(ctx, lb.removeSQL, board, player).Scan(&version)
	if errors.Is(err, pgx.ErrNoRows) {
		return lb.opErr(observe.OpRemove, board, player, repo.ErrNotFound)
	}
	if err != nil {
		return lb.opErr(observe.OpRemove, board, player, err)
	}
	lb.apply(ctx, board, lbUpdate{e: lbEntry{player: player, version: version}, removed: true})
	return nil
}

// Top returns the first n entries of board (fewer if the board has fewer
// players), by score descending, ties by player id ascending, with their
// ranks. n must be in [0, Size]. A hit is one memcached round trip (none
// within LocalTTL); a miss rebuilds the list under a lease (one indexed
// query) and others wait for it up to LeaseWait, then query the database
// themselves. If the cache fails, the database answers. The returned slice
// (never nil on success) is the caller's: a copy of the shared decoded
// list, one allocation. AppendTop avoids even that.
func (lb *Leaderboard) Top(ctx context.Context, board string, n int) ([]Entry, error) {
	l, err := lb.topList(ctx, board, n)
	if err != nil {
		return nil, err
	}
	return slices.Clone(l.top(n)), nil
}

// AppendTop is Top appending to dst: it returns dst extended by the first n
// entries of board. A caller that reuses dst (dst[:0]) with room for n
// entries makes a hit within LocalTTL allocation-free, and a memcached hit
// of an unchanged list cost only what gomemcache allocates. On error dst is
// returned unchanged.
func (lb *Leaderboard) AppendTop(ctx context.Context, dst []Entry, board string, n int) (_ []Entry, err error) {
	ctx, end := lb.core.Begin(ctx, observe.OpTop)
	defer func() { end(err) }()
	l, err := lb.topList(ctx, board, n)
	if err != nil {
		return dst, err
	}
	return append(dst, l.top(n)...), nil
}

// topList checks Top's arguments and returns board's list.
func (lb *Leaderboard) topList(ctx context.Context, board string, n int) (*lbList, error) {
	if err := lb.check("top", board, "", false); err != nil {
		return nil, err
	}
	if n < 0 || n > lb.size {
		return nil, lb.opErr(observe.OpTop, board, "", fmt.Errorf("%w: n = %d, want 0 <= n <= Size (%d)", repo.ErrInvalidArgument, n, lb.size))
	}
	l, err := lb.list(ctx, board)
	if err != nil {
		return nil, lb.opErr(observe.OpTop, board, "", err)
	}
	return l, nil
}

// Rank returns player's entry on board with its 1-based rank, or an error
// wrapping repo.ErrNotFound if the player has no score there. A player in the
// cached list is answered from it; anyone else is ranked by the database
// (one query counting the players ahead), or with RankTTL against a
// snapshot of the board.
func (lb *Leaderboard) Rank(ctx context.Context, board, player string) (_ Entry, err error) {
	ctx, end := lb.core.Begin(ctx, observe.OpRank)
	defer func() { end(err) }()
	if err := lb.check("rank", board, player, true); err != nil {
		return Entry{}, err
	}
	l, err := lb.list(ctx, board)
	if err != nil {
		return Entry{}, lb.opErr(observe.OpRank, board, player, err)
	}
	if i := l.index(player); i >= 0 {
		e := l.entries[i]
		return Entry{Player: e.player, Score: e.score, Rank: int64(i) + 1}, nil
	}
	if l.complete {
		return Entry{}, lb.opErr(observe.OpRank, board, player, repo.ErrNotFound)
	}
	if lb.rankTTL > 0 {
		e, ok, err := lb.rankInSnapshot(ctx, board, player)
		if err != nil || ok {
			return e, err
		}
	}
	lb.core.DBRead()
	e := Entry{Player: player}
	var version int64 // read to keep the lookup on the primary key (see rankSQL)
	err = lb.db.QueryRow(ctx, lb.rankSQL, board, player).Scan(&e.Score, &version, &e.Rank)
	if errors.Is(err, pgx.ErrNoRows) {
		return Entry{}, lb.opErr(observe.OpRank, board, player, repo.ErrNotFound)
	}
	if err != nil {
		return Entry{}, lb.opErr(observe.OpRank, board, player, err)
	}
	return e, nil
}

// rankInSnapshot ranks player against board's snapshot (RankTTL): their
// current score from the database, and the snapshot's other players ahead
// of it. ok is false, with no error, if the player is behind the last entry
// of a snapshot that does not hold the whole board.
func (lb *Leaderboard) rankInSnapshot(ctx context.Context, board, player string) (_ Entry, ok bool, err error) {
	lb.core.DBRead()
	e := Entry{Player: player}
	err = lb.db.QueryRow(ctx, lb.scoreSQL, board, player).Scan(&e.Score)
	if errors.Is(err, pgx.ErrNoRows) {
		return Entry{}, false, lb.opErr(observe.OpRank, board, player, repo.ErrNotFound)
	}
	if err != nil {
		return Entry{}, false, lb.opErr(observe.OpRank, board, player, err)
	}
	snap, err := lb.snapshot(ctx, board)
	if err != nil {
		return Entry{}, false, lb.opErr(observe.OpRank, board, player, err)
	}
	ahead, ok := snap.ahead(player, e.Score)
	e.Rank = int64(ahead) + 1
	return e, ok, nil
}

// snapshot returns board's snapshot, read again if the one kept is older
// than RankTTL (one reader per slot; the others wait for it).
func (lb *Leaderboard) snapshot(ctx context.Context, board string) (*rankSnapshot, error) {
	sl := &lb.snaps[maphash.String(lb.seed, board)%lbSlots]
	fresh := func(s *rankSnapshot) bool { return s != nil && s.board == board && time.Since(s.at) < lb.rankTTL }
	if s := sl.snap.Load(); fresh(s) {
		return s, nil
	}
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if s := sl.snap.Load(); fresh(s) {
		return s, nil
	}
	lb.core.DBRead()
	s := &rankSnapshot{board: board, at: time.Now()}
	rows, _ := lb.db.Query(ctx, lb.topSQL, board, lb.rankSnap)
	var e lbEntry
	if _, err := pgx.ForEachRow(rows, []any{&e.player, &e.score, &e.version}, func() error {
		s.entries = append(s.entries, rankEntry{e.player, e.score})
		return nil
	}); err != nil {
		return nil, err
	}
	s.whole = len(s.entries) < lb.rankSnap
	s.byPlayer = make([]int32, len(s.entries))
	for i := range s.byPlayer {
		s.byPlayer[i] = int32(i)
	}
	slices.SortFunc(s.byPlayer, func(a, b int32) int { return strings.Compare(s.entries[a].player, s.entries[b].player) })
	sl.snap.Store(s)
	return s, nil
}

// rankSlot holds the snapshot of one board (of those whose hash picks it).
type rankSlot struct {
	mu   sync.Mutex // held while the snapshot is read
	snap atomic.Pointer[rankSnapshot]
}

// rankSnapshot is a board's first entries as of at, in rank order (score
// DESC, player), with an index by player; whole tells that it holds every
// player of the board.
type rankSnapshot struct {
	board    string
	at       time.Time
	entries  []rankEntry
	byPlayer []int32 // indexes of entries, in player order
	whole    bool
}

type rankEntry struct {
	player string
	score  int64
}

// ahead returns how many of the snapshot's players other than player rank
// ahead of player with score; ok is false if that place is behind the last
// entry of a snapshot that does not hold the whole board.
func (s *rankSnapshot) ahead(player string, score int64) (n int, ok bool) {
	n = sort.Search(len(s.entries), func(i int) bool {
		e := &s.entries[i]
		return e.score < score || e.score == score && e.player >= player
	})
	if n == len(s.entries) && !s.whole {
		return 0, false
	}
	// The player's own entry, from before a change, is ahead of their
	// current place if its score was higher.
	j := sort.Search(len(s.byPlayer), func(i int) bool { return s.entries[s.byPlayer[i]].player >= player })
	if j < len(s.byPlayer) && s.entries[s.byPlayer[j]].player == player && s.entries[s.byPlayer[j]].score > score {
		n--
	}
	return n, true
}

// Cached returns the first n entries of board's list as the cache holds it,
// without reading the database; ok is false when there is no usable list.
// It is the supported way to inspect a cached list (tests, monitoring), e.g.
// to check that it equals the database after quiescence. It ignores LocalTTL.
func (lb *Leaderboard) Cached(board string, n int) (entries []Entry, ok bool, err error) {
	s := lb.slot(board)
	it, err := lb.core.Cache.Get(lb.Key(board))
	if protocol.IsMiss(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, lb.opErr(observe.OpTop, board, "", err)
	}
	l, ok := lb.open(s, board, it)
	if !ok {
		return nil, false, nil
	}
	return slices.Clone(l.top(min(max(n, 0), len(l.entries)))), true, nil
}

// list returns board's list: this process's copy within LocalTTL, else the
// cached one, else a rebuilt one. The list is shared and must not be
// modified.
func (lb *Leaderboard) list(ctx context.Context, board string) (*lbList, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s := lb.slot(board)
	// gen is read before the round trip: a copy may be kept for LocalTTL
	// only if no Submit or Remove of this process finished its cache step
	// since (see forget).
	gen := s.gen.Load()
	m := s.memo.Load()
	if m != nil && m.board != board {
		m = nil
	}
	if m != nil && m.local && m.gen == gen && time.Since(m.at) < lb.localTTL {
		lb.core.Hit(ctx, m.key)
		return m.list, nil
	}
	// The key of the current generation; the slot's key string is reused
	// when it is that key, so a hit allocates nothing for it.
	var buf [cachekeys.MaxKeyLen]byte
	kb := lb.keys.Builder(lb.core).AppendKey(buf[:0], board)
	key := ""
	if m != nil && m.key == string(kb) {
		key = m.key
	} else {
		key = string(kb)
	}
	v, hit, ok := lb.core.Read(ctx, key, func(it *memcache.Item) (any, bool) {
		if l, found := lb.open(s, board, it); found {
			lb.keep(s, board, key, it.Value, l, gen)
			return l, true
		}
		return nil, false
	})
	switch {
	case hit:
		return v.(*lbList), nil
	case !ok:
		return lb.read(ctx, board)
	}
	r, err := lb.core.Share(ctx, key, func(ctx context.Context) (any, error) {
		// The loader's own gen: joiners may have read theirs after a
		// Submit that this load does not reflect.
		r := lbLoad{gen: s.gen.Load()}
		v, err := lb.core.Leased(ctx, key,
			func(it *memcache.Item, _ time.Time) (any, bool) { return lb.open(s, board, it) },
			func(ctx context.Context) (any, []byte, uint32, int32, error) {
				l, err := lb.read(ctx, board)
				if err != nil {
					return nil, nil, 0, 0, err
				}
				lb.core.Stats.Rebuilds.Add(1)
				value := l.envelope()
				if len(value) > lb.core.Opt.MaxItemSize {
					lb.core.CacheErr(ctx, observe.StepEncode, key, fmt.Errorf("%w: %d bytes > %d", repo.ErrTooLarge, len(value), lb.core.Opt.MaxItemSize))
					value = nil
				}
				return l, value, protocol.FlagsOf(protocol.KindValue), lb.core.Expiry(lb.core.Opt.TTL, true), nil
			})
		if err != nil {
			return nil, err
		}
		r.list = v.(*lbList)
		return r, nil
	}, nil)
	if err != nil {
		return nil, err
	}
	ld := r.(lbLoad)
	lb.keep(s, board, key, nil, ld.list, ld.gen)
	return ld.list, nil
}

// lbLoad is a shared rebuild's result: the list and the slot generation
// read before it.
type lbLoad struct {
	list *lbList
	gen  uint64
}

// read reads board's first Size+Slack entries from the database; one more
// row tells whether that is all of them. BenchmarkLeaderboardTop/db-rebuild
// measures this statement.
func (lb *Leaderboard) read(ctx context.Context, board string) (*lbList, error) {
	lb.core.DBRead()
	rows, err := lb.db.Query(ctx, lb.topSQL, board, lb.capacity+1)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	l := &lbList{entries: make([]lbEntry, 0, lb.capacity+1)}
	for rows.Next() {
		var e lbEntry
		if err := rows.Scan(&e.player, &e.score, &e.version); err != nil {
			return nil, err
		}
		l.entries = append(l.entries, e)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	l.complete = len(l.entries) <= lb.capacity
	if !l.complete {
		l.entries = l.entries[:lb.capacity]
	}
	return l, nil
}

// open decodes a cached list, reusing the slot's decode of the same bytes
// (comparing a few kilobytes is far cheaper than decoding them). A list
// that decodes is remembered in the slot for later reads and writes.
func (lb *Leaderboard) open(s *lbSlot, board string, it *memcache.Item) (*lbList, bool) {
	if m := s.memo.Load(); m != nil && m.board == board && m.raw != nil && bytes.Equal(m.raw, it.Value) && it.Flags == protocol.FlagsOf(protocol.KindValue) {
		return m.list, true
	}
	l, ok := lb.decode(it)
	if !ok {
		return nil, false
	}
	s.memo.Store(&lbMemo{board: board, key: it.Key, raw: it.Value, list: l})
	return l, true
}

// decode checks a cached item and decodes its list.
func (lb *Leaderboard) decode(it *memcache.Item) (*lbList, bool) {
	k, _, payload, ok := protocol.OpenEnvelope(it.Flags, it.Value)
	if !ok || k != protocol.KindValue {
		return nil, false
	}
	l, err := decodeList(payload)
	if err != nil || !lb.usable(l) {
		return nil, false
	}
	return l, true
}

// usable reports whether a list may be served: complete, or holding at
// least Size entries (an incomplete shorter one cannot answer Top(Size)).
func (lb *Leaderboard) usable(l *lbList) bool {
	return l.complete || len(l.entries) >= lb.size
}

// keep makes l this process's copy of board's list for LocalTTL, unless a
// Submit or Remove of this process finished its cache step since gen was
// read. raw is the bytes l was decoded from (nil for a rebuilt list).
func (lb *Leaderboard) keep(s *lbSlot, board, key string, raw []byte, l *lbList, gen uint64) {
	if lb.localTTL <= 0 || s.gen.Load() != gen {
		return
	}
	s.memo.Store(&lbMemo{board: board, key: key, raw: raw, list: l, gen: gen, local: true, at: time.Now()})
}

const lbSlots = 64

func (lb *Leaderboard) slot(board string) *lbSlot {
	return &lb.memo[maphash.String(lb.seed, board)%lbSlots]
}

// forget makes this process's copy of board's list (and any copy a
// concurrent read is about to keep) unusable under LocalTTL. The decoded
// bytes stay: they are compared before reuse.
func (lb *Leaderboard) forget(board string) {
	if lb.localTTL > 0 {
		lb.slot(board).gen.Add(1)
	}
}

// forgetAll is forget for every board (after InvalidateAll).
func (lb *Leaderboard) forgetAll() {
	for i := range lb.memo {
		lb.memo[i].gen.Add(1)
	}
}

// lbSlot holds the last decoded list of one of the boards hashing to it.
// gen counts the Submits and Removes of those boards that finished their
// cache step. The padding keeps slots on separate cache lines: Submits
// write gen while Tops of other boards read their neighbours.
type lbSlot struct {
	memo atomic.Pointer[lbMemo]
	gen  atomic.Uint64
	_    [48]byte
}

// lbMemo is a decoded list of board. raw is the cached bytes it was decoded
// from (nil for a rebuilt list), so a later read of the same bytes reuses
// it. local marks a copy that may be served without a round trip while gen
// is still the slot's and less than LocalTTL has passed since at (the
// monotonic clock: the bound holds however late timers run on a loaded
// machine). A memo is immutable.
type lbMemo struct {
	board, key string
	raw        []byte
	list       *lbList
	gen        uint64
	local      bool
	at         time.Time
}

// apply brings board's cached list in line with a committed change. It runs
// after the commit, so it ignores ctx's cancellation.
//
// The common case on a large board, a player outside the list scoring
// below it, costs the gets and a scan of the list: the bytes are compared
// with the slot's last decode and, when equal, the decoded list is checked
// without copying. Only a change copies the entries, encodes and CASes;
// the bytes it stores are remembered so the next read need not decode them.
func (lb *Leaderboard) apply(ctx context.Context, board string, u lbUpdate) {
	ctx = context.WithoutCancel(ctx)
	s := lb.slot(board)
	key := lb.Key(board)
	defer lb.forget(board)
	err := lb.core.Retry(ctx, true, func() (bool, error) {
		it, err := lb.core.Cache.Get(key)
		if protocol.IsMiss(err) {
			return true, nil // nothing cached: the next read rebuilds
		}
		if err != nil {
			lb.core.CacheErr(ctx, observe.StepWrite, key, err)
			lb.core.Invalidate(ctx, key)
			return true, nil
		}
		if k, _, _, ok := protocol.OpenEnvelope(it.Flags, it.Value); ok && k == protocol.KindLease {
			// A rebuild is running and may have read the table before our
			// commit: delete its placeholder so its install fails.
			lb.core.Invalidate(ctx, key)
			return true, nil
		}
		cur, ok := lb.open(s, board, it)
		if !ok {
			lb.core.CacheErr(ctx, observe.StepDecode, key, repo.ErrCorrupt)
			lb.core.Invalidate(ctx, key)
			return true, nil
		}
		if cur.unchanged(u) {
			return true, nil
		}
		l := &lbList{complete: cur.complete, entries: make([]lbEntry, len(cur.entries), len(cur.entries)+1)}
		copy(l.entries, cur.entries)
		res := l.apply(u, lb.size, lb.capacity)
		switch res {
		case applyNone:
			return true, nil
		case applyDrop:
			lb.drop(ctx, key)
			return true, nil
		}
		value := l.envelope()
		if len(value) > lb.core.Opt.MaxItemSize {
			lb.core.CacheErr(ctx, observe.StepEncode, key, fmt.Errorf("%w: %d bytes > %d", repo.ErrTooLarge, len(value), lb.core.Opt.MaxItemSize))
			lb.drop(ctx, key)
			return true, nil
		}
		it.Value, it.Expiration = value, lb.core.Expiry(lb.core.Opt.TTL, true)
		err = lb.core.Cache.CompareAndSwap(it)
		switch {
		case err == nil:
			if lb.usable(l) {
				s.memo.Store(&lbMemo{board: board, key: key, raw: value, list: l})
			}
			if res == applyInserted {
				lb.verify(ctx, board, key, u)
			}
			return true, nil
		case protocol.IsLost(err):
			lb.core.CASConflict(ctx, key)
			return false, nil
		}
		lb.core.CacheErr(ctx, observe.StepWrite, key, err)
		lb.core.Invalidate(ctx, key)
		return true, nil
	})
	if err != nil {
		lb.core.CacheErr(ctx, observe.StepWrite, key, err)
		lb.drop(ctx, key)
	}
}

// verify runs after an update inserted a player who was not in the list. The
// list cannot tell a stale update of such a player from a fresh one: a
// newer change of the same player may have reached the cache first and, its
// player being outside the list, left it unchanged. So the row's version is
// read after the CAS; if it is no longer u's, the list is deleted. If it is,
// any newer change commits later and finds the player in the list.
func (lb *Leaderboard) verify(ctx context.Context, board, key string, u lbUpdate) {
	ctx, cancel := context.WithTimeout(ctx, lb.core.Opt.LeaseTTL)
	defer cancel()
	var version int64
	err := lb.db.QueryRow(ctx, lb.versionSQL, board, u.e.player).Scan(&version)
	if err == nil && version == u.e.version {
		return
	}
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		lb.core.CacheErr(ctx, observe.StepWrite, key, err)
	}
	lb.drop(ctx, key)
}

// drop deletes a list that can no longer be proven right.
func (lb *Leaderboard) drop(ctx context.Context, key string) {
	lb.core.Stats.Drops.Add(1)
	lb.core.Invalidate(ctx, key)
}

// lbEntry is one cached entry: a player, a score and its row version.
type lbEntry struct {
	player  string
	score   int64
	version int64
}

// before reports whether a ranks ahead of b: higher score, then lower
// player id.
func before(a, b lbEntry) bool {
	return a.score > b.score || (a.score == b.score && a.player < b.player)
}

// lbUpdate is a committed change of one player: a new score or a removal,
// with the row version (for a removal, the deleted row's).
type lbUpdate struct {
	e       lbEntry
	removed bool
}

// lbList is a board's cached list: its first entries, in order. complete
// means it holds every player of the board. Invariant: every player not in
// the list ranks after its last entry.
//
// Lists decoded from the cache or rebuilt are shared read-only between
// goroutines (see lbMemo); apply works on a copy.
type lbList struct {
	complete bool
	entries  []lbEntry
	view     atomic.Pointer[[]Entry] // entries as Top returns them, built on first use
}

type applyResult int

const (
	applyNone     applyResult = iota // the list already reflects the change
	applyChanged                     // the list changed
	applyInserted                    // the list changed by inserting a player it did not hold
	applyDrop                        // the list can no longer be proven right
)

// index returns player's position in the list, or -1.
func (l *lbList) index(player string) int {
	for i := range l.entries {
		if l.entries[i].player == player {
			return i
		}
	}
	return -1
}

// unchanged reports whether u leaves the list as it is, the cases in which
// apply returns applyNone; it reads the list only, so it may run on a
// shared one.
func (l *lbList) unchanged(u lbUpdate) bool {
	if i := l.index(u.e.player); i >= 0 {
		cur := l.entries[i]
		return cur.version > u.e.version || (cur.version == u.e.version && !u.removed)
	}
	return u.removed || (!l.complete && (len(l.entries) == 0 || !before(u.e, l.entries[len(l.entries)-1])))
}

func (l *lbList) insert(e lbEntry) {
	i := sort.Search(len(l.entries), func(i int) bool { return before(e, l.entries[i]) })
	l.entries = slices.Insert(l.entries, i, e)
}

// apply changes the list for u, keeping its invariant, and says how.
func (l *lbList) apply(u lbUpdate, size, capacity int) applyResult {
	i := l.index(u.e.player)
	if i >= 0 {
		cur := l.entries[i]
		if cur.version > u.e.version || (cur.version == u.e.version && !u.removed) {
			return applyNone // the list holds this change or a newer one
		}
		last := l.entries[len(l.entries)-1]
		l.entries = slices.Delete(l.entries, i, i+1)
		// Players outside the list rank after last: the player may stay if
		// it still ranks no later than last.
		if !u.removed && (l.complete || !before(last, u.e)) {
			l.insert(u.e)
			return applyChanged
		}
		if !l.complete && len(l.entries) < size {
			return applyDrop
		}
		return applyChanged
	}
	if u.removed {
		return applyNone // it ranked after the list, or was not there
	}
	if !l.complete && (len(l.entries) == 0 || !before(u.e, l.entries[len(l.entries)-1])) {
		return applyNone // it ranks after the list
	}
	l.insert(u.e)
	if len(l.entries) > capacity {
		l.entries = l.entries[:capacity]
		l.complete = false
	}
	return applyInserted
}

// top returns the first n entries (n <= len) as Entries with ranks. The
// slice is shared by every caller of the list: copy it before handing it
// out. Building it once per decoded list is what makes a repeated Top of
// the same list cost a copy and no per-entry work.
func (l *lbList) top(n int) []Entry {
	v := l.view.Load()
	if v == nil {
		out := make([]Entry, len(l.entries))
		for i, e := range l.entries {
			out[i] = Entry{Player: e.player, Score: e.score, Rank: int64(i) + 1}
		}
		v = &out
		l.view.Store(v)
	}
	return (*v)[:min(n, len(*v)):min(n, len(*v))]
}

// The list payload: a flags byte (bit 0: complete), the entry count, then
// per entry the player's length and bytes, the score and the version.
func (l *lbList) envelope() []byte {
	b := protocol.BeginEnvelope(make([]byte, 0, 16+len(l.entries)*24), 0)
	var flags byte
	if l.complete {
		flags = 1
	}
	b = append(b, flags)
	b = binary.AppendUvarint(b, uint64(len(l.entries)))
	for _, e := range l.entries {
		b = binary.AppendUvarint(b, uint64(len(e.player)))
		b = append(b, e.player...)
		b = binary.AppendVarint(b, e.score)
		b = binary.AppendUvarint(b, uint64(e.version))
	}
	return protocol.FinishEnvelope(b)
}

var errBadList = errors.New("bad list")

// decodeList decodes a list payload and checks that its entries are in
// order. The players' bytes are copied into one string that every entry's
// player slices, so a list of any length costs three allocations (the
// list, the entries and the string) instead of one per player.
func decodeList(p []byte) (*lbList, error) {
	if len(p) < 2 || p[0] > 1 {
		return nil, errBadList
	}
	l := &lbList{complete: p[0] == 1}
	p = p[1:]
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p))/3 { // an entry takes at least 3 bytes
		return nil, errBadList
	}
	p = p[k:]
	str := string(p) // backs the player ids; p and str share offsets
	l.entries = make([]lbEntry, n)
	off := 0
	for i := range l.entries {
		ln, k := binary.Uvarint(p[off:])
		if k <= 0 || ln > uint64(len(p)-off-k) {
			return nil, errBadList
		}
		off += k
		e := &l.entries[i]
		e.player = str[off : off+int(ln)]
		off += int(ln)
		if e.score, k = binary.Varint(p[off:]); k <= 0 {
			return nil, errBadList
		}
		off += k
		v, k := binary.Uvarint(p[off:])
		if k <= 0 || v > 1<<63-1 {
			return nil, errBadList
		}
		e.version = int64(v)
		off += k
		if i > 0 && !before(l.entries[i-1], *e) {
			return nil, errBadList
		}
	}
	if off != len(p) {
		return nil, errBadList
	}
	return l, nil
}
