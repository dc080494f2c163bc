package aggregate

import (
	"context"

	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Counters and leaderboards are targets of the WAL invalidator: a counter or
// a score changed by SQL reaches the cached counter or board.
var (
	_ invalidation.Target = (*Counter)(nil)
	_ invalidation.Target = (*Leaderboard)(nil)
)

// WALTable returns the counters table, its key (name) and version column.
func (c *Counter) WALTable() (table string, key []string, version string) {
	return c.table, []string{"name"}, "version"
}

// WALApply deletes each changed counter's cached value if it is older than
// the change. It first re-reads the table's key generation (as a Store's
// WALApply does), so that after another process's InvalidateAll it deletes
// the keys of the current generation, not those of the one this Counter
// read up to a second ago.
func (c *Counter) WALApply(ctx context.Context, changes []invalidation.Change) error {
	kb, err := c.keys.Refresh(c.core)
	if err != nil {
		return c.opErr(observe.OpCounterAdd, "", err)
	}
	keys, versions := make([]string, 0, len(changes)), make([]int64, 0, len(changes))
	at := make(map[string]int, len(changes))
	for _, ch := range changes {
		version := ch.Version
		if ch.Deleted {
			version = 0
		}
		keys, versions = invalidation.Coalesce(keys, versions, at, kb.Key(ch.Key[0]), version)
	}
	if err := c.core.DeleteOlderMany(ctx, keys, versions); err != nil {
		return c.opErr(observe.OpCounterAdd, "", err)
	}
	return nil
}

// InvalidateAll makes every cached counter of the table unreachable (after a
// TRUNCATE): this process sees it at once, others within a second.
func (c *Counter) InvalidateAll(ctx context.Context) error { return c.keys.Bump(c.core) }

// WALTable returns the scores table and its board column: a cached list is
// per board, so any change of a board's scores drops its list.
func (lb *Leaderboard) WALTable() (table string, key []string, version string) {
	return lb.table, []string{"board"}, ""
}

// WALApply deletes the cached list of every board whose scores changed
// (the next Top rebuilds it under a lease); the list of one board is
// deleted once however many of its rows changed. It first re-reads the
// table's key generation, as Counter.WALApply does.
func (lb *Leaderboard) WALApply(ctx context.Context, changes []invalidation.Change) error {
	kb, err := lb.keys.Refresh(lb.core)
	if err != nil {
		return lb.opErr(observe.OpSubmit, "", "", err)
	}
	seen := map[string]bool{}
	for _, ch := range changes {
		board := ch.Key[0]
		if seen[board] {
			continue
		}
		seen[board] = true
		if err := lb.core.DeleteOlder(ctx, kb.Key(board), 0); err != nil {
			return lb.opErr(observe.OpSubmit, board, "", err)
		}
		lb.forget(board)
	}
	return nil
}

// InvalidateAll makes every cached list of the table unreachable (after a
// TRUNCATE): this process sees it at once, others within a second.
func (lb *Leaderboard) InvalidateAll(ctx context.Context) error {
	if err := lb.keys.Bump(lb.core); err != nil {
		return err
	}
	lb.forgetAll()
	return nil
}
