package repo

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// Tx is a database transaction that holds back cache effects until it
// commits. Get one from InTx, bind stores to it with Store.In, and run your
// own statements with its Exec, Query and QueryRow (a *Tx is a DB, so sqlc's
// New(tx) takes it). InTx commits or rolls it back; a Tx has no Commit.
type Tx struct {
	tx    pgx.Tx
	after []func(committed bool)
}

// Exec runs sql in the transaction.
func (tx *Tx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return tx.tx.Exec(ctx, sql, args...)
}

// Query runs sql in the transaction.
func (tx *Tx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return tx.tx.Query(ctx, sql, args...)
}

// QueryRow runs sql in the transaction.
func (tx *Tx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return tx.tx.QueryRow(ctx, sql, args...)
}

// Begin starts a savepoint in the transaction (pgx.Tx's Begin); Update uses
// it so that its own steps roll back alone.
func (tx *Tx) Begin(ctx context.Context) (pgx.Tx, error) { return tx.tx.Begin(ctx) }

// InTx runs fn inside a transaction begun on db and commits it if fn returns
// nil. The cache effects of writes made through stores bound to the
// transaction (Store.In) run only after COMMIT succeeds, in order; if fn
// returns an error or panics, or the commit fails, the transaction is rolled
// back and the cache is left untouched (a panic is then re-raised). fn's
// error is returned as is. tx must not be used after fn returns.
func InTx(ctx context.Context, db Beginner, fn func(tx *Tx) error) (err error) {
	ptx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	tx := &Tx{tx: ptx}
	done := false
	defer func() {
		if !done { // fn panicked: free the connection and its locks first
			_ = ptx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	err = fn(tx)
	done = true
	if err != nil {
		_ = ptx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	if err := ptx.Commit(ctx); err != nil {
		_ = ptx.Rollback(context.WithoutCancel(ctx))
		// The commit may have happened (its answer lost with the
		// connection): delete the keys written, as a fill cannot be stale.
		for _, f := range tx.after {
			f(false)
		}
		return err
	}
	for _, f := range tx.after {
		f(true)
	}
	return nil
}

// TxStore is a Store bound to a transaction. Its reads go to the
// transaction (they see its uncommitted writes) and never to the cache,
// which must not learn uncommitted rows; its writes update the cache only
// after the transaction commits.
type TxStore[T any, K comparable] struct {
	s  *Store[T, K]
	tx *Tx
}

// In returns s bound to tx. A TxStore is as safe for concurrent use as the
// transaction itself (pgx transactions are not).
func (s *Store[T, K]) In(tx *Tx) TxStore[T, K] { return TxStore[T, K]{s: s, tx: tx} }

// Get reads the row with key k inside the transaction, bypassing the cache.
func (t TxStore[T, K]) Get(ctx context.Context, k K) (T, error) {
	v, err := t.s.readRow(ctx, t.tx, k)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return v, t.s.opErr(observe.OpGet, k, err)
	}
	return v, nil
}

// Insert is Store.Insert inside the transaction.
func (t TxStore[T, K]) Insert(ctx context.Context, v T) (T, error) {
	row, err := t.s.writeRow(ctx, t.tx, t.tx.defer_, false, &v)
	if err != nil {
		return row, t.s.opErr(observe.OpInsert, t.s.t.keyOf(&v), err)
	}
	return row, nil
}

// Upsert is Store.Upsert inside the transaction.
func (t TxStore[T, K]) Upsert(ctx context.Context, v T) (T, error) {
	row, err := t.s.writeRow(ctx, t.tx, t.tx.defer_, true, &v)
	if err != nil {
		return row, t.s.opErr(observe.OpUpsert, t.s.t.keyOf(&v), err)
	}
	return row, nil
}

// Update is Store.Update inside the transaction (its own steps run in a
// savepoint).
func (t TxStore[T, K]) Update(ctx context.Context, k K, mutate func(*T) error) (T, error) {
	row, err := t.s.update(ctx, t.tx, t.tx.defer_, k, mutate)
	if err != nil {
		return row, t.s.opErr(observe.OpUpdate, k, err)
	}
	return row, nil
}

// Replace is Store.Replace inside the transaction.
func (t TxStore[T, K]) Replace(ctx context.Context, v T) (T, error) {
	row, err := t.s.replace(ctx, t.tx, t.tx.defer_, &v)
	if err != nil {
		return row, t.s.opErr(observe.OpUpdate, t.s.t.keyOf(&v), err)
	}
	return row, nil
}

// Delete is Store.Delete inside the transaction.
func (t TxStore[T, K]) Delete(ctx context.Context, k K) error {
	return t.s.delete(ctx, t.tx, t.tx.defer_, k)
}

// defer_ holds back a write's cache effect until the transaction ends: f(true)
// after COMMIT, f(false) if the commit failed and may or may not have
// happened.
func (tx *Tx) defer_(f func(committed bool)) { tx.after = append(tx.after, f) }

// runNow is the after-commit scheduler outside InTx: the statement has
// committed by the time it is called.
func runNow(f func(committed bool)) { f(true) }
