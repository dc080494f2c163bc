package repo

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Insert inserts v (every column but Version, which takes its DEFAULT) and
// returns the row as stored (INSERT ... RETURNING), after writing it through
// to the cache (replacing a cached "not found").
func (s *Store[T, K]) Insert(ctx context.Context, v T) (T, error) {
	row, err := s.writeRow(ctx, s.db, runNow, false, &v)
	if err != nil {
		return row, s.opErr("insert", s.t.keyOf(&v), err)
	}
	return row, nil
}

// Upsert inserts v or, if a row with its key exists, overwrites that row's
// columns (INSERT ... ON CONFLICT DO UPDATE), and returns the stored row after
// writing it through to the cache.
func (s *Store[T, K]) Upsert(ctx context.Context, v T) (T, error) {
	row, err := s.writeRow(ctx, s.db, runNow, true, &v)
	if err != nil {
		return row, s.opErr("upsert", s.t.keyOf(&v), err)
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
	rows, _ := db.Query(ctx, sql, args...)
	var outboxID int64
	row, err := pgx.CollectOneRow(rows, s.scanner(&outboxID))
	if err != nil {
		if isUniqueViolation(err) || ambiguous(err) {
			// A unique violation tells the caller the row exists, and a
			// concurrent inserter may not have reached the cache yet. Any
			// error but the server's may hide a commit whose answer was
			// lost. Either way the cache must not contradict the database.
			s.invalidate(key)
		}
		return row, err
	}
	after(func(committed bool) {
		if !committed {
			s.invalidate(key)
			return
		}
		s.afterCommit(ctx, key, &row, s.versionOf(&row), outboxID)
	})
	return row, nil
}

// Update reads the row with key k under a row lock (SELECT ... FOR UPDATE),
// calls mutate on it, writes every non-key column back and commits, all in
// one transaction, then writes the result through to the cache. If mutate
// returns an error the transaction is rolled back and the error returned
// (wrapped). mutate may run once per call; it must not change the key.
func (s *Store[T, K]) Update(ctx context.Context, k K, mutate func(*T) error) (T, error) {
	row, err := s.update(ctx, s.db, runNow, k, mutate)
	if err != nil {
		return row, s.opErr("update", k, err)
	}
	return row, nil
}

func (s *Store[T, K]) update(ctx context.Context, db DB, after func(func(bool)), k K, mutate func(*T) error) (T, error) {
	var zero T
	tx, err := db.Begin(ctx) // a savepoint when db is itself a transaction
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
		s.invalidate(key)
		return zero, ErrNotFound
	}
	if err != nil {
		return zero, err
	}
	if err := mutate(&row); err != nil {
		// mutate saw the row as committed; a writer that committed it may
		// not have reached the cache yet, so bring the cache up to it.
		s.writeThrough(key, &row, s.versionOf(&row))
		return zero, err
	}
	if s.t.keyOf(&row) != k {
		return zero, ErrKeyChanged
	}
	vals := s.t.values(&row)
	args := append(make([]any, 0, len(keyArgs)+len(s.t.setCols)+1), keyArgs...)
	for _, i := range s.t.setCols {
		args = append(args, vals[i])
	}
	if s.w.outbox {
		args = append(args, key)
	}
	var outboxID int64
	rows, _ = tx.Query(ctx, s.w.update, args...)
	if row, err = pgx.CollectOneRow(rows, s.scanner(&outboxID)); err != nil {
		return zero, err
	}
	if err := tx.Commit(ctx); err != nil {
		s.invalidate(key) // it may have committed
		return zero, err
	}
	after(func(committed bool) {
		if !committed {
			s.invalidate(key)
			return
		}
		s.afterCommit(ctx, key, &row, s.versionOf(&row), outboxID)
	})
	return row, nil
}

// Delete deletes the row with key k, or returns an error wrapping ErrNotFound
// if there is none. With a Version column the cache keeps a tombstone for
// NegativeTTL, so a read that raced the delete cannot put the row back;
// without one, the key is deleted and the lease protocol guards fills.
func (s *Store[T, K]) Delete(ctx context.Context, k K) error {
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
	err := db.QueryRow(ctx, s.w.delete, args...).Scan(dsts...)
	if errors.Is(err, pgx.ErrNoRows) {
		// Another writer deleted the row and may not have reached the cache
		// yet. The caller now knows the row is gone, so no later read may
		// return it: delete the key (a later fill runs under a lease).
		s.invalidate(key)
		return s.opErr("delete", k, ErrNotFound)
	}
	if err != nil {
		if ambiguous(err) {
			s.invalidate(key) // it may have committed
		}
		return s.opErr("delete", k, err)
	}
	after(func(committed bool) {
		if !committed {
			s.invalidate(key)
			return
		}
		s.afterCommit(ctx, key, nil, version, outboxID)
	})
	return nil
}

