// Package aggregate keeps hot aggregates in memcached with compare-and-swap
// loops, over the same breaker-guarded cache protocol as repo's Store:
//
//   - Counter: exact named counters whose database row is canonical; reads
//     hit the cache, increments are one UPDATE and a versioned write-through.
//   - Leaderboard: players' scores in a table and each board's top-N list in
//     the cache, updated by gets/modify/cas with per-player versions.
//   - CacheCounter and CASValue: values that live in the cache only.
//
// The tables are created by migrations.Library (counters, scores,
// cachedrepo_outbox). Every type is safe for concurrent use.
package aggregate

import (
	"time"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/invalidation"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// CacheConfig is how an aggregate uses memcached. Zero fields take the
// defaults of the same fields of repo.Options; every field applies to every
// aggregate, except LeaseTTL and LeaseWait, which only Counter and
// Leaderboard use (they fill under a lease).
type CacheConfig struct {
	Namespace       string        // as repo.Options.Namespace (default "cachedrepo")
	TTL             time.Duration // as repo.Options.TTL (default 1h)
	Jitter          float64       // as repo.Options.Jitter (default 0.1)
	LeaseTTL        time.Duration // as repo.Options.LeaseTTL (default 3s)
	LeaseWait       time.Duration // as repo.Options.LeaseWait (default 250ms)
	MaxItemSize     int           // as repo.Options.MaxItemSize (a leaderboard's list)
	CASRetries      int           // as repo.Options.CASRetries (default 16)
	BreakerFailures int           // as repo.Options.BreakerFailures (default 3)
	BreakerCooldown time.Duration // as repo.Options.BreakerCooldown (default 1s)
	Hooks           observe.Hooks // as repo.Options.Hooks
}

func (c CacheConfig) protocol(name string) protocol.Config {
	return protocol.Config{Name: name, Namespace: c.Namespace, TTL: c.TTL, Jitter: c.Jitter,
		LeaseTTL: c.LeaseTTL, LeaseWait: c.LeaseWait, MaxItemSize: c.MaxItemSize, CASRetries: c.CASRetries,
		BreakerFailures: c.BreakerFailures, BreakerCooldown: c.BreakerCooldown, Hooks: c.Hooks}.WithDefaults()
}

// newCore returns the protocol core of an aggregate; with a Repairer, keys
// whose deletion failed are recorded in its outbox and the breaker waits for
// its replay.
func newCore(cache protocol.Cache, cfg CacheConfig, name string, db protocol.Execer, r *invalidation.Repairer) *protocol.Core {
	if r == nil {
		return protocol.New(cache, cfg.protocol(name), nil)
	}
	c := protocol.New(cache, cfg.protocol(name), r)
	c.RecordLost(db, r.Ident())
	return c
}

// generation returns the key generation of an aggregate over table whose
// keys carry version: InvalidateAll bumps it (after a TRUNCATE seen by the
// WAL invalidator), as a Store's does.
func generation(core *protocol.Core, table, version string) (*protocol.Generation, error) {
	kb, err := cachekeys.New(core.Opt.Namespace, protocol.KeyName(table), version)
	if err != nil {
		return nil, err
	}
	gk, err := cachekeys.New(core.Opt.Namespace, protocol.KeyName(table), "g")
	if err != nil {
		return nil, err
	}
	return protocol.NewGeneration(kb, gk.Key("generation"), time.Second), nil
}
