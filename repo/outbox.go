package repo

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The invalidation outbox. With Options.Outbox set, every write records its
// cache key in the outbox table in the same statement (so in the same
// transaction) as the change itself. After the commit the store updates the
// cache and, if that worked, deletes the row. A row left behind (the process
// died between commit and cache update, or the cache was unreachable) is
// replayed by a Repairer, which deletes the key from the cache and then the
// row. Deleting is always safe: the next read refills from the database under
// a lease, so a fill that read the row before the write cannot win.
//
// The table (see migrations/000004_outbox.up.sql):
//
//	CREATE TABLE cachedrepo_outbox (
//	    id         bigserial PRIMARY KEY,
//	    cache_key  text NOT NULL,
//	    created_at timestamptz NOT NULL DEFAULT now()
//	);

// writeSQL holds a store's write statements, with or without the outbox.
type writeSQL struct {
	outbox                         bool
	insert, upsert, update, delete string
	outboxDone                     string
}

func newWriteSQL[T any, K comparable](c *compiled[T, K], outbox string) writeSQL {
	w := writeSQL{insert: c.insert, upsert: c.upsert, update: c.update, delete: c.delete}
	if outbox == "" {
		return w
	}
	ob := quoteIdent(outbox)
	var ret []string
	for _, col := range c.cols {
		ret = append(ret, "w."+quoteIdent(col))
	}
	rowCols := strings.Join(ret, ", ")
	delCol := "w." + "true"
	if c.versionIdx >= 0 {
		delCol = "w." + quoteIdent(c.cols[c.versionIdx])
	}
	wrap := func(stmt string, params int, cols string) string {
		if cols == "w.true" {
			return fmt.Sprintf("WITH w AS (%s), o AS (INSERT INTO %s (cache_key) SELECT $%d FROM w RETURNING id) SELECT true, o.id FROM w CROSS JOIN o", stmt, ob, params+1)
		}
		return fmt.Sprintf("WITH w AS (%s), o AS (INSERT INTO %s (cache_key) SELECT $%d FROM w RETURNING id) SELECT %s, o.id FROM w CROSS JOIN o", stmt, ob, params+1, cols)
	}
	w.outbox = true
	w.insert = wrap(c.insert, len(c.writeCols), rowCols)
	w.upsert = wrap(c.upsert, len(c.writeCols), rowCols)
	w.update = wrap(c.update, len(c.keyCols)+len(c.setCols), rowCols)
	w.delete = wrap(c.delete, len(c.keyCols), delCol)
	w.outboxDone = fmt.Sprintf("DELETE FROM %s WHERE id = $1", ob)
	return w
}

// scanner returns the row scanner for write statements: with the outbox,
// the last column is the outbox row id, stored in *outboxID and hidden from
// the table's Scan.
func (s *Store[T, K]) scanner(outboxID *int64) pgx.RowToFunc[T] {
	if !s.w.outbox {
		return s.t.scan
	}
	return func(row pgx.CollectableRow) (T, error) {
		return s.t.scan(lastColumn{CollectableRow: row, dst: outboxID})
	}
}

// lastColumn hides a row's last column from a scan function and scans it
// into dst instead.
type lastColumn struct {
	pgx.CollectableRow
	dst *int64
}

func (r lastColumn) FieldDescriptions() []pgconn.FieldDescription {
	fd := r.CollectableRow.FieldDescriptions()
	return fd[:len(fd)-1]
}

func (r lastColumn) Scan(dest ...any) error {
	return r.CollectableRow.Scan(append(dest, r.dst)...)
}

func (r lastColumn) Values() ([]any, error) {
	v, err := r.CollectableRow.Values()
	if len(v) > 0 {
		v = v[:len(v)-1]
	}
	return v, err
}

func (r lastColumn) RawValues() [][]byte {
	v := r.CollectableRow.RawValues()
	if len(v) > 0 {
		v = v[:len(v)-1]
	}
	return v
}

