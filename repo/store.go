package repo

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bradfitz/gomemcache/memcache"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/singleflight"

	"github.com/cachedrepo/cachedrepo/cachekeys"
	"github.com/cachedrepo/cachedrepo/internal/codec"
)

// Store is a repository for one table: rows of type T keyed by K, read
// through memcached and written through to it. It is safe for concurrent use.
type Store[T any, K comparable] struct {
	db    DB
	cache Cache
	t     *compiled[T, K]
	codec Codec[T]
	keys  cachekeys.Builder
	opt   Options
	group singleflight.Group
	stats counters

	anyOnce sync.Mutex // guards selectAny for composite keys
	anySQL  atomic.Pointer[string]
}

// Stats are counters of what a Store did since it was created.
type Stats struct {
	Hits         uint64 // reads answered by the cache (rows and cached "not found")
	Misses       uint64 // keys not usable in the cache (absent, leased, corrupt)
	Fills        uint64 // values the store put in the cache after a database read
	DBReads      uint64 // database queries made to serve reads
	LeaseWaits   uint64 // polls made while another filler held a key's lease
	CASConflicts uint64 // compare-and-swap (or Add) attempts lost to a concurrent change
	CacheErrors  uint64 // cache steps that failed (also reported to Hooks.CacheError)
}

type counters struct {
	hits, misses, fills, dbReads, leaseWaits, casConflicts, cacheErrors atomic.Uint64
}

// New returns a Store for table over db and cache. opts may be nil. It checks
// the table description (columns against T's fields, the key against K) and
// returns an error naming the problem; it does not touch the database.
func New[T any, K comparable](db DB, cache Cache, table Table[T, K], opts *Options) (*Store[T, K], error) {
	if db == nil || cache == nil {
		return nil, errors.New("repo: New needs a DB and a Cache")
	}
	c, err := compile(table)
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	o := opts.withDefaults()
	cd := table.Codec
	if cd == nil {
		bc, err := codec.For[T]()
		if err != nil {
			return nil, fmt.Errorf("repo: table %q: %w (set Table.Codec)", table.Name, err)
		}
		cd = bc
	}
	kb, err := cachekeys.New(o.Namespace, table.Name, "c"+strconv.FormatUint(cd.Fingerprint(), 36))
	if err != nil {
		return nil, fmt.Errorf("repo: table %q: %w", table.Name, err)
	}
	return &Store[T, K]{db: db, cache: cache, t: c, codec: cd, keys: kb, opt: o}, nil
}

// Stats returns a snapshot of the store's counters.
func (s *Store[T, K]) Stats() Stats {
	c := &s.stats
	return Stats{Hits: c.hits.Load(), Misses: c.misses.Load(), Fills: c.fills.Load(),
		DBReads: c.dbReads.Load(), LeaseWaits: c.leaseWaits.Load(),
		CASConflicts: c.casConflicts.Load(), CacheErrors: c.cacheErrors.Load()}
}

// Key returns the cache key of k. It is exported for tests and tooling (for
// example, to inspect or delete one key by hand).
func (s *Store[T, K]) Key(k K) string {
	if s.t.keyPart != nil {
		return s.t.keyPart(s.keys, k)
	}
	args := s.t.keyArgs(k)
	parts := make([]string, len(args))
	for i, a := range args {
		p, err := cachekeys.Part(a)
		if err != nil { // unusual key type: fall back to its printed form
			p = fmt.Sprint(a)
		}
		parts[i] = p
	}
	return s.keys.Key(parts...)
}

func (s *Store[T, K]) opErr(op string, k K, err error) error {
	return &OpError{Op: op, Table: s.t.name, Key: fmt.Sprint(k), Err: err}
}

func (s *Store[T, K]) cacheErr(op, key string, err error) {
	s.stats.cacheErrors.Add(1)
	if h := s.opt.Hooks.CacheError; h != nil {
		h(op, key, err)
	}
}

func isMiss(err error) bool { return errors.Is(err, memcache.ErrCacheMiss) }

// expiry converts a TTL to memcached's relative seconds, shortened by jitter.
func (s *Store[T, K]) expiry(ttl time.Duration, jitter bool) int32 {
	if jitter && s.opt.Jitter > 0 {
		ttl -= time.Duration(rand.Float64() * s.opt.Jitter * float64(ttl))
	}
	sec := int64(ttl / time.Second)
	if sec < 1 {
		sec = 1
	}
	if sec > 30*24*3600 { // memcached reads larger values as absolute times
		sec = 30 * 24 * 3600
	}
	return int32(sec)
}

