package invalidation

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// DB is what a Repairer needs: a *pgxpool.Pool or *pgx.Conn.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Begin(ctx context.Context) (pgx.Tx, error)
}

// RepairerConfig configures NewRepairer; zero fields take the defaults.
type RepairerConfig struct {
	// Table is the outbox table, optionally schema-qualified. Default
	// "cachedrepo_outbox".
	Table string
	// Delay leaves rows younger than this to the writers' own after-commit
	// step. Default 2s. Replaying a row early is harmless (one extra miss).
	Delay time.Duration
	// Interval is the pause between passes of Run when a pass found nothing
	// to do. Default 500ms.
	Interval time.Duration
	// Batch is the most rows one pass handles. Default 500.
	Batch int
	// ReplayTimeout bounds one replay asked for by a store's breaker.
	// Default 3s.
	ReplayTimeout time.Duration
	// Hooks receive CacheError events (step "outbox") for failed replays,
	// with Table set to the outbox table.
	Hooks observe.Hooks
}

// Repairer replays the outbox: for each row older than Delay it deletes the
// row's key from the cache, then the row. Any number of Repairers (one per
// process is typical) may run against one outbox: rows are claimed with
// FOR UPDATE SKIP LOCKED. Safe for concurrent use.
type Repairer struct {
	db    DB
	cache memclient.Cache
	opt   RepairerConfig
	core  *protocol.Core // events only
	ident string
	claim string
	// claimAll is claim without SKIP LOCKED: a replay waits for rows
	// another Repairer has claimed, so that it never reports the outbox
	// replayed while another's replay of a row may still fail.
	claimAll string
	done     string

	mu      sync.Mutex
	running bool
	waiting []chan error // replays asked for and not yet begun
	wake    chan struct{}
}

// NewRepairer returns a Repairer of the outbox in db for cache.
func NewRepairer(db DB, cache memclient.Cache, cfg RepairerConfig) (*Repairer, error) {
	if db == nil || cache == nil {
		return nil, errors.New("invalidation: NewRepairer needs a DB and a Cache")
	}
	if cfg.Table == "" {
		cfg.Table = "cachedrepo_outbox"
	}
	if err := protocol.CheckIdent(cfg.Table); err != nil {
		return nil, fmt.Errorf("invalidation: outbox table: %w", err)
	}
	if cfg.Delay <= 0 {
		cfg.Delay = 2 * time.Second
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 500 * time.Millisecond
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.ReplayTimeout <= 0 {
		cfg.ReplayTimeout = 3 * time.Second
	}
	t := protocol.QuoteIdent(cfg.Table)
	return &Repairer{db: db, cache: cache, opt: cfg, ident: t,
		core:     protocol.New(cache, protocol.Config{Name: cfg.Table, Hooks: cfg.Hooks}, nil),
		claim:    fmt.Sprintf("SELECT id, cache_key FROM %s WHERE created_at <= now() - $1::interval ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED", t),
		claimAll: fmt.Sprintf("SELECT id, cache_key FROM %s WHERE created_at <= now() - $1::interval ORDER BY id LIMIT $2 FOR UPDATE", t),
		done:     fmt.Sprintf("DELETE FROM %s WHERE id = ANY($1)", t),
		wake:     make(chan struct{}, 1),
	}, nil
}

// Table returns the outbox table's name as configured.
func (r *Repairer) Table() string { return r.opt.Table }

// Ident returns the outbox table's name quoted as an SQL identifier.
func (r *Repairer) Ident() string { return r.ident }

// RunOnce replays up to Batch rows older than minAge and returns how many it
// repaired. It stops at the first cache failure (the rows stay for the next
// pass) and returns that error.
func (r *Repairer) RunOnce(ctx context.Context, minAge time.Duration) (int, error) {
	return r.runOnce(ctx, minAge, r.claim)
}

func (r *Repairer) runOnce(ctx context.Context, minAge time.Duration, claim string) (int, error) {
	tx, err := r.db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("invalidation: outbox: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	rows, _ := tx.Query(ctx, claim, minAge, r.opt.Batch)
	type entry struct {
		ID  int64
		Key string
	}
	entries, err := pgx.CollectRows(rows, pgx.RowToStructByPos[entry])
	if err != nil {
		return 0, fmt.Errorf("invalidation: outbox: %w", err)
	}
	var ids []int64
	var cacheErr error
	for _, e := range entries {
		if err := r.cache.Delete(e.Key); err != nil && !protocol.IsMiss(err) {
			cacheErr = fmt.Errorf("invalidation: outbox: deleting %q: %w", e.Key, err)
			r.core.CacheErr(ctx, observe.StepOutbox, e.Key, err)
			break
		}
		ids = append(ids, e.ID)
	}
	if len(ids) > 0 {
		if _, err := tx.Exec(ctx, r.done, ids); err != nil {
			return 0, fmt.Errorf("invalidation: outbox: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("invalidation: outbox: %w", err)
		}
	}
	return len(ids), cacheErr
}

// Run replays the outbox until ctx ends, returning ctx's error: rows older
// than Delay every Interval, and at once every replay a store's breaker asks
// for (Replay). Errors of single passes go to Hooks (cache) or are retried
// after Interval (database).
func (r *Repairer) Run(ctx context.Context) error {
	r.mu.Lock()
	r.running = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.running = false
		r.mu.Unlock()
	}()
	for {
		if r.serveReplays(ctx) {
			continue
		}
		n, _ := r.RunOnce(ctx, r.opt.Delay)
		if n < r.opt.Batch {
			t := time.NewTimer(r.opt.Interval)
			select {
			case <-t.C:
			case <-r.wake:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
			t.Stop()
		} else if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Replay asks for a replay of every outbox row, whatever its age, begun
// after the call; the channel receives its outcome. Rows other Repairers
// hold are waited for, not skipped: their replay may yet fail. A running
// Run serves it; without one, the Repairer runs it in a goroutine of its
// own. It never blocks.
func (r *Repairer) Replay() <-chan error {
	ch := make(chan error, 1)
	r.mu.Lock()
	r.waiting = append(r.waiting, ch)
	running := r.running
	r.mu.Unlock()
	if running {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	} else {
		go r.serveReplays(context.Background())
	}
	return ch
}

// serveReplays runs one replay for every Replay asked for so far, if any,
// and reports whether it did.
func (r *Repairer) serveReplays(ctx context.Context) bool {
	r.mu.Lock()
	waiting := r.waiting
	r.waiting = nil
	r.mu.Unlock()
	if len(waiting) == 0 {
		return false
	}
	err := r.drain(ctx)
	for _, ch := range waiting {
		ch <- err
	}
	return true
}

// drain replays every outbox row, whatever its age, until none is left or
// ReplayTimeout passes.
func (r *Repairer) drain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.opt.ReplayTimeout)
	defer cancel()
	for {
		n, err := r.runOnce(ctx, 0, r.claimAll)
		if err != nil {
			return err
		}
		if n < r.opt.Batch {
			return nil
		}
	}
}

var _ protocol.Recovery = (*Repairer)(nil)