// RepairerOptions tune a Repairer; zero values take the defaults.
type RepairerOptions struct {
	// Table is the outbox table. Default "cachedrepo_outbox".
	Table string
	// Delay leaves rows younger than this to the writers' own after-commit
	// step. Default 2s. Replaying a row early is harmless (one extra miss).
	Delay time.Duration
	// Interval is the pause between passes of Run when a pass found nothing
	// to do. Default 500ms.
	Interval time.Duration
	// Batch is the most rows one pass handles. Default 500.
	Batch int
	// Hooks.CacheError receives failed replays.
	Hooks Hooks
}

// Repairer replays the outbox: for each row older than Delay it deletes the
// row's key from the cache, then the row. Any number of Repairers (one per
// process is typical) may run against one outbox: rows are claimed with
// FOR UPDATE SKIP LOCKED. Safe for concurrent use.
type Repairer struct {
	db    DB
	cache Cache
	opt   RepairerOptions
	claim string
	// claimAll is claim without SKIP LOCKED: drain waits for rows another
	// Repairer has claimed, so that it never reports the outbox replayed
	// while another's replay of a row may still fail.
	claimAll string
	done     string
}

// NewRepairer returns a Repairer of the outbox in db for cache.
func NewRepairer(db DB, cache Cache, opts RepairerOptions) *Repairer {
	if opts.Table == "" {
		opts.Table = "cachedrepo_outbox"
	}
	if opts.Delay <= 0 {
		opts.Delay = 2 * time.Second
	}
	if opts.Interval <= 0 {
		opts.Interval = 500 * time.Millisecond
	}
	if opts.Batch <= 0 {
		opts.Batch = 500
	}
	t := quoteIdent(opts.Table)
	return &Repairer{db: db, cache: cache, opt: opts,
		claim:    fmt.Sprintf("SELECT id, cache_key FROM %s WHERE created_at <= now() - $1::interval ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED", t),
		claimAll: fmt.Sprintf("SELECT id, cache_key FROM %s WHERE created_at <= now() - $1::interval ORDER BY id LIMIT $2 FOR UPDATE", t),
		done:     fmt.Sprintf("DELETE FROM %s WHERE id = ANY($1)", t),
	}
}

// RunOnce replays up to Batch rows older than minAge and returns how many it
// repaired. It stops at the first cache failure (the rows stay for the next
// pass) and returns that error.
func (r *Repairer) RunOnce(ctx context.Context, minAge time.Duration) (int, error) {
	return r.runOnce(ctx, minAge, r.claim)
}

func (r *Repairer) runOnce(ctx context.Context, minAge time.Duration, claim string) (int, error) {
	tx, err := r.db.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("repo: outbox: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	rows, _ := tx.Query(ctx, claim, minAge, r.opt.Batch)
	type entry struct {
		ID  int64
		Key string
	}
	entries, err := pgx.CollectRows(rows, pgx.RowToStructByPos[entry])
	if err != nil {
		return 0, fmt.Errorf("repo: outbox: %w", err)
	}
	var ids []int64
	var cacheErr error
	for _, e := range entries {
		if err := r.cache.Delete(e.Key); err != nil && !isMiss(err) {
			cacheErr = fmt.Errorf("repo: outbox: deleting %q: %w", e.Key, err)
			if h := r.opt.Hooks.CacheError; h != nil {
				h("outbox", e.Key, err)
			}
			break
		}
		ids = append(ids, e.ID)
	}
	if len(ids) > 0 {
		if _, err := tx.Exec(ctx, r.done, ids); err != nil {
			return 0, fmt.Errorf("repo: outbox: %w", err)
		}
		if err := tx.Commit(ctx); err != nil {
			return 0, fmt.Errorf("repo: outbox: %w", err)
		}
	}
	return len(ids), cacheErr
}

// Run replays the outbox until ctx ends, returning ctx's error. Errors of
// single passes go to Hooks.CacheError (cache) or are retried after Interval
// (database).
func (r *Repairer) Run(ctx context.Context) error {
	for {
		n, _ := r.RunOnce(ctx, r.opt.Delay)
		if n < r.opt.Batch {
			if err := sleep(ctx, r.opt.Interval); err != nil {
				return err
			}
		} else if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// drain replays every outbox row, whatever its age, until none is left or
// the time limit passes. It is the breaker's recovery step. Rows other
// Repairers hold are waited for, not skipped: their replay may yet fail.
func (r *Repairer) drain(ctx context.Context, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
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
