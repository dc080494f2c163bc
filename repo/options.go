package repo

import (
	"context"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// DB is what a Store needs from pgx. *pgxpool.Pool, *pgx.Conn and pgx.Tx all
// satisfy it (the shape sqlc calls DBTX, plus Begin).
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Begin(ctx context.Context) (pgx.Tx, error)
}

// Cache is the part of *memcache.Client that the store uses. gomemcache has
// no context: each call is bounded by the client's Timeout, and the store
// checks ctx between round trips.
type Cache interface {
	Get(key string) (*memcache.Item, error)
	GetMulti(keys []string) (map[string]*memcache.Item, error)
	Add(item *memcache.Item) error
	Set(item *memcache.Item) error
	CompareAndSwap(item *memcache.Item) error
	Delete(key string) error
	Increment(key string, delta uint64) (uint64, error)
}

// Options tune a Store. The zero value (or nil) gives the documented defaults.
type Options struct {
	// Namespace prefixes every key; keep it distinct per application.
	// Default "cachedrepo". Letters, digits, '.', '_' and '-' only.
	Namespace string

	// TTL is how long a cached row lives. Default 1h.
	TTL time.Duration

	// Jitter shortens each TTL by a random fraction up to Jitter, so keys
	// filled together do not expire together. Default 0.1; negative means none.
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

	// Outbox names the invalidation outbox table (usually
	// "cachedrepo_outbox"). When set, every Store write records its cache key
	// there in the same transaction, and a Repairer replays keys whose cache
	// update did not happen. Counters and Leaderboards record a key there
	// when deleting it from the cache fails (a crash between their commit and
	// their cache step is not covered: their cached values expire after TTL).
	// Empty (the default) means no outbox: a failed cache update is only
	// reported.
	Outbox string

	// Hooks receive events the store does not return as errors.
	Hooks Hooks
}

// Hooks are optional callbacks. They are called synchronously from the
// goroutine doing the operation, so they must be fast and safe for
// concurrent use. The library never logs; wire these to your logger/metrics.
type Hooks struct {
	// CacheError is called when a cache step failed or was skipped while the
	// operation itself succeeded: the read was served from the database, or
	// the committed write stood and the key was deleted instead. op is one of
	// "get", "fill", "write", "delete", "decode", "encode", "lease".
	CacheError func(op, key string, err error)
}

func (o *Options) withDefaults() Options {
	var r Options
	if o != nil {
		r = *o
	}
	if r.Namespace == "" {
		r.Namespace = "cachedrepo"
	}
	if r.TTL <= 0 {
		r.TTL = time.Hour
	}
	if r.Jitter == 0 {
		r.Jitter = 0.1
	} else if r.Jitter < 0 {
		r.Jitter = 0
	} else if r.Jitter > 0.9 {
		r.Jitter = 0.9
	}
	if r.NegativeTTL <= 0 {
		r.NegativeTTL = 30 * time.Second
	}
	if r.LeaseTTL <= 0 {
		r.LeaseTTL = 3 * time.Second
	}
	if r.LeaseWait <= 0 {
		r.LeaseWait = 250 * time.Millisecond
	}
	// A wait must end while the shared load (bounded by LeaseTTL) still has
	// time to read the database itself.
	r.LeaseWait = min(r.LeaseWait, r.LeaseTTL/2)
	if r.MaxItemSize <= 0 {
		r.MaxItemSize = 1<<20 - 1<<10
	}
	if r.BreakerFailures <= 0 {
		r.BreakerFailures = 3
	}
	if r.BreakerCooldown <= 0 {
		r.BreakerCooldown = time.Second
	}
	if r.GenerationRefresh <= 0 {
		r.GenerationRefresh = time.Second
	}
	if r.CASRetries <= 0 {
		r.CASRetries = 16
	}
	return r
}