// decoded is what an item holds, once opened.
type decoded struct {
	kind    kind
	version int64
	token   []byte // lease token
}

// open decodes item into *v. A corrupt item is deleted, reported and returned
// with kind 0, which callers treat as a miss.
func (s *Store[T, K]) open(it *memcache.Item, v *T) decoded {
	k, ver, payload, ok := openEnvelope(it.Flags, it.Value)
	if ok && k == kindValue {
		if err := s.codec.Decode(payload, v); err != nil {
			ok = false
		}
	}
	if !ok {
		s.cacheErr("decode", it.Key, ErrCorrupt)
		if err := s.cache.Delete(it.Key); err != nil && !isMiss(err) {
			s.cacheErr("delete", it.Key, err)
		}
		return decoded{}
	}
	return decoded{kind: k, version: ver, token: payload}
}

// envelope encodes a value (v != nil) or an absent marker (v == nil) with the
// given row version. It returns nil, reported, if the result is too large.
func (s *Store[T, K]) envelope(key string, v *T, version int64) (value []byte, flags uint32) {
	b := beginEnvelope(make([]byte, 0, 128), version)
	if v == nil {
		return finishEnvelope(b), flagsOf(kindAbsent)
	}
	b = finishEnvelope(s.codec.Append(b, v))
	if len(b) > s.opt.MaxItemSize {
		s.cacheErr("encode", key, fmt.Errorf("%w: %d bytes > %d", ErrTooLarge, len(b), s.opt.MaxItemSize))
		return nil, 0
	}
	return b, flagsOf(kindValue)
}

func (s *Store[T, K]) versionOf(v *T) int64 {
	if s.t.versionOf == nil {
		return 0
	}
	return s.t.versionOf(v)
}

// Get returns the row with key k, or an error wrapping ErrNotFound.
//
// A hit costs one memcached round trip and a decode. On a miss, concurrent
// Gets of the same key in this process share one load, and across processes
// the first takes a lease on the key; the others wait up to LeaseWait for its
// fill, then read the database themselves. The fill only replaces its own
// lease, so a read that raced a write can never overwrite the newer value.
// If the cache fails, the row is read from the database.
func (s *Store[T, K]) Get(ctx context.Context, k K) (T, error) {
	var v T
	if err := ctx.Err(); err != nil {
		return v, s.opErr("get", k, err)
	}
	key := s.Key(k)
	it, err := s.cache.Get(key)
	switch {
	case err == nil:
		d := s.open(it, &v)
		switch d.kind {
		case kindValue:
			s.stats.hits.Add(1)
			return v, nil
		case kindAbsent:
			s.stats.hits.Add(1)
			return v, s.opErr("get", k, ErrNotFound)
		}
	case !isMiss(err):
		s.cacheErr("get", key, err)
		return s.readDB(ctx, k)
	}
	s.stats.misses.Add(1)
	return s.load(ctx, k, key)
}

type loaded[T any] struct {
	v     T
	found bool
}

// load collapses concurrent misses of key in this process into one fill. A
// caller whose ctx ends stops waiting; the shared load goes on for the others,
// bounded by LeaseTTL.
func (s *Store[T, K]) load(ctx context.Context, k K, key string) (T, error) {
	ch := s.group.DoChan(key, func() (any, error) {
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opt.LeaseTTL)
		defer cancel()
		return s.fill(lctx, k, key)
	})
	var zero T
	select {
	case r := <-ch:
		if r.Err != nil {
			return zero, s.opErr("get", k, r.Err)
		}
		l := r.Val.(*loaded[T])
		if !l.found {
			return zero, s.opErr("get", k, ErrNotFound)
		}
		return l.v, nil
	case <-ctx.Done():
		return zero, s.opErr("get", k, ctx.Err())
	}
}

