package repo

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

var (
	// ErrNotFound is returned (wrapped in an *OpError) when no row has the
	// requested key. errors.Is(err, pgx.ErrNoRows) also holds for such errors,
	// so code written against pgx keeps working.
	ErrNotFound = errors.New("repo: not found")

	// ErrKeyChanged is returned by Update when the mutate function changed the
	// row's primary key. Update never moves a row to another key.
	ErrKeyChanged = errors.New("repo: update changed the primary key")

	// ErrTooLarge is reported through Hooks.CacheError when an encoded value
	// exceeds Options.MaxItemSize. The value is not cached; callers are not
	// affected.
	ErrTooLarge = errors.New("repo: value too large for the cache")

	// ErrCorrupt is reported through Hooks.CacheError when cached bytes cannot
	// be decoded (bad checksum, unknown format, truncated). The key is deleted
	// and the read is served from the database.
	ErrCorrupt = errors.New("repo: corrupt cache value")

	// ErrRetriesExhausted is reported through Hooks.CacheError when a
	// compare-and-swap loop ran out of retries; the key is deleted instead.
	// CAS helpers that cannot fall back (CASValue) return it to the caller.
	ErrRetriesExhausted = errors.New("repo: compare-and-swap retries exhausted")

	// ErrInvalidArgument is returned (wrapped in an *OpError) for arguments
	// an operation cannot accept: an empty counter, board or player name, a
	// negative or too large n.
	ErrInvalidArgument = errors.New("repo: invalid argument")
)

// OpError is the error type of every failing Store operation. It names the
// operation, the table and the key, and wraps the cause, so errors.Is and
// errors.As see through it.
type OpError struct {
	Op    string // "get", "get many", "insert", "update", "upsert", "delete"
	Table string // the table name as configured
	Key   string // the key's parts, formatted for people; empty for multi-key operations
	Err   error  // the cause
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