// afterCommit runs once the write has committed: bring the cache in line
// and, if that worked, drop the write's outbox row (else the Repairer
// replays it).
func (s *Store[T, K]) afterCommit(ctx context.Context, key string, v *T, version, outboxID int64) {
	if !s.writeThrough(key, v, version) || outboxID == 0 {
		return
	}
	if _, err := s.db.Exec(context.WithoutCancel(ctx), s.w.outboxDone, outboxID); err != nil {
		s.cacheErr("outbox", key, err) // harmless: the Repairer deletes the key again later
	}
}

// writeThrough brings the cache in line with a committed write: v is the new
// row, or nil for a deletion. It runs whatever the caller's ctx says, since the
// database change has committed. Without a version column it deletes the key;
// with one it installs the new state with putVersioned. It reports whether
// the cache no longer holds anything older than the write.
func (s *Store[T, K]) writeThrough(key string, v *T, version int64) bool {
	if s.t.versionIdx < 0 {
		return s.invalidate(key)
	}
	value, flags := s.envelope(key, v, version)
	if value == nil {
		return s.invalidate(key)
	}
	ttl := s.opt.TTL
	if v == nil {
		ttl = s.opt.NegativeTTL
	}
	return s.putVersioned(key, value, flags, s.expiry(ttl, true), version)
}

// putVersioned brings one key up to a new state (value or absent, of row
// version version) without ever moving it backwards:
//
//   - a miss stays a miss: nothing cached means nothing stale, and the next
//     read fills under a lease. (An Add here could install an older version
//     after a newer one was evicted.)
//   - a lease is deleted, so the filler's CAS fails: its read may be older
//     or newer than ours, and we cannot tell which.
//   - a cached "not found" from a read has no version to compare, so a new
//     value deletes it and the next read fills under a lease.
//   - a cached state as new as ours or newer is kept.
//   - an older one is replaced by CAS, retried up to CASRetries.
//
// If the loop fails, the key is deleted so no stale value stays, and the
// failure is reported. It reports whether the cache holds nothing older
// than the write.
func (s *core) putVersioned(key string, value []byte, flags uint32, exp int32, version int64) bool {
	deleted := kind(flags&0xff) == kindAbsent
	for try := 0; try < s.opt.CASRetries; try++ {
		it, err := s.cache.Get(key)
		if isMiss(err) {
			return true
		}
		if err != nil {
			s.cacheErr("write", key, err)
			return s.invalidate(key)
		}
		k, ver, _, ok := openEnvelope(it.Flags, it.Value)
		if !ok || k == kindLease {
			return s.invalidate(key)
		}
		if k == kindAbsent && ver == 0 && !deleted {
			// A read found no row and cached that, without a version: the
			// read may have come after a delete that followed this write, or
			// before this write's insert. Only a fresh read can tell.
			return s.invalidate(key)
		}
		if newer(ver, k == kindAbsent, version, deleted) {
			return true
		}
		it.Value, it.Flags, it.Expiration = value, flags, exp
		err = s.cache.CompareAndSwap(it)
		switch {
		case err == nil:
			return true
		case isMiss(err) || errors.Is(err, memcache.ErrNotStored):
			return true // evicted meanwhile: nothing stale left
		case isLost(err):
			s.stats.casConflicts.Add(1)
		default:
			s.cacheErr("write", key, err)
			return s.invalidate(key)
		}
	}
	s.cacheErr("write", key, ErrRetriesExhausted)
	return s.invalidate(key)
}

// newer reports whether a cached state (version, deleted) is at least as new
// as an incoming one. A version number belongs to one row state; deleting it
// keeps the number (the tombstone carries the deleted row's version), so at
// equal versions a tombstone is newer than a value.
func newer(cached int64, cachedDeleted bool, incoming int64, incomingDeleted bool) bool {
	if cached != incoming {
		return cached > incoming
	}
	return cachedDeleted || !incomingDeleted
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
