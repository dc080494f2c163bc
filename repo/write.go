package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Insert inserts v (every column but Version, which takes its DEFAULT) and
// returns the row as stored (INSERT ... RETURNING), after writing it through
// to the cache (replacing a cached "not found").
func (s *Store[T, K]) Insert(ctx context.Context, v T) (_ T, err error) {
	ctx, end := s.c.Begin(ctx, observe.OpInsert)
	defer func() { end(err) }()
	row, err := s.writeRow(ctx, s.db, runNow, false, &v)
	if err != nil {
		return row, s.opErr(observe.OpInsert, s.t.keyOf(&v), err)
	}
	return row, nil
}

// Upsert inserts v or, if a row with its key exists, overwrites that row's
// columns (INSERT ... ON CONFLICT DO UPDATE), and returns the stored row after
// writing it through to the cache.
func (s *Store[T, K]) Upsert(ctx context.Context, v T) (_ T, err error) {
	ctx, end := s.c.Begin(ctx, observe.OpUpsert)
	defer func() { end(err) }()
	row, err := s.writeRow(ctx, s.db, runNow, true, &v)
	if err != nil {
		return row, s.opErr(observe.OpUpsert, s.t.keyOf(&v), err)
	}
	return row, nil
}

// writeRow runs an INSERT or upsert of v on db and schedules the cache update
// with after (at once, or after the enclosing transaction commits).
func (s *Store[T, K]) writeRow(ctx context.Context, db DB, after func(func(bool)), upsert bool, v *T) (T, error) {
	sql, err := s.insertSQL(ctx, db, upsert)
	if err != nil {
		var zero T
		return zero, err
	}
	vals := s.t.values(v)
	args := make([]any, len(s.t.writeCols), len(s.t.writeCols)+1)
	for n, i := range s.t.writeCols {
		args[n] = vals[i]
	}
	key := s.Key(s.t.keyOf(v))
	if s.w.outbox {
		args = append(args, key)
	}
	var outboxID int64
	var row T
	err = s.writeOne(ctx, db, sql, args, func(rows pgx.Rows) (err error) {
		row, err = pgx.CollectOneRow(rows, s.scanner(&outboxID))
		return err
	})
	if err != nil {
		switch {
		case ambiguous(err):
			// Any error but the server's may hide a commit whose answer was
			// lost, or one still to come.
			s.unsure(ctx, key)
		case isUniqueViolation(err):
			// The caller learns the row exists, and a concurrent inserter
			// may not have reached the cache yet.
			s.invalidate(ctx, key)
		}
		return row, err
	}
	s.afterWrite(ctx, after, key, &row, s.versionOf(&row), outboxID)
	return row, nil
}

// Update reads the row with key k under a row lock (SELECT ... FOR UPDATE),
// calls mutate on it, writes every non-key column back and commits, all in
// one transaction, then writes the result through to the cache. If mutate
// returns an error the transaction is rolled back and the error returned
// (wrapped). mutate may run once per call; it must not change the key.
// The transaction needs a DB that can Begin (see DB): with any other,
// Update fails with ErrNeedsTx unless it runs inside InTx.
func (s *Store[T, K]) Update(ctx context.Context, k K, mutate func(*T) error) (_ T, err error) {
	ctx, end := s.c.Begin(ctx, observe.OpUpdate)
	defer func() { end(err) }()
	row, err := s.update(ctx, s.db, runNow, k, mutate)
	if err != nil {
		return row, s.opErr(observe.OpUpdate, k, err)
	}
	return row, nil
}

