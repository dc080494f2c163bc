// Package observe defines what cachedrepo reports for metrics and tracing:
// the Hooks a Store, Query, Counter, Leaderboard or Repairer calls, the
// Events they receive, the typed operation names (Op) and the Stats
// snapshot. It has no dependencies, so adapters (repootel for
// OpenTelemetry, repoprom for Prometheus) and users' own hooks import it
// without importing the rest of the library.
package observe

import (
	"context"
	"time"
)

// Op names an operation of the library, in errors (repo.OpError.Op) and in
// hooks.
type Op string

// The operations. Store: Get .. InvalidateAll; Query: QueryGet and
// QueryInvalidate; aggregates: CounterAdd .. CASValue; the outbox: Repair.
const (
	OpGet           Op = "get"
	OpGetMany       Op = "get many"
	OpInsert        Op = "insert"
	OpUpsert        Op = "upsert"
	OpUpdate        Op = "update"
	OpDelete        Op = "delete"
	OpWarm          Op = "warm"
	OpInvalidateAll Op = "invalidate all"

	OpQueryGet        Op = "query"
	OpQueryInvalidate Op = "query invalidate"

	OpCounterAdd     Op = "counter add"
	OpCounterGet     Op = "counter get"
	OpCacheIncrement Op = "cache counter increment"
	OpCacheCounter   Op = "cache counter get"
	OpSubmit         Op = "submit"
	OpRemove         Op = "remove"
	OpTop            Op = "top"
	OpRank           Op = "rank"
	OpCASValue       Op = "cas"

	OpRepair Op = "repair"
)

// Kind is what an Event reports.
type Kind uint8

// The events.
const (
	// Hit: a read was answered by the cache (a row, or a cached "not found").
	Hit Kind = iota + 1
	// Miss: a key held nothing usable (missing, a lease, corrupt bytes).
	Miss
	// Fill: a value read from the database replaced the key's lease.
	// Duration is the load (database read and fill).
	Fill
	// LeaseWait: a reader waited for another filler's lease. Duration is how
	// long it waited in all before it got a value or read the database.
	LeaseWait
	// CASConflict: a compare-and-swap (or Add) lost to a concurrent change
	// and was retried or given up.
	CASConflict
	// CacheError: a cache step failed or was skipped while the operation
	// itself succeeded (served from the database, or the committed write
	// stood and the key was deleted instead). Step names the step, Err the
	// cause.
	CacheError
	// BreakerOpen: cache transport failures opened the breaker; reads skip
	// the cache. Err is the failure that opened it.
	BreakerOpen
	// BreakerClose: the cache answered a probe (and the outbox was
	// replayed, where there is one); reads use the cache again.
	BreakerClose
)

var kindNames = [...]string{Hit: "hit", Miss: "miss", Fill: "fill", LeaseWait: "lease_wait",
	CASConflict: "cas_conflict", CacheError: "cache_error", BreakerOpen: "breaker_open", BreakerClose: "breaker_close"}

// String returns the kind's name in snake case ("lease_wait"), as metric
// labels use it.
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return "unknown"
}

// Kinds lists every Kind, for adapters that register one series per kind.
func Kinds() []Kind {
	return []Kind{Hit, Miss, Fill, LeaseWait, CASConflict, CacheError, BreakerOpen, BreakerClose}
}

// Step names the cache step a CacheError is about.
type Step string

// The steps.
const (
	StepGet        Step = "get"        // reading a key
	StepFill       Step = "fill"       // replacing a lease with a value read from the database
	StepWrite      Step = "write"      // a write-through after a commit
	StepDelete     Step = "delete"     // deleting a key
	StepDecode     Step = "decode"     // cached bytes that do not decode (the key is deleted)
	StepEncode     Step = "encode"     // a value too large to cache
	StepLease      Step = "lease"      // taking a key's lease
	StepOutbox     Step = "outbox"     // recording or replaying a key in the outbox
	StepGeneration Step = "generation" // reading or bumping a table's key generation
	StepWAL        Step = "wal"        // the WAL invalidator's connection or cache step (retried)
)

// Event is one thing a hook is told.
type Event struct {
	Kind     Kind
	Op       Op            // the operation it happened in; empty for breaker events seen outside one
	Table    string        // the table, query, counter table or board table
	Key      string        // the cache key; empty for breaker events
	Step     Step          // CacheError only
	Duration time.Duration // Fill and LeaseWait; zero otherwise
	Err      error         // CacheError and BreakerOpen
}

// Hooks are optional callbacks for metrics, tracing and logs; nil fields
// cost nothing. They are called synchronously from the goroutine doing the
// work, so they must be fast and safe for concurrent use. The library never
// logs. ctx is the operation's context (for breaker events noticed by a
// background step, context.Background()).
type Hooks struct {
	// Event receives each Event.
	Event func(ctx context.Context, e Event)

	// OpStart is called when an operation begins; the context it returns
	// is used by the operation and passed to Event and OpEnd (a tracer
	// starts a span here). Nil means ctx is used as is.
	OpStart func(ctx context.Context, op Op, table string) context.Context

	// OpEnd is called when the operation that OpStart saw ends, with its
	// duration and the error it returns (nil on success; a missing row is
	// an error wrapping repo.ErrNotFound).
	OpEnd func(ctx context.Context, op Op, table string, d time.Duration, err error)
}

// Stats are counters of what one Store, Query, Counter or Leaderboard did
// since it was created.
type Stats struct {
	Hits         uint64 // reads answered by the cache (rows and cached "not found")
	Misses       uint64 // keys not usable in the cache (absent, leased, corrupt)
	Fills        uint64 // values put in the cache after a database read
	DBReads      uint64 // database queries made to serve reads
	LeaseWaits   uint64 // polls made while another filler held a key's lease
	CASConflicts uint64 // compare-and-swap (or Add) attempts lost to a concurrent change
	CacheErrors  uint64 // cache steps that failed (also reported as CacheError events)

	// Aggregates (Counter, Leaderboard) only.
	Rebuilds uint64 // cached aggregates recomputed from the database after a miss
	Drops    uint64 // cached aggregates deleted because they could no longer be proven right
}

// Join returns Hooks that call each of hs in turn (OpStart passes the
// context each returns to the next). Nil fields are skipped; fields that no
// hook sets stay nil, so they still cost nothing.
func Join(hs ...Hooks) Hooks {
	var j Hooks
	var events []func(context.Context, Event)
	var starts []func(context.Context, Op, string) context.Context
	var ends []func(context.Context, Op, string, time.Duration, error)
	for _, h := range hs {
		if h.Event != nil {
			events = append(events, h.Event)
		}
		if h.OpStart != nil {
			starts = append(starts, h.OpStart)
		}
		if h.OpEnd != nil {
			ends = append(ends, h.OpEnd)
		}
	}
	if len(events) > 0 {
		j.Event = func(ctx context.Context, e Event) {
			for _, f := range events {
				f(ctx, e)
			}
		}
	}
	if len(starts) > 0 {
		j.OpStart = func(ctx context.Context, op Op, table string) context.Context {
			for _, f := range starts {
				ctx = f(ctx, op, table)
			}
			return ctx
		}
	}
	if len(ends) > 0 {
		j.OpEnd = func(ctx context.Context, op Op, table string, d time.Duration, err error) {
			for _, f := range ends {
				f(ctx, op, table, d, err)
			}
		}
	}
	return j
}
