package repo

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

var (
	// ErrNotFound is returned (wrapped in an *OpError) when no row has the
	// requested key. errors.Is(err, pgx.ErrNoRows) also holds for such errors,
	// so code written against pgx keeps working.
	ErrNotFound = errors.New("repo: not found")

	// ErrKeyChanged is returned by Update when the mutate function changed the
	// row's primary key. Update never moves a row to another key.
	ErrKeyChanged = errors.New("repo: update changed the primary key")

	// ErrTooLarge is reported as a CacheError event when an encoded value
	// exceeds Options.MaxItemSize. The value is not cached; callers are not
	// affected.
	ErrTooLarge = protocol.ErrTooLarge

	// ErrCorrupt is reported as a CacheError event when cached bytes cannot
	// be decoded (bad checksum, unknown format, truncated). The key is deleted
	// and the read is served from the database.
	ErrCorrupt = protocol.ErrCorrupt

	// ErrRetriesExhausted is reported as a CacheError event when a
	// compare-and-swap loop ran out of retries; the key is deleted instead.
	// CAS helpers that cannot fall back (aggregate.CASValue) return it.
	ErrRetriesExhausted = protocol.ErrRetriesExhausted

	// ErrInvalidArgument is returned (wrapped in an *OpError) for arguments
	// an operation cannot accept: an empty counter, board or player name, a
	// negative or too large n.
	ErrInvalidArgument = errors.New("repo: invalid argument")

	// ErrNeedsTx is returned by Update when the Store's DB cannot begin a
	// transaction (an sqlc DBTX that is not a pool or connection): call it
	// inside InTx, or give New a *pgxpool.Pool.
	ErrNeedsTx = errors.New("repo: Update needs a DB that can Begin, or a Tx (InTx)")
)

// OpError is the error type of every failing operation. It names the
// operation, the table and the key, and wraps the cause, so errors.Is and
// errors.As see through it.
type OpError struct {
	Op    observe.Op // observe.OpGet, observe.OpInsert, ...
	Table string     // the table name as configured (a query's or board's name)
	Key   string     // the key's parts, formatted for people; empty for multi-key operations
	Err   error      // the cause
}

// Error formats the error as "repo: <op> <table>[<key>]: <cause>".
func (e *OpError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("repo: %s %s: %v", e.Op, e.Table, e.Err)
	}
	return fmt.Sprintf("repo: %s %s[%s]: %v", e.Op, e.Table, e.Key, e.Err)
}

// Unwrap returns the cause; for a missing row it also returns pgx.ErrNoRows.
func (e *OpError) Unwrap() []error {
	if e.Err == ErrNotFound {
		return []error{ErrNotFound, pgx.ErrNoRows}
	}
	return []error{e.Err}
}
