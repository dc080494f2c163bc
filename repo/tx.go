package repo

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// Tx is a database transaction that holds back cache effects until it
// commits. Get one from InTx and bind stores to it with Store.In.
type Tx struct {
	pgx.Tx
	after []func(committed bool)
}

// InTx runs fn inside a transaction begun on db and commits it if fn returns
// nil. The cache effects of writes made through stores bound to the
// transaction (Store.In) run only after COMMIT succeeds, in order; if fn
// returns an error, or the commit fails, the transaction is rolled back and
// the cache is left untouched. fn's error is returned as is.
func InTx(ctx context.Context, db DB, fn func(tx *Tx) error) error {
	ptx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	tx := &Tx{Tx: ptx}
	if err := fn(tx); err != nil {
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
	rows, _ := t.tx.Query(ctx, t.s.t.selectOne, t.s.t.keyArgs(k)...)
	v, err := pgx.CollectOneRow(rows, t.s.t.scan)
	if errors.Is(err, pgx.ErrNoRows) {
		err = ErrNotFound
	}
	if err != nil {
		return v, t.s.opErr("get", k, err)
	}
	return v, nil
}

// Insert is Store.Insert inside the transaction.
func (t TxStore[T, K]) Insert(ctx context.Context, v T) (T, error) {
	row, err := t.s.writeRow(ctx, t.tx, t.tx.defer_, false, &v)
	if err != nil {
		return row, t.s.opErr("insert", t.s.t.keyOf(&v), err)
	}
	return row, nil
}

// Upsert is Store.Upsert inside the transaction.
func (t TxStore[T, K]) Upsert(ctx context.Context, v T) (T, error) {
	row, err := t.s.writeRow(ctx, t.tx, t.tx.defer_, true, &v)
	if err != nil {
		return row, t.s.opErr("upsert", t.s.t.keyOf(&v), err)
	}
	return row, nil
}

// Update is Store.Update inside the transaction (its own steps run in a
// savepoint).
func (t TxStore[T, K]) Update(ctx context.Context, k K, mutate func(*T) error) (T, error) {
	row, err := t.s.update(ctx, t.tx, t.tx.defer_, k, mutate)
	if err != nil {
		return row, t.s.opErr("update", k, err)
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