func (s *Store[T, K]) update(ctx context.Context, db DB, after func(func(bool)), k K, mutate func(*T) error) (T, error) {
	var zero T
	b, ok := db.(Beginner)
	if !ok {
		return zero, ErrNeedsTx
	}
	tx, err := b.Begin(ctx) // a savepoint when db is itself a transaction
	if err != nil {
		return zero, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit
	keyArgs := s.t.keyArgs(k)
	key := s.Key(k)
	rows, _ := tx.Query(ctx, s.t.selectForUpdate, keyArgs...)
	row, err := pgx.CollectOneRow(rows, s.t.scan)
	if errors.Is(err, pgx.ErrNoRows) {
		// The caller learns the row is gone: see delete.
		s.invalidate(ctx, key)
		return zero, ErrNotFound
	}
	if err != nil {
		return zero, err
	}
	if err := mutate(&row); err != nil {
		// mutate saw the row as committed; a writer that committed it may
		// not have reached the cache yet, so bring the cache up to it.
		s.afterCommit(ctx, key, &row, s.versionOf(&row), 0)
		return zero, err
	}
	if s.t.keyOf(&row) != k {
		return zero, ErrKeyChanged
	}
	var outboxID int64
	if row, outboxID, err = s.overwrite(ctx, tx, key, keyArgs, &row); err != nil {
		return zero, err
	}
	if err := tx.Commit(ctx); err != nil {
		s.unsure(ctx, key) // it may have committed, or may yet
		return zero, err
	}
	s.afterWrite(ctx, after, key, &row, s.versionOf(&row), outboxID)
	return row, nil
}

// overwrite runs the UPDATE of every non-key column of the row with key
// (keyArgs) to v's values, returning the row as stored and its outbox row.
func (s *Store[T, K]) overwrite(ctx context.Context, db DB, key string, keyArgs []any, v *T) (T, int64, error) {
	vals := s.t.values(v)
	args := append(make([]any, 0, len(keyArgs)+len(s.t.setCols)+1), keyArgs...)
	for _, i := range s.t.setCols {
		args = append(args, vals[i])
	}
	if s.w.outbox {
		args = append(args, key)
	}
	var outboxID int64
	var row T
	err := s.writeOne(ctx, db, s.w.update, args, func(rows pgx.Rows) (err error) {
		row, err = pgx.CollectOneRow(rows, s.scanner(&outboxID))
		return err
	})
	return row, outboxID, err
}

// batcher is a DB that sends pipelines (*pgxpool.Pool, *pgx.Conn).
type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// setStatementTimeout bounds the statements after it in the same implicit
// transaction: a local set_config lasts until the pipeline's Sync, so the
// connection keeps its own setting afterwards.
const setStatementTimeout = "SELECT set_config('statement_timeout', $1, true)"

// writeOne runs sql, one of the store's single-statement writes, on db and
// hands its rows to read. On a DB that sends pipelines and is not a
// transaction (a pool or a connection), the statement goes out behind
// setStatementTimeout in the same round trip, with Options.WriteTimeout: the
// server cancels it once it has run that long, so it cannot commit later,
// and unsure's second delete, WriteTimeout after the store gave up, comes
// after any late commit. In a transaction (InTx's, Update's, or a pgx.Tx
// given as the store's DB) the statement cannot commit before the
// transaction does, and the transaction's settings stand.
func (s *Store[T, K]) writeOne(ctx context.Context, db DB, sql string, args []any, read func(pgx.Rows) error) error {
	if bd, ok := db.(batcher); ok && s.stmtTimeout != "" {
		if _, tx := db.(pgx.Tx); !tx {
			b := &pgx.Batch{}
			b.Queue(setStatementTimeout, s.stmtTimeout)
			b.Queue(sql, args...).Query(read)
			return bd.SendBatch(ctx, b).Close()
		}
	}
	rows, _ := db.Query(ctx, sql, args...)
	return read(rows)
}

// afterWrite schedules with after the cache update of a write that left
// row (nil: deleted it) at version: afterCommit once committed, or unsure if
// the commit's outcome is unknown.
func (s *Store[T, K]) afterWrite(ctx context.Context, after func(func(bool)), key string, row *T, version, outboxID int64) {
	after(func(committed bool) {
		if !committed {
			s.unsure(ctx, key)
			return
		}
		s.afterCommit(ctx, key, row, version, outboxID)
	})
}

// Replace overwrites every non-key column of the row with v's key with v's
// values (one UPDATE ... RETURNING, without reading the row first; Version
// takes its DEFAULT) and returns the row as stored, after writing it
// through to the cache. It returns an error wrapping ErrNotFound, and writes
// nothing, if there is no row with that key. Use it instead of Update when
// the new row does not depend on the current one: it costs one statement
// where Update costs four (BEGIN, SELECT ... FOR UPDATE, UPDATE, COMMIT).
func (s *Store[T, K]) Replace(ctx context.Context, v T) (_ T, err error) {
	ctx, end := s.c.Begin(ctx, observe.OpUpdate)
	defer func() { end(err) }()
	row, err := s.replace(ctx, s.db, runNow, &v)
	if err != nil {
		return row, s.opErr(observe.OpUpdate, s.t.keyOf(&v), err)
	}
	return row, nil
}

func (s *Store[T, K]) replace(ctx context.Context, db DB, after func(func(bool)), v *T) (T, error) {
	k := s.t.keyOf(v)
	key := s.Key(k)
	row, outboxID, err := s.overwrite(ctx, db, key, s.t.keyArgs(k), v)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		// The caller learns the row is gone: see delete.
		s.invalidate(ctx, key)
		return row, ErrNotFound
	case err != nil:
		if ambiguous(err) { // see writeRow
			s.unsure(ctx, key)
		}
		return row, err
	}
	s.afterWrite(ctx, after, key, &row, s.versionOf(&row), outboxID)
	return row, nil
}

