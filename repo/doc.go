// Package repo is a repository layer over PostgreSQL (pgx v5) with a
// memcached cache that stays correct under concurrency.
//
// A Store[T, K] serves one table. Reads are cache-aside: a hit costs one
// memcached round trip and a decode; a miss reads the row with one SELECT (or
// the Table's Load, such as an sqlc query) and fills the cache. Writes
// (Insert, Update, Replace, Upsert, Delete) change the database first and then the
// cache. A Query caches the result of any load function for a short TTL.
//
// # How the pieces fit
//
// Data flows one way: caller -> Store or Query (this package) -> the cache
// protocol (repo/internal/protocol: envelope, leases, fills, versioned
// writes, the CAS loop, the shared load, the breaker, generations) -> the
// memcached client (repo/memclient, whose meta protocol lets a miss take the
// key's lease in its read) and the database (any DB: a pgx pool, connection
// or transaction, or sqlc's DBTX). Beside it:
//
//	repo/aggregate     Counter, Leaderboard, CacheCounter, CASValue, on the same protocol
//	repo/invalidation  the WAL invalidator (changes made behind the stores' backs) and
//	                   the outbox Repairer (cache steps that did not happen)
//	repo/observe       Hooks, Events, Op names and Stats, for metrics and tracing
//	repo/repootel      OpenTelemetry traces and metrics from Hooks (a module of its own)
//	repo/repoprom      a Prometheus collector from Hooks
//	repo/repotest      real PostgreSQL and memcached servers for tests
//	migrations         the library's own tables (outbox, counters, scores)
//
// In front of memcached, a Store may read through a NearCache
// (Options.Near: in process, invalidated across processes by NOTIFY, never
// older than its MaxAge; see NearCache for the bound), and a hot key close
// to expiry is refreshed by one reader before it expires
// (Options.EarlyRefresh). Concurrent requests to one memcached server leave
// together, one pipeline per connection (memclient's coalescing).
//
// Every cached table needs an explicit key and, for write-through, a version
// column (see Table.Version). The default codec caches every type pgx v5
// scans into by default (see Table.Codec).
//
// # The cache protocol
//
// Every cached item is an envelope: a kind (row, absent, lease) in the item
// flags, and a checksum, the row version and, for a row, the fingerprint of
// T's codec and the encoded row in the value. Bytes that fail the checksum
// or do not decode are a miss: the key is deleted, a CacheError event
// reported to Hooks.Event, and the row read from the database.
//
// Rolling deploys. Keys do not depend on T: while two releases with
// different row types serve one table, both read and write the same keys,
// and row versions compare across them, so neither serves a row older than
// a write the other acknowledged. A store never decodes another row type's
// bytes (the fingerprints differ): it reads the database and, if its row is
// as new as the cached one or newer, replaces the entry with its own by CAS,
// so entries convert to whichever release reads them; writes replace or
// delete whatever is there, by version. During a deploy a key read by both
// releases in turn costs a database read per turn; after it, one per key.
//
// Stampedes. Concurrent misses of one key in a process share one load
// (one caller's cancelled context does not fail the others). Across
// processes the first reader takes the key's lease, a placeholder item;
// others poll with jittered backoff for up to Options.LeaseWait and then
// read the database themselves (without filling). A lease expires after
// Options.LeaseTTL, so a filler that dies frees the key. Over a
// *memclient.Client the read itself takes the lease (memcached's mg with N
// creates an empty placeholder on a miss and tells the one reader that
// created it), so a miss costs two memcached round trips, the read and the
// fill, as plain cache-aside does. Over any other Cache the lease is an Add
// after the miss, and the fill reads the CAS id with gets: four round trips.
//
// Stale sets. A fill replaces only its own lease, by compare-and-swap with
// the lease's CAS id. Any write replaces or deletes the lease first, so a
// reader that read the row before a write committed can never put the old
// row back. CAS ids restart when memcached does, so a *memclient.Client sends
// the fill on the connection that took the lease: after a restart that
// connection is dead and the fill fails, instead of matching a newer item
// that happens to carry the same id.
//
// Answers never run ahead of the cache. A reader that read the database
// answers with its own read only if its fill landed, or the key is empty.
// If another reader or writer put a value there meanwhile, it answers with
// that value; if another reader holds a lease, it deletes it first (that
// reader may have read before it). A reader that gives up waiting for a
// lease reads the database and then deletes the lease. Without this, a
// reader could return a row committed by a write whose cache update has not
// run yet, and the next reader the older row still cached.
//
// Writers out of order. With a Version column (a bigint drawn from a
// sequence: GENERATED BY DEFAULT AS IDENTITY, or serial) the cache never
// goes back to an older version: a write reads the cached version and
// installs its own only if it is newer, by CAS, retried up to
// Options.CASRetries; if that fails the key is deleted. Versions follow the
// order of commits on each key: updates draw them under the row lock, and
// inserts only after locking the key's current row, so an insert that waited
// for a concurrent delete is newer than the deleted row. A write deletes a
// lease it finds (the filler's read may be older than the write) and leaves
// a missing key missing: creating entries is left to fills, because an Add
// could bring back an older version after a newer one was evicted. A cached
// "not found" that a read put there has no version to compare with, so a
// write meeting it deletes it. Without a Version column every write deletes
// the key, and the lease guards the next fill.
//
// Deletes. With a Version column, a delete leaves a tombstone carrying the
// deleted row's version for Options.NegativeTTL; a newer row replaces it.
// Missing rows are cached as "absent" for NegativeTTL too.
//
// What a write observed. A Delete or Update that finds no row, an Insert
// that finds one, and a write whose outcome is unknown (the connection was
// lost before the commit was acknowledged) delete the key before returning:
// a concurrent writer that got there first may not have updated the cache
// yet, and no read after the call may contradict what the caller was told.
// A write of unknown outcome may also commit later, while the server still
// runs it; so its key is deleted again Options.WriteTimeout later, and a fill
// made in between is gone by then. The store bounds how long the server can
// run it: Insert, Upsert, Replace and Delete on a pool or a connection go
// out behind a local statement_timeout of WriteTimeout, in the same round
// trip (one pipeline), so the server cancels the statement before the second
// delete. (Update's statements run in its own transaction, which cannot
// commit without its COMMIT; in InTx the caller's transaction and settings
// stand, and over a DB that cannot send pipelines set statement_timeout no
// higher than WriteTimeout yourself.) A statement still in flight in the
// network when the store gave up starts its timeout when it arrives.
//
// One-way partitions. A store that fails to invalidate a key (its
// write-through or delete did not reach memcached, while its reads still
// do) never reads that key from the cache again until one of its own
// deletes of it has succeeded; past 4,096 such keys it reads nothing from
// the cache until its table's generation bump succeeds. So a process always
// reads its own writes.
//
// Cache failures. A read that cannot reach the cache (over a *memclient.Client
// at the first failure, whose client then drops the idle connections cut
// with it; over a plain gomemcache client after retrying a connection that
// failed fast, as every pooled connection does once after a memcached
// restart) reads the database and trips the breaker: the store's reads then
// skip the cache until it answers a probe again and the outbox has been
// replayed by the store's Repairer (Options.Repairer; the replay runs there,
// never inside a read, and waits for rows other processes are replaying), so keys whose
// invalidation failed meanwhile are gone before this store trusts the cache. A read served by the database while
// the cache fails fast (refused or reset connections, as around a restart)
// deletes its key afterwards, best effort, as a reader that gave up on a
// lease does: if the cache is back, no older fill outlives the answer. Writes always commit; if their cache
// update fails, the key is deleted as a best effort, the failure reported
// as a CacheError event, and the write's outbox row (Options.Repairer)
// stays for the Repairer.
//
// While some process cannot reach memcached and others can, the guarantees
// weaken for keys that process writes or reads: its writes cannot update
// the cache, so the others may read the previous value until the Repairer
// replays the outbox (invalidation.RepairerConfig.Delay plus one Interval); and its
// reads, served by the database, may see a write whose cache update another
// process has not made yet while that process still reads the previous
// value (for the few milliseconds of one cache update). Reads never see a
// value older than one a write replaced before the read began, as long as
// that write reached the cache or the outbox has been replayed; after every
// outage the cache converges to the database. The consistency tests measure
// both: no stale read and no divergence under restarts, evictions, killed
// database connections and partitions, and strict linearizability except
// around a partition's heal.
//
// A fleet. Over a *memclient.Client the breaker above is one per memcached
// server: while a node is down, only its keys are read from the database
// (no timeout per request once its breaker is open) and the other nodes'
// keys keep hitting. Changing the server list goes through a
// memclient.Migration (old ring A, new ring B) whose five phases app
// instances take one at a time. Over a Migration a Store's write-through
// runs on the primary ring and deletes the key on its owner in the other
// ring, A's step before B's, whatever the primary ring held; invalidations
// (deletes, the outbox replay, the WAL invalidator) reach both owners; and
// in the fallback phase a miss on B is answered from A under both rings'
// leases (a copy from A lands on B only through B's lease; a miss on A too
// holds A's lease while the database is read, so that fillers of the two
// rings never race). Instances in adjacent phases never read a row older
// than a write acknowledged before the read began, and after the migration
// the cache equals the database; while a write is under way, instances
// reading different rings may disagree until it returns (one ring is
// changed before the other). Skipping a phase breaks the first guarantee.
// Sweep the new ring (memclient.Migration.Sweep) before the fallback
// phase: entries a server kept from an earlier list would be read there.
// Cache-only values (aggregate.CASValue, aggregate.CacheCounter) live on
// their primary ring: a migration deletes the other ring's copy on every
// change and does not carry them over, so they start again from nothing
// once reads move to B.
//
// # Limits
//
// The guarantees above are for readers and writers that go through Stores.
// A change made behind the stores' backs (psql, another service) reaches the
// cache within the lag of the WAL invalidator (invalidation.WAL) where one
// runs; without it, not until the item expires (Options.TTL) or
// InvalidateAll is called. The
// checksum guards against corrupt bytes, not against a hostile memcached.
//
// gomemcache has no context: each round trip is bounded by the client's
// timeout (memclient.Config.Timeout), and stores check ctx between round
// trips.
// Work that must finish once the database has committed (the write-through)
// runs even if ctx is cancelled.
package repo
