// Package invalidation makes committed changes reach the cache when a
// store's own write-through did not or could not: the WAL invalidator, for
// changes made behind the stores' backs, and the outbox's Repairer, for
// writes whose cache step failed.
//
// # The WAL invalidator
//
// WAL tails PostgreSQL's logical replication (the built-in pgoutput plugin,
// through github.com/jackc/pglogrepl) for the tables of its Targets
// (repo.Store, aggregate.Counter, aggregate.Leaderboard) and applies every
// committed INSERT, UPDATE, DELETE and TRUNCATE to the cache, so that changes
// made by psql, migrations, batch jobs or services in other languages reach
// the cache within the invalidator's lag instead of the TTL:
//
//	w, err := invalidation.NewWAL(invalidation.WALConfig{
//		ConnString: os.Getenv("DATABASE_URL"), // a role with REPLICATION
//		Targets:    []invalidation.Target{products, stock, counters},
//	})
//	go w.Run(ctx)
//
// What it does with a change:
//   - With a version column, it deletes the cached entry only if it is
//     older than the change's row version, so the stores' own
//     write-through values survive; a lease is deleted (its filler may have
//     read before the change). Without one, it deletes the entry.
//   - A DELETE, and the old key of an UPDATE that changed the key, delete the
//     entry (REPLICA IDENTITY DEFAULT sends the old key).
//   - A change whose key the WAL does not carry invalidates the whole table
//     (InvalidateAll, once per batch), and is counted (WALStats.Unkeyed):
//     see the REPLICA IDENTITY item below.
//   - TRUNCATE bumps the table's key generation (InvalidateAll).
//   - Changes of tables in the publication that are no target are ignored
//     and counted (WALStats.Ignored).
//
// A transaction's changes are applied after its commit record, in commit
// order; consecutive transactions are applied together, coalesced per key,
// with two pipelined memcached round trips per server. A position is
// confirmed to the server (StandbyStatusUpdate) only after the cache step
// for every transaction up to it succeeded: if the invalidator dies, the
// cache is unreachable (the step is retried every RetryInterval and nothing
// is confirmed), or PostgreSQL restarts, the slot replays what was not
// confirmed. Several invalidators may run with the same Slot: one holds it,
// the others retry every RetryInterval and take over when it is released.
//
// The bound: a change committed at time t is in the cache by t plus the lag
// (WALStats.LagP50 and LagP99, commit time to cache step), as long as an
// invalidator runs and memcached answers. What sets it: PostgreSQL sends a
// commit to the WAL sender once its WAL is flushed (at once with
// synchronous_commit on; within wal_writer_delay with it off); the
// invalidator then gathers committed transactions into a batch until no
// message has waited for 1ms, the batch is 20ms old, or it holds 5,000
// changes, whichever comes first; and the batch's cache step is one read of
// each target's generation and two pipelined memcached round trips per
// server. Measured by the package's tests on a 2-core machine under -race,
// commit to cache step, over five runs: lag_p50_ms 26-65 and lag_p99_ms
// 57-187 with four plain-SQL writers on 20 keys beside four store readers
// (TestWALUnderLoad's "wal:" summary line), and 9-15 and 14-23 for the few
// changes of TestWALBehindTheBack. The consistency checker (repo's
// TestConsistencyEveryChange) holds every write it makes behind the stores'
// backs to a bound of 1s (walLag), with room for a loaded machine, and finds
// no read staler than that. While no invalidator holds the slot, changes
// wait in it and a cached entry's TTL is the bound; while memcached does not
// answer, the step is retried every RetryInterval and nothing is confirmed.
// BenchmarkWALApply measures throughput. The stores' own write-through
// stays: the WAL is the net under it, not a replacement.
//
// # What it needs
//
//   - wal_level=logical, and a free replication slot and WAL sender
//     (max_replication_slots, max_wal_senders) on the server.
//   - A role with the REPLICATION attribute (or a superuser) in ConnString.
//     The publication (WALConfig.Publication) is created, or extended with
//     missing target tables, if the role may; otherwise create it yourself:
//     CREATE PUBLICATION cachedrepo FOR TABLE products, stock, counters.
//   - Versions that grow on every change: a writer that changes a row
//     without a new version (a plain UPDATE from psql) looks no newer than
//     what is cached. Install the trigger function cachedrepo_bump_version
//     (migrations.Library) on each cached table with a version column:
//     CREATE TRIGGER products_version BEFORE UPDATE ON products FOR EACH ROW
//     EXECUTE FUNCTION cachedrepo_bump_version().
//   - Keys of integer, string, bool or 16-byte UUID types (or structs of
//     them); a change of another key type invalidates the whole table.
//   - A Store's key columns covered by the table's REPLICA IDENTITY: the
//     primary key by default, so a Store keyed on its table's primary key
//     needs nothing more. The WAL carries of a DELETE's old row, and of an
//     UPDATE's old key, only the replica identity's columns. For a Store
//     keyed on other columns (a unique code beside a serial id), the
//     invalidator cannot name the entry a DELETE removed, nor know whether an
//     UPDATE changed the key; so every DELETE and UPDATE of such a table, and
//     any change whose key column is NULL or an unchanged TOASTed value,
//     invalidates the whole table (one InvalidateAll per batch, counted in
//     WALStats.Unkeyed): correct, but every cached row of the table is then
//     read again. Make the key the replica identity to keep changes keyed:
//     ALTER TABLE codes REPLICA IDENTITY USING INDEX codes_code_key (a
//     unique index on NOT NULL columns), or REPLICA IDENTITY FULL.
//
// # Retained WAL and lost slots
//
// A slot keeps every WAL segment from its confirmed position on, so a
// stopped invalidator makes the server retain WAL without bound. Bound it
// with max_slot_wal_keep_size (PostgreSQL 13+): past it the server
// invalidates the slot (wal_status "lost"), and the next Run drops it,
// calls InvalidateAll on every target (changes were lost, so nothing cached
// can be trusted) and starts a new slot. The same happens the first time a
// slot is created. A running invalidator confirms each batch after its cache
// step, and, while nothing is pending, the position the server's keepalives
// report as sent, so WAL of activity outside the publication is released
// too (within a StatusInterval of the server's next keepalive). SlotStatus
// reports the slot's state and retained bytes.
//
// Not covered: a Leaderboard's LocalTTL copies in other processes (they
// expire after LocalTTL), and row types whose tables are not targets.
//
// # The outbox Repairer
//
// The outbox is a table (migrations.Library creates it):
//
//	CREATE TABLE cachedrepo_outbox (
//	    id         bigserial PRIMARY KEY,
//	    cache_key  text NOT NULL,
//	    created_at timestamptz NOT NULL DEFAULT now()
//	);
//
// A Store, Counter or Leaderboard configured with a Repairer records the
// cache key of every write there in the same transaction as the write
// (Counters and Leaderboards: the keys they failed to delete), and deletes
// the row once the cache step succeeded. A row left behind (the process died
// between commit and cache step, or the cache was unreachable) is replayed
// by the Repairer: it deletes the key from the cache, then the row. Deleting
// is always safe: the next read refills from the database under a lease.
//
// Run the Repairer in a goroutine of its own (go r.Run(ctx)). Besides
// replaying old rows, it serves the replays that stores ask for when their
// breaker finds the cache answering again after an outage: a store reads the
// database, not the cache, until that replay is done, so no key whose
// invalidation failed during the outage is served.
package invalidation
