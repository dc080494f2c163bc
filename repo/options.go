package repo

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// DB is what a Store needs from the database: the shape sqlc generates as
// DBTX. *pgxpool.Pool, *pgx.Conn, pgx.Tx, *Tx and sqlc's DBTX values all
// satisfy it. Update needs a transaction: it begins one when DB also has
// Begin (a pool, a connection) and fails clearly otherwise; inside InTx it
// uses the transaction (a savepoint).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Beginner is a DB that can begin a transaction (*pgxpool.Pool, *pgx.Conn,
// pgx.Tx): what InTx and Update need.
type Beginner interface {
	DB
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Cache is the memcached client a Store calls: *memclient.Client (whose
// meta protocol makes a miss two round trips) or gomemcache's
// *memcache.Client (a miss then takes four).
type Cache = memclient.Cache

// Options tune a Store. The zero value (or nil) gives the documented
// defaults; every field applies to a Store.
type Options struct {
	// Namespace prefixes every key; keep it distinct per application.
	// Default "cachedrepo". Letters, digits, '.', '_' and '-' only.
	Namespace string

	// TTL is how long a cached row lives. Default 1h. Up to 30 days it is
	// sent to memcached as relative seconds; beyond that memcached reads
	// expirations as absolute Unix times, so a longer TTL is sent as one
	// (now + TTL by this machine's clock, which must then agree with
	// memcached's).
	TTL time.Duration

	// Jitter shortens each TTL by a random fraction up to Jitter, so keys
	// filled together do not expire together; it applies at any TTL.
	// Default 0.1; negative means none; at most 0.9.
	Jitter float64

	// NegativeTTL is how long a missing row ("not found") and a deleted row's
	// tombstone are cached. Default 30s.
	NegativeTTL time.Duration

	// LeaseTTL bounds how long one filler may hold a key's lease; a filler
	// that dies frees the key after it. It also bounds a shared load. Default 3s.
	LeaseTTL time.Duration

	// LeaseWait is how long a reader waits for another's fill (polling with
	// jittered backoff) before it reads the database itself. Default 250ms;
	// at most LeaseTTL/2, so the shared load still has time for that read.
	LeaseWait time.Duration

	// MaxItemSize is the largest envelope the store writes; larger values are
	// served but not cached (reported as ErrTooLarge). Default 1 MiB less
	// 1 KiB, memcached's default item limit less key and header room.
	MaxItemSize int

	// CASRetries bounds every compare-and-swap loop. Default 16.
	CASRetries int

	// EarlyRefresh: a hit on a row with less than this left to live, over
	// a *memclient.Client, wins the right to refresh it (memcached's early
	// recache: one reader wins per item) and, while answering at once,
	// reads the row again and replaces the entry by CAS, so a hot key's
	// expiry brings no miss, no latency spike and no herd. Default TTL/10,
	// at most 1m, and none for a TTL under 20s; set, at least 2s (memcached
	// counts whole seconds); negative means none. Get refreshes; GetMany
	// does not.
	EarlyRefresh time.Duration

	// GenerationRefresh is how often a store re-reads its table's key
	// generation from the cache, and so how long other processes may serve
	// rows cached before an InvalidateAll. Default 1s.
	GenerationRefresh time.Duration

	// BreakerFailures is how many consecutive cache transport failures open
	// the breaker, after which reads skip the cache. Default 3.
	BreakerFailures int

	// BreakerCooldown is how long the breaker stays open before one read
	// probes the cache; it doubles after each failed probe, up to 30s.
	// Default 1s.
	BreakerCooldown time.Duration

	// WriteTimeout is the longest one of the store's write statements may
	// run on the server: the store sends Insert, Upsert, Replace and Delete
	// over a pool or a connection with a local statement_timeout of
	// WriteTimeout, in the same round trip (over a DB that cannot send
	// pipelines, set statement_timeout no higher yourself). A write whose
	// outcome is unknown (a connection that stalled or failed before the
	// answer came) deletes its key at once and again WriteTimeout later, so
	// a statement that commits late leaves no stale entry beyond that bound
	// (the WAL invalidator, where it runs, repairs it within its lag).
	// Default 30s; negative means neither the statement_timeout nor the
	// second delete.
	WriteTimeout time.Duration

	// Repairer, when set, is the invalidation outbox: every write records
	// its cache key in the Repairer's table in the same transaction, the
	// key is dropped from there once the cache step succeeded, and the
	// Repairer replays what is left. After a cache outage the store's reads
	// stay on the database until the Repairer has replayed the outbox. Nil
	// (the default) means no outbox: a failed cache update is only
	// reported. Run the Repairer (Repairer.Run) in the same process.
	Repairer *invalidation.Repairer

	// Near, if set, puts an in-process near-cache in front of memcached for
	// this store's Gets (see NearCache for its staleness bound); the store's
	// writes invalidate it in every process. Run the NearCache (Run) in the
	// same process. Default: none.
	Near *NearCache

	// Hooks receive events and operation starts and ends, for metrics and
	// tracing (see package observe, and the repootel and repoprom adapters).
	Hooks observe.Hooks
}

// config returns the protocol's configuration for a store of table name.
func (o *Options) config(name string) protocol.Config {
	var r Options
	if o != nil {
		r = *o
	}
	return protocol.Config{Name: name, Namespace: r.Namespace, TTL: r.TTL, Jitter: r.Jitter,
		NegativeTTL: r.NegativeTTL, LeaseTTL: r.LeaseTTL, LeaseWait: r.LeaseWait,
		MaxItemSize: r.MaxItemSize, CASRetries: r.CASRetries, BreakerFailures: r.BreakerFailures,
		BreakerCooldown: r.BreakerCooldown, EarlyRefresh: r.EarlyRefresh, Hooks: r.Hooks}.WithDefaults()
}

func (o *Options) repairer() *invalidation.Repairer {
	if o == nil {
		return nil
	}
	return o.Repairer
}

func (o *Options) generationRefresh() time.Duration {
	if o == nil || o.GenerationRefresh <= 0 {
		return time.Second
	}
	return o.GenerationRefresh
}

func (o *Options) writeTimeout() time.Duration {
	switch {
	case o == nil || o.WriteTimeout == 0:
		return 30 * time.Second
	case o.WriteTimeout < 0:
		return 0
	}
	return o.WriteTimeout
}
