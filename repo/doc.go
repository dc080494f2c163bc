// Package repo is a repository layer over PostgreSQL (pgx v5) with a
// memcached cache (gomemcache) that stays correct under concurrency.
//
// A Store[T, K] serves one table. Reads are cache-aside: a hit costs one
// memcached round trip and a decode; a miss reads the row with one SELECT and
// fills the cache. Writes (Insert, Update, Upsert, Delete) change the
// database first and then the cache. A Query caches the result of any load
// function for a short TTL. Counters and Leaderboards keep hot aggregates in
// the cache with compare-and-swap loops.
//
// # The cache protocol
//
// Every cached item is an envelope: a kind (row, absent, lease) in the item
// flags, and a checksum, the row version and the encoded row in the value.
// Bytes that fail the checksum or do not decode are a miss: the key is
// deleted, the event reported to Hooks.CacheError, and the row read from
// the database. Keys carry a fingerprint of T's layout, so a deploy that
// changes T never decodes old bytes as the new type.
//
// Stampedes. Concurrent misses of one key in a process share one load
// (one caller's cancelled context does not fail the others). Across
// processes the first reader Adds a lease placeholder; others poll with
// jittered backoff for up to Options.LeaseWait and then read the database
// themselves (without filling). A lease expires after Options.LeaseTTL, so a
// filler that dies frees the key.
//
// Stale sets. A fill replaces only its own lease, by CompareAndSwap with the
// lease's CAS id. Any write replaces or deletes the lease first, so a reader
// that read the row before a write committed can never put the old row back.
//
// Writers out of order. With a Version column (a bigint with a sequence
// DEFAULT, set to DEFAULT by every write) the cache never goes back to an
// older version: a write reads the cached version and installs its own only
// if it is newer, by CAS, retried up to Options.CASRetries; if that fails
// the key is deleted. A write deletes a lease it finds (the filler's read
// may be older than the write) and leaves a missing key missing: creating
// entries is left to fills, because an Add could bring back an older
// version after a newer one was evicted. So write-through keeps every cached
// copy current, and a row is cached by its first read. Without a Version
// column every write deletes the key, and the lease guards the next fill.
//
// Deletes. With a Version column, a delete leaves a tombstone carrying the
// deleted row's version for Options.NegativeTTL; a row inserted later gets a
// higher version and replaces it. Missing rows are cached as "absent" for
// NegativeTTL too.
//
// Cache failures. Reads fall back to the database; writes commit and the
// failure is reported through Hooks.CacheError after the key is deleted as a
// best effort. If memcached is unreachable at that moment the delete fails
// too, and until the item expires a later reader may see the old value; see
// the outbox for the durable repair.
//
// # Limits
//
// The guarantees above are for readers and writers that go through Stores.
// A change made behind the stores' backs (psql, another service) is not seen
// until the item expires (Options.TTL) or InvalidateAll is called. The
// checksum guards against corrupt bytes, not against a hostile memcached.
//
// gomemcache has no context: each round trip is bounded by the client's
// Timeout (see NewCacheClient), and stores check ctx between round trips.
// Work that must finish once the database has committed (the write-through)
// runs even if ctx is cancelled.
package repo
