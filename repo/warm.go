package repo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"

	"github.com/cachedrepo/cachedrepo/repo/internal/protocol"
	"github.com/cachedrepo/cachedrepo/repo/memclient"
	"github.com/cachedrepo/cachedrepo/repo/observe"
)

// warmChunkRows bounds how many rows Warm adds before it verifies them, and so
// the size of each verifying query.
const warmChunkRows = 1000

// errBreakerOpen is returned by Warm when the breaker keeps the store off
// the cache.
var errBreakerOpen = errors.New("cache unavailable (breaker open)")

// Warm puts rows the caller has read from the database into the cache, ahead
// of the reads that would otherwise fill them one miss at a time (after a
// deploy, a cache restart or InvalidateAll). It returns how many rows it
// left in the cache. It is safe for concurrent use, and safe while the
// service reads and writes the same rows.
//
// Each row costs one memcached Add of exactly what a fill would store (the
// envelope with the row's version, the TTL with jitter) under s.Key. Add
// stores nothing if the key holds anything, so Warm never replaces a cached
// value, a tombstone or another reader's lease: such rows are skipped, as
// are rows whose envelope exceeds Options.MaxItemSize (reported to
// Hooks.Event as a CacheError with ErrTooLarge). Over a *memclient.Client or
// a *memclient.Migration the Adds of each chunk leave together, one
// pipeline of quiet meta adds per server (AddMulti); over other caches
// they run one at a time on the calling goroutine (gomemcache has no
// batched Add). For throughput run several Warm calls concurrently, for
// example one per page of a keyset-paginated SELECT of whole rows, with
// memclient.Config.MaxIdleConns covering them.
//
// Add alone would race with writers: Warm's rows were read before a write
// committed, the write's cache step found the key missing and so left it
// missing (or, without a Version column, deleted it), and then Warm adds the
// old row. So, for every chunk of up to 1,000 rows, once the Adds are
// acknowledged Warm reads the added rows again and deletes every key whose
// row has changed since (another version; without a Version column, other
// encoded bytes) or is gone. That is enough: take any write to a warmed key
// that the caller's read did not see. If it committed before the verifying
// read began, that read sees it and the key is deleted. If it committed
// later, its cache step runs after its commit, so after the Add was
// acknowledged: it finds Warm's item (or whatever has replaced it) and
// replaces or deletes it like any cached copy. Deleting is always safe: the
// next Get fills the key under a lease. This needs every statement on the
// store's DB to take a fresh snapshot (a pool, or a connection in READ
// COMMITTED, the default); a REPEATABLE READ transaction would verify
// against the caller's own snapshot.
//
// The verifying read costs one query per chunk when the rows come in key
// order (as a keyset-paginated SELECT returns them) and the table has a
// Version column: it reads the versions of the key range from the chunk's
// first added row to its last, one index range scan. A version belongs to
// one state of one row (Table.Version is drawn from a sequence), so finding
// a row's version there proves the row current. Rows it does not vouch for
// (changed, deleted, or out of order) are read again by key in a second
// query, their versions alone with GetMany's filter. Without a Version
// column the verifying read is GetMany's query. Chunks where nothing was
// added cost no query.
//
// If ctx ends, Warm deletes the keys it added in the unfinished chunk (they
// cannot be verified) and returns ctx's error. A cache failure on one Add is
// reported to a CacheError event (Hooks.Event) and the row is not counted; since the server
// may have applied an Add whose reply was lost, the key is verified like an
// added one. After Options.BreakerFailures consecutive failures Warm stops,
// verifies what it added and returns an error saying the cache is
// unavailable. Rows whose server's breaker is open (over a fleet, a dead
// node's) are not tried: Warm warms the other servers' rows and then
// returns an error saying how many rows it left out because the cache was
// unavailable (with every breaker open, at once and without a query). If
// the verifying read fails, the chunk's
// added keys are deleted. Errors are *OpErrors with Op "warm"; they mean
// that rows were not warmed, not that a stale row was left behind, unless a
// delete failed too, which the error and a CacheError event (Hooks.Event) say. One window is
// left, the one every cache write that times out has (see the package doc):
// a server that applies a timed-out Add only after the verifying read, and
// after a newer write's cache step, keeps the older row until its TTL.
//
// Stats: each row left in the cache counts as a Fill, each verifying query
// as a DBRead.
func (s *Store[T, K]) Warm(ctx context.Context, rows []T) (stored int, err error) {
	ctx, end := s.c.Begin(ctx, observe.OpWarm)
	defer func() { end(err) }()
	if err := ctx.Err(); err != nil {
		return 0, s.warmErr(err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	skipped, lost := 0, 0 // rows whose server's breaker is open; rows whose server failed
	for start := 0; start < len(rows); start += warmChunkRows {
		n, err := s.warmChunk(ctx, rows[start:min(start+warmChunkRows, len(rows))], &skipped, &lost)
		stored += n
		if err != nil {
			return stored, s.warmErr(err)
		}
	}
	var errs []error
	if skipped > 0 {
		errs = append(errs, fmt.Errorf("%d of %d rows not warmed: %w", skipped, len(rows), errBreakerOpen))
	}
	if lost > 0 {
		errs = append(errs, fmt.Errorf("%d of %d rows not warmed: their server failed (reported as CacheError events)", lost, len(rows)))
	}
	if len(errs) > 0 {
		return stored, s.warmErr(errors.Join(errs...))
	}
	return stored, nil
}

func (s *Store[T, K]) warmErr(err error) error {
	return &OpError{Op: observe.OpWarm, Table: s.t.name, Err: err}
}

// warmed is one row Warm added, or may have added (sure is false: the Add
// failed in transit, after the server may have applied it): its key, cache
// key, version and (for tables without a Version column) envelope.
type warmed[K comparable] struct {
	k       K
	key     string
	version int64
	value   []byte
	sure    bool
}

// warmChunk adds rows and then verifies what it added. Rows whose server's
// breaker is open are not tried, and counted in skipped; rows whose server
// failed their pipelined Add are counted in lost.
func (s *Store[T, K]) warmChunk(ctx context.Context, rows []T, skipped, lost *int) (int, error) {
	added := make([]warmed[K], 0, len(rows))
	var stop error
	// keep records one Add's outcome (report: whether to report a failure)
	// and returns whether its server failed. A row whose Add failed in
	// transit may have been added, so it is verified like an added one.
	keep := func(w warmed[K], err error, report bool) (failed bool) {
		w.sure = err == nil
		switch {
		case err == nil:
			added = append(added, w)
		case errors.Is(err, memcache.ErrNotStored): // a value, tombstone or lease is there already
		case protocol.IsTransportErr(err):
			added = append(added, w)
			if report {
				s.c.CacheErr(ctx, observe.StepFill, w.key, err)
			}
			return true
		default: // refused for this item alone (e.g. the server's own size limit)
			s.c.CacheErr(ctx, observe.StepFill, w.key, err)
		}
		return false
	}
	var ws []warmed[K]
	var items []*memcache.Item
	for i := range rows {
		v := &rows[i]
		w := warmed[K]{k: s.t.keyOf(v), version: s.versionOf(v)}
		w.key = s.Key(w.k)
		if !s.c.AllowRead(w.key) { // its server is down: warm the others'
			*skipped++
			continue
		}
		value, flags := s.envelope(ctx, w.key, v, w.version)
		if value == nil {
			continue // too large, reported
		}
		if s.t.versionIdx < 0 {
			w.value = value
		}
		ws = append(ws, w)
		items = append(items, &memcache.Item{Key: w.key, Value: value, Flags: flags, Expiration: s.c.Expiry(s.c.Opt.TTL, true)})
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if outs, ok := s.c.AddMany(items); ok {
		// Every Add was sent. One whose server failed may have been
		// applied, so it is verified like an added one, and counted as
		// not warmed; each server's failure is reported once. Only if
		// every Add failed is the cache unavailable.
		var reported *memclient.ServerError
		failed := 0
		for j, err := range outs {
			var se *memclient.ServerError
			errors.As(err, &se)
			if keep(ws[j], err, se == nil || se != reported) {
				failed++
				reported = se
				if failed == len(outs) {
					stop = fmt.Errorf("cache unavailable: all %d adds failed, the last: %w", failed, err)
				}
			}
		}
		if stop == nil {
			*lost += failed
		}
	} else {
		failures := 0 // consecutive transport failures
		for j, it := range items {
			if err := ctx.Err(); err != nil {
				stop = err
				break
			}
			if !s.c.AllowRead(it.Key) { // its server's breaker opened meanwhile
				*skipped++
				continue
			}
			err := s.c.Cache.Add(it)
			switch {
			case keep(ws[j], err, true):
				// Consecutive failures of servers whose breakers were
				// closed: the cache as a whole is failing. (A server whose
				// breaker opens is skipped from the next of its rows on.)
				if failures++; failures >= s.c.Opt.BreakerFailures {
					stop = fmt.Errorf("cache unavailable: %d failures in a row, the last: %w", failures, err)
				}
			case err == nil || errors.Is(err, memcache.ErrNotStored):
				failures = 0
			}
			if stop != nil {
				break
			}
		}
	}
	if err := ctx.Err(); err != nil {
		if failed := s.dropWarmed(ctx, added); failed > 0 {
			return 0, fmt.Errorf("%w (and %d warmed keys could not be deleted)", err, failed)
		}
		return 0, err
	}
	kept, err := s.verifyWarmed(ctx, len(rows), added)
	if stop != nil {
		err = errors.Join(stop, err)
	}
	return kept, err
}

// verifyWarmed reads the added rows again and deletes the keys whose row
// changed or disappeared since rows were read. It returns how many stayed.
// chunk is how many rows the chunk had (added and not).
func (s *Store[T, K]) verifyWarmed(ctx context.Context, chunk int, added []warmed[K]) (int, error) {
	if len(added) == 0 {
		return 0, nil
	}
	stale := make([]bool, len(added))
	if s.t.versionIdx >= 0 {
		// A version belongs to one state of one row (Table.Version is drawn
		// from a sequence), so a set of current versions that holds a warmed
		// row's version proves that row current, whatever else it holds.
		// First the versions of the key range from the first added row to
		// the last: one index range scan when rows came in key order. Then,
		// by key, the rows the range did not vouch for.
		cur, err := s.rangeVersions(ctx, added[0].k, added[len(added)-1].k, max(chunk, 2*len(added))+16)
		if err != nil {
			return 0, s.verifyFailed(ctx, added, err)
		}
		var rest []int
		for j := range added {
			if _, ok := cur[added[j].version]; !ok {
				rest = append(rest, j)
			}
		}
		if len(rest) > 0 {
			keys := make([]K, len(rest))
			for n, j := range rest {
				keys[n] = added[j].k
			}
			if cur, err = s.keyVersions(ctx, keys); err != nil {
				return 0, s.verifyFailed(ctx, added, err)
			}
			for _, j := range rest {
				_, ok := cur[added[j].version]
				stale[j] = !ok
			}
		}
	} else {
		keys := make([]K, len(added))
		for j := range added {
			keys[j] = added[j].k
		}
		cur, err := s.selectMany(ctx, keys)
		if err != nil {
			return 0, s.verifyFailed(ctx, added, err)
		}
		now := make(map[K]*T, len(cur))
		for i := range cur {
			now[s.t.keyOf(&cur[i])] = &cur[i]
		}
		for j := range added {
			c, ok := now[added[j].k]
			var buf []byte
			if ok {
				buf, _ = s.envelope(ctx, added[j].key, c, 0)
			}
			stale[j] = !ok || !bytes.Equal(buf, added[j].value)
		}
	}
	var drop []warmed[K]
	kept := 0
	for j := range added {
		switch {
		case stale[j]:
			drop = append(drop, added[j])
		case added[j].sure:
			kept++
		}
	}
	s.c.Stats.Fills.Add(uint64(kept))
	if failed := s.dropWarmed(ctx, drop); failed > 0 {
		return kept, fmt.Errorf("%d warmed keys changed in the database but could not be deleted", failed)
	}
	return kept, nil
}

// rangeVersions returns the versions of the first limit rows, in key order,
// whose keys lie between first and last.
func (s *Store[T, K]) rangeVersions(ctx context.Context, first, last K, limit int) (map[int64]struct{}, error) {
	key := make([]string, len(s.t.keyCols))
	lo := make([]string, len(key))
	hi := make([]string, len(key))
	for i, k := range s.t.keyCols {
		key[i] = protocol.QuoteIdent(k)
		lo[i] = "$" + strconv.Itoa(i+1)
		hi[i] = "$" + strconv.Itoa(len(key)+i+1)
	}
	cols := strings.Join(key, ", ")
	sql := fmt.Sprintf("SELECT %s FROM %s WHERE (%s) >= (%s) AND (%s) <= (%s) ORDER BY %s LIMIT $%d",
		protocol.QuoteIdent(s.t.cols[s.t.versionIdx]), s.t.ident, cols, strings.Join(lo, ", "), cols, strings.Join(hi, ", "), cols, 2*len(key)+1)
	args := make([]any, 0, 2*len(key)+1) // never append to what KeyArgs returned
	args = append(append(append(args, s.t.keyArgs(first)...), s.t.keyArgs(last)...), limit)
	return s.versions(ctx, sql, args)
}

// keyVersions returns the current versions of keys, with GetMany's filter.
func (s *Store[T, K]) keyVersions(ctx context.Context, keys []K) (map[int64]struct{}, error) {
	version := protocol.QuoteIdent(s.t.cols[s.t.versionIdx])
	if len(s.t.keyCols) == 1 {
		return s.versions(ctx, s.t.selectAnyOf(version, nil), []any{keys})
	}
	types, err := s.keyColumnTypes(ctx)
	if err != nil {
		return nil, err
	}
	return s.versions(ctx, s.t.selectAnyOf(version, types), s.columnArrays(keys))
}

// versions runs a query of one bigint column and returns its values as a set.
func (s *Store[T, K]) versions(ctx context.Context, sql string, args []any) (map[int64]struct{}, error) {
	s.c.DBRead()
	rows, _ := s.db.Query(ctx, sql, args...)
	cur := make(map[int64]struct{})
	var v int64
	_, err := pgx.ForEachRow(rows, []any{&v}, func() error { cur[v] = struct{}{}; return nil })
	return cur, err
}

// verifyFailed deletes what a chunk added, since it could not be verified,
// and returns the error to report.
func (s *Store[T, K]) verifyFailed(ctx context.Context, added []warmed[K], err error) error {
	err = fmt.Errorf("verifying warmed rows: %w", err)
	if failed := s.dropWarmed(ctx, added); failed > 0 {
		err = fmt.Errorf("%w (and %d warmed keys could not be deleted)", err, failed)
	}
	return err
}

// dropWarmed deletes the keys of ws, reporting failures, and returns how many
// may still be cached. It stops at the first transport failure: the cache is
// unreachable, and each further delete would wait for the client timeout.
func (s *Store[T, K]) dropWarmed(ctx context.Context, ws []warmed[K]) (failed int) {
	for j, w := range ws {
		err := s.c.Cache.Delete(w.key)
		if err == nil || protocol.IsMiss(err) {
			continue
		}
		s.c.CacheErr(ctx, observe.StepDelete, w.key, err)
		if protocol.IsTransportErr(err) {
			return failed + len(ws) - j
		}
		failed++
	}
	return failed
}