// fill is the cross-process half of a miss: take the lease, or wait for
// whoever holds it, or give up waiting and read the database.
func (s *Store[T, K]) fill(ctx context.Context, k K, key string) (*loaded[T], error) {
	deadline := time.Now().Add(s.opt.LeaseWait)
	backoff := time.Millisecond
	for attempt := 0; ; attempt++ {
		token := rand.Uint64()
		err := s.cache.Add(s.leaseItem(key, token))
		if err == nil {
			return s.readAndFill(ctx, k, key, token)
		}
		if !errors.Is(err, memcache.ErrNotStored) {
			s.cacheErr("lease", key, err)
			return s.selectOne(ctx, k)
		}
		// Someone else's value, tombstone or lease is there.
		for {
			it, err := s.cache.Get(key)
			if isMiss(err) {
				break // gone (filled and evicted, or released): try the lease again
			}
			if err != nil {
				s.cacheErr("get", key, err)
				return s.selectOne(ctx, k)
			}
			l := &loaded[T]{}
			d := s.open(it, &l.v)
			switch d.kind {
			case kindValue:
				l.found = true
				return l, nil
			case kindAbsent:
				return l, nil
			}
			if d.kind != kindLease {
				break // corrupt, now deleted: try the lease again
			}
			if time.Now().After(deadline) || attempt > 64 {
				return s.selectOne(ctx, k) // the holder is slow or dead: serve from the database
			}
			s.stats.leaseWaits.Add(1)
			if err := sleep(ctx, backoff/2+rand.N(backoff)); err != nil {
				return nil, err
			}
			backoff = min(backoff*2, 32*time.Millisecond)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Store[T, K]) leaseItem(key string, token uint64) *memcache.Item {
	b := beginEnvelope(make([]byte, 0, 16), 0)
	b = finishEnvelope(strconv.AppendUint(b, token, 36))
	return &memcache.Item{Key: key, Value: b, Flags: flagsOf(kindLease), Expiration: s.expiry(s.opt.LeaseTTL, false)}
}

func ownLease(it *memcache.Item, token uint64) bool {
	k, _, payload, ok := openEnvelope(it.Flags, it.Value)
	return ok && k == kindLease && string(payload) == strconv.FormatUint(token, 36)
}

// readAndFill runs with the lease held: read the row, then swap it in for the
// lease. If anything replaced the lease meanwhile (a write, a delete, an
// eviction), the fill is dropped: that writer's value is newer than our read.
func (s *Store[T, K]) readAndFill(ctx context.Context, k K, key string, token uint64) (*loaded[T], error) {
	l, err := s.selectOne(ctx, k)
	if err != nil {
		s.releaseLease(key, token)
		return nil, err
	}
	var value []byte
	var flags uint32
	var exp int32
	if l.found {
		value, flags = s.envelope(key, &l.v, s.versionOf(&l.v))
		exp = s.expiry(s.opt.TTL, true)
	} else {
		value, flags = s.envelope(key, nil, 0)
		exp = s.expiry(s.opt.NegativeTTL, true)
	}
	if value == nil {
		s.releaseLease(key, token)
		return l, nil
	}
	s.swapLease(key, token, value, flags, exp)
	return l, nil
}

// swapLease replaces our lease on key with value, if it is still ours.
func (s *Store[T, K]) swapLease(key string, token uint64, value []byte, flags uint32, exp int32) {
	it, err := s.cache.Get(key)
	if err != nil {
		if !isMiss(err) {
			s.cacheErr("fill", key, err)
		}
		return
	}
	if !ownLease(it, token) {
		return
	}
	it.Value, it.Flags, it.Expiration = value, flags, exp
	switch err := s.cache.CompareAndSwap(it); {
	case err == nil:
		s.stats.fills.Add(1)
	case errors.Is(err, memcache.ErrCASConflict), isMiss(err), errors.Is(err, memcache.ErrNotStored):
		s.stats.casConflicts.Add(1)
	default:
		s.cacheErr("fill", key, err)
	}
}

// releaseLease frees our lease early (a failed read, an oversize value) so
// waiters do not sit out LeaseTTL. A CAS to an already-expired item is a
// conditional delete: it removes the lease only if it is still ours.
func (s *Store[T, K]) releaseLease(key string, token uint64) {
	it, err := s.cache.Get(key)
	if err != nil || !ownLease(it, token) {
		return
	}
	it.Expiration = -1
	_ = s.cache.CompareAndSwap(it)
}

// selectOne reads one row from the database, without the cache.
func (s *Store[T, K]) selectOne(ctx context.Context, k K) (*loaded[T], error) {
	s.stats.dbReads.Add(1)
	rows, _ := s.db.Query(ctx, s.t.selectOne, s.t.keyArgs(k)...)
	v, err := pgx.CollectOneRow(rows, s.t.scan)
	if errors.Is(err, pgx.ErrNoRows) {
		return &loaded[T]{}, nil
	}
	if err != nil {
		return nil, err
	}
	return &loaded[T]{v: v, found: true}, nil
}

// readDB serves a Get from the database alone (the cache failed).
func (s *Store[T, K]) readDB(ctx context.Context, k K) (T, error) {
	l, err := s.selectOne(ctx, k)
	if err != nil {
		var zero T
		return zero, s.opErr("get", k, err)
	}
	if !l.found {
		return l.v, s.opErr("get", k, ErrNotFound)
	}
	return l.v, nil
}