// Delete deletes the row with key k, or returns an error wrapping ErrNotFound
// if there is none. With a Version column the cache keeps a tombstone for
// NegativeTTL, so a read that raced the delete cannot put the row back;
// without one, the key is deleted and the lease protocol guards fills.
func (s *Store[T, K]) Delete(ctx context.Context, k K) (err error) {
	ctx, end := s.c.Begin(ctx, observe.OpDelete)
	defer func() { end(err) }()
	return s.delete(ctx, s.db, runNow, k)
}

func (s *Store[T, K]) delete(ctx context.Context, db DB, after func(func(bool)), k K) error {
	var version, outboxID int64
	var dst any = new(bool)
	if s.t.versionIdx >= 0 {
		dst = &version
	}
	key := s.Key(k)
	args := s.t.keyArgs(k)
	dsts := []any{dst}
	if s.w.outbox {
		args = append(args[:len(args):len(args)], key)
		dsts = append(dsts, &outboxID)
	}
	err := s.writeOne(ctx, db, s.w.delete, args, func(rows pgx.Rows) error {
		_, err := pgx.CollectOneRow(rows, func(r pgx.CollectableRow) (struct{}, error) { return struct{}{}, r.Scan(dsts...) })
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		// Another writer deleted the row and may not have reached the cache
		// yet. The caller now knows the row is gone, so no later read may
		// return it: delete the key (a later fill runs under a lease).
		s.invalidate(ctx, key)
		return s.opErr(observe.OpDelete, k, ErrNotFound)
	}
	if err != nil {
		if ambiguous(err) {
			s.unsure(ctx, key) // it may have committed, or may yet
		}
		return s.opErr(observe.OpDelete, k, err)
	}
	s.afterWrite(ctx, after, key, nil, version, outboxID)
	return nil
}

// afterCommit runs once the write has committed: bring the cache in line
// and, if that worked, drop the write's outbox row (else the Repairer
// replays it).
func (s *Store[T, K]) afterCommit(ctx context.Context, key string, v *T, version, outboxID int64) {
	ok := s.writeThrough(ctx, key, v, version)
	if s.near != nil {
		s.near.written(ctx, key)
	}
	if !ok || outboxID == 0 {
		return
	}
	if _, err := s.db.Exec(context.WithoutCancel(ctx), s.w.outboxDone, outboxID); err != nil {
		s.c.CacheErr(ctx, observe.StepOutbox, key, err) // harmless: the Repairer deletes the key again later
	}
}

// writeThrough brings the cache in line with a committed write: v is the new
// row, or nil for a deletion. It runs whatever the caller's ctx says, since the
// database change has committed. Without a version column it deletes the key;
// with one it installs the new state with PutVersioned. It reports whether
// the cache no longer holds anything older than the write.
func (s *Store[T, K]) writeThrough(ctx context.Context, key string, v *T, version int64) bool {
	if s.t.versionIdx < 0 {
		return s.c.Invalidate(ctx, key)
	}
	value, flags := s.envelope(ctx, key, v, version)
	if value == nil {
		return s.c.Invalidate(ctx, key)
	}
	ttl := s.c.Opt.TTL
	if v == nil {
		ttl = s.c.Opt.NegativeTTL
	}
	return s.c.PutVersioned(ctx, key, value, flags, s.c.Expiry(ttl, true), version)
}

// isUniqueViolation reports whether err is PostgreSQL's unique_violation.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// insertSQL returns the INSERT (or upsert) statement. With a Version column
// it names the column's sequence, looked up on first use: the statement
// draws the version itself, after locking the key (see buildSQL).
func (s *Store[T, K]) insertSQL(ctx context.Context, db DB, upsert bool) (string, error) {
	if s.t.versionIdx < 0 {
		if upsert {
			return s.w.upsert, nil
		}
		return s.w.insert, nil
	}
	p := s.insSQL.Load()
	if p == nil {
		s.insMu.Lock()
		defer s.insMu.Unlock()
		if p = s.insSQL.Load(); p == nil {
			var expr *string
			err := db.QueryRow(ctx, nextvalLookup, s.t.ident, s.t.cols[s.t.versionIdx]).Scan(&expr)
			if err != nil {
				return "", fmt.Errorf("looking up the sequence of version column %q: %w", s.t.cols[s.t.versionIdx], err)
			}
			if expr == nil || !strings.HasPrefix(*expr, "nextval(") {
				return "", fmt.Errorf("version column %q has no sequence: declare it GENERATED BY DEFAULT AS IDENTITY (or serial)", s.t.cols[s.t.versionIdx])
			}
			p = &[2]string{strings.ReplaceAll(s.w.insert, nextvalMarker, *expr), strings.ReplaceAll(s.w.upsert, nextvalMarker, *expr)}
			s.insSQL.Store(p)
		}
	}
	if upsert {
		return p[1], nil
	}
	return p[0], nil
}

// nextvalLookup finds the expression that draws a column's next value: its
// identity or serial sequence, or else its DEFAULT if that is a nextval.
const nextvalLookup = `SELECT coalesce(
	'nextval(' || quote_literal(pg_get_serial_sequence($1, $2)) || '::regclass)',
	(SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
		JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
		WHERE d.adrelid = $1::regclass AND a.attname = $2))`

// ambiguous reports whether a failed statement may still have committed:
// any failure but an error from the server (which aborts the statement),
// such as a connection lost before the answer arrived.
func ambiguous(err error) bool {
	var pe *pgconn.PgError
	return !errors.As(err, &pe)
}

// unsure ends a write whose outcome is unknown (its connection failed, or
// its commit's answer was lost): the statement may have committed, or may
// still commit later, for as long as the server can still be running it. So
// the key is deleted now (no read after the call may contradict a commit
// that happened) and again once the statement can no longer be running,
// Options.WriteTimeout later (no fill from before a late commit outlives
// it). The write's outbox row, if it committed, is replayed too.
func (s *Store[T, K]) unsure(ctx context.Context, key string) {
	s.invalidate(ctx, key)
	if d := s.writeTimeout; d > 0 {
		ctx := context.WithoutCancel(ctx)
		time.AfterFunc(d, func() { s.invalidate(ctx, key) })
	}
}

// invalidate deletes key from memcached and from the near-caches (this
// process's at once, the others' by NOTIFY), for a caller that has just
// learnt that the row changed or may have: no later read may return the
// row it replaced, from either cache.
func (s *Store[T, K]) invalidate(ctx context.Context, key string) {
	s.c.Invalidate(ctx, key)
	if s.near != nil {
		s.near.written(ctx, key)
	}
}
