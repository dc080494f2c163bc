package invalidation

import "context"

// Target is a cached table that the WAL invalidator keeps in line with the
// database: *repo.Store, *aggregate.Counter and *aggregate.Leaderboard are
// Targets.
type Target interface {
	// WALTable returns the table as the WAL names it ("schema.table"; a
	// name without a schema is in public), its key columns and its version
	// column ("" for none).
	WALTable() (table string, key []string, version string)

	// WALApply brings the cache in line with the changes of one committed
	// transaction to the table, in commit order. It returns an error only if
	// the cache could not be updated; the invalidator then retries, and does
	// not confirm the transaction until it succeeds.
	WALApply(ctx context.Context, changes []Change) error

	// InvalidateAll makes every cached entry of the table unreachable
	// (after TRUNCATE, or when changes may have been missed).
	InvalidateAll(ctx context.Context) error
}

// Change is one committed row change as the WAL gives it.
type Change struct {
	// Key holds the row's key columns in PostgreSQL's text format, in the
	// order of WALTable's key. A change whose key columns the WAL does not
	// carry is never passed on: the WAL calls InvalidateAll instead.
	Key []string
	// Version is the new row's version column, or 0 if the table has none
	// or the change is a delete (a delete carries the old key only).
	Version int64
	// Deleted is set for a DELETE, and for the old key of an UPDATE that
	// changed the key.
	Deleted bool
}

// Coalesce adds key's change of row version version (0: a delete, or no
// version) to keys and versions, the list DeleteOlderMany takes, keeping one
// entry per key (at maps a key to its index): the newest version, or 0 if
// any change of the key was a delete. Targets use it in WALApply.
func Coalesce(keys []string, versions []int64, at map[string]int, key string, version int64) ([]string, []int64) {
	i, ok := at[key]
	if !ok {
		at[key] = len(keys)
		return append(keys, key), append(versions, version)
	}
	if versions[i] != 0 && (version == 0 || version > versions[i]) {
		versions[i] = version
	}
	return keys, versions
}
